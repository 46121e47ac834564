# curbwatch — `make setup` once on a fresh machine, then `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILD := build
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false
export YOLO_CONFIG_DIR := $(CURDIR)/$(BUILD)/ultralytics

.PHONY: setup test test-fast bench bench-delivery bench-training lint demo schemas screenshots clean

setup: $(STAMP)

# ultralytics depends on the GUI build of OpenCV (opencv-python); the edge uses the headless
# build. Both install the same `cv2` package, so the GUI one is removed and the headless one
# reinstalled over it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[edge,server,train,dev]'
	$(BIN)/pip uninstall --quiet -y opencv-python opencv-python-headless
	$(BIN)/pip install --quiet --no-deps opencv-python-headless
	mkdir -p $(BUILD)/ultralytics
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not train"

bench: setup
	$(BIN)/python -m tools.bench && $(BIN)/python -m tools.bench_delivery \
		&& $(BIN)/python -m tools.bench_cases && $(BIN)/python -m tools.bench_review && $(BIN)/python -m tools.bench_training

# Delivery only: private Mosquitto, SQLite and PostgreSQL (127.0.0.1:5432); about 7 minutes on 2 cores.
bench-delivery: setup
	$(BIN)/python -m tools.bench_delivery

# Retraining loop and INT8 vs FP32 only (trains a small detector on the CPU); about 15 minutes on 2 cores.
bench-training: setup
	$(BIN)/python -m tools.bench_training

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/curbwatch schema export --check

schemas: setup
	$(BIN)/curbwatch schema export

demo: setup
	$(BIN)/curbwatch demo

# The README's pictures, from the demo scenario in Debian's headless Chromium (/usr/bin/chromium).
screenshots: setup
	$(BIN)/python -m tools.screenshots

clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache

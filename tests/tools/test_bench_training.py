"""tools.bench_training: its section states the measurements and the target honestly, between its markers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from curbwatch.training.evaluate import ClassMetrics, DetectionMetrics
from curbwatch.training.registry import FileRef, Quantization, RegistryEntry, SpeedRow
from tools.bench_training import MARKS, Int8Result, LoopTimes, render
from tools.delivery_report import RunInfo, write_section

REF = FileRef(path="bin/x.onnx", sha256="0" * 64, size_bytes=10)
INFO = RunInfo(datetime(2026, 11, 27, 12, 0, tzinfo=UTC), "python -m tools.bench_training", "a CPU", "v")


def result(speedups: tuple[float, float], map_int8: float) -> Int8Result:
    metrics = DetectionMetrics(
        method="edge-onnx", model="m", model_sha256="0" * 64, data="d", split="val", images=22, map50=0.99,
        map50_95=0.7, per_class=[ClassMetrics(name="car", images=9, instances=12, ap50=0.99, ap50_95=0.7)],
    )  # fmt: skip
    speed = [
        SpeedRow(threads=n, fp32_ms=20.0, int8_ms=20.0 / s, speedup=s) for n, s in enumerate(speedups, 1)
    ]
    quantization = Quantization(
        file=REF, method="static", calibration_images=32, excluded_nodes=200,
        speed=speed,
        speed_images=8, runs=200, load_average=1.5, accuracy_images=22, map50_fp32=0.99, map50_int8=map_int8,
        map50_delta_points=round(100 * (map_int8 - 0.99), 2),
    )  # fmt: skip
    entry = RegistryEntry(
        name="bench", version="1", created_at=INFO.started, family="ultralytics", input_size_hw=(320, 320),
        class_names=["car"], file=REF, metrics=metrics, quantization=quantization,
    )  # fmt: skip
    return Int8Result(
        entry, train_images=84, val_images=22, epochs=30, imgsz=320, train_s=400, ultralytics_map50=0.995
    )


LOOP = LoopTimes({"train dataset": 2.0, "train run (1 epoch, 160 px)": 30.0}, images=30)


@pytest.mark.parametrize(
    ("speedups", "map_int8", "verdict"),
    [
        (
            (1.7, 1.6),
            0.985,
            "(0.50 points lost): **met** with 1 thread (1.70×), **met** with 2 threads (1.60×).",
        ),
        (
            (1.7, 1.4),
            0.99,
            "(0.00 points lost): **met** with 1 thread (1.70×), **not met** with 2 threads (1.40×).",
        ),
        (
            (2.0, 2.0),
            0.97,
            "(2.00 points lost): **not met** with 1 thread (2.00×), **not met** with 2 threads",
        ),
    ],
)
def test_target_verdict(speedups: tuple[float, float], map_int8: float, verdict: str) -> None:
    text = render(LOOP, result(speedups, map_int8), INFO)
    assert f"Target ≥ 1.5× faster with ≤ 1 mAP50 point lost {verdict}" in text
    assert "| **whole loop** | **32.0 s** |" in text and "| 1 | 20.00 ms |" in text


def test_section_is_spliced_between_its_markers(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"# Benchmarks\n\nothers\n\n{MARKS[0]}\nstale\n{MARKS[1]}\ntail\n", encoding="utf-8")
    write_section(out, render(LOOP, result((1.7, 1.6), 0.99), INFO), MARKS)
    written = out.read_text(encoding="utf-8")
    assert written.startswith("# Benchmarks\n\nothers\n\n") and written.endswith(f"{MARKS[1]}\ntail\n")
    assert "stale" not in written and "## Retraining loop and INT8 (issue 5)" in written

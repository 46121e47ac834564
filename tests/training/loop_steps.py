"""The retraining loop's commands on generated data, shared by the tests that need a trained model.

Verdicts in a fresh SQLite server database -> ``train dataset`` -> ``train run`` (yolov8n.yaml, 1 epoch,
160 px) -> ``train eval`` -> ``train export`` (ONNX with metadata, INT8, registry card ``street@1``).
Each command runs as its own process (as a user runs them), so the test process never imports torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from curbwatch.schema.yamlio import dump_yaml
from curbwatch.server.db import make_engine, make_session_factory
from curbwatch.training.registry import Registry
from tests.conftest import REPO_ROOT
from tests.scenarios import ZONE_FILE_DATA
from tests.training.conftest import ULTRALYTICS_ENV, fresh_database
from tests.training.factories import CLASSES, VerdictDb, street_cases

CURBWATCH = [sys.executable, "-c", "from curbwatch.cli import main; main()"]


def curbwatch(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one ``curbwatch`` command in its own process, offline for Ultralytics."""
    env = {**os.environ, **ULTRALYTICS_ENV}
    command = [*CURBWATCH, *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``done``, after asserting it succeeded (its output tail is the failure message)."""
    assert done.returncode == 0, f"{done.args[3:]}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@dataclass(frozen=True)
class Loop:
    """What one run of the loop left behind.

    Attributes:
        root: The run's folder.
        database_url: The server database holding the verdicts the dataset came from.
        data: The dataset's ``data.yaml``.
        run: The training run's folder.
        registry: The registry holding ``street@1``.
        zones_ok: A zone file whose classes the model knows.
        eval_out: The output of ``train eval``.
        export_out: The output of ``train export``.
    """

    root: Path
    database_url: str
    data: Path
    run: Path
    registry: Registry
    zones_ok: Path
    eval_out: subprocess.CompletedProcess[str]
    export_out: subprocess.CompletedProcess[str]


def run_loop(root: Path) -> Loop:
    """Run the loop in ``root``: verdicts -> dataset -> 1 epoch -> evaluation -> ``street@1`` exported."""
    data = root / "datasets" / "street"
    (url,) = fresh_database("sqlite", root)
    engine = make_engine(url)
    street_cases(VerdictDb(make_session_factory(engine), root / "evidence"))
    engine.dispose()
    source = ["--database-url", url, "--evidence-dir", root / "evidence"]
    ok(curbwatch("train", "dataset", *source, "--out", data, "--classes", ",".join(CLASSES)))
    run = root / "runs" / "street"
    settings = ["--from-yaml", "yolov8n.yaml", "--epochs", "1", "--imgsz", "160"]
    settings += ["--batch", "8", "--workers", "0", "--device", "cpu"]
    train_args = ["--data", data / "data.yaml", *settings, "--runs-dir", run.parent, "--name", "street"]
    ok(curbwatch("train", "run", *train_args))
    best = run / "weights" / "best.pt"
    eval_out = ok(curbwatch("train", "eval", "--model", best, "--data", data / "data.yaml"))
    zone = {**ZONE_FILE_DATA, "zones": [{**ZONE_FILE_DATA["zones"][0], "vehicle_classes": ["car"]}]}
    zones_ok = root / "zones" / "cam.yaml"
    zones_ok.parent.mkdir()
    zones_ok.write_text(dump_yaml(zone))
    registry = Registry(root / "models")
    export_args = ["--weights", best, "--data", data / "data.yaml", "--name", "street"]
    export_args += ["--version", "1", "--registry", registry.root, "--out-dir", root / "bin"]
    export_args += ["--zones", zones_ok, "--calibration-images", "8", "--speed-runs", "5"]
    export_args += ["--eval", run / "eval" / "report.json"]
    export_out = ok(curbwatch("train", "export", *export_args))
    return Loop(root, url, data / "data.yaml", run, registry, zones_ok, eval_out, export_out)

"""``curbwatch train run``: its checks before training and the curves it draws (no torch needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.training.train import (
    TrainConfig,
    TrainingError,
    load_summary,
    plot_curves,
    read_results,
    train,
)

NOW = datetime(2026, 11, 28, tzinfo=UTC)
RESULTS = (
    "                  epoch,         time,      train/box_loss,      train/cls_loss,      train/dfl_loss,"
    "   metrics/precision(B),      metrics/recall(B),       metrics/mAP50(B),    metrics/mAP50-95(B),"
    "        val/box_loss,        val/cls_loss,        val/dfl_loss\n"
    "1,8.5,3.4,6.1,2.3,0,0,0,0,7.0,7.5,4.2\n"
    "2,16.9,2.9,4.0,2.0,0.2,0.1,0.05,0.02,5.0,5.5,3.0\n"
    "3,25.1,2.1,2.5,1.6,0.6,0.5,0.45,0.2,3.0,2.9,2.1\n"
)


def test_results_are_read_and_drawn(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text(RESULTS)
    rows = read_results(csv)
    assert [row["epoch"] for row in rows] == [1, 2, 3] and rows[2]["metrics/mAP50(B)"] == 0.45
    picture = plot_curves(rows, tmp_path / "curves.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give exactly one of --model"),
        ({"model": "m.pt", "from_yaml": "yolov8n.yaml"}, "give exactly one of --model"),
        ({"model": "m.onnx"}, r"m\.onnx: fine-tuning needs PyTorch weights \(\.pt\)"),
        ({"model": "missing.pt"}, r"missing\.pt: no such weights file"),
        ({"from_yaml": "yolov8n.yaml", "data": "nowhere/data.yaml"}, "no such data.yaml; build one with"),
    ],
)
def test_bad_requests_fail_before_training(tmp_path: Path, fields: dict, message: str) -> None:
    fields = {"data": tmp_path / "data.yaml", **fields}
    if "model" in fields:
        fields["model"] = tmp_path / fields["model"]
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(TrainingError, match=message):
        train(TrainConfig.model_validate(fields), now=NOW)


def test_cli_reports_bad_settings(tmp_path: Path) -> None:
    runner = CliRunner()
    odd = runner.invoke(
        app, ["train", "run", "--data", str(tmp_path / "d.yaml"), "--from-yaml", "x.yaml", "--imgsz", "100"]
    )
    assert odd.exit_code == 1 and "invalid training settings" in odd.stderr and "multiple of 32" in odd.stderr
    onnx = runner.invoke(
        app, ["train", "run", "--data", str(tmp_path / "d.yaml"), "--model", str(tmp_path / "m.onnx")]
    )
    assert onnx.exit_code == 1 and "fine-tuning needs PyTorch weights" in onnx.stderr


def test_no_summary_for_weights_outside_a_run(tmp_path: Path) -> None:
    assert load_summary(tmp_path / "weights" / "best.pt") is None

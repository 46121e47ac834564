"""The whole retraining loop through the ``curbwatch`` commands, on small generated data, on CPU.

Verdicts in a server database -> ``train dataset`` -> ``train run`` (1 epoch, 160 px) -> ``train eval``
-> ``train export`` (ONNX with metadata, INT8, registry card) -> the edge detector loads both models
from their metadata alone. Each command runs as its own process (as a user runs them), so this test
process never imports torch. About a minute and a half on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from curbwatch.edge.detect.card import file_sha256
from curbwatch.edge.detect.onnx import DetectorConfig, OnnxDetector
from curbwatch.schema.yamlio import dump_yaml
from tests.edge.detect.test_onnx import needs_ultralytics
from tests.scenarios import ZONE_FILE_DATA
from tests.training.factories import CLASSES
from tests.training.loop_steps import Loop, curbwatch, ok, run_loop

pytestmark = [pytest.mark.train, needs_ultralytics]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Loop:
    return run_loop(tmp_path_factory.mktemp("loop"))


def test_dataset_and_training_run(loop: Loop) -> None:
    card = json.loads((loop.data.parent / "dataset_card.json").read_text())
    assert card["counts"]["train"]["images"] > 10 and card["counts"]["val"]["images"] > 0
    summary = json.loads((loop.run / "train_summary.json").read_text())
    assert summary["parent"] == {"kind": "yaml", "ref": "yolov8n.yaml", "sha256": None}
    assert summary["dataset"]["card_sha256"] == file_sha256(loop.data.parent / "dataset_card.json")
    assert summary["class_names"] == list(CLASSES) and summary["seed"] == 0 and summary["device"] == "cpu"
    assert summary["weights_sha256"] == file_sha256(loop.run / "weights" / "best.pt")
    for picture in ("curves.png", "results.png"):
        assert (loop.run / picture).stat().st_size > 10_000


def test_evaluation_report(loop: Loop) -> None:
    assert "ultralytics-val: mAP50" in loop.eval_out.stdout and "promoted" in loop.eval_out.stdout
    report = (loop.run / "eval" / "report.md").read_text()
    assert "| class | images | instances | AP50 | AP50-95 |" in report
    assert all(f"| {name} |" in report for name in CLASSES)
    assert (loop.run / "eval" / "ap_per_class.png").is_file() and (
        loop.run / "eval" / "pr_candidate.png"
    ).is_file()


def test_registered_model_loads_on_the_edge_from_metadata(loop: Loop, tmp_path: Path) -> None:
    entry = loop.registry.get("street@1")
    assert "registered street@1" in loop.export_out.stdout and "INT8: " not in loop.export_out.stdout
    assert entry.class_names == list(CLASSES) and entry.input_size_hw == (160, 160)
    assert entry.dataset is not None and entry.dataset.sha256 == file_sha256(
        loop.data.parent / "dataset_card.json"
    )
    assert entry.parent is not None and entry.parent.ref == "yolov8n.yaml"
    assert entry.training is not None and entry.training.epochs == 1
    assert entry.evaluation is not None and entry.evaluation.promoted
    assert entry.metrics is not None and entry.metrics.method == "edge-onnx"
    assert [c.name for c in entry.metrics.per_class] == list(CLASSES)
    q = entry.quantization
    assert q is not None and [row.threads for row in q.speed] == [1, 2] and q.calibration_images == 8
    assert all(row.fp32_ms > 0 and row.int8_ms > 0 for row in q.speed) and q.excluded_nodes > 0
    for ref in (entry.file, entry.weights, q.file):
        assert ref is not None and loop.registry.verify(ref) is None
    image = cv2.imread(str(next((loop.data.parent / "images" / "val").glob("*.jpg"))))
    for ref, name in ((entry.file, "street"), (q.file, "street.int8")):
        detector = OnnxDetector(DetectorConfig(model_path=loop.registry.resolve(ref), models_dir=tmp_path))
        assert detector.card.name == name and detector.card.version == "1"
        assert detector.class_names == tuple(CLASSES) and detector.card.input_size_hw == (160, 160)
        assert detector.card.sha256 == ref.sha256
        detector.detect(image)  # runs on a frame of another size
    shown = ok(curbwatch("models", "show", "street@1", "--registry", loop.registry.root))
    assert shown.stdout.count(": ok") == 3
    listed = ok(curbwatch("models", "list", "--registry", loop.registry.root))
    assert "street@1" in listed.stdout and "ultralytics" in listed.stdout


def test_onnx_gate_with_a_baseline(loop: Loop) -> None:
    entry = loop.registry.get("street@1")
    models = ["--model", "street@1", "--baseline", "street@1", "--registry", loop.registry.root]
    same = curbwatch("train", "eval", *models, "--data", loop.data, "--out", loop.root / "gate")
    assert same.returncode == 0 and "edge-onnx: mAP50" in same.stdout, same.stderr[-2000:]
    report = json.loads((loop.root / "gate" / "report.json").read_text())
    assert report["candidate"]["map50"] == report["baseline"]["map50"] == entry.metrics.map50


def test_export_refuses_bad_requests(loop: Loop) -> None:
    base = [
        "train",
        "export",
        "--data",
        loop.data,
        "--registry",
        loop.registry.root,
        "--out-dir",
        loop.root / "bin",
    ]
    weights = ["--weights", loop.run / "weights" / "best.pt", "--name", "street"]
    again = curbwatch(*base, *weights, "--version", "1")
    assert again.returncode == 1 and "street@1 is already registered" in again.stderr
    bad_zone = {
        **ZONE_FILE_DATA,
        "zones": [{**ZONE_FILE_DATA["zones"][0], "vehicle_classes": ["car", "tuk-tuk"]}],
    }
    zones = loop.root / "zones" / "bad.yaml"
    zones.write_text(dump_yaml(bad_zone))
    refused = curbwatch(*base, *weights, "--version", "2", "--zones", zones)
    assert refused.returncode == 1 and "classes the model does not know: tuk-tuk" in refused.stderr
    onnx = curbwatch(
        *base,
        "--weights",
        loop.registry.resolve(loop.registry.get("street@1").file),
        "--name",
        "x",
        "--version",
        "1",
    )
    assert onnx.returncode == 1 and "expected an existing PyTorch weights file (.pt)" in onnx.stderr
    other = loop.root / "other-report.json"
    other.write_text(json.dumps({"candidate": {"model_sha256": "0" * 64}, "decision": {"promoted": True}}))
    mixed = curbwatch(*base, *weights, "--version", "2", "--eval", other)
    assert mixed.returncode == 1 and "evaluated another model" in mixed.stderr
    assert not (loop.registry.root / "registry" / "street" / "2.yaml").exists()

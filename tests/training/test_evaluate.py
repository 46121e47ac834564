"""``curbwatch train eval``: mAP through the edge detector, the promotion gate, violations, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.schema.detlog import write_frame
from curbwatch.schema.yamlio import dump_yaml
from curbwatch.training.evaluate import (
    DetectionMetrics,
    EvaluationError,
    TruthEpisode,
    decide,
    run_evaluation,
    violation_metrics,
)
from tests.edge.test_replay_scenarios import SCENARIOS
from tests.scenarios import ZONE_FILE_DATA, render
from tests.training.fake_models import constant_detector

NAMES = ("car", "person")
CAR = (0, 32.0, 32.0, 20.0, 20.0)  # class, cx, cy, w, h in the 64x64 input
PERSON = (1, 10.0, 15.0, 10.0, 20.0)


def dataset(root: Path, images: int = 3) -> Path:
    """64x64 images, each with the car and the person above."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for n in range(images):
            cv2.imwrite(
                str(root / "images" / split / f"{n}.jpg"), np.full((64, 64, 3), 60 + 20 * n, np.uint8)
            )
            lines = [f"{c} {cx / 64} {cy / 64} {w / 64} {h / 64}" for c, cx, cy, w, h in (CAR, PERSON)]
            (root / "labels" / split / f"{n}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: car, 1: person}\n")
    return data


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    good = constant_detector(tmp_path / "good.onnx", NAMES, [(*CAR, 0.9), (*PERSON, 0.8)])
    # Finds the car, but puts the person where there is none.
    worse = constant_detector(tmp_path / "worse.onnx", NAMES, [(*CAR, 0.9), (1, 50.0, 50.0, 10.0, 20.0, 0.8)])
    trucks = constant_detector(tmp_path / "trucks.onnx", ("car", "truck"), [(*CAR, 0.9)])
    return {"good": good, "worse": worse, "trucks": trucks}


def test_better_model_is_promoted_worse_is_not(tmp_path: Path, models: dict[str, Path]) -> None:
    data = dataset(tmp_path / "ds")
    report, markdown = run_evaluation(models["good"], data, tmp_path / "up", baseline=models["worse"])
    assert report.candidate.method == "edge-onnx" and report.candidate.images == 3
    assert report.candidate.map50 == pytest.approx(0.995) and report.baseline is not None
    assert report.baseline.map50 == pytest.approx(0.995 / 2)
    assert report.decision.promoted
    text = markdown.read_text()
    assert (
        "**Decision: promoted**" in text and "| person | 3 | 3 | 0.9950 | 0.9950 | 0.0000 | 0.0000 |" in text
    )
    for plot in ("ap_per_class.png", "pr_candidate.png", "pr_baseline.png"):
        assert (tmp_path / "up" / plot).stat().st_size > 1000 and f"]({plot})" in text

    report, _ = run_evaluation(models["worse"], data, tmp_path / "down", baseline=models["good"], margin=0.01)
    assert not report.decision.promoted
    assert "mAP50 0.4975 vs baseline 0.9950: worse than the baseline" in report.decision.reasons[0]
    saved = json.loads((tmp_path / "down" / "report.json").read_text())
    assert saved["decision"]["promoted"] is False
    report, _ = run_evaluation(
        models["worse"], data, tmp_path / "lenient", baseline=models["good"], margin=0.6
    )
    assert report.decision.promoted


def test_cli_exit_codes(tmp_path: Path, models: dict[str, Path]) -> None:
    data = dataset(tmp_path / "ds")
    runner = CliRunner()
    base = ["train", "eval", "--data", str(data), "--out", str(tmp_path / "cli")]
    promoted = runner.invoke(app, [*base, "--model", str(models["good"]), "--baseline", str(models["worse"])])
    assert promoted.exit_code == 0, promoted.output
    assert "edge-onnx: mAP50 0.9950" in promoted.stdout and "promoted:" in promoted.stdout
    refused = runner.invoke(app, [*base, "--model", str(models["worse"]), "--baseline", str(models["good"])])
    assert refused.exit_code == 2 and "NOT promoted" in refused.stdout
    lonely = runner.invoke(app, [*base, "--model", str(models["good"]), "--detlogs", str(tmp_path)])
    assert lonely.exit_code == 1 and "--detlogs needs --zones" in lonely.stderr
    unknown = runner.invoke(app, [*base, "--model", "nosuch@1", "--registry", str(tmp_path / "models")])
    assert unknown.exit_code == 1 and "no model nosuch@1" in unknown.stderr


def test_bad_inputs(tmp_path: Path, models: dict[str, Path]) -> None:
    data = dataset(tmp_path / "ds")
    with pytest.raises(
        EvaluationError, match=r"trucks\.onnx has classes \['car', 'truck'\] but the dataset has"
    ):
        run_evaluation(models["trucks"], data, tmp_path / "a")
    with pytest.raises(EvaluationError, match="different kinds of file"):
        run_evaluation(models["good"], data, tmp_path / "b", baseline=tmp_path / "old.pt")
    with pytest.raises(EvaluationError, match=r"expected PyTorch weights \(\.pt\) or an ONNX model"):
        run_evaluation(tmp_path / "model.tflite", data, tmp_path / "c")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(EvaluationError, match="the edge detector cannot load"):
        run_evaluation(junk, data, tmp_path / "d")


def test_zone_classes_the_model_lacks_are_refused(tmp_path: Path, models: dict[str, Path]) -> None:
    data = dataset(tmp_path / "ds")
    zones = tmp_path / "zones"
    zones.mkdir()
    fitting = {**ZONE_FILE_DATA, "zones": [{**ZONE_FILE_DATA["zones"][0], "vehicle_classes": ["car"]}]}
    fitting["zones"][0]["two_wheeler_classes"] = []
    (zones / "ok.yaml").write_text(dump_yaml(fitting))
    report, _ = run_evaluation(models["good"], data, tmp_path / "ok", zones=zones)
    assert report.violations is None
    # The scenario zone file leaves the two-wheeler and vending classes at their defaults: warned about.
    (zones / "scn.yaml").write_text(dump_yaml(ZONE_FILE_DATA))
    report, markdown = run_evaluation(models["good"], data, tmp_path / "warned", zones=zones)
    assert any("knows none of its two_wheeler_classes (motorcycle, bicycle)" in w for w in report.warnings)
    assert any("knows none of its vending_classes" in w for w in report.warnings)
    assert "## Warnings" in markdown.read_text()
    # A class a zone names explicitly and the model lacks: refused, with the file and line.
    explicit = {
        **ZONE_FILE_DATA,
        "zones": [{**ZONE_FILE_DATA["zones"][0], "vehicle_classes": ["car", "truck"]}],
    }
    (zones / "scn.yaml").write_text(dump_yaml(explicit))
    with pytest.raises(EvaluationError, match=r"zone files do not fit .*good\.onnx") as caught:
        run_evaluation(models["good"], data, tmp_path / "bad", zones=zones)
    assert "scn.yaml:" in str(caught.value) and "classes the model does not know: truck" in str(caught.value)
    result = CliRunner().invoke(
        app, ["train", "eval", "--model", str(models["good"]), "--data", str(data), "--zones", str(zones)]
    )
    assert result.exit_code == 1 and "classes the model does not know" in result.stderr


def write_logs(
    folder: Path, zones: Path, scenarios: list, extra_truth: list[TruthEpisode] | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    zones.mkdir(parents=True, exist_ok=True)
    for index, scn in enumerate(scenarios):
        stem = f"log-{index}"
        with (folder / f"{stem}.jsonl").open("w") as stream:
            for frame in render(scn, seed=index):
                write_frame(stream, frame)
        episodes = [
            {
                "zone": t.zone,
                "violation": t.violation.value,
                "begin_ts": scn.start_ts + t.begin_t,
                "end_ts": scn.start_ts + t.end_t,
            }
            for t in scn.truth
        ]
        if index == 0 and extra_truth:
            episodes += [t.model_dump() for t in extra_truth]
        (folder / f"{stem}.truth.json").write_text(json.dumps({"episodes": episodes}))
        (zones / f"{stem}.yaml").write_text(dump_yaml(ZONE_FILE_DATA))


def test_violation_precision_and_recall_from_replayed_logs(tmp_path: Path) -> None:
    chosen = [
        s for s in SCENARIOS if s.name in ("parked car", "passing traffic", "two cars, traffic between")
    ]
    write_logs(tmp_path / "logs", tmp_path / "zones", chosen)
    (tmp_path / "logs" / "unscored.jsonl").write_text("")  # no truth: not scored
    result = violation_metrics(tmp_path / "logs", tmp_path / "zones")
    assert [(r.log, r.truth, r.predicted, r.matched) for r in result.logs] == [
        ("log-0.jsonl", 1, 1, 1),
        ("log-1.jsonl", 0, 0, 0),
        ("log-2.jsonl", 2, 2, 2),
    ]
    assert result.precision == 1.0 and result.recall == 1.0


def test_missed_and_false_episodes_lower_recall_and_precision(tmp_path: Path) -> None:
    parked = next(s for s in SCENARIOS if s.name == "parked car")
    # A true episode the logs never show (missed), and one in the wrong zone (so the reported one is false).
    missed = TruthEpisode(
        zone="kerb",
        violation="illegal_parking",
        begin_ts=parked.start_ts + 5000,
        end_ts=parked.start_ts + 6000,
    )
    write_logs(tmp_path / "logs", tmp_path / "zones", [parked], [missed])
    result = violation_metrics(tmp_path / "logs", tmp_path / "zones")
    assert (result.precision, result.recall) == (1.0, 0.5)
    truth = json.loads((tmp_path / "logs" / "log-0.truth.json").read_text())
    truth["episodes"][0]["zone"] = "pavement"
    (tmp_path / "logs" / "log-0.truth.json").write_text(json.dumps(truth))
    result = violation_metrics(tmp_path / "logs", tmp_path / "zones")
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_violation_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=r"no detection log \(\*\.jsonl\) with a <stem>\.truth\.json"):
        violation_metrics(tmp_path, tmp_path)
    parked = next(s for s in SCENARIOS if s.name == "parked car")
    write_logs(tmp_path / "logs", tmp_path / "zones", [parked])
    (tmp_path / "zones" / "log-0.yaml").unlink()
    with pytest.raises(EvaluationError, match=r"cannot replay .*log-0\.jsonl against .*log-0\.yaml"):
        violation_metrics(tmp_path / "logs", tmp_path / "zones")


def metrics(
    method: str = "edge-onnx", data: str = "d.yaml", map50: float = 0.5, map50_95: float = 0.3
) -> DetectionMetrics:
    return DetectionMetrics(
        method=method,
        model="m",
        model_sha256="0" * 64,
        data=data,
        split="val",
        images=1,
        map50=map50,
        map50_95=map50_95,
        per_class=[],
    )


def test_decide() -> None:
    assert decide(metrics(), None, 0.01).promoted
    assert decide(metrics(map50=0.495), metrics(), 0.01).promoted  # within the margin
    worse = decide(metrics(map50_95=0.28), metrics(), 0.01)
    assert not worse.promoted and "mAP50-95 0.2800 vs baseline 0.3000: worse" in worse.reasons[1]
    with pytest.raises(EvaluationError, match="not measured the same way"):
        decide(metrics(), metrics(method="ultralytics-val"), 0.01)
    with pytest.raises(EvaluationError, match="not measured the same way"):
        decide(metrics(), metrics(data="other.yaml"), 0.01)

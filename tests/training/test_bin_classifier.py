"""Bin-state classifier training: the measured accuracy on the real photos, the artefact, bad inputs."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.bin_classifier import BinStateArtefact, add_graph_outputs, load_bin_artefact
from curbwatch.edge.detect.card import file_sha256
from curbwatch.training.bin_classifier import (
    C_GRID,
    SHIPPED,
    TARGET_ACCURACY,
    YOLOX_NANO_LAYERS,
    BinTrainingError,
    FeatureSet,
    TrainingResult,
    fit_averaged_block,
    fit_block,
    fit_head,
    load_photos,
    read_photo,
    train_bin_classifier,
)
from tests.conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "models" / "bin_state_v2.json"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture(scope="module")
def bins_dir(data_dir: Path) -> Path:
    return data_dir / "amsterdam-bins"


@pytest.fixture(scope="module")
def measured(bins_dir: Path, yolox_nano_path: Path) -> TrainingResult:
    """The committed artefact's own recipe (defaults of `curbwatch train bins`), run afresh."""
    return train_bin_classifier(bins_dir, yolox_nano_path, NOW)


@pytest.mark.slow
def test_cross_validated_accuracy_is_the_reported_one(measured: TrainingResult) -> None:
    """Cross-validation on the 22 real photos, as in models/bin_state_v2.md; approaches that choose C
    choose it inside each training fold."""
    approaches = measured.artefact.metrics["approaches"]
    shipped, colour = approaches[SHIPPED]["kfold"], approaches["colour"]["kfold"]
    majority = 15 / 22
    assert shipped["scheme"] == "7-fold x10"
    assert shipped["accuracy_mean"] > colour["accuracy_mean"] + 0.05  # beats the model-free colour baseline
    assert shipped["accuracy_mean"] > majority + 0.15
    assert shipped["balanced_accuracy_mean"] >= 0.78
    assert approaches[SHIPPED]["loo"]["accuracy_mean"] >= 0.85
    assert sum(map(sum, shipped["confusion"])) == 10 * 22
    # The mean over the C grid is one candidate: nothing is chosen, so no inner loop can leak.
    assert list(shipped["chosen_c"].values()) == [7 * 10]
    assert approaches["fused"]["kfold"]["accuracy_mean"] < shipped["accuracy_mean"]


@pytest.mark.slow
def test_cross_validated_accuracy_reaches_the_target(measured: TrainingResult) -> None:
    """The issue's target, on photos neither the weights nor any choice saw."""
    assert measured.artefact.metrics["approaches"][SHIPPED]["kfold"]["accuracy_mean"] >= TARGET_ACCURACY


@pytest.mark.slow
def test_committed_artefact_is_what_the_recipe_produces(measured: TrainingResult) -> None:
    committed = load_bin_artefact(COMMITTED)
    fresh = measured.artefact
    assert committed.metrics == json.loads(json.dumps(fresh.metrics))
    assert committed.detector == fresh.detector
    assert committed.features == fresh.features
    assert committed.data == fresh.data
    assert np.allclose(committed.head.weights, fresh.head.weights, rtol=1e-6, atol=1e-9)
    assert committed.head.bias == pytest.approx(fresh.head.bias, rel=1e-6)


def test_committed_artefact_names_the_shared_detector_and_the_photos(
    yolox_nano_path: Path, bins_dir: Path
) -> None:
    artefact = load_bin_artefact(COMMITTED)
    assert artefact.detector.sha256 == file_sha256(yolox_nano_path)
    assert [layer.tensor for layer in artefact.features.layers] == ["990", "1024"]
    photos = {p.relative: p.sha256 for p in load_photos(bins_dir)}
    assert {entry["file"]: entry["sha256"] for entry in artefact.data["photos"]} == photos
    assert artefact.data["counts"] == {"clean": 7, "overflow": 15}


def test_extra_outputs_make_the_model_the_onnx_package_would(yolox_nano_path: Path) -> None:
    """The protobuf append the edge uses equals adding the outputs with the onnx package."""
    onnx = pytest.importorskip("onnx")
    names = [layer.tensor for layer in YOLOX_NANO_LAYERS]
    appended = onnx.load_from_string(add_graph_outputs(yolox_nano_path.read_bytes(), names))
    expected = onnx.load(str(yolox_nano_path))
    expected.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    assert appended == expected
    inferred = onnx.shape_inference.infer_shapes(appended)
    onnx.checker.check_model(inferred)
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output}
    assert shapes["990"] == [1, 128, 26, 26] and shapes["1024"] == [1, 256, 13, 13]


def test_head_is_the_sum_of_the_blocks_mean_models() -> None:
    """One linear head: the deep block's logit is the mean of its fits over the C grid, plus colour's."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 6 + [1] * 10)
    values = rng.normal(size=(16, 2, 12)) + labels[:, None, None] * np.linspace(0, 1, 12)
    features = FeatureSet(values, labels, {"deep": slice(0, 8), "colour": slice(8, 12)})
    head = fit_head(features, choice={"deep": C_GRID["deep"], "colour": (1.0,)})
    deep = np.mean(
        [fit_block(values[:, :, :8], labels, c).logits(values[:, :, :8]) for c in C_GRID["deep"]], 0
    )
    colour = fit_block(values[:, :, 8:], labels, 1.0).logits(values[:, :, 8:])
    assert not np.allclose(
        deep, fit_block(values[:, :, :8], labels, C_GRID["deep"][0]).logits(values[:, :, :8])
    )
    standardised = (values - np.array(head.mean)) / np.array(head.std)
    combined = (standardised @ np.array(head.weights) + head.bias).mean(axis=1)
    assert np.allclose(combined, deep + colour)
    averaged = fit_averaged_block(values[:, :, :8], labels, C_GRID["deep"])
    assert np.allclose(averaged.logits(values[:, :, :8]), deep)


def test_missing_folder_and_too_few_photos_are_refused(tmp_path: Path, bins_dir: Path) -> None:
    with pytest.raises(BinTrainingError, match="no such directory"):
        load_photos(tmp_path / "nowhere")
    (tmp_path / "clean").mkdir()
    (tmp_path / "overflow").mkdir()
    shutil.copy(next((bins_dir / "clean").glob("*.jpg")), tmp_path / "clean")
    with pytest.raises(BinTrainingError, match=r"clean: need at least 2 photos per class.*found 1"):
        load_photos(tmp_path)


def test_corrupt_photo_is_named(tmp_path: Path, bins_dir: Path, yolox_nano_path: Path) -> None:
    for folder in ("clean", "overflow"):
        (tmp_path / folder).mkdir()
        for photo in sorted((bins_dir / folder).glob("*.jpg"))[:2]:
            shutil.copy(photo, tmp_path / folder)
    (tmp_path / "overflow" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    broken = next(p for p in load_photos(tmp_path) if p.path.name == "broken.jpg")
    with pytest.raises(BinTrainingError, match=r"broken\.jpg: not an image OpenCV can read"):
        read_photo(broken)
    with pytest.raises(BinTrainingError, match=r"broken\.jpg"):
        train_bin_classifier(tmp_path, yolox_nano_path, NOW, repeats=1, loo_repeats=1)


def test_cli_trains_on_a_small_set_and_writes_artefact_report_and_sheet(
    tmp_path: Path, bins_dir: Path, yolox_nano_path: Path
) -> None:
    data = tmp_path / "photos"
    for folder in ("clean", "overflow"):
        (data / folder).mkdir(parents=True)
        for photo in sorted((bins_dir / folder).glob("*.jpg"))[:3]:
            shutil.copy(photo, data / folder)
    out = tmp_path / "models" / "bins.json"
    result = runner.invoke(
        app,
        ["train", "bins", "--data", str(data), "--out", str(out), "--detector", str(yolox_nano_path),
         "--folds", "3", "--repeats", "1", "--loo-repeats", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "<- shipped" in result.stdout
    artefact = BinStateArtefact.model_validate_json(out.read_text())
    assert artefact.data["counts"] == {"clean": 3, "overflow": 3}
    assert artefact.metrics["approaches"][SHIPPED]["kfold"]["scheme"] == "3-fold x1"
    report = out.with_suffix(".md").read_text()
    assert "## Accuracy per approach" in report and "![contact sheet](bins.png)" in report
    sheet = out.with_suffix(".png")
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size < 300_000


def test_cli_reports_bad_inputs_without_a_traceback(tmp_path: Path, bins_dir: Path) -> None:
    missing = runner.invoke(app, ["train", "bins", "--data", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no such directory" in missing.stderr
    no_detector = runner.invoke(
        app, ["train", "bins", "--data", str(bins_dir), "--detector", str(tmp_path / "x.onnx")]
    )
    assert no_detector.exit_code == 1 and "x.onnx: no such file" in no_detector.stderr


def test_help_has_examples() -> None:
    result = runner.invoke(app, ["train", "bins", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "curbwatch train bins --data" in result.stdout


def test_committed_report_and_sheet_are_small_and_linked() -> None:
    report = (REPO_ROOT / "models" / "bin_state_v2.md").read_text()
    assert "![contact sheet](bin_state_v2.png)" in report
    assert (REPO_ROOT / "models" / "bin_state_v2.png").stat().st_size < 300_000
    assert load_bin_artefact(COMMITTED).metrics["shipped"] == SHIPPED

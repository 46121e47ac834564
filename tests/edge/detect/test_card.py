"""Model cards: validation with clear errors, lookup order, Ultralytics metadata."""

from __future__ import annotations

from contextlib import nullcontext as does_not_raise
from pathlib import Path

import pytest

from curbwatch.edge.detect.card import (
    DEFAULT_MODELS_DIR,
    ModelCard,
    ModelCardError,
    ModelFamily,
    UnsupportedModelError,
    card_candidates,
    card_from_metadata,
    file_sha256,
    load_card,
    resolve_card,
)

GOOD_CARD = """\
name: toy
version: "1"
family: yolox
input_size_hw: [64, 96]
class_names: [car, person]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_repo_card_for_shared_yolox_nano_is_valid(yolox_nano_path: Path) -> None:
    card = load_card(DEFAULT_MODELS_DIR / "yolox_nano.card.yaml")
    classes = (yolox_nano_path.parent / "coco_classes.txt").read_text().split("\n")
    assert card.family is ModelFamily.YOLOX
    assert card.input_size_hw == (416, 416)
    # The card spells six classes as COCO and Ultralytics do, where the shipped list has VOC spellings.
    renamed = {
        "motorbike": "motorcycle",
        "aeroplane": "airplane",
        "sofa": "couch",
        "pottedplant": "potted plant",
        "diningtable": "dining table",
        "tvmonitor": "tv",
    }
    assert list(card.class_names) == [renamed.get(name, name) for name in classes if name]
    assert card.sha256 == file_sha256(yolox_nano_path)
    assert card.licence == "Apache-2.0"


@pytest.mark.parametrize(
    ("replace", "by", "expect", "words"),
    [
        ("family: yolox", "family: yolox", does_not_raise(), ()),
        ("family: yolox", "family: yolo9000", pytest.raises(ModelCardError), ("family", ":3:", "yolox")),
        ("[64, 96]", "[64, 100]", pytest.raises(ModelCardError), ("input_size_hw", "largest stride 32")),
        ("[64, 96]", "[0, 96]", pytest.raises(ModelCardError), ("input_size_hw", "greater than 0")),
        ("[car, person]", "[]", pytest.raises(ModelCardError), ("class_names", "at least 1")),
        ("[car, person]", "[car, car]", pytest.raises(ModelCardError), ("unique", "car")),
        ('version: "1"', 'version: "1"\nsha256: xyz', pytest.raises(ModelCardError), ("sha256", ":3:")),
        (
            'version: "1"',
            'version: "1"\ncolour: red',
            pytest.raises(ModelCardError),
            ("colour", "not permitted"),
        ),
        ("name: toy\n", "", pytest.raises(ModelCardError), ("name", "required")),
    ],
)
def test_card_validation(tmp_path: Path, replace: str, by: str, expect, words: tuple[str, ...]) -> None:
    path = write(tmp_path / "toy.card.yaml", GOOD_CARD.replace(replace, by))
    with expect as info:
        card = load_card(path)
        assert card.class_names == ("car", "person")
    if info is not None:
        message = str(info.value)
        assert str(path) in message
        for word in words:
            assert word in message


def test_unreadable_or_broken_yaml_card(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="cannot read file"):
        load_card(tmp_path / "absent.card.yaml")
    with pytest.raises(ModelCardError, match="invalid YAML"):
        load_card(write(tmp_path / "bad.card.yaml", "name: [unclosed\n"))


def test_card_lookup_prefers_file_beside_model(tmp_path: Path) -> None:
    model = write(tmp_path / "net.onnx", "not really onnx")
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    assert card_candidates(model, models_dir) == [tmp_path / "net.card.yaml", models_dir / "net.card.yaml"]
    write(models_dir / "net.card.yaml", GOOD_CARD.replace("name: toy", "name: from-dir"))
    assert resolve_card(model, models_dir, {}).name == "from-dir"
    write(tmp_path / "net.card.yaml", GOOD_CARD.replace("name: toy", "name: beside"))
    card = resolve_card(model, models_dir, {})
    assert card.name == "beside"
    assert card.sha256 == file_sha256(model)


def test_card_sha256_mismatch_is_a_load_error(tmp_path: Path) -> None:
    model = write(tmp_path / "net.onnx", "weights v2")
    write(tmp_path / "net.card.yaml", GOOD_CARD + f"sha256: '{'0' * 64}'\n")
    with pytest.raises(ModelCardError, match=r"is for sha256 0{64}, but .*net\.onnx has sha256 [0-9a-f]{64}"):
        resolve_card(model, None, {})


def test_no_card_and_no_metadata(tmp_path: Path) -> None:
    model = write(tmp_path / "net.onnx", "x")
    with pytest.raises(UnsupportedModelError, match=r"no model card found \(looked for .*net\.card\.yaml"):
        resolve_card(model, tmp_path / "models", {"producer": "me"})


ULTRALYTICS_METADATA = {
    "description": "Ultralytics YOLOv8n model",
    "author": "Ultralytics",
    "version": "8.3.0",
    "license": "AGPL-3.0 License (https://ultralytics.com/license)",
    "stride": "32",
    "task": "detect",
    "batch": "1",
    "imgsz": "[320, 320]",
    "names": "{0: 'car', 1: 'person', 2: 'bin'}",
}


def test_card_from_ultralytics_metadata() -> None:
    card = card_from_metadata(ULTRALYTICS_METADATA, "/m/yolov8n.onnx")
    assert card == ModelCard(
        name="yolov8n",
        version="8.3.0",
        family=ModelFamily.ULTRALYTICS,
        input_size_hw=(320, 320),
        class_names=("car", "person", "bin"),
        strides=(8, 16, 32),
        licence=ULTRALYTICS_METADATA["license"],
        source="Ultralytics YOLOv8n model",
    )
    assert card_from_metadata({"producer": "pytorch"}, "x.onnx") is None


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("task", "segment", "task is 'segment', expected 'detect'"),
        ("names", "{0: 'car', 2: 'bin'}", "must map 0..N-1"),
        ("names", "{0: 'car'", "'names' is not a Python literal"),
        ("imgsz", "[320, 333]", "does not make a valid card"),
    ],
)
def test_bad_ultralytics_metadata(key: str, value: str, match: str) -> None:
    with pytest.raises(UnsupportedModelError, match=match):
        card_from_metadata({**ULTRALYTICS_METADATA, key: value}, "m.onnx")

"""``curbwatch train synth-data``: synthetic scenes -> a YOLO dataset with exact labels, split by scene."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.synth.layout import Camera
from curbwatch.edge.synth.script import CLASSES, plan_scenario
from curbwatch.edge.synth.truth import ground_truth
from curbwatch.training.dataset_card import DatasetError, load_dataset_card
from curbwatch.training.synth_data import SynthDataConfig, build_synth_dataset, sampled_indices

START = datetime.fromisoformat("2026-11-25T09:00:00+08:00")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
# Short, small scenes keep the test fast; the script scales every situation to fit.
SMALL = SynthDataConfig(
    train_scenes=2, val_scenes=1, first_seed=300, seconds=20.0, every_s=4.0, frame_wh=(320, 180)
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    return build_synth_dataset(tmp_path_factory.mktemp("synth") / "synth-small", SMALL, now=NOW)


def _label_boxes(path: Path, width: int, height: int) -> list[tuple[int, list[float]]]:
    boxes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        class_id, cx, cy, w, h = line.split()
        cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
        boxes.append((int(class_id), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    return boxes


def test_labels_are_the_scene_ground_truth(built) -> None:
    card = built.card
    assert card.class_names == list(CLASSES)
    checked = 0
    for record in card.images:
        seed = int(record.camera.removeprefix("synth/seed-"))
        index = int(record.sources[0].event_id.removeprefix("frame-"))
        scenario = plan_scenario(SMALL.seconds, seed, SMALL.fps)
        truth = ground_truth(scenario, Camera(SMALL.frame_wh), "x", datetime.now(UTC))["frames"][index]
        label_path = built.out / record.file.replace("images/", "labels/", 1).replace(".jpg", ".txt")
        labels = _label_boxes(label_path, record.width, record.height)
        assert (record.width, record.height) == SMALL.frame_wh
        assert len(labels) == len(truth["boxes"]) > 0
        for (class_id, xyxy), expected in zip(labels, truth["boxes"], strict=True):
            assert CLASSES[class_id] == expected["label"]
            assert xyxy == pytest.approx(expected["xyxy"], abs=0.01)
        assert record.ts == START + timedelta(seconds=truth["t"])
        assert record.sources[0].case_id == f"seed-{seed}"
        checked += 1
    assert checked == len(card.images) == 3 * len(sampled_indices(plan_scenario(20.0, 300, 5.0), 4.0))


def test_split_keeps_whole_scenes_apart_and_never_uses_reserved_seeds(built) -> None:
    seeds_by_split: dict[str, set[int]] = {"train": set(), "val": set()}
    for record in built.card.images:
        seeds_by_split[record.split].add(int(record.camera.removeprefix("synth/seed-")))
        assert Path(built.out / record.file).is_file()
        assert record.file.startswith(f"images/{record.split}/")
    assert seeds_by_split == {"train": {300, 301}, "val": {302}}
    assert built.card.split["seeds"] == {"train": [300, 301], "val": [302, 302]}
    with pytest.raises(ValidationError, match="greater than or equal to 100"):
        SynthDataConfig(first_seed=1)


def test_card_counts_match_the_files(built) -> None:
    card = load_dataset_card(built.data_yaml)
    assert card == built.card
    for split, counts in card.counts.items():
        per_class: Counter[str] = Counter()
        files = sorted((built.out / "labels" / split).glob("*.txt"))
        for path in files:
            per_class.update(CLASSES[int(line.split()[0])] for line in path.read_text().splitlines())
        assert counts.images == len(files) == len(list((built.out / "images" / split).glob("*.jpg")))
        assert counts.per_class == dict(sorted(per_class.items()))
        assert counts.boxes == sum(per_class.values())
        assert counts.per_camera == {
            camera: n for camera, n in Counter(r.camera for r in card.images if r.split == split).items()
        }
    data = yaml.safe_load(built.data_yaml.read_text())
    assert data == {"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}
    assert "Train seeds 300-301, val seeds 302-302" in (built.out / "dataset_card.md").read_text()


def test_same_command_writes_the_same_images(built, tmp_path: Path) -> None:
    again = build_synth_dataset(tmp_path / "again", SMALL, now=NOW)
    assert [r.sha256 for r in again.card.images] == [r.sha256 for r in built.card.images]


def test_refuses_to_overwrite_without_asking(built) -> None:
    with pytest.raises(DatasetError, match="--overwrite"):
        build_synth_dataset(built.out, SMALL, now=NOW)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-scenes", "0"], "train_scenes: Input should be greater than or equal to 1"),
        (["--val-scenes", "0"], "val_scenes: Input should be greater than or equal to 1"),
        (["--width", "10"], "frame size 10x540 is too small"),
        (["--first-seed", "2"], "first_seed: Input should be greater than or equal to 100"),
        (["--every-s", "0.1"], "shorter than one frame"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["train", "synth-data", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code == 1
    assert "invalid synth-data settings" in result.stderr and message in result.stderr
    assert not (tmp_path / "d").exists()


def test_command_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    arguments = ["--train-scenes", "1", "--val-scenes", "1", "--first-seed", "400", "--seconds", "8"]
    result = CliRunner().invoke(
        app,
        [
            "train",
            "synth-data",
            "--out",
            str(out),
            *arguments,
            "--every-s",
            "4",
            "--width",
            "160",
            "--height",
            "96",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "train: 2 images" in result.stdout and "val: 2 images" in result.stdout
    assert load_dataset_card(out / "data.yaml").split["seeds"] == {"train": [400, 400], "val": [401, 401]}

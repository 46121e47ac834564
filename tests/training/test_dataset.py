"""``curbwatch train dataset``: verdicts in the server database -> YOLO dataset, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.training.dataset import export_dataset
from curbwatch.training.dataset_card import DatasetError, load_dataset_card
from curbwatch.training.split import SplitConfig, distances, phash
from tests.training.factories import (
    CLASSES,
    FRAME_WH,
    T0,
    Frame,
    VerdictDb,
    background,
    jpeg,
    scene,
    street_cases,
)
from tests.training.test_split import reencoded

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def read_labels(out: Path, record_file: str) -> list[tuple[int, list[float]]]:
    label = out / record_file.replace("images/", "labels/").replace(".jpg", ".txt")
    rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
    return [(int(row[0]), [float(v) for v in row[1:]]) for row in rows]


def yolo(box: tuple[float, float, float, float], size_wh: tuple[int, int] = FRAME_WH) -> list[float]:
    x1, y1, x2, y2 = box
    w, h = size_wh
    return [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]


def test_export_from_mixed_verdicts(verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path) -> None:
    street_cases(verdict_db, cameras=3, cases_per_camera=4)
    out = tmp_path / "street"
    result = export_dataset(
        fresh_database_url,
        verdict_db.evidence_dir,
        out,
        now=NOW,
        class_names=CLASSES,
        split=SplitConfig(block_s=1800),
    )
    card = result.card
    assert card.class_names == list(CLASSES) and card.created_at == NOW
    assert card.cases["unverified"] == 1 and card.cases["false_detection"] == 3
    assert "data.yaml" in str(result.data_yaml) and "names:" in result.data_yaml.read_text()
    train, val = card.counts["train"], card.counts["val"]
    assert train.images > 0 and val.images > 0 and train.images + val.images == len(card.images)
    assert sum(train.per_class.values()) == train.boxes
    for record in card.images:
        data = (out / record.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256  # the evidence bytes, unchanged
        assert record.camera.endswith(("cam-0", "cam-1", "cam-2"))
        assert all(source.case_id and source.event_id for source in record.sources)
        labels = read_labels(out, record.file)
        assert len(labels) == sum(record.labels.values())
        if {source.verdict for source in record.sources} == {"false_detection"}:
            assert labels == [] and record.removed_boxes > 0
    # Whole groups on one side: no case, and no camera-time block, in both splits.
    sides: dict[tuple, set[str]] = {}
    for record in card.images:
        block = (record.camera, int(record.ts.timestamp() // 1800))
        sides.setdefault(("block", *block), set()).add(record.split)
        for source in record.sources:
            sides.setdefault(("case", source.case_id), set()).add(record.split)
    assert all(len(found) == 1 for found in sides.values())
    # After dedup no two images on different sides are near-identical.
    hashes = {record.sha256: phash(_decode(out / record.file)) for record in card.images}
    train_hashes = np.asarray([hashes[r.sha256] for r in card.images if r.split == "train"], np.uint64)
    for record in (r for r in card.images if r.split == "val"):
        assert distances(train_hashes, hashes[record.sha256]).min() > card.dedup["max_distance_bits"]
    markdown = (out / "dataset_card.md").read_text()
    assert "## Label policy" in markdown and "false_detection | hard_negative" in markdown
    assert all(record.sha256 in markdown for record in card.images)
    assert load_dataset_card(result.data_yaml) == card


def _decode(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path))


def test_reject_reason_policy(verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = {}
    for n, verdict in enumerate(("confirm", "not_a_violation", "permitted", "duplicate", "false_detection")):
        image, objects = scene(rng, camera_seed=n, labels=["car", "person"])
        frames[verdict] = Frame(jpeg(image), objects)
        verdict_db.case(f"cam-{n}", T0 + timedelta(hours=n), [frames[verdict]], verdict)
    # One frame seen by two cases: a confirmed car, and a "motorcycle" the operator rejected as false.
    shared_image, shared_objects = scene(rng, camera_seed=9, labels=["car"])
    ghost = ("motorcycle", (10.0, 10.0, 50.0, 40.0))
    verdict_db.case("cam-9", T0, [Frame(jpeg(shared_image), shared_objects)], "confirm")
    verdict_db.case(
        "cam-9", T0 + timedelta(minutes=1), [Frame(jpeg(shared_image), [ghost])], "false_detection"
    )
    # A box confirmed in one case and rejected in another: conflicting, skipped.
    conflict_image, conflict_objects = scene(rng, camera_seed=8, labels=["person"])
    verdict_db.case("cam-8", T0, [Frame(jpeg(conflict_image), conflict_objects)], "confirm")
    verdict_db.case(
        "cam-8", T0 + timedelta(minutes=1), [Frame(jpeg(conflict_image), conflict_objects)], "false_detection"
    )

    out = tmp_path / "policy"
    card = export_dataset(fresh_database_url, verdict_db.evidence_dir, out, now=NOW, class_names=CLASSES).card
    by_sha = {record.sha256: record for record in card.images}
    for verdict in ("confirm", "not_a_violation", "permitted", "duplicate"):
        record = by_sha[frames[verdict].sha256]
        expected = sorted((CLASSES.index(label), yolo(box)) for label, box in frames[verdict].objects)
        got = sorted(read_labels(out, record.file))
        assert [c for c, _ in got] == [c for c, _ in expected]
        for (_, want), (_, have) in zip(expected, got, strict=True):
            np.testing.assert_allclose(have, want, atol=1e-5)
    negative = by_sha[frames["false_detection"].sha256]
    assert read_labels(out, negative.file) == [] and negative.removed_boxes == 2
    shared = by_sha[Frame(jpeg(shared_image), []).sha256]
    assert [c for c, _ in read_labels(out, shared.file)] == [CLASSES.index("car")]
    assert shared.removed_boxes == 1 and {s.verdict for s in shared.sources} == {
        "confirmed",
        "false_detection",
    }
    conflict_sha = Frame(jpeg(conflict_image), []).sha256
    assert conflict_sha not in by_sha
    assert any(d.sha256 == conflict_sha and "conflicting verdicts" in d.reason for d in card.skipped)


def test_boxes_scale_from_event_frame_to_image(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    # The event's boxes are in 640x480 pixels; the stored clean frame is 320x240.
    image = background(1, 2)
    half = (40.0, 60.0, 120.0, 100.0)
    image[60:100, 40:120] = (200, 70, 20)
    frame = Frame(jpeg(image), [("car", tuple(2 * v for v in half))], size_wh=(640, 480))
    verdict_db.case("cam-a", T0, [frame], "confirm")
    other, objects = scene(np.random.default_rng(1), camera_seed=2, labels=["person"])
    verdict_db.case("cam-b", T0, [Frame(jpeg(other), objects)], "confirm")
    out = tmp_path / "scaled"
    card = export_dataset(fresh_database_url, verdict_db.evidence_dir, out, now=NOW, class_names=CLASSES).card
    record = next(r for r in card.images if r.sha256 == frame.sha256)
    [(class_id, box)] = read_labels(out, record.file)
    assert class_id == 0 and (record.width, record.height) == FRAME_WH
    np.testing.assert_allclose(box, yolo(half), atol=1e-5)


def test_near_duplicates_are_dropped(verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image, objects = scene(rng, camera_seed=0, labels=["car", "car"])
    same = [Frame(jpeg(image), objects)] + [
        Frame(jpeg(reencoded(image, brightness, 80)), objects) for brightness in (5, -7)
    ]
    verdict_db.case("cam-0", T0, same, "confirm")
    other, other_objects = scene(rng, camera_seed=1, labels=["person"])
    verdict_db.case("cam-1", T0, [Frame(jpeg(other), other_objects)], "confirm")
    card = export_dataset(
        fresh_database_url, verdict_db.evidence_dir, tmp_path / "dups", now=NOW, class_names=CLASSES
    ).card
    assert len(card.images) == 2 and len(card.duplicates) == 2
    assert {d.duplicate_of for d in card.duplicates} == {same[0].sha256}
    assert all("near-duplicate" in d.reason for d in card.duplicates)


def test_corrupt_and_missing_images_are_skipped_with_warnings(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    street_cases(verdict_db, cameras=2, cases_per_camera=2, frames_per_case=1)
    corrupt = Frame(b"\xff\xd8 not really a jpeg " * 40, [("car", (1.0, 1.0, 60.0, 40.0))])
    corrupt_case = verdict_db.case("cam-x", T0, [corrupt], "confirm")
    missing = Frame(jpeg(background(5, 5)), [("car", (1.0, 1.0, 60.0, 40.0))])
    verdict_db.case("cam-y", T0, [missing], "confirm")
    verdict_db.store.path_of(missing.sha256).unlink()
    out = tmp_path / "corrupt"
    card = export_dataset(fresh_database_url, verdict_db.evidence_dir, out, now=NOW, class_names=CLASSES).card
    skipped = {d.sha256: d for d in card.skipped}
    assert (
        "corrupt image" in skipped[corrupt.sha256].reason and skipped[corrupt.sha256].case_id == corrupt_case
    )
    assert "no evidence" in skipped[missing.sha256].reason
    assert any(corrupt.sha256 in warning for warning in card.warnings)
    assert any(missing.sha256 in warning for warning in card.warnings)
    assert corrupt.sha256 not in {r.sha256 for r in card.images} and len(card.images) > 0
    assert "corrupt image" in (out / "dataset_card.md").read_text()


def test_empty_database_is_a_clear_error(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match=r"no verified case .* \(no cases\); confirm or reject cases"):
        export_dataset(fresh_database_url, verdict_db.evidence_dir, tmp_path / "empty", now=NOW)
    image, objects = scene(np.random.default_rng(0), camera_seed=0, labels=["car"])
    verdict_db.case("cam-0", T0, [Frame(jpeg(image), objects)], None)
    with pytest.raises(DatasetError, match=r"\(1 unverified\)"):
        export_dataset(fresh_database_url, verdict_db.evidence_dir, tmp_path / "empty", now=NOW)


def test_one_camera_block_cannot_be_split(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    frames = [Frame(jpeg(image), objects) for image, objects in (scene(rng, 0, ["car"]) for _ in range(3))]
    verdict_db.case("cam-0", T0, frames, "confirm")
    with pytest.raises(DatasetError, match="one camera-time group"):
        export_dataset(fresh_database_url, verdict_db.evidence_dir, tmp_path / "one", now=NOW)


def test_cli_writes_the_dataset_and_refuses_to_overwrite(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    street_cases(verdict_db, cameras=2, cases_per_camera=3, frames_per_case=1)
    out = tmp_path / "cli"
    args = [
        "train",
        "dataset",
        "--database-url",
        fresh_database_url,
        "--evidence-dir",
        str(verdict_db.evidence_dir),
    ]
    args += ["--out", str(out), "--classes", ",".join(CLASSES), "--block-s", "600"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train:" in result.stdout and "val:" in result.stdout
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["split"]["block_s"] == 600 and card["class_names"] == list(CLASSES)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "pass --overwrite" in again.stderr
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    both = CliRunner().invoke(app, [*args, "--overwrite", "--model", "x@1"])
    assert both.exit_code == 1 and "not both" in both.stderr

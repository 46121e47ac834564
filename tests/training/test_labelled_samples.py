"""Sampled frames out to a labelling tool (``curbwatch train samples export``) and their checked labels
back into the dataset (``curbwatch train dataset --labelled-samples``), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.schema.protocol import SampleV1
from curbwatch.server.tables import Sample
from curbwatch.training.dataset import export_dataset
from curbwatch.training.samples import export_samples, read_labelled_samples
from curbwatch.training.split import SplitConfig
from tests.training.factories import CLASSES, FRAME_WH, T0, VerdictDb, jpeg, scene, street_cases
from tests.training.test_dataset import NOW, read_labels, yolo


def add_sample(db: VerdictDb, camera_id: str, at_s: float, seed: int) -> tuple[str, list[tuple[str, tuple]]]:
    """A stored sample of a fresh scene with the edge's detections; returns its id and true objects."""
    image, objects = scene(np.random.default_rng(seed), camera_seed=seed, labels=["car", "person"])
    data = jpeg(image)
    sample = SampleV1(
        sample_id=uuid.uuid4().hex,
        device_id=db.device_id,
        camera_id=camera_id,
        ts=T0 + timedelta(days=2, seconds=at_s),
        frame_wh=FRAME_WH,
        model={"name": "curb-nano", "version": "3", "sha256": "a" * 64, "family": "yolov8"},
        image={
            "role": "clean",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "width": FRAME_WH[0],
            "height": FRAME_WH[1],
            "path": "s.jpg",
            "restricted": True,
        },
        reason="uncertain",
        score_band=(0.25, 0.5),
        detections=[{"label": label, "score": 0.4, "xyxy": box, "uncertain": True} for label, box in objects]
        + [{"label": "bus", "score": 0.3, "xyxy": (1, 1, 30, 30), "uncertain": True}],
    )
    db.store.put(sample.image.sha256, data)
    with db.session_factory() as session, session.begin():
        session.add(
            Sample(
                sample_id=sample.sample_id,
                device_id=db.device_id,
                seq=10_000 + seed,
                camera_id=camera_id,
                ts=sample.ts,
                image_sha256=sample.image.sha256,
                uncertain_count=len(sample.detections),
                document=sample.model_dump(mode="json", by_alias=True),
                received_at=sample.ts,
            )
        )
    return sample.sample_id, list(objects)


def test_samples_go_out_with_prelabels_and_only_the_labelled_ones_come_back(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    street_cases(verdict_db, cameras=2, cases_per_camera=3)
    labelled_id, objects = add_sample(verdict_db, "cam-9", 0, seed=91)
    unlabelled_id, _ = add_sample(verdict_db, "cam-9", 7200, seed=92)
    folder = tmp_path / "labelling"

    manifest = export_samples(
        fresh_database_url, verdict_db.evidence_dir, folder, now=NOW, class_names=CLASSES
    )

    entry = next(e for e in manifest.samples if e.sample_id == labelled_id)
    assert (entry.camera, entry.model, entry.prelabels) == (f"{verdict_db.device_id}/cam-9", "curb-nano@3", 2)
    assert manifest.unmapped_labels == {"bus": 2}, "a label outside the classes is counted, not written"
    assert (folder / "classes.txt").read_text().split() == list(CLASSES)
    prelabels = (folder / "prelabels" / f"{labelled_id}.txt").read_text().splitlines()
    first = [float(v) for v in prelabels[0].split()[1:]]
    assert np.allclose(first, yolo(objects[0][1]), atol=1e-5)
    assert not any((folder / "labels").iterdir()), "pre-labels are never labels"

    # A person labels one sample: drops the second box, keeps the first as a car.
    (folder / "labels" / f"{labelled_id}.txt").write_text(
        f"{CLASSES.index('car')} " + " ".join(prelabels[0].split()[1:]) + "\n"
    )
    back = read_labelled_samples(folder)
    assert [s.entry.sample_id for s in back.samples] == [labelled_id]
    assert [(s.sample_id, s.reason) for s in back.skipped] == [
        (unlabelled_id, "not labelled (no label file)")
    ]

    out = tmp_path / "dataset"
    card = export_dataset(
        fresh_database_url,
        verdict_db.evidence_dir,
        out,
        now=NOW,
        class_names=CLASSES,
        split=SplitConfig(block_s=1800),
        labelled_samples=folder,
    ).card

    [record] = [r for r in card.images if any(s.sample_id == labelled_id for s in r.sources)]
    assert record.sources[0].describe() == f"sample {labelled_id}, labelled"
    assert record.camera == f"{verdict_db.device_id}/cam-9" and record.labels == {"car": 1}
    [(class_id, box)] = read_labels(out, record.file)
    assert class_id == CLASSES.index("car") and np.allclose(box, first, atol=1e-5)
    assert any(d.sample_id == unlabelled_id and "not labelled" in d.reason for d in card.skipped)
    assert card.cases["labelled_samples"] == 1
    markdown = (out / "dataset_card.md").read_text()
    assert f"sample {labelled_id}, labelled" in markdown and f"sample {unlabelled_id}" in markdown


def test_a_broken_label_file_is_listed_and_the_cli_round_trip_works(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    sample_id, _ = add_sample(verdict_db, "cam-3", 0, seed=93)
    folder = tmp_path / "labelling"
    env = {
        "CURBWATCH_DATABASE_URL": fresh_database_url,
        "CURBWATCH_EVIDENCE_DIR": str(verdict_db.evidence_dir),
    }
    result = CliRunner().invoke(
        app, ["train", "samples", "export", str(folder), "--classes", ",".join(CLASSES)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "1 samples, 0 skipped" in result.output
    (folder / "labels" / f"{sample_id}.txt").write_text("7 0.5 0.5 0.1\n")

    back = read_labelled_samples(folder)

    assert back.samples == [] and "not a YOLO line" in back.skipped[0].reason
    again = CliRunner().invoke(app, ["train", "samples", "export", str(folder)], env=env)
    assert again.exit_code == 1 and "--overwrite" in again.output
    later = CliRunner().invoke(
        app, ["train", "samples", "export", str(tmp_path / "later"), "--since", "2026-12-01"], env=env
    )
    assert later.exit_code == 1 and "no samples stored since 2026-12-01T00:00:00+00:00" in later.output

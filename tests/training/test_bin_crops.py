"""Bin-site verdicts -> crops of the site in ``bins/{overflow,clean}`` of the dataset, the layout the bin
classifier's loader reads; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np

from curbwatch.schema.yamlio import dump_yaml
from curbwatch.server.tables import DeviceConfig
from curbwatch.training.bin_classifier import FOLDER_LABELS, load_photos
from curbwatch.training.dataset import export_dataset
from curbwatch.training.split import SplitConfig
from tests.training.factories import CLASSES, FRAME_WH, T0, Frame, VerdictDb, background, jpeg, street_cases
from tests.training.test_dataset import NOW

SITE = [[200, 120], [300, 120], [300, 220], [200, 220]]  # pixels of FRAME_WH; crop 100x100
BIN_EVENT = {"rule": "bin_overflow", "violation": "bin_overflow", "event_code": "0102", "zone": "bins"}


def zone_document(camera: str) -> dict[str, object]:
    return {
        "version": 1,
        "camera": camera,
        "frame_wh": list(FRAME_WH),
        "timezone": "Europe/Amsterdam",
        "zones": [{"name": "bins", "kind": "bin_site", "polygon": SITE}],
    }


def site_frames(count: int, seed: int, overflowing: bool) -> list[Frame]:
    """Frames whose bin site holds random rubbish (overflowing) or a plain pavement, each distinct."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        image = background(seed, index)
        if overflowing:
            image[120:220, 200:300] = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
        else:
            image[120:220, 200:300] = 90 + 60 * (np.indices((100, 100)).sum(0)[..., None] % (index + 2) == 0)
        frames.append(Frame(jpeg(image), []))
    return frames


def test_bin_site_verdicts_become_site_crops_in_the_classifiers_layout(
    verdict_db: VerdictDb, fresh_database_url: str, tmp_path: Path
) -> None:
    street_cases(verdict_db, cameras=2, cases_per_camera=3)
    with verdict_db.session_factory() as session, session.begin():
        session.add(
            DeviceConfig(
                device_id=verdict_db.device_id,
                version="v1",
                document={"zones": {"bin-cam": zone_document("bin-cam")}},
                published_at=T0,
                published_by="ops",
            )
        )
    day = T0 + timedelta(days=3)
    # Confirmed: start and update are overflowing; the end frame (the site cleared) is left out.
    confirmed = verdict_db.case(
        "bin-cam", day, site_frames(3, 1, True), "confirm", step_s=600, end_reason="cleared", **BIN_EVENT
    )
    false_alarm = verdict_db.case(
        "bin-cam", day + timedelta(hours=3), site_frames(2, 2, False), "false_detection", **BIN_EVENT
    )
    permitted = verdict_db.case(
        "bin-cam", day + timedelta(hours=6), site_frames(1, 3, True), "permitted", **BIN_EVENT
    )
    unzoned = verdict_db.case("file-cam", day, site_frames(2, 4, True), "confirm", step_s=600, **BIN_EVENT)
    out = tmp_path / "dataset"

    card = export_dataset(
        fresh_database_url,
        verdict_db.evidence_dir,
        out,
        now=NOW,
        class_names=CLASSES,
        split=SplitConfig(block_s=1800),
    ).card

    bins = card.bins
    assert bins is not None and bins.counts == {"overflow": 2, "clean": 2}
    assert {(c.case_id, c.label) for c in bins.crops} == {(confirmed, "overflow"), (false_alarm, "clean")}
    reasons = {(s["case_id"], s["reason"].split(":")[0]) for s in bins.skipped}
    assert (permitted, "verdict permitted") in reasons
    assert (unzoned, "no bin-site polygon for zone bins of camera file-cam (pass --zones)") in reasons
    assert any(s["case_id"] == confirmed and "cleared" in s["reason"] for s in bins.skipped)
    crop = cv2.imread(str(out / bins.crops[0].file))
    assert crop.shape[:2] == (100, 100) and bins.crops[0].xyxy == (200, 120, 300, 220)
    assert all(not r.sources or r.sources[0].case_id not in {confirmed, false_alarm} for r in card.images)
    photos = load_photos(out / "bins")
    assert (
        sorted(photo.label for photo in photos)
        == [FOLDER_LABELS["clean"]] * 2 + [FOLDER_LABELS["overflow"]] * 2
    )
    assert "## Bin-site crops" in (out / "dataset_card.md").read_text()

    # The site re-drawn after these frames were taken does not crop them; a zone file locates a
    # site the server never published.
    moved = {
        **zone_document("bin-cam"),
        "zones": [{"name": "bins", "kind": "bin_site", "polygon": [[10, 10], [60, 10], [60, 60], [10, 60]]}],
    }
    with verdict_db.session_factory() as session, session.begin():
        session.add(
            DeviceConfig(
                device_id=verdict_db.device_id,
                version="v2",
                document={"zones": {"bin-cam": moved}},
                published_at=day + timedelta(days=1),
                published_by="ops",
            )
        )
    zones = tmp_path / "file-cam.yaml"
    zones.write_text(dump_yaml(zone_document("file-cam")))
    again = export_dataset(
        fresh_database_url,
        verdict_db.evidence_dir,
        out,
        now=NOW,
        class_names=CLASSES,
        split=SplitConfig(block_s=1800),
        overwrite=True,
        zone_files=[zones],
    ).card
    assert again.bins is not None and again.bins.counts == {"overflow": 4, "clean": 2}
    assert {c.case_id for c in again.bins.crops if c.camera.endswith("/file-cam")} == {unzoned}
    assert {c.xyxy for c in again.bins.crops} == {(200, 120, 300, 220)}

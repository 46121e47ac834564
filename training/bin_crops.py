"""Bin-site verdicts -> crops of the site in the folders ``curbwatch train bins --data`` reads.

A bin-site case (rule ``bin_overflow``) carries no boxes: its events name a clean frame and the
zone whose image the edge judged. Each such frame is cropped to the zone's bounding rectangle
(the part of the frame the edge's estimator sees) and filed by the verdict (:data:`BIN_POLICY`)
into ``bins/overflow`` or ``bins/clean``; verdicts that say nothing sure about the bins' state
are left out, and the dataset card says why.

The zone's polygon comes from the zones the server had published to that device's camera when
the frame was taken (the newest ``device_configs`` row published by then: a re-aimed camera's new
polygon must not crop its old frames), else from zone files given on the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from curbwatch.schema.events import EndReason, EventV1, EvidenceRole
from curbwatch.schema.zones import BinSiteZone, load_zone_file
from curbwatch.server.cases.workflow import RejectReason
from curbwatch.server.db import as_utc
from curbwatch.server.evidence import EvidenceStore, EvidenceStoreError
from curbwatch.server.tables import DeviceConfig
from curbwatch.training.split import distances

logger = logging.getLogger(__name__)

BINS_DIR = "bins"
OVERFLOW, CLEAN = "overflow", "clean"  # training/bin_classifier.py's FOLDER_LABELS

BIN_POLICY: dict[str, tuple[str | None, str]] = {
    "confirmed": (
        OVERFLOW,
        "the operator confirmed the overflow: the site's crops are overflowing (but the end frame of "
        "an episode that ended because the site looked clean again is left out)",
    ),
    RejectReason.FALSE_DETECTION.value: (
        CLEAN,
        "the operator saw no overflow where the edge did: the site's crops are clean",
    ),
    RejectReason.NOT_A_VIOLATION.value: (
        None,
        "not used: the zone or schedule did not apply; whether the bins were full is not said",
    ),
    RejectReason.PERMITTED.value: (
        None,
        "not used: the bins may be full with a permit (a scheduled pick-up); the state is not said",
    ),
    RejectReason.DUPLICATE.value: (
        None,
        "not used: a second case of one overflow; its frames repeat the first case's",
    ),
}
"""Verdict -> the folder its crops go to (None: not used), and why."""


class BinCrop(BaseModel):
    """One crop of a bin site and the verdict that labelled it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="Path relative to the dataset folder.")
    label: str = Field(description="overflow or clean.")
    case_id: str
    event_id: str
    verdict: str
    camera: str = Field(description="device_id/camera_id.")
    zone: str
    frame_sha256: str
    xyxy: tuple[int, int, int, int] = Field(description="The crop, in pixels of the frame.")


class BinCropsCard(BaseModel):
    """The ``bins`` section of the dataset card."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str
    counts: dict[str, int]
    policy: dict[str, str] = Field(description="Verdict -> folder (or not used) and why.")
    crops: list[BinCrop]
    skipped: list[dict[str, str]] = Field(description="Bin-site frames not cropped, with the reason.")


@dataclass(frozen=True)
class BinEvent:
    """A bin-site event of a verified case."""

    case_id: str
    verdict: str
    event: EventV1


@dataclass(frozen=True)
class _Site:
    polygon: np.ndarray  # (n, 2) pixels of frame_wh
    frame_wh: tuple[int, int]


def _bin_sites(zones: dict[str, Any]) -> dict[str, _Site]:
    frame_wh = tuple(zones.get("frame_wh") or (0, 0))
    return {
        zone["name"]: _Site(np.asarray(zone["polygon"], np.float64), (int(frame_wh[0]), int(frame_wh[1])))
        for zone in zones.get("zones", [])
        if zone.get("kind") == "bin_site"
    }


@dataclass
class SiteBook:
    """Where each bin site was: published zones over time, and zone files (timeless)."""

    published: dict[tuple[str, str, str], list[tuple[datetime, _Site]]] = field(default_factory=dict)
    from_files: dict[tuple[str, str], _Site] = field(default_factory=dict)

    def find(self, device_id: str, camera_id: str, zone: str, ts: datetime) -> _Site | None:
        """The site as published by ``ts`` (the newest such), else as a zone file has it."""
        history = self.published.get((device_id, camera_id, zone), [])
        in_force = [site for published_at, site in history if as_utc(published_at) <= ts]
        return in_force[-1] if in_force else self.from_files.get((camera_id, zone))


def site_book(session: Session, zone_files: Sequence[Path]) -> SiteBook:
    """Every bin site of the published device configurations and of ``zone_files``.

    Raises:
        OSError, ValueError: A zone file cannot be read or is invalid.
    """
    book = SiteBook()
    for path in zone_files:
        zone_file = load_zone_file(path)
        for zone in zone_file.zones:
            if isinstance(zone, BinSiteZone):
                polygon = np.asarray(zone.polygon, np.float64)
                book.from_files[(zone_file.camera, zone.name)] = _Site(polygon, zone_file.frame_wh)
    query = select(DeviceConfig.device_id, DeviceConfig.published_at, DeviceConfig.document)
    for device_id, published_at, document in session.execute(query.order_by(DeviceConfig.published_at)):
        for camera, zones in (document.get("zones") or {}).items():
            for name, site in _bin_sites(zones).items():
                book.published.setdefault((device_id, camera, name), []).append((published_at, site))
    return book


def _crop_box(site: _Site, size_wh: tuple[int, int]) -> tuple[int, int, int, int] | None:
    sx, sy = size_wh[0] / site.frame_wh[0], size_wh[1] / site.frame_wh[1]
    xs, ys = site.polygon[:, 0] * sx, site.polygon[:, 1] * sy
    x1, y1 = int(np.clip(np.floor(xs.min()), 0, size_wh[0])), int(np.clip(np.floor(ys.min()), 0, size_wh[1]))
    x2, y2 = int(np.clip(np.ceil(xs.max()), 0, size_wh[0])), int(np.clip(np.ceil(ys.max()), 0, size_wh[1]))
    return (x1, y1, x2, y2) if x2 - x1 >= 8 and y2 - y1 >= 8 else None


def _site_crop(
    item: BinEvent, sites: SiteBook, store: EvidenceStore
) -> tuple[str, str, np.ndarray, tuple[int, int, int, int]] | str:
    """(label, frame sha256, frame, crop box) of a bin-site event, or why it gives no crop."""
    event = item.event
    label, _ = BIN_POLICY.get(item.verdict, (None, ""))
    if label is None:
        return f"verdict {item.verdict}: not used"
    if label == OVERFLOW and event.end_reason is EndReason.CLEARED:
        return "end frame of an overflow that cleared: the site looked clean, no one checked it"
    clean = next((ref for ref in event.evidence if ref.role is EvidenceRole.CLEAN), None)
    if clean is None:
        return "no clean frame"
    site = sites.find(event.device_id, event.camera_id, event.zone, event.ts)
    if site is None:
        return f"no bin-site polygon for zone {event.zone} of camera {event.camera_id} (pass --zones)"
    try:
        data = store.read(clean.sha256)
    except EvidenceStoreError as exc:
        return f"evidence {clean.sha256}: {exc}"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return f"evidence {clean.sha256}: corrupt image"
    box = _crop_box(site, (image.shape[1], image.shape[0]))
    if box is None:
        return f"zone {event.zone} lies outside the frame or is under 8 pixels"
    return label, clean.sha256, image, box


def write_bin_crops(
    events: Sequence[BinEvent],
    sites: SiteBook,
    store: EvidenceStore,
    out: Path,
    *,
    hash_fn: Any,
    duplicate_distance: int,
) -> BinCropsCard:
    """Crop each bin-site frame to its zone and write it under ``out/bins/<label>/``.

    Near-identical crops (the start, updates and end of one overflow) are kept once, as in the
    detection dataset.
    """
    crops: list[BinCrop] = []
    skipped: list[dict[str, str]] = []
    kept_hashes: list[int] = []
    for label in (OVERFLOW, CLEAN):
        (out / BINS_DIR / label).mkdir(parents=True, exist_ok=True)
    ordered = sorted(
        events, key=lambda e: (e.event.device_id, e.event.camera_id, e.event.ts, e.event.event_id)
    )
    for item in ordered:
        event = item.event
        found = _site_crop(item, sites, store)
        if isinstance(found, str):
            skipped.append({"case_id": item.case_id, "event_id": event.event_id, "reason": found})
            continue
        label, frame_sha256, image, (x1, y1, x2, y2) = found
        crop = image[y1:y2, x1:x2]
        crop_hash = hash_fn(crop)
        if (
            kept_hashes
            and distances(np.asarray(kept_hashes, np.uint64), crop_hash).min() <= duplicate_distance
        ):
            reason = "near-duplicate of an earlier crop"
            skipped.append({"case_id": item.case_id, "event_id": event.event_id, "reason": reason})
            continue
        kept_hashes.append(crop_hash)
        relative = f"{BINS_DIR}/{label}/{frame_sha256[:16]}-{event.zone}.jpg"
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok  # a non-empty uint8 crop always encodes
        (out / relative).write_bytes(encoded.tobytes())
        crops.append(
            BinCrop(
                file=relative,
                label=label,
                case_id=item.case_id,
                event_id=event.event_id,
                verdict=item.verdict,
                camera=f"{event.device_id}/{event.camera_id}",
                zone=event.zone,
                frame_sha256=frame_sha256,
                xyxy=(x1, y1, x2, y2),
            )
        )
    logger.info("bin crops: %d written, %d skipped", len(crops), len(skipped))
    return BinCropsCard(
        folder=BINS_DIR,
        counts={label: sum(crop.label == label for crop in crops) for label in (OVERFLOW, CLEAN)},
        policy={verdict: f"{folder or 'not used'}: {why}" for verdict, (folder, why) in BIN_POLICY.items()},
        crops=crops,
        skipped=skipped,
    )

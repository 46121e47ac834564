"""Sampled frames out to a labelling tool and their checked labels back into the dataset.

The edges send frames the detector was unsure about (``edge/sampling.py``) into ``samples``.
:func:`export_samples` writes them as a labelling folder::

    OUT/images/<sample_id>.jpg     the sample's evidence image, bytes as stored
    OUT/prelabels/<sample_id>.txt  the edge's detections as YOLO boxes: a starting point, never labels
    OUT/labels/                    empty: the checked labels go here, same stem, YOLO format
    OUT/classes.txt                class names, one a line, in YOLO class-id order
    OUT/manifest.json              sample id, camera, frame time, model version, sha256, image size

A person loads ``images/`` with ``prelabels/`` into a labelling tool (Label Studio, CVAT, labelImg
all read YOLO text files and a ``classes.txt``), corrects the boxes and saves them into ``labels/``
(an empty file: checked, nothing to label). :func:`read_labelled_samples` takes back only what a
person saved: a sample with no ``labels/<sample_id>.txt`` is skipped and listed, never filled in
from its pre-labels, since pre-labels copied unchecked would teach the model its own mistakes.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from curbwatch.schema.protocol import SampleV1
from curbwatch.server.db import make_engine
from curbwatch.server.evidence import EvidenceStore, EvidenceStoreError
from curbwatch.server.tables import Sample

logger = logging.getLogger(__name__)

SAMPLES_SCHEMA = "curbwatch.samples.v1"
MANIFEST, CLASSES = "manifest.json", "classes.txt"
IMAGES, PRELABELS, LABELS = "images", "prelabels", "labels"


class SamplesError(Exception):
    """Samples cannot be exported or read back; the message says what to change."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleEntry(_Strict):
    """One exported sample: where it came from and which files hold it."""

    sample_id: str
    camera: str = Field(description="device_id/camera_id.")
    ts: datetime = Field(description="Frame time of the sampled frame.")
    model: str | None = Field(description="NAME@VERSION of the detector that gave the pre-labels.")
    sha256: str = Field(description="Of the image (the evidence store's key).")
    width: int
    height: int
    prelabels: int = Field(description="Pre-label boxes written.")
    uncertain: int = Field(description="Detections inside the uncertain score band.")


class SkippedSample(_Strict):
    sample_id: str
    reason: str


class SamplesManifest(_Strict):
    """What an export holds (``manifest.json``)."""

    schema_: Literal["curbwatch.samples.v1"] = Field(default=SAMPLES_SCHEMA, alias="schema")
    created_at: datetime
    class_names: list[str]
    unmapped_labels: dict[str, int] = Field(description="Detections whose label is not a class (left out).")
    samples: list[SampleEntry]
    skipped: list[SkippedSample]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _yolo_line(class_id: int, xyxy: Sequence[float], width: int, height: int) -> str | None:
    x1, y1 = min(max(xyxy[0], 0.0), width), min(max(xyxy[1], 0.0), height)
    x2, y2 = min(max(xyxy[2], 0.0), width), min(max(xyxy[3], 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    return f"{class_id} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SamplesError(f"{out} exists and is not empty; pass --overwrite to replace the export")
        if not (out / MANIFEST).is_file():
            raise SamplesError(f"{out} is not a samples export (no {MANIFEST}); refusing to overwrite it")
        # labels/ is a person's work: it stays, and a label file still pairs with its sample by id.
        for child in (IMAGES, PRELABELS):
            shutil.rmtree(out / child, ignore_errors=True)
    for child in (IMAGES, PRELABELS, LABELS):
        (out / child).mkdir(parents=True, exist_ok=True)


def export_samples(
    database_url: str,
    evidence_dir: Path,
    out: Path,
    *,
    now: datetime,
    class_names: Sequence[str] | None = None,
    since: datetime | None = None,
    overwrite: bool = False,
) -> SamplesManifest:
    """Write the stored samples (frame time ``since`` on) as a labelling folder with YOLO pre-labels.

    Args:
        class_names: Classes in YOLO id order; None: the labels of the detections, sorted.

    Raises:
        SamplesError: No samples, or ``out`` is in the way.
    """
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            query = select(Sample.document).order_by(Sample.camera_id, Sample.ts, Sample.sample_id)
            if since is not None:
                query = query.where(Sample.ts >= since)
            documents = list(session.scalars(query))
    finally:
        engine.dispose()
    samples = [SampleV1.model_validate(document) for document in documents]
    if not samples:
        raise SamplesError("no samples stored" + (f" since {since.isoformat()}" if since else ""))
    if class_names is None:
        class_names = sorted({d.label for sample in samples for d in sample.detections})
    class_ids = {name: index for index, name in enumerate(class_names)}
    _prepare(out, overwrite)
    store = EvidenceStore(evidence_dir)
    entries, skipped, unmapped = [], [], Counter[str]()
    for sample in samples:
        try:
            data = store.read(sample.image.sha256)
        except EvidenceStoreError as exc:
            skipped.append(SkippedSample(sample_id=sample.sample_id, reason=f"image: {exc}"))
            continue
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            skipped.append(SkippedSample(sample_id=sample.sample_id, reason="corrupt image"))
            continue
        height, width = image.shape[:2]
        sx, sy = width / sample.frame_wh[0], height / sample.frame_wh[1]
        lines = []
        for detection in sample.detections:
            if detection.label not in class_ids:
                unmapped[detection.label] += 1
                continue
            x1, y1, x2, y2 = detection.xyxy
            line = _yolo_line(class_ids[detection.label], (x1 * sx, y1 * sy, x2 * sx, y2 * sy), width, height)
            if line is not None:
                lines.append(line)
        (out / IMAGES / f"{sample.sample_id}.jpg").write_bytes(data)
        (out / PRELABELS / f"{sample.sample_id}.txt").write_text("".join(f"{x}\n" for x in lines), "utf-8")
        entries.append(
            SampleEntry(
                sample_id=sample.sample_id,
                camera=f"{sample.device_id}/{sample.camera_id}",
                ts=sample.ts,
                model=f"{sample.model.name}@{sample.model.version}" if sample.model else None,
                sha256=sample.image.sha256,
                width=width,
                height=height,
                prelabels=len(lines),
                uncertain=sum(d.uncertain for d in sample.detections),
            )
        )
    (out / CLASSES).write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    manifest = SamplesManifest(
        created_at=now.astimezone(UTC),
        class_names=list(class_names),
        unmapped_labels=dict(sorted(unmapped.items())),
        samples=entries,
        skipped=skipped,
    )
    (out / MANIFEST).write_text(manifest.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8")
    logger.info("samples %s: %d written, %d skipped", out, len(entries), len(skipped))
    return manifest


@dataclass(frozen=True)
class LabelledSample:
    """One sample whose labels a person saved: boxes in pixels of ``entry``'s width and height."""

    entry: SampleEntry
    boxes: list[tuple[str, tuple[float, float, float, float]]]


@dataclass
class LabelledSamples:
    """What came back from the labelling tool, and what did not (with the reason)."""

    samples: list[LabelledSample] = field(default_factory=list)
    skipped: list[SkippedSample] = field(default_factory=list)


def _parse_labels(path: Path, class_names: Sequence[str], entry: SampleEntry) -> LabelledSample:
    boxes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            class_id, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, IndexError):
            raise SamplesError(f"{path}:{number}: not a YOLO line 'class cx cy w h': {line!r}") from None
        if len(parts) != 5 or not 0 <= class_id < len(class_names):
            raise SamplesError(f"{path}:{number}: expected 'class cx cy w h' with class < {len(class_names)}")
        x1, y1 = (cx - w / 2) * entry.width, (cy - h / 2) * entry.height
        boxes.append((class_names[class_id], (x1, y1, x1 + w * entry.width, y1 + h * entry.height)))
    return LabelledSample(entry, boxes)


def read_labelled_samples(folder: Path) -> LabelledSamples:
    """The samples of an export whose ``labels/<sample_id>.txt`` a person saved.

    Class ids are read against the folder's ``classes.txt`` (a labelling tool may rewrite it);
    a sample without a label file, or with a broken one, is skipped with the reason.

    Raises:
        SamplesError: No manifest or classes file.
    """
    try:
        manifest = SamplesManifest.model_validate_json((folder / MANIFEST).read_bytes())
        class_names = [
            n.strip() for n in (folder / CLASSES).read_text(encoding="utf-8").splitlines() if n.strip()
        ]
    except (OSError, ValidationError) as exc:
        raise SamplesError(
            f"{folder} is not a samples export (`curbwatch train samples export`): {exc}"
        ) from exc
    result = LabelledSamples()
    for entry in manifest.samples:
        path = folder / LABELS / f"{entry.sample_id}.txt"
        if not path.is_file():
            result.skipped.append(
                SkippedSample(sample_id=entry.sample_id, reason="not labelled (no label file)")
            )
            continue
        try:
            result.samples.append(_parse_labels(path, class_names, entry))
        except SamplesError as exc:
            result.skipped.append(SkippedSample(sample_id=entry.sample_id, reason=str(exc)))
    return result

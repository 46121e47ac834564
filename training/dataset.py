"""Operator verdicts -> a YOLO detection dataset with a card that says where every image came from.

``curbwatch train dataset`` reads verified cases from the server database: every event of a case
names a clean evidence frame (by sha256) and the objects the edge saw on it. What becomes of those
boxes depends on the verdict (:data:`POLICY`): a confirmed case, or one rejected because the rule or
zone was wrong, keeps its boxes as labels; a case rejected as a false detection turns its frame into
a hard negative (the boxes are removed, the image stays as background).

Near-identical frames (a parked car seen by the start, update and end events of one episode) are
dropped with a perceptual hash, and the train/validation split keeps whole groups on one side: a
group is every image of one camera in one time block, joined with every image of the same case
(``split.py``). After the dedup no two images on different sides are within the duplicate distance,
so near-identical frames never straddle train and validation.

Frames the edges sampled for labelling join the dataset once a person has labelled them
(``--labelled-samples``, :mod:`~curbwatch.training.samples`): their labels are taken as they are,
through the same dedup and split, each sample its own group besides its camera-time block.
Bin-site cases carry no boxes; their frames become crops of the site for the bin classifier
(:mod:`~curbwatch.training.bin_crops`, ``bins/`` beside ``images/``).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import ValidationError
from sqlalchemy import make_url, select
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventV1, EvidenceRole
from curbwatch.schema.yamlio import dump_yaml
from curbwatch.schema.zones import Rule
from curbwatch.server.cases.workflow import CaseStatus, ClosureType, RejectReason
from curbwatch.server.db import make_engine
from curbwatch.server.evidence import EvidenceStore, EvidenceStoreError
from curbwatch.server.tables import AuditLog, Case, CaseEvent, Event
from curbwatch.training.bin_crops import (
    BinEvent,
    SiteBook,
    site_book,
    write_bin_crops,
)
from curbwatch.training.dataset_card import (
    CARD_JSON,
    CARD_MD,
    DATA_YAML,
    SPLITS,
    DatasetCard,
    DatasetError,
    Dropped,
    ImageRecord,
    LabelUse,
    Provenance,
    prepare_out,
    render_card_markdown,
    split_counts,
    yolo_line,
)
from curbwatch.training.metrics import box_iou
from curbwatch.training.samples import LabelledSamples, SamplesError, read_labelled_samples
from curbwatch.training.split import HASHES, SplitConfig, SplitError, assign_splits, distances, split_groups

logger = logging.getLogger(__name__)

MIN_BOX_PX = 2.0  # boxes thinner than this after clipping carry no signal
SQL_CHUNK = 500  # ids per IN (...) clause; keeps statements well under every backend's limits


@dataclass(frozen=True)
class PolicyRule:
    """What one verdict does with its boxes, and why (written into the dataset card)."""

    use: LabelUse
    why: str


CONFIRMED = "confirmed"
POLICY: dict[str, PolicyRule] = {
    CONFIRMED: PolicyRule(
        LabelUse.LABELS, "the operator confirmed the violation: detector and rule were right"
    ),
    RejectReason.FALSE_DETECTION.value: PolicyRule(
        LabelUse.HARD_NEGATIVE,
        "the detector saw objects that are not there: the boxes are removed and the frame is kept "
        "with the remaining labels (often none) so the model learns to stay quiet on it",
    ),
    RejectReason.NOT_A_VIOLATION.value: PolicyRule(
        LabelUse.LABELS, "the objects are real, the rule or zone was wrong: the boxes stay as labels"
    ),
    RejectReason.PERMITTED.value: PolicyRule(
        LabelUse.LABELS, "the objects are real but the activity was permitted: the boxes stay as labels"
    ),
    RejectReason.DUPLICATE.value: PolicyRule(
        LabelUse.LABELS,
        "a second case of a real violation: the boxes stay as labels (its frames are usually "
        "near-duplicates of the first case's and get dropped by the perceptual hash)",
    ),
}
"""Verdict (``confirmed`` or a reject reason) -> what its boxes become."""

LABELLED = "labelled"
LABELLED_RULE = PolicyRule(
    LabelUse.LABELS,
    "a frame the edge was unsure about, labelled by a person in a labelling tool: the saved boxes "
    "are the labels; a sample without a saved label file is not used",
)

_CONFIRMED_STATES = frozenset(
    {
        CaseStatus.FILED,
        CaseStatus.DISPATCHED,
        CaseStatus.IN_PROGRESS,
        CaseStatus.HANDLED,
        CaseStatus.CHECKING,
        CaseStatus.CLOSED,
    }
)


# ---- reading verdicts ----------------------------------------------------------------------------


@dataclass
class _Box:
    label: str
    xyxy: tuple[float, float, float, float]  # pixels of the event's frame_wh


@dataclass
class _Frame:
    """One clean evidence frame and every verdict that speaks about it."""

    sha256: str
    camera: str
    ts: datetime
    frame_wh: tuple[int, int]
    case_id: str | None
    keep: list[_Box] = field(default_factory=list)
    remove: list[_Box] = field(default_factory=list)
    sources: list[Provenance] = field(default_factory=list)
    sample_id: str | None = None

    @property
    def origin(self) -> str:
        """The case or sample the frame was first seen in (a split group key, and for messages)."""
        return f"case {self.case_id}" if self.case_id is not None else f"sample {self.sample_id}"


@dataclass
class _Harvest:
    frames: dict[str, _Frame] = field(default_factory=dict)
    skipped: list[Dropped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cases: Counter[str] = field(default_factory=Counter)
    bin_events: list[BinEvent] = field(default_factory=list)


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for first in range(0, len(items), SQL_CHUNK):
        yield items[first : first + SQL_CHUNK]


def _verdict(case: Case, reject_reasons: dict[str, str]) -> str | None:
    """'confirmed', a reject reason, or None when the case says nothing usable."""
    status = CaseStatus(case.status)
    if status is CaseStatus.SUSPENDED and case.suspended_from:
        status = CaseStatus(case.suspended_from)
    if status is CaseStatus.VOID:
        return reject_reasons.get(case.id)
    if status in _CONFIRMED_STATES and case.closure_type != ClosureType.ERRONEOUS.value:
        return CONFIRMED
    return None


def _reject_reasons(session: Session, case_ids: Sequence[str]) -> dict[str, str]:
    """The last reject reason audited for each case."""
    reasons: dict[str, str] = {}
    for chunk in _chunks(case_ids):
        rows = session.execute(
            select(AuditLog.case_id, AuditLog.reason)
            .where(AuditLog.action == "reject", AuditLog.case_id.in_(chunk))
            .order_by(AuditLog.id)
        )
        for case_id, reason in rows:
            if case_id is not None and reason:
                reasons[case_id] = reason
    return reasons


def _case_events(session: Session, case_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    documents: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in _chunks(case_ids):
        rows = session.execute(
            select(CaseEvent.case_id, Event.document)
            .join(Event, Event.event_id == CaseEvent.event_id)
            .where(CaseEvent.case_id.in_(chunk))
            .order_by(CaseEvent.ts, CaseEvent.event_id)
        )
        for case_id, document in rows:
            documents[case_id].append(document)
    return documents


def _add_event(harvest: _Harvest, case_id: str, verdict: str, document: dict[str, Any]) -> None:
    try:
        event = EventV1.model_validate(document)
    except ValidationError as exc:
        event_id = document.get("event_id") if isinstance(document, dict) else None
        harvest.skipped.append(Dropped(case_id=case_id, event_id=event_id, reason=f"invalid event: {exc}"))
        return
    if event.rule is Rule.BIN_OVERFLOW:
        harvest.bin_events.append(BinEvent(case_id, verdict, event))  # no boxes: a crop, not a label
        return
    clean = next((ref for ref in event.evidence if ref.role is EvidenceRole.CLEAN), None)
    if clean is None:
        harvest.skipped.append(Dropped(case_id=case_id, event_id=event.event_id, reason="no clean frame"))
        return
    if not event.objects:
        harvest.skipped.append(
            Dropped(case_id=case_id, event_id=event.event_id, sha256=clean.sha256, reason="no objects")
        )
        return
    frame = harvest.frames.get(clean.sha256)
    if frame is None:
        frame = _Frame(
            clean.sha256, f"{event.device_id}/{event.camera_id}", event.ts, event.frame_wh, case_id
        )
        harvest.frames[clean.sha256] = frame
    rule = POLICY[verdict]
    boxes = [_Box(obj.label, obj.xyxy) for obj in event.objects]
    (frame.keep if rule.use is LabelUse.LABELS else frame.remove).extend(boxes)
    frame.sources.append(Provenance(case_id=case_id, event_id=event.event_id, verdict=verdict, use=rule.use))


def harvest_verdicts(session: Session) -> _Harvest:
    """Every clean frame of every verified case, with the boxes its verdicts keep and remove."""
    harvest = _Harvest()
    cases = list(session.scalars(select(Case).order_by(Case.created_at, Case.id)))
    case_ids = [case.id for case in cases]
    reasons = _reject_reasons(session, case_ids)
    verified = []
    for case in cases:
        verdict = _verdict(case, reasons)
        if verdict is None:
            harvest.cases["unverified" if case.status == CaseStatus.AWAITING_VERIFICATION else "unclear"] += 1
            continue
        if verdict not in POLICY:
            harvest.cases["unknown_reason"] += 1
            harvest.warnings.append(f"case {case.id}: unknown reject reason {verdict!r}; skipped")
            continue
        harvest.cases[verdict] += 1
        verified.append((case.id, verdict))
    events = _case_events(session, [case_id for case_id, _ in verified])
    for case_id, verdict in verified:
        for document in events.get(case_id, []):
            _add_event(harvest, case_id, verdict, document)
    return harvest


def add_labelled_samples(harvest: _Harvest, labelled: LabelledSamples) -> None:
    """Add the samples a person labelled as frames whose boxes are all labels; list the others."""
    for skipped in labelled.skipped:
        harvest.skipped.append(Dropped(sample_id=skipped.sample_id, reason=skipped.reason))
    for sample in labelled.samples:
        entry = sample.entry
        frame = harvest.frames.get(entry.sha256)
        if frame is None:
            frame = _Frame(entry.sha256, entry.camera, entry.ts, (entry.width, entry.height), None)
            frame.sample_id = entry.sample_id
            harvest.frames[entry.sha256] = frame
        frame.keep.extend(_Box(label, xyxy) for label, xyxy in sample.boxes)
        frame.sources.append(Provenance(sample_id=entry.sample_id, verdict=LABELLED, use=LabelUse.LABELS))
        harvest.cases["labelled_samples"] += 1


# ---- images, labels and duplicates ----------------------------------------------------------------


@dataclass
class _Image:
    frame: _Frame
    data: bytes
    width: int
    height: int
    labels: list[tuple[int, tuple[float, float, float, float]]]  # class id, xyxy in image pixels
    removed: int
    hash: int


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(box_iou(np.asarray([a]), np.asarray([b]))[0, 0])


def _scaled(box: _Box, frame_wh: tuple[int, int], size_wh: tuple[int, int]) -> tuple[float, ...]:
    sx, sy = size_wh[0] / frame_wh[0], size_wh[1] / frame_wh[1]
    x1, y1, x2, y2 = box.xyxy
    return (
        min(max(x1 * sx, 0.0), size_wh[0]),
        min(max(y1 * sy, 0.0), size_wh[1]),
        min(max(x2 * sx, 0.0), size_wh[0]),
        min(max(y2 * sy, 0.0), size_wh[1]),
    )


def _labels_of(
    frame: _Frame, size_wh: tuple[int, int], class_ids: dict[str, int], unmapped: Counter[str]
) -> tuple[list[tuple[int, tuple[float, ...]]], int] | None:
    """Class ids and boxes kept on the frame, and how many were removed; None on conflicting verdicts."""
    kept: list[tuple[str, tuple[float, ...]]] = []
    for box in frame.keep:
        xyxy = _scaled(box, frame.frame_wh, size_wh)
        if xyxy[2] - xyxy[0] < MIN_BOX_PX or xyxy[3] - xyxy[1] < MIN_BOX_PX:
            continue
        # The same object seen by two events on one frame is one label.
        if not any(label == box.label and _overlap(xyxy, other) > 0.9 for label, other in kept):
            kept.append((box.label, xyxy))
    removed = [(box.label, _scaled(box, frame.frame_wh, size_wh)) for box in frame.remove]
    for label, xyxy in kept:
        if any(label == bad_label and _overlap(xyxy, bad) >= 0.5 for bad_label, bad in removed):
            return None
    labels = []
    for label, xyxy in kept:
        if label in class_ids:
            labels.append((class_ids[label], xyxy))
        else:
            unmapped[label] += 1
    return labels, len(removed)


# ---- writing ---------------------------------------------------------------------------------------


def _redacted(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class DatasetResult:
    """What :func:`export_dataset` wrote."""

    out: Path
    data_yaml: Path
    card_path: Path
    card: DatasetCard


def _load_images(
    harvest: _Harvest, store: EvidenceStore, class_ids: dict[str, int], hash_fn: Any, unmapped: Counter[str]
) -> list[_Image]:
    images = []
    for frame in sorted(harvest.frames.values(), key=lambda f: (f.camera, f.ts, f.sha256)):
        first = frame.sources[0]
        origin = {"case_id": frame.case_id, "sample_id": frame.sample_id, "sha256": frame.sha256}
        try:
            data = store.read(frame.sha256)
        except EvidenceStoreError as exc:
            message = f"{frame.origin}: evidence {frame.sha256}: {exc}"
            harvest.skipped.append(Dropped(**origin, event_id=first.event_id, reason=str(exc)))
            harvest.warnings.append(message)
            logger.warning("skipped %s", message)
            continue
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            reason = "corrupt image: not a decodable JPEG/PNG"
            harvest.skipped.append(Dropped(**origin, event_id=first.event_id, reason=reason))
            harvest.warnings.append(f"{frame.origin}: evidence {frame.sha256}: {reason}")
            logger.warning("skipped corrupt evidence %s of %s", frame.sha256, frame.origin)
            continue
        height, width = image.shape[:2]
        found = _labels_of(frame, (width, height), class_ids, unmapped)
        if found is None:
            reason = "conflicting verdicts: a box is both confirmed and rejected as a false detection"
            harvest.skipped.append(Dropped(**origin, reason=reason))
            harvest.warnings.append(f"evidence {frame.sha256}: {reason}")
            continue
        labels, removed = found
        images.append(_Image(frame, data, width, height, labels, removed, hash_fn(image)))
    return images


def _dedup(images: list[_Image], max_distance: int) -> tuple[list[_Image], list[Dropped]]:
    """Keep the first of every set of near-identical images (in camera and time order)."""
    kept: list[_Image] = []
    kept_hashes: list[int] = []
    dropped = []
    for image in images:
        if kept_hashes:
            apart = distances(np.asarray(kept_hashes, np.uint64), image.hash)
            nearest = int(np.argmin(apart))
            if int(apart[nearest]) <= max_distance:
                dropped.append(
                    Dropped(
                        case_id=image.frame.case_id,
                        sample_id=image.frame.sample_id,
                        event_id=image.frame.sources[0].event_id,
                        sha256=image.frame.sha256,
                        reason=f"near-duplicate ({int(apart[nearest])} bits apart)",
                        duplicate_of=kept[nearest].frame.sha256,
                    )
                )
                continue
        kept.append(image)
        kept_hashes.append(image.hash)
    return kept, dropped


def export_dataset(
    database_url: str,
    evidence_dir: Path,
    out: Path,
    *,
    now: datetime,
    class_names: Sequence[str] | None = None,
    split: SplitConfig | None = None,
    hash_name: Literal["phash", "dhash"] = "phash",
    duplicate_distance: int = 4,
    overwrite: bool = False,
    labelled_samples: Path | None = None,
    zone_files: Sequence[Path] = (),
) -> DatasetResult:
    """Build a YOLO dataset from the verified cases of a server database.

    Args:
        database_url: The server's SQLAlchemy URL (read only).
        evidence_dir: Root of the server's evidence store.
        out: Dataset folder to create (``images/``, ``labels/``, ``data.yaml``, the card).
        now: Creation time for the card.
        class_names: Class list in model output order; labels outside it are dropped and counted.
            None: the labels found, sorted.
        split: How train and validation are kept apart.
        hash_name: Perceptual hash for near-duplicates.
        duplicate_distance: Images whose hashes differ by at most this many bits are duplicates.
        overwrite: Replace an earlier dataset in ``out``.
        labelled_samples: A samples export whose ``labels/`` a person filled
            (:func:`~curbwatch.training.samples.read_labelled_samples`); its images come from
            ``evidence_dir``.
        zone_files: Zone files locating bin sites the server never published.

    Raises:
        DatasetError: No usable verified case, too little data to split, or ``out`` is in the way.
    """
    split = split or SplitConfig()
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            harvest = harvest_verdicts(session)
            try:
                sites = site_book(session, zone_files) if harvest.bin_events else SiteBook()
            except (OSError, ValueError) as exc:
                raise DatasetError(f"zone file: {exc}") from exc
    finally:
        engine.dispose()
    if labelled_samples is not None:
        try:
            add_labelled_samples(harvest, read_labelled_samples(labelled_samples))
        except SamplesError as exc:
            raise DatasetError(str(exc)) from exc
    if not harvest.frames:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(harvest.cases.items())) or "no cases"
        raise DatasetError(
            f"no verified case with a clean evidence frame and objects in {_redacted(database_url)} "
            f"({counts}); confirm or reject cases in the operator UI first"
        )
    if class_names is None:
        seen = {box.label for frame in harvest.frames.values() for box in (*frame.keep, *frame.remove)}
        class_names = sorted(seen)
        logger.warning("no class list given: using the labels found, sorted: %s", ", ".join(class_names))
    class_ids = {name: index for index, name in enumerate(class_names)}
    unmapped: Counter[str] = Counter()
    images = _load_images(harvest, EvidenceStore(evidence_dir), class_ids, HASHES[hash_name], unmapped)
    if not images:
        raise DatasetError(
            f"none of the {len(harvest.frames)} evidence frames of verified cases could be read from "
            f"{evidence_dir}: {'; '.join(harvest.warnings[:3])}"
        )
    images, duplicates = _dedup(images, duplicate_distance)
    groups = split_groups(
        [image.frame.camera for image in images],
        [image.frame.ts for image in images],
        [image.frame.origin for image in images],
        split.block_s,
    )
    try:
        sides = assign_splits(groups, split)
    except SplitError as exc:
        raise DatasetError(str(exc)) from exc
    if unmapped:
        harvest.warnings.append(
            "labels not in the class list were dropped: "
            + ", ".join(f"{label} ({n})" for label, n in sorted(unmapped.items()))
        )
    prepare_out(out, overwrite)
    records = [
        _write_image(out, image, side, group, class_names)
        for image, side, group in zip(images, sides, groups, strict=True)
    ]
    bins = (
        write_bin_crops(
            harvest.bin_events,
            sites,
            EvidenceStore(evidence_dir),
            out,
            hash_fn=HASHES[hash_name],
            duplicate_distance=duplicate_distance,
        )
        if harvest.bin_events
        else None
    )
    card = DatasetCard(
        name=out.name,
        created_at=now.astimezone(UTC),
        source={"database": _redacted(database_url), "evidence_dir": str(evidence_dir)},
        class_names=list(class_names),
        policy={
            verdict: {"use": rule.use.value, "why": rule.why}
            for verdict, rule in {**POLICY, LABELLED: LABELLED_RULE}.items()
        },
        split={
            "method": "group split: a group joins the images of one camera within one time block and the "
            "images of one case; each group goes wholly to train or to val. Near-duplicates were dropped "
            "before, so no two images on different sides are within the duplicate distance",
            "val_fraction": split.val_fraction,
            "block_s": split.block_s,
            "seed": split.seed,
            "groups": {
                side: len({g for g, s in zip(groups, sides, strict=True) if s == side}) for side in SPLITS
            },
        },
        dedup={
            "hash": hash_name,
            "bits": 64,
            "max_distance_bits": duplicate_distance,
            "dropped": len(duplicates),
        },
        counts={side: split_counts(records, side) for side in SPLITS},
        unmapped_labels=dict(sorted(unmapped.items())),
        cases=dict(sorted(harvest.cases.items())),
        images=records,
        duplicates=duplicates,
        skipped=harvest.skipped,
        warnings=harvest.warnings,
        bins=bins,
    )
    data_yaml = out / DATA_YAML
    # No 'path' key: Ultralytics then resolves train/val against this file's folder, so the
    # dataset can be moved as a whole.
    data_yaml.write_text(
        dump_yaml({"train": "images/train", "val": "images/val", "names": dict(enumerate(class_names))}),
        encoding="utf-8",
    )
    card_path = out / CARD_JSON
    card_path.write_text(card.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8")
    (out / CARD_MD).write_text(render_card_markdown(card), encoding="utf-8")
    logger.info(
        "dataset %s: %d train, %d val images, %d duplicates dropped, %d skipped",
        out,
        card.counts["train"].images,
        card.counts["val"].images,
        len(duplicates),
        len(harvest.skipped),
    )
    return DatasetResult(out, data_yaml, card_path, card)


def _write_image(out: Path, image: _Image, side: str, group: int, class_names: Sequence[str]) -> ImageRecord:
    stem = image.frame.sha256[:16]
    relative = f"images/{side}/{stem}.jpg"
    # The evidence bytes as stored, so the file still hashes to the sha256 in the card.
    (out / relative).write_bytes(image.data)
    lines = [yolo_line(class_id, xyxy, image.width, image.height) for class_id, xyxy in image.labels]
    (out / "labels" / side / f"{stem}.txt").write_text(
        "".join(line + "\n" for line in lines), encoding="utf-8"
    )
    return ImageRecord(
        file=relative,
        split=side,  # type: ignore[arg-type]
        sha256=image.frame.sha256,
        camera=image.frame.camera,
        ts=image.frame.ts,
        width=image.width,
        height=image.height,
        labels=dict(sorted(Counter(class_names[class_id] for class_id, _ in image.labels).items())),
        removed_boxes=image.removed,
        sources=image.frame.sources,
        group=group,
    )

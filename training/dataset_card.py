"""The files of a detection dataset: its card, its folder layout and its YOLO label lines.

Shared by the two ways a dataset is made, operator verdicts (:mod:`~curbwatch.training.dataset`)
and generated scenes (:mod:`~curbwatch.training.synth_data`), so both write the same card that
``curbwatch train run`` and ``train export`` read back.
"""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curbwatch.training.bin_crops import BINS_DIR, BinCropsCard

DATASET_SCHEMA = "curbwatch.dataset.v1"
CARD_JSON, CARD_MD, DATA_YAML = "dataset_card.json", "dataset_card.md", "data.yaml"
SPLITS: tuple[str, str] = ("train", "val")


class DatasetError(Exception):
    """The dataset cannot be built; the message says what to change."""


class LabelUse(StrEnum):
    """What a verdict does with the boxes of its events."""

    LABELS = "labels"  # the boxes are right: they become YOLO labels
    HARD_NEGATIVE = "hard_negative"  # the boxes are wrong: removed, the frame stays as background


# ---- the dataset card ----------------------------------------------------------------------------


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provenance(_Card):
    """One verdict, or one labelled sample, that contributed to an image."""

    case_id: str | None = None
    event_id: str | None = None
    sample_id: str | None = Field(default=None, description="Set for a labelled sample (no case).")
    verdict: str = Field(description="'confirmed', the reject reason, or 'labelled' for a sample.")
    use: LabelUse

    def describe(self) -> str:
        if self.sample_id is not None:
            return f"sample {self.sample_id}, {self.verdict}"
        return f"{self.verdict} ({self.case_id} / {self.event_id})"


class ImageRecord(_Card):
    """One image of the dataset and where it came from."""

    file: str = Field(description="Path relative to the dataset folder.")
    split: Literal["train", "val"]
    sha256: str
    camera: str = Field(description="device_id/camera_id.")
    ts: datetime
    width: int
    height: int
    labels: dict[str, int] = Field(description="Boxes per class.")
    removed_boxes: int = Field(description="Boxes removed as false detections.")
    sources: list[Provenance]
    group: int = Field(description="Split group: images of one group are all on one side.")


class Dropped(_Card):
    """An event frame or a sample that is not in the dataset, and why."""

    case_id: str | None = None
    sample_id: str | None = None
    event_id: str | None = None
    sha256: str | None = None
    reason: str
    duplicate_of: str | None = Field(default=None, description="sha256 of the kept near-duplicate.")


class SplitCounts(_Card):
    images: int
    boxes: int
    background_images: int = Field(description="Images with an empty label file (hard negatives).")
    per_class: dict[str, int]
    per_camera: dict[str, int] = Field(description="Images per camera.")
    per_verdict: dict[str, int] = Field(description="Images per verdict that contributed to them.")


class DatasetCard(_Card):
    """What a dataset holds, how it was made and from what."""

    schema_: Literal["curbwatch.dataset.v1"] = Field(default=DATASET_SCHEMA, alias="schema")
    name: str
    created_at: datetime
    source: dict[str, str] = Field(description="Database (password removed) and evidence folder.")
    class_names: list[str]
    policy: dict[str, dict[str, str]] = Field(description="Verdict -> use and why.")
    split: dict[str, Any] = Field(description="How train and validation were separated.")
    dedup: dict[str, Any] = Field(description="Perceptual hash and the distance that counts as a duplicate.")
    counts: dict[str, SplitCounts]
    unmapped_labels: dict[str, int] = Field(description="Boxes whose label is not in class_names (dropped).")
    cases: dict[str, int] = Field(description="Cases read, by outcome.")
    images: list[ImageRecord]
    duplicates: list[Dropped]
    skipped: list[Dropped]
    warnings: list[str]
    bins: BinCropsCard | None = Field(default=None, description="Crops of bin sites from bin-site cases.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def load_dataset_card(path: Path) -> DatasetCard:
    """Read ``dataset_card.json`` (or the one beside a ``data.yaml``).

    Raises:
        DatasetError: Missing or invalid card.
    """
    card_path = path.parent / CARD_JSON if path.name == DATA_YAML else path
    try:
        return DatasetCard.model_validate_json(card_path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise DatasetError(f"cannot read the dataset card {card_path}: {exc}") from exc


def yolo_line(class_id: int, xyxy: tuple[float, ...], width: int, height: int) -> str:
    x1, y1, x2, y2 = xyxy
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    return f"{class_id} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"


def split_counts(records: list[ImageRecord], split: str) -> SplitCounts:
    chosen = [record for record in records if record.split == split]
    per_class: Counter[str] = Counter()
    for record in chosen:
        per_class.update(record.labels)
    verdicts: Counter[str] = Counter()
    for record in chosen:
        verdicts.update({source.verdict for source in record.sources})
    return SplitCounts(
        images=len(chosen),
        boxes=sum(per_class.values()),
        background_images=sum(1 for record in chosen if not record.labels),
        per_class=dict(sorted(per_class.items())),
        per_camera=dict(sorted(Counter(record.camera for record in chosen).items())),
        per_verdict=dict(sorted(verdicts.items())),
    )


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out} exists and is not empty; pass --overwrite to replace the dataset")
        if not (out / CARD_JSON).is_file():
            raise DatasetError(f"{out} is not a dataset folder (no {CARD_JSON}); refusing to overwrite it")
        for child in ("images", "labels", BINS_DIR):
            shutil.rmtree(out / child, ignore_errors=True)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)


def render_card_markdown(card: DatasetCard) -> str:
    """The dataset card for people: counts, policy, split, warnings and every image's provenance."""
    lines = [
        f"# Dataset card: {card.name}",
        "",
        f"Created {card.created_at.isoformat()} from `{card.source['database']}` "
        f"(evidence `{card.source['evidence_dir']}`). Classes: {', '.join(card.class_names)}.",
        "",
        "## Counts",
        "",
        "| split | images | boxes | background images | " + " | ".join(card.class_names) + " |",
        "|---|---|---|---|" + "---|" * len(card.class_names),
    ]
    for side, counts in card.counts.items():
        per_class = " | ".join(str(counts.per_class.get(name, 0)) for name in card.class_names)
        lines.append(
            f"| {side} | {counts.images} | {counts.boxes} | {counts.background_images} | {per_class} |"
        )
    lines += ["", "| camera | train images | val images |", "|---|---|---|"]
    cameras = sorted({*card.counts["train"].per_camera, *card.counts["val"].per_camera})
    for camera in cameras:
        lines.append(
            f"| {camera} | {card.counts['train'].per_camera.get(camera, 0)} | "
            f"{card.counts['val'].per_camera.get(camera, 0)} |"
        )
    lines += [
        "",
        "Cases read: " + (", ".join(f"{what} {n}" for what, n in card.cases.items()) or "none") + ".",
        "",
        "## Label policy",
        "",
        "Boxes come from the objects of each event (the ones that took part in the violation); other "
        "objects in a frame are not labelled.",
        "",
        "| verdict | boxes become | why |",
        "|---|---|---|",
        *(f"| {verdict} | {rule['use']} | {rule['why']} |" for verdict, rule in card.policy.items()),
        "",
        "A frame whose box is both confirmed and rejected as a false detection is skipped. A case closed "
        "as erroneous, and cases still awaiting verification, are not used.",
        "",
        "## Split and duplicates",
        "",
        f"{card.split['method']}. Block length {card.split['block_s']:g} s, target validation share "
        f"{card.split['val_fraction']:.0%}, seed {card.split['seed']}; groups: {card.split['groups']}.",
        "",
        f"Near-duplicates: {card.dedup['hash']} (64 bits) within {card.dedup['max_distance_bits']} bits "
        f"of an earlier image of the dataset; {len(card.duplicates)} dropped.",
        "",
    ]
    if card.unmapped_labels:
        lines += [
            "Labels not in the class list (boxes dropped): "
            + ", ".join(f"{label} {n}" for label, n in card.unmapped_labels.items()),
            "",
        ]
    lines += _bins_markdown(card.bins)
    lines += ["## Warnings", ""]
    lines += [f"- {warning}" for warning in card.warnings] or ["None."]
    lines += ["", "## Skipped frames", ""]
    if card.skipped:
        lines += ["| case or sample | event | sha256 | reason |", "|---|---|---|---|"]
        lines += [
            f"| {d.case_id or f'sample {d.sample_id}'} | {d.event_id or ''} | {d.sha256 or ''} | {d.reason} |"
            for d in card.skipped
        ]
    else:
        lines.append("None.")
    lines += [
        "",
        "## Provenance",
        "",
        "| file | split | camera | ts | labels | removed | verdicts (case / event) | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in card.images:
        labels = ", ".join(f"{name} {n}" for name, n in record.labels.items()) or "background"
        sources = "; ".join(source.describe() for source in record.sources)
        lines.append(
            f"| {record.file} | {record.split} | {record.camera} | {record.ts.isoformat()} | {labels} | "
            f"{record.removed_boxes} | {sources} | {record.sha256} |"
        )
    return "\n".join(lines) + "\n"


def _bins_markdown(bins: BinCropsCard | None) -> list[str]:
    if bins is None:
        return []
    lines = [
        "## Bin-site crops",
        "",
        f"`{bins.folder}/`: {bins.counts['overflow']} overflow, {bins.counts['clean']} clean "
        f"(`curbwatch train bins --data {bins.folder}`); {len(bins.skipped)} frames not cropped.",
        "",
        "| verdict | crops go to | why |",
        "|---|---|---|",
    ]
    for verdict, rule in bins.policy.items():
        folder, why = rule.split(": ", 1)
        lines.append(f"| {verdict} | {folder} | {why} |")
    lines += ["", "| file | verdict (case / event) | camera | zone |", "|---|---|---|---|"]
    lines += [
        f"| {c.file} | {c.verdict} ({c.case_id} / {c.event_id}) | {c.camera} | {c.zone} |" for c in bins.crops
    ]
    lines += [""]
    lines += [
        f"- not cropped: case {s['case_id']} event {s['event_id']}: {s['reason']}" for s in bins.skipped
    ]
    return [*lines, ""] if bins.skipped else lines


def card_summary(card: DatasetCard) -> str:
    """One line per split for the command line."""
    return (
        "\n".join(
            f"{side}: {counts.images} images, {counts.boxes} boxes, {counts.background_images} background"
            for side, counts in card.counts.items()
        )
        + f"\n{len(card.duplicates)} near-duplicates dropped, {len(card.skipped)} frames skipped"
        + (f", {len(card.warnings)} warnings (see the card)" if card.warnings else "")
        + (
            f"\nbins: {card.bins.counts['overflow']} overflow, {card.bins.counts['clean']} clean crops"
            if card.bins
            else ""
        )
    )

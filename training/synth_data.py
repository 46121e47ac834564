"""Seeded ``curbwatch synth`` scenes -> a YOLO detection dataset the training pipeline accepts.

Every scene is planned from its seed exactly as ``curbwatch synth`` plans it, but only the sampled
frames are rendered (one every ``every_s`` seconds of scene time), so a dataset of many scenes costs
a fraction of their videos. Labels are the scene's ground-truth boxes (from the script and the
sprites' geometry, exact); the pixel noise of a sampled frame is seeded by (seed, frame), so the
same command writes the same images.

Frames of one scene are near-duplicates of each other (the same street, the same parked car), so
the split keeps whole scenes on one side: the validation scenes are never seen in training.
Seeds below :data:`MIN_SEED` are reserved for the demo's cameras (seeds 1 and 2) and never used.

The card is the same :class:`~curbwatch.training.dataset.DatasetCard` that ``curbwatch train
dataset`` writes; provenance maps onto its fields: ``camera`` is ``synth/seed-<seed>``, ``ts`` the
frame's wall time (scene start + ``t``), and each image's source names the seed and frame index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curbwatch.edge.synth.generate import DEFAULT_START
from curbwatch.edge.synth.layout import Camera
from curbwatch.edge.synth.render import background, render_frame
from curbwatch.edge.synth.script import CLASSES, Scenario, plan_scenario
from curbwatch.edge.synth.truth import frame_boxes
from curbwatch.schema.yamlio import dump_yaml
from curbwatch.training.dataset_card import (
    CARD_JSON,
    CARD_MD,
    DATA_YAML,
    SPLITS,
    DatasetCard,
    DatasetError,
    ImageRecord,
    LabelUse,
    Provenance,
    prepare_out,
    split_counts,
    yolo_line,
)

MIN_SEED = 100  # seeds below are reserved: 1 and 2 are the demo's held-out cameras
DEMO_WH = (960, 540)  # the demo's frame size
SYNTH_VERDICT = "synthetic"
JPEG_QUALITY = 92

Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


class SynthDataConfig(BaseModel):
    """What to render.

    Attributes:
        train_scenes: Scenes for training, seeds ``first_seed ...``.
        val_scenes: Scenes for validation, the seeds after the training ones.
        first_seed: First seed used; at least :data:`MIN_SEED`.
        seconds: Length of every scene (the script scales to it).
        every_s: Scene time between two sampled frames.
        fps: Frame rate of the scene (frame indices match a ``curbwatch synth`` video of that rate).
        frame_wh: Rendered frame size.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_scenes: int = Field(default=24, ge=1)
    val_scenes: int = Field(default=6, ge=1)
    first_seed: int = Field(default=MIN_SEED, ge=MIN_SEED)
    seconds: float = Field(default=120.0, gt=0)
    every_s: float = Field(default=2.0, gt=0)
    fps: float = Field(default=5.0, gt=0)
    frame_wh: tuple[int, int] = DEMO_WH

    @model_validator(mode="after")
    def _check(self) -> SynthDataConfig:
        if min(self.frame_wh) < 64:
            raise ValueError(f"frame size {self.frame_wh[0]}x{self.frame_wh[1]} is too small (64 px minimum)")
        if self.every_s * self.fps < 1.0:
            raise ValueError(f"every_s {self.every_s} is shorter than one frame at {self.fps} fps")
        return self

    def seeds(self, split: str) -> range:
        first_val = self.first_seed + self.train_scenes
        if split == "train":
            return range(self.first_seed, first_val)
        return range(first_val, first_val + self.val_scenes)


def sampled_indices(scenario: Scenario, every_s: float) -> list[int]:
    """Frame indices one ``every_s`` apart, from the first frame on."""
    step = every_s * scenario.fps
    return sorted({round(k * step) for k in range(int((scenario.frame_count - 1) / step) + 1)})


@dataclass(frozen=True)
class SampledFrame:
    """One rendered frame of a scene and its ground-truth boxes (``{track_id, label, xyxy}``)."""

    seed: int
    index: int
    t: float
    image: np.ndarray
    boxes: list[dict[str, Any]]


def render_samples(
    scenario: Scenario, frame_wh: tuple[int, int], indices: list[int]
) -> Iterator[SampledFrame]:
    """Render only the frames ``indices`` of a scene, with the boxes the scene's truth gives them."""
    camera = Camera(frame_wh)
    base = background(camera, scenario.seed)
    for index in indices:
        t = index / scenario.fps
        rng = np.random.default_rng([scenario.seed, 2, index])
        image, placed = render_frame(scenario, camera, base, t, rng)
        yield SampledFrame(scenario.seed, index, t, image, frame_boxes(camera, placed))


@dataclass(frozen=True)
class SynthDataResult:
    """What :func:`build_synth_dataset` wrote."""

    out: Path
    data_yaml: Path
    card_path: Path
    card: DatasetCard


def _write_sample(
    out: Path, sample: SampledFrame, split: str, group: int, start: datetime, class_ids: dict[str, int]
) -> ImageRecord:
    stem = f"seed{sample.seed:05d}_f{sample.index:05d}"
    relative = f"images/{split}/{stem}.jpg"
    ok, encoded = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"cannot encode frame {sample.index} of seed {sample.seed} as JPEG")
    data = encoded.tobytes()
    (out / relative).write_bytes(data)
    height, width = sample.image.shape[:2]
    lines = [yolo_line(class_ids[box["label"]], tuple(box["xyxy"]), width, height) for box in sample.boxes]
    (out / "labels" / split / f"{stem}.txt").write_text(
        "".join(line + "\n" for line in lines), encoding="utf-8"
    )
    labels: dict[str, int] = {}
    for box in sample.boxes:
        labels[box["label"]] = labels.get(box["label"], 0) + 1
    return ImageRecord(
        file=relative,
        split=split,  # type: ignore[arg-type]
        sha256=hashlib.sha256(data).hexdigest(),
        camera=f"synth/seed-{sample.seed}",
        ts=(start + timedelta(seconds=sample.t)).astimezone(UTC),
        width=width,
        height=height,
        labels=dict(sorted(labels.items())),
        removed_boxes=0,
        sources=[
            Provenance(
                case_id=f"seed-{sample.seed}",
                event_id=f"frame-{sample.index}",
                verdict=SYNTH_VERDICT,
                use=LabelUse.LABELS,
            )
        ],
        group=group,
    )


def _no_progress(items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
    return items


def build_synth_dataset(
    out: Path,
    config: SynthDataConfig,
    *,
    now: datetime,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> SynthDataResult:
    """Render the sampled frames of every scene and write images, YOLO labels, data.yaml and the card.

    Args:
        out: Dataset folder to create.
        config: Scenes, seeds, sampling and frame size.
        now: Creation time for the card.
        overwrite: Replace an earlier dataset in ``out``.
        progress: Wraps the frame iterator (a progress bar); called with (items, description, total).

    Raises:
        DatasetError: ``out`` is in the way.
    """
    start = datetime.fromisoformat(DEFAULT_START)
    class_ids = {name: index for index, name in enumerate(CLASSES)}
    scenes: list[tuple[str, int, Scenario, list[int]]] = []
    for split in SPLITS:
        for seed in config.seeds(split):
            scenario = plan_scenario(config.seconds, seed, config.fps)
            scenes.append((split, seed, scenario, sampled_indices(scenario, config.every_s)))
    prepare_out(out, overwrite)

    def samples() -> Iterator[tuple[str, int, SampledFrame]]:
        for group, (split, _, scenario, indices) in enumerate(scenes):
            for sample in render_samples(scenario, config.frame_wh, indices):
                yield split, group, sample

    total = sum(len(indices) for *_, indices in scenes)
    records = [
        _write_sample(out, sample, split, group, start, class_ids)
        for split, group, sample in progress(samples(), "rendering", total)
    ]
    seeds = {split: config.seeds(split) for split in SPLITS}
    card = DatasetCard(
        name=out.name,
        created_at=now.astimezone(UTC),
        source={
            "generator": "curbwatch synth (edge/synth): planned from each seed, sampled frames rendered",
            "frame_wh": f"{config.frame_wh[0]}x{config.frame_wh[1]}",
            "scene": f"{config.seconds:g} s at {config.fps:g} fps, one frame every {config.every_s:g} s",
            "start_time": DEFAULT_START,
            "provenance": "camera synth/seed-<seed>, ts = start_time + t, source event_id frame-<index>",
        },
        class_names=list(CLASSES),
        policy={
            SYNTH_VERDICT: {
                "use": LabelUse.LABELS.value,
                "why": "ground truth of the scene script: every object in view is labelled, exactly",
            }
        },
        split={
            "method": "by scene: every frame of a seed goes to one side; validation seeds follow the "
            f"training seeds; seeds below {MIN_SEED} (the demo's cameras 1 and 2) are never used",
            "val_fraction": round(config.val_scenes / (config.train_scenes + config.val_scenes), 4),
            "seeds": {split: [seeds[split].start, seeds[split].stop - 1] for split in SPLITS},
            "groups": {split: len(seeds[split]) for split in SPLITS},
        },
        dedup={"hash": "none", "dropped": 0, "why": f"frames are sampled {config.every_s:g} s apart"},
        counts={split: split_counts(records, split) for split in SPLITS},
        unmapped_labels={},
        cases={f"{split}_scenes": len(seeds[split]) for split in SPLITS},
        images=records,
        duplicates=[],
        skipped=[],
        warnings=[],
    )
    data_yaml = out / DATA_YAML
    data_yaml.write_text(
        dump_yaml({"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}),
        encoding="utf-8",
    )
    card_path = out / CARD_JSON
    card_path.write_text(card.model_dump_json(by_alias=True, indent=1) + "\n", encoding="utf-8")
    (out / CARD_MD).write_text(render_synth_card(card), encoding="utf-8")
    return SynthDataResult(out, data_yaml, card_path, card)


def render_synth_card(card: DatasetCard) -> str:
    """The card for people: where the scenes came from, the split by seed and the counts."""
    seeds = card.split["seeds"]
    lines = [
        f"# Dataset card: {card.name}",
        "",
        f"Created {card.created_at.isoformat()} by `curbwatch train synth-data`: {card.source['generator']}.",
        f"Frames {card.source['frame_wh']}, {card.source['scene']}. Classes: {', '.join(card.class_names)}.",
        "Labels are the scenes' exact ground truth (every object in view).",
        "",
        f"Train seeds {seeds['train'][0]}-{seeds['train'][1]}, "
        f"val seeds {seeds['val'][0]}-{seeds['val'][1]}; split {card.split['method']}.",
        "",
        "| split | images | boxes | background images | " + " | ".join(card.class_names) + " |",
        "|---|---|---|---|" + "---|" * len(card.class_names),
    ]
    for split, counts in card.counts.items():
        per_class = " | ".join(str(counts.per_class.get(name, 0)) for name in card.class_names)
        lines.append(
            f"| {split} | {counts.images} | {counts.boxes} | {counts.background_images} | {per_class} |"
        )
    lines += ["", f"Provenance of every image (seed, frame, time) is in `{CARD_JSON}`."]
    return "\n".join(lines) + "\n"

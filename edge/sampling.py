"""Uncertain frames for labelling: which frames to pick, within quotas, and how they are kept.

A frame is worth a labeller's look when the detector was unsure: some box scored inside a band
around the decision threshold (by default [0.25, 0.5)). Such boxes are where a better model
gains most, and the operators' verdicts never see them, since no rule fired. Optionally only the
classes the camera's rules watch count, and only boxes standing in a rule zone.

Picking is throttled per camera by quotas per minute, hour and day and by a cooldown after each
sample, so a parked car that scores 0.4 all day yields a few samples, not the whole quota. All
windows slide on frame timestamps (never the wall clock): a replay picks the same frames as the
live run did, however fast it runs, and a variable frame rate changes nothing. A stream that
jumps back in time (a looped file, a clock step) starts a new timeline: samples "in the future"
are forgotten. Sample ids derive from camera and frame time, so a replayed frame sampled twice
is one sample on the server.

A picked frame is stored like a check snapshot (privacy masks applied upstream, heads and faces
blurred) with a JSON sidecar beside it, and handed to a :class:`SampleSink` (the outbox) that
delivers it as a signed ``curbwatch.sample.v1`` document plus the image as evidence.
"""

from __future__ import annotations

import hashlib
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curbwatch.edge.evidence import PERSON_LABEL, EvidenceError, EvidenceWriter, atomic_write, people_in
from curbwatch.edge.messages import Detections, Frame, Tracks
from curbwatch.edge.zones import ZoneSet
from curbwatch.schema.events import EvidenceRefV1, ModelRefV1
from curbwatch.schema.protocol import SampleDetectionV1, SampleV1
from curbwatch.schema.zones import NoParkingZone, NoVendingZone, RuleZone

logger = logging.getLogger(__name__)

MINUTE_S, HOUR_S, DAY_S = 60.0, 3600.0, 86400.0
SNAPSHOT_NAME = "sample"


class SamplingConfig(BaseModel):
    """Which uncertain frames go to labelling, and how many (``edge.yaml`` section ``sampling``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False, title="Enabled",
        description="Off by default: a sample is a street image that leaves the box outside any "
        "violation and costs upload; turn it on where someone labels the samples.",
    )  # fmt: skip
    score_min: float = Field(
        default=0.25, ge=0, le=1, title="Lowest uncertain score",
        description="Boxes scoring at least this are uncertain. Boxes under the detector's score "
        "threshold never reach the sampler: lower that threshold to sample below it.",
    )  # fmt: skip
    score_max: float = Field(
        default=0.5, ge=0, le=1, title="Highest uncertain score",
        description="Boxes scoring below this are uncertain; above it the detector is sure enough.",
    )  # fmt: skip
    classes: Literal["rules", "all"] | list[str] = Field(
        default="rules", title="Classes",
        description="'rules': only classes the camera's rule zones watch; 'all': every class; or a list.",
    )  # fmt: skip
    in_zones_only: bool = Field(
        default=False, title="In rule zones only",
        description="Only boxes whose ground point lies in one of the camera's rule zones.",
    )  # fmt: skip
    per_minute: int = Field(
        default=1, ge=1, title="Per minute", description="At most this many samples per camera in any 60 s."
    )
    per_hour: int = Field(
        default=20, ge=1, title="Per hour", description="At most this many samples per camera in any hour."
    )
    per_day: int = Field(
        default=100, ge=1, title="Per day", description="At most this many samples per camera in any 24 h."
    )
    cooldown_s: float = Field(
        default=60.0, ge=0, le=DAY_S, title="Cooldown (s)",
        description="Frame time after a sample before the same camera may give another.",
    )  # fmt: skip

    @model_validator(mode="after")
    def verify_band_and_quotas(self) -> SamplingConfig:
        if self.score_min >= self.score_max:
            raise ValueError(f"score_min {self.score_min} must be below score_max {self.score_max}")
        if not self.per_minute <= self.per_hour <= self.per_day:
            raise ValueError("quotas must grow with their window: per_minute <= per_hour <= per_day")
        if isinstance(self.classes, list) and not self.classes:
            raise ValueError("classes is an empty list; use 'all' or name at least one class")
        return self


@dataclass(frozen=True)
class SampleDecision:
    """A frame the sampler picked.

    Attributes:
        ts: Frame time.
        uncertain: Indices of the detections that scored inside the band (and passed the filters).
    """

    ts: float
    uncertain: tuple[int, ...]


@dataclass
class SamplerStats:
    """What the sampler did with the frames it was offered."""

    offered: int = 0
    uncertain: int = 0
    throttled: int = 0
    sampled: int = 0


def watched_classes(zones: tuple[RuleZone, ...]) -> frozenset[str]:
    """The detector classes the rules of these zones look at (bin sites are judged on pixels)."""
    classes: set[str] = set()
    for zone in zones:
        if isinstance(zone, NoParkingZone):
            classes.update(zone.vehicle_classes, zone.two_wheeler_classes)
        elif isinstance(zone, NoVendingZone):
            classes.update(zone.person_classes, zone.vending_classes)
    return frozenset(classes)


class UncertaintySampler:
    """Decides, for one camera, which frames are sampled; image-free and clock-free.

    Args:
        config: Band, filters, quotas and cooldown.

    Example:
        >>> sampler = UncertaintySampler(SamplingConfig(enabled=True))
        >>> decision = sampler.offer(frame.ts, detections, zones)  # None: not this frame
    """

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.stats = SamplerStats()
        self._taken: list[float] = []  # frame times of the samples of the last day, ascending

    def offer(self, ts: float, detections: Detections, zones: ZoneSet) -> SampleDecision | None:
        """Whether the frame at ``ts`` with ``detections`` is sampled; a sample counts at once."""
        self.stats.offered += 1
        uncertain = self._uncertain(detections, zones)
        if not uncertain:
            return None
        self.stats.uncertain += 1
        if not self._within_quota(ts):
            self.stats.throttled += 1
            return None
        self._taken.append(ts)
        self.stats.sampled += 1
        return SampleDecision(ts, uncertain)

    def _uncertain(self, detections: Detections, zones: ZoneSet) -> tuple[int, ...]:
        config = self.config
        in_band = (detections.scores >= config.score_min) & (detections.scores < config.score_max)
        if not in_band.any():
            return ()
        classes = self._classes(zones)
        rule_zones = [zone.name for zone in zones.rule_zones()] if config.in_zones_only else []
        picked = []
        for index in np.flatnonzero(in_band):
            if classes is not None and detections.class_names[detections.class_ids[index]] not in classes:
                continue
            x1, _, x2, y2 = (float(v) for v in detections.xyxy[index])
            ground = ((x1 + x2) / 2.0, y2)  # as Track.anchor_xy: where the object touches the ground
            if config.in_zones_only and not any(zones.anchor_in(name, ground) for name in rule_zones):
                continue
            picked.append(int(index))
        return tuple(picked)

    def _classes(self, zones: ZoneSet) -> frozenset[str] | None:
        if self.config.classes == "all":
            return None
        if self.config.classes == "rules":
            return watched_classes(zones.rule_zones())
        return frozenset(self.config.classes)

    def _within_quota(self, ts: float) -> bool:
        taken = self._taken
        if taken and ts < taken[-1]:
            # The stream went back in time: a new timeline, where samples from ts on never happened.
            del taken[bisect_left(taken, ts) :]
        del taken[: bisect_right(taken, ts - DAY_S)]
        if taken and ts - taken[-1] < self.config.cooldown_s:
            return False
        quotas = {MINUTE_S: self.config.per_minute, HOUR_S: self.config.per_hour, DAY_S: self.config.per_day}
        return all(len(taken) - bisect_right(taken, ts - window) < quota for window, quota in quotas.items())


class SampleSink(Protocol):
    """Delivers samples (the outbox's sink); ``image`` is the sample's stored JPEG."""

    def emit_sample(self, sample: SampleV1, image: Path) -> None: ...


@dataclass
class CameraSampling:
    """One camera's sampling stage: picks frames, stores them, hands them to the sink.

    Args:
        config: The ``sampling`` section.
        writer: The evidence store; samples go under ``<camera>/<day>/snapshots/``.
        device_id: This box.
        model: Gives the provenance of the detector in service, written into every sample.
        sink: Delivers samples to the server; None keeps them on disk only.
    """

    config: SamplingConfig
    writer: EvidenceWriter
    device_id: str
    model: Callable[[], ModelRefV1] | None = None
    sink: SampleSink | None = None
    sampler: UncertaintySampler = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = UncertaintySampler(self.config)

    def offer(self, frame: Frame, detections: Detections, tracks: Tracks, zones: ZoneSet) -> SampleV1 | None:
        """Sample ``frame`` (privacy masks applied) if it is uncertain and within quota.

        Returns:
            The sample that was stored and handed on, or None.
        """
        decision = self.sampler.offer(frame.ts, detections, zones)
        if decision is None:
            return None
        # Blur every person the detector saw, however unsure, and every person track.
        people = (*people_in(detections, frame.ts), *(t for t in tracks.items if t.label == PERSON_LABEL))
        try:
            ref = self.writer.write_snapshot(frame, people, SNAPSHOT_NAME)
            image = self.writer.config.root / ref.path
            sample = self._document(frame, detections, decision, ref)
            sidecar = sample.model_dump_json(by_alias=True, indent=2).encode()
            atomic_write(image.with_suffix(".json"), sidecar)
        except (EvidenceError, OSError) as exc:
            logger.warning("camera %s: sample at ts=%.3f not stored: %s", frame.camera_id, frame.ts, exc)
            return None
        if self.sink is not None:
            self.sink.emit_sample(sample, image)
        return sample

    def _document(
        self, frame: Frame, detections: Detections, decision: SampleDecision, ref: EvidenceRefV1
    ) -> SampleV1:
        uncertain = set(decision.uncertain)
        return SampleV1(
            sample_id=sample_id(self.device_id, frame.camera_id, frame.ts),
            device_id=self.device_id,
            camera_id=frame.camera_id,
            ts=datetime.fromtimestamp(frame.ts, UTC),
            frame_wh=frame.resolution_wh,
            model=self.model() if self.model is not None else None,
            image=ref,
            reason="uncertain",
            score_band=(self.config.score_min, self.config.score_max),
            detections=[
                SampleDetectionV1(
                    label=label,
                    score=round(float(score), 4),
                    xyxy=tuple(round(float(v), 1) for v in box),
                    uncertain=index in uncertain,
                )
                for index, (label, score, box) in enumerate(
                    zip(detections.labels, detections.scores, detections.xyxy, strict=True)
                )
            ],
        )


def sample_id(device_id: str, camera_id: str, ts: float) -> str:
    """32 hex characters fixed by device, camera and frame time (ms): a replayed frame keeps its id."""
    return hashlib.sha256(f"{device_id}/{camera_id}/{round(ts * 1000)}".encode()).hexdigest()[:32]

"""One camera's pipeline: the only module that wires stages together.

Reading ``CameraPipeline.process`` top to bottom is reading the data flow:
privacy masks -> inference gate -> detector -> tracker -> zones -> rules -> evidence -> events,
with uncertain detections also offered to the labelling sampler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from curbwatch.edge.detect.motion import GateConfig, InferenceGate
from curbwatch.edge.events import EventBuilder
from curbwatch.edge.evidence import EvidenceWriter
from curbwatch.edge.messages import Detections, EpisodeEvent, Frame, Tracks
from curbwatch.edge.rules.bins import BinRuleConfig, make_bin_rule
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.edge.rules.engine import RuleEngine
from curbwatch.edge.sampling import CameraSampling
from curbwatch.edge.track import Tracker, TrackerConfig
from curbwatch.edge.zones import ZoneSet
from curbwatch.schema.detlog import LoggedDetection, LoggedFrame, write_frame
from curbwatch.schema.events import EndReason, EventV1
from curbwatch.schema.zones import ZoneFile

logger = logging.getLogger(__name__)

Detect = Callable[[np.ndarray], Detections]


@dataclass
class PipelineStats:
    """Counters for heartbeats and benchmarks; times are process seconds, not frame time."""

    frames: int = 0
    inferred_frames: int = 0
    events: int = 0
    detect_s: float = 0.0
    process_s: float = 0.0
    last_ts: float | None = None
    gate_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def inferred_share(self) -> float:
        return self.inferred_frames / self.frames if self.frames else 0.0


@dataclass(frozen=True)
class PipelineParts:
    """Stage settings a camera pipeline is built from (sections of the edge config)."""

    gate: GateConfig = field(default_factory=GateConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    bins: BinRuleConfig = field(default_factory=BinRuleConfig)


class SceneStages:
    """The image-free stages (tracker -> zones -> rules) for one stream resolution.

    Shared by the live pipeline and ``curbwatch replay``, so both judge a scene the same way.
    """

    def __init__(self, zone_file: ZoneFile, frame_wh: tuple[int, int], parts: PipelineParts) -> None:
        self.frame_wh = frame_wh
        self.zones = ZoneSet(zone_file, frame_wh)
        self.tracker = Tracker(parts.tracker)
        self.rules = self._rule_engine(parts)

    def _rule_engine(self, parts: PipelineParts) -> RuleEngine:
        return RuleEngine(
            self.zones,
            parts.rules,
            bin_rule_factory=lambda zone, zone_set: make_bin_rule(zone, zone_set, parts.rules, parts.bins),
        )

    def replace_zones(self, zone_file: ZoneFile, parts: PipelineParts) -> None:
        """New zones and rules for the same stream; tracks (and their stillness) carry on."""
        self.zones = ZoneSet(zone_file, self.frame_wh)
        self.rules = self._rule_engine(parts)

    def advance(
        self, ts: float, detections: Detections | None, frame: Frame | None
    ) -> tuple[Tracks, list[EpisodeEvent]]:
        """Move the scene to ``ts``; ``detections`` is None where the detector did not run."""
        tracks = self.tracker.update(detections, ts, self.frame_wh)
        hits = self.zones.test(tracks)
        return tracks, self.rules.update(frame, tracks, hits)


class _StreamStages(SceneStages):
    """Scene stages plus the image-based inference gate."""

    def __init__(self, zone_file: ZoneFile, frame_wh: tuple[int, int], parts: PipelineParts) -> None:
        super().__init__(zone_file, frame_wh, parts)
        self.gate = InferenceGate(parts.gate)


class CameraPipeline:
    """Runs every stage for one camera, one frame at a time.

    Args:
        zone_file: The camera's validated zones.
        detect: Detector call (an ``OnnxDetector.detect`` shared between cameras).
        builder: Makes wire events (device id, model provenance).
        parts: Stage settings.
        evidence: Writes evidence images; None skips evidence (replay, benchmarks).
        detlog: Stream to record every frame's detections to, for ``curbwatch replay``.
        sampling: Picks frames with uncertain detections for labelling; None samples nothing.

    Example:
        >>> pipeline = CameraPipeline(zone_file, detector.detect, builder, PipelineParts(), writer)
        >>> for frame in source:
        ...     for event in pipeline.process(frame):
        ...         sink.emit(event)
    """

    def __init__(
        self,
        zone_file: ZoneFile,
        detect: Detect,
        builder: EventBuilder,
        parts: PipelineParts,
        evidence: EvidenceWriter | None = None,
        detlog: IO[str] | None = None,
        sampling: CameraSampling | None = None,
    ) -> None:
        self._zone_file = zone_file
        self._detect = detect
        self._builder = builder
        self._parts = parts
        self._evidence = evidence
        self._detlog = detlog
        self._sampling = sampling
        self._stages: _StreamStages | None = None
        self._pending_zones: ZoneFile | None = None
        self.stats = PipelineStats()

    def replace_zones(self, zone_file: ZoneFile) -> None:
        """Use a new zone file from the next frame on (safe to call from another thread).

        Open episodes end with ``zones_changed``. The tracker is kept, so objects keep their ids
        and stillness; like a schedule coming into force, a new zone's dwell counts from when it
        applies.
        """
        if zone_file.camera != self._zone_file.camera:
            raise ValueError(f"zone file is for camera {zone_file.camera!r}, not {self._zone_file.camera!r}")
        self._pending_zones = zone_file

    def process(self, frame: Frame) -> list[EventV1]:
        """Run one frame through every stage and return the events it caused."""
        started = time.perf_counter()
        closing = self._swap_zones(frame.ts)
        stages = self._stages_for(frame)
        image = stages.zones.apply_privacy_masks(frame.image)
        masked = frame if image is frame.image else Frame(frame.camera_id, frame.ts, image, frame.index)

        decision = stages.gate.decide(masked)
        detections: Detections | None = None
        if decision.infer:
            detect_started = time.perf_counter()
            detections = self._detect(masked.image)
            self.stats.detect_s += time.perf_counter() - detect_started
            self.stats.inferred_frames += 1
        tracks, episodes = stages.advance(masked.ts, detections, masked)
        events = closing + [self._event(episode, masked, tracks, stages) for episode in episodes]
        if self._sampling is not None and detections is not None:
            self._sampling.offer(masked, detections, tracks, stages.zones)

        if self._detlog is not None:
            self._record(masked, detections)
        self._count(frame, decision.reason, len(events), started)
        return events

    def close(self, ts: float | None = None) -> list[EventV1]:
        """End open episodes (stream ended or shutting down); no evidence without a frame."""
        if self._stages is None:
            return []
        end_ts = ts if ts is not None else (self.stats.last_ts or 0.0)
        events = [self._builder.build(ep, self._stages.frame_wh) for ep in self._stages.rules.close(end_ts)]
        self.stats.events += len(events)
        return events

    def _swap_zones(self, ts: float) -> list[EventV1]:
        zone_file, self._pending_zones = self._pending_zones, None
        if zone_file is None:
            return []
        closing = []
        if self._stages is not None:
            ended = self._stages.rules.close(ts, EndReason.ZONES_CHANGED)
            closing = [self._builder.build(episode, self._stages.frame_wh) for episode in ended]
            self._stages.replace_zones(zone_file, self._parts)
        self._zone_file = zone_file
        self._builder = self._builder.for_zones(zone_file)
        logger.info("camera %s: new zone file applied (%d zones)", zone_file.camera, len(zone_file.zones))
        return closing

    def _stages_for(self, frame: Frame) -> _StreamStages:
        if self._stages is None or self._stages.frame_wh != frame.resolution_wh:
            if self._stages is not None:
                logger.warning(
                    "camera %s changed resolution %s -> %s; restarting its stages",
                    frame.camera_id,
                    self._stages.frame_wh,
                    frame.resolution_wh,
                )
            self._stages = _StreamStages(self._zone_file, frame.resolution_wh, self._parts)
        return self._stages

    def _event(self, episode: EpisodeEvent, frame: Frame, tracks: Tracks, stages: SceneStages) -> EventV1:
        evidence = []
        if self._evidence is not None:
            evidence = self._evidence.write(
                frame,
                episode,
                stages.zones.polygon_px(episode.zone),
                tracks,
                event_code=self._builder.event_code(episode),
            )
        return self._builder.build(episode, stages.frame_wh, evidence)

    def _record(self, frame: Frame, detections: Detections | None) -> None:
        assert self._detlog is not None
        logged = (
            []
            if detections is None
            else [
                LoggedDetection(
                    label=label, score=round(float(score), 4), xyxy=tuple(round(float(v), 1) for v in box)
                )
                for label, score, box in zip(
                    detections.labels, detections.scores, detections.xyxy, strict=True
                )
            ]
        )
        write_frame(
            self._detlog,
            LoggedFrame(
                camera=frame.camera_id,
                ts=frame.ts,
                frame_wh=frame.resolution_wh,
                inferred=detections is not None,
                detections=logged,
            ),
        )

    def _count(self, frame: Frame, reason: str, events: int, started: float) -> None:
        self.stats.frames += 1
        self.stats.events += events
        self.stats.last_ts = frame.ts
        self.stats.gate_reasons[reason] = self.stats.gate_reasons.get(reason, 0) + 1
        self.stats.process_s += time.perf_counter() - started


def open_detlog(folder: Path | None, camera_id: str) -> IO[str] | None:
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / f"{camera_id}.jsonl").open("a", encoding="utf-8")

"""Tracker: ``Detections`` -> ``Tracks``, with a stationary state and memory of parked objects.

IoU assignment (scipy's Hungarian solver, class-aware) plus our own state logic, because the
job is dwell: a parked car must keep one id and one ``stationary_since_ts`` through box jitter,
missed detections, occlusion by passing traffic and label flips (car/truck). Everything is timed
by frame timestamps, so a variable or motion-gated frame rate changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import linear_sum_assignment

from curbwatch.edge.messages import Detections, Track, Tracks
from curbwatch.edge.stillness import Box, Stillness, StillnessConfig

logger = logging.getLogger(__name__)

_HISTORY_SCORES = 10  # like Frigate: the median of the last 10 scores gates a new track


class TrackerError(ValueError):
    """Input the tracker cannot use (time going backwards)."""


class TrackerConfig(BaseModel):
    """Tracker settings; every duration is frame time in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    match_iou: float = Field(0.3, gt=0, le=1, title="Match IoU")
    """Least IoU between a track's predicted box and a detection to match them."""
    compatible_classes: tuple[tuple[str, ...], ...] = Field(
        (("car", "truck"), ("motorcycle", "bicycle")), title="Compatible classes"
    )
    """Groups of labels a detector confuses; a track matches detections of its own group only.
    Bus stays apart so a passing bus does not take over a parked car's track."""
    duplicate_iou: float = Field(0.7, gt=0, le=1, title="Duplicate IoU")
    """Detections of one compatible group overlapping this much are one object seen as two classes
    (a real detector often reports the same car as car 0.75 and truck 0.48); the weaker is dropped."""
    min_hits: int = Field(3, ge=1, title="Hits to confirm")
    """Detections needed within the birth window before a track exists."""
    birth_window_s: float = Field(3.0, gt=0, title="Birth window (s)")
    """Time in which a candidate must gather its hits."""
    birth_score: float = Field(0.4, ge=0, le=1, title="Birth score")
    """Least median of a candidate's recent (up to 10) scores to confirm it."""
    max_age_s: float = Field(2.0, gt=0, title="Max age (s)")
    """How long a moving track survives unmatched, counted over inferred frames."""
    min_misses: int = Field(3, ge=1, title="Misses to drop")
    """Inferred frames without a match needed, besides the age, to drop a track."""
    stationary_max_age_s: float = Field(60.0, gt=0, title="Stationary max age (s)")
    """How long a stationary track survives unmatched; occlusion by traffic lasts tens of seconds."""
    memory_s: float = Field(300.0, ge=0, title="Re-identification memory (s)")
    """How long a lost stationary track can be revived, with its id and dwell, at the same place."""
    revive_iou: float = Field(0.5, gt=0, le=1, title="Revive IoU")
    """Least IoU of a new track (first and latest box) with a remembered parked box to take its id."""
    score_smoothing: float = Field(0.3, gt=0, le=1, title="Score smoothing")
    """Weight of a new score in the track's running score."""
    velocity_smoothing: float = Field(0.5, gt=0, le=1, title="Velocity smoothing")
    """Weight of a new displacement in the velocity used to predict moving boxes."""
    stillness: StillnessConfig = Field(default_factory=StillnessConfig, title="Stillness")
    """When a track counts as stationary."""

    @model_validator(mode="after")
    def verify_ages(self) -> TrackerConfig:
        if self.stationary_max_age_s < self.max_age_s:
            raise ValueError("stationary_max_age_s must be at least max_age_s")
        labels = [label for group in self.compatible_classes for label in group]
        if len(set(labels)) != len(labels):
            raise ValueError("a label appears in two compatible_classes groups")
        return self


@dataclass(slots=True)
class _State:
    """Mutable per-track state; ``track_id`` is 0 while the track is a candidate."""

    track_id: int
    group: str
    box: Box
    origin_box: Box
    first_seen_ts: float
    last_seen_ts: float
    score: float
    still: Stillness
    labels: Counter[str] = field(default_factory=Counter)
    hits: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY_SCORES))
    velocity: tuple[float, float] = (0.0, 0.0)
    first_miss_ts: float | None = None
    misses: int = 0
    matched: bool = True

    label: str = ""

    def count_label(self, label: str, times: int = 1) -> None:
        """Count a label; the track's label is the most frequent so far (ties keep the old one)."""
        self.labels[label] += times
        if not self.label or self.labels[label] > self.labels[self.label]:
            self.label = label


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _assign(iou: np.ndarray, compatible: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Rows matched to columns maximising total IoU, among pairs that pass the gate."""
    if iou.size == 0:
        return []
    allowed = compatible & (iou >= min_iou)
    if not allowed.any():
        return []
    cost = np.where(allowed, 1.0 - iou, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


class Tracker:
    """Gives detections stable ids and tells moving objects from stationary ones.

    Each ``update`` matches detections to live tracks and candidates by IoU with the
    track's predicted box (joint Hungarian assignment, only within a compatible class group),
    starts candidates from the rest, confirms candidates with enough confident hits, and drops
    tracks unmatched for long enough. A stationary track that is dropped is remembered for
    ``memory_s``; a new track confirmed at the same place takes back its id and its
    ``stationary_since_ts``, so an ID switch never resets the dwell clock.

    Args:
        config: Tracker settings. ``min_hits``/``birth_score`` trade latency for fewer ghost
            tracks; ``stationary_max_age_s``/``memory_s`` trade dwell continuity for the risk of
            handing a departed car's clock to a new car parked at the very same spot. An unmatched
            track is carried, not seen: the rules end a violation episode once its object has gone
            undetected for ``rules.end_grace_s``, however long the tracker keeps the track.

    Example:
        >>> tracker = Tracker(TrackerConfig())
        >>> tracks = tracker.update(detections, ts=frame.ts, frame_wh=frame.resolution_wh)
        >>> tracks = tracker.update(None, ts=next_frame.ts, frame_wh=frame.resolution_wh)
    """

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self._group_of = {label: "+".join(group) for group in config.compatible_classes for label in group}
        self._tracks: list[_State] = []
        self._candidates: list[_State] = []
        # Lost stationary tracks, with the frame time they were lost.
        self._memory: list[tuple[float, _State]] = []
        self._next_id = 1
        self._last_ts: float | None = None
        self._frame_wh: tuple[int, int] | None = None

    def update(self, detections: Detections | None, ts: float, frame_wh: tuple[int, int]) -> Tracks:
        """Advance to frame time ``ts``.

        Args:
            detections: The detector's output for this frame, or None when the detector did not
                run (motion gating); then tracks are carried over and nothing ages.
            ts: Frame timestamp, seconds since the epoch; must not go backwards.
            frame_wh: Size of the frame the boxes refer to.

        Returns:
            The confirmed tracks alive at ``ts``, matched or not, ordered by id.

        Raises:
            TrackerError: ``ts`` is earlier than the previous frame's.
        """
        if self._last_ts is not None and ts < self._last_ts:
            raise TrackerError(f"frame time went backwards: {ts} after {self._last_ts}")
        self._last_ts = ts
        self._reset_on_resize(tuple(frame_wh))
        if detections is not None:
            self._step(detections, ts)
        else:
            for state in self._tracks:
                state.matched = False
        return Tracks(ts=ts, frame_wh=frame_wh, items=self._snapshot(), inferred=detections is not None)

    def _reset_on_resize(self, frame_wh: tuple[int, int]) -> None:
        if self._frame_wh is not None and frame_wh != self._frame_wh:
            # Boxes of another resolution cannot be matched; starting over beats wrong matches.
            logger.warning("frame size changed from %s to %s; tracks reset", self._frame_wh, frame_wh)
            self._tracks, self._candidates, self._memory = [], [], []
        self._frame_wh = frame_wh

    def _group(self, label: str) -> str:
        return self._group_of.get(label, label)

    def _merge_duplicates(self, detections: Detections) -> Detections:
        """Keep one detection per object when the detector names it with two compatible classes."""
        if len(detections) < 2:
            return detections
        groups = np.array([self._group(label) for label in detections.labels])
        overlap = box_iou(detections.xyxy, detections.xyxy) >= self.config.duplicate_iou
        same = overlap & (groups[:, None] == groups[None, :])
        keep = np.ones(len(detections), bool)
        for index in np.argsort(-detections.scores, kind="stable"):
            if keep[index]:
                rivals = same[index].copy()
                rivals[index] = False
                keep &= ~(rivals & (detections.scores <= detections.scores[index]))
        return detections if keep.all() else detections.select(keep)

    def _step(self, detections: Detections, ts: float) -> None:
        detections = self._merge_duplicates(detections)
        labels = detections.labels
        boxes = detections.xyxy.astype(np.float64)
        scores = detections.scores.astype(np.float64)
        states = self._tracks + self._candidates
        for state in states:
            state.matched = False
        if states and len(detections):
            det_groups = np.array([self._group(label) for label in labels])
            compatible = np.array([s.group for s in states])[:, None] == det_groups[None, :]
            predicted = np.array([self._predict(s, ts) for s in states])
            # A stationary track also matches at its robust place: its last box may be a partial one.
            places = predicted.copy()
            for row, state in enumerate(states):
                if state.still.is_stationary:
                    places[row] = state.still.reference
            iou = np.maximum(box_iou(predicted, boxes), box_iou(places, boxes))
            pairs = _assign(iou, compatible, self.config.match_iou)
        else:
            pairs = []
        used = set()
        for row, col in pairs:
            self._observe(states[row], tuple(boxes[col].tolist()), float(scores[col]), labels[col], ts)
            used.add(col)
        for col in range(len(detections)):
            if col not in used:
                self._candidates.append(
                    self._new_state(tuple(boxes[col].tolist()), float(scores[col]), labels[col], ts)
                )
        self._age_tracks(ts)
        self._promote_candidates(ts)
        self._memory = [(lost, s) for lost, s in self._memory if ts - lost <= self.config.memory_s]

    def _predict(self, state: _State, ts: float) -> Box:
        if state.still.is_stationary:
            return state.box
        dt = min(ts - state.last_seen_ts, self.config.max_age_s)
        dx, dy = state.velocity[0] * dt, state.velocity[1] * dt
        x1, y1, x2, y2 = state.box
        return x1 + dx, y1 + dy, x2 + dx, y2 + dy

    def _new_state(self, box: Box, score: float, label: str, ts: float) -> _State:
        state = _State(
            track_id=0,
            group=self._group(label),
            box=box,
            origin_box=box,
            first_seen_ts=ts,
            last_seen_ts=ts,
            score=score,
            still=Stillness(self.config.stillness, ts, box),
        )
        state.count_label(label)
        state.hits.append((ts, score))
        return state

    def _observe(self, state: _State, box: Box, score: float, label: str, ts: float) -> None:
        dt = ts - state.last_seen_ts
        if dt > 0:
            old_cx, old_cy = (state.box[0] + state.box[2]) / 2, (state.box[1] + state.box[3]) / 2
            vx, vy = ((box[0] + box[2]) / 2 - old_cx) / dt, ((box[1] + box[3]) / 2 - old_cy) / dt
            w = self.config.velocity_smoothing
            state.velocity = (
                state.velocity[0] + w * (vx - state.velocity[0]),
                state.velocity[1] + w * (vy - state.velocity[1]),
            )
        state.box = box
        state.last_seen_ts = ts
        state.score += self.config.score_smoothing * (score - state.score)
        state.count_label(label)
        state.group = self._group(state.label)
        state.hits.append((ts, score))
        state.first_miss_ts, state.misses, state.matched = None, 0, True
        state.still.observe(ts, box)
        if state.still.is_stationary:
            state.velocity = (0.0, 0.0)

    def _age_tracks(self, ts: float) -> None:
        kept = []
        for state in self._tracks:
            if not state.matched:
                state.misses += 1
                if state.first_miss_ts is None:
                    # Absence is only evidenced from the first inferred frame that missed it.
                    state.first_miss_ts = ts
            if state.matched or not self._is_lost(state, ts):
                kept.append(state)
            elif state.still.is_stationary:
                logger.debug("stationary track %s lost; remembered", state.track_id)
                self._memory.append((ts, state))
        self._tracks = kept

    def _is_lost(self, state: _State, ts: float) -> bool:
        max_age = self.config.stationary_max_age_s if state.still.is_stationary else self.config.max_age_s
        unmatched_s = ts - (state.first_miss_ts if state.first_miss_ts is not None else ts)
        return state.misses >= self.config.min_misses and unmatched_s >= max_age

    def _promote_candidates(self, ts: float) -> None:
        window = self.config.birth_window_s
        kept = []
        for state in self._candidates:
            recent = [score for hit_ts, score in state.hits if ts - hit_ts <= window]
            if len(recent) >= self.config.min_hits and np.median(recent) >= self.config.birth_score:
                self._confirm(state)
            elif ts - state.last_seen_ts <= window:
                kept.append(state)
        self._candidates = kept

    def _confirm(self, state: _State) -> None:
        found = self._recall(state)
        if found is None:
            state.track_id = self._next_id
            self._next_id += 1
        else:
            self._memory = [(lost, s) for lost, s in self._memory if s is not found]
            assert found.still.stationary_since_ts is not None  # only stationary tracks are remembered
            state.track_id, state.first_seen_ts = found.track_id, found.first_seen_ts
            for label, times in found.labels.items():
                state.count_label(label, times)
            state.group = self._group(state.label)
            state.still.resume(state.last_seen_ts, found.still.reference, found.still.stationary_since_ts)
            logger.debug("track %s revived at its parked place", state.track_id)
        self._tracks.append(state)

    def _recall(self, state: _State) -> _State | None:
        """The remembered parked object this new track stands on, if any."""
        candidates = [s for _, s in self._memory if s.group == state.group]
        if not candidates:
            return None
        places = np.array([s.still.reference for s in candidates])
        # The whole candidate life must sit on the place: a car passing over it is not the parked one.
        iou = box_iou(np.array([state.box, state.origin_box]), places).min(axis=0)
        best = int(np.argmax(iou))
        return candidates[best] if iou[best] >= self.config.revive_iou else None

    def _snapshot(self) -> tuple[Track, ...]:
        items = []
        for state in sorted(self._tracks, key=lambda s: s.track_id):
            stationary = state.still.stationary_since_ts is not None
            box = state.still.reference if stationary else state.box
            items.append(
                Track(
                    track_id=state.track_id,
                    label=state.label,
                    score=float(state.score),
                    xyxy=box,
                    first_seen_ts=state.first_seen_ts,
                    last_seen_ts=state.last_seen_ts,
                    stationary_since_ts=state.still.stationary_since_ts,
                    matched=state.matched,
                )
            )
        return tuple(items)

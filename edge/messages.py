"""Frozen messages passed between edge stages.

source -> ``Frame`` -> detector -> ``Detections`` -> tracker -> ``Tracks`` -> zones -> ``ZoneHits``
-> rules -> ``EpisodeEvent`` -> evidence -> event document. Each stage takes and returns these and
nothing else, so each can be tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import Violation


def _check_shape(name: str, array: np.ndarray, shape: tuple[int | None, ...]) -> None:
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        pretty = tuple("N" if want is None else want for want in shape)
        raise ValueError(f"{name} must have shape {pretty}, got {array.shape}")


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded image and the time the camera captured it.

    Attributes:
        camera_id: Which camera produced it.
        ts: Frame timestamp in seconds since the Unix epoch; all timing in the edge uses it.
        image: BGR ``uint8`` array of shape (H, W, 3).
        index: Position in the source's sequence of delivered frames.
    """

    camera_id: str
    ts: float
    image: np.ndarray
    index: int

    def __post_init__(self) -> None:
        _check_shape("Frame.image", self.image, (None, None, 3))
        if self.image.dtype != np.uint8:
            raise ValueError(f"Frame.image must be uint8, got {self.image.dtype}")

    @property
    def resolution_wh(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes found in one frame, in that frame's pixel coordinates.

    Attributes:
        xyxy: float32 (N, 4) boxes, x1 y1 x2 y2.
        scores: float32 (N,) confidences in [0, 1].
        class_ids: int32 (N,) indices into ``class_names``.
        class_names: The model's vocabulary.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_shape("Detections.xyxy", self.xyxy, (None, 4))
        count = self.xyxy.shape[0]
        _check_shape("Detections.scores", self.scores, (count,))
        _check_shape("Detections.class_ids", self.class_ids, (count,))
        if count and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.class_names)):
            raise ValueError(f"Detections.class_ids must index the {len(self.class_names)} class names")

    @classmethod
    def empty(cls, class_names: tuple[str, ...]) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            class_ids=np.zeros(0, np.int32),
            class_names=class_names,
        )

    @classmethod
    def from_labels(
        cls,
        xyxy: list[tuple[float, float, float, float]],
        scores: list[float],
        labels: list[str],
        class_names: tuple[str, ...],
    ) -> Detections:
        """Build from per-box labels (detection logs, tests); unknown labels are an error."""
        index = {name: i for i, name in enumerate(class_names)}
        missing = sorted(set(labels) - index.keys())
        if missing:
            raise ValueError(f"labels not in the class names: {', '.join(missing)}")
        return cls(
            xyxy=np.asarray(xyxy, np.float32).reshape(-1, 4),
            scores=np.asarray(scores, np.float32),
            class_ids=np.asarray([index[label] for label in labels], np.int32),
            class_names=class_names,
        )

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @property
    def labels(self) -> list[str]:
        return [self.class_names[i] for i in self.class_ids]

    def select(self, mask: np.ndarray) -> Detections:
        """The detections where ``mask`` (bool array or index array) is set."""
        return Detections(self.xyxy[mask], self.scores[mask], self.class_ids[mask], self.class_names)


@dataclass(frozen=True)
class Track:
    """One tracked object at one frame.

    Attributes:
        track_id: Stable id; a stationary object lost and found again at the same place keeps it.
        label: Class name (the most frequent over the track's life).
        score: Smoothed confidence.
        xyxy: Current box in frame pixels.
        first_seen_ts: Frame time the object was first detected.
        last_seen_ts: Frame time of the last detection matched to it.
        stationary_since_ts: Frame time it stopped moving, or None while it moves.
        matched: Whether a detection was matched to it in this frame.
    """

    track_id: int
    label: str
    score: float
    xyxy: tuple[float, float, float, float]
    first_seen_ts: float
    last_seen_ts: float
    stationary_since_ts: float | None
    matched: bool

    @property
    def anchor_xy(self) -> tuple[float, float]:
        """Bottom-centre of the box: where the object touches the ground."""
        x1, _, x2, y2 = self.xyxy
        return (x1 + x2) / 2.0, y2

    @property
    def is_stationary(self) -> bool:
        return self.stationary_since_ts is not None

    def stationary_s(self, ts: float) -> float:
        return 0.0 if self.stationary_since_ts is None else max(0.0, ts - self.stationary_since_ts)


@dataclass(frozen=True)
class Tracks:
    """All live tracks at one frame.

    Attributes:
        ts: Frame timestamp.
        frame_wh: Size of the frame the boxes refer to.
        items: Live tracks, including ones not matched in this frame.
        inferred: Whether the detector ran on this frame (False: boxes are carried over).
    """

    ts: float
    frame_wh: tuple[int, int]
    items: tuple[Track, ...]
    inferred: bool

    def by_id(self) -> dict[int, Track]:
        return {track.track_id: track for track in self.items}


@dataclass(frozen=True)
class ZoneHits:
    """Which tracks stand in which zone, and which zones are in force, at one frame.

    Attributes:
        ts: Frame timestamp.
        active: Names of zones whose schedule is in force now.
        members: Zone name -> ids of tracks whose anchor lies inside (for every zone, active or not).
    """

    ts: float
    active: frozenset[str]
    members: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def inside(self, zone: str) -> tuple[int, ...]:
        return tuple(self.members.get(zone, ()))


@dataclass(frozen=True)
class EpisodeEvent:
    """A change in a violation episode, produced by a rule.

    Attributes:
        episode_id: 32 hex characters, shared by all events of one episode.
        type: start, update or end.
        violation: Which violation (selects the event code).
        zone: Zone name.
        episode_start_ts: Frame time the condition began (dwell counts from here).
        ts: Frame time of this event.
        objects: The tracks involved, as seen at ``ts``.
        end_reason: Why it ended (end events only).
        state_score: Bin rule: the estimator's score at ``ts``.
    """

    episode_id: str
    type: EventType
    violation: Violation
    zone: str
    episode_start_ts: float
    ts: float
    objects: tuple[Track, ...] = ()
    end_reason: EndReason | None = None
    state_score: float | None = None

    @property
    def dwell_s(self) -> float:
        return max(0.0, self.ts - self.episode_start_ts)

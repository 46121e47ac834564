"""Stationary state of a track: when a box has come to rest, and when it has left its place.

Timed by frame timestamps only; the tracker keeps one :class:`Stillness` per track.
"""

from __future__ import annotations

from collections import deque

from pydantic import BaseModel, ConfigDict, Field, model_validator

Box = tuple[float, float, float, float]


class StillnessConfig(BaseModel):
    """When a track counts as stationary; sizes are relative to the object's own box."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    stationary_after_s: float = Field(10.0, gt=0, title="Stationary after (s)")
    """How long a box must stay in place before the track is stationary."""
    window_s: float = Field(30.0, gt=0, title="Window (s)")
    """How far back boxes are kept for the robust (median) place of the object."""
    still_iou: float = Field(0.7, gt=0, le=1, title="Still IoU")
    """A moving track is in place when its box has this IoU with the place, or..."""
    still_shift: float = Field(0.08, ge=0, title="Still shift")
    """...when its centre moved at most this fraction of the box diagonal."""
    hold_iou: float = Field(0.5, gt=0, le=1, title="Hold IoU")
    """A stationary track stays in place above this IoU (looser than still_iou: hysteresis), or..."""
    hold_shift: float = Field(0.15, ge=0, title="Hold shift")
    """...within this centre shift, as a fraction of the box diagonal."""
    hold_containment: float = Field(0.8, gt=0, le=1, title="Hold containment")
    """A box lying this much inside the place is a partly hidden object, not a departure."""
    departure_s: float = Field(2.0, ge=0, title="Departure (s)")
    """How long boxes must be out of place before a stationary track moves again."""
    departure_min_hits: int = Field(2, ge=1, title="Departure hits")
    """Out-of-place detections needed, besides the time, to move again."""

    @model_validator(mode="after")
    def verify_hysteresis(self) -> StillnessConfig:
        if self.hold_iou > self.still_iou or self.hold_shift < self.still_shift:
            raise ValueError("hold tolerances must be at least as loose as the still ones")
        return self


def _iou1(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-9)


def _near(box: Box, place: Box, min_iou: float, max_shift: float) -> bool:
    """Whether ``box`` is at ``place``, by overlap or by a centre shift small for the box's size."""
    if _iou1(box, place) >= min_iou:
        return True
    dx = (box[0] + box[2] - place[0] - place[2]) / 2
    dy = (box[1] + box[3] - place[1] - place[3]) / 2
    diagonal = ((place[2] - place[0]) ** 2 + (place[3] - place[1]) ** 2) ** 0.5
    return (dx * dx + dy * dy) ** 0.5 <= max_shift * diagonal


class Stillness:
    """Moving/stationary state of one track, from its matched boxes.

    The place is the median of boxes sampled over ``window_s`` since the object came to rest,
    so jitter averages out. A run of in-place boxes lasting ``stationary_after_s`` makes the
    track stationary *since the start of the run*, so dwell is not under-counted. Only boxes out of
    place for ``departure_s`` (and ``departure_min_hits`` detections) make it move again; a box
    lying inside the place (a car half hidden by a bus) is not a departure.
    """

    _SAMPLES = 32  # samples kept per window: the median stays cheap at any frame rate

    def __init__(self, config: StillnessConfig, ts: float, box: Box) -> None:
        self.config = config
        self.stationary_since_ts: float | None = None
        self._restart([(ts, box)])

    @property
    def is_stationary(self) -> bool:
        return self.stationary_since_ts is not None

    def resume(self, ts: float, box: Box, stationary_since_ts: float) -> None:
        """Continue a remembered stationary object at ``box``, keeping its dwell clock."""
        self._restart([(ts, box)])
        self.since = self.stationary_since_ts = stationary_since_ts

    def observe(self, ts: float, box: Box) -> None:
        """Take the matched box at frame time ``ts``."""
        cfg = self.config
        if self.is_stationary:
            in_place = _near(box, self.reference, cfg.hold_iou, cfg.hold_shift)
            hidden = not in_place and self._containment(box) >= cfg.hold_containment
        else:
            in_place, hidden = _near(box, self.reference, cfg.still_iou, cfg.still_shift), False
        if in_place or hidden:
            self._pending.clear()
            if in_place:
                self._add(ts, box)
            if not self.is_stationary and ts - self.since >= cfg.stationary_after_s:
                self.stationary_since_ts = self.since
            return
        self._pending.append((ts, box))
        if len(self._pending) >= cfg.departure_min_hits and ts - self._pending[0][0] >= cfg.departure_s:
            self._depart()

    def _containment(self, box: Box) -> float:
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
        iw = min(box[2], self.reference[2]) - max(box[0], self.reference[0])
        ih = min(box[3], self.reference[3]) - max(box[1], self.reference[1])
        return max(iw, 0.0) * max(ih, 0.0) / area

    def _depart(self) -> None:
        # The new run starts where the latest out-of-place boxes agree, so a car that stopped
        # during the departure period gets its stop time, not the time we noticed it.
        last_ts, last = self._pending[-1]
        run = [(last_ts, last)]
        for ts, box in reversed(self._pending[:-1]):
            if not _near(box, last, self.config.still_iou, self.config.still_shift):
                break
            run.insert(0, (ts, box))
        self.stationary_since_ts = None
        self._restart(run)

    def _restart(self, run: list[tuple[float, Box]]) -> None:
        self.since = run[0][0]
        self.reference = run[-1][1]
        self._samples: deque[tuple[float, Box]] = deque()
        self._pending: list[tuple[float, Box]] = []
        for ts, box in run:
            self._add(ts, box)

    def _add(self, ts: float, box: Box) -> None:
        window = self.config.window_s
        if self._samples and ts - self._samples[-1][0] < window / self._SAMPLES:
            return
        self._samples.append((ts, box))
        while len(self._samples) > 1 and self._samples[0][0] < ts - window:
            self._samples.popleft()
        if len(self._samples) == 1:
            self.reference = box
        else:
            # A per-coordinate median by sorting: for a few dozen samples it beats numpy's call overhead.
            mid = len(self._samples) // 2
            columns = [sorted(column) for column in zip(*(b for _, b in self._samples), strict=True)]
            if len(self._samples) % 2:
                self.reference = tuple(c[mid] for c in columns)  # type: ignore[assignment]
            else:
                self.reference = tuple((c[mid - 1] + c[mid]) / 2 for c in columns)  # type: ignore[assignment]

"""Bin overflow: the image of a bin site judged overflowing for the zone's dwell.

The rule crops the site's bounding rectangle, masks out people and vehicles standing in front of
it and asks a ``BinStateEstimator`` (``curbwatch.edge.bins``) for a verdict. It keeps one state
decision per site: an episode starts once "overflowing" has held for ``min_dwell_s`` and ends when
"clean" has held for ``clear_dwell_s`` (``CLEARED``) or when the zone's schedule ends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from curbwatch.edge.bins import BinStateEstimator, anchor_path_options, make_estimator
from curbwatch.edge.messages import EpisodeEvent, Frame, Tracks, ZoneHits
from curbwatch.edge.rules.base import EpisodeBook, FrameClock, IdFactory, RuleError, new_episode_id
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.schema.events import EndReason
from curbwatch.schema.zones import BinSiteZone, Violation

logger = logging.getLogger(__name__)

_SITE = "site"  # the one episode key of a bin site


class BinRuleConfig(BaseModel):
    """How the bin rule hides passers-by from the estimator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    occluder_classes: tuple[str, ...] = Field(
        default=("person", "bicycle", "car", "motorcycle", "bus", "truck"),
        title="Occluder classes",
        description="Tracks of these classes are cut out of the site before it is judged.",
    )
    occluder_pad: float = Field(
        default=0.1,
        ge=0,
        le=1,
        title="Occluder padding",
        description="Occluder boxes grow by this share of their size each side (loose boxes, shadows).",
    )
    min_visible_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="Minimum visible fraction",
        description="Frames showing less of the site than this leave the decision as it was.",
    )
    estimator: str = Field(
        default="reference_change",
        title="State estimator",
        description="Registered bin-state estimator: reference_change (model-free) or a learned one.",
    )
    estimator_options: dict[str, Any] = Field(
        default_factory=dict,
        title="Estimator options",
        description="Settings of the chosen estimator (for reference_change: ReferenceChangeConfig fields).",
    )

    @field_validator("estimator_options")
    @classmethod
    def anchor_paths(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Like every path in edge.yaml, an estimator's files (a classifier) are relative to its folder.
        base_dir = (info.context or {}).get("base_dir")
        name = info.data.get("estimator")
        if base_dir is None or name is None:
            return options
        return anchor_path_options(name, options, Path(base_dir))

    @model_validator(mode="after")
    def verify_estimator(self) -> BinRuleConfig:
        # Building one throw-away estimator validates the name and its options at load time.
        make_estimator(self.estimator, **self.estimator_options)
        return self


class PolygonSource(Protocol):
    """What ``make_bin_rule`` needs from the camera's zone set."""

    def polygon_px(self, name: str) -> np.ndarray: ...


class BinRule:
    """Flags a bin site whose estimator has said "overflowing" for the zone's minimum dwell.

    The decision only changes on frames where the estimator gives one: frames with the site mostly
    hidden by people or vehicles, and the estimator's learning period, keep the previous decision.
    The episode's start time is when the overflowing decision began; while it lasts an update is
    sent every ``update_interval_s`` with the latest score. Clean must hold for ``clear_dwell_s``
    before the episode ends, so a bag briefly hidden or a noisy frame does not split it. Outside
    the schedule the estimator still watches (its reference keeps adapting) but no episode runs,
    and the dwell counts again from when the schedule comes into force.

    Args:
        zone: The bin site: name, dwell, clear dwell.
        polygon_px: (N, 2) site polygon in this camera's frame pixels.
        estimator: Judges the cropped site; one instance per site.
        rules_config: Shared rule timing (update interval).
        config: Occluder handling.
        id_factory: Makes episode ids.

    Example:
        >>> rule = BinRule(zone, polygon, make_estimator("reference_change"), RulesConfig())  # doctest: +SKIP
        >>> events = rule.update(frame, tracks, hits)  # doctest: +SKIP
    """

    def __init__(
        self,
        zone: BinSiteZone,
        polygon_px: np.ndarray,
        estimator: BinStateEstimator,
        rules_config: RulesConfig,
        config: BinRuleConfig | None = None,
        id_factory: IdFactory = new_episode_id,
    ) -> None:
        self.zone = zone.name
        self._zone = zone
        self._estimator = estimator
        self._config = config or BinRuleConfig()
        self._occluders = frozenset(self._config.occluder_classes)
        polygon = np.asarray(polygon_px, np.float64).reshape(-1, 2)
        if polygon.shape[0] < 3:
            raise RuleError(
                f"zone {zone.name!r}: bin site polygon needs 3 or more points, got {polygon.shape[0]}"
            )
        self._polygon = polygon
        # The book ends an episode once the condition is absent for end_grace_s: that is the clear dwell.
        self._book = EpisodeBook(
            zone.name,
            min_dwell_s=zone.min_dwell_s,
            update_interval_s=rules_config.update_interval_s,
            end_grace_s=zone.clear_dwell_s,
            id_factory=id_factory,
        )
        self._clock = FrameClock(zone.name)
        self._overflowing = False
        self._since_ts: float | None = None
        self._score: float | None = None
        self._geometry: tuple[tuple[int, int], tuple[tuple[int, int, int, int], np.ndarray] | None] | None = (
            None
        )

    @property
    def overflowing(self) -> bool:
        """The current state decision."""
        return self._overflowing

    def update(self, frame: Frame | None, tracks: Tracks, hits: ZoneHits) -> list[EpisodeEvent]:
        """Take one frame; return the start, update and end events it causes (none without pixels)."""
        ts = self._clock.advance(tracks, hits)
        if frame is None:
            return []
        self._observe(frame, tracks, ts)
        if self.zone not in hits.active:
            self._since_ts = None
            return self._book.end_all(ts, EndReason.SCHEDULE_ENDED)
        if not self._overflowing:
            return self._book.expire(ts, (), EndReason.CLEARED)
        if self._since_ts is None:
            self._since_ts = ts
        event = self._book.observe(
            _SITE,
            violation=Violation.BIN_OVERFLOW,
            since_ts=self._since_ts,
            ts=ts,
            objects=(),
            state_score=self._score,
        )
        return [] if event is None else [event]

    def close(self, ts: float, reason: EndReason = EndReason.STREAM_ENDED) -> list[EpisodeEvent]:
        """End the open episode, if any (stream over, or zones replaced)."""
        return self._book.end_all(self._clock.closing_ts(ts), reason)

    def _observe(self, frame: Frame, tracks: Tracks, ts: float) -> None:
        site = self._site(frame)
        if site is None:
            return
        crop, polygon_mask, (x1, y1) = site
        mask = polygon_mask.copy()
        for track in tracks.items:
            if track.label in self._occluders:
                self._cut(mask, track.xyxy, x1, y1)
        if mask.sum() < self._config.min_visible_fraction * polygon_mask.sum():
            return
        observation = self._estimator.observe(crop, mask, ts)
        if observation.overflowing is None:
            return
        self._score = observation.score
        if observation.overflowing != self._overflowing:
            logger.info(
                "zone %s: bin site now %s (score %s)",
                self.zone,
                "overflowing" if observation.overflowing else "clean",
                observation.score,
            )
            self._overflowing = observation.overflowing
            self._since_ts = ts if observation.overflowing else None

    def _site(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
        if self._geometry is None or self._geometry[0] != frame.resolution_wh:
            self._geometry = (frame.resolution_wh, self._site_geometry(*frame.resolution_wh))
        geometry = self._geometry[1]
        if geometry is None:
            return None
        (x1, y1, x2, y2), mask = geometry
        return frame.image[y1:y2, x1:x2], mask, (x1, y1)

    def _site_geometry(self, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
        x1 = int(np.clip(np.floor(self._polygon[:, 0].min()), 0, width))
        y1 = int(np.clip(np.floor(self._polygon[:, 1].min()), 0, height))
        x2 = int(np.clip(np.ceil(self._polygon[:, 0].max()) + 1, 0, width))
        y2 = int(np.clip(np.ceil(self._polygon[:, 1].max()) + 1, 0, height))
        if x2 - x1 < 2 or y2 - y1 < 2:
            logger.warning("zone %s: bin site lies outside the %dx%d frame", self.zone, width, height)
            return None
        mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
        cv2.fillPoly(mask, [np.round(self._polygon - (x1, y1)).astype(np.int32)], 1)
        return (x1, y1, x2, y2), mask.astype(bool)

    def _cut(self, mask: np.ndarray, xyxy: tuple[float, float, float, float], x0: int, y0: int) -> None:
        bx1, by1, bx2, by2 = xyxy
        pad_x, pad_y = (bx2 - bx1) * self._config.occluder_pad, (by2 - by1) * self._config.occluder_pad
        h, w = mask.shape
        cx1, cy1 = max(0, int(np.floor(bx1 - pad_x)) - x0), max(0, int(np.floor(by1 - pad_y)) - y0)
        cx2, cy2 = min(w, int(np.ceil(bx2 + pad_x)) - x0), min(h, int(np.ceil(by2 + pad_y)) - y0)
        if cx2 > cx1 and cy2 > cy1:
            mask[cy1:cy2, cx1:cx2] = False


def make_bin_rule(
    zone: BinSiteZone,
    zone_set: PolygonSource,
    rules_config: RulesConfig,
    config: BinRuleConfig | None = None,
) -> BinRule:
    """Build the rule of one bin site with a fresh estimator of the configured kind.

    The engine takes a two-argument factory: bind the rest with ``functools.partial``.
    """
    config = config or BinRuleConfig()
    estimator = make_estimator(config.estimator, **config.estimator_options)
    return BinRule(zone, zone_set.polygon_px(zone.name), estimator, rules_config, config)

"""Unlicensed vending: a staffed stall standing in a no-vending zone while the zone is in force."""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from curbwatch.edge.messages import EpisodeEvent, Frame, Track, Tracks, ZoneHits
from curbwatch.edge.rules.base import EpisodeBook, FrameClock, IdFactory, new_episode_id
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.schema.events import EndReason
from curbwatch.schema.zones import NoVendingZone, Violation

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


def box_diagonal(box: Box) -> float:
    return math.hypot(box[2] - box[0], box[3] - box[1])


def box_gap(a: Box, b: Box) -> float:
    """Shortest distance between two boxes; 0 when they touch or overlap."""
    dx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    dy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return math.hypot(dx, dy)


def union_box(boxes: Iterable[Box]) -> Box:
    x1s, y1s, x2s, y2s = zip(*boxes, strict=True)
    return min(x1s), min(y1s), max(x2s), max(y2s)


def overlap_of_smaller(a: Box, b: Box) -> float:
    """Intersection area as a share of the smaller box's area (1 when one box holds the other)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return 1.0 if smaller <= 0 else width * height / smaller


def cluster_boxes(boxes: Sequence[Box], link_diagonals: float) -> list[list[int]]:
    """Group boxes that lie within ``link_diagonals`` mean diagonals of each other (single linkage).

    Returns lists of indices into ``boxes``, each sorted, ordered by their first index.
    """
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(boxes)), 2):
        reach = link_diagonals * (box_diagonal(boxes[i]) + box_diagonal(boxes[j])) / 2.0
        if box_gap(boxes[i], boxes[j]) <= reach:
            parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda group: group[0])


class PresenceWindow:
    """Time-weighted share of a recent window during which something was present.

    Samples arrive at irregular frame times, so each interval between two samples is weighted by
    its length (trapezoid rule) rather than counting frames.

    Args:
        window_s: How far back the share looks.
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, bool]] = deque()

    def add(self, ts: float, present: bool) -> None:
        self._samples.append((ts, present))
        while self._samples and self._samples[0][0] < ts - self._window_s:
            self._samples.popleft()

    def share(self) -> float:
        """The present share, in [0, 1]; 0 with no samples."""
        if not self._samples:
            return 0.0
        total = covered = 0.0
        for (t0, p0), (t1, p1) in itertools.pairwise(self._samples):
            total += t1 - t0
            covered += (t1 - t0) * (int(p0) + int(p1)) / 2.0
        if total <= 0:
            return sum(present for _, present in self._samples) / len(self._samples)
        return covered / total


@dataclass
class _Stall:
    """A stall followed over time by where it stands, whatever its objects' track ids."""

    key: int
    box: Box
    last_seen_ts: float
    presence: PresenceWindow
    since_ts: float | None = None
    last_true_ts: float = field(default=-math.inf)
    staffed_since_ts: float | None = None  # first frame a vendor was near, since the stall last lapsed


class VendingRule:
    """Flags staffed stalls in a no-vending zone, one episode per stall.

    Each frame, stationary vending objects (umbrella, table, chair, ...) whose anchor is in the
    zone are grouped into stalls by proximity (``stall_link_diagonals``). A stall is followed over
    time by location: a group whose box overlaps a known stall's box by ``stall_match_min_overlap``
    of the smaller box is that stall, so umbrella and table id churn never opens a second episode.
    A stall is vending when a person (``person_classes``) has stood within ``vendor_radius`` stall
    diagonals of it for ``vending_min_people_share`` of the last ``vending_people_window_s`` —
    vendors walk about, so they need not be seen every frame. A stall with any object in an
    active permitted-vending zone is exempt. Only stall objects detected on the latest inferred
    frame count, not ones the tracker merely carries. The episode starts when vending has held for
    ``min_dwell_s`` and ends after ``end_grace_s`` without it, or when the schedule ends.

    Args:
        zone: The no-vending zone: name, dwell, classes, vendor radius.
        permitted: Names of the camera's permitted-vending zones; their schedule and membership come
            from each frame's ``ZoneHits``.
        config: Shared rule timing and stall grouping.
        id_factory: Makes episode ids.
    """

    def __init__(
        self,
        zone: NoVendingZone,
        permitted: Sequence[str],
        config: RulesConfig,
        id_factory: IdFactory = new_episode_id,
    ) -> None:
        self.zone = zone.name
        self._model = zone
        self._permitted = tuple(permitted)
        self._config = config
        self._book = EpisodeBook(
            zone.name,
            min_dwell_s=zone.min_dwell_s,
            update_interval_s=config.update_interval_s,
            end_grace_s=config.end_grace_s,
            id_factory=id_factory,
        )
        self._clock = FrameClock(zone.name)
        self._stalls: dict[int, _Stall] = {}
        self._next_key = itertools.count()
        self._active_since_ts: float | None = None

    def update(self, frame: Frame | None, tracks: Tracks, hits: ZoneHits) -> list[EpisodeEvent]:
        """Take one frame; return the start, update and end events it causes."""
        ts = self._clock.advance(tracks, hits)
        if self.zone not in hits.active:
            events = self._book.end_all(ts, EndReason.SCHEDULE_ENDED)
            self._stalls.clear()
            self._active_since_ts = None
            return events
        if self._active_since_ts is None:
            self._active_since_ts = ts
        vending: dict[int, tuple[Track, ...]] = {}
        for stall, objects in self._match_stalls(ts, self._stall_groups(tracks, hits)):
            vendors = self._vendors_near(stall.box, tracks)
            stall.presence.add(ts, bool(vendors))
            if vendors and stall.staffed_since_ts is None:
                # The vendor may have been by the stall before it was recognised as standing still.
                stall.staffed_since_ts = min(vendor.first_seen_ts for vendor in vendors)
            elif not vendors and not self._is_staffed(stall):
                stall.staffed_since_ts = None  # a passer-by earlier on does not date the vending back
            if not self._is_permitted(objects, hits) and self._is_staffed(stall):
                if stall.since_ts is None:
                    stall.since_ts = self._vending_since(stall, objects, ts)
                stall.last_true_ts = ts
                vending[stall.key] = objects + vendors
        self._forget_absent(ts, vending.keys())
        events = self._book.expire(ts, vending.keys())
        for key, objects in vending.items():
            since = self._stalls[key].since_ts
            assert since is not None  # set above for every vending stall
            event = self._book.observe(
                key,
                violation=Violation.UNLICENSED_VENDING,
                since_ts=since,
                ts=ts,
                objects=objects,
                held_ts=max(track.last_seen_ts for track in objects),
            )
            if event is not None:
                events.append(event)
        return events

    def close(self, ts: float, reason: EndReason = EndReason.STREAM_ENDED) -> list[EpisodeEvent]:
        """End every open episode (stream over, or zones replaced)."""
        events = self._book.end_all(self._clock.closing_ts(ts), reason)
        self._stalls.clear()
        return events

    def _stall_groups(self, tracks: Tracks, hits: ZoneHits) -> list[tuple[Track, ...]]:
        inside = set(hits.inside(self.zone))
        classes = set(self._model.vending_classes)
        objects = [
            track
            for track in tracks.items
            if track.label in classes
            and track.is_stationary
            and track.track_id in inside
            # A packed-up stall's objects are carried by the tracker for a while; they are gone.
            and self._clock.is_seen(track)
        ]
        groups = cluster_boxes([track.xyxy for track in objects], self._config.stall_link_diagonals)
        return [tuple(objects[i] for i in group) for group in groups]

    def _match_stalls(
        self, ts: float, groups: list[tuple[Track, ...]]
    ) -> list[tuple[_Stall, tuple[Track, ...]]]:
        """Attach each group to the known stall it overlaps most, or to a new stall."""
        matched: dict[int, list[Track]] = {}
        for group in groups:
            box = union_box(track.xyxy for track in group)
            best_overlap, best_key = max(
                ((overlap_of_smaller(box, stall.box), stall.key) for stall in self._stalls.values()),
                default=(0.0, -1),
            )
            if best_overlap >= self._config.stall_match_min_overlap:
                key = best_key
            else:
                key = next(self._next_key)
                self._stalls[key] = _Stall(key, box, ts, PresenceWindow(self._config.vending_people_window_s))
                logger.debug("zone %s: new stall %d at %s", self.zone, key, box)
            matched.setdefault(key, []).extend(group)
        result = []
        for key, objects in matched.items():
            stall = self._stalls[key]
            stall.box = union_box(track.xyxy for track in objects)
            stall.last_seen_ts = ts
            result.append((stall, tuple(objects)))
        return result

    def _vending_since(self, stall: _Stall, objects: tuple[Track, ...], ts: float) -> float:
        """When vending began: the stall stood still, a vendor was by it, and the zone was in force.

        The tracker dates stillness back to when the objects stopped, so the dwell is not
        shortened by the time it takes to recognise a stall as stationary.
        """
        stopped = min(
            (t.stationary_since_ts for t in objects if t.stationary_since_ts is not None), default=ts
        )
        starts = [stopped, stall.staffed_since_ts or ts, self._active_since_ts or ts]
        return min(ts, max(starts))

    def _vendors_near(self, stall_box: Box, tracks: Tracks) -> tuple[Track, ...]:
        reach = self._model.vendor_radius * box_diagonal(stall_box)
        recent_ts = tracks.ts - self._config.vending_person_recent_s
        people = set(self._model.person_classes)
        return tuple(
            track
            for track in tracks.items
            if track.label in people
            and track.last_seen_ts >= recent_ts
            and box_gap(track.xyxy, stall_box) <= reach
        )

    def _is_staffed(self, stall: _Stall) -> bool:
        return stall.presence.share() >= self._config.vending_min_people_share

    def _is_permitted(self, objects: tuple[Track, ...], hits: ZoneHits) -> bool:
        """Whether any of the stall's objects stands in a permitted area that is open now.

        Any rather than all: a licensed stall often straddles the painted edge of its pitch.
        """
        ids = {track.track_id for track in objects}
        return any(name in hits.active and ids.intersection(hits.inside(name)) for name in self._permitted)

    def _forget_absent(self, ts: float, vending: Iterable[int]) -> None:
        """Reset vending time and drop stalls once absent for the end grace, like the episodes."""
        grace = self._config.end_grace_s
        vending = set(vending)
        for key in list(self._stalls):
            stall = self._stalls[key]
            if key not in vending and stall.since_ts is not None and ts - stall.last_true_ts >= grace:
                stall.since_ts = None
                stall.staffed_since_ts = None
            if stall.last_seen_ts < ts and ts - stall.last_seen_ts >= grace:
                del self._stalls[key]

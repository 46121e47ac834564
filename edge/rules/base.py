"""What every violation rule shares: the rule protocol, frame-time checks and episode bookkeeping.

An *episode* is one violation from the moment it is flagged to its end. It produces exactly one
``start``, an ``update`` every ``update_interval_s`` while the condition holds, and exactly one
``end``. ``EpisodeBook`` owns that life cycle so each rule only has to say, frame by frame, which
of its keys (a parked car's track id, a stall's id) satisfy the condition and since when.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from curbwatch.edge.messages import EpisodeEvent, Frame, Track, Tracks, ZoneHits
from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import Violation

logger = logging.getLogger(__name__)

IdFactory = Callable[[], str]
"""Makes episode ids: 32 lower-case hex characters."""

# Frame timestamps are floats that went through JSON and arithmetic; a microsecond of slack
# keeps equal times equal.
TS_TOLERANCE_S = 1e-6


class RuleError(ValueError):
    """A rule was fed inconsistent input: time running backwards, or tracks and hits of different frames."""


def new_episode_id() -> str:
    """A fresh random episode id (uuid4, hex)."""
    return uuid.uuid4().hex


@runtime_checkable
class ZoneRule(Protocol):
    """One rule watching one zone.

    Attributes:
        zone: Name of the zone the rule watches.
    """

    zone: str

    def update(self, frame: Frame | None, tracks: Tracks, hits: ZoneHits) -> list[EpisodeEvent]:
        """Take one frame's tracks and zone hits; return the episode events they cause.

        ``frame`` is None in replay, where there are no pixels.
        """
        ...

    def close(self, ts: float, reason: EndReason = EndReason.STREAM_ENDED) -> list[EpisodeEvent]:
        """End every open episode at ``ts`` (stream over, or zones replaced)."""
        ...


class FrameClock:
    """Checks that a rule sees frames in time order and that tracks and hits belong to one frame.

    It also remembers the latest frame the detector ran on, which is what ``is_seen`` judges by.

    Args:
        zone: Zone name, for error messages.
    """

    def __init__(self, zone: str) -> None:
        self._zone = zone
        self._last_ts: float | None = None
        self._last_inferred_ts: float | None = None

    @property
    def last_ts(self) -> float | None:
        return self._last_ts

    def is_seen(self, track: Track) -> bool:
        """Whether ``track`` was detected on the latest frame the detector ran on.

        The tracker carries an unmatched track for up to ``stationary_max_age_s`` (and revives it
        from its memory) so a parked car keeps its id and dwell through an occlusion; a carried
        track is no evidence that the object is still there, so rules count only seen tracks as
        present and the end grace runs while it is carried. Frames the detector skipped (motion
        gating) say nothing about absence: a track seen on the last inferred frame stays seen.
        """
        return (
            self._last_inferred_ts is not None
            and track.last_seen_ts >= self._last_inferred_ts - TS_TOLERANCE_S
        )

    def advance(self, tracks: Tracks, hits: ZoneHits) -> float:
        """The frame time of ``tracks``/``hits``; raises ``RuleError`` when it is inconsistent."""
        if abs(tracks.ts - hits.ts) > TS_TOLERANCE_S:
            raise RuleError(f"zone {self._zone!r}: tracks at ts={tracks.ts} but zone hits at ts={hits.ts}")
        if self._last_ts is not None and hits.ts < self._last_ts - TS_TOLERANCE_S:
            raise RuleError(
                f"zone {self._zone!r}: frame time went backwards from {self._last_ts} to {hits.ts}"
            )
        self._last_ts = hits.ts if self._last_ts is None else max(self._last_ts, hits.ts)
        if tracks.inferred:
            self._last_inferred_ts = hits.ts
        elif self._last_inferred_ts is None and tracks.items:
            # A rule made mid-stream (zones replaced) whose first frame the detector skipped: the
            # latest detection among the live tracks stands for the inferred frame it did not see.
            self._last_inferred_ts = max(track.last_seen_ts for track in tracks.items)
        return hits.ts

    def closing_ts(self, ts: float) -> float:
        """``ts`` for ``close``, never before the last frame: shutdown must not raise."""
        if self._last_ts is not None and ts < self._last_ts:
            logger.warning(
                "zone %s: close at ts=%s before last frame ts=%s; using the latter",
                self._zone,
                ts,
                self._last_ts,
            )
            return self._last_ts
        return ts


@dataclass
class _OpenEpisode:
    episode_id: str
    violation: Violation
    start_ts: float
    last_true_ts: float  # last time the condition was actually observed: stamped on a LEFT end
    last_present_ts: float  # last frame the rule reported the key (seen): the end grace counts from here
    last_emit_ts: float
    objects: tuple[Track, ...]
    state_score: float | None


class EpisodeBook:
    """Open episodes of one zone, each under a key that identifies the violating thing.

    The rule calls ``expire`` and then ``observe`` for every key whose condition holds in the
    frame. An unknown key starts an episode once the condition has held for ``min_dwell_s``
    (counted from the ``since_ts`` the rule gives); a known key keeps its episode alive and emits
    updates. A key not reported for ``end_grace_s`` of frame time ends with ``LEFT``, stamped with
    the time the condition last held so the reported dwell is what really happened. Rules report a
    key only on frames where its object is seen (``FrameClock.is_seen``), never for a track the
    tracker merely carries, so the grace starts when the object disappears, not when the tracker
    gives up on it. Absence is only judged on frames that arrive: a stream that delivers nothing
    for a while does not end episodes.

    Args:
        zone: Zone name stamped on the events.
        min_dwell_s: How long the condition must hold before the episode starts.
        update_interval_s: Time between an episode's events while it lasts.
        end_grace_s: How long the condition must be absent before the episode ends.
        id_factory: Makes episode ids; inject a counter in tests.

    Example:
        >>> book = EpisodeBook("kerb", min_dwell_s=60, update_interval_s=60, end_grace_s=30)
        >>> book.observe(7, violation=Violation.ILLEGAL_PARKING, since_ts=0.0, ts=30.0, objects=()) is None
        True
        >>> book.observe(7, violation=Violation.ILLEGAL_PARKING, since_ts=0.0, ts=60.0, objects=()).type
        <EventType.START: 'start'>
    """

    def __init__(
        self,
        zone: str,
        *,
        min_dwell_s: float,
        update_interval_s: float,
        end_grace_s: float,
        id_factory: IdFactory = new_episode_id,
    ) -> None:
        self.zone = zone
        self._min_dwell_s = min_dwell_s
        self._update_interval_s = update_interval_s
        self._end_grace_s = end_grace_s
        self._id_factory = id_factory
        self._open: dict[Hashable, _OpenEpisode] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._open

    def __len__(self) -> int:
        return len(self._open)

    def keys(self) -> list[Hashable]:
        return list(self._open)

    def observe(
        self,
        key: Hashable,
        *,
        violation: Violation,
        since_ts: float,
        ts: float,
        objects: tuple[Track, ...],
        state_score: float | None = None,
        held_ts: float | None = None,
    ) -> EpisodeEvent | None:
        """Record that ``key``'s condition holds at ``ts`` and has held since ``since_ts``.

        ``held_ts`` is when the condition was last actually observed, if earlier than ``ts``
        (a track carried through frames without a detection); an end is stamped with it.
        Returns the start or update event this causes, if any. An open episode keeps its
        violation and start time; only its objects and score follow the latest frame.
        """
        episode = self._open.get(key)
        if episode is None:
            if ts - since_ts < self._min_dwell_s - TS_TOLERANCE_S:
                return None
            episode = _OpenEpisode(self._id_factory(), violation, since_ts, ts, ts, ts, objects, state_score)
            self._open[key] = episode
            logger.info(
                "zone %s: %s episode %s starts (condition since %.1f, now %.1f)",
                self.zone,
                violation,
                episode.episode_id,
                since_ts,
                ts,
            )
            return self._event(episode, EventType.START, ts)
        episode.last_true_ts = ts if held_ts is None else min(ts, max(held_ts, episode.last_true_ts))
        episode.last_present_ts = ts
        episode.objects = objects
        episode.state_score = state_score
        if ts - episode.last_emit_ts < self._update_interval_s - TS_TOLERANCE_S:
            return None
        if held_ts is not None and held_ts < ts - TS_TOLERANCE_S:
            return None  # an update shows the violation still there: wait for a frame that sees it
        episode.last_emit_ts = ts
        return self._event(episode, EventType.UPDATE, ts)

    def expire(
        self, ts: float, present: Collection[Hashable], reason: EndReason = EndReason.LEFT
    ) -> list[EpisodeEvent]:
        """End episodes whose key is not in ``present`` and has been absent for ``end_grace_s``."""
        gone = [
            key
            for key, episode in self._open.items()
            if key not in present and ts - episode.last_present_ts >= self._end_grace_s - TS_TOLERANCE_S
        ]
        return [self._end(key, reason, self._open[key].last_true_ts) for key in gone]

    def end_all(self, ts: float, reason: EndReason) -> list[EpisodeEvent]:
        """End every open episode at ``ts`` (schedule over, stream over)."""
        return [self._end(key, reason, ts) for key in list(self._open)]

    def _end(self, key: Hashable, reason: EndReason, ts: float) -> EpisodeEvent:
        episode = self._open.pop(key)
        # An end never precedes the episode's last event, whatever time the caller reports.
        ts = max(ts, episode.last_emit_ts)
        logger.info(
            "zone %s: episode %s ends (%s) after %.1f s",
            self.zone,
            episode.episode_id,
            reason,
            ts - episode.start_ts,
        )
        return self._event(episode, EventType.END, ts, reason)

    def _event(
        self, episode: _OpenEpisode, kind: EventType, ts: float, reason: EndReason | None = None
    ) -> EpisodeEvent:
        return EpisodeEvent(
            episode_id=episode.episode_id,
            type=kind,
            violation=episode.violation,
            zone=self.zone,
            episode_start_ts=episode.start_ts,
            ts=ts,
            objects=episode.objects,
            end_reason=reason,
            state_score=episode.state_score,
        )

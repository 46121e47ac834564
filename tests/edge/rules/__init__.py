"""Tests of the violation rules, with small helpers that build frames by hand."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from curbwatch.edge.messages import EpisodeEvent, Track, Tracks, ZoneHits
from curbwatch.edge.rules.base import ZoneRule
from curbwatch.schema.events import EventType

FRAME_WH = (1280, 720)


def make_track(
    track_id: int,
    label: str = "car",
    xyxy: tuple[float, float, float, float] = (100.0, 100.0, 200.0, 160.0),
    *,
    ts: float,
    stationary_since: float | None = None,
    last_seen: float | None = None,
) -> Track:
    """A track as the tracker would report it at ``ts`` (matched unless ``last_seen`` is older)."""
    last_seen = ts if last_seen is None else last_seen
    return Track(
        track_id=track_id,
        label=label,
        score=0.8,
        xyxy=xyxy,
        first_seen_ts=min(ts, last_seen),
        last_seen_ts=last_seen,
        stationary_since_ts=stationary_since,
        matched=last_seen >= ts,
    )


@dataclass(frozen=True)
class Scene:
    """What the camera sees at one moment: tracks, which zone each stands in, which zones are in force."""

    tracks: Sequence[Track] = ()
    inside: Mapping[str, Iterable[int]] = field(default_factory=dict)
    active: Iterable[str] = ()


def frame_at(ts: float, scene: Scene, inferred: bool = True) -> tuple[Tracks, ZoneHits]:
    """The rule input of one frame; ``inferred=False`` is a frame the detector skipped."""
    tracks = Tracks(ts=ts, frame_wh=FRAME_WH, items=tuple(scene.tracks), inferred=inferred)
    hits = ZoneHits(
        ts=ts,
        active=frozenset(scene.active),
        members={name: tuple(ids) for name, ids in scene.inside.items()},
    )
    return tracks, hits


def frange(start: float, stop: float, step: float) -> list[float]:
    """Frame times from ``start`` up to and including ``stop``."""
    count = math.floor((stop - start) / step + 1e-9)
    return [start + i * step for i in range(count + 1)]


def run_rule(
    rule: ZoneRule, times: Iterable[float], scene_at: Callable[[float], Scene], close_ts: float | None = None
) -> list[EpisodeEvent]:
    """Feed one frame per time to ``rule``; close it at ``close_ts`` when given."""
    events: list[EpisodeEvent] = []
    for ts in times:
        events.extend(rule.update(None, *frame_at(ts, scene_at(ts))))
    if close_ts is not None:
        events.extend(rule.close(close_ts))
    return events


def counter_ids() -> Callable[[], str]:
    """Deterministic episode ids: 000...1, 000...2, ..."""
    counter = itertools.count(1)
    return lambda: f"{next(counter):032x}"


def of_type(events: Iterable[EpisodeEvent], kind: EventType) -> list[EpisodeEvent]:
    return [event for event in events if event.type == kind]


def assert_lifecycles(events: Sequence[EpisodeEvent]) -> None:
    """Each episode: one start first, updates, exactly one end last; times never run backwards."""
    by_episode: dict[str, list[EpisodeEvent]] = {}
    for event in events:
        by_episode.setdefault(event.episode_id, []).append(event)
    for episode_id, episode in by_episode.items():
        kinds = [event.type for event in episode]
        assert kinds[0] == EventType.START, f"{episode_id}: {kinds}"
        assert kinds[-1] == EventType.END, f"{episode_id}: {kinds}"
        assert kinds.count(EventType.START) == 1 and kinds.count(EventType.END) == 1, f"{episode_id}: {kinds}"
        assert episode[-1].end_reason is not None
        assert all(event.end_reason is None for event in episode[:-1])
        times = [event.ts for event in episode]
        assert times == sorted(times), f"{episode_id}: {times}"
        assert len({(e.violation, e.zone, e.episode_start_ts) for e in episode}) == 1
        assert episode[0].episode_start_ts <= episode[0].ts

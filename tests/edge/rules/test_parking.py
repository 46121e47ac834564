"""ParkingRule: parked vehicles flagged after the dwell, never passing or briefly stopping ones."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curbwatch.edge.rules import ParkingRule, RuleError, RulesConfig
from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import NoParkingZone, Violation
from tests.edge.rules import (
    Scene,
    assert_lifecycles,
    counter_ids,
    frame_at,
    frange,
    make_track,
    of_type,
    run_rule,
)

ZONE = "kerb"
MIN_DWELL_S = 180.0
CONFIG = RulesConfig(update_interval_s=60.0, end_grace_s=30.0)


def make_rule(config: RulesConfig = CONFIG) -> ParkingRule:
    zone = NoParkingZone(
        kind="no_parking", name=ZONE, polygon=[(0, 0), (640, 0), (640, 360)], min_dwell_s=MIN_DWELL_S
    )
    return ParkingRule(zone, config, id_factory=counter_ids())


def always(ts: float) -> bool:
    return True


def vehicle(
    track_id: int = 1,
    label: str = "car",
    *,
    arrive: float = 10.0,
    stop: float | None = 20.0,
    move_again: float | None = None,
    leave: float | None = None,
    unseen: tuple[tuple[float, float], ...] = (),
    absent: tuple[tuple[float, float], ...] = (),
    outside: tuple[tuple[float, float], ...] = (),
    in_zone: bool = True,
    active: Callable[[float], bool] = always,
) -> Callable[[float], Scene]:
    """One vehicle: arrives moving, may stop, move again, leave, vanish or stand outside a while.

    ``unseen``: spans in which the vehicle is not detected but the tracker carries its track,
    unmatched, at its place (as it does for stationary_max_age_s, hoping to re-identify it).
    """

    def scene(ts: float) -> Scene:
        zones = [ZONE] if active(ts) else []
        gone = ts < arrive or (leave is not None and ts >= leave) or any(a <= ts < b for a, b in absent)
        if gone:
            return Scene(active=zones)
        still = stop is not None and ts >= stop and (move_again is None or ts < move_again)
        # Last detected just before the span: no frame within it has a match.
        last_seen = next((a - 1e-3 for a, b in unseen if a <= ts < b), ts)
        track = make_track(
            track_id, label, ts=ts, stationary_since=stop if still else None, last_seen=last_seen
        )
        inside = in_zone and not any(a <= ts < b for a, b in outside)
        return Scene([track], {ZONE: [track_id] if inside else []}, zones)

    return scene


def stop_and_go(ts: float) -> Scene:
    """A queue creeping forward: 20 s standing, 5 s rolling, for ever."""
    cycle_start = ts - ts % 25.0
    still = ts - cycle_start < 20.0
    track = make_track(1, "car", ts=ts, stationary_since=cycle_start if still else None)
    return Scene([track], {ZONE: [1]}, [ZONE])


def combined(*scenes: Callable[[float], Scene]) -> Callable[[float], Scene]:
    def scene(ts: float) -> Scene:
        parts = [make(ts) for make in scenes]
        members = sorted({tid for part in parts for tid in part.inside.get(ZONE, ())})
        return Scene([t for part in parts for t in part.tracks], {ZONE: members}, parts[0].active)

    return scene


@dataclass(frozen=True)
class Expect:
    violation: Violation
    episode_start_ts: float
    start_ts: float  # the first frame at or after this time
    end_reason: EndReason
    end_ts: float


def between(start: float, stop: float) -> Callable[[float], bool]:
    return lambda ts: start <= ts < stop


CASES = [
    # id, scene, last frame time, close time, expected episodes
    ("parked car", vehicle(), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0)]),
    ("passing car", vehicle(stop=None, leave=40.0), 600.0, 600.0, []),
    ("brief stop", vehicle(stop=20.0, move_again=150.0, leave=160.0), 600.0, 600.0, []),
    ("stop-and-go queue", stop_and_go, 900.0, 900.0, []),
    ("parked outside the zone", vehicle(in_zone=False), 600.0, 600.0, []),
    ("parked before the no-parking hours",
     vehicle(arrive=0.0, stop=0.0, active=between(300.0, 900.0)), 1200.0, 1200.0,
     [Expect(Violation.ILLEGAL_PARKING, 300.0, 480.0, EndReason.SCHEDULE_ENDED, 900.0)]),
    ("motorcycle", vehicle(label="motorcycle"), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING_TWO_WHEELER, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0)]),
    ("bicycle", vehicle(label="bicycle"), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING_TWO_WHEELER, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0)]),
    ("person is no vehicle", vehicle(label="person"), 600.0, 600.0, []),
    ("gap shorter than the grace", vehicle(absent=((300.0, 320.0),)), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0)]),
    ("gap longer than the grace",
     combined(vehicle(leave=300.0), vehicle(2, arrive=340.0, stop=340.0)), 700.0, 700.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.LEFT, 300.0),
      Expect(Violation.ILLEGAL_PARKING, 340.0, 520.0, EndReason.STREAM_ENDED, 700.0)]),
    ("moves off after the dwell", vehicle(move_again=400.0), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.LEFT, 400.0)]),
    ("drives away", vehicle(leave=400.0), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.LEFT, 400.0)]),
    ("drives away unseen, its track carried on", vehicle(unseen=((400.0, 1e9),)), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.LEFT, 400.0)]),
    ("undetected shorter than the grace, track carried", vehicle(unseen=((300.0, 325.0),)), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0)]),
    ("anchor jitters out of the zone briefly", vehicle(outside=((100.0, 110.0),)), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0)]),
    ("outside the zone longer than the grace before the dwell",
     vehicle(outside=((100.0, 150.0),)), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 150.0, 330.0, EndReason.STREAM_ENDED, 600.0)]),
    ("two parked cars", combined(vehicle(), vehicle(2, arrive=50.0, stop=60.0)), 600.0, 600.0,
     [Expect(Violation.ILLEGAL_PARKING, 20.0, 200.0, EndReason.STREAM_ENDED, 600.0),
      Expect(Violation.ILLEGAL_PARKING, 60.0, 240.0, EndReason.STREAM_ENDED, 600.0)]),
]  # fmt: skip


@pytest.mark.parametrize("frame_interval_s", [1.0, 2.5, 7.0])
@pytest.mark.parametrize(
    ("scene", "last_ts", "close_ts", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parking_episodes(
    scene: Callable[[float], Scene],
    last_ts: float,
    close_ts: float,
    expected: list[Expect],
    frame_interval_s: float,
) -> None:
    events = run_rule(make_rule(), frange(0.0, last_ts, frame_interval_s), scene, close_ts)

    assert_lifecycles(events)
    starts = of_type(events, EventType.START)
    ends = {event.episode_id: event for event in of_type(events, EventType.END)}
    assert len(starts) == len(expected)
    for start, want in zip(sorted(starts, key=lambda e: e.ts), expected, strict=True):
        assert start.violation == want.violation
        assert start.zone == ZONE
        # Condition start and flag time are only known to the frame.
        assert want.episode_start_ts <= start.episode_start_ts < want.episode_start_ts + frame_interval_s
        assert want.start_ts <= start.ts < want.start_ts + frame_interval_s
        assert start.dwell_s >= MIN_DWELL_S
        end = ends[start.episode_id]
        assert end.end_reason == want.end_reason
        if want.end_reason == EndReason.LEFT:
            # A departure is stamped with the last frame the vehicle stood there.
            assert want.end_ts - frame_interval_s <= end.ts < want.end_ts
        elif want.end_reason == EndReason.SCHEDULE_ENDED:
            assert want.end_ts <= end.ts < want.end_ts + frame_interval_s
        else:
            assert end.ts == want.end_ts


def test_updates_every_update_interval() -> None:
    events = run_rule(make_rule(), frange(0.0, 500.0, 1.0), vehicle())

    assert [event.type for event in events] == [EventType.START] + [EventType.UPDATE] * 5
    assert [event.ts for event in events] == [200.0, 260.0, 320.0, 380.0, 440.0, 500.0]
    assert {event.episode_id for event in events} == {f"{1:032x}"}
    assert all(event.episode_start_ts == 20.0 for event in events)
    assert all(event.objects[0].track_id == 1 for event in events)


def test_departure_ends_after_grace_with_last_seen_time() -> None:
    rule = make_rule()
    scene = vehicle(leave=400.0)
    emitted_at = {}
    for ts in frange(0.0, 600.0, 1.0):
        for event in rule.update(None, *frame_at(ts, scene(ts))):
            emitted_at[event.type] = emitted_at.get(event.type, ts)

    assert emitted_at[EventType.END] == 429.0  # first frame absent for end_grace_s
    assert rule.close(600.0) == []


def test_frames_the_detector_skipped_do_not_count_as_absence() -> None:
    """Motion gating: with the detector off from 300 s, the carried car is still there; absence
    counts from the first inferred frame that misses it (500 s)."""
    rule = make_rule()
    scene = vehicle(unseen=((300.0, 1e9),))
    emitted_at: dict[EventType, float] = {}
    ends = []
    for ts in frange(0.0, 600.0, 1.0):
        for event in rule.update(None, *frame_at(ts, scene(ts), inferred=not 300.0 <= ts < 500.0)):
            emitted_at.setdefault(event.type, ts)
            ends += [event] if event.type == EventType.END else []

    assert emitted_at[EventType.END] == 529.0
    (end,) = ends
    assert end.end_reason == EndReason.LEFT
    assert end.ts == pytest.approx(300.0, abs=1e-2)  # the last time it was actually seen


def test_a_rule_made_between_detector_runs_counts_the_last_detected_tracks() -> None:
    """Zones replaced while the detector rests (motion gating): the carried car is still there."""
    rule = make_rule()
    scene = vehicle(unseen=((100.0, 1e9),))
    events = []
    for ts in frange(100.0, 400.0, 1.0):
        events += rule.update(None, *frame_at(ts, scene(ts), inferred=False))

    (start,) = of_type(events, EventType.START)
    assert (start.episode_start_ts, start.ts) == (100.0, 280.0)  # in the zone from its first frame


def test_close_ends_each_open_episode_once() -> None:
    rule = make_rule()
    events = run_rule(
        rule, frange(0.0, 300.0, 1.0), combined(vehicle(), vehicle(2, stop=30.0)), close_ts=300.0
    )

    ends = of_type(events, EventType.END)
    assert [end.end_reason for end in ends] == [EndReason.STREAM_ENDED] * 2
    assert [end.ts for end in ends] == [300.0, 300.0]
    assert_lifecycles(events)
    assert rule.close(301.0) == []


def test_zero_grace_ends_on_first_absent_frame() -> None:
    events = run_rule(make_rule(RulesConfig(end_grace_s=0.0)), frange(0.0, 600.0, 1.0), vehicle(leave=400.0))

    assert [(event.type, event.ts) for event in events if event.type != EventType.UPDATE] == [
        (EventType.START, 200.0),
        (EventType.END, 399.0),
    ]


def test_mismatched_frames_are_refused() -> None:
    rule = make_rule()
    tracks, _ = frame_at(10.0, vehicle()(10.0))
    _, hits = frame_at(11.0, vehicle()(11.0))

    with pytest.raises(RuleError, match="kerb"):
        rule.update(None, tracks, hits)


def test_time_running_backwards_is_refused() -> None:
    rule = make_rule()
    rule.update(None, *frame_at(10.0, vehicle()(10.0)))

    with pytest.raises(RuleError, match="backwards"):
        rule.update(None, *frame_at(9.0, vehicle()(9.0)))


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from(["parked", "moving", "gone", "outside", "off-hours"]), min_size=1, max_size=12)
)
def test_any_history_gives_whole_episodes(phases: list[str]) -> None:
    """Random 50 s phases of one car: every start has exactly one end, flagged only after the dwell."""
    rule = make_rule()
    events = []
    stopped_at: float | None = None
    for ts in frange(0.0, 50.0 * len(phases) - 1.0, 5.0):
        phase = phases[int(ts // 50.0)]
        standing = phase in ("parked", "outside", "off-hours")
        stopped_at = None if not standing else ts if stopped_at is None else stopped_at
        track = make_track(1, ts=ts, stationary_since=stopped_at)
        scene = Scene(
            [] if phase == "gone" else [track],
            {ZONE: [1] if phase in ("parked", "moving", "off-hours") else []},
            [] if phase == "off-hours" else [ZONE],
        )
        events += rule.update(None, *frame_at(ts, scene))
    events += rule.close(50.0 * len(phases))

    assert_lifecycles(events)
    for start in of_type(events, EventType.START):
        assert start.dwell_s >= MIN_DWELL_S
        assert phases[int(start.ts // 50.0)] == "parked"

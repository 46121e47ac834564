"""VendingRule: a staffed stall is one episode; unstaffed stalls, lone people and licensed pitches are not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from curbwatch.edge.rules import RulesConfig, VendingRule
from curbwatch.edge.rules.vending import PresenceWindow, box_gap, cluster_boxes, overlap_of_smaller
from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import NoVendingZone, Violation
from tests.edge.rules import Scene, assert_lifecycles, counter_ids, frange, make_track, of_type, run_rule

ZONE = "plaza"
MARKET = "market"
MIN_DWELL_S = 120.0
CONFIG = RulesConfig(update_interval_s=60.0, end_grace_s=30.0)


def make_rule(config: RulesConfig = CONFIG) -> VendingRule:
    zone = NoVendingZone(
        kind="no_vending", name=ZONE, polygon=[(0, 0), (1280, 0), (1280, 720)], min_dwell_s=MIN_DWELL_S
    )
    return VendingRule(zone, [MARKET], config, id_factory=counter_ids())


def always(ts: float) -> bool:
    return True


def never(ts: float) -> bool:
    return False


def between(start: float, stop: float) -> Callable[[float], bool]:
    return lambda ts: start <= ts < stop


def stall(
    x0: float = 400.0,
    y0: float = 200.0,
    *,
    base_id: int = 100,
    arrive: float = 10.0,
    leave: float | None = None,
    unseen: tuple[tuple[float, float], ...] = (),
    vendor: Callable[[float], bool] = always,
    vendor_dx: float = 130.0,
    objects: tuple[str, ...] = ("umbrella", "dining table", "chair"),
    churn_s: float | None = None,
    carried: bool = False,
    in_zone: bool = True,
    in_market: bool = False,
    market_open: Callable[[float], bool] = never,
    active: Callable[[float], bool] = always,
) -> Callable[[float], Scene]:
    """A stall of umbrella, table and chair at (x0, y0), maybe with a vendor beside it.

    ``unseen``: spans in which the stall is not detected but the tracker carries its stationary
    objects' tracks, unmatched, at their place.
    """
    layout = {
        "umbrella": (x0, y0, x0 + 100, y0 + 100),
        "dining table": (x0 + 10, y0 + 70, x0 + 90, y0 + 120),
        "chair": (x0 + 100, y0 + 90, x0 + 130, y0 + 130),
    }

    def scene(ts: float) -> Scene:
        zones = [name for name, is_on in ((ZONE, active(ts)), (MARKET, market_open(ts))) if is_on]
        tracks = []
        if ts >= arrive and (leave is None or ts < leave):
            for i, label in enumerate(objects):
                # Churn: the tracker loses the object every churn_s and makes a new track for it.
                epoch = 0 if churn_s is None else int((ts - arrive) // churn_s) + 1
                since = None if carried else (arrive if churn_s is None else arrive + (epoch - 1) * churn_s)
                seen = next((a - 1e-3 for a, b in unseen if a <= ts < b), ts)
                tracks.append(
                    make_track(
                        base_id + i + 10 * epoch,
                        label,
                        layout[label],
                        ts=ts,
                        stationary_since=since,
                        last_seen=seen,
                    )
                )
        items = [t.track_id for t in tracks]
        if vendor(ts):
            box = (x0 + vendor_dx, y0 + 20, x0 + vendor_dx + 40, y0 + 130)
            tracks.append(make_track(base_id + 99, "person", box, ts=ts, stationary_since=None))
        inside = {ZONE: items if in_zone else [], MARKET: items if in_market else []}
        return Scene(tracks, inside, zones)

    return scene


def person_alone(ts: float) -> Scene:
    return Scene(
        [make_track(7, "person", (600, 300, 640, 400), ts=ts, stationary_since=0.0)], {ZONE: [7]}, [ZONE]
    )


def combined(*scenes: Callable[[float], Scene]) -> Callable[[float], Scene]:
    def scene(ts: float) -> Scene:
        parts = [make(ts) for make in scenes]
        inside = {
            name: [tid for part in parts for tid in part.inside.get(name, ())] for name in (ZONE, MARKET)
        }
        return Scene([t for part in parts for t in part.tracks], inside, parts[0].active)

    return scene


def passer_by(ts: float) -> bool:
    """Someone walks past the stall for 4 s every minute."""
    return ts % 60.0 < 4.0


@dataclass(frozen=True)
class Expect:
    episode_start_ts: float
    start_ts: float
    end_reason: EndReason
    end_ts: float


CASES = [
    # id, scene, last frame time, expected episodes (the rule is closed at the last frame)
    ("staffed stall", stall(), 600.0, [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0)]),
    ("umbrella and table id churn", stall(churn_s=45.0), 600.0,
     [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0)]),
    ("umbrella alone with its vendor", stall(objects=("umbrella",)), 600.0,
     [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0)]),
    ("vendor away 60 s", stall(vendor=lambda ts: not 200.0 <= ts < 260.0), 600.0,
     [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0)]),
    # Staffed from when the vendor's share of the stall's time passes 0.3: (t - 100) / (t - 10) = 0.3.
    ("vendor arrives after the stall", stall(vendor=lambda ts: ts >= 100.0), 600.0,
     [Expect(138.0, 258.0, EndReason.STREAM_ENDED, 600.0)]),
    ("stall without anyone", stall(vendor=never), 600.0, []),
    ("stall with passers-by", stall(vendor=passer_by), 900.0, []),
    ("person far from the stall", stall(vendor_dx=600.0), 600.0, []),
    ("person standing alone", person_alone, 600.0, []),
    ("umbrella carried along", stall(objects=("umbrella",), carried=True), 600.0, []),
    ("stall outside the zone", stall(in_zone=False), 600.0, []),
    ("licensed pitch while it is open", stall(in_market=True, market_open=always), 600.0, []),
    ("licensed pitch after its hours", stall(in_market=True, market_open=between(0.0, 300.0)), 600.0,
     [Expect(300.0, 420.0, EndReason.STREAM_ENDED, 600.0)]),
    ("market open but stall outside it", stall(market_open=always), 600.0,
     [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0)]),
    ("packs up", stall(leave=400.0, vendor=lambda ts: ts < 400.0), 600.0,
     [Expect(10.0, 130.0, EndReason.LEFT, 400.0)]),
    ("packs up unseen, its objects' tracks carried on",
     stall(unseen=((400.0, 1e9),), vendor=lambda ts: ts < 400.0), 600.0,
     [Expect(10.0, 130.0, EndReason.LEFT, 400.0)]),
    ("stall undetected shorter than the grace", stall(unseen=((300.0, 325.0),)), 600.0,
     [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0)]),
    ("no-vending hours end", stall(active=between(0.0, 450.0)), 600.0,
     [Expect(10.0, 130.0, EndReason.SCHEDULE_ENDED, 450.0)]),
    ("two stalls apart", combined(stall(), stall(900.0, 400.0, base_id=200, arrive=60.0)), 600.0,
     [Expect(10.0, 130.0, EndReason.STREAM_ENDED, 600.0),
      Expect(60.0, 180.0, EndReason.STREAM_ENDED, 600.0)]),
]  # fmt: skip


@pytest.mark.parametrize("frame_interval_s", [1.0, 3.0])
@pytest.mark.parametrize(("scene", "last_ts", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_vending_episodes(
    scene: Callable[[float], Scene], last_ts: float, expected: list[Expect], frame_interval_s: float
) -> None:
    events = run_rule(make_rule(), frange(0.0, last_ts, frame_interval_s), scene, close_ts=last_ts)

    assert_lifecycles(events)
    starts = sorted(of_type(events, EventType.START), key=lambda event: event.ts)
    ends = {event.episode_id: event for event in of_type(events, EventType.END)}
    assert len(starts) == len(expected)
    for start, want in zip(starts, expected, strict=True):
        assert start.violation == Violation.UNLICENSED_VENDING
        # Known to the frame; which frame depends on where the frame grid falls.
        assert start.episode_start_ts == pytest.approx(want.episode_start_ts, abs=frame_interval_s)
        assert start.ts == pytest.approx(want.start_ts, abs=frame_interval_s)
        assert start.dwell_s >= MIN_DWELL_S
        end = ends[start.episode_id]
        assert end.end_reason == want.end_reason
        if want.end_reason == EndReason.LEFT:
            assert want.end_ts - frame_interval_s <= end.ts < want.end_ts
        elif want.end_reason == EndReason.SCHEDULE_ENDED:
            assert want.end_ts <= end.ts < want.end_ts + frame_interval_s
        else:
            assert end.ts == want.end_ts


def test_events_carry_stall_objects_and_vendor() -> None:
    events = run_rule(make_rule(), frange(0.0, 200.0, 1.0), stall())

    start = of_type(events, EventType.START)[0]
    assert sorted(track.label for track in start.objects) == ["chair", "dining table", "person", "umbrella"]
    assert [event.ts for event in events] == [130.0, 190.0]
    assert [event.type for event in events] == [EventType.START, EventType.UPDATE]


@pytest.mark.parametrize(
    ("boxes", "link_diagonals", "expected"),
    [
        ([], 1.0, []),
        ([(0, 0, 10, 10)], 1.0, [[0]]),
        ([(0, 0, 10, 10), (12, 0, 22, 10)], 1.0, [[0, 1]]),  # gap 2 px, diagonals 14 px
        ([(0, 0, 10, 10), (100, 0, 110, 10)], 1.0, [[0], [1]]),
        ([(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10)], 1.0, [[0, 1, 2]]),  # chained
        ([(0, 0, 10, 10), (12, 0, 22, 10)], 0.0, [[0], [1]]),
    ],
)
def test_cluster_boxes(boxes: list, link_diagonals: float, expected: list[list[int]]) -> None:
    assert cluster_boxes(boxes, link_diagonals) == expected


@pytest.mark.parametrize(
    ("a", "b", "gap", "overlap"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 0.0, 1.0),
        ((0, 0, 10, 10), (2, 2, 4, 4), 0.0, 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 0.0, 0.5),
        ((0, 0, 10, 10), (13, 14, 20, 20), 5.0, 0.0),
    ],
)
def test_box_geometry(a: tuple, b: tuple, gap: float, overlap: float) -> None:
    assert box_gap(a, b) == pytest.approx(gap)
    assert box_gap(b, a) == pytest.approx(gap)
    assert overlap_of_smaller(a, b) == pytest.approx(overlap)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], 0.0),
        ([(0.0, True)], 1.0),
        ([(0.0, True), (10.0, True)], 1.0),
        ([(0.0, False), (10.0, False)], 0.0),
        ([(0.0, True), (1.0, False), (100.0, False)], 0.5 / 100.0),  # time-weighted, not per frame
        # At 300 the sample at 0 has left the 250 s window: (150 s half-present + 100 s absent) / 250 s.
        ([(0.0, True), (50.0, True), (200.0, False), (300.0, False)], 75.0 / 250.0),
    ],
)
def test_presence_window(samples: list[tuple[float, bool]], expected: float) -> None:
    window = PresenceWindow(window_s=250.0)
    for ts, present in samples:
        window.add(ts, present)
    assert window.share() == pytest.approx(expected)

"""RuleEngine builds one rule per rule zone and runs them all; EpisodeBook keeps episodes whole."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pydantic
import pytest

from curbwatch.edge.messages import EpisodeEvent, Frame, Tracks, ZoneHits
from curbwatch.edge.rules import (
    EpisodeBook,
    ParkingRule,
    RuleEngine,
    RuleError,
    RulesConfig,
    VendingRule,
    ZoneRule,
)
from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import BinSiteZone, NoParkingZone, NoVendingZone, PermittedVendingZone, Violation
from tests.edge.rules import Scene, assert_lifecycles, counter_ids, frame_at, frange, make_track, of_type

TRIANGLE = [(0.0, 0.0), (640.0, 0.0), (640.0, 360.0)]
KERB = NoParkingZone(kind="no_parking", name="kerb", polygon=TRIANGLE, min_dwell_s=180.0)
PLAZA = NoVendingZone(kind="no_vending", name="plaza", polygon=TRIANGLE, min_dwell_s=120.0)
BINS = BinSiteZone(kind="bin_site", name="bins", polygon=TRIANGLE)
MARKET = PermittedVendingZone(kind="permitted_vending", name="market", polygon=TRIANGLE)


@dataclass
class FakeZoneSet:
    """Stands in for ``curbwatch.edge.zones.ZoneSet``: only what the engine asks of it."""

    zones: list[NoParkingZone | NoVendingZone | BinSiteZone]
    permitted: list[PermittedVendingZone] = field(default_factory=list)

    def rule_zones(self) -> list[NoParkingZone | NoVendingZone | BinSiteZone]:
        return self.zones

    def permitted_vending_zones(self) -> list[PermittedVendingZone]:
        return self.permitted


@dataclass
class RecordingRule:
    """A bin rule stand-in that records what it was given."""

    zone: str
    built_with: Any = None
    frames: list[float] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)

    def update(self, frame: Frame | None, tracks: Tracks, hits: ZoneHits) -> list[EpisodeEvent]:
        self.frames.append(hits.ts)
        return []

    def close(self, ts: float, reason: EndReason = EndReason.STREAM_ENDED) -> list[EpisodeEvent]:
        self.closed_at.append(ts)
        return []


def test_builds_one_rule_per_rule_zone() -> None:
    zone_set = FakeZoneSet([KERB, PLAZA, BINS], [MARKET])
    built: list[RecordingRule] = []

    def bin_factory(zone: BinSiteZone, zones: Any) -> ZoneRule:
        built.append(RecordingRule(zone.name, zones))
        return built[-1]

    engine = RuleEngine(zone_set, RulesConfig(), bin_rule_factory=bin_factory)

    assert [type(rule) for rule in engine.rules] == [ParkingRule, VendingRule, RecordingRule]
    assert [rule.zone for rule in engine.rules] == ["kerb", "plaza", "bins"]
    assert built[0].built_with is zone_set
    assert all(isinstance(rule, ZoneRule) for rule in engine.rules)


def test_bin_sites_are_skipped_without_a_factory(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="curbwatch.edge.rules.engine"):
        engine = RuleEngine(FakeZoneSet([BINS, KERB]), RulesConfig())

    assert [rule.zone for rule in engine.rules] == ["kerb"]
    assert "bins" in caplog.text


def test_a_zone_kind_without_a_rule_is_refused() -> None:
    with pytest.raises(RuleError, match="market"):
        RuleEngine(FakeZoneSet([MARKET]), RulesConfig())  # type: ignore[list-item]


def test_update_and_close_reach_every_rule() -> None:
    recorder = RecordingRule("bins")
    engine = RuleEngine(FakeZoneSet([BINS]), RulesConfig(), bin_rule_factory=lambda zone, zones: recorder)

    for ts in (1.0, 2.0):
        assert engine.update(None, *frame_at(ts, Scene(active=["bins"]))) == []
    assert engine.close(3.0) == []
    assert recorder.frames == [1.0, 2.0]
    assert recorder.closed_at == [3.0]


def street(ts: float) -> Scene:
    """A car parked in the kerb zone since 0 and a staffed stall in the plaza since 0, beside the market."""
    car = make_track(1, "car", (100, 100, 200, 160), ts=ts, stationary_since=0.0)
    umbrella = make_track(2, "umbrella", (400, 200, 500, 300), ts=ts, stationary_since=0.0)
    vendor = make_track(3, "person", (520, 220, 560, 330), ts=ts)
    return Scene(
        [car, umbrella, vendor], {"kerb": [1], "plaza": [2], "market": []}, ["kerb", "plaza", "market"]
    )


def test_engine_runs_parking_and_vending_together() -> None:
    engine = RuleEngine(FakeZoneSet([KERB, PLAZA], [MARKET]), RulesConfig(), id_factory=counter_ids())
    events: list[EpisodeEvent] = []
    for ts in frange(0.0, 300.0, 1.0):
        events.extend(engine.update(None, *frame_at(ts, street(ts))))
    events.extend(engine.close(300.0))

    assert_lifecycles(events)
    starts = of_type(events, EventType.START)
    assert [(s.zone, s.violation, s.ts, s.episode_id) for s in starts] == [
        ("plaza", Violation.UNLICENSED_VENDING, 120.0, f"{1:032x}"),
        ("kerb", Violation.ILLEGAL_PARKING, 180.0, f"{2:032x}"),
    ]
    assert [e.end_reason for e in of_type(events, EventType.END)] == [EndReason.STREAM_ENDED] * 2


def test_default_episode_ids_are_unique_hex() -> None:
    engine = RuleEngine(FakeZoneSet([KERB, PLAZA]), RulesConfig())
    events = [e for ts in frange(0.0, 200.0, 5.0) for e in engine.update(None, *frame_at(ts, street(ts)))]

    ids = {event.episode_id for event in of_type(events, EventType.START)}
    assert len(ids) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def book(**overrides: float) -> EpisodeBook:
    settings = {"min_dwell_s": 10.0, "update_interval_s": 5.0, "end_grace_s": 3.0} | overrides
    return EpisodeBook("z", id_factory=counter_ids(), **settings)


def observe(episodes: EpisodeBook, key: int, since: float, ts: float) -> EpisodeEvent | None:
    return episodes.observe(key, violation=Violation.ILLEGAL_PARKING, since_ts=since, ts=ts, objects=())


SEEN_10_TO_20 = set(frange(10.0, 20.0, 1.0))


@pytest.mark.parametrize(
    ("present_at", "last_ts", "expected"),
    [
        # Condition held since 0, dwell 10, updates every 5, grace 3; the key is seen at present_at.
        ({9.0}, 14.0, []),
        ({10.0}, 14.0, [("start", 10.0, None, 1), ("end", 10.0, EndReason.LEFT, 1)]),
        ({10.0, 11.0, 12.0}, 14.0, [("start", 10.0, None, 1)]),  # absent 2 s at the end: still open
        (SEEN_10_TO_20 - {12.0, 13.0}, 20.0,
         [("start", 10.0, None, 1), ("update", 15.0, None, 1), ("update", 20.0, None, 1)]),
        ({10.0, 11.0, 15.0}, 15.0,  # absent 12-14: over at 14, stamped 11; a new episode at 15
         [("start", 10.0, None, 1), ("end", 11.0, EndReason.LEFT, 1), ("start", 15.0, None, 2)]),
    ],
)  # fmt: skip
def test_book_life_cycle(
    present_at: set[float], last_ts: float, expected: list[tuple[str, float, EndReason | None, int]]
) -> None:
    episodes = book()
    events: list[EpisodeEvent | None] = []
    for ts in frange(0.0, last_ts, 1.0):
        present = [7] if ts in present_at else []
        events += episodes.expire(ts, present)
        if present:
            events.append(observe(episodes, 7, 0.0, ts))

    got = [(e.type.value, e.ts, e.end_reason, int(e.episode_id, 16)) for e in events if e is not None]
    assert got == expected


def test_book_end_all_and_idempotent_close() -> None:
    episodes = book()
    observe(episodes, 1, 0.0, 10.0)
    observe(episodes, 2, 0.0, 11.0)

    ends = episodes.end_all(12.0, EndReason.SCHEDULE_ENDED)
    assert [(e.episode_id, e.ts, e.end_reason) for e in ends] == [
        (f"{1:032x}", 12.0, EndReason.SCHEDULE_ENDED),
        (f"{2:032x}", 12.0, EndReason.SCHEDULE_ENDED),
    ]
    assert len(episodes) == 0
    assert episodes.end_all(13.0, EndReason.STREAM_ENDED) == []


def test_book_keeps_violation_and_start_of_an_open_episode() -> None:
    episodes = book()
    start = observe(episodes, 1, 0.0, 10.0)
    later = episodes.observe(1, violation=Violation.BIN_OVERFLOW, since_ts=8.0, ts=15.0, objects=())

    assert start is not None and later is not None
    assert (later.violation, later.episode_start_ts) == (Violation.ILLEGAL_PARKING, 0.0)


@pytest.mark.parametrize(
    ("field_name", "value"),
    [("update_interval_s", 0.0), ("end_grace_s", -1.0), ("vending_min_people_share", 1.5), ("typo_s", 1.0)],
)
def test_config_rejects_bad_values(field_name: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=field_name):
        RulesConfig(**{field_name: value})


def test_config_is_frozen() -> None:
    config = RulesConfig()
    with pytest.raises(pydantic.ValidationError):
        config.end_grace_s = 1.0  # type: ignore[misc]

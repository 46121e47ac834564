"""Tests of the bin-overflow rule, on sequences made from the real kerbside bin site.

Scene helpers (the site polygon, rubbish sprites, lighting) come from ``tests/edge/test_bins.py``.
Logic that does not need pixels (schedule, close, occlusion bookkeeping) runs on a scripted fake
estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from curbwatch.edge.bins import BinObservation, ReferenceChangeEstimator
from curbwatch.edge.messages import EpisodeEvent, Frame, Track, Tracks, ZoneHits
from curbwatch.edge.rules.base import RuleError, ZoneRule
from curbwatch.edge.rules.bins import BinRule, BinRuleConfig, make_bin_rule
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import BinSiteZone
from tests.edge.test_bins import (
    FAST_CONFIG,
    SITE_POLYGON,
    BinScene,
    Lighting,
    Sprite,
    car_sprite,
    drift,
    person_sprite,
    pile,
    site_mask,
)

ZONE = "kerb-bins"
MIN_DWELL_S = 120.0
CLEAR_DWELL_S = 60.0
UPDATE_S = 60.0
Items = list[tuple[Sprite, int, int]]


def make_zone(**overrides: object) -> BinSiteZone:
    fields = {"kind": "bin_site", "name": ZONE, "polygon": SITE_POLYGON.tolist(), "min_dwell_s": MIN_DWELL_S,
              "clear_dwell_s": CLEAR_DWELL_S} | overrides  # fmt: skip
    return BinSiteZone.model_validate(fields)


def make_track(track_id: int, label: str, xyxy: tuple[float, float, float, float], ts: float) -> Track:
    return Track(track_id, label, 0.8, xyxy, ts, ts, None, True)


def counter_ids() -> Callable[[], str]:
    count = iter(range(1, 10**6))
    return lambda: f"{next(count):032x}"


def make_rule(estimator=None) -> BinRule:
    return BinRule(
        make_zone(),
        SITE_POLYGON,
        estimator or ReferenceChangeEstimator(FAST_CONFIG),
        RulesConfig(update_interval_s=UPDATE_S),
        id_factory=counter_ids(),
    )


@dataclass
class Script:
    """One scenario: what is in the scene and which tracks the detector reports, over time."""

    items_at: Callable[[float], Items] = lambda ts: []
    tracks_at: Callable[[float], list[Track]] = lambda ts: []
    lighting_at: Callable[[float], Lighting] = lambda ts: Lighting()
    active_at: Callable[[float], bool] = lambda ts: True
    pixels: bool = True


@dataclass
class Run:
    """Events each paired with the frame time they were emitted at."""

    emitted: list[tuple[float, EpisodeEvent]] = field(default_factory=list)

    def of(self, kind: EventType) -> list[tuple[float, EpisodeEvent]]:
        return [(ts, e) for ts, e in self.emitted if e.type == kind]


def play(rule: BinRule, scene: BinScene, script: Script, times: np.ndarray) -> Run:
    run = Run()
    for index, ts in enumerate(times.tolist()):
        tracks_now = tuple(script.tracks_at(ts))
        image = scene.render(script.lighting_at(ts), script.items_at(ts)) if script.pixels else None
        frame = None if image is None else Frame("porch", ts, image, index)
        tracks = Tracks(ts, (1334, 650), tracks_now, inferred=True)
        hits = ZoneHits(ts, frozenset({ZONE}) if script.active_at(ts) else frozenset())
        run.emitted += [(ts, event) for event in rule.update(frame, tracks, hits)]
    return run


@pytest.fixture(scope="module")
def scene(data_dir: Path) -> BinScene:
    return BinScene.load(data_dir, seed=11)


@pytest.fixture(scope="module")
def rubbish(data_dir: Path) -> Items:
    return pile(np.random.default_rng(7), data_dir)


DUMP_AT, REMOVED_AT = 100.0, 450.0


def dumped(items: Items) -> Callable[[float], Items]:
    """One item every 10 s from DUMP_AT; all taken away at REMOVED_AT."""
    return lambda ts: items[: int((ts - DUMP_AT) // 10) + 1] if DUMP_AT <= ts < REMOVED_AT else []


def test_rubbish_is_flagged_after_min_dwell_and_cleared(scene: BinScene, rubbish: Items) -> None:
    script = Script(items_at=dumped(rubbish), lighting_at=lambda ts: drift(ts, cloud_at=300.0))
    run = play(make_rule(), scene, script, np.arange(0.0, 620.0, 4.0))
    [(start_at, start)] = run.of(EventType.START)
    [(end_at, end)] = run.of(EventType.END)
    updates = run.of(EventType.UPDATE)
    # The decision turns on while the pile is being built (7 items over 60 s), within the
    # estimator's persistence lag; the episode starts exactly min_dwell later.
    assert DUMP_AT < start.episode_start_ts <= DUMP_AT + 60 + FAST_CONFIG.persist_s
    assert start_at - start.episode_start_ts == pytest.approx(MIN_DWELL_S, abs=4.0)
    assert start.state_score is not None and start.state_score > FAST_CONFIG.on_threshold
    assert [round(ts - start_at) for ts, _ in updates] == [60 * k for k in range(1, len(updates) + 1)]
    assert all(e.episode_id == start.episode_id for _, e in run.emitted)
    assert end.end_reason == EndReason.CLEARED
    assert REMOVED_AT + CLEAR_DWELL_S <= end_at <= REMOVED_AT + CLEAR_DWELL_S + 3 * FAST_CONFIG.persist_s
    assert REMOVED_AT - 4.0 <= end.ts <= end_at


def test_clean_site_with_drift_and_cloud_gives_no_events(scene: BinScene) -> None:
    rule = make_rule()
    script = Script(lighting_at=lambda ts: drift(ts, cloud_at=250.0))
    assert play(rule, scene, script, np.arange(0.0, 600.0, 4.0)).emitted == []
    assert not rule.overflowing


def lingering_pair(data_dir: Path, tracked: bool) -> Script:
    """Two people stroll in, stand chatting beside the bins for longer than min_dwell, walk on."""
    person = person_sprite(data_dir)
    h, w = person.alpha.shape
    present = lambda ts: 60 <= ts < 260  # noqa: E731

    def xs_at(ts: float) -> list[int]:
        x = int(400 + 8 * (min(ts, 70.0) - 60) + 8 * max(0.0, ts - 220.0))
        return [x, x + w + 2]

    def tracks_at(ts: float) -> list[Track]:
        boxes = [(x - w / 2, 152.0 - h, x + w / 2, 152.0) for x in xs_at(ts)]
        return [make_track(3 + i, "person", box, ts) for i, box in enumerate(boxes)] if present(ts) else []

    return Script(
        items_at=lambda ts: [(person, x, 152) for x in xs_at(ts)] if present(ts) else [],
        tracks_at=tracks_at if tracked else lambda ts: [],
    )


@pytest.mark.parametrize(("tracked", "flagged"), [(True, False), (False, True)])
def test_people_lingering_at_the_bins_are_masked(
    scene: BinScene, data_dir: Path, tracked: bool, flagged: bool
) -> None:
    """Tracked people are cut out; the same people missed by the detector look like a lasting change."""
    rule = make_rule()
    run = play(rule, scene, lingering_pair(data_dir, tracked), np.arange(0.0, 300.0, 4.0))
    assert bool(run.of(EventType.START)) is flagged


@pytest.mark.parametrize(("car_x", "stay_s"), [(515, 90.0), (515, 400.0), (620, 400.0)])
def test_car_stopping_in_front_is_not_rubbish(scene: BinScene, car_x: int, stay_s: float) -> None:
    """A car pulls up in front of the site (whole site hidden, or its right part) and leaves."""
    car = car_sprite(scene.base)
    h, w = car.alpha.shape
    box = (car_x - w / 2, 170.0 - h, car_x + w / 2, 170.0)
    parked = lambda ts: 60 <= ts < 60 + stay_s  # noqa: E731
    script = Script(
        items_at=lambda ts: [(car, car_x, 170)] if parked(ts) else [],
        tracks_at=lambda ts: [make_track(8, "car", box, ts)] if parked(ts) else [],
    )
    rule = make_rule()
    assert play(rule, scene, script, np.arange(0.0, 120.0 + stay_s, 4.0)).emitted == []
    assert not rule.overflowing


def test_untracked_car_parked_in_front_would_be_flagged(scene: BinScene) -> None:
    """Control for the test above: the same car without its track is a lasting change."""
    car = car_sprite(scene.base)
    script = Script(items_at=lambda ts: [(car, 620, 170)] if 60 <= ts < 460 else [])
    assert play(make_rule(), scene, script, np.arange(0.0, 300.0, 4.0)).of(EventType.START)


class ScriptedEstimator:
    """Returns overflowing when ``ts`` falls in one of ``overflow_spans``; records the masks it saw."""

    def __init__(self, overflow_spans: list[tuple[float, float]]) -> None:
        self.spans = overflow_spans
        self.seen: list[tuple[float, int]] = []

    def observe(self, crop: np.ndarray, mask: np.ndarray, ts: float) -> BinObservation:
        self.seen.append((ts, int(mask.sum())))
        over = any(a <= ts < b for a, b in self.spans)
        return BinObservation(score=0.5 if over else 0.0, overflowing=over)


def blank_scene() -> BinScene:
    return BinScene(np.full((650, 1334, 3), 120, np.uint8), noise_sigma=0.0)


def test_occluded_frames_keep_the_decision() -> None:
    """A bus parked in front longer than clear_dwell neither ends nor splits the episode."""
    estimator = ScriptedEstimator([(0.0, 1000.0)])
    bus = make_track(5, "bus", (380.0, 60.0, 660.0, 200.0), 0.0)
    script = Script(tracks_at=lambda ts: [bus] if 200 <= ts < 400 else [])
    run = play(make_rule(estimator), blank_scene(), script, np.arange(0.0, 500.0, 10.0))
    assert [e.type for _, e in run.emitted if e.type != EventType.UPDATE] == [EventType.START]
    assert all(not 200 <= ts < 400 for ts, _ in estimator.seen)


def test_partly_occluded_site_is_judged_without_the_occluder() -> None:
    estimator = ScriptedEstimator([])
    person = make_track(1, "person", (500.0, 90.0, 520.0, 150.0), 0.0)
    dog = make_track(2, "dog", (540.0, 120.0, 560.0, 150.0), 0.0)
    play(
        make_rule(estimator), blank_scene(), Script(tracks_at=lambda ts: [person, dog]), np.array([0.0, 1.0])
    )
    play(make_rule(estimator), blank_scene(), Script(), np.array([0.0]))
    with_person, alone = estimator.seen[0][1], estimator.seen[-1][1]
    # The person box padded by 10 % each side is cut out; the dog is not an occluder class.
    x0, y0 = int(SITE_POLYGON[:, 0].min()), int(SITE_POLYGON[:, 1].min())
    cut = site_mask()[max(0, 84 - y0) : 156 - y0, 498 - x0 : 522 - x0]
    assert alone == site_mask().sum()
    assert alone - with_person == cut.sum()


def test_schedule_end_ends_the_episode_and_dwell_restarts() -> None:
    estimator = ScriptedEstimator([(0.0, 1000.0)])
    script = Script(active_at=lambda ts: not 200 <= ts < 300)
    run = play(make_rule(estimator), blank_scene(), script, np.arange(0.0, 500.0, 10.0))
    starts, ends = run.of(EventType.START), run.of(EventType.END)
    assert [ts for ts, _ in starts] == [120.0, 420.0]
    assert [(ts, e.end_reason) for ts, e in ends] == [(200.0, EndReason.SCHEDULE_ENDED)]
    assert starts[1][1].episode_start_ts == 300.0
    assert starts[0][1].episode_id != starts[1][1].episode_id


def test_close_ends_with_stream_ended_and_no_pixels_means_no_events() -> None:
    rule = make_rule(ScriptedEstimator([(0.0, 1000.0)]))
    run = play(rule, blank_scene(), Script(), np.arange(0.0, 200.0, 10.0))
    assert [e.type for _, e in run.emitted] == [EventType.START, EventType.UPDATE]
    [end] = rule.close(195.0)
    assert (end.type, end.end_reason, end.ts) == (EventType.END, EndReason.STREAM_ENDED, 195.0)
    blind = make_rule(ScriptedEstimator([(0.0, 1000.0)]))
    assert play(blind, blank_scene(), Script(pixels=False), np.arange(0.0, 300.0, 10.0)).emitted == []
    assert blind.close(300.0) == []


def test_time_going_backwards_is_an_error() -> None:
    rule = make_rule(ScriptedEstimator([]))
    play(rule, blank_scene(), Script(), np.array([10.0]))
    with pytest.raises(RuleError, match="backwards"):
        play(rule, blank_scene(), Script(), np.array([5.0]))


class FakeZoneSet:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def polygon_px(self, name: str) -> np.ndarray:
        self.asked.append(name)
        return SITE_POLYGON


def test_factory_builds_a_zone_rule() -> None:
    zone_set = FakeZoneSet()
    rule = make_bin_rule(make_zone(), zone_set, RulesConfig())
    assert isinstance(rule, ZoneRule)
    assert (rule.zone, zone_set.asked) == (ZONE, [ZONE])
    with pytest.raises(ValueError, match="unknown bin estimator"):
        make_bin_rule(make_zone(), zone_set, RulesConfig(), BinRuleConfig.model_construct(estimator="nope"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"estimator": "nope"}, "unknown bin estimator"),
        ({"estimator_options": {"on_threshold": 2.0}}, "on_threshold"),
        ({"estimator_options": {"no_such_option": 1}}, "no_such_option"),
    ],
)
def test_config_rejects_bad_estimators_at_load(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BinRuleConfig.model_validate(settings)

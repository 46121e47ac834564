"""Tracker behaviour on synthetic scenes: ids, births, losses, stationary state, revival."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext as DoesNotRaise
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from curbwatch.edge.messages import Tracks
from curbwatch.edge.track import StillnessConfig, Tracker, TrackerConfig, TrackerError, box_iou
from tests.factories import make_detections

T0 = 1_700_000_000.0
FRAME_WH = (1920, 1080)
PARKED = (800.0, 400.0, 1000.0, 520.0)
Box = tuple[float, float, float, float]
# What the scene holds at a frame time: (box, label) pairs; the simulator adds noise and misses.
Scene = Callable[[float], Sequence[tuple[Box, str]]]


def simulate(
    tracker: Tracker,
    scene: Scene,
    duration_s: float,
    rng: np.random.Generator,
    fps: float = 5.0,
    jitter: float = 0.03,
    miss: float = 0.2,
    start_s: float = 0.0,
    variable_dt: bool = False,
) -> list[Tracks]:
    """Feed ``scene`` to the tracker; each box jitters by ``jitter`` of its size and is missed at ``miss``."""
    out = []
    t = start_s
    while t < start_s + duration_s:
        boxes, labels = [], []
        for box, label in scene(t):
            if rng.random() < miss:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            noise = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
            boxes.append(tuple(np.asarray(box) + noise))
            labels.append(label)
        out.append(tracker.update(make_detections(boxes, labels=labels), T0 + t, FRAME_WH))
        t += rng.uniform(0.3, 1.7) / fps if variable_dt else 1.0 / fps
    return out


def parked(box: Box = PARKED, label: str = "car") -> Scene:
    return lambda t: [(box, label)]


def ids_seen(history: Sequence[Tracks]) -> set[int]:
    return {track.track_id for tracks in history for track in tracks.items}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_jittered_parked_car_keeps_one_id_and_turns_stationary_once(seed: int) -> None:
    tracker = Tracker(TrackerConfig())
    history = simulate(tracker, parked(), 120.0, np.random.default_rng(seed))
    assert ids_seen(history) == {1}
    states = [(tracks.ts, tracks.items[0].stationary_since_ts) for tracks in history if tracks.items]
    became = next(ts for ts, since in states if since is not None)
    # Stationary after stationary_after_s (plus the birth hits), dated back to the start of stillness.
    assert became - T0 <= 10.0 + 1.0
    sinces = {since for ts, since in states if ts >= became}
    assert len(sinces) == 1 and None not in sinces
    assert sinces.pop() - T0 <= 1.0


@pytest.mark.parametrize("speed_px_s", [15.0, 40.0, 120.0, 400.0])
def test_box_crossing_the_frame_never_turns_stationary(speed_px_s: float) -> None:
    tracker = Tracker(TrackerConfig())

    def scene(t: float) -> list[tuple[Box, str]]:
        x = 20.0 + speed_px_s * t
        return [((x, 500.0, x + 200.0, 620.0), "car")] if x + 200 < FRAME_WH[0] else []

    history = simulate(tracker, scene, min(1700.0 / speed_px_s, 100.0), np.random.default_rng(7), miss=0.1)
    assert ids_seen(history) == {1}
    assert not any(track.is_stationary for tracks in history for track in tracks.items)


@pytest.mark.parametrize(
    ("gap_s", "same_track"),
    [
        (5.0, True),  # longer than max_age_s: a stationary track outlives it
        (90.0, True),  # longer than stationary_max_age_s: revived from memory
        (45.0 + 300.0 + 60.0, False),  # past memory_s: a new car for all we know
    ],
)
def test_stationary_object_hidden_for_a_while_keeps_id_and_dwell(gap_s: float, same_track: bool) -> None:
    tracker = Tracker(TrackerConfig())
    rng = np.random.default_rng(11)
    before = simulate(tracker, parked(), 30.0, rng)
    parked_track = before[-1].items[0]
    assert parked_track.is_stationary
    hidden = simulate(tracker, lambda t: [], gap_s, rng, start_s=30.0)
    after = simulate(tracker, parked(), 20.0, rng, start_s=30.0 + gap_s)
    returned = after[-1].items
    assert len(returned) == 1
    same = (returned[0].track_id, returned[0].stationary_since_ts) == (
        parked_track.track_id,
        parked_track.stationary_since_ts,
    )
    assert same is same_track
    if gap_s < TrackerConfig().stationary_max_age_s:
        assert all(tracks.items and not tracks.items[0].matched for tracks in hidden[1:])


def test_parked_car_behind_a_stopped_bus_keeps_its_dwell() -> None:
    tracker = Tracker(TrackerConfig())
    rng = np.random.default_rng(5)
    bus = (700.0, 300.0, 1150.0, 560.0)  # covers the car completely
    before = simulate(tracker, parked(), 30.0, rng)
    car = before[-1].items[0]
    simulate(tracker, lambda t: [(bus, "bus")], 40.0, rng, start_s=30.0)
    after = simulate(tracker, parked(), 10.0, rng, start_s=70.0)
    by_id = after[-1].by_id()
    assert by_id[car.track_id].stationary_since_ts == car.stationary_since_ts
    assert by_id[car.track_id].label == "car"


def test_frames_without_inference_carry_tracks_and_age_nothing() -> None:
    tracker = Tracker(TrackerConfig())
    rng = np.random.default_rng(3)
    moving = lambda t: [((100.0 + 30 * t, 500.0, 300.0 + 30 * t, 620.0), "car")]  # noqa: E731
    before = simulate(tracker, moving, 5.0, rng, miss=0.0)[-1]
    carried = [tracker.update(None, T0 + 5.0 + k, FRAME_WH) for k in range(60)]
    assert all(not tracks.inferred for tracks in carried)
    assert [t.xyxy for t in carried[-1].items] == [t.xyxy for t in before.items]
    assert carried[-1].items[0].matched is False
    # The first inferred frames that miss it are the first evidence of absence.
    again = [tracker.update(make_detections(), T0 + 66.0 + 0.2 * k, FRAME_WH) for k in range(2)]
    assert again[-1].items and again[-1].items[0].track_id == before.items[0].track_id


@pytest.mark.parametrize(
    ("frame_dt", "dropped_after_s"),
    [
        (0.2, 2.2),  # max_age_s (2 s) from the first missed frame decides
        (1.5, 4.5),  # sparse inference: min_misses (3) decides
    ],
)
def test_moving_track_dropped_after_max_age_and_min_misses(frame_dt: float, dropped_after_s: float) -> None:
    tracker = Tracker(TrackerConfig())
    for k in range(10):
        box = (100.0 + 10 * k, 500.0, 300.0 + 10 * k, 620.0)
        tracker.update(make_detections([box]), T0 + 0.2 * k, FRAME_WH)
    last_seen = T0 + 0.2 * 9
    ts, alive = last_seen, True
    while alive:
        ts += frame_dt
        alive = bool(tracker.update(make_detections(), ts, FRAME_WH).items)
    assert ts - last_seen == pytest.approx(dropped_after_s)


def test_two_adjacent_parked_cars_keep_separate_ids() -> None:
    tracker = Tracker(TrackerConfig())
    left, right = (600.0, 400.0, 800.0, 520.0), (790.0, 405.0, 990.0, 525.0)
    history = simulate(tracker, lambda t: [(left, "car"), (right, "car")], 60.0, np.random.default_rng(2))
    assert ids_seen(history) == {1, 2}
    final = history[-1].items
    assert all(track.is_stationary for track in final)
    by_side = {track.track_id: track.anchor_xy[0] < 795 for track in final}
    for tracks in history:
        for track in tracks.items:
            assert (track.anchor_xy[0] < 795) == by_side[track.track_id]


def test_label_flipping_between_car_and_truck_keeps_the_id() -> None:
    tracker = Tracker(TrackerConfig())
    rng = np.random.default_rng(9)
    labels = iter(rng.choice(["car", "truck"], size=1000, p=[0.7, 0.3]))
    history = simulate(tracker, lambda t: [(PARKED, str(next(labels)))], 60.0, rng)
    assert ids_seen(history) == {1}
    assert history[-1].items[0].label == "car"
    assert history[-1].items[0].is_stationary


def test_incompatible_classes_never_share_a_track() -> None:
    tracker = Tracker(TrackerConfig())
    scene = lambda t: [(PARKED, "car"), ((810.0, 390.0, 990.0, 530.0), "person")]  # noqa: E731
    history = simulate(tracker, scene, 20.0, np.random.default_rng(4))
    assert sorted(track.label for track in history[-1].items) == ["car", "person"]
    assert len(ids_seen(history)) == 2


def test_car_parks_stays_and_drives_off() -> None:
    tracker = Tracker(TrackerConfig())

    def scene(t: float) -> list[tuple[Box, str]]:
        if t < 6.0:  # arrives at 100 px/s
            x = 200.0 + 100.0 * t
        elif t < 46.0:  # parked from t=6
            x = 800.0
        else:  # leaves, accelerating at 60 px/s²
            x = 800.0 + 30.0 * (t - 46.0) ** 2
        return [((x, 400.0, x + 200.0, 520.0), "car")] if x + 200 < FRAME_WH[0] else []

    history = simulate(tracker, scene, 52.0, np.random.default_rng(1), miss=0.1)
    assert ids_seen(history) == {1}
    parked_at = [t for t in history if 40.0 <= t.ts - T0 < 46.0]
    assert all(t.items[0].is_stationary for t in parked_at)
    assert parked_at[-1].items[0].stationary_since_ts - T0 == pytest.approx(6.0, abs=1.0)
    assert not history[-1].items[0].is_stationary


def test_single_spurious_or_weak_detections_make_no_track() -> None:
    tracker = Tracker(TrackerConfig())
    out = [tracker.update(make_detections([PARKED]), T0, FRAME_WH)]
    out += [tracker.update(make_detections(), T0 + 0.2 * k, FRAME_WH) for k in range(1, 30)]
    weak = make_detections([(100.0, 100.0, 200.0, 200.0)], scores=0.2)
    out += [tracker.update(weak, T0 + 6.0 + 0.2 * k, FRAME_WH) for k in range(30)]
    assert ids_seen(out) == set()


def test_time_going_backwards_is_an_error() -> None:
    tracker = Tracker(TrackerConfig())
    tracker.update(make_detections(), T0 + 1.0, FRAME_WH)
    with pytest.raises(TrackerError, match="backwards"):
        tracker.update(None, T0, FRAME_WH)


def test_frame_size_change_starts_over() -> None:
    tracker = Tracker(TrackerConfig())
    simulate(tracker, parked(), 5.0, np.random.default_rng(0), miss=0.0)
    assert not tracker.update(make_detections(), T0 + 6.0, (1280, 720)).items


@pytest.mark.parametrize(
    ("kwargs", "expectation"),
    [
        ({}, DoesNotRaise()),
        ({"max_age_s": 5.0, "stationary_max_age_s": 60.0}, DoesNotRaise()),
        ({"max_age_s": 90.0}, pytest.raises(ValidationError, match="stationary_max_age_s")),
        ({"compatible_classes": (("car", "truck"), ("truck", "bus"))}, pytest.raises(ValidationError)),
        ({"match_iou": 0.0}, pytest.raises(ValidationError)),
        ({"min_hits": 0}, pytest.raises(ValidationError)),
        ({"stillness": {"hold_iou": 0.9}}, pytest.raises(ValidationError, match="hold tolerances")),
        ({"unknown": 1}, pytest.raises(ValidationError, match="Extra inputs")),
    ],
)
def test_config_validation(kwargs: dict, expectation: DoesNotRaise) -> None:
    with expectation:
        TrackerConfig(**kwargs)


def test_box_iou_matches_hand_computed_values() -> None:
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_iou(a, b) == pytest.approx(np.array([[1.0, 50 / 150, 0.0]]))


@settings(derandomize=True, max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    jitter=st.floats(0.0, 0.04),
    miss=st.floats(0.0, 0.4),
    fps=st.floats(1.0, 15.0),
)
def test_dwell_never_decreases_while_the_object_stays(
    seed: int, jitter: float, miss: float, fps: float
) -> None:
    tracker = Tracker(TrackerConfig(stillness=StillnessConfig(stationary_after_s=5.0)))
    history = simulate(
        tracker,
        parked(),
        40.0,
        np.random.default_rng(seed),
        fps=fps,
        jitter=jitter,
        miss=miss,
        variable_dt=True,
    )
    assert len(ids_seen(history)) <= 1
    dwell = [tracks.items[0].stationary_s(tracks.ts) for tracks in history if tracks.items]
    assert all(later >= earlier for earlier, later in pairwise(dwell))
    assert dwell and dwell[-1] > 0.0


def test_isolated_bad_boxes_do_not_flip_a_parked_car_back_to_moving() -> None:
    tracker = Tracker(TrackerConfig())
    glitch = (880.0, 380.0, 1080.0, 500.0)  # shifted by 40 % of the width: a bad box, once in a while

    def scene(t: float) -> list[tuple[Box, str]]:
        return [(glitch if int(t * 5) % 25 == 0 and t > 20 else PARKED, "car")]

    history = simulate(tracker, scene, 90.0, np.random.default_rng(8), miss=0.1)
    later = [tracks.items[0] for tracks in history if tracks.ts - T0 > 15.0]
    assert {track.stationary_since_ts for track in later} == {later[0].stationary_since_ts}
    assert later[0].stationary_since_ts is not None


def test_partly_hidden_parked_car_is_not_a_departure() -> None:
    tracker = Tracker(TrackerConfig())
    rng = np.random.default_rng(6)
    car = simulate(tracker, parked(), 30.0, rng)[-1].items[0]
    right_third = (PARKED[0] + 135.0, PARKED[1], PARKED[2], PARKED[3])  # the rest is behind a van
    during = simulate(tracker, parked(right_third), 20.0, rng, start_s=30.0)
    after = simulate(tracker, parked(), 5.0, rng, start_s=50.0)
    for tracks in during + after:
        assert tracks.by_id()[car.track_id].stationary_since_ts == car.stationary_since_ts


@pytest.mark.parametrize(
    ("labels", "boxes", "tracks_expected"),
    [
        # The real YOLOX-Nano reports the parked car in frigate-cctv as car 0.75 and truck 0.48.
        (["car", "truck"], [(112, 63, 264, 124), (118, 64, 267, 124)], 1),
        (["car", "person"], [(112, 63, 264, 124), (118, 64, 267, 124)], 2),  # different groups: two objects
        (["car", "car"], [(100, 60, 200, 120), (210, 60, 310, 120)], 2),  # side by side: two cars
    ],
)
def test_one_object_reported_as_two_compatible_classes_is_one_track(
    labels: list[str], boxes: list[tuple[int, int, int, int]], tracks_expected: int
) -> None:
    tracker = Tracker(TrackerConfig())
    tracks = None
    for step in range(6):
        tracks = tracker.update(
            make_detections(boxes, scores=[0.75, 0.48], labels=labels), step * 0.2, (1280, 720)
        )
    assert tracks is not None and len(tracks.items) == tracks_expected
    if tracks_expected == 1:
        assert tracks.items[0].label == "car"

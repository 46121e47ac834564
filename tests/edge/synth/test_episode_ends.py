"""Episodes end when their object leaves, not when the video does: the rules on a synth scene's truth.

The ground-truth boxes (a perfect detector) go through the edge's tracker, zones and rules. The
tracker carries a vanished stationary object's track for ``stationary_max_age_s`` (60 s) hoping to
re-identify it; the episode must end all the same once the object has been unseen for the end
grace (``rules.end_grace_s``, the parking and vending zones' clear dwell).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from curbwatch.edge.events import EventBuilder
from curbwatch.edge.pipeline import PipelineParts
from curbwatch.edge.replay import replay
from curbwatch.schema.detlog import LoggedFrame
from curbwatch.schema.events import EndReason, EventType, EventV1
from curbwatch.schema.zones import Violation, ZoneFile
from tests.edge.synth import truth_log, truth_of

END_SLACK_S = 2.0  # stated tolerance beyond the clear dwell of an episode's end against the truth
SCOOTER_LEAVES_T = 80.0
JUDGED = {Violation.ILLEGAL_PARKING, Violation.ILLEGAL_PARKING_TWO_WHEELER, Violation.UNLICENSED_VENDING}


def scooter_leaves(truth: dict[str, Any], at_t: float) -> dict[str, Any]:
    """The truth with the hatch scooter gone from ``at_t`` on.

    The generated scooter stays to the end of the video, so this is the only way a replay of the
    truth sees a two-wheeler episode end. It vanishes rather than rides off, like a packed-up stall:
    the tracker then has no departure to notice and carries the track on.
    """
    truth = copy.deepcopy(truth)
    (episode,) = [e for e in truth["episodes"] if e["kind"] == Violation.ILLEGAL_PARKING_TWO_WHEELER]
    gone = set(episode["track_ids"])
    for frame in truth["frames"]:
        if frame["t"] >= at_t:
            frame["boxes"] = [box for box in frame["boxes"] if box["track_id"] not in gone]
    episode.update(end_t=at_t, open_at_end=False)
    return truth


def replay_timed(truth: dict[str, Any], zones: ZoneFile) -> list[tuple[float, EventV1]]:
    """Each event of the replay with the scene time of the frame that produced it."""
    now_t = 0.0

    def frames() -> Iterator[LoggedFrame]:
        nonlocal now_t
        for frame, logged in zip(truth["frames"], truth_log(truth, zones), strict=True):
            now_t = frame["t"]
            yield logged

    events = replay(frames(), zones, PipelineParts(), EventBuilder("synth-test", zones, model=None))
    return [(now_t, event) for event in events]


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_episodes_end_a_clear_dwell_after_their_object_leaves(seed: int) -> None:
    truth, zones = truth_of(120.0, seed, frame_wh=(960, 540))
    truth = scooter_leaves(truth, SCOOTER_LEAVES_T)
    clear_dwell_s = PipelineParts().rules.end_grace_s
    frame_s = 1.0 / truth["fps"]
    timed = replay_timed(truth, zones)
    starts = [event for _, event in timed if event.type is EventType.START]
    ends = {event.episode_id: (now_t, event) for now_t, event in timed if event.type is EventType.END}
    closed = [e for e in truth["episodes"] if e["kind"] in JUDGED and not e["open_at_end"]]
    assert {episode["kind"] for episode in closed} == JUDGED

    for episode in closed:
        what = f"seed {seed} {episode['what']}"
        (start,) = [s for s in starts if (s.zone, s.violation) == (episode["zone"], episode["kind"])]
        emitted_t, end = ends[start.episode_id]
        end_t = end.ts.timestamp() - truth["start_ts"]
        assert end.end_reason is EndReason.LEFT, what
        # Stamped with the last time the object was seen there: not before it left, and within
        # the clear dwell after (the synth's stall packs up over a few seconds after end_t).
        assert episode["end_t"] - frame_s - 1e-6 <= end_t <= episode["end_t"] + clear_dwell_s + END_SLACK_S, (
            what
        )
        # Sent once the object has been unseen for the clear dwell: no sooner, and no later.
        assert emitted_t == pytest.approx(end_t + clear_dwell_s, abs=frame_s + 1e-6), what

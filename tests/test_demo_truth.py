"""Matching filed cases to the generated streets' violation episodes (``curbwatch.demo_truth``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curbwatch.demo_truth import FiledCase, TruthEpisode, episodes_from_truth, match_cases

T0 = 1_800_000_000.0


def episode(
    eid: str, zone: str = "kerb", code: str = "0505", start: float = 10, end: float = 70
) -> TruthEpisode:
    return TruthEpisode(f"cam-1/{eid}", "cam-1", zone, code, T0 + start, T0 + end)


def case(
    cid: str,
    zone: str = "kerb",
    code: str = "0505",
    opened: float = 11,
    last: float = 45,
    camera: str = "cam-1",
) -> FiledCase:
    return FiledCase(cid, camera, zone, code, T0 + opened, T0 + last)


def test_one_case_per_episode_is_perfect() -> None:
    episodes = [episode("ep-1"), episode("ep-2", "bin-site", "0102", 60, 120)]
    result = match_cases(episodes, [case("c1"), case("c2", "bin-site", "0102", 80, 120)])
    assert result.perfect
    assert result.matched == {"cam-1/ep-1": "c1", "cam-1/ep-2": "c2"}


def test_a_missed_episode_is_reported() -> None:
    episodes = [episode("ep-1"), episode("ep-2", "bin-site", "0102", 60, 120)]
    result = match_cases(episodes, [case("c1")])
    assert not result.perfect
    assert [e.episode_id for e in result.missed] == ["cam-1/ep-2"]
    assert "missed: cam-1/ep-2" in result.summary()


def test_two_cases_for_one_episode_are_a_duplicate() -> None:
    result = match_cases([episode("ep-1")], [case("c1", last=30), case("c2", opened=40, last=70)])
    assert not result.perfect
    assert result.duplicated == {"cam-1/ep-1": ["c1", "c2"]}
    assert result.matched == {}
    assert "duplicated: cam-1/ep-1 -> cases c1, c2" in result.summary()


@pytest.mark.parametrize(
    "extra",
    [
        case("x", opened=80, last=110),  # after the episode ended
        case("x", zone="hatch"),  # another zone
        case("x", code="0506"),  # another violation
        case("x", camera="cam-2"),  # another camera
    ],
    ids=["later", "zone", "code", "camera"],
)
def test_a_case_without_an_episode_is_unmatched(extra: FiledCase) -> None:
    result = match_cases([episode("ep-1")], [case("c1"), extra])
    assert not result.perfect
    assert result.unmatched == [extra]
    assert result.matched == {"cam-1/ep-1": "c1"}
    assert "unmatched case: x" in result.summary()


def test_a_case_spanning_two_episodes_counts_for_the_one_it_overlaps_most() -> None:
    episodes = [episode("ep-1", start=0, end=20), episode("ep-2", start=25, end=90)]
    result = match_cases(episodes, [case("c1", opened=15, last=80)])
    assert result.matched == {"cam-1/ep-2": "c1"}
    assert [e.episode_id for e in result.missed] == ["cam-1/ep-1"]


def test_episodes_take_their_zones_event_codes_and_the_runs_start_time(tmp_path: Path) -> None:
    zones = tmp_path / "street.yaml"
    zones.write_text(
        "version: 1\ncamera: street-9\nframe_wh: [96, 54]\ntimezone: Asia/Shanghai\nzones:\n"
        "  - name: kerb\n    kind: no_parking\n    polygon: [[0, 30], [96, 30], [96, 40], [0, 40]]\n"
        "    min_dwell_s: 30\n    event_codes: {illegal_parking: {code: '9999', name: local code}}\n"
        "  - name: hatch\n    kind: no_parking\n    polygon: [[0, 40], [96, 40], [96, 54], [0, 54]]\n"
        "    min_dwell_s: 30\n",
        encoding="utf-8",
    )
    truth = tmp_path / "street.json"
    truth.write_text(
        json.dumps(
            {
                "episodes": [
                    {"id": "ep-1", "kind": "illegal_parking", "zone": "kerb", "start_t": 12.0, "end_t": 76.8},
                    {
                        "id": "ep-4",
                        "kind": "illegal_parking_two_wheeler",
                        "zone": "hatch",
                        "start_t": 6.0,
                        "end_t": 119.8,
                    },
                ]
            }
        ),
        encoding="utf-8",
    )
    assert episodes_from_truth(truth, zones, T0) == [
        TruthEpisode("street-9/ep-1", "street-9", "kerb", "9999", T0 + 12.0, T0 + 76.8),
        TruthEpisode("street-9/ep-4", "street-9", "hatch", "0506", T0 + 6.0, T0 + 119.8),
    ]

"""Cases against ground truth: did every violation episode of a generated street become one case?

The scene generator's truth (``curbwatch.synth.v1``) lists each violation episode with its zone,
its kind and its times from the first frame; the server files cases with a camera, a zone, an
event code and the times of their first and last event. A case *covers* an episode when camera,
zone and event code agree and the two time spans overlap. :func:`match_cases` says which episodes
no case covers (missed), which several cases cover (duplicated) and which cases cover no episode
(unmatched): the demo is right when all three are empty.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from curbwatch.schema.zones import RuleZone, Violation


@dataclass(frozen=True)
class TruthEpisode:
    """A violation episode of a generated street, in wall time (epoch seconds)."""

    episode_id: str
    camera_id: str
    zone: str
    event_code: str
    start_ts: float
    end_ts: float


@dataclass(frozen=True)
class FiledCase:
    """A case as the server filed it, in wall time (epoch seconds)."""

    case_id: str
    camera_id: str
    zone: str
    event_code: str
    opened_ts: float
    last_event_ts: float


@dataclass(frozen=True)
class TruthMatch:
    """How the filed cases line up with the truth.

    Attributes:
        matched: Episode id -> the one case that covers it.
        missed: Episodes no case covers.
        duplicated: Episode id -> the cases (two or more) that each cover it.
        unmatched: Cases that cover no episode.
    """

    matched: dict[str, str] = field(default_factory=dict)
    missed: list[TruthEpisode] = field(default_factory=list)
    duplicated: dict[str, list[str]] = field(default_factory=dict)
    unmatched: list[FiledCase] = field(default_factory=list)

    @property
    def perfect(self) -> bool:
        """Every episode became exactly one case and every case is an episode."""
        return not (self.missed or self.duplicated or self.unmatched)

    def summary(self) -> str:
        """One line per finding, for test failures and the demo's closing report."""
        lines = [f"{len(self.matched)} episodes matched one case each"]
        lines += [
            f"missed: {e.episode_id} ({e.event_code} in {e.zone}, {e.start_ts:.1f}-{e.end_ts:.1f})"
            for e in self.missed
        ]
        lines += [f"duplicated: {eid} -> cases {', '.join(ids)}" for eid, ids in self.duplicated.items()]
        lines += [
            f"unmatched case: {c.case_id} ({c.camera_id} {c.event_code} in {c.zone}, "
            f"{c.opened_ts:.1f}-{c.last_event_ts:.1f})"
            for c in self.unmatched
        ]
        return "\n".join(lines)


def episodes_from_truth(truth_path: Path, zones_path: Path, start_ts: float) -> list[TruthEpisode]:
    """The violation episodes of one generated street, timed from ``start_ts`` (its first frame).

    The event code of each episode is the one its zone files that kind of violation under.
    """
    from curbwatch.schema.zones import load_zone_file

    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    zone_file = load_zone_file(zones_path)
    zones = {zone.name: zone for zone in zone_file.zones if isinstance(zone, RuleZone)}
    return [
        TruthEpisode(
            episode_id=f"{zone_file.camera}/{episode['id']}",
            camera_id=zone_file.camera,
            zone=episode["zone"],
            event_code=zone_file.event_code(zones[episode["zone"]], Violation(episode["kind"])).code,
            start_ts=start_ts + episode["start_t"],
            end_ts=start_ts + episode["end_t"],
        )
        for episode in truth["episodes"]
    ]


def cases_from_database(database_url: str) -> list[FiledCase]:
    """Every case in the server's database."""
    from sqlalchemy import select

    from curbwatch.server.db import as_utc, make_engine
    from curbwatch.server.tables import Case

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Case)).all()
    finally:
        engine.dispose()
    return [
        FiledCase(
            case_id=row.id,
            camera_id=row.camera_id,
            zone=row.zone,
            event_code=row.event_code,
            opened_ts=as_utc(row.opened_at).timestamp(),
            last_event_ts=as_utc(row.last_event_at).timestamp(),
        )
        for row in rows
    ]


def _overlap_s(case: FiledCase, episode: TruthEpisode) -> float:
    return min(case.last_event_ts, episode.end_ts) - max(case.opened_ts, episode.start_ts)


def match_cases(episodes: list[TruthEpisode], cases: list[FiledCase]) -> TruthMatch:
    """Match cases to episodes; a case covering several episodes counts for the one it overlaps most."""
    covering: dict[str, list[str]] = defaultdict(list)
    unmatched = []
    for case in cases:
        candidates = [
            (_overlap_s(case, episode), episode.episode_id)
            for episode in episodes
            if (episode.camera_id, episode.zone, episode.event_code)
            == (case.camera_id, case.zone, case.event_code)
            and _overlap_s(case, episode) >= 0
        ]
        if not candidates:
            unmatched.append(case)
            continue
        covering[max(candidates)[1]].append(case.case_id)
    return TruthMatch(
        matched={eid: ids[0] for eid, ids in covering.items() if len(ids) == 1},
        missed=[episode for episode in episodes if episode.episode_id not in covering],
        duplicated={eid: ids for eid, ids in covering.items() if len(ids) > 1},
        unmatched=unmatched,
    )

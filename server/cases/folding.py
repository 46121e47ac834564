"""Folds violation events into cases: one case per violation, however many episodes it took.

An episode's start, updates and end all land on the case that holds its ``episode_id``. A new
episode at the same place (device, camera and zone), of the same violation, that starts within
:attr:`FoldingConfig.attach_within_s` of an open case's last event is the same violation seen again
(a car briefly hidden by a bus, a vendor who stepped away) and attaches to that case; anything else
opens a new case awaiting verification, with an ``open_case`` audit entry.

:func:`fold_events` files a batch (the ingest worker's) with a few statements for the whole batch:
the cases its episodes and places already have are read once, then each event is decided in batch
order against those plus the cases the batch itself opened, and the links go in with one insert.
:func:`fold_event` is the same for one event.

Concurrent folders: the look-ups and the inserts run under per-place locks (transaction-scoped
advisory locks keyed on device, camera and zone on PostgreSQL, the database write lock on SQLite),
taken before anything is read and in one global order, so two workers folding episodes of the same
place can neither both open a case nor deadlock. ``case_events.event_id`` is the primary key, so an
event folded twice is found and left alone.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, text, tuple_
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventV1
from curbwatch.server.audit import SYSTEM_ROLE, AuditDraft, append_audit_entries
from curbwatch.server.cases.workflow import TERMINAL_STATES, CaseStatus
from curbwatch.server.db import as_utc
from curbwatch.server.tables import Case, CaseEvent

if TYPE_CHECKING:
    from curbwatch.server.config import GridConfig

logger = logging.getLogger(__name__)

OPEN_CASE_ACTION = "open_case"


class FoldingError(Exception):
    """An event cannot be folded into a case."""


class FoldingConfig(BaseModel):
    """How events fold into cases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attach_within_s: float = Field(
        default=600,
        ge=0,
        title="Re-attach window",
        description=(
            "A new episode at the same camera and zone, of the same violation, whose start is within "
            "this many seconds of an open case's last event joins that case instead of opening another."
        ),
    )


Place = tuple[str, str, str]
"""Device, camera and zone: camera ids are only unique within one device."""


def place_of(event: EventV1) -> Place:
    """Where ``event`` happened, as folding keys it."""
    return event.device_id, event.camera_id, event.zone


def _lock_key(place: Place) -> int:
    digest = hashlib.sha256("\0".join(("case", *place)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_places(session: Session, places: Iterable[Place]) -> None:
    """Take the fold locks of ``places`` now, in one global order (by key), in one statement.

    A transaction that then folds events of those places waits for no lock while holding another
    one, so it cannot deadlock with another transaction that did the same.
    """
    keys = sorted({_lock_key(place) for place in places})
    if not keys:
        return
    if session.get_bind().dialect.name == "postgresql":
        # unnest keeps the array's order, so the locks are taken in sorted order.
        session.execute(
            text("SELECT pg_advisory_xact_lock(key) FROM unnest(CAST(:keys AS bigint[])) AS key"),
            {"keys": keys},
        )
    else:
        session.execute(text("UPDATE cases SET id = id WHERE 1 = 0"))


def _new_case(event: EventV1, at: datetime, grid: GridConfig | None) -> Case:
    lat, lon = event.location if event.location is not None else (None, None)
    grid_cell = grid.cell_of(*event.location) if grid is not None and event.location is not None else None
    return Case(
        id=uuid.uuid4().hex,
        status=CaseStatus.AWAITING_VERIFICATION.value,
        event_code=event.event_code,
        event_name=event.event_name,
        rule=event.rule.value,
        violation=event.violation.value,
        device_id=event.device_id,
        camera_id=event.camera_id,
        zone=event.zone,
        location_lat=lat,
        location_lon=lon,
        grid_cell=grid_cell,
        first_episode_id=event.episode_id,
        episode_ids=[event.episode_id],
        opened_at=event.episode_start,
        last_event_at=event.ts,
        created_at=at,
        updated_at=at,
    )


class _BatchFolder:
    """The cases one batch can touch, read once under the place locks, and kept current as it folds."""

    def __init__(self, session: Session, events: Sequence[EventV1], config: FoldingConfig) -> None:
        self._session = session
        self._window = timedelta(seconds=config.attach_within_s)
        ids, episodes = {e.event_id for e in events}, {e.episode_id for e in events}
        rows = session.execute(
            select(CaseEvent.event_id, CaseEvent.case_id).where(CaseEvent.event_id.in_(ids))
        )
        self.folded: dict[str, str] = {event_id: case_id for event_id, case_id in rows}
        rows = session.execute(
            select(CaseEvent.episode_id, CaseEvent.case_id).where(CaseEvent.episode_id.in_(episodes))
        )
        self.by_episode: dict[str, str] = {episode_id: case_id for episode_id, case_id in rows}
        # The open cases at the batch's places, by place and violation: the ones a new episode may join.
        self.open: dict[tuple[Place, str], list[Case]] = defaultdict(list)
        places = {place_of(e) for e in events}
        open_cases = session.scalars(
            select(Case).where(
                tuple_(Case.device_id, Case.camera_id, Case.zone).in_(places),
                Case.status.not_in([s.value for s in TERMINAL_STATES]),
            )
        ).all()
        for case in open_cases:
            self.open[((case.device_id, case.camera_id, case.zone), case.violation)].append(case)
        wanted = (set(self.folded.values()) | set(self.by_episode.values())) - {c.id for c in open_cases}
        self.cases: dict[str, Case] = {c.id: c for c in open_cases}
        if wanted:
            self.cases |= {c.id: c for c in session.scalars(select(Case).where(Case.id.in_(wanted)))}
        self.links: list[dict[str, Any]] = []
        self.audits: list[AuditDraft] = []

    def fold(self, event: EventV1, at: datetime, grid: GridConfig | None) -> Case:
        known = self.folded.get(event.event_id)
        if known is not None:
            logger.debug("event %s already folded into case %s", event.event_id, known)
            return self.cases[known]
        episode_case = self.by_episode.get(event.episode_id)
        case = self.cases[episode_case] if episode_case is not None else None
        if case is None:
            case = self._case_to_join(event)
            if case is not None:
                # A fresh list: the JSON column does not track in-place changes.
                case.episode_ids = [*case.episode_ids, event.episode_id]
                logger.info("episode %s joins open case %s", event.episode_id, case.id)
        if case is None:
            case = self._open_case(event, at, grid)
        else:
            case.last_event_at = max(as_utc(case.last_event_at), event.ts)
            case.updated_at = at
        self.folded[event.event_id] = self.by_episode[event.episode_id] = case.id
        self.links.append(
            {
                "event_id": event.event_id,
                "case_id": case.id,
                "episode_id": event.episode_id,
                "type": event.type.value,
                "ts": event.ts,
            }
        )
        return case

    def _case_to_join(self, event: EventV1) -> Case | None:
        """The open case at the event's place whose last event is close enough to the episode's start."""
        candidates = self.open[(place_of(event), event.violation.value)]
        # Compared in Python: few cases are open at one place, and SQLite stores times as text.
        near = [c for c in candidates if event.episode_start - as_utc(c.last_event_at) <= self._window]
        return max(near, key=lambda c: as_utc(c.last_event_at), default=None)

    def _open_case(self, event: EventV1, at: datetime, grid: GridConfig | None) -> Case:
        case = _new_case(event, at, grid)
        self._session.add(case)
        self.audits.append(
            AuditDraft(
                case_id=case.id,
                action=OPEN_CASE_ACTION,
                actor=f"edge:{event.device_id}",
                role=SYSTEM_ROLE,
                at=at,
                from_state=None,
                to_state=case.status,
                details={"episode_id": event.episode_id, "event_id": event.event_id},
            )
        )
        self.cases[case.id] = case
        self.open[(place_of(event), case.violation)].append(case)
        logger.info(
            "opened case %s for episode %s at %s/%s", case.id, event.episode_id, event.camera_id, event.zone
        )
        return case


def fold_events(
    session: Session,
    arrivals: Sequence[tuple[EventV1, datetime]],
    *,
    config: FoldingConfig,
    grid: GridConfig | None = None,
) -> list[Case]:
    """File each event under its case, in order, in the caller's transaction (which must commit it).

    Exactly as if each event were folded alone, one after the other: an episode's start in the
    batch opens the case its update later in the batch joins.

    Args:
        session: The session whose transaction stores the cases and the links.
        arrivals: Violation events (starts, updates or ends of episodes), each with the time it is
            folded (the case's ``created_at``/``updated_at`` and the audit time; timezone-aware).
        config: The re-attach window.
        grid: The city grid; a case opened from an event with a location gets its cell. None: no cell.

    Returns:
        The case of each event, in order (unchanged for an event folded before).

    Raises:
        FoldingError: A fold time is naive.
    """
    if any(at.tzinfo is None for _, at in arrivals):
        raise FoldingError("fold time must be timezone-aware")
    if not arrivals:
        return []
    events = [event for event, _ in arrivals]
    lock_places(session, (place_of(event) for event in events))
    folder = _BatchFolder(session, events, config)
    cases = [folder.fold(event, as_utc(at), grid) for event, at in arrivals]
    session.flush()  # the new cases first: the links refer to them
    append_audit_entries(session, folder.audits)
    if folder.links:
        session.execute(insert(CaseEvent), folder.links)
    return cases


def fold_event(
    session: Session,
    event: EventV1,
    *,
    config: FoldingConfig,
    at: datetime,
    grid: GridConfig | None = None,
) -> Case:
    """File one event under its case (see :func:`fold_events`); its case.

    Raises:
        FoldingError: ``at`` is naive.
    """
    return fold_events(session, [(event, at)], config=config, grid=grid)[0]

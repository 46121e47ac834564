"""Folds violation events into cases: one case per violation, however many episodes it took.

An episode's start, updates and end all land on the case that holds its ``episode_id``. A new
episode at the same camera and zone, of the same violation, that starts within
:attr:`FoldingConfig.attach_within_s` of an open case's last event is the same violation seen again
(a car briefly hidden by a bus, a vendor who stepped away) and attaches to that case; anything else
opens a new case awaiting verification, with an ``open_case`` audit entry.

Concurrent folders: the look-up and the insert run under a per-place lock (a transaction-scoped
advisory lock keyed on camera and zone on PostgreSQL, the database write lock on SQLite), so two
workers folding episodes of the same place cannot both open a case. ``case_events.event_id`` is
the primary key, so an event folded twice is found and left alone.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventV1
from curbwatch.server.audit import append_audit
from curbwatch.server.cases.workflow import TERMINAL_STATES, CaseStatus
from curbwatch.server.tables import Case, CaseEvent

logger = logging.getLogger(__name__)

OPEN_CASE_ACTION = "open_case"
SYSTEM_ROLE = "system"


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


def _utc(at: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _lock_place(session: Session, camera_id: str, zone: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"case\0{camera_id}\0{zone}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        session.execute(text("UPDATE cases SET id = id WHERE 1 = 0"))


def _case_of_episode(session: Session, episode_id: str) -> Case | None:
    case_id = session.scalar(select(CaseEvent.case_id).where(CaseEvent.episode_id == episode_id).limit(1))
    return session.get(Case, case_id) if case_id is not None else None


def _case_to_join(session: Session, event: EventV1, window: timedelta) -> Case | None:
    """The open case at the event's place whose last event is close enough to the episode's start."""
    candidates = session.scalars(
        select(Case).where(
            Case.camera_id == event.camera_id,
            Case.zone == event.zone,
            Case.violation == event.violation,
            Case.status.not_in([s.value for s in TERMINAL_STATES]),
        )
    ).all()
    # Compared in Python: few cases are open at one place, and SQLite stores times as text.
    near = [c for c in candidates if event.episode_start - _utc(c.last_event_at) <= window]
    return max(near, key=lambda c: _utc(c.last_event_at), default=None)


def _open_case(session: Session, event: EventV1, at: datetime) -> Case:
    lat, lon = event.location if event.location is not None else (None, None)
    case = Case(
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
        first_episode_id=event.episode_id,
        episode_ids=[event.episode_id],
        opened_at=event.episode_start,
        last_event_at=event.ts,
        created_at=at,
        updated_at=at,
    )
    session.add(case)
    session.flush()
    append_audit(
        session,
        case_id=case.id,
        action=OPEN_CASE_ACTION,
        actor=f"edge:{event.device_id}",
        role=SYSTEM_ROLE,
        at=at,
        from_state=None,
        to_state=case.status,
        details={"episode_id": event.episode_id, "event_id": event.event_id},
    )
    logger.info(
        "opened case %s for episode %s at %s/%s", case.id, event.episode_id, event.camera_id, event.zone
    )
    return case


def fold_event(session: Session, event: EventV1, *, config: FoldingConfig, at: datetime) -> Case:
    """File ``event`` under its case, in the caller's transaction (which must commit it).

    Args:
        session: The session whose transaction stores the case and the link.
        event: A violation event (start, update or end of an episode).
        config: The re-attach window.
        at: Now; the case's ``created_at``/``updated_at`` and the audit time. Timezone-aware.

    Returns:
        The case the event now belongs to (unchanged when the event was folded before).

    Raises:
        FoldingError: ``at`` is naive.
    """
    if at.tzinfo is None:
        raise FoldingError("fold time must be timezone-aware")
    at = _utc(at)
    _lock_place(session, event.camera_id, event.zone)
    known = session.get(CaseEvent, event.event_id)
    if known is not None:
        logger.debug("event %s already folded into case %s", event.event_id, known.case_id)
        case = session.get(Case, known.case_id)
        assert case is not None  # the foreign key guarantees it
        return case
    case = _case_of_episode(session, event.episode_id)
    if case is None:
        case = _case_to_join(session, event, timedelta(seconds=config.attach_within_s))
        if case is not None:
            # A fresh list: the JSON column does not track in-place changes.
            case.episode_ids = [*case.episode_ids, event.episode_id]
            logger.info("episode %s joins open case %s", event.episode_id, case.id)
    if case is None:
        case = _open_case(session, event, at)
    else:
        case.last_event_at = max(_utc(case.last_event_at), event.ts)
        case.updated_at = at
    session.add(
        CaseEvent(
            event_id=event.event_id,
            case_id=case.id,
            episode_id=event.episode_id,
            type=event.type.value,
            ts=event.ts,
        )
    )
    session.flush()
    return case

"""Read side of cases: the filtered, paged list, one case in full, and who may see which evidence.

Nothing here writes. The list is keyset-paged on ``(created_at, id)`` (oldest first), so a page
costs the same at the millionth case as at the first and a case filed meanwhile never shifts a
page; the cursor is opaque to clients. Each page is two queries whatever its size: the cases, then
the thumbnail of each. Thumbnails and who may see an image come from ``evidence_refs`` (filed
with the events at ingest) by index, not from searching the event documents.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, func, not_, or_, select
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventV1, EvidenceRefV1, EvidenceRole
from curbwatch.server.cases import workflow
from curbwatch.server.cases.service import CaseNotFound, case_state
from curbwatch.server.cases.workflow import Action, CaseStatus, Role
from curbwatch.server.db import as_utc
from curbwatch.server.tables import AuditLog, Case, CaseCheck, CaseEvent, Event, EvidenceRef

logger = logging.getLogger(__name__)

RESTRICTED_EVIDENCE_ROLE = Role.SUPERVISOR
"""Lowest role that sees restricted originals (unblurred faces and plates)."""
MAX_PAGE_SIZE = 200


class CursorInvalid(ValueError):
    """A page cursor that this server did not hand out."""


@dataclass(frozen=True)
class CaseFilters:
    """What the case list is narrowed to; ``None`` means any.

    Attributes:
        status: Workflow status (``awaiting_verification`` is the review queue).
        camera_id: Camera the case was seen by.
        rule: Edge rule that raised it.
        zone: Zone name at the camera.
        event_code: City event code.
        overdue: Only overdue cases (True) or only cases that are not (False), as of the query time.
        created_after: Only cases opened on the server strictly after this time.
    """

    status: CaseStatus | None = None
    camera_id: str | None = None
    rule: str | None = None
    zone: str | None = None
    event_code: str | None = None
    overdue: bool | None = None
    created_after: datetime | None = None


@dataclass(frozen=True)
class CaseListItem:
    """A case as the list shows it.

    Attributes:
        case: The stored case.
        thumbnail_sha256: The first annotated image of its first event, if any.
    """

    case: Case
    thumbnail_sha256: str | None


@dataclass(frozen=True)
class CasePage:
    """One page of the case list; ``next_cursor`` is None on the last page."""

    items: list[CaseListItem]
    next_cursor: str | None


@dataclass(frozen=True)
class CaseEventView:
    """An event of a case; ``document`` is None when the event row is missing or unreadable."""

    event_id: str
    type: str
    ts: datetime
    episode_id: str
    document: EventV1 | None


@dataclass(frozen=True)
class EvidenceView:
    """An evidence image of a case and the event that referenced it first."""

    ref: EvidenceRefV1
    event_id: str


@dataclass(frozen=True)
class CaseDetailView:
    """Everything the case page shows, as seen by one role."""

    item: CaseListItem
    events: list[CaseEventView]
    evidence: list[EvidenceView]
    timeline: list[AuditLog]
    checks: list[CaseCheck]
    allowed_actions: list[Action]


def encode_cursor(created_at: datetime, case_id: str) -> str:
    """The opaque cursor pointing just after the case ``(created_at, case_id)``."""
    raw = json.dumps([as_utc(created_at).isoformat(), case_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor encodes.

    Raises:
        CursorInvalid: The cursor was not made by :func:`encode_cursor`.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, case_id = json.loads(raw)
        at = datetime.fromisoformat(created_at)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise CursorInvalid(f"cursor {cursor[:40]!r} is not one this server handed out") from None
    if at.tzinfo is None or not isinstance(case_id, str):
        raise CursorInvalid(f"cursor {cursor[:40]!r} is not one this server handed out")
    return as_utc(at), case_id


def overdue_condition(at: datetime) -> ColumnElement[bool]:
    """SQL form of :func:`~curbwatch.server.cases.service.is_overdue` (never NULL, so it negates).

    Past its deadline: still open (not void) after it, or closed after it.
    """
    return and_(
        Case.deadline.is_not(None),
        or_(
            and_(Case.closed_at.is_not(None), Case.closed_at > Case.deadline),
            and_(
                Case.closed_at.is_(None),
                Case.status != CaseStatus.VOID.value,
                Case.deadline < as_utc(at),
            ),
        ),
    )


def _conditions(filters: CaseFilters, at: datetime) -> list[ColumnElement[bool]]:
    equal = (
        (Case.status, filters.status.value if filters.status else None),
        (Case.camera_id, filters.camera_id),
        (Case.rule, filters.rule),
        (Case.zone, filters.zone),
        (Case.event_code, filters.event_code),
    )
    conditions = [column == value for column, value in equal if value is not None]
    if filters.created_after is not None:
        conditions.append(Case.created_at > as_utc(filters.created_after))
    if filters.overdue is not None:
        overdue = overdue_condition(at)
        conditions.append(overdue if filters.overdue else not_(overdue))
    return conditions


def _after(cursor: str) -> ColumnElement[bool]:
    created_at, case_id = decode_cursor(cursor)
    # The leading range on created_at alone lets the (…, created_at) indexes bound the scan.
    return and_(
        Case.created_at >= created_at,
        or_(Case.created_at > created_at, Case.id > case_id),
    )


def _event_of(document: dict[str, Any] | None, event_id: str) -> EventV1 | None:
    if document is None:
        return None
    try:
        return EventV1.model_validate(document)
    except ValidationError as exc:
        # Stored documents were valid at ingest; one that no longer parses must not break the page.
        logger.warning("event %s: stored document does not parse: %s", event_id, exc.error_count())
        return None


def _thumbnails(session: Session, case_ids: list[str]) -> dict[str, str]:
    """The thumbnail of each case that has one, in one query.

    A thumbnail is an annotated, unrestricted image of the case's first event. An edge lists one
    annotated frame per event; were there several, the least sha256 keeps the choice stable.
    """
    if not case_ids:
        return {}
    ranked = (
        select(
            CaseEvent.case_id,
            CaseEvent.event_id,
            func.row_number()
            .over(partition_by=CaseEvent.case_id, order_by=(CaseEvent.ts, CaseEvent.event_id))
            .label("n"),
        )
        .where(CaseEvent.case_id.in_(case_ids))
        .subquery()
    )
    rows = session.execute(
        select(ranked.c.case_id, func.min(EvidenceRef.sha256))
        .join(EvidenceRef, EvidenceRef.event_id == ranked.c.event_id)
        .where(
            ranked.c.n == 1,
            EvidenceRef.role == EvidenceRole.ANNOTATED.value,
            EvidenceRef.restricted.is_(False),
        )
        .group_by(ranked.c.case_id)
    )
    return {case_id: sha256 for case_id, sha256 in rows}


def list_cases(
    session: Session, filters: CaseFilters, *, at: datetime, limit: int = 50, cursor: str | None = None
) -> CasePage:
    """One page of cases matching ``filters``, oldest first.

    Args:
        session: A read session.
        filters: What to narrow the list to.
        at: Now, for the overdue filter.
        limit: Page size, 1 to :data:`MAX_PAGE_SIZE`.
        cursor: ``next_cursor`` of the page before; None for the first page.

    Raises:
        CursorInvalid: The cursor was not handed out by this server.
        ValueError: ``limit`` is out of range.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}, got {limit}")
    conditions = _conditions(filters, at)
    if cursor is not None:
        conditions.append(_after(cursor))
    # ix_cases_created_at_id serves the order; a status or camera narrows it through its own index.
    cases = list(
        session.scalars(select(Case).where(*conditions).order_by(Case.created_at, Case.id).limit(limit + 1))
    )
    more = len(cases) > limit
    cases = cases[:limit]
    thumbnails = _thumbnails(session, [c.id for c in cases])
    last = cases[-1] if cases else None
    return CasePage(
        items=[CaseListItem(c, thumbnails.get(c.id)) for c in cases],
        next_cursor=encode_cursor(last.created_at, last.id) if more and last is not None else None,
    )


def _events(session: Session, case_id: str) -> list[CaseEventView]:
    rows = session.execute(
        select(CaseEvent, Event.document)
        .outerjoin(Event, Event.event_id == CaseEvent.event_id)
        .where(CaseEvent.case_id == case_id)
        .order_by(CaseEvent.ts, CaseEvent.event_id)
    )
    return [
        CaseEventView(
            event_id=link.event_id,
            type=link.type,
            ts=as_utc(link.ts),
            episode_id=link.episode_id,
            document=_event_of(document, link.event_id),
        )
        for link, document in rows
    ]


def sees_restricted(role: Role) -> bool:
    """Whether ``role`` may see restricted originals."""
    return role.at_least(RESTRICTED_EVIDENCE_ROLE)


def _evidence(events: list[CaseEventView], role: Role) -> list[EvidenceView]:
    """Each image once, with the first event that referenced it; restricted ones only if allowed."""
    seen: set[str] = set()
    views: list[EvidenceView] = []
    for event in events:
        for ref in event.document.evidence if event.document else ():
            if ref.sha256 in seen or (ref.restricted and not sees_restricted(role)):
                continue
            seen.add(ref.sha256)
            views.append(EvidenceView(ref, event.event_id))
    return views


def case_detail(session: Session, case_id: str, *, role: Role) -> CaseDetailView:
    """One case with its events, evidence, audit timeline and checks, as ``role`` may see it.

    Raises:
        CaseNotFound: No case has ``case_id``.
    """
    case = session.get(Case, case_id)
    if case is None:
        raise CaseNotFound(f"no case {case_id!r}")
    events = _events(session, case_id)
    timeline = session.scalars(select(AuditLog).where(AuditLog.case_id == case_id).order_by(AuditLog.id))
    checks = session.scalars(
        select(CaseCheck).where(CaseCheck.case_id == case_id).order_by(CaseCheck.requested_at, CaseCheck.id)
    )
    return CaseDetailView(
        item=CaseListItem(case, _thumbnails(session, [case_id]).get(case_id)),
        events=events,
        evidence=_evidence(events, role),
        timeline=list(timeline),
        checks=list(checks),
        allowed_actions=workflow.allowed_actions(case_state(case), role),
    )


def evidence_restricted(session: Session, sha256: str) -> bool:
    """Whether an image is for :data:`RESTRICTED_EVIDENCE_ROLE` and above only.

    An image is open to every signed-in role only when events reference it and none of them as
    restricted (annotated frames, crops). Anything else is restricted: clean originals, and images
    no event references, such as re-check snapshots. One lookup in ``ix_evidence_refs_sha256``.
    """
    flags = session.scalars(select(EvidenceRef.restricted).where(EvidenceRef.sha256 == sha256).distinct())
    return set(flags) != {False}

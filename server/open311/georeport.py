"""GeoReport v2 documents built from the case server's data: services, requests and status updates.

Services are the city's event codes; requests are *filed* cases (a camera report nobody has verified
yet, or one an operator voided, is never published); updates are the audited workflow transitions of
those cases. Times are ISO 8601 with the city's UTC offset. Evidence links come from a ``media_link``
function (sha256 to an absolute, signed URL) that the caller supplies, so this module stays free of
web and signing concerns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from curbwatch.schema.events import EvidenceRole
from curbwatch.schema.zones import RULE_OF_VIOLATION
from curbwatch.server.cases.workflow import CaseStatus
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.db import as_utc
from curbwatch.server.tables import AuditLog, Case, CaseCheck, CaseEvent, Event

MAX_SPAN = timedelta(days=90)  # the spec's default and largest date range
MAX_RESULTS = 1000  # the spec's default page of requests
CHECK_RECEIVED = "received"  # cases.checks.CheckStatus.RECEIVED, without importing the check service

MediaLink = Callable[[str], str]


class Open311Error(Exception):
    """A GeoReport error, answered as ``[{"code": ..., "description": ...}]``."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class ServiceOut(BaseModel):
    """One entry of ``services.json``."""

    service_code: str
    service_name: str
    description: str
    metadata: bool = False
    type: Literal["realtime", "batch", "blackbox"] = "realtime"
    keywords: str
    group: str


class ServiceDefinitionOut(BaseModel):
    """``services/{code}.json``: our services take no extra attributes."""

    service_code: str
    attributes: list[dict[str, object]] = Field(default_factory=list)


class RequestOut(BaseModel):
    """One service request (a filed case)."""

    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str | None
    service_name: str
    service_code: str
    description: str
    agency_responsible: str | None
    service_notice: str | None = None
    requested_datetime: str
    updated_datetime: str
    expected_datetime: str | None
    address: str
    lat: float | None
    long: float | None
    media_url: str | None


class UpdateOut(BaseModel):
    """One entry of the service-request-updates extension: a workflow step of a filed case."""

    update_id: str
    service_request_id: str
    status: Literal["open", "closed"]
    updated_datetime: str
    description: str
    media_url: str | None


@dataclass(frozen=True)
class RequestFilters:
    """The ``GET requests.json`` query, already split and checked (see :func:`date_window`)."""

    ids: tuple[str, ...] = ()
    service_codes: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    statuses: tuple[Literal["open", "closed"], ...] = ()


def iso(at: datetime | None, config: CaseServerConfig) -> str | None:
    """``at`` in the city's time zone, ISO 8601 with its offset."""
    if at is None:
        return None
    return as_utc(at).astimezone(ZoneInfo(config.calendar.timezone)).isoformat(timespec="seconds")


def date_window(
    start: datetime | None, end: datetime | None, now: datetime, config: CaseServerConfig
) -> tuple[datetime, datetime]:
    """The UTC range a query covers: the last 90 days unless given, never more than 90 days.

    Naive bounds are read in the city's time zone.

    Raises:
        Open311Error: ``end`` is before ``start`` or the range spans more than 90 days (400).
    """
    city = ZoneInfo(config.calendar.timezone)
    start, end = ((None if t is None else t if t.tzinfo else t.replace(tzinfo=city)) for t in (start, end))
    if start is not None and end is not None:
        if end < start:
            raise Open311Error(400, "end_date is before start_date")
        if end - start > MAX_SPAN:
            raise Open311Error(400, f"start_date to end_date spans more than {MAX_SPAN.days} days")
    elif start is not None:
        end = start + MAX_SPAN
    elif end is not None:
        start = end - MAX_SPAN
    else:
        start, end = now - MAX_SPAN, now
    return as_utc(start), as_utc(end)


def services(config: CaseServerConfig) -> list[ServiceOut]:
    """One service per configured event code, grouped by the camera rule that detects it."""
    seen: dict[str, ServiceOut] = {}
    for violation, entry in config.event_codes.items():
        if entry.code in seen:
            continue
        rule = RULE_OF_VIOLATION[violation].value
        seen[entry.code] = ServiceOut(
            service_code=entry.code,
            service_name=entry.name,
            description=f"{entry.name}: detected by a street camera and verified by an operator.",
            keywords=", ".join(dict.fromkeys([violation.value.replace("_", " "), rule.replace("_", " ")])),
            group=rule,
        )
    return list(seen.values())


def service_definition(config: CaseServerConfig, code: str) -> ServiceDefinitionOut:
    """The definition of service ``code``.

    Raises:
        Open311Error: ``code`` is not a configured event code (404).
    """
    if code not in {entry.code for entry in config.event_codes.values()}:
        raise Open311Error(404, f"no service with service_code {code!r}")
    return ServiceDefinitionOut(service_code=code)


def _published() -> Select[tuple[Case]]:
    # Filed means confirmed by an operator; a void case was never filed (reject is the only way there).
    return select(Case).where(Case.filed_at.is_not(None), Case.status != CaseStatus.VOID.value)


def case_statuses(config: CaseServerConfig, wanted: Sequence[str]) -> list[str]:
    """Our case statuses whose GeoReport status is one of ``wanted``."""
    return [status.value for status, mapped in config.open311.status_map.items() if mapped in wanted]


def find_requests(session: Session, filters: RequestFilters, config: CaseServerConfig) -> list[Case]:
    """Filed cases matching ``filters``, newest filing first, at most :data:`MAX_RESULTS`.

    Ids override every other filter, as the spec says.
    """
    query = _published()
    if filters.ids:
        query = query.where(Case.id.in_(filters.ids))
    else:
        if filters.service_codes:
            query = query.where(Case.event_code.in_(filters.service_codes))
        if filters.start is not None:
            query = query.where(Case.filed_at >= filters.start)
        if filters.end is not None:
            query = query.where(Case.filed_at <= filters.end)
        if filters.statuses:
            query = query.where(Case.status.in_(case_statuses(config, filters.statuses)))
    return list(session.scalars(query.order_by(Case.filed_at.desc(), Case.id).limit(MAX_RESULTS)))


def find_request(session: Session, case_id: str) -> Case:
    """One filed case.

    Raises:
        Open311Error: No filed case has ``case_id`` (404).
    """
    case = session.scalars(_published().where(Case.id == case_id)).one_or_none()
    if case is None:
        raise Open311Error(404, f"no service request {case_id!r}")
    return case


def annotated_evidence(session: Session, case_ids: Sequence[str]) -> dict[str, str]:
    """The first unrestricted annotated image (sha256) of each case, in event order; else absent."""
    found: dict[str, str] = {}
    if not case_ids:
        return found
    rows = session.execute(
        select(CaseEvent.case_id, Event.document)
        .join(Event, Event.event_id == CaseEvent.event_id)
        .where(CaseEvent.case_id.in_(case_ids))
        .order_by(Event.ts, Event.event_id)
    )
    for case_id, document in rows:
        if case_id in found:
            continue
        for item in document.get("evidence", []):
            # A signed link admits anyone: never one to a restricted original.
            if item.get("role") == EvidenceRole.ANNOTATED.value and not item.get("restricted", True):
                found[case_id] = item["sha256"]
                break
    return found


def _status_notes(case: Case) -> str:
    status = case.status.replace("_", " ")
    if case.status == CaseStatus.CLOSED.value:
        return f"closed ({case.outcome}, {case.closure_type})"
    if case.department and case.status != CaseStatus.FILED.value:
        return f"{status}; department: {case.department}"
    return status


def address_of(case: Case) -> str:
    """Where the case is, in words: camera and zone (and grid cell when known)."""
    place = f"camera {case.camera_id} / zone {case.zone}"
    return f"{place} / grid {case.grid_cell}" if case.grid_cell else place


def description_of(case: Case, config: CaseServerConfig) -> str:
    """The request text: what, where and since when."""
    return f"{case.event_name} at {address_of(case)}, seen since {iso(case.opened_at, config)}"


def request_out(
    case: Case, config: CaseServerConfig, evidence_sha256: str | None, media_link: MediaLink
) -> RequestOut:
    """The GeoReport view of a filed case."""
    assert case.filed_at is not None  # only filed cases are published
    return RequestOut(
        service_request_id=case.id,
        status=config.open311.open311_status(case.status),
        status_notes=_status_notes(case),
        service_name=config.code_names().get(case.event_code, case.event_name),
        service_code=case.event_code,
        description=description_of(case, config),
        agency_responsible=case.department,
        requested_datetime=iso(case.filed_at, config) or "",
        updated_datetime=iso(case.updated_at, config) or "",
        expected_datetime=iso(case.deadline, config),
        address=address_of(case),
        lat=case.location_lat,
        long=case.location_lon,
        media_url=media_link(evidence_sha256) if evidence_sha256 else None,
    )


def requests_out(
    session: Session, cases: Sequence[Case], config: CaseServerConfig, media_link: MediaLink
) -> list[RequestOut]:
    """:func:`request_out` for many cases, with one evidence query."""
    evidence = annotated_evidence(session, [case.id for case in cases])
    return [request_out(case, config, evidence.get(case.id), media_link) for case in cases]


def _update_text(row: AuditLog) -> str:
    text = f"{row.action.replace('_', ' ')}: now {(row.to_state or '').replace('_', ' ')}"
    department = (row.details or {}).get("department")
    if department:
        text += f", department {department}"
    return f"{text}; {row.reason}" if row.reason else text


def find_updates(
    session: Session, start: datetime, end: datetime, config: CaseServerConfig, media_link: MediaLink
) -> list[UpdateOut]:
    """Workflow transitions of filed cases between ``start`` and ``end`` (UTC), oldest first.

    An update's media_url is the newest check image (核查) received by then, if any: the picture of
    the street after handling.
    """
    published = _published().with_only_columns(Case.id)
    rows = list(
        session.scalars(
            select(AuditLog)
            .where(
                AuditLog.case_id.in_(published),
                AuditLog.from_state.is_not(None),
                AuditLog.to_state.is_not(None),
                AuditLog.at >= start,
                AuditLog.at <= end,
            )
            .order_by(AuditLog.at, AuditLog.id)
            .limit(MAX_RESULTS)
        )
    )
    images: dict[str, list[tuple[datetime, str]]] = {}
    for case_id, answered_at, sha256 in session.execute(
        select(CaseCheck.case_id, CaseCheck.answered_at, CaseCheck.evidence_sha256)
        .where(
            CaseCheck.case_id.in_({row.case_id for row in rows}),
            CaseCheck.status == CHECK_RECEIVED,
            CaseCheck.evidence_sha256.is_not(None),
            CaseCheck.answered_at.is_not(None),
        )
        .order_by(CaseCheck.answered_at)
    ):
        images.setdefault(case_id, []).append((as_utc(answered_at), sha256))
    updates = []
    for row in rows:
        seen = [
            sha256
            for answered_at, sha256 in images.get(row.case_id or "", [])
            if answered_at <= as_utc(row.at)
        ]
        updates.append(
            UpdateOut(
                update_id=str(row.id),
                service_request_id=row.case_id or "",
                status=config.open311.open311_status(row.to_state or ""),
                updated_datetime=iso(row.at, config) or "",
                description=_update_text(row),
                media_url=media_link(seen[-1]) if seen else None,
            )
        )
    return updates

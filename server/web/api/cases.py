"""Cases REST API: the city's vocabulary, the case list, one case, and workflow actions.

Reads go through ``server/cases/queries.py``; every action goes through
``server/cases/service.transition_case`` (or ``checks.request_check``, which calls it), so each
accepted action is one audited transition and a refused one writes nothing. Refusals map to HTTP
status codes in one table (:data:`ERROR_STATUS`). The request and response models are in
``case_schemas.py``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventType, UtcDatetime
from curbwatch.schema.zones import Rule
from curbwatch.server.cases import queries
from curbwatch.server.cases.checks import CheckCommand, CheckError, mark_check_failed, request_check
from curbwatch.server.cases.queries import (
    CaseDetailView,
    CaseEventView,
    CaseFilters,
    CaseListItem,
    CursorInvalid,
    EvidenceView,
)
from curbwatch.server.cases.service import CaseNotFound, CaseServiceError, is_overdue, transition_case
from curbwatch.server.cases.workflow import (
    Action,
    CaseStatus,
    ClosureType,
    DetailInvalid,
    IllegalTransition,
    Outcome,
    ReasonRequired,
    RejectReason,
    Role,
    RoleNotAllowed,
    WorkflowError,
)
from curbwatch.server.device_link import DeviceLinkError
from curbwatch.server.tables import CaseCheck
from curbwatch.server.web.api.case_schemas import (
    ERROR_RESPONSES,
    ActionIn,
    CaseDetail,
    CaseEventOut,
    CasePageOut,
    CaseSummary,
    CheckOut,
    EvidenceOut,
    MetaOut,
    Problem,
    TimelineEntry,
)
from curbwatch.server.web.api.evidence import evidence_link
from curbwatch.server.web.context import AppContext
from curbwatch.server.web.deps import Context, Db, Operator, Principal

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["cases"])

ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (CaseNotFound, status.HTTP_404_NOT_FOUND),
    (IllegalTransition, status.HTTP_409_CONFLICT),
    (RoleNotAllowed, status.HTTP_403_FORBIDDEN),
    (ReasonRequired, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (DetailInvalid, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (CheckError, status.HTTP_409_CONFLICT),
    (CaseServiceError, status.HTTP_409_CONFLICT),
)
"""Refusal -> HTTP status, first match wins (subclasses before their bases)."""


def _http_error(exc: Exception) -> HTTPException:
    code = next(code for kind, code in ERROR_STATUS if isinstance(exc, kind))
    return HTTPException(code, str(exc))


def _summary_fields(context: AppContext, item: CaseListItem, at: datetime) -> dict[str, Any]:
    case = item.case
    located = case.location_lat is not None and case.location_lon is not None
    return {
        # The columns named like the summary's fields, then the fields worked out from the case.
        **{name: getattr(case, name) for name in CaseSummary.model_fields if hasattr(case, name)},
        "location": (case.location_lat, case.location_lon) if located else None,
        "overdue": is_overdue(case, at),
        "episode_count": len(case.episode_ids),
        "thumbnail_url": evidence_link(context, item.thumbnail_sha256, signed=False)
        if item.thumbnail_sha256
        else None,
    }


def _event_out(event: CaseEventView) -> CaseEventOut:
    document = event.document
    return CaseEventOut(
        event_id=event.event_id,
        type=EventType(event.type),
        ts=event.ts,
        episode_id=event.episode_id,
        dwell_s=document.dwell_s if document else None,
        objects=list(document.objects) if document else [],
        model=document.model if document else None,
    )


def _evidence_out(context: AppContext, evidence: EvidenceView) -> EvidenceOut:
    ref = evidence.ref
    return EvidenceOut(
        **ref.model_dump(include={"sha256", "role", "width", "height", "track_id", "restricted"}),
        url=evidence_link(context, ref.sha256, signed=False),
        event_id=evidence.event_id,
    )


def _check_out(context: AppContext, check: CaseCheck, role: Role) -> CheckOut:
    # A check image is an unblurred original (see queries.evidence_restricted).
    visible = check.evidence_sha256 is not None and queries.sees_restricted(role)
    return CheckOut(
        id=check.id,
        status=check.status,
        requested_at=check.requested_at,
        requested_by=check.requested_by,
        answered_at=check.answered_at,
        evidence_url=evidence_link(context, check.evidence_sha256, signed=False) if visible else None,
        error=check.error,
    )


def _detail(context: AppContext, view: CaseDetailView, role: Role) -> CaseDetail:
    return CaseDetail(
        **_summary_fields(context, view.item, context.clock()),
        events=[_event_out(event) for event in view.events],
        evidence=[_evidence_out(context, evidence) for evidence in view.evidence],
        timeline=[TimelineEntry.model_validate(row) for row in view.timeline],
        checks=[_check_out(context, check, role) for check in view.checks],
        allowed_actions=view.allowed_actions,
        reject_reasons=list(RejectReason),
    )


@router.get("/meta", response_model=MetaOut, responses=ERROR_RESPONSES)
def meta(context: Context, _: Operator) -> MetaOut:
    """Event codes, departments, reasons, outcomes, closure types and roles of this city."""
    config = context.config
    return MetaOut(
        city=config.city,
        event_codes=config.code_names(),
        departments=list(config.departments),
        reject_reasons=list(RejectReason),
        outcomes=list(Outcome),
        closure_types=list(ClosureType),
        roles=list(Role),
    )


@router.get("/cases", response_model=CasePageOut, responses=ERROR_RESPONSES)
def list_cases(
    context: Context,
    session: Db,
    _: Operator,
    status_: Annotated[
        CaseStatus | None,
        Query(alias="status", description="Only this status; awaiting_verification is the review queue."),
    ] = None,
    camera_id: Annotated[str | None, Query(max_length=64, description="Only this camera.")] = None,
    rule: Annotated[Rule | None, Query(description="Only this edge rule.")] = None,
    zone: Annotated[str | None, Query(max_length=64, description="Only this zone.")] = None,
    event_code: Annotated[str | None, Query(pattern=r"^\d{4}$", description="Only this event code.")] = None,
    overdue: Annotated[bool | None, Query(description="Only overdue cases (true) or the others.")] = None,
    created_after: Annotated[
        UtcDatetime | None, Query(description="Only cases opened after this time (ISO 8601 with offset).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE_SIZE, description="Page size.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the page before.")
    ] = None,
) -> CasePageOut:
    """Cases matching the filters, oldest first, a page at a time."""
    filters = CaseFilters(
        status=status_,
        camera_id=camera_id,
        rule=rule.value if rule else None,
        zone=zone,
        event_code=event_code,
        overdue=overdue,
        created_after=created_after,
    )
    at = context.clock()
    try:
        page = queries.list_cases(session, filters, at=at, limit=limit, cursor=cursor)
    except CursorInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return CasePageOut(
        items=[CaseSummary(**_summary_fields(context, item, at)) for item in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/cases/{case_id}", response_model=CaseDetail, responses=ERROR_RESPONSES)
def get_case(case_id: str, context: Context, session: Db, principal: Operator) -> CaseDetail:
    """One case with its events, evidence, audit timeline, checks and the caller's possible actions."""
    try:
        view = queries.case_detail(session, case_id, role=principal.role)
    except CaseNotFound as exc:
        raise _http_error(exc) from None
    return _detail(context, view, principal.role)


def _check_details(context: AppContext, body: ActionIn) -> None:
    """What the workflow cannot know: the city's departments, and that a check takes no details."""
    department = body.department.strip() if body.department else ""
    if body.action is Action.DISPATCH and department and department not in context.config.departments:
        raise DetailInvalid(f"unknown department {department!r}; one of {context.config.departments}")
    if body.action is Action.REQUEST_CHECK:
        given = [name for name, value in body.model_dump(exclude={"action"}).items() if value is not None]
        if given:
            raise DetailInvalid(f"request_check takes no {', '.join(given)}")


def _perform(session: Session, context: AppContext, case_id: str, body: ActionIn, who: Principal) -> None:
    """Apply the action and commit; ask the camera for a check where the action calls for one."""
    at = context.clock()
    _check_details(context, body)
    if body.action is Action.REQUEST_CHECK:
        command = request_check(
            session, case_id=case_id, actor=who.username, role=who.role, config=context.config, at=at
        )
        session.commit()
        _send(session, context, command)
        return
    transition_case(
        session,
        case_id=case_id,
        action=body.action,
        actor=who.username,
        role=who.role,
        reason=body.reason,
        department=body.department.strip() if body.department else None,
        outcome=body.outcome,
        closure_type=body.closure_type,
        config=context.config,
        at=at,
    )
    session.commit()
    if body.action is Action.REPORT_HANDLED and context.config.recheck_on_handled:
        _auto_check(session, context, case_id, who, at)


def _auto_check(session: Session, context: AppContext, case_id: str, who: Principal, at: datetime) -> None:
    """The re-check after "handled": a failure leaves the case handled, for a manual request later."""
    try:
        command = request_check(
            session, case_id=case_id, actor=who.username, role=who.role, config=context.config, at=at
        )
    except (CaseServiceError, WorkflowError) as exc:
        session.rollback()
        logger.warning("case %s: no automatic check: %s", case_id, exc)
        return
    session.commit()
    _send(session, context, command)


def _send(session: Session, context: AppContext, command: CheckCommand) -> None:
    """Publish a committed check's command; a broker failure shows on the check, not as an error."""
    try:
        context.publisher.publish(command.topic, command.payload, retain=False)
    except DeviceLinkError as exc:
        logger.warning("check %s not sent: %s", command.check_id, exc)
        mark_check_failed(session, command.check_id, str(exc), context.clock())
        session.commit()


@router.post(
    "/cases/{case_id}/actions",
    response_model=CaseDetail,
    responses={
        **ERROR_RESPONSES,
        409: {"model": Problem, "description": "Not allowed from the case's current status."},
        422: {"description": "Missing or invalid reason, department, outcome or closure type."},
    },
)
def act(case_id: str, body: ActionIn, context: Context, session: Db, principal: Operator) -> CaseDetail:
    """Take a workflow action; the answer is the case as it now stands.

    ``request_check``, and ``report_handled`` when the city re-checks handled cases, also send the
    camera a snapshot command; if the broker cannot take it, the check shows as failed on the case.
    """
    try:
        _perform(session, context, case_id, body, principal)
    except (CaseServiceError, WorkflowError) as exc:
        session.rollback()
        raise _http_error(exc) from None
    return _detail(context, queries.case_detail(session, case_id, role=principal.role), principal.role)

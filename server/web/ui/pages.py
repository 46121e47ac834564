"""Operator review pages: the live review queue, the case list and the case page.

The routes are thin: a page is its shell plus what the first paint needs, and its script
(``static/queue.js``, ``static/case.js``) gets the rest from the REST API and acts through it. The
case page renders the same :class:`~curbwatch.server.web.api.cases.CaseDetail` the API answers,
so the browser and API clients see one shape. Templates autoescape; the scripts insert case text
with ``textContent`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BeforeValidator

from curbwatch.schema.zones import Rule
from curbwatch.server.cases.workflow import Action, CaseStatus, ClosureType, Outcome, RejectReason
from curbwatch.server.web.api import cases as api_cases
from curbwatch.server.web.deps import Context, Db, Principal, current_principal
from curbwatch.server.web.templating import render

router = APIRouter(include_in_schema=False)

SignedIn = Annotated[Principal, Depends(current_principal)]


def _blank_is_none(value: object) -> object:
    # A filter form submits its empty fields as "": that means "any", not a bad value.
    return None if value == "" else value


Camera = Annotated[str | None, Query(max_length=64), BeforeValidator(_blank_is_none)]
Zone = Annotated[str | None, Query(max_length=64), BeforeValidator(_blank_is_none)]
RuleFilter = Annotated[Rule | None, Query(), BeforeValidator(_blank_is_none)]
StatusFilter = Annotated[CaseStatus | None, Query(alias="status"), BeforeValidator(_blank_is_none)]


@dataclass(frozen=True)
class ActionView:
    """How the case page offers one workflow action.

    Attributes:
        action: The workflow action.
        label: Button text.
        key: The single key that takes it (shown on the button).
        tone: Button style: ``primary``, ``danger`` or plain.
        dialog: Whether a dialog first asks for its reason or details.
    """

    action: Action
    label: str
    key: str
    tone: str = ""
    dialog: bool = False


ACTION_VIEWS: tuple[ActionView, ...] = (
    ActionView(Action.CONFIRM, "Confirm", "c", "primary"),
    ActionView(Action.REJECT, "Reject…", "r", "danger", dialog=True),
    ActionView(Action.DISPATCH, "Dispatch…", "d", "primary", dialog=True),
    ActionView(Action.START, "Start handling", "s", "primary"),
    ActionView(Action.REPORT_HANDLED, "Report handled", "h", "primary"),
    ActionView(Action.REQUEST_CHECK, "Request check", "v"),
    ActionView(Action.CLOSE, "Close…", "x", "primary", dialog=True),
    ActionView(Action.RETURN_FOR_REWORK, "Return for rework…", "w", dialog=True),
    ActionView(Action.SUSPEND, "Suspend…", "p", dialog=True),
    ActionView(Action.RESUME, "Resume", "u", "primary"),
)
"""Every action, in the order the page shows them; the keys are unique."""

REJECT_LABELS: dict[RejectReason, str] = {
    RejectReason.FALSE_DETECTION: "False detection: nothing of the kind is there",
    RejectReason.NOT_A_VIOLATION: "Not a violation: it is there, but allowed here",
    RejectReason.PERMITTED: "Permitted: it holds a permit or exemption",
    RejectReason.DUPLICATE: "Duplicate of another case",
}

STEP_LABELS: dict[str, str] = {
    "open_case": "Reported by the camera",
    "confirm": "Confirmed",
    "reject": "Rejected",
    "dispatch": "Dispatched",
    "start": "Handling started",
    "report_handled": "Reported handled",
    "request_check": "Check requested",
    "close": "Closed",
    "return_for_rework": "Returned for rework",
    "suspend": "Suspended",
    "resume": "Resumed",
}


@dataclass(frozen=True)
class Choice:
    """An option of a dialog: the value sent and the text shown."""

    code: str
    label: str


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def step_label(action: str) -> str:
    """The timeline's words for an audited action."""
    return STEP_LABELS.get(action, _label(action))


def reason_label(reason: str) -> str:
    """A reject code in words; written reasons as given."""
    try:
        return REJECT_LABELS[RejectReason(reason)]
    except ValueError:
        return reason


def _filters(camera: str | None, rule: Rule | None, zone: str | None) -> dict[str, str]:
    return {"camera": camera or "", "rule": rule.value if rule else "", "zone": zone or ""}


def _time_formatter(timezone: ZoneInfo) -> Callable[[datetime | None], str]:
    def local_time(at: datetime | None) -> str:
        """``at`` in the city's time zone, to the second; a dash for none."""
        return at.astimezone(timezone).strftime("%Y-%m-%d %H:%M:%S") if at is not None else "—"

    return local_time


def duration(seconds: float | None) -> str:
    """``4 min 05 s``, ``2 h 03 min``: a dwell in words; a dash for none."""
    if seconds is None:
        return "—"
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@router.get("/queue", response_class=HTMLResponse)
def queue_page(
    request: Request,
    context: Context,
    principal: SignedIn,
    camera: Camera = None,
    rule: RuleFilter = None,
    zone: Zone = None,
) -> HTMLResponse:
    """Cases awaiting verification, oldest first; the script appends new ones as they arrive."""
    return render(
        request,
        "queue.html",
        principal,
        filters=_filters(camera, rule, zone),
        rules=list(Rule),
        # The script asks for cases created after this server time, so none falls between.
        since=context.clock().isoformat(),
    )


@router.get("/cases", response_class=HTMLResponse)
def cases_page(
    request: Request,
    principal: SignedIn,
    status_: StatusFilter = None,
    camera: Camera = None,
    rule: RuleFilter = None,
    zone: Zone = None,
) -> HTMLResponse:
    """All cases, filtered by status and place, a page at a time."""
    return render(
        request,
        "cases.html",
        principal,
        filters={**_filters(camera, rule, zone), "status": status_.value if status_ else ""},
        statuses=list(CaseStatus),
        rules=list(Rule),
    )


def _flow(queue: bool, camera: str | None, rule: Rule | None, zone: str | None) -> dict[str, str]:
    """Where the page goes back to, and (from the queue) how it finds the next case."""
    if not queue:
        return {"back_url": "/cases", "back_label": "All cases", "next_query": ""}
    filters = {name: value for name, value in _filters(camera, rule, zone).items() if value}
    page_query = urlencode(filters)
    api_filters = {"camera_id" if name == "camera" else name: value for name, value in filters.items()}
    return {
        "back_url": f"/queue?{page_query}" if page_query else "/queue",
        "back_label": "Review queue",
        # Two, because the case just decided may still be listed if another action raced ours.
        "next_query": urlencode(
            {"status": CaseStatus.AWAITING_VERIFICATION.value, **api_filters, "limit": 2}
        ),
    }


@router.get("/cases/{case_id}", response_class=HTMLResponse)
def case_page(
    request: Request,
    context: Context,
    session: Db,
    principal: SignedIn,
    case_id: Annotated[str, Path(max_length=64)],
    queue: bool = False,
    camera: Camera = None,
    rule: RuleFilter = None,
    zone: Zone = None,
) -> HTMLResponse:
    """One case: evidence, facts, timeline and the actions the user may take, one key each."""
    try:
        case = api_cases.get_case(case_id, context, session, principal)
    except HTTPException as exc:
        if exc.status_code != status.HTTP_404_NOT_FOUND:
            raise
        return render(
            request,
            "cases.html",
            principal,
            status.HTTP_404_NOT_FOUND,
            missing=case_id,
            filters=_filters(None, None, None) | {"status": ""},
            statuses=list(CaseStatus),
            rules=list(Rule),
        )
    allowed = set(case.allowed_actions)
    actions = [view for view in ACTION_VIEWS if view.action in allowed]
    return render(
        request,
        "case.html",
        principal,
        case=case,
        actions=actions,
        dialogs={view.action.value for view in actions if view.dialog},
        model=next((event.model for event in reversed(case.events) if event.model), None),
        reject_reasons=[Choice(reason.value, REJECT_LABELS[reason]) for reason in case.reject_reasons],
        departments=context.config.departments,
        outcomes=list(Outcome),
        closure_types=list(ClosureType),
        default_closure=(ClosureType.OVERDUE if case.overdue else ClosureType.NORMAL).value,
        local_time=_time_formatter(ZoneInfo(context.config.calendar.timezone)),
        timezone=context.config.calendar.timezone,
        duration=duration,
        step_label=step_label,
        reason_label=reason_label,
        **_flow(queue, camera, rule, zone),
    )

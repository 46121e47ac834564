"""Request and response models of the cases API, with the descriptions and examples ``/docs`` shows."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from curbwatch.schema.events import EventType, EvidenceRole, ModelRefV1, ObjectV1
from curbwatch.server.cases.workflow import Action, CaseStatus, ClosureType, Outcome, RejectReason, Role
from curbwatch.server.db import as_utc

UtcTime = Annotated[datetime, AfterValidator(as_utc)]
CASE_ID_EXAMPLE = "4f1c2e9a8b7d4c3e9f0a1b2c3d4e5f60"
SHA_EXAMPLE = "9f2b5c0e" * 8


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str = Field(examples=["cannot confirm a case that is closed (terminal)"])


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Not signed in."},
    403: {"model": Problem, "description": "The caller's role may not do this (or no CSRF token)."},
    404: {"model": Problem, "description": "No such case."},
}


class MetaOut(BaseModel):
    """The city's vocabulary: what the UI offers in its menus."""

    city: str = Field(description="City name.", examples=["Demo City"])
    event_codes: dict[str, str] = Field(
        description="Event code -> name.", examples=[{"0505": "机动车乱停放 illegal motor-vehicle parking"}]
    )
    departments: list[str] = Field(description="Handling departments for dispatch.")
    reject_reasons: list[RejectReason] = Field(description="Reason codes a reject takes.")
    outcomes: list[Outcome] = Field(description="Resolution classes a close takes (the 721 split).")
    closure_types: list[ClosureType] = Field(description="Closure kinds a close takes.")
    roles: list[Role] = Field(description="Roles, lowest first; each includes the ones before it.")


class CaseSummary(BaseModel):
    """A case as the lists show it."""

    id: str = Field(description="Case id (uuid4 hex).", examples=[CASE_ID_EXAMPLE])
    status: CaseStatus = Field(description="Workflow status.")
    event_code: str = Field(description="City event code.", examples=["0505"])
    event_name: str = Field(description="Name of the event code.", examples=["illegal parking"])
    rule: str = Field(description="Edge rule that raised it.", examples=["illegal_parking"])
    violation: str = Field(description="Kind of violation.", examples=["illegal_parking"])
    device_id: str = Field(description="Edge box that reported it.", examples=["edge-0001"])
    camera_id: str = Field(description="Camera that saw it.", examples=["cam-1"])
    zone: str = Field(description="Zone at the camera.", examples=["kerb"])
    grid_cell: str | None = Field(description="City-management grid cell.", examples=["r12c40"])
    location: tuple[float, float] | None = Field(description="Camera position (lat, lon).")
    opened_at: UtcTime = Field(description="When the first episode began (camera time).")
    last_event_at: UtcTime = Field(description="Time of the latest event.")
    created_at: UtcTime = Field(description="When the server opened the case; the list's order.")
    updated_at: UtcTime = Field(description="Last change.")
    filed_at: UtcTime | None = Field(description="When it was confirmed (filed).")
    closed_at: UtcTime | None = Field(description="When it was closed.")
    deadline: UtcTime | None = Field(description="Handling deadline, set at filing.")
    overdue: bool = Field(description="Open past its deadline, or closed after it.")
    department: str | None = Field(description="Handling department, once dispatched.")
    outcome: Outcome | None = Field(description="Resolution class, once closed.")
    closure_type: ClosureType | None = Field(description="Closure kind, once closed.")
    episode_count: int = Field(description="Violation episodes folded into the case.", examples=[1])
    thumbnail_url: str | None = Field(
        description="Annotated image of the first event.", examples=[f"/evidence/{SHA_EXAMPLE}"]
    )


class CasePageOut(BaseModel):
    """One page of cases, oldest first."""

    items: list[CaseSummary]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page; null on the last.")


class CaseEventOut(BaseModel):
    """An event folded into the case."""

    event_id: str = Field(description="Event id.")
    type: EventType = Field(description="Start, update or end of its episode.")
    ts: UtcTime = Field(description="Camera time of the event.")
    episode_id: str = Field(description="Episode it belongs to.")
    dwell_s: float | None = Field(description="Seconds since the episode began.", examples=[120.0])
    objects: list[ObjectV1] = Field(description="Objects taking part (boxes in frame pixels).")
    model: ModelRefV1 | None = Field(description="Detector that saw them.")


class EvidenceOut(BaseModel):
    """An evidence image of the case (restricted originals only for supervisors and above)."""

    sha256: str = Field(description="sha256 of the JPEG bytes.", examples=[SHA_EXAMPLE])
    role: EvidenceRole = Field(description="Clean original, annotated frame or object crop.")
    url: str = Field(description="Where to fetch it (needs the caller's sign-in).")
    event_id: str = Field(description="The first event that referenced it.")
    width: int = Field(description="Pixels.", examples=[1280])
    height: int = Field(description="Pixels.", examples=[720])
    track_id: int | None = Field(description="The object a crop shows.")
    restricted: bool = Field(description="An original with unblurred faces and plates.")


class TimelineEntry(BaseModel):
    """One audited action on the case."""

    model_config = ConfigDict(from_attributes=True)

    at: UtcTime = Field(description="When.")
    action: str = Field(description="What was done.", examples=["confirm"])
    actor: str = Field(description="Who (user name, or edge:<device> / server).", examples=["op-ada"])
    role: str = Field(description="In which role.", examples=["operator"])
    from_state: str | None = Field(description="Status before (null for non-transitions).")
    to_state: str | None = Field(description="Status after.")
    reason: str | None = Field(description="Reason given.")
    details: dict[str, Any] | None = Field(description="Department, outcome, check results, ...")


class CheckOut(BaseModel):
    """A re-check image asked of the camera (核查)."""

    id: str = Field(description="Check id (the command's correlation id).")
    status: str = Field(description="requested, received or failed.", examples=["received"])
    requested_at: UtcTime = Field(description="When it was asked.")
    requested_by: str = Field(description="Who asked.")
    answered_at: UtcTime | None = Field(description="When the camera answered (or the send failed).")
    evidence_url: str | None = Field(
        description="The check image; null until received, and for roles that may not see originals."
    )
    error: str | None = Field(description="Why it failed.")


class CaseDetail(CaseSummary):
    """A case in full, as the caller's role may see and act on it."""

    events: list[CaseEventOut]
    evidence: list[EvidenceOut]
    timeline: list[TimelineEntry] = Field(description="Audit entries, oldest first.")
    checks: list[CheckOut]
    allowed_actions: list[Action] = Field(description="Actions the caller's role may take now.")
    reject_reasons: list[RejectReason] = Field(description="Reason codes a reject takes.")


class ActionIn(BaseModel):
    """A workflow action on a case."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"action": "confirm"},
                {"action": "reject", "reason": "false_detection"},
                {"action": "dispatch", "department": "城管执法 enforcement"},
                {"action": "close", "outcome": "enforcement", "closure_type": "normal"},
                {"action": "return_for_rework", "reason": "the car is still there"},
            ]
        },
    )

    action: Action = Field(description="What to do.")
    reason: str | None = Field(
        default=None,
        max_length=2000,
        description="A reject reason code for reject; a written reason for return_for_rework and suspend.",
    )
    department: str | None = Field(
        default=None, max_length=128, description="Dispatch only: one of the configured departments."
    )
    outcome: Outcome | None = Field(default=None, description="Close only.")
    closure_type: ClosureType | None = Field(default=None, description="Close only.")

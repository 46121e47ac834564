"""Forwardings REST API: what went to the upstream city platforms, what failed and why, and retry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from curbwatch.server.db import as_utc
from curbwatch.server.open311.forwarding import (
    ForwardingNotFound,
    ForwardingNotRetryable,
    ForwardingStatus,
    list_forwardings,
    retry_forwarding,
)
from curbwatch.server.tables import Forwarding
from curbwatch.server.web.deps import Context, Db, Supervisor

router = APIRouter(prefix="/api/v1/forwardings", tags=["forwardings"])

ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "Not signed in."},
    403: {"description": "Needs the supervisor role (or no CSRF token)."},
}


class ForwardingOut(BaseModel):
    """One filed case on its way to one upstream platform."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    case_id: str
    target: str = Field(description="The upstream's name in the configuration.")
    status: ForwardingStatus
    attempts: int = Field(description="POSTs tried since it was queued or last retried.")
    next_attempt_at: datetime | None = Field(description="When a pending row is tried next.")
    last_error: str | None = Field(description="Why the last attempt failed.")
    external_id: str | None = Field(description="The upstream's service_request_id (or token).")
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


def _out(row: Forwarding) -> ForwardingOut:
    out = ForwardingOut.model_validate(row)
    # SQLite hands times back naive; they are UTC.
    return out.model_copy(
        update={
            name: as_utc(value)
            for name in ("next_attempt_at", "created_at", "updated_at", "sent_at")
            if (value := getattr(out, name)) is not None
        }
    )


@router.get("", response_model=list[ForwardingOut], responses=ERROR_RESPONSES)
def forwardings(
    session: Db,
    _: Supervisor,
    status_: Annotated[
        ForwardingStatus | None, Query(alias="status", description="Only this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Newest first, at most this many.")] = 100,
) -> list[ForwardingOut]:
    """Forwardings, newest first; ``status=failed`` lists those that need a look."""
    return [_out(row) for row in list_forwardings(session, status=status_, limit=limit)]


@router.post(
    "/{forwarding_id}/retry",
    response_model=ForwardingOut,
    responses={
        **ERROR_RESPONSES,
        404: {"description": "No such forwarding."},
        409: {"description": "Not failed: only failed forwardings are retried."},
    },
)
def retry(forwarding_id: int, context: Context, session: Db, principal: Supervisor) -> ForwardingOut:
    """Queue a failed forwarding again with a fresh set of attempts (audited on the case)."""
    try:
        row = retry_forwarding(
            session,
            forwarding_id,
            actor=principal.username,
            role=principal.role.value,
            at=context.clock(),
        )
    except ForwardingNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except ForwardingNotRetryable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    session.commit()
    return _out(row)

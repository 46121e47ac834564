"""Checks (核查): a fresh image asked of the case's camera once the case is reported handled.

:func:`request_check` moves the case from handled to checking (audited, through
:func:`~curbwatch.server.cases.service.transition_case`), records a :class:`CaseCheck` and returns the
signed ``snapshot`` command for the caller to publish *after* its commit; a publish that fails is
recorded with :func:`mark_check_failed`. The device answers on its ``command/result`` channel and
the ingest worker files that answer with :func:`record_command_result`; the image itself travels as
ordinary evidence, so it is delivered (and acknowledged) like any other.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from curbwatch.schema.events import Sha256
from curbwatch.schema.protocol import Channel, CommandResultV1, CommandV1, sign, topic
from curbwatch.server.audit import SYSTEM_ROLE, append_audit
from curbwatch.server.cases.service import CaseServiceError, transition_case
from curbwatch.server.cases.workflow import Action, Role
from curbwatch.server.devices import device_key
from curbwatch.server.tables import CaseCheck

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from curbwatch.server.config import CaseServerConfig

logger = logging.getLogger(__name__)

CHECK_IMAGE_ACTION = "check_image"
SERVER_ACTOR = "server"
SNAPSHOT_COMMAND = "snapshot"
_SHA256 = TypeAdapter(Sha256)


class CheckStatus(StrEnum):
    """Where a check stands (the ``case_checks.status`` column)."""

    REQUESTED = "requested"
    RECEIVED = "received"
    FAILED = "failed"


class CheckError(CaseServiceError):
    """A check cannot be requested or settled."""


class UnknownCheck(CheckError):
    """No check of this device has the correlation id."""


@dataclass(frozen=True)
class CheckCommand:
    """The signed command to publish once the transaction that recorded the check has committed.

    Attributes:
        check_id: The :class:`CaseCheck` id, also the command's correlation id.
        topic: The device's command topic.
        payload: The ``curbwatch.command.v1`` document as UTF-8 JSON.
    """

    check_id: str
    topic: str
    payload: bytes


def snapshot_command(
    device_id: str, key: bytes, *, correlation_id: str, args: dict[str, Any]
) -> CheckCommand:
    """A ``snapshot`` :class:`CommandV1` for ``device_id``, signed with the device's key."""
    body = {
        "schema": "curbwatch.command.v1",
        "correlation_id": correlation_id,
        "name": SNAPSHOT_COMMAND,
        "args": args,
    }
    command = CommandV1.model_validate({**body, "sig": sign(body, key)})
    payload = json.dumps(command.model_dump(mode="json", by_alias=True), separators=(",", ":"))
    return CheckCommand(correlation_id, topic(device_id, Channel.COMMAND), payload.encode("utf-8"))


def request_check(
    session: Session,
    *,
    case_id: str,
    actor: str,
    role: Role | str,
    config: CaseServerConfig,
    at: datetime,
) -> CheckCommand:
    """Move a handled case to checking and record the check, in the caller's transaction.

    The caller commits, then publishes ``command.payload`` on ``command.topic`` (QoS 1, not
    retained: a check is asked once); if that fails it calls :func:`mark_check_failed`.

    Args:
        session: The session whose transaction holds the transition and the check.
        case_id: The handled case.
        actor: Who asks (user id).
        role: The actor's role.
        config: The city configuration (passed to the transition).
        at: Now; timezone-aware.

    Returns:
        The command to publish.

    Raises:
        CaseNotFound: No case has ``case_id``.
        workflow.WorkflowError: The case is not handled, or the role may not ask.
        CheckError: The case's device is no longer registered.
    """
    case = transition_case(
        session, case_id=case_id, action=Action.REQUEST_CHECK, actor=actor, role=role, config=config, at=at
    )
    key = device_key(session, case.device_id)
    if key is None:
        raise CheckError(f"device {case.device_id!r} of case {case_id} is not registered")
    check_id = uuid.uuid4().hex
    session.add(
        CaseCheck(
            id=check_id,
            case_id=case.id,
            device_id=case.device_id,
            camera_id=case.camera_id,
            requested_at=at,
            requested_by=actor,
            status=CheckStatus.REQUESTED.value,
        )
    )
    session.flush()
    logger.info("case %s: check %s asked of %s/%s", case.id, check_id, case.device_id, case.camera_id)
    return snapshot_command(
        case.device_id, key, correlation_id=check_id, args={"camera_id": case.camera_id, "case_id": case.id}
    )


def _settle(
    session: Session,
    check: CaseCheck,
    *,
    sha256: str | None,
    error: str | None,
    actor: str,
    at: datetime,
) -> None:
    """Record a check's answer and its audit entry on the case."""
    status = CheckStatus.RECEIVED if sha256 is not None else CheckStatus.FAILED
    check.status = status.value
    check.evidence_sha256 = sha256
    check.error = error
    check.answered_at = at
    details = {"check_id": check.id, "status": status.value, "camera_id": check.camera_id}
    details |= {"evidence_sha256": sha256} if sha256 is not None else {"error": error}
    append_audit(
        session,
        case_id=check.case_id,
        action=CHECK_IMAGE_ACTION,
        actor=actor,
        role=SYSTEM_ROLE,
        at=at,
        from_state=None,
        to_state=None,
        details=details,
    )
    session.flush()
    logger.info("check %s of case %s: %s", check.id, check.case_id, error or status.value)


def mark_check_failed(session: Session, check_id: str, error: str, at: datetime) -> None:
    """Record that the command never reached the broker (the caller commits).

    A check the device has already answered is left alone: a publish can time out on our side
    after the broker delivered it.

    Raises:
        UnknownCheck: No check has ``check_id``.
    """
    check = session.get(CaseCheck, check_id)
    if check is None:
        raise UnknownCheck(f"no check {check_id!r}")
    if check.status != CheckStatus.REQUESTED.value:
        return
    _settle(session, check, sha256=None, error=f"not sent: {error}", actor=SERVER_ACTOR, at=at)


def record_command_result(
    session: Session, device_id: str, result: CommandResultV1, at: datetime
) -> CaseCheck:
    """File a device's answer to a check command (the caller commits).

    An answer to a check already settled (a redelivered result) changes nothing. A result that
    claims success without a valid image digest settles the check as failed, with why.

    Args:
        session: The ingest transaction.
        device_id: The device the result came from (its topic).
        result: The command result.
        at: When it was received.

    Returns:
        The check.

    Raises:
        UnknownCheck: The correlation id is no check asked of ``device_id``.
    """
    check = session.get(CaseCheck, result.correlation_id)
    if check is None or check.device_id != device_id:
        raise UnknownCheck(f"no check {result.correlation_id!r} was asked of device {device_id!r}")
    if check.status != CheckStatus.REQUESTED.value:
        logger.debug("check %s already %s; result ignored", check.id, check.status)
        return check
    actor = f"edge:{device_id}"
    if not result.ok:
        _settle(
            session, check, sha256=None, error=result.error or "device reported failure", actor=actor, at=at
        )
        return check
    try:
        sha256 = _SHA256.validate_python(result.result.get("sha256"))
    except ValidationError:
        _settle(session, check, sha256=None, error="result names no valid sha256", actor=actor, at=at)
        return check
    _settle(session, check, sha256=sha256, error=None, actor=actor, at=at)
    return check

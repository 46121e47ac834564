"""Checks (核查): requested on a handled case, answered by the device, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import EventV1
from curbwatch.schema.protocol import Channel, CommandResultV1, CommandV1, topic, verify
from curbwatch.server.audit import verify_chain
from curbwatch.server.cases.checks import (
    CheckError,
    UnknownCheck,
    mark_check_failed,
    record_command_result,
    request_check,
)
from curbwatch.server.cases.folding import FoldingConfig, fold_event
from curbwatch.server.cases.service import transition_case
from curbwatch.server.cases.workflow import IllegalTransition
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.tables import AuditLog, Case, CaseCheck
from tests.server.conftest import register
from tests.server.factories import event_document

CONFIG = CaseServerConfig()
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
ANSWERED = NOW + timedelta(seconds=20)
TO_HANDLED = [
    {"action": "confirm", "role": "operator"},
    {"action": "dispatch", "role": "dispatcher", "department": "traffic police"},
    {"action": "start", "role": "dispatcher"},
    {"action": "report_handled", "role": "dispatcher"},
]


def new_case(factory: sessionmaker[Session], device_id: str, steps: list[dict] = TO_HANDLED) -> str:
    """A case of ``device_id``'s camera ``cam-1``, taken through ``steps``."""
    event = EventV1.model_validate(event_document(device_id, camera_id="cam-1"))
    with factory() as session, session.begin():
        case_id = fold_event(session, event, config=FoldingConfig(), at=NOW).id
    for step in steps:
        with factory() as session, session.begin():
            transition_case(session, case_id=case_id, actor="u-1", config=CONFIG, at=NOW, **step)
    return case_id


def requested(factory: sessionmaker[Session]) -> tuple[str, str, str]:
    """A registered device, its handled case, and a check asked of it: (device, case, check)."""
    device_id, _ = register(factory)
    case_id = new_case(factory, device_id)
    with factory() as session, session.begin():
        command = request_check(
            session, case_id=case_id, actor="op-7", role="operator", config=CONFIG, at=NOW
        )
    return device_id, case_id, command.check_id


def audit(factory: sessionmaker[Session], case_id: str) -> list[AuditLog]:
    with factory() as session:
        return list(
            session.scalars(select(AuditLog).where(AuditLog.case_id == case_id).order_by(AuditLog.id))
        )


def answer(factory: sessionmaker[Session], device_id: str, result: CommandResultV1) -> CaseCheck:
    with factory() as session, session.begin():
        record_command_result(session, device_id, result, ANSWERED)
    with factory() as session:
        check = session.get(CaseCheck, result.correlation_id)
        assert check is not None
        return check


def test_a_check_moves_the_case_and_makes_a_signed_snapshot_command(
    session_factory: sessionmaker[Session],
) -> None:
    device_id, key = register(session_factory)
    case_id = new_case(session_factory, device_id)
    with session_factory() as session, session.begin():
        command = request_check(
            session, case_id=case_id, actor="op-7", role="operator", config=CONFIG, at=NOW
        )

    assert command.topic == topic(device_id, Channel.COMMAND)
    raw = json.loads(command.payload)
    assert verify(raw, key) and not verify(raw, b"x" * 32)
    sent = CommandV1.model_validate(raw)
    assert (sent.name, sent.correlation_id) == ("snapshot", command.check_id)
    assert sent.args == {"camera_id": "cam-1", "case_id": case_id}
    with session_factory() as session:
        assert session.get(Case, case_id).status == "checking"
        check = session.get(CaseCheck, command.check_id)
        assert (check.case_id, check.device_id, check.camera_id) == (case_id, device_id, "cam-1")
        assert (check.status, check.requested_by, check.answered_at) == ("requested", "op-7", None)
        assert check.requested_at.replace(tzinfo=UTC) == NOW
    last = audit(session_factory, case_id)[-1]
    assert (last.action, last.actor, last.from_state, last.to_state) == (
        "request_check",
        "op-7",
        "handled",
        "checking",
    )


def test_a_case_that_is_not_handled_gets_no_check(session_factory: sessionmaker[Session]) -> None:
    device_id, _ = register(session_factory)
    case_id = new_case(session_factory, device_id, steps=TO_HANDLED[:2])
    with session_factory() as session, pytest.raises(IllegalTransition):
        request_check(session, case_id=case_id, actor="op-7", role="operator", config=CONFIG, at=NOW)
    with session_factory() as session:
        checks = session.scalar(
            select(func.count()).select_from(CaseCheck).where(CaseCheck.case_id == case_id)
        )
        assert checks == 0


def test_a_case_whose_device_is_gone_gets_no_check(session_factory: sessionmaker[Session]) -> None:
    device_id = f"edge-gone-{uuid.uuid4().hex[:8]}"  # cases keep device ids; the device row is not needed
    case_id = new_case(session_factory, device_id)
    with session_factory() as session, pytest.raises(CheckError, match="not registered"):
        request_check(session, case_id=case_id, actor="op-7", role="operator", config=CONFIG, at=NOW)


def test_an_image_received_settles_the_check_once(session_factory: sessionmaker[Session]) -> None:
    device_id, case_id, check_id = requested(session_factory)
    sha = "ab" * 32
    result = CommandResultV1(
        correlation_id=check_id, ok=True, result={"sha256": sha, "camera_id": "cam-1", "ts": "x"}
    )
    check = answer(session_factory, device_id, result)
    assert (check.status, check.evidence_sha256, check.error) == ("received", sha, None)
    assert check.answered_at.replace(tzinfo=UTC) == ANSWERED
    entries = audit(session_factory, case_id)
    last = entries[-1]
    assert (last.action, last.actor, last.role, last.from_state, last.to_state) == (
        "check_image",
        f"edge:{device_id}",
        "system",
        None,
        None,
    )
    assert last.details == {
        "check_id": check_id,
        "status": "received",
        "camera_id": "cam-1",
        "evidence_sha256": sha,
    }

    # A redelivered result, and a late publish failure, change nothing.
    answer(session_factory, device_id, result)
    with session_factory() as session, session.begin():
        mark_check_failed(session, check_id, "broker timeout", ANSWERED)
    assert len(audit(session_factory, case_id)) == len(entries)
    with session_factory() as session:
        assert session.get(CaseCheck, check_id).status == "received"
        assert session.get(Case, case_id).status == "checking"  # the supervisor decides with the image
        assert verify_chain(session) == []


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({"ok": False, "error": "no frame yet from cam-1"}, "no frame yet from cam-1"),
        ({"ok": True, "result": {"sha256": "not-a-hash"}}, "result names no valid sha256"),
        ({"ok": True}, "result names no valid sha256"),
    ],
    ids=["device failed", "bad sha256", "no sha256"],
)
def test_a_failed_answer_settles_the_check_with_its_error(
    session_factory: sessionmaker[Session], result: dict, error: str
) -> None:
    device_id, case_id, check_id = requested(session_factory)
    check = answer(session_factory, device_id, CommandResultV1(correlation_id=check_id, **result))
    assert (check.status, check.evidence_sha256, check.error) == ("failed", None, error)
    assert audit(session_factory, case_id)[-1].details["error"] == error


def test_a_result_for_another_device_or_no_check_is_unknown(session_factory: sessionmaker[Session]) -> None:
    _, _, check_id = requested(session_factory)
    other, _ = register(session_factory)
    with session_factory() as session:
        for correlation_id in (check_id, uuid.uuid4().hex):
            with pytest.raises(UnknownCheck):
                record_command_result(
                    session, other, CommandResultV1(correlation_id=correlation_id, ok=False), ANSWERED
                )
        assert session.get(CaseCheck, check_id).status == "requested"


def test_a_command_not_sent_marks_the_check_failed(session_factory: sessionmaker[Session]) -> None:
    _, case_id, check_id = requested(session_factory)
    with session_factory() as session, session.begin():
        mark_check_failed(session, check_id, "broker 127.0.0.1:1883 unreachable", ANSWERED)
    with session_factory() as session:
        check = session.get(CaseCheck, check_id)
        assert (check.status, check.error) == ("failed", "not sent: broker 127.0.0.1:1883 unreachable")
        with pytest.raises(UnknownCheck):
            mark_check_failed(session, uuid.uuid4().hex, "x", ANSWERED)
    last = audit(session_factory, case_id)[-1]
    assert (last.action, last.actor, last.role) == ("check_image", "server", "system")

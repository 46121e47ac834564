"""Model rollouts on the server: the signed update with its chunks, the canary order, and its record
in the database, with the ingest worker's handler filing the devices' answers."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.protocol import CommandResultV1, CommandV1, parse_model_chunk_topic, verify
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.device_link import DeviceLinkError
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import DeviceUpdates, MessageHandler, ReceivedMessage, RejectReason, Result
from curbwatch.server.models_rollout import (
    DeviceRolloutState,
    RolloutError,
    RolloutPlan,
    RolloutState,
    claim_due,
    create_rollout,
    drive_rollout,
    rollout_status,
    send_due,
    unfinished_rollouts,
    update_messages,
)
from curbwatch.server.tables import AuditLog, DeadLetter, Device, ModelRolloutTarget
from tests.server.conftest import register

KEY = b"d" * 32
CORRELATION = "c" * 32
AT = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
DATA = b"onnx" * 700


def test_the_update_is_a_signed_command_followed_by_its_chunks_in_order() -> None:
    data = bytes(range(256)) * 10

    command, *chunks = update_messages(
        "edge-1", KEY, name="det", version="2", data=data, correlation_id=CORRELATION, chunk_bytes=1000
    )

    document = json.loads(command.payload)
    assert command.topic == "curbwatch/v1/edge-1/command" and verify(document, KEY)
    parsed = CommandV1.model_validate(document)
    assert parsed.name == "update_model"
    assert parsed.args["sha256"] == hashlib.sha256(data).hexdigest()
    assert (parsed.args["size_bytes"], len(chunks)) == (2560, 3)
    assert [parse_model_chunk_topic(chunk.topic) for chunk in chunks] == [
        (parsed.args["sha256"], index) for index in range(3)
    ]
    assert b"".join(chunk.payload for chunk in chunks) == data


def test_the_others_follow_only_a_canary_that_applied_the_model() -> None:
    plan = RolloutPlan(["a", "b", "c"], canary="b")

    assert plan.due() == ["b"]
    plan.mark_sent(["b"])
    assert (plan.due(), plan.state) == ([], RolloutState.CANARY)
    assert plan.record("b", DeviceRolloutState.APPLIED)
    assert plan.due() == ["a", "c"]
    plan.mark_sent(["a", "c"])
    assert plan.record("a", DeviceRolloutState.ROLLED_BACK)

    assert plan.states == {"a": "rolled_back", "b": "applied", "c": "sent"}
    assert (plan.state, plan.halted) == (RolloutState.ROLLING, False)
    assert plan.record("c", DeviceRolloutState.APPLIED)
    assert plan.state is RolloutState.DONE


def test_a_canary_that_rolls_back_halts_the_rollout() -> None:
    plan = RolloutPlan(["a", "b"])
    plan.mark_sent(plan.due())

    assert plan.record("a", DeviceRolloutState.ROLLED_BACK)

    assert (plan.halted, plan.state, plan.due()) == (True, RolloutState.HALTED, [])
    assert plan.states["b"] is DeviceRolloutState.PENDING
    assert not plan.record("a", DeviceRolloutState.APPLIED), "a settled device stays settled"


def test_bad_plans_are_refused() -> None:
    with pytest.raises(RolloutError, match="at least one device"):
        RolloutPlan([])
    with pytest.raises(RolloutError, match="named twice"):
        RolloutPlan(["a", "a"])
    with pytest.raises(RolloutError, match="not one of the devices"):
        RolloutPlan(["a"], canary="z")
    with pytest.raises(RolloutError, match="not in this rollout"):
        RolloutPlan(["a"]).record("z", DeviceRolloutState.APPLIED)


class FakeEdges:
    """A publisher that answers each update through the ingest handler, as the devices would."""

    def __init__(
        self, factory: sessionmaker[Session], handler: MessageHandler, answers: dict[str, Any]
    ) -> None:
        self.factory, self.handler, self.answers = factory, handler, answers
        self.commands: dict[str, CommandV1] = {}
        self.chunks: dict[str, int] = {}

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        assert not retain
        device = topic.split("/")[2]
        if not topic.endswith("/command"):
            self.chunks[device] = self.chunks.get(device, 0) + 1
            return
        answer = self.answers[device]
        if isinstance(answer, Exception):
            raise answer
        command = CommandV1.model_validate(json.loads(payload))
        self.commands[device] = command
        if answer is None:
            return  # this device never answers
        ok, state = answer
        result = CommandResultV1(
            correlation_id=command.correlation_id,
            ok=ok,
            result={"state": state, "model_version": "det@2" if ok else "det@1"},
            error=None if ok else f"{state}: no detections",
        )
        self.deliver(device, result)

    def deliver(self, device: str, result: CommandResultV1) -> Result:
        message = ReceivedMessage(
            f"curbwatch/v1/{device}/command/result", result.model_dump_json(by_alias=True).encode(), AT
        )
        with self.factory() as session, session.begin():
            return self.handler.handle(session, message, DeviceUpdates()).result


@pytest.fixture
def handler(tmp_path: Any) -> MessageHandler:
    return MessageHandler(EvidenceStore(tmp_path / "evidence"), CaseServerConfig(), max_payload_bytes=1 << 20)


def start(factory: sessionmaker[Session], devices: list[str], canary: str | None = None) -> str:
    with factory() as session, session.begin():
        return create_rollout(
            session,
            name="det",
            version="2",
            sha256=hashlib.sha256(DATA).hexdigest(),
            size_bytes=len(DATA),
            devices=devices,
            canary=canary,
            actor="ops",
            at=AT,
        )


def drive(factory: sessionmaker[Session], rollout_id: str, edges: FakeEdges) -> tuple[Any, list[str]]:
    seen: list[str] = []
    view = drive_rollout(
        factory,
        rollout_id,
        DATA,
        edges,
        clock=lambda: AT,
        timeout_s=5,
        poll_s=0.01,
        on_change=lambda target: seen.append(f"{target.device_id}:{target.state.value}"),
    )
    return view, seen


def audit_actions(factory: sessionmaker[Session], rollout_id: str) -> list[str]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).where(AuditLog.case_id.is_(None)).order_by(AuditLog.id))
        return [row.action for row in rows if (row.details or {}).get("rollout_id") == rollout_id]


def test_a_stored_rollout_reaches_the_others_after_the_canary_applied(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a, b, c = (register(session_factory)[0] for _ in range(3))
    rollout_id = start(session_factory, [a, b, c], canary=b)
    edges = FakeEdges(
        session_factory, handler, {a: (True, "applied"), b: (True, "applied"), c: (False, "failed")}
    )

    view, seen = drive(session_factory, rollout_id, edges)

    assert view.state is RolloutState.DONE
    assert [(t.device_id, t.state.value, t.canary) for t in view.targets] == [
        (a, "applied", False),
        (b, "applied", True),
        (c, "failed", False),
    ]
    assert view.targets[1].detail == "in service: det@2" and view.targets[2].detail == "failed: no detections"
    assert seen[:3] == [f"{a}:pending", f"{b}:applied", f"{c}:pending"]
    assert edges.chunks == {a: 1, b: 1, c: 1}  # 2800 bytes: one chunk each
    assert (
        audit_actions(session_factory, rollout_id) == ["model_rollout_started"] + ["model_rollout_result"] * 3
    )


def test_a_canary_that_rolls_back_halts_the_stored_rollout(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a, b = register(session_factory)[0], register(session_factory)[0]
    rollout_id = start(session_factory, [a, b])
    edges = FakeEdges(session_factory, handler, {a: (False, "rolled_back"), b: (True, "applied")})

    view, _ = drive(session_factory, rollout_id, edges)

    assert view.state is RolloutState.HALTED
    assert [t.state.value for t in view.targets] == ["rolled_back", "pending"]
    assert b not in edges.commands, "nobody follows a canary that rolled back"
    assert audit_actions(session_factory, rollout_id)[-1] == "model_rollout_halted"
    redelivered = CommandResultV1(correlation_id=edges.commands[a].correlation_id, ok=True, result={})
    assert edges.deliver(a, redelivered) is Result.RECORDED
    with session_factory() as session:
        assert rollout_status(session, rollout_id).targets[0].state is DeviceRolloutState.ROLLED_BACK


def test_an_update_the_broker_refused_fails_and_a_silent_device_times_out(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a, b = register(session_factory)[0], register(session_factory)[0]
    refused = FakeEdges(session_factory, handler, {a: DeviceLinkError("broker down")})
    view, _ = drive(session_factory, start(session_factory, [a]), refused)
    assert (view.state, view.targets[0].detail) == (RolloutState.HALTED, "not sent: broker down")

    silent = FakeEdges(session_factory, handler, {b: None})
    rollout_id = start(session_factory, [b])
    view = drive_rollout(
        session_factory, rollout_id, DATA, silent, clock=lambda: AT, timeout_s=0, on_change=lambda _: None
    )
    assert (view.state, view.targets[0].state) == (RolloutState.CANARY, DeviceRolloutState.SENT)


def test_answers_are_routed_by_correlation_id_and_checked_against_the_device(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a, other = register(session_factory)[0], register(session_factory)[0]
    rollout_id = start(session_factory, [a])
    edges = FakeEdges(session_factory, handler, {a: None})
    drive_rollout(
        session_factory, rollout_id, DATA, edges, clock=lambda: AT, timeout_s=0, on_change=lambda _: None
    )
    correlation_id = edges.commands[a].correlation_id

    wrong_device = edges.deliver(other, CommandResultV1(correlation_id=correlation_id, ok=True))
    stray = edges.deliver(a, CommandResultV1(correlation_id="e" * 32, ok=True))

    assert (wrong_device, stray) == (Result.REJECTED, Result.REJECTED)
    with session_factory() as session:
        reasons = session.scalars(
            select(DeadLetter.reason).where(DeadLetter.device_id.in_([a, other])).order_by(DeadLetter.id)
        ).all()
        target = session.scalar(select(ModelRolloutTarget).where(ModelRolloutTarget.rollout_id == rollout_id))
    assert reasons == [RejectReason.ID_MISMATCH, RejectReason.UNKNOWN_CHECK]
    assert target.state == "sent", "a wrong device's answer settles nothing"


def test_a_rollout_to_an_unknown_device_is_refused(session_factory: sessionmaker[Session]) -> None:
    known = register(session_factory)[0]
    with pytest.raises(RolloutError, match="unknown devices: nobody-here"):
        start(session_factory, [known, "nobody-here"])


def test_a_rollout_whose_driver_stopped_after_the_canary_is_carried_on_by_another(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a, b, c = (register(session_factory)[0] for _ in range(3))
    rollout_id = start(session_factory, [a, b, c], canary=b)
    edges = FakeEdges(session_factory, handler, {a: (True, "applied"), b: None, c: (True, "applied")})

    assert send_due(session_factory, rollout_id, DATA, edges, lambda: AT) == [b]
    # The driver is gone; the canary's answer still reaches the ingest worker's handler.
    applied = CommandResultV1(
        correlation_id=edges.commands[b].correlation_id, ok=True, result={"model_version": "det@2"}
    )
    assert edges.deliver(b, applied) is Result.RECORDED
    with session_factory() as session:
        stalled = rollout_status(session, rollout_id)
        assert rollout_id in unfinished_rollouts(session)
    assert stalled.state is RolloutState.ROLLING
    assert [t.state.value for t in stalled.targets] == ["pending", "applied", "pending"]

    view, _ = drive(session_factory, rollout_id, edges)

    assert view.state is RolloutState.DONE
    assert [t.state.value for t in view.targets] == ["applied"] * 3
    assert edges.chunks == {a: 1, b: 1, c: 1}, "each device got the model once"
    with session_factory() as session:
        assert rollout_id not in unfinished_rollouts(session)


def test_a_device_recorded_as_sent_but_never_sent_gets_the_update_after_its_silence(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a, b = register(session_factory)[0], register(session_factory)[0]
    rollout_id = start(session_factory, [a, b])
    with session_factory() as session, session.begin():
        # A driver that died between committing the claim and publishing it.
        [(_, correlation_id)] = claim_due(session, rollout_id, AT)
    edges = FakeEdges(session_factory, handler, {a: (True, "applied"), b: (True, "applied")})

    def resume(at: datetime) -> Any:
        return drive_rollout(
            session_factory,
            rollout_id,
            DATA,
            edges,
            clock=lambda: at,
            timeout_s=0,
            resend_after_s=600,
            on_change=lambda _: None,
        )

    too_soon = resume(AT + timedelta(seconds=599))
    assert (too_soon.state, edges.commands) == (RolloutState.CANARY, {})
    away = resume(AT + timedelta(seconds=601))
    assert (away.state, edges.commands) == (RolloutState.CANARY, {}), "not heard from: its session queues it"
    with session_factory() as session, session.begin():
        session.get(Device, a).last_heartbeat_at = AT + timedelta(seconds=300)

    view = resume(AT + timedelta(seconds=601))

    assert edges.commands[a].correlation_id == correlation_id, "the same command: a late answer still counts"
    assert view.state is RolloutState.ROLLING and view.targets[0].state is DeviceRolloutState.APPLIED
    assert drive(session_factory, rollout_id, edges)[0].state is RolloutState.DONE
    assert "model_rollout_resent" in audit_actions(session_factory, rollout_id)


def test_bytes_other_than_the_rollouts_model_are_not_sent(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    a = register(session_factory)[0]
    rollout_id = start(session_factory, [a])
    edges = FakeEdges(session_factory, handler, {a: (True, "applied")})

    with pytest.raises(RolloutError, match="not these bytes"):
        drive_rollout(
            session_factory, rollout_id, DATA + b"x", edges, clock=lambda: AT, timeout_s=0, on_change=print
        )
    assert edges.commands == {}


def test_two_drivers_at_once_send_each_device_the_update_once(
    database_url: str, session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: a second driver waits or fails, it never overlaps")
    devices = [register(session_factory)[0] for _ in range(6)]
    rollout_id = start(session_factory, devices)
    edges = FakeEdges(session_factory, handler, dict.fromkeys(devices, (True, "applied")))
    counting = CountingEdges(edges)
    barrier = threading.Barrier(4)

    def driver() -> None:
        barrier.wait()
        drive_rollout(
            session_factory,
            rollout_id,
            DATA,
            counting,
            clock=lambda: AT,
            timeout_s=5,
            poll_s=0.01,
            on_change=lambda _: None,
        )

    threads = [threading.Thread(target=driver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert counting.commands == dict.fromkeys(devices, 1)
    with session_factory() as session:
        assert rollout_status(session, rollout_id).state is RolloutState.DONE


class CountingEdges:
    """Counts the commands each device is sent, from any number of threads."""

    def __init__(self, edges: FakeEdges) -> None:
        self.edges, self.commands, self.lock = edges, Counter[str](), threading.Lock()

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if topic.endswith("/command"):
            with self.lock:
                self.commands[topic.split("/")[2]] += 1
        self.edges.publish(topic, payload, retain=retain)

"""MessageHandler on SQLite and PostgreSQL: stored once, duplicates, and every refusal reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.protocol import AckStatus, Channel, sign, topic
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import (
    DeviceUpdates,
    MessageHandler,
    Outcome,
    ReceivedMessage,
    RejectReason,
    Result,
)
from curbwatch.server.tables import DeadLetter, Device, Event, Evidence
from tests.server.conftest import register
from tests.server.factories import envelope, event_document, jpeg_like

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.fixture
def handler(tmp_path: Path) -> MessageHandler:
    return MessageHandler(EvidenceStore(tmp_path / "evidence"), max_payload_bytes=8 * 1024 * 1024)


def handle_all(
    session_factory: sessionmaker[Session], handler: MessageHandler, messages: list[tuple[str, bytes]]
) -> list[Outcome]:
    """One transaction for all messages, as the worker's batch does."""
    updates = DeviceUpdates()
    with session_factory() as session, session.begin():
        outcomes = handler.handle_batch(session, [ReceivedMessage(t, p, NOW) for t, p in messages], updates)
        updates.apply(session)
    return outcomes


def test_events_are_stored_once_and_redeliveries_are_duplicates(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, key = register(session_factory)
    messages = [
        (topic(device_id, Channel.EVENT), envelope(device_id, key, seq).to_bytes()) for seq in (1, 2, 3)
    ]
    # The second copy of message 2 in the same batch must find the first one.
    first = handle_all(session_factory, handler, [*messages, messages[1]])
    again = handle_all(session_factory, handler, messages)

    assert [o.result for o in first] == [Result.STORED] * 3 + [Result.DUPLICATE]
    assert [o.ack.status for o in again if o.ack] == [AckStatus.DUPLICATE] * 3
    with session_factory() as session:
        stored = session.scalars(select(Event).where(Event.device_id == device_id).order_by(Event.seq)).all()
        assert [e.seq for e in stored] == [1, 2, 3]
        assert stored[0].document["event_id"] == stored[0].event_id
        assert session.get(Device, device_id).last_seq == 3


def _replay(device_id: str, key: bytes) -> list[bytes]:
    return [envelope(device_id, key, 1).to_bytes(), envelope(device_id, key, 1).to_bytes()]


def _wrong_key(device_id: str, key: bytes) -> list[bytes]:
    return [envelope(device_id, b"x" * 32, 1).to_bytes()]


def _resigned(device_id: str, key: bytes, **changes: object) -> list[bytes]:
    body = envelope(device_id, key, 1).wire_dict()
    body.update(changes)
    body["sig"] = sign(body, key)
    return [json.dumps(body).encode()]


def _payload_not_an_event(device_id: str, key: bytes) -> list[bytes]:
    document = event_document(device_id)
    return _resigned(
        device_id, key, message_id=document["event_id"], payload={**document, "rule": "jaywalking"}
    )


def _other_device_in_payload(device_id: str, key: bytes) -> list[bytes]:
    document = event_document("someone-else")
    return _resigned(device_id, key, message_id=document["event_id"], payload=document)


# Each case: the event-topic payloads sent in order, the reason the LAST one is refused for, and
# whether the device gets a REJECTED ack for it.
EVENT_REFUSALS = [
    ("malformed_json", lambda d, k: [b"{not json"], RejectReason.MALFORMED_JSON, False),
    ("not_an_object", lambda d, k: [b"[1, 2]"], RejectReason.SCHEMA, False),
    ("too_large", lambda d, k: [b"{" + b" " * (300 * 1024) + b"}"], RejectReason.TOO_LARGE, False),
    ("wrong_signature", _wrong_key, RejectReason.BAD_SIGNATURE, False),
    ("unsigned", lambda d, k: [b'{"schema": "curbwatch.envelope.v1"}'], RejectReason.BAD_SIGNATURE, False),
    ("bad_envelope", lambda d, k: _resigned(d, k, seq=0), RejectReason.SCHEMA, True),
    ("bad_event", _payload_not_an_event, RejectReason.SCHEMA, True),
    ("device_mismatch", _other_device_in_payload, RejectReason.ID_MISMATCH, True),
    ("replayed_seq", _replay, RejectReason.REPLAYED_SEQ, True),
]


@pytest.mark.parametrize(
    ("make_payloads", "reason", "acked"),
    [case[1:] for case in EVENT_REFUSALS],
    ids=[c[0] for c in EVENT_REFUSALS],
)
def test_event_refusals_are_dead_lettered_with_their_reason(
    session_factory: sessionmaker[Session], handler: MessageHandler, make_payloads, reason, acked
) -> None:
    device_id, key = register(session_factory)
    payloads = make_payloads(device_id, key)
    outcomes = handle_all(session_factory, handler, [(topic(device_id, Channel.EVENT), p) for p in payloads])

    last = outcomes[-1]
    assert (last.result, last.reason) == (Result.REJECTED, reason)
    assert (last.ack is not None) == acked
    if acked:
        assert last.ack.status is AckStatus.REJECTED and last.ack.reason == reason.value
    with session_factory() as session:
        letters = session.scalars(select(DeadLetter).where(DeadLetter.device_id == device_id)).all()
        assert [letter.reason for letter in letters] == [reason.value]
        assert letters[0].payload == payloads[-1][:4096]
        stored = session.scalar(select(func.count()).select_from(Event).where(Event.device_id == device_id))
        assert stored == len(payloads) - 1


def test_unknown_device_is_refused_without_ack(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    outcome = handle_all(
        session_factory,
        handler,
        [(topic("edge-nobody", Channel.EVENT), envelope("edge-nobody", b"k" * 32, 1).to_bytes())],
    )[0]
    assert (outcome.reason, outcome.ack) == (RejectReason.UNKNOWN_DEVICE, None)


def test_evidence_is_checked_against_its_hash(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, _ = register(session_factory)
    sha, data = jpeg_like(seed=hash(device_id))
    other_sha, _ = jpeg_like(seed=hash(device_id) + 1)
    outcomes = handle_all(
        session_factory,
        handler,
        [
            (topic(device_id, Channel.EVIDENCE, sha), data),
            (topic(device_id, Channel.EVIDENCE, sha), data),
            (topic(device_id, Channel.EVIDENCE, other_sha), data),
            (topic(device_id, Channel.EVIDENCE, "not-a-hash"), data),
        ],
    )
    assert [o.counter_key for o in outcomes] == ["stored", "duplicate", "hash_mismatch", "bad_topic"]
    assert outcomes[2].ack.status is AckStatus.REJECTED and outcomes[2].ack.id == other_sha
    assert handler.store.read(sha) == data
    with session_factory() as session:
        assert session.get(Evidence, sha).size_bytes == len(data)
        assert session.get(Evidence, other_sha) is None


def test_status_and_heartbeat_update_the_device(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, _ = register(session_factory)
    status = {"schema": "curbwatch.status.v1", "device_id": device_id, "state": "online"}
    heartbeat = {
        "schema": "curbwatch.heartbeat.v1",
        "device_id": device_id,
        "ts": "2026-11-27T01:59:00+00:00",
        "outbox_depth": 3,
        "outbox_bytes": 900,
        "disk_free_bytes": 10**9,
    }
    outcomes = handle_all(
        session_factory,
        handler,
        [
            (topic(device_id, Channel.STATUS), json.dumps(status).encode()),
            (topic(device_id, Channel.HEARTBEAT), json.dumps(heartbeat).encode()),
            (topic(device_id, Channel.STATUS), json.dumps({**status, "device_id": "edge-x"}).encode()),
        ],
    )
    assert [o.counter_key for o in outcomes] == ["recorded", "recorded", "id_mismatch"]
    assert all(o.ack is None for o in outcomes)
    with session_factory() as session:
        device = session.get(Device, device_id)
        assert device.last_status == "online"
        assert device.last_heartbeat["outbox_depth"] == 3

"""MessageHandler on SQLite and PostgreSQL: stored once, duplicates, every refusal reason, cases
folded from stored events, and what devices report (status, heartbeat, config, command results)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.protocol import AckStatus, Channel, sign, topic
from curbwatch.server.config import CaseServerConfig, GridConfig
from curbwatch.server.db import as_utc
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import (
    DeviceUpdates,
    MessageHandler,
    Outcome,
    ReceivedMessage,
    RejectReason,
    Result,
)
from curbwatch.server.tables import (
    AuditLog,
    Case,
    CaseEvent,
    DeadLetter,
    Device,
    Event,
    Evidence,
    EvidenceRef,
)
from tests.server.conftest import register
from tests.server.factories import envelope, event_document, jpeg_like

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
GRID = GridConfig(origin_lat=31.2, origin_lon=121.4, cell_m=100)


@pytest.fixture
def handler(tmp_path: Path) -> MessageHandler:
    return MessageHandler(
        EvidenceStore(tmp_path / "evidence"), CaseServerConfig(grid=GRID), max_payload_bytes=8 * 1024 * 1024
    )


def handle_all(
    session_factory: sessionmaker[Session],
    handler: MessageHandler,
    messages: list[tuple[str, bytes]],
    at: datetime = NOW,
) -> list[Outcome]:
    """One transaction for all messages, as the worker's batch does."""
    updates = DeviceUpdates()
    with session_factory() as session, session.begin():
        outcomes = handler.handle_batch(session, [ReceivedMessage(t, p, at) for t, p in messages], updates)
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


def episode_documents(device_id: str, camera_id: str, **overrides: object) -> list[dict]:
    """Start, update and end of one episode."""
    episode_id = uuid.uuid4().hex
    return [
        event_document(
            device_id,
            episode_id=episode_id,
            camera_id=camera_id,
            type=kind,
            ts=ts,
            dwell_s=dwell,
            **overrides,
        )
        for kind, ts, dwell in (
            ("start", "2026-11-27T01:02:00+00:00", 120.0),
            ("update", "2026-11-27T01:07:00+00:00", 420.0),
            ("end", "2026-11-27T01:09:00+00:00", 540.0),
        )
    ]


def cases_of(session: Session, device_id: str) -> list[Case]:
    return list(session.scalars(select(Case).where(Case.device_id == device_id).order_by(Case.created_at)))


def test_an_episode_across_batches_is_one_case_with_its_grid_cell(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, key = register(session_factory)
    documents = episode_documents(device_id, "cam-a", location=[31.2009, 121.4011])
    messages = [
        (topic(device_id, Channel.EVENT), envelope(device_id, key, seq, document).to_bytes())
        for seq, document in enumerate(documents, start=1)
    ]
    for n, message in enumerate(messages):  # one batch each, as a slow trickle would arrive
        handle_all(session_factory, handler, [message], at=NOW + timedelta(seconds=n))

    with session_factory() as session:
        [case] = cases_of(session, device_id)
        assert case.status == "awaiting_verification"
        assert case.grid_cell == GRID.cell_of(31.2009, 121.4011) != GRID.cell_of(31.2001, 121.4001)
        assert case.created_at.replace(tzinfo=UTC) == NOW
        assert case.last_event_at.replace(tzinfo=UTC) == datetime(2026, 11, 27, 1, 9, tzinfo=UTC)
        linked = session.scalars(select(CaseEvent.event_id).where(CaseEvent.case_id == case.id)).all()
        assert sorted(linked) == sorted(d["event_id"] for d in documents)
        audit = session.scalars(select(AuditLog).where(AuditLog.case_id == case.id)).all()
        assert [(a.action, a.actor, a.to_state) for a in audit] == [
            ("open_case", f"edge:{device_id}", "awaiting_verification")
        ]


def test_a_batch_folds_in_order_and_a_case_without_location_has_no_cell(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, key = register(session_factory)
    # Two cameras, their episodes interleaved in one batch: each episode is its own case.
    first, second = episode_documents(device_id, "cam-a"), episode_documents(device_id, "cam-b")
    interleaved = [d for pair in zip(first, second, strict=True) for d in pair]
    outcomes = handle_all(
        session_factory,
        handler,
        [
            (topic(device_id, Channel.EVENT), envelope(device_id, key, seq, document).to_bytes())
            for seq, document in enumerate(interleaved, start=1)
        ],
    )
    assert [o.result for o in outcomes] == [Result.STORED] * 6
    with session_factory() as session:
        cases = cases_of(session, device_id)
        assert sorted(c.camera_id for c in cases) == ["cam-a", "cam-b"]
        assert [c.grid_cell for c in cases] == [None, None]
        for case, documents in ((c, first if c.camera_id == "cam-a" else second) for c in cases):
            assert case.episode_ids == [documents[0]["episode_id"]]


def test_a_redelivered_or_refused_event_changes_no_case(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, key = register(session_factory)
    documents = episode_documents(device_id, "cam-a")
    envelopes = [envelope(device_id, key, seq, d) for seq, d in enumerate(documents, start=1)]
    messages = [(topic(device_id, Channel.EVENT), e.to_bytes()) for e in envelopes]
    handle_all(session_factory, handler, messages)

    def state() -> tuple:
        with session_factory() as session:
            [case] = cases_of(session, device_id)
            audit = session.scalar(
                select(func.count()).select_from(AuditLog).where(AuditLog.case_id == case.id)
            )
            links = session.scalar(
                select(func.count()).select_from(CaseEvent).where(CaseEvent.case_id == case.id)
            )
            return case.id, case.updated_at, case.last_event_at, case.episode_ids, audit, links

    before = state()
    # The whole episode again an hour later, plus a replay of seq 1 carrying a new episode.
    replayed = envelope(device_id, key, 1, episode_documents(device_id, "cam-a")[0])
    later = NOW + timedelta(hours=1)
    outcomes = handle_all(
        session_factory,
        handler,
        [*messages, (topic(device_id, Channel.EVENT), replayed.to_bytes())],
        at=later,
    )
    assert [o.counter_key for o in outcomes] == ["duplicate"] * 3 + ["replayed_seq"]
    assert state() == before


def evidence_refs(device_id: str, track_id: int = 7) -> list[dict]:
    """A clean frame, its annotated copy and a crop, with fresh hashes, as an edge lists them."""
    clean, annotated, crop = (f"{uuid.uuid4().hex}{uuid.uuid4().hex}" for _ in range(3))
    common = {"size_bytes": 1024, "width": 1280, "height": 720, "path": f"{device_id}/x.jpg"}
    return [
        {**common, "role": "clean", "sha256": clean, "restricted": True},
        {**common, "role": "annotated", "sha256": annotated, "derived_from": clean, "restricted": False},
        {
            **common,
            "role": "crop",
            "sha256": crop,
            "derived_from": clean,
            "track_id": track_id,
            "restricted": False,
        },
    ]


def test_stored_events_file_their_evidence_references(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, key = register(session_factory)
    documents = episode_documents(device_id, "cam-refs")
    for document in documents:
        document["evidence"] = evidence_refs(device_id)
    messages = [
        (topic(device_id, Channel.EVENT), envelope(device_id, key, seq, d).to_bytes())
        for seq, d in enumerate(documents, start=1)
    ]
    # The start's redelivery in the same batch, then the whole episode again and a replayed seq
    # carrying other images: none of them files a reference.
    handle_all(session_factory, handler, [*messages, messages[0]])
    replayed = {**episode_documents(device_id, "cam-refs")[0], "evidence": evidence_refs(device_id)}
    again = [*messages, (topic(device_id, Channel.EVENT), envelope(device_id, key, 1, replayed).to_bytes())]
    assert [o.counter_key for o in handle_all(session_factory, handler, again)][-1] == "replayed_seq"

    with session_factory() as session:
        rows = session.scalars(select(EvidenceRef).where(EvidenceRef.device_id == device_id)).all()
    filed = {(r.event_id, r.sha256): r for r in rows}
    expected = {(d["event_id"], item["sha256"]): (d, item) for d in documents for item in d["evidence"]}
    assert filed.keys() == expected.keys()
    for key_, (document, item) in expected.items():
        row = filed[key_]
        assert (row.role, row.restricted, row.track_id) == (
            item["role"],
            item["restricted"],
            item.get("track_id"),
        )
        assert (row.camera_id, row.device_id) == ("cam-refs", device_id)
        assert as_utc(row.ts) == datetime.fromisoformat(document["ts"])


def test_reported_config_is_stored_on_the_device(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, _ = register(session_factory)
    report = {
        "schema": "curbwatch.config-report.v1",
        "device_id": device_id,
        "applied_version": "v3",
        "rejected_version": "v4",
        "error": "zones of cam-1: polygon: too few points",
        "ts": "2026-11-27T01:58:00+00:00",
    }
    outcomes = handle_all(
        session_factory,
        handler,
        [
            (topic(device_id, Channel.CONFIG_REPORTED), json.dumps(report).encode()),
            (
                topic(device_id, Channel.CONFIG_REPORTED),
                json.dumps({**report, "device_id": "edge-x"}).encode(),
            ),
            (topic(device_id, Channel.CONFIG_REPORTED), json.dumps({**report, "ts": "yesterday"}).encode()),
        ],
    )
    assert [o.counter_key for o in outcomes] == ["recorded", "id_mismatch", "schema"]
    assert all(o.ack is None for o in outcomes)
    with session_factory() as session:
        device = session.get(Device, device_id)
        assert (device.reported_config_version, device.reported_config_error) == ("v3", report["error"])
        assert device.reported_config_at.replace(tzinfo=UTC) == datetime(2026, 11, 27, 1, 58, tzinfo=UTC)


def test_a_command_result_for_no_check_is_dead_lettered(
    session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, _ = register(session_factory)
    result = {"schema": "curbwatch.command-result.v1", "correlation_id": uuid.uuid4().hex, "ok": True}
    outcomes = handle_all(
        session_factory,
        handler,
        [
            (topic(device_id, Channel.COMMAND_RESULT), json.dumps(result).encode()),
            (topic(device_id, Channel.COMMAND_RESULT), json.dumps({**result, "ok": "maybe"}).encode()),
        ],
    )
    assert [o.counter_key for o in outcomes] == ["unknown_check", "schema"]
    with session_factory() as session:
        letters = session.scalars(select(DeadLetter).where(DeadLetter.device_id == device_id)).all()
        assert sorted(letter.reason for letter in letters) == ["schema", "unknown_check"]

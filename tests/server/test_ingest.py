"""IngestWorker against a private Mosquitto, on SQLite and PostgreSQL: events stored and folded
into cases, refusals counted, two workers sharing the load, a bad city configuration refused."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.protocol import AckStatus, Channel, sign
from curbwatch.server.ingest import IngestError, IngestWorker
from curbwatch.server.settings import ServerSettings, get_settings
from curbwatch.server.tables import AuditLog, Case, CaseEvent, DeadLetter, Event
from tests.server.conftest import PrivateBroker, register
from tests.server.factories import envelope, event_document, jpeg_like
from tests.server.fake_device import FakeDevice


def worker_settings(
    broker: PrivateBroker, database_url: str, tmp_path: Path, group: str, name: str
) -> ServerSettings:
    return get_settings(
        database_url=database_url,
        evidence_dir=tmp_path / "evidence",
        mqtt_port=broker.port,
        share_group=group,
        worker_name=f"{group}-{name}",
        session_expiry_s=60,
        max_payload_bytes=16 * 1024 * 1024,
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """This module's own broker: the shared one holds retained device statuses that other modules
    leave behind (Mosquitto 2 hands retained messages to a new ``$share`` subscriber too), and a
    worker counts each as an unknown device."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    broker = PrivateBroker(tmp_path_factory.mktemp("mosquitto-ingest"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def start_worker(
    broker: PrivateBroker, database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> Iterator:
    group = f"g{uuid.uuid4().hex[:8]}"
    workers: list[IngestWorker] = []

    def start(name: str = "a") -> IngestWorker:
        worker = IngestWorker(worker_settings(broker, database_url, tmp_path, group, name), session_factory)
        workers.append(worker)
        worker.start()
        assert worker.wait_subscribed(10), "worker did not subscribe"
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def device(
    broker: PrivateBroker, session_factory: sessionmaker[Session]
) -> Iterator[tuple[FakeDevice, bytes]]:
    device_id, key = register(session_factory)
    fake = FakeDevice(device_id, broker.port)
    yield fake, key
    fake.close()


def stored_count(session_factory: sessionmaker[Session], device_id: str) -> int:
    with session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(Event).where(Event.device_id == device_id)) or 0
        )


def test_events_stored_once_and_replay_acked_duplicate(
    start_worker, device: tuple[FakeDevice, bytes], session_factory: sessionmaker[Session]
) -> None:
    worker = start_worker()
    fake, key = device
    envelopes = [envelope(fake.device_id, key, seq) for seq in range(1, 201)]
    ids = {e.message_id for e in envelopes}
    for _ in range(2):  # the second round is the edge replaying its whole outbox
        for item in envelopes:
            fake.publish(Channel.EVENT, item.to_bytes())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(len(fake.acks[i]) for i in ids) < 400:
        time.sleep(0.05)

    assert stored_count(session_factory, fake.device_id) == 200
    assert all(sorted(fake.acks[i]) == [AckStatus.DUPLICATE, AckStatus.STORED] for i in ids)
    assert (worker.counters["stored"], worker.counters["duplicate"]) == (200, 200)


def test_bad_inputs_are_refused_counted_and_ingest_keeps_running(
    start_worker, device: tuple[FakeDevice, bytes], session_factory: sessionmaker[Session]
) -> None:
    worker = start_worker()
    fake, key = device
    good = [envelope(fake.device_id, key, seq) for seq in (1, 2, 3)]
    forged = envelope(fake.device_id, b"not the key".ljust(32), 4)
    replay = envelope(fake.device_id, key, 2)  # seq 2 again, different event
    sha, data = jpeg_like(seed=7)
    fake.publish(Channel.EVENT, good[0].to_bytes())
    fake.publish(Channel.EVENT, b'{"schema": "curbwatch.envelope.v1", "seq": ')
    fake.publish(Channel.EVENT, good[1].to_bytes())
    wrong_schema = {**good[2].wire_dict(), "seq": "three", "message_id": uuid.uuid4().hex}
    wrong_schema["sig"] = sign(wrong_schema, key)  # signed fine, but seq is not a number
    fake.publish(Channel.EVENT, json.dumps(wrong_schema).encode())
    fake.publish(Channel.EVENT, b"x" * (10 * 1024 * 1024))
    fake.publish(Channel.EVENT, forged.to_bytes())
    fake.publish(Channel.EVENT, replay.to_bytes())
    fake.publish(Channel.EVIDENCE, data[:-1] + b"!", sha)
    stranger = FakeDevice("edge-unknown-" + uuid.uuid4().hex[:6], fake.port)
    stranger.publish(Channel.EVENT, envelope(stranger.device_id, key, 1).to_bytes())
    fake.publish(Channel.EVENT, good[2].to_bytes())  # the valid one after all that still goes in

    assert (
        fake.wait_acks({good[2].message_id, replay.message_id, sha, wrong_schema["message_id"]}, 20) == set()
    )
    expected = {
        "malformed_json": 1,
        "schema": 1,
        "bad_signature": 1,
        "too_large": 1,
        "replayed_seq": 1,
        "hash_mismatch": 1,
        "unknown_device": 1,
    }
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and worker.counters["unknown_device"] < 1:
        time.sleep(0.05)
    stranger.close()
    assert {reason: worker.counters[reason] for reason in expected} == expected
    assert worker.counters["stored"] == 3
    assert fake.acks[replay.message_id] == [AckStatus.REJECTED]
    assert fake.reasons[wrong_schema["message_id"]] == "schema"
    assert fake.reasons[sha] == "hash_mismatch"
    assert forged.message_id not in fake.acks  # unauthenticated: no ack
    with session_factory() as session:
        rows = session.execute(
            select(DeadLetter.reason, func.count())
            .where(DeadLetter.device_id.in_([fake.device_id, stranger.device_id]))
            .group_by(DeadLetter.reason)
        ).all()
    assert dict(rows) == expected
    assert stored_count(session_factory, fake.device_id) == 3


def fake_port(fake: FakeDevice) -> int:
    return fake._client.port


def test_two_workers_split_a_shared_subscription(
    start_worker, device: tuple[FakeDevice, bytes], session_factory: sessionmaker[Session]
) -> None:
    workers = [start_worker("a"), start_worker("b")]
    fake, key = device
    envelopes = [envelope(fake.device_id, key, seq) for seq in range(1, 1001)]
    for item in envelopes:
        fake.publish(Channel.EVENT, item.to_bytes())
    assert fake.wait_acks({e.message_id for e in envelopes}, 60) == set()

    assert stored_count(session_factory, fake.device_id) == 1000
    shares = [w.counters["stored"] + w.counters["duplicate"] for w in workers]
    assert sum(w.counters["stored"] for w in workers) == 1000
    assert min(shares) > 0, f"one worker got nothing: {shares}"


def test_an_event_over_mqtt_becomes_a_case(
    start_worker, device: tuple[FakeDevice, bytes], session_factory: sessionmaker[Session]
) -> None:
    start_worker()
    fake, key = device
    event = envelope(fake.device_id, key, 1, event_document(fake.device_id, location=[31.23, 121.47]))
    fake.publish(Channel.EVENT, event.to_bytes())
    assert fake.wait_acks({event.message_id}, 20) == set()

    with session_factory() as session:
        [case] = session.scalars(select(Case).where(Case.device_id == fake.device_id)).all()
        assert (case.status, case.camera_id, case.event_code) == ("awaiting_verification", "cam-1", "0505")
        assert case.grid_cell is not None
        assert session.get(CaseEvent, event.message_id).case_id == case.id
        [opened] = session.scalars(select(AuditLog).where(AuditLog.case_id == case.id)).all()
        assert (opened.action, opened.actor, opened.role) == ("open_case", f"edge:{fake.device_id}", "system")


def test_episodes_split_between_two_workers_fold_into_one_case_per_place(
    start_worker, device: tuple[FakeDevice, bytes], session_factory: sessionmaker[Session]
) -> None:
    workers = [start_worker("a"), start_worker("b")]
    fake, key = device
    cameras = [f"cam-{n}" for n in range(12)]
    # Three episodes at each camera (a car hidden by buses twice), each with start, update and end:
    # every event of a camera belongs to one case, whichever worker gets it and in whatever order.
    documents = []
    for episode in range(3):
        for camera in cameras:
            episode_id = uuid.uuid4().hex
            start = f"2026-11-27T01:{10 * episode:02d}:00+00:00"
            for kind, minute in (("start", 2), ("update", 5), ("end", 8)):
                documents.append(
                    event_document(
                        fake.device_id,
                        episode_id=episode_id,
                        camera_id=camera,
                        type=kind,
                        episode_start=start,
                        ts=f"2026-11-27T01:{10 * episode + minute:02d}:00+00:00",
                        dwell_s=60.0 * minute,
                    )
                )
    envelopes = [envelope(fake.device_id, key, seq, d) for seq, d in enumerate(documents, start=1)]
    for item in envelopes:
        fake.publish(Channel.EVENT, item.to_bytes())
    assert fake.wait_acks({e.message_id for e in envelopes}, 60) == set()
    assert all(fake.acks[e.message_id] == [AckStatus.STORED] for e in envelopes)
    assert min(w.counters["stored"] for w in workers) > 0

    with session_factory() as session:
        cases = session.scalars(select(Case).where(Case.device_id == fake.device_id)).all()
        assert sorted(c.camera_id for c in cases) == sorted(cameras)
        for case in cases:
            linked = session.scalars(select(CaseEvent.event_id).where(CaseEvent.case_id == case.id)).all()
            expected = {d["event_id"] for d in documents if d["camera_id"] == case.camera_id}
            assert set(linked) == expected and len(case.episode_ids) == 3
            opened = session.scalar(
                select(func.count()).select_from(AuditLog).where(AuditLog.case_id == case.id)
            )
            assert opened == 1


def test_a_bad_city_configuration_stops_the_worker(
    broker: PrivateBroker, database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    config = tmp_path / "city.yaml"
    config.write_text("city: Somewhere\nfolding:\n  attach_within_s: -5\n")
    settings = worker_settings(broker, database_url, tmp_path, "g-bad", "a").model_copy(
        update={"case_config": config}
    )
    with pytest.raises(IngestError, match="attach_within_s"):
        IngestWorker(settings, session_factory)

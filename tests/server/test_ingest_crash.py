"""The ingest process SIGKILLed in the middle of a burst, then restarted: every event stored and
folded into its case once.

Also measures stored-and-acknowledged throughput per backend and batch size.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.protocol import AckStatus, Channel
from curbwatch.server.ingest import IngestWorker
from curbwatch.server.tables import Case, CaseEvent, Event
from tests.server.conftest import PrivateBroker, register
from tests.server.factories import envelope, event_document
from tests.server.fake_device import FakeDevice
from tests.server.test_ingest import worker_settings

pytestmark = pytest.mark.slow

BURST = 10_000
RESEND_AFTER_S = 5.0  # the edge's default is 30 s; shorter keeps the test short


class WorkerProcess:
    """``python -m curbwatch.server.ingest`` with a fixed worker name, so restarts resume its session."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "curbwatch.server.ingest"], env=self.env, stdout=log, stderr=log
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


@pytest.fixture
def worker_process(broker: PrivateBroker, database_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    settings = worker_settings(broker, database_url, tmp_path, f"g{uuid.uuid4().hex[:8]}", "crash")
    env = {**os.environ}
    for name, value in settings.model_dump(exclude={"mqtt_password", "mqtt_username"}).items():
        if value is not None:  # unset stays unset ("None" would name a file)
            env[f"CURBWATCH_{name.upper()}"] = str(value)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        yield worker
    finally:
        worker.kill()


def burst(device_id: str, key: bytes, count: int) -> list[bytes]:
    """Signed events of ``count`` cameras, one each: every event opens a case (the costlier path)."""
    return [
        envelope(device_id, key, seq, event_document(device_id, camera_id=f"cam-{seq}")).to_bytes()
        for seq in range(1, count + 1)
    ]


def stored(session_factory: sessionmaker[Session], device_id: str) -> int:
    with session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(Event).where(Event.device_id == device_id)) or 0
        )


@pytest.mark.timeout(200)
def test_sigkill_mid_burst_loses_and_doubles_nothing(
    worker_process: WorkerProcess,
    broker: PrivateBroker,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    device_id, key = register(session_factory)
    # Like the edge: re-send what the server has not acknowledged, so whatever a kill strands
    # anywhere (broker, worker memory, an uncommitted batch) comes back until it is stored.
    fake = FakeDevice(device_id, broker.port, resend_after_s=RESEND_AFTER_S)
    envelopes = burst(device_id, key, BURST)
    ids = {e.split(b'"message_id":"')[1][:32].decode() for e in envelopes}
    try:
        worker_process.start()
        time.sleep(1.0)  # let it connect and subscribe, so the broker holds the session from here on
        for payload in envelopes:
            fake.publish(Channel.EVENT, payload)
        deadline = time.monotonic() + 60
        while stored(session_factory, device_id) < BURST // 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        at_kill = stored(session_factory, device_id)
        worker_process.kill()
        assert 0 < at_kill < BURST, "the kill must land mid-burst"
        time.sleep(0.5)
        worker_process.start()
        missing = fake.wait_acks(ids, 120)
        assert worker_process.terminate() == 0, "SIGTERM must stop the worker cleanly"
    finally:
        fake.close()
        worker_process.kill()

    log = (tmp_path / "worker.log").read_text()
    assert missing == set(), f"{len(missing)} events never acknowledged; worker log:\n{log[-3000:]}"
    with session_factory() as session:
        rows = session.execute(select(Event.event_id, Event.seq).where(Event.device_id == device_id)).all()
    assert len(rows) == BURST
    assert {event_id for event_id, _ in rows} == ids  # each event once
    assert sorted(seq for _, seq in rows) == list(range(1, BURST + 1))  # no gap, no seq twice
    with session_factory() as session:
        folded = session.scalars(
            select(CaseEvent.case_id)
            .join(Case, Case.id == CaseEvent.case_id)
            .where(Case.device_id == device_id)
        ).all()
    assert len(folded) == len(set(folded)) == BURST  # each event in one case, each case opened once
    statuses = [status for item_id in ids for status in fake.acks[item_id]]
    assert AckStatus.REJECTED not in statuses
    stored_acks = statuses.count(AckStatus.STORED)
    assert stored_acks <= BURST  # a STORED ack is sent once per commit; redeliveries say DUPLICATE
    print(
        f"\nkilled at {at_kill} stored; {stored_acks} STORED acks; {fake.resent} events re-sent by the device"
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("batch_max", [50, 500])
def test_throughput(
    batch_max: int,
    broker: PrivateBroker,
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    count = 2000
    settings = worker_settings(broker, database_url, tmp_path, f"g{uuid.uuid4().hex[:8]}", "t")
    worker = IngestWorker(settings.model_copy(update={"batch_max": batch_max}), session_factory)
    device_id, key = register(session_factory)
    fake = FakeDevice(device_id, broker.port)
    payloads = burst(device_id, key, count)
    ids = {p.split(b'"message_id":"')[1][:32].decode() for p in payloads}
    worker.start()
    try:
        assert worker.wait_subscribed(10)
        started = time.perf_counter()
        for payload in payloads:
            fake.publish(Channel.EVENT, payload)
        assert fake.wait_acks(ids, 150) == set()
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        fake.close()
    backend = database_url.split(":", 1)[0]
    print(
        f"\n{backend} batch_max={batch_max}: {count / elapsed:.0f} events/s stored+acked "
        f"({worker.batches} batches)"
    )
    assert stored(session_factory, device_id) == count
    with session_factory() as session:
        cases = session.scalar(select(func.count()).select_from(Case).where(Case.device_id == device_id))
    assert cases == count

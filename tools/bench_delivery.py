"""``make bench-delivery``: measure edge -> server delivery and write its section of BENCHMARKS.md.

1. Raw Mosquitto QoS 1 throughput: one publisher, one subscriber, 1 KB payloads.
2. End-to-end events/s (signed envelope -> ingest commit -> AckV1 back at the publisher) on SQLite
   and PostgreSQL, with one and two ingest workers, as a ratio to (1).
3. Latency from publish to commit at a steady rate: publish -> AckV1 arrival (the ack leaves after
   the commit) and publish -> the worker's receipt (``events.received_at``).
4. Reconnect storm: many devices with queued events connect at once and flush; every event is
   stored exactly once (COUNT and COUNT DISTINCT).

Everything runs against a private Mosquitto on a free port; ingest workers are separate processes
(as in production) so the publishers' GIL does not slow them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import resource
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from curbwatch.server.db import make_engine, make_session_factory, migrate
from curbwatch.server.devices import add_device
from curbwatch.server.tables import Event
from tools.delivery_clients import (
    AckingPublisher,
    Device,
    build_envelopes,
    free_port,
    ingest_workers,
    private_mosquitto,
    raw_consumer,
    run_storm,
    signed_event,
)
from tools.delivery_report import RunInfo, machine, render, throughput_line, versions, write_section

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD = REPO_ROOT / "build" / "bench"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ISSUE_STORM_DEVICES = 2000
BACKENDS = ("sqlite", "postgresql")
ResultT = TypeVar("ResultT")
RAW_PAYLOAD_BYTES = 1024
RAW_TOPIC = "bench/raw"


@dataclass(frozen=True)
class Throughput:
    """Messages delivered (``done`` of ``messages``) in ``seconds``; ``workers`` 0 for raw Mosquitto."""

    label: str
    backend: str
    workers: int
    messages: int
    done: int
    seconds: float
    payload_bytes: int

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latency:
    """Publish -> commit percentiles of a steady-rate run."""

    backend: str
    rate: float
    events: int
    acked: int
    ack_ms: tuple[float, float]  # p50, p99 of publish -> AckV1 arrival
    received_ms: tuple[float, float]  # p50, p99 of publish -> events.received_at


@dataclass(frozen=True)
class Storm:
    """A reconnect storm: timings, acks back at the devices, and rows stored (COUNT, COUNT DISTINCT)."""

    backend: str
    devices: int
    per_device: int
    connected_s: float
    acked_s: float
    acked: int
    rows: int
    distinct: int
    lost: int  # devices that could not connect or dropped their connection


@dataclass
class Results:
    """Everything one run measured."""

    raw: Throughput | None = None
    e2e: list[Throughput] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    storm: list[Storm] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def register_devices(factory: sessionmaker[Session], prefix: str, count: int) -> list[Device]:
    """``count`` freshly registered devices ``<prefix>-<n>`` with their keys."""
    with factory() as session, session.begin():
        return [
            Device(f"{prefix}-{n}", bytes.fromhex(add_device(session, f"{prefix}-{n}"))) for n in range(count)
        ]


def count_events(factory: sessionmaker[Session], prefix: str) -> tuple[int, int]:
    """COUNT and COUNT DISTINCT event_id of the events of devices named ``<prefix>-*``."""
    with factory() as session:
        row = session.execute(
            select(func.count(), func.count(Event.event_id.distinct())).where(
                Event.device_id.like(f"{prefix}-%")
            )
        ).one()
    return int(row[0]), int(row[1])


def wait_for(count: Callable[[], int], total: int, timeout_s: float, desc: str) -> int:
    """Polls ``count`` until it reaches ``total`` or the timeout, with a progress bar."""
    deadline = time.monotonic() + timeout_s
    with tqdm(total=total, desc=desc, unit="msg", leave=False) as bar:
        while (done := count()) < total and time.monotonic() < deadline:
            bar.update(done - bar.n)
            time.sleep(0.1)
        bar.update(done - bar.n)
    return done


def measure_raw(port: int, messages: int, timeout_s: float) -> Throughput:
    """One publisher, one subscriber in another process, QoS 1, 1 KB: messages/s received."""
    ctx = multiprocessing.get_context("spawn")
    received, last = ctx.Value("q", 0, lock=False), ctx.Value("d", 0.0, lock=False)
    ready = ctx.Event()
    consumer = ctx.Process(target=raw_consumer, args=(port, RAW_TOPIC, messages, ready, received, last))
    consumer.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("raw subscriber did not subscribe")
        with AckingPublisher(port) as publisher:
            payload = bytes(RAW_PAYLOAD_BYTES)
            start = time.time()
            for _ in range(messages):
                publisher.publish(RAW_TOPIC, payload)
            done = wait_for(lambda: int(received.value), messages, timeout_s, "raw mosquitto")
    finally:
        consumer.join(10)
        if consumer.is_alive():
            consumer.kill()
    return Throughput("raw", "-", 0, messages, done, float(last.value) - start, RAW_PAYLOAD_BYTES)


def measure_e2e(
    factory: sessionmaker[Session], port: int, backend: str, workers: int, events: int, timeout_s: float
) -> Throughput:
    """Signed envelopes from 10 devices through one publisher until every AckV1 item is back."""
    prefix = f"e2e{workers}-{uuid.uuid4().hex[:6]}"
    devices = register_devices(factory, prefix, 10)
    messages = build_envelopes(devices, max(1, events // len(devices)))
    with AckingPublisher(port) as publisher:
        start = time.time()
        for message in messages:
            publisher.publish(message.topic, message.payload)
        done = wait_for(publisher.acked_count, len(messages), timeout_s, f"{backend} x{workers} e2e")
        seconds = publisher.last_ack - start
    stored, _ = count_events(factory, prefix)
    if stored != len(messages):
        tqdm.write(f"warning: {stored} of {len(messages)} e2e events stored")
    return Throughput("e2e", backend, workers, len(messages), done, seconds, len(messages[0].payload))


def measure_latency(
    factory: sessionmaker[Session], port: int, backend: str, rate: float, seconds: float
) -> Latency:
    """Publishes at a steady ``rate`` for ``seconds``; percentiles over every acked event."""
    prefix = f"lat-{uuid.uuid4().hex[:6]}"
    devices = register_devices(factory, prefix, 10)
    total = max(2, round(rate * seconds))
    sent: dict[str, float] = {}
    with AckingPublisher(port) as publisher:
        start = time.monotonic()
        for n in tqdm(range(total), desc=f"{backend} latency", unit="ev", leave=False):
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
            device = devices[n % len(devices)]
            message = signed_event(device, n // len(devices) + 1, datetime.now(UTC))
            sent[message.message_id] = time.time()
            publisher.publish(message.topic, message.payload)
        acked = wait_for(publisher.acked_count, total, 60, f"{backend} latency acks")
        ack_ms = [(publisher.acked[i] - t) * 1000 for i, t in sent.items() if i in publisher.acked]
    with factory() as session:
        rows = session.execute(
            select(Event.event_id, Event.received_at).where(Event.device_id.like(f"{prefix}-%"))
        ).all()
    received_ms = [(at.timestamp() - sent[event_id]) * 1000 for event_id, at in rows if event_id in sent]
    return Latency(
        backend,
        rate,
        total,
        acked,
        (percentile(ack_ms, 50), percentile(ack_ms, 99)),
        (percentile(received_ms, 50), percentile(received_ms, 99)),
    )


def measure_storm(
    factory: sessionmaker[Session], port: int, backend: str, devices: int, per_device: int, timeout_s: float
) -> Storm:
    """``devices`` clients with ``per_device`` queued events each connect at once and flush."""
    prefix = f"storm-{uuid.uuid4().hex[:6]}"
    registered = register_devices(factory, prefix, devices)
    outboxes = [
        build_envelopes([device], per_device) for device in tqdm(registered, desc="sign", leave=False)
    ]
    total = devices * per_device
    with run_storm(port, outboxes) as storm:
        wait_for(storm.acked_count, total, timeout_s, f"{backend} storm")
        connected_s, acked_s, acked, lost = (
            storm.connected_s,
            storm.acked_s,
            storm.acked_count(),
            storm.lost(),
        )
    rows, distinct = count_events(factory, prefix)
    return Storm(backend, devices, per_device, connected_s, acked_s, acked, rows, distinct, lost)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"curbwatch_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def on_backends(
    args: argparse.Namespace, stem: str, run: Callable[[str, str, argparse.Namespace], ResultT]
) -> list[ResultT]:
    """``run(label, url, args)`` on a fresh SQLite file ``<stem>.db`` and a fresh PostgreSQL database.

    ``args`` needs ``backends``, ``build_dir`` and ``postgres_admin_url``.
    """
    args.build_dir.mkdir(parents=True, exist_ok=True)
    results = []
    if "sqlite" in args.backends:
        for stale in args.build_dir.glob(f"{stem}.db*"):
            stale.unlink()
        results.append(run("SQLite", f"sqlite:///{args.build_dir / f'{stem}.db'}", args))
    if "postgresql" in args.backends:
        with postgres_database(args.postgres_admin_url) as url:
            results.append(run("PostgreSQL", url, args))
    return results


def run_backend(backend: str, url: str, args: argparse.Namespace, results: Results) -> None:
    """Every measurement that needs a database, against one backend and one private broker."""
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    overrides = {"database_url": url, "evidence_dir": str(args.build_dir / "evidence"), "session_expiry_s": 0}
    try:
        with private_mosquitto(args.build_dir, free_port()) as port:
            overrides["mqtt_port"] = port
            with ingest_workers(overrides, ["a"]):
                results.e2e.append(measure_e2e(factory, port, backend, 1, args.events, args.timeout))
                if args.latency_seconds > 0:
                    results.latency.append(
                        measure_latency(factory, port, backend, args.latency_rate, args.latency_seconds)
                    )
                if args.storm_devices > 0 and backend.lower() in args.storm_backends:
                    results.storm.append(
                        measure_storm(
                            factory, port, backend, args.storm_devices, args.storm_events, args.storm_timeout
                        )
                    )
                if args.two_workers:
                    with ingest_workers(overrides, ["b"]):
                        results.e2e.append(measure_e2e(factory, port, backend, 2, args.events, args.timeout))
    finally:
        engine.dispose()


def raise_file_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (a storm holds one socket per device)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace) -> Results:
    """All measurements, on the databases named by ``--backends``."""
    args.build_dir.mkdir(parents=True, exist_ok=True)
    limit = raise_file_limit()
    if args.storm_devices + 64 > limit:
        raise SystemExit(f"RLIMIT_NOFILE {limit} is too low for {args.storm_devices} devices")
    results = Results()
    with private_mosquitto(args.build_dir, free_port()) as port:
        results.raw = measure_raw(port, args.events, args.timeout)
    if "sqlite" in args.backends:
        for stale in args.build_dir.glob("delivery.db*"):
            stale.unlink()
        run_backend("SQLite", f"sqlite:///{args.build_dir / 'delivery.db'}", args, results)
    if "postgresql" in args.backends:
        with postgres_database(args.postgres_admin_url) as url:
            run_backend("PostgreSQL", url, args, results)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_delivery", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="Messages for raw and e2e throughput.")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="Events/s of the latency run.")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="0 skips the latency run.")
    parser.add_argument("--storm-devices", type=int, default=2000, help="0 skips the storm.")
    parser.add_argument("--storm-events", type=int, default=50, help="Queued events per storm device.")
    parser.add_argument("--two-workers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--storm-backends",
        nargs="+",
        choices=BACKENDS,
        default=["postgresql"],
        help="Where the storm runs; PostgreSQL only by default to keep the run short.",
    )
    parser.add_argument("--postgres-admin-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument("--timeout", type=float, default=240.0, help="Seconds each measurement may take.")
    parser.add_argument("--storm-timeout", type=float, default=420.0, help="Seconds the storm may take.")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--build-dir", type=Path, default=BUILD, help="SQLite file, broker config and log.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Results:
    """Run every measurement and write the delivery section of ``--out``."""
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "tools.bench_delivery", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC)
    results = run(args)
    note = None
    if 0 < args.storm_devices < ISSUE_STORM_DEVICES:
        note = f"This run used {args.storm_devices:,} storm devices, not issue 3's {ISSUE_STORM_DEVICES:,}."
    info = RunInfo(
        started,
        command,
        machine(),
        versions(args.postgres_admin_url if "postgresql" in args.backends else None),
        note,
    )
    write_section(args.out, render(results, info))
    for item in [results.raw, *results.e2e]:
        if item is not None:
            print(throughput_line(item))
    print(f"wrote the delivery section of {args.out}")
    return results


if __name__ == "__main__":
    main()

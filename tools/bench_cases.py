"""``python -m tools.bench_cases``: cases opened and events folded per second, into BENCHMARKS.md.

Signed events go through ``MessageHandler.handle_batch`` the way the ingest worker's batches do (one
transaction per batch: checks, bulk insert, folding, commit), on SQLite and PostgreSQL, without the
broker, so the figures are the database side of ingest alone:

1. *open*: N start events of N episodes at N cameras (spread over 10 devices): each opens a case,
   with its ``open_case`` audit entry.
2. *fold*: the update and the end of each of those episodes (2N events), which fold into the
   cases of phase 1.

The mix of both (a third of the events opening cases) is the all-events rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from curbwatch.schema.events import example_event_document
from curbwatch.schema.protocol import Channel, EnvelopeV1, topic
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.db import make_engine, make_session_factory, migrate
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import DeviceUpdates, MessageHandler, ReceivedMessage, Result
from curbwatch.server.tables import Case, CaseEvent
from tools.bench_delivery import (
    BACKENDS,
    BUILD,
    POSTGRES_ADMIN_URL,
    REPO_ROOT,
    on_backends,
    register_devices,
)
from tools.delivery_clients import Device
from tools.delivery_report import RunInfo, machine, write_section

MARKS = ("<!-- cases:start -->", "<!-- cases:end -->")
DEVICES = 10
EPISODE_START = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
PHASES = (("start", 120.0), ("update", 300.0), ("end", 480.0))  # type, dwell at the event


@dataclass(frozen=True)
class Phase:
    """``events`` handled in ``seconds``, ``stored`` of them newly stored (all, in a sound run)."""

    events: int
    stored: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BackendResult:
    """One backend's run: both phases and what the database holds afterwards."""

    backend: str
    batch: int
    opened: Phase
    folded: Phase
    cases: int  # cases of the run's devices afterwards: must equal opened.events
    links: int  # case_events rows of those cases: must equal every event

    @property
    def mixed_rate(self) -> float:
        seconds = self.opened.seconds + self.folded.seconds
        return (self.opened.events + self.folded.events) / seconds if seconds > 0 else 0.0

    @property
    def consistent(self) -> bool:
        """Every event stored, one case per episode, every event linked to its case."""
        events = self.opened.events + self.folded.events
        stored = self.opened.stored + self.folded.stored
        return stored == self.links == events and self.cases == self.opened.events


def episode_messages(devices: list[Device], episodes: int) -> list[list[ReceivedMessage]]:
    """Per phase (start, update, end), one signed event of each episode, each at its own camera."""
    now = datetime.now(UTC)
    episode_ids = [uuid.uuid4().hex for _ in range(episodes)]
    per_device = -(-episodes // len(devices))
    phases: list[list[ReceivedMessage]] = []
    for number, (kind, dwell) in enumerate(PHASES):
        messages = []
        for n, episode_id in enumerate(episode_ids):
            device = devices[n % len(devices)]
            seq = number * per_device + n // len(devices) + 1
            document = example_event_document(
                event_id=uuid.uuid4().hex,
                episode_id=episode_id,
                type=kind,
                device_id=device.device_id,
                camera_id=f"cam-{n}",
                episode_start=EPISODE_START.isoformat(),
                ts=datetime.fromtimestamp(EPISODE_START.timestamp() + dwell, UTC).isoformat(),
                dwell_s=dwell,
            )
            envelope = EnvelopeV1.signed(
                device_id=device.device_id,
                seq=seq,
                message_id=document["event_id"],
                sent_at=now,
                payload=document,
                key=device.key,
            )
            messages.append(ReceivedMessage(topic(device.device_id, Channel.EVENT), envelope.to_bytes(), now))
        phases.append(messages)
    return phases


def handle(
    factory: sessionmaker[Session],
    handler: MessageHandler,
    messages: list[ReceivedMessage],
    batch: int,
    desc: str,
) -> Phase:
    """Every message through ``handle_batch``, ``batch`` per transaction; timed."""
    stored = 0
    started = time.perf_counter()
    for offset in tqdm(range(0, len(messages), batch), desc=desc, unit="batch", leave=False):
        updates = DeviceUpdates()
        with factory() as session, session.begin():
            outcomes = handler.handle_batch(session, messages[offset : offset + batch], updates)
            updates.apply(session)
        stored += sum(outcome.result is Result.STORED for outcome in outcomes)
    return Phase(len(messages), stored, time.perf_counter() - started)


def count_cases(factory: sessionmaker[Session], prefix: str) -> tuple[int, int]:
    """Cases of devices ``<prefix>-*``, and the events linked to them."""
    with factory() as session:
        cases = session.scalar(
            select(func.count()).select_from(Case).where(Case.device_id.like(f"{prefix}-%"))
        )
        links = session.scalar(
            select(func.count())
            .select_from(CaseEvent)
            .join(Case, Case.id == CaseEvent.case_id)
            .where(Case.device_id.like(f"{prefix}-%"))
        )
    return int(cases or 0), int(links or 0)


def run_backend(backend: str, url: str, args: argparse.Namespace) -> BackendResult:
    """Both phases against one freshly migrated database."""
    migrate(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        prefix = f"cases-{uuid.uuid4().hex[:6]}"
        devices = register_devices(factory, prefix, DEVICES)
        starts, updates, ends = episode_messages(devices, args.episodes)
        handler = MessageHandler(
            EvidenceStore(args.build_dir / "evidence"), CaseServerConfig(), max_payload_bytes=1 << 20
        )
        opened = handle(factory, handler, starts, args.batch, f"{backend} open")
        folded = handle(factory, handler, updates + ends, args.batch, f"{backend} fold")
        cases, links = count_cases(factory, prefix)
    finally:
        engine.dispose()
    return BackendResult(backend, args.batch, opened, folded, cases, links)


def versions(postgres_admin_url: str | None) -> str:
    """Python and database versions."""
    parts = [f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}"]
    if postgres_admin_url:
        engine = create_engine(postgres_admin_url)
        with engine.connect() as connection:
            parts.append(f"PostgreSQL {connection.scalar(text('SHOW server_version'))}")
        engine.dispose()
    return ", ".join(parts)


def render(results: list[BackendResult], info: RunInfo) -> str:
    """The cases section as Markdown."""
    rows = [
        f"| {r.backend} | {r.batch} | {r.opened.events:,} | {r.opened.seconds:.2f} s | "
        f"**{r.opened.rate:,.0f}** | {r.folded.events:,} | {r.folded.seconds:.2f} s | {r.folded.rate:,.0f} | "
        f"{r.mixed_rate:,.0f} | "
        f"{r.cases:,} cases, {r.links:,} links: {'yes' if r.consistent else '**no**'} |"
        for r in results
    ]
    return "\n".join(
        [
            "## Cases: events folded into cases at ingest (issue 4)",
            "",
            f"Measured {info.started:%Y-%m-%d %H:%M} UTC with `{info.command}`.",
            "",
            f"Machine: {info.machine}. Versions: {info.versions}. One process, no broker: signed events go "
            "straight into `MessageHandler.handle_batch`, one transaction per batch (HMAC and schema checks, "
            "bulk insert, folding with its per-place locks and audit entries, commit), as an ingest worker "
            "runs them; a migrated SQLite file in build/bench (WAL) and a fresh PostgreSQL database.",
            "",
            "*open*: start events of distinct episodes, each at its own camera (10 devices), so every event "
            "opens a case with its `open_case` audit entry. *fold*: the update and the end of each of those "
            "episodes, which fold into the known cases. *all events*: both together, a third of them "
            "opening cases. *check*: afterwards one case per episode and every event linked to its case.",
            "",
            "| database | batch | open events | time | cases opened/s | fold events | time | folded/s | "
            "all events/s | check |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_cases", description=__doc__)
    parser.add_argument("--episodes", type=int, default=5000, help="N: episodes, so cases (3N events).")
    parser.add_argument("--batch", type=int, default=500, help="Events per transaction (ingest's batch_max).")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--postgres-admin-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--build-dir", type=Path, default=BUILD, help="Where the SQLite file goes.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[BackendResult]:
    """Run both phases on each backend and write the cases section of ``--out``."""
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "tools.bench_cases", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC)
    results = on_backends(args, "cases", run_backend)
    postgres = args.postgres_admin_url if "postgresql" in args.backends else None
    # The load shows when the figures are the machine's share, not the whole machine.
    load = f"load average {os.getloadavg()[0]:.1f} at the end of the run"
    info = RunInfo(started, command, f"{machine()}, {load}", versions(postgres))
    write_section(args.out, render(results, info), MARKS)
    for r in results:
        print(
            f"{r.backend}: {r.opened.rate:,.0f} cases opened/s, {r.folded.rate:,.0f} events folded/s, "
            f"{r.mixed_rate:,.0f} events/s in all; consistent: {r.consistent}"
        )
    print(f"wrote the cases section of {args.out}")
    return results


if __name__ == "__main__":
    main()

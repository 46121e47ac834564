"""``python -m tools.bench_review``: review pages and APIs with 100,000 cases, into BENCHMARKS.md.

Each backend (a SQLite file in build/bench, a PostgreSQL database created for the run and dropped after)
is migrated and filled in bulk by :mod:`tools.review_data`. Then a signed-in ``TestClient`` (the whole
app in process: middleware, session, role check, queries, serialisation) asks each URL ``--requests``
times after a warm-up; the table gives the median and the 95th percentile.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.server.config import CaseServerConfig
from curbwatch.server.db import make_engine, make_session_factory, migrate
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.settings import get_settings
from curbwatch.server.users import add_user
from curbwatch.server.web.app import create_app
from curbwatch.server.web.context import AppContext
from tools.bench_cases import versions
from tools.bench_delivery import BACKENDS, BUILD, POSTGRES_ADMIN_URL, REPO_ROOT, on_backends, percentile
from tools.delivery_report import RunInfo, machine, write_section
from tools.review_data import STATUS_MIX, Filled, fill

MARKS = ("<!-- review:start -->", "<!-- review:end -->")
PASSWORD = "bench review password"


@dataclass(frozen=True)
class Timing:
    """One URL's response times in milliseconds."""

    label: str
    path: str
    status: int
    median_ms: float
    p95_ms: float


@dataclass(frozen=True)
class BackendResult:
    """One backend's fill and timings."""

    backend: str
    filled: Filled
    load_1m: float  # the machine's 1-minute load average as the timing began
    timings: list[Timing]


def signed_in(context: AppContext, factory: sessionmaker[Session], now: datetime) -> TestClient:
    """A TestClient with a supervisor's session."""
    username = f"bench-{uuid.uuid4().hex[:6]}"
    with factory() as session, session.begin():
        add_user(session, username, PASSWORD, "supervisor", at=now)
    client = TestClient(create_app(context.settings, factory, context=context), follow_redirects=False)
    response = client.post("/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 303, response.text
    return client


def measure(client: TestClient, label: str, path: str, requests: int, warmup: int = 3) -> Timing:
    """Median and p95 of ``requests`` sequential GETs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        response = client.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:200]}"
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
    return Timing(label, path, response.status_code, statistics.median(times), percentile(times, 95))


def run_backend(backend: str, url: str, args: argparse.Namespace) -> BackendResult:
    """Fill one fresh database and time every URL against it."""
    migrate(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        now = datetime.now(UTC)
        settings = get_settings(
            database_url=url,
            evidence_dir=args.build_dir / "evidence",
            secret_key_file=args.build_dir / "secret.key",
        )
        context = AppContext(
            settings=settings,
            config=CaseServerConfig(),
            session_factory=factory,
            evidence=EvidenceStore(settings.evidence_dir),
            secret_key="bench-review-" + "k" * 40,
            publisher=_NoDevices(),
        )
        client = signed_in(context, factory, now)
        filled = fill(factory, cases=args.cases, now=now, seed=args.seed)
        print(f"{backend}: filled {filled.cases:,} cases in {filled.seconds:.1f} s")
        whole = f"since={(now - timedelta(days=91)).date()}&until={(now + timedelta(days=1)).date()}"
        targets = [
            ("review queue API, first page", "/api/v1/cases?status=awaiting_verification"),
            ("review queue page", "/queue"),
            (
                "queue filtered by camera and rule",
                f"/api/v1/cases?status=awaiting_verification&camera_id={filled.camera}&rule={filled.rule}",
            ),
            ("one case", f"/api/v1/cases/{filled.detail_case}"),
            ("KPIs, last 30 days (default)", "/api/v1/kpis"),
            ("KPIs, all cases (91 days)", f"/api/v1/kpis?{whole}"),
        ]
        load_1m = os.getloadavg()[0]
        timings = [measure(client, label, path, args.requests) for label, path in targets]
    finally:
        engine.dispose()
    return BackendResult(backend, filled, load_1m, timings)


class _NoDevices:
    """The bench sends nothing to devices."""

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        raise AssertionError(f"the review bench published to {topic}")


def render(results: list[BackendResult], info: RunInfo, args: argparse.Namespace) -> str:
    """The review section as Markdown."""
    rows = [
        f"| {r.backend} | {t.label} | `{t.path}` | {t.median_ms:.1f} ms | {t.p95_ms:.1f} ms |"
        for r in results
        for t in r.timings
    ]
    fills = "; ".join(
        f"{r.backend}: {r.filled.cases:,} cases, {r.filled.events:,} events, "
        f"{r.filled.audit:,} audit entries in {r.filled.seconds:.0f} s"
        for r in results
    )
    loads = ", ".join(f"{r.backend} {r.load_1m:.1f}" for r in results)
    mix = ", ".join(f"{status.value} {share:.0%}" for status, share in STATUS_MIX)
    return "\n".join(
        [
            "## Review: pages and APIs with 100,000 cases (issue 4)",
            "",
            f"Measured {info.started:%Y-%m-%d %H:%M} UTC with `{info.command}`.",
            "",
            f"Machine: {info.machine}. Versions: {info.versions}. The app runs in process under a signed-in "
            "Starlette `TestClient` (session middleware, role check, queries, JSON or HTML rendering; no "
            "network), on a SQLite file in build/bench and a PostgreSQL database created for the run.",
            "",
            f"Data: {args.cases:,} cases at 50 cameras on 5 devices over 90 days ({mix}); cases awaiting "
            "verification are from the last two days and have their start event with evidence references "
            "(the queue's thumbnails); every case has its `open_case` audit entry and every verified one its "
            f"`confirm` or `reject` entry, hash chained. Fill: {fills}.",
            "",
            f"Each URL: 3 untimed requests, then {args.requests} timed ones in a row; median and 95th "
            "percentile (nearest rank). The queue API and the filtered queue are the first page (50 cases, "
            "oldest first) with thumbnails; the queue page is the HTML shell, whose rows come from that "
            "API call; *one case* is the case detail with events, evidence and timeline; the KPIs are "
            "computed over the cases created in the period (a third of them in the default 30 days). "
            f"The machine was shared with other work: 1-minute load average as the timing began: {loads}.",
            "",
            "| database | request | URL | median | p95 |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_review", description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000, help="Cases in the database.")
    parser.add_argument("--requests", type=int, default=30, help="Timed requests per URL.")
    parser.add_argument("--seed", type=int, default=4, help="Seed of the generated data.")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--postgres-admin-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--build-dir", type=Path, default=BUILD, help="Where the SQLite file goes.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[BackendResult]:
    """Fill and measure each backend, then write the review section of ``--out``."""
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "tools.bench_review", *(sys.argv[1:] if argv is None else argv)])
    started = datetime.now(UTC)
    results = on_backends(args, "review", run_backend)
    postgres = args.postgres_admin_url if "postgresql" in args.backends else None
    info = RunInfo(started, command, machine(), versions(postgres))
    write_section(args.out, render(results, info, args), MARKS)
    for result in results:
        for timing in result.timings:
            print(
                f"{result.backend}: {timing.label}: "
                f"median {timing.median_ms:.1f} ms, p95 {timing.p95_ms:.1f} ms"
            )
    print(f"wrote the review section of {args.out}")
    return results


if __name__ == "__main__":
    main()

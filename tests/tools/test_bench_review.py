"""tools.bench_review: a tiny run times every URL, keeps the audit chain sound, writes only its section."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from curbwatch.server.audit import verify_chain
from curbwatch.server.db import make_engine, make_session_factory
from curbwatch.server.tables import AuditLog, Case, CaseEvent, EvidenceRef
from tests.tools.test_bench_delivery import postgres_usable
from tools.bench_review import MARKS, main
from tools.delivery_report import END_MARK, START_MARK

OTHER = f"# Benchmarks\n\nedge numbers\n\n{START_MARK}\ndelivery numbers\n{END_MARK}\n"


@pytest.mark.timeout(180)
def test_a_tiny_run_writes_only_its_own_section(tmp_path: Path) -> None:
    backends = ["sqlite", "postgresql"] if postgres_usable() else ["sqlite"]
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"{OTHER}\n{MARKS[0]}\nstale\n{MARKS[1]}\ntail\n", encoding="utf-8")
    build = tmp_path / "b"
    results = main(
        [
            "--cases",
            "600",
            "--requests",
            "3",
            "--out",
            str(out),
            "--build-dir",
            str(build),
            "--backends",
            *backends,
        ]
    )

    assert [r.backend for r in results] == ["SQLite", "PostgreSQL"][: len(backends)]
    for result in results:
        assert result.filled.cases == 600 and 0 < result.filled.events < 600
        assert [t.status for t in result.timings] == [200] * 6
        assert all(0 < t.median_ms <= t.p95_ms for t in result.timings)
    engine = make_engine(f"sqlite:///{build / 'review.db'}")
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 600
        assert session.scalar(select(func.count()).select_from(CaseEvent)) == results[0].filled.events
        # clean, annotated and crop of each event, as the ingest files them
        assert session.scalar(select(func.count()).select_from(EvidenceRef)) == 3 * results[0].filled.events
        # one open_case per case, one confirm or reject per verified case, plus the bench user's entry
        assert session.scalar(select(func.count()).select_from(AuditLog)) == results[0].filled.audit + 1
        assert verify_chain(session) == []
    engine.dispose()
    written = out.read_text(encoding="utf-8")
    assert written.startswith(OTHER) and written.endswith(f"{MARKS[1]}\ntail\n") and "stale" not in written
    assert (
        "| SQLite | review queue API, first page | `/api/v1/cases?status=awaiting_verification` |" in written
    )
    assert "python -m tools.bench_review --cases 600" in written

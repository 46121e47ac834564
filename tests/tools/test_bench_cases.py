"""tools.bench_cases: its section is spliced between its own markers, and a tiny run is consistent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.test_bench_delivery import postgres_usable
from tools.bench_cases import MARKS, main
from tools.delivery_report import END_MARK, START_MARK

OTHER = f"# Benchmarks\n\nedge numbers\n\n{START_MARK}\ndelivery numbers\n{END_MARK}\n"


@pytest.mark.timeout(120)
def test_a_tiny_run_writes_only_its_own_section(tmp_path: Path) -> None:
    backends = ["sqlite", "postgresql"] if postgres_usable() else ["sqlite"]
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"{OTHER}\n{MARKS[0]}\nstale\n{MARKS[1]}\ntail\n", encoding="utf-8")
    argv = ["--episodes", "25", "--batch", "10", "--out", str(out), "--build-dir", str(tmp_path / "b")]
    results = main([*argv, "--backends", *backends])

    assert [r.backend for r in results] == ["SQLite", "PostgreSQL"][: len(backends)]
    for result in results:
        assert (result.opened.events, result.opened.stored, result.folded.events) == (25, 25, 50)
        assert (result.cases, result.links) == (25, 75) and result.consistent
        assert result.opened.rate > 0 and result.folded.rate > 0
    written = out.read_text(encoding="utf-8")
    assert written.startswith(OTHER) and written.endswith(f"{MARKS[1]}\ntail\n") and "stale" not in written
    assert "| SQLite | 10 | 25 |" in written and "25 cases, 75 links: yes |" in written
    assert "python -m tools.bench_cases --episodes 25" in written

"""tools.bench_delivery: the Markdown splice, percentiles, and every measurement at a tiny size."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tools.bench_delivery import POSTGRES_ADMIN_URL, main, percentile
from tools.delivery_report import END_MARK, START_MARK, replace_section

OTHER = "# Benchmarks\n\nedge numbers written by tools.bench\n"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("", f"{START_MARK}\nnew\n{END_MARK}\n"),
        (OTHER, f"{OTHER}\n{START_MARK}\nnew\n{END_MARK}\n"),
        (
            f"{OTHER}\n{START_MARK}\nold\n{END_MARK}\ntail\n",
            f"{OTHER}\n{START_MARK}\nnew\n{END_MARK}\ntail\n",
        ),
        (f"{END_MARK}{START_MARK}", f"{END_MARK}{START_MARK}\n\n{START_MARK}\nnew\n{END_MARK}\n"),
    ],
)
def test_replace_section_keeps_the_rest(document: str, expected: str) -> None:
    assert replace_section(document, "new\n") == expected


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, 0.0),
        ([3.0], 99, 3.0),
        ([float(n) for n in range(1, 101)], 50, 50.0),
        ([float(n) for n in range(1, 101)], 99, 99.0),
        ([5.0, 1.0, 3.0], 100, 5.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def postgres_usable() -> bool:
    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
def test_every_measurement_runs_at_a_tiny_size(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    backends = ["sqlite", "postgresql"] if postgres_usable() else ["sqlite"]
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"{OTHER}\n{START_MARK}\nstale\n{END_MARK}\n", encoding="utf-8")
    argv = ["--events", "50", "--latency-rate", "50", "--latency-seconds", "1", "--storm-devices", "5"]
    argv += [
        "--storm-events",
        "5",
        "--timeout",
        "60",
        "--storm-timeout",
        "60",
        "--out",
        str(out),
        "--build-dir",
        str(tmp_path / "b"),
    ]
    results = main([*argv, "--backends", *backends, "--storm-backends", *backends])

    assert results.raw is not None and results.raw.done == 50 and results.raw.rate > 0
    assert [(e.backend, e.workers) for e in results.e2e] == [
        (b, w) for b in ("SQLite", "PostgreSQL")[: len(backends)] for w in (1, 2)
    ]
    assert all(e.done == e.messages == 50 and e.seconds > 0 for e in results.e2e)
    assert all(
        lat.acked == lat.events == 50 and 0 < lat.ack_ms[0] <= lat.ack_ms[1] for lat in results.latency
    )
    assert all(s.rows == s.distinct == s.acked == 25 and s.lost == 0 for s in results.storm)
    assert len(results.storm) == len(backends)
    written = out.read_text(encoding="utf-8")
    assert written.startswith(OTHER) and "stale" not in written
    assert "### Reconnect storm" in written and "| SQLite | 5 x 5 |" in written
    assert "5 storm devices, not issue 3's 2,000" in written

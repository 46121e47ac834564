"""The Markdown section ``tools.bench_delivery`` writes into BENCHMARKS.md between its markers."""

from __future__ import annotations

import math
import multiprocessing
import platform
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text

from tools.delivery_clients import broker_config, mosquitto_version

if TYPE_CHECKING:
    from tools.bench_delivery import Results, Throughput

START_MARK, END_MARK = "<!-- delivery:start -->", "<!-- delivery:end -->"
RATIO_TARGET, POSTGRES_TARGET = 0.3, 2000.0


@dataclass(frozen=True)
class RunInfo:
    started: datetime
    command: str
    machine: str
    versions: str
    storm_note: str | None = None


def machine() -> str:
    """CPU model, core count and RAM of this machine."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    ram = f"{int(found.group(1)) / 2**20:.0f} GiB RAM" if found else "RAM unknown"
    return f"{cpu}, {multiprocessing.cpu_count()} cores, {ram}"


def versions(postgres_admin_url: str | None) -> str:
    """Broker, database and client library versions."""
    parts = [
        mosquitto_version(),
        f"Python {platform.python_version()}",
        f"paho-mqtt {version('paho-mqtt')}",
        f"SQLite {sqlite3.sqlite_version}",
    ]
    if postgres_admin_url:
        engine = create_engine(postgres_admin_url)
        with engine.connect() as connection:
            parts.append(f"PostgreSQL {connection.scalar(text('SHOW server_version'))}")
        engine.dispose()
    return ", ".join(parts)


def replace_section(document: str, section: str, marks: tuple[str, str] = (START_MARK, END_MARK)) -> str:
    """``document`` with the text between the markers (default: delivery's) replaced, or appended."""
    start_mark, end_mark = marks
    block = f"{start_mark}\n{section.rstrip()}\n{end_mark}"
    start, end = document.find(start_mark), document.find(end_mark)
    if start != -1 and end > start:
        return document[:start] + block + document[end + len(end_mark) :]
    return (document.rstrip() + "\n\n" if document.strip() else "") + block + "\n"


def write_section(out: Path, section: str, marks: tuple[str, str] = (START_MARK, END_MARK)) -> None:
    """Replace (or append) one section of ``out`` (default: delivery's); the rest of the file is untouched."""
    existing = out.read_text(encoding="utf-8") if out.exists() else ""
    out.write_text(replace_section(existing, section, marks), encoding="utf-8")


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _throughput_rows(results: Results) -> list[str]:
    raw = results.raw
    assert raw is not None
    rows = [
        f"| raw Mosquitto, 1 KB | - | - | {raw.done:,}/{raw.messages:,} | {raw.seconds:.2f} s | "
        f"{raw.rate:,.0f} | 1.00 | |"
    ]
    for item in results.e2e:
        ratio = item.rate / raw.rate if raw.rate else 0.0
        target = f"ratio ≥ {RATIO_TARGET}: {_mark(ratio >= RATIO_TARGET)}"
        if item.backend == "PostgreSQL":
            target += f"; ≥ {POSTGRES_TARGET:,.0f}/s: {_mark(item.rate >= POSTGRES_TARGET)}"
        rows.append(
            f"| end to end | {item.backend} | {item.workers} | {item.done:,}/{item.messages:,} | "
            f"{item.seconds:.2f} s | {item.rate:,.0f} | {ratio:.2f} | {target} |"
        )
    return rows


def _envelope_bytes(results: Results) -> int:
    return max((item.payload_bytes for item in results.e2e), default=0)


def _throughput(results: Results) -> list[str]:
    return [
        "### Throughput",
        "",
        "Raw: one paho publisher (MQTT 5, 1,000 in flight) publishes N 1 KB messages at QoS 1 to one paho "
        "subscriber in another process; rate = messages received / (last arrival - first publish). "
        "End to end: the same publisher sends N signed `EnvelopeV1` events (about "
        f"{_envelope_bytes(results):,} bytes each, 10 devices, seq 1..) and counts `AckV1` items coming back "
        "on `curbwatch/v1/+/ack`; rate = events acked / (last ack - first publish). Each ingest worker is "
        "its own process (`IngestWorker` with default batching: 500 messages or 20 ms), in one share group.",
        "",
        "| path | database | workers | delivered | time | per second | ratio to raw | target |",
        "|---|---|---|---|---|---|---|---|",
        *_throughput_rows(results),
    ]


def _latency(results: Results) -> list[str]:
    rows = [
        f"| {item.backend} | {item.rate:.0f}/s | {item.acked:,}/{item.events:,} | {item.ack_ms[0]:.1f} ms | "
        f"{item.ack_ms[1]:.1f} ms | {item.received_ms[0]:.1f} ms | {item.received_ms[1]:.1f} ms |"
        for item in results.latency
    ]
    return [
        "### Latency at a steady rate",
        "",
        "One publisher sends events at a fixed rate (10 devices in turn), stamping each message id with its "
        "publish time. *publish -> AckV1* ends when the ack arrives back at the publisher; the ack is sent "
        "after the commit, so this bounds publish -> commit from above. *publish -> received_at* ends at the "
        "worker's receipt (`events.received_at`, before batching and commit), a lower bound.",
        "",
        "| database | rate | acked | publish -> AckV1 p50 | p99 | publish -> received_at p50 | p99 |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _seconds(value: float) -> str:
    return "never" if math.isnan(value) else f"{value:.1f} s"


def _storm(results: Results, note: str | None) -> list[str]:
    rows = []
    for item in results.storm:
        total = item.devices * item.per_device
        once = item.rows == item.distinct == total and item.acked == total
        rate = total / item.acked_s if not math.isnan(item.acked_s) and item.acked_s else 0.0
        rows.append(
            f"| {item.backend} | {item.devices:,} x {item.per_device} | {_seconds(item.connected_s)} | "
            f"{_seconds(item.acked_s)} | {rate:,.0f} | {item.acked:,} | {item.rows:,} | {item.distinct:,} | "
            f"{'yes' if once else '**no**'} |"
        )
    return [
        "### Reconnect storm",
        "",
        "Every simulated device is a registered device with its own key and its own MQTT 3.1.1 connection "
        "(paho clients driven from 4 threads with a selector). All connect at once; on CONNACK each "
        "subscribes to its ack topic and publishes its whole outbox at QoS 1. *all acked* is the time from "
        "the first connect until every event's `AckV1` was back at its device; the counts are "
        "`COUNT(*)` and `COUNT(DISTINCT event_id)` over the storm devices' rows afterwards.",
        *(["", note] if note else []),
        "",
        "| database | devices x events | all connected | all acked | events/s | acked | COUNT | DISTINCT | "
        "exactly once |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def render(results: Results, info: RunInfo) -> str:
    """The whole delivery section as Markdown."""
    tuning = ", ".join(line for line in broker_config(0).splitlines()[2:8])
    return "\n".join(
        [
            "## Delivery: edge -> broker -> ingest -> AckV1 (issue 3)",
            "",
            f"Measured {info.started:%Y-%m-%d %H:%M} UTC with `{info.command}` (`make bench-delivery`).",
            "",
            f"Machine: {info.machine}. Versions: {info.versions}. Broker, databases, ingest workers and "
            "publishers all share this machine over loopback.",
            "",
            f"Private Mosquitto per run on a free port ({tuning}); a migrated SQLite file in build/bench "
            "(WAL) and a fresh PostgreSQL database created and dropped by the run.",
            "",
            *_throughput(results),
            "",
            *_latency(results),
            "",
            *_storm(results, info.storm_note),
        ]
    )


def throughput_line(item: Throughput) -> str:
    """A one-line summary for the console."""
    where = f" {item.backend} x{item.workers}" if item.workers else ""
    return f"{item.label}{where}: {item.done}/{item.messages} in {item.seconds:.2f} s = {item.rate:,.0f}/s"

"""``curbwatch demo``: two cameras on generated streets, the server and the operator UI, on this machine.

The stack starts first (embedded broker, SQLite server, ingest worker, web UI), so the URL and the
demo sign-ins are printed at once; then the demo streets are rendered (only the first time, see
``curbwatch.edge.demo``) and one edge box with two cameras watches them, paced like live cameras.
Its events travel over MQTT to the ingest worker, which files them as cases that operators review
at the printed URL. When the streets end the server keeps running until Ctrl-C, so the cases can
still be confirmed, rejected and dispatched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from curbwatch.edge.app import run_edge
from curbwatch.edge.demo import (
    DEMO_DEVICE,
    DEMO_MODEL,
    DEMO_SECONDS,
    DemoStreet,
    demo_edge_config,
    demo_model_path,
    render_demo_streets,
)
from curbwatch.edge.runner import CameraOutcome
from curbwatch.stack import DEMO_LOGINS, LocalStack


@dataclass(frozen=True)
class DemoResult:
    """What one demo run produced.

    Attributes:
        url: The operator UI.
        database_url: The server's database.
        streets: The streets the cameras watched.
        start_ts: Wall time of the streets' first frame (epoch seconds).
        events: Events the edge sent.
        cases: Cases in the database when the streets ended.
    """

    url: str
    database_url: str
    streets: list[DemoStreet]
    start_ts: float
    events: int
    cases: int


def _count_cases(database_url: str) -> int:
    from curbwatch.demo_truth import cases_from_database

    return len(cases_from_database(database_url))


def run_stack_demo(
    workdir: Path,
    *,
    http_port: int = 8000,
    realtime: bool = True,
    keep_serving: bool = True,
    model: str | Path = DEMO_MODEL,
    console: Console | None = None,
) -> DemoResult:
    """Start the stack, render the streets if needed, run the edge on them, then serve until Ctrl-C.

    Args:
        workdir: Database, evidence, outbox, the rendered streets.
        http_port: Port of the operator UI.
        realtime: Pace the streets like live cameras (off in tests: frames as fast as they decode).
        keep_serving: After the streets end, keep the server up until Ctrl-C.
        model: The detector, a registry reference or an ONNX path.
        console: Where progress goes (stderr by default).
    """
    console = console or Console(stderr=True)
    model_path = demo_model_path(model)  # a missing model fails before anything starts
    (workdir / "events.jsonl").unlink(missing_ok=True)
    with LocalStack(workdir, http_port=http_port) as stack:
        assert stack.settings is not None
        database_url = stack.settings.database_url
        console.print(f"\n[bold green]curbwatch is running:[/] open [bold]{stack.url}[/] and sign in as")
        for login in DEMO_LOGINS:
            console.print(f"  {login.role:11} [bold]{login.username}[/] / {login.password}")
        streets = render_demo_streets(workdir / "streets", progress=True)
        start = datetime.now(UTC)
        console.print(
            f"Cameras {', '.join(s.camera_id for s in streets)} watch {DEMO_SECONDS:.0f} s of street each; "
            "parked cars, a scooter on the hatched strip, a vending stall and an overflowing bin become "
            "cases once their zone's dwell has passed (about 30 s).\n"
        )
        broker = stack.broker
        config = demo_edge_config(
            workdir,
            streets,
            start_time=start.isoformat(),
            realtime=realtime,
            model=model_path,
            delivery={
                "outbox_path": str(workdir / "outbox.sqlite"),
                "config_wait_s": 2.0,
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "device_id": DEMO_DEVICE,
                    "device_key": stack.device_key(DEMO_DEVICE),
                    "protocol": "3.1.1",
                },
            },
        )
        reports = run_edge(config)
        for report in reports.values():
            if report.error:
                console.print(f"[bold red]camera {report.camera_id} failed:[/] {report.error}")
        events = sum(report.stats.events for report in reports.values())
        cases = _count_cases(database_url)
        # Ctrl-C while the cameras run lands in the edge's handler and stops them: stop it all then.
        interrupted = any(report.outcome is CameraOutcome.STOPPED for report in reports.values())
        ending = "were stopped" if interrupted else "reached the end of their streets"
        console.print(f"The cameras {ending}: {events} events, {cases} cases at {stack.url}.")
        if keep_serving and not interrupted:
            console.print("The server keeps running; press Ctrl-C to stop.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                console.print("stopping")
        return DemoResult(stack.url, database_url, streets, start.timestamp(), events, cases)

"""``curbwatch demo``: a camera on a street, the server, and the operator UI, all on this machine.

The demo street (``curbwatch.edge.demo``) is watched by the real edge pipeline, paced like a live
camera; its events travel over MQTT (embedded broker) to the ingest worker, which files them as
cases that operators review at the printed URL. When the street video ends the server keeps
running until Ctrl-C, so the cases can still be confirmed, rejected and dispatched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from curbwatch.edge.app import run_edge
from curbwatch.edge.demo import DEMO_FPS, demo_edge_config, demo_still, render_street_video
from curbwatch.stack import DEMO_LOGINS, LocalStack

DEMO_DEVICE = "edge-demo"


@dataclass(frozen=True)
class DemoResult:
    """What one demo run produced."""

    url: str
    events: int
    cases: int


def _count_cases(stack: LocalStack) -> int:
    from sqlalchemy import func, select

    from curbwatch.server.db import make_engine
    from curbwatch.server.tables import Case

    assert stack.settings is not None
    engine = make_engine(stack.settings.database_url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(Case)) or 0)
    finally:
        engine.dispose()


def run_stack_demo(
    workdir: Path,
    seconds: float,
    *,
    http_port: int = 8000,
    realtime: bool = True,
    keep_serving: bool = True,
    console: Console | None = None,
) -> DemoResult:
    """Render the street, start the stack, run the edge against it, then serve until Ctrl-C.

    Args:
        workdir: Database, evidence, outbox, the rendered video.
        seconds: Scene time to render.
        http_port: Port of the operator UI.
        realtime: Pace the video like a live camera (off in tests: frames as fast as they decode).
        keep_serving: After the video, keep the server up until Ctrl-C.
        console: Where progress goes (stderr by default).
    """
    console = console or Console(stderr=True)
    video = render_street_video(demo_still(), workdir / "street.mp4", seconds)
    (workdir / "events.jsonl").unlink(missing_ok=True)
    with LocalStack(workdir, http_port=http_port) as stack:
        console.print(f"\n[bold green]curbwatch is running:[/] open [bold]{stack.url}[/] and sign in as")
        for login in DEMO_LOGINS:
            console.print(f"  {login.role:11} [bold]{login.username}[/] / {login.password}")
        console.print(
            f"The camera watches {seconds:.0f} s of street at {DEMO_FPS:.0f} fps; the parked car becomes a "
            "case after its 60 s dwell.\n"
        )
        broker = stack.broker
        config = demo_edge_config(
            workdir,
            video,
            start_time=datetime.now(UTC).isoformat(),
            realtime=realtime,
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
        events = sum(report.stats.events for report in reports.values())
        cases = _count_cases(stack)
        console.print(f"The street video ended: {events} events, {cases} cases at {stack.url}.")
        if keep_serving:
            console.print("The server keeps running; press Ctrl-C to stop.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                console.print("stopping")
        return DemoResult(stack.url, events, cases)

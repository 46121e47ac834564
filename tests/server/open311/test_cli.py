"""``curbwatch server forward --once`` against a real GeoReport server on a local socket."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from curbwatch.server.cli import server_app
from curbwatch.server.config import load_case_config
from curbwatch.server.tables import Forwarding
from tests.server.open311.cases import file_case, with_config
from tests.server.web.case_factory import FakeClock
from tests.server.web.conftest import WebApp


class GeoReportHandler(BaseHTTPRequestHandler):
    """Takes ``POST /georeport/requests.json`` and answers with a new service_request_id."""

    received: list[dict[str, list[str]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append({"path": [self.path], **parse_qs(body)})
        answer = json.dumps([{"service_request_id": f"LOCAL-{len(self.received)}"}]).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: object) -> None:
        """Quiet."""


@pytest.fixture
def local_upstream() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    received: list[dict[str, list[str]]] = []
    handler = type("Handler", (GeoReportHandler,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/georeport", received
    finally:
        server.shutdown()
        server.server_close()


def test_forward_once_sends_filed_cases_to_the_configured_upstream(
    web: WebApp,
    database_url: str,
    tmp_path: Path,
    local_upstream: tuple[str, list[dict[str, list[str]]]],
) -> None:
    base_url, received = local_upstream
    name = f"local-{uuid.uuid4().hex[:8]}"
    config_file = tmp_path / "city.yaml"
    config_file.write_text(
        f"open311:\n  upstreams:\n    {name}: {{base_url: '{base_url}', api_key: local-key}}\n"
        f"  routing:\n    '0505': [{name}]\n",
        encoding="utf-8",
    )
    # Filed a minute ago: the command runs on the real clock.
    filed_at = datetime.now(UTC) - timedelta(minutes=1)
    app = with_config(web, load_case_config(config_file), FakeClock(filed_at))
    case = file_case(app, filed_at)
    result = CliRunner().invoke(
        server_app,
        ["forward", "--once", "--database-url", database_url],
        env={
            "CURBWATCH_CASE_CONFIG": str(config_file),
            "CURBWATCH_SECRET_KEY_FILE": str(tmp_path / "secret.key"),
            "CURBWATCH_EVIDENCE_DIR": str(tmp_path / "evidence"),
        },
    )
    assert result.exit_code == 0, result.output
    assert "sent=1" in result.output
    (form,) = received
    assert form["path"] == ["/georeport/requests.json"]
    assert (form["api_key"], form["service_code"]) == (["local-key"], ["0505"])
    assert case.annotated in form["media_url"][0]
    with app.session_factory() as session:
        row = session.scalars(select(Forwarding).where(Forwarding.case_id == case.id)).one()
    assert (row.target, row.status, row.external_id) == (name, "sent", "LOCAL-1")


def test_forward_refuses_a_bad_config(tmp_path: Path) -> None:
    config_file = tmp_path / "city.yaml"
    config_file.write_text("open311:\n  routing:\n    '0505': [nowhere]\n", encoding="utf-8")
    result = CliRunner().invoke(
        server_app,
        ["forward", "--once", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        env={"CURBWATCH_CASE_CONFIG": str(config_file)},
    )
    assert result.exit_code == 2
    assert "nowhere" in result.output

"""A fake upstream GeoReport server and an app whose city forwards to two upstreams of the test."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
from sqlalchemy import select

from curbwatch.server.config import CaseServerConfig
from curbwatch.server.open311.forwarding import ForwardingWorker
from curbwatch.server.tables import AuditLog, Forwarding
from curbwatch.server.web.api.evidence import evidence_link
from tests.server.open311.cases import city_config, with_config
from tests.server.web.case_factory import FakeClock
from tests.server.web.conftest import WebApp

OUR_KEY = "curbwatch-at-the-city"
BASE_S, MAX_S = 60.0, 600.0

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeUpstream:
    """A GeoReport server that answers from a script and records every POST's form by host."""

    script: list[Handler] = field(default_factory=list)
    forms: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path.endswith("/requests.json")
        form = {k: v[0] for k, v in parse_qs(request.content.decode(), keep_blank_values=True).items()}
        self.forms.append((request.url.host, form))
        time.sleep(self.delay_s)
        answer = self.script.pop(0) if self.script else created
        return answer(request)


def created(request: httpx.Request) -> httpx.Response:
    form = parse_qs(request.content.decode())
    return httpx.Response(200, json=[{"service_request_id": f"ext-{form['attribute[case]'][0][:8]}"}])


def status(code: int, **headers: str) -> Handler:
    return lambda _: httpx.Response(code, text="busy", headers=headers)


@dataclass
class Rig:
    """An app whose city forwards to two upstreams of this test, and a worker on a fake one."""

    app: WebApp
    config: CaseServerConfig
    city: str
    district: str
    clock: FakeClock
    upstream: FakeUpstream

    def worker(self, upstream: FakeUpstream | None = None) -> ForwardingWorker:
        client = httpx.Client(transport=httpx.MockTransport(upstream or self.upstream))
        return ForwardingWorker(
            self.app.session_factory,
            self.config,
            client,
            media_link=lambda sha: evidence_link(self.app.context, sha, signed=True),
            clock=self.clock,
            rng=random.Random(7),
        )

    def rows(self, case_id: str) -> dict[str, Forwarding]:
        with self.app.session_factory() as session:
            found = session.scalars(select(Forwarding).where(Forwarding.case_id == case_id))
            return {row.target: row for row in found}

    def audit(self, case_id: str) -> list[AuditLog]:
        with self.app.session_factory() as session:
            query = select(AuditLog).where(AuditLog.case_id == case_id, AuditLog.action.like("forward%"))
            return list(session.scalars(query.order_by(AuditLog.id)))


def upstream_settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "api_key": OUR_KEY,
        "timeout_s": 5,
        "max_attempts": 4,
        "backoff_base_s": BASE_S,
        "backoff_max_s": MAX_S,
        **overrides,
    }


def make_rig(web: WebApp, epoch: datetime) -> Rig:
    """Upstreams with names of their own (other tests' rows are never theirs), clock at ``epoch``."""
    city, district = f"city-{uuid.uuid4().hex[:8]}", f"district-{uuid.uuid4().hex[:8]}"
    config = city_config(
        upstreams={
            city: upstream_settings(
                "https://city.example/open311/v2/",
                jurisdiction_id="city.gov",
                service_codes={"0501": "VEND"},
                attributes={"case": "case_id", "grid": "grid_cell"},
            ),
            district: upstream_settings("https://district.example/georeport", attributes={"case": "case_id"}),
        },
        routing={"0505": [city], "0501": [city, district]},
    )
    clock = FakeClock(epoch)
    return Rig(with_config(web, config, clock), config, city, district, clock, FakeUpstream())

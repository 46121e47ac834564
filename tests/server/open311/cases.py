"""Filed cases for the Open311 tests, and a city config with GeoReport keys and upstreams.

The database is shared by every test of a session, so each test files its cases at its own
*epoch* (a random far-future day, 200 days from any other) and names its own upstreams: date
windows and forwarding workers then see that test's rows only.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from curbwatch.server.cases.service import transition_case
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.open311.config import Open311Config
from tests.server.web.case_factory import FakeClock, SeededCase, seed_case
from tests.server.web.conftest import WebApp

API_KEY = "georeport-client-key-0123456789"
JURISDICTION = "demo.city"
LOCATION = (31.2304, 121.4737)

HAPPY_PATH: list[dict[str, Any]] = [
    {"action": "confirm", "role": "operator"},
    {"action": "dispatch", "role": "dispatcher", "department": "环卫 sanitation"},
    {"action": "start", "role": "dispatcher"},
    {"action": "report_handled", "role": "dispatcher"},
    {"action": "request_check", "role": "operator"},
    {"action": "close", "role": "supervisor", "outcome": "service", "closure_type": "normal"},
]


def unique_epoch() -> datetime:
    """A day far from every other test's (cases of one test fit in a 90-day window)."""
    return datetime(2040, 1, 1, 2, 0, tzinfo=UTC) + timedelta(days=200 * secrets.randbelow(14_000))


def city_config(**open311: Any) -> CaseServerConfig:
    """The default city with a GeoReport key, our jurisdiction and ``open311`` on top."""
    settings: dict[str, Any] = {"jurisdiction_id": JURISDICTION, "api_keys": [API_KEY], **open311}
    return CaseServerConfig(open311=Open311Config.model_validate(settings))


def with_config(web: WebApp, config: CaseServerConfig, clock: FakeClock) -> WebApp:
    """The same app and database with another city config and clock."""
    return WebApp(replace(web.context, config=config, clock=clock), web.publisher, web.session_factory)


def act(app: WebApp, case_id: str, steps: list[dict[str, Any]], at: datetime) -> None:
    """Apply workflow ``steps`` one minute apart from ``at`` (each in its own transaction)."""
    for n, step in enumerate(steps):
        with app.session_factory() as session, session.begin():
            transition_case(
                session,
                config=app.context.config,
                case_id=case_id,
                actor=f"{step['role']}-{n}",
                at=at + timedelta(minutes=n),
                **step,
            )


def file_case(app: WebApp, at: datetime, *, steps: int = 1, **overrides: Any) -> SeededCase:
    """A case seen at ``at`` at its own camera (with ``LOCATION``), taken ``steps`` along the happy path."""
    overrides.setdefault("location", list(LOCATION))
    overrides.setdefault("episode_start", (at - timedelta(minutes=2)).isoformat())
    overrides.setdefault("ts", at.isoformat())
    case = seed_case(app, at=at, zone=f"kerb-{uuid.uuid4().hex[:6]}", **overrides)
    act(app, case.id, HAPPY_PATH[:steps], at)
    return case

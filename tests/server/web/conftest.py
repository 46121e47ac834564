"""Web fixtures: an app on the per-backend database, users of every role, a recording publisher."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.server.config import CaseServerConfig
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.settings import get_settings
from curbwatch.server.users import add_user
from curbwatch.server.web.app import create_app
from curbwatch.server.web.context import AppContext

PASSWORD = "correct horse battery"


@dataclass
class RecordingPublisher:
    """Keeps what the server would have sent to devices, in order."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.messages.append((topic, payload, retain))


@dataclass
class WebApp:
    """A built app with its context and helpers to sign in."""

    context: AppContext
    publisher: RecordingPublisher
    session_factory: sessionmaker[Session]

    def client(self) -> TestClient:
        app = create_app(self.context.settings, self.session_factory, context=self.context)
        # Each client its own address, so the per-client login throttle sees one browser each.
        address = f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
        return TestClient(app, follow_redirects=False, client=(address, 50000))

    def user(self, role: str, *, password: str = PASSWORD, display_name: str = "") -> str:
        """A fresh account with ``role``; returns its user name."""
        username = f"{role}-{uuid.uuid4().hex[:8]}"
        with self.session_factory() as session, session.begin():
            add_user(session, username, password, role, display_name=display_name, at=datetime.now(UTC))
        return username

    def signed_in(self, role: str, **user_options: str) -> TestClient:
        """A browser-like client signed in as a new ``role`` user, CSRF token in its headers."""
        client = self.client()
        username = self.user(role, **user_options)
        response = client.post(
            "/login", data={"username": username, "password": user_options.get("password", PASSWORD)}
        )
        assert response.status_code in (200, 303), response.text
        client.headers["X-CSRF-Token"] = csrf_of(client)
        return client


def csrf_of(client: TestClient) -> str:
    """The CSRF token a page of ``client``'s session carries."""
    page = client.get("/login").text
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match, "page has no CSRF token"
    return match.group(1)


@pytest.fixture
def web(session_factory: sessionmaker[Session], database_url: str, tmp_path: Path) -> Iterator[WebApp]:
    settings = get_settings(
        database_url=database_url,
        evidence_dir=tmp_path / "evidence",
        secret_key_file=tmp_path / "secret.key",
        login_max_failures=3,
        login_window_s=60,
    )
    publisher = RecordingPublisher()
    context = AppContext(
        settings=settings,
        config=CaseServerConfig(),
        session_factory=session_factory,
        evidence=EvidenceStore(settings.evidence_dir),
        secret_key="test-secret-" + "x" * 40,
        publisher=publisher,
    )
    yield WebApp(context, publisher, session_factory)

"""Cases for web tests: stored events folded into cases, with evidence files in the app's store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from curbwatch.schema.events import EventV1
from curbwatch.server.cases.folding import fold_event
from curbwatch.server.event_writer import Verdict, event_row, write_events
from curbwatch.server.tables import User
from curbwatch.server.web.deps import issue_token
from tests.server.conftest import register
from tests.server.factories import event_document, jpeg_like
from tests.server.web.conftest import WebApp

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def with_clock(web: WebApp, clock: FakeClock) -> WebApp:
    """The same app and database, on ``clock``."""
    return WebApp(replace(web.context, clock=clock), web.publisher, web.session_factory)


def api_client(web: WebApp, role: str) -> TestClient:
    """A client with a bearer token of a new ``role`` user.

    The account is stored directly, without a usable password: signing in through the password
    check costs about a second of argon2 per client, which the session tests pay where it matters.
    """
    with web.session_factory() as session, session.begin():
        user = User(
            username=f"{role}-{uuid.uuid4().hex[:8]}",
            display_name=role,
            password_hash="!",  # matches no password
            role=role,
            active=True,
            created_at=NOW,
        )
        session.add(user)
        session.flush()
        token = issue_token(web.context, user)
    client = web.client()
    client.headers["Authorization"] = f"Bearer {token}"
    return client


@dataclass
class SeededCase:
    """A case opened by one stored event, and the images that event references."""

    id: str
    device_id: str
    camera_id: str
    episode_id: str
    clean: str
    annotated: str
    crop: str
    event_ids: list[str] = field(default_factory=list)


def _store_images(web: WebApp) -> tuple[list[dict[str, Any]], tuple[str, str, str]]:
    """A clean frame, its annotated copy and one crop, written to the app's evidence store."""
    tag = uuid.uuid4().int
    shas = []
    for n in range(3):
        sha, data = jpeg_like(1024, seed=tag + n)
        web.context.evidence.put(sha, data)
        shas.append(sha)
    clean, annotated, crop = shas

    def ref(role: str, sha: str, **extra: Any) -> dict[str, Any]:
        return {
            "role": role,
            "sha256": sha,
            "size_bytes": 1024,
            "width": 1280 if role != "crop" else 200,
            "height": 720 if role != "crop" else 160,
            "path": f"cam/{sha}.jpg",
            "restricted": role == "clean",
            **extra,
        }

    refs = [
        ref("clean", clean),
        ref("annotated", annotated, derived_from=clean),
        ref("crop", crop, derived_from=clean, track_id=7),
    ]
    return refs, (clean, annotated, crop)


def store_event(web: WebApp, document: dict[str, Any], at: datetime) -> str:
    """Store ``document`` as the ingest does and fold it; returns the case id."""
    event = EventV1.model_validate(document)
    row = event_row(event, seq=uuid.uuid4().int % 2**62, received_at=at, document=document)
    with web.session_factory() as session, session.begin():
        assert write_events(session, [row])[0].verdict is Verdict.STORED
        return fold_event(session, event, config=web.context.config.folding, at=at).id


def seed_case(
    web: WebApp, *, camera_id: str | None = None, at: datetime = NOW, **overrides: Any
) -> SeededCase:
    """A new case awaiting verification at its own (or the given) camera, with three images."""
    device_id, _ = register(web.session_factory)
    camera_id = camera_id or f"cam-{uuid.uuid4().hex[:12]}"
    refs, (clean, annotated, crop) = _store_images(web)
    document = event_document(
        device_id,
        camera_id=camera_id,
        evidence=refs,
        objects=[{"track_id": 7, "label": "car", "score": 0.9, "xyxy": [1, 2, 3, 4], "stationary_s": 100.0}],
        **overrides,
    )
    case_id = store_event(web, document, at)
    return SeededCase(
        case_id, device_id, camera_id, document["episode_id"], clean, annotated, crop, [document["event_id"]]
    )

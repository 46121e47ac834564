"""A supervisor draws a zone on a camera's snapshot in Chromium and publishes it to the edge.

Real: the web app under uvicorn, the sign-in form, the evidence route serving the snapshot, the zone
editor's clicks and drags on the SVG overlay, the PUT with its validation, and the signed desired
config the edge's ``RemoteConfig`` applies. Stand-ins: the broker (a recording publisher) and the
device's report, written the way the ingest writes it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.edge.remote_config import RemoteConfig
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.db import make_engine, make_session_factory, migrate
from curbwatch.server.devices import record_reported_config
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.settings import get_settings
from curbwatch.server.users import add_user
from curbwatch.server.web.app import create_app
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import LiveServer
from tests.edge.test_remote_config import FakeEdge
from tests.server.conftest import register
from tests.server.test_cameras import send_heartbeat, store_event
from tests.server.web.conftest import RecordingPublisher

pytestmark = pytest.mark.timeout(180)

SCREENSHOT = REPO_ROOT / "build" / "screenshots" / "zone-editor.png"
PASSWORD = "zones on the kerb 2026"
FRAME_WH = (640, 360)
# Where the supervisor clicks, as fractions of the displayed image.
CLICKS = [(0.1, 0.5), (0.6, 0.5), (0.6, 0.9), (0.1, 0.9)]


@dataclass
class Stand:
    url: str
    session_factory: sessionmaker[Session]
    publisher: RecordingPublisher
    device_id: str
    key: bytes
    camera: str
    supervisor: str


def snapshot_jpeg() -> bytes:
    image = np.full((FRAME_WH[1], FRAME_WH[0], 3), 90, np.uint8)
    cv2.rectangle(image, (60, 170), (390, 330), (40, 40, 200), -1)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    settings = get_settings(
        database_url=f"sqlite:///{tmp_path / 'curbwatch.db'}",
        evidence_dir=tmp_path / "evidence",
        secret_key_file=tmp_path / "secret.key",
    )
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    device_id, key = register(factory)
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    send_heartbeat(factory, device_id, [camera], at=now - timedelta(seconds=10))
    data = snapshot_jpeg()
    sha256 = hashlib.sha256(data).hexdigest()
    EvidenceStore(settings.evidence_dir).put(sha256, data)
    annotated = {
        "role": "annotated",
        "sha256": sha256,
        "size_bytes": len(data),
        "width": FRAME_WH[0],
        "height": FRAME_WH[1],
        "path": f"ev/{sha256}.jpg",
        "restricted": False,
    }
    store_event(factory, device_id, camera, ts=now - timedelta(minutes=1), evidence=[annotated])
    supervisor = f"sup-{uuid.uuid4().hex[:6]}"
    with factory() as session, session.begin():
        add_user(session, supervisor, PASSWORD, "supervisor", display_name="Zhang Min", at=now)
    publisher = RecordingPublisher()
    app = create_app(settings, factory, config=CaseServerConfig(), publisher=publisher)
    try:
        with LiveServer(app) as server:
            yield Stand(server.url, factory, publisher, device_id, key, camera, supervisor)
    finally:
        engine.dispose()


def published_zone(stand: Stand) -> dict[str, Any]:
    document = json.loads(stand.publisher.messages[-1][1])
    return document["zones"][stand.camera]["zones"][0]


def assert_near(points: list[list[float]], expected: list[tuple[float, float]]) -> None:
    assert len(points) == len(expected)
    for (x, y), (ex, ey) in zip(points, expected, strict=True):
        assert abs(x - ex) <= 2 and abs(y - ey) <= 2, (points, expected)


def signed_in_page(browser: Any, stand: Stand, path: str) -> tuple[Any, list[str]]:
    """A page signed in as the supervisor at ``path``, and the list its errors and 4xx/5xx go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    failures: list[str] = []
    page.on("pageerror", lambda error: failures.append(str(error)))
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{stand.url}/login?next={path}")
    page.fill("input[name=username]", stand.supervisor)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stand.url}{path}")
    return page, failures


def on_image(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """Viewport coordinates of a point given as fractions of the snapshot (read now: pages scroll)."""
    box = page.locator("#snapshot").bounding_box()
    assert box is not None
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def publish(page: Any) -> None:
    from playwright.sync_api import expect

    page.click("#zone-publish")
    expect(page.locator("#zone-published")).to_be_visible()
    expect(page.locator("#zone-published")).to_contain_text("Published as")


def test_supervisor_draws_drags_and_publishes_a_zone(stand: Stand, browser: Any) -> None:
    from playwright.sync_api import expect

    page, failures = signed_in_page(browser, stand, f"/cameras/{stand.camera}")
    # Polled through the locator: wait_for_function would eval a string, which the CSP forbids.
    expect(page.locator("#snapshot")).to_have_js_property("naturalWidth", FRAME_WH[0])
    expect(page.locator("#config-facts")).to_contain_text("runs its own zone file")

    # Four clicks on the snapshot make the polygon, in the image's own pixels.
    page.click("#zone-add")
    for fx, fy in CLICKS:
        page.mouse.click(*on_image(page, fx, fy))
    expect(page.locator("#zone-svg polygon.zone")).to_have_count(1)
    page.fill("#zone-form input[name=name]", "kerb-east")
    page.fill("#zone-form input[name=min_dwell_s]", "45")
    page.fill("#zone-form input[name=vehicle_classes]", "car, truck")
    publish(page)
    zone = published_zone(stand)
    assert (zone["name"], zone["kind"], zone["min_dwell_s"], zone["vehicle_classes"]) == (
        "kerb-east",
        "no_parking",
        45,
        ["car", "truck"],
    )
    assert_near(zone["polygon"], [(fx * FRAME_WH[0], fy * FRAME_WH[1]) for fx, fy in CLICKS])
    expect(page.locator("#config-facts")).to_contain_text("Waiting for the device")

    # Drag the first point up and left, publish again; the edge accepts what the server signed.
    handle = page.locator("#zone-svg circle.handle[data-point='0']").bounding_box()
    assert handle is not None
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(*on_image(page, 0.05, 0.4), steps=5)
    page.mouse.up()
    publish(page)
    assert len(stand.publisher.messages) == 2
    assert_near(published_zone(stand)["polygon"][:1], [(0.05 * FRAME_WH[0], 0.4 * FRAME_WH[1])])
    edge = FakeEdge(camera_ids=(stand.camera,))
    report = RemoteConfig(edge, stand.device_id, stand.key).apply(stand.publisher.messages[-1][1])
    assert report.error is None and edge.zones[stand.camera].zones[0].name == "kerb-east"

    # The device reports it applied the version; the page sees it on its next refresh.
    with stand.session_factory() as session, session.begin():
        record_reported_config(session, report.model_copy(update={"ts": datetime.now(UTC)}))
    expect(page.locator("#config-facts")).to_contain_text("Applied by the device", timeout=15_000)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Shift-click removes points; two points are no zone, and the API says where the problem is.
    for _ in range(2):
        page.locator("#zone-svg circle.handle[data-point='0']").click(modifiers=["Shift"])
    expect(page.locator("#zone-svg polyline.zone")).to_have_count(1)
    page.click("#zone-publish")
    expect(page.locator("#zone-errors")).to_contain_text("zones.0.no_parking.polygon")
    assert len(stand.publisher.messages) == 2
    assert failures == [f"422 {stand.url}/api/v1/cameras/{stand.camera}/zones"], failures


def test_cameras_list_and_dashboard_render(stand: Stand, browser: Any) -> None:
    from playwright.sync_api import expect

    page, failures = signed_in_page(browser, stand, "/cameras")
    row = page.locator("#camera-rows tr").first
    expect(row).to_contain_text(stand.camera)
    expect(row.locator(".dot-online")).to_have_count(1)
    expect(row.locator("img")).to_have_js_property("naturalWidth", FRAME_WH[0])
    page.goto(f"{stand.url}/dashboard")
    expect(page.locator("#tiles .tile")).to_have_count(5)
    expect(page.locator("#chart-daily svg rect.bar")).to_have_count(30)
    assert failures == [], failures

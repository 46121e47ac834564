"""An operator reviews cases in Chromium while they arrive from a camera over MQTT.

Everything is real except the camera: Mosquitto, the ingest worker folding signed events into
cases, the web app under uvicorn, the login form, the live queue, the case page's keys, and the
database with its hash-chained audit log. A stand-in device publishes what an edge box publishes:
evidence images (annotated with the zone outline by the edge's own ``annotate``) and signed events.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.edge.evidence import annotate
from curbwatch.edge.messages import EpisodeEvent, Track, Tracks
from curbwatch.schema.events import EventType, EvidenceRefV1, EvidenceRole, ObjectV1
from curbwatch.schema.protocol import Channel
from curbwatch.schema.zones import RULE_OF_VIOLATION, Violation
from curbwatch.server.audit import verify_chain
from curbwatch.server.cases.workflow import CaseStatus
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.db import make_engine, make_session_factory, migrate
from curbwatch.server.ingest import IngestWorker
from curbwatch.server.settings import ServerSettings, get_settings
from curbwatch.server.tables import AuditLog, Case
from curbwatch.server.users import add_user
from curbwatch.server.web.app import create_app
from tests.conftest import REPO_ROOT, shared_data_dir
from tests.e2e.conftest import LiveServer
from tests.server.conftest import PrivateBroker, register
from tests.server.factories import envelope, event_document
from tests.server.fake_device import FakeDevice
from tests.server.web.conftest import RecordingPublisher

pytestmark = pytest.mark.timeout(240)

SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
PASSWORD = "kerbside review 2026"
ARRIVAL_TIMEOUT_MS = 60_000  # ingest, fold, commit, then the queue's next 2 s poll


@dataclass(frozen=True)
class Sighting:
    """What one camera saw: a real CCTV still, the zone polygon and the offending object's box."""

    camera_id: str
    zone: str
    violation: Violation
    still: str
    frame_wh: tuple[int, int]
    polygon: list[list[int]]
    label: str
    xyxy: tuple[float, float, float, float]

    def frame(self) -> np.ndarray:
        """The still when the shared test material is there, a plain frame of its size otherwise."""
        path = shared_data_dir() / self.still
        image = cv2.imread(str(path)) if path.exists() else None
        if image is None:
            return np.full((self.frame_wh[1], self.frame_wh[0], 3), 96, np.uint8)
        return cv2.resize(image, self.frame_wh)


PARKED_VAN = Sighting(
    "forecourt-2", "fire-lane", Violation.ILLEGAL_PARKING, "qengineering-cctv/parking.jpg", (1326, 825),
    [[800, 330], [1010, 330], [1060, 560], [780, 560]], "car", (838.0, 365.0, 982.0, 528.0),
)  # fmt: skip
BIKE_AT_BUS_STOP = Sighting(
    "bus-stop-7", "stop-pavement", Violation.ILLEGAL_PARKING_TWO_WHEELER, "qengineering-cctv/busstop.jpg",
    (1664, 825), [[693, 507], [1067, 507], [1107, 747], [667, 747]], "bicycle", (824.0, 453.0, 933.0, 693.0),
)  # fmt: skip


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    assert ok
    return data.tobytes()


class Camera:
    """Publishes one sighting the way the edge does: evidence images first, then the signed event."""

    def __init__(self, device: FakeDevice, key: bytes, config: CaseServerConfig) -> None:
        self.device, self.key, self.config = device, key, config
        self.seq = 0

    def _publish_image(
        self, image: np.ndarray, role: EvidenceRole, derived_from: str | None, **extra: Any
    ) -> dict[str, Any]:
        data = _jpeg(image)
        sha = hashlib.sha256(data).hexdigest()
        self.device.publish(Channel.EVIDENCE, data, sha)
        ref = EvidenceRefV1(
            role=role,
            sha256=sha,
            size_bytes=len(data),
            width=image.shape[1],
            height=image.shape[0],
            path=f"{sha[:2]}/{sha}.jpg",
            derived_from=derived_from,
            restricted=role is EvidenceRole.CLEAN,
            **extra,
        )
        return ref.model_dump(mode="json")

    def _evidence(self, sighting: Sighting, event: EpisodeEvent, track: Track) -> list[dict[str, Any]]:
        """The clean frame, its annotated copy (zone outline, box, header) and the object's crop."""
        clean = sighting.frame()
        tracks = Tracks(ts=event.ts, frame_wh=sighting.frame_wh, items=(track,), inferred=True)
        annotated = annotate(
            clean, event, np.array(sighting.polygon), tracks, self.config.event_codes[sighting.violation]
        )
        x1, y1, x2, y2 = (round(v) for v in sighting.xyxy)
        crop = clean[max(0, y1 - 12) : y2 + 12, max(0, x1 - 12) : x2 + 12]
        original = self._publish_image(clean, EvidenceRole.CLEAN, None)
        return [
            original,
            self._publish_image(annotated, EvidenceRole.ANNOTATED, original["sha256"]),
            self._publish_image(crop, EvidenceRole.CROP, original["sha256"], track_id=track.track_id),
        ]

    def report(self, sighting: Sighting) -> None:
        """Publish the start event of a fresh episode that began six minutes ago."""
        now = time.time()
        track = Track(1, sighting.label, 0.91, sighting.xyxy, now - 400, now - 60, now - 360, True)
        event = EpisodeEvent(
            episode_id=uuid.uuid4().hex,
            type=EventType.START,
            violation=sighting.violation,
            zone=sighting.zone,
            episode_start_ts=now - 360,
            ts=now - 60,
            objects=(track,),
        )
        code = self.config.event_codes[sighting.violation]
        seen = ObjectV1(track_id=1, label=sighting.label, score=0.91, xyxy=sighting.xyxy, stationary_s=300.0)
        document = event_document(
            self.device.device_id,
            episode_id=event.episode_id,
            camera_id=sighting.camera_id,
            zone=sighting.zone,
            rule=RULE_OF_VIOLATION[sighting.violation].value,
            violation=sighting.violation.value,
            event_code=code.code,
            event_name=code.name,
            episode_start=datetime.fromtimestamp(event.episode_start_ts, UTC).isoformat(),
            ts=datetime.fromtimestamp(event.ts, UTC).isoformat(),
            dwell_s=event.dwell_s,
            frame_wh=list(sighting.frame_wh),
            objects=[seen.model_dump(mode="json")],
            evidence=self._evidence(sighting, event, track),
            model={"name": "yolox-nano", "version": "0.1.1", "sha256": "ab" * 32, "family": "yolox"},
            location=[31.23041, 121.47370],
        )
        self.seq += 1
        signed = envelope(self.device.device_id, self.key, self.seq, document)
        self.device.publish(Channel.EVENT, signed.to_bytes())


@dataclass
class Stand:
    """The running system: database, broker, ingest worker, web server, a device and two users."""

    server: LiveServer
    session_factory: sessionmaker[Session]
    camera: Camera
    operator: str
    supervisor: str
    publisher: RecordingPublisher


def _settings(tmp_path: Path, broker: PrivateBroker) -> ServerSettings:
    group = f"e2e{uuid.uuid4().hex[:8]}"
    return get_settings(
        database_url=f"sqlite:///{tmp_path / 'curbwatch.db'}",
        evidence_dir=tmp_path / "evidence",
        secret_key_file=tmp_path / "secret.key",
        mqtt_port=broker.port,
        share_group=group,
        worker_name=f"{group}-worker",
        session_expiry_s=60,
        max_payload_bytes=16 * 1024 * 1024,
    )


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    broker = PrivateBroker(tmp_path)
    broker.start()
    settings = _settings(tmp_path, broker)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    config = CaseServerConfig()
    device_id, key = register(session_factory)
    operator, supervisor = f"op-{uuid.uuid4().hex[:6]}", f"sup-{uuid.uuid4().hex[:6]}"
    with session_factory() as session, session.begin():
        add_user(session, operator, PASSWORD, "operator", display_name="Li Wei", at=datetime.now(UTC))
        add_user(session, supervisor, PASSWORD, "supervisor", display_name="Zhao Min", at=datetime.now(UTC))
    worker = IngestWorker(settings, session_factory)
    worker.start()
    device = None
    try:
        assert worker.wait_subscribed(10), "ingest worker did not subscribe"
        device = FakeDevice(device_id, broker.port)
        publisher = RecordingPublisher()
        app = create_app(settings, session_factory, config=config, publisher=publisher)
        with LiveServer(app) as server:
            yield Stand(server, session_factory, Camera(device, key, config), operator, supervisor, publisher)
    finally:
        if device is not None:
            device.close()
        worker.stop()
        broker.stop()
        engine.dispose()


def _case_of(session: Session, camera_id: str) -> Case:
    return session.scalars(select(Case).where(Case.camera_id == camera_id)).one()


def _trail(session: Session, case_id: str) -> list[tuple[str, str, str, str | None]]:
    rows = session.scalars(select(AuditLog).where(AuditLog.case_id == case_id).order_by(AuditLog.id))
    return [(row.action, row.actor, row.role, row.reason) for row in rows]


def _open_page(browser: Any) -> tuple[Any, list[str]]:
    """A page, and the list its script errors and failed requests are collected in."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    failures: list[str] = []
    page.on("pageerror", lambda error: failures.append(str(error)))
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return page, failures


def _sign_in(page: Any, stand: Stand, username: str) -> None:
    """Open the queue, get sent to the login form, sign in and come back to the queue."""
    from playwright.sync_api import expect

    base = stand.server.url
    page.goto(f"{base}/queue")
    expect(page).to_have_url(f"{base}/login?next=/queue")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base}/queue")
    expect(page.locator("#live")).to_contain_text("Live")


def _arrives(page: Any, stand: Stand, sighting: Sighting) -> Any:
    """Report ``sighting`` while the queue is open; its row appears without the page reloading."""
    from playwright.sync_api import expect

    expect(page.locator("#list-empty")).to_be_visible()
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    stand.camera.report(sighting)
    row = page.locator("#case-rows tr").first
    expect(row).to_contain_text(sighting.camera_id, timeout=ARRIVAL_TIMEOUT_MS)
    expect(row).to_contain_text(sighting.zone)
    assert page.evaluate("window.loadedOnce") is True, "the queue reloaded instead of updating in place"
    return row


def test_operator_confirms_one_arriving_case_and_rejects_another(stand: Stand, browser: Any) -> None:
    from playwright.sync_api import expect

    page, failures = _open_page(browser)
    queue = f"{stand.server.url}/queue"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _sign_in(page, stand, stand.operator)

    # A van in the fire lane: Enter opens it, the annotated evidence loads, c confirms.
    _arrives(page, stand, PARKED_VAN)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/cases/[0-9a-f]{32}\?queue=1$"))
    # Polled through the locator: wait_for_function would eval a string, which the CSP forbids.
    expect(page.locator("#evidence-main")).not_to_have_js_property("naturalWidth", 0)
    page.screenshot(path=str(SCREENSHOTS / "review-case.png"), full_page=True)
    page.keyboard.press("c")
    expect(page).to_have_url(queue)  # nothing else awaits verification: back to the queue

    # A shared bike on the pavement at another camera: r, then 2 (not a violation), Enter.
    row = _arrives(page, stand, BIKE_AT_BUS_STOP)
    page.screenshot(path=str(SCREENSHOTS / "review-queue.png"))
    row.click()
    expect(page.locator("h1")).to_contain_text("0506")  # the two-wheeler parking code
    page.keyboard.press("r")
    dialog = page.locator("#dialog-reject")
    expect(dialog).to_be_visible()
    page.keyboard.press("2")
    expect(dialog.locator("input[value=not_a_violation]")).to_be_checked()
    page.screenshot(path=str(SCREENSHOTS / "review-reject.png"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(queue)
    assert failures == [], failures

    with stand.session_factory() as session:
        van, bike = _case_of(session, PARKED_VAN.camera_id), _case_of(session, BIKE_AT_BUS_STOP.camera_id)
        assert (van.status, bike.status) == (CaseStatus.FILED.value, CaseStatus.VOID.value)
        camera = f"edge:{stand.camera.device.device_id}"
        assert _trail(session, van.id) == [
            ("open_case", camera, "system", None),
            ("confirm", stand.operator, "operator", None),
        ]
        assert _trail(session, bike.id) == [
            ("open_case", camera, "system", None),
            ("reject", stand.operator, "operator", "not_a_violation"),
        ]
        assert verify_chain(session) == []


def test_supervisor_takes_a_case_from_filing_through_rework_to_closing(stand: Stand, browser: Any) -> None:
    from playwright.sync_api import expect

    page, failures = _open_page(browser)
    _sign_in(page, stand, stand.supervisor)
    case_id = _arrives(page, stand, PARKED_VAN).get_attribute("data-id")
    # Opened on its own, not from the queue: each action reloads the page in the case's new state.
    page.goto(f"{stand.server.url}/cases/{case_id}")
    status = page.locator(".case-head .status")

    def press(key: str, state: str) -> None:
        page.keyboard.press(key)
        expect(status).to_have_text(state)

    press("c", "Filed")
    page.keyboard.press("d")
    page.select_option("#dialog-dispatch select[name=department]", index=1)
    page.keyboard.press("Enter")
    expect(status).to_have_text("Dispatched")
    press("s", "In progress")
    press("h", "Checking")  # reported handled, and the camera was asked for a check image at once
    page.keyboard.press("w")
    page.keyboard.type("the van is still in the fire lane")
    page.keyboard.press("Enter")
    expect(status).to_have_text("In progress")
    press("h", "Checking")
    page.keyboard.press("x")
    page.keyboard.press("3")  # enforcement
    page.keyboard.press("Enter")
    expect(status).to_have_text("Closed")
    expect(page.locator(".actions button")).to_have_count(0)
    expect(page.locator("ol.timeline")).to_contain_text("the van is still in the fire lane")
    page.keyboard.press("q")  # back to the list of all cases, here filtered to closed ones
    page.select_option("select[name=status]", "closed")
    expect(page).to_have_url(f"{stand.server.url}/cases?status=closed")
    expect(page.locator("#case-rows tr")).to_have_count(1)
    expect(page.locator("#case-rows tr")).to_contain_text("Closed")
    assert failures == [], failures

    with stand.session_factory() as session:
        van = _case_of(session, PARKED_VAN.camera_id)
        assert (van.status, van.outcome, van.closure_type) == ("closed", "enforcement", "normal")
        assert (van.department, van.rework_count) == (stand.camera.config.departments[0], 1)
        assert [action for action, *_ in _trail(session, van.id)] == [
            "open_case", "confirm", "dispatch", "start", "report_handled", "request_check",
            "return_for_rework", "report_handled", "request_check", "close",
        ]  # fmt: skip
        assert verify_chain(session) == []
    assert sum("/command" in topic for topic, _, _ in stand.publisher.messages) == 2

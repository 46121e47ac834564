"""A check (核查) end to end: the server asks a running edge box for a fresh image of a handled case's
camera over Mosquitto; the edge answers with its last frame, privacy-masked and blurred, delivered
as evidence; ingest stores the image and the check becomes "received"."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.edge.config import edge_config_from_dict
from curbwatch.edge.runner import EdgeRunner
from curbwatch.edge.uplink import Uplink
from curbwatch.schema.events import EventV1
from curbwatch.server.cases.checks import request_check
from curbwatch.server.cases.folding import fold_event
from curbwatch.server.cases.service import transition_case
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.device_link import MqttDevicePublisher
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.ingest import IngestWorker
from curbwatch.server.tables import CaseCheck, Evidence
from tests.edge.test_runner import write_stills, write_zone_file
from tests.server.conftest import PrivateBroker, register
from tests.server.factories import event_document
from tests.server.test_ingest import worker_settings

pytestmark = pytest.mark.timeout(120)

CAMERA = "drive"
CONFIG = CaseServerConfig()
AT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
MASK = [[0, 0], [300, 0], [300, 200], [0, 200]]  # in the zone file's 1334x650 pixels
TO_HANDLED = [
    {"action": "confirm", "role": "operator"},
    {"action": "dispatch", "role": "dispatcher", "department": "traffic police"},
    {"action": "start", "role": "dispatcher"},
    {"action": "report_handled", "role": "dispatcher"},
]


def handled_case(factory: sessionmaker[Session], device_id: str) -> str:
    event = EventV1.model_validate(event_document(device_id, camera_id=CAMERA))
    with factory() as session, session.begin():
        case_id = fold_event(session, event, config=CONFIG.folding, at=AT).id
    for step in TO_HANDLED:
        with factory() as session, session.begin():
            transition_case(session, case_id=case_id, actor="u-1", config=CONFIG, at=AT, **step)
    return case_id


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_check_is_answered_by_the_edge_with_a_masked_image(
    broker: PrivateBroker,
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    data_dir: Path,
    yolox_nano_path: Path,
) -> None:
    device_id, key = register(session_factory)
    image = cv2.imread(str(data_dir / "frigate-cctv" / "driveway_zones.png"))
    stills = write_stills(tmp_path / "stills", image, seconds=3)
    zones = write_zone_file(
        tmp_path / "zones.json",
        CAMERA,
        (1334, 650),
        [
            {"name": "far-kerb", "kind": "no_parking", "polygon": [[100, 105], [640, 120], [640, 150]]},
            {"name": "house", "kind": "privacy_mask", "polygon": MASK},
        ],
    )
    edge_config = edge_config_from_dict(
        {
            "version": 1,
            "device_id": device_id,
            "detector": {"model_path": str(yolox_nano_path)},
            "evidence": {"root": str(tmp_path / "edge-evidence")},
            "delivery": {
                "outbox_path": str(tmp_path / "outbox.sqlite"),
                "config_wait_s": 2,
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "device_id": device_id,
                    "device_key": key.hex(),
                    "protocol": "3.1.1",
                },
            },
            "cameras": [{"id": CAMERA, "source": {"url": f"stills:{stills}"}, "zones": str(zones)}],
        },
        base_dir=tmp_path,
    )
    settings = worker_settings(broker, database_url, tmp_path, f"g{uuid.uuid4().hex[:8]}", "check")
    worker = IngestWorker(settings, session_factory)
    publisher = MqttDevicePublisher(settings)
    assert edge_config.delivery is not None
    uplink = Uplink(edge_config.delivery, edge_config.evidence.root)
    worker.start()
    try:
        assert worker.wait_subscribed(10)
        runner = EdgeRunner(edge_config, uplink.sink)
        uplink.start(runner)
        runner.run()  # three stills; the box stays connected and keeps the last frame

        case_id = handled_case(session_factory, device_id)
        with session_factory() as session, session.begin():
            command = request_check(
                session, case_id=case_id, actor="op-7", role="operator", config=CONFIG, at=AT
            )
        publisher.publish(command.topic, command.payload, retain=False)

        def answered() -> CaseCheck | None:
            with session_factory() as session:
                check = session.get(CaseCheck, command.check_id)
                delivered = check.evidence_sha256 and session.get(Evidence, check.evidence_sha256)
                return (
                    check if check.status != "requested" and (delivered or check.status == "failed") else None
                )

        assert wait_for(answered, 30), "the check was not answered"
        check = answered()
    finally:
        uplink.stop()
        publisher.close()
        worker.stop()

    assert (check.status, check.error) == ("received", None)
    data = EvidenceStore(settings.evidence_dir).read(check.evidence_sha256)
    snapshot = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert snapshot.shape == image.shape
    height, width = image.shape[:2]
    masked = snapshot[: 200 * height // 650 - 4, : 300 * width // 1334 - 4]
    assert masked.mean() < 8, "the privacy mask must be blank in the image sent"
    assert snapshot[300:, 700:].mean() > 30  # the rest is the street
    assert json.loads(command.payload)["args"] == {"camera_id": CAMERA, "case_id": case_id}

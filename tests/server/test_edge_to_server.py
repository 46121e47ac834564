"""The whole path: a real camera pipeline on a real CCTV still, the edge's outbox and publisher,
Mosquitto, the ingest worker and the database, where the violation becomes a case awaiting
verification — plus a remote zone file applied on the way and reported back."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.edge.app import run_edge
from curbwatch.edge.config import edge_config_from_dict
from curbwatch.schema.protocol import Channel, ReportedConfigV1, sign, topic
from curbwatch.server.ingest import IngestWorker
from curbwatch.server.tables import AuditLog, Case, CaseEvent, Device, Event, Evidence
from tests.edge.test_runner import write_stills
from tests.server.conftest import PrivateBroker, register
from tests.server.test_ingest import worker_settings

pytestmark = pytest.mark.timeout(180)

KERB = [[100, 105], [640, 120], [640, 150], [100, 135]]


def zone_document(camera: str, dwell: float) -> dict:
    return {
        "version": 1,
        "camera": camera,
        "frame_wh": [1334, 650],
        "timezone": "UTC",
        "zones": [{"name": "far-kerb", "kind": "no_parking", "polygon": KERB, "min_dwell_s": dwell}],
    }


def publish_desired(broker: PrivateBroker, device_id: str, key: bytes, camera: str, dwell: float) -> None:
    document = {
        "schema": "curbwatch.config.v1",
        "version": "remote-1",
        "zones": {camera: zone_document(camera, dwell)},
    }
    document["sig"] = sign(document, key)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"server-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(
        topic(device_id, Channel.CONFIG_DESIRED), json.dumps(document), qos=1, retain=True
    ).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def read_retained(broker: PrivateBroker, name: str) -> bytes | None:
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"reader-{uuid.uuid4().hex[:6]}")
    client.on_message = lambda _c, _u, message: got.append(message.payload)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe(name, qos=1)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    return got[0] if got else None


def test_violation_travels_from_camera_to_database(
    broker: PrivateBroker,
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    data_dir: Path,
    yolox_nano_path: Path,
) -> None:
    device_id, key = register(session_factory)
    camera = "drive"
    image = cv2.imread(str(data_dir / "frigate-cctv" / "driveway_zones.png"))
    stills = write_stills(tmp_path / "stills", image, seconds=45)
    local_zones = tmp_path / "zones.json"
    local_zones.write_text(json.dumps(zone_document(camera, dwell=600)))  # would never fire in 45 s
    publish_desired(broker, device_id, key, camera, dwell=20)  # retained: applied at connect

    group = f"g{uuid.uuid4().hex[:8]}"
    worker = IngestWorker(worker_settings(broker, database_url, tmp_path, group, "e2e"), session_factory)
    worker.start()
    try:
        assert worker.wait_subscribed(10)
        config = edge_config_from_dict(
            {
                "version": 1,
                "device_id": device_id,
                "detector": {"model_path": str(yolox_nano_path)},
                "evidence": {"root": str(tmp_path / "evidence")},
                "output": {"events": str(tmp_path / "events.jsonl")},
                "delivery": {
                    "outbox_path": str(tmp_path / "outbox.sqlite"),
                    "mqtt": {
                        "host": "127.0.0.1",
                        "port": broker.port,
                        "device_id": device_id,
                        "device_key": key.hex(),
                        "protocol": "3.1.1",
                        "rate_limit_msgs_s": 1000,
                    },
                },
                "cameras": [{"id": camera, "source": {"url": f"stills:{stills}"}, "zones": str(local_zones)}],
            },
            base_dir=tmp_path,
        )
        reports = run_edge(config)
    finally:
        time.sleep(0.5)
        worker.stop()

    assert reports[camera].error is None
    local = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in local][:1] == ["start"], "the remote 20 s dwell must replace the local 600 s"
    with session_factory() as session:
        stored = session.scalars(select(Event).where(Event.device_id == device_id).order_by(Event.seq)).all()
        images = session.scalar(
            select(func.count()).select_from(Evidence).where(Evidence.device_id == device_id)
        )
        cases = session.scalars(select(Case).where(Case.device_id == device_id)).all()
        linked = session.scalars(
            select(CaseEvent.case_id).where(CaseEvent.event_id.in_([e["event_id"] for e in local]))
        ).all()
        opened = session.scalars(
            select(AuditLog.action).where(AuditLog.case_id.in_([c.id for c in cases]))
        ).all()
        device = session.get(Device, device_id)
    assert [row.event_id for row in stored] == [e["event_id"] for e in local]  # every event, once, in order
    assert [row.seq for row in stored] == list(range(1, len(local) + 1))
    assert images == sum(len(e["evidence"]) for e in local)
    # One episode, one case, waiting for an operator; every event of it filed under it.
    assert [(c.status, c.camera_id, c.zone) for c in cases] == [("awaiting_verification", camera, "far-kerb")]
    assert len(linked) == len(local) and set(linked) == {cases[0].id}
    assert opened == ["open_case"]
    assert (device.reported_config_version, device.reported_config_error) == ("remote-1", None)
    report = read_retained(broker, topic(device_id, Channel.CONFIG_REPORTED))
    assert report is not None and ReportedConfigV1.model_validate_json(report).applied_version == "remote-1"

"""The evidence references filed beside stored events."""

from __future__ import annotations

from datetime import UTC, datetime

from curbwatch.server.event_writer import evidence_ref_rows
from tests.server.factories import event_document

TS = datetime(2026, 11, 27, 1, 2, tzinfo=UTC)


def _row(evidence: list[dict]) -> dict:
    document = event_document("edge-refs", camera_id="cam-refs", evidence=evidence)
    return {
        "event_id": document["event_id"],
        "device_id": "edge-refs",
        "camera": "cam-refs",
        "ts": TS,
        "document": document,
    }


def _ref(role: str, sha: str, restricted: bool, **extra: object) -> dict:
    return {
        "role": role,
        "sha256": sha,
        "size_bytes": 1,
        "width": 2,
        "height": 2,
        "path": "p.jpg",
        "restricted": restricted,
        **extra,
    }


def test_one_row_per_event_and_image() -> None:
    first = _row([_ref("clean", "a" * 64, True), _ref("crop", "b" * 64, False, track_id=3)])
    second = _row([_ref("annotated", "a" * 64, False)])  # the same image again, in another event
    rows = evidence_ref_rows([first, second, _row([])])
    keys = ("event_id", "sha256", "role", "restricted", "track_id")
    assert [tuple(row[k] for k in keys) for row in rows] == [
        (first["event_id"], "a" * 64, "clean", True, None),
        (first["event_id"], "b" * 64, "crop", False, 3),
        (second["event_id"], "a" * 64, "annotated", False, None),
    ]
    assert {(row["camera_id"], row["device_id"], row["ts"]) for row in rows} == {
        ("cam-refs", "edge-refs", TS)
    }


def test_an_image_listed_twice_by_one_event_is_restricted_if_either_says_so() -> None:
    for flags in ((False, True), (True, False)):
        row = _row([_ref("annotated", "c" * 64, flags[0]), _ref("annotated", "c" * 64, flags[1])])
        [ref] = evidence_ref_rows([row])
        assert ref["restricted"] is True


def _event(device_id: str, camera_id: str, seq: int, ts: datetime) -> dict:
    from curbwatch.schema.events import EventV1
    from curbwatch.server.event_writer import event_row

    document = event_document(device_id, camera_id=camera_id)
    return event_row(EventV1.model_validate(document), seq=seq, received_at=ts, document=document) | {
        "ts": ts
    }


def test_sightings_keep_each_cameras_newest_event(session_factory) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from curbwatch.server.event_writer import write_events
    from curbwatch.server.tables import CameraSighting
    from tests.server.conftest import register

    device, _ = register(session_factory, prefix="edge-sight")
    later = TS + timedelta(minutes=5)
    batches = [
        [_event(device, "cam-a", 1, TS), _event(device, "cam-a", 2, later), _event(device, "cam-b", 3, TS)],
        [_event(device, "cam-a", 4, TS - timedelta(hours=1))],  # a late backlog must not move it back
        [_event(device, "cam-b", 5, later + timedelta(seconds=1))],
    ]
    for batch in batches:
        with session_factory() as session, session.begin():
            write_events(session, batch)
    with session_factory() as session:
        rows = session.execute(
            select(CameraSighting.camera_id, CameraSighting.last_event_at)
            .where(CameraSighting.device_id == device)
            .order_by(CameraSighting.camera_id)
        ).all()
    assert [(camera, at.replace(tzinfo=UTC) if at.tzinfo is None else at) for camera, at in rows] == [
        ("cam-a", later),
        ("cam-b", later + timedelta(seconds=1)),
    ]

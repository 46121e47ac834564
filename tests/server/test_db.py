"""Migrations: upgrade head gives exactly the ORM schema, and downgrade removes it, on both backends;
upgrading a database with events files their evidence references."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select
from sqlalchemy.engine import Engine

from curbwatch.server.db import as_utc, make_engine, migrate
from curbwatch.server.tables import Base, CameraSighting, Device, Event, EvidenceRef
from tests.server.conftest import _postgres_database
from tests.server.factories import event_document


def test_migrated_schema_matches_the_tables(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    unique = inspect(engine).get_unique_constraints("events")
    assert [c["column_names"] for c in unique] == [["device_id", "seq"]]


def test_downgrade_and_upgrade_again(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    _downgrade(url)
    from curbwatch.server.db import make_engine

    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(url)
    assert {"devices", "events", "evidence", "dead_letters"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def _downgrade(url: str) -> None:
    from alembic import command

    from curbwatch.server.db import alembic_config

    command.downgrade(alembic_config(url), "base")


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (a migration test must start below head)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    yield from _postgres_database()


def test_upgrading_files_the_evidence_references_of_stored_events(fresh_url: str) -> None:
    migrate(fresh_url, "0003")
    at = datetime(2026, 11, 27, 1, 2, tzinfo=UTC)
    clean, annotated = "a" * 64, "b" * 64
    refs = [
        {"role": "clean", "sha256": clean, "restricted": True},
        {"role": "annotated", "sha256": annotated, "derived_from": clean, "restricted": False},
        {"role": "crop", "sha256": "c" * 64, "track_id": 4, "restricted": False},
    ]
    listed = event_document("edge-old", camera_id="cam-old", evidence=[
        {**r, "size_bytes": 1, "width": 2, "height": 2, "path": "p.jpg"} for r in refs
    ])  # fmt: skip
    bare = event_document("edge-old", camera_id="cam-old")
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(Device.__table__).values(id="edge-old", hmac_key="00" * 32, created_at=at)
            )
            connection.execute(
                insert(Event.__table__),
                [
                    {
                        "event_id": document["event_id"],
                        "device_id": "edge-old",
                        "seq": seq,
                        "episode_id": document["episode_id"],
                        "type": "start",
                        "rule": "illegal_parking",
                        "violation": "illegal_parking",
                        "event_code": "0505",
                        "camera": "cam-old",
                        "zone": "kerb",
                        "ts": at,
                        "received_at": at,
                        "document": document,
                    }
                    for seq, document in enumerate((listed, bare), start=1)
                ],
            )
        migrate(fresh_url)
        with engine.connect() as connection:
            rows = connection.execute(select(EvidenceRef).order_by(EvidenceRef.sha256)).all()
            sightings = connection.execute(select(CameraSighting)).all()
    finally:
        engine.dispose()
    assert [(r.event_id, r.sha256, r.role, r.restricted, r.track_id) for r in rows] == [
        (listed["event_id"], clean, "clean", True, None),
        (listed["event_id"], annotated, "annotated", False, None),
        (listed["event_id"], "c" * 64, "crop", False, 4),
    ]
    assert {(r.camera_id, r.device_id, as_utc(r.ts)) for r in rows} == {("cam-old", "edge-old", at)}
    # 0007 fills the cameras' newest events from the events already stored.
    assert [(s.camera_id, s.device_id, as_utc(s.last_event_at)) for s in sightings] == [
        ("cam-old", "edge-old", at)
    ]

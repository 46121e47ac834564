"""Read side of cases: who sees which image, and which statements a lookup costs, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import EventV1
from curbwatch.server.cases.folding import FoldingConfig, fold_event
from curbwatch.server.cases.queries import CaseFilters, evidence_restricted, list_cases
from curbwatch.server.event_writer import Verdict, write_events
from tests.server.conftest import register
from tests.server.factories import event_document

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def new_sha() -> str:
    return uuid.uuid4().hex * 2


def ref(role: str, sha256: str, *, restricted: bool) -> dict[str, Any]:
    return {
        "role": role,
        "sha256": sha256,
        "size_bytes": 1024,
        "width": 1280,
        "height": 720,
        "path": f"cam/{sha256}.jpg",
        "restricted": restricted,
    }


def store(factory: sessionmaker[Session], device_id: str, evidence: list[dict[str, Any]]) -> None:
    """One event listing ``evidence``, stored and folded as the ingest does."""
    document = event_document(device_id, camera_id=f"cam-{uuid.uuid4().hex[:12]}", evidence=evidence)
    parsed = EventV1.model_validate(document)
    row = {
        "event_id": parsed.event_id,
        "device_id": device_id,
        "seq": uuid.uuid4().int % 2**62,
        "episode_id": parsed.episode_id,
        "type": parsed.type.value,
        "rule": parsed.rule.value,
        "violation": parsed.violation.value,
        "event_code": parsed.event_code,
        "camera": parsed.camera_id,
        "zone": parsed.zone,
        "ts": parsed.ts,
        "received_at": NOW,
        "document": document,
    }
    with factory() as session, session.begin():
        assert write_events(session, [row])[0].verdict is Verdict.STORED
        fold_event(session, parsed, config=FoldingConfig(), at=NOW)


@contextmanager
def statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement sent to the database inside the block, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def query_plan(engine: Engine, statement: str, parameters: Any) -> str:
    """The database's plan for one recorded statement, as text."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return "\n".join(str(row[-1]) for row in rows)
        # The test tables are small enough to read whole and sort; forbid both (a sort that no index
        # can spare still shows), to see which index serves.
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        connection.exec_driver_sql("SET LOCAL enable_sort = off")
        return "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters))


def test_an_image_is_open_only_when_every_event_lists_it_unrestricted(
    session_factory: sessionmaker[Session],
) -> None:
    device_id, _ = register(session_factory)
    clean, annotated, disputed, unknown = new_sha(), new_sha(), new_sha(), new_sha()
    store(
        session_factory,
        device_id,
        [ref("clean", clean, restricted=True), ref("annotated", annotated, restricted=False)],
    )
    store(session_factory, device_id, [ref("annotated", annotated, restricted=False)])
    # Listed as restricted once: a wrong flag hides an image rather than shows one.
    store(session_factory, device_id, [ref("annotated", disputed, restricted=False)])
    store(session_factory, device_id, [ref("clean", disputed, restricted=True)])
    with session_factory() as session:
        verdicts = {sha: evidence_restricted(session, sha) for sha in (clean, annotated, disputed, unknown)}
    assert verdicts == {clean: True, annotated: False, disputed: True, unknown: True}


def test_the_evidence_lookup_is_one_indexed_statement(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    device_id, _ = register(session_factory)
    annotated = new_sha()
    store(session_factory, device_id, [ref("annotated", annotated, restricted=False)])
    with statements(engine) as sent, session_factory() as session:
        assert evidence_restricted(session, annotated) is False
    [(statement, parameters)] = sent
    assert "evidence_refs" in statement and "document" not in statement
    assert "ix_evidence_refs_sha256" in query_plan(engine, statement, parameters)


def test_a_page_of_cases_is_read_in_index_order(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    device_id, _ = register(session_factory)
    for _ in range(3):
        store(session_factory, device_id, [ref("annotated", new_sha(), restricted=False)])
    with statements(engine) as sent, session_factory() as session:
        first = list_cases(session, CaseFilters(), at=NOW, limit=2)
        assert first.next_cursor is not None
        list_cases(session, CaseFilters(), at=NOW, limit=2, cursor=first.next_cursor)
    # Each page: its cases, then their thumbnails.
    assert len(sent) == 4
    for statement, parameters in (sent[0], sent[2]):
        plan = query_plan(engine, statement, parameters)
        assert "ix_cases_created_at_id" in plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan  # no sort of the matches

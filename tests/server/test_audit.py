"""The hash-chained audit log: appends, tamper detection, concurrent writers and ``audit verify``."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from curbwatch.server.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditError,
    ProblemKind,
    append_audit,
    append_audit_entries,
    row_hash,
    verify_chain,
)
from curbwatch.server.cli import _standalone
from curbwatch.server.db import alembic_config, make_engine, make_session_factory, migrate
from curbwatch.server.tables import AuditLog
from tests.server.conftest import _postgres_database

T0 = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
CHAIN_LENGTH = 5


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database per test: tampering must not leak into other tests' chains."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
        migrate(url)
        yield url
        return
    for url in _postgres_database():
        migrate(url)
        yield url


@pytest.fixture
def audit_engine(audit_url: str) -> Iterator[Engine]:
    engine = make_engine(audit_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(audit_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(audit_engine)


def _append(session: Session, index: int) -> AuditLog:
    return append_audit(
        session,
        case_id=None if index == 0 else f"case-{index % 2}",
        action="device_added" if index == 0 else "transition",
        actor=f"officer-{index}",
        role="admin" if index == 0 else "reviewer",
        # Non-UTC offsets must hash the same after the database gives the time back in UTC.
        at=(T0 + timedelta(minutes=index)).astimezone(timezone(timedelta(hours=8))),
        from_state=None if index == 0 else "new",
        to_state=None if index == 0 else "confirmed",
        reason=f"reason {index}" if index % 2 else None,
        details={"index": index, "plate": "粤B12345", "score": 0.75} if index else None,
    )


def _chain(sessions: sessionmaker[Session], length: int = CHAIN_LENGTH) -> None:
    for index in range(length):
        with sessions() as session, session.begin():
            _append(session, index)


def _problems(sessions: sessionmaker[Session]) -> list[tuple[int, ProblemKind]]:
    with sessions() as session:
        return [(problem.entry_id, problem.kind) for problem in verify_chain(session)]


def test_an_untouched_chain_verifies_and_links(sessions: sessionmaker[Session]) -> None:
    _chain(sessions)
    with sessions() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        assert verify_chain(session) == []
    assert [row.id for row in rows] == list(range(1, CHAIN_LENGTH + 1))
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.entry_hash for earlier, later in itertools.pairwise(rows))
    assert len({row.entry_hash for row in rows}) == CHAIN_LENGTH
    assert rows[1].case_id == "case-1" and rows[1].details == {"index": 1, "plate": "粤B12345", "score": 0.75}


def test_an_empty_log_verifies(sessions: sessionmaker[Session]) -> None:
    assert _problems(sessions) == []


TAMPERING = [
    ("UPDATE audit_log SET reason = 'nothing to see' WHERE id = 3", [(3, ProblemKind.ALTERED)]),
    ("UPDATE audit_log SET actor = 'someone-else' WHERE id = 2", [(2, ProblemKind.ALTERED)]),
    ("UPDATE audit_log SET to_state = 'dismissed' WHERE id = 5", [(5, ProblemKind.ALTERED)]),
    ("UPDATE audit_log SET details = '{\"index\": 9}' WHERE id = 4", [(4, ProblemKind.ALTERED)]),
    ("UPDATE audit_log SET case_id = 'case-9' WHERE id = 1", [(1, ProblemKind.ALTERED)]),
    # A forger who also rewrites the entry's hash breaks the link of the entry after.
    (
        "UPDATE audit_log SET entry_hash = '" + "a" * 64 + "' WHERE id = 3",
        [(3, ProblemKind.ALTERED), (4, ProblemKind.BROKEN_LINK)],
    ),
    ("DELETE FROM audit_log WHERE id = 3", [(4, ProblemKind.ID_GAP), (4, ProblemKind.BROKEN_LINK)]),
    ("DELETE FROM audit_log WHERE id = 1", [(2, ProblemKind.ID_GAP), (2, ProblemKind.BROKEN_LINK)]),
    ("DELETE FROM audit_log WHERE id IN (2, 3)", [(4, ProblemKind.ID_GAP), (4, ProblemKind.BROKEN_LINK)]),
]


@pytest.mark.parametrize(("statement", "expected"), TAMPERING)
def test_tampering_is_found_at_the_right_entry(
    sessions: sessionmaker[Session], audit_engine: Engine, statement: str, expected: list
) -> None:
    _chain(sessions)
    with audit_engine.begin() as connection:
        assert connection.execute(text(statement)).rowcount >= 1
    assert _problems(sessions) == expected


def test_a_forged_entry_recomputed_from_its_content_still_breaks_the_chain(
    sessions: sessionmaker[Session], audit_engine: Engine
) -> None:
    """Rewriting an entry and recomputing its own hash is exactly what the link to the next catches."""

    _chain(sessions)
    with sessions() as session, session.begin():
        row = session.get(AuditLog, 2)
        assert row is not None
        row.reason = "forged"
        row.entry_hash = row_hash(row)
    assert _problems(sessions) == [(3, ProblemKind.BROKEN_LINK)]


def test_appends_after_a_rollback_keep_the_chain(sessions: sessionmaker[Session]) -> None:
    _chain(sessions, 2)
    with sessions() as session, session.begin():
        _append(session, 7)
        session.rollback()
    _chain(sessions, 2)
    assert _problems(sessions) == []
    with sessions() as session:
        assert session.scalars(select(AuditLog.id).order_by(AuditLog.id)).all() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("at", "details", "message"),
    [
        (datetime(2026, 11, 28, 9, 30), None, "timezone-aware"),
        (T0, {"when": T0}, "not JSON"),
    ],
)
def test_bad_entries_are_refused(
    sessions: sessionmaker[Session], at: datetime, details, message: str
) -> None:
    with sessions() as session, session.begin(), pytest.raises(AuditError, match=message):
        append_audit(
            session, case_id="c", action="a", actor="x", role="r", at=at, from_state=None, to_state=None,
            details=details,
        )  # fmt: skip
    with sessions() as session:
        assert session.scalars(select(AuditLog)).all() == []


def test_a_batch_of_entries_chains_like_single_appends(sessions: sessionmaker[Session]) -> None:
    _chain(sessions, 2)
    drafts = [
        AuditDraft(f"case-{n}", "open_case", "edge:e1", "system", T0 + timedelta(seconds=n), None, "new")
        for n in range(3)
    ]
    with sessions() as session, session.begin():
        entries = append_audit_entries(session, drafts)
    assert [entry.id for entry in entries] == [3, 4, 5]
    assert [entry.case_id for entry in entries] == ["case-0", "case-1", "case-2"]
    with sessions() as session:
        assert verify_chain(session) == []


def test_a_batch_with_one_bad_entry_adds_nothing(sessions: sessionmaker[Session]) -> None:
    good = AuditDraft("c", "open_case", "edge:e1", "system", T0, None, "new")
    naive = AuditDraft("c", "open_case", "edge:e1", "system", T0.replace(tzinfo=None), None, "new")
    with sessions() as session, session.begin(), pytest.raises(AuditError):
        append_audit_entries(session, [good, naive])
    with sessions() as session:
        assert session.scalars(select(AuditLog)).all() == []


def test_concurrent_writers_never_fork_the_chain(sessions: sessionmaker[Session]) -> None:
    writers, per_writer = 4, 8
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(worker: int) -> None:
        try:
            start.wait(timeout=10)
            for index in range(per_writer):
                with sessions() as session, session.begin():
                    _append(session, worker * 100 + index + 1)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert _problems(sessions) == []
    with sessions() as session:
        ids = session.scalars(select(AuditLog.id).order_by(AuditLog.id)).all()
    assert ids == list(range(1, writers * per_writer + 1))


def test_cli_verify_exit_codes(sessions: sessionmaker[Session], audit_engine: Engine, audit_url: str) -> None:
    runner = CliRunner()
    _chain(sessions)
    intact = runner.invoke(_standalone, ["audit", "verify", "--database-url", audit_url])
    assert intact.exit_code == 0, intact.output
    assert f"audit log intact: {CHAIN_LENGTH} entries" in intact.stdout
    with audit_engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET reason = 'x' WHERE id = 2"))
        connection.execute(text("DELETE FROM audit_log WHERE id = 4"))
    tampered = runner.invoke(_standalone, ["audit", "verify", "--database-url", audit_url])
    assert tampered.exit_code == 1
    lines = tampered.stdout.splitlines()
    assert [line.split(":")[0:2] for line in lines] == [
        ["entry 2", " altered"],
        ["entry 5", " id_gap"],
        ["entry 5", " broken_link"],
    ]
    assert "audit log damaged: 3 problems in 4 entries" in tampered.stderr


def test_migration_downgrade_drops_only_the_audit_log(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        assert "audit_log" in inspect(engine).get_table_names()
        command.downgrade(alembic_config(url), "0001")
        names = set(inspect(engine).get_table_names())
        assert "audit_log" not in names and {"devices", "events", "evidence", "dead_letters"} <= names
    finally:
        engine.dispose()

"""Append-only, hash-chained audit log of every action taken on the server.

Each entry's ``entry_hash`` is the sha256 of a canonical JSON of its fields (id included) and of
``prev_hash``, the ``entry_hash`` of the entry before it (:data:`GENESIS_HASH` for the first). So
editing an entry changes its hash, and deleting or inserting one breaks the link of the entry after;
:func:`verify_chain` finds both. A hash chain cannot show that the newest entries were cut off the
end; publishing the head hash somewhere else from time to time would close that gap.

Concurrent writers: :func:`append_audit` first takes the chain's write lock, then reads the head and
inserts the next entry with ``id = head.id + 1``, all in the caller's transaction, so two writers can
never chain onto the same head. On PostgreSQL the lock is a transaction-scoped advisory lock (it works
on an empty table, where ``SELECT ... FOR UPDATE`` would have no row to lock). SQLite has one writer
per database: a no-op ``UPDATE`` takes the write lock before the head is read, so a second writer
waits (busy timeout) and then sees the first one's entry. On either backend the primary key is the
last line of defence: a writer that somehow chained onto a stale head would collide on the id and
roll back rather than fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from curbwatch.server.db import as_utc
from curbwatch.server.tables import AuditLog

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
SYSTEM_ROLE = "system"  # the role of entries written by the server or a device, not a person
# Any fixed 64-bit number works; it only has to be the same for every writer of this database.
ADVISORY_LOCK_KEY = 0x63757262_61756474  # "curbaudt"
_VERIFY_BATCH = 1000

AuditEntry = AuditLog


class AuditError(Exception):
    """An audit entry cannot be written."""


class ProblemKind(StrEnum):
    """What is wrong with an entry of the chain."""

    ALTERED = "altered"
    BROKEN_LINK = "broken_link"
    ID_GAP = "id_gap"


@dataclass(frozen=True)
class AuditProblem:
    """One finding of :func:`verify_chain`.

    Attributes:
        entry_id: The entry at which the problem shows.
        kind: Altered content, a broken link to the entry before, or missing ids before it.
        detail: A human-readable explanation.
    """

    entry_id: int
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"entry {self.entry_id}: {self.kind.value}: {self.detail}"


def entry_hash(
    *,
    entry_id: int,
    case_id: str | None,
    action: str,
    actor: str,
    role: str,
    at: datetime,
    from_state: str | None,
    to_state: str | None,
    reason: str | None,
    details: dict[str, Any] | None,
    prev_hash: str,
) -> str:
    """The hex sha256 of an entry's canonical JSON (sorted keys, no spaces, UTC microsecond time)."""
    document = {
        "id": entry_id,
        "case_id": case_id,
        "action": action,
        "actor": actor,
        "role": role,
        "at": as_utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "from_state": from_state,
        "to_state": to_state,
        "reason": reason,
        "details": details,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def row_hash(row: AuditLog) -> str:
    """The hash a stored entry should carry, recomputed from its fields."""
    return entry_hash(
        entry_id=row.id,
        case_id=row.case_id,
        action=row.action,
        actor=row.actor,
        role=row.role,
        at=row.at,
        from_state=row.from_state,
        to_state=row.to_state,
        reason=row.reason,
        details=row.details,
        prev_hash=row.prev_hash,
    )


def _lock_chain(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    else:
        # Takes SQLite's write lock now, before the head is read (see the module docstring).
        session.execute(text("UPDATE audit_log SET id = id WHERE 1 = 0"))


@dataclass(frozen=True)
class AuditDraft:
    """An entry waiting for its place in the chain (id and hashes are given when it is appended)."""

    case_id: str | None
    action: str
    actor: str
    role: str
    at: datetime
    from_state: str | None
    to_state: str | None
    reason: str | None = None
    details: dict[str, Any] | None = None


def _checked_fields(draft: AuditDraft) -> dict[str, Any]:
    if draft.at.tzinfo is None:
        raise AuditError("audit time must be timezone-aware")
    details = draft.details
    if details is not None:
        try:
            # Hash what the database will give back: a JSON round trip of the details.
            details = json.loads(json.dumps(details))
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit details are not JSON: {exc}") from exc
    return {
        "case_id": draft.case_id,
        "action": draft.action,
        "actor": draft.actor,
        "role": draft.role,
        "at": as_utc(draft.at),
        "from_state": draft.from_state,
        "to_state": draft.to_state,
        "reason": draft.reason,
        "details": details,
    }


def append_audit_entries(session: Session, drafts: list[AuditDraft]) -> list[AuditEntry]:
    """Append entries to the chain, in order, inside the caller's transaction (which must commit them).

    One chain lock and one read of the head for the lot: an ingest batch that opens hundreds of
    cases pays for the chain once.

    Raises:
        AuditError: An ``at`` is naive, or some ``details`` are not JSON-serialisable; nothing is added.
    """
    checked = [_checked_fields(draft) for draft in drafts]
    if not checked:
        return []
    _lock_chain(session)
    head = session.execute(
        select(AuditLog.id, AuditLog.entry_hash).order_by(AuditLog.id.desc()).limit(1)
    ).first()
    entry_id, prev_hash = (head.id + 1, head.entry_hash) if head else (1, GENESIS_HASH)
    entries: list[AuditEntry] = []
    for fields in checked:
        fields["prev_hash"] = prev_hash
        entry = AuditLog(id=entry_id, entry_hash=entry_hash(entry_id=entry_id, **fields), **fields)
        entries.append(entry)
        logger.debug(
            "audit %s: %s by %s on %s", entry_id, fields["action"], fields["actor"], fields["case_id"]
        )
        entry_id, prev_hash = entry_id + 1, entry.entry_hash
    session.add_all(entries)
    session.flush()
    return entries


def append_audit(
    session: Session,
    *,
    case_id: str | None,
    action: str,
    actor: str,
    role: str,
    at: datetime,
    from_state: str | None,
    to_state: str | None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry to the chain inside the caller's transaction (which must commit it).

    Raises:
        AuditError: ``at`` is naive, or ``details`` is not JSON-serialisable.
    """
    draft = AuditDraft(case_id, action, actor, role, at, from_state, to_state, reason, details)
    return append_audit_entries(session, [draft])[0]


def _check_entry(row: AuditLog, previous: AuditLog | None) -> list[AuditProblem]:
    problems: list[AuditProblem] = []
    expected_id = previous.id + 1 if previous else 1
    if row.id != expected_id:
        problems.append(
            AuditProblem(row.id, ProblemKind.ID_GAP, f"ids {expected_id}..{row.id - 1} are missing")
        )
    expected_prev = previous.entry_hash if previous else GENESIS_HASH
    if row.prev_hash != expected_prev:
        before = f"entry {previous.id}" if previous else "the genesis"
        problems.append(
            AuditProblem(
                row.id,
                ProblemKind.BROKEN_LINK,
                f"prev_hash {row.prev_hash[:12]} does not match {before} ({expected_prev[:12]}): "
                "an entry before it was deleted, inserted or rewritten",
            )
        )
    recomputed = row_hash(row)
    if row.entry_hash != recomputed:
        problems.append(
            AuditProblem(
                row.id,
                ProblemKind.ALTERED,
                f"stored hash {row.entry_hash[:12]} != recomputed {recomputed[:12]}: the entry was edited",
            )
        )
    return problems


def verify_chain(session: Session) -> list[AuditProblem]:
    """Walk the whole log in id order and report every altered entry, broken link and id gap."""
    problems: list[AuditProblem] = []
    previous: AuditLog | None = None
    rows = session.scalars(select(AuditLog).order_by(AuditLog.id).execution_options(yield_per=_VERIFY_BATCH))
    for row in rows:
        problems.extend(_check_entry(row, previous))
        previous = row
    return problems

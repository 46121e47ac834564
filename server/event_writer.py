"""Stores a batch of checked events with two look-ups and two bulk inserts.

Per message the server needs to know: is this ``event_id`` stored already (a redelivery, or a
conflict if it came with another device or seq), or is its (device, seq) taken by another event (a
replay)? Asking the database once per batch for all ids and all pairs, then deciding in batch
order against those answers plus the rows accepted so far, gives the same verdicts as one message
at a time, with four statements instead of three per message. The fourth files the evidence
references of the stored events (``evidence_refs``), so that reading them needs no event document;
a fifth keeps each camera's newest event (``camera_sightings``) for the cameras page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import case, insert, select, tuple_
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventV1
from curbwatch.server.tables import CameraSighting, Event, EvidenceRef

EVENTS = Event.__table__
EVIDENCE_REFS = EvidenceRef.__table__
SIGHTINGS = CameraSighting.__table__


class Verdict(StrEnum):
    """What became of one event row."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same event_id, device and seq already stored
    REPLAYED_SEQ = "replayed_seq"  # the device's seq belongs to another event
    EVENT_ID_CONFLICT = "event_id_conflict"  # the event_id is stored under another device or seq


@dataclass(frozen=True)
class Decision:
    """A verdict with its explanation (for the dead-letter row)."""

    verdict: Verdict
    detail: str = ""


def event_row(event: EventV1, *, seq: int, received_at: datetime, document: dict[str, Any]) -> dict[str, Any]:
    """The ``events`` row of a checked event; ``document`` is the event exactly as received."""
    return {
        "event_id": event.event_id,
        "device_id": event.device_id,
        "seq": seq,
        "episode_id": event.episode_id,
        "type": event.type.value,
        "rule": event.rule.value,
        "violation": event.violation.value,
        "event_code": event.event_code,
        "camera": event.camera_id,
        "zone": event.zone,
        "ts": event.ts,
        "received_at": received_at,
        "document": document,
    }


def write_events(session: Session, rows: list[dict[str, Any]]) -> list[Decision]:
    """Insert the rows that are new, with their evidence references, in the caller's transaction.

    Args:
        session: The batch's session; the inserts become durable at its commit.
        rows: ``events`` table values, each ``document`` a valid ``curbwatch.event.v1``; a row may
            repeat an earlier one in the same list.

    Returns:
        One :class:`Decision` per row. A unique-key race with another worker raises at the
        insert (the caller then retries message by message).
    """
    if not rows:
        return []
    by_id: dict[str, tuple[str, int]] = {
        event_id: (device_id, seq)
        for event_id, device_id, seq in session.execute(
            select(Event.event_id, Event.device_id, Event.seq).where(
                Event.event_id.in_({row["event_id"] for row in rows})
            )
        )
    }
    pairs = {(row["device_id"], row["seq"]) for row in rows}
    by_pair: dict[tuple[str, int], str] = {
        (device_id, seq): event_id
        for device_id, seq, event_id in session.execute(
            select(Event.device_id, Event.seq, Event.event_id).where(
                tuple_(Event.device_id, Event.seq).in_(pairs)
            )
        )
    }
    decisions: list[Decision] = []
    new_rows: list[dict[str, Any]] = []
    for row in rows:
        event_id, pair = row["event_id"], (row["device_id"], row["seq"])
        known = by_id.get(event_id)
        if known is not None:
            if known == pair:
                decisions.append(Decision(Verdict.DUPLICATE))
            else:
                decisions.append(Decision(Verdict.EVENT_ID_CONFLICT, f"stored with seq {known[1]}"))
        elif pair in by_pair:
            decisions.append(Decision(Verdict.REPLAYED_SEQ, f"seq {pair[1]} is event {by_pair[pair]}"))
        else:
            by_id[event_id], by_pair[pair] = pair, event_id
            new_rows.append(row)
            decisions.append(Decision(Verdict.STORED))
    if new_rows:
        session.execute(insert(EVENTS), new_rows)
        refs = evidence_ref_rows(new_rows)
        if refs:
            session.execute(insert(EVIDENCE_REFS), refs)
        record_sightings(session, new_rows)
    return decisions


def record_sightings(session: Session, rows: list[dict[str, Any]]) -> None:
    """Move each (camera, device)'s newest event time forward to the newest of ``rows``.

    An older event (an outbox backlog arriving late) never moves it back. Rows are written in key
    order, so two workers upserting the same cameras lock them in the same order.
    """
    newest: dict[tuple[str, str], datetime] = {}
    for row in rows:
        key = (row["camera"], row["device_id"])
        newest[key] = max(newest.get(key, row["ts"]), row["ts"])
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    statement = upsert(SIGHTINGS)
    stored, arriving = SIGHTINGS.c.last_event_at, statement.excluded.last_event_at
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[SIGHTINGS.c.camera_id, SIGHTINGS.c.device_id],
            set_={"last_event_at": case((arriving > stored, arriving), else_=stored)},
        ),
        [
            {"camera_id": camera, "device_id": device, "last_event_at": at}
            for (camera, device), at in sorted(newest.items())
        ],
    )


def evidence_ref_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``evidence_refs`` rows of stored events: one per event and image.

    Args:
        rows: ``events`` table values whose ``document`` is a valid ``curbwatch.event.v1``.

    Returns:
        One row per (event, sha256). Should an event list an image twice, it is restricted if
        either listing says so: a wrong flag then hides an image rather than shows one.
    """
    refs: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        for item in row["document"].get("evidence", ()):
            key = (row["event_id"], item["sha256"])
            known = refs.get(key)
            if known is not None:
                known["restricted"] = known["restricted"] or item["restricted"]
                continue
            refs[key] = {
                "event_id": row["event_id"],
                "sha256": item["sha256"],
                "role": item["role"],
                "restricted": item["restricted"],
                "track_id": item.get("track_id"),
                "camera_id": row["camera"],
                "device_id": row["device_id"],
                "ts": row["ts"],
            }
    return list(refs.values())

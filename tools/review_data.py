"""Bulk data for ``tools.bench_review``: cases in a realistic mix of states, their events and audit trail.

Rows go in with multi-row inserts, not through the services, so 100,000 cases take seconds; they are
what the services would have written: the audit entries are hash chained exactly as ``append_audit``
chains them (``curbwatch audit verify`` passes), and every event document is a valid
``curbwatch.event.v1``.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import example_event_document
from curbwatch.schema.zones import default_event_codes
from curbwatch.server.audit import GENESIS_HASH, SYSTEM_ROLE, entry_hash
from curbwatch.server.cases.folding import OPEN_CASE_ACTION
from curbwatch.server.cases.workflow import CaseStatus, ClosureType, Outcome, RejectReason
from curbwatch.server.devices import add_device
from curbwatch.server.event_writer import evidence_ref_rows, record_sightings
from curbwatch.server.tables import AuditLog, Case, CaseEvent, Event, EvidenceRef

DEVICES = 5
CHUNK = 5000
S = CaseStatus
# Share of cases in each state: most are done, a day's worth waits for verification.
STATUS_MIX = (
    (S.AWAITING_VERIFICATION, 0.08),
    (S.VOID, 0.17),
    (S.FILED, 0.05),
    (S.DISPATCHED, 0.05),
    (S.IN_PROGRESS, 0.05),
    (S.HANDLED, 0.03),
    (S.CHECKING, 0.02),
    (S.SUSPENDED, 0.02),
    (S.CLOSED, 0.53),
)
KINDS = (  # (rule, violation, share)
    ("illegal_parking", "illegal_parking", 0.55),
    ("illegal_parking", "illegal_parking_two_wheeler", 0.15),
    ("unlicensed_vending", "unlicensed_vending", 0.2),
    ("bin_overflow", "bin_overflow", 0.1),
)
OUTCOME_MIX = ((Outcome.SERVICE, 0.7), (Outcome.MANAGEMENT, 0.2), (Outcome.ENFORCEMENT, 0.1))


@dataclass(frozen=True)
class Filled:
    """What the fill made, and the targets of the timed requests."""

    cases: int
    events: int
    audit: int
    seconds: float
    detail_case: str  # the oldest case awaiting verification
    camera: str  # its camera and rule, for the filtered queue page
    rule: str
    detail_case: str
    camera: str
    rule: str


def _pick(rng: random.Random, mix: tuple[tuple[Any, float], ...]) -> Any:
    return rng.choices([item for item, _ in mix], weights=[weight for _, weight in mix])[0]


def _evidence(rng: random.Random) -> list[dict[str, Any]]:
    refs = []
    for role, restricted in (("clean", True), ("annotated", False), ("crop", False)):
        sha256 = f"{rng.getrandbits(256):064x}"
        refs.append(
            {
                "role": role,
                "sha256": sha256,
                "size_bytes": 180_000,
                "width": 1280,
                "height": 720,
                "path": f"{sha256[:2]}/{sha256}.jpg",
                "restricted": restricted,
                **({"track_id": 3} if role == "crop" else {}),
            }
        )
    return refs


def _case_row(rng: random.Random, now: datetime, devices: list[str], index: int) -> dict[str, Any]:
    status = _pick(rng, STATUS_MIX)
    rule, violation, _ = _pick(rng, tuple((kind, kind[2]) for kind in KINDS))
    camera = index % 50
    # The queue holds the last two days; everything else spreads over 90 days.
    age = timedelta(days=rng.uniform(0, 2 if status is S.AWAITING_VERIFICATION else 90))
    created = now - age
    code = default_event_codes()[violation]
    row: dict[str, Any] = {
        "id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "status": status.value,
        "suspended_from": S.IN_PROGRESS.value if status is S.SUSPENDED else None,
        "outcome": None,
        "closure_type": None,
        "department": None,
        "event_code": code.code,
        "event_name": code.name,
        "rule": rule,
        "violation": violation,
        "device_id": devices[camera % DEVICES],
        "camera_id": f"cam-{camera:02d}",
        "zone": f"zone-{rng.randrange(3)}",
        "location_lat": 31.23 + camera / 1000,
        "location_lon": 121.47 + camera / 1000,
        "first_episode_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "opened_at": created - timedelta(minutes=3),
        "last_event_at": created,
        "deadline": None,
        "created_at": created,
        "updated_at": created,
        "grid_cell": f"{camera // 10}-{camera % 10}",
        "filed_at": None,
        "closed_at": None,
        "rework_count": 0,
    }
    row["episode_ids"] = [row["first_episode_id"]]
    if status not in (S.AWAITING_VERIFICATION, S.VOID):
        filed = created + timedelta(minutes=rng.uniform(2, 30))
        row.update(filed_at=filed, deadline=filed + timedelta(hours=4), department="城管执法 enforcement")
        row["rework_count"] = 1 if rng.random() < 0.1 else 0
    if status is S.CLOSED:
        late = rng.random() < 0.2
        closed = row["deadline"] + timedelta(hours=1) if late else row["filed_at"] + timedelta(hours=2)
        row.update(
            closed_at=closed,
            updated_at=closed,
            outcome=_pick(rng, OUTCOME_MIX).value,
            closure_type=(ClosureType.OVERDUE if late else ClosureType.NORMAL).value,
        )
    return row


def _event_row(rng: random.Random, case: dict[str, Any], seq: int) -> dict[str, Any]:
    document = example_event_document(
        device_id=case["device_id"],
        camera_id=case["camera_id"],
        zone=case["zone"],
        rule=case["rule"],
        violation=case["violation"],
        event_code=case["event_code"],
        event_name=case["event_name"],
        episode_id=case["first_episode_id"],
        episode_start=case["opened_at"].isoformat(),
        ts=case["created_at"].isoformat(),
        dwell_s=180.0,
        evidence=_evidence(rng),
        location=[case["location_lat"], case["location_lon"]],
        objects=[
            {"track_id": 3, "label": "car", "score": 0.87, "xyxy": [410, 300, 640, 470], "stationary_s": 180}
        ],
    )
    return {
        "event_id": document["event_id"],
        "device_id": case["device_id"],
        "seq": seq,
        "episode_id": case["first_episode_id"],
        "type": "start",
        "rule": case["rule"],
        "violation": case["violation"],
        "event_code": case["event_code"],
        "camera": case["camera_id"],
        "zone": case["zone"],
        "ts": case["created_at"],
        "received_at": case["created_at"],
        "document": document,
    }


def _audit_entries(rng: random.Random, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open and verification entries of every case, in time order, without ids yet."""
    entries = []
    for case in cases:
        entries.append(
            {
                "case_id": case["id"],
                "action": OPEN_CASE_ACTION,
                "actor": f"edge:{case['device_id']}",
                "role": SYSTEM_ROLE,
                "at": case["created_at"],
                "from_state": None,
                "to_state": S.AWAITING_VERIFICATION.value,
                "reason": None,
                "details": {"episode_id": case["first_episode_id"]},
            }
        )
        verified = case["status"] == S.VOID.value or case["filed_at"] is not None
        if verified:
            rejected = case["status"] == S.VOID.value
            entries.append(
                {
                    "case_id": case["id"],
                    "action": "reject" if rejected else "confirm",
                    "actor": f"op-{rng.randrange(8)}",
                    "role": "operator",
                    "at": case["updated_at"] if rejected else case["filed_at"],
                    "from_state": S.AWAITING_VERIFICATION.value,
                    "to_state": S.VOID.value if rejected else S.FILED.value,
                    "reason": rng.choice(list(RejectReason)).value if rejected else None,
                    "details": None,
                }
            )
    entries.sort(key=lambda entry: entry["at"])
    return entries


def _chain(entries: list[dict[str, Any]], head_id: int, head_hash: str) -> None:
    """Give each entry its id, prev_hash and entry_hash, continuing the chain after the head."""
    for offset, entry in enumerate(entries, start=1):
        entry["prev_hash"] = head_hash
        head_hash = entry["entry_hash"] = entry_hash(entry_id=head_id + offset, **entry)
        entry["id"] = head_id + offset


def _bulk(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), CHUNK):
        session.execute(insert(table), rows[start : start + CHUNK])


def fill(factory: sessionmaker[Session], *, cases: int, now: datetime, seed: int) -> Filled:
    """Bulk-insert ``cases`` cases with their audit entries, and events for those awaiting verification."""
    started = time.perf_counter()
    rng = random.Random(seed)
    with factory() as session, session.begin():
        devices = [f"bench-{n}" for n in range(DEVICES)]
        for device in devices:
            add_device(session, device, now=now)
    case_rows = [_case_row(rng, now, devices, index) for index in range(cases)]
    waiting = [row for row in case_rows if row["status"] == S.AWAITING_VERIFICATION.value]
    events = [_event_row(rng, case, seq) for seq, case in enumerate(waiting, start=1)]
    links = [
        {
            "event_id": event["event_id"],
            "case_id": case["id"],
            "episode_id": case["first_episode_id"],
            "type": "start",
            "ts": case["created_at"],
        }
        for event, case in zip(events, waiting, strict=True)
    ]
    entries = _audit_entries(rng, case_rows)
    with factory() as session, session.begin():
        head = session.execute(
            select(AuditLog.id, AuditLog.entry_hash).order_by(AuditLog.id.desc()).limit(1)
        ).first()
        _chain(entries, head.id if head else 0, head.entry_hash if head else GENESIS_HASH)
        _bulk(session, Case.__table__, case_rows)
        _bulk(session, Event.__table__, events)
        _bulk(session, EvidenceRef.__table__, evidence_ref_rows(events))
        record_sightings(session, events)
        _bulk(session, CaseEvent.__table__, links)
        _bulk(session, AuditLog.__table__, entries)
    with factory() as session, session.begin():
        # Fresh statistics, as autovacuum keeps them on a live PostgreSQL database. SQLite has none
        # unless someone runs ANALYZE, and the server does not.
        if session.get_bind().dialect.name == "postgresql":
            session.connection().exec_driver_sql("ANALYZE")
        oldest = min(waiting, key=lambda row: (row["created_at"], row["id"]))
        assert session.scalar(select(func.count()).select_from(Case)) == cases
    return Filled(
        cases,
        len(events),
        len(entries),
        time.perf_counter() - started,
        oldest["id"],
        oldest["camera_id"],
        oldest["rule"],
    )

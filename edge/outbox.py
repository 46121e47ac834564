"""Durable outbox between the rules and the network: SQLite in WAL mode.

Every event is stored, signed and sequenced, before anything is sent, and leaves the outbox only
when the server acknowledges it after its database commit (see ``docs/protocol.md``). The rows of
one event are queued as: its evidence images first, then the event itself, so the server usually
holds the images when the event arrives and can check their hashes at once (it tolerates the
other order too, because redelivery after a drop can reorder them).

Disk cap priority, from first to last dropped: heartbeats, ``update`` events (with their evidence)
of episodes that already have a newer update or an end queued. Start and end events are never
dropped; when only they are left over the cap, new updates and heartbeats are refused, loudly.
Labelling samples (``edge/sampling.py``) go between the two: dropped right after heartbeats, and a
new sample never pushes anything out (over the cap it is refused).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from curbwatch.schema.events import EventType, EventV1
from curbwatch.schema.protocol import MAX_EVIDENCE_BYTES, EnvelopeV1, HeartbeatV1, SampleV1

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS item (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    priority INTEGER NOT NULL,
    event_id TEXT,
    episode_id TEXT,
    event_type TEXT,
    seq INTEGER,
    payload BLOB,
    path TEXT,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS item_ref ON item (kind, ref);
CREATE INDEX IF NOT EXISTS item_episode ON item (episode_id, id);
"""
_COLUMNS = "id, kind, ref, seq, payload, path, size, event_id"
_SENDABLE = "('event', 'evidence', 'sample')"


class OutboxError(Exception):
    """The outbox cannot do what it was asked (bad input, unusable database)."""


class ItemKind(StrEnum):
    """What a queued row carries; ``event``, ``evidence`` and ``sample`` match ``AckItemV1.kind``."""

    EVENT = "event"
    EVIDENCE = "evidence"
    HEARTBEAT = "heartbeat"
    SAMPLE = "sample"


class Priority(IntEnum):
    """Drop class under the disk cap; higher is dropped first."""

    KEEP = 0  # start and end events and their evidence: never dropped
    SUPERSEDABLE = 1  # update events and their evidence: dropped once a newer one is queued
    HEARTBEAT = 2  # only the newest matters


class PutResult(StrEnum):
    STORED = "stored"
    STORED_OVER_CAP = "stored_over_cap"  # a start or end event went in although the cap is reached
    REFUSED = "refused"  # an update or heartbeat did not fit


class OutboxConfig(BaseModel):
    """Where the outbox lives and how much it may hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(
        default=2 * 1024**3, gt=0, title="Disk cap",
        description="Queued bytes (envelopes plus the evidence images they will send) above which "
        "heartbeats and superseded updates are dropped, then new updates refused. Size it for the "
        "longest network outage to ride out: about 1 MB per event with evidence.",
    )  # fmt: skip
    busy_timeout_s: float = Field(
        default=10.0, gt=0, title="Busy timeout",
        description="How long a writer waits for the database lock before failing.",
    )  # fmt: skip


@dataclass(frozen=True)
class OutboxItem:
    """One queued message: an event envelope, an evidence image (read at send time) or a heartbeat."""

    id: int
    kind: ItemKind
    ref: str  # message_id of an event, sha256 of an image, a random id for a heartbeat
    seq: int | None
    payload: bytes | None
    path: Path | None
    size: int
    event_id: str | None


@dataclass
class OutboxStats:
    """What the cap policy has done since the outbox was opened."""

    dropped_heartbeats: int = 0
    dropped_updates: int = 0
    dropped_samples: int = 0
    refused: int = 0
    stored_over_cap: int = 0


class Outbox:
    """A durable, ordered, capped queue of signed messages for one device.

    Args:
        path: The SQLite file (created with its directory).
        config: Cap and lock settings.
        device_id: The device whose envelopes this outbox signs.
        key: The device's HMAC key.

    Example:
        >>> outbox = Outbox(Path("/var/lib/curbwatch/outbox.db"), OutboxConfig(), device_id="edge-1", key=key)
        >>> outbox.put_event(event, [(ref.sha256, root / ref.path) for ref in event.evidence])
        >>> for item in outbox.lease(32): ...
        >>> outbox.ack("event", event.event_id)
    """

    def __init__(self, path: Path, config: OutboxConfig, *, device_id: str, key: bytes) -> None:
        self.path = path
        self._config = config
        self._device_id = device_id
        self._key = key
        self.stats = OutboxStats()
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by camera threads and the publisher, serialised by the lock.
        self._db = sqlite3.connect(
            path, timeout=config.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put_event(self, event: EventV1, evidence: list[tuple[str, Path]]) -> PutResult:
        """Queue an event and its evidence images in one transaction, with the next ``seq``.

        Returns:
            Whether it was stored; an ``update`` may be refused when the cap is reached.
        """
        if event.device_id != self._device_id:
            raise OutboxError(f"event of device {event.device_id!r} in the outbox of {self._device_id!r}")
        priority = Priority.SUPERSEDABLE if event.type is EventType.UPDATE else Priority.KEEP
        images = [(sha, path, _image_size(path)) for sha, path in evidence]
        with self._transaction(durable=True):
            seq = self._next_seq()
            for sha, path, size in images:
                if size is None:
                    continue
                self._insert(ItemKind.EVIDENCE, sha, priority, event, path=str(path), size=size)
            payload = self._envelope(event, seq)
            self._insert(ItemKind.EVENT, event.event_id, priority, event, seq=seq, payload=payload)
            result = self._enforce_cap(refusable=priority is Priority.SUPERSEDABLE)
            if result is PutResult.REFUSED:
                logger.error(
                    "outbox full (%d bytes, cap %d): REFUSED update event %s of episode %s",
                    self._bytes_used(), self._config.max_bytes, event.event_id, event.episode_id,
                )  # fmt: skip
                raise _Rollback(result)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        if result is PutResult.STORED_OVER_CAP:
            self.stats.stored_over_cap += 1
            logger.error(
                "outbox over its cap (%d > %d bytes): kept %s event %s anyway; the link is down too long",
                self.bytes_used(), self._config.max_bytes, event.type.value, event.event_id,
            )  # fmt: skip
        return result

    def put_heartbeat(self, heartbeat: HeartbeatV1) -> PutResult:
        """Queue a heartbeat, replacing any older one (only the newest is worth sending)."""
        payload = heartbeat.model_dump_json(by_alias=True).encode("utf-8")
        with self._transaction(durable=False):
            self._db.execute("DELETE FROM item WHERE kind = 'heartbeat'")
            self._db.execute(
                "INSERT INTO item (kind, ref, priority, payload, size) VALUES (?, ?, ?, ?, ?)",
                (ItemKind.HEARTBEAT.value, uuid.uuid4().hex, Priority.HEARTBEAT, payload, len(payload)),
            )
            # A heartbeat never pushes out anything else: over the cap it is simply not kept.
            result = PutResult.REFUSED if self._bytes_used() > self._config.max_bytes else PutResult.STORED
            if result is PutResult.REFUSED:
                self.stats.refused += 1
                logger.warning("outbox full: heartbeat not queued")
                raise _Rollback(result)
        return result

    def put_evidence(self, sha256: str, path: Path) -> PutResult:
        """Queue an image that belongs to no event (a check snapshot); never dropped under the cap.

        Raises:
            OutboxError: The file is unreadable or over the evidence size limit.
        """
        size = _image_size(path)
        if size is None:
            raise OutboxError(f"evidence {path} cannot be sent")
        with self._transaction(durable=True):
            self._db.execute(
                "INSERT INTO item (kind, ref, priority, path, size) VALUES (?, ?, ?, ?, ?)",
                (ItemKind.EVIDENCE.value, sha256, Priority.KEEP, str(path), size),
            )
            result = self._enforce_cap(refusable=False)
        if result is PutResult.STORED_OVER_CAP:
            self.stats.stored_over_cap += 1
            logger.error("outbox over its cap: kept snapshot %s anyway; the link is down too long", sha256)
        return result

    def put_sample(self, sample: SampleV1, image: Path) -> PutResult:
        """Queue a labelling sample: its image, then its signed document, under the next ``seq``.

        Samples are worth the least: over the cap a new one is refused rather than pushing
        anything out, and queued ones are the first to go (after heartbeats) when events need room.
        Both rows carry the sample id in ``event_id`` so they are dropped together.

        Raises:
            OutboxError: The sample is of another device, or its image cannot be sent.
        """
        if sample.device_id != self._device_id:
            raise OutboxError(f"sample of device {sample.device_id!r} in the outbox of {self._device_id!r}")
        size = _image_size(image)
        if size is None:
            raise OutboxError(f"sample image {image} cannot be sent")
        document = sample.model_dump(mode="json", by_alias=True)
        result = PutResult.STORED
        with self._transaction(durable=False):  # a sample lost to a power cut is no loss
            seq = self._next_seq()
            payload = self._signed(sample.sample_id, document, seq)
            rows = [
                (ItemKind.EVIDENCE.value, sample.image.sha256, None, None, str(image), size),
                (ItemKind.SAMPLE.value, sample.sample_id, seq, payload, None, len(payload)),
            ]
            self._db.executemany(
                "INSERT INTO item (kind, ref, priority, event_id, event_type, seq, payload, path, size)"
                " VALUES (?, ?, ?, ?, 'sample', ?, ?, ?, ?)",
                [(kind, ref, Priority.SUPERSEDABLE, sample.sample_id, *rest) for kind, ref, *rest in rows],
            )
            if self._bytes_used() > self._config.max_bytes:
                result = PutResult.REFUSED
                self.stats.refused += 1
                logger.warning("outbox full: sample %s not queued", sample.sample_id)
                raise _Rollback(result)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        return result

    def lease(self, limit: int, after: int = 0) -> list[OutboxItem]:
        """Up to ``limit`` events and evidence images with row id above ``after``, oldest first.

        Nothing is locked or hidden: the publisher remembers what it has in flight and asks for
        rows after the last one it sent; after a reconnect it starts again from 0.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM item WHERE id > ? AND kind IN {_SENDABLE} ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [_item(row) for row in rows]

    def latest_heartbeat(self) -> OutboxItem | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM item WHERE kind = 'heartbeat' ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return _item(row) if row else None

    def ack(self, kind: str, ref: str) -> int:
        """Delete what the server acknowledged; returns the rows deleted (0 for an unknown id)."""
        with self._transaction(durable=False):
            cursor = self._db.execute("DELETE FROM item WHERE kind = ? AND ref = ?", (kind, ref))
        return cursor.rowcount

    def depth(self) -> int:
        """Events and evidence images waiting for the server's acknowledgement."""
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM item WHERE kind IN {_SENDABLE}").fetchone()[0])

    def bytes_used(self) -> int:
        """Queued bytes: envelopes, heartbeats, and the sizes of the evidence images to send."""
        with self._lock:
            return self._bytes_used()

    def next_seq(self) -> int:
        with self._lock:
            return self._next_seq()

    # -- internals (called with the lock held) --

    def _transaction(self, *, durable: bool) -> _Transaction:
        return _Transaction(self._db, self._lock, durable)

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 1)")
            return 1
        return int(row[0])

    def _bytes_used(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM item").fetchone()[0])

    def _envelope(self, event: EventV1, seq: int) -> bytes:
        return self._signed(event.event_id, event.model_dump(mode="json", by_alias=True), seq)

    def _signed(self, message_id: str, payload: dict[str, object], seq: int) -> bytes:
        envelope = EnvelopeV1.signed(
            device_id=self._device_id,
            seq=seq,
            message_id=message_id,
            sent_at=datetime.now(UTC),
            payload=payload,
            key=self._key,
        )
        return envelope.to_bytes()

    def _insert(
        self,
        kind: ItemKind,
        ref: str,
        priority: Priority,
        event: EventV1,
        *,
        seq: int | None = None,
        payload: bytes | None = None,
        path: str | None = None,
        size: int | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO item (kind, ref, priority, event_id, episode_id, event_type, seq, payload, path,"
            " size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind.value, ref, int(priority), event.event_id, event.episode_id, event.type.value,
                seq, payload, path, size if size is not None else len(payload or b""),
            ),
        )  # fmt: skip

    def _enforce_cap(self, *, refusable: bool) -> PutResult:
        """Drop by priority until under the cap; say whether the newest put may stay."""
        cap = self._config.max_bytes
        if self._bytes_used() <= cap:
            return PutResult.STORED
        dropped = self._db.execute("DELETE FROM item WHERE kind = 'heartbeat'").rowcount
        self.stats.dropped_heartbeats += dropped
        for (sample_id,) in self._db.execute(_QUEUED_SAMPLES).fetchall():
            if self._bytes_used() <= cap:
                break
            self._db.execute("DELETE FROM item WHERE event_id = ?", (sample_id,))
            self.stats.dropped_samples += 1
            logger.warning("outbox over its cap: dropped labelling sample %s", sample_id)
        for (event_id,) in self._db.execute(_SUPERSEDED).fetchall():
            if self._bytes_used() <= cap:
                break
            self._db.execute("DELETE FROM item WHERE event_id = ?", (event_id,))
            self.stats.dropped_updates += 1
            logger.warning("outbox over its cap: dropped superseded update %s", event_id)
        if self._bytes_used() <= cap:
            return PutResult.STORED
        if refusable:
            self.stats.refused += 1
            return PutResult.REFUSED
        return PutResult.STORED_OVER_CAP


# Update events for which a newer update or end of the same episode is queued, oldest first.
_SUPERSEDED = """
SELECT u.event_id FROM item u
WHERE u.kind = 'event' AND u.event_type = 'update' AND EXISTS (
    SELECT 1 FROM item n WHERE n.kind = 'event' AND n.episode_id = u.episode_id AND n.id > u.id
    AND n.event_type IN ('update', 'end'))
ORDER BY u.id
"""


_QUEUED_SAMPLES = "SELECT ref FROM item WHERE kind = 'sample' ORDER BY id"


class _Rollback(Exception):
    def __init__(self, result: PutResult) -> None:
        self.result = result


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the outbox lock, with the durability the data deserves.

    Events are committed with ``synchronous=FULL``: in WAL mode that fsyncs the log on every
    commit, so an event the rules handed over survives a power cut, not just a process crash
    (``NORMAL`` may lose the last commits on power loss). Acks and heartbeats use ``NORMAL``:
    losing an ack's delete only means a resend, which the server answers ``duplicate``.
    """

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, durable: bool) -> None:
        self._db, self._lock, self._durable = db, lock, durable

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
        # A refusal is an answer, not an error: the caller reads it from the outbox's result.
        return isinstance(exc, _Rollback)


def _image_size(path: Path) -> int | None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        logger.error("evidence %s is unreadable (%s); the event goes without it", path, exc)
        return None
    if size > MAX_EVIDENCE_BYTES:
        logger.error("evidence %s is %d bytes, over the %d limit; not sent", path, size, MAX_EVIDENCE_BYTES)
        return None
    return size


def _item(row: tuple[object, ...]) -> OutboxItem:
    id_, kind, ref, seq, payload, path, size, event_id = row
    return OutboxItem(
        id=int(id_),  # type: ignore[call-overload]
        kind=ItemKind(kind),
        ref=str(ref),
        seq=None if seq is None else int(seq),  # type: ignore[call-overload]
        payload=None if payload is None else bytes(payload),  # type: ignore[arg-type]
        path=None if path is None else Path(str(path)),
        size=int(size),  # type: ignore[call-overload]
        event_id=None if event_id is None else str(event_id),
    )


class OutboxSink:
    """The runner's event sink that queues each event with its evidence images.

    Args:
        outbox: Where events go.
        evidence_root: The evidence store's root; ``EvidenceRefV1.path`` is relative to it.
    """

    def __init__(self, outbox: Outbox, evidence_root: Path) -> None:
        self._outbox = outbox
        self._root = evidence_root

    def emit(self, event: EventV1) -> None:
        evidence = [(ref.sha256, self._root / ref.path) for ref in event.evidence]
        self._outbox.put_event(event, evidence)

    def emit_sample(self, sample: SampleV1, image: Path) -> None:
        """Queue a labelling sample (``edge/sampling.py``); a refusal under the cap is logged there."""
        self._outbox.put_sample(sample, image)

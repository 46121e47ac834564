"""SQLAlchemy 2 ORM tables of the server.

Every table is created by the Alembic migrations in ``server/migrations``; ``Base.metadata`` is
there for the migrations' autogenerate check and for tests, not to create tables at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import true as sa_true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Every constraint gets a predictable name so later migrations can drop or alter it on any backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DEAD_LETTER_PAYLOAD_CAP = 4096  # bytes of a rejected message kept for diagnosis


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Device(Base):
    """An edge box allowed to send events, with its HMAC key and last known health."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hmac_key: Mapped[str] = mapped_column(String(64), doc="Hex of the 32-byte HMAC-SHA256 key.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[str | None] = mapped_column(String(16))
    last_status_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_heartbeat: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, doc="Highest envelope seq stored.")
    reported_config_version: Mapped[str | None] = mapped_column(String(64))
    reported_config_error: Mapped[str | None] = mapped_column(Text)
    reported_config_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """One stored violation event; ``event_id`` makes redelivery idempotent."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("device_id", "seq"),
        Index("ix_events_ts", "ts"),
        Index("ix_events_episode_id", "episode_id"),
    )

    event_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    episode_id: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(32))
    violation: Mapped[str] = mapped_column(String(48))
    event_code: Mapped[str] = mapped_column(String(4))
    camera: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    document: Mapped[dict[str, Any]] = mapped_column(JSON, doc="The curbwatch.event.v1 document as received.")


class CameraSighting(Base):
    """The newest event of one camera from one device, kept with the events at ingest.

    The cameras page reads these rows instead of scanning every stored event
    (:func:`~curbwatch.server.event_writer.write_events` keeps them, in the same transaction).
    """

    __tablename__ = "camera_sightings"

    camera_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Evidence(Base):
    """An evidence image; the bytes live in the evidence store under their sha256."""

    __tablename__ = "evidence"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    size_bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255), doc="Relative to the evidence store root.")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvidenceRef(Base):
    """One event's reference to an evidence image, as the event document lists it.

    The documents are JSON that no index covers; these rows answer "who may see this image" and
    "which image is a case's thumbnail" with an index lookup. Written with the events, in the same
    transaction (:func:`~curbwatch.server.event_writer.write_events`).
    """

    __tablename__ = "evidence_refs"
    __table_args__ = (Index("ix_evidence_refs_sha256", "sha256"),)

    event_id: Mapped[str] = mapped_column(ForeignKey("events.event_id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), doc="A curbwatch.schema.events.EvidenceRole value.")
    restricted: Mapped[bool] = mapped_column(Boolean, doc="Shows faces and plates: supervisors and above.")
    track_id: Mapped[int | None] = mapped_column(Integer, doc="The object a crop shows.")
    camera_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), doc="The event's frame time.")


class DeadLetter(Base):
    """A message the server refused, with why; the count per reason is the rejection counter."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_reason", "reason"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    topic: Mapped[str] = mapped_column(String(255))
    device_id: Mapped[str | None] = mapped_column(String(64), doc="From the topic; not necessarily known.")
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    payload_size: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary, doc=f"First {DEAD_LETTER_PAYLOAD_CAP} bytes.")


class AuditLog(Base):
    """One audited action; ``entry_hash`` chains it to the entry before (see ``server/audit.py``)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_case_id", "case_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str | None] = mapped_column(String(64), doc="None for actions outside a case.")
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64), doc="entry_hash of the entry before, or the genesis.")
    entry_hash: Mapped[str] = mapped_column(String(64), doc="Hex sha256 of the canonical entry.")


class Case(Base):
    """A violation case: every episode of one violation at one place, folded together.

    The workflow columns (``status`` .. ``department``) mirror ``cases.workflow.CaseState``; the rest
    describe where and what, copied from the first event so the review queue needs no join.
    """

    __tablename__ = "cases"
    __table_args__ = (
        # Folding looks for the open case at a camera and zone; every list is oldest first, the
        # review queue and a camera's cases within their status or camera.
        Index("ix_cases_camera_id_zone_status", "camera_id", "zone", "status"),
        Index("ix_cases_status_created_at", "status", "created_at"),
        Index("ix_cases_camera_id_created_at", "camera_id", "created_at"),
        Index("ix_cases_created_at_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, doc="uuid4 hex.")
    status: Mapped[str] = mapped_column(String(32))
    suspended_from: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(32))
    closure_type: Mapped[str | None] = mapped_column(String(32))
    department: Mapped[str | None] = mapped_column(String(128))
    event_code: Mapped[str] = mapped_column(String(4))
    event_name: Mapped[str] = mapped_column(String(128))
    rule: Mapped[str] = mapped_column(String(32))
    violation: Mapped[str] = mapped_column(String(48))
    device_id: Mapped[str] = mapped_column(String(64))
    camera_id: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(64))
    location_lat: Mapped[float | None] = mapped_column(Float)
    location_lon: Mapped[float | None] = mapped_column(Float)
    first_episode_id: Mapped[str] = mapped_column(String(32))
    episode_ids: Mapped[list[str]] = mapped_column(JSON, doc="Every folded episode, first first.")
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), doc="First episode's start.")
    last_event_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    grid_cell: Mapped[str | None] = mapped_column(String(32), doc="City-management grid cell of the camera.")
    filed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), doc="When it was confirmed.")
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rework_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CaseEvent(Base):
    """Links an event to its case; an event belongs to one case, so folding it twice is a no-op."""

    __tablename__ = "case_events"
    __table_args__ = (
        Index("ix_case_events_case_id", "case_id"),
        Index("ix_case_events_episode_id", "episode_id"),
    )

    event_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"))
    episode_id: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class User(Base):
    """A person who signs in to the operator UI or the API."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("username"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(255), doc="argon2id, PHC string format.")
    role: Mapped[str] = mapped_column(String(16), doc="A cases.workflow.Role value.")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginAttempt(Base):
    """One sign-in try; recent failures per user name and per client throttle the next ones."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_at", "username", "at"),
        Index("ix_login_attempts_client_at", "client", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64), doc="Client address.")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    succeeded: Mapped[bool] = mapped_column(Boolean)


class CaseCheck(Base):
    """A fresh image asked of the camera after a case was reported handled (核查)."""

    __tablename__ = "case_checks"
    __table_args__ = (Index("ix_case_checks_case_id", "case_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, doc="The command's correlation id.")
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"))
    device_id: Mapped[str] = mapped_column(String(64))
    camera_id: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requested_by: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), doc="requested, received or failed.")
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


class Forwarding(Base):
    """A filed case on its way to an upstream city platform (Open311 POST), retried until sent."""

    __tablename__ = "forwardings"
    __table_args__ = (
        UniqueConstraint("case_id", "target"),
        Index("ix_forwardings_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"))
    target: Mapped[str] = mapped_column(String(64), doc="Name of the upstream in the server config.")
    status: Mapped[str] = mapped_column(String(16), doc="pending, sent or failed.")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(128), doc="The upstream's service_request_id.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeviceConfig(Base):
    """A desired configuration published to a device (zones per camera), kept as history."""

    __tablename__ = "device_configs"
    __table_args__ = (UniqueConstraint("device_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    version: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]] = mapped_column(JSON, doc="The curbwatch.config.v1 document sent.")
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_by: Mapped[str] = mapped_column(String(64))


class Sample(Base):
    """A frame an edge picked for labelling because the detector was unsure (``edge/sampling.py``).

    The image is an ``evidence`` row under ``image_sha256``; it may arrive after the document
    (redelivery reorders), hence no foreign key. ``training/samples.py`` lists these for labelling.
    """

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_camera_id_ts", "camera_id", "ts"),)

    sample_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    seq: Mapped[int] = mapped_column(BigInteger, doc="The envelope's seq (shared with the device's events).")
    camera_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), doc="Frame time of the sampled frame.")
    image_sha256: Mapped[str] = mapped_column(String(64))
    uncertain_count: Mapped[int] = mapped_column(Integer, doc="Detections inside the uncertain band.")
    document: Mapped[dict[str, Any]] = mapped_column(JSON, doc="The curbwatch.sample.v1 document.")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRollout(Base):
    """One model version sent to chosen devices, a canary first (``server/models_rollout.py``)."""

    __tablename__ = "model_rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), doc="Of the ONNX file sent.")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), doc="canary, rolling, done or halted.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRolloutTarget(Base):
    """One device of a rollout; its ``update_model`` command's correlation id routes the answer here."""

    __tablename__ = "model_rollout_targets"
    __table_args__ = (UniqueConstraint("correlation_id"),)

    rollout_id: Mapped[str] = mapped_column(ForeignKey("model_rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, doc="Order given on the command line, from 0.")
    canary: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16), doc="pending, sent, applied, rolled_back or failed.")
    correlation_id: Mapped[str | None] = mapped_column(String(32), doc="Set when the command is sent.")
    detail: Mapped[str | None] = mapped_column(Text, doc="Model in service, or why it failed.")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

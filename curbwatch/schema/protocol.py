"""MQTT protocol ``curbwatch/v1``, shared by the edge and the server.

Topics live under ``curbwatch/v1/<device_id>/...`` so a broker ACL can confine a device to its
own subtree. Everything rests on MQTT 3.1.1 semantics (QoS 1, retained messages, last will,
persistent sessions) so it runs on the embedded amqtt broker as well as on Mosquitto and EMQX;
MQTT 5 properties (message expiry) are used only where the broker offers them.

Delivery is end to end: the edge keeps every message in its durable outbox until the server
publishes an :class:`AckV1` for it *after* its database commit. A broker PUBACK is not enough.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curbwatch.schema.events import EvidenceRefV1, ModelRefV1, Sha256, UtcDatetime

PROTOCOL_VERSION = "v1"
ROOT = f"curbwatch/{PROTOCOL_VERSION}"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_ENVELOPE_BYTES = 256 * 1024  # an event document with its evidence references is a few KB
MAX_EVIDENCE_BYTES = 4 * 1024 * 1024  # a 1080p JPEG at quality 90 is well under 1 MB
MODEL_CHUNK_BYTES = 1024 * 1024  # model updates travel in pieces no larger than evidence images
MAX_MODEL_BYTES = 512 * 1024 * 1024  # a detector the edge would accept; yolov8n is about 12 MB


class Channel(StrEnum):
    """The last topic level(s): what a message is."""

    EVENT = "event"  # edge -> server, QoS 1, signed EnvelopeV1
    EVIDENCE = "evidence"  # edge -> server, QoS 1, raw JPEG bytes; topic ends with the sha256
    ACK = "ack"  # server -> edge, QoS 1, AckV1 after the database commit
    STATUS = "status"  # edge -> server, retained, StatusV1; last will says offline
    HEARTBEAT = "heartbeat"  # edge -> server, QoS 0, HeartbeatV1, expires
    CONFIG_DESIRED = "config/desired"  # server -> edge, retained, DesiredConfigV1
    CONFIG_REPORTED = "config/reported"  # edge -> server, retained, ReportedConfigV1
    COMMAND = "command"  # server -> edge, QoS 1, CommandV1
    COMMAND_RESULT = "command/result"  # edge -> server, QoS 1, CommandResultV1
    MODEL = "model"  # server -> edge, QoS 1, not retained, raw model bytes; topic ends <sha256>/<chunk>
    SAMPLE = "sample"  # edge -> server, QoS 1, signed EnvelopeV1 around a SampleV1, acked like events


def topic(device_id: str, channel: Channel, *suffix: str) -> str:
    """The concrete topic of a device's channel, e.g. ``curbwatch/v1/edge-1/evidence/<sha256>``."""
    if not re.fullmatch(DEVICE_ID_PATTERN, device_id):
        raise ValueError(f"device id {device_id!r} is not valid in a topic")
    return "/".join((ROOT, device_id, channel.value, *suffix))


def subscription(channel: Channel, device_id: str = "+", share_group: str | None = None) -> str:
    """A subscription filter; with ``share_group``, an MQTT 5 shared subscription for several workers."""
    filter_ = "/".join((ROOT, device_id, channel.value)) + ("/+" if channel is Channel.EVIDENCE else "")
    return f"$share/{share_group}/{filter_}" if share_group else filter_


def parse_topic(value: str) -> tuple[str, Channel, str | None]:
    """Split a received topic into (device id, channel, evidence sha256 or None)."""
    parts = value.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != ROOT:
        raise ValueError(f"topic {value!r} is not under {ROOT}/")
    device_id, rest = parts[2], "/".join(parts[3:])
    if rest.startswith(f"{Channel.EVIDENCE.value}/"):
        return device_id, Channel.EVIDENCE, rest.split("/", 1)[1]
    try:
        return device_id, Channel(rest), None
    except ValueError:
        raise ValueError(f"topic {value!r} names no known channel") from None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The byte string a signature covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(document: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 (hex) of a document without its ``sig`` field."""
    unsigned = {name: value for name, value in document.items() if name != "sig"}
    return hmac.new(key, canonical_bytes(unsigned), hashlib.sha256).hexdigest()


def verify(document: dict[str, Any], key: bytes) -> bool:
    """Whether the document's ``sig`` is the HMAC of the rest under ``key`` (constant-time compare)."""
    claimed = document.get("sig")
    return isinstance(claimed, str) and hmac.compare_digest(claimed, sign(document, key))


class EnvelopeV1(_Wire):
    """A signed, sequenced message from a device; ``payload`` is a ``curbwatch.event.v1`` document.

    ``seq`` increases by one per message a device enqueues and survives restarts; the server
    rejects a seq it has already stored with a different ``message_id`` (a replay).
    """

    schema_: Literal["curbwatch.envelope.v1"] = Field(default="curbwatch.envelope.v1", alias="schema")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    seq: int = Field(ge=1)
    message_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="The event's event_id.")
    sent_at: str = Field(
        description="ISO 8601 with offset, kept as text so the signed bytes survive parsing."
    )
    payload: dict[str, Any]
    sig: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 of the canonical envelope without sig."
    )

    @field_validator("sent_at")
    @classmethod
    def verify_sent_at(cls, value: str) -> str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"sent_at {value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError("sent_at must carry a time zone")
        return value

    @classmethod
    def signed(
        cls,
        *,
        device_id: str,
        seq: int,
        message_id: str,
        sent_at: datetime,
        payload: dict[str, Any],
        key: bytes,
    ) -> EnvelopeV1:
        body = {
            "schema": "curbwatch.envelope.v1",
            "device_id": device_id,
            "seq": seq,
            "message_id": message_id,
            "sent_at": sent_at.isoformat(),
            "payload": payload,
        }
        return cls.model_validate({**body, "sig": sign(body, key)})

    def wire_dict(self) -> dict[str, Any]:
        """The document exactly as signed (``verify(envelope.wire_dict(), key)`` holds)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_bytes(self) -> bytes:
        return json.dumps(self.wire_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class AckStatus(StrEnum):
    """What the server did with a message."""

    STORED = "stored"  # committed now
    DUPLICATE = "duplicate"  # committed before (redelivery): the edge may delete it too
    REJECTED = "rejected"  # will never be accepted (bad signature, schema, hash): dead-lettered


class AckItemV1(_Wire):
    kind: Literal["event", "evidence", "sample"]
    id: str = Field(description="message_id of an event or a sample, or sha256 of an evidence image.")
    status: AckStatus
    reason: str | None = None


class AckV1(_Wire):
    """Server -> edge, published after the commit that stored (or refused) the messages."""

    schema_: Literal["curbwatch.ack.v1"] = Field(default="curbwatch.ack.v1", alias="schema")
    items: list[AckItemV1] = Field(min_length=1)


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class StatusV1(_Wire):
    """Retained device availability; the last will publishes ``offline``."""

    schema_: Literal["curbwatch.status.v1"] = Field(default="curbwatch.status.v1", alias="schema")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    state: DeviceState
    ts: UtcDatetime | None = None


class CameraMetricsV1(_Wire):
    camera_id: str
    state: str
    fps: float = Field(ge=0)
    inferred_share: float = Field(ge=0, le=1)
    inference_ms: float = Field(ge=0)


class HeartbeatV1(_Wire):
    """Periodic health report, QoS 0, with an expiry where the broker supports MQTT 5."""

    schema_: Literal["curbwatch.heartbeat.v1"] = Field(default="curbwatch.heartbeat.v1", alias="schema")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    ts: UtcDatetime
    cameras: list[CameraMetricsV1] = Field(default_factory=list)
    outbox_depth: int = Field(ge=0)
    outbox_bytes: int = Field(ge=0)
    disk_free_bytes: int = Field(ge=0)
    model_version: str | None = None
    config_version: str | None = None


class DesiredConfigV1(_Wire):
    """Server -> edge, retained: the zone files (and thresholds) a device should run."""

    schema_: Literal["curbwatch.config.v1"] = Field(default="curbwatch.config.v1", alias="schema")
    version: str = Field(min_length=1, max_length=64)
    zones: dict[str, dict[str, Any]] = Field(description="Camera id -> zone-file document.")
    detector: dict[str, Any] = Field(default_factory=dict, description="Score thresholds to apply.")
    sig: str = Field(pattern=r"^[0-9a-f]{64}$")


class ReportedConfigV1(_Wire):
    """Edge -> server, retained: what the device applied, or why it refused."""

    schema_: Literal["curbwatch.config-report.v1"] = Field(
        default="curbwatch.config-report.v1", alias="schema"
    )
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    applied_version: str | None
    rejected_version: str | None = None
    error: str | None = None
    ts: UtcDatetime


class CommandV1(_Wire):
    """Server -> edge request; the result carries the same ``correlation_id``."""

    schema_: Literal["curbwatch.command.v1"] = Field(default="curbwatch.command.v1", alias="schema")
    correlation_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    name: Literal["snapshot", "recheck_zone", "ping", "update_model"]
    args: dict[str, Any] = Field(default_factory=dict)
    sig: str = Field(pattern=r"^[0-9a-f]{64}$")


class CommandResultV1(_Wire):
    schema_: Literal["curbwatch.command-result.v1"] = Field(
        default="curbwatch.command-result.v1", alias="schema"
    )
    correlation_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    ok: bool
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class SampleDetectionV1(_Wire):
    """One detection of a sampled frame, as the detector gave it."""

    label: str = Field(min_length=1, max_length=64)
    score: float = Field(ge=0, le=1)
    xyxy: tuple[float, float, float, float] = Field(description="Box in pixels of the sample's frame_wh.")
    uncertain: bool = Field(description="Whether this detection made the frame worth labelling.")


class SampleV1(_Wire):
    """A frame the edge picked for labelling (``edge/sampling.py``): the payload of an envelope on
    ``Channel.SAMPLE``, whose ``message_id`` is the ``sample_id``. The image travels as evidence."""

    schema_: Literal["curbwatch.sample.v1"] = Field(default="curbwatch.sample.v1", alias="schema")
    sample_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="Derived from camera and frame time.")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    camera_id: str = Field(min_length=1, max_length=64)
    ts: UtcDatetime = Field(description="Frame time of the sampled frame.")
    frame_wh: tuple[int, int]
    model: ModelRefV1 | None = Field(default=None, description="Detector that gave the detections.")
    image: EvidenceRefV1 = Field(description="The frame, privacy masks applied and heads blurred.")
    reason: Literal["uncertain"] = Field(description="Why it was sampled.")
    score_band: tuple[float, float] = Field(description="The [low, high) score band that was uncertain.")
    detections: list[SampleDetectionV1] = Field(max_length=1000)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelUpdateArgsV1(_Wire):
    """The ``args`` of an ``update_model`` command: which model, and how its bytes arrive.

    The bytes follow the command on ``model/<sha256>/<index>`` (``index`` 0 .. chunks-1), every
    chunk ``chunk_bytes`` long but the last; the signed sha256 is what makes them trustworthy.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(min_length=1, max_length=64)
    sha256: Sha256
    size_bytes: int = Field(gt=0, le=MAX_MODEL_BYTES)
    chunk_bytes: int = Field(gt=0, le=MODEL_CHUNK_BYTES)

    @property
    def chunks(self) -> int:
        return -(-self.size_bytes // self.chunk_bytes)


def model_chunk_topic(device_id: str, sha256: str, index: int) -> str:
    """Where chunk ``index`` of the model ``sha256`` is sent to a device."""
    return topic(device_id, Channel.MODEL, sha256, str(index))


def parse_model_chunk_topic(value: str) -> tuple[str, int]:
    """The (sha256, chunk index) a model chunk's topic names."""
    parts = value.split("/")
    if len(parts) != 6 or parts[3] != Channel.MODEL.value or not re.fullmatch(r"[0-9a-f]{64}", parts[4]):
        raise ValueError(f"topic {value!r} is not a model chunk topic")
    if not parts[5].isdigit():
        raise ValueError(f"topic {value!r} names no chunk index")
    return parts[4], int(parts[5])


def evidence_digest(data: bytes) -> Sha256:
    """The sha256 an evidence message's topic must name."""
    return hashlib.sha256(data).hexdigest()

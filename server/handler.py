"""What the server does with one received MQTT message, inside the caller's transaction.

The checks run in order of cost and trust: size, topic, JSON, known device, HMAC over the raw
document, schema, identity, sequence replay, idempotent insert. A refusal becomes a
``dead_letters`` row in the same transaction, so "stored", "duplicate" and "dead-lettered" all
become durable at one commit, and only then are acknowledged.

A batch is checked message by message, then its events go to the database together
(:func:`~curbwatch.server.event_writer.write_events`): the per-message work is parsing, one HMAC
and two pydantic validations, with no database round trip. Every newly stored event is then
folded into its case (:func:`~curbwatch.server.cases.folding.fold_events`), in batch order and in
the same transaction, so an event is never stored without its case, nor the other way round.

Labelling samples (``Channel.SAMPLE``) are signed like events but file into ``samples``, kept
once per ``sample_id``, and fold into nothing; their images come as evidence.

Besides events and evidence the worker files what devices report: status, heartbeats, the
configuration they applied, and their answers to commands: model updates go to their rollout
(:mod:`~curbwatch.server.models_rollout`), the rest to checks (:mod:`~curbwatch.server.cases.checks`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from sqlalchemy import case, update
from sqlalchemy.orm import Session

from curbwatch.schema.events import EventV1
from curbwatch.schema.protocol import (
    MAX_ENVELOPE_BYTES,
    MAX_EVIDENCE_BYTES,
    AckItemV1,
    AckStatus,
    Channel,
    CommandResultV1,
    EnvelopeV1,
    HeartbeatV1,
    ReportedConfigV1,
    SampleV1,
    StatusV1,
    parse_topic,
    verify,
)
from curbwatch.server.cases.checks import UnknownCheck, record_command_result
from curbwatch.server.cases.folding import fold_events
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.devices import device_key, record_heartbeat, record_reported_config, record_status
from curbwatch.server.event_writer import Decision, Verdict, event_row, write_events
from curbwatch.server.evidence import EvidenceHashError, EvidenceStore, EvidenceStoreError
from curbwatch.server.models_rollout import RolloutError, record_rollout_result
from curbwatch.server.tables import DEAD_LETTER_PAYLOAD_CAP, DeadLetter, Device, Evidence, Sample

logger = logging.getLogger(__name__)

TOPIC_CAP = 255
REPORT_CHANNELS = frozenset(
    {Channel.STATUS, Channel.HEARTBEAT, Channel.CONFIG_REPORTED, Channel.COMMAND_RESULT}
)


class RejectReason(StrEnum):
    """Why a message was dead-lettered (the ``dead_letters.reason`` column)."""

    TOO_LARGE = "too_large"
    BAD_TOPIC = "bad_topic"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_DEVICE = "unknown_device"
    BAD_SIGNATURE = "bad_signature"
    SCHEMA = "schema"
    ID_MISMATCH = "id_mismatch"  # topic, envelope and event disagree on device or id
    REPLAYED_SEQ = "replayed_seq"
    EVENT_ID_CONFLICT = "event_id_conflict"  # known event_id under another device or seq
    HASH_MISMATCH = "hash_mismatch"
    UNKNOWN_CHECK = "unknown_check"  # a command result answering no check or model update of the device
    INTERNAL_ERROR = "internal_error"  # the database refused it repeatedly; kept for a human


class Result(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RECORDED = "recorded"  # status, heartbeat, reported config, command result: never acknowledged


@dataclass(frozen=True)
class ReceivedMessage:
    """One message as it came off the broker."""

    topic: str
    payload: bytes
    received_at: datetime


@dataclass(frozen=True)
class Outcome:
    """What became of a message; ``ack`` goes to ``device_id``'s ack topic after the commit."""

    result: Result
    device_id: str | None
    ack: AckItemV1 | None = None
    reason: RejectReason | None = None

    @property
    def counter_key(self) -> str:
        return self.reason.value if self.reason else self.result.value


class _Rejected(Exception):
    def __init__(self, reason: RejectReason, detail: str, ack: tuple[str, str] | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.ack = reason, detail, ack


@dataclass(frozen=True)
class _CheckedEvent:
    """An authentic, well-formed event waiting for the batch's database verdict."""

    device_id: str
    message: ReceivedMessage
    event: EventV1
    row: dict[str, Any]


_VERDICT_REASONS = {
    Verdict.REPLAYED_SEQ: RejectReason.REPLAYED_SEQ,
    Verdict.EVENT_ID_CONFLICT: RejectReason.EVENT_ID_CONFLICT,
}


@dataclass
class DeviceUpdates:
    """Device-row writes of one transaction, applied last and in id order.

    Two workers that touched the same devices in different orders could deadlock on PostgreSQL
    row locks; one ordered pass at the end of the transaction cannot.
    """

    last_seq: dict[str, int] = field(default_factory=dict)

    def apply(self, session: Session) -> None:
        for device_id in sorted(self.last_seq):
            seq = self.last_seq[device_id]
            session.execute(
                update(Device)
                .where(Device.id == device_id)
                .values(last_seq=case((Device.last_seq < seq, seq), else_=Device.last_seq))
            )


_Payload = TypeVar("_Payload", EventV1, SampleV1)


def _payload(
    envelope: EnvelopeV1, ack: tuple[str, str] | None, device_id: str, model: type[_Payload], what: str
) -> _Payload:
    """The envelope's payload as ``model`` (an ``event`` or a ``sample``, ``what`` says which; its id
    field is ``<what>_id``), whose device and id must be the topic's and the envelope's."""
    try:
        payload = model.model_validate(envelope.payload)
    except ValidationError as exc:
        raise _Rejected(RejectReason.SCHEMA, _errors(exc), ack) from None
    payload_id = getattr(payload, f"{what}_id")
    if not envelope.device_id == payload.device_id == device_id or payload_id != envelope.message_id:
        raise _Rejected(RejectReason.ID_MISMATCH, f"topic, envelope and {what} disagree", ack)
    return payload


class MessageHandler:
    """Checks and stores one message; the caller owns the transaction.

    Args:
        store: Where evidence bytes go; written before the caller commits.
        config: The city configuration: how events fold into cases, and the grid of new cases.
        max_payload_bytes: Messages above this are refused unread (events also obey
            ``MAX_ENVELOPE_BYTES`` and evidence ``MAX_EVIDENCE_BYTES``).
    """

    def __init__(self, store: EvidenceStore, config: CaseServerConfig, *, max_payload_bytes: int) -> None:
        self.store = store
        self.config = config
        self.max_payload_bytes = max_payload_bytes

    def handle(self, session: Session, message: ReceivedMessage, updates: DeviceUpdates) -> Outcome:
        """Store or dead-letter ``message`` in ``session``; never raises for a bad message."""
        return self.handle_batch(session, [message], updates)[0]

    def handle_batch(
        self, session: Session, messages: list[ReceivedMessage], updates: DeviceUpdates
    ) -> list[Outcome]:
        """Store or dead-letter each message in ``session``; one outcome per message, in order.

        A later copy of an event in the same batch is a duplicate of the earlier one, exactly
        as if each message had its own transaction. Each stored event is folded into its case.
        """
        keys: dict[str, bytes | None] = {}  # device keys, read once per batch
        outcomes: list[Outcome | None] = []
        checked: list[tuple[int, _CheckedEvent]] = []
        for index, message in enumerate(messages):
            result = self._check(session, message, keys)
            if isinstance(result, _CheckedEvent):
                checked.append((index, result))
                outcomes.append(None)
            else:
                outcomes.append(result)
        decisions = write_events(session, [event.row for _, event in checked])
        for (index, event), decision in zip(checked, decisions, strict=True):
            outcomes[index] = self._decided(session, event, decision.verdict, decision.detail, updates)
        self._fold(session, [event for _, event in checked], decisions)
        return [outcome for outcome in outcomes if outcome is not None]

    def _fold(self, session: Session, events: list[_CheckedEvent], decisions: list[Decision]) -> None:
        """Fold the newly stored events into cases, in batch order (an episode's start opens its case)."""
        arrivals = [
            (checked.event, checked.message.received_at)
            for checked, decision in zip(events, decisions, strict=True)
            if decision.verdict is Verdict.STORED
        ]
        fold_events(session, arrivals, config=self.config.folding, grid=self.config.grid)

    def _check(
        self, session: Session, message: ReceivedMessage, keys: dict[str, bytes | None]
    ) -> Outcome | _CheckedEvent:
        device_id: str | None = None
        try:
            if len(message.payload) > self.max_payload_bytes:
                raise _Rejected(RejectReason.TOO_LARGE, f"{len(message.payload)} bytes")
            try:
                device_id, channel, sha256 = parse_topic(message.topic)
            except ValueError as exc:
                raise _Rejected(RejectReason.BAD_TOPIC, str(exc)) from None
            if channel is Channel.EVENT:
                return self._event(session, device_id, message, keys)
            if channel is Channel.EVIDENCE:
                return self._evidence(session, device_id, sha256 or "", message, keys)
            if channel is Channel.SAMPLE:
                return self._sample(session, device_id, message, keys)
            return self._report(session, device_id, channel, message, keys)
        except _Rejected as rejected:
            return self._dead_letter(session, device_id, message, rejected)

    def _decided(
        self, session: Session, event: _CheckedEvent, verdict: Verdict, detail: str, updates: DeviceUpdates
    ) -> Outcome:
        event_id, device_id = event.row["event_id"], event.device_id
        if verdict is Verdict.STORED:
            seq = event.row["seq"]
            updates.last_seq[device_id] = max(updates.last_seq.get(device_id, 0), seq)
            return Outcome(
                Result.STORED, device_id, AckItemV1(kind="event", id=event_id, status=AckStatus.STORED)
            )
        if verdict is Verdict.DUPLICATE:
            item = AckItemV1(kind="event", id=event_id, status=AckStatus.DUPLICATE)
            return Outcome(Result.DUPLICATE, device_id, item)
        rejected = _Rejected(_VERDICT_REASONS[verdict], detail, ("event", event_id))
        return self._dead_letter(session, device_id, event.message, rejected)

    def dead_letter(
        self, session: Session, message: ReceivedMessage, reason: RejectReason, detail: str
    ) -> Outcome:
        """Dead-letter a message the caller could not store (no ack: the cause is not the device's)."""
        try:
            device_id: str | None = parse_topic(message.topic)[0]
        except ValueError:
            device_id = None
        return self._dead_letter(session, device_id, message, _Rejected(reason, detail))

    def _dead_letter(
        self, session: Session, device_id: str | None, message: ReceivedMessage, rejected: _Rejected
    ) -> Outcome:
        session.add(
            DeadLetter(
                received_at=message.received_at,
                topic=message.topic[:TOPIC_CAP],
                device_id=device_id[:64] if device_id else None,
                reason=rejected.reason.value,
                detail=rejected.detail[:2000],
                payload_size=len(message.payload),
                payload=bytes(message.payload[:DEAD_LETTER_PAYLOAD_CAP]),
            )
        )
        logger.info("dead-lettered %s: %s (%s)", message.topic[:TOPIC_CAP], rejected.reason, rejected.detail)
        ack = None
        if rejected.ack is not None:
            kind, item_id = rejected.ack
            ack = AckItemV1(kind=kind, id=item_id, status=AckStatus.REJECTED, reason=rejected.reason.value)
        return Outcome(Result.REJECTED, device_id, ack, rejected.reason)

    def _known_device(self, session: Session, device_id: str, keys: dict[str, bytes | None]) -> bytes:
        """The device's HMAC key; one query per device and batch."""
        if device_id not in keys:
            keys[device_id] = device_key(session, device_id)
        key = keys[device_id]
        if key is None:
            raise _Rejected(RejectReason.UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
        return key

    def _envelope(
        self,
        session: Session,
        device_id: str,
        message: ReceivedMessage,
        keys: dict[str, bytes | None],
        kind: Literal["event", "sample"],
    ) -> tuple[EnvelopeV1, tuple[str, str] | None]:
        """The authentic envelope of an event or a sample, and what to acknowledge if it is refused."""
        if len(message.payload) > MAX_ENVELOPE_BYTES:
            raise _Rejected(RejectReason.TOO_LARGE, f"{kind} of {len(message.payload)} bytes")
        raw = _json_object(message.payload)
        key = self._known_device(session, device_id, keys)
        # The signature covers the bytes the device signed: check it before any parsing can
        # normalise them. An unauthenticated message gets no ack: it must not make a device drop
        # anything from its outbox.
        if not verify(raw, key):
            raise _Rejected(RejectReason.BAD_SIGNATURE, "HMAC does not match the device key")
        message_id = raw.get("message_id")
        ack = (kind, message_id) if isinstance(message_id, str) and message_id else None
        try:
            return EnvelopeV1.model_validate(raw), ack
        except ValidationError as exc:
            raise _Rejected(RejectReason.SCHEMA, _errors(exc), ack) from None

    def _event(
        self, session: Session, device_id: str, message: ReceivedMessage, keys: dict[str, bytes | None]
    ) -> _CheckedEvent:
        envelope, ack = self._envelope(session, device_id, message, keys, "event")
        event = _payload(envelope, ack, device_id, EventV1, "event")
        return _CheckedEvent(
            device_id,
            message,
            event,
            event_row(event, seq=envelope.seq, received_at=message.received_at, document=envelope.payload),
        )

    def _sample(
        self, session: Session, device_id: str, message: ReceivedMessage, keys: dict[str, bytes | None]
    ) -> Outcome:
        """A labelling sample: checked like an event (size, HMAC, schema, identity), stored once."""
        envelope, ack = self._envelope(session, device_id, message, keys, "sample")
        sample = _payload(envelope, ack, device_id, SampleV1, "sample")
        known = session.get(Sample, sample.sample_id)
        if known is not None and known.device_id != device_id:
            raise _Rejected(RejectReason.EVENT_ID_CONFLICT, "sample id known from another device", ack)
        status = AckStatus.DUPLICATE if known is not None else AckStatus.STORED
        if known is None:
            session.add(
                Sample(
                    sample_id=sample.sample_id,
                    device_id=device_id,
                    seq=envelope.seq,
                    camera_id=sample.camera_id,
                    ts=sample.ts,
                    image_sha256=sample.image.sha256,
                    uncertain_count=sum(detection.uncertain for detection in sample.detections),
                    document=envelope.payload,
                    received_at=message.received_at,
                )
            )
            session.flush()
        result = Result.STORED if status is AckStatus.STORED else Result.DUPLICATE
        return Outcome(result, device_id, AckItemV1(kind="sample", id=sample.sample_id, status=status))

    def _evidence(
        self,
        session: Session,
        device_id: str,
        sha256: str,
        message: ReceivedMessage,
        keys: dict[str, bytes | None],
    ) -> Outcome:
        if len(message.payload) > MAX_EVIDENCE_BYTES:
            raise _Rejected(RejectReason.TOO_LARGE, f"evidence of {len(message.payload)} bytes")
        try:
            self.store.relative_path(sha256)
        except EvidenceStoreError as exc:
            raise _Rejected(RejectReason.BAD_TOPIC, str(exc)) from None
        self._known_device(session, device_id, keys)
        ack = ("evidence", sha256)
        if session.get(Evidence, sha256) is not None:
            item = AckItemV1(kind="evidence", id=sha256, status=AckStatus.DUPLICATE)
            return Outcome(Result.DUPLICATE, device_id, item)
        try:
            path = self.store.put(sha256, bytes(message.payload))
        except EvidenceHashError as exc:
            raise _Rejected(RejectReason.HASH_MISMATCH, str(exc), ack) from None
        session.add(
            Evidence(
                sha256=sha256,
                device_id=device_id,
                size_bytes=len(message.payload),
                path=path,
                received_at=message.received_at,
            )
        )
        session.flush()
        return Outcome(
            Result.STORED, device_id, AckItemV1(kind="evidence", id=sha256, status=AckStatus.STORED)
        )

    def _report(
        self,
        session: Session,
        device_id: str,
        channel: Channel,
        message: ReceivedMessage,
        keys: dict[str, bytes | None],
    ) -> Outcome:
        """A device's status, heartbeat, applied configuration or command result: recorded, no ack."""
        if channel not in REPORT_CHANNELS:
            raise _Rejected(RejectReason.BAD_TOPIC, f"channel {channel.value} is not ingested")
        raw = _json_object(message.payload)
        self._known_device(session, device_id, keys)
        at = message.received_at
        try:
            if channel is Channel.STATUS:
                status = StatusV1.model_validate(raw)
                _same_device(status.device_id, device_id)
                record_status(session, status, received_at=at)
            elif channel is Channel.HEARTBEAT:
                heartbeat = HeartbeatV1.model_validate(raw)
                _same_device(heartbeat.device_id, device_id)
                record_heartbeat(session, heartbeat, received_at=at)
            elif channel is Channel.CONFIG_REPORTED:
                report = ReportedConfigV1.model_validate(raw)
                _same_device(report.device_id, device_id)
                record_reported_config(session, report)
            else:
                # The result names no device: the update or check it answers must be one sent to this one.
                result = CommandResultV1.model_validate(raw)
                if not record_rollout_result(session, device_id, result, at):
                    record_command_result(session, device_id, result, at)
        except ValidationError as exc:
            raise _Rejected(RejectReason.SCHEMA, _errors(exc)) from None
        except UnknownCheck as exc:
            raise _Rejected(RejectReason.UNKNOWN_CHECK, str(exc)) from None
        except RolloutError as exc:
            raise _Rejected(RejectReason.ID_MISMATCH, str(exc)) from None
        return Outcome(Result.RECORDED, device_id)


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Rejected(RejectReason.MALFORMED_JSON, str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise _Rejected(RejectReason.SCHEMA, f"expected a JSON object, got {type(raw).__name__}")
    return raw


def _same_device(claimed: str, topic_device: str) -> None:
    if claimed != topic_device:
        raise _Rejected(RejectReason.ID_MISMATCH, f"document names {claimed!r}, topic {topic_device!r}")


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])

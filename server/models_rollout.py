"""Model rollouts to edge devices: the signed ``update_model`` command, its chunks, the canary order, and
their record in ``model_rollouts`` / ``model_rollout_targets``.

A rollout sends one model version to chosen devices, the canary first; the others get it only once
the canary has reported ``applied``. A canary that reports ``rolled_back`` or ``failed`` halts the
rollout, so a bad model reaches one box at most. Each device's state moves
``pending -> sent -> applied | rolled_back | failed``; the device's ``CommandResultV1`` settles it.

Who does what (``docs/protocol.md``, model updates): the ingest worker only files each device's
answer (:func:`record_rollout_result`, in its transaction); whoever holds the model bytes and a
publisher (``curbwatch models rollout``, or ``rollout-resume`` after that process is gone) drives
the rollout with :func:`drive_rollout`, which sends what :meth:`RolloutPlan.due` names and polls
the tables for the answers. A target is marked ``sent`` with its correlation id and committed
before its command is published, so an answer always finds its row; the rollout's row lock makes
that claim, so two drivers of one rollout never send to the same device at once. A driver that
died between that commit and the publish leaves a device ``sent`` that never got the update:
:func:`claim_unanswered` hands such a device out again, under the same correlation id, once it
has been silent longer than the driver's ``resend_after_s`` while its heartbeats say it is up.
:class:`RolloutPlan` is the pure canary logic both sides apply to the stored states.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import select

from curbwatch.schema.protocol import (
    MODEL_CHUNK_BYTES,
    Channel,
    CommandResultV1,
    ModelUpdateArgsV1,
    canonical_bytes,
    model_chunk_topic,
    sign,
    topic,
)
from curbwatch.server.audit import SYSTEM_ROLE, append_audit
from curbwatch.server.db import as_utc
from curbwatch.server.device_link import DeviceLinkError
from curbwatch.server.devices import device_key
from curbwatch.server.tables import Device, ModelRollout, ModelRolloutTarget

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from curbwatch.server.device_link import DevicePublisher

logger = logging.getLogger(__name__)

UPDATE_COMMAND = "update_model"
OPERATOR_ROLE = "admin"  # rollouts are started from the server's command line, by its administrator
SERVER_ACTOR = "server"


class DeviceRolloutState(StrEnum):
    """Where one device stands in a rollout."""

    PENDING = "pending"
    SENT = "sent"
    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class RolloutState(StrEnum):
    """Where a rollout stands: waiting on its canary, sent to the rest, finished, or stopped."""

    CANARY = "canary"
    ROLLING = "rolling"
    DONE = "done"
    HALTED = "halted"


SETTLED = frozenset({DeviceRolloutState.APPLIED, DeviceRolloutState.ROLLED_BACK, DeviceRolloutState.FAILED})
FINISHED = frozenset({RolloutState.DONE, RolloutState.HALTED})


class RolloutError(ValueError):
    """A rollout that cannot be planned, an unknown rollout, or an answer from the wrong device."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for the broker: QoS 1, never retained (a model is not a standing state)."""

    topic: str
    payload: bytes


def update_messages(
    device_id: str,
    key: bytes,
    *,
    name: str,
    version: str,
    data: bytes,
    correlation_id: str,
    chunk_bytes: int = MODEL_CHUNK_BYTES,
) -> list[OutgoingMessage]:
    """The signed ``update_model`` command for ``device_id`` followed by the model's chunks, in order."""
    args = ModelUpdateArgsV1(
        name=name,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        chunk_bytes=chunk_bytes,
    )
    body = {
        "schema": "curbwatch.command.v1",
        "correlation_id": correlation_id,
        "name": UPDATE_COMMAND,
        "args": args.model_dump(mode="json"),
    }
    command = OutgoingMessage(
        topic(device_id, Channel.COMMAND), canonical_bytes({**body, "sig": sign(body, key)})
    )
    chunks = [
        OutgoingMessage(model_chunk_topic(device_id, args.sha256, index), data[start : start + chunk_bytes])
        for index, start in enumerate(range(0, len(data), chunk_bytes))
    ]
    return [command, *chunks]


def outcome_of(result: CommandResultV1) -> tuple[DeviceRolloutState, str]:
    """A device's answer to ``update_model`` as its settled state and a line for people."""
    if result.ok:
        return DeviceRolloutState.APPLIED, f"in service: {result.result.get('model_version', '?')}"
    state = str(result.result.get("state", ""))
    known = state in {DeviceRolloutState.ROLLED_BACK.value, DeviceRolloutState.FAILED.value}
    return (
        DeviceRolloutState(state) if known else DeviceRolloutState.FAILED,
        result.error or "no reason given",
    )


@dataclass
class RolloutPlan:
    """The canary order of one rollout over each device's state (pure: no database, no broker).

    Args:
        devices: The devices to update, in order; the canary is one of them.
        canary: The device that goes first; the first device when omitted.
        states: The devices' states so far; all pending when omitted.

    Example:
        >>> plan = RolloutPlan(["a", "b", "c"], canary="b")
        >>> plan.due()  # ["b"]: send to these, then plan.mark_sent(["b"])
        >>> plan.record("b", DeviceRolloutState.APPLIED)
        >>> plan.due()  # ["a", "c"]
    """

    devices: list[str]
    canary: str | None = None
    states: dict[str, DeviceRolloutState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.devices:
            raise RolloutError("a rollout needs at least one device")
        if len(set(self.devices)) != len(self.devices):
            raise RolloutError("a device is named twice")
        self.canary = self.canary or self.devices[0]
        if self.canary not in self.devices:
            raise RolloutError(f"canary {self.canary!r} is not one of the devices")
        self.states = {
            device: DeviceRolloutState(self.states.get(device, DeviceRolloutState.PENDING))
            for device in self.devices
        }

    @property
    def halted(self) -> bool:
        """The canary failed or rolled back: nobody else gets the model."""
        return self.states[self._canary] in {DeviceRolloutState.ROLLED_BACK, DeviceRolloutState.FAILED}

    @property
    def state(self) -> RolloutState:
        """The rollout's state, from its devices' states."""
        if self.halted:
            return RolloutState.HALTED
        if self.states[self._canary] is not DeviceRolloutState.APPLIED:
            return RolloutState.CANARY
        if all(state in SETTLED for state in self.states.values()):
            return RolloutState.DONE
        return RolloutState.ROLLING

    @property
    def _canary(self) -> str:
        assert self.canary is not None  # set in __post_init__
        return self.canary

    def due(self) -> list[str]:
        """The devices to send to now: the pending canary, or the pending rest after a good canary."""
        if self.states[self._canary] is DeviceRolloutState.PENDING:
            return [self._canary]
        if self.states[self._canary] is not DeviceRolloutState.APPLIED:
            return []
        return [device for device in self.devices if self.states[device] is DeviceRolloutState.PENDING]

    def mark_sent(self, devices: list[str]) -> None:
        for device in devices:
            self.states[device] = DeviceRolloutState.SENT

    def record(self, device_id: str, state: DeviceRolloutState) -> bool:
        """File a device's settled state; False (nothing changes) for a device not waiting on an answer.

        Raises:
            RolloutError: ``device_id`` is not in this rollout, or ``state`` settles nothing.
        """
        if device_id not in self.states:
            raise RolloutError(f"{device_id} is not in this rollout")
        if state not in SETTLED:
            raise RolloutError(f"{state} is not an answer")
        if self.states[device_id] is not DeviceRolloutState.SENT:
            return False
        self.states[device_id] = state
        return True


@dataclass(frozen=True)
class TargetView:
    """One device of a stored rollout."""

    device_id: str
    canary: bool
    state: DeviceRolloutState
    detail: str | None
    updated_at: datetime


@dataclass(frozen=True)
class RolloutView:
    """A stored rollout and its devices, in their order."""

    id: str
    model_name: str
    model_version: str
    sha256: str
    size_bytes: int
    state: RolloutState
    created_at: datetime
    created_by: str
    targets: list[TargetView]

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.model_version}"


def _targets(session: Session, rollout_id: str) -> list[ModelRolloutTarget]:
    query = select(ModelRolloutTarget).where(ModelRolloutTarget.rollout_id == rollout_id)
    return list(session.scalars(query.order_by(ModelRolloutTarget.position)))


def _plan(targets: list[ModelRolloutTarget]) -> RolloutPlan:
    canary = next(target.device_id for target in targets if target.canary)
    states = {target.device_id: DeviceRolloutState(target.state) for target in targets}
    return RolloutPlan([target.device_id for target in targets], canary, states)


def _locked(session: Session, rollout_id: str) -> ModelRollout:
    # The row lock orders the ingest worker's answers and the driver's sends of one rollout.
    rollout = session.get(ModelRollout, rollout_id, with_for_update=True)
    if rollout is None:
        raise RolloutError(f"no rollout {rollout_id!r}")
    return rollout


def _audit(session: Session, action: str, *, actor: str, role: str, at: datetime, **details: object) -> None:
    append_audit(
        session,
        case_id=None,
        action=action,
        actor=actor,
        role=role,
        at=at,
        from_state=None,
        to_state=None,
        details=details,
    )


def create_rollout(
    session: Session,
    *,
    name: str,
    version: str,
    sha256: str,
    size_bytes: int,
    devices: list[str],
    canary: str | None,
    actor: str,
    at: datetime,
) -> str:
    """Store a new rollout with every device pending, and its audit entry (the caller commits).

    Returns:
        The rollout id.

    Raises:
        RolloutError: No devices, a device named twice or not registered, or a canary not among them.
    """
    plan = RolloutPlan(list(devices), canary)
    unknown = [device for device in plan.devices if device_key(session, device) is None]
    if unknown:
        raise RolloutError(f"unknown devices: {', '.join(unknown)}")
    rollout_id = uuid.uuid4().hex
    session.add(
        ModelRollout(
            id=rollout_id,
            model_name=name,
            model_version=version,
            sha256=sha256,
            size_bytes=size_bytes,
            state=plan.state.value,
            created_at=at,
            created_by=actor,
            updated_at=at,
        )
    )
    session.flush()  # the targets' foreign key needs the rollout row first
    session.add_all(
        ModelRolloutTarget(
            rollout_id=rollout_id,
            device_id=device,
            position=position,
            canary=device == plan.canary,
            state=DeviceRolloutState.PENDING.value,
            updated_at=at,
        )
        for position, device in enumerate(plan.devices)
    )
    _audit(
        session,
        "model_rollout_started",
        actor=actor,
        role=OPERATOR_ROLE,
        at=at,
        rollout_id=rollout_id,
        model=f"{name}@{version}",
        sha256=sha256,
        devices=plan.devices,
        canary=plan.canary,
    )
    session.flush()
    logger.info("rollout %s of %s@%s to %s (canary %s)", rollout_id, name, version, plan.devices, plan.canary)
    return rollout_id


def claim_due(session: Session, rollout_id: str, at: datetime) -> list[tuple[str, str]]:
    """Mark the devices due now as sent, each with a fresh correlation id (the caller commits, then sends).

    Returns:
        ``(device_id, correlation_id)`` of each device to send the update to.
    """
    rollout = _locked(session, rollout_id)
    targets = _targets(session, rollout_id)
    plan = _plan(targets)
    due = set(plan.due())
    claimed = []
    for target in targets:
        if target.device_id in due:
            target.state, target.correlation_id = DeviceRolloutState.SENT.value, uuid.uuid4().hex
            target.updated_at = at
            claimed.append((target.device_id, target.correlation_id))
    plan.mark_sent(list(due))
    _set_state(session, rollout, plan, at)
    return claimed


def claim_unanswered(
    session: Session, rollout_id: str, at: datetime, resend_after_s: float
) -> list[tuple[str, str]]:
    """Hand out again the devices ``sent``, silent ``resend_after_s`` yet heard from (the caller commits).

    A box whose heartbeat came after the send is connected and should have had the command by
    then; one not heard from since is away, and its broker session queues the first copy, so a
    resend would only pile model bytes up in the broker. The correlation id stays, so a late
    answer to the first send still settles the device, and the box ignores a command it has
    already begun (``edge/rollout.py``). ``updated_at`` moves to ``at`` under the rollout's row
    lock: a second driver sees the device as freshly sent and leaves it be.

    Returns:
        ``(device_id, correlation_id)`` of each device to send the update to again.
    """
    rollout = _locked(session, rollout_id)
    if RolloutState(rollout.state) in FINISHED:
        return []
    silent_since = at - timedelta(seconds=resend_after_s)
    claimed = []
    for target in _targets(session, rollout_id):
        if target.state != DeviceRolloutState.SENT.value or as_utc(target.updated_at) >= silent_since:
            continue
        heard_at = session.scalar(select(Device.last_heartbeat_at).where(Device.id == target.device_id))
        if heard_at is None or as_utc(heard_at) <= as_utc(target.updated_at):
            continue
        assert target.correlation_id is not None  # set with the state "sent"
        target.updated_at = at
        claimed.append((target.device_id, target.correlation_id))
        _audit(
            session,
            "model_rollout_resent",
            actor=SERVER_ACTOR,
            role=SYSTEM_ROLE,
            at=at,
            rollout_id=rollout_id,
            model=f"{rollout.model_name}@{rollout.model_version}",
            device_id=target.device_id,
            silent_s=resend_after_s,
        )
    session.flush()
    return claimed


def unfinished_rollouts(session: Session) -> list[str]:
    """Ids of the rollouts still waiting on their canary or sending to the rest, oldest first."""
    query = select(ModelRollout.id).where(ModelRollout.state.notin_([state.value for state in FINISHED]))
    return list(session.scalars(query.order_by(ModelRollout.created_at, ModelRollout.id)))


def _settle(
    session: Session,
    rollout: ModelRollout,
    device_id: str,
    state: DeviceRolloutState,
    detail: str,
    *,
    actor: str,
    at: datetime,
) -> None:
    targets = _targets(session, rollout.id)
    plan = _plan(targets)
    if not plan.record(device_id, state):
        logger.debug("rollout %s: %s already settled; answer ignored", rollout.id, device_id)
        return
    target = next(target for target in targets if target.device_id == device_id)
    target.state, target.detail, target.updated_at = state.value, detail[:2000], at
    _audit(
        session,
        "model_rollout_result",
        actor=actor,
        role=SYSTEM_ROLE,
        at=at,
        rollout_id=rollout.id,
        model=f"{rollout.model_name}@{rollout.model_version}",
        device_id=device_id,
        state=state.value,
        detail=detail[:500],
    )
    _set_state(session, rollout, plan, at)


def _set_state(session: Session, rollout: ModelRollout, plan: RolloutPlan, at: datetime) -> None:
    new = plan.state
    if new.value == rollout.state:
        return
    if new is RolloutState.HALTED:
        _audit(
            session,
            "model_rollout_halted",
            actor=SERVER_ACTOR,
            role=SYSTEM_ROLE,
            at=at,
            rollout_id=rollout.id,
            model=f"{rollout.model_name}@{rollout.model_version}",
            canary=plan.canary,
            pending=[d for d in plan.devices if plan.states[d] is DeviceRolloutState.PENDING],
        )
    rollout.state, rollout.updated_at = new.value, at
    session.flush()
    logger.info("rollout %s: %s", rollout.id, new.value)


def record_rollout_result(session: Session, device_id: str, result: CommandResultV1, at: datetime) -> bool:
    """File a device's answer to an ``update_model`` command, if it is one (the caller commits).

    A redelivered answer for a device already settled changes nothing.

    Returns:
        Whether the correlation id belongs to a rollout; False leaves the answer to the caller.

    Raises:
        RolloutError: The correlation id is a rollout's, but of an update sent to another device.
    """
    query = select(ModelRolloutTarget).where(ModelRolloutTarget.correlation_id == result.correlation_id)
    target = session.scalar(query)
    if target is None:
        return False
    if target.device_id != device_id:
        raise RolloutError(f"update {result.correlation_id} was sent to {target.device_id}, not {device_id}")
    rollout = _locked(session, target.rollout_id)
    state, detail = outcome_of(result)
    _settle(session, rollout, device_id, state, detail, actor=f"edge:{device_id}", at=at)
    return True


def mark_not_sent(session: Session, rollout_id: str, device_id: str, error: str, at: datetime) -> None:
    """Record that a device's update never reached the broker: it failed (the caller commits)."""
    rollout = _locked(session, rollout_id)
    _settle(
        session,
        rollout,
        device_id,
        DeviceRolloutState.FAILED,
        f"not sent: {error}",
        actor=SERVER_ACTOR,
        at=at,
    )


def rollout_status(session: Session, rollout_id: str) -> RolloutView:
    """A stored rollout and its devices.

    Raises:
        RolloutError: No rollout has this id.
    """
    rollout = session.get(ModelRollout, rollout_id)
    if rollout is None:
        raise RolloutError(f"no rollout {rollout_id!r}")
    targets = [
        TargetView(t.device_id, t.canary, DeviceRolloutState(t.state), t.detail, t.updated_at)
        for t in _targets(session, rollout_id)
    ]
    return RolloutView(
        rollout.id,
        rollout.model_name,
        rollout.model_version,
        rollout.sha256,
        rollout.size_bytes,
        RolloutState(rollout.state),
        rollout.created_at,
        rollout.created_by,
        targets,
    )


def send_due(
    factory: sessionmaker[Session],
    rollout_id: str,
    data: bytes,
    publisher: DevicePublisher,
    clock: Callable[[], datetime],
    resend_after_s: float | None = None,
) -> list[str]:
    """Send the update to the devices due now; those the broker did not take are marked failed.

    Args:
        resend_after_s: Also send again to devices silent this long since they were sent to
            (:func:`claim_unanswered`); None never sends twice.

    Returns:
        The devices the update was handed to the broker for.
    """
    with factory() as session, session.begin():
        rollout = _locked(session, rollout_id)
        name, version = rollout.model_name, rollout.model_version
        at = clock()
        claimed = claim_due(session, rollout_id, at)
        if resend_after_s is not None:
            claimed += claim_unanswered(session, rollout_id, at, resend_after_s)
        keys = {device: device_key(session, device) for device, _ in claimed}
    sent = []
    for device, correlation_id in claimed:
        key = keys[device]
        assert key is not None  # create_rollout admitted registered devices only
        messages = update_messages(
            device, key, name=name, version=version, data=data, correlation_id=correlation_id
        )
        try:
            for message in messages:
                publisher.publish(message.topic, message.payload, retain=False)
        except DeviceLinkError as exc:
            logger.error("rollout %s: update for %s not sent: %s", rollout_id, device, exc)
            with factory() as session, session.begin():
                mark_not_sent(session, rollout_id, device, str(exc), clock())
            continue
        sent.append(device)
    return sent


def drive_rollout(
    factory: sessionmaker[Session],
    rollout_id: str,
    data: bytes,
    publisher: DevicePublisher,
    *,
    clock: Callable[[], datetime],
    timeout_s: float,
    on_change: Callable[[TargetView], None],
    poll_s: float = 1.0,
    resend_after_s: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutView:
    """Send to the canary, wait for its answer, send to the rest, wait for theirs.

    Starts from whatever the tables say, so it also resumes a rollout whose first driver is gone.

    Args:
        factory: Database sessions (the ingest worker files the answers there).
        rollout_id: A rollout made by :func:`create_rollout`.
        data: The model's bytes (their sha256 is the rollout's).
        publisher: Hands the commands and chunks to the broker.
        clock: The time written into the tables and the audit log.
        timeout_s: Give up waiting after this long; unanswered devices stay ``sent``.
        on_change: Called with each device whose state changed since the last look (progress).
        poll_s: How often the tables are read.
        resend_after_s: Send again to a device silent this long after it was sent to (see
            :func:`claim_unanswered`); None never sends twice.

    Returns:
        The rollout as it stands when it finished or the wait ran out.

    Raises:
        RolloutError: ``data`` is not the model the rollout was made for.
    """
    deadline = monotonic() + timeout_s
    with factory() as session:
        sha256 = rollout_status(session, rollout_id).sha256
    if sha256 != hashlib.sha256(data).hexdigest():
        raise RolloutError(f"rollout {rollout_id} sends {sha256}, not these bytes")
    seen: dict[str, DeviceRolloutState] = {}
    while True:
        sent = send_due(factory, rollout_id, data, publisher, clock, resend_after_s)
        with factory() as session:
            view = rollout_status(session, rollout_id)
        for target in view.targets:
            if seen.get(target.device_id) is not target.state:
                seen[target.device_id] = target.state
                on_change(target)
        if view.state in FINISHED or monotonic() >= deadline:
            return view
        if not sent:
            sleep(poll_s)

"""Model rollouts to edge devices: the signed ``update_model`` command, its chunks, and the canary order.

A rollout sends one model version to chosen devices, the canary first; the others get it only once
the canary has reported ``applied``. A canary that reports ``rolled_back`` or ``failed`` halts the
rollout, so a bad model reaches one box at most. Each device's state moves
``pending -> sent -> applied | rolled_back | failed``; the device's ``CommandResultV1`` settles it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

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

UPDATE_COMMAND = "update_model"


class DeviceRolloutState(StrEnum):
    """Where one device stands in a rollout."""

    PENDING = "pending"
    SENT = "sent"
    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


SETTLED = frozenset({DeviceRolloutState.APPLIED, DeviceRolloutState.ROLLED_BACK, DeviceRolloutState.FAILED})


class RolloutError(ValueError):
    """A rollout that cannot be planned or a result that belongs to none of its devices."""


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


@dataclass
class RolloutPlan:
    """The canary order of one rollout and each device's state.

    Args:
        devices: The devices to update, in order; the canary is one of them.
        canary: The device that goes first; the first device when omitted.

    Example:
        >>> plan = RolloutPlan(["a", "b", "c"], canary="b")
        >>> plan.start()  # ["b"]: send to these
        >>> plan.record("b", correlation_id, result)  # ["a", "c"] once b applied it
    """

    devices: list[str]
    canary: str | None = None
    states: dict[str, DeviceRolloutState] = field(default_factory=dict)
    correlation_ids: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.devices:
            raise RolloutError("a rollout needs at least one device")
        if len(set(self.devices)) != len(self.devices):
            raise RolloutError("a device is named twice")
        self.canary = self.canary or self.devices[0]
        self._first = self.canary
        if self.canary not in self.devices:
            raise RolloutError(f"canary {self.canary!r} is not one of the devices")
        self.states = {device: DeviceRolloutState.PENDING for device in self.devices}

    @property
    def halted(self) -> bool:
        """The canary failed or rolled back: nobody else gets the model."""
        return self.states[self._first] in {DeviceRolloutState.ROLLED_BACK, DeviceRolloutState.FAILED}

    def start(self) -> list[str]:
        """The devices to send to now: the canary alone."""
        return self._send([self._first])

    def record(self, device_id: str, result: CommandResultV1) -> list[str]:
        """File a device's update result; the devices to send to next (the rest after a good canary).

        Raises:
            RolloutError: The result answers no update sent to that device in this rollout.
        """
        if self.correlation_ids.get(device_id) != result.correlation_id:
            raise RolloutError(f"{result.correlation_id} is no update sent to {device_id} in this rollout")
        state = str(result.result.get("state", ""))
        if result.ok:
            self.states[device_id] = DeviceRolloutState.APPLIED
        else:
            known = state in {DeviceRolloutState.ROLLED_BACK.value, DeviceRolloutState.FAILED.value}
            self.states[device_id] = DeviceRolloutState(state) if known else DeviceRolloutState.FAILED
            self.reasons[device_id] = result.error or "no reason given"
        if device_id == self._first and self.states[device_id] is DeviceRolloutState.APPLIED:
            return self._send([d for d in self.devices if self.states[d] is DeviceRolloutState.PENDING])
        return []

    def _send(self, devices: list[str]) -> list[str]:
        for device in devices:
            self.states[device] = DeviceRolloutState.SENT
            self.correlation_ids[device] = uuid.uuid4().hex
        return devices

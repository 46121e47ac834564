"""Device registry: which edge boxes may send, their HMAC keys, their last health report and the
configuration they last reported applying."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from curbwatch.schema.protocol import DEVICE_ID_PATTERN, HeartbeatV1, ReportedConfigV1, StatusV1
from curbwatch.server.tables import Device

KEY_BYTES = 32


class DeviceError(Exception):
    """A device registry operation failed."""


class DeviceExistsError(DeviceError):
    """The device id is already registered."""


class UnknownDeviceError(DeviceError):
    """No device has this id."""


def add_device(session: Session, device_id: str, *, now: datetime | None = None) -> str:
    """Register a device with a fresh random key; returns the key as hex (shown once to the operator).

    The caller commits.
    """
    if not re.fullmatch(DEVICE_ID_PATTERN, device_id):
        raise DeviceError(f"device id {device_id!r} does not match {DEVICE_ID_PATTERN}")
    if session.get(Device, device_id) is not None:
        raise DeviceExistsError(f"device {device_id!r} is already registered")
    key_hex = secrets.token_hex(KEY_BYTES)
    session.add(Device(id=device_id, hmac_key=key_hex, created_at=now or datetime.now(UTC), last_seq=0))
    session.flush()
    return key_hex


def device_key(session: Session, device_id: str) -> bytes | None:
    """The device's HMAC key, or None for an unknown device."""
    key_hex = session.scalar(select(Device.hmac_key).where(Device.id == device_id))
    return bytes.fromhex(key_hex) if key_hex is not None else None


def list_devices(session: Session) -> list[Device]:
    """All devices, by id."""
    return list(session.scalars(select(Device).order_by(Device.id)))


def _device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise UnknownDeviceError(f"device {device_id!r} is not registered")
    return device


def record_status(session: Session, status: StatusV1, *, received_at: datetime) -> None:
    """Store a device's online/offline state (the caller commits)."""
    device = _device(session, status.device_id)
    device.last_status = status.state.value
    device.last_status_at = status.ts or received_at


def record_heartbeat(session: Session, heartbeat: HeartbeatV1, *, received_at: datetime) -> None:
    """Store a device's latest heartbeat document (the caller commits)."""
    device = _device(session, heartbeat.device_id)
    device.last_heartbeat = heartbeat.model_dump(mode="json", by_alias=True)
    device.last_heartbeat_at = received_at


def record_reported_config(session: Session, report: ReportedConfigV1) -> None:
    """Store which configuration a device runs, and why it refused the last one if it did.

    The time stored is the report's own: the report is retained, so it may arrive long after it was
    made (a worker subscribing anew gets every device's last one). The caller commits.
    """
    device = _device(session, report.device_id)
    device.reported_config_version = report.applied_version
    device.reported_config_error = report.error
    device.reported_config_at = report.ts

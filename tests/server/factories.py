"""Signed envelopes and event documents for server tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from curbwatch.schema.events import example_event_document
from curbwatch.schema.protocol import EnvelopeV1


def event_document(device_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid ``curbwatch.event.v1`` document with a fresh event id."""
    return example_event_document(device_id=device_id, **overrides)


def envelope(device_id: str, key: bytes, seq: int, document: dict[str, Any] | None = None) -> EnvelopeV1:
    """A signed envelope around ``document`` (a fresh event by default)."""
    document = document or event_document(device_id)
    return EnvelopeV1.signed(
        device_id=device_id,
        seq=seq,
        message_id=document["event_id"],
        sent_at=datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC),
        payload=document,
        key=key,
    )


def jpeg_like(size: int = 2048, seed: int = 0) -> tuple[str, bytes]:
    """Some bytes and their sha256 (the server does not decode images)."""
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return hashlib.sha256(data).hexdigest(), data

"""What every request handler may need, built once when the app starts and never changed."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from curbwatch.server.config import CaseServerConfig
from curbwatch.server.device_link import DevicePublisher
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.settings import ServerSettings

SECRET_KEY_BYTES = 32


def utc_now() -> datetime:
    """The server clock (injected, so tests can fix it)."""
    return datetime.now(UTC)


def load_secret_key(path: Path) -> str:
    """The deployment's signing secret, created with mode 0600 on first use."""
    try:
        key = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(SECRET_KEY_BYTES)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
        return key
    if len(key) < 32:
        raise ValueError(f"secret key in {path} is too short (need at least 32 characters)")
    return key


@dataclass(frozen=True)
class AppContext:
    """Settings, city configuration and the services the routes share."""

    settings: ServerSettings
    config: CaseServerConfig
    session_factory: sessionmaker[Session]
    evidence: EvidenceStore
    secret_key: str
    publisher: DevicePublisher
    clock: Callable[[], datetime] = utc_now

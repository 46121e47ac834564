"""Server settings from ``CURBWATCH_*`` environment variables (pydantic-settings).

Built by :func:`get_settings` and passed to whatever needs them; nothing reads the environment
at import time, so tests build their own settings without touching ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from curbwatch.schema.protocol import MAX_EVIDENCE_BYTES


class ServerSettings(BaseSettings):
    """Where the server stores its data and how the ingest worker reaches the broker.

    Example:
        >>> settings = get_settings(database_url="sqlite:///tmp/cw.db", worker_name="a")
        >>> settings.client_id
        'curbwatch-ingest-a'
    """

    # "none" in a variable means None, so a single worker can subscribe plainly (CURBWATCH_SHARE_GROUP=none).
    model_config = SettingsConfigDict(
        env_prefix="CURBWATCH_", extra="forbid", frozen=True, env_parse_none_str="none"
    )

    database_url: str = Field(
        default="sqlite:///build/curbwatch.db",
        title="Database URL",
        description="SQLAlchemy URL; PostgreSQL as postgresql+psycopg://user@host/db.",
    )
    evidence_dir: Path = Field(
        default=Path("build/evidence"),
        title="Evidence folder",
        description="Content-addressed store of evidence images (one file per sha256).",
    )
    mqtt_host: str = Field(default="127.0.0.1", title="MQTT host", description="Broker host name.")
    mqtt_port: int = Field(default=1883, ge=1, le=65535, title="MQTT port", description="Broker port.")
    mqtt_tls: bool = Field(default=False, title="MQTT TLS", description="Connect with TLS (system CAs).")
    mqtt_username: str | None = Field(default=None, title="MQTT user", description="Broker user name.")
    mqtt_password: SecretStr | None = Field(
        default=None, title="MQTT password", description="Broker password."
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        title="MQTT version",
        description="5 gives session expiry and receive-maximum; 3.1.1 for brokers without MQTT 5.",
    )
    worker_name: str = Field(
        default="0",
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        title="Worker name",
        description="Stable per worker: it names the MQTT client id and so the broker session.",
    )
    share_group: str | None = Field(
        default="curbwatch-ingest",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        title="Share group",
        description=(
            "Workers in one share group split the devices' messages between them ($share/<group>/...). "
            "`none` subscribes plainly, for a single worker on a broker without shared subscriptions "
            "(the embedded demo broker)."
        ),
    )
    session_expiry_s: int = Field(
        default=24 * 3600,
        ge=0,
        title="Session expiry",
        description="How long the broker keeps queueing for a stopped worker (MQTT 5).",
    )
    receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        title="Receive maximum",
        description="Unacknowledged messages the broker may send at once (MQTT 5); bounds a batch.",
    )
    max_payload_bytes: int = Field(
        default=MAX_EVIDENCE_BYTES,
        gt=0,
        title="Max payload",
        description="Larger messages are dead-lettered unread (events have their own smaller limit).",
    )
    batch_max: int = Field(
        default=500, ge=1, title="Batch size", description="Messages committed in one transaction at most."
    )
    batch_wait_ms: float = Field(
        default=20.0,
        ge=0,
        title="Batch wait",
        description="How long a batch waits to fill after its first message; latency against throughput.",
    )

    case_config: Path | None = Field(
        default=None,
        title="Case configuration",
        description="YAML file of event codes, time limits, calendar, grid and Open311; none = defaults.",
    )
    secret_key_file: Path = Field(
        default=Path("build/secret.key"),
        title="Secret key file",
        description=(
            "Signs session cookies, API tokens and evidence links; created (mode 0600) when missing. "
            "Every web worker of one deployment must read the same file."
        ),
    )
    http_host: str = Field(
        default="127.0.0.1", title="HTTP host", description="Address the web server binds."
    )
    http_port: int = Field(default=8000, ge=1, le=65535, title="HTTP port", description="Web server port.")
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        title="Public URL",
        description="How the outside world reaches this server; Open311 media_url links start with it.",
    )
    evidence_link_max_age_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        title="Evidence link lifetime",
        description="Signed evidence links given to other platforms (Open311 media_url) expire after this.",
    )
    session_max_age_s: int = Field(
        default=8 * 3600, ge=60, title="Session lifetime", description="A sign-in lasts this long."
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        title="Login failures allowed",
        description="Failed sign-ins per user name within the window before sign-in is refused.",
    )
    login_max_failures_per_client: int = Field(
        default=20,
        ge=1,
        title="Login failures allowed per client",
        description="Failed sign-ins per client address within the window (a control room may share one).",
    )
    login_window_s: int = Field(
        default=300, ge=1, title="Login window", description="Seconds the failure count looks back."
    )
    secure_cookies: bool = Field(
        default=False,
        title="Secure cookies",
        description="Send the session cookie over HTTPS only; set behind a TLS-terminating proxy.",
    )

    @property
    def client_id(self) -> str:
        """The fixed MQTT client id; a fixed id is what lets the broker keep the session."""
        return f"curbwatch-ingest-{self.worker_name}"


def get_settings(**overrides: Any) -> ServerSettings:
    """Settings from the environment, with keyword overrides (tests, command-line options)."""
    return ServerSettings(**overrides)


def settings_from_options(**options: Any) -> ServerSettings:
    """Settings from the environment, overridden by the command-line options that were given.

    An option left out (None or empty) keeps the environment's value; to set a setting to None
    (``share_group``), use :func:`get_settings`.
    """
    return get_settings(**{name: value for name, value in options.items() if value not in (None, "")})

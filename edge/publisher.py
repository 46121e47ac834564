"""Sends the outbox over MQTT and deletes what the server acknowledges (see ``docs/protocol.md``).

The publisher is the only reader of the outbox. It keeps at most ``max_in_flight`` messages
unacknowledged, sends them in outbox order at QoS 1, and deletes a message only when the server's
:class:`AckV1` for it arrives, which the server publishes after its database commit. A message
not acknowledged within ``ack_timeout_s``, or in flight when the connection dropped, is sent
again; the server answers a redelivery ``duplicate``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from curbwatch.edge.delivery import InFlightWindow, RateLimiter
from curbwatch.edge.outbox import ItemKind, Outbox, OutboxItem
from curbwatch.schema.protocol import (
    DEVICE_ID_PATTERN,
    AckStatus,
    AckV1,
    CameraMetricsV1,
    Channel,
    DeviceState,
    HeartbeatV1,
    StatusV1,
    topic,
)

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.05  # how often the sender looks for new outbox rows when nothing wakes it


class TlsConfig(BaseModel):
    """TLS to the broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = Field(
        default=None, title="CA file", description="CA bundle that signed the broker's certificate; "
        "default: the system's trust store.",
    )  # fmt: skip
    cert_file: Path | None = Field(default=None, title="Client certificate", description="For mutual TLS.")
    key_file: Path | None = Field(default=None, title="Client key", description="For mutual TLS.")
    insecure: bool = Field(
        default=False, title="Skip host-name check",
        description="Accept a certificate whose name does not match the host. For lab use only.",
    )  # fmt: skip


class PublisherConfig(BaseModel):
    """How the edge reaches the broker and paces what it sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(title="Broker host", description="MQTT broker name or address.")
    port: int = Field(default=8883, ge=1, le=65535, title="Broker port", description="8883 for TLS.")
    tls: TlsConfig | None = Field(default=None, title="TLS", description="None sends in clear (lab only).")
    username: str | None = Field(default=None, title="User name", description="Usually the device id.")
    password: SecretStr | None = Field(default=None, title="Password", description="Broker password.")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, title="Device id", description="Names the topics.")
    device_key: SecretStr = Field(
        title="Device key", description="Hex HMAC key that signs envelopes (at least 32 bytes)."
    )
    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1", title="MQTT version",
        description="5 adds heartbeat expiry and a session expiry; 3.1.1 works with every broker.",
    )  # fmt: skip
    keepalive_s: int = Field(default=30, ge=5, le=600, title="Keep-alive", description="Ping interval.")
    reconnect_min_s: float = Field(default=1.0, gt=0, title="Back-off minimum", description="First wait.")
    reconnect_max_s: float = Field(
        default=60.0, gt=0, title="Back-off maximum", description="The wait doubles up to this."
    )
    max_in_flight: int = Field(
        default=32, ge=1, le=1000, title="Maximum in flight",
        description="Messages sent but not yet acknowledged by the server. More is faster over "
        "long round trips, and more to resend after a drop.",
    )  # fmt: skip
    rate_limit_msgs_s: float = Field(
        default=50.0, gt=0, title="Send rate limit",
        description="Messages per second at most, so replaying a long outage does not flood the "
        "uplink or the server.",
    )  # fmt: skip
    heartbeat_interval_s: float = Field(
        default=60.0, gt=0, title="Heartbeat interval", description="Seconds between health reports."
    )
    ack_timeout_s: float = Field(
        default=30.0, gt=0, title="Ack timeout", description="A message unacknowledged this long is resent."
    )
    session_expiry_s: int = Field(
        default=7 * 86400, ge=0, title="Session expiry (MQTT 5)",
        description="How long the broker keeps the device's session (its queued acks) while offline.",
    )  # fmt: skip

    @field_validator("device_key")
    @classmethod
    def verify_device_key(cls, value: SecretStr) -> SecretStr:
        try:
            key = bytes.fromhex(value.get_secret_value())
        except ValueError:
            raise ValueError("device_key must be hex") from None
        if len(key) < 32:
            raise ValueError("device_key must be at least 32 bytes (64 hex characters)")
        return value

    def key_bytes(self) -> bytes:
        return bytes.fromhex(self.device_key.get_secret_value())


@dataclass(frozen=True)
class DeviceMetrics:
    """What ``metrics_provider`` reports for the heartbeat; the publisher adds the outbox numbers."""

    cameras: list[CameraMetricsV1] = field(default_factory=list)
    disk_free_bytes: int | None = None  # default: free space where the outbox lives
    model_version: str | None = None
    config_version: str | None = None


@dataclass
class PublisherStats:
    """Counters since start."""

    sent: int = 0
    resent: int = 0
    acked: int = 0
    rejected: int = 0
    unknown_acks: int = 0
    bad_acks: int = 0
    heartbeats: int = 0
    evidence_lost: int = 0
    connects: int = 0


def _client(config: PublisherConfig) -> mqtt.Client:
    v5 = config.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"curbwatch-edge-{config.device_id}",
        # A persistent session keeps the ack subscription, and the acks, while the edge is away.
        clean_session=None if v5 else False,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    if config.username is not None:
        password = config.password.get_secret_value() if config.password else None
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        tls = config.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
        client.tls_insecure_set(tls.insecure)
    offline = StatusV1(device_id=config.device_id, state=DeviceState.OFFLINE)
    client.will_set(
        topic(config.device_id, Channel.STATUS), offline.model_dump_json(by_alias=True), qos=1, retain=True
    )
    client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]
    client.max_inflight_messages_set(config.max_in_flight + 8)  # ours plus status and heartbeats
    return client


class Publisher:
    """Delivers the outbox to the server over MQTT, end to end acknowledged.

    Args:
        config: Broker, identity and pacing.
        outbox: The durable queue; the publisher is its only reader.
        metrics_provider: Called every heartbeat for camera and version figures; None sends
            heartbeats with the outbox figures and free disk only.

    Example:
        >>> publisher = Publisher(config, outbox, metrics_provider=runner_metrics)
        >>> publisher.start()
        >>> ...
        >>> publisher.flush(timeout_s=10)
        >>> publisher.stop()
    """

    def __init__(
        self,
        config: PublisherConfig,
        outbox: Outbox,
        metrics_provider: Callable[[], DeviceMetrics] | None = None,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._metrics = metrics_provider or DeviceMetrics
        self.stats = PublisherStats()
        self._window = InFlightWindow()
        self._rate = RateLimiter(config.rate_limit_msgs_s, burst=config.max_in_flight)
        self._connected = threading.Event()
        self._reconnected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = _client(config)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._v5 = config.protocol == "5"
        self._handlers: dict[str, tuple[Callable[[str, bytes], None], int]] = {}

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (retrying with back-off) and start sending."""
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._config.session_expiry_s
        self._client.connect_async(
            self._config.host,
            self._config.port,
            self._config.keepalive_s,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Say ``offline``, disconnect and stop; what is unacknowledged stays in the outbox."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._connected.is_set():
            info = self._client.publish(
                self._status_topic, self._status(DeviceState.OFFLINE), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                logger.warning("could not publish offline status before disconnecting")
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None:
        """Also deliver ``topic_filter`` (e.g. desired config) to ``handler(topic, payload)``.

        The subscription is renewed on every connect; the handler runs on paho's thread.
        """
        self._handlers[topic_filter] = (handler, qos)
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos=qos)

    def publish(self, topic_name: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish outside the outbox (reported config, command results): not durable, not acked."""
        self._client.publish(topic_name, payload, qos=qos, retain=retain)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the server has acknowledged everything queued; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._outbox.depth() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(IDLE_POLL_S)
        return True

    # -- paho callbacks (paho's network thread) --

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            logger.error("broker refused the connection: %s", reason)
            return
        self.stats.connects += 1
        logger.info("connected to %s:%d", self._config.host, self._config.port)
        client.publish(self._status_topic, self._status(DeviceState.ONLINE), qos=1, retain=True)
        client.subscribe(topic(self._config.device_id, Channel.ACK), qos=1)
        for topic_filter, (_, qos) in list(self._handlers.items()):
            client.subscribe(topic_filter, qos=qos)
        self._reconnected.set()
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            logger.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != topic(self._config.device_id, Channel.ACK):
            self._dispatch(message)
            return
        try:
            ack = AckV1.model_validate_json(message.payload)
        except ValidationError as exc:
            self.stats.bad_acks += 1
            logger.warning("ignoring a malformed ack on %s: %s", message.topic, exc.errors()[:1])
            return
        for item in ack.items:
            deleted = self._outbox.ack(item.kind, item.id)
            self._window.remove(item.kind, item.id)
            if deleted == 0:
                self.stats.unknown_acks += 1  # a second ack for a resent message, or not ours
                logger.debug("ack for %s %s, which is not queued", item.kind, item.id)
            elif item.status is AckStatus.REJECTED:
                self.stats.rejected += 1
                logger.error("server REJECTED %s %s (%s); dropped, it can never succeed", item.kind, item.id,
                             item.reason)  # fmt: skip
            else:
                self.stats.acked += 1
        self._wake.set()

    def _dispatch(self, message: mqtt.MQTTMessage) -> None:
        for topic_filter, (handler, _) in list(self._handlers.items()):
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                try:
                    handler(message.topic, message.payload)
                except Exception:  # a handler's bug must not stop acks from being processed
                    logger.exception("handler for %s failed", topic_filter)

    # -- sender thread --

    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(IDLE_POLL_S)
            self._wake.clear()
            try:
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self._config.heartbeat_interval_s
                    self._heartbeat()
                if self._connected.is_set():
                    self._send()
            except Exception:  # the sender must outlive a bad row or a full disk; it retries
                logger.exception("publisher loop failed; retrying in 1 s")
                self._stopping.wait(1.0)

    def _send(self) -> None:
        if self._reconnected.is_set():
            self._reconnected.clear()
            self._window.reset()
            self._send_stored_heartbeat()
        for item in self._window.expired(time.monotonic(), self._config.ack_timeout_s):
            if not self._publish(item):
                return
            self.stats.resent += 1
        while (room := self._config.max_in_flight - len(self._window)) > 0:
            items = self._outbox.lease(room, after=self._window.cursor)
            if not items:
                return
            for item in items:
                self._window.add(item, time.monotonic())
                if not self._publish(item):
                    return
                self.stats.sent += 1

    def _publish(self, item: OutboxItem) -> bool:
        """Send one row at QoS 1; False when the sender should stop for now."""
        if not self._connected.is_set() or not self._rate.acquire(self._stopping):
            return False
        if item.kind is ItemKind.EVIDENCE:
            data = self._evidence_bytes(item)
            if data is None:
                return True
            self._client.publish(topic(self._config.device_id, Channel.EVIDENCE, item.ref), data, qos=1)
        else:
            channel = Channel.SAMPLE if item.kind is ItemKind.SAMPLE else Channel.EVENT
            self._client.publish(topic(self._config.device_id, channel), item.payload, qos=1)
        return True

    def _evidence_bytes(self, item: OutboxItem) -> bytes | None:
        """The image as it is now; a missing or altered file is dropped, loudly, never sent wrong."""
        try:
            data = item.path.read_bytes() if item.path else b""
        except OSError as exc:
            data, problem = None, str(exc)
        else:
            problem = "" if hashlib.sha256(data).hexdigest() == item.ref else "its sha256 changed"
        if data is None or problem:
            self.stats.evidence_lost += 1
            logger.error("evidence %s of event %s lost: %s", item.ref, item.event_id, problem)
            self._outbox.ack(ItemKind.EVIDENCE, item.ref)
            self._window.remove(ItemKind.EVIDENCE, item.ref)
            return None
        return data

    def _heartbeat(self) -> None:
        metrics = self._metrics()
        free = metrics.disk_free_bytes
        if free is None:
            free = shutil.disk_usage(self._outbox.path.parent).free
        heartbeat = HeartbeatV1(
            device_id=self._config.device_id,
            ts=datetime.now(UTC),
            cameras=metrics.cameras,
            outbox_depth=self._outbox.depth(),
            outbox_bytes=self._outbox.bytes_used(),
            disk_free_bytes=free,
            model_version=metrics.model_version,
            config_version=metrics.config_version,
        )
        if self._connected.is_set():
            self._publish_heartbeat(heartbeat.model_dump_json(by_alias=True).encode("utf-8"))
        else:
            self._outbox.put_heartbeat(heartbeat)  # the newest goes out first after reconnecting

    def _send_stored_heartbeat(self) -> None:
        stored = self._outbox.latest_heartbeat()
        if stored is not None and stored.payload is not None:
            self._publish_heartbeat(stored.payload)
            self._outbox.ack(ItemKind.HEARTBEAT, stored.ref)

    def _publish_heartbeat(self, payload: bytes) -> None:
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, int(2 * self._config.heartbeat_interval_s))
        heartbeat_topic = topic(self._config.device_id, Channel.HEARTBEAT)
        self._client.publish(heartbeat_topic, payload, qos=0, properties=properties)
        self.stats.heartbeats += 1

    @property
    def _status_topic(self) -> str:
        return topic(self._config.device_id, Channel.STATUS)

    def _status(self, state: DeviceState) -> bytes:
        status = StatusV1(device_id=self._config.device_id, state=state, ts=datetime.now(UTC))
        return status.model_dump_json(by_alias=True).encode("utf-8")

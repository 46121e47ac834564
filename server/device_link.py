"""Messages from the server to devices: desired config (retained) and commands, over MQTT.

The web process publishes through a :class:`DevicePublisher`; :class:`MqttDevicePublisher` is the
real one (QoS 1, waits for the broker's PUBACK, so a route returns only once the broker has the
message). Tests and the demo may pass any object with the same ``publish`` method.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from curbwatch.server.settings import ServerSettings

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0


class DeviceLinkError(Exception):
    """A message could not be handed to the broker."""


class DevicePublisher(Protocol):
    """Hands one message for a device to the broker."""

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1; returns once the broker has it, raises :class:`DeviceLinkError` if not."""
        ...


class MqttDevicePublisher:
    """A paho client connected on first use and kept; thread-safe for the web server's workers."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()

    def _connected(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt

        if self._client is not None and self._client.is_connected():
            return self._client
        settings = self._settings
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"curbwatch-web-{settings.worker_name}-{threading.get_ident()}",
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            client.username_pw_set(settings.mqtt_username, password)
        if settings.mqtt_tls:
            client.tls_set()
        try:
            client.connect(settings.mqtt_host, settings.mqtt_port, keepalive=30)
        except OSError as exc:
            raise DeviceLinkError(
                f"broker {settings.mqtt_host}:{settings.mqtt_port} unreachable: {exc}"
            ) from exc
        client.loop_start()
        if self._client is not None:
            self._client.loop_stop()
        self._client = client
        return client

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        with self._lock:
            client = self._connected()
            info = client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:
            raise DeviceLinkError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise DeviceLinkError(f"broker did not acknowledge {topic} within {PUBLISH_TIMEOUT_S} s")
        logger.info("published %d bytes to %s (retain=%s)", len(payload), topic, retain)

    def close(self) -> None:
        """Disconnect; the next publish reconnects."""
        with self._lock:
            if self._client is not None:
                self._client.disconnect()
                self._client.loop_stop()
                self._client = None

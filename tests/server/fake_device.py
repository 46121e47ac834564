"""A test stand-in for an edge box: publishes at QoS 1 and collects the server's AckV1s."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from curbwatch.schema.protocol import AckStatus, AckV1, Channel, topic


class FakeDevice:
    """Publishes raw payloads on a device's topics and records every ack item it receives."""

    def __init__(self, device_id: str, port: int) -> None:
        self.device_id = device_id
        self.port = port
        self.acks: dict[str, list[AckStatus]] = defaultdict(list)
        self.reasons: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-device-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic(device_id, Channel.ACK), qos=1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_message
        self._client.max_queued_messages_set(0)
        self._client.max_inflight_messages_set(1000)  # a bursting device, not a trickle
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("fake device could not subscribe to its ack topic")

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        ack = AckV1.model_validate_json(message.payload)
        with self._lock:
            for item in ack.items:
                self.acks[item.id].append(item.status)
                self.reasons[item.id] = item.reason

    def publish(self, channel: Channel, payload: bytes, *suffix: str) -> None:
        self._client.publish(topic(self.device_id, channel, *suffix), payload, qos=1)

    def acked(self) -> set[str]:
        with self._lock:
            return set(self.acks)

    def wait_acks(self, ids: set[str], timeout_s: float) -> set[str]:
        """Waits until every id has an ack; returns the ids still missing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            missing = ids - self.acked()
            if not missing:
                return set()
            time.sleep(0.05)
        return ids - self.acked()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

"""A test stand-in for an edge box: publishes at QoS 1 and collects the server's AckV1s.

With ``resend_after_s`` it keeps its events and evidence the way the real edge's outbox does
(``edge/publisher.py``): at most ``window`` unacknowledged at once, each re-sent with the same bytes
until the server's AckV1 for it arrives. Delivery is end to end, so a test that kills the server
or the broker needs this; without it the device publishes once, which suits tests that count
exactly what the server received.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from curbwatch.schema.protocol import AckStatus, AckV1, Channel, topic

RESEND_TICK_S = 0.1


@dataclass
class _Unacked:
    topic: str
    payload: bytes
    sent_at: float = 0.0


class FakeDevice:
    """Publishes raw payloads on a device's topics and records every ack item it receives.

    Args:
        device_id: The device the topics name.
        port: Broker port on 127.0.0.1.
        resend_after_s: Re-send an event or evidence message not acknowledged this long after
            it was sent; None publishes each message once.
        window: With ``resend_after_s``, how many messages may await their ack at once.
    """

    def __init__(
        self, device_id: str, port: int, *, resend_after_s: float | None = None, window: int = 1000
    ) -> None:
        self.device_id = device_id
        self.port = port
        self.acks: dict[str, list[AckStatus]] = defaultdict(list)
        self.reasons: dict[str, str | None] = {}
        self.resent = 0  # copies sent again because their ack was late
        self._resend_after_s = resend_after_s
        self._window = window
        self._waiting: deque[str] = deque()  # outbox order, not yet sent
        self._unacked: dict[str, _Unacked] = {}  # queued or in flight, by message id or sha256
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closing = threading.Event()
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
            self.close()
            raise RuntimeError("fake device could not subscribe to its ack topic")
        self._sender = threading.Thread(target=self._send_loop, name="fake-device-outbox", daemon=True)
        if resend_after_s is not None:
            self._sender.start()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        ack = AckV1.model_validate_json(message.payload)
        with self._lock:
            for item in ack.items:
                self.acks[item.id].append(item.status)
                self.reasons[item.id] = item.reason
                self._unacked.pop(item.id, None)  # any verdict ends the outbox entry, as on the edge
                self._in_flight.discard(item.id)

    def publish(self, channel: Channel, payload: bytes, *suffix: str) -> None:
        """Send once, or with ``resend_after_s`` queue events and evidence until acknowledged."""
        name = topic(self.device_id, channel, *suffix)
        item_id = _item_id(channel, payload, suffix)
        if self._resend_after_s is None or item_id is None:
            self._client.publish(name, payload, qos=1)
            return
        with self._lock:
            if item_id not in self._unacked:
                self._unacked[item_id] = _Unacked(name, payload)
                self._waiting.append(item_id)

    def _send_loop(self) -> None:
        assert self._resend_after_s is not None
        while not self._closing.wait(RESEND_TICK_S):
            now = time.monotonic()
            with self._lock:
                late = [i for i in self._in_flight if now - self._unacked[i].sent_at > self._resend_after_s]
                self.resent += len(late)
                while self._waiting and len(self._in_flight) < self._window:
                    item_id = self._waiting.popleft()
                    if item_id in self._unacked:  # an ack may have beaten its first send
                        self._in_flight.add(item_id)
                        late.append(item_id)
                sends = [(i, self._unacked[i]) for i in late]
            for _item_id, item in sends:
                item.sent_at = now
                self._client.publish(item.topic, item.payload, qos=1)  # the same bytes every time

    def unacked(self) -> int:
        """Messages queued or in flight that no ack has answered yet."""
        with self._lock:
            return len(self._unacked)

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
        self._closing.set()
        if self._sender.is_alive():
            self._sender.join(5)
        self._client.disconnect()
        self._client.loop_stop()


def _item_id(channel: Channel, payload: bytes, suffix: tuple[str, ...]) -> str | None:
    """The id the server's ack will carry: an event's message_id or the evidence sha256."""
    if channel is Channel.EVIDENCE:
        return suffix[0] if suffix else None
    if channel is not Channel.EVENT:
        return None
    try:
        message_id = json.loads(payload).get("message_id")
    except (ValueError, AttributeError):
        return None
    return message_id if isinstance(message_id, str) else None

"""MQTT machinery of ``tools.bench_delivery``: a private Mosquitto, ingest worker processes, a timing
publisher, a raw subscriber process and a many-device reconnect storm driven from a few threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import selectors
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from curbwatch.schema.events import example_event_document
from curbwatch.schema.protocol import AckStatus, Channel, EnvelopeV1, topic

HOST = "127.0.0.1"
PUBLISHER_INFLIGHT = 1000
STORM_THREADS = 4
CONNECTED = (AckStatus.STORED.value, AckStatus.DUPLICATE.value)


@dataclass(frozen=True)
class Device:
    device_id: str
    key: bytes


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    message_id: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def mosquitto_version() -> str:
    """``mosquitto version 2.0.11`` as the binary reports it."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    output = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
    return (
        output.splitlines()[0].strip().replace("mosquitto version", "Mosquitto") if output else "Mosquitto ?"
    )


def broker_config(port: int) -> str:
    """The private broker's tuning: no persistence, no connection cap, unbounded per-client queues
    (a storm parks 100,000 messages for the ingest worker), a 1,000-message in-flight window."""
    return "\n".join(
        [
            f"listener {port} {HOST}",
            "allow_anonymous true",
            "persistence false",
            "max_connections -1",
            f"max_inflight_messages {PUBLISHER_INFLIGHT}",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
    )


@contextlib.contextmanager
def private_mosquitto(folder: Path, port: int) -> Iterator[int]:
    """A Mosquitto of our own on ``port`` (never the system one); killed on exit."""
    config = folder / f"mosquitto-{port}.conf"
    config.write_text(broker_config(port) + "\n", encoding="utf-8")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with (folder / f"mosquitto-{port}.log").open("wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on {port}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


EVENTS_PER_EPISODE = 3


def signed_event(device: Device, seq: int, sent_at: datetime) -> Message:
    """A signed envelope around a valid ``curbwatch.event.v1`` document.

    Every ``EVENTS_PER_EPISODE`` consecutive events of a device are one episode at a camera of its
    own, as a start and its updates: the server opens one case per episode and folds the rest into it.
    """
    event_id = uuid.uuid4().hex
    episode = (seq - 1) // EVENTS_PER_EPISODE
    document = example_event_document(
        event_id=event_id,
        device_id=device.device_id,
        camera_id=f"cam-{episode}",
        episode_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{device.device_id}/{episode}").hex,
        type="start" if (seq - 1) % EVENTS_PER_EPISODE == 0 else "update",
    )
    envelope = EnvelopeV1.signed(
        device_id=device.device_id,
        seq=seq,
        message_id=event_id,
        sent_at=sent_at,
        payload=document,
        key=device.key,
    )
    return Message(topic(device.device_id, Channel.EVENT), envelope.to_bytes(), event_id)


def build_envelopes(devices: list[Device], per_device: int) -> list[Message]:
    """``per_device`` events per device, seq 1.., interleaved across devices as they would arrive."""
    now = datetime.now(UTC)
    return [signed_event(device, seq, now) for seq in range(1, per_device + 1) for device in devices]


def _ingest_process(overrides: dict[str, Any], ready: EventType, stop: EventType) -> None:
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.ingest import IngestWorker
    from curbwatch.server.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings(**overrides)
    engine = make_engine(settings.database_url)
    worker = IngestWorker(settings, make_session_factory(engine))
    worker.start()
    try:
        if worker.wait_subscribed(30):
            ready.set()
        stop.wait()
    finally:
        worker.stop()
        engine.dispose()


@contextlib.contextmanager
def ingest_workers(overrides: dict[str, Any], names: list[str]) -> Iterator[None]:
    """Ingest workers (one process each) in the ``bench`` share group until the block ends."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    started = []
    try:
        for name in names:
            ready = ctx.Event()
            settings = {**overrides, "share_group": "bench", "worker_name": f"bench-{name}"}
            process = ctx.Process(target=_ingest_process, args=(settings, ready, stop), daemon=True)
            process.start()
            started.append((process, ready))
        for process, ready in started:
            if not ready.wait(60):
                raise RuntimeError(f"ingest worker {process.name} did not subscribe")
        yield
    finally:
        stop.set()
        for process, _ in started:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)


class AckingPublisher:
    """One MQTT 5 client that publishes at QoS 1 and times the AckV1 items for any device."""

    def __init__(self, port: int) -> None:
        self.acked: dict[str, float] = {}  # message id -> arrival time (time.time())
        self.last_ack = 0.0
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self._client.max_inflight_messages_set(PUBLISHER_INFLIGHT)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = lambda c, *_: c.subscribe(f"curbwatch/v1/+/{Channel.ACK.value}", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(HOST, port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError("bench publisher could not subscribe to the ack topics")

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        for item in json.loads(message.payload)["items"]:
            if item["status"] in CONNECTED:
                self.acked.setdefault(item["id"], now)
        self.last_ack = now

    def publish(self, topic_: str, payload: bytes) -> None:
        self._client.publish(topic_, payload, qos=1)

    def acked_count(self) -> int:
        return len(self.acked)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> AckingPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def raw_consumer(
    port: int, topic_: str, count: int, ready: EventType, received: Synchronized, last: Synchronized
) -> None:
    """Subscriber process of the raw measurement: counts messages and notes the last arrival."""
    done = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, _message: mqtt.MQTTMessage) -> None:
        received.value += 1
        last.value = time.time()
        if received.value >= count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-sub", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(topic_, qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = on_message
    client.connect(HOST, port)
    client.loop_start()
    done.wait(600)
    client.disconnect()
    client.loop_stop()


class _StormDevice:
    """One simulated edge box: on connect it subscribes to its acks and flushes its whole outbox."""

    def __init__(self, outbox: list[Message], shard: _StormShard) -> None:
        self.outbox = outbox
        self.shard = shard
        self.acked: set[str] = set()
        self.device_id = outbox[0].topic.split("/")[2]
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"storm-{self.device_id}", protocol=mqtt.MQTTv311
        )
        self.client.max_inflight_messages_set(len(outbox))  # a reconnecting box flushes at once
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        client.subscribe(topic(self.device_id, Channel.ACK), qos=1)
        for message in self.outbox:
            client.publish(message.topic, message.payload, qos=1)
        self.shard.on_connected()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        before = len(self.acked)
        self.acked.update(i["id"] for i in json.loads(message.payload)["items"] if i["status"] in CONNECTED)
        self.shard.on_acked(len(self.acked) - before)


class _StormShard(threading.Thread):
    """Drives many paho clients from one thread with a selector (no thread per client)."""

    def __init__(self, port: int, outboxes: list[list[Message]]) -> None:
        super().__init__(name="storm-shard", daemon=True)
        self.port = port
        self.devices = [_StormDevice(outbox, self) for outbox in outboxes]
        self.total = sum(len(outbox) for outbox in outboxes)
        self.connected = self.acked = self.lost = 0
        self.connected_at = self.acked_at = 0.0
        self.stopping = threading.Event()

    def on_connected(self) -> None:
        self.connected += 1
        if self.connected == len(self.devices):
            self.connected_at = time.monotonic()

    def on_acked(self, count: int) -> None:
        self.acked += count
        if count and self.acked == self.total:
            self.acked_at = time.monotonic()

    def _connect(self, selector: selectors.BaseSelector, device: _StormDevice) -> None:
        for attempt in range(5):
            try:
                device.client.connect(HOST, self.port, keepalive=300)
                break
            except OSError:
                time.sleep(0.2 * (attempt + 1))
        else:
            self.lost += 1
            return
        sock = device.client.socket()
        assert isinstance(sock, socket.socket)
        selector.register(sock.fileno(), selectors.EVENT_READ, device)

    def _service(self, selector: selectors.BaseSelector, key: selectors.SelectorKey, mask: int) -> None:
        client: mqtt.Client = key.data.client
        rc = client.loop_read() if mask & selectors.EVENT_READ else mqtt.MQTT_ERR_SUCCESS
        if rc == mqtt.MQTT_ERR_SUCCESS and client.want_write():
            rc = client.loop_write()  # callbacks queue packets without writing them
        if rc != mqtt.MQTT_ERR_SUCCESS or client.socket() is None:
            selector.unregister(key.fd)
            self.lost += 1
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        if wanted != key.events:
            selector.modify(key.fd, wanted, key.data)

    def run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for device in self.devices:
                self._connect(selector, device)
            next_misc = time.monotonic() + 1
            while not self.stopping.is_set():
                for key, mask in selector.select(0.05):
                    self._service(selector, key, mask)
                if time.monotonic() > next_misc:  # keepalive pings
                    next_misc += 1
                    for device in self.devices:
                        device.client.loop_misc()
            for device in self.devices:
                device.client.disconnect()


class StormRun:
    """A running storm: counts and timings read while the shards work."""

    def __init__(self, shards: list[_StormShard], started: float) -> None:
        self.shards = shards
        self.started = started

    def acked_count(self) -> int:
        return sum(shard.acked for shard in self.shards)

    def lost(self) -> int:
        return sum(shard.lost for shard in self.shards)

    @property
    def connected_s(self) -> float:
        """Seconds until every device had its CONNACK (nan if some never did)."""
        times = [shard.connected_at for shard in self.shards]
        return max(times) - self.started if all(times) else float("nan")

    @property
    def acked_s(self) -> float:
        """Seconds until every event's AckV1 was back at its device (nan if some never were)."""
        times = [shard.acked_at for shard in self.shards]
        return max(times) - self.started if all(times) else float("nan")


@contextlib.contextmanager
def run_storm(port: int, outboxes: list[list[Message]], threads: int = STORM_THREADS) -> Iterator[StormRun]:
    """Every device connects at once (``threads`` shards in parallel) and flushes its outbox."""
    shards = [_StormShard(port, outboxes[n::threads]) for n in range(threads) if outboxes[n::threads]]
    started = time.monotonic()
    for shard in shards:
        shard.start()
    try:
        yield StormRun(shards, started)
    finally:
        for shard in shards:
            shard.stopping.set()
        for shard in shards:
            shard.join(30)

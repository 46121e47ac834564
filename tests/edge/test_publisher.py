"""The publisher against a real (private) Mosquitto and a fake server that stores and acks.

The fake server does what the real ingest will: it subscribes with a persistent session and
manual acks, verifies signatures and evidence hashes, stores each message once by its id, and
publishes an AckV1 after "committing".
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from curbwatch.edge.outbox import Outbox
from curbwatch.edge.publisher import DeviceMetrics, Publisher, PublisherConfig
from curbwatch.schema.events import EventV1
from curbwatch.schema.protocol import (
    AckItemV1,
    AckStatus,
    AckV1,
    Channel,
    EnvelopeV1,
    HeartbeatV1,
    StatusV1,
    parse_topic,
    subscription,
    topic,
    verify,
)
from tests.conftest import REPO_ROOT
from tests.edge.test_outbox import DEVICE, KEY, make_event, make_image, open_outbox
from tests.mqtt_broker import Broker, private_mosquitto

pytestmark = pytest.mark.timeout(120)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def edge_config(broker: Broker, **overrides: object) -> PublisherConfig:
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "device_id": DEVICE,
        "device_key": KEY.hex(),
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "rate_limit_msgs_s": 100_000,
        "max_in_flight": 64,
        "ack_timeout_s": 3.0,
        "heartbeat_interval_s": 3600,
    }
    return PublisherConfig.model_validate({**values, **overrides})


def mqtt_client(name: str, protocol: int = mqtt.MQTTv311, **kwargs: object) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol, **kwargs)  # type: ignore[arg-type]


class FakeServer:
    """Stores events and images once by id (like the real server's unique keys) and acks after."""

    def __init__(self, broker: Broker, reject: frozenset[str] = frozenset()) -> None:
        self.events: dict[str, EnvelopeV1] = {}
        self.images: dict[str, bytes] = {}
        self.deliveries = 0
        self.missing_evidence_on_arrival = 0
        self._seqs: dict[int, str] = {}
        self._reject = reject
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt_client("fake-server", clean_session=False, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "fake server did not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(subscription(Channel.EVENT), 1), (subscription(Channel.EVIDENCE), 1)])

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        device, channel, sha = parse_topic(message.topic)
        with self._lock:
            self.deliveries += 1
            if channel is Channel.EVIDENCE:
                item = self._store_image(str(sha), message.payload)
            else:
                item = self._store_event(message.payload)
        client.publish(topic(device, Channel.ACK), AckV1(items=[item]).model_dump_json(by_alias=True), qos=1)
        client.ack(message.mid, message.qos)  # only now: a crash before this means redelivery

    def _store_image(self, sha: str, data: bytes) -> AckItemV1:
        if hashlib.sha256(data).hexdigest() != sha:
            return AckItemV1(kind="evidence", id=sha, status=AckStatus.REJECTED, reason="hash")
        status = AckStatus.DUPLICATE if sha in self.images else AckStatus.STORED
        self.images[sha] = data
        return AckItemV1(kind="evidence", id=sha, status=status)

    def _store_event(self, data: bytes) -> AckItemV1:
        document = json.loads(data)
        envelope = EnvelopeV1.model_validate(document)
        message_id = envelope.message_id
        if not verify(document, KEY) or message_id in self._reject:
            return AckItemV1(kind="event", id=message_id, status=AckStatus.REJECTED, reason="test")
        if self._seqs.setdefault(envelope.seq, message_id) != message_id:
            return AckItemV1(kind="event", id=message_id, status=AckStatus.REJECTED, reason="replayed seq")
        if message_id in self.events:
            return AckItemV1(kind="event", id=message_id, status=AckStatus.DUPLICATE)
        event = EventV1.model_validate(envelope.payload)
        self.missing_evidence_on_arrival += sum(ref.sha256 not in self.images for ref in event.evidence)
        self.events[message_id] = envelope
        return AckItemV1(kind="event", id=message_id, status=AckStatus.STORED)

    def stored_count(self) -> int:
        with self._lock:
            return len(self.events)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with private_mosquitto(tmp_path) as running:
        yield running


@pytest.fixture
def server(broker: Broker) -> Iterator[FakeServer]:
    fake = FakeServer(broker)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with open_outbox(tmp_path / "outbox.db") as box:
        yield box


def running(publisher: Publisher) -> Publisher:
    publisher.start()
    assert wait_until(lambda: publisher.connected), "publisher did not connect"
    return publisher


def put_events(outbox: Outbox, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        event = make_event()
        outbox.put_event(event, [])
        ids.append(event.event_id)
    return ids


def assert_delivered_once(server: FakeServer, ids: list[str]) -> None:
    with server._lock:
        assert set(server.events) == set(ids)
        seqs = sorted(envelope.seq for envelope in server.events.values())
    assert seqs == list(range(1, len(ids) + 1)), "seq must be contiguous"


def test_events_and_evidence_arrive_once_with_evidence_first(
    tmp_path: Path, broker: Broker, server: FakeServer, outbox: Outbox
) -> None:
    ids = []
    for n in range(20):
        refs = [make_image(tmp_path, f"cam-1/{n}-{role}.jpg", size=50_000) for role in ("clean", "crop")]
        event = make_event(evidence=refs)
        outbox.put_event(event, [(ref.sha256, tmp_path / ref.path) for ref in refs])
        ids.append(event.event_id)
    publisher = running(Publisher(edge_config(broker, max_in_flight=8), outbox))
    try:
        assert publisher.flush(timeout_s=30)
    finally:
        publisher.stop()
    assert_delivered_once(server, ids)
    assert len(server.images) == 40 and server.missing_evidence_on_arrival == 0
    assert publisher.stats.acked == 60 and publisher.stats.rejected == 0
    assert outbox.bytes_used() == 0


def test_rejected_ack_deletes_and_counts(broker: Broker, outbox: Outbox) -> None:
    ids = put_events(outbox, 5)
    fake = FakeServer(broker, reject=frozenset({ids[2]}))
    publisher = running(Publisher(edge_config(broker), outbox))
    try:
        assert publisher.flush(timeout_s=15)
    finally:
        publisher.stop()
        fake.close()
    assert set(fake.events) == set(ids) - {ids[2]}
    assert (publisher.stats.rejected, publisher.stats.acked) == (1, 4)


def test_acks_for_unknown_ids_and_malformed_acks_are_ignored(broker: Broker, outbox: Outbox) -> None:
    ids = put_events(outbox, 2)
    publisher = running(Publisher(edge_config(broker), outbox))
    other = mqtt_client("other")
    other.connect(broker.host, broker.port)
    other.loop_start()
    try:
        ack_topic = topic(DEVICE, Channel.ACK)
        unknown = AckV1(items=[AckItemV1(kind="event", id=uuid.uuid4().hex, status=AckStatus.STORED)])
        other.publish(ack_topic, unknown.model_dump_json(by_alias=True), qos=1)
        other.publish(ack_topic, b"not json", qos=1)
        wrong_kind = AckV1(items=[AckItemV1(kind="evidence", id="0" * 64, status=AckStatus.REJECTED)])
        other.publish(ack_topic, wrong_kind.model_dump_json(by_alias=True), qos=1)
        assert wait_until(lambda: publisher.stats.unknown_acks == 2 and publisher.stats.bad_acks == 1)
        assert outbox.depth() == 2 and publisher.stats.rejected == 0
        known = AckV1(items=[AckItemV1(kind="event", id=ids[0], status=AckStatus.DUPLICATE)])
        other.publish(ack_topic, known.model_dump_json(by_alias=True), qos=1)
        assert wait_until(lambda: outbox.depth() == 1)
    finally:
        publisher.stop()
        other.disconnect()
        other.loop_stop()


@pytest.mark.parametrize(("protocol", "paho_protocol"), [("3.1.1", mqtt.MQTTv311), ("5", mqtt.MQTTv5)])
def test_heartbeat_is_qos0_with_metrics(
    broker: Broker, outbox: Outbox, protocol: str, paho_protocol: int
) -> None:
    put_events(outbox, 3)  # nobody acks them, so the heartbeat reports them
    received: list[mqtt.MQTTMessage] = []
    watcher = mqtt_client("watcher", protocol=paho_protocol)
    watcher.on_message = lambda _c, _u, message: received.append(message)
    watcher.connect(broker.host, broker.port)
    watcher.subscribe(topic(DEVICE, Channel.HEARTBEAT), qos=1)
    watcher.loop_start()
    metrics = DeviceMetrics(disk_free_bytes=123, model_version="m1", config_version="c7")
    config = edge_config(broker, heartbeat_interval_s=0.3, protocol=protocol)
    publisher = running(Publisher(config, outbox, metrics_provider=lambda: metrics))
    try:
        assert wait_until(lambda: len(received) >= 2, timeout_s=10)
    finally:
        publisher.stop()
        watcher.disconnect()
        watcher.loop_stop()
    message = received[-1]
    assert message.qos == 0  # QoS 1 subscription, QoS 0 publish: delivered at 0
    heartbeat = HeartbeatV1.model_validate_json(message.payload)
    assert (heartbeat.outbox_depth, heartbeat.disk_free_bytes, heartbeat.config_version) == (3, 123, "c7")
    if protocol == "5":
        assert message.properties is not None and message.properties.MessageExpiryInterval <= 1


def test_extra_subscriptions_reach_their_handler_not_the_ack_path(broker: Broker, outbox: Outbox) -> None:
    got: list[tuple[str, bytes]] = []
    publisher = Publisher(edge_config(broker), outbox)
    desired = topic(DEVICE, Channel.CONFIG_DESIRED)
    publisher.subscribe(desired, lambda name, payload: got.append((name, payload)))
    running(publisher)
    try:
        publisher.publish(desired, b"{}", qos=1, retain=True)
        assert wait_until(lambda: got == [(desired, b"{}")], timeout_s=5)
        assert publisher.stats.bad_acks == 0
    finally:
        publisher.stop()


def read_status(broker: Broker) -> StatusV1 | None:
    """The retained status, as a fresh subscriber sees it."""
    seen: list[bytes] = []
    client = mqtt_client(f"probe-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda _c, _u, message: seen.append(message.payload)
    client.connect(broker.host, broker.port)
    client.subscribe(topic(DEVICE, Channel.STATUS), qos=1)
    client.loop_start()
    try:
        wait_until(lambda: bool(seen), timeout_s=2)
    finally:
        client.disconnect()
        client.loop_stop()
    return StatusV1.model_validate_json(seen[-1]) if seen else None


def test_graceful_stop_says_offline(broker: Broker, outbox: Outbox) -> None:
    publisher = running(Publisher(edge_config(broker), outbox))
    assert wait_until(lambda: (s := read_status(broker)) is not None and s.state == "online", timeout_s=5)
    publisher.stop()
    status = read_status(broker)
    assert status is not None and status.state == "offline"


# -- fault injection: child processes and broker restarts --------------------------------------

CHILD = """
import sys, time
from pathlib import Path
from tests.edge.test_publisher import run_child
run_child(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
"""


def run_child(db: Path, port: int, rate: float) -> None:
    """An edge process: publishes the outbox until it is killed."""
    outbox = open_outbox(db)
    config = PublisherConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "device_id": DEVICE, "device_key": KEY.hex(),
         "rate_limit_msgs_s": rate, "reconnect_min_s": 0.1, "heartbeat_interval_s": 3600}
    )  # fmt: skip
    Publisher(config, outbox).start()
    while True:
        time.sleep(1)


def start_child(db: Path, broker: Broker, rate: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(broker.port), str(rate)], cwd=REPO_ROOT
    )


@pytest.mark.slow
def test_last_will_says_offline_when_the_edge_dies(tmp_path: Path, broker: Broker) -> None:
    open_outbox(tmp_path / "o.db").close()
    child = start_child(tmp_path / "o.db", broker, rate=100)
    try:
        assert wait_until(
            lambda: (s := read_status(broker)) is not None and s.state == "online", timeout_s=20
        )
    finally:
        child.kill()
        child.wait(timeout=10)
    assert wait_until(lambda: (s := read_status(broker)) is not None and s.state == "offline", timeout_s=10)


@pytest.mark.slow
def test_edge_sigkilled_mid_stream_then_restarted_delivers_all_once(
    tmp_path: Path, broker: Broker, server: FakeServer
) -> None:
    db = tmp_path / "o.db"
    with open_outbox(db) as outbox:
        ids = put_events(outbox, 1000)
    child = start_child(db, broker, rate=400)
    try:
        assert wait_until(lambda: server.stored_count() >= 200, timeout_s=30)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert server.stored_count() < 1000, "the kill came too late to test anything"
    with open_outbox(db) as outbox:
        assert 0 < outbox.depth() < 1000
        publisher = running(Publisher(edge_config(broker), outbox))
        try:
            assert publisher.flush(timeout_s=60)
        finally:
            publisher.stop()
    assert_delivered_once(server, ids)


@pytest.mark.slow
@pytest.mark.parametrize("kill_broker", [False, True])
def test_broker_restart_while_events_flow_loses_nothing(
    broker: Broker, server: FakeServer, outbox: Outbox, kill_broker: bool
) -> None:
    ids: list[str] = []
    producer = threading.Thread(target=lambda: ids.extend(put_events(outbox, 1000)))
    publisher = running(Publisher(edge_config(broker), outbox))
    started = time.monotonic()
    producer.start()
    try:
        assert wait_until(lambda: server.stored_count() >= 300, timeout_s=30)
        broker.stop(kill=kill_broker)
        time.sleep(0.5)
        broker.start()
        producer.join(timeout=60)
        assert publisher.flush(timeout_s=60)
    finally:
        producer.join(timeout=60)
        publisher.stop()
    elapsed = time.monotonic() - started
    assert_delivered_once(server, ids)
    assert publisher.stats.connects >= 2
    print(f"\n1000 events with a broker restart: {elapsed:.1f} s, {server.deliveries} deliveries")


@pytest.mark.slow
def test_throughput(broker: Broker, server: FakeServer, outbox: Outbox) -> None:
    ids = put_events(outbox, 2000)
    publisher = running(Publisher(edge_config(broker), outbox))
    started = time.monotonic()
    try:
        assert publisher.flush(timeout_s=60)
    finally:
        publisher.stop()
    rate = len(ids) / (time.monotonic() - started)
    assert_delivered_once(server, ids)
    print(f"\nthroughput: {rate:.0f} events/s end to end (publish, store, ack, delete)")
    assert rate > 50

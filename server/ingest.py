"""Ingest worker: MQTT in, database commit, then ``AckV1`` to the device, then PUBACK to the broker.

The worker subscribes with a fixed client id, a persistent session and ``manual_ack``, through a
shared subscription so several workers split the load. Messages are stored in batches (one
transaction per ``batch_max`` messages or ``batch_wait_ms``), and nothing is acknowledged before
its batch commits: a crash before the commit means the broker redelivers, never that it is lost.

Run one with ``python -m curbwatch.server.ingest`` (settings from ``CURBWATCH_*``) or
``curbwatch server ingest``.
"""

from __future__ import annotations

import logging
import queue
import signal
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.protocol import AckItemV1, AckV1, Channel, subscription, topic
from curbwatch.schema.yamlio import ConfigError
from curbwatch.server.config import load_case_config
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import DeviceUpdates, MessageHandler, Outcome, ReceivedMessage, RejectReason
from curbwatch.server.settings import ServerSettings

logger = logging.getLogger(__name__)

INGESTED_CHANNELS = (
    Channel.EVENT,
    Channel.EVIDENCE,
    Channel.STATUS,
    Channel.HEARTBEAT,
    Channel.CONFIG_REPORTED,
    Channel.COMMAND_RESULT,
    Channel.SAMPLE,
)
ACK_ITEMS_PER_MESSAGE = 200  # keeps an AckV1 far below the broker's packet limit
ACK_PUBLISH_WAIT_S = 0.5
ACK_INFLIGHT = 100
MAX_STORE_ATTEMPTS = 5  # for a message the database refuses (not: database unreachable)


class IngestError(Exception):
    """The ingest worker cannot run."""


class _StopRequested(Exception):
    """Raised inside a retry loop when the worker is stopping; the batch stays unacknowledged."""


@dataclass(frozen=True)
class _Inbound:
    message: ReceivedMessage
    mid: int
    qos: int
    generation: int  # connection the message came on; a PUBACK on a later connection is meaningless


class IngestWorker:
    """One ingest worker process' MQTT consumer and database writer.

    Args:
        settings: Broker, share group, client id, batching and the city configuration file.
        session_factory: Makes database sessions; migrations must have run.

    Raises:
        IngestError: The city configuration (``settings.case_config``) is unreadable or invalid.

    Example:
        >>> worker = IngestWorker(get_settings(), make_session_factory(make_engine(url)))
        >>> worker.start(); worker.wait_subscribed(10); ...; worker.stop()
    """

    def __init__(self, settings: ServerSettings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        try:
            config = load_case_config(settings.case_config)
        except ConfigError as exc:
            raise IngestError(f"case configuration {settings.case_config}: {exc}") from exc
        self.handler = MessageHandler(
            EvidenceStore(settings.evidence_dir), config, max_payload_bytes=settings.max_payload_bytes
        )
        self.counters: Counter[str] = Counter()  # stored, duplicate, recorded and each reject reason
        self.batches = 0
        # Unbounded on purpose: the broker's receive-maximum window bounds it, and a blocking put
        # would stall paho's network thread, which must stay free to read the PUBACKs of our acks.
        self._inbox: queue.Queue[_Inbound] = queue.Queue()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._generation = 0
        self._thread = threading.Thread(target=self._run, name=f"ingest-{settings.worker_name}", daemon=True)
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        settings = self.settings
        v5 = settings.mqtt_protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,  # 3.1.1: keep the session across restarts
            manual_ack=True,
        )
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            client.username_pw_set(settings.mqtt_username, password)
        if settings.mqtt_tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(ACK_INFLIGHT)  # acks of a whole batch go out at once
        return client

    def start(self) -> None:
        """Connect (in the background) and start the writer thread."""
        properties = None
        if self.settings.mqtt_protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.settings.session_expiry_s
            properties.ReceiveMaximum = self.settings.receive_maximum
        self._client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=30,
            clean_start=False if self.settings.mqtt_protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        self._thread.start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the subscriptions were granted within ``timeout_s``."""
        return self._subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand, then disconnect; the broker keeps the session."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    def run_until_stopped(self) -> None:
        """Run until :meth:`stop` or SIGTERM/SIGINT (for the command line)."""

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("signal %s: stopping after the current batch", signum)
            self._stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.start()
        while not self._stop.wait(1.0):
            pass
        self.stop()
        logger.info("stopped: %s", dict(self.counters))

    # -- broker callbacks (paho's network thread) --------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error("broker refused the connection: %s", reason_code)
            return
        self._generation += 1
        logger.info("connected as %s (session present: %s)", self.settings.client_id, flags.session_present)
        group = self.settings.share_group
        filters = [subscription(channel, share_group=group) for channel in INGESTED_CHANNELS]
        if self.settings.mqtt_protocol == "5":
            client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        else:
            client.subscribe([(f, 1) for f in filters])

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        failed = [code for code in reason_codes if code.is_failure]
        if failed:
            logger.error("subscriptions refused: %s", failed)
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not self._stop.is_set():
            logger.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        received = ReceivedMessage(message.topic, message.payload, datetime.now(UTC))
        self._inbox.put(_Inbound(received, message.mid, message.qos, self._generation))

    # -- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if not batch:
                continue
            try:
                outcomes = self._store(batch)
            except _StopRequested:
                logger.info("stopping with %s messages unacknowledged; the broker will redeliver", len(batch))
                return
            self._acknowledge(batch, outcomes)

    def _collect(self) -> list[_Inbound]:
        try:
            batch = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        while len(batch) < self.settings.batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _transaction(self, batch: list[_Inbound]) -> list[Outcome]:
        updates = DeviceUpdates()
        with self.session_factory() as session, session.begin():
            outcomes = self.handler.handle_batch(session, [item.message for item in batch], updates)
            updates.apply(session)
        return outcomes

    def _store(self, batch: list[_Inbound]) -> list[Outcome]:
        try:
            return self._transaction(batch)
        except SQLAlchemyError as exc:
            # Typically a unique-key race with another worker (the row is there now) or a deadlock;
            # one message per transaction isolates whatever caused it.
            logger.warning("batch of %s failed (%s); storing one by one", len(batch), type(exc).__name__)
        return [self._store_one(item) for item in batch]

    def _store_one(self, item: _Inbound) -> Outcome:
        delay_s, refusals = 0.05, 0
        while True:
            if self._stop.is_set():
                raise _StopRequested
            try:
                return self._transaction([item])[0]
            except OperationalError as exc:
                logger.warning("database unavailable (%s); retrying in %.2f s", exc.orig, delay_s)
            except SQLAlchemyError as exc:
                refusals += 1
                if refusals >= MAX_STORE_ATTEMPTS:
                    return self._give_up(item, exc)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)

    def _give_up(self, item: _Inbound, exc: SQLAlchemyError) -> Outcome:
        logger.error("database refuses %s: %s", item.message.topic, exc)
        with self.session_factory() as session, session.begin():
            return self.handler.dead_letter(session, item.message, RejectReason.INTERNAL_ERROR, str(exc))

    def _acknowledge(self, batch: list[_Inbound], outcomes: list[Outcome]) -> None:
        self.batches += 1
        acks: dict[str, list[AckItemV1]] = {}
        for outcome in outcomes:
            self.counters[outcome.counter_key] += 1
            if outcome.ack is not None and outcome.device_id is not None:
                acks.setdefault(outcome.device_id, []).append(outcome.ack)
        published = []
        for device_id, items in acks.items():
            for start in range(0, len(items), ACK_ITEMS_PER_MESSAGE):
                ack = AckV1(items=items[start : start + ACK_ITEMS_PER_MESSAGE])
                payload = ack.model_dump_json(by_alias=True, exclude_none=True)
                published.append(self._client.publish(topic(device_id, Channel.ACK), payload, qos=1))
        # PUBACK only once the broker has our AckV1s: were we to die with the acks still in paho's
        # memory but the PUBACKs sent, nothing would ever tell the device its events are stored.
        generation = self._generation
        if not all(self._confirmed(info, generation) for info in published):
            logger.warning(
                "connection lost before the acks were confirmed; %s messages will be redelivered", len(batch)
            )
            return
        for item in batch:
            if item.qos > 0 and item.generation == generation:
                self._client.ack(item.mid, item.qos)

    def _confirmed(self, info: mqtt.MQTTMessageInfo, generation: int) -> bool:
        """Waits for the broker's PUBACK of one AckV1; False if the connection changed meanwhile."""
        while not info.is_published():
            if self._generation != generation or self._stop.is_set():
                return False
            try:
                info.wait_for_publish(ACK_PUBLISH_WAIT_S)
            except (RuntimeError, ValueError):  # not connected right now
                time.sleep(ACK_PUBLISH_WAIT_S)
        return True


def main() -> None:
    """``python -m curbwatch.server.ingest``: one worker with settings from the environment."""
    from curbwatch.server.db import make_engine, make_session_factory
    from curbwatch.server.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        IngestWorker(settings, make_session_factory(engine)).run_until_stopped()
    except IngestError as exc:
        raise SystemExit(f"ingest: {exc}") from None
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()

"""The edge box's link to the server: durable outbox, MQTT publisher, remote configuration and commands.

Events go into the outbox (SQLite, WAL) as they are produced; the publisher sends them and
deletes them only when the server acknowledges its commit. The retained desired configuration
is validated and applied to the running cameras, and what was applied is reported back. Commands
(``edge/commands.py``) are carried out one at a time off the network thread, and answered; model
updates (``edge/rollout.py``) receive their chunks on the same thread, after the command.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from curbwatch.edge.commands import Commands
from curbwatch.edge.config import DeliveryConfig
from curbwatch.edge.outbox import Outbox, OutboxSink
from curbwatch.edge.publisher import DeviceMetrics, Publisher
from curbwatch.edge.remote_config import RemoteConfig
from curbwatch.edge.rollout import ModelUpdater, model_store
from curbwatch.edge.runner import EdgeRunner
from curbwatch.schema.protocol import (
    CameraMetricsV1,
    Channel,
    CommandResultV1,
    parse_model_chunk_topic,
    topic,
)

logger = logging.getLogger(__name__)


class Uplink:
    """Owns the outbox, the publisher and the remote-config subscription of one edge box.

    Args:
        config: The delivery section.
        evidence_root: Where the evidence images the events reference are stored.

    Example:
        >>> uplink = Uplink(config.delivery, config.evidence.root)
        >>> runner = EdgeRunner(config, uplink.sink)
        >>> uplink.start(runner)
        >>> runner.run()
        >>> uplink.stop()
    """

    def __init__(self, config: DeliveryConfig, evidence_root: Path) -> None:
        self._config = config
        mqtt = config.mqtt
        key = mqtt.key_bytes()
        self.outbox = Outbox(config.outbox_path, config.outbox, device_id=mqtt.device_id, key=key)
        self.sink = OutboxSink(self.outbox, evidence_root)
        self.publisher = Publisher(mqtt, self.outbox, metrics_provider=self._metrics)
        self._runner: EdgeRunner | None = None
        self.remote: RemoteConfig | None = None
        self.commands: Commands | None = None
        self.updater: ModelUpdater | None = None
        # One at a time, off paho's thread: a snapshot runs the detector and writes a file.
        self._command_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commands")
        self._config_seen = threading.Event()

    def start(self, runner: EdgeRunner) -> None:
        """Connect, and apply desired configurations to ``runner``'s cameras from now on."""
        mqtt = self._config.mqtt
        self._runner = runner
        self.remote = RemoteConfig(runner, mqtt.device_id, mqtt.key_bytes())
        self.updater = ModelUpdater(runner, model_store(self._config.outbox_path), self._publish_result)
        self.commands = Commands(runner, self.outbox, mqtt.key_bytes(), self.updater)
        self.publisher.subscribe(topic(mqtt.device_id, Channel.CONFIG_DESIRED), self._on_desired_config)
        self.publisher.subscribe(topic(mqtt.device_id, Channel.COMMAND), self._on_command)
        self.publisher.subscribe(topic(mqtt.device_id, Channel.MODEL, "+", "+"), self._on_model_chunk)
        self.publisher.start()
        self._await_server_config()

    def _await_server_config(self) -> None:
        """Give the broker a moment to hand over the retained desired config before cameras start."""
        deadline = time.monotonic() + self._config.config_wait_s
        while not self.publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.publisher.connected:
            logger.warning("broker not reachable yet; cameras start with the local configuration")
            return
        # A retained message follows the SUBACK at once; without one there is nothing to wait for.
        self._config_seen.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))

    def stop(self) -> None:
        """Give the outbox a moment to drain, then disconnect; the rest goes at the next start."""
        self._command_worker.shutdown(wait=True)  # a snapshot being taken still goes out
        if self._runner is not None:
            if not self.publisher.flush(self._config.flush_on_stop_s):
                logger.warning("%d messages stay in the outbox for the next start", self.outbox.depth())
            self.publisher.stop()
        self.outbox.close()

    def _on_desired_config(self, _topic: str, payload: bytes) -> None:
        assert self.remote is not None  # subscribed in start(), after remote is set
        report = self.remote.apply(payload)
        self._config_seen.set()
        self.publisher.publish(
            topic(self._config.mqtt.device_id, Channel.CONFIG_REPORTED),
            report.model_dump_json(by_alias=True).encode(),
            qos=1,
            retain=True,
        )

    def _on_command(self, _topic: str, payload: bytes) -> None:
        self._command_worker.submit(self._answer, payload)

    def _answer(self, payload: bytes) -> None:
        assert self.commands is not None  # subscribed in start(), after commands is set
        result = self.commands.handle(payload)
        if result is not None:
            self._publish_result(result)

    def _on_model_chunk(self, chunk_topic: str, payload: bytes) -> None:
        # The command worker runs commands in arrival order, so the update command that announces
        # these chunks has been handled before the first of them.
        self._command_worker.submit(self._receive_chunk, chunk_topic, payload)

    def _receive_chunk(self, chunk_topic: str, payload: bytes) -> None:
        assert self.updater is not None  # subscribed in start(), after updater is set
        try:
            sha256, index = parse_model_chunk_topic(chunk_topic)
        except ValueError as exc:
            logger.warning("model chunk dropped: %s", exc)
            return
        self.updater.receive_chunk(sha256, index, payload)

    def _publish_result(self, result: CommandResultV1) -> None:
        self.publisher.publish(
            topic(self._config.mqtt.device_id, Channel.COMMAND_RESULT),
            result.model_dump_json(by_alias=True).encode(),
            qos=1,
        )

    def _metrics(self) -> DeviceMetrics:
        if self._runner is None:
            return DeviceMetrics()
        cameras = []
        for report in self._runner.reports.values():
            stats = report.stats
            inference_ms = 1000.0 * stats.detect_s / stats.inferred_frames if stats.inferred_frames else 0.0
            status = report.source_status
            cameras.append(
                CameraMetricsV1(
                    camera_id=report.camera_id,
                    state=status.state if status else report.outcome.value,
                    fps=status.fps if status else 0.0,
                    inferred_share=stats.inferred_share,
                    inference_ms=round(inference_ms, 2),
                )
            )
        return DeviceMetrics(
            cameras=cameras,
            model_version=self._runner.model_version,
            config_version=self.remote.applied_version if self.remote else None,
        )

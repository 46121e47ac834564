"""Flow control for the publisher: the window of unacknowledged messages and the send rate."""

from __future__ import annotations

import threading
import time

from curbwatch.edge.outbox import OutboxItem


class InFlightWindow:
    """The messages sent and not yet acknowledged, and the last outbox row sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, tuple[OutboxItem, float]] = {}
        self.cursor = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def add(self, item: OutboxItem, now: float) -> None:
        with self._lock:
            self._items[item.id] = (item, now)
            self.cursor = max(self.cursor, item.id)

    def remove(self, kind: str, ref: str) -> None:
        with self._lock:
            for id_ in [i for i, (it, _) in self._items.items() if it.kind == kind and it.ref == ref]:
                del self._items[id_]

    def reset(self) -> None:
        """Forget everything: after a reconnect all unacknowledged rows are sent again from the start."""
        with self._lock:
            self._items.clear()
            self.cursor = 0

    def expired(self, now: float, timeout_s: float) -> list[OutboxItem]:
        """Items older than the timeout, oldest row first, with their clocks restarted."""
        with self._lock:
            due = sorted(i for i, (_, sent) in self._items.items() if now - sent >= timeout_s)
            for id_ in due:
                self._items[id_] = (self._items[id_][0], now)
            return [self._items[id_][0] for id_ in due]


class RateLimiter:
    """Token bucket: ``rate`` per second, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, max(1.0, burst)
        self._tokens, self._last = self._burst, time.monotonic()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a token; False when ``stop`` is set meanwhile."""
        while not stop.is_set():
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            stop.wait((1 - self._tokens) / self._rate)
        return False

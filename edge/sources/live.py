"""Live sources (RTSP/HTTP streams, webcams): a reader thread, newest-frame slot and reconnect."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np

from curbwatch.edge.sources.base import (
    Clock,
    DropPolicy,
    FrameSource,
    Sleep,
    SourceConfig,
    SourceReadError,
    redact_url,
)

logger = logging.getLogger(__name__)


class CaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` a live source uses (fakes implement it in tests)."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[], CaptureLike]


class _FrameSlot:
    """A queue of one frame between the reader thread and the consumer; the reader never blocks."""

    def __init__(self, policy: DropPolicy) -> None:
        self._policy = policy
        self._item: tuple[float, np.ndarray] | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: tuple[float, np.ndarray]) -> bool:
        """Offer a frame; True if a frame (the old or this one) was dropped."""
        with self._cond:
            dropped = self._item is not None
            if not dropped or self._policy == "drop_oldest":
                self._item = item
                self._cond.notify_all()
            return dropped

    def get(self, timeout_s: float | None) -> tuple[float, np.ndarray] | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._closed, timeout_s):
                raise SourceReadError(f"no frame within {timeout_s} s")
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()


class LiveSource(FrameSource):
    """A live capture read by a background thread that keeps only the newest frame.

    The thread opens the capture through ``capture_factory``, stamps each frame with ``clock()``
    at capture, and on any failure releases it and reconnects after an exponential back-off
    (``reconnect_initial_s`` * ``reconnect_factor``^n, capped at ``reconnect_max_s``; reset after
    a frame is read). It never gives up: a camera that is down is retried until ``close()``.

    Example:
        >>> src = LiveSource(cfg, "cam1", capture_factory=lambda: FakeCapture())  # doctest: +SKIP
        >>> frame = src.read(timeout_s=5.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: SourceConfig,
        camera_id: str,
        capture_factory: CaptureFactory,
        *,
        clock: Clock = time.time,
        sleep: Sleep | None = None,
    ) -> None:
        super().__init__(config, camera_id, clock=clock, sleep=sleep)
        self._factory = capture_factory
        self._slot = _FrameSlot(config.drop_policy)
        self._safe_url = redact_url(config.url)
        self._thread = threading.Thread(target=self._run, name=f"source-{camera_id}", daemon=True)
        self._thread.start()

    def _next(self, timeout_s: float | None) -> tuple[float, np.ndarray] | None:
        return self._slot.get(timeout_s)

    def _release(self) -> None:
        self._slot.close()
        # The reader thread owns the capture; releasing it from here while it reads is unsafe.
        if threading.current_thread() is not self._thread:
            self._thread.join(self.config.open_timeout_s + self.config.read_timeout_s + 1.0)
            if self._thread.is_alive():
                logger.warning("camera %s: reader thread still blocked in %s", self.camera_id, self._safe_url)

    def _run(self) -> None:
        delay = self.config.reconnect_initial_s
        while not self._stop.is_set():
            cap = self._open()
            got_frames = False
            if cap is not None:
                try:
                    got_frames = self._pump(cap)
                finally:
                    cap.release()
            if self._stop.is_set():
                break
            if got_frames:
                delay = self.config.reconnect_initial_s
            self._count("reconnects")
            self._set_state("reconnecting")
            logger.info("camera %s: reconnecting to %s in %.1f s", self.camera_id, self._safe_url, delay)
            self._sleep(delay)
            delay = min(delay * self.config.reconnect_factor, self.config.reconnect_max_s)

    def _open(self) -> CaptureLike | None:
        try:
            cap = self._factory()
            if cap.isOpened():
                return cap
            cap.release()
            error = f"cannot open {self._safe_url} (unreachable, refused or timed out)"
        except Exception as exc:  # a broken camera must never kill the thread
            error = f"cannot open {self._safe_url}: {redact_url(str(exc))}"
        self._set_state("reconnecting", error)
        logger.warning("camera %s: %s", self.camera_id, error)
        return None

    def _pump(self, cap: CaptureLike) -> bool:
        """Read until failure or stop; True if any frame was read."""
        got = False
        while not self._stop.is_set():
            try:
                ok, image = cap.read()
            except Exception as exc:
                ok, image = False, None
                logger.warning("camera %s: read raised %s", self.camera_id, redact_url(str(exc)))
            if not ok or image is None:
                self._set_state("reconnecting", f"read from {self._safe_url} failed or timed out")
                return got
            ts = self._clock()
            got = True
            self._count("read")
            self._set_state("streaming")
            if self._slot.put((ts, image)):
                self._count("dropped")
        return got


def _ffmpeg_capture(url: str, config: SourceConfig) -> CaptureLike:
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(config.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(config.read_timeout_s * 1000),
    ]
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


class RtspSource(LiveSource):
    """A network stream (rtsp, rtsps, http, https) through OpenCV's FFMPEG backend with timeouts."""

    def __init__(
        self,
        config: SourceConfig,
        camera_id: str,
        *,
        capture_factory: CaptureFactory | None = None,
        clock: Clock = time.time,
        sleep: Sleep | None = None,
    ) -> None:
        factory = capture_factory or (lambda: _ffmpeg_capture(config.url, config))
        super().__init__(config, camera_id, factory, clock=clock, sleep=sleep)


class WebcamSource(LiveSource):
    """A local camera (``webcam:<index>``) with the same reconnect and drop behaviour as RTSP."""

    def __init__(
        self,
        config: SourceConfig,
        camera_id: str,
        *,
        capture_factory: CaptureFactory | None = None,
        clock: Clock = time.time,
        sleep: Sleep | None = None,
    ) -> None:
        index = int(config.url.removeprefix("webcam:"))
        super().__init__(
            config, camera_id, capture_factory or (lambda: cv2.VideoCapture(index)), clock=clock, sleep=sleep
        )

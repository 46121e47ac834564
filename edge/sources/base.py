"""Shared parts of every frame source: the config section, status, errors and the base class.

:class:`FrameSource` does the rate cap, frame indices, real-time pacing and status bookkeeping;
the concrete sources (``files``, ``live``, ``stills``) only decode the next frame.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal, Self
from zoneinfo import ZoneInfo

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curbwatch.edge.messages import Frame
from curbwatch.schema.zones import check_timezone

logger = logging.getLogger(__name__)

SourceState = Literal["starting", "streaming", "reconnecting", "ended", "failed"]
DropPolicy = Literal["drop_oldest", "drop_newest"]
SourceKind = Literal["file", "stream", "stills", "webcam"]
Clock = Callable[[], float]
Sleep = Callable[[float], object]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


class SourceError(Exception):
    """Base of every error a frame source raises."""


class SourceOpenError(SourceError):
    """The source cannot be opened (missing, corrupt or unsupported file, empty folder)."""


class SourceReadError(SourceError):
    """A frame could not be read (decoder failure, or no frame within the requested timeout)."""


class SourceConfig(BaseModel):
    """Where frames come from and how to pace them (one per camera)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        min_length=1,
        title="Source URL",
        description="Video file path, rtsp(s):// or http(s):// stream, 'stills:<folder>' or a folder "
        "path, or 'webcam:<index>'.",
    )
    open_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        title="Open timeout (s)",
        description="Give up opening a live stream after this long.",
    )
    read_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        title="Read timeout (s)",
        description="A live stream silent this long is reconnected.",
    )
    reconnect_initial_s: float = Field(
        1.0, gt=0, title="First reconnect delay (s)", description="Wait before the first reconnect attempt."
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, title="Longest reconnect delay (s)", description="Cap of the exponential back-off."
    )
    reconnect_factor: float = Field(
        2.0,
        ge=1.0,
        le=10.0,
        title="Back-off factor",
        description="Each failed attempt multiplies the delay by this.",
    )
    start_time: datetime | None = Field(
        None,
        title="File start time",
        description="Wall time of a video file's first frame (ISO 8601; naive means 'timezone'). "
        "Default: the file's modification time, which is stable across replays of the same file.",
    )
    timezone: str = Field(
        "UTC",
        title="Local timezone",
        description="IANA zone for naive start_time and for still names without an offset.",
    )
    realtime: bool = Field(
        False,
        title="Pace files in real time",
        description="Files and stills: sleep so frames come at their timestamps; "
        "otherwise run as fast as possible.",
    )
    fps: float | None = Field(
        None,
        gt=0,
        le=240,
        title="Frame-rate cap",
        description="Drop frames, by timestamp, to at most this rate. None: keep all.",
    )
    drop_policy: DropPolicy = Field(
        "drop_oldest",
        title="Live drop policy",
        description="When the consumer is behind: drop_oldest keeps the newest frame (lowest latency); "
        "drop_newest keeps the frame already waiting.",
    )
    follow: bool = Field(
        False,
        title="Follow stills folder",
        description="Stills: keep polling for new files instead of ending.",
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        title="Stills poll interval (s)",
        description="How often a followed folder is scanned for new files.",
    )

    @field_validator("timezone")
    @classmethod
    def verify_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("url")
    @classmethod
    def verify_webcam_index(cls, value: str) -> str:
        if value.startswith("webcam:") and not value.removeprefix("webcam:").isdigit():
            raise ValueError(f"webcam URL must be 'webcam:<index>', got {value!r}")
        return value

    @model_validator(mode="after")
    def verify_backoff(self) -> Self:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self

    @property
    def zone(self) -> tzinfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class CameraStatus:
    """A snapshot of a source's health.

    Attributes:
        camera_id: Which camera.
        state: starting, streaming, reconnecting, ended or failed.
        last_error: The most recent error, credentials redacted; None if none yet.
        frames_read: Frames decoded from the source.
        frames_dropped: Frames lost because the consumer was behind (live drop policy).
        frames_skipped: Frames left out by the ``fps`` cap.
        files_rejected: Stills files that could not be decoded or came out of time order.
        reconnects: Reconnect attempts so far.
        fps: Rate of delivered frames, measured over their timestamps (0 until two frames).
    """

    camera_id: str
    state: SourceState
    last_error: str | None
    frames_read: int
    frames_dropped: int
    frames_skipped: int
    files_rejected: int
    reconnects: int
    fps: float


_CRED_RE = re.compile(r"([a-zA-Z][\w+.-]*://)[^\s?#]*@")
_SECRET_QUERY_RE = re.compile(
    r"([?&;](?:user(?:name)?|pass(?:word|wd)?|pwd|token|key|api_key|auth|secret)=)[^&;#]*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """``url`` with user, password and secret query values replaced by ``***`` (safe to log).

    Works on URLs inside free text (error messages) too. Everything from ``://`` to the last ``@``
    before the query is taken as credentials, so passwords holding ``@`` or ``/`` are hidden;
    over-redacting an odd URL is preferred to leaking a password.
    """
    return _SECRET_QUERY_RE.sub(r"\1***", _CRED_RE.sub(r"\1***:***@", url))


def source_kind(url: str) -> SourceKind:
    """Which kind of source ``url`` names (a bare path is a folder of stills if it is a directory)."""
    if url.startswith("webcam:"):
        return "webcam"
    if url.startswith("stills:"):
        return "stills"
    if url.lower().startswith(STREAM_SCHEMES):
        return "stream"
    return "stills" if Path(url.removeprefix("file://")).is_dir() else "file"


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class _RateLimiter:
    """Admits at most ``fps`` frames per second of timestamp, without drift or bursts after gaps."""

    def __init__(self, fps: float | None) -> None:
        self._period = 1.0 / fps if fps else 0.0
        self._next_due: float | None = None
        self._last_ts = -math.inf

    def admit(self, ts: float) -> bool:
        if not self._period:
            return True
        restart = self._next_due is None or ts < self._last_ts or ts >= self._next_due + self._period
        self._last_ts = ts
        if restart:
            self._next_due = ts + self._period
            return True
        assert self._next_due is not None
        # Tolerance absorbs capture jitter: a 5 fps camera capped at 5 fps must keep every frame.
        if ts >= self._next_due - 0.1 * self._period:
            self._next_due += self._period
            return True
        return False


class FrameSource(ABC):
    """Base of all sources: rate cap, indices, status bookkeeping, context manager.

    Args:
        config: The camera's source section.
        camera_id: Stamped on every frame.
        clock: Wall clock in epoch seconds (live timestamps, real-time pacing).
        sleep: Blocking wait (pacing, back-off, polling); tests inject a fake.
    """

    def __init__(
        self, config: SourceConfig, camera_id: str, *, clock: Clock = time.time, sleep: Sleep | None = None
    ) -> None:
        self.config = config
        self.camera_id = camera_id
        self._clock = clock
        self._stop = threading.Event()
        # The default sleep wakes on close(), so a closed source never hangs in back-off or polling.
        self._sleep: Sleep = sleep if sleep is not None else self._stop.wait
        self._limiter = _RateLimiter(config.fps)
        self._lock = threading.Lock()
        self._state: SourceState = "starting"
        self._last_error: str | None = None
        self._counts = {"read": 0, "dropped": 0, "skipped": 0, "rejected": 0, "reconnects": 0}
        self._delivered_ts: deque[float] = deque(maxlen=30)
        self._index = 0
        self._pace_origin: tuple[float, float] | None = None

    @property
    def status(self) -> CameraStatus:
        with self._lock:
            stamps = self._delivered_ts
            span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
            c = self._counts
            return CameraStatus(
                self.camera_id,
                self._state,
                self._last_error,
                c["read"],
                c["dropped"],
                c["skipped"],
                c["rejected"],
                c["reconnects"],
                (len(stamps) - 1) / span if span > 0 else 0.0,
            )

    def read(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame, or None once the source has ended.

        Args:
            timeout_s: Live and followed sources: raise ``SourceReadError`` if no frame arrives in
                this long (None: wait until one does or the source is closed).
        """
        while True:
            item = self._next(timeout_s)
            if item is None:
                self._set_state("ended")
                return None
            ts, image = item
            if not self._limiter.admit(ts):
                self._count("skipped")
                continue
            if self.config.realtime and self._paced:
                self._pace(ts)
            frame = Frame(self.camera_id, ts, _as_bgr(image), self._index)
            self._index += 1
            with self._lock:
                self._delivered_ts.append(ts)
                if self._state == "starting":
                    self._state = "streaming"
            return frame

    def close(self) -> None:
        """Release the source; later reads return None."""
        self._stop.set()
        self._release()
        self._set_state("ended")

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    _paced = False  # file-like sources set True: realtime pacing applies to them

    @abstractmethod
    def _next(self, timeout_s: float | None) -> tuple[float, np.ndarray] | None:
        """(timestamp, image) of the next decoded frame, or None at end of stream."""

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Free resources (called by close)."""

    def _pace(self, ts: float) -> None:
        now = self._clock()
        if self._pace_origin is None:
            self._pace_origin = (now, ts)
            return
        wall0, ts0 = self._pace_origin
        delay = (ts - ts0) - (now - wall0)
        if delay > 0:
            self._sleep(delay)

    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        with self._lock:
            self._state = state
            if error is not None:
                self._last_error = error

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

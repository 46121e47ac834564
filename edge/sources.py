"""Frame sources: video files, live streams (RTSP/HTTP/webcam) and folders of timestamped stills.

Every source yields :class:`~curbwatch.edge.messages.Frame` from ``read()`` and returns ``None`` once
the stream has ended (file finished or source closed), so a loop is ``while (frame := src.read()):``.
Live sources never end on their own: they reconnect forever with exponential back-off, and a
reader thread keeps only the newest frame so latency never builds up behind a slow detector.

Timestamps: files use the container position plus ``start_time`` (default: the file's mtime, so a
replay of the same file gives the same timestamps); stills use the time in the file name (falling
back to mtime); live sources read the injected clock at capture.
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
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Literal, Protocol, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curbwatch.edge.messages import Frame

logger = logging.getLogger(__name__)

SourceState = Literal["starting", "streaming", "reconnecting", "ended", "failed"]
DropPolicy = Literal["drop_oldest", "drop_newest"]
SourceKind = Literal["file", "stream", "stills", "webcam"]
Clock = Callable[[], float]
Sleep = Callable[[float], object]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
STILL_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


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
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

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


def _file_start_ts(config: SourceConfig, path: Path) -> float:
    if config.start_time is None:
        return path.stat().st_mtime
    start = config.start_time
    if start.tzinfo is None:
        start = start.replace(tzinfo=config.zone)
    return start.timestamp()


class VideoFileSource(FrameSource):
    """Frames of a video file; timestamps are ``start_time`` + the container position (VFR-safe).

    Raises:
        SourceOpenError: Missing, corrupt or unsupported file, or no decodable first frame.
    """

    _paced = True

    def __init__(
        self, config: SourceConfig, camera_id: str, *, clock: Clock = time.time, sleep: Sleep | None = None
    ) -> None:
        super().__init__(config, camera_id, clock=clock, sleep=sleep)
        self.path = Path(config.url.removeprefix("file://"))
        if not self.path.is_file():
            raise SourceOpenError(f"camera {camera_id}: video file not found: {self.path}")
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise SourceOpenError(
                f"camera {camera_id}: cannot open {self.path}: not a readable video (corrupt or unsupported)"
            )
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._period = 1.0 / fps if 0 < fps < 1000 else 1.0 / 30.0
        self._start_ts = _file_start_ts(config, self.path)
        self._last_rel = -math.inf
        self._pending = self._decode()
        if self._pending is None:
            self._cap.release()
            raise SourceOpenError(f"camera {camera_id}: {self.path} opened but no frame could be decoded")
        self._set_state("streaming")

    def _decode(self) -> tuple[float, np.ndarray] | None:
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            self._set_state("failed", f"decoder error: {exc}")
            raise SourceReadError(f"camera {self.camera_id}: decoder error in {self.path}: {exc}") from exc
        if not ok or image is None:
            return None
        self._count("read")
        rel = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if rel <= self._last_rel:
            # Some containers report no or repeated positions; keep time moving at the nominal rate.
            rel = self._last_rel + self._period
        self._last_rel = rel
        return self._start_ts + rel, image

    def _next(self, timeout_s: float | None) -> tuple[float, np.ndarray] | None:
        if self._stop.is_set():
            return None
        item, self._pending = self._pending, None
        return item if item is not None else self._decode()

    def _release(self) -> None:
        self._cap.release()


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


_OFFSET = r"(Z|[+-]\d{2}:?\d{2})?"
_COMPACT_RE = re.compile(
    r"(?<!\d)(\d{4})(\d{2})(\d{2})[T_-](\d{2})(\d{2})(\d{2})(?:[.,](\d{1,6}))?" + _OFFSET
)
_SEPARATED_RE = re.compile(
    r"(?<!\d)(\d{4})-(\d{2})-(\d{2})[T_ ](\d{2})[-:.h](\d{2})[-:.m](\d{2})(?:[.,](\d{1,6}))?" + _OFFSET
)
_DIGITS_RE = re.compile(r"(?<![\d.])(\d{17}|\d{14}|\d{13}|\d{10})(?:\.(\d{1,6}))?(?!\d)")
_EPOCH_RANGE = (946_684_800.0, 4_102_444_800.0)  # 2000-01-01 .. 2100-01-01


def _offset(text: str | None, default: tzinfo) -> tzinfo:
    if not text:
        return default
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _datetime_ts(parts: tuple[str, ...], fraction: str | None, zone: tzinfo) -> float | None:
    try:
        moment = datetime(*(int(p) for p in parts), tzinfo=zone)  # type: ignore[misc]
    except ValueError:
        return None
    ts = moment.timestamp() + (float("0." + fraction) if fraction else 0.0)
    return ts if _EPOCH_RANGE[0] <= ts < _EPOCH_RANGE[1] else None


def still_timestamp(name: str, zone: tzinfo) -> float | None:
    """Epoch seconds encoded in a snapshot file name, or None if it holds no recognisable time.

    Recognised: ``20261127T081500Z``, ``20261127_081500`` (optional fraction and ``Z``/``+01:00``),
    ``2026-11-27_08-15-00`` / ``2026-11-27T08:15:00``, 14 or 17 digits ``YYYYMMDDhhmmss[mmm]``
    (``cam1_20261127081500123``), epoch seconds (10 digits, optional fraction) or milliseconds (13).
    Names without an offset are read in ``zone``.
    """
    stem = Path(name).stem
    for pattern in (_COMPACT_RE, _SEPARATED_RE):
        if (m := pattern.search(stem)) and (ts := _datetime_ts(m.groups()[:6], m[7], _offset(m[8], zone))):
            return ts
    for m in _DIGITS_RE.finditer(stem):
        digits, fraction = m[1], m[2]
        if len(digits) >= 14:
            parts = (digits[:4], digits[4:6], digits[6:8], digits[8:10], digits[10:12], digits[12:14])
            ts = _datetime_ts(parts, digits[14:] or None, zone)
        else:
            ts = float(digits) / (1000.0 if len(digits) == 13 else 1.0) + float("0." + (fraction or "0"))
            ts = ts if _EPOCH_RANGE[0] <= ts < _EPOCH_RANGE[1] else None
        if ts is not None:
            return ts
    return None


def _decode_still(path: Path) -> np.ndarray | None:
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    # A JPEG cut short (half-uploaded snapshot) still decodes with a grey bottom; require its end marker.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


class StillsFolderSource(FrameSource):
    """A folder of timestamped snapshots, delivered in timestamp order.

    The time comes from the file name (see :func:`still_timestamp`), else the file's mtime.
    Undecodable files are skipped with a warning and counted in ``files_rejected``. With
    ``follow`` the folder is polled for new files, which are taken once their size is stable
    across two scans (so half-written uploads are not read); files older than the last
    delivered frame are rejected to keep time moving forward.

    Raises:
        SourceOpenError: The folder is missing, or (without ``follow``) holds no images.
    """

    _paced = True

    def __init__(
        self, config: SourceConfig, camera_id: str, *, clock: Clock = time.time, sleep: Sleep | None = None
    ) -> None:
        super().__init__(config, camera_id, clock=clock, sleep=sleep)
        self.folder = Path(config.url.removeprefix("stills:").removeprefix("file://"))
        if not self.folder.is_dir():
            raise SourceOpenError(f"camera {camera_id}: stills folder not found: {self.folder}")
        self._zone = config.zone
        self._queue: deque[tuple[float, Path]] = deque()
        self._seen: set[str] = set()
        self._sizes: dict[str, int] = {}
        self._last_ts = -math.inf
        self._scan(settle=False)
        if not self._queue and not config.follow:
            raise SourceOpenError(f"camera {camera_id}: no image files in {self.folder}")
        self._set_state("streaming")

    def _scan(self, settle: bool) -> None:
        fresh: list[tuple[float, Path]] = []
        for path in self.folder.iterdir():
            if path.name in self._seen or path.suffix.lower() not in STILL_SUFFIXES:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if settle and self._sizes.get(path.name) != stat.st_size:
                self._sizes[path.name] = stat.st_size
                continue
            self._seen.add(path.name)
            self._sizes.pop(path.name, None)
            ts = still_timestamp(path.name, self._zone)
            fresh.append((stat.st_mtime if ts is None else ts, path))
        self._queue.extend(sorted(fresh, key=lambda item: (item[0], item[1].name)))

    def _next(self, timeout_s: float | None) -> tuple[float, np.ndarray] | None:
        deadline = None if timeout_s is None else self._clock() + timeout_s
        while not self._stop.is_set():
            while self._queue:
                ts, path = self._queue.popleft()
                image = None if ts < self._last_ts else _decode_still(path)
                if image is None:
                    self._count("rejected")
                    logger.warning(
                        "camera %s: skipping %s (unreadable or out of time order)", self.camera_id, path.name
                    )
                    continue
                self._count("read")
                self._last_ts = ts
                return ts, image
            if not self.config.follow:
                return None
            if deadline is not None and self._clock() >= deadline:
                raise SourceReadError(f"camera {self.camera_id}: no new still within {timeout_s} s")
            self._sleep(self.config.poll_interval_s)
            self._scan(settle=True)
        return None


def open_source(
    config: SourceConfig, camera_id: str, *, clock: Clock = time.time, sleep: Sleep | None = None
) -> FrameSource:
    """Open the source ``config.url`` names (see :func:`source_kind`).

    Raises:
        SourceOpenError: Files and folders that cannot be opened. Live sources never raise here;
            they report trouble through ``status`` and keep reconnecting.
    """
    kind = source_kind(config.url)
    logger.info("camera %s: opening %s source %s", camera_id, kind, redact_url(config.url))
    if kind == "stream":
        return RtspSource(config, camera_id, clock=clock, sleep=sleep)
    if kind == "webcam":
        return WebcamSource(config, camera_id, clock=clock, sleep=sleep)
    if kind == "stills":
        return StillsFolderSource(config, camera_id, clock=clock, sleep=sleep)
    return VideoFileSource(config, camera_id, clock=clock, sleep=sleep)

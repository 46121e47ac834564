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
import time

from curbwatch.edge.sources.base import (
    STREAM_SCHEMES,
    CameraStatus,
    Clock,
    DropPolicy,
    FrameSource,
    Sleep,
    SourceConfig,
    SourceError,
    SourceKind,
    SourceOpenError,
    SourceReadError,
    SourceState,
    _RateLimiter,
    redact_url,
    source_kind,
)
from curbwatch.edge.sources.files import VideoFileSource
from curbwatch.edge.sources.live import CaptureFactory, CaptureLike, LiveSource, RtspSource, WebcamSource
from curbwatch.edge.sources.stills import STILL_SUFFIXES, StillsFolderSource, still_timestamp

__all__ = [
    "STILL_SUFFIXES",
    "STREAM_SCHEMES",
    "CameraStatus",
    "CaptureFactory",
    "CaptureLike",
    "Clock",
    "DropPolicy",
    "FrameSource",
    "LiveSource",
    "RtspSource",
    "Sleep",
    "SourceConfig",
    "SourceError",
    "SourceKind",
    "SourceOpenError",
    "SourceReadError",
    "SourceState",
    "StillsFolderSource",
    "VideoFileSource",
    "WebcamSource",
    "_RateLimiter",
    "open_source",
    "redact_url",
    "source_kind",
    "still_timestamp",
]

logger = logging.getLogger(__name__)


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

"""Video file source: timestamps from the container position plus a start time."""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np

from curbwatch.edge.sources.base import (
    Clock,
    FrameSource,
    Sleep,
    SourceConfig,
    SourceOpenError,
    SourceReadError,
)


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

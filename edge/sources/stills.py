"""Folders of timestamped stills: time from the file name, corrupt or late files skipped."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from datetime import UTC, datetime, timedelta, timezone, tzinfo
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

logger = logging.getLogger(__name__)

STILL_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

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

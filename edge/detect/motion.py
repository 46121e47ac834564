"""Motion detection and the inference gate: run the detector only when something may have changed.

A parked street is mostly still. ``MotionDetector`` compares a small grey copy of each frame with a
running-average background; ``InferenceGate`` then sends a frame to the (expensive) detector only
during warm-up, while there is motion, or when the recheck interval has passed, so objects that
stopped moving are still re-detected now and then. All timing comes from ``Frame.ts``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curbwatch.edge.messages import Frame

logger = logging.getLogger(__name__)

GateReason = Literal["warmup", "motion", "recheck", "idle"]
_NO_BOXES = np.zeros((0, 4), np.float32)
_NO_BOXES.flags.writeable = False


class MotionConfig(BaseModel):
    """How motion is found on a small grey copy of the frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(
        320,
        ge=64,
        le=1920,
        title="Analysis width (px)",
        description="Frames are shrunk to this width first; smaller is faster but misses small objects.",
    )
    blur_ksize: int = Field(
        5,
        ge=1,
        le=31,
        title="Blur kernel (px)",
        description="Odd Gaussian kernel that smooths camera noise before differencing.",
    )
    background_tau_s: float = Field(
        4.0,
        gt=0,
        le=600,
        title="Background time constant (s)",
        description="How fast the background absorbs change; a stopped object fades into it after ~3x this.",
    )
    threshold: int = Field(
        25,
        ge=1,
        le=255,
        title="Pixel threshold",
        description="Grey-level difference from the background that counts as changed.",
    )
    dilate_iterations: int = Field(
        2,
        ge=0,
        le=10,
        title="Dilation passes",
        description="Joins the fragments of one moving object into one blob.",
    )
    min_blob_fraction: float = Field(
        0.0005,
        ge=0,
        le=1,
        title="Smallest blob",
        description="Blobs smaller than this share of the frame are ignored as noise.",
    )
    lighting_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        title="Lighting-change share",
        description="If more than this share of the frame changes at once it is taken as a lighting change "
        "(clouds, street lights, exposure), not motion, and the background is reset.",
    )
    ignore_boxes: tuple[tuple[float, float, float, float], ...] = Field(
        (),
        title="Ignored regions",
        description="Normalised x1 y1 x2 y2 boxes (0..1) never counted as motion, e.g. an on-screen clock.",
    )

    @field_validator("blur_ksize")
    @classmethod
    def verify_odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"blur_ksize must be odd, got {value}")
        return value

    @field_validator("ignore_boxes")
    @classmethod
    def verify_boxes(cls, boxes: tuple[tuple[float, float, float, float], ...]) -> tuple:
        for x1, y1, x2, y2 in boxes:
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                raise ValueError(
                    f"ignore box {(x1, y1, x2, y2)} must satisfy 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1"
                )
        return boxes


@dataclass(frozen=True, eq=False)
class MotionResult:
    """Motion in one frame.

    Attributes:
        boxes_xyxy: float32 (N, 4) boxes around moving blobs, in full-frame pixels.
        fraction: Share of the frame covered by the moving blobs, 0..1.
        lighting_change: The whole frame changed at once and was taken as lighting, not motion.
    """

    boxes_xyxy: np.ndarray
    fraction: float
    lighting_change: bool = False


class MotionDetector:
    """Running-average background subtraction on a small, blurred, brightness-normalised grey frame.

    A sudden change over most of the frame (lights switched, cloud shadow, exposure jump) is reported
    as a lighting change and the background restarts from the current frame. Otherwise the
    background's mean and contrast are matched to the current frame before differencing, so a
    global brightness or exposure ramp leaves no difference. The
    background learning rate is derived from the time between frames (``background_tau_s``), so
    the detector behaves the same at 2 or 30 fps and under a variable frame rate.

    Example:
        >>> detector = MotionDetector(MotionConfig())  # doctest: +SKIP
        >>> result = detector.detect(frame)  # doctest: +SKIP
    """

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self._background: np.ndarray | None = None
        self._last_ts = -math.inf
        self._keep: np.ndarray | None = None  # uint8 mask of analysed pixels (ignore_boxes removed)

    def detect(self, frame: Frame) -> MotionResult:
        """Motion boxes and covered share for ``frame``; the first frame only starts the background."""
        height, width = frame.image.shape[:2]
        scale = min(1.0, self.config.width / width)
        size_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = self._prepare(frame.image, size_wh)
        if self._background is None or self._background.shape != gray.shape or frame.ts < self._last_ts:
            self._restart(gray, frame.ts)
            return MotionResult(_NO_BOXES, 0.0)
        alpha = 1.0 - math.exp(-(frame.ts - self._last_ts) / self.config.background_tau_s)
        self._last_ts = frame.ts
        active = max(1, int(cv2.countNonZero(self._keep)))
        if self._raw_changed(gray) > self.config.lighting_fraction * active:
            logger.debug("lighting change at ts=%.3f; background reset", frame.ts)
            self._background = gray.copy()
            return MotionResult(_NO_BOXES, 0.0, lighting_change=True)
        changed = self._changed_mask(gray)
        cv2.accumulateWeighted(gray, self._background, alpha)
        return self._blobs(changed, active, 1.0 / scale)

    def _prepare(self, image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if size_wh != image.shape[1::-1]:
            # Area averaging suppresses camera noise but costs ~1.4 ms on a 720p colour frame; a
            # bilinear halving step on grey first gives the same small image for ~0.25 ms.
            if gray.shape[1] >= 4 * size_wh[0]:
                gray = cv2.resize(gray, (size_wh[0] * 2, size_wh[1] * 2), interpolation=cv2.INTER_LINEAR)
            gray = cv2.resize(gray, size_wh, interpolation=cv2.INTER_AREA)
        k = self.config.blur_ksize
        if k > 1:
            gray = cv2.GaussianBlur(gray, (k, k), 0)
        return gray.astype(np.float32)

    def _restart(self, gray: np.ndarray, ts: float) -> None:
        self._background = gray.copy()
        self._last_ts = ts
        h, w = gray.shape
        keep = np.full((h, w), 255, np.uint8)
        for x1, y1, x2, y2 in self.config.ignore_boxes:
            keep[int(y1 * h) : math.ceil(y2 * h), int(x1 * w) : math.ceil(x2 * w)] = 0
        self._keep = keep

    def _raw_changed(self, gray: np.ndarray) -> int:
        """Pixels changed before brightness matching: a sudden change of most of the frame is light."""
        assert self._background is not None
        _, changed = cv2.threshold(cv2.absdiff(gray, self._background), self.config.threshold, 255, 0)
        return int(cv2.countNonZero(cv2.bitwise_and(changed.astype(np.uint8), self._keep)))

    def _changed_mask(self, gray: np.ndarray) -> np.ndarray:
        assert self._background is not None
        mean_now, std_now = cv2.meanStdDev(gray, mask=self._keep)
        mean_bg, std_bg = cv2.meanStdDev(self._background, mask=self._keep)
        # Match the background's brightness and contrast to this frame: exposure and daylight drift
        # are global and must not look like motion. The clamp keeps a flat scene from exploding noise.
        gain = float(np.clip(std_now[0, 0] / max(std_bg[0, 0], 1e-3), 0.25, 4.0))
        reference = (self._background - float(mean_bg[0, 0])) * gain + float(mean_now[0, 0])
        diff = cv2.absdiff(gray, reference)
        _, changed = cv2.threshold(diff, self.config.threshold, 255, cv2.THRESH_BINARY)
        return cv2.bitwise_and(changed.astype(np.uint8), self._keep)

    def _blobs(self, changed: np.ndarray, active: int, to_full: float) -> MotionResult:
        if self.config.dilate_iterations:
            changed = cv2.dilate(changed, None, iterations=self.config.dilate_iterations)
        contours, _ = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.config.min_blob_fraction * active
        boxes: list[tuple[float, float, float, float]] = []
        covered = 0.0
        for contour in contours:
            area = cv2.contourArea(contour)
            if area < min_area:
                continue
            covered += area
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append((x * to_full, y * to_full, (x + w) * to_full, (y + h) * to_full))
        if not boxes:
            return MotionResult(_NO_BOXES, 0.0)
        return MotionResult(np.asarray(boxes, np.float32), min(1.0, covered / active))


class GateConfig(BaseModel):
    """When frames go to the detector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        title="Warm-up (s)",
        description="Infer every frame this long after the first frame, so objects "
        "already parked when the camera starts are found.",
    )
    recheck_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        title="Recheck interval (s)",
        description="Infer at least this often even without motion, so "
        "stationary objects keep being confirmed.",
    )
    min_motion_fraction: float = Field(
        0.001,
        ge=0,
        le=1,
        title="Motion share",
        description="Motion covering at least this share of the frame triggers inference.",
    )
    motion_hold_s: float = Field(
        1.0,
        ge=0,
        le=60,
        title="Motion hold (s)",
        description="Keep inferring this long after motion stops, to catch where the object came to rest.",
    )
    motion: MotionConfig = Field(
        default_factory=MotionConfig,
        title="Motion detector",
        description="Settings of the motion detector the gate uses.",
    )


@dataclass(frozen=True, eq=False)
class GateDecision:
    """Whether to run the detector on one frame, and why.

    Attributes:
        infer: Send this frame to the detector.
        reason: warmup, motion, recheck (interval passed) or idle (skipped).
        motion_fraction: Share of the frame in motion.
        motion_boxes: float32 (N, 4) motion boxes in full-frame pixels (where to look first).
    """

    infer: bool
    reason: GateReason
    motion_fraction: float
    motion_boxes: np.ndarray


class InferenceGate:
    """Decides per frame whether the detector runs: warm-up, motion, periodic recheck, else idle.

    Args:
        config: Gate settings; ``config.motion`` builds the motion detector.
        detector: A motion detector to use instead (tests, shared instances).

    Example:
        >>> gate = InferenceGate(GateConfig())  # doctest: +SKIP
        >>> if gate.decide(frame).infer: detections = onnx.detect(frame)  # doctest: +SKIP
    """

    def __init__(self, config: GateConfig, detector: MotionDetector | None = None) -> None:
        self.config = config
        self._motion = detector or MotionDetector(config.motion)
        self._first_ts: float | None = None
        self._last_ts = -math.inf
        self._last_infer_ts: float | None = None
        self._last_motion_ts: float | None = None

    def decide(self, frame: Frame) -> GateDecision:
        """Run motion detection on ``frame`` and decide whether it reaches the detector."""
        result = self._motion.detect(frame)
        ts = frame.ts
        if self._first_ts is None or ts < self._last_ts:
            # First frame, or the source's clock went back (camera restart, NTP step): start afresh,
            # as timers measured against the future would never fire; the background restarts too.
            self._first_ts = ts
            self._last_infer_ts = self._last_motion_ts = None
        self._last_ts = ts
        moving = len(result.boxes_xyxy) > 0 and result.fraction >= self.config.min_motion_fraction
        if moving:
            self._last_motion_ts = ts
        reason: GateReason
        if ts - self._first_ts < self.config.warmup_s:
            reason = "warmup"
        elif self._last_motion_ts is not None and ts - self._last_motion_ts <= self.config.motion_hold_s:
            reason = "motion"
        elif self._last_infer_ts is None or ts - self._last_infer_ts >= self.config.recheck_interval_s:
            reason = "recheck"
        else:
            reason = "idle"
        if reason != "idle":
            self._last_infer_ts = ts
        return GateDecision(reason != "idle", reason, result.fraction, result.boxes_xyxy)

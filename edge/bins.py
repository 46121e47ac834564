"""Bin-site state estimators: is the site around the bins overflowing right now?

The bin rule (``curbwatch.edge.rules.bins``) crops the site, removes people and vehicles from the
mask and asks a ``BinStateEstimator`` for a per-frame decision; the rule turns those decisions
into episodes. Estimators are registered by name in ``ESTIMATORS`` so a learned classifier can
plug in later without the rule changing.

``ReferenceChangeEstimator`` needs no trained model: it learns what the clean site looks like and
scores the fraction of the site that has changed persistently since. It cannot tell rubbish from
any other lasting change (a bin moved away, a parked trailer, snow); that is the learned
classifier's job.

``BinClassifierEstimator`` (``bin_classifier``) is that learned classifier: features pooled from
the shared detector's neck plus colour and edge statistics, scored by one linear model trained by
``curbwatch train bins`` (``curbwatch.training.bin_classifier``). It needs numpy, OpenCV and
onnxruntime only; the artefact names the detector by sha256 and is refused with any other file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)


class BinEstimatorError(ValueError):
    """An estimator got input it cannot use (wrong shapes or types)."""


@dataclass(frozen=True)
class BinObservation:
    """One estimator verdict on one frame of a bin site.

    Attributes:
        score: Overflow score in [0, 1]; None while learning or when too little of the site is visible.
        overflowing: The estimator's decision (with its own hysteresis), or None when it has none.
    """

    score: float | None
    overflowing: bool | None

    def __post_init__(self) -> None:
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"BinObservation.score must be in [0, 1], got {self.score}")


UNKNOWN = BinObservation(score=None, overflowing=None)


@runtime_checkable
class BinStateEstimator(Protocol):
    """Judges one bin site frame by frame; one instance per site (it may keep state)."""

    def observe(self, crop: np.ndarray, mask: np.ndarray, ts: float) -> BinObservation:
        """Judge the site in this frame.

        Args:
            crop: BGR uint8 (h, w, 3) image of the site's bounding rectangle.
            mask: bool (h, w): the site polygon, with occluding people and vehicles removed.
            ts: Frame timestamp in seconds.
        """
        ...


EstimatorFactory = Callable[..., BinStateEstimator]
ESTIMATORS: dict[str, EstimatorFactory] = {}
# Options of each estimator that are file paths: edge.yaml gives them relative to its own folder.
PATH_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_estimator(
    name: str, path_options: tuple[str, ...] = ()
) -> Callable[[EstimatorFactory], EstimatorFactory]:
    """Register a factory under ``name``; the bin rule builds estimators by that name.

    Args:
        name: Registry name, used as ``bins.estimator`` in edge.yaml.
        path_options: Option names whose values are file paths (anchored by ``anchor_path_options``).
    """

    def decorate(factory: EstimatorFactory) -> EstimatorFactory:
        if name in ESTIMATORS:
            raise ValueError(f"bin estimator {name!r} is already registered")
        ESTIMATORS[name] = factory
        PATH_OPTIONS[name] = path_options
        return factory

    return decorate


def anchor_path_options(name: str, options: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``options`` with the estimator's relative path options joined to ``base_dir``."""
    anchored = dict(options)
    for key in PATH_OPTIONS.get(name, ()):
        value = anchored.get(key)
        if isinstance(value, str | Path) and not Path(value).is_absolute():
            anchored[key] = base_dir / value
    return anchored


def make_estimator(name: str, **options: object) -> BinStateEstimator:
    """A fresh estimator registered as ``name``, built with ``options``; unknown names list the known."""
    try:
        factory = ESTIMATORS[name]
    except KeyError:
        raise BinEstimatorError(
            f"unknown bin estimator {name!r}; known: {', '.join(sorted(ESTIMATORS))}"
        ) from None
    return factory(**options)


def check_site_inputs(crop: np.ndarray, mask: np.ndarray) -> None:
    """Raise ``BinEstimatorError`` unless crop is BGR uint8 (h, w, 3) and mask is bool (h, w)."""
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise BinEstimatorError(f"crop must be uint8 (h, w, 3), got {crop.dtype} {crop.shape}")
    if mask.shape != crop.shape[:2] or mask.dtype != np.bool_:
        raise BinEstimatorError(f"mask must be bool {crop.shape[:2]}, got {mask.dtype} {mask.shape}")


class ReferenceChangeConfig(BaseModel):
    """Settings of the model-free reference-change estimator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_s: float = Field(
        default=60.0,
        ge=0,
        title="Learning period (s)",
        description="Time the clean reference is learned from the first frame; the site must be clean then.",
    )
    learning_frames: int = Field(
        default=9,
        ge=1,
        le=64,
        title="Reference frames",
        description="Frames kept (evenly over the learning period) whose per-pixel median is the reference.",
    )
    work_max_side: int = Field(
        default=192,
        ge=16,
        title="Working size (px)",
        description="The crop is shrunk so its longer side is at most this; bigger costs time, not accuracy.",
    )
    blur_sigma: float = Field(
        default=1.0,
        ge=0,
        title="Noise blur sigma (px)",
        description="Gaussian blur against sensor noise and compression artefacts.",
    )
    diff_threshold: float = Field(
        default=32.0,
        gt=0,
        le=255,
        title="Colour difference threshold",
        description="Per-pixel difference (0-255, after brightness and contrast matching) that counts.",
    )
    ncc_window: int = Field(
        default=7,
        ge=3,
        title="Texture window (px)",
        description="Window of the local normalised cross-correlation (odd).",
    )
    ncc_keep: float = Field(
        default=0.75,
        ge=-1,
        le=1,
        title="Same-texture correlation",
        description="Textured pixels whose local correlation with the reference is at least this are "
        "unchanged: a shadow or glare changes brightness, not structure.",
    )
    texture_std: float = Field(
        default=6.0,
        ge=0,
        title="Texture std",
        description="Local grey std (0-255) above which a window counts as textured.",
    )
    persist_s: float = Field(
        default=10.0,
        gt=0,
        title="Persistence time constant (s)",
        description="Time constant of the per-pixel change average: passers-by fade, lasting changes count.",
    )
    on_threshold: float = Field(
        default=0.08,
        gt=0,
        le=1,
        title="Overflow on",
        description="Changed fraction of the visible site that turns overflowing on.",
    )
    off_threshold: float = Field(
        default=0.04,
        ge=0,
        le=1,
        title="Overflow off",
        description="Changed fraction at or below which overflowing turns off.",
    )
    adapt_s: float = Field(
        default=900.0,
        gt=0,
        title="Reference adaptation time constant (s)",
        description="While the site is clean, unchanged pixels drift towards the current image this slowly.",
    )
    min_visible_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="Minimum visible fraction",
        description="Below this share of the site visible (people, vehicles), no verdict is given.",
    )

    @model_validator(mode="after")
    def verify_hysteresis(self) -> ReferenceChangeConfig:
        if self.off_threshold >= self.on_threshold:
            raise ValueError("off_threshold must be below on_threshold")
        if self.ncc_window % 2 == 0:
            raise ValueError("ncc_window must be odd")
        return self


class ReferenceChangeEstimator:
    """Flags a bin site whose look has changed persistently from its learned clean reference.

    Per frame: the crop is shrunk and blurred, then matched in gain and offset per channel to the
    reference with a robust fit (median ratio, then least squares on the inliers), so a cloud or
    camera exposure change does not count. A pixel has changed when its matched colour is far from
    the reference *and* its local texture no longer correlates with the reference (a shadow keeps
    the texture). Each pixel's change is averaged over time (``persist_s``); the score is the share
    of visible site pixels whose average is above one half. Masked-out pixels keep their history.

    The reference is the per-pixel median of ``learning_frames`` frames spread over ``learning_s``,
    so the site must be clean while it learns (or pass ``reference``). Afterwards, while the
    decision is clean, unchanged pixels drift towards the current image (``adapt_s``), absorbing
    slow lighting change; changed pixels and an overflowing site never feed the reference, so a
    pile does not become part of it.

    Args:
        config: Thresholds and time constants.
        reference: Optional clean BGR image of the site crop; skips learning.

    Example:
        >>> est = ReferenceChangeEstimator(ReferenceChangeConfig(learning_s=0, learning_frames=1))
        >>> crop = np.full((40, 60, 3), 90, np.uint8)
        >>> est.observe(crop, np.ones((40, 60), bool), ts=0.0).score is None  # learns from this frame
        True
        >>> est.observe(crop, np.ones((40, 60), bool), ts=1.0)
        BinObservation(score=0.0, overflowing=False)
    """

    def __init__(
        self, config: ReferenceChangeConfig | None = None, reference: np.ndarray | None = None
    ) -> None:
        self.config = config or ReferenceChangeConfig()
        self._crop_hw: tuple[int, int] | None = None
        self._work_hw: tuple[int, int] = (0, 0)
        self._learn_start_ts: float | None = None
        self._learn: list[tuple[np.ndarray, np.ndarray]] = []
        self._ref: np.ndarray | None = None
        self._ref_valid: np.ndarray | None = None
        self._persist: np.ndarray | None = None
        self._last_ts: float | None = None
        self._site_px = 0
        self._overflowing = False
        self._initial_reference = reference

    @property
    def learning(self) -> bool:
        return self._ref is None

    def observe(self, crop: np.ndarray, mask: np.ndarray, ts: float) -> BinObservation:
        """Judge the site in this frame (see ``BinStateEstimator.observe``)."""
        check_site_inputs(crop, mask)
        if self._crop_hw != crop.shape[:2]:
            self._reset(crop.shape[:2])
        image, visible = self._prepare(crop, mask)
        self._site_px = max(self._site_px, int(visible.sum()))
        dt = 0.0 if self._last_ts is None else max(0.0, ts - self._last_ts)
        self._last_ts = ts
        if self._ref is None:
            self._learn_step(image, visible, ts)
            return UNKNOWN
        assert self._ref_valid is not None and self._persist is not None
        usable = visible & self._ref_valid
        if usable.sum() < self.config.min_visible_fraction * self._site_px:
            return UNKNOWN
        changed = self._changed(image, usable)
        alpha = 1.0 - math.exp(-dt / self.config.persist_s) if dt > 0 else 1.0 / self.config.learning_frames
        self._persist[usable] += alpha * (changed[usable] - self._persist[usable])
        score = float(np.count_nonzero(self._persist[usable] > 0.5)) / float(np.count_nonzero(usable))
        if score >= self.config.on_threshold:
            self._overflowing = True
        elif score <= self.config.off_threshold:
            self._overflowing = False
        if not self._overflowing:
            self._adapt(image, visible & (self._persist < 0.5) & (changed < 0.5), dt)
        return BinObservation(score=score, overflowing=self._overflowing)

    def _reset(self, crop_hw: tuple[int, int]) -> None:
        if self._crop_hw is not None:
            logger.warning(
                "bin site crop changed size %s -> %s; learning the reference again", self._crop_hw, crop_hw
            )
        self._crop_hw = crop_hw
        scale = min(1.0, self.config.work_max_side / max(crop_hw))
        self._work_hw = (max(1, round(crop_hw[0] * scale)), max(1, round(crop_hw[1] * scale)))
        self._learn_start_ts, self._learn, self._site_px = None, [], 0
        self._ref = self._ref_valid = self._persist = None
        self._overflowing = False
        initial, self._initial_reference = self._initial_reference, None
        if initial is not None:
            if initial.shape[:2] != crop_hw or initial.ndim != 3:
                raise BinEstimatorError(f"reference image {initial.shape} does not match the crop {crop_hw}")
            image, _ = self._prepare(initial, np.ones(crop_hw, bool))
            self._set_reference(image, np.ones(self._work_hw, bool))

    def _prepare(self, crop: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = self._work_hw
        image = (
            crop
            if crop.shape[:2] == self._work_hw
            else cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
        )
        image = image.astype(np.float32)
        if self.config.blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), self.config.blur_sigma)
        small = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return image, small.astype(bool)

    def _learn_step(self, image: np.ndarray, visible: np.ndarray, ts: float) -> None:
        cfg = self.config
        if self._learn_start_ts is None:
            self._learn_start_ts = ts
        elapsed = ts - self._learn_start_ts
        slot = cfg.learning_s / cfg.learning_frames
        if len(self._learn) < cfg.learning_frames and elapsed >= slot * len(self._learn):
            self._learn.append((image, visible))
        if elapsed >= cfg.learning_s and len(self._learn) >= cfg.learning_frames:
            stack = np.stack([frame for frame, _ in self._learn])
            seen = np.stack([vis for _, vis in self._learn])
            valid = seen.any(axis=0)
            if not valid.any() or valid.sum() < cfg.min_visible_fraction * self._site_px:
                # The site was hidden (a van in front) in every learning frame: such a reference
                # leaves too little to compare, so every later frame would be UNKNOWN. Learn again.
                logger.info("bin site hidden while learning its reference; learning again")
                self._learn_start_ts, self._learn = None, []
                return
            # A pixel hidden in every learning frame has no clean look to take the median of. It
            # stays invalid (and zero) and takes the site's look the first time it shows clean
            # (see _adapt); the median is taken over the pixels seen at least once.
            stack[~seen] = np.nan
            median = np.zeros(stack.shape[1:], np.float32)
            median[valid] = np.nanmedian(stack[:, valid], axis=0)
            self._set_reference(median, valid)
            self._learn = []
            logger.info("bin site reference learned from %d frames over %.0f s", len(seen), elapsed)

    def _set_reference(self, image: np.ndarray, valid: np.ndarray) -> None:
        self._ref = image.astype(np.float32)
        self._ref_valid = valid.copy()
        self._persist = np.zeros(self._work_hw, np.float32)
        self._overflowing = False

    def _match(self, image: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """``image`` mapped channel-wise by gain and offset onto the reference's brightness."""
        assert self._ref is not None
        matched = np.empty_like(image)
        for ch in range(3):
            cur, ref = image[..., ch][usable], self._ref[..., ch][usable]
            # A median ratio ignores up to half the site changing; the refit on its inliers adds an offset.
            gain = float(np.median((ref + 1.0) / (cur + 1.0)))
            inliers = np.abs(cur * gain - ref) < self.config.diff_threshold
            offset = 0.0
            x, y = cur[inliers], ref[inliers]
            if x.size >= 16 and float(x.std()) > 1.0:
                x_mean, y_mean = float(x.mean()), float(y.mean())
                gain = float(((x - x_mean) * (y - y_mean)).mean() / ((x - x_mean) ** 2).mean())
                offset = y_mean - gain * x_mean
            matched[..., ch] = image[..., ch] * gain + offset
        return matched

    def _changed(self, image: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """float32 (h, w), 1 where the pixel differs in colour and structure from the reference."""
        assert self._ref is not None
        cfg = self.config
        matched = self._match(image, usable)
        far = np.abs(matched - self._ref).max(axis=2) > cfg.diff_threshold
        cur_g, ref_g = matched.mean(axis=2), self._ref.mean(axis=2)
        win = (cfg.ncc_window, cfg.ncc_window)
        mean_c, mean_r = cv2.blur(cur_g, win), cv2.blur(ref_g, win)
        var_c = cv2.blur(cur_g * cur_g, win) - mean_c * mean_c
        var_r = cv2.blur(ref_g * ref_g, win) - mean_r * mean_r
        cov = cv2.blur(cur_g * ref_g, win) - mean_c * mean_r
        ncc = cov / np.sqrt(np.maximum(var_c * var_r, 1e-6))
        textured = np.minimum(var_c, var_r) > cfg.texture_std**2
        same_texture = textured & (ncc >= cfg.ncc_keep)
        return (far & ~same_texture & usable).astype(np.float32)

    def _adapt(self, image: np.ndarray, where: np.ndarray, dt: float) -> None:
        assert self._ref is not None and self._ref_valid is not None
        # Pixels never seen while learning take the current look the first time they show clean.
        fresh = where & ~self._ref_valid
        if fresh.any():
            np.copyto(self._ref, image, where=fresh[..., None])
            self._ref_valid |= fresh
        if dt <= 0:
            return
        rate = (1.0 - math.exp(-dt / self.config.adapt_s)) * (where & ~fresh).astype(np.float32)
        self._ref += rate[..., None] * (image - self._ref)


@register_estimator("reference_change")
def _reference_change(**options: object) -> BinStateEstimator:
    # Options are ReferenceChangeConfig fields, so a zone-level override validates like the config.
    return ReferenceChangeEstimator(ReferenceChangeConfig.model_validate(options))


# The learned estimator registers itself with the registry above when its module loads.
from curbwatch.edge import bin_classifier  # noqa: E402, F401

"""Tests of the bin-site state estimators on a real kerbside bin site.

The site is the row of four wheelie bins across the street in Frigate's ``driveway_zones.png``.
Sequences are made from that still: per-frame sensor noise and JPEG compression, slow lighting
drift, a sudden cloud (gain, tint and gamma step), rubbish appearing beside and in front of the
bins (dark bags with highlights, a white bag, cardboard boxes, and a real parcel cut from
``ground-plane.jpg``), a person walking through and a car stopping in front. The bin-rule tests
import the scene helpers from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from curbwatch.edge.bins import (
    ESTIMATORS,
    BinEstimatorError,
    BinObservation,
    BinStateEstimator,
    ReferenceChangeConfig,
    ReferenceChangeEstimator,
    make_estimator,
    register_estimator,
)

# The bin site in driveway_zones.png (1334x650): four bins on the verge across the street, with
# room beside and in front of them where rubbish gets left.
SITE_POLYGON = np.array([(425, 98), (598, 102), (604, 156), (425, 140)], np.float32)
SITE_RECT = (425, 98, 605, 157)  # x1, y1, x2, y2 (exclusive) bounding rect of the polygon
ROI = (380, 60, 660, 200)  # where noise and compression are simulated; the rule reads no further
# Spots beside the first bin, between bins and in front of them (x, y of each item's bottom-centre).
PILE_SPOTS = [(440, 128), (447, 138), (468, 140), (494, 146), (526, 149), (562, 151), (586, 153)]
FAST_CONFIG = ReferenceChangeConfig(learning_s=30.0, learning_frames=7)


@dataclass(frozen=True)
class Sprite:
    """A pasteable object: BGR float32 image and alpha in [0, 1]."""

    image: np.ndarray
    alpha: np.ndarray


def _blob_alpha(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Irregular soft-edged blob filling most of a (h, w) box, like a stuffed bag."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.arctan2(yy - h / 2, xx - w / 2)
    wobble = 1.0 + 0.12 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.08 * np.sin(5 * angle + rng.uniform(0, 6))
    radius = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
    return np.clip((wobble - radius) * 4.0, 0, 1).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    return cv2.GaussianBlur(rng.normal(0, scale, (h, w)).astype(np.float32), (0, 0), 1.2)


def dark_bag(rng: np.random.Generator, w: int = 20, h: int = 17) -> Sprite:
    """A black bin bag: dark, wrinkled, with a couple of specular highlights."""
    shade = np.linspace(1.15, 0.75, h, dtype=np.float32)[:, None]
    grey = (28 + _texture(rng, h, w, 14)) * shade
    image = np.repeat(grey[..., None], 3, axis=2) + np.float32([4, 2, 0])
    for _ in range(2):
        cx, cy = int(rng.integers(2, w - 2)), int(rng.integers(1, h // 2 + 1))
        cv2.ellipse(image, (cx, cy), (2, 1), float(rng.uniform(0, 180)), 0, 360, (170, 170, 175), -1)
    return Sprite(np.clip(image, 0, 255), _blob_alpha(rng, w, h))


def white_bag(rng: np.random.Generator, w: int = 19, h: int = 16) -> Sprite:
    """A white carrier bag, lit from above."""
    shade = np.linspace(1.05, 0.8, h, dtype=np.float32)[:, None]
    image = (np.float32([205, 210, 212]) + _texture(rng, h, w, 10)[..., None]) * shade[..., None]
    return Sprite(np.clip(image, 0, 255), _blob_alpha(rng, w, h))


def cardboard_box(rng: np.random.Generator, w: int = 22, h: int = 15) -> Sprite:
    """A flattened-perspective cardboard box: lit top, darker front, tape strip."""
    image = np.zeros((h, w, 3), np.float32)
    top = h // 3
    image[:top] = (95, 150, 190)
    image[top:] = (60, 105, 145)
    image[:, w // 2 - 1 : w // 2 + 1] = (150, 170, 185)
    image += _texture(rng, h, w, 6)[..., None]
    return Sprite(np.clip(image, 0, 255), np.ones((h, w), np.float32))


def real_parcel(data_dir: Path, w: int = 18, h: int = 17) -> Sprite:
    """The parcel the delivery person carries in ground-plane.jpg, shrunk to bin-site scale."""
    image = cv2.imread(str(data_dir / "frigate-cctv" / "ground-plane.jpg"))
    crop = cv2.resize(image[540:595, 650:693], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    return Sprite(crop, np.ones((h, w), np.float32))


def person_sprite(data_dir: Path, h: int = 46) -> Sprite:
    """The walking delivery person of ground-plane.jpg with an ellipse-shaped matte."""
    image = cv2.imread(str(data_dir / "frigate-cctv" / "ground-plane.jpg"))[458:722, 585:700]
    w = max(8, round(h * image.shape[1] / image.shape[0]))
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2 + 2), (w // 2 - 1, h // 2 - 2), 0, 0, 360, 1.0, -1)
    cv2.circle(alpha, (w // 2, h // 7), max(2, w // 5), 1.0, -1)
    return Sprite(small, cv2.GaussianBlur(alpha, (0, 0), 0.8))


def car_sprite(base: np.ndarray) -> Sprite:
    """The blue hatchback parked up the same street (same distance as the bins)."""
    crop = base[56:126, 110:270].astype(np.float32)
    alpha = np.zeros(crop.shape[:2], np.float32)
    cv2.rectangle(alpha, (2, 8), (crop.shape[1] - 3, crop.shape[0] - 3), 1.0, -1)
    return Sprite(crop, cv2.GaussianBlur(alpha, (0, 0), 1.0))


def pile(rng: np.random.Generator, data_dir: Path) -> list[tuple[Sprite, int, int]]:
    """Seven items of rubbish, in the order they are dumped, at their spots."""
    makers = [
        dark_bag(rng),
        cardboard_box(rng),
        dark_bag(rng, 22, 18),
        white_bag(rng),
        real_parcel(data_dir),
        dark_bag(rng, 18, 15),
        cardboard_box(rng, 20, 14),
    ]
    return [(sprite, x, y) for sprite, (x, y) in zip(makers, PILE_SPOTS, strict=True)]


def paste(
    canvas: np.ndarray, sprite: Sprite, x_bottom_centre: int, y_bottom: int
) -> tuple[int, int, int, int]:
    """Alpha-blend a sprite in place; returns its box x1, y1, x2, y2 (clamped)."""
    h, w = sprite.alpha.shape
    x1, y1 = x_bottom_centre - w // 2, y_bottom - h
    cx1, cy1 = max(0, x1), max(0, y1)
    cx2, cy2 = min(canvas.shape[1], x1 + w), min(canvas.shape[0], y1 + h)
    if cx2 <= cx1 or cy2 <= cy1:
        return cx1, cy1, cx1, cy1
    alpha = sprite.alpha[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1, None]
    region = canvas[cy1:cy2, cx1:cx2]
    canvas[cy1:cy2, cx1:cx2] = (
        region * (1 - alpha) + sprite.image[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1] * alpha
    )
    return cx1, cy1, cx2, cy2


@dataclass
class Lighting:
    """Per-channel gain, gamma and offset applied to the scene (a cloud, the sun moving)."""

    gain_bgr: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0


@dataclass
class BinScene:
    """Renders frames of the real bin site with noise, lighting and pasted objects."""

    base: np.ndarray
    seed: int = 0
    noise_sigma: float = 3.0
    jpeg_quality: int = 80
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @classmethod
    def load(cls, data_dir: Path, seed: int = 0) -> BinScene:
        return cls(cv2.imread(str(data_dir / "frigate-cctv" / "driveway_zones.png")), seed)

    def render(self, lighting: Lighting, items: list[tuple[Sprite, int, int]] = ()) -> np.ndarray:
        """A full frame; only the ROI around the site gets objects, noise and compression."""
        x1, y1, x2, y2 = ROI
        frame = cv2.multiply(self.base, np.array([*lighting.gain_bgr, 0.0]))
        frame[y1:y2, x1:x2] = self.render_roi(lighting, items)
        return frame

    def render_roi(self, lighting: Lighting, items: list[tuple[Sprite, int, int]] = ()) -> np.ndarray:
        """Just the ROI of a frame (what the estimator tests need; much cheaper)."""
        x1, y1, x2, y2 = ROI
        roi = self.base[y1:y2, x1:x2].astype(np.float32)
        for sprite, x, y in items:
            paste(roi, sprite, x - x1, y - y1)
        lit = 255.0 * (roi / 255.0) ** lighting.gamma * np.float32(lighting.gain_bgr)
        lit += self.rng.normal(0, self.noise_sigma, lit.shape).astype(np.float32)
        ok, jpeg = cv2.imencode(
            ".jpg", np.clip(lit, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        )
        assert ok
        return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)


def site_mask() -> np.ndarray:
    """Bool mask of the polygon inside SITE_RECT."""
    x1, y1, x2, y2 = SITE_RECT
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    cv2.fillPoly(mask, [np.round(SITE_POLYGON - (x1, y1)).astype(np.int32)], 1)
    return mask.astype(bool)


def site_crop(frame: np.ndarray, origin_xy: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The site's bounding rect out of a frame (or out of an ROI whose top-left is ``origin_xy``)."""
    x1, y1, x2, y2 = SITE_RECT
    ox, oy = origin_xy
    return frame[y1 - oy : y2 - oy, x1 - ox : x2 - ox]


def drift(ts: float, cloud_at: float | None = None) -> Lighting:
    """Slow warm-up of the light (sun climbing) plus an optional sudden cloud."""
    rise = 1.0 + 0.12 * min(1.0, ts / 900.0)
    gain = (rise * 0.98, rise, rise * 1.03)
    if cloud_at is not None and ts >= cloud_at:
        return Lighting((gain[0] * 0.74, gain[1] * 0.68, gain[2] * 0.62), gamma=1.12)
    return Lighting(gain)


def run_estimator(
    scene: BinScene, estimator: BinStateEstimator, times: Iterator[float] | list[float], items_at, lighting_at
) -> list[tuple[float, BinObservation]]:
    mask = site_mask()
    return [
        (ts, estimator.observe(site_crop(scene.render_roi(lighting_at(ts), items_at(ts)), ROI[:2]), mask, ts))
        for ts in times
    ]


@pytest.fixture(scope="module")
def scene(data_dir: Path) -> BinScene:
    return BinScene.load(data_dir, seed=3)


def test_clean_site_with_drift_noise_and_cloud_is_never_flagged(scene: BinScene) -> None:
    est = ReferenceChangeEstimator(FAST_CONFIG)
    obs = run_estimator(
        scene, est, list(np.arange(0.0, 900.0, 5.0)), lambda ts: [], lambda ts: drift(ts, cloud_at=400.0)
    )
    scores = [o.score for ts, o in obs if ts > FAST_CONFIG.learning_s]
    assert all(o.score is None for ts, o in obs if ts < FAST_CONFIG.learning_s)
    assert None not in scores
    assert max(scores) < FAST_CONFIG.off_threshold
    assert not any(o.overflowing for _, o in obs)


def test_rubbish_pile_is_flagged_and_cleared(scene: BinScene, data_dir: Path) -> None:
    items = pile(np.random.default_rng(5), data_dir)
    dump_start, removed_at = 100.0, 400.0

    def items_at(ts: float) -> list[tuple[Sprite, int, int]]:
        # One item every 10 s from dump_start, all gone at removed_at.
        if not dump_start <= ts < removed_at:
            return []
        return items[: int((ts - dump_start) // 10) + 1]

    est = ReferenceChangeEstimator(FAST_CONFIG)
    obs = run_estimator(
        scene, est, list(np.arange(0.0, 600.0, 2.0)), items_at, lambda ts: drift(ts, cloud_at=250.0)
    )
    full = [o.score for ts, o in obs if dump_start + 80 <= ts < removed_at]
    assert min(full) > FAST_CONFIG.on_threshold
    assert all(o.overflowing for ts, o in obs if dump_start + 80 <= ts < removed_at)
    first_flag = next(ts for ts, o in obs if o.overflowing)
    assert dump_start < first_flag <= dump_start + 60
    assert not any(o.overflowing for ts, o in obs if ts >= removed_at + 3 * FAST_CONFIG.persist_s)


def test_unmasked_passer_by_fades(scene: BinScene, data_dir: Path) -> None:
    """A person the detector missed walks through: transient change never reaches the on threshold."""
    person = person_sprite(data_dir)
    est = ReferenceChangeEstimator(FAST_CONFIG)

    def items_at(ts: float) -> list[tuple[Sprite, int, int]]:
        return [(person, int(400 + 20 * (ts - 60)), 150)] if 60 <= ts < 71 else []

    obs = run_estimator(scene, est, list(np.arange(0.0, 120.0, 1.0)), items_at, lambda ts: Lighting())
    assert not any(o.overflowing for _, o in obs)


def test_masked_pixels_keep_their_history_and_occlusion_gives_no_verdict(scene: BinScene) -> None:
    est = ReferenceChangeEstimator(FAST_CONFIG)
    mask = site_mask()
    crop = site_crop(scene.render(Lighting()))
    for ts in np.arange(0.0, 40.0, 5.0):
        est.observe(crop, mask, float(ts))
    hidden = mask.copy()
    hidden[:, : mask.shape[1] * 3 // 4] = False
    assert est.observe(np.zeros_like(crop), hidden, 45.0) == BinObservation(None, None)
    black_in_masked_area = crop.copy()
    black_in_masked_area[:, : mask.shape[1] // 4] = 0
    partly = mask.copy()
    partly[:, : mask.shape[1] // 4] = False
    assert est.observe(black_in_masked_area, partly, 50.0).score == 0.0


def test_pixels_hidden_while_learning_are_learned_once_they_show(scene: BinScene) -> None:
    """A pixel hidden in every learning frame has no clean look (an all-NaN median): it is left
    out of the reference, without a warning, and learned from the first clean frame that shows it,
    so rubbish later left there is noticed."""
    est = ReferenceChangeEstimator(FAST_CONFIG)
    mask = site_mask()
    crop = site_crop(scene.render(Lighting()))
    hidden = mask.copy()
    hidden[:, : mask.shape[1] // 4] = False
    dark = crop.copy()
    dark[:, : mask.shape[1] // 4] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ts in np.arange(0.0, 40.0, 5.0):
            est.observe(crop, hidden, float(ts))
        assert not est.learning
        assert est.observe(crop, mask, 40.0).score == 0.0
        scores = [est.observe(dark, mask, float(ts)).score for ts in np.arange(45.0, 120.0, 5.0)]
    assert scores[-1] >= 0.15


def test_site_hidden_in_every_learning_frame_is_learned_again(scene: BinScene) -> None:
    """With nothing of the site seen while learning, a reference would judge nothing ever after."""
    est = ReferenceChangeEstimator(FAST_CONFIG)
    mask = site_mask()
    crop = site_crop(scene.render(Lighting()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ts in np.arange(0.0, 40.0, 5.0):
            assert est.observe(crop, np.zeros_like(mask), float(ts)) == BinObservation(None, None)
        assert est.learning
        for ts in np.arange(40.0, 80.0, 5.0):
            est.observe(crop, mask, float(ts))
        assert not est.learning
        assert est.observe(crop, mask, 80.0).score == 0.0


def test_given_reference_skips_learning(scene: BinScene) -> None:
    crop = site_crop(scene.render(Lighting()))
    est = ReferenceChangeEstimator(FAST_CONFIG, reference=crop)
    assert est.observe(crop, site_mask(), 0.0).score == 0.0


@pytest.mark.parametrize(
    ("crop", "mask", "message"),
    [
        (np.zeros((10, 10), np.uint8), np.ones((10, 10), bool), "crop must be"),
        (np.zeros((10, 10, 3), np.float32), np.ones((10, 10), bool), "crop must be"),
        (np.zeros((10, 10, 3), np.uint8), np.ones((10, 11), bool), "mask must be"),
        (np.zeros((10, 10, 3), np.uint8), np.ones((10, 10), np.uint8), "mask must be"),
    ],
)
def test_bad_input_raises(crop: np.ndarray, mask: np.ndarray, message: str) -> None:
    with pytest.raises(BinEstimatorError, match=message):
        ReferenceChangeEstimator().observe(crop, mask, 0.0)


@pytest.mark.parametrize(
    ("options", "expectation"),
    [
        ({"on_threshold": 0.1, "off_threshold": 0.2}, pytest.raises(ValueError, match="off_threshold")),
        ({"ncc_window": 6}, pytest.raises(ValueError, match="odd")),
        ({"typo": 1}, pytest.raises(ValueError, match="typo")),
    ],
)
def test_config_is_checked(options: dict[str, object], expectation) -> None:
    with expectation:
        make_estimator("reference_change", **options)


def test_registry_builds_and_rejects_names() -> None:
    assert isinstance(make_estimator("reference_change"), BinStateEstimator)
    with pytest.raises(BinEstimatorError, match="reference_change"):
        make_estimator("no_such_estimator")
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("reference_change")(lambda: ReferenceChangeEstimator())
    assert set(ESTIMATORS) >= {"reference_change"}


def test_observation_score_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BinObservation(score=1.5, overflowing=True)

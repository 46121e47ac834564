"""Perceptual hashes and the group split: near-identical frames never straddle train and validation."""

from __future__ import annotations

from datetime import timedelta

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curbwatch.training.split import (
    SplitConfig,
    SplitError,
    assign_splits,
    dhash,
    hamming,
    phash,
    split_groups,
)
from tests.training.factories import T0, jpeg, scene


def reencoded(image: np.ndarray, brightness: int, quality: int) -> np.ndarray:
    """The same frame as a camera sends it a moment later: other sensor noise, light and JPEG quality."""
    noise = np.random.default_rng(abs(brightness)).normal(0, 3, image.shape)
    changed = np.clip(image.astype(np.float64) + brightness + noise, 0, 255).astype(np.uint8)
    return cv2.imdecode(np.frombuffer(jpeg(changed, quality), np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.parametrize(("hash_fn", "duplicate_bits"), [(phash, 4), (dhash, 4)])
def test_hash_finds_near_duplicates_and_separates_other_scenes(hash_fn, duplicate_bits: int) -> None:
    rng = np.random.default_rng(3)
    frames = [
        scene(rng, camera_seed=camera, labels=["car", "person", "motorcycle"])[0] for camera in range(6)
    ]
    for frame in frames:
        for brightness, quality in ((6, 90), (-10, 70), (12, 60)):
            assert hamming(hash_fn(frame), hash_fn(reencoded(frame, brightness, quality))) <= duplicate_bits
    other = [hamming(hash_fn(a), hash_fn(b)) for i, a in enumerate(frames) for b in frames[i + 1 :]]
    assert min(other) > 3 * duplicate_bits


def test_hashes_are_64_bit_and_stable() -> None:
    frame = scene(np.random.default_rng(0), camera_seed=1, labels=["car"])[0]
    for hash_fn in (phash, dhash):
        value = hash_fn(frame)
        assert 0 <= value < 2**64 and value == hash_fn(frame.copy())
        assert hash_fn(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)) == value  # grey input hashes the same


def test_groups_join_camera_time_blocks_and_cases() -> None:
    cameras = ["a", "a", "a", "b", "b", "a"]
    times = [T0, T0 + timedelta(minutes=50), T0 + timedelta(minutes=70), T0, T0 + timedelta(hours=5), T0]
    cases = ["c1", "c2", "c2", "c3", "c4", "c5"]
    groups = split_groups(cameras, times, cases, block_s=3600)
    # a@9h: images 0, 1, 5; image 2 is in the next block but the same case as image 1.
    assert groups[0] == groups[1] == groups[2] == groups[5]
    assert len({groups[0], groups[3], groups[4]}) == 3


def test_one_group_cannot_be_split() -> None:
    with pytest.raises(SplitError, match="one camera-time group"):
        assign_splits([7, 7, 7], SplitConfig())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 20 * 3600), st.integers(0, 15)), min_size=2, max_size=80
    ),
    st.floats(0.05, 0.5),
    st.integers(0, 5),
)
def test_no_block_or_case_on_both_sides(
    images: list[tuple[int, int, int]], fraction: float, seed: int
) -> None:
    cameras = [f"cam-{camera}" for camera, _, _ in images]
    times = [T0 + timedelta(seconds=offset) for _, offset, _ in images]
    cases = [f"case-{case}" for _, _, case in images]
    groups = split_groups(cameras, times, cases, block_s=3600)
    config = SplitConfig(val_fraction=fraction, seed=seed)
    if len(set(groups)) < 2:
        with pytest.raises(SplitError):
            assign_splits(groups, config)
        return
    sides = assign_splits(groups, config)
    assert {"train", "val"} == set(sides)
    side_of: dict[tuple, str] = {}
    for camera, at, case, side in zip(cameras, times, cases, sides, strict=True):
        for key in (("block", camera, int(at.timestamp() // 3600)), ("case", case)):
            assert side_of.setdefault(key, side) == side, key

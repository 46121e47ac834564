"""Near-duplicate hashes and the group split that keeps near-identical frames on one side.

Perceptual hashes (dHash, pHash) are implemented here with OpenCV and numpy; a group is every image
of one camera within one time block joined with every image of the same case, and each group goes
wholly to train or to validation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import cv2
import numpy as np


class SplitError(Exception):
    """The images cannot be split into train and validation."""


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash: is each pixel of a 9x8 thumbnail brighter than its right neighbour."""
    small = cv2.resize(_gray(image), (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    return _pack(small[:, 1:] > small[:, :-1])


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT frequencies of a 32x32 thumbnail vs their median.

    Robust to re-encoding, noise and global brightness changes, which is what separates two frames
    of a parked car; a moved object changes the low frequencies and so the hash.
    """
    small = cv2.resize(_gray(image), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    # The DC term is the mean brightness; leaving it out of the median keeps the bits balanced.
    return _pack(low > np.median(low[1:]))


def _pack(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.ravel().astype(np.uint8)).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


HASHES = {"phash": phash, "dhash": dhash}


def distances(hashes: np.ndarray, value: int) -> np.ndarray:
    """Hamming distance of every hash in ``hashes`` (uint64) to ``value``."""
    return np.bitwise_count(np.bitwise_xor(hashes, np.uint64(value)))


# ---- split ---------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


@dataclass(frozen=True)
class SplitConfig:
    """How images are kept apart between train and validation.

    Attributes:
        val_fraction: Target share of images in validation (whole groups move, so it is approximate).
        block_s: Length of a camera-time block; images of one camera within one block stay together.
        seed: Which groups go to validation.
    """

    val_fraction: float = 0.2
    block_s: float = 3600.0
    seed: int = 0


def split_groups(
    cameras: Sequence[str], times: Sequence[datetime], cases: Sequence[str], block_s: float
) -> list[int]:
    """Group id of each image: connected components of "same camera-time block" and "same case".

    A case's episode can run across a block boundary; joining by case keeps its frames together.

    Args:
        cameras: Camera of each image.
        times: Frame time of each image.
        cases: The case each image was first seen in.
        block_s: Length of a time block in seconds.
    """
    groups = _UnionFind(len(cameras))
    first_of: dict[tuple[str, ...], int] = {}
    for index, (camera, at, case_id) in enumerate(zip(cameras, times, cases, strict=True)):
        block = ("block", camera, str(int(at.timestamp() // block_s)))
        for key in (block, ("case", case_id)):
            groups.union(first_of.setdefault(key, index), index)
    return [groups.find(index) for index in range(len(cameras))]


def assign_splits(groups: Sequence[int], config: SplitConfig) -> list[str]:
    """'train' or 'val' per image; every group lies wholly on one side.

    Groups are visited in a seeded random order and each goes to validation when that brings its
    size closer to the target share; both sides always get at least one group.

    Raises:
        SplitError: Fewer than two groups: there is nothing to hold out.
    """
    sizes = Counter(groups)
    if len(sizes) < 2:
        raise SplitError(
            f"all {len(groups)} images fall into one camera-time group, so no validation set can be held "
            "out without near-identical frames on both sides; add cases from other cameras or times, "
            "or shorten --block-s"
        )
    order = sorted(sizes)
    np.random.default_rng(config.seed).shuffle(order)
    target = config.val_fraction * len(groups)
    val: set[int] = set()
    held = 0
    for group in order:
        if len(val) == len(sizes) - 1:
            break
        if abs(held + sizes[group] - target) < abs(held - target):
            val.add(group)
            held += sizes[group]
    if not val:
        val.add(min(order, key=lambda group: sizes[group]))
    return ["val" if group in val else "train" for group in groups]

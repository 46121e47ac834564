"""Content-addressed evidence store: one file per sha256 under a root folder.

A file is written (temp file, fsync, rename) *before* the transaction that records it commits,
so a committed row always has its bytes; a crash in between leaves an orphan file that the
redelivered message simply finds already there.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


class EvidenceStoreError(Exception):
    """The evidence store cannot read or write an image."""


class EvidenceHashError(EvidenceStoreError):
    """Bytes do not hash to the sha256 they claim."""


class EvidenceNotFound(EvidenceStoreError):
    """No image is stored under the sha256."""


class EvidenceOutsideStore(EvidenceStoreError):
    """The image's path resolves outside the store root (a symbolic link pointing out of it)."""


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class EvidenceStore:
    """Evidence images on disk, named by their sha256.

    Args:
        root: Folder of the store; created on first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def relative_path(self, sha256: str) -> str:
        """Where an image lives below the root; two levels of fan-out keep folders small."""
        if not _SHA256.fullmatch(sha256):
            raise EvidenceStoreError(f"{sha256!r} is not a lower-case hex sha256")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.jpg"

    def put(self, sha256: str, data: bytes) -> str:
        """Store ``data`` under ``sha256`` after checking the hash; returns the relative path."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise EvidenceHashError(f"bytes do not hash to {sha256}")
        relative = self.relative_path(sha256)
        target = self.root / relative
        if target.is_file() and target.stat().st_size == len(data):
            return relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_suffix(f".{os.getpid()}.tmp")
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        return relative

    def path_of(self, sha256: str) -> Path:
        """The stored file of ``sha256``, resolved, and never outside the store root.

        Links are followed before the check, so a link inside the store that points out of it
        (or a linked folder on the way) is refused rather than served.

        Raises:
            EvidenceStoreError: ``sha256`` is not a lower-case hex sha256.
            EvidenceOutsideStore: The path resolves outside the root.
            EvidenceNotFound: Nothing is stored under ``sha256``.
        """
        root = self.root.resolve()
        path = (root / self.relative_path(sha256)).resolve()
        if not path.is_relative_to(root):
            raise EvidenceOutsideStore(f"evidence {sha256} resolves outside the store")
        if not path.is_file():
            raise EvidenceNotFound(f"no evidence {sha256}")
        return path

    def read(self, sha256: str) -> bytes:
        """The stored bytes, checked against their hash (see :meth:`path_of` for the other errors)."""
        data = self.path_of(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise EvidenceHashError(f"stored evidence {sha256} is corrupt")
        return data

"""Shared fixtures: where the real test material lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``CURBWATCH_DATA`` or ``../shared/data`` beside the repository (always present in CI)."""
    return Path(os.environ.get("CURBWATCH_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real test material not found at {path}; set CURBWATCH_DATA")
    return path


@pytest.fixture(scope="session")
def yolox_nano_path(data_dir: Path) -> Path:
    return data_dir / "yolox-nano" / "yolox_nano.onnx"

"""Training fixtures: a fresh server database per test (dataset exports read every case in it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from curbwatch.server.db import make_engine, make_session_factory, migrate
from tests.conftest import REPO_ROOT
from tests.server.conftest import _postgres_database
from tests.training.factories import VerdictDb

ULTRALYTICS_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_CONFIG_DIR": str(REPO_ROOT / "build" / "ultralytics"),
}


def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """A newly migrated, empty database of ``backend``."""
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'curbwatch.db'}"
        migrate(url)
        yield url
        return
    for url in _postgres_database():
        migrate(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database(request.param, tmp_path)


@pytest.fixture
def verdict_db(fresh_database_url: str, tmp_path: Path) -> Iterator[VerdictDb]:
    engine = make_engine(fresh_database_url)
    try:
        yield VerdictDb(make_session_factory(engine), tmp_path / "evidence")
    finally:
        engine.dispose()


@pytest.fixture
def ultralytics_env() -> dict[str, str]:
    """Environment for subprocesses that import Ultralytics: offline, no installs, config under build/."""
    return {**os.environ, **ULTRALYTICS_ENV}

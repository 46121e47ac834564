"""Open311 fixtures: an app with a GeoReport key on a fixed clock, and a forwarding rig."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.server.open311.cases import city_config, unique_epoch, with_config
from tests.server.open311.rig import Rig, make_rig
from tests.server.web import conftest as web_conftest
from tests.server.web.case_factory import FakeClock
from tests.server.web.conftest import WebApp

web = web_conftest.web  # the web tests' app fixture, shared


@pytest.fixture
def epoch() -> datetime:
    return unique_epoch()


@pytest.fixture
def app(web: WebApp, epoch: datetime) -> WebApp:
    """An app on the fixed clock ``epoch`` with a GeoReport key configured."""
    return with_config(web, city_config(), FakeClock(epoch))


@pytest.fixture
def rig(web: WebApp, epoch: datetime) -> Rig:
    """An app forwarding to two fake upstreams of this test."""
    return make_rig(web, epoch)

"""The stack behind ``curbwatch demo``: broker, ingest and web UI in one process (the demo: test_demo.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from curbwatch.broker import free_port
from curbwatch.stack import DEMO_LOGINS, LocalStack, StackError

pytestmark = [
    pytest.mark.slow,
    # uvicorn's thread exits with SystemExit when its port is taken; that is the case under test.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def test_stack_serves_the_api_to_a_demo_login(tmp_path: Path) -> None:
    with LocalStack(tmp_path, http_port=free_port()) as stack:
        login = DEMO_LOGINS[0]
        with httpx.Client(base_url=stack.url) as client:
            token = client.post(
                "/api/v1/auth/token", data={"username": login.username, "password": login.password}
            ).json()["access_token"]
            me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert me["role"] == login.role
        assert stack.device_key("edge-x") == stack.device_key("edge-x")


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with (
        LocalStack(tmp_path / "a", http_port=free_port()) as first,
        pytest.raises(StackError, match="could not start"),
    ):
        LocalStack(tmp_path / "b", http_port=first.http_port).start()

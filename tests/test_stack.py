"""The local stack behind ``curbwatch demo``: a real edge's events become cases in the web app."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from curbwatch.broker import free_port
from curbwatch.demo import DEMO_DEVICE, run_stack_demo
from curbwatch.server.audit import verify_chain
from curbwatch.server.tables import AuditLog, Case
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


def test_the_demo_street_gives_one_case_for_the_parked_car(tmp_path: Path, data_dir: Path) -> None:
    result = run_stack_demo(tmp_path, 80, http_port=free_port(), realtime=False, keep_serving=False)
    assert result.events >= 1
    assert result.cases == 1
    engine = create_engine(f"sqlite:///{tmp_path / 'curbwatch.db'}")
    with engine.connect() as connection:
        case = connection.execute(select(Case)).one()
        assert (case.device_id, case.camera_id, case.zone, case.status) == (
            DEMO_DEVICE,
            "demo-kerb",
            "far-kerb",
            "awaiting_verification",
        )
        actions = connection.scalars(select(AuditLog.action).where(AuditLog.case_id == case.id)).all()
        assert actions == ["open_case"]
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        assert verify_chain(session) == []
    engine.dispose()

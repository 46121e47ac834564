"""End to end: the demo scenario, headless, against the generated streets' ground truth.

``run_stack_demo`` is what ``make demo`` runs (same streets, same detector, same edge config), with
the cameras unpaced and the server stopped when the streets end. Every violation episode of both
streets must become exactly one case, and no case may be without an episode; an operator then
confirms and rejects cases and a dispatcher dispatches one through the API of the restarted stack.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from curbwatch.broker import free_port
from curbwatch.demo import DemoResult, run_stack_demo
from curbwatch.demo_truth import cases_from_database, episodes_from_truth, match_cases
from curbwatch.edge.demo import DEMO_DEVICE, DEMO_SEEDS, run_demo
from curbwatch.server.audit import verify_chain
from curbwatch.stack import DEMO_LOGINS, LocalStack

# The first test renders both streets (a minute or two on a busy 2-core machine) and runs the edge.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    workdir = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as patch:
        # The demo needs nothing from the shared test material: point it at a folder that is not there.
        patch.setenv("CURBWATCH_DATA", str(workdir / "no-shared-data"))
        return run_stack_demo(workdir, http_port=free_port(), realtime=False, keep_serving=False)


def _token(client: httpx.Client, role: str) -> dict[str, str]:
    login = next(login for login in DEMO_LOGINS if login.role == role)
    response = client.post(
        "/api/v1/auth/token", data={"username": login.username, "password": login.password}
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_every_violation_episode_becomes_exactly_one_case(demo_run: DemoResult) -> None:
    assert [street.camera_id for street in demo_run.streets] == [f"street-{seed}" for seed in DEMO_SEEDS]
    episodes = [
        episode
        for street in demo_run.streets
        for episode in episodes_from_truth(street.truth, street.zones, demo_run.start_ts)
    ]
    cases = cases_from_database(demo_run.database_url)
    result = match_cases(episodes, cases)
    assert result.perfect, result.summary()
    assert len(episodes) >= 2 * len(DEMO_SEEDS)  # each street has several kinds of violation
    assert demo_run.cases == len(cases) == len(episodes)


def test_operators_confirm_reject_and_dispatch_the_demo_cases(demo_run: DemoResult) -> None:
    workdir = Path(demo_run.database_url.removeprefix("sqlite:///")).parent
    with LocalStack(workdir, http_port=free_port()) as stack, httpx.Client(base_url=stack.url) as client:
        operator, dispatcher = _token(client, "operator"), _token(client, "dispatcher")
        queue = client.get("/api/v1/cases", params={"status": "awaiting_verification"}, headers=operator)
        cases = queue.json()["items"]
        assert len(cases) == demo_run.cases >= 2
        assert {case["device_id"] for case in cases} == {DEMO_DEVICE}
        first, second = cases[0]["id"], cases[1]["id"]

        def act(case_id: str, headers: dict[str, str], **body: str) -> httpx.Response:
            return client.post(f"/api/v1/cases/{case_id}/actions", json=body, headers=headers)

        assert act(first, operator, action="confirm").json()["status"] == "filed"
        rejected = act(second, operator, action="reject", reason="false_detection")
        assert rejected.json()["status"] == "void"
        department = client.get("/api/v1/meta", headers=operator).json()["departments"][0]
        assert act(first, operator, action="dispatch", department=department).status_code == 403
        dispatched = act(first, dispatcher, action="dispatch", department=department)
        assert dispatched.json()["status"] == "dispatched"
    engine = create_engine(demo_run.database_url)
    with Session(engine) as session:
        assert verify_chain(session) == []
    engine.dispose()


def test_the_edge_alone_prints_an_event_for_every_episode(demo_run: DemoResult, capsys) -> None:
    # Same work folder: the streets rendered for the stack run are reused.
    workdir = Path(demo_run.database_url.removeprefix("sqlite:///")).parent
    count = run_demo(workdir, start_time="2026-11-27T09:00:00+08:00")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert count == len(events) > 0
    opened = {(e["camera_id"], e["zone"], e["event_code"]) for e in events if e["type"] == "start"}
    episodes = {
        (episode.camera_id, episode.zone, episode.event_code)
        for street in demo_run.streets
        for episode in episodes_from_truth(street.truth, street.zones, 0.0)
    }
    assert opened == episodes

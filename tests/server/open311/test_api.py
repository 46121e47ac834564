"""The forwardings REST API: supervisors see failures and put them back in the queue."""

from __future__ import annotations

from datetime import datetime

import httpx
from sqlalchemy import select

from curbwatch.server.tables import AuditLog
from tests.server.open311.cases import file_case
from tests.server.open311.rig import Rig


def _failed_case(rig: Rig, epoch: datetime) -> tuple[str, int]:
    case = file_case(rig.app, epoch)
    refusal = [{"code": 400, "description": "unknown service_code"}]
    rig.upstream.script.append(lambda _: httpx.Response(400, json=refusal))
    rig.worker().run_once(epoch)
    return case.id, rig.rows(case.id)[rig.city].id


def test_supervisors_see_failed_forwardings_with_the_reason(rig: Rig, epoch: datetime) -> None:
    case_id, forwarding_id = _failed_case(rig, epoch)
    supervisor = rig.app.signed_in("supervisor")
    response = supervisor.get("/api/v1/forwardings", params={"status": "failed"})
    assert response.status_code == 200, response.text
    listed = {item["id"]: item for item in response.json()}
    assert {item["status"] for item in listed.values()} == {"failed"}
    item = listed[forwarding_id]
    assert (item["case_id"], item["target"], item["attempts"]) == (case_id, rig.city, 1)
    assert item["last_error"] == "HTTP 400: unknown service_code"
    assert datetime.fromisoformat(item["updated_at"]) == epoch
    pending = supervisor.get("/api/v1/forwardings", params={"status": "pending"}).json()
    assert forwarding_id not in {i["id"] for i in pending}
    assert supervisor.get("/api/v1/forwardings", params={"status": "lost"}).status_code == 422


def test_only_supervisors_and_above(rig: Rig, epoch: datetime) -> None:
    _, forwarding_id = _failed_case(rig, epoch)
    for role in ("operator", "dispatcher"):
        client = rig.app.signed_in(role)
        assert client.get("/api/v1/forwardings").status_code == 403
        assert client.post(f"/api/v1/forwardings/{forwarding_id}/retry").status_code == 403
    assert rig.app.client().get("/api/v1/forwardings").status_code == 401
    assert rig.app.signed_in("admin").get("/api/v1/forwardings").status_code == 200


def test_retry_puts_a_failed_forwarding_back_and_it_is_sent(rig: Rig, epoch: datetime) -> None:
    case_id, forwarding_id = _failed_case(rig, epoch)
    supervisor = rig.app.signed_in("supervisor")
    response = supervisor.post(f"/api/v1/forwardings/{forwarding_id}/retry")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["attempts"]) == ("pending", 0)
    with rig.app.session_factory() as session:
        entry = session.scalars(
            select(AuditLog).where(AuditLog.case_id == case_id).order_by(AuditLog.id.desc()).limit(1)
        ).one()
    assert entry.action == "forward_retry" and entry.role == "supervisor"
    assert entry.details == {
        "forwarding_id": forwarding_id,
        "target": rig.city,
        "previous_error": "HTTP 400: unknown service_code",
    }
    assert supervisor.post(f"/api/v1/forwardings/{forwarding_id}/retry").status_code == 409
    assert rig.worker().run_once(epoch).sent == 1
    assert rig.rows(case_id)[rig.city].status == "sent"


def test_retry_needs_a_known_id_and_the_csrf_token(rig: Rig, epoch: datetime) -> None:
    _, forwarding_id = _failed_case(rig, epoch)
    supervisor = rig.app.signed_in("supervisor")
    assert supervisor.post("/api/v1/forwardings/999999999/retry").status_code == 404
    del supervisor.headers["X-CSRF-Token"]
    assert supervisor.post(f"/api/v1/forwardings/{forwarding_id}/retry").status_code == 403

"""Forwarding filed cases to upstream GeoReport servers: routing, retries, failures, concurrency."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text

from curbwatch.server.open311.config import UpstreamConfig
from curbwatch.server.open311.forwarding import ForwardingWorker, enqueue_forwardings
from curbwatch.server.open311.upstream import JITTER, backoff_s, retry_after_s
from curbwatch.server.tables import Case
from tests.server.open311.cases import LOCATION, file_case
from tests.server.open311.rig import BASE_S, MAX_S, OUR_KEY, FakeUpstream, Rig, status, upstream_settings


def utc(at: datetime | None) -> datetime | None:
    return None if at is None else at.replace(tzinfo=UTC) if at.tzinfo is None else at


def test_filing_queues_one_row_per_routed_upstream_once(rig: Rig, epoch: datetime) -> None:
    parking = file_case(rig.app, epoch)
    vending = file_case(rig.app, epoch, event_code="0501")
    rubbish = file_case(rig.app, epoch, event_code="0102")
    waiting = file_case(rig.app, epoch, steps=0)
    assert set(rig.rows(parking.id)) == {rig.city}
    assert set(rig.rows(vending.id)) == {rig.city, rig.district}
    assert rig.rows(rubbish.id) == rig.rows(waiting.id) == {}
    row = rig.rows(parking.id)[rig.city]
    assert (row.status, row.attempts, utc(row.next_attempt_at)) == ("pending", 0, epoch)
    with rig.app.session_factory() as session, session.begin():
        case = session.get(Case, parking.id)
        assert case is not None
        assert enqueue_forwardings(session, case, rig.config.open311, epoch) == []
    assert len(rig.rows(parking.id)) == 1


def test_confirming_through_the_api_queues_the_forwarding(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch, steps=0)
    operator = rig.app.signed_in("operator")
    response = operator.post(f"/api/v1/cases/{case.id}/actions", json={"action": "confirm"})
    assert response.status_code == 200, response.text
    assert rig.rows(case.id)[rig.city].status == "pending"


def test_success_posts_the_georeport_form_and_stores_the_external_id(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch, event_code="0501")
    summary = rig.worker().run_once(epoch)
    assert (summary.sent, summary.retrying, summary.failed) == (2, 0, 0)
    forms = dict(rig.upstream.forms)
    city = forms["city.example"]
    assert city["api_key"] == OUR_KEY and city["jurisdiction_id"] == "city.gov"
    assert city["service_code"] == "VEND" and forms["district.example"]["service_code"] == "0501"
    assert (float(city["lat"]), float(city["long"])) == LOCATION
    assert case.camera_id in city["address_string"] and case.camera_id in city["description"]
    assert city["attribute[case]"] == case.id
    with rig.app.session_factory() as session:
        grid_cell = session.get(Case, case.id).grid_cell  # type: ignore[union-attr]
    assert city.get("attribute[grid]") == grid_cell  # an empty value is left out
    assert "jurisdiction_id" not in forms["district.example"]
    # The media link opens the annotated image for an upstream that has no account here.
    media = urlsplit(city["media_url"])
    image = rig.app.client().get(f"{media.path}?{media.query}")
    assert image.status_code == 200 and image.content == rig.app.context.evidence.read(case.annotated)
    row = rig.rows(case.id)[rig.city]
    assert (row.status, row.external_id, row.attempts, row.last_error) == (
        "sent",
        f"ext-{case.id[:8]}",
        1,
        None,
    )
    assert utc(row.sent_at) == epoch and row.next_attempt_at is None
    actions = [(e.action, e.actor, e.details["target"]) for e in rig.audit(case.id)]
    assert sorted(actions) == sorted(
        [("forward", "forwarder", rig.city), ("forward", "forwarder", rig.district)]
    )
    assert rig.worker().run_once(epoch + timedelta(days=1)).sent == 0


def test_an_upstream_answering_with_a_token_only(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch)
    rig.upstream.script.append(
        lambda _: httpx.Response(201, json=[{"token": "tok-42", "service_notice": ""}])
    )
    assert rig.worker().run_once(epoch).sent == 1
    assert rig.rows(case.id)[rig.city].external_id == "tok-42"


def test_a_503_is_retried_after_a_jittered_back_off(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch)
    rig.upstream.script.append(status(503))
    worker = rig.worker()
    assert worker.run_once(epoch).retrying == 1
    row = rig.rows(case.id)[rig.city]
    wait_s = (utc(row.next_attempt_at) - epoch).total_seconds()  # type: ignore[operator]
    assert BASE_S * (1 - JITTER) <= wait_s <= BASE_S
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 503: busy")
    assert worker.run_once(epoch + timedelta(seconds=wait_s - 1)).handled == 0  # not due yet
    assert worker.run_once(epoch + timedelta(seconds=wait_s)).sent == 1
    row = rig.rows(case.id)[rig.city]
    assert (row.status, row.attempts, row.last_error) == ("sent", 2, None)
    failed, sent = rig.audit(case.id)
    assert (failed.action, failed.details["error"], failed.details["attempt"]) == (
        "forward_failed",
        "HTTP 503: busy",
        1,
    )
    assert "final" not in failed.details
    assert (sent.action, sent.details["attempt"]) == ("forward", 2)


@pytest.mark.parametrize("http_date", [False, True])
def test_retry_after_is_honoured(rig: Rig, epoch: datetime, http_date: bool) -> None:
    case = file_case(rig.app, epoch)
    later = epoch + timedelta(seconds=1800)
    header = format_datetime(later, usegmt=True) if http_date else "1800"
    rig.upstream.script.append(status(429, **{"Retry-After": header}))
    rig.worker().run_once(epoch)
    assert utc(rig.rows(case.id)[rig.city].next_attempt_at) == later


def test_a_refusal_fails_at_once_with_the_upstreams_reason(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch)
    refusal = [{"code": 400, "description": "service_code 0505 is not a valid service"}]
    rig.upstream.script.append(lambda _: httpx.Response(400, json=refusal))
    assert rig.worker().run_once(epoch).failed == 1
    row = rig.rows(case.id)[rig.city]
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", 1, None)
    assert row.last_error == "HTTP 400: service_code 0505 is not a valid service"
    (entry,) = rig.audit(case.id)
    assert (entry.action, entry.details["final"], entry.details["error"]) == (
        "forward_failed",
        True,
        row.last_error,
    )


def test_a_success_without_an_id_is_a_visible_failure(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch)
    rig.upstream.script.append(lambda _: httpx.Response(200, text="<html>welcome</html>"))
    rig.worker().run_once(epoch)
    row = rig.rows(case.id)[rig.city]
    assert row.status == "failed" and "without service_request_id" in (row.last_error or "")


def test_after_max_attempts_the_forwarding_fails(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch)

    def refuse_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rig.upstream.script.extend([refuse_connection, status(502), status(500), status(504)])
    worker = rig.worker()
    at = epoch
    for attempt in range(1, 5):
        summary = worker.run_once(at)
        row = rig.rows(case.id)[rig.city]
        assert row.attempts == attempt
        if attempt < 4:
            assert summary.retrying == 1 and row.status == "pending"
            wait_s = (utc(row.next_attempt_at) - at).total_seconds()  # type: ignore[operator]
            full = min(MAX_S, BASE_S * 2 ** (attempt - 1))
            assert full * (1 - JITTER) <= wait_s <= full
            at = utc(row.next_attempt_at)  # type: ignore[assignment]
    assert (summary.failed, row.status, row.last_error) == (1, "failed", "HTTP 504: busy")
    entries = rig.audit(case.id)
    assert [e.action for e in entries] == ["forward_failed"] * 4
    assert "ConnectError" in entries[0].details["error"] and entries[-1].details["final"] is True
    assert worker.run_once(at + timedelta(days=1)).handled == 0


def test_routing_sends_each_code_to_its_upstreams_only(rig: Rig, epoch: datetime) -> None:
    parking = file_case(rig.app, epoch)
    vending = file_case(rig.app, epoch, event_code="0501")
    file_case(rig.app, epoch, event_code="0102")
    assert rig.worker().run_once(epoch).sent == 3
    by_host: dict[str, set[str]] = {}
    for host, form in rig.upstream.forms:
        by_host.setdefault(host, set()).add(form["attribute[case]"])
    assert by_host == {"city.example": {parking.id, vending.id}, "district.example": {vending.id}}


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    upstream = UpstreamConfig.model_validate(upstream_settings("https://u.example"))
    rng = random.Random(3)
    for attempt in range(1, 12):
        full = min(MAX_S, BASE_S * 2 ** (attempt - 1))
        waits = [backoff_s(attempt, upstream, rng) for _ in range(50)]
        assert all(full * (1 - JITTER) <= w <= full for w in waits)
        assert len(set(waits)) > 1  # jittered
    assert backoff_s(3, upstream, random.Random(1)) == backoff_s(3, upstream, random.Random(1))


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("120", 120.0), ("0", 1.0), ("soon", None), ("99999999", 86400.0)],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    assert retry_after_s(header, datetime(2040, 1, 1, tzinfo=UTC)) == expected


def test_two_workers_never_send_the_same_row(rig: Rig, epoch: datetime) -> None:
    cases = {file_case(rig.app, epoch).id for _ in range(12)}
    upstreams = [FakeUpstream(delay_s=0.02), FakeUpstream(delay_s=0.02)]
    workers = [rig.worker(upstream) for upstream in upstreams]
    threads = [threading.Thread(target=w.run_once, args=(epoch,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent = [form["attribute[case]"] for upstream in upstreams for _, form in upstream.forms]
    assert sorted(sent) == sorted(cases)
    assert all(upstream.forms for upstream in upstreams), "both workers should have sent some"
    assert {row.status for case_id in cases for row in rig.rows(case_id).values()} == {"sent"}


def test_a_row_locked_elsewhere_is_skipped_not_waited_for(
    rig: Rig, epoch: datetime, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks (SKIP LOCKED) are PostgreSQL's; SQLite has one writer")
    locked, free = file_case(rig.app, epoch), file_case(rig.app, epoch)
    locked_id = rig.rows(locked.id)[rig.city].id
    with rig.app.session_factory() as holder, holder.begin():
        holder.execute(text("SELECT id FROM forwardings WHERE id = :id FOR UPDATE"), {"id": locked_id})
        runner = threading.Thread(target=rig.worker().run_once, args=(epoch,))
        runner.start()
        runner.join(30)
        assert not runner.is_alive(), "the worker waited on a locked row"
    assert rig.rows(free.id)[rig.city].status == "sent"
    assert rig.rows(locked.id)[rig.city].status == "pending"
    assert rig.worker().run_once(epoch).sent == 1


def test_run_forever_sends_and_stops(rig: Rig, epoch: datetime) -> None:
    case = file_case(rig.app, epoch)
    worker = ForwardingWorker(
        rig.app.session_factory,
        rig.config,
        httpx.Client(transport=httpx.MockTransport(rig.upstream)),
        clock=rig.clock,
        poll_interval_s=0.01,
    )
    stop = threading.Event()
    runner = threading.Thread(target=worker.run_forever, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 30
    while rig.rows(case.id)[rig.city].status != "sent" and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    runner.join(10)
    assert not runner.is_alive()
    assert rig.rows(case.id)[rig.city].status == "sent"
    assert "media_url" not in rig.upstream.forms[0][1]  # no link function, no link

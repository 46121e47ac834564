"""Talking to an upstream GeoReport v2 server: the request form, reading its answer, when to retry.

Pure functions: no database and no clock of their own, so the worker's behaviour on each kind of
answer is tested without a network (``httpx.MockTransport`` builds the responses).
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from curbwatch.server.db import as_utc
from curbwatch.server.open311.config import CaseField, UpstreamConfig
from curbwatch.server.open311.georeport import address_of, description_of, iso
from curbwatch.server.tables import Case

if TYPE_CHECKING:
    from curbwatch.server.config import CaseServerConfig

JITTER = 0.25  # a retry waits between 75% and 100% of the back-off, so failed rows spread out
MIN_DELAY_S = 1.0
RETRY_AFTER_MAX_S = 24 * 3600.0  # a broken Retry-After must not park a row for ever
ERROR_TEXT_MAX = 500
EXTERNAL_ID_MAX = 128  # the forwardings.external_id column
RETRYABLE_STATUS = frozenset({408, 429})


def backoff_s(attempt: int, upstream: UpstreamConfig, rng: random.Random) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): doubling, capped, minus jitter."""
    full = min(upstream.backoff_max_s, upstream.backoff_base_s * 2.0 ** (attempt - 1))
    return max(MIN_DELAY_S, full * (1.0 - JITTER * rng.random()))


def retry_after_s(value: str | None, at: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (as_utc(when) - at).total_seconds()
    return min(max(seconds, MIN_DELAY_S), RETRY_AFTER_MAX_S)


def _case_value(case: Case, field: CaseField, config: CaseServerConfig) -> str:
    values: dict[CaseField, Any] = {
        CaseField.CASE_ID: case.id,
        CaseField.CAMERA_ID: case.camera_id,
        CaseField.ZONE: case.zone,
        CaseField.GRID_CELL: case.grid_cell,
        CaseField.RULE: case.rule,
        CaseField.VIOLATION: case.violation,
        CaseField.DEADLINE: iso(case.deadline, config),
        CaseField.FILED_AT: iso(case.filed_at, config),
    }
    return str(values[field] or "")


def georeport_form(
    case: Case, upstream: UpstreamConfig, config: CaseServerConfig, media_url: str | None
) -> dict[str, str]:
    """The ``POST requests.json`` form that reports ``case`` to ``upstream``."""
    form = {
        "api_key": upstream.api_key.get_secret_value(),
        "service_code": upstream.service_codes.get(case.event_code, case.event_code),
        "address_string": address_of(case),
        "description": description_of(case, config),
    }
    if upstream.jurisdiction_id:
        form["jurisdiction_id"] = upstream.jurisdiction_id
    if case.location_lat is not None and case.location_lon is not None:
        form["lat"], form["long"] = str(case.location_lat), str(case.location_lon)
    if media_url:
        form["media_url"] = media_url
    for code, field in upstream.attributes.items():
        value = _case_value(case, field, config)
        if value:  # an empty attribute would read as "answered with nothing"
            form[f"attribute[{code}]"] = value
    return form


@dataclass(frozen=True)
class Outcome:
    """What one POST came to."""

    external_id: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None


def _error_text(response: httpx.Response) -> str:
    try:
        document = response.json()
        descriptions = [str(item["description"]) for item in document if isinstance(item, dict)]
        detail = "; ".join(descriptions) or response.text
    except (ValueError, TypeError, KeyError):
        detail = response.text
    return f"HTTP {response.status_code}: {detail.strip()[:ERROR_TEXT_MAX]}"


def _external_id(response: httpx.Response) -> str | None:
    try:
        document = response.json()
    except ValueError:
        return None
    first = document[0] if isinstance(document, list) and document else document
    if not isinstance(first, dict):
        return None
    value = first.get("service_request_id") or first.get("token")
    return str(value) if value not in (None, "") else None


def interpret(response: httpx.Response, at: datetime) -> Outcome:
    """Sent, worth retrying (5xx, 408, 429) or refused (any other status, or a 2xx without an id)."""
    code = response.status_code
    if code >= 500 or code in RETRYABLE_STATUS:
        return Outcome(
            error=_error_text(response),
            retryable=True,
            retry_after_s=retry_after_s(response.headers.get("Retry-After"), at),
        )
    if not response.is_success:
        return Outcome(error=_error_text(response))
    external_id = _external_id(response)
    if external_id is None:
        return Outcome(
            error=f"HTTP {code} without service_request_id or token: {response.text[:ERROR_TEXT_MAX]}"
        )
    if len(external_id) > EXTERNAL_ID_MAX:
        return Outcome(error=f"HTTP {code} with a service_request_id over {EXTERNAL_ID_MAX} characters")
    return Outcome(external_id=external_id)

"""Open311 GeoReport v2 (JSON) at ``/open311/v2``: services, filed cases and their status updates.

GeoReport reads are public in many cities, but ours carry links to evidence images, so every call
needs a signed-in user or an ``api_key`` from ``Open311Config.api_keys``. Every error, including a
malformed query, is answered in the GeoReport format ``[{"code": 400, "description": "..."}]``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from curbwatch.server.open311.georeport import (
    MAX_RESULTS,
    MediaLink,
    Open311Error,
    RequestFilters,
    RequestOut,
    ServiceDefinitionOut,
    ServiceOut,
    UpdateOut,
    date_window,
    find_request,
    find_requests,
    find_updates,
    requests_out,
    service_definition,
    services,
)
from curbwatch.server.web.api.evidence import evidence_link
from curbwatch.server.web.context import AppContext
from curbwatch.server.web.deps import Context, Db, LoginRequired, current_principal

OPEN311_STATUSES = ("open", "closed")


class ErrorOut(BaseModel):
    """One GeoReport error; every error answer is a list of these."""

    code: int
    description: str


def error_response(code: int, description: str) -> JSONResponse:
    """A GeoReport error document."""
    return JSONResponse([{"code": code, "description": description}], status_code=code)


def _validation_text(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


class Open311Route(APIRoute):
    """Answers every error of its endpoint (dependencies included) in the GeoReport format."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def georeport_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Open311Error as exc:
                return error_response(exc.code, exc.description)
            except RequestValidationError as exc:
                return error_response(400, _validation_text(exc))
            except HTTPException as exc:
                return error_response(exc.status_code, str(exc.detail))

        return georeport_handler


def _key_matches(given: str, context: AppContext) -> bool:
    # Every key is compared, in constant time, so timing tells nothing about which one came close.
    matched = False
    for key in context.config.open311.api_keys:
        matched |= hmac.compare_digest(given.encode(), key.get_secret_value().encode())
    return matched


async def open311_access(
    request: Request,
    context: Context,
    session: Db,
    api_key: Annotated[
        str | None, Query(description="A GeoReport client key; not needed when signed in.")
    ] = None,
    jurisdiction_id: Annotated[str | None, Query(description="Must be ours when given.")] = None,
) -> None:
    """Admit a signed-in user or a configured api_key; refuse another jurisdiction (404)."""
    if api_key is not None:
        if not _key_matches(api_key, context):
            raise Open311Error(403, "api_key is not valid")
    else:
        try:
            await current_principal(request, context, session)
        except LoginRequired:
            raise Open311Error(401, "sign in or pass a valid api_key") from None
    if jurisdiction_id is not None and jurisdiction_id != context.config.open311.jurisdiction_id:
        raise Open311Error(404, f"jurisdiction_id {jurisdiction_id!r} is not served here")


router = APIRouter(
    prefix="/open311/v2",
    tags=["open311"],
    route_class=Open311Route,
    dependencies=[Depends(open311_access)],
    responses={
        400: {"model": list[ErrorOut], "description": "A malformed query."},
        401: {"model": list[ErrorOut], "description": "Neither signed in nor an api_key."},
        403: {"model": list[ErrorOut], "description": "The api_key is not valid."},
        404: {"model": list[ErrorOut], "description": "Unknown service, request or jurisdiction."},
    },
)


def _media_link(context: AppContext) -> MediaLink:
    return lambda sha256: evidence_link(context, sha256, signed=True)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _statuses(value: str | None) -> tuple[Literal["open", "closed"], ...]:
    statuses = _split(value)
    unknown = [s for s in statuses if s not in OPEN311_STATUSES]
    if unknown:
        raise Open311Error(400, f"status must be open or closed, not {', '.join(unknown)}")
    return cast(tuple[Literal["open", "closed"], ...], statuses)


@router.get("/services.json", response_model=list[ServiceOut])
def list_services(context: Context) -> list[ServiceOut]:
    """Service types: one per configured event code."""
    return services(context.config)


@router.get("/services/{service_code}.json", response_model=ServiceDefinitionOut)
def get_service_definition(service_code: str, context: Context) -> ServiceDefinitionOut:
    """A service's definition (ours have no extra attributes)."""
    return service_definition(context.config, service_code)


@router.get("/requests.json", response_model=list[RequestOut])
def list_requests(
    context: Context,
    session: Db,
    service_request_id: Annotated[
        str | None, Query(description="Comma-separated ids; overrides every other filter.")
    ] = None,
    service_code: Annotated[str | None, Query(description="Comma-separated service codes.")] = None,
    start_date: Annotated[datetime | None, Query(description="Earliest requested_datetime.")] = None,
    end_date: Annotated[datetime | None, Query(description="Latest requested_datetime.")] = None,
    status: Annotated[str | None, Query(description="open, closed or both, comma-separated.")] = None,
) -> list[RequestOut]:
    """Filed cases, newest first: the last 90 days unless dated, at most 90 days and 1000 requests."""
    ids = _split(service_request_id)
    if len(ids) > MAX_RESULTS:
        raise Open311Error(400, f"at most {MAX_RESULTS} service_request_id values at once")
    start = end = None
    if not ids:
        start, end = date_window(start_date, end_date, context.clock(), context.config)
    filters = RequestFilters(
        ids=ids, service_codes=_split(service_code), start=start, end=end, statuses=_statuses(status)
    )
    cases = find_requests(session, filters, context.config)
    return requests_out(session, cases, context.config, _media_link(context))


@router.get("/requests/updates.json", response_model=list[UpdateOut])
def list_updates(
    context: Context,
    session: Db,
    start_date: Annotated[datetime | None, Query(description="Earliest updated_datetime.")] = None,
    end_date: Annotated[datetime | None, Query(description="Latest updated_datetime.")] = None,
) -> list[UpdateOut]:
    """Status updates (one per workflow step of a filed case), oldest first, at most 1000."""
    start, end = date_window(start_date, end_date, context.clock(), context.config)
    return find_updates(session, start, end, context.config, _media_link(context))


@router.get("/requests/{service_request_id}.json", response_model=list[RequestOut])
def get_request(service_request_id: str, context: Context, session: Db) -> list[RequestOut]:
    """One filed case, as a one-element list (the spec's shape)."""
    case = find_request(session, service_request_id)
    return requests_out(session, [case], context.config, _media_link(context))

"""The dashboard's figures: city KPIs and the AI's precision over a period."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, status

from curbwatch.server.kpis import KpiPeriodInvalid, Kpis, compute_kpis
from curbwatch.server.web.deps import Context, Db, Operator

router = APIRouter(prefix="/api/v1", tags=["dashboard"])

DEFAULT_PERIOD = timedelta(days=30)


@router.get("/kpis", response_model=Kpis)
def kpis(
    _: Operator,
    context: Context,
    session: Db,
    since: Annotated[
        datetime | None,
        Query(description="Start, inclusive; without an offset it is city time. Default: until - 30 days."),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="End, exclusive; without an offset it is city time. Default: now.")
    ] = None,
) -> Kpis:
    """KPIs of the cases reported in ``[since, until)`` (filing, on-time closure, rework, 721 split,
    precision per rule and camera, daily series in the city's days)."""
    timezone = context.config.calendar.timezone
    city = ZoneInfo(timezone)
    until = until or context.clock()
    until = until if until.tzinfo else until.replace(tzinfo=city)
    since = since or until - DEFAULT_PERIOD
    since = since if since.tzinfo else since.replace(tzinfo=city)
    try:
        return compute_kpis(session, since=since, until=until, now=context.clock(), timezone=timezone)
    except KpiPeriodInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None

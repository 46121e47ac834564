"""Cameras list, one camera's page with the zone editor, and the KPI dashboard.

The pages are shells: their scripts fetch the cameras and KPI APIs, so what a page shows and what
an API client gets are the same data.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse

from curbwatch.server.cameras import UnknownCamera, get_camera
from curbwatch.server.cases.workflow import Role
from curbwatch.server.web.api.cameras import CameraId
from curbwatch.server.web.deps import Context, Db, Operator
from curbwatch.server.web.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/cameras", response_class=HTMLResponse)
def cameras_page(request: Request, principal: Operator) -> HTMLResponse:
    """Every camera with its device's health, snapshot and open cases."""
    return render(request, "cameras.html", principal)


@router.get("/cameras/{camera_id}", response_class=HTMLResponse)
def camera_page(
    request: Request, camera_id: CameraId, principal: Operator, context: Context, session: Db
) -> HTMLResponse:
    """The camera's snapshot with its zones; supervisors get the zone editor."""
    try:
        get_camera(session, camera_id, now=context.clock())
    except UnknownCamera:
        return render(
            request, "camera.html", principal, status.HTTP_404_NOT_FOUND, camera_id=camera_id, known=False
        )
    return render(
        request,
        "camera.html",
        principal,
        camera_id=camera_id,
        known=True,
        can_edit=principal.at_least(Role.SUPERVISOR),
        timezone=context.config.calendar.timezone,
    )


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request, principal: Operator, context: Context) -> HTMLResponse:
    """KPI tiles and charts of a period (default: the last 30 days)."""
    return render(request, "dashboard.html", principal, timezone=context.config.calendar.timezone)

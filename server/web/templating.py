"""Jinja2 templates with autoescaping, and the values every page gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from curbwatch.server.web.deps import Principal, csrf_token, get_context

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

# Jinja2Templates autoescapes .html templates: evidence notes, reasons and names render as text.
templates = Jinja2Templates(directory=TEMPLATES_DIR)


def render(
    request: Request, name: str, principal: Principal | None, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """Render ``name`` with the signed-in user, the CSRF token and the city name."""
    context = get_context(request)
    return templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "csrf_token": csrf_token(request),
            "city": context.config.city,
            **values,
        },
        status_code=status_code,
    )

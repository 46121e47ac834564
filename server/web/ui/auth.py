"""Sign-in and sign-out pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from curbwatch.server.users import LoginPolicy, LoginRefused, LoginThrottled, authenticate
from curbwatch.server.web.deps import Context, Db, Principal, current_principal
from curbwatch.server.web.templating import render

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    # Only a local path: an open redirect would let a phishing link bounce off the login page.
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target


def login_policy(context: Context) -> LoginPolicy:
    """The sign-in throttle from the settings."""
    settings = context.settings
    return LoginPolicy(
        settings.login_max_failures,
        settings.login_max_failures_per_client,
        timedelta(seconds=settings.login_window_s),
    )


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The sign-in form."""
    return render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login", response_model=None)
def login(
    request: Request,
    context: Context,
    session: Db,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> HTMLResponse | RedirectResponse:
    """Check the password; on success start a fresh session (new CSRF token) and go on."""
    client = request.client.host if request.client else "unknown"
    try:
        user = authenticate(
            session, username, password, client=client, policy=login_policy(context), at=context.clock()
        )
    except LoginThrottled as exc:
        session.commit()
        response = render(
            request,
            "login.html",
            None,
            status.HTTP_429_TOO_MANY_REQUESTS,
            next=_safe_next(next),
            error=str(exc),
        )
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except LoginRefused as exc:
        session.commit()
        return render(
            request, "login.html", None, status.HTTP_401_UNAUTHORIZED, next=_safe_next(next), error=str(exc)
        )
    session.commit()
    request.session.clear()
    request.session["uid"] = user.id
    return RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)


@router.post("/logout")
def logout(request: Request, _: Annotated[Principal, Depends(current_principal)]) -> RedirectResponse:
    """End the session (CSRF-checked like every other form)."""
    request.session.clear()
    return RedirectResponse("/login", status.HTTP_303_SEE_OTHER)

"""FastAPI dependencies: the app context, a database session, the signed-in user and role checks.

Two ways to be signed in:

* a browser session (signed cookie set by ``POST /login``); every state-changing request made with it
  must carry the session's CSRF token, in the ``X-CSRF-Token`` header or a ``csrf_token`` form field;
* an API bearer token from ``POST /api/v1/auth/token`` (no cookie, so no CSRF exposure).

Either way the user row is read on each request, so a disabled account or a changed role takes
effect at once.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from curbwatch.server.cases.workflow import Role
from curbwatch.server.tables import User
from curbwatch.server.web.context import AppContext

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_SALT = "curbwatch.api-token"


class LoginRequired(Exception):
    """No valid sign-in; pages redirect to the login form, the API answers 401."""


def get_context(request: Request) -> AppContext:
    """The context the app was built with."""
    return request.app.state.context


Context = Annotated[AppContext, Depends(get_context)]


def get_db(context: Context) -> Iterator[Session]:
    """A session per request; routes commit what they change."""
    with context.session_factory() as session:
        yield session


Db = Annotated[Session, Depends(get_db)]


@dataclass(frozen=True)
class Principal:
    """Who is calling, as of this request."""

    user_id: int
    username: str
    display_name: str
    role: Role
    via: Literal["session", "token"]

    def at_least(self, role: Role) -> bool:
        """Whether the caller holds ``role`` or a higher one."""
        return self.role.at_least(role)


def token_serializer(context: AppContext) -> URLSafeTimedSerializer:
    """Signs and checks API bearer tokens."""
    return URLSafeTimedSerializer(context.secret_key, salt=TOKEN_SALT)


def issue_token(context: AppContext, user: User) -> str:
    """A bearer token for ``user``, valid for the session lifetime."""
    return token_serializer(context).dumps({"uid": user.id})


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def _check_csrf(request: Request) -> None:
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")


def _user_id(request: Request, context: AppContext) -> tuple[int, Literal["session", "token"]] | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        try:
            claims = token_serializer(context).loads(
                authorization[7:].strip(), max_age=context.settings.session_max_age_s
            )
        except BadSignature:
            return None
        return int(claims["uid"]), "token"
    uid = request.session.get("uid")
    return (int(uid), "session") if uid is not None else None


async def current_principal(request: Request, context: Context, session: Db) -> Principal:
    """The signed-in, active user; CSRF-checked for cookie sessions on unsafe methods."""
    found = _user_id(request, context)
    if found is None:
        raise LoginRequired()
    user_id, via = found
    user = session.get(User, user_id)
    if user is None or not user.active:
        request.session.clear()
        raise LoginRequired()
    if via == "session" and request.method not in SAFE_METHODS:
        await _check_csrf(request)
    return Principal(user.id, user.username, user.display_name, Role(user.role), via)


def require(role: Role) -> Callable[..., object]:
    """A dependency that admits ``role`` and the roles above it, 403 for the rest."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.at_least(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs the {role.value} role")
        return principal

    return dependency


Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Dispatcher = Annotated[Principal, Depends(require(Role.DISPATCHER))]
Supervisor = Annotated[Principal, Depends(require(Role.SUPERVISOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]

"""API sign-in: exchange a user name and password for a bearer token (OAuth2 password flow)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from curbwatch.server.users import LoginRefused, LoginThrottled, authenticate
from curbwatch.server.web.deps import Context, Db, Principal, current_principal, issue_token
from curbwatch.server.web.ui.auth import login_policy

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenOut(BaseModel):
    """An OAuth2 bearer token."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


class MeOut(BaseModel):
    """The caller."""

    username: str
    display_name: str
    role: str


@router.post("/token", response_model=TokenOut)
def token(
    request: Request, context: Context, session: Db, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> TokenOut:
    """A bearer token for API clients; failures are throttled like the sign-in page."""
    client = request.client.host if request.client else "unknown"
    try:
        user = authenticate(
            session,
            form.username,
            form.password,
            client=client,
            policy=login_policy(context),
            at=context.clock(),
        )
    except LoginThrottled as exc:
        session.commit()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except LoginRefused as exc:
        session.commit()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    session.commit()
    return TokenOut(access_token=issue_token(context, user), expires_in=context.settings.session_max_age_s)


@router.get("/me", response_model=MeOut)
def me(principal: Annotated[Principal, Depends(current_principal)]) -> MeOut:
    """Who the token or session belongs to."""
    return MeOut(username=principal.username, display_name=principal.display_name, role=principal.role.value)

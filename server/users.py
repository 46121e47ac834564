"""Operator accounts: argon2id password hashes, roles, and throttled sign-in.

Sign-in is refused outright, before any password check, once a user name or a client address has
:attr:`LoginPolicy.max_failures` failures within the window; the attempts are rows in the database
so every web worker sees the same count. An unknown user name costs the same argon2 verification as
a known one, so response time does not reveal which names exist.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from curbwatch.server.audit import append_audit
from curbwatch.server.cases.workflow import Role
from curbwatch.server.tables import LoginAttempt, User

logger = logging.getLogger(__name__)

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LENGTH = 8
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("curbwatch-dummy-password")


class UserError(Exception):
    """A user cannot be created or changed."""


class LoginRefused(Exception):
    """Wrong user name or password (deliberately not saying which)."""


class LoginThrottled(Exception):
    """Too many recent failures; ``retry_after_s`` says when to try again."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class LoginPolicy:
    """How many failures a user name, and a client address, may have within ``window``."""

    max_failures: int
    max_failures_per_client: int
    window: timedelta


def add_user(
    session: Session, username: str, password: str, role: Role | str, *, display_name: str = "", at: datetime
) -> User:
    """Create an account, audited; raises :class:`UserError` for a bad name, weak password or duplicate."""
    if not USERNAME_PATTERN.fullmatch(username):
        raise UserError(f"user name {username!r} must be 1-64 letters, digits or . _ @ -")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    try:
        role = Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}; one of {[r.value for r in Role]}") from None
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UserError(f"user {username!r} exists")
    user = User(
        username=username,
        display_name=display_name or username,
        password_hash=_HASHER.hash(password),
        role=role.value,
        active=True,
        created_at=at,
    )
    session.add(user)
    session.flush()
    append_audit(
        session,
        case_id=None,
        action="add_user",
        actor="admin-cli",
        role=Role.ADMIN.value,
        at=at,
        from_state=None,
        to_state=None,
        details={"username": username, "role": role.value},
    )
    return user


def _recent_failures(session: Session, column: object, value: str, since: datetime) -> list[datetime]:
    return list(
        session.scalars(
            select(LoginAttempt.at)
            .where(column == value, LoginAttempt.at >= since, LoginAttempt.succeeded.is_(False))
            .order_by(LoginAttempt.at)
        )
    )


def _throttle(session: Session, username: str, client: str, policy: LoginPolicy, at: datetime) -> None:
    since = at - policy.window
    for column, value, limit in (
        (LoginAttempt.username, username, policy.max_failures),
        (LoginAttempt.client, client, policy.max_failures_per_client),
    ):
        failures = _recent_failures(session, column, value, since)
        if len(failures) >= limit:
            oldest = failures[-limit]
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=at.tzinfo)
            retry = max(1, int((oldest + policy.window - at).total_seconds()) + 1)
            raise LoginThrottled(retry)


def authenticate(
    session: Session, username: str, password: str, *, client: str, policy: LoginPolicy, at: datetime
) -> User:
    """The active user with this name and password, recording the attempt in ``session``.

    The caller must commit even on failure, so the failure counts.

    Raises:
        LoginThrottled: Too many recent failures for the name or the client (nothing is checked).
        LoginRefused: Unknown name, wrong password or disabled account.
    """
    username = username[:64]
    _throttle(session, username, client[:64], policy, at)
    user = session.scalar(select(User).where(User.username == username))
    try:
        _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
        ok = user is not None and user.active
    except (VerificationError, InvalidHashError):
        ok = False
    session.add(LoginAttempt(username=username, client=client[:64], at=at, succeeded=ok))
    session.flush()
    if not ok or user is None:
        logger.info("failed sign-in for %r from %s", username, client)
        raise LoginRefused("wrong user name or password")
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return user


def count_users(session: Session) -> int:
    """How many accounts exist."""
    return int(session.scalar(select(func.count()).select_from(User)) or 0)

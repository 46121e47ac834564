"""Forwarding of filed cases to upstream city platforms through GeoReport v2 ``POST requests.json``.

Filing a case queues one :class:`~curbwatch.server.tables.Forwarding` row per upstream its event code
is routed to (:func:`enqueue_forwardings`, called in the filing transaction). A
:class:`ForwardingWorker` sends them:

1. **Claim** a due row in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so workers
   never wait on each other; SQLite's single writer lock is taken first) and push its
   ``next_attempt_at`` past the POST's timeout: a lease. Another worker skips it; if this one dies,
   the lease runs out and the row is sent again (at least once, as any crash between an upstream's
   answer and our commit would also give).
2. **POST** outside any transaction, so a slow upstream holds no database lock.
3. **Settle** in a second transaction: ``sent`` with the upstream's id, a retry after an exponential
   back-off with jitter (or the upstream's ``Retry-After``), or ``failed`` after a refusal (4xx) or
   the last attempt. Each outcome appends an audit entry on the case.

A worker only claims rows of the upstreams in its configuration: rows of an upstream taken out of
the configuration stay pending (and visible in ``GET /api/v1/forwardings``) until it comes back.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select, text

from curbwatch.server.audit import SYSTEM_ROLE, append_audit
from curbwatch.server.db import as_utc
from curbwatch.server.open311.config import Open311Config, UpstreamConfig
from curbwatch.server.open311.georeport import MediaLink, annotated_evidence
from curbwatch.server.open311.upstream import ERROR_TEXT_MAX, Outcome, backoff_s, georeport_form, interpret
from curbwatch.server.tables import Case, Forwarding

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from curbwatch.server.config import CaseServerConfig

logger = logging.getLogger(__name__)

FORWARD_ACTION = "forward"
FORWARD_FAILED_ACTION = "forward_failed"
FORWARD_RETRY_ACTION = "forward_retry"
FORWARDER_ACTOR = "forwarder"
CLAIM_MARGIN_S = 60.0  # beyond the POST timeout: httpx times each phase, not the whole exchange


class ForwardingStatus(StrEnum):
    """Where a forwarding stands (the ``forwardings.status`` column)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class ForwardingError(Exception):
    """A forwarding cannot be acted on."""


class ForwardingNotFound(ForwardingError):
    """No forwarding has the given id."""


class ForwardingNotRetryable(ForwardingError):
    """Only failed forwardings can be retried."""


def enqueue_forwardings(
    session: Session, case: Case, config: Open311Config, at: datetime
) -> list[Forwarding]:
    """Queue ``case`` for every upstream its event code is routed to, in the caller's transaction.

    Idempotent: an upstream that already has a row for the case (unique ``(case_id, target)``) gets
    no second one. Returns the rows added.
    """
    targets = config.targets_for(case.event_code)
    if not targets:
        return []
    known = set(session.scalars(select(Forwarding.target).where(Forwarding.case_id == case.id)))
    at = as_utc(at)
    rows = [
        Forwarding(
            case_id=case.id,
            target=target,
            status=ForwardingStatus.PENDING.value,
            attempts=0,
            next_attempt_at=at,
            created_at=at,
            updated_at=at,
        )
        for target in targets
        if target not in known
    ]
    session.add_all(rows)
    session.flush()
    for row in rows:
        logger.info("case %s queued for upstream %s", case.id, row.target)
    return rows


def list_forwardings(session: Session, *, status: ForwardingStatus | None, limit: int) -> list[Forwarding]:
    """Forwardings, newest first, optionally of one status."""
    query = select(Forwarding).order_by(Forwarding.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Forwarding.status == status.value)
    return list(session.scalars(query))


def retry_forwarding(
    session: Session, forwarding_id: int, *, actor: str, role: str, at: datetime
) -> Forwarding:
    """Put a failed forwarding back in the queue with a fresh set of attempts (audited).

    Raises:
        ForwardingNotFound: No forwarding has ``forwarding_id``.
        ForwardingNotRetryable: It is not failed.
    """
    row = session.get(Forwarding, forwarding_id, with_for_update=True)
    if row is None:
        raise ForwardingNotFound(f"no forwarding {forwarding_id}")
    if row.status != ForwardingStatus.FAILED.value:
        raise ForwardingNotRetryable(
            f"forwarding {forwarding_id} is {row.status}; only failed ones are retried"
        )
    at = as_utc(at)
    row.status = ForwardingStatus.PENDING.value
    row.attempts = 0
    row.next_attempt_at = at
    row.updated_at = at
    append_audit(
        session,
        case_id=row.case_id,
        action=FORWARD_RETRY_ACTION,
        actor=actor,
        role=role,
        at=at,
        from_state=None,
        to_state=None,
        details={"forwarding_id": row.id, "target": row.target, "previous_error": row.last_error},
    )
    session.flush()
    return row


@dataclass(frozen=True)
class _Claim:
    """A row this worker holds the lease on, with what to send."""

    forwarding_id: int
    case_id: str
    target: str
    upstream: UpstreamConfig
    form: dict[str, str]


@dataclass
class ForwardSummary:
    """Counts of one :meth:`ForwardingWorker.run_once`."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0

    @property
    def handled(self) -> int:
        """Rows settled in the run."""
        return self.sent + self.retrying + self.failed


def _take_sqlite_write_lock(session: Session) -> None:
    # SQLite has no row locks: take its one write lock before reading, so two claims cannot both see
    # the row as due (PostgreSQL uses SKIP LOCKED instead).
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE forwardings SET id = id WHERE 1 = 0"))


class ForwardingWorker:
    """Sends due forwardings to their upstreams; any number may run side by side.

    Args:
        session_factory: Sessions on the case database.
        config: The city configuration (upstreams, routing, time zone of the sent times).
        client: The HTTP client; tests pass one on ``httpx.MockTransport``.
        media_link: Signed, absolute evidence URL of a sha256; without it no media_url is sent.
        clock: The current time (leases start at the later of it and the run's ``at``).
        rng: Jitter source; seed it for repeatable waits.
        batch_size: Rows :meth:`run_forever` settles before it looks at the stop flag again.
        poll_interval_s: Pause between rounds that found nothing more to do.

    Example:
        >>> worker = ForwardingWorker(factory, config, httpx.Client())  # doctest: +SKIP
        >>> worker.run_once(datetime.now(UTC))  # doctest: +SKIP
        ForwardSummary(sent=3, retrying=1, failed=0)
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        config: CaseServerConfig,
        client: httpx.Client,
        *,
        media_link: MediaLink | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        batch_size: int = 20,
        poll_interval_s: float = 5.0,
    ) -> None:
        self._sessions = session_factory
        self._config = config
        self._client = client
        self._media_link = media_link
        self._clock = clock
        self._rng = rng or random.Random()
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s

    def run_once(self, at: datetime, *, limit: int | None = None) -> ForwardSummary:
        """Send every row due at ``at`` (at most ``limit``); ``at`` also times the outcomes."""
        at = as_utc(at)
        summary = ForwardSummary()
        while limit is None or summary.handled < limit:
            claim = self._claim(at)
            if claim is None:
                break
            self._settle(claim, self._send(claim, at), at, summary)
        if summary.handled:
            logger.info("forwarding round: %s", summary)
        return summary

    def run_forever(self, stop: threading.Event) -> None:
        """Run rounds until ``stop`` is set; a round that fails (database down) is logged and retried."""
        while not stop.is_set():
            try:
                summary = self.run_once(self._clock(), limit=self._batch_size)
            except Exception:
                logger.exception("forwarding round failed; trying again in %.0f s", self._poll_interval_s)
                summary = ForwardSummary()
            if summary.handled < self._batch_size:
                stop.wait(self._poll_interval_s)

    def _claim(self, at: datetime) -> _Claim | None:
        upstreams = self._config.open311.upstreams
        if not upstreams:
            return None
        with self._sessions() as session, session.begin():
            _take_sqlite_write_lock(session)
            row = session.scalars(
                select(Forwarding)
                .where(
                    Forwarding.status == ForwardingStatus.PENDING.value,
                    Forwarding.next_attempt_at <= at,
                    Forwarding.target.in_(list(upstreams)),
                )
                .order_by(Forwarding.next_attempt_at, Forwarding.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            upstream = upstreams[row.target]
            lease = timedelta(seconds=upstream.timeout_s + CLAIM_MARGIN_S)
            row.next_attempt_at = max(at, as_utc(self._clock())) + lease
            case = session.get(Case, row.case_id)
            assert case is not None  # the foreign key guarantees it
            sha256 = annotated_evidence(session, [case.id]).get(case.id)
            media_url = self._media_link(sha256) if sha256 and self._media_link else None
            form = georeport_form(case, upstream, self._config, media_url)
            return _Claim(row.id, row.case_id, row.target, upstream, form)

    def _send(self, claim: _Claim, at: datetime) -> Outcome:
        url = f"{claim.upstream.base_url}/requests.json"
        try:
            response = self._client.post(url, data=claim.form, timeout=claim.upstream.timeout_s)
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX], retryable=True)
        return interpret(response, at)

    def _settle(self, claim: _Claim, outcome: Outcome, at: datetime, summary: ForwardSummary) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(Forwarding, claim.forwarding_id, with_for_update=True)
            assert row is not None  # forwardings are never deleted
            row.attempts += 1
            row.updated_at = at
            details: dict[str, Any] = {"target": row.target, "attempt": row.attempts}
            if outcome.external_id is not None:
                row.status, row.external_id, row.sent_at = (
                    ForwardingStatus.SENT.value,
                    outcome.external_id,
                    at,
                )
                row.next_attempt_at, row.last_error = None, None
                action, details["external_id"] = FORWARD_ACTION, outcome.external_id
                summary.sent += 1
            else:
                action, details["error"] = FORWARD_FAILED_ACTION, outcome.error
                self._note_failure(row, claim.upstream, outcome, at, details, summary)
            append_audit(
                session,
                case_id=row.case_id,
                action=action,
                actor=FORWARDER_ACTOR,
                role=SYSTEM_ROLE,
                at=at,
                from_state=None,
                to_state=None,
                details=details,
            )
        logger.info("forwarding %s of case %s to %s: %s", row.id, row.case_id, row.target, action)

    def _note_failure(
        self,
        row: Forwarding,
        upstream: UpstreamConfig,
        outcome: Outcome,
        at: datetime,
        details: dict[str, Any],
        summary: ForwardSummary,
    ) -> None:
        """Schedule the next attempt, or give up after a refusal or the last attempt."""
        row.last_error = outcome.error
        if outcome.retryable and row.attempts < upstream.max_attempts:
            wait_s = outcome.retry_after_s or backoff_s(row.attempts, upstream, self._rng)
            row.next_attempt_at = at + timedelta(seconds=wait_s)
            details["next_attempt_at"] = row.next_attempt_at.isoformat()
            summary.retrying += 1
        else:
            row.status, row.next_attempt_at = ForwardingStatus.FAILED.value, None
            details["final"] = True
            summary.failed += 1

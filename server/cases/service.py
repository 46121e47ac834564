"""Applies workflow actions to stored cases, with their audit entries, in one transaction.

:func:`transition_case` is the only writer of a case's workflow columns after it is opened: it loads
the row (locked ``FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time), asks the pure
:func:`~curbwatch.server.cases.workflow.apply` for the next state, and stores that state together
with the audit entry. A refused action raises before anything is written.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curbwatch.server.audit import append_audit
from curbwatch.server.cases import deadlines, workflow
from curbwatch.server.cases.workflow import Action, CaseState, CaseStatus, ClosureType, Outcome, Role
from curbwatch.server.db import as_utc
from curbwatch.server.open311.forwarding import enqueue_forwardings
from curbwatch.server.tables import Case

if TYPE_CHECKING:
    from curbwatch.server.config import CaseServerConfig

logger = logging.getLogger(__name__)


class CaseServiceError(Exception):
    """A case action cannot be carried out for a reason outside the workflow rules."""


class CaseNotFound(CaseServiceError):
    """No case has the given id."""


def case_state(case: Case) -> CaseState:
    """The workflow view of a stored case."""
    return CaseState(
        state=CaseStatus(case.status),
        suspended_from=CaseStatus(case.suspended_from) if case.suspended_from else None,
        outcome=Outcome(case.outcome) if case.outcome else None,
        closure_type=ClosureType(case.closure_type) if case.closure_type else None,
        department=case.department,
    )


def is_overdue(case: Case, at: datetime) -> bool:
    """Past its deadline: still open after it, or closed after it."""
    if case.deadline is None:
        return False
    deadline = as_utc(case.deadline)
    if case.closed_at is not None:
        return as_utc(case.closed_at) > deadline
    return case.status != CaseStatus.VOID.value and at > deadline


def _record_milestones(
    case: Case, action: Action, after: CaseState, config: CaseServerConfig, at: datetime
) -> None:
    """Filing starts the handling clock; closing stops it; every return counts as rework."""
    if action is Action.CONFIRM:
        case.filed_at = at
        limit = config.time_limits.limit_for(case.event_code)
        # SQLite drops the offset without converting: store UTC only.
        case.deadline = deadlines.deadline(at, limit, config.calendar).astimezone(UTC)
    elif after.state is CaseStatus.CLOSED:
        case.closed_at = at
    elif action is Action.RETURN_FOR_REWORK:
        case.rework_count = (case.rework_count or 0) + 1


def _store_state(case: Case, state: CaseState, at: datetime) -> None:
    case.status = state.state.value
    case.suspended_from = state.suspended_from.value if state.suspended_from else None
    case.outcome = state.outcome.value if state.outcome else None
    case.closure_type = state.closure_type.value if state.closure_type else None
    case.department = state.department
    case.updated_at = at


def transition_case(
    session: Session,
    *,
    case_id: str,
    action: Action | str,
    actor: str,
    role: Role | str,
    reason: str | None = None,
    department: str | None = None,
    outcome: Outcome | str | None = None,
    closure_type: ClosureType | str | None = None,
    config: CaseServerConfig,
    at: datetime,
) -> Case:
    """Apply ``action`` to the stored case in the caller's transaction (which must commit it).

    Args:
        session: The session whose transaction holds the row lock, the new state and the audit entry.
        case_id: The case to act on.
        action: What is asked.
        actor: Who acts (user id).
        role: The actor's role.
        reason: Reason text or reject code, as the workflow demands.
        department: Handling department (dispatch only).
        outcome: Resolution class (close only).
        closure_type: Closure kind (close only).
        config: The city configuration (handling time limits and calendar set the deadline at filing).
        at: When it happens; timezone-aware.

    Returns:
        The updated case.

    Raises:
        CaseNotFound: No case has ``case_id``.
        workflow.WorkflowError: The workflow refuses the action (its subclasses, unchanged); nothing
            is written.
        ValueError: ``actor`` is blank, ``at`` naive, or an enum value unknown.
    """
    if at.tzinfo is None:
        raise ValueError(f"transition time must be timezone-aware, got {at!r}")
    at = at.astimezone(UTC)  # SQLite keeps no offset: every stored time is UTC
    case = session.scalars(select(Case).where(Case.id == case_id).with_for_update()).one_or_none()
    if case is None:
        raise CaseNotFound(f"no case {case_id!r}")
    before = case_state(case)
    after, step = workflow.apply(
        before,
        Action(action),
        actor=actor,
        role=Role(role),
        reason=reason,
        at=at,
        department=department,
        outcome=Outcome(outcome) if outcome is not None else None,
        closure_type=ClosureType(closure_type) if closure_type is not None else None,
    )
    _store_state(case, after, at)
    _record_milestones(case, step.action, after, config, at)
    if step.action is Action.CONFIRM:
        enqueue_forwardings(session, case, config.open311, at)
    details: dict[str, Any] = {
        name: value
        for name, value in (
            ("department", after.department if step.action is Action.DISPATCH else None),
            ("outcome", after.outcome.value if after.outcome else None),
            ("closure_type", after.closure_type.value if after.closure_type else None),
        )
        if value is not None
    }
    append_audit(
        session,
        case_id=case.id,
        action=step.action.value,
        actor=step.actor,
        role=step.role.value,
        at=step.at,
        from_state=step.from_state.value,
        to_state=step.to_state.value,
        reason=step.reason,
        details=details or None,
    )
    session.flush()
    logger.info("case %s: %s by %s -> %s", case.id, step.action, actor, step.to_state)
    return case

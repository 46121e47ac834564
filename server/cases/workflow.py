"""The city-management case state machine (GB/T 30428 family), as one pure module.

Every legal move is a row of :data:`TRANSITIONS`, keyed by ``(from_state, action)``. :func:`apply` looks
the row up, checks the role, the reason and the details the row demands, and returns the next
:class:`CaseState` with a :class:`Transition` record for the audit log. Nothing here touches a database
or a clock: the caller passes ``at`` and persists both results in one transaction.

Example:
    >>> from datetime import UTC, datetime
    >>> case = CaseState.new()
    >>> case, step = apply(case, Action.CONFIRM, actor="op-7", role=Role.OPERATOR,
    ...                    at=datetime(2025, 5, 1, 9, 0, tzinfo=UTC))
    >>> case.state, step.from_state
    (<CaseStatus.FILED: 'filed'>, <CaseStatus.AWAITING_VERIFICATION: 'awaiting_verification'>)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType


class CaseStatus(enum.StrEnum):
    """Where a case stands."""

    AWAITING_VERIFICATION = "awaiting_verification"
    FILED = "filed"
    DISPATCHED = "dispatched"
    IN_PROGRESS = "in_progress"
    HANDLED = "handled"
    CHECKING = "checking"
    CLOSED = "closed"
    VOID = "void"
    SUSPENDED = "suspended"


OPEN_STATES: frozenset[CaseStatus] = frozenset(
    {
        CaseStatus.AWAITING_VERIFICATION,
        CaseStatus.FILED,
        CaseStatus.DISPATCHED,
        CaseStatus.IN_PROGRESS,
        CaseStatus.HANDLED,
        CaseStatus.CHECKING,
    }
)
TERMINAL_STATES: frozenset[CaseStatus] = frozenset({CaseStatus.CLOSED, CaseStatus.VOID})


class Action(enum.StrEnum):
    """What a user asks to do with a case."""

    CONFIRM = "confirm"
    REJECT = "reject"
    DISPATCH = "dispatch"
    START = "start"
    REPORT_HANDLED = "report_handled"
    REQUEST_CHECK = "request_check"
    CLOSE = "close"
    RETURN_FOR_REWORK = "return_for_rework"
    SUSPEND = "suspend"
    RESUME = "resume"


class Role(enum.StrEnum):
    """Who acts; each role may do everything the roles below it may."""

    OPERATOR = "operator"
    DISPATCHER = "dispatcher"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the hierarchy, operator lowest."""
        return _ROLE_ORDER.index(self)

    def at_least(self, other: Role) -> bool:
        """Whether this role includes ``other``'s permissions."""
        return self.rank >= other.rank


_ROLE_ORDER: tuple[Role, ...] = (Role.OPERATOR, Role.DISPATCHER, Role.SUPERVISOR, Role.ADMIN)


class RejectReason(enum.StrEnum):
    """Why an operator voids a camera report at verification (核实); feeds the precision KPI."""

    FALSE_DETECTION = "false_detection"
    NOT_A_VIOLATION = "not_a_violation"
    PERMITTED = "permitted"
    DUPLICATE = "duplicate"


class Outcome(enum.StrEnum):
    """How a closed case was resolved: the "721" split (70% service, 20% management, 10% enforcement)."""

    SERVICE = "service"
    MANAGEMENT = "management"
    ENFORCEMENT = "enforcement"


class ClosureType(enum.StrEnum):
    """Closure kind reported in the KPIs (on-time closure rate counts ``normal`` only)."""

    NORMAL = "normal"
    OVERDUE = "overdue"
    ERRONEOUS = "erroneous"
    SPECIAL = "special"


class ReasonKind(enum.Enum):
    """What a transition demands of ``reason``."""

    OPTIONAL = "optional"
    FREE_TEXT = "free_text"  # a written, non-blank reason
    REJECT_CODE = "reject_code"  # one of RejectReason


class WorkflowError(Exception):
    """A requested case action cannot be applied."""


class IllegalTransition(WorkflowError):
    """The action is not allowed from the case's current state."""


class RoleNotAllowed(WorkflowError):
    """The actor's role may not perform this action."""


class ReasonRequired(WorkflowError):
    """The action needs a (valid) reason and none was given."""


class DetailInvalid(WorkflowError):
    """A detail (department, outcome, closure type) is missing where required or given where not taken."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the transitions table.

    Attributes:
        to_state: Target state; ``None`` means "the state the case was suspended from" (resume).
        min_role: Lowest role allowed to act.
        reason: What the reason must be.
        needs_department: The action assigns a handling department (dispatch).
        needs_closure: The action needs an outcome and a closure type (close).
        clears_department: The department assignment is dropped ("not our department" returns).
    """

    to_state: CaseStatus | None
    min_role: Role
    reason: ReasonKind = ReasonKind.OPTIONAL
    needs_department: bool = False
    needs_closure: bool = False
    clears_department: bool = False


def _build_table() -> MappingProxyType[tuple[CaseStatus, Action], Rule]:
    s, a = CaseStatus, Action
    table: dict[tuple[CaseStatus, Action], Rule] = {
        (s.AWAITING_VERIFICATION, a.CONFIRM): Rule(s.FILED, Role.OPERATOR),
        (s.AWAITING_VERIFICATION, a.REJECT): Rule(s.VOID, Role.OPERATOR, ReasonKind.REJECT_CODE),
        (s.FILED, a.DISPATCH): Rule(s.DISPATCHED, Role.DISPATCHER, needs_department=True),
        # The department records its own progress through the dispatcher's desk.
        (s.DISPATCHED, a.START): Rule(s.IN_PROGRESS, Role.DISPATCHER),
        (s.IN_PROGRESS, a.REPORT_HANDLED): Rule(s.HANDLED, Role.DISPATCHER),
        # 核查 is done by the acceptor (or the same camera), so operators may request it.
        (s.HANDLED, a.REQUEST_CHECK): Rule(s.CHECKING, Role.OPERATOR),
        (s.CHECKING, a.CLOSE): Rule(s.CLOSED, Role.SUPERVISOR, needs_closure=True),
        (s.CHECKING, a.RETURN_FOR_REWORK): Rule(s.IN_PROGRESS, Role.DISPATCHER, ReasonKind.FREE_TEXT),
        (s.DISPATCHED, a.RETURN_FOR_REWORK): Rule(
            s.FILED, Role.DISPATCHER, ReasonKind.FREE_TEXT, clears_department=True
        ),
        (s.SUSPENDED, a.RESUME): Rule(None, Role.SUPERVISOR),
    }
    for state in OPEN_STATES:
        table[(state, a.SUSPEND)] = Rule(s.SUSPENDED, Role.SUPERVISOR, ReasonKind.FREE_TEXT)
    return MappingProxyType(table)


TRANSITIONS: MappingProxyType[tuple[CaseStatus, Action], Rule] = _build_table()
"""The allowed-transitions table: ``(from_state, action) -> Rule``. Anything absent is illegal."""


@dataclass(frozen=True, slots=True)
class CaseState:
    """The workflow-relevant part of a case.

    Attributes:
        state: Current status.
        suspended_from: The open state a suspended case returns to; set only while suspended.
        outcome: Resolution class; set only once closed.
        closure_type: Closure kind; set only once closed.
        department: Handling department, set by dispatch.
    """

    state: CaseStatus = CaseStatus.AWAITING_VERIFICATION
    suspended_from: CaseStatus | None = None
    outcome: Outcome | None = None
    closure_type: ClosureType | None = None
    department: str | None = None

    def __post_init__(self) -> None:
        suspended = self.state is CaseStatus.SUSPENDED
        if suspended != (self.suspended_from is not None):
            raise ValueError(f"suspended_from must be set exactly when suspended, got {self!r}")
        if self.suspended_from is not None and self.suspended_from not in OPEN_STATES:
            raise ValueError(f"suspended_from must be an open state, got {self.suspended_from!s}")
        closed = self.state is CaseStatus.CLOSED
        if closed != (self.outcome is not None) or closed != (self.closure_type is not None):
            raise ValueError(f"outcome and closure_type must be set exactly when closed, got {self!r}")

    @classmethod
    def new(cls) -> CaseState:
        """A case just filed by a camera, waiting for an operator to verify it."""
        return cls()

    @property
    def is_terminal(self) -> bool:
        """Closed and void cases accept no further action."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Transition:
    """Audit record of one applied action."""

    from_state: CaseStatus
    to_state: CaseStatus
    action: Action
    actor: str
    role: Role
    reason: str | None
    at: datetime


def allowed_actions(case: CaseState, role: Role) -> list[Action]:
    """Actions ``role`` may attempt on ``case`` (reasons and details still to be checked)."""
    return [
        action
        for action in Action
        if (rule := TRANSITIONS.get((case.state, action))) is not None and role.at_least(rule.min_role)
    ]


def _check_reason(action: Action, rule: Rule, reason: str | None) -> str | None:
    text = reason.strip() if reason is not None else None
    if rule.reason is ReasonKind.FREE_TEXT and not text:
        raise ReasonRequired(f"{action!s} needs a written reason")
    if rule.reason is ReasonKind.REJECT_CODE:
        codes = ", ".join(r.value for r in RejectReason)
        if text not in set(RejectReason):
            raise ReasonRequired(f"{action!s} needs a reason among {codes}, got {reason!r}")
    return text or None


def _check_details(
    action: Action,
    rule: Rule,
    department: str | None,
    outcome: Outcome | None,
    closure_type: ClosureType | None,
) -> None:
    if rule.needs_department != bool(department and department.strip()):
        need = "needs" if rule.needs_department else "does not take"
        raise DetailInvalid(f"{action!s} {need} a department, got {department!r}")
    for name, value in (("outcome", outcome), ("closure_type", closure_type)):
        if rule.needs_closure != (value is not None):
            need = "needs" if rule.needs_closure else "does not take"
            raise DetailInvalid(f"{action!s} {need} a {name}, got {value!r}")


def apply(
    case_state: CaseState,
    action: Action,
    *,
    actor: str,
    role: Role,
    reason: str | None = None,
    at: datetime,
    department: str | None = None,
    outcome: Outcome | None = None,
    closure_type: ClosureType | None = None,
) -> tuple[CaseState, Transition]:
    """Apply ``action`` to ``case_state``.

    Args:
        case_state: The case before the action.
        action: What is asked.
        actor: Who acts (user id), recorded in the transition.
        role: The actor's role, checked against the table.
        reason: Required text for returns and suspensions, a :class:`RejectReason` value for reject.
        at: When it happens; must be timezone-aware.
        department: Handling department, for dispatch only.
        outcome: Resolution class, for close only.
        closure_type: Closure kind, for close only.

    Returns:
        The next state and the audit record.

    Raises:
        IllegalTransition: The action is not allowed from the current state.
        RoleNotAllowed: ``role`` ranks below the action's minimum role.
        ReasonRequired: The reason is missing or not an accepted code.
        DetailInvalid: A department, outcome or closure type is missing or unexpected.
        ValueError: ``actor`` is blank or ``at`` is naive.
    """
    if not actor.strip():
        raise ValueError("actor must not be blank")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at must be timezone-aware, got {at!r}")
    action, role = Action(action), Role(role)
    rule = TRANSITIONS.get((case_state.state, action))
    if rule is None:
        terminal = " (terminal)" if case_state.is_terminal else ""
        raise IllegalTransition(f"cannot {action!s} a case that is {case_state.state!s}{terminal}")
    if not role.at_least(rule.min_role):
        raise RoleNotAllowed(f"{action!s} needs role {rule.min_role!s} or above, {actor!r} is {role!s}")
    text = _check_reason(action, rule, reason)
    _check_details(action, rule, department, outcome, closure_type)

    to_state = rule.to_state if rule.to_state is not None else case_state.suspended_from
    assert to_state is not None  # CaseState guarantees suspended_from while suspended
    new_department = case_state.department
    if rule.needs_department:
        new_department = department.strip() if department else None
    elif rule.clears_department:
        new_department = None
    next_state = replace(
        case_state,
        state=to_state,
        suspended_from=case_state.state if to_state is CaseStatus.SUSPENDED else None,
        outcome=Outcome(outcome) if outcome is not None else None,
        closure_type=ClosureType(closure_type) if closure_type is not None else None,
        department=new_department,
    )
    transition = Transition(
        from_state=case_state.state,
        to_state=to_state,
        action=action,
        actor=actor,
        role=role,
        reason=text,
        at=at,
    )
    return next_state, transition

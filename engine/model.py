"""The common model: what every platform's ticket becomes, and what the engine answers.

Connectors and mappings produce `Ticket`s; the engine turns a `Ticket` into a `Decision`; the planner turns a
`Decision` and the observed `Ticket` into a `WriteBack`. These types are the only thing the layers share, so
they carry no behaviour beyond small derived properties. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, TypeVar

_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen dataclass an `__init__` that fills the instance's dict in one call.

    Why: the generated `__init__` of a frozen dataclass sets every field through `object.__setattr__`, one
    Python-level call per field: a Ticket (40 fields) took some 18 us to build, several times its parsing
    (issue 14). This `__init__` has the generated one's signature (same parameters, order, defaults and
    default factories, so the same TypeErrors), and stores the values with one `__dict__.update`; equality,
    hashing, `replace` and immutability are the dataclass's own.
    """
    params: list[str] = []
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    body: list[str] = []
    for item in fields(cls):  # type: ignore[arg-type]
        name = item.name
        if item.default is not MISSING:
            namespace[f"_d_{name}"] = item.default
            params.append(f"{name}=_d_{name}")
        elif item.default_factory is not MISSING:
            namespace[f"_f_{name}"] = item.default_factory
            params.append(f"{name}=_FACTORY")
            body.append(f"    if {name} is _FACTORY:\n        {name} = _f_{name}()\n")
        else:
            params.append(name)
    values = ", ".join(f"{item.name!r}: {item.name}" for item in fields(cls))  # type: ignore[arg-type]
    source = f"def __init__(self, {', '.join(params)}):\n{''.join(body)}    self.__dict__.update({{{values}}})\n"
    exec(source, namespace)  # built from the class's own field names only, as dataclasses does itself
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


_FACTORY = object()
"""Stands for "not given" where a field has a default factory (the factory runs per instance)."""


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    ON_HOLD = "on_hold"
    SOLVED = "solved"
    CLOSED = "closed"
    DELETED = "deleted"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def pauses_sla(self) -> bool:
        return self in _PAUSING


_TERMINAL = frozenset({Status.SOLVED, Status.CLOSED, Status.DELETED})
_PAUSING = frozenset({Status.PENDING, Status.ON_HOLD})


class Priority(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"


class Tier(StrEnum):
    """Support tiers, lowest first. Management escalation is a separate track (see `Decision.management`)."""

    L1 = "L1"
    L2 = "L2"
    L3 = "L3"
    L4 = "L4"

    @property
    def rank(self) -> int:
        return int(self.value[1])


_PENDING = "_pending"
"""Where a lazily built frozen value (`Clock.due_later`, `RuleOutcome.deferred`, `Comment.deferred`) keeps
`(compute, args)` until its field is first read."""


def _on_first_read(instance: object, name: str, lazy: str) -> Any:
    """`__getattr__` of those types, reached only for an attribute the instance lacks: the lazy field computed
    now and kept in its place, and its inputs (a calendar, the facts, a note's context) no longer held."""
    state = instance.__dict__
    pending = state.get(_PENDING)
    if name != lazy or pending is None:
        raise AttributeError(f"{type(instance).__name__!r} object has no attribute {name!r}")
    compute, args = pending
    value = compute(*args)
    state[name] = value
    del state[_PENDING]
    return value


class ClockState(StrEnum):
    OK = "ok"
    AT_RISK = "at_risk"
    BREACHED = "breached"
    PAUSED = "paused"
    MET = "met"
    UNKNOWN = "unknown"
    """The fact that stops the clock cannot be read on this instance (no rights, disabled by the mapping): the
    clock is reported, never tagged, never counted as breached."""


@fast_init
@dataclass(frozen=True)
class Flags:
    """Facts the policy reads, filled by the mapping from custom fields, tags or organization fields."""

    churn_threat: bool = False
    public_complaint: bool = False
    security_legal: bool = False
    engineering_required: bool = False
    vendor_dependency: bool = False
    customer_requested: bool = False
    revenue_at_risk: float = 0.0
    affected_customers: int = 0
    linked_incidents: int = 0
    reopen_count: int = 0


@fast_init
@dataclass(frozen=True)
class StatusChange:
    at: datetime
    status: Status


@fast_init
@dataclass(frozen=True)
class TierChange:
    """The ticket entered `tier` at `at` (None: a tier-less group or value), whoever moved it.

    Mappings record entries only: a move inside a tier (another group or agent of the same tier) is not one.
    """

    at: datetime
    tier: Tier | None


@fast_init
@dataclass(frozen=True)
class PriorityChange:
    """The ticket's priority became `priority` at `at` (the first entry: its priority at creation, where known)."""

    at: datetime
    priority: Priority


HISTORY_FACTS = (
    "status_history",
    "public_replies",
    "agent_actions",
    "tier_changes",
    "internal_notes",
    "priority_changes",
)
"""Fact names a mapping may list in `Ticket.missing_facts` when their source cannot be read."""


@fast_init
@dataclass(frozen=True)
class PlatformSla:
    """An SLA the platform computes itself (JSM SLA fields, ServiceNow task_sla), read as a fact."""

    name: str
    breached: bool
    paused: bool = False
    remaining: timedelta | None = None
    due_at: datetime | None = None
    completed: bool = False


@fast_init
@dataclass(frozen=True)
class NoteText:
    """An internal note by a person, as the handoff's troubleshooting summary shows it: when, and its first words
    (the mapping cuts the text short: the note is a summary of the steps taken, not a copy of the ticket)."""

    at: datetime
    text: str


@fast_init
@dataclass(frozen=True)
class Attachment:
    """A file on the ticket the platform names with a link (the handoff lists them; nothing downloads them)."""

    name: str
    url: str
    at: datetime | None = None


@fast_init
@dataclass(frozen=True)
class Ticket:
    platform: str
    instance: str
    id: str
    key: str
    url: str
    subject: str
    status: Status
    priority: Priority
    created_at: datetime
    updated_at: datetime
    description: str = ""
    first_public_reply_at: datetime | None = None
    last_public_reply_at: datetime | None = None
    last_agent_action_at: datetime | None = None
    solved_at: datetime | None = None
    requester: str | None = None
    organization: str | None = None
    segment: str | None = None
    tags: frozenset[str] = frozenset()
    assignee_group: str | None = None
    tier: Tier | None = None
    tier_entered_at: datetime | None = None
    flags: Flags = field(default_factory=Flags)
    status_history: tuple[StatusChange, ...] = ()
    priority_changes: tuple[PriorityChange, ...] | None = None
    """Every change of priority, oldest first (None: the mapping reads no priority history; then the current
    priority is taken to have applied since creation)."""
    platform_slas: tuple[PlatformSla, ...] = ()
    revision: str = ""
    """Opaque concurrency token the connector sends back on write (Zendesk `updated_stamp`, Jira/SNOW updated)."""
    public_replies: tuple[datetime, ...] | None = None
    """Every public reply by an agent, oldest first (None: the mapping reads no reply history)."""
    agent_actions: tuple[datetime, ...] | None = None
    """Every action by an agent that shows a person took the ticket up (a comment, public or internal, a status
    or assignee change), oldest first. Never our own tag, tier or handoff-note writes."""
    tier_changes: tuple[TierChange, ...] | None = None
    """Every entry into a tier, oldest first, the ticket's first tier at creation included."""
    last_customer_message_at: datetime | None = None
    internal_notes: tuple[datetime, ...] | None = None
    """Times of internal notes by people (our own handoff notes excluded), oldest first."""
    missing_facts: frozenset[str] = frozenset()
    """History facts (names from HISTORY_FACTS) whose source this instance cannot read: the clocks that need
    them are UNKNOWN instead of running on to a breach nobody could have avoided."""
    note_texts: tuple[NoteText, ...] | None = None
    """The internal notes of `internal_notes` with their text, oldest first (None: their text is not read here)."""
    attachments: tuple[Attachment, ...] | None = None
    """Files attached to the ticket or its comments, oldest first (None: this platform's mapping reads none)."""
    sentiment: str | None = None
    """The customer's sentiment as a field or tag the mapping names shows it (None: nothing carries it)."""

    @property
    def effective_tier(self) -> Tier:
        return self.tier or Tier.L1

    def internal_notes_since(self, start: datetime) -> tuple[int, datetime | None] | None:
        """How many internal notes people wrote after `start` (the tier's entry, for the handoff's
        troubleshooting summary) and the latest one's time; None when the platform's notes cannot be read."""
        if self.internal_notes is None:
            return None
        later = [moment for moment in self.internal_notes if moment > start]
        return len(later), max(later) if later else None


@fast_init
@dataclass(frozen=True)
class EscalationHistory:
    """What the state store remembers of earlier escalations, handed to the engine as plain data."""

    customer_escalations_30d: int = 0
    tier_entries: tuple[tuple[Tier, datetime], ...] = ()
    management_started_at: datetime | None = None
    """When the ticket's latest management track started (the store records it when our write adds the tag,
    or when the tag is first seen); the management clocks run from here. None: never started, or forgotten."""
    management_ended_at: datetime | None = None
    """When that track ended by policy (`end_after_quiet_hours`); None while it runs."""
    resolution_plan_at: datetime | None = None
    """When the resolution plan tag was first seen during that track: stops its resolution plan clock."""
    management_track: int = 0
    """Which track of the ticket that is (1 for the first; a trigger after an ended track starts the next)."""


@fast_init
@dataclass(frozen=True)
class Clock:
    name: str
    target: timedelta
    elapsed: timedelta
    remaining: timedelta
    due_at: datetime | None
    state: ClockState
    calendar: str
    breached_at: datetime | None = None
    tier: Tier | None = None
    """The tier whose clock this is (acknowledgment, assessment); None for SLA and management clocks."""

    @classmethod
    def due_later(
        cls,
        name: str,
        target: timedelta,
        elapsed: timedelta,
        remaining: timedelta,
        state: ClockState,
        calendar: str,
        tier: Tier | None,
        due: Callable[[datetime, timedelta], datetime],
        start: datetime,
    ) -> Clock:
        """A running clock whose due instant, `due(start, remaining)`, is found on its first read (then kept).

        Why: the due instant of a running clock is a walk over its business calendar, and only explain, reports
        and handoff notes read it (tags, rules and the review moment need elapsed and remaining time); it was
        the largest share of measuring a ticket's clocks (issue 14). Equality, hash and repr read it, so a
        clock built here is indistinguishable from one built with the instant.
        """
        clock = object.__new__(cls)
        clock.__dict__.update(
            {
                "name": name,
                "target": target,
                "elapsed": elapsed,
                "remaining": remaining,
                "state": state,
                "calendar": calendar,
                "breached_at": None,
                "tier": tier,
                _PENDING: (due, (start, remaining)),
            }
        )
        return clock

    def __getattr__(self, name: str) -> datetime:
        value: datetime = _on_first_read(self, name, "due_at")
        return value


@fast_init
@dataclass(frozen=True)
class RuleOutcome:
    name: str
    description: str
    fired: bool
    reason: str
    target_tier: Tier | None = None
    management: bool = False

    @classmethod
    def deferred(
        cls,
        name: str,
        description: str,
        fired: bool,
        target_tier: Tier | None,
        management: bool,
        render: Callable[..., str],
        *args: Any,
    ) -> RuleOutcome:
        """An outcome whose reason, `render(*args)`, is rendered on its first read (then kept), equal to the eager one.

        Why: a rule that reads hours or minutes has a new reason text on almost every ticket, yet the text is
        only read when a decision is written, logged or explained; formatting it for every rule of every
        evaluated ticket was a third of the rules' cost (issue 14). Equality, hash and repr read the reason, so
        they render it: a deferred outcome is indistinguishable from `RuleOutcome(..., render(), ...)`.
        """
        outcome = object.__new__(cls)
        # One dict update, not one object.__setattr__ per field: a ticket builds several of these (issue 14).
        outcome.__dict__.update(
            {
                "name": name,
                "description": description,
                "fired": fired,
                "target_tier": target_tier,
                "management": management,
                _PENDING: (render, args),
            }
        )
        return outcome

    def __getattr__(self, name: str) -> str:
        value: str = _on_first_read(self, name, "reason")
        return value


COMMENT_MARKER = "escalation-sync:{key}"


@dataclass(frozen=True)
class Comment:
    body: str
    idempotency_key: str

    @classmethod
    def deferred(cls, idempotency_key: str, render: Callable[[], str]) -> Comment:
        """A comment whose body is rendered on its first read (then kept), equal to `Comment(render(), key)`.

        Why: the engine decides a handoff for every escalating ticket, but the note's text is only needed when
        it is really posted (or shown); rendering it was a quarter of a backlog sweep's evaluation (issue 14).
        The key is known at once: the ledger and the plan need only it.
        """
        comment = object.__new__(cls)
        object.__setattr__(comment, "idempotency_key", idempotency_key)
        object.__setattr__(comment, _PENDING, (render, ()))
        return comment

    def __getattr__(self, name: str) -> str:
        value: str = _on_first_read(self, name, "body")
        return value

    @property
    def marker(self) -> str:
        return COMMENT_MARKER.format(key=self.idempotency_key)

    @property
    def text(self) -> str:
        """What is posted: the body plus the key, so a crash-recovery read of the ticket can find it."""
        # Parentheses, not brackets: Jira wiki markup would render "[...]" as a link.
        return f"{self.body}\n\n({self.marker})"


@fast_init
@dataclass(frozen=True)
class TagSignal:
    """A tag the engine wants present, named abstractly; `TagScheme` turns it into the platform's tag text."""

    kind: str  # "breached" | "at_risk" | "management" | "update_due"
    clock: str = ""
    tier: str = ""
    """The tier of a tier clock (acknowledgment, assessment): its tags name the tier (`TagScheme.tier_breached`)."""


@dataclass(frozen=True)
class TagScheme:
    """How signals become tags. Names come from the mapping; every tag matching a pattern is ours to manage.

    Tier clocks (acknowledgment, assessment) use the `tier_*` patterns, whose `{tier}` is the tier in lower
    case (`esc_l2_breached_acknowledgment`): an operator tells L2's late acknowledgment from L3's, and a move to
    L3 keeps L2's breach on record. Tags of the older one-name-for-every-tier form (`esc_breached_acknowledgment`)
    still match `breached`, so they are recognised as ours and removed on upgrade.
    """

    breached: str = "esc_breached_{clock}"
    at_risk: str = "esc_at_risk_{clock}"
    management: str = "esc_management"
    update_due: str = "esc_customer_update_due"
    tier_breached: str = "esc_{tier}_breached_{clock}"
    tier_at_risk: str = "esc_{tier}_at_risk_{clock}"

    def render(self, signal: TagSignal) -> str:
        if signal.tier and signal.kind in ("breached", "at_risk"):
            pattern = self.tier_breached if signal.kind == "breached" else self.tier_at_risk
            return pattern.format(clock=signal.clock, tier=signal.tier.lower())
        pattern = getattr(self, signal.kind)
        return pattern.format(clock=signal.clock)

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.breached, self.at_risk, self.management, self.update_due, self.tier_breached, self.tier_at_risk)

    def matcher(self) -> Callable[[str], bool]:
        """A test for "this tag is ours" (compiled once per set of patterns)."""
        return _matcher(self.patterns)

    def is_managed(self, tag: str) -> bool:
        return self.matcher()(tag)

    def clock_of(self, tag: str, kind: str) -> str | None:
        """The clock a `kind` ("breached" / "at_risk") tag names, SLA or tier clock (any tier); None: another tag.

        Notifications and the report read breaches from the tags: a tier clock's tag is one of them too."""
        patterns = (self.breached, self.tier_breached) if kind == "breached" else (self.at_risk, self.tier_at_risk)
        for pattern in patterns:
            found = _part_matcher(pattern, "clock")(tag)
            if found is not None:
                return found
        return None

    def breached_tier(self, tag: str) -> str | None:
        """The tier (as rendered: `l2`) a tier clock's breach tag names; None: another tag."""
        return _part_matcher(self.tier_breached, "tier")(tag)


@lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Each pattern as a regular expression, `{clock}` and `{tier}` standing for one or more characters (a
    tier: letters and digits)."""
    parts = []
    for pattern in patterns:
        text = re.escape(pattern).replace(r"\{clock\}", ".+").replace(r"\{tier\}", "[A-Za-z0-9]+")
        parts.append(f"(?:{text})")
    compiled = re.compile("|".join(parts))
    return lambda tag: compiled.fullmatch(tag) is not None


@lru_cache(maxsize=64)
def _part_matcher(pattern: str, part: str) -> Callable[[str], str | None]:
    """What a tag of `pattern` holds in its `{part}` (`clock` or `tier`); None when the tag is not of it, or the
    pattern has no such part."""
    text = re.escape(pattern).replace(r"\{clock\}", "(?P<clock>.+)").replace(r"\{tier\}", "(?P<tier>[A-Za-z0-9]+)")
    compiled = re.compile(text)
    named = "{" + part + "}" in pattern

    def value(tag: str) -> str | None:
        found = compiled.fullmatch(tag)
        return found.group(part) if found is not None and named else None

    return value


@fast_init
@dataclass(frozen=True)
class Decision:
    platform: str
    instance: str
    ticket_id: str
    evaluated_at: datetime
    current_tier: Tier
    target_tier: Tier
    management: bool
    clocks: tuple[Clock, ...]
    rules: tuple[RuleOutcome, ...]
    signals: frozenset[TagSignal]
    comment: Comment | None = None
    review_at: datetime | None = None
    """The earliest moment this answer could change with no new input (engine/review.py); None: never."""
    review_exact: bool = True
    """False when a rule uses time in a way review_at cannot solve: the caller bounds the wait itself."""

    @property
    def escalates(self) -> bool:
        return self.target_tier != self.current_tier

    @property
    def fired(self) -> tuple[RuleOutcome, ...]:
        return tuple(rule for rule in self.rules if rule.fired)


@fast_init
@dataclass(frozen=True)
class WriteBack:
    """The difference between what the platform shows and what the engine wants: one API call's worth."""

    platform: str
    instance: str
    ticket_id: str
    revision: str
    tier: Tier | None = None
    add_tags: frozenset[str] = frozenset()
    remove_tags: frozenset[str] = frozenset()
    comment: Comment | None = None
    tags: frozenset[str] | None = None
    """Every managed tag the ticket is to show after this write (None: tags unchanged). Add/remove is how
    platforms with tag operations apply it; a platform whose tags are one field the daemon writes whole
    (ServiceNow) writes this set, so it needs no read of the field first."""

    @property
    def is_empty(self) -> bool:
        return self.tier is None and not self.add_tags and not self.remove_tags and self.comment is None

    @property
    def key(self) -> str:
        """Ledger key: stable across replays of the same intent, so a replay finds its earlier record."""
        if self.comment is not None:
            return self.comment.idempotency_key
        parts = [self.instance, self.ticket_id, self.tier or "-", ",".join(sorted(self.add_tags))]
        parts.append(",".join(sorted(self.remove_tags)))
        return "|".join(parts)

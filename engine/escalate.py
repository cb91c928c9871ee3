"""evaluate(ticket, policy, now, history) -> Decision: the escalation engine's one pure function.

It measures the ticket's clocks (engine.sla over engine.calendar), computes the facts the policy's rules read,
runs the compiled CEL conditions once each against one activation built per ticket, and combines the outcomes:
target tier = the highest of the current tier and every fired rule's tier (lower only when the policy allows
de-escalation), management = any fired management rule or a track started earlier. It never reads the clock,
the network or a file; the same inputs always give the same Decision.

Clocks a ticket has (targets from the policy; zero targets are not tracked):
- first_response: created -> first public agent reply;       resolution: created -> solved;
- customer_update: last public reply (else the first, else created) -> next public reply, while open (update_due);
- acknowledgment / assessment of the current tier: tier entered -> first agent action / public reply after it
  (when the decision changes the tier, those of the target tier from `now`: the Decision describes the state
  after its own write, so the echo of that write plans nothing);
- mgmt_acknowledgment, mgmt_customer_contact, mgmt_update: from the management track's start.
SLA clocks (the first three) pause while the ticket is pending or on hold; the internal ones do not, because
a handoff between our own teams does not wait on the customer. No clock counts the time a ticket sat solved
(a reopened ticket resumes where it stood), and SLA targets follow the priority history (`priority_periods`).

People come first (issue 9): a move down by a person (`human_move_at`) holds off the escalation rules that were
already firing at the move (`_hold_off`) until a new trigger fires or the tier's own time limit, counted from
the move, passes; the re-escalation is a new one (its own handoff key, `_escalation_key`).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from itertools import pairwise
from operator import itemgetter
from typing import Any

import cel

from engine.calendar import BusinessCalendar, format_duration
from engine.handoff import HandoffContext, render_handoff
from engine.model import (
    Clock,
    ClockState,
    Comment,
    Decision,
    EscalationHistory,
    Priority,
    RuleOutcome,
    Status,
    TagSignal,
    Ticket,
    Tier,
)
from engine.policy import _STRING, CLOCK_FIELDS, CLOCK_NAMES, FACTS, Policy, Rule, flat_name, rewrite
from engine.review import direct_comparisons, next_review
from engine.sla import (
    Pause,
    Period,
    active_business_time,
    compute_clock_periods,
    is_paused_at,
    measure_clock,
    pauses_of,
    solved_spans,
)

_NO_HISTORY = EscalationHistory()
_CADENCE_CLOCKS = frozenset({"customer_update", "mgmt_update"})
_SOLVED = frozenset({Status.SOLVED, Status.CLOSED, Status.DELETED})
_TIERS_BY_RANK = {tier.rank: tier for tier in Tier}
RANK = {tier: tier.rank for tier in Tier}
"""Tier.rank as a dict: the property parses the enum value on every call, too slow for the hot path."""
_MINUTE = 60.0
_CHAIN_STEPS = range(len(Tier))
"""At most one chained pass per tier (`len(Tier)` is a Python-level call on the enum class: kept here)."""


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is refused: astimezone() would read it as the host's local time."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the engine works with timezone-aware UTC times")
    return moment.astimezone(UTC)


def tier_started_at(ticket: Ticket, history: EscalationHistory, moved: datetime | bool | None = True) -> datetime:
    """When the ticket entered its current tier: the later of the platform's record and ours, else creation.

    The platform's tier change history (`Ticket.tier_changes`) is exact and holds entries only, so a
    reassignment inside the tier keeps the entry time; without it the mapping's estimate (`tier_entered_at`)
    stands in. Our own record (the state store's tier entries) is exact for the moves we made; the later of the
    two also follows a person who moved the ticket again after us. `moved`: the person's move
    (`human_move_at`) when the caller has it already (True: find it here).
    """
    tier = ticket.effective_tier
    known = [at for entered, at in history.tier_entries if entered == tier]
    platform = _platform_tier_entry(ticket, tier)
    if platform is not None:
        known.append(platform)
    if moved is True:
        moved = human_move_at(ticket, history)
    if isinstance(moved, datetime):
        known.append(moved)
    return max(known) if known else ticket.created_at


def _platform_tier_entry(ticket: Ticket, tier: Tier) -> datetime | None:
    """The last move into `tier` from another tier in the platform's history, else the mapping's estimate.

    An empty but available history means the ticket never changed tier: it has been at it since creation. A
    history whose last entry is another tier lags behind the ticket itself: it cannot date this tier.
    """
    changes = ticket.tier_changes
    if changes is None:
        return ticket.tier_entered_at
    entered: datetime | None = ticket.created_at
    previous: Tier | None = None
    for change in sorted(changes, key=lambda change: change.at):
        level = change.tier or Tier.L1
        if level != previous:
            entered = change.at if level == tier else None
            previous = level
    if previous is not None and previous != tier:
        return ticket.tier_entered_at
    return entered


HUMAN_MOVE_SLACK = timedelta(minutes=15)
"""How far apart our recorded write and the platform's record of the same tier change may be (our time is the
cycle's, taken before the write; the platform stamps the change when the write arrives)."""


def _tier_entries(ticket: Ticket) -> list[tuple[Tier, datetime]]:
    """The platform's tier history as entries (tier, when entered), oldest first; repeats collapsed."""
    entries: list[tuple[Tier, datetime]] = []
    for change in sorted(ticket.tier_changes or (), key=lambda change: change.at):
        level = change.tier or Tier.L1
        if not entries or entries[-1][0] != level:
            entries.append((level, change.at))
    return entries


def human_move_at(ticket: Ticket, history: EscalationHistory) -> datetime | None:
    """When a person moved the ticket down into its current tier, else None.

    A move down is a person's when the platform's history shows the ticket entering its current tier from a
    higher one and none of our recorded tier entries (the store's, one per write) matches it within
    HUMAN_MOVE_SLACK. When the platform's history is not read, or lags behind the ticket (it does not show the
    current tier yet), a ticket now below the tier we last moved it to was moved down by a person at a moment
    we cannot see: its last update stands in (the move at the latest, so the hold-off errs on the person's
    side). A record not updated since our last write is older than that write, not a person's move.
    """
    changes = ticket.tier_changes
    if not history.tier_entries and (changes is None or len(changes) < 2):
        return None  # nothing of ours to be below, and no move in the platform's history: the common case
    current = ticket.effective_tier
    entries = _tier_entries(ticket) if changes is not None else []
    if not entries or entries[-1][0] != current:
        if not history.tier_entries:
            return None
        ours, recorded = max(history.tier_entries, key=lambda entry: entry[1])
        if RANK[ours] <= RANK[current] or ticket.updated_at <= recorded:
            # Not below our last move, or a record older than our write (the book's copy before its echo).
            return None
        return ticket.updated_at
    if len(entries) < 2:
        return None
    (tier, at), (before, _) = entries[-1], entries[-2]
    if RANK[before] < RANK[tier]:
        return None
    for ours, recorded in history.tier_entries:
        if ours == tier and abs(at - recorded) <= HUMAN_MOVE_SLACK:
            return None
    return at


def _closed_at(ticket: Ticket) -> datetime | None:
    if not ticket.status.is_terminal:
        return None
    return ticket.solved_at or ticket.updated_at


def _after(moment: datetime | None, start: datetime) -> datetime | None:
    return moment if moment is not None and moment > start else None


def _first_after(times: Sequence[datetime], start: datetime) -> datetime | None:
    """The first event after `start`: a clock waiting for an event stops at its first occurrence, never later."""
    later = [moment for moment in times if moment > start]
    return min(later) if later else None


_Stop = tuple[datetime | None, bool]
"""When the awaited event happened (None: not yet), and whether that is known at all (False: UNKNOWN clock)."""


def _first_reply_after(ticket: Ticket, start: datetime) -> _Stop:
    if ticket.public_replies is not None:
        return _first_after(ticket.public_replies, start), True
    # Without the history only the last reply is known: after `start` it proves a reply came, if not the first.
    stop = _after(ticket.last_public_reply_at, start)
    return stop, stop is not None or "public_replies" not in ticket.missing_facts


def _first_action_after(ticket: Ticket, start: datetime) -> _Stop:
    if ticket.agent_actions is not None:
        return _first_after(ticket.agent_actions, start), True
    stop = _after(ticket.last_agent_action_at, start)
    return stop, stop is not None or "agent_actions" not in ticket.missing_facts


def _last_reply(ticket: Ticket) -> _Stop:
    """The last public reply (the update cadence counts from it)."""
    if ticket.public_replies is not None:
        return (max(ticket.public_replies) if ticket.public_replies else None), True
    if "public_replies" in ticket.missing_facts:
        # The first reply is no stand-in for the last when the history is known to be missing: the cadence
        # would count from it forever.
        return ticket.last_public_reply_at, ticket.last_public_reply_at is not None
    # Platforms that only know the first reply (a metric set) still beat counting from creation.
    return ticket.last_public_reply_at or ticket.first_public_reply_at, True


def _unknown(name: str, target: timedelta, calendar: BusinessCalendar, tier: Tier | None = None) -> Clock:
    """A clock whose stopping fact cannot be read here: shown in explain, never tagged, never breached."""
    return _unknown_clock(name, target, calendar.name, tier)


@lru_cache(maxsize=1024)
def _unknown_clock(name: str, target: timedelta, calendar: str, tier: Tier | None) -> Clock:
    """One frozen Clock per distinct unknown clock: it depends on nothing of the ticket or the time, and a
    platform without the history builds several per ticket (42k for 10k tickets, issue 14's profile)."""
    zero = timedelta(0)
    return Clock(name, target, zero, target, None, ClockState.UNKNOWN, calendar, tier=tier)


def _clock(
    policy: Policy,
    now: datetime,
    closed: datetime | None,
    name: str,
    start: datetime,
    stop: datetime | None,
    target: timedelta,
    calendar: BusinessCalendar,
    pauses: tuple[Pause, ...],
    tier: Tier | None = None,
) -> Clock:
    stop = stop if stop is not None else closed
    return measure_clock(name, start, stop, target, calendar, pauses, now, policy.at_risk_fraction, tier)


def priority_periods(ticket: Ticket, policy: Policy, target: str) -> list[Period] | None:
    """The `target` ("first_response", "resolution", "customer_update") in force over the ticket's life, from
    its priority history; None when the priority never changed (or no history is read): one target applies.

    Before the first recorded change the first recorded priority applies; a history that does not end in the
    current priority lags behind the ticket: the current one applies from the ticket's last update.
    """
    changes = ticket.priority_changes
    if not changes:
        return None
    ordered = sorted(changes, key=lambda change: change.at)
    points: list[tuple[datetime | None, Priority]] = []
    for change in ordered:
        if not points or points[-1][1] != change.priority:
            points.append((change.at if points else None, change.priority))
    if points[-1][1] != ticket.priority:
        points.append((max(ticket.updated_at, ordered[-1].at), ticket.priority))
    if len(points) == 1:
        return None
    periods: list[Period] = []
    for since, priority in points:
        sla = policy.sla[priority]
        periods.append((since, getattr(sla, target) or None, sla.calendar))
    return periods


def _sla_clock(
    policy: Policy,
    now: datetime,
    closed: datetime | None,
    name: str,
    start: datetime,
    stop: datetime | None,
    target: timedelta,
    calendar: BusinessCalendar,
    pauses: tuple[Pause, ...],
    periods: list[Period] | None,
) -> Clock:
    if periods is None:
        stop = stop if stop is not None else closed
        return measure_clock(name, start, stop, target, calendar, pauses, now, policy.at_risk_fraction)
    return compute_clock_periods(
        name,
        start=start,
        stop=stop if stop is not None else closed,
        periods=periods,
        pauses=pauses,
        now=now,
        at_risk_fraction=policy.at_risk_fraction,
    )


def measure_clocks(
    ticket: Ticket,
    policy: Policy,
    now: datetime,
    pauses: tuple[Pause, ...],
) -> list[Clock]:
    """The SLA clocks the ticket has as of `now` (see the module docstring); zero targets are skipped.

    Targets follow the priority history: each applies from the moment the ticket got that priority on.
    """
    sla = policy.sla[ticket.priority]
    closed = _closed_at(ticket)
    cal = sla.calendar
    clocks: list[Clock] = []
    changed = bool(ticket.priority_changes) and len(ticket.priority_changes or ()) > 1
    if sla.first_response:
        if ticket.public_replies is not None:
            reply: datetime | None = min(ticket.public_replies) if ticket.public_replies else None
        else:
            reply = ticket.first_public_reply_at
        if reply is not None or ticket.public_replies is not None or "public_replies" not in ticket.missing_facts:
            start = ticket.created_at
            periods = priority_periods(ticket, policy, "first_response") if changed else None
            target = sla.first_response
            clocks.append(_sla_clock(policy, now, closed, "first_response", start, reply, target, cal, pauses, periods))
        else:
            clocks.append(_unknown("first_response", sla.first_response, cal))
    if sla.resolution:
        periods = priority_periods(ticket, policy, "resolution") if changed else None
        start, target = ticket.created_at, sla.resolution
        clocks.append(_sla_clock(policy, now, closed, "resolution", start, closed, target, cal, pauses, periods))
    if closed is None and sla.customer_update:
        last, known = _last_reply(ticket)
        if known:
            since = last or ticket.created_at
            periods = priority_periods(ticket, policy, "customer_update") if changed else None
            target = sla.customer_update
            clocks.append(_sla_clock(policy, now, closed, "customer_update", since, None, target, cal, pauses, periods))
        else:
            clocks.append(_unknown("customer_update", sla.customer_update, cal))
    return clocks


def tier_clocks(ticket: Ticket, policy: Policy, now: datetime, tier: Tier, tier_start: datetime) -> list[Clock]:
    """Acknowledgment and initial assessment by `tier`, entered at `tier_start` (not paused: internal).

    Each stops at the FIRST qualifying event after the entry: acting or replying again later cannot make an
    acknowledgment that was on time a late one. They do not run while the ticket sat solved (a reopened ticket
    owes nothing for those days). Each clock names its tier, so its tags can (`TagScheme.tier_breached`).
    """
    targets = policy.tiers[tier]
    if not targets.acknowledgment and not targets.assessment:
        return []
    cal = policy.sla[ticket.priority].calendar
    closed = _closed_at(ticket)
    solved = solved_spans(ticket) if any(change.status in _SOLVED for change in ticket.status_history) else ()
    clocks: list[Clock] = []
    if targets.acknowledgment:
        acted, known = _first_action_after(ticket, tier_start)
        if known:
            target = targets.acknowledgment
            clocks.append(_clock(policy, now, closed, "acknowledgment", tier_start, acted, target, cal, solved, tier))
        else:
            clocks.append(_unknown("acknowledgment", targets.acknowledgment, cal, tier))
    if targets.assessment:
        replied, known = _first_reply_after(ticket, tier_start)
        if known:
            target = targets.assessment
            clocks.append(_clock(policy, now, closed, "assessment", tier_start, replied, target, cal, solved, tier))
        else:
            clocks.append(_unknown("assessment", targets.assessment, cal, tier))
    return clocks


def past_tier_breaches(
    ticket: Ticket, policy: Policy, history: EscalationHistory, current_start: datetime
) -> frozenset[tuple[str, str]]:
    """(tier, clock) of every tier clock that breached during an earlier stay at a tier, which ended before the
    current stay began: their tags stay on the ticket as history (as a met-late SLA clock's do).

    Stays come from the platform's tier history merged with our own recorded entries (a history that lags
    behind our last write still ends the stay our write ended). Without a platform history no earlier stay can
    be dated on every read alike, so nothing is kept (the tags of a tier left behind go, as before).
    """
    changes = ticket.tier_changes
    if changes is None or len(changes) + len(history.tier_entries) < 2:
        return frozenset()
    merged = sorted([*_tier_entries(ticket), *history.tier_entries], key=lambda entry: entry[1])
    entries: list[tuple[Tier, datetime]] = []
    for tier, at in merged:
        if not entries or entries[-1][0] != tier:
            entries.append((tier, at))
    if len(entries) < 2:
        return frozenset()
    found: set[tuple[str, str]] = set()
    for (tier, entered), (_, left) in pairwise(entries):
        if left > current_start or entered >= left:
            continue
        for clock in tier_clocks(ticket, policy, left, tier, entered):
            if clock.breached_at is not None:
                found.add((tier.value, clock.name))
    return frozenset(found)


def management_clocks(
    ticket: Ticket, policy: Policy, now: datetime, start: datetime, plan_at: datetime | None = None
) -> list[Clock]:
    """The management track's clocks, running from the track's start (never paused: internal deadlines).

    Acknowledgment and customer contact stop at the first agent action / public reply after the start; the
    executive notification (enterprise customers and revenue impact only) at the first internal note by a
    person after the start (the note records that the sponsor was told; unknown where notes cannot be read); the resolution plan when the plan tag
    (`[policy.management] resolution_plan_tag`, set by a person) was first seen (`plan_at`, recorded by the
    cycle); the update cadence counts from the last public reply.
    """
    mgmt = policy.management
    cal = mgmt.calendar
    closed = _closed_at(ticket)
    clocks: list[Clock] = []
    acted, acted_known = _first_action_after(ticket, start)
    contacted, contact_known = _first_reply_after(ticket, start)
    if mgmt.acknowledgment:
        if acted_known:
            target = mgmt.acknowledgment
            clocks.append(_clock(policy, now, closed, "mgmt_acknowledgment", start, acted, target, cal, ()))
        else:
            clocks.append(_unknown("mgmt_acknowledgment", mgmt.acknowledgment, cal))
    # Seeds: executive notification is owed for enterprise customers or revenue impact (as the handoff lists it).
    if mgmt.executive_notification and (ticket.segment == "enterprise" or ticket.flags.revenue_at_risk > 0):
        target = mgmt.executive_notification
        if ticket.internal_notes is not None:
            told = _first_after(ticket.internal_notes, start)
            clocks.append(_clock(policy, now, closed, "mgmt_executive_notification", start, told, target, cal, ()))
        else:
            clocks.append(_unknown("mgmt_executive_notification", target, cal))
    if mgmt.customer_contact:
        target = mgmt.customer_contact
        if contact_known:
            clocks.append(_clock(policy, now, closed, "mgmt_customer_contact", start, contacted, target, cal, ()))
        else:
            clocks.append(_unknown("mgmt_customer_contact", target, cal))
    if mgmt.resolution_plan:
        planned = max(plan_at, start) if plan_at is not None else None
        target = mgmt.resolution_plan
        clocks.append(_clock(policy, now, closed, "mgmt_resolution_plan", start, planned, target, cal, ()))
    if contacted is not None and closed is None and mgmt.update_interval:
        last, _ = _last_reply(ticket)
        since = max(last or contacted, contacted)
        clocks.append(_clock(policy, now, closed, "mgmt_update", since, None, mgmt.update_interval, cal, ()))
    return clocks


def management_ends_at(policy: Policy, history: EscalationHistory) -> datetime | None:
    """When a running track may end: `end_after_quiet_hours` after the resolution plan was delivered (None:
    never, the policy keeps tracks until the ticket closes, or no plan yet). It ends then if no management
    rule fires at that moment or any later one: the engine keeps no memory of when a trigger last fired, so
    "quiet" is judged by the triggers firing now."""
    quiet = policy.management.end_after_quiet_hours
    plan = history.resolution_plan_at
    start = history.management_started_at
    if not quiet or plan is None or start is None or history.management_ended_at is not None:
        return None
    return max(plan, start) + quiet


MANAGEMENT_START = "MGMT"
MANAGEMENT_END = "MGMT_END"
MANAGEMENT_PLAN = "MGMT_PLAN"
"""How the store's history rows and the handoff key name a management track's events."""


def management_label(event: str, track: int) -> str:
    """`MGMT` for the ticket's first track (the key and row names of earlier releases), `MGMT#2` for the next."""
    return event if track <= 1 else f"{event}#{track}"


def signals_for(
    clocks: Sequence[Clock], management: bool, kept: frozenset[tuple[str, str]] = frozenset()
) -> frozenset[TagSignal]:
    """Tags the ticket should carry: breached (also met-late, as history), at risk, update due, management,
    and the breaches `kept` from earlier stays at other tiers ((tier, clock) pairs).

    The few distinct answers are shared: keyed by the (kind, clock, tier) names they hold, a flat tuple.
    """
    parts: list[str] = []
    for clock in clocks:
        if clock.name in _CADENCE_CLOCKS:
            if clock.state in _DUE_STATES:
                parts += ("update_due", "", "")
            continue
        # `_value_`, not `.value` (a Python-level property of enums): this runs for every clock.
        tier = clock.tier._value_ if clock.tier is not None else ""
        if clock.breached_at is not None:
            parts += ("breached", clock.name, tier)
        elif clock.state is _AT_RISK:
            parts += ("at_risk", clock.name, tier)
    for tier, name in sorted(kept):
        parts += ("breached", name, tier)
    if management:
        parts += ("management", "", "")
    key = tuple(parts)
    signals = _SIGNAL_SETS.get(key)
    if signals is None:
        signals = frozenset(
            TagSignal(kind, clock, tier) for kind, clock, tier in zip(parts[::3], parts[1::3], parts[2::3], strict=True)
        )
        if len(_SIGNAL_SETS) >= 4096:
            _SIGNAL_SETS.clear()
        _SIGNAL_SETS[key] = signals
    return signals


_SIGNAL_SETS: dict[tuple[str, ...], frozenset[TagSignal]] = {}
_AT_RISK = ClockState.AT_RISK
_DUE_STATES = (ClockState.AT_RISK, ClockState.BREACHED)
"""Module constants: an enum member read off its class is a slower lookup, and this runs for every clock."""


# -- facts ------------------------------------------------------------------------------------------------------


def _clock_expression(name: str, field: str) -> str:
    """A clock fact (`clocks.<name>.<field>`) over the clock map `cm` (see `_fact_function`)."""
    if field == "state":
        return f"(_c.state._value_ if (_c := cm.get({name!r})) is not None else 'none')"
    if field == "active":
        return f"({name!r} in cm)"
    attribute = {"elapsed_minutes": "elapsed", "remaining_minutes": "remaining"}.get(field, "target")
    return f"((_c.{attribute}.total_seconds() / 60.0) if (_c := cm.get({name!r})) is not None else 0.0)"


_EXPRESSIONS: dict[str, str] = {
    "ticket.priority": "t.priority._value_",
    "ticket.priority_rank": "int(t.priority._value_[1])",
    "ticket.status": "t.status._value_",
    "ticket.tier": "tier._value_",
    "ticket.tier_rank": "RANK[tier]",
    "ticket.is_open": "(not t.status.is_terminal)",
    "ticket.segment": "(t.segment or '')",
    "ticket.organization": "(t.organization or '')",
    "ticket.assignee_group": "(t.assignee_group or '')",
    "ticket.platform": "t.platform",
    "ticket.tags": "sorted(t.tags)",
    "ticket.age_hours": "(max((now - t.created_at).total_seconds(), 0.0) / 3600.0)",
    "ticket.has_public_reply": "(t.first_public_reply_at is not None)",
    "hours_at_tier": "hours",
    "any_clock_breached": "any(c.state in BREACHED for n, c in cm.items() if n not in CADENCE)",
    "any_clock_at_risk": "any(c.state in AT_RISK for n, c in cm.items() if n not in CADENCE)",
    "history.customer_escalations_30d": "h.customer_escalations_30d",
    "history.tier_entries": "len(h.tier_entries)",
    "history.management_active": "(h.management_started_at is not None and h.management_ended_at is None)",
    "platform_slas.any_breached": "any(s.breached for s in t.platform_slas)",
    "platform_slas.breached": "sorted(s.name for s in t.platform_slas if s.breached)",
    **{
        f"flags.{name}": f"{type(FACTS[f'flags.{name}']).__name__}(fl.{name})"
        for name in (path[6:] for path in FACTS if path.startswith("flags."))
    },
    **{f"clocks.{name}.{field}": _clock_expression(name, field) for name in CLOCK_NAMES for field in CLOCK_FIELDS},
}
"""Each fact of the vocabulary (engine.policy.FACTS) as a Python expression over `t` (ticket), `fl` (its
flags), `now`, `cm` (clock map), `hours`, `h` (history) and `tier`, computed inline
(tests/test_escalate_facts.py holds each equal to a plain reading of its definition)."""

_FACT_GLOBALS: dict[str, Any] = {
    "RANK": RANK,
    "BREACHED": (ClockState.BREACHED,),
    "AT_RISK": (ClockState.AT_RISK,),
    "CADENCE": _CADENCE_CLOCKS,
}

FactFunction = Callable[[Ticket, datetime, dict[str, Clock], float, EscalationHistory, Tier], dict[str, Any]]


def _fact_function(paths: tuple[str, ...]) -> FactFunction:
    """One function computing the facts `paths` as one dict display, compiled once per set of paths.

    Why: a policy reads some twenty facts; through one getter call each and an environment object per ticket
    they cost several microseconds a ticket, twice for a ticket that escalates (issue 14's profile). The code
    is built from `_EXPRESSIONS` only (the engine's own vocabulary; fact names are validated at policy load).
    """
    function = _FACT_FUNCTIONS.get(paths)
    if function is None:
        items = ", ".join(f"{path!r}: {_EXPRESSIONS[path]}" for path in paths)
        # `fl`: the ticket's flags, read once (most policies read several).
        source = f"def facts(t, now, cm, hours, h, tier):\n    fl = t.flags\n    return {{{items}}}\n"
        namespace = dict(_FACT_GLOBALS)
        exec(source, namespace)  # built from the fixed expressions above only, never from input
        function = namespace["facts"]
        if len(_FACT_FUNCTIONS) >= 256:
            _FACT_FUNCTIONS.clear()
        _FACT_FUNCTIONS[paths] = function
    return function


_FACT_FUNCTIONS: dict[tuple[str, ...], FactFunction] = {}
"""The compiled fact functions, by the paths they compute (the paths are the policies', so there are few)."""

_TIER_FACTS = frozenset({"ticket.tier", "ticket.tier_rank", "hours_at_tier", "any_clock_breached", "any_clock_at_risk"})
"""Facts that depend on the tier the ticket is taken to sit at, or on its clocks (with `clocks.*`)."""


@lru_cache(maxsize=256)
def _tier_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(path for path in paths if path in _TIER_FACTS or path.startswith("clocks."))


def compute_facts(
    ticket: Ticket,
    now: datetime,
    clocks: Sequence[Clock],
    hours_at_tier: float,
    history: EscalationHistory,
    paths: tuple[str, ...],
    tier: Tier | None = None,
) -> dict[str, Any]:
    """The values of the named fact paths (dotted names as rules write them).

    `tier`: the tier the ticket is taken to sit at (default its own): a chained pass asks what the rules say at
    the next tier without copying the whole ticket (`dataclasses.replace` of a Ticket costs more than the facts).
    """
    clock_map = {clock.name: clock for clock in clocks}
    return _fact_function(paths)(ticket, now, clock_map, hours_at_tier, history, tier or ticket.effective_tier)


def _moved_facts(
    facts: dict[str, Any],
    ticket: Ticket,
    now: datetime,
    clocks: Sequence[Clock],
    history: EscalationHistory,
    paths: tuple[str, ...],
    tier: Tier,
) -> dict[str, Any]:
    """`compute_facts(ticket, now, clocks, 0.0, history, paths, tier)` for a chained pass, from the facts of
    the pass before (same ticket, `now` and history): only the facts of the tier and the clocks are computed
    again, the others are the same values (a new dict: deferred reasons keep reading the old one)."""
    moved = dict(facts)
    clock_map = {clock.name: clock for clock in clocks}
    moved.update(_fact_function(_tier_paths(paths))(ticket, now, clock_map, 0.0, history, tier))
    return moved


# -- reasons ----------------------------------------------------------------------------------------------------


def _is_hours(path: str) -> bool:
    return path.endswith("_hours") or path == "hours_at_tier"


def shown_value(path: str, value: Any) -> Any:
    """A fact as reasons show it, hashable: hours to whole minutes, minutes to tenths, lists to tuples.

    Reasons are built from these values only, so they can be cached by them: a reason is a pure function of
    (rule, fired, target, shown values), whatever ticket produced it first.
    """
    if isinstance(value, float):
        if _is_hours(path):
            return round(value * 60)
        if path.endswith("_minutes"):
            return round(value, 1)
    elif isinstance(value, list):
        return tuple(value)
    return value


_QUANTIZED = frozenset(
    path
    for path, sample in FACTS.items()
    if isinstance(sample, list) or (isinstance(sample, float) and (_is_hours(path) or path.endswith("_minutes")))
)
"""Facts whose shown value differs from the raw one (see `shown_value`); the others are shown as they are."""


def format_fact(path: str, shown: Any) -> str:
    """Human text of a shown value (see `shown_value`)."""
    if isinstance(shown, bool):
        return "true" if shown else "false"
    if _is_hours(path) and isinstance(shown, int):
        return f"{shown / 60:.2f}h ({format_duration(timedelta(minutes=shown))})"
    if isinstance(shown, float):
        return f"{shown:.1f}min" if path.endswith("_minutes") else f"{shown:g}"
    if isinstance(shown, str):
        return repr(shown)
    if isinstance(shown, tuple):
        return repr(list(shown))
    return str(shown)


def _fact_list(rule: Rule, shown: dict[str, Any]) -> str:
    return ", ".join([_fact_text(path, shown[path]) for path in rule.facts])


def _fact_text(path: str, shown: Any) -> str:
    """`path = value` as reasons list it, memoized: most values recur (tiers, priorities, flags, states)."""
    if type(shown) is float:  # not memoized: 0.0 == -0.0 but they read differently
        return f"{path} = {format_fact(path, shown)}"
    key = (path, shown, type(shown))  # the type too: True == 1 but they read "true" and "1"
    text = _FACT_TEXTS.get(key)
    if text is None:
        text = f"{path} = {format_fact(path, shown)}"
        if len(_FACT_TEXTS) >= 8192:
            _FACT_TEXTS.clear()
        _FACT_TEXTS[key] = text
    return text


_FACT_TEXTS: dict[tuple[str, Any, type], str] = {}


def _render_reason(rule: Rule, shown: dict[str, Any], policy: Policy, target: Tier | None) -> str:
    assert rule.reason is not None
    values: dict[str, str] = {}
    for path in (*rule.facts, *rule.reason_facts):
        value = shown[path]
        values[path] = value if isinstance(value, str) else format_fact(path, value).split(" (")[0]
    for name, number in policy.thresholds.items():
        values[f"thresholds.{name}"] = f"{number:g}"
    if "hours_at_tier" in shown:
        values["hours_at_tier_text"] = format_duration(timedelta(minutes=shown["hours_at_tier"]))
    values["target_tier"] = target.value if target else ""
    text = rule.reason
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def _rule_target(rule: Rule, current: Tier) -> Tier | None:
    if rule.tier == "next":
        return _TIERS_BY_RANK[min(RANK[current] + 1, 4)]
    return rule.tier


_CACHE_LIMIT = 20_000
"""Outcomes kept before the memo starts again: about 370 bytes an entry (key, outcome, reason text), so 7 MB at
most. At 200,000 it grew to some 75 MB on a large backlog (issue 14, bench/memory.py) without a measurable gain:
a 30,000-ticket backlog has about 12,500 distinct outcomes, and the common ones come back at once."""


def _memo(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Keep `value` in the policy's memo. A full memo drops its outcomes, never the per-policy entries kept under
    a name ("prepared": the compiled CEL batch, "lowering", "review_watch"): rebuilding those on every
    20,000th outcome cost a recompile mid-sweep on any large backlog."""
    if len(cache) >= _CACHE_LIMIT:
        named = {name: kept for name, kept in cache.items() if isinstance(name, str)}
        cache.clear()
        cache.update(named)
    cache[key] = value


_MISSING = object()
_local = threading.local()


def _context() -> tuple[cel.Context, dict[str, Any]]:
    """This thread's CEL activation and the mirror of what it holds (see `_activate`)."""
    context = getattr(_local, "context", None)
    if context is None:
        context = _local.context = cel.Context()
        _local.values = {}
    return context, _local.values


def _batch_context() -> tuple[cel.Context, dict[str, Any]]:
    """This thread's CEL activation for the batch (`_Prepared.batch`), apart from the one the rules run alone
    use: a context converts every variable it holds again after a change, so the batch, which runs on every
    ticket with a new float or two, is cheaper in a context holding only its own few variables (about 1 us a
    ticket once the other rules' variables joined, measured)."""
    context = getattr(_local, "batch_context", None)
    if context is None:
        context = _local.batch_context = cel.Context()
        _local.batch_values = {}
    return context, _local.batch_values


def _activate(context: cel.Context, values: dict[str, Any], names: _Names, facts: dict[str, Any]) -> None:
    """Bring the variables one condition reads up to this ticket's facts, converting only what changed.

    Why: converting a Python value into a CEL value costs about a microsecond for a string or a float, and
    consecutive tickets share most facts (tier, priority, clock states, flags). `values` mirrors exactly what
    the context holds, so after this loop every variable the condition reads equals this ticket's fact: the
    result cannot depend on earlier tickets. The type is compared too (1 == 1.0 == True in Python, not in CEL).
    """
    for name, path in names:
        value = facts[path]
        old = values.get(name, _MISSING)
        if old != value or type(old) is not type(value):
            context.add_variable(name, value)
            values[name] = value


_Names = tuple[tuple[str, str], ...]
_Step = tuple[int, Rule, "Tier | None", bool, _Names]
"""A rule prepared for the hot loop: index, rule, fixed target (None: "next"), exact (see `_prepare`), variables."""


@dataclass(frozen=True)
class _Prepared:
    steps: tuple[_Step, ...]
    quantized: tuple[str, ...]
    """Facts whose shown value differs from the raw one (hours to minutes, lists to tuples)."""
    exact_facts: tuple[str, ...]
    """Every fact the exact rules show: the key of their outcomes as a group."""
    batch: Any = None
    """One CEL program giving the list of the conditions that run on every ticket (the rules neither exact nor
    direct), None when fewer than two: one execute and one activation per ticket instead of one per rule."""
    batch_names: _Names = ()
    """The variables the batch reads."""
    batch_slots: dict[int, int] = field(default_factory=dict)
    """Rule index -> its condition's position in the batch's result."""
    exact_values: Callable[[dict[str, Any]], tuple[Any, ...]] = lambda facts: ()
    """The values of `exact_facts` in a facts dict, as a tuple (one C call: `_values_of`)."""
    timed: tuple[_Step, ...] = ()
    """The steps that are not exact, in order: they run on every ticket."""
    reorder: Callable[[tuple[RuleOutcome, ...]], tuple[RuleOutcome, ...]] = lambda outcomes: outcomes
    """The exact group's outcomes followed by the timed ones -> the outcomes in rule order (one C call)."""
    management: tuple[int, ...] = ()
    """Indexes of the management rules: outcomes are in rule order, so these tell whether one fired."""
    batch_key: Callable[[dict[str, Any]], tuple[Any, ...] | None] | None = None
    """The memo key of the batch's result for a facts dict (None from it: not memoizable); None when the batch's
    conditions do not allow one (see `_batch_key`)."""


def _values_of(paths: tuple[Any, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the values at `paths` (keys or indices) as a tuple: itemgetter answers a bare value for one."""
    if not paths:
        return lambda facts: ()
    if len(paths) == 1:
        path = paths[0]
        return lambda facts: (facts[path],)
    return itemgetter(*paths)


def _prepare(policy: Policy) -> _Prepared:
    """The policy's rules prepared once (kept in the policy's memo).

    A rule is *exact* when every fact it shows is shown as it is (nothing quantized, no lists): then its
    outcome-cache key holds the raw values its condition reads, so the condition's result is a function of the
    key and a cached outcome can be used without running CEL at all. The exact rules' outcomes are also cached
    together, keyed by the current tier and the values of all the facts they show: one lookup for most rules
    of most tickets. Other rules (hours, minutes, ages) run their condition every time, and only the outcome
    (reason text) is cached.
    """
    prepared = policy.outcome_cache.get("prepared")
    if prepared is None:
        steps = tuple(
            (
                index,
                rule,
                None if rule.tier == "next" else rule.tier,
                not any(path in _QUANTIZED for path in (*rule.facts, *rule.reason_facts)),
                tuple((flat_name(path), path) for path in rule.facts),
            )
            for index, rule in enumerate(policy.rules)
        )
        exact_facts: list[str] = []
        for _, rule, _, exact, _ in steps:
            if exact:
                exact_facts.extend(path for path in (*rule.facts, *rule.reason_facts) if path not in exact_facts)
        quantized = tuple(path for path in policy.fact_paths if path in _QUANTIZED)
        batch, names, slots = _batch(policy, [step for step in steps if not step[3] and not step[1].direct])
        exact = tuple(exact_facts)
        timed = tuple(step for step in steps if not step[3])
        # Where each rule's outcome sits in (exact outcomes..., timed outcomes...).
        exact_index = iter(range(len(steps)))
        timed_index = iter(range(len(steps) - len(timed), len(steps)))
        order = tuple(next(exact_index) if step[3] else next(timed_index) for step in steps)
        reorder = _values_of(order) if timed else (lambda outcomes: outcomes)
        batched = [step for step in steps if not step[3] and not step[1].direct]
        key = _batch_key(policy, batched) if batch is not None else None
        management = tuple(index for index, rule in enumerate(policy.rules) if rule.management)
        prepared = _Prepared(
            steps, quantized, exact, batch, names, slots, _values_of(exact), timed, reorder, management, key
        )
        policy.outcome_cache["prepared"] = prepared
    return prepared


def _batch(policy: Policy, steps: list[_Step]) -> tuple[Any, _Names, dict[int, int]]:
    """The conditions of `steps` compiled as one CEL list (see `_Prepared.batch`); (None, (), {}) if not worth it.

    Each condition keeps its own semantics inside the list (CEL evaluates every element on its own); if any
    element fails at run time the whole list fails, and the rules then run one by one so that only the failing
    rule reports its error. Conditions go in on lines of their own: a `//` comment ends at the line's end.
    """
    if len(steps) < 2:
        return None, (), {}
    sources = [rewrite(rule.when, policy.thresholds).source for _, rule, _, _, _ in steps]
    try:
        program = cel.compile("[" + ", ".join(f"(\n{source}\n)" for source in sources) + "]")
    except Exception:  # not expected (each compiled alone); the rules then simply run one by one
        return None, (), {}
    names = dict.fromkeys(name for _, _, _, _, step_names in steps for name in step_names)
    return program, tuple(names), {step[0]: slot for slot, step in enumerate(steps)}


def _batch_key(policy: Policy, steps: list[_Step]) -> Callable[[dict[str, Any]], tuple[Any, ...] | None] | None:
    """A memo key for the batch's result, or None when its conditions do not allow one.

    Why: the batch runs on every ticket, and a ticket's hours and ages are new numbers every time, so the CEL
    activation is rebuilt for each (some 3 us a ticket). But a condition that uses such a number only in plain
    comparisons with number literals (`hours_at_tier > 2.0`: thresholds are inlined; see
    `engine.review.direct_comparisons`) gives the same result for every value in the same position relative
    to those literals. So the key holds, for each such fact, that position (how many literals lie below the
    value, and whether it equals the next: which tells <, == and > for each), and the other facts the batch
    reads as they are (lists as tuples); then the result is a pure function of the key. One number used in any
    other way (arithmetic, a function call) disables the memo: the batch then runs on every ticket as before.
    """
    raw: list[str] = []
    cuts: dict[str, set[float]] = {}
    for _, rule, _, _, _ in steps:
        source = _STRING.sub("''", rewrite(rule.when, policy.thresholds).source)
        for path in rule.facts:
            if path in _QUANTIZED and isinstance(FACTS[path], float):
                numbers = direct_comparisons(source, flat_name(path))
                if numbers is None:
                    return None
                cuts.setdefault(path, set()).update(numbers)
            elif path not in raw:
                raw.append(path)
    raw_values = _values_of(tuple(raw))
    lists = frozenset(index for index, path in enumerate(raw) if isinstance(FACTS[path], list))
    bounds = tuple((path, tuple(sorted(numbers)), frozenset(numbers)) for path, numbers in cuts.items())

    def key(facts: dict[str, Any]) -> tuple[Any, ...] | None:
        values = raw_values(facts)
        if lists:
            values = tuple(tuple(value) if index in lists else value for index, value in enumerate(values))
        parts: list[Any] = ["batch", values]
        for path, numbers, literals in bounds:
            value = facts[path]
            if value != value:  # NaN: below, above and equal to nothing; let CEL say
                return None
            # The literals below the value, and whether it equals the next one: < == > for each literal.
            parts.append(2 * bisect_left(numbers, value) + (value in literals))
        return tuple(parts)

    return key


class _Activation:
    """This ticket's CEL activation, fetched and brought up to date only when a condition has to run."""

    __slots__ = ("batched", "cache", "context", "facts", "prepared", "values")

    def __init__(self, facts: dict[str, Any], prepared: _Prepared, cache: dict[Any, Any]) -> None:
        self.facts = facts
        self.prepared = prepared
        self.cache = cache
        """The policy's memo: the batch's results by `_Prepared.batch_key`."""
        self.context: cel.Context | None = None
        self.values: dict[str, Any] = {}
        self.batched: list[Any] | None = None
        """The batch's results for this ticket; [] once it failed (the rules then run one by one)."""

    def batch(self) -> list[Any]:
        """The batch's results for this ticket, run on the first call; [] when there is no batch or it failed."""
        if self.batched is None:
            if self.prepared.batch is None:
                self.batched = []
                return self.batched
            key = self.prepared.batch_key(self.facts) if self.prepared.batch_key is not None else None
            if key is not None:
                known = self.cache.get(key)
                if known is not None:
                    self.batched = known
                    return known
            context, values = _batch_context()
            try:
                _activate(context, values, self.prepared.batch_names, self.facts)
                self.batched = list(self.prepared.batch.execute(context))
            except Exception:  # some condition fails here: each runs alone, the failing one reports
                self.batched = []
            else:
                if key is not None:
                    _memo(self.cache, key, self.batched)
        return self.batched

    def run(self, index: int, rule: Rule, names: _Names) -> bool:
        if index in self.prepared.batch_slots:
            batched = self.batch()
            if batched:
                return batched[self.prepared.batch_slots[index]] is True
        if self.context is None:
            self.context, self.values = _context()
        _activate(self.context, self.values, names, self.facts)
        return rule.program.execute(self.context) is True


def _outcome(
    policy: Policy, step: _Step, current: Tier, facts: dict[str, Any], prepared: _Prepared, cel_run: _Activation
) -> tuple[RuleOutcome, bool]:
    """An exact rule's outcome (see `_prepare`), and whether it may be cached (a run-time error is reported
    afresh every time).

    The key reads the facts as they are: an exact rule shows none that `_shown` changes, so they are its shown
    values; the shown dict is only built when the reason has to be rendered."""
    cache = policy.outcome_cache
    index, rule, fixed, _, names = step
    target = fixed if fixed is not None else _rule_target(rule, current)
    key = (index, target, rule.shown(facts))
    outcome = cache.get(key)
    if outcome is not None:
        return outcome, True
    shown = _shown(prepared, facts)
    try:
        fired = facts[rule.direct] is True if rule.direct else cel_run.run(index, rule, names)
    except Exception as error:  # a type clash at run time must not stop the cycle: report it instead
        return RuleOutcome(rule.name, rule.description, False, f"error: {error}", target, rule.management), False
    outcome = RuleOutcome(
        rule.name, rule.description, fired, _reason(policy, rule, shown, target, fired), target, rule.management
    )
    _memo(cache, key, outcome)
    return outcome, True


def _timed_outcome(
    policy: Policy, step: _Step, current: Tier, facts: dict[str, Any], cel_run: _Activation
) -> RuleOutcome:
    """The outcome of a rule that reads hours, minutes or lists: its condition runs on every ticket, and its
    reason (whose numbers rarely repeat) is rendered only when it is read (`RuleOutcome.deferred`)."""
    index, rule, fixed, _, names = step
    target = fixed if fixed is not None else _rule_target(rule, current)
    try:
        fired = facts[rule.direct] is True if rule.direct else cel_run.run(index, rule, names)
    except Exception as error:  # a type clash at run time must not stop the cycle: report it instead
        return RuleOutcome(rule.name, rule.description, False, f"error: {error}", target, rule.management)
    return RuleOutcome.deferred(
        rule.name, rule.description, fired, target, rule.management, _lazy_reason, policy, rule, facts, target, fired
    )


def _lazy_reason(policy: Policy, rule: Rule, facts: dict[str, Any], target: Tier | None, fired: bool) -> str:
    return _reason(policy, rule, _shown(_prepare(policy), facts), target, fired)


def _reason(policy: Policy, rule: Rule, shown: dict[str, Any], target: Tier | None, fired: bool) -> str:
    """The text of a rule's outcome: its reason template (or the facts it read) when fired, else what it read."""
    if fired:
        return _render_reason(rule, shown, policy, target) if rule.reason else _fact_list(rule, shown)
    return "not met: " + _fact_list(rule, shown)


def _shown(prepared: _Prepared, facts: dict[str, Any]) -> dict[str, Any]:
    """The facts as reasons show them (see `shown_value`)."""
    if not prepared.quantized:
        return facts
    shown = dict(facts)
    for path in prepared.quantized:
        shown[path] = shown_value(path, shown[path])
    return shown


def run_rules(policy: Policy, facts: dict[str, Any], current: Tier) -> tuple[RuleOutcome, ...]:
    """Evaluate every rule's compiled condition against this ticket's facts.

    The exact rules' outcomes are memoized as a group, by the tier and the values they show (see `_prepare`):
    most tickets share them (flags false, tier L1...), which saves running their conditions, formatting their
    reasons and building their outcomes. The other rules run their condition and defer their reason text.
    `facts` must not change afterwards: a deferred reason reads it.
    """
    prepared = _prepare(policy)
    cel_run = _Activation(facts, prepared, policy.outcome_cache)
    # The tier's text, not the enum member: a key of plain values is left alone by the garbage collector.
    group_key = ("exact", current._value_, prepared.exact_values(facts))
    cache = policy.outcome_cache
    group = cache.get(group_key)
    if group is None:
        found = [_outcome(policy, step, current, facts, prepared, cel_run) for step in prepared.steps if step[3]]
        group = tuple(outcome for outcome, _ in found)
        if all(cacheable for _, cacheable in found):
            _memo(cache, group_key, group)
    if not prepared.timed:
        return group
    batched = cel_run.batch()
    timed: list[RuleOutcome] = []
    for step in prepared.timed:
        index, rule, fixed, _, _ = step
        slot = prepared.batch_slots.get(index)
        if slot is None or not batched:  # direct, not batched, or the batch failed: `_timed_outcome` tells
            timed.append(_timed_outcome(policy, step, current, facts, cel_run))
            continue
        target = fixed if fixed is not None else _rule_target(rule, current)
        fired = batched[slot] is True
        timed.append(
            RuleOutcome.deferred(
                rule.name,
                rule.description,
                fired,
                target,
                rule.management,
                _lazy_reason,
                policy,
                rule,
                facts,
                target,
                fired,
            )
        )
    return prepared.reorder(group + tuple(timed))


def _target_tier(outcomes: tuple[RuleOutcome, ...], current: Tier, lowering: frozenset[str] = frozenset()) -> Tier:
    """The highest tier any fired rule asks for, never below `current` unless a rule of `lowering` fired.

    `lowering` names the rules marked `deescalate = true` when the policy allows de-escalation: only they lower
    a tier. An escalation rule that fires at a higher tier, such as customer-requested -> L2 on an L3 ticket,
    must not pull the ticket down, or L2 <-> L3 would alternate every cycle. A lowering stops at the highest
    tier the fired escalation rules ask for, so the next evaluation at the lowered tier gives the same answer.
    One pass over the outcomes, by rank (it runs once or twice per ticket).
    """
    rank = RANK[current]
    raising = 0  # the highest rank a fired escalation rule asks for (0: none)
    down = 0  # the highest rank a fired lowering rule asks for (0: none)
    for outcome in outcomes:
        if outcome.fired:  # first: few fire, so most outcomes cost one read
            target = outcome.target_tier
            if target is None:
                continue
            if lowering and outcome.name in lowering:
                down = max(down, RANK[target])
            elif RANK[target] > raising:
                raising = RANK[target]
    if raising > rank or not down:
        return _TIERS_BY_RANK[max(raising, rank)]
    return _TIERS_BY_RANK[min(max(down, raising), rank)]


def _lowering(policy: Policy) -> frozenset[str]:
    """The rules allowed to lower a tier (see `_target_tier`), kept in the policy's memo."""
    names = policy.outcome_cache.get("lowering")
    if names is None:
        allowed = policy.allow_deescalation
        names = policy.outcome_cache["lowering"] = frozenset(r.name for r in policy.rules if r.deescalate and allowed)
    return names


def _merge_chain(first: tuple[RuleOutcome, ...], then: tuple[RuleOutcome, ...], level: Tier) -> tuple[RuleOutcome, ...]:
    """Outcomes of a chained pass: rules that fire only at the new tier are marked as such."""
    merged = []
    for before, after in zip(first, then, strict=True):
        if after.fired and not before.fired:
            # Its reason is rendered when read, as the pass's own outcome's is (`RuleOutcome.deferred`).
            before = RuleOutcome.deferred(
                after.name, after.description, True, after.target_tier, after.management, _once_at, level, after
            )
        merged.append(before)
    return tuple(merged)


def _once_at(level: Tier, outcome: RuleOutcome) -> str:
    return f"once at {level}: {outcome.reason}"


# -- the engine -------------------------------------------------------------------------------------------------


def _escalation_key(target: Tier, history: EscalationHistory, moved_at: datetime | None) -> str:
    """The handoff's key suffix: the tier (as before) unless a person moved the ticket down; then the tier and
    the number of this entry (`L2:2`): 1 + our entries into the tier recorded before the person's move.

    Why counted before the move: the key must come out the same for every read of the same situation (a
    replay, the book's copy before our write's echo, a history that caught up), and those reads all see the
    same move, while our entries after it are the re-escalation itself. Its ledger intent is then found done.
    """
    if moved_at is None:
        return target.value
    entries = sum(1 for tier, at in history.tier_entries if tier == target and at < moved_at)
    return target.value if entries == 0 else f"{target.value}:{entries + 1}"


def _hold_off(
    ticket: Ticket,
    policy: Policy,
    history: EscalationHistory,
    outcomes: tuple[RuleOutcome, ...],
    current: Tier,
    moved_at: datetime,
    pauses: tuple[Pause, ...],
) -> tuple[RuleOutcome, ...]:
    """A person moved the ticket down at `moved_at`: the escalation rules that already fired then are held off.

    The person saw what those rules see and decided; moving the ticket straight back would fight them. Such a
    rule raises the tier again only through a *new* trigger (a rule that did not fire at the move: a clock
    breaching later, a flag raised later that another rule reads) or the tier's own time limit, whose hours
    count from the move (`tier_started_at`). Flags are only known as they are now: a flag set now is taken as
    known at the move. A held rule that also starts the management track still does that.
    """
    started = history.management_started_at
    then = measure_clocks(ticket, policy, moved_at, pauses) + tier_clocks(ticket, policy, moved_at, current, moved_at)
    if started is not None and started <= moved_at:
        then += management_clocks(ticket, policy, moved_at, started)
    facts = compute_facts(ticket, moved_at, then, 0.0, history, policy.fact_paths)
    firing = {
        outcome.name
        for outcome in run_rules(policy, facts, current)
        if outcome.fired and outcome.target_tier is not None and RANK[outcome.target_tier] > RANK[current]
    }
    if not firing:
        return outcomes
    held: list[RuleOutcome] = []
    for outcome in outcomes:
        target = outcome.target_tier
        if outcome.fired and outcome.name in firing and target is not None and RANK[target] > RANK[current]:
            reason = (
                f"held off: already firing when a person moved the ticket to {current} at "
                f"{moved_at:%Y-%m-%d %H:%M} UTC; waits for a new trigger or {current}'s own time limit "
                f"({outcome.reason})"
            )
            outcome = replace(
                outcome, fired=outcome.management, reason=reason, target_tier=None if outcome.management else target
            )
        held.append(outcome)
    return tuple(held)


def evaluate(ticket: Ticket, policy: Policy, now: datetime, history: EscalationHistory = _NO_HISTORY) -> Decision:
    """The desired escalation state of `ticket` as of `now`. Pure and deterministic."""
    now = _utc(now)
    current = ticket.effective_tier
    terminal = ticket.status.is_terminal
    pauses = pauses_of(ticket)
    moved_at = human_move_at(ticket, history)
    tier_start = tier_started_at(ticket, history, moved_at)
    # The running track, if any: one that ended by policy is over (a trigger firing again starts the next).
    ended = history.management_ended_at is not None
    started = history.management_started_at if not ended else None
    plan_at = history.resolution_plan_at
    # Before the first management evaluation we do not know the start yet: rules decide below, and a newly
    # started track runs from `now` (the store records it with the MGMT comment).
    sla_clocks = measure_clocks(ticket, policy, now, pauses)
    mgmt_clocks = management_clocks(ticket, policy, now, started, plan_at) if started is not None else []
    current_tier_clocks = tier_clocks(ticket, policy, now, current, tier_start)
    clocks = sla_clocks + current_tier_clocks + mgmt_clocks
    kept = past_tier_breaches(ticket, policy, history, tier_start)

    if terminal:
        key = ("finished", ticket.status, current)
        outcomes = policy.outcome_cache.get(key)
        if outcomes is None:
            reason = f"not evaluated: ticket is {ticket.status.value}"
            outcomes = policy.outcome_cache[key] = tuple(
                RuleOutcome(rule.name, rule.description, False, reason, _rule_target(rule, current), rule.management)
                for rule in policy.rules
            )
        signals = signals_for(clocks, started is not None, kept)
        # Positional: Decision's fields in order (a keyword call costs more; tests/test_model_init.py).
        return Decision(
            ticket.platform,
            ticket.instance,
            ticket.id,
            now,
            current,
            current,
            started is not None,
            tuple(clocks),
            outcomes,
            signals,
        )

    calendar = policy.sla[ticket.priority].calendar
    hours = active_business_time(tier_start, now, pauses, calendar).total_seconds() / 3600.0
    facts = compute_facts(ticket, now, clocks, hours, history, policy.fact_paths)
    outcomes = run_rules(policy, facts, current)
    if moved_at is not None and moved_at <= now:
        outcomes = _hold_off(ticket, policy, history, outcomes, current, moved_at, pauses)

    target = _target_tier(outcomes, current, _lowering(policy))
    # Follow chains (L1 overdue -> L2, and "engineering required at L2" -> L3) to the fixpoint now, as if the
    # ticket already sat at the new tier since `now`: one write and one handoff instead of one per cycle.
    level = current
    path = [current]
    moved_tier_clocks: list[Clock] = []  # the last chained pass's tier clocks: `level`'s, started `now`
    for _ in _CHAIN_STEPS:
        if RANK[target] <= RANK[level]:
            break
        level = target
        path.append(level)
        moved_tier_clocks = tier_clocks(ticket, policy, now, level, now)
        moved_clocks = sla_clocks + moved_tier_clocks + mgmt_clocks
        facts = _moved_facts(facts, ticket, now, moved_clocks, history, policy.fact_paths, level)
        outcomes = _merge_chain(outcomes, run_rules(policy, facts, level), level)
        target = _target_tier(outcomes, level)
    triggered = any([outcomes[index].fired for index in _prepare(policy).management])
    end_at = management_ends_at(policy, history)
    if started is not None and end_at is not None and now >= end_at and not triggered:
        # The plan was delivered and nothing calls for management any more: the track ends (tag removed, its
        # clocks no longer shown; the cycle records the end so that it does not restart by itself).
        started, end_at = None, None
        clocks = [clock for clock in clocks if not clock.name.startswith("mgmt_")]
        mgmt_clocks = []
    management = started is not None or triggered
    management_new = management and started is None
    if target != current or management_new:
        # The decision is the desired state *after* its write: the new tier's clocks start now, so the old
        # tier's acknowledgment does not tag the ticket only to be untagged by the next poll (the echo).
        if target != current:
            # The chain ends where a pass raises no further: its last pass measured the target's clocks.
            if level != target:
                moved_tier_clocks = tier_clocks(ticket, policy, now, target, now)
            clocks = sla_clocks + moved_tier_clocks + mgmt_clocks
            # The stay at the current tier ends now: its breaches stay on record under its own tier's name
            # (where the platform's history will show that stay to every later read: see past_tier_breaches).
            if ticket.tier_changes is not None:
                left = {(current.value, c.name) for c in current_tier_clocks if c.breached_at is not None}
                kept = kept | left
        if management_new:
            clocks += management_clocks(ticket, policy, now, now)

    # When to look again, from the state after this decision's write: a new tier's hours start at zero.
    review_at, review_exact = next_review(
        ticket, policy, now, clocks, 0.0 if target != current else hours, is_paused_at(pauses, now)
    )
    if end_at is not None and end_at > now and (review_at is None or end_at < review_at):
        review_at = end_at  # the track's end is time passing too: the untouched ticket must drop it on time
    comment = None
    final = tuple(clocks)
    if RANK[target] > RANK[current] or management_new:
        track = history.management_track + 1 if management_new else history.management_track
        if target != current:
            key_suffix = _escalation_key(target, history, moved_at)
        else:
            key_suffix = management_label(MANAGEMENT_START, track)
        key = f"{ticket.instance}:{ticket.id}:{key_suffix}"
        repeats = history.customer_escalations_30d if history is not _NO_HISTORY else None
        # The note's context is built when the note is read (the write), as its text is: most decided handoffs
        # of a backlog are only planned in a sweep, and the context was a share of escalating a ticket.
        note = (ticket, policy, now, current, target, management, started or now, final, outcomes, key)
        comment = Comment.deferred(key, partial(_handoff_body, *note, tier_start, tuple(path), repeats))
    signals = signals_for(final, management, kept)
    return Decision(
        ticket.platform,
        ticket.instance,
        ticket.id,
        now,
        current,
        target,
        management,
        final,
        outcomes,
        signals,
        comment,
        review_at,
        review_exact,
    )


def _handoff_body(
    ticket: Ticket,
    policy: Policy,
    now: datetime,
    current: Tier,
    target: Tier,
    management: bool,
    management_start: datetime,
    clocks: tuple[Clock, ...],
    outcomes: tuple[RuleOutcome, ...],
    key: str,
    tier_start: datetime,
    path: tuple[Tier, ...],
    repeats: int | None,
) -> str:
    """The handoff note of a decision (see `evaluate`), rendered from its parts when it is first read."""
    fired = tuple(outcome for outcome in outcomes if outcome.fired)
    context = HandoffContext(
        ticket,
        policy,
        now,
        current,
        target,
        management,
        management_start,
        clocks,
        fired,
        key,
        tier_start,
        path,
        repeats,
    )
    return render_handoff(context).body

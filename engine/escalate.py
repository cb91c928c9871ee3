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
a handoff between our own teams does not wait on the customer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from engine.calendar import BusinessCalendar, format_duration
from engine.handoff import HandoffContext, render_handoff
from engine.model import (
    Clock,
    ClockState,
    Decision,
    EscalationHistory,
    RuleOutcome,
    TagSignal,
    Ticket,
    Tier,
)
from engine.policy import CLOCK_FIELDS, CLOCK_NAMES, FACTS, Policy, Rule, flat_name
from engine.review import next_review
from engine.sla import Pause, active_business_time, compute_clock, is_paused_at, pauses_of

_NO_HISTORY = EscalationHistory()
_CADENCE_CLOCKS = frozenset({"customer_update", "mgmt_update"})
_TIERS_BY_RANK = {tier.rank: tier for tier in Tier}
RANK = {tier: tier.rank for tier in Tier}
"""Tier.rank as a dict: the property parses the enum value on every call, too slow for the hot path."""
_MINUTE = 60.0


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def tier_started_at(ticket: Ticket, history: EscalationHistory) -> datetime:
    """When the ticket entered its current tier: the later of the platform's record and ours, else creation.

    The platform's tier change history (`Ticket.tier_changes`) is exact and holds entries only, so a
    reassignment inside the tier keeps the entry time; without it the mapping's estimate (`tier_entered_at`)
    stands in. Our own record (the state store's tier entries) is exact for the moves we made; the later of the
    two also follows a person who moved the ticket again after us.
    """
    tier = ticket.effective_tier
    known = [at for entered, at in history.tier_entries if entered == tier]
    platform = _platform_tier_entry(ticket, tier)
    if platform is not None:
        known.append(platform)
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


def _unknown(name: str, target: timedelta, calendar: BusinessCalendar) -> Clock:
    """A clock whose stopping fact cannot be read here: shown in explain, never tagged, never breached."""
    return Clock(
        name=name,
        target=target,
        elapsed=timedelta(0),
        remaining=target,
        due_at=None,
        state=ClockState.UNKNOWN,
        calendar=calendar.name,
    )


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
) -> Clock:
    return compute_clock(
        name,
        start=start,
        stop=stop if stop is not None else closed,
        target=target,
        calendar=calendar,
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
    """The SLA clocks the ticket has as of `now` (see the module docstring); zero targets are skipped."""
    sla = policy.sla[ticket.priority]
    closed = _closed_at(ticket)
    cal = sla.calendar
    clocks: list[Clock] = []
    if sla.first_response:
        if ticket.public_replies is not None:
            reply: datetime | None = min(ticket.public_replies) if ticket.public_replies else None
        else:
            reply = ticket.first_public_reply_at
        if reply is not None or ticket.public_replies is not None or "public_replies" not in ticket.missing_facts:
            start = ticket.created_at
            clocks.append(_clock(policy, now, closed, "first_response", start, reply, sla.first_response, cal, pauses))
        else:
            clocks.append(_unknown("first_response", sla.first_response, cal))
    if sla.resolution:
        clocks.append(_clock(policy, now, closed, "resolution", ticket.created_at, closed, sla.resolution, cal, pauses))
    if closed is None and sla.customer_update:
        last, known = _last_reply(ticket)
        if known:
            since = last or ticket.created_at
            clocks.append(_clock(policy, now, closed, "customer_update", since, None, sla.customer_update, cal, pauses))
        else:
            clocks.append(_unknown("customer_update", sla.customer_update, cal))
    return clocks


def tier_clocks(ticket: Ticket, policy: Policy, now: datetime, tier: Tier, tier_start: datetime) -> list[Clock]:
    """Acknowledgment and initial assessment by `tier`, entered at `tier_start` (not paused: internal).

    Each stops at the FIRST qualifying event after the entry: acting or replying again later cannot make an
    acknowledgment that was on time a late one.
    """
    targets = policy.tiers[tier]
    cal = policy.sla[ticket.priority].calendar
    closed = _closed_at(ticket)
    clocks: list[Clock] = []
    if targets.acknowledgment:
        acted, known = _first_action_after(ticket, tier_start)
        if known:
            target = targets.acknowledgment
            clocks.append(_clock(policy, now, closed, "acknowledgment", tier_start, acted, target, cal, ()))
        else:
            clocks.append(_unknown("acknowledgment", targets.acknowledgment, cal))
    if targets.assessment:
        replied, known = _first_reply_after(ticket, tier_start)
        if known:
            clocks.append(_clock(policy, now, closed, "assessment", tier_start, replied, targets.assessment, cal, ()))
        else:
            clocks.append(_unknown("assessment", targets.assessment, cal))
    return clocks


def management_clocks(ticket: Ticket, policy: Policy, now: datetime, start: datetime) -> list[Clock]:
    """The management track's clocks, running from the track's start (never paused: internal deadlines).

    Acknowledgment and customer contact stop at the first agent action / public reply after the start; the
    update cadence counts from the last public reply.
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
    if mgmt.customer_contact:
        target = mgmt.customer_contact
        if contact_known:
            clocks.append(_clock(policy, now, closed, "mgmt_customer_contact", start, contacted, target, cal, ()))
        else:
            clocks.append(_unknown("mgmt_customer_contact", target, cal))
    if contacted is not None and closed is None and mgmt.update_interval:
        last, _ = _last_reply(ticket)
        since = max(last or contacted, contacted)
        clocks.append(_clock(policy, now, closed, "mgmt_update", since, None, mgmt.update_interval, cal, ()))
    return clocks


def signals_for(clocks: Sequence[Clock], management: bool) -> frozenset[TagSignal]:
    """Tags the ticket should carry: breached (also met-late, as history), at risk, update due, management.

    The few distinct answers are shared: keyed by the (kind, clock) names they hold, a flat tuple of strings.
    """
    parts: list[str] = []
    for clock in clocks:
        if clock.name in _CADENCE_CLOCKS:
            if clock.state in (ClockState.AT_RISK, ClockState.BREACHED):
                parts += ("update_due", "")
            continue
        if clock.breached_at is not None:
            parts += ("breached", clock.name)
        elif clock.state is ClockState.AT_RISK:
            parts += ("at_risk", clock.name)
    if management:
        parts += ("management", "")
    key = tuple(parts)
    signals = _SIGNAL_SETS.get(key)
    if signals is None:
        signals = frozenset(TagSignal(kind, clock) for kind, clock in zip(parts[::2], parts[1::2], strict=True))
        if len(_SIGNAL_SETS) >= 4096:
            _SIGNAL_SETS.clear()
        _SIGNAL_SETS[key] = signals
    return signals


_SIGNAL_SETS: dict[tuple[str, ...], frozenset[TagSignal]] = {}


# -- facts ------------------------------------------------------------------------------------------------------


class _Env:
    """Everything a fact getter may need, computed once per evaluation."""

    __slots__ = ("clocks", "history", "hours_at_tier", "now", "ticket")

    def __init__(
        self, ticket: Ticket, now: datetime, clocks: dict[str, Clock], hours: float, history: EscalationHistory
    ) -> None:
        self.ticket = ticket
        self.now = now
        self.clocks = clocks
        self.hours_at_tier = hours
        self.history = history


Getter = Callable[[_Env], Any]


def _clock_getter(name: str, field: str) -> Getter:
    def state(env: _Env) -> Any:
        clock = env.clocks.get(name)
        return clock.state.value if clock is not None else "none"

    def minutes(env: _Env) -> Any:
        clock = env.clocks.get(name)
        if clock is None:
            return 0.0
        value = {"elapsed_minutes": clock.elapsed, "remaining_minutes": clock.remaining}.get(field, clock.target)
        return value.total_seconds() / _MINUTE

    def active(env: _Env) -> Any:
        return name in env.clocks

    return {"state": state, "active": active}.get(field, minutes)


def _flag_getter(name: str, kind: type) -> Getter:
    # Coerced to the vocabulary's type: a mapping may hand over 50000 for a float field.
    return lambda env: kind(getattr(env.ticket.flags, name))


def _any_clock(states: tuple[ClockState, ...]) -> Getter:
    return lambda env: any(clock.state in states for name, clock in env.clocks.items() if name not in _CADENCE_CLOCKS)


GETTERS: dict[str, Getter] = {
    "ticket.priority": lambda env: env.ticket.priority.value,
    "ticket.priority_rank": lambda env: int(env.ticket.priority.value[1]),
    "ticket.status": lambda env: env.ticket.status.value,
    "ticket.tier": lambda env: env.ticket.effective_tier.value,
    "ticket.tier_rank": lambda env: RANK[env.ticket.effective_tier],
    "ticket.is_open": lambda env: not env.ticket.status.is_terminal,
    "ticket.segment": lambda env: env.ticket.segment or "",
    "ticket.organization": lambda env: env.ticket.organization or "",
    "ticket.assignee_group": lambda env: env.ticket.assignee_group or "",
    "ticket.platform": lambda env: env.ticket.platform,
    "ticket.tags": lambda env: sorted(env.ticket.tags),
    "ticket.age_hours": lambda env: max((env.now - env.ticket.created_at).total_seconds(), 0.0) / 3600.0,
    "ticket.has_public_reply": lambda env: env.ticket.first_public_reply_at is not None,
    "hours_at_tier": lambda env: env.hours_at_tier,
    "any_clock_breached": _any_clock((ClockState.BREACHED,)),
    "any_clock_at_risk": _any_clock((ClockState.AT_RISK,)),
    "history.customer_escalations_30d": lambda env: env.history.customer_escalations_30d,
    "history.tier_entries": lambda env: len(env.history.tier_entries),
    "history.management_active": lambda env: env.history.management_started_at is not None,
    "platform_slas.any_breached": lambda env: any(sla.breached for sla in env.ticket.platform_slas),
    "platform_slas.breached": lambda env: sorted(sla.name for sla in env.ticket.platform_slas if sla.breached),
}
for _flag in (
    "churn_threat",
    "public_complaint",
    "security_legal",
    "engineering_required",
    "vendor_dependency",
    "customer_requested",
    "revenue_at_risk",
    "affected_customers",
    "linked_incidents",
    "reopen_count",
):
    GETTERS[f"flags.{_flag}"] = _flag_getter(_flag, type(FACTS[f"flags.{_flag}"]))
for _name in CLOCK_NAMES:
    for _field in CLOCK_FIELDS:
        GETTERS[f"clocks.{_name}.{_field}"] = _clock_getter(_name, _field)


def compute_facts(
    ticket: Ticket,
    now: datetime,
    clocks: Sequence[Clock],
    hours_at_tier: float,
    history: EscalationHistory,
    paths: tuple[str, ...],
) -> dict[str, Any]:
    """The values of the named fact paths (dotted names as rules write them)."""
    env = _Env(ticket, now, {clock.name: clock for clock in clocks}, hours_at_tier, history)
    return {path: GETTERS[path](env) for path in paths}


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
_VOLATILE_LIMIT = 4096
_MISSING = object()
_local = threading.local()


def _context() -> tuple[cel.Context, dict[str, Any]]:
    """This thread's CEL activation and the mirror of what it holds (see `_activate`)."""
    context = getattr(_local, "context", None)
    if context is None:
        context = _local.context = cel.Context()
        _local.values = {}
    return context, _local.values


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
        prepared = policy.outcome_cache["prepared"] = _Prepared(steps, quantized, tuple(exact_facts))
    return prepared


class _Activation:
    """This ticket's CEL activation, fetched and brought up to date only when a condition has to run."""

    __slots__ = ("context", "facts", "values")

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.context: cel.Context | None = None
        self.values: dict[str, Any] = {}

    def run(self, rule: Rule, names: _Names) -> bool:
        if self.context is None:
            self.context, self.values = _context()
        _activate(self.context, self.values, names, self.facts)
        return rule.program.execute(self.context) is True


def _outcome(
    policy: Policy, step: _Step, current: Tier, facts: dict[str, Any], shown: dict[str, Any], cel_run: _Activation
) -> tuple[RuleOutcome, bool]:
    """One rule's outcome, and whether it may be cached (a run-time error is reported afresh every time)."""
    cache = policy.outcome_cache
    index, rule, fixed, exact, names = step
    target = fixed if fixed is not None else _rule_target(rule, current)
    picked = rule.shown(shown)
    if exact:
        outcome = cache.get((index, target, picked))
        if outcome is not None:
            return outcome, True
    try:
        fired = facts[rule.direct] is True if rule.direct else cel_run.run(rule, names)
    except Exception as error:  # a type clash at run time must not stop the cycle: report it instead
        return RuleOutcome(rule.name, rule.description, False, f"error: {error}", target, rule.management), False
    if exact:
        key: tuple[Any, ...] = (index, target, picked)
    else:
        # Keys with hours or minutes in them rarely repeat for long: a small memo of their own, so they neither
        # crowd out the shared outcomes nor grow the heap the garbage collector walks.
        key = (index, fired, target, picked)
        cache = cache.get("volatile") or cache.setdefault("volatile", {})
    outcome = cache.get(key)
    if outcome is None:
        if fired:
            reason = _render_reason(rule, shown, policy, target) if rule.reason else _fact_list(rule, shown)
        else:
            reason = "not met: " + _fact_list(rule, shown)
        outcome = RuleOutcome(rule.name, rule.description, fired, reason, target, rule.management)
        if len(cache) >= (_CACHE_LIMIT if exact else _VOLATILE_LIMIT):
            cache.clear()
        cache[key] = outcome
    return outcome, True


def run_rules(policy: Policy, facts: dict[str, Any], current: Tier) -> tuple[RuleOutcome, ...]:
    """Evaluate every rule's compiled condition against this ticket's facts.

    Outcomes are memoized by (rule, target, shown facts[, fired]): most tickets share them (flags false, tier
    L1...), which saves running the condition (exact rules, see `_prepare`), formatting a reason and building
    an outcome per rule per ticket.
    """
    cache = policy.outcome_cache
    prepared = _prepare(policy)
    shown = facts
    if prepared.quantized:
        shown = dict(facts)
        for path in prepared.quantized:
            shown[path] = shown_value(path, shown[path])
    cel_run = _Activation(facts)
    # The tier's text, not the enum member: a key of plain values is left alone by the garbage collector.
    group_key = ("exact", current.value, tuple([facts[path] for path in prepared.exact_facts]))
    group = cache.get(group_key)
    if group is None:
        found = [_outcome(policy, step, current, facts, shown, cel_run) for step in prepared.steps if step[3]]
        group = tuple(outcome for outcome, _ in found)
        if all(cacheable for _, cacheable in found):
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[group_key] = group
    exact = iter(group)
    outcomes = [
        next(exact) if step[3] else _outcome(policy, step, current, facts, shown, cel_run)[0] for step in prepared.steps
    ]
    return tuple(outcomes)


def _target_tier(outcomes: tuple[RuleOutcome, ...], current: Tier, deescalate: bool) -> Tier:
    fired = [outcome.target_tier for outcome in outcomes if outcome.fired and outcome.target_tier]
    if deescalate and fired:
        return max(fired, key=RANK.__getitem__)
    return max([current, *fired], key=RANK.__getitem__)


def _merge_chain(first: tuple[RuleOutcome, ...], then: tuple[RuleOutcome, ...], level: Tier) -> tuple[RuleOutcome, ...]:
    """Outcomes of a chained pass: rules that fire only at the new tier are marked as such."""
    merged = []
    for before, after in zip(first, then, strict=True):
        if after.fired and not before.fired:
            before = replace(after, reason=f"once at {level}: {after.reason}")
        merged.append(before)
    return tuple(merged)


# -- the engine -------------------------------------------------------------------------------------------------


def evaluate(ticket: Ticket, policy: Policy, now: datetime, history: EscalationHistory = _NO_HISTORY) -> Decision:
    """The desired escalation state of `ticket` as of `now`. Pure and deterministic."""
    now = _utc(now)
    current = ticket.effective_tier
    terminal = ticket.status.is_terminal
    pauses = pauses_of(ticket)
    tier_start = tier_started_at(ticket, history)
    started = history.management_started_at
    # Before the first management evaluation we do not know the start yet: rules decide below, and a newly
    # started track runs from `now` (the store records it with the MGMT comment).
    sla_clocks = measure_clocks(ticket, policy, now, pauses)
    mgmt_clocks = management_clocks(ticket, policy, now, started) if started is not None else []
    clocks = sla_clocks + tier_clocks(ticket, policy, now, current, tier_start) + mgmt_clocks

    if terminal:
        key = ("finished", ticket.status, current)
        outcomes = policy.outcome_cache.get(key)
        if outcomes is None:
            reason = f"not evaluated: ticket is {ticket.status.value}"
            outcomes = policy.outcome_cache[key] = tuple(
                RuleOutcome(rule.name, rule.description, False, reason, _rule_target(rule, current), rule.management)
                for rule in policy.rules
            )
        return Decision(
            platform=ticket.platform,
            instance=ticket.instance,
            ticket_id=ticket.id,
            evaluated_at=now,
            current_tier=current,
            target_tier=current,
            management=started is not None,
            clocks=tuple(clocks),
            rules=outcomes,
            signals=signals_for(clocks, started is not None),
        )

    calendar = policy.sla[ticket.priority].calendar
    hours = active_business_time(tier_start, now, pauses, calendar).total_seconds() / 3600.0
    facts = compute_facts(ticket, now, clocks, hours, history, policy.fact_paths)
    outcomes = run_rules(policy, facts, current)

    target = _target_tier(outcomes, current, policy.allow_deescalation)
    # Follow chains (L1 overdue -> L2, and "engineering required at L2" -> L3) to the fixpoint now, as if the
    # ticket already sat at the new tier since `now`: one write and one handoff instead of one per cycle.
    level = current
    for _ in range(len(Tier)):
        if RANK[target] <= RANK[level]:
            break
        level = target
        moved = replace(ticket, tier=level, tier_entered_at=now)
        moved_clocks = sla_clocks + tier_clocks(ticket, policy, now, level, now) + mgmt_clocks
        facts = compute_facts(moved, now, moved_clocks, 0.0, history, policy.fact_paths)
        outcomes = _merge_chain(outcomes, run_rules(policy, facts, level), level)
        target = _target_tier(outcomes, level, False)
    management = started is not None or any(o.fired and o.management for o in outcomes)
    management_new = management and started is None
    if target != current or management_new:
        # The decision is the desired state *after* its write: the new tier's clocks start now, so the old
        # tier's acknowledgment does not tag the ticket only to be untagged by the next poll (the echo).
        if target != current:
            clocks = sla_clocks + tier_clocks(ticket, policy, now, target, now) + mgmt_clocks
        if management_new:
            clocks += management_clocks(ticket, policy, now, now)

    # When to look again, from the state after this decision's write: a new tier's hours start at zero.
    review_at, review_exact = next_review(
        ticket, policy, now, clocks, 0.0 if target != current else hours, is_paused_at(pauses, now)
    )
    comment = None
    if RANK[target] > RANK[current] or management_new:
        key_suffix = target.value if target != current else "MGMT"
        comment = render_handoff(
            HandoffContext(
                ticket=ticket,
                policy=policy,
                now=now,
                current=current,
                target=target,
                management=management,
                management_start=started or now,
                clocks=tuple(clocks),
                fired=tuple(outcome for outcome in outcomes if outcome.fired),
                key=f"{ticket.instance}:{ticket.id}:{key_suffix}",
            )
        )
    return Decision(
        platform=ticket.platform,
        instance=ticket.instance,
        ticket_id=ticket.id,
        evaluated_at=now,
        current_tier=current,
        target_tier=target,
        management=management,
        clocks=tuple(clocks),
        rules=outcomes,
        signals=signals_for(clocks, management),
        comment=comment,
        review_at=review_at,
        review_exact=review_exact,
    )

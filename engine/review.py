"""When to look at a ticket again: the earliest moment its escalation answer could change with no new input.

Platforms report changes; clocks run without them (DESIGN.md, principle 8). The daemon keeps every open ticket
in its book and re-evaluates it at `Decision.review_at`, computed here from the same inputs as the decision,
so the answer stays pure: nothing reads the wall clock.

What can change while nobody touches a ticket is time itself, through these facts:
- a clock's state: ok -> at_risk at `at_risk_fraction` of its target, -> breached at its target (business
  time on the clock's calendar; a paused clock waits for a status change, which is new input);
- `hours_at_tier` (business hours at the tier, on the priority's calendar, outside pauses) and
  `ticket.age_hours` (wall hours) crossing a number a rule compares them with;
- `clocks.<c>.elapsed_minutes` / `.remaining_minutes` crossing a number a rule compares them with.
The numbers come from the rules' conditions after thresholds are inlined: every literal that a time fact is
compared with directly (`hours_at_tier >= 2.0`, `4.0 < ticket.age_hours`). A condition that uses a time fact in
any other way (arithmetic, a function call) cannot be solved here: the decision then says so
(`review_exact = False`) and the caller bounds the wait with its configured fallback interval.

Candidates are rounded up to the next whole second, and a threshold met exactly now is looked at one second
later: a strict comparison (`>`) is true only after the instant, and a review that comes a little early only
costs one evaluation, which then computes the next moment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.calendar import BusinessCalendar
from engine.model import Clock, ClockState, Ticket
from engine.policy import _STRING, CLOCK_NAMES, Policy, flat_name, rewrite

_SECOND = timedelta(seconds=1)
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_COMPARE = r"(?:<=|>=|==|!=|<|>)"
_ENDS_OPERAND = re.compile(r"\s*(?:$|\)|&&|\|\||\?|:|,|\])")
COUNT_FACT = "history.customer_escalations_30d"
_TIME_FACTS = (
    "hours_at_tier",
    "ticket.age_hours",
    *(f"clocks.{clock}.{field}" for clock in CLOCK_NAMES for field in ("elapsed_minutes", "remaining_minutes")),
)


@dataclass(frozen=True)
class TimeWatch:
    """What the policy's rules compare time facts with, derived once per policy."""

    thresholds: dict[str, tuple[float, ...]]
    """Time fact path -> the numbers conditions compare it with directly."""
    opaque_rules: tuple[str, ...]
    """Rules that use a time fact in a way these thresholds do not capture."""
    customer_counts: tuple[float, ...] | None = ()
    """The numbers rules compare `history.customer_escalations_30d` with; None when some rule uses it in
    another way (then every change of a customer's count matters)."""

    def count_crossed(self, before: int, after: int) -> bool:
        """Whether a customer's count moving from `before` to `after` can change a rule's answer."""
        if before == after:
            return False
        if self.customer_counts is None:
            return True
        low, high = min(before, after), max(before, after)
        return any(low <= threshold <= high for threshold in self.customer_counts)


def time_watch(policy: Policy) -> TimeWatch:
    """The policy's TimeWatch, computed on first use and kept in the policy's memo."""
    watch = policy.outcome_cache.get("review_watch")
    if watch is None:
        watch = policy.outcome_cache["review_watch"] = _derive(policy)
    return watch


def _derive(policy: Policy) -> TimeWatch:
    found: dict[str, set[float]] = {}
    opaque: list[str] = []
    for rule in policy.rules:
        source = _STRING.sub("''", rewrite(rule.when, policy.thresholds).source)
        for path in _TIME_FACTS:
            if path not in rule.facts:
                continue
            numbers, uses = _comparisons(source, flat_name(path))
            if len(numbers) < uses:
                opaque.append(rule.name)
            found.setdefault(path, set()).update(numbers)
    counts: set[float] | None = set()
    for rule in policy.rules:
        if COUNT_FACT in rule.facts and counts is not None:
            source = _STRING.sub("''", rewrite(rule.when, policy.thresholds).source)
            numbers, uses = _comparisons(source, flat_name(COUNT_FACT))
            counts = counts | set(numbers) if len(numbers) == uses else None
    return TimeWatch(
        {path: tuple(sorted(values)) for path, values in found.items()},
        tuple(dict.fromkeys(opaque)),
        None if counts is None else tuple(sorted(counts)),
    )


def _comparisons(source: str, name: str) -> tuple[list[float], int]:
    """Numbers `name` is compared with directly in `source`, and how many times `name` occurs at all."""
    word = rf"(?<![\w.]){re.escape(name)}(?![\w.(])"
    uses = len(re.findall(word, source))
    numbers: list[float] = []
    for match in re.finditer(rf"{word}\s*{_COMPARE}\s*({_NUMBER})", source):
        if _ENDS_OPERAND.match(source, match.end()) and not _after_arithmetic(source, match.start()):
            numbers.append(float(match.group(1)))
    for match in re.finditer(rf"({_NUMBER})\s*{_COMPARE}\s*{word}", source):
        if _ENDS_OPERAND.match(source, match.end()) and not _after_arithmetic(source, match.start()):
            numbers.append(float(match.group(1)))
    return numbers, uses


def _after_arithmetic(source: str, start: int) -> bool:
    before = source[:start].rstrip()
    return bool(before) and before[-1] in "+-*/%"


def next_review(
    ticket: Ticket,
    policy: Policy,
    now: datetime,
    clocks: Sequence[Clock],
    hours_at_tier: float,
    paused_now: bool,
) -> tuple[datetime | None, bool]:
    """(review_at, exact): the earliest future instant at which the answer could change, None when nothing
    will change without new input; exact is False when some rule's use of time could not be solved."""
    if ticket.status.is_terminal:
        return None, True
    watch = time_watch(policy)
    candidates: list[datetime] = []
    by_name = {clock.name: clock for clock in clocks}
    for clock in clocks:
        candidates.extend(_clock_moments(clock, policy, now))
    tier_calendar = policy.sla[ticket.priority].calendar
    if not paused_now:
        for hours in watch.thresholds.get("hours_at_tier", ()):
            candidates.extend(_crossing(tier_calendar, now, hours_at_tier, hours, timedelta(hours=1)))
    for hours in watch.thresholds.get("ticket.age_hours", ()):
        at = ticket.created_at + timedelta(hours=hours)
        if at >= now:
            candidates.append(at if at > now else now + _SECOND)
    for path, values in watch.thresholds.items():
        if not path.startswith("clocks."):
            continue
        _, name, field = path.split(".")
        clock = by_name.get(name)
        if clock is None or not _running(clock):
            continue
        calendar = policy.calendars[clock.calendar]
        minute = timedelta(minutes=1)
        for value in values:
            if field == "elapsed_minutes":
                candidates.extend(_crossing(calendar, now, _minutes(clock.elapsed), value, minute))
            else:  # remaining falls as elapsed rises: it reaches `value` once elapsed reaches target - value
                candidates.extend(_crossing(calendar, now, -_minutes(clock.remaining), -value, minute))
    future = [_ceil_second(at) for at in candidates if at > now]
    return (min(future) if future else None), not watch.opaque_rules


def _running(clock: Clock) -> bool:
    return clock.state in (ClockState.OK, ClockState.AT_RISK, ClockState.BREACHED)


def _clock_moments(clock: Clock, policy: Policy, now: datetime) -> Iterable[datetime]:
    """The instants at which this clock turns at risk and breached, if it is running towards them."""
    if clock.state not in (ClockState.OK, ClockState.AT_RISK):
        return ()
    calendar = policy.calendars[clock.calendar]
    # Breached means elapsed > target: one business second past the due instant (a target met at closing
    # time is breached at the next opening, not overnight).
    moments = [calendar.add_business_time(now, clock.remaining + _SECOND)]
    if clock.state is ClockState.OK:
        to_risk = clock.target * policy.at_risk_fraction - clock.elapsed
        moments.append(calendar.add_business_time(now, to_risk) if to_risk > timedelta(0) else now + _SECOND)
    return moments


def _crossing(
    calendar: BusinessCalendar, now: datetime, value: float, threshold: float, unit: timedelta
) -> Iterable[datetime]:
    """When a quantity that grows with business time (value now, in `unit`s) reaches `threshold`."""
    if threshold < value:
        return ()
    if threshold == value:
        return (calendar.add_business_time(now, _SECOND),)
    return (calendar.add_business_time(now, unit * (threshold - value)),)


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def _ceil_second(moment: datetime) -> datetime:
    if moment.microsecond == 0:
        return moment
    return moment.replace(microsecond=0) + _SECOND

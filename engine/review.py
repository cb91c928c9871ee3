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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.calendar import BusinessCalendar
from engine.model import Clock, ClockState, Ticket
from engine.policy import _STRING, CLOCK_NAMES, Policy, flat_name, rewrite
from engine.sla import risk_mark

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
    clock_paths: tuple[tuple[str, str, str], ...] = ()
    """(path, clock, field) of the clock facts in `thresholds`, split once (read for every ticket)."""
    ages: tuple[timedelta, ...] = ()
    """The `ticket.age_hours` thresholds as durations, made once (read for every ticket)."""

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
    clock_paths = tuple((path, *_clock_field(path)) for path in found if path.startswith("clocks."))
    thresholds = {path: tuple(sorted(values)) for path, values in found.items()}
    return TimeWatch(
        thresholds,
        tuple(dict.fromkeys(opaque)),
        None if counts is None else tuple(sorted(counts)),
        clock_paths,
        tuple(timedelta(hours=hours) for hours in thresholds.get("ticket.age_hours", ())),
    )


def _clock_field(path: str) -> tuple[str, str]:
    """`clocks.<name>.<field>` -> (name, field)."""
    _, name, field = path.split(".")
    return name, field


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


_OPERAND_START = re.compile(r"(?:^|\(|&&|\|\||\?|:|,|\[)$")
"""What may come right before a directly compared operand: the start, an opening bracket, `&&`, `||`, `?`, `:`
or a comma (no arithmetic, no negation, no other comparison)."""


def direct_comparisons(source: str, name: str) -> tuple[float, ...] | None:
    """The numbers `name` is compared with in `source` (string literals blanked) if every one of its uses, at
    least one, is a plain comparison with a number literal (`name > 2.0`, `4.0 <= name`); else None.

    Then the condition's result depends on the value of `name` only through its order relative to these
    numbers (engine.escalate memoizes the time-dependent rules on that). Stricter than `_comparisons`, which
    the review moment uses: each use is checked on both sides, so `2 < name < 3` or `name > 2 == true` are
    not taken for plain comparisons.
    """
    word = rf"(?<![\w.]){re.escape(name)}(?![\w.(])"
    after = re.compile(rf"\s*{_COMPARE}\s*({_NUMBER})")
    before = re.compile(rf"({_NUMBER})\s*{_COMPARE}\s*$")
    numbers: list[float] = []
    uses = list(re.finditer(word, source))
    if not uses:
        return None
    for use in uses:
        found = after.match(source, use.end())
        if found is not None:
            if _OPERAND_START.search(source[: use.start()].rstrip()) and _ENDS_OPERAND.match(source, found.end()):
                numbers.append(float(found.group(1)))
                continue
            return None
        found = before.search(source[: use.start()])
        if found is None or not _ENDS_OPERAND.match(source, use.end()):
            return None
        if not _OPERAND_START.search(source[: found.start()].rstrip()):
            return None
        numbers.append(float(found.group(1)))
    return tuple(sorted(set(numbers)))


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
    will change without new input; exact is False when some rule's use of time could not be solved.

    Most candidates are a business time to wait from `now` on some calendar. `add_business_time(now, d)` grows
    with `d` and is after `now` for any positive `d` (a wait of zero or less is `now` itself, never a future
    instant), so only the shortest positive wait of each calendar is turned into an instant: one calendar walk
    per calendar instead of one per candidate.
    """
    if ticket.status.is_terminal:
        return None, True
    watch = time_watch(policy)
    waits: dict[BusinessCalendar, timedelta] = {}
    """Calendar -> the shortest positive business time until some candidate moment."""
    candidates: list[datetime] = []
    """Candidate instants that are not a business wait (wall hours of age, "one second from now")."""
    calendars = policy.calendars
    fraction = policy.at_risk_fraction
    for clock in clocks:
        state = clock.state
        if state is not _OK and state is not _AT_RISK:
            continue
        calendar = calendars[clock.calendar]
        # Breached means elapsed > target: one business second past the due instant (a target met at closing
        # time is breached at the next opening, not overnight). `_wait` inlined: this runs for most clocks.
        wait = clock.remaining + _SECOND
        if wait > _ZERO:
            known = waits.get(calendar)
            if known is None or wait < known:
                waits[calendar] = wait
        if state is _OK:
            to_risk = risk_mark(clock.target, fraction) - clock.elapsed
            if to_risk > _ZERO:
                _wait(waits, calendar, to_risk)
            else:
                candidates.append(now + _SECOND)
    thresholds = watch.thresholds
    if not paused_now:
        tier_calendar = policy.sla[ticket.priority].calendar
        for hours in thresholds.get("hours_at_tier", ()):
            _crossing(waits, tier_calendar, hours_at_tier, hours, _HOUR)
    for age in watch.ages:
        at = ticket.created_at + age
        if at >= now:
            candidates.append(at if at > now else now + _SECOND)
    if watch.clock_paths:
        by_name = {clock.name: clock for clock in clocks}
        for path, name, field in watch.clock_paths:
            clock = by_name.get(name)
            if clock is None or not _running(clock):
                continue
            calendar = calendars[clock.calendar]
            for value in thresholds[path]:
                if field == "elapsed_minutes":
                    _crossing(waits, calendar, _minutes(clock.elapsed), value, _MINUTE)
                else:  # remaining falls as elapsed rises: it reaches `value` once elapsed reaches target - value
                    _crossing(waits, calendar, -_minutes(clock.remaining), -value, _MINUTE)
    for calendar, wait in waits.items():
        candidates.append(calendar.add_business_time(now, wait))
    future = [at for at in candidates if at > now]
    return (_ceil_second(min(future)) if future else None), not watch.opaque_rules


_ZERO = timedelta(0)
_OK = ClockState.OK
_AT_RISK = ClockState.AT_RISK
"""Module constants: an enum member read off its class is a slower lookup (next_review reads them per clock)."""
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)


def _wait(waits: dict[BusinessCalendar, timedelta], calendar: BusinessCalendar, duration: timedelta) -> None:
    """Keep `duration` if it is the shortest positive wait on `calendar` so far."""
    if duration > _ZERO:
        known = waits.get(calendar)
        if known is None or duration < known:
            waits[calendar] = duration


def _running(clock: Clock) -> bool:
    return clock.state in (ClockState.OK, ClockState.AT_RISK, ClockState.BREACHED)


def _crossing(
    waits: dict[BusinessCalendar, timedelta],
    calendar: BusinessCalendar,
    value: float,
    threshold: float,
    unit: timedelta,
) -> None:
    """When a quantity that grows with business time (value now, in `unit`s) reaches `threshold`: a wait."""
    if threshold < value:
        return
    _wait(waits, calendar, _SECOND if threshold == value else unit * (threshold - value))


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60.0


def _ceil_second(moment: datetime) -> datetime:
    if moment.microsecond == 0:
        return moment
    return moment.replace(microsecond=0) + _SECOND

"""SLA clocks: from a start, an optional stop, a target, a calendar and pauses to a `model.Clock`.

A clock measures business time on its calendar from `start` until it is stopped (the thing it waits for
happened: a first reply, the solve, an acknowledgment) or until `now`, leaving out the intervals in which the
ticket waited on someone else (status pending / on hold). The state follows the model's vocabulary:

- met: stopped; a clock stopped after its target is still MET but carries `breached_at`, so the breached tag
  stays on the ticket as history;
- breached: running and elapsed > target;
- paused: running, not breached, and the ticket is in a pausing status now;
- at_risk: running and elapsed >= at_risk_fraction * target;
- ok: otherwise.

Which clocks a ticket has (and their targets) is decided in engine/escalate.py from the policy; this module
only does the measuring, all of it through engine.calendar.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from engine.calendar import ZERO, BusinessCalendar
from engine.model import Clock, ClockState, Status, Ticket, Tier

Pause = tuple[datetime, datetime | None]
"""A pause: from, until (None: still paused)."""


_STOPS = frozenset(status for status in Status if status.pauses_sla or status.is_terminal)
"""Statuses no clock counts: waiting on the customer (pending, on hold) or solved (nobody waits at all)."""


_MET, _BREACHED, _PAUSED = ClockState.MET, ClockState.BREACHED, ClockState.PAUSED
_AT_RISK, _OK = ClockState.AT_RISK, ClockState.OK
"""Module constants: an enum member read off its class is a slower lookup (`_finish` runs for every clock)."""


def risk_mark(target: timedelta, at_risk_fraction: float) -> timedelta:
    """`target * at_risk_fraction`, where a clock turns at risk; memoized: a policy has a few targets, and the
    product (a float multiplication rounded to microseconds) costs several dict lookups."""
    mark = _RISK_MARKS.get((target, at_risk_fraction))
    if mark is None:
        if len(_RISK_MARKS) >= 1024:
            _RISK_MARKS.clear()
        mark = _RISK_MARKS[(target, at_risk_fraction)] = target * at_risk_fraction
    return mark


_RISK_MARKS: dict[tuple[timedelta, float], timedelta] = {}


def _stops(status: Status) -> bool:
    return status in _STOPS


def pauses_of(ticket: Ticket) -> tuple[Pause, ...]:
    """The intervals in which the ticket's status paused SLA clocks, oldest first.

    Solved (and closed) spans count as pauses too: a ticket reopened days after it was solved resumes its
    resolution clock and its time at tier where they stood at the solve (the customer waited for nothing in
    between). A ticket that is solved now is stopped anyway (its clocks stop at the solve).

    Without status history we only know the current status: a ticket that is pending or on hold now is taken
    to have been paused since its last update (the best evidence we have of when it got there).
    """
    if not ticket.status_history:
        # No history (most platforms' polled records): only the current status tells (see below).
        return ((ticket.updated_at, None),) if ticket.status.pauses_sla else ()
    history = sorted(ticket.status_history, key=lambda change: change.at)
    pauses: list[Pause] = []
    paused_since: datetime | None = None
    last_status: Status | None = None
    for change in history:
        if _stops(change.status):
            if paused_since is None:
                paused_since = change.at
        elif paused_since is not None:
            pauses.append((paused_since, change.at))
            paused_since = None
        last_status = change.status
    if last_status is not None and last_status != ticket.status:
        # History does not end in the current status (the platform trimmed it): trust the current status.
        if _stops(ticket.status) and paused_since is None:
            paused_since = max(ticket.updated_at, history[-1].at)
        elif not _stops(ticket.status) and paused_since is not None:
            pauses.append((paused_since, max(ticket.updated_at, paused_since)))
            paused_since = None
    if not history and ticket.status.pauses_sla:
        paused_since = ticket.updated_at
    if paused_since is not None:
        pauses.append((paused_since, None))
    return tuple(pauses)


def solved_spans(ticket: Ticket) -> tuple[Pause, ...]:
    """The intervals in which the ticket sat solved or closed (status history), oldest first: internal clocks
    (a tier's acknowledgment) do not pause for the customer, but nobody owes a solved ticket anything."""
    spans: list[Pause] = []
    since: datetime | None = None
    for change in sorted(ticket.status_history, key=lambda change: change.at):
        if change.status.is_terminal:
            if since is None:
                since = change.at
        elif since is not None:
            spans.append((since, change.at))
            since = None
    if since is not None:
        spans.append((since, None))
    return tuple(spans)


def active_segments(start: datetime, end: datetime, pauses: Sequence[Pause]) -> list[tuple[datetime, datetime]]:
    """[start, end) minus the pauses, as ordered non-overlapping segments."""
    if end <= start:
        return []
    if not pauses:
        return [(start, end)]
    segments = []
    cursor = start
    for pause_start, pause_end in pauses:
        stop = end if pause_end is None else pause_end
        if stop <= cursor:
            continue
        if pause_start >= end:
            break
        if pause_start > cursor:
            segments.append((cursor, pause_start))
        cursor = stop
        if cursor >= end:
            break
    if cursor < end:
        segments.append((cursor, end))
    return segments


def active_business_time(
    start: datetime, end: datetime, pauses: Sequence[Pause], calendar: BusinessCalendar
) -> timedelta:
    """Business time between start and end outside the pauses (hours at tier, clock elapsed)."""
    total = ZERO
    for seg_start, seg_end in active_segments(start, end, pauses):
        total += calendar.business_time_between(seg_start, seg_end)
    return total


def is_paused_at(pauses: Sequence[Pause], moment: datetime) -> bool:
    return any(start <= moment and (end is None or end > moment) for start, end in pauses)


def measure_clock(
    name: str,
    start: datetime,
    stop: datetime | None,
    target: timedelta,
    calendar: BusinessCalendar,
    pauses: Sequence[Pause],
    now: datetime,
    at_risk_fraction: float,
    tier: Tier | None = None,
) -> Clock:
    """Measure one clock as of `now` (`tier`: whose tier clock it is). A stop later than `now` has not happened
    yet and is ignored. The engine calls it with positional arguments: it measures several clocks per ticket,
    and keyword arguments through a wrapper or two cost a measurable share of that (issue 14's profile).

    A clock that starts `now` (the tier clocks and management clocks of an escalation the decision makes) has
    nothing elapsed and waits for nothing yet: it depends on its name, target, calendar and tier and on `now`
    only, so one frozen Clock serves every ticket escalated in the same cycle (see `_fresh`).
    """
    if not pauses and start == now and (stop is None or stop > now):
        return _fresh(name, target, calendar, now, at_risk_fraction, tier)
    stopped = stop is not None and stop <= now
    end = stop if stopped and stop is not None else now
    breached_at: datetime | None = None
    if not pauses:
        # The common case, without the segment machinery.
        elapsed = calendar.business_time_between(start, end)
        if elapsed > target:
            breached_at = calendar.add_business_time(start, target)
        paused = False
    else:
        elapsed = ZERO
        for seg_start, seg_end in active_segments(start, end, pauses):
            part = calendar.business_time_between(seg_start, seg_end)
            if breached_at is None and elapsed + part > target:
                breached_at = calendar.add_business_time(seg_start, target - elapsed)
            elapsed += part
        paused = not stopped and is_paused_at(pauses, now)
    return _finish(name, target, elapsed, breached_at, stopped, paused, now, calendar, at_risk_fraction, tier)


def _fresh(
    name: str, target: timedelta, calendar: BusinessCalendar, now: datetime, at_risk_fraction: float, tier: Tier | None
) -> Clock:
    """`measure_clock` of a clock started `now`, not stopped before it, without pauses: memoized. Its due
    instant is found at once (not on first read, as `_finish` leaves it): a Clock shared between decisions,
    maybe between threads, must not fill itself in later."""
    key = (name, target, calendar, now, at_risk_fraction, tier)
    clock = _FRESH.get(key)
    if clock is None:
        if len(_FRESH) >= 1024:
            _FRESH.clear()
        state = _AT_RISK if risk_mark(target, at_risk_fraction) <= ZERO else _OK
        due = calendar.add_business_time(now, target)
        clock = _FRESH[key] = Clock(name, target, ZERO, target, due, state, calendar.name, None, tier)
    return clock


_FRESH: dict[tuple[object, ...], Clock] = {}


Period = tuple[datetime | None, timedelta | None, BusinessCalendar]
"""From when (None: from the start) a target applies, the target (None: not tracked at that priority), and the
calendar its time is counted on: the priority's SLA while the ticket had that priority."""


def compute_clock_periods(
    name: str,
    *,
    start: datetime,
    stop: datetime | None,
    periods: Sequence[Period],
    pauses: Sequence[Pause],
    now: datetime,
    at_risk_fraction: float,
) -> Clock:
    """Measure one clock whose target changed over time (the ticket's priority changed), as of `now`.

    Time is counted on the calendar of the priority the ticket had at each moment; the target that applies is
    the one in force at that moment. So a breach happens at the first moment the time elapsed exceeds the
    target then in force: raising P3 to P1 breaches at the change at the earliest (never before it: the
    stricter target did not apply yet), and lowering P2 to P4 keeps a breach that happened under P2 (it stays
    in the record, like a clock met late). `periods` are oldest first; the last one is the current priority's.
    """
    stopped = stop is not None and stop <= now
    end = stop if stopped and stop is not None else now
    elapsed = ZERO
    breached_at: datetime | None = None
    segments = active_segments(start, end, pauses)
    for index, (since, target, calendar) in enumerate(periods):
        begin = start if since is None or since < start else since
        until = periods[index + 1][0] if index + 1 < len(periods) else None
        finish = end if until is None or until > end else until
        if begin >= end and index > 0:
            break
        if breached_at is None and target is not None and elapsed > target and begin < end:
            breached_at = begin  # the stricter target applies from this moment on, already exceeded
        for seg_start, seg_end in segments:
            lo, hi = max(seg_start, begin), min(seg_end, finish)
            if lo >= hi:
                continue
            part = calendar.business_time_between(lo, hi)
            if breached_at is None and target is not None and elapsed + part > target:
                breached_at = calendar.add_business_time(lo, target - elapsed)
            elapsed += part
    _, current_target, current_calendar = periods[-1]
    target = current_target if current_target is not None else ZERO
    paused = not stopped and is_paused_at(pauses, now)
    return _finish(name, target, elapsed, breached_at, stopped, paused, now, current_calendar, at_risk_fraction)


def _finish(
    name: str,
    target: timedelta,
    elapsed: timedelta,
    breached_at: datetime | None,
    stopped: bool,
    paused: bool,
    now: datetime,
    calendar: BusinessCalendar,
    at_risk_fraction: float,
    tier: Tier | None = None,
) -> Clock:
    """The clock's state from what was measured: one rule for a fixed target and for one that changed."""
    remaining = target - elapsed
    due_at: datetime | None
    if stopped:
        state = _MET
        due_at = breached_at
    elif breached_at is not None:
        state = _BREACHED
        due_at = breached_at
    elif paused:
        state = _PAUSED
        due_at = None  # unknown until the ticket resumes
    else:
        state = _AT_RISK if elapsed >= risk_mark(target, at_risk_fraction) else _OK
        # Due `remaining` business time from now, walked only if read (see `Clock.due_later`).
        add = calendar.add_business_time
        return Clock.due_later(name, target, elapsed, remaining, state, calendar.name, tier, add, now)
    return Clock(name, target, elapsed, remaining, due_at, state, calendar.name, breached_at, tier)

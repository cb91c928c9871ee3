"""SLA clocks: states, pauses (status history and the pending-without-history fallback), met-late history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.calendar import BusinessCalendar, weekly_from_spec
from engine.model import ClockState, Priority, Status, StatusChange, Ticket
from engine.sla import active_segments, measure_clock, pauses_of

H = timedelta(hours=1)
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # a Tuesday
ALWAYS = BusinessCalendar.always("24x7")
BERLIN = BusinessCalendar("berlin", "Europe/Berlin", weekly_from_spec({"weekdays": ["09:00-17:00"]}))


def clock(now, *, stop=None, pauses=(), target=4 * H, calendar=ALWAYS, start=T0):
    return measure_clock(
        "resolution",
        start=start,
        stop=stop,
        target=target,
        calendar=calendar,
        pauses=pauses,
        now=now,
        at_risk_fraction=0.75,
    )


@pytest.mark.parametrize(
    ("case", "now", "stop", "pauses", "state", "elapsed", "due", "breached_at"),
    [
        ("running, ok", T0 + H, None, (), ClockState.OK, H, T0 + 4 * H, None),
        ("at risk at 75 %", T0 + 3 * H, None, (), ClockState.AT_RISK, 3 * H, T0 + 4 * H, None),
        (
            "exactly at target is at risk, not yet breached",
            T0 + 4 * H,
            None,
            (),
            ClockState.AT_RISK,
            4 * H,
            T0 + 4 * H,
            None,
        ),
        ("breached", T0 + 5 * H, None, (), ClockState.BREACHED, 5 * H, T0 + 4 * H, T0 + 4 * H),
        ("met in time", T0 + 10 * H, T0 + 2 * H, (), ClockState.MET, 2 * H, None, None),
        ("met late keeps breached_at", T0 + 10 * H, T0 + 5 * H, (), ClockState.MET, 5 * H, T0 + 4 * H, T0 + 4 * H),
        ("stop in the future is ignored", T0 + H, T0 + 2 * H, (), ClockState.OK, H, T0 + 4 * H, None),
        ("paused now", T0 + 10 * H, None, ((T0 + H, None),), ClockState.PAUSED, H, None, None),
        ("past pause is left out", T0 + 4 * H, None, ((T0 + H, T0 + 3 * H),), ClockState.OK, 2 * H, T0 + 6 * H, None),
        (
            "breach before a pause wins over paused",
            T0 + 10 * H,
            None,
            ((T0 + 5 * H, None),),
            ClockState.BREACHED,
            5 * H,
            T0 + 4 * H,
            T0 + 4 * H,
        ),
        ("pause before start is ignored", T0 + H, None, ((T0 - 5 * H, T0 - H),), ClockState.OK, H, T0 + 4 * H, None),
        (
            "breach crossing after a pause",
            T0 + 8 * H,
            None,
            ((T0 + H, T0 + 3 * H),),
            ClockState.BREACHED,
            6 * H,
            T0 + 6 * H,
            T0 + 6 * H,
        ),
    ],
)
def test_clock_states(case, now, stop, pauses, state, elapsed, due, breached_at):
    result = clock(now, stop=stop, pauses=pauses)
    assert (result.state, result.elapsed, result.due_at, result.breached_at) == (state, elapsed, due, breached_at), case
    assert result.remaining == 4 * H - elapsed
    assert result.calendar == "24x7"


def test_pause_spanning_a_weekend_on_business_hours():
    friday_14 = datetime(2026, 11, 27, 14, tzinfo=UTC)  # Berlin 15:00, closes 16:00 UTC
    monday_11 = datetime(2026, 11, 30, 11, tzinfo=UTC)
    pause = ((datetime(2026, 11, 27, 15, tzinfo=UTC), datetime(2026, 11, 30, 10, tzinfo=UTC)),)
    paused = clock(monday_11, pauses=pause, calendar=BERLIN, start=friday_14)
    unpaused = clock(monday_11, calendar=BERLIN, start=friday_14)
    assert paused.elapsed == 2 * H  # Fri 14-15 and Mon 10-11
    assert unpaused.elapsed == 5 * H  # Fri 14-16 and Mon 08-11
    assert paused.due_at == datetime(2026, 11, 30, 13, tzinfo=UTC)


def test_ticket_created_outside_business_hours_starts_counting_at_opening():
    saturday = datetime(2026, 11, 28, 20, tzinfo=UTC)
    result = clock(datetime(2026, 11, 30, 9, tzinfo=UTC), calendar=BERLIN, start=saturday, target=2 * H)
    assert result.elapsed == H
    assert result.due_at == datetime(2026, 11, 30, 10, tzinfo=UTC)


def _ticket(status, history=(), updated=T0 + 2 * H):
    return Ticket(
        platform="zendesk",
        instance="i",
        id="1",
        key="1",
        url="",
        subject="s",
        status=status,
        priority=Priority.P2,
        created_at=T0,
        updated_at=updated,
        status_history=tuple(history),
    )


@pytest.mark.parametrize(
    ("case", "status", "history", "expected"),
    [
        ("no history, open", Status.OPEN, (), ()),
        ("no history, pending: paused since update", Status.PENDING, (), ((T0 + 2 * H, None),)),
        ("no history, on hold", Status.ON_HOLD, (), ((T0 + 2 * H, None),)),
        (
            "history with two pauses, still on hold",
            Status.ON_HOLD,
            [(0, Status.NEW), (1, Status.PENDING), (2, Status.OPEN), (3, Status.ON_HOLD)],
            ((T0 + H, T0 + 2 * H), (T0 + 3 * H, None)),
        ),
        (
            "pending then on hold is one pause",
            Status.OPEN,
            [(1, Status.PENDING), (2, Status.ON_HOLD), (4, Status.OPEN)],
            ((T0 + H, T0 + 4 * H),),
        ),
        ("unsorted history is sorted", Status.OPEN, [(4, Status.OPEN), (1, Status.PENDING)], ((T0 + H, T0 + 4 * H),)),
        ("history trimmed, current pending", Status.PENDING, [(0, Status.OPEN)], ((T0 + 2 * H, None),)),
    ],
)
def test_pauses_of(case, status, history, expected):
    changes = [StatusChange(T0 + hours * H, state) for hours, state in history]
    assert pauses_of(_ticket(status, changes)) == expected, case


def test_active_segments():
    pauses = ((T0 + H, T0 + 2 * H), (T0 + 3 * H, None))
    assert active_segments(T0, T0 + 5 * H, pauses) == [(T0, T0 + H), (T0 + 2 * H, T0 + 3 * H)]
    assert active_segments(T0 + 5 * H, T0, pauses) == []

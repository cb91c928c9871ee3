"""Properties that must hold for any input: business time is monotonic and bounded by wall time, evaluation
is deterministic, tiers never go down unless the policy allows it, and the echo of a write plans nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.calendar import BusinessCalendar, weekly_from_spec
from engine.escalate import evaluate
from engine.model import EscalationHistory, Flags, Priority, Status, StatusChange, TagScheme, Ticket, Tier
from engine.plan import plan
from engine.policy import load_policy
from engine.sla import measure_clock

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
BERLIN = BusinessCalendar(
    "berlin", "Europe/Berlin", weekly_from_spec({"weekdays": ["09:00-12:00", "13:00-17:00"]}), holiday_country="DE"
)
NY_DAILY = BusinessCalendar("ny", "America/New_York", weekly_from_spec({"daily": ["00:00-24:00"]}))
SUN = BusinessCalendar.union(
    "sun",
    [BERLIN, BusinessCalendar("sg", "Asia/Singapore", weekly_from_spec({"weekdays": ["08:00-16:00"]}))],
)
CALENDARS = st.sampled_from([BERLIN, NY_DAILY, SUN, BusinessCalendar.always()])
# Around both 2026 DST changes and over year ends.
MOMENTS = st.datetimes(min_value=datetime(2025, 12, 1), max_value=datetime(2027, 1, 31), timezones=st.just(UTC))
SPANS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40))


@settings(max_examples=300, deadline=None)
@given(CALENDARS, MOMENTS, SPANS, SPANS)
def test_business_time_is_monotonic_and_bounded(calendar, start, first, extra):
    early = calendar.business_time_between(start, start + first)
    late = calendar.business_time_between(start, start + first + extra)
    assert timedelta(0) <= early <= late
    assert early <= first
    assert late <= first + extra


@settings(max_examples=300, deadline=None)
@given(CALENDARS, MOMENTS, st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=300)))
def test_add_then_measure_round_trips(calendar, start, duration):
    due = calendar.add_business_time(start, duration)
    assert due >= start
    assert calendar.business_time_between(start, due) == duration


@settings(max_examples=200, deadline=None)
@given(CALENDARS, MOMENTS, SPANS, SPANS, st.lists(st.tuples(SPANS, SPANS), max_size=3))
def test_clock_elapsed_is_monotonic_in_now(calendar, start, first, extra, raw_pauses):
    pauses = tuple(sorted((start + a, start + a + b) for a, b in raw_pauses))
    merged: list[tuple[datetime, datetime | None]] = []
    for pause_start, pause_end in pauses:  # pauses come from a status history: never overlapping
        if merged and pause_start <= (merged[-1][1] or pause_start):
            continue
        merged.append((pause_start, pause_end))

    def elapsed(now):
        return measure_clock(
            "c",
            start=start,
            stop=None,
            target=timedelta(hours=8),
            calendar=calendar,
            pauses=merged,
            now=now,
            at_risk_fraction=0.75,
        ).elapsed

    assert elapsed(start + first) <= elapsed(start + first + extra) <= first + extra


T0 = datetime(2026, 3, 20, 8, 0, tzinfo=UTC)
HOURS = st.integers(min_value=0, max_value=24 * 20).map(lambda minutes: timedelta(minutes=minutes * 7))
OPTIONAL = st.none() | HOURS


@st.composite
def tickets(draw):
    created = T0 + draw(HOURS)
    status = draw(st.sampled_from(list(Status)))
    first_reply = draw(OPTIONAL)
    last_reply = draw(OPTIONAL)
    history = tuple(
        sorted(
            (
                StatusChange(created + offset, state)
                for offset, state in draw(st.lists(st.tuples(HOURS, st.sampled_from(list(Status))), max_size=4))
            ),
            key=lambda change: change.at,
        )
    )
    return Ticket(
        platform="zendesk",
        instance="acme",
        id=str(draw(st.integers(1, 999))),
        key="k",
        url="",
        subject="s",
        status=status,
        priority=draw(st.sampled_from(list(Priority))),
        created_at=created,
        updated_at=created + draw(HOURS),
        description="d",
        first_public_reply_at=created + first_reply if first_reply is not None else None,
        last_public_reply_at=created + max(first_reply or timedelta(0), last_reply or timedelta(0))
        if first_reply is not None
        else None,
        last_agent_action_at=created + draw(HOURS) if draw(st.booleans()) else None,
        solved_at=created + draw(HOURS) if status.is_terminal else None,
        segment=draw(st.sampled_from([None, "enterprise", "smb"])),
        tags=frozenset(
            draw(st.lists(st.sampled_from(["vip", "esc_management", "esc_breached_resolution"]), max_size=3))
        ),
        tier=draw(st.none() | st.sampled_from(list(Tier))),
        tier_entered_at=created + draw(HOURS) if draw(st.booleans()) else None,
        flags=Flags(
            churn_threat=draw(st.booleans()),
            security_legal=draw(st.booleans()),
            engineering_required=draw(st.booleans()),
            vendor_dependency=draw(st.booleans()),
            customer_requested=draw(st.booleans()),
            revenue_at_risk=float(draw(st.integers(0, 80000))),
            affected_customers=draw(st.integers(0, 20)),
            reopen_count=draw(st.integers(0, 4)),
        ),
        status_history=history,
    )


HISTORIES = st.builds(
    EscalationHistory,
    customer_escalations_30d=st.integers(0, 5),
    management_started_at=st.none() | st.just(T0 + timedelta(hours=30)),
)


@settings(max_examples=200, deadline=None)
@given(tickets(), HOURS, HISTORIES)
def test_evaluate_is_deterministic_and_never_lowers_the_tier(ticket, later, history):
    now = ticket.created_at + later
    first = evaluate(ticket, POLICY, now, history)
    assert evaluate(ticket, POLICY, now, history) == first
    assert first.target_tier.rank >= first.current_tier.rank
    if ticket.status.is_terminal:
        assert first.target_tier == first.current_tier and first.comment is None


@settings(max_examples=150, deadline=None)
@given(tickets(), HOURS)
def test_echo_of_a_write_plans_nothing(ticket, later):
    now = ticket.created_at + later
    decision = evaluate(ticket, POLICY, now)
    writeback = plan(decision, ticket, TagScheme())
    echoed = replace(
        ticket,
        tags=(ticket.tags | writeback.add_tags) - writeback.remove_tags,
        tier=writeback.tier or ticket.tier,
        tier_entered_at=now if writeback.tier else ticket.tier_entered_at,
    )
    assert plan(decision, echoed, TagScheme()).is_empty

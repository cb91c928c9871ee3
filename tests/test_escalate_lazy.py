"""Lazy paths of the engine (issue 14): work is done only when its result is read, and the result is the same.

A rule's reason text is only needed when a decision is written, logged or explained, so the engine renders it
on the first read of `RuleOutcome.reason`. These tests pin that nothing is rendered before the read (a counter
on the renderer) and that the lazily rendered text equals the text of an eager rendering.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import engine.escalate as escalate
from engine.escalate import evaluate
from engine.model import Priority, RuleOutcome, Status, Ticket, Tier
from engine.policy import Policy, load_policy

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def _ticket(minutes: int, tier: Tier = Tier.L1) -> Ticket:
    created = NOW - timedelta(minutes=minutes)
    return Ticket(
        platform="zendesk",
        instance="t",
        id=str(minutes),
        key=str(minutes),
        url="",
        subject="s",
        status=Status.OPEN,
        priority=Priority.P3,
        created_at=created,
        updated_at=created,
        first_public_reply_at=created + timedelta(minutes=1),
        last_public_reply_at=created + timedelta(minutes=1),
        last_agent_action_at=created + timedelta(minutes=1),
        tier=tier,
        tier_entered_at=created,
    )


def _fresh() -> Policy:
    return replace(POLICY, outcome_cache={})


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every reason text the engine renders from facts (the `not met: ...` lists and the `reason` templates)."""
    seen: list[str] = []
    fact_list, render_reason = escalate._fact_list, escalate._render_reason

    def counted_list(*args: object) -> str:
        seen.append("list")
        return fact_list(*args)  # type: ignore[arg-type]

    def counted_reason(*args: object) -> str:
        seen.append("reason")
        return render_reason(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(escalate, "_fact_list", counted_list)
    monkeypatch.setattr(escalate, "_render_reason", counted_reason)
    return seen


def test_a_time_rule_reason_is_rendered_only_when_read(renders: list[str]) -> None:
    policy = _fresh()
    evaluate(_ticket(61), policy, NOW)  # warms the memo of the rules whose outcome is shared
    renders.clear()
    decision = evaluate(_ticket(67), policy, NOW)
    assert renders == []  # hours at tier differ from the first ticket's: its text would be new
    limit = next(outcome for outcome in decision.rules if outcome.name == "l1-time-limit")
    assert limit.reason.startswith("not met: ticket.tier = 'L1', hours_at_tier = ")
    assert renders == ["list"]
    assert limit.reason is limit.reason  # rendered once, then kept
    assert renders == ["list"]


def test_lazy_reasons_equal_eager_ones() -> None:
    """Every outcome of a set of tickets (fired and not, both time limits, a chain) reads as an eagerly built
    outcome with the same fields, and compares equal to it."""
    policy = _fresh()
    for minutes, tier in ((30, Tier.L1), (60 * 30, Tier.L1), (60 * 60, Tier.L2), (60 * 24 * 9, Tier.L2)):
        decision = evaluate(_ticket(minutes, tier), policy, NOW)
        for outcome in decision.rules:
            eager = RuleOutcome(
                outcome.name,
                outcome.description,
                outcome.fired,
                outcome.reason,
                outcome.target_tier,
                outcome.management,
            )
            assert outcome == eager and hash(outcome) == hash(eager) and repr(outcome) == repr(eager)
    fired = evaluate(_ticket(60 * 30, Tier.L1), _fresh(), NOW)
    limit = next(outcome for outcome in fired.rules if outcome.name == "l1-time-limit")
    assert limit.fired and limit.reason.startswith("at L1 for ")


def test_a_deferred_outcome_has_no_other_missing_attribute() -> None:
    outcome = RuleOutcome.deferred("r", "d", False, None, False, lambda: "text")
    with pytest.raises(AttributeError):
        outcome.nothing  # noqa: B018
    assert outcome.reason == "text"


def test_the_review_moment_walks_each_calendar_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review moment is the earliest of many candidates (each clock's at-risk and breach moments, the time
    limits); `add_business_time` grows with the wait, so only each calendar's shortest wait is walked. The
    moment is the one the per-candidate walk finds (the review tests pin the moments themselves)."""
    import engine.review as review
    from engine.calendar import BusinessCalendar

    ticket = _ticket(20)
    ticket = replace(ticket, first_public_reply_at=None, last_public_reply_at=None, last_agent_action_at=None)
    policy = _fresh()
    decision = evaluate(ticket, policy, NOW)
    running = [c for c in decision.clocks if c.state.value in ("ok", "at_risk")]
    assert len(running) >= 3
    walks: list[datetime] = []
    original = BusinessCalendar.add_business_time

    def counted(self: BusinessCalendar, start: datetime, duration: timedelta) -> datetime:
        walks.append(start)
        return original(self, start, duration)

    monkeypatch.setattr(BusinessCalendar, "add_business_time", counted)
    hours = 20 / 60
    at, exact = review.next_review(ticket, policy, NOW, decision.clocks, hours, False)
    calendars = {c.calendar for c in running} | {policy.sla[ticket.priority].calendar.name}
    assert len(walks) <= len(calendars)
    candidates = []
    for clock in running:
        calendar = policy.calendars[clock.calendar]
        candidates.append(original(calendar, NOW, clock.remaining + timedelta(seconds=1)))
        to_risk = clock.target * policy.at_risk_fraction - clock.elapsed
        if clock.state.value == "ok" and to_risk > timedelta(0):
            candidates.append(original(calendar, NOW, to_risk))
    assert at is not None and at <= min(candidates) and exact
    assert at == decision.review_at


def test_a_running_clock_finds_its_due_instant_only_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A running clock's due instant is a calendar walk that only explain, reports and handoff notes read (the
    review moment and the tags need elapsed and remaining time only): it is walked on the first read."""
    from engine.calendar import BusinessCalendar

    ticket = replace(_ticket(20), first_public_reply_at=None, last_public_reply_at=None, last_agent_action_at=None)
    policy = _fresh()
    walks: list[timedelta] = []
    original = BusinessCalendar.add_business_time

    def counted(self: BusinessCalendar, start: datetime, duration: timedelta) -> datetime:
        walks.append(duration)
        return original(self, start, duration)

    monkeypatch.setattr(BusinessCalendar, "add_business_time", counted)
    clocks = escalate.measure_clocks(ticket, policy, NOW, ())
    running = [clock for clock in clocks if clock.state.value in ("ok", "at_risk")]
    assert len(running) >= 2 and walks == []
    first = running[0]
    due = first.due_at
    assert walks == [first.remaining]
    assert due == original(policy.calendars[first.calendar], NOW, first.remaining)
    assert first.due_at is due and len(walks) == 1
    eager = replace(first, due_at=due)
    assert eager == first and hash(eager) == hash(first) and repr(eager) == repr(first)

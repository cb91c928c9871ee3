"""engine.review: the moment a decision could next change with no new input, to the second.

Each case evaluates the real policy (config.example.toml) at `review_at` and one second before it: the answer
must be unchanged just before and changed at the moment (or the moment must be the next clock instant).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.escalate import evaluate
from engine.model import Decision, Priority, Status, StatusChange, Ticket, Tier
from engine.policy import load_policy, policy_from_dict
from engine.review import time_watch

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "config.example.toml")
MONDAY_10 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)  # 10:00 in Berlin, a working Monday
SECOND = timedelta(seconds=1)


def ticket(created: datetime = MONDAY_10, **changes) -> Ticket:
    base = Ticket(
        platform="zendesk",
        instance="zd",
        id="1",
        key="1",
        url="",
        subject="printer on fire",
        status=Status.OPEN,
        priority=Priority.P3,
        created_at=created,
        updated_at=created,
    )
    return replace(base, **changes)


def answer(decision: Decision) -> tuple:
    return (decision.target_tier, decision.management, decision.signals)


def test_the_l1_limit_is_the_first_moment_for_a_fresh_p3() -> None:
    decision = evaluate(ticket(), POLICY, MONDAY_10)
    # 2 business hours after 10:00 Berlin; the at-risk instants of the P3 clocks (6 h of 8) come later.
    assert decision.review_at == datetime(2026, 11, 16, 11, 0, tzinfo=UTC)
    assert decision.review_exact


def changes_by_brute_force(
    subject: Ticket, policy, start: datetime, span: timedelta, step: timedelta
) -> list[datetime]:
    """Every `step`, from `start`: the first sampled instants at which the answer differs from the last."""
    found, last, now = [], answer(evaluate(subject, policy, start)), start
    while now < start + span:
        now += step
        current = answer(evaluate(subject, policy, now))
        if current != last:
            found.append(now)
            last = current
    return found


def walk(subject: Ticket, policy, now: datetime, until: datetime) -> list[datetime]:
    """The review moments one after another, as the daemon would follow them."""
    moments = []
    while True:
        decision = evaluate(subject, policy, now)
        if decision.review_at is None or decision.review_at > until:
            return moments
        assert decision.review_at > now
        moments.append(decision.review_at)
        now = decision.review_at


SHAPES = {
    "P1": ticket(priority=Priority.P1),
    "P2 enterprise": ticket(priority=Priority.P2, segment="enterprise"),
    "P3": ticket(),
    "P4 at L2": ticket(priority=Priority.P4, tier=Tier.L2, tier_entered_at=MONDAY_10),
    "P3 paused after 1 h": ticket(
        status=Status.PENDING,
        status_history=(
            StatusChange(MONDAY_10, Status.OPEN),
            StatusChange(MONDAY_10 + timedelta(hours=1), Status.PENDING),
        ),
    ),
    "P2 answered": ticket(priority=Priority.P2, first_public_reply_at=MONDAY_10 + timedelta(minutes=20)),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_change_happens_between_two_review_moments(shape: str) -> None:
    """Sample the answer every minute for four days: each change happens exactly at a review moment (the
    answer one second before the moment is the old one, at the moment the new one)."""
    subject = SHAPES[shape]
    span = timedelta(days=4)
    moments = walk(subject, POLICY, MONDAY_10, MONDAY_10 + span)
    for changed in changes_by_brute_force(subject, POLICY, MONDAY_10, span, timedelta(minutes=1)):
        window = [m for m in moments if changed - timedelta(minutes=1) < m <= changed]
        assert window, f"{shape}: the answer changed by {changed} with no review moment in the minute before"
        exact = [
            m for m in window if answer(evaluate(subject, POLICY, m - SECOND)) != answer(evaluate(subject, POLICY, m))
        ]
        assert exact, f"{shape}: no review moment in the minute before {changed} is the instant of the change"


def test_a_weekend_and_a_holiday_are_skipped() -> None:
    friday_4pm = datetime(2026, 12, 18, 15, 0, tzinfo=UTC)  # 16:00 Berlin, Friday before Christmas
    subject = ticket(friday_4pm)
    moments = walk(subject, POLICY, friday_4pm, friday_4pm + timedelta(days=4))
    # 1 h on Friday, then Monday 21st 09:00-10:00 Berlin completes the 2 h at L1.
    tier_moves = [m for m in moments if evaluate(subject, POLICY, m).target_tier is Tier.L2]
    assert tier_moves[0] == datetime(2026, 12, 21, 9, 0, 1, tzinfo=UTC)  # "> 2 hours": one second past
    christmas = datetime(2026, 12, 23, 15, 0, tzinfo=UTC)  # Wed 16:00 Berlin: 1 h, then the 24th (custom), 25th, 26th
    subject = ticket(christmas)
    moments = walk(subject, POLICY, christmas, christmas + timedelta(days=7))
    tier_moves = [m for m in moments if evaluate(subject, POLICY, m).target_tier is Tier.L2]
    assert tier_moves[0] == datetime(2026, 12, 28, 9, 0, 1, tzinfo=UTC)  # 09:00-10:00 Berlin on Monday 28th, then 1 s


def test_a_paused_ticket_has_few_review_moments() -> None:
    """While waiting on the customer, hours at tier and the SLA clocks stand still: only wall-clock facts
    (the age rule) and the internal clocks can call for a look."""
    subject = SHAPES["P3 paused after 1 h"]
    moments = walk(subject, POLICY, MONDAY_10 + timedelta(hours=3), MONDAY_10 + timedelta(days=30))
    assert len(moments) <= 2
    assert evaluate(subject, POLICY, MONDAY_10 + timedelta(days=30)).target_tier is Tier.L1


def test_a_wall_clock_age_rule_is_watched_in_wall_hours() -> None:
    enterprise = SHAPES["P2 enterprise"]
    moments = walk(enterprise, POLICY, MONDAY_10, MONDAY_10 + timedelta(hours=5))
    assert MONDAY_10 + timedelta(hours=4, seconds=1) in moments  # age_hours > 4: strictly after four hours
    assert evaluate(enterprise, POLICY, MONDAY_10 + timedelta(hours=4, seconds=1)).management


def test_a_strict_comparison_is_looked_at_one_second_after_the_threshold() -> None:
    policy = custom_policy('hours_at_tier > 2.0 && ticket.tier == "L1"')
    decision = evaluate(ticket(), policy, MONDAY_10)
    assert decision.review_at == datetime(2026, 11, 16, 11, 0, tzinfo=UTC)
    at_threshold = evaluate(ticket(), policy, decision.review_at)
    assert at_threshold.target_tier is Tier.L1
    assert at_threshold.review_at == datetime(2026, 11, 16, 11, 0, 1, tzinfo=UTC)
    assert evaluate(ticket(), policy, at_threshold.review_at).target_tier is Tier.L2


def test_clock_minutes_compared_with_a_number_are_watched() -> None:
    policy = custom_policy("clocks.first_response.remaining_minutes < 90.0")
    # 8 h target: 90 minutes remain after 6 h 30 of business time (10:00 + 6h30 = 16:30 Berlin).
    assert datetime(2026, 11, 16, 15, 30, tzinfo=UTC) in walk(
        ticket(), policy, MONDAY_10, MONDAY_10 + timedelta(days=1)
    )


def test_time_used_in_arithmetic_is_not_solved_and_says_so() -> None:
    policy = custom_policy("hours_at_tier * 60.0 >= 120.0")
    assert time_watch(policy).opaque_rules == ("custom",)
    assert evaluate(ticket(), policy, MONDAY_10).review_exact is False
    assert evaluate(ticket(), POLICY, MONDAY_10).review_exact is True


def test_a_terminal_ticket_is_never_reviewed() -> None:
    solved = ticket(status=Status.SOLVED, solved_at=MONDAY_10 + timedelta(hours=1))
    assert evaluate(solved, POLICY, MONDAY_10 + timedelta(hours=2)).review_at is None


def custom_policy(condition: str):
    import tomllib

    data = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))["policy"]
    data["rules"] = [{"name": "custom", "when": condition, "tier": "L2"}]
    return policy_from_dict(data)


def test_a_clock_due_at_closing_time_is_not_reviewed_through_the_night() -> None:
    """L2's 60-minute assessment entered at 16:00 Berlin is due at 17:00, closing time: breached only once
    business time passes again, at 09:00 the next day. Nothing to look at in between."""
    entered = datetime(2026, 11, 16, 15, 0, tzinfo=UTC)  # 16:00 Berlin
    at_l2 = ticket(tier=Tier.L2, tier_entered_at=entered, created_at=entered - timedelta(minutes=5))
    moments = walk(at_l2, POLICY, entered, entered + timedelta(hours=20))
    night = [
        m
        for m in moments
        if datetime(2026, 11, 16, 16, 0, 1, tzinfo=UTC) <= m < datetime(2026, 11, 17, 8, 0, tzinfo=UTC)
    ]
    # Only the policy's wall-clock age threshold (created + 4 h) falls in the night.
    assert night == [at_l2.created_at + timedelta(hours=4), at_l2.created_at + timedelta(hours=4, seconds=1)]
    assert datetime(2026, 11, 17, 8, 0, 1, tzinfo=UTC) in moments
    breached = evaluate(at_l2, POLICY, datetime(2026, 11, 17, 8, 0, 1, tzinfo=UTC))
    assert {(signal.kind, signal.clock) for signal in breached.signals} >= {("breached", "assessment")}


def test_a_customer_count_matters_only_where_it_crosses_a_rules_number() -> None:
    watch = time_watch(POLICY)  # repeated-failure: count >= 3, mgmt-repeat-customer: count >= 3
    assert watch.customer_counts == (3.0,)
    assert watch.count_crossed(2, 3) and watch.count_crossed(1, 5)
    assert watch.count_crossed(3, 4), "a strict comparison (> 3) would change there: the safe side"
    assert not watch.count_crossed(4, 5) and not watch.count_crossed(0, 2) and not watch.count_crossed(4, 4)
    opaque = custom_policy("history.customer_escalations_30d * 2 > 5")
    assert time_watch(opaque).customer_counts is None and time_watch(opaque).count_crossed(7, 8)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ticket__tier == '' && hours_at_tier > 2.0", (2.0,)),
        ("hours_at_tier > 8 || 2.0 <= hours_at_tier", (2.0, 8.0)),
        ("x || (hours_at_tier >= -1.5e2) ? a : b", (-150.0,)),
        ("2 < hours_at_tier < 3", None),
        ("hours_at_tier > 2 == true", None),
        ("-hours_at_tier > 2", None),
        ("hours_at_tier * 2.0 > 1.0", None),
        ("1 + 2 > hours_at_tier", None),
        ("hours_at_tier > 2 - 1", None),
        ("f(hours_at_tier) > 2", None),
        ("a ? hours_at_tier : 3.0", None),
        ("hours_at_tier_x > 2", None),
        ("y", None),
    ],
)
def test_direct_comparisons_accepts_only_plain_comparisons_with_literals(source, expected):
    from engine.review import direct_comparisons

    assert direct_comparisons(source, "hours_at_tier") == expected

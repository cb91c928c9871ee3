"""The clocks on complete history facts (issue 8) and first-event stops (issue 9, item 1).

Times: T0 is Tuesday 2026-11-24 09:00 UTC, inside the default business_hours calendar (08:00-16:00 UTC in winter).
Policy: config.example.toml (P2: first response 2 h, customer update 4 h; L2: acknowledgment 15 min, assessment
60 min).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.escalate import evaluate, tier_started_at
from engine.model import (
    ClockState,
    EscalationHistory,
    Priority,
    Status,
    StatusChange,
    Ticket,
    Tier,
    TierChange,
)
from engine.policy import load_policy
from engine.sla import pauses_of

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
H = timedelta(hours=1)
M = timedelta(minutes=1)
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def ticket(**changes) -> Ticket:
    base = Ticket(
        platform="servicenow",
        instance="acme",
        id="42",
        key="INC0042",
        url="",
        subject="Export fails",
        status=Status.OPEN,
        priority=Priority.P2,
        created_at=T0,
        updated_at=T0,
        tier=Tier.L1,
        public_replies=(),
        agent_actions=(),
        tier_changes=(TierChange(T0, Tier.L1),),
        status_history=(StatusChange(T0, Status.NEW),),
        internal_notes=(),
    )
    return replace(base, **changes)


def clock(decision, name):
    return next(clock for clock in decision.clocks if clock.name == name)


def test_two_pauses_are_both_kept_after_the_ticket_resumes():
    history = (
        StatusChange(T0, Status.OPEN),
        StatusChange(T0 + 1 * H, Status.PENDING),
        StatusChange(T0 + 2 * H, Status.OPEN),
        StatusChange(T0 + 3 * H, Status.PENDING),
        StatusChange(T0 + 4 * H, Status.OPEN),
    )
    t = ticket(status_history=history, updated_at=T0 + 4 * H)
    assert pauses_of(t) == ((T0 + 1 * H, T0 + 2 * H), (T0 + 3 * H, T0 + 4 * H))
    # 4h30 since creation, 2 h of it paused: the 4 h customer-update cadence has 1h30 left, not breached.
    update = clock(evaluate(t, POLICY, T0 + 4 * H + 30 * M), "customer_update")
    assert update.elapsed == 2 * H + 30 * M
    assert update.state is not ClockState.BREACHED


def test_a_second_public_reply_moves_the_update_cadence():
    one = ticket(public_replies=(T0 + 10 * M,))
    two = ticket(public_replies=(T0 + 10 * M, T0 + 3 * H))
    now = T0 + 4 * H + 30 * M
    assert clock(evaluate(one, POLICY, now), "customer_update").state is ClockState.BREACHED
    moved = clock(evaluate(two, POLICY, now), "customer_update")
    assert moved.elapsed == 1 * H + 30 * M
    assert moved.state is ClockState.OK
    # The first reply still stops the first-response clock, on time.
    first = clock(evaluate(two, POLICY, now), "first_response")
    assert first.state is ClockState.MET and first.breached_at is None


def test_the_first_agent_action_after_the_escalation_stops_acknowledgment_even_if_more_follow():
    entered = T0 + 1 * H
    t = ticket(
        tier=Tier.L2,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(entered, Tier.L2)),
        agent_actions=(T0 + 5 * M, entered + 10 * M, entered + 50 * M),
        public_replies=(T0 + 5 * M, entered + 40 * M, entered + 90 * M),
    )
    decision = evaluate(t, POLICY, entered + 2 * H)
    ack = clock(decision, "acknowledgment")
    assert ack.state is ClockState.MET and ack.elapsed == 10 * M and ack.breached_at is None
    assessment = clock(decision, "assessment")
    assert assessment.state is ClockState.MET and assessment.elapsed == 40 * M and assessment.breached_at is None
    assert not any(signal.kind == "breached" for signal in decision.signals)


def test_an_action_before_the_tier_was_entered_does_not_acknowledge_it():
    entered = T0 + 1 * H
    t = ticket(
        tier=Tier.L2,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(entered, Tier.L2)),
        agent_actions=(T0 + 5 * M,),
    )
    assert clock(evaluate(t, POLICY, entered + 20 * M), "acknowledgment").state is ClockState.BREACHED


def test_a_reassignment_within_l2_keeps_the_l2_entry_time():
    entered = T0 + 1 * H
    # The mapping records entries only; a second L2 record (another L2 group) is no new entry either.
    t = ticket(
        tier=Tier.L2,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(entered, Tier.L2), TierChange(entered + 5 * H, Tier.L2)),
        tier_entered_at=entered + 5 * H,
    )
    assert tier_started_at(t, EscalationHistory()) == entered


def test_moving_back_and_forth_counts_from_the_last_entry():
    t = ticket(
        tier=Tier.L2,
        tier_changes=(
            TierChange(T0, Tier.L1),
            TierChange(T0 + 1 * H, Tier.L2),
            TierChange(T0 + 2 * H, Tier.L1),
            TierChange(T0 + 3 * H, Tier.L2),
        ),
    )
    assert tier_started_at(t, EscalationHistory()) == T0 + 3 * H


def test_no_tier_change_means_the_tier_since_creation():
    assert tier_started_at(ticket(tier_changes=()), EscalationHistory()) == T0


def test_a_history_lagging_behind_the_ticket_falls_back_to_the_estimate():
    t = ticket(tier=Tier.L2, tier_changes=(TierChange(T0, Tier.L1),), tier_entered_at=T0 + 2 * H)
    assert tier_started_at(t, EscalationHistory()) == T0 + 2 * H


def test_our_own_tag_write_does_not_move_any_clock():
    """Our write moves `updated_at` (and adds nothing to the facts): every clock measures the same."""
    pending = ticket(
        status=Status.PENDING,
        status_history=(StatusChange(T0, Status.OPEN), StatusChange(T0 + 30 * M, Status.PENDING)),
        public_replies=(T0 + 20 * M,),
        agent_actions=(T0 + 20 * M,),
    )
    echoed = replace(pending, updated_at=T0 + 3 * H, tags=frozenset({"esc_at_risk_first_response"}))
    now = T0 + 3 * H + 1 * M
    assert evaluate(pending, POLICY, now).clocks == evaluate(echoed, POLICY, now).clocks


def test_a_fact_the_instance_cannot_read_makes_its_clocks_unknown_never_breached():
    t = ticket(
        tier=Tier.L2,
        public_replies=None,
        agent_actions=None,
        missing_facts=frozenset({"public_replies", "agent_actions"}),
    )
    decision = evaluate(t, POLICY, T0 + 8 * H)
    for name in ("first_response", "customer_update", "acknowledgment", "assessment"):
        assert clock(decision, name).state is ClockState.UNKNOWN, name
    assert not any(signal.kind in ("breached", "update_due") for signal in decision.signals)


def test_management_clocks_stop_at_the_first_action_and_reply_after_the_start():
    start = T0 + 1 * H
    t = ticket(agent_actions=(start + 10 * M, start + 3 * H), public_replies=(start + 20 * M, start + 3 * H))
    decision = evaluate(t, POLICY, start + 4 * H, EscalationHistory(management_started_at=start))
    ack = clock(decision, "mgmt_acknowledgment")
    assert ack.state is ClockState.MET and ack.elapsed == 10 * M
    contact = clock(decision, "mgmt_customer_contact")
    assert contact.state is ClockState.MET and contact.elapsed == 20 * M
    assert clock(decision, "mgmt_update").elapsed == 1 * H


def test_internal_notes_since_the_tier_entry_for_the_handoff():
    t = ticket(internal_notes=(T0 + 5 * M, T0 + 2 * H, T0 + 3 * H))
    assert t.internal_notes_since(T0 + 1 * H) == (2, T0 + 3 * H)
    assert t.internal_notes_since(T0 + 4 * H) == (0, None)
    assert ticket(internal_notes=None).internal_notes_since(T0) is None

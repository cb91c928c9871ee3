"""evaluate(): every trigger of the default policy (config.example.toml), clocks, signals and the handoff key.

Times: T0 is Tuesday 2026-11-24 09:00 UTC = 10:00 in Berlin, inside the default business_hours calendar
(Europe/Berlin, weekdays 09:00-17:00, i.e. 08:00-16:00 UTC in winter). P1 runs on the 24x7 calendar.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.escalate import evaluate
from engine.model import (
    ClockState,
    EscalationHistory,
    Flags,
    Priority,
    Status,
    TagSignal,
    Ticket,
    Tier,
)
from engine.policy import load_policy, policy_from_dict

CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
POLICY = load_policy(CONFIG)
H = timedelta(hours=1)
M = timedelta(minutes=1)
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def ticket(**changes) -> Ticket:
    base = Ticket(
        platform="zendesk",
        instance="acme",
        id="42",
        key="42",
        url="https://acme.zendesk.com/agent/tickets/42",
        subject="Export fails",
        status=Status.OPEN,
        priority=Priority.P3,
        created_at=T0,
        updated_at=T0,
        description="The nightly export fails with error 500.\nSince Monday.",
        first_public_reply_at=T0 + 10 * M,
        last_public_reply_at=T0 + 10 * M,
        last_agent_action_at=T0 + 10 * M,
        tier=Tier.L1,
        tier_entered_at=T0,
    )
    return replace(base, **changes)


def flags(**values) -> Flags:
    return Flags(**values)


FRI_SAT = datetime(2026, 11, 28, 20, tzinfo=UTC)

TRIGGERS = [
    # case, ticket changes, now, history, target tier, rules expected to fire, management
    ("L1 within its 2 business hours", {}, T0 + 1 * H, None, Tier.L1, set(), False),
    ("L1 over 2 business hours -> L2", {}, T0 + 2 * H + 30 * M, None, Tier.L2, {"l1-time-limit"}, False),
    ("L1 overnight is business time only", {}, T0 + 24 * H, None, Tier.L2, {"l1-time-limit"}, False),
    (
        "created Saturday, Monday 09:00 UTC is 1 business hour",
        {
            "created_at": FRI_SAT,
            "tier_entered_at": FRI_SAT,
            "first_public_reply_at": FRI_SAT + M,
            "last_public_reply_at": FRI_SAT + M,
            "last_agent_action_at": FRI_SAT + M,
        },
        datetime(2026, 11, 30, 9, tzinfo=UTC),
        None,
        Tier.L1,
        set(),
        False,
    ),
    ("L2 within 8 business hours", {"tier": Tier.L2}, T0 + 7 * H, None, Tier.L2, set(), False),
    ("L2 over 8 business hours -> L3", {"tier": Tier.L2}, T0 + 25 * H, None, Tier.L3, {"l2-time-limit"}, False),
    (
        "engineering required at L2 -> L3",
        {"tier": Tier.L2, "flags": flags(engineering_required=True)},
        T0 + H,
        None,
        Tier.L3,
        {"engineering-required"},
        False,
    ),
    (
        "engineering required at L1 is not this rule's business",
        {"flags": flags(engineering_required=True)},
        T0 + H,
        None,
        Tier.L1,
        set(),
        False,
    ),
    (
        "vendor dependency at L3 -> L4",
        {"tier": Tier.L3, "flags": flags(vendor_dependency=True)},
        T0 + H,
        None,
        Tier.L4,
        {"vendor-dependency"},
        False,
    ),
    (
        "customer requested -> L2",
        {"flags": flags(customer_requested=True)},
        T0 + H,
        None,
        Tier.L2,
        {"customer-requested"},
        False,
    ),
    (
        "many affected customers -> L3",
        {"flags": flags(affected_customers=12)},
        T0 + H,
        None,
        Tier.L3,
        {"broad-impact"},
        False,
    ),
    ("linked incidents -> L3", {"flags": flags(linked_incidents=3)}, T0 + H, None, Tier.L3, {"broad-impact"}, False),
    ("few affected customers", {"flags": flags(affected_customers=9)}, T0 + H, None, Tier.L1, set(), False),
    (
        "revenue at risk -> L2",
        {"flags": flags(revenue_at_risk=20000.0)},
        T0 + H,
        None,
        Tier.L2,
        {"revenue-impact"},
        False,
    ),
    (
        "large revenue at risk -> L2 and management",
        {"flags": flags(revenue_at_risk=60000.0)},
        T0 + H,
        None,
        Tier.L2,
        {"revenue-impact", "mgmt-revenue"},
        True,
    ),
    ("reopened twice -> L2", {"flags": flags(reopen_count=2)}, T0 + H, None, Tier.L2, {"repeated-failure"}, False),
    (
        "customer escalated 3 times in 30 days: a new ticket of theirs is not a repeated failure",
        {},
        T0 + H,
        EscalationHistory(customer_escalations_30d=3),
        Tier.L1,
        set(),
        False,
    ),
    (
        "customer asks again after 3 escalations in 30 days -> management",
        {"flags": flags(customer_requested=True)},
        T0 + H,
        EscalationHistory(customer_escalations_30d=3),
        Tier.L2,
        {"customer-requested", "mgmt-repeat-customer"},
        True,
    ),
    (
        "security -> L3 and management",
        {"flags": flags(security_legal=True)},
        T0 + H,
        None,
        Tier.L3,
        {"security-legal"},
        True,
    ),
    (
        "enterprise P2 open over 4 h -> management",
        {"segment": "enterprise", "priority": Priority.P2},
        T0 + 4 * H + M,
        None,
        Tier.L2,
        {"mgmt-enterprise-major-open", "l1-time-limit"},
        True,
    ),
    (
        "enterprise P3 open long: no management",
        {"segment": "enterprise"},
        T0 + 5 * H,
        None,
        Tier.L2,
        {"l1-time-limit"},
        False,
    ),
    (
        "churn threat -> management",
        {"flags": flags(churn_threat=True)},
        T0 + H,
        None,
        Tier.L1,
        {"mgmt-churn-threat"},
        True,
    ),
    (
        "public complaint -> management",
        {"flags": flags(public_complaint=True)},
        T0 + H,
        None,
        Tier.L1,
        {"mgmt-public-complaint"},
        True,
    ),
    (
        "first response breached at L1 -> L2",
        {"priority": Priority.P2, "first_public_reply_at": None, "last_public_reply_at": None},
        T0 + H + 59 * M,
        None,
        Tier.L1,
        set(),
        False,
    ),
    (
        "P2 first response breached at L1 -> L2",
        {"priority": Priority.P2, "first_public_reply_at": None, "last_public_reply_at": None},
        T0 + 2 * H + M,
        None,
        Tier.L2,
        {"sla-breached-at-front-line", "l1-time-limit"},
        False,
    ),
    (
        "P1 resolution at risk at L2 -> L3",
        {"priority": Priority.P1, "tier": Tier.L2},
        T0 + 6 * H + 30 * M,
        None,
        Tier.L3,
        {"p1-resolution-at-risk"},
        False,
    ),
    (
        "priority raised to P1 mid-life: its first-response target applies from creation",
        {"priority": Priority.P1, "first_public_reply_at": None, "last_public_reply_at": None},
        T0 + 45 * M,
        None,
        Tier.L2,
        {"sla-breached-at-front-line"},
        False,
    ),
    (
        "same ticket as P3: nothing yet",
        {"first_public_reply_at": None, "last_public_reply_at": None},
        T0 + 45 * M,
        None,
        Tier.L1,
        set(),
        False,
    ),
    (
        "tier entered twice: hours count from the latest entry",
        {"tier": Tier.L2, "tier_entered_at": T0 + 48 * H},
        T0 + 50 * H,
        EscalationHistory(tier_entries=((Tier.L2, T0), (Tier.L2, T0 + 48 * H))),
        Tier.L2,
        set(),
        False,
    ),
    (
        "tier entry unknown on the platform: our record is used",
        {"tier": Tier.L2, "tier_entered_at": None},
        T0 + 50 * H,
        EscalationHistory(tier_entries=((Tier.L2, T0 + 48 * H),)),
        Tier.L2,
        set(),
        False,
    ),
    (
        "never lower: L3 ticket with an L2 rule firing",
        {"tier": Tier.L3, "flags": flags(customer_requested=True)},
        T0 + H,
        None,
        Tier.L3,
        {"customer-requested"},
        False,
    ),
    (
        "pending ticket does not age at its tier",
        {"status": Status.PENDING, "updated_at": T0 + 30 * M},
        T0 + 5 * H,
        None,
        Tier.L1,
        set(),
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "changes", "now", "history", "tier", "fired", "management"), TRIGGERS, ids=[row[0] for row in TRIGGERS]
)
def test_triggers(case, changes, now, history, tier, fired, management):
    decision = evaluate(ticket(**changes), POLICY, now, history or EscalationHistory())
    assert {rule.name for rule in decision.fired} == fired
    assert decision.target_tier == tier
    assert decision.management is management
    assert len(decision.rules) == len(POLICY.rules)


def test_chained_escalation_goes_to_the_fixpoint_in_one_step():
    overdue = ticket(flags=flags(engineering_required=True, vendor_dependency=True))
    decision = evaluate(overdue, POLICY, T0 + 3 * H)
    assert decision.target_tier is Tier.L4
    reasons = {rule.name: rule.reason for rule in decision.fired}
    assert reasons["l1-time-limit"] == "at L1 for 3h business time, limit 2h"
    assert reasons["engineering-required"].startswith("once at L2: ticket.tier = 'L2'")
    assert reasons["vendor-dependency"].startswith("once at L3: ticket.tier = 'L3'")
    assert decision.comment is not None and decision.comment.idempotency_key == "acme:42:L4"
    # The tier clocks are the target tier's, from now: what the ticket shows after the write.
    ack = next(clock for clock in decision.clocks if clock.name == "acknowledgment")
    assert (ack.target, ack.elapsed) == (H, timedelta(0))


def test_fired_time_rule_explains_which_fact():
    decision = evaluate(ticket(), POLICY, T0 + 2 * H + 30 * M)
    (rule,) = decision.fired
    assert rule.reason == "at L1 for 2h30m business time, limit 2h"
    assert rule.target_tier is Tier.L2
    not_fired = next(outcome for outcome in decision.rules if outcome.name == "l2-time-limit")
    assert not_fired.reason.startswith("not met: ticket.tier = 'L1'")


@pytest.mark.parametrize("status", [Status.SOLVED, Status.CLOSED, Status.DELETED])
def test_never_escalates_a_finished_ticket(status):
    finished = ticket(status=status, solved_at=T0 + 30 * H, flags=flags(security_legal=True, churn_threat=True))
    decision = evaluate(finished, POLICY, T0 + 40 * H)
    assert decision.target_tier is Tier.L1
    assert not decision.management
    assert decision.comment is None
    assert not decision.fired
    assert all(rule.reason == f"not evaluated: ticket is {status.value}" for rule in decision.rules)
    assert all(clock.state is ClockState.MET for clock in decision.clocks)


def test_finished_ticket_keeps_breached_tags_as_history():
    finished = ticket(status=Status.SOLVED, solved_at=T0 + 30 * H)  # resolution P3 = 72 business hours: met
    late = ticket(priority=Priority.P1, status=Status.SOLVED, solved_at=T0 + 30 * H)  # P1 8h on 24x7: met late
    assert TagSignal("breached", "resolution") not in evaluate(finished, POLICY, T0 + 40 * H).signals
    decision = evaluate(late, POLICY, T0 + 40 * H)
    resolution = next(clock for clock in decision.clocks if clock.name == "resolution")
    assert resolution.state is ClockState.MET
    assert resolution.breached_at == T0 + 8 * H
    assert TagSignal("breached", "resolution") in decision.signals


@pytest.mark.parametrize(
    ("case", "changes", "now", "state"),
    [
        ("L2 ack within 15 min", {"tier": Tier.L2, "last_agent_action_at": T0 - H}, T0 + 10 * M, ClockState.OK),
        ("L2 ack at risk", {"tier": Tier.L2, "last_agent_action_at": T0 - H}, T0 + 12 * M, ClockState.AT_RISK),
        (
            "L2 ack breached: action before entry does not count",
            {"tier": Tier.L2, "last_agent_action_at": T0 - H},
            T0 + 20 * M,
            ClockState.BREACHED,
        ),
        (
            "L2 acked by action after entry",
            {"tier": Tier.L2, "last_agent_action_at": T0 + 5 * M},
            T0 + 2 * H,
            ClockState.MET,
        ),
        ("L3 ack is 30 min", {"tier": Tier.L3, "last_agent_action_at": None}, T0 + 20 * M, ClockState.OK),
        ("L4 ack is 1 h", {"tier": Tier.L4, "last_agent_action_at": None}, T0 + 61 * M, ClockState.BREACHED),
    ],
)
def test_acknowledgment_clock(case, changes, now, state):
    decision = evaluate(ticket(**changes), POLICY, now)
    ack = next(clock for clock in decision.clocks if clock.name == "acknowledgment")
    assert ack.state is state, case


def test_l1_has_no_acknowledgment_clock_and_assessment_targets_by_tier():
    assert "acknowledgment" not in {clock.name for clock in evaluate(ticket(), POLICY, T0 + H).clocks}
    l3 = evaluate(ticket(tier=Tier.L3, last_public_reply_at=T0 - H), POLICY, T0 + H)
    assessment = next(clock for clock in l3.clocks if clock.name == "assessment")
    assert assessment.target == 4 * H
    assert assessment.remaining == 3 * H


@pytest.mark.parametrize(
    ("case", "changes", "now", "signal"),
    [
        ("update cadence overdue", {"priority": Priority.P2}, T0 + 5 * H, TagSignal("update_due")),
        (
            "first response at risk",
            {"priority": Priority.P2, "first_public_reply_at": None, "last_public_reply_at": None},
            T0 + 90 * M,
            TagSignal("at_risk", "first_response"),
        ),
        (
            "first response met late stays breached",
            {"priority": Priority.P2, "first_public_reply_at": T0 + 3 * H, "last_public_reply_at": T0 + 3 * H},
            T0 + 4 * H,
            TagSignal("breached", "first_response"),
        ),
        ("management", {"flags": flags(churn_threat=True)}, T0 + H, TagSignal("management")),
    ],
)
def test_signals(case, changes, now, signal):
    assert signal in evaluate(ticket(**changes), POLICY, now).signals, case


def test_no_update_due_right_after_a_reply():
    decision = evaluate(ticket(priority=Priority.P2, last_public_reply_at=T0 + 4 * H), POLICY, T0 + 5 * H)
    assert TagSignal("update_due") not in decision.signals


def test_update_cadence_counts_from_the_first_reply_when_the_last_is_unknown():
    # P2: an update every 4 business hours. Created 09:00, first reply 13:00, last reply unknown (Zendesk).
    known_first = ticket(priority=Priority.P2, first_public_reply_at=T0 + 4 * H, last_public_reply_at=None)
    clock = next(c for c in evaluate(known_first, POLICY, T0 + 5 * H).clocks if c.name == "customer_update")
    assert clock.elapsed == H
    assert TagSignal("update_due") not in evaluate(known_first, POLICY, T0 + 5 * H).signals
    never = replace(known_first, first_public_reply_at=None)
    assert TagSignal("update_due") in evaluate(never, POLICY, T0 + 5 * H).signals


def test_comment_keys():
    escalated = evaluate(ticket(), POLICY, T0 + 3 * H)
    assert escalated.comment is not None
    assert escalated.comment.idempotency_key == "acme:42:L2"
    managed = evaluate(ticket(flags=flags(churn_threat=True)), POLICY, T0 + H)
    assert managed.comment is not None
    assert managed.comment.idempotency_key == "acme:42:MGMT"
    assert evaluate(ticket(), POLICY, T0 + H).comment is None


def test_management_track_is_sticky_and_runs_its_clocks_from_the_recorded_start():
    started = EscalationHistory(management_started_at=T0 + H)
    decision = evaluate(
        ticket(tier=Tier.L2, last_agent_action_at=T0 + H + 10 * M), POLICY, T0 + 3 * H + 30 * M, started
    )
    assert decision.management
    assert decision.comment is None  # the track started earlier: nothing new to announce
    clocks = {clock.name: clock for clock in decision.clocks}
    assert clocks["mgmt_acknowledgment"].state is ClockState.MET
    assert clocks["mgmt_customer_contact"].state is ClockState.BREACHED  # 2h after T0+1h, no public reply since
    assert clocks["mgmt_customer_contact"].breached_at == T0 + 3 * H
    assert TagSignal("breached", "mgmt_customer_contact") in decision.signals


def test_deescalation_only_when_allowed():
    data = copy.deepcopy(tomllib.loads(CONFIG.read_text())["policy"])
    data["rules"].append(
        {"name": "back-to-front-line", "when": "ticket.tags.exists(t, t == 'back')", "tier": "L1", "deescalate": True}
    )
    strict = policy_from_dict(data)
    data["allow_deescalation"] = True
    lenient = policy_from_dict(data)
    l3 = ticket(tier=Tier.L3, tags=frozenset({"back"}))
    assert evaluate(l3, strict, T0 + H).target_tier is Tier.L3
    assert evaluate(l3, lenient, T0 + H).target_tier is Tier.L1
    assert evaluate(l3, lenient, T0 + H).comment is None


def test_next_tier_target_and_runtime_errors_do_not_crash():
    data = copy.deepcopy(tomllib.loads(CONFIG.read_text())["policy"])
    data["rules"] = [
        {"name": "bump", "when": "flags.customer_requested", "tier": "next"},
        {"name": "bad-types", "when": "flags.reopen_count > 0 && flags.reopen_count + 1.0 > 2.0", "tier": "L4"},
    ]
    policy = policy_from_dict(data)
    decision = evaluate(ticket(tier=Tier.L3, flags=flags(customer_requested=True, reopen_count=1)), policy, T0 + H)
    assert decision.target_tier is Tier.L4
    bad = decision.rules[1]
    assert not bad.fired
    assert bad.reason.startswith("error:")


def test_conditions_run_together_keep_their_own_results_and_errors():
    # The rules that run on every ticket (hours, ages) are evaluated as one CEL list; one failing element must
    # not take the others down, and must report its own error as when each rule ran alone.
    from engine.escalate import _prepare

    data = copy.deepcopy(tomllib.loads(CONFIG.read_text())["policy"])
    data["rules"] = [
        {"name": "old", "when": "ticket.age_hours > 1.0 // a comment ends at the line's end", "tier": "L2"},
        {"name": "bad-old", "when": "ticket.age_hours > 1.0 && flags.reopen_count + 1.0 > 2.0", "tier": "L4"},
        {"name": "young", "when": "ticket.age_hours < 1.0", "tier": "L3"},
    ]
    policy = policy_from_dict(data)
    assert _prepare(policy).batch is not None
    item = ticket(flags=flags(reopen_count=1))
    late = evaluate(item, policy, T0 + 3 * H)
    old, bad, young = late.rules
    assert old.fired and old.target_tier is Tier.L2
    assert not bad.fired and bad.reason.startswith("error:")
    assert not young.fired and young.reason.startswith("not met: ticket.age_hours = 3.00h")
    assert late.target_tier is Tier.L2
    early = evaluate(item, policy, T0 + 30 * M)  # the failing condition is false before it reaches the error
    assert [rule.fired for rule in early.rules] == [False, False, True]
    assert early.rules[1].reason.startswith("not met: ")
    assert early.target_tier is Tier.L3


def test_now_in_another_zone_is_normalized():
    from zoneinfo import ZoneInfo

    local_now = (T0 + 3 * H).astimezone(ZoneInfo("America/New_York"))
    assert evaluate(ticket(), POLICY, local_now) == evaluate(ticket(), POLICY, T0 + 3 * H)


def test_decisions_do_not_depend_on_the_order_of_evaluation():
    # The CEL activation is reused between tickets (only changed facts are converted): prove nothing leaks.
    tickets = [
        ticket(),
        ticket(tier=Tier.L2, flags=flags(engineering_required=True), priority=Priority.P1),
        ticket(segment="enterprise", priority=Priority.P2, flags=flags(revenue_at_risk=60000)),
        ticket(status=Status.PENDING, flags=flags(reopen_count=3)),
        ticket(flags=flags(revenue_at_risk=60000.0)),
    ]
    moments = [T0 + H, T0 + 3 * H, T0 + 30 * H]
    forward = [evaluate(item, POLICY, now) for item in tickets for now in moments]
    backward = [evaluate(item, POLICY, now) for item in reversed(tickets) for now in reversed(moments)]
    assert forward == backward[::-1]


def test_platform_sla_and_custom_facts_in_rules():
    from engine.model import PlatformSla

    data = copy.deepcopy(tomllib.loads(CONFIG.read_text())["policy"])
    data["rules"] = [
        {"name": "platform-breach", "when": "platform_slas.any_breached", "tier": "L2"},
        {"name": "vip-tag", "when": "'vip' in ticket.tags && ticket.is_open", "management": True},
        {
            "name": "ack-overdue",
            "when": "clocks.acknowledgment.remaining_minutes < -10.0",
            "tier": "next",
            "reason": "acknowledgment {clocks.acknowledgment.remaining_minutes} left at {ticket.tier}",
        },
    ]
    policy = policy_from_dict(data)
    slas = (PlatformSla("Time to resolution", breached=True), PlatformSla("Time to first response", breached=False))
    decision = evaluate(ticket(platform_slas=slas, tags=frozenset({"vip"})), policy, T0 + H)
    assert [rule.name for rule in decision.fired] == ["platform-breach", "vip-tag"]
    assert decision.fired[0].reason == "platform_slas.any_breached = true"
    assert decision.management
    late = evaluate(ticket(tier=Tier.L2, last_agent_action_at=None), policy, T0 + 30 * M)
    assert late.target_tier is Tier.L3
    assert late.fired[0].reason == "acknowledgment -15.0min left at L2"


def test_follow_the_sun_calendar_from_the_example_config():
    data = copy.deepcopy(tomllib.loads(CONFIG.read_text())["policy"])
    data["sla"]["P2"]["calendar"] = "follow_the_sun"
    policy = policy_from_dict(data)
    saturday = datetime(2026, 11, 28, 10, tzinfo=UTC)  # every member closed: Saturday in all three zones
    decision = evaluate(
        ticket(
            priority=Priority.P2,
            created_at=saturday,
            tier_entered_at=saturday,
            first_public_reply_at=None,
            last_public_reply_at=None,
        ),
        policy,
        saturday + 20 * H,
    )
    first_response = next(clock for clock in decision.clocks if clock.name == "first_response")
    assert first_response.calendar == "follow_the_sun"
    assert first_response.elapsed == timedelta(0)
    # Singapore opens Monday 08:00 SGT = Sunday 00:00 UTC: due two business hours later.
    assert first_response.due_at == datetime(2026, 11, 30, 2, tzinfo=UTC)

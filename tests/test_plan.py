"""plan(): only the difference. The echo of our own write and a replay plan nothing; foreign tags stay."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.escalate import evaluate
from engine.model import ClockState, Decision, Flags, Priority, Status, TagScheme, TagSignal, Ticket, Tier, WriteBack
from engine.plan import plan
from engine.policy import load_policy

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
TAGS = TagScheme()
H = timedelta(hours=1)
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def ticket(**changes) -> Ticket:
    base = Ticket(
        platform="jsm",
        instance="acme-jsm",
        id="10001",
        key="SUP-1",
        url="",
        subject="Login broken",
        status=Status.OPEN,
        priority=Priority.P2,
        created_at=T0,
        updated_at=T0,
        first_public_reply_at=T0 + H / 2,
        last_public_reply_at=T0 + 3 * H,
        last_agent_action_at=T0 + 3 * H,
        tier=Tier.L1,
        tier_entered_at=T0,
        tags=frozenset({"vip", "billing"}),
        revision="7",
    )
    return replace(base, **changes)


def echo(observed: Ticket, writeback: WriteBack, at: datetime) -> Ticket:
    """What the platform shows after applying the write-back (and what the next poll returns)."""
    tags = (observed.tags | writeback.add_tags) - writeback.remove_tags
    tier = writeback.tier or observed.tier
    entered = at if writeback.tier else observed.tier_entered_at
    return replace(observed, tags=tags, tier=tier, tier_entered_at=entered, updated_at=at, revision="8")


CASES = [
    ("time limit escalation", {}, T0 + 3 * H + 10 * timedelta(minutes=1)),
    ("management and tier", {"flags": Flags(security_legal=True)}, T0 + H),
    ("management only", {"flags": Flags(churn_threat=True)}, T0 + H),
    ("breached first response", {"first_public_reply_at": None, "last_public_reply_at": None}, T0 + 2 * H + H / 2),
    ("nothing to do", {}, T0 + H),
    ("chained escalation", {"flags": Flags(engineering_required=True)}, T0 + 4 * H),
    ("old tier's acknowledgment breached", {"tier": Tier.L2, "last_agent_action_at": None}, T0 + 9 * H),
]


@pytest.mark.parametrize(("case", "changes", "now"), CASES, ids=[row[0] for row in CASES])
def test_echo_and_replay_cost_zero_writes(case, changes, now):
    observed = ticket(**changes)
    decision = evaluate(observed, POLICY, now)
    first = plan(decision, observed, TAGS)
    echoed = echo(observed, first, now)
    assert plan(decision, echoed, TAGS).is_empty, "replaying the same decision"
    assert plan(evaluate(echoed, POLICY, now), echoed, TAGS).is_empty, "the echo of our own write"


def test_escalation_write_back():
    observed = ticket(tags=frozenset({"vip", "esc_at_risk_resolution"}))
    decision = evaluate(observed, POLICY, T0 + 3 * H + H / 6)
    writeback = plan(decision, observed, TAGS)
    assert writeback.tier is Tier.L2
    assert writeback.comment is not None and writeback.comment.idempotency_key == "acme-jsm:10001:L2"
    assert writeback.remove_tags == {"esc_at_risk_resolution"}
    assert "vip" not in writeback.add_tags | writeback.remove_tags
    assert writeback.revision == "7"
    assert writeback.key == "acme-jsm:10001:L2"


def test_tags_we_do_not_manage_are_never_touched():
    foreign = frozenset({"vip", "esc_breached_", "escalation", "esc_management_old", "sla_breached"})
    observed = ticket(tags=foreign | {"esc_breached_resolution", "esc_customer_update_due"})
    writeback = plan(evaluate(observed, POLICY, T0 + H), observed, TAGS)
    assert writeback.remove_tags == {"esc_breached_resolution", "esc_customer_update_due"}
    assert not (writeback.add_tags | writeback.remove_tags) & foreign


def test_met_clock_keeps_its_breached_tag():
    late = ticket(first_public_reply_at=T0 + 3 * H, tags=frozenset({"esc_breached_first_response"}))
    writeback = plan(evaluate(late, POLICY, T0 + 4 * H), late, TAGS)
    assert "esc_breached_first_response" not in writeback.remove_tags


def test_management_comment_only_when_the_track_newly_starts():
    observed = ticket(flags=Flags(churn_threat=True))
    decision = evaluate(observed, POLICY, T0 + H)
    assert plan(decision, observed, TAGS).comment is not None
    tagged = replace(observed, tags=observed.tags | {"esc_management"})
    assert plan(decision, tagged, TAGS).is_empty


def test_never_lowers_a_tier_the_platform_raised_meanwhile():
    observed = ticket()
    decision = evaluate(observed, POLICY, T0 + 3 * H + H / 6)
    assert decision.target_tier is Tier.L2
    raised = replace(observed, tier=Tier.L3, tier_entered_at=T0 + 3 * H)
    writeback = plan(decision, raised, TAGS)
    assert writeback.tier is None
    assert writeback.comment is None


HELD = frozenset(
    {
        "esc_breached_first_response",  # SLA clock, by name
        "esc_customer_update_due",  # the cadence clock's
        "esc_l2_breached_acknowledgment",  # tier clocks, by name and tier
        "esc_l2_at_risk_assessment",
    }
)


def unreadable_history(**changes) -> Ticket:
    """An L2 ticket whose replies and actions cannot be read this time (e.g. the event book is catching up)."""
    return ticket(
        tier=Tier.L2,
        first_public_reply_at=None,
        last_public_reply_at=None,
        last_agent_action_at=None,
        missing_facts=frozenset({"public_replies", "agent_actions"}),
        **changes,
    )


def test_the_tags_of_an_unknown_clock_stay_as_they_are():
    observed = unreadable_history(tags=HELD | {"vip", "esc_at_risk_resolution", "esc_l3_breached_acknowledgment"})
    decision = evaluate(observed, POLICY, T0 + H)
    unknown = {(clock.name, clock.tier) for clock in decision.clocks if clock.state is ClockState.UNKNOWN}
    assert unknown == {
        ("first_response", None),
        ("customer_update", None),
        ("acknowledgment", Tier.L2),
        ("assessment", Tier.L2),
    }, "precondition: these four clocks cannot be measured"
    writeback = plan(decision, observed, TAGS)
    # Known clocks are planned as ever: resolution is not at risk, and L3's tag names no clock of this ticket.
    assert writeback.remove_tags == {"esc_at_risk_resolution", "esc_l3_breached_acknowledgment"}
    assert not writeback.add_tags
    assert writeback.tags is not None and writeback.tags >= HELD, "a platform writing its tags whole keeps them"


def test_an_unknown_clock_neither_removes_nor_adds_its_tags():
    held = unreadable_history(tags=HELD)
    decision = evaluate(held, POLICY, T0 + H)
    assert plan(decision, held, TAGS).is_empty, "the tags written when the facts were known stay"
    untagged = unreadable_history()
    assert not plan(evaluate(untagged, POLICY, T0 + H), untagged, TAGS).add_tags & HELD


def _decision(current: Tier, target: Tier, signals=frozenset()) -> Decision:
    return Decision(
        platform="jsm",
        instance="acme-jsm",
        ticket_id="10001",
        evaluated_at=T0,
        current_tier=current,
        target_tier=target,
        management=False,
        clocks=(),
        rules=(),
        signals=signals,
    )


def test_deescalation_decided_by_policy_is_written():
    assert plan(_decision(Tier.L3, Tier.L1), ticket(tier=Tier.L3), TAGS).tier is Tier.L1


def test_mapping_tag_scheme_is_used():
    scheme = TagScheme(breached="sla_{clock}_late", at_risk="sla_{clock}_risk", management="mgmt", update_due="upd")
    observed = ticket(tags=frozenset({"sla_resolution_risk", "esc_at_risk_resolution"}))
    decision = _decision(
        Tier.L1, Tier.L1, frozenset({TagSignal("breached", "first_response"), TagSignal("update_due")})
    )
    writeback = plan(decision, observed, scheme)
    assert writeback.add_tags == {"sla_first_response_late", "upd"}
    assert writeback.remove_tags == {"sla_resolution_risk"}  # the esc_ tag belongs to another scheme


@pytest.mark.parametrize("status", [Status.CLOSED, Status.DELETED])
def test_closed_and_deleted_tickets_get_no_write(status: Status) -> None:
    late = ticket(tier_entered_at=T0 - 30 * H, created_at=T0 - 30 * H)
    decision = evaluate(late, POLICY, T0 + 5 * H)
    assert not plan(decision, late, TAGS).is_empty, "precondition: the open ticket would be written"
    assert plan(decision, replace(late, status=status), TAGS).is_empty


def test_explain_shows_ticket_clocks_rules_and_write_back():
    import json

    from engine.report import explain, explain_dict

    observed = ticket(tags=frozenset({"vip", "esc_at_risk_resolution"}))
    decision = evaluate(observed, POLICY, T0 + 3 * H + H / 6)
    writeback = plan(decision, observed, TAGS)
    text = explain(observed, decision, writeback)
    assert "Ticket SUP-1 (jsm/acme-jsm) 'Login broken'" in text
    assert "tier L1 -> L2 (escalates)" in text
    for clock in decision.clocks:
        assert f"  {clock.name:<22} {clock.state.value}" in text
    assert "[FIRED] l1-time-limit (L2): at L1 for 3h10m business time, limit 2h" in text
    assert "[     ] l2-time-limit (L3): not met: ticket.tier = 'L1'" in text
    assert "set tier L2" in text and "remove tags esc_at_risk_resolution" in text
    assert writeback.comment is not None and writeback.comment.marker in text

    data = json.loads(json.dumps(explain_dict(observed, decision, writeback)))
    assert data["target_tier"] == "L2" and data["escalates"] is True
    assert data["ticket"]["tags"] == ["esc_at_risk_resolution", "vip"]
    assert [rule["name"] for rule in data["rules"]] == [rule.name for rule in POLICY.rules]
    assert data["writeback"]["tier"] == "L2"
    assert data["writeback"]["comment_key"] == "acme-jsm:10001:L2"
    first = data["clocks"][0]
    assert set(first) >= {"name", "state", "elapsed_seconds", "remaining_seconds", "due_at", "breached_at"}


def test_explain_of_an_empty_write_back():
    from engine.report import explain

    observed = ticket()
    decision = evaluate(observed, POLICY, T0 + H)
    assert "nothing to write" in explain(observed, decision, plan(decision, observed, TAGS))

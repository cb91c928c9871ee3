"""Issue 9, items 6-8: the management track's lifecycle, defaults that escalated the wrong tickets, explain = cycle.

Times: T0 is Tuesday 2026-11-24 09:00 UTC = 10:00 in Berlin, inside the default business_hours calendar
(weekdays 09:00-17:00 Berlin, 08:00-16:00 UTC in winter). The management track runs on the 24x7 calendar.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.escalate import evaluate
from engine.model import ClockState, EscalationHistory, Flags, Priority, Status, TagSignal, Ticket, Tier
from engine.policy import load_policy, policy_from_dict
from mappings import load_mapping

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.example.toml"
POLICY = load_policy(CONFIG)
H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
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
        first_public_reply_at=T0 + 10 * M,
        last_public_reply_at=T0 + 10 * M,
        last_agent_action_at=T0 + 10 * M,
        tier=Tier.L1,
        tier_entered_at=T0,
    )
    return replace(base, **changes)


def policy_with(**changes) -> dict:
    data = copy.deepcopy(tomllib.loads(CONFIG.read_text(encoding="utf-8"))["policy"])
    data.update(changes)
    return data


# -- item 7 (a): repeated-failure follows the seeds ------------------------------------------------------------


def test_issue9_item7a_new_ticket_of_a_customer_with_three_escalations_stays_at_l1() -> None:
    """A one-minute-old P4 how-to of a customer with 3 escalated tickets in 30 days is not a repeated failure."""
    howto = ticket(priority=Priority.P4, created_at=T0, tier_entered_at=T0)
    decision = evaluate(howto, POLICY, T0 + M, EscalationHistory(customer_escalations_30d=3))
    assert decision.target_tier is Tier.L1
    assert "repeated-failure" not in {rule.name for rule in decision.fired}


def test_issue9_item7a_the_same_issue_raised_three_times_escalates() -> None:
    """Reported once and reopened twice: the same issue raised three times by the customer."""
    again = ticket(flags=Flags(reopen_count=2))
    decision = evaluate(again, POLICY, T0 + M)
    assert decision.target_tier is Tier.L2
    assert "repeated-failure" in {rule.name for rule in decision.fired}
    once_reopened = evaluate(ticket(flags=Flags(reopen_count=1)), POLICY, T0 + M)
    assert once_reopened.target_tier is Tier.L1


def test_issue9_item7a_its_own_escalations_do_not_feed_the_rule() -> None:
    """Whatever the customer's count grows to through our escalations, repeated-failure does not read it."""
    rule = next(rule for rule in POLICY.rules if rule.name == "repeated-failure")
    assert "history.customer_escalations_30d" not in rule.facts
    for count in (0, 3, 30):
        fired = evaluate(ticket(), POLICY, T0 + M, EscalationHistory(customer_escalations_30d=count)).fired
        assert "repeated-failure" not in {outcome.name for outcome in fired}


# -- item 7 (b): revenue at risk is a ticket's, not the organization's annual revenue --------------------------


def _zendesk_raw(org_fields: dict, ticket_fields: list) -> tuple[dict, dict]:
    """A ticket and its side-loaded organization, in the shape of GET /api/v2/tickets/{id}?include=organizations
    (https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#show-ticket). Decimal ticket fields
    come back as strings; organization_fields as the JSON types of their field types."""
    record = {
        "url": "https://acme.zendesk.com/api/v2/tickets/4101.json",
        "id": 4101,
        "external_id": None,
        "via": {"channel": "web", "source": {"from": {}, "to": {}, "rel": None}},
        "created_at": "2026-11-24T09:00:00Z",
        "updated_at": "2026-11-24T09:00:00Z",
        "type": "question",
        "subject": "How do I export a report?",
        "raw_subject": "How do I export a report?",
        "description": "Where is the export button?",
        "priority": "low",
        "status": "open",
        "recipient": None,
        "requester_id": 383838001,
        "submitter_id": 383838001,
        "assignee_id": None,
        "organization_id": 360011112222,
        "group_id": 360000000101,
        "collaborator_ids": [],
        "follower_ids": [],
        "email_cc_ids": [],
        "forum_topic_id": None,
        "problem_id": None,
        "has_incidents": False,
        "is_public": True,
        "due_at": None,
        "tags": [],
        "custom_fields": ticket_fields,
        "satisfaction_rating": None,
        "sharing_agreement_ids": [],
        "fields": ticket_fields,
        "followup_ids": [],
        "ticket_form_id": 360000444001,
        "brand_id": 360000333001,
        "allow_channelback": False,
        "allow_attachments": True,
        "from_messaging_channel": False,
    }
    organization = {
        "url": "https://acme.zendesk.com/api/v2/organizations/360011112222.json",
        "id": 360011112222,
        "name": "Globex Corporation",
        "shared_tickets": False,
        "shared_comments": False,
        "external_id": None,
        "created_at": "2024-02-01T12:00:00Z",
        "updated_at": "2026-10-02T09:30:00Z",
        "domain_names": ["globex.example"],
        "details": "",
        "notes": "",
        "group_id": None,
        "tags": [],
        "organization_fields": org_fields,
    }
    return record, {"organization": organization}


def test_issue9_item7b_zendesk_default_mapping_does_not_read_annual_revenue() -> None:
    """A P4 of an organization with $2M annual revenue has no revenue at risk and stays off the management track."""
    from connectors.base import RawRecord

    mapping = load_mapping("zendesk")
    record, related = _zendesk_raw({"annual_revenue": 2_000_000.0, "segment": "Standard", "churn_risk": False}, [])
    normalized = mapping.normalize(RawRecord("4101", record, related), "acme")
    assert normalized.flags.revenue_at_risk == 0.0
    decision = evaluate(normalized, POLICY, T0 + M)
    assert not decision.management
    assert decision.target_tier is Tier.L1
    # The ticket-level field still counts.
    record, related = _zendesk_raw({"annual_revenue": 2_000_000.0}, [{"id": 360020000001, "value": "60000.0"}])
    assert mapping.normalize(RawRecord("4101", record, related), "acme").flags.revenue_at_risk == 60000.0


# -- item 7 (c): de-escalation only by rules meant to lower a tier ---------------------------------------------


def test_issue9_item7c_allow_deescalation_does_not_ping_pong() -> None:
    """An L3 ticket the customer asked to escalate: customer-requested (L2) must not pull it down."""
    lenient = policy_from_dict(policy_with(allow_deescalation=True))
    l3 = ticket(tier=Tier.L3, tier_entered_at=T0, flags=Flags(customer_requested=True))
    first = evaluate(l3, lenient, T0 + H)
    assert first.target_tier is Tier.L3
    again = evaluate(replace(l3, tier=first.target_tier), lenient, T0 + H + M)
    assert again.target_tier is first.target_tier


def test_issue9_item7c_a_deescalation_rule_lowers_and_the_next_evaluation_is_stable() -> None:
    data = policy_with(allow_deescalation=True)
    data["rules"].append(
        {"name": "back-to-front-line", "when": "ticket.tags.exists(t, t == 'back')", "tier": "L1", "deescalate": True}
    )
    lenient = policy_from_dict(data)
    l3 = ticket(tier=Tier.L3, tags=frozenset({"back"}), flags=Flags(customer_requested=True))
    first = evaluate(l3, lenient, T0 + H)
    # Lowered, but not below what the fired escalation rule (customer-requested -> L2) still asks for.
    assert first.target_tier is Tier.L2
    assert first.comment is None
    second = evaluate(replace(l3, tier=first.target_tier, tier_entered_at=T0 + H), lenient, T0 + H + M)
    assert second.target_tier is Tier.L2
    strict = policy_from_dict({**data, "allow_deescalation": False})
    assert evaluate(l3, strict, T0 + H).target_tier is Tier.L3


def test_issue9_item7c_a_deescalation_rule_needs_a_fixed_tier() -> None:
    from engine.configfile import ConfigFileError

    data = policy_with()
    data["rules"].append({"name": "down", "when": "flags.customer_requested", "tier": "next", "deescalate": True})
    with pytest.raises(ConfigFileError, match="deescalate"):
        policy_from_dict(data)


# -- item 7 (d): naive times are refused, never read as the host's local time -----------------------------------


def test_issue9_item7d_evaluate_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="naive"):
        evaluate(ticket(), POLICY, datetime(2026, 11, 24, 10, 0))


# -- item 7 (e): "L1 -> L2: > 2 hours" -------------------------------------------------------------------------


def test_issue9_item7e_l1_limit_is_strictly_more_than_two_hours_and_reviewed_a_second_later() -> None:
    at_limit = evaluate(ticket(), POLICY, T0 + 2 * H)
    assert at_limit.target_tier is Tier.L1
    assert at_limit.review_at == T0 + 2 * H + S
    after = evaluate(ticket(), POLICY, at_limit.review_at)
    assert after.target_tier is Tier.L2
    # Reviewed from earlier, the first look is at the limit itself and the one after that a second later.
    early = evaluate(ticket(), POLICY, T0 + H)
    assert early.review_at is not None and early.review_at <= T0 + 2 * H


def test_issue9_item7e_l2_limit_is_strictly_more_than_eight_hours() -> None:
    l2 = ticket(tier=Tier.L2, tier_entered_at=T0, last_agent_action_at=T0 + M, last_public_reply_at=T0 + M)
    # 8 business hours from Tuesday 09:00 UTC (10:00 Berlin): Wednesday 09:00 UTC.
    at_limit = T0 + 24 * H
    assert evaluate(l2, POLICY, at_limit).target_tier is Tier.L2
    assert evaluate(l2, POLICY, at_limit + S).target_tier is Tier.L3

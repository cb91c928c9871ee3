"""The handoff comment: the form's fields from the data, nothing invented, template editable."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.escalate import evaluate
from engine.handoff import render_template
from engine.model import Flags, Priority, Status, Ticket, Tier
from engine.policy import load_policy, policy_from_dict

CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
POLICY = load_policy(CONFIG)
H = timedelta(hours=1)
FRIDAY = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def ticket(**changes) -> Ticket:
    base = Ticket(
        platform="servicenow",
        instance="acme-snow",
        id="abc123",
        key="INC0010001",
        url="https://acme/inc/abc123",
        subject="Payments time out",
        status=Status.OPEN,
        priority=Priority.P3,
        created_at=FRIDAY,
        updated_at=FRIDAY,
        description="Line one\n\nLine two\nLine three\nLine four\nLine five\nLine six",
        first_public_reply_at=FRIDAY + H / 4,
        last_public_reply_at=FRIDAY + H / 4,
        last_agent_action_at=FRIDAY + H / 4,
        tier=Tier.L1,
        tier_entered_at=FRIDAY,
    )
    return replace(base, **changes)


def test_tier_handoff_has_every_field_of_the_form():
    now = FRIDAY + 6 * H + H / 2  # 15:30 UTC, 30 minutes before Berlin closes
    comment = evaluate(ticket(flags=Flags(affected_customers=4)), POLICY, now).comment
    assert comment is not None
    lines = comment.body.splitlines()
    assert lines[0] == "Escalation handoff: INC0010001 Payments time out https://acme/inc/abc123"
    assert "Priority: P3" in lines
    assert "Escalated from L1 Front line to L2 Specialist at 2026-11-27 15:30 UTC" in lines
    assert any(line.startswith("- resolution: ") and "remaining of 72h" in line for line in lines)
    assert lines[lines.index("Customer's description:") + 1 : lines.index("Customer's description:") + 7] == [
        "Line one",
        "Line two",
        "Line three",
        "Line four",
        "Line five",
        "[...]",
    ]
    assert "Impact: 4 customers affected" in lines
    assert "- l1-time-limit: at L1 for 6h30m business time, limit 2h" in lines
    # 15 min acknowledgment still fits Friday; the 1 h assessment runs over the weekend (business hours).
    assert "- Specialist (L2): acknowledge by 2026-11-27 15:45 UTC (15m)" in lines
    assert "- Specialist (L2): send the initial assessment by 2026-11-30 08:30 UTC (1h)" in lines
    assert "Management escalation" not in comment.body
    assert comment.text.endswith("(escalation-sync:acme-snow:abc123:L2)")


def test_fields_without_data_are_left_out():
    now = FRIDAY + 3 * H
    comment = evaluate(ticket(description=""), POLICY, now).comment
    assert comment is not None
    assert "Customer's description" not in comment.body
    assert "Impact" not in comment.body
    assert "None" not in comment.body


def test_management_handoff_lists_management_deadlines():
    now = FRIDAY + H
    managed = ticket(segment="enterprise", organization="Globex", flags=Flags(churn_threat=True))
    comment = evaluate(managed, POLICY, now).comment
    assert comment is not None
    body = comment.body
    assert "Escalated from" not in body  # no tier change
    assert "Management escalation: yes, management track started" in body
    assert "Impact: churn threat" in body
    assert "Relationship: enterprise customer (Globex)" in body  # the segment moved there (issue 9 item 9)
    # Under their own heading (issue 9 item 9), not "Receiving tier must".
    assert "Management must:\n- acknowledge by 2026-11-27 10:30 UTC\n" in body
    assert "- notify the executive sponsor by 2026-11-27 11:00 UTC" in body
    assert "- contact the customer by 2026-11-27 12:00 UTC" in body
    assert "- share a resolution plan by 2026-11-27 14:00 UTC" in body
    assert comment.idempotency_key == "acme-snow:abc123:MGMT"


def test_no_executive_notification_without_enterprise_or_revenue():
    comment = evaluate(ticket(flags=Flags(public_complaint=True)), POLICY, FRIDAY + H).comment
    assert comment is not None
    assert "executive" not in comment.body


def test_template_is_editable():
    data = copy.deepcopy(tomllib.loads(CONFIG.read_text())["policy"])
    data["handoff"] = {
        "template": "ESC $ticket -> $to_tier\nwhy: $rules\nimpact: $impact",
        "time_zone": "Europe/Berlin",
    }
    policy = policy_from_dict(data)
    comment = evaluate(ticket(), policy, FRIDAY + 3 * H).comment
    assert comment is not None
    assert comment.body.splitlines() == [
        "ESC INC0010001 Payments time out https://acme/inc/abc123 -> L2 Specialist",
        "why: - l1-time-limit: at L1 for 3h business time, limit 2h",
    ]


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("A: $a\nB: $b", {"a": "1", "b": ""}, "A: 1"),
        ("Head:\n$a\nTail", {"a": ""}, "Tail"),
        ("Head:\n$a\nTail", {"a": "x\ny"}, "Head:\nx\ny\nTail"),
        ("${a}b and $$", {"a": "z"}, "zb and $"),
        ("plain", {}, "plain"),
        ("{literal} braces $a", {"a": "1"}, "{literal} braces 1"),
    ],
)
def test_render_template(template, values, expected):
    assert render_template(template, values) == expected

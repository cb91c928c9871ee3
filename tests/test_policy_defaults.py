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
    with pytest.raises(ConfigFileError, match="needs a fixed tier"):
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


# -- item 6: the management track's lifecycle ------------------------------------------------------------------


class _Platform:
    """A stand-in connector for the write path only: every write succeeds and is kept."""

    def __init__(self) -> None:
        self.applied: list = []

    def apply(self, writeback):
        from connectors.base import ApplyResult

        self.applied.append(writeback)
        return ApplyResult(writeback.ticket_id, "r1")

    def has_comment(self, ticket_id: str, key: str) -> bool:
        return any(w.ticket_id == ticket_id and w.comment and w.comment.idempotency_key == key for w in self.applied)


def _syncer(store, policy=POLICY):
    from runtime.cycle import Syncer

    return Syncer(
        instance="acme",
        platform="zendesk",
        connector=_Platform(),  # type: ignore[arg-type]
        mapping=load_mapping("zendesk"),
        policy=policy,
        store=store,
        clock=lambda: T0,
    )


def _clocks(decision) -> dict:
    return {clock.name: clock for clock in decision.clocks}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """The track's rows on both backends (no migration: they are rows of the escalations table)."""
    from state import open_store

    url = f"sqlite:///{tmp_path}/state.sqlite3"
    if request.param == "postgres":
        from tests.test_state import PG_URL, private_schema, with_search_path

        schemas = private_schema()
        _, schema = next(schemas)
        request.addfinalizer(lambda: next(schemas, None))
        url = with_search_path(PG_URL, schema)
    opened = open_store(url)
    yield opened
    opened.close()


def test_issue9_item6_a_management_tag_set_by_a_person_starts_clocks_that_run(store) -> None:
    """The tag was there before any write of ours: the track starts when it is first seen, and its clocks run
    on from that start in later cycles instead of staying at zero."""
    syncer = _syncer(store)
    tagged = ticket(tier=Tier.L3, tags=frozenset({"esc_management"}), last_agent_action_at=T0 + 10 * M)
    first, _ = syncer._decide(tagged, T0 + H)
    assert first.management
    assert first.comment is None  # nothing of ours to announce: a person started the track
    assert _clocks(first)["mgmt_customer_contact"].elapsed == timedelta(0)
    later, writeback = syncer._decide(tagged, T0 + 4 * H)
    contact = _clocks(later)["mgmt_customer_contact"]
    assert contact.elapsed == 3 * H
    assert contact.state is ClockState.BREACHED and contact.breached_at == T0 + 3 * H
    assert "esc_breached_mgmt_customer_contact" in writeback.add_tags
    assert later.comment is None


def test_issue9_item6_executive_notification_and_resolution_plan_are_clocks() -> None:
    started = EscalationHistory(management_started_at=T0, management_track=1)
    enterprise = ticket(segment="enterprise", internal_notes=(T0 - H, T0 + 50 * M), agent_actions=(T0 + 5 * M,))
    decision = evaluate(enterprise, POLICY, T0 + 5 * H, started)
    clocks = _clocks(decision)
    told = clocks["mgmt_executive_notification"]
    assert told.state is ClockState.MET and told.elapsed == 50 * M  # the first note after the start, not before
    plan = clocks["mgmt_resolution_plan"]
    assert plan.state is ClockState.BREACHED and plan.breached_at == T0 + 4 * H
    assert TagSignal("breached", "mgmt_resolution_plan") in decision.signals
    at_risk = evaluate(enterprise, POLICY, T0 + 3 * H + 30 * M, started)
    assert TagSignal("at_risk", "mgmt_resolution_plan") in at_risk.signals
    # Late notes make the executive notification late; a ticket of a standard customer owes none.
    late = evaluate(replace(enterprise, internal_notes=(T0 + 2 * H,)), POLICY, T0 + 3 * H, started)
    assert TagSignal("breached", "mgmt_executive_notification") in late.signals
    standard = evaluate(replace(enterprise, segment="standard"), POLICY, T0 + 3 * H, started)
    assert "mgmt_executive_notification" not in _clocks(standard)
    # Plan delivered (the tag first seen at +3h): met, and the review does not wait for it any more.
    planned = replace(started, resolution_plan_at=T0 + 3 * H)
    assert _clocks(evaluate(enterprise, POLICY, T0 + 5 * H, planned))["mgmt_resolution_plan"].state is ClockState.MET


def test_issue9_item6_the_resolution_plan_tag_is_recorded_when_first_seen(store) -> None:
    syncer = _syncer(store)
    tagged = ticket(tier=Tier.L3, tags=frozenset({"esc_management"}))
    syncer._decide(tagged, T0)
    planned = replace(tagged, tags=tagged.tags | {"esc_resolution_plan"})
    syncer._decide(planned, T0 + 2 * H)
    decision, _ = syncer._decide(planned, T0 + 6 * H)
    plan = _clocks(decision)["mgmt_resolution_plan"]
    assert plan.state is ClockState.MET and plan.elapsed == 2 * H  # stopped where it was first seen, not now


def _ending_policy(hours: float = 4):
    data = policy_with()
    data["management"] = {**data["management"], "end_after_quiet_hours": hours}
    return policy_from_dict(data)


def test_issue9_item6_the_policy_ends_the_track_once_the_plan_is_in_and_it_is_quiet() -> None:
    policy = _ending_policy()
    history = EscalationHistory(management_started_at=T0, resolution_plan_at=T0 + 2 * H, management_track=1)
    quiet = ticket(tier=Tier.L3, tags=frozenset({"esc_management"}))
    before = evaluate(quiet, policy, T0 + 6 * H - S, history)
    assert before.management
    assert before.review_at == T0 + 6 * H  # the end is due by time alone: the untouched ticket is looked at
    after = evaluate(quiet, policy, T0 + 6 * H, history)
    assert not after.management
    assert TagSignal("management") not in after.signals
    assert not any(clock.name.startswith("mgmt_") for clock in after.clocks)
    assert after.comment is None
    # A trigger still firing keeps the track; without a plan the track never ends; with 0 hours it never ends.
    churn = replace(quiet, flags=Flags(churn_threat=True))
    assert evaluate(churn, policy, T0 + 7 * H, history).management
    no_plan = replace(history, resolution_plan_at=None)
    assert evaluate(quiet, policy, T0 + 30 * H, no_plan).management
    assert evaluate(quiet, _ending_policy(0), T0 + 30 * H, history).management


def test_issue9_item6_an_ended_track_is_recorded_its_tag_removed_and_it_does_not_restart(store) -> None:
    policy = _ending_policy()
    syncer = _syncer(store, policy)
    tagged = ticket(tier=Tier.L3, tags=frozenset({"esc_management", "esc_resolution_plan"}), updated_at=T0)
    syncer._decide(tagged, T0)  # start and plan seen at T0
    decision, writeback = syncer._decide(tagged, T0 + 4 * H)
    assert not decision.management
    assert "esc_management" in writeback.remove_tags
    from runtime.cycle import CycleReport

    report = CycleReport("acme", "zendesk", T0 + 4 * H)
    syncer._send(writeback, decision, tagged, T0 + 4 * H, report, retry_conflict=False)
    assert [label for label, _ in store.tier_entries("acme", "42")] == ["MGMT", "MGMT_PLAN", "MGMT_END"]
    # The next cycle: the echo without the tag, and the book's copy from before the write, both stay ended.
    echo = replace(tagged, tags=frozenset({"esc_resolution_plan"}), updated_at=T0 + 4 * H)
    assert not syncer._decide(echo, T0 + 4 * H + M)[0].management
    stale, _ = syncer._decide(tagged, T0 + 4 * H + 2 * M)
    assert not stale.management and stale.comment is None
    assert len(store.tier_entries("acme", "42")) == 3
    # A trigger firing later starts the ticket's second track, with a note of its own.
    churn = replace(echo, flags=Flags(churn_threat=True), updated_at=T0 + 9 * H)
    again, again_writeback = syncer._decide(churn, T0 + 9 * H)
    assert again.management and again.comment is not None
    assert again.comment.idempotency_key == "acme:42:MGMT#2"
    syncer._send(again_writeback, again, churn, T0 + 9 * H, report, retry_conflict=False)
    assert ("MGMT#2", T0 + 9 * H) in store.tier_entries("acme", "42")
    running, _ = syncer._decide(replace(churn, tags=churn.tags | {"esc_management"}), T0 + 10 * H)
    assert running.management and running.comment is None
    assert _clocks(running)["mgmt_acknowledgment"].elapsed == H  # the new track's clocks, from its own start


# -- item 8: explain builds its inputs as a cycle does --------------------------------------------------------


def _explain_config(tmp_path: Path) -> Path:
    example = CONFIG.read_text(encoding="utf-8")
    policy = example.split("# ---- escalation policy", 1)[1]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[state]\nurl = "sqlite:///{tmp_path / "state.sqlite3"}"\n\n[[instances]]\nname = "acme"\n'
        f'platform = "zendesk"\nbase_url = "https://acme.zendesk.com"\nmapping = "{ROOT / "mappings" / "zendesk.toml"}"\n\n'
        '[instances.credentials]\nemail = "ZD_EMAIL"\napi_token = "ZD_TOKEN"\n'
        "\n# ---- escalation policy" + policy,
        encoding="utf-8",
    )
    return config


def test_issue9_item8_explain_decides_as_the_cycle_does(tmp_path: Path, capsys) -> None:
    """A P1 of a Premium (enterprise) organization that a person put on the management track: explain, before
    and after a cycle, gives the cycle's decision: same segment, management clocks breached in both, and no
    second management note proposed."""
    import json

    import sync
    from connectors.base import RawRecord
    from engine.plan import plan
    from engine.report import explain_dict
    from runtime.explain_input import records_in
    from state.sqlite import SqliteStore

    config = _explain_config(tmp_path)
    record, related = _zendesk_raw({"segment": "Premium", "churn_risk": False}, [])
    record = {**record, "priority": "urgent", "tags": ["esc_management"], "group_id": 360000000103}
    record["created_at"] = record["updated_at"] = "2026-11-24T08:00:00Z"
    page = {"tickets": [record], "organizations": [related["organization"]], "count": 1}
    payload = tmp_path / "page.json"
    payload.write_text(json.dumps(page), encoding="utf-8")
    raw = next(item for item in records_in(page, "zendesk") if isinstance(item, RawRecord))

    def explained(at: datetime) -> dict:
        args = ["explain", "--config", str(config), "--instance", "acme", "--file", str(payload), "--json"]
        assert sync.main([*args, "--at", at.isoformat()]) == 0
        return json.loads(capsys.readouterr().out)

    def cycle(at: datetime) -> dict:
        store = SqliteStore(tmp_path / "state.sqlite3")
        try:
            syncer = _syncer(store)
            syncer.mapping = load_mapping("zendesk", ROOT / "mappings" / "zendesk.toml")
            ticket = syncer.mapping.normalize(raw, "acme")
            decision, writeback = syncer._decide(ticket, at)
        finally:
            store.close()
        assert writeback == plan(decision, ticket, syncer.mapping.tags)
        return json.loads(json.dumps(explain_dict(ticket, decision, writeback), default=str))

    first_seen = T0 + H
    before = explained(first_seen)  # no store yet: the cycle has not run
    assert before == cycle(first_seen)
    assert before["ticket"]["segment"] == "enterprise"
    assert before["management"] and before["writeback"]["comment"] is None
    later = T0 + 6 * H
    from_cycle = cycle(later)
    from_explain = explained(later)
    assert from_explain == from_cycle
    states = {clock["name"]: clock["state"] for clock in from_explain["clocks"]}
    assert states["mgmt_resolution_plan"] == "breached"  # 4 h from the start at T0 + 1 h
    assert "breached:mgmt_resolution_plan" in from_explain["signals"]
    assert from_explain["writeback"]["comment"] is None


def test_issue9_item7d_explain_at_without_an_offset_is_refused(tmp_path: Path, capsys) -> None:
    import json

    import sync

    payload = tmp_path / "t.json"
    record, related = _zendesk_raw({}, [])
    payload.write_text(json.dumps({"ticket": record, "organizations": [related["organization"]]}), encoding="utf-8")
    args = ["explain", "--platform", "zendesk", "--file", str(payload), "--json", "--at"]
    assert sync.main([*args, "2026-11-24T10:00:00"]) == 2
    assert "no UTC offset" in capsys.readouterr().err
    assert sync.main([*args, "2026-11-24T10:00:00Z"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluated_at"] == "2026-11-24T10:00:00+00:00"

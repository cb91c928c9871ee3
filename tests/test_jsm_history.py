"""JSM history facts (issue 8): the changelog and comment visibility, read with each search page, never per issue.

Fixture shapes (written from Atlassian's documentation, checked against the real recordings of issues and comments
in the reference payloads):
- `expand=changelog` on "Search for issues using JQL enhanced search (POST)" embeds `changelog: {startAt,
  maxResults, total, histories: [{id, author, created, items: [{field, fieldtype, fieldId, from, fromString, to,
  toString}]}]}` in each issue (at most 100 histories; `total` tells the rest),
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/
- "Bulk fetch changelogs" `POST /rest/api/3/changelog/bulkfetch` `{issueIdsOrKeys, fieldIds, maxResults,
  nextPageToken}` -> `{issueChangeLogs: [{issueId, changeHistories}], nextPageToken}`,
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/
- the `comment` field `{comments, self, maxResults, total, startAt}`, each comment with an ADF `body` and, on a
  Jira Cloud service project, `jsdPublic` (false: an internal note),
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-comments/
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.base import RawRecord
from connectors.http import HttpClient
from connectors.jsm import JsmConnector, make_auth
from engine.escalate import evaluate, tier_clocks, tier_started_at
from engine.model import ClockState, EscalationHistory, Status, StatusChange, Tier, TierChange, WriteBack
from engine.policy import load_policy
from engine.sla import pauses_of
from mappings import load_mapping
from mappings.jsm import JsmMapping
from sandbox.base import SimClock
from sandbox.jsm import JsmSandbox

BASE = "https://acme.atlassian.net"
SEARCH = f"{BASE}/rest/api/3/search/jql"
BULK = f"{BASE}/rest/api/3/changelog/bulkfetch"
FIXTURES = Path(__file__).parent / "fixtures" / "jsm"
POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
NOW = datetime(2026, 3, 9, 14, 50, tzinfo=UTC)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.fixture(scope="module")
def mapping() -> JsmMapping:
    loaded = load_mapping("jsm")
    assert isinstance(loaded, JsmMapping)
    return loaded


def connector(mapping: JsmMapping, transport: httpx.BaseTransport | None = None, **options: Any) -> JsmConnector:
    auth = make_auth({"email": SecretStr("bot@acme.example"), "api_token": SecretStr("not-a-token")})
    extra = {"transport": transport} if transport is not None else {}
    http = HttpClient("acme-jsm", BASE, auth=auth, sleep=lambda _: None, **extra)
    return JsmConnector("acme-jsm", http, mapping, {"page_size": 50, "jql": "project = SUP", **options})


def poll_fixture(mapping: JsmMapping, search: str, bulk: str | None = None):
    with respx.mock(assert_all_called=False) as api:
        searched = api.post(SEARCH).mock(return_value=httpx.Response(200, json=fixture(search)))
        bulked = api.post(BULK).mock(return_value=httpx.Response(200, json=fixture(bulk or "changelog_bulkfetch.json")))
        page = connector(mapping).poll(None, NOW)
    return page, searched, bulked


def test_the_search_itself_brings_changelog_and_comments(mapping: JsmMapping) -> None:
    page, searched, bulked = poll_fixture(mapping, "search_with_history.json")
    body = json.loads(searched.calls.last.request.content)
    assert body["expand"] == "changelog" and "comment" in body["fields"]
    assert searched.call_count == 1 and bulked.call_count == 0  # nothing cut off: no extra call at all
    assert len(page.records[0].data["changelog"]["histories"]) == 9


def facts(mapping: JsmMapping, search: str = "search_with_history.json"):
    page, _, bulked = poll_fixture(mapping, search)
    return mapping.normalize(page.records[0], "acme-jsm"), bulked


def test_history_facts_of_a_recorded_issue(mapping: JsmMapping) -> None:
    ticket, _ = facts(mapping)
    assert ticket.tier_changes == (
        TierChange(utc("2026-03-06T09:12:44.318-05:00"), Tier.L1),
        TierChange(utc("2026-03-06T10:02:13.020-05:00"), Tier.L2),
    )
    assert ticket.status_history[0] == StatusChange(ticket.created_at, Status.NEW)
    assert [change.status for change in ticket.status_history[1:]] == [
        Status.OPEN,
        Status.OPEN,
        Status.PENDING,
        Status.OPEN,
        Status.PENDING,
        Status.OPEN,
    ]
    assert ticket.public_replies == (
        utc("2026-03-06T09:20:31.882-05:00"),
        utc("2026-03-06T10:31:00.000-05:00"),
        utc("2026-03-09T10:30:00.000-04:00"),
    )
    # Our handoff note (it carries the marker) is not a person's note; the customer's comments are no replies.
    assert ticket.internal_notes == (utc("2026-03-06T10:09:12.000-05:00"),)
    assert ticket.last_customer_message_at == utc("2026-03-09T09:00:00.000-04:00")
    # The customer moving the ticket back (automation on their comment) is no agent action; our label edit isn't.
    assert utc("2026-03-06T11:40:00.000-05:00") not in ticket.agent_actions
    assert utc("2026-03-09T10:41:05.902-04:00") not in ticket.agent_actions
    assert ticket.missing_facts == frozenset()


def test_every_clock_of_the_recorded_issue_stops_at_a_real_fact(mapping: JsmMapping) -> None:
    ticket, _ = facts(mapping)
    entered = utc("2026-03-06T10:02:13.020-05:00")
    # Lena handing the issue from Mia to Ravi inside L2 is no new entry.
    assert tier_started_at(ticket, EscalationHistory()) == entered
    clocks = {clock.name: clock for clock in tier_clocks(ticket, POLICY, NOW, Tier.L2, entered)}
    assert clocks["acknowledgment"].state is ClockState.MET
    assert clocks["acknowledgment"].elapsed == utc("2026-03-06T10:05:40.500-05:00") - entered
    assert clocks["assessment"].state is ClockState.MET
    assert clocks["assessment"].elapsed == utc("2026-03-06T10:31:00.000-05:00") - entered
    assert pauses_of(ticket) == (
        (utc("2026-03-06T10:20:00.000-05:00"), utc("2026-03-06T11:40:00.000-05:00")),
        (utc("2026-03-06T13:00:00.000-05:00"), utc("2026-03-09T09:00:00.000-04:00")),
    )
    decision = {clock.name: clock for clock in evaluate(ticket, POLICY, NOW).clocks}
    # The cadence counts from the last public reply (14:30 UTC), not the first; our label edit at 14:41 moves nothing.
    assert decision["customer_update"].elapsed == timedelta(minutes=20)
    assert decision["first_response"].state is ClockState.MET and decision["first_response"].breached_at is None


def test_a_cut_off_changelog_is_completed_by_one_bulk_request(mapping: JsmMapping) -> None:
    full, _ = facts(mapping)
    ticket, bulked = facts(mapping, "search_changelog_cut.json")
    assert bulked.call_count == 1
    sent = json.loads(bulked.calls.last.request.content)
    assert sent["issueIdsOrKeys"] == ["10101"]
    assert sent["fieldIds"] == ["status", "assignee", "customfield_10200"]
    assert ticket.status_history == full.status_history and ticket.tier_changes == full.tier_changes
    assert ticket.agent_actions == full.agent_actions


def test_cut_off_comments_make_the_reply_facts_unknown(mapping: JsmMapping) -> None:
    body = fixture("search_with_history.json")
    body["issues"][0]["fields"]["comment"]["total"] = 80
    ticket = mapping.normalize(RawRecord("10101", body["issues"][0]), "acme-jsm")
    assert ticket.public_replies is None and "public_replies" in ticket.missing_facts
    states = {clock.name: clock.state for clock in evaluate(ticket, POLICY, NOW).clocks}
    assert states["customer_update"] is ClockState.UNKNOWN


def test_a_malformed_history_makes_the_facts_absent_not_a_crash(mapping: JsmMapping) -> None:
    body = fixture("search_with_history.json")
    body["issues"][0]["changelog"]["histories"][2]["created"] = "last Tuesday"
    ticket = mapping.normalize(RawRecord("10101", body["issues"][0]), "acme-jsm")
    assert ticket.tier_changes is None and {"status_history", "tier_changes"} <= ticket.missing_facts


# -- on the sandbox ------------------------------------------------------------------------------------------------

START = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)  # Tuesday, 09:30 in Berlin: business hours


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START)


@pytest.fixture
def sandbox(clock: SimClock) -> JsmSandbox:
    app = JsmSandbox(clock, seed=3)
    app.seed_tickets(20)
    return app


def fresh_issue(sandbox: JsmSandbox) -> str:
    key = sandbox.issue_keys()[-1]
    sandbox.update(key, status="In Progress", priority="High", tier="L1 - Service Desk")
    return key


def read(snow: JsmConnector, key: str):
    record = snow.fetch(key)
    assert record is not None
    return snow.mapping.normalize(record, "acme-jsm")


def test_sandbox_two_pauses_are_kept_after_the_ticket_resumes(sandbox, clock, mapping) -> None:
    jsm = connector(mapping, sandbox.transport())
    key = fresh_issue(sandbox)
    marks = []
    for status in ("Waiting for customer", "In Progress", "Waiting for customer", "In Progress"):
        clock.advance(timedelta(hours=1))
        sandbox.update(key, status=status)
        marks.append(clock.now())
    assert pauses_of(read(jsm, key))[-2:] == ((marks[0], marks[1]), (marks[2], marks[3]))


def test_sandbox_a_second_public_reply_moves_the_update_cadence(sandbox, clock, mapping) -> None:
    jsm = connector(mapping, sandbox.transport())
    key = fresh_issue(sandbox)
    sandbox.add_comment(key, "Looking now.", public=True)
    clock.advance(timedelta(hours=3))
    sandbox.add_comment(key, "Fix in test.", public=True)
    second = clock.now()
    clock.advance(timedelta(minutes=30))
    ticket = read(jsm, key)
    assert ticket.public_replies[-1] == second
    update = next(c for c in evaluate(ticket, POLICY, clock.now()).clocks if c.name == "customer_update")
    assert update.elapsed == timedelta(minutes=30)


def test_sandbox_first_action_stops_acknowledgment_and_l2_keeps_its_entry(sandbox, clock, mapping) -> None:
    jsm = connector(mapping, sandbox.transport())
    key = fresh_issue(sandbox)
    before = read(jsm, key)
    clock.advance(timedelta(minutes=1))
    jsm.apply(WriteBack("jsm", "acme-jsm", before.id, before.revision, tier=Tier.L2))
    entered = clock.now()
    clock.advance(timedelta(minutes=7))
    sandbox.add_comment(key, "Checked the gateway logs.", public=False)
    clock.advance(timedelta(minutes=40))
    sandbox.update(key, status="Escalated")
    sandbox.update(key, tier="L2 - Technical Support")  # set again by a colleague: no new entry
    ticket = read(jsm, key)
    assert tier_started_at(ticket, EscalationHistory()) == entered
    ack = next(c for c in tier_clocks(ticket, POLICY, clock.now(), Tier.L2, entered) if c.name == "acknowledgment")
    assert ack.state is ClockState.MET and ack.elapsed == timedelta(minutes=7)


def test_sandbox_our_own_label_write_moves_no_clock(sandbox, clock, mapping) -> None:
    jsm = connector(mapping, sandbox.transport())
    key = fresh_issue(sandbox)
    sandbox.update(key, status="Waiting for customer")
    clock.advance(timedelta(minutes=20))
    before = read(jsm, key)
    jsm.apply(WriteBack("jsm", "acme-jsm", before.id, before.revision, add_tags=frozenset({"esc_x"})))
    after = read(jsm, key)
    assert after.updated_at > before.updated_at and "esc_x" in after.tags
    clock.advance(timedelta(minutes=5))
    assert evaluate(before, POLICY, clock.now()).clocks == evaluate(after, POLICY, clock.now()).clocks


@pytest.mark.parametrize("count", [10, 1000])
def test_sandbox_extra_calls_per_page_stay_constant(clock, mapping, count: int) -> None:
    sandbox = JsmSandbox(clock, seed=3)
    sandbox.seed_tickets(count)
    sandbox.page_cap = count
    sandbox.changelog_cap = 1  # every issue with two or more histories needs the bulk request
    jsm = connector(mapping, sandbox.transport(), page_size=count, initial_lookback_hours=24 * 6)
    before = len(sandbox.requests)
    page = jsm.poll(None, clock.now())
    assert len(page.records) == count
    calls = [path for _, path in sandbox.requests[before:]]
    assert calls == ["/rest/api/3/search/jql", "/rest/api/3/changelog/bulkfetch"]
    cut = [record for record in page.records if record.data["changelog"]["total"] > 1]
    assert cut and all("changelog" in record.related for record in cut)


def test_automation_rules_are_no_agents(mapping: JsmMapping) -> None:
    body = fixture("search_with_history.json")
    automation = {"accountId": "557058:f58131cb-b67d-43c7-b30d-6b58d40bd077", "accountType": "app"}
    automation["displayName"] = "Automation for Jira"
    moved = next(h for h in body["issues"][0]["changelog"]["histories"] if h["id"] == "10815")
    moved["author"] = automation  # a rule moved it to "Waiting for customer"
    ticket = mapping.normalize(RawRecord("10101", body["issues"][0]), "acme-jsm")
    assert utc("2026-03-06T10:20:00.000-05:00") not in ticket.agent_actions
    assert Status.PENDING in [change.status for change in ticket.status_history]

"""Zendesk history facts (issue 8): the incremental ticket event export, followed alongside the ticket export.

Fixture shapes (tests/fixtures/zendesk/README.md): "Incremental Ticket Event Export"
(https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-ticket-event-export
and "Exporting ticket events" in https://developer.zendesk.com/documentation/ticketing/managing-tickets/using-the-incremental-export-api/):
`GET /api/v2/incremental/ticket_events.json?start_time=<epoch>&include=comment_events` answers `{ticket_events,
next_page, count, end_of_stream, end_time}`; each event `{id, ticket_id, timestamp, created_at, updater_id, via,
system, metadata, event_type: "Audit", child_events}`; a change child event names the field as its key with
`previous_value`; with the `comment_events` sideload comments are child events `{event_type: "Comment",
author_id, body, html_body, plain_body, public, attachments, audit_id}`. A 403 is `{"error": "Forbidden",
"description": ...}` (the export needs an admin).
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
from connectors.paging import StuckCursorError
from connectors.zendesk import ZendeskConnector, make_auth
from engine.escalate import evaluate, tier_clocks, tier_started_at
from engine.model import ClockState, EscalationHistory, Status, Tier, TierChange, WriteBack
from engine.policy import load_policy
from engine.sla import pauses_of
from mappings import NormalizeError, load_mapping
from mappings.zendesk import ZendeskMapping
from sandbox.base import SimClock
from sandbox.zendesk import API_USER_ID, GROUP_L1, GROUP_L2, ZendeskSandbox

BASE = "https://acme.zendesk.com"
INCREMENTAL = f"{BASE}/api/v2/incremental/tickets/cursor.json"
EVENTS = f"{BASE}/api/v2/incremental/ticket_events.json"
FIXTURES = Path(__file__).parent / "fixtures" / "zendesk"
POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
NOW = datetime(2026, 11, 21, 16, 45, tzinfo=UTC)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def mapping() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


def connector(mapping: ZendeskMapping, transport: httpx.BaseTransport | None = None, **options: Any):
    credentials = {"email": SecretStr("agent@acme.test"), "api_token": SecretStr("zd-token")}
    extra = {"transport": transport} if transport is not None else {}
    http = HttpClient("acme-zendesk", BASE, auth=make_auth(credentials), sleep=lambda _: None, **extra)
    return ZendeskConnector("acme-zendesk", http, mapping, {"page_size": 100, **options})


def poll_fixture(mapping: ZendeskMapping, events: httpx.Response | None = None):
    with respx.mock() as api:
        tickets = api.get(INCREMENTAL).mock(
            return_value=httpx.Response(200, json=fixture("incremental_cursor_with_history.json"))
        )
        exported = api.get(EVENTS).mock(
            return_value=events or httpx.Response(200, json=fixture("ticket_events_page.json"))
        )
        page = connector(mapping).poll(None, NOW)
    return page, tickets, exported


def ticket_4101(mapping: ZendeskMapping, **kwargs: Any):
    page, _, _ = poll_fixture(mapping, **kwargs)
    return mapping.normalize(next(record for record in page.records if record.id == "4101"), "acme-zendesk")


def test_one_event_export_call_per_page_of_tickets(mapping: ZendeskMapping) -> None:
    page, tickets, exported = poll_fixture(mapping)
    assert tickets.call_count == 1 and exported.call_count == 1
    params = exported.calls.last.request.url.params
    assert params["start_time"] == str(int((NOW - timedelta(hours=72)).timestamp()))
    assert params["include"] == "comment_events"
    record = page.records[0]
    assert len(record.related["ticket_events"]) == 13
    since, until = record.related["ticket_events_window"]
    assert since == int((NOW - timedelta(hours=72)).timestamp()) and until == int(NOW.timestamp()) - 59


def test_history_facts_of_a_recorded_ticket(mapping: ZendeskMapping) -> None:
    ticket = ticket_4101(mapping)
    assert ticket.tier is Tier.L2
    assert ticket.tier_changes == (
        TierChange(utc("2026-11-20T08:15:02Z"), Tier.L1),
        TierChange(utc("2026-11-20T09:00:00Z"), Tier.L2),
    )
    assert [change.status for change in ticket.status_history] == [
        Status.NEW,
        Status.OPEN,
        Status.PENDING,
        Status.OPEN,
        Status.PENDING,
        Status.OPEN,
    ]
    # Three agent replies (the metric set only ever dates the first); the description is no reply.
    assert ticket.public_replies == (
        utc("2026-11-20T08:57:02Z"),
        utc("2026-11-20T09:45:10Z"),
        utc("2026-11-21T09:12:40Z"),
    )
    assert ticket.internal_notes == (utc("2026-11-20T09:31:00Z"),)  # our handoff note is not one
    assert ticket.last_customer_message_at == utc("2026-11-21T15:30:00Z")
    # Our tag writes (14:00:30, 09:13:05) and group change are no agent actions; the customer's reopen isn't either.
    for ours in ("2026-11-20T09:00:00Z", "2026-11-20T14:00:30Z", "2026-11-21T09:13:05Z", "2026-11-20T13:00:00Z"):
        assert utc(ours) not in ticket.agent_actions
    assert ticket.missing_facts == frozenset()


def test_every_clock_of_the_recorded_ticket_stops_at_a_real_fact(mapping: ZendeskMapping) -> None:
    ticket = ticket_4101(mapping)
    entered = utc("2026-11-20T09:00:00Z")
    # Two hand-overs inside L2 (08:30 and 16:40:11, the metric set's assigned_at) keep the L2 entry.
    assert tier_started_at(ticket, EscalationHistory()) == entered
    clocks = {clock.name: clock for clock in tier_clocks(ticket, POLICY, NOW, Tier.L2, entered)}
    assert clocks["acknowledgment"].state is ClockState.MET
    assert clocks["acknowledgment"].elapsed == timedelta(minutes=4, seconds=30)  # the agent took the ticket
    assert clocks["assessment"].state is ClockState.MET
    assert clocks["assessment"].elapsed == timedelta(minutes=45, seconds=10)
    assert pauses_of(ticket) == (
        (utc("2026-11-20T09:45:10Z"), utc("2026-11-20T13:00:00Z")),
        (utc("2026-11-21T09:12:40Z"), utc("2026-11-21T15:30:00Z")),
    )
    decision = {clock.name: clock for clock in evaluate(ticket, POLICY, NOW).clocks}
    # P1 (24x7): the 1 h cadence runs from the last reply (09:12:40), paused while pending until the customer's
    # answer at 15:30: 1h15 by 16:45, breached at 16:30 (counted from the first reply it would be days).
    assert decision["customer_update"].elapsed == timedelta(hours=1, minutes=15)
    assert decision["customer_update"].breached_at == utc("2026-11-21T16:30:00Z")
    # The first reply came after 42 min against 30: met, late, and the record says so.
    assert decision["first_response"].state is ClockState.MET
    assert decision["first_response"].breached_at == utc("2026-11-20T08:45:02Z")


def test_a_refused_event_export_leaves_the_metric_set_and_unknown_clocks(mapping: ZendeskMapping) -> None:
    forbidden = httpx.Response(403, json=fixture("error_403_forbidden.json"))
    ticket = ticket_4101(mapping, events=forbidden)
    assert ticket.public_replies is None and "public_replies" in ticket.missing_facts
    # The metric set knows the first reply but not the last of three: the cadence is unknown, not breached.
    states = {clock.name: clock.state for clock in evaluate(ticket, POLICY, NOW).clocks}
    assert states["customer_update"] is ClockState.UNKNOWN
    assert states["first_response"] is ClockState.MET


def test_a_ticket_older_than_the_followed_window_is_not_guessed(mapping: ZendeskMapping) -> None:
    page, _, _ = poll_fixture(mapping)
    record = page.records[0]
    late_start = [int(utc("2026-11-20T12:00:00Z").timestamp()), record.related["ticket_events_window"][1]]
    ticket = mapping.normalize(
        RawRecord("4101", record.data, {**record.related, "ticket_events_window": late_start}), "i"
    )
    assert ticket.tier_changes is None and "agent_actions" in ticket.missing_facts


def test_a_malformed_event_makes_the_facts_absent_not_a_crash(mapping: ZendeskMapping) -> None:
    page, _, _ = poll_fixture(mapping)
    record = page.records[0]
    events = [dict(event) for event in record.related["ticket_events"]]
    events[3]["created_at"] = "soon"
    ticket = mapping.normalize(RawRecord("4101", record.data, {**record.related, "ticket_events": events}), "i")
    assert ticket.public_replies is None and "public_replies" in ticket.missing_facts


def test_an_event_page_that_does_not_advance_is_refused(mapping: ZendeskMapping) -> None:
    stuck = fixture("ticket_events_page.json") | {"end_of_stream": False}
    stuck["end_time"] = int((NOW - timedelta(hours=72)).timestamp())
    with pytest.raises(StuckCursorError, match=r"acme-zendesk.*did not advance"):
        poll_fixture(mapping, events=httpx.Response(200, json=stuck))


def test_a_single_ticket_read_brings_its_audits_and_the_same_facts(mapping: ZendeskMapping) -> None:
    """`fetch` (a conflict re-read, `explain`) in a daemon that has not followed the export: the ticket's audits."""
    polled = ticket_4101(mapping)
    with respx.mock() as api:
        api.get(f"{BASE}/api/v2/tickets/4101.json").mock(
            return_value=httpx.Response(200, json=fixture("ticket_show_4101_sideloads.json"))
        )
        audits = api.get(f"{BASE}/api/v2/tickets/4101/audits.json").mock(
            return_value=httpx.Response(200, json=fixture("ticket_audits_4101.json"))
        )
        record = connector(mapping).fetch("4101")
    assert record is not None and audits.call_count == 1
    fetched = mapping.normalize(record, "acme-zendesk")
    for fact in ("status_history", "tier_changes", "public_replies", "agent_actions", "internal_notes"):
        assert getattr(fetched, fact) == getattr(polled, fact), fact
    assert fetched.last_customer_message_at == polled.last_customer_message_at
    assert fetched.missing_facts == frozenset()


# -- on the sandbox ------------------------------------------------------------------------------------------------

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # Tuesday 10:00 in Berlin


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START)


@pytest.fixture
def sandbox(clock: SimClock) -> ZendeskSandbox:
    app = ZendeskSandbox(clock, seed=11)
    app.seed_tickets(40)
    return app


def recent_l1_ticket(sandbox: ZendeskSandbox) -> int:
    """A ticket created inside the look-back, at L1, open: the connector sees all its events."""
    for ticket_id in sandbox.ticket_ids():
        data = sandbox.ticket(ticket_id)
        created = utc(data["created_at"])
        if data["status"] in ("new", "open") and data["group_id"] == GROUP_L1 and created > START - timedelta(hours=48):
            sandbox.update(ticket_id, priority="high", status="open")
            return ticket_id
    raise AssertionError("no recent L1 ticket in the seed")


def read(sandbox: ZendeskSandbox, ticket_id: int, mapping: ZendeskMapping):
    """A fresh daemon's view: poll the export to its end (events followed alongside), then the ticket."""
    sandbox.clock.advance(timedelta(minutes=2))  # the exports leave out the last minute
    zd = connector(mapping, sandbox.transport(), history_pages_per_poll=5)
    cursor, found = None, None
    for _ in range(50):
        page = zd.poll(cursor, sandbox.clock.now())
        found = next((record for record in page.records if record.id == str(ticket_id)), found)
        cursor = page.cursor
        if not page.has_more:
            break
    assert found is not None
    return mapping.normalize(found, "acme-zendesk")


def test_sandbox_two_pauses_are_kept_after_the_ticket_resumes(sandbox, clock, mapping) -> None:
    ticket_id = recent_l1_ticket(sandbox)
    marks = []
    for status in ("pending", "open", "pending", "open"):
        clock.advance(timedelta(hours=1))
        sandbox.update(ticket_id, status=status)
        marks.append(clock.now())
    assert pauses_of(read(sandbox, ticket_id, mapping))[-2:] == ((marks[0], marks[1]), (marks[2], marks[3]))


def test_sandbox_a_second_public_reply_moves_the_update_cadence(sandbox, clock, mapping) -> None:
    ticket_id = recent_l1_ticket(sandbox)
    sandbox.add_comment(ticket_id, "Looking now.", public=True)
    clock.advance(timedelta(hours=3))
    sandbox.add_comment(ticket_id, "Fix in test.", public=True)
    second = clock.now()
    ticket = read(sandbox, ticket_id, mapping)
    assert ticket.public_replies[-1] == second
    update = next(c for c in evaluate(ticket, POLICY, clock.now()).clocks if c.name == "customer_update")
    assert update.elapsed == timedelta(minutes=2)


def test_sandbox_first_action_stops_acknowledgment_and_l2_keeps_its_entry(sandbox, clock, mapping) -> None:
    ticket_id = recent_l1_ticket(sandbox)
    clock.advance(timedelta(minutes=1))
    sandbox.update(ticket_id, author_id=API_USER_ID, group_id=GROUP_L2)  # as our own escalation would
    entered = clock.now()
    l2 = sandbox.agents(GROUP_L2)
    clock.advance(timedelta(minutes=6))
    sandbox.update(ticket_id, author_id=l2[0], assignee_id=l2[0])
    clock.advance(timedelta(minutes=30))
    sandbox.add_comment(ticket_id, "Checked the logs.", public=False, author_id=l2[0])
    clock.advance(timedelta(minutes=30))
    sandbox.update(ticket_id, author_id=l2[0], assignee_id=l2[1])  # handed to a colleague inside L2
    ticket = read(sandbox, ticket_id, mapping)
    assert tier_started_at(ticket, EscalationHistory()) == entered
    ack = next(c for c in tier_clocks(ticket, POLICY, clock.now(), Tier.L2, entered) if c.name == "acknowledgment")
    assert ack.state is ClockState.MET and ack.elapsed == timedelta(minutes=6)


def test_sandbox_our_own_tag_write_moves_no_clock(sandbox, clock, mapping) -> None:
    ticket_id = recent_l1_ticket(sandbox)
    sandbox.update(ticket_id, status="pending")
    clock.advance(timedelta(minutes=20))
    before = read(sandbox, ticket_id, mapping)
    zd = connector(mapping, sandbox.transport(), history_pages_per_poll=0)
    zd.fetch(str(ticket_id))
    zd.apply(WriteBack("zendesk", "acme-zendesk", str(ticket_id), before.revision, add_tags=frozenset({"esc_x"})))
    after = read(sandbox, ticket_id, mapping)
    assert after.updated_at > before.updated_at and "esc_x" in after.tags
    later = clock.now() + timedelta(minutes=5)
    assert evaluate(before, POLICY, later).clocks == evaluate(after, POLICY, later).clocks


def test_sandbox_a_fresh_daemons_fetch_knows_the_whole_history(sandbox, clock, mapping) -> None:
    ticket_id = recent_l1_ticket(sandbox)
    sandbox.add_comment(ticket_id, "Looking now.", public=True)
    polled = read(sandbox, ticket_id, mapping)
    record = connector(mapping, sandbox.transport()).fetch(str(ticket_id))  # no poll: the book is empty
    assert record is not None
    fetched = mapping.normalize(record, "acme-zendesk")
    assert fetched.public_replies == polled.public_replies and fetched.tier_changes == polled.tier_changes
    assert fetched.agent_actions == polled.agent_actions and fetched.status_history == polled.status_history


@pytest.mark.parametrize("count", [10, 1000])
def test_sandbox_extra_calls_per_page_stay_constant(clock, mapping, count: int) -> None:
    sandbox = ZendeskSandbox(clock, seed=11)
    sandbox.seed_tickets(count)
    clock.advance(timedelta(minutes=2))
    zd = connector(mapping, sandbox.transport(), page_size=count, initial_lookback_hours=24 * 11)
    before = len(sandbox.requests)
    page = zd.poll(None, clock.now())
    assert len(page.records) == count
    calls = [path for _, path in sandbox.requests[before:]]
    # One page of tickets, one page of ticket events: one extra call, whatever the page holds.
    assert calls == ["/api/v2/incremental/tickets/cursor.json", "/api/v2/incremental/ticket_events.json"]
    # Idle polls keep following the event export (one call each) until it has caught up; then an idle poll is
    # the one ticket-export call again.
    for _ in range(10):
        idle_before = len(sandbox.requests)
        zd.poll(page.cursor, clock.now())
        assert len(sandbox.requests) - idle_before <= 2
        if zd._book.caught_up:
            break
    idle_before = len(sandbox.requests)
    assert zd.poll(page.cursor, clock.now()).records == [] and len(sandbox.requests) - idle_before == 1
    complete = 0
    for record in zd.poll(None, clock.now()).records:
        try:
            ticket = mapping.normalize(record, "acme-zendesk")
        except NormalizeError:
            continue  # the seed's deliberately unmapped severities
        assert ticket.public_replies is not None and ticket.agent_actions is not None
        complete += 1
    assert complete >= count * 0.9

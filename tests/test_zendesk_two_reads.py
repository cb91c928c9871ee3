"""One Zendesk ticket read two ways: the export page (ticket export + ticket event export) and the single-ticket
read (`GET /api/v2/tickets/{id}` + its audits). Soak ticket 1002 (seed 7) differed between a clean and a faulty
run: the faulty run re-read it alone after a lost Update Many answer and tagged more breaches.

What these tests pin down: both reads give the same history facts and clocks whenever both see the whole
history; the export page of a ticket created before the event export was followed cannot know the history (the
audits read is the right one), and on that weaker read the clocks and tags that need it are UNKNOWN and kept,
never judged (removed) from what is not known.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.base import RawRecord
from connectors.http import HttpClient
from connectors.zendesk import ZendeskConnector, make_auth
from engine.escalate import evaluate
from engine.model import ClockState, Ticket, Tier
from engine.plan import plan
from engine.policy import load_policy
from mappings import load_mapping
from mappings.zendesk import ZendeskMapping
from runtime.demo import DEMO_START
from sandbox.base import SimClock
from sandbox.zendesk import API_USER_ID, ZendeskSandbox

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
TICKET = 1002
"""Created 2026-11-06 at L2, moved to L3 on 11-10 19:37:45, first public reply at L3 on 11-11 15:06:10."""
HISTORY = ("status_history", "tier_changes", "public_replies", "agent_actions", "internal_notes")


@pytest.fixture(scope="module")
def mapping() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


@pytest.fixture
def sandbox() -> ZendeskSandbox:
    """The soak's Zendesk account (bench/soak.py, default seed), its first cycle's reads two minutes on."""
    app = ZendeskSandbox(SimClock(DEMO_START), seed=7)
    app.seed_tickets(40)
    app.clock.advance(timedelta(minutes=20))
    return app


def _connector(mapping: ZendeskMapping, sandbox: ZendeskSandbox, **options: Any) -> ZendeskConnector:
    credentials = {"email": SecretStr("agent@acme.test"), "api_token": SecretStr("zd-token")}
    http = HttpClient(
        "soak-zendesk",
        "https://acme.zendesk.com",
        auth=make_auth(credentials),
        sleep=lambda _: None,
        transport=sandbox.transport(),
    )
    return ZendeskConnector("soak-zendesk", http, mapping, {"history_pages_per_poll": 5, **options})


def export_read(mapping: ZendeskMapping, sandbox: ZendeskSandbox, **options: Any) -> Ticket:
    """A fresh daemon's export page of the ticket (the ticket export to its end, events followed alongside)."""
    zd = _connector(mapping, sandbox, **options)
    cursor, found = None, None
    for _ in range(50):
        page = zd.poll(cursor, sandbox.clock.now())
        found = next((record for record in page.records if record.id == str(TICKET)), found)
        cursor = page.cursor
        if not page.has_more:
            break
    assert isinstance(found, RawRecord)
    return mapping.normalize(found, "soak-zendesk")


def audits_read(mapping: ZendeskMapping, sandbox: ZendeskSandbox) -> Ticket:
    """The single-ticket read: the ticket with its sideloads and every audit."""
    record = _connector(mapping, sandbox).fetch(str(TICKET))
    assert record is not None and "ticket_audits" in record.related
    return mapping.normalize(record, "soak-zendesk")


def test_both_reads_of_the_whole_history_give_the_same_facts_and_clocks(mapping, sandbox) -> None:
    polled = export_read(mapping, sandbox, initial_lookback_hours=24 * 30)  # the book covers the ticket's life
    fetched = audits_read(mapping, sandbox)
    assert polled.missing_facts == fetched.missing_facts == frozenset()
    for fact in (*HISTORY, "last_customer_message_at", "last_public_reply_at", "tier_entered_at"):
        assert getattr(polled, fact) == getattr(fetched, fact), fact
    now = sandbox.clock.now()
    assert evaluate(polled, POLICY, now) == evaluate(fetched, POLICY, now)
    # The facts are the audits' own: L3 entered on the group move, assessed at the first public reply after it.
    assert [change.tier for change in fetched.tier_changes or ()] == [Tier.L2, Tier.L3]
    clocks = {clock.name: clock for clock in evaluate(fetched, POLICY, now).clocks}
    assert clocks["assessment"].tier is Tier.L3 and clocks["assessment"].breached_at is not None


def test_the_export_page_of_an_older_ticket_leaves_what_only_the_audits_know_unknown(mapping, sandbox) -> None:
    """The ticket predates the event book's look-back (72 h before the first poll): the page cannot know its
    replies, actions or tier stays. The audits read tagged L2's and L3's breaches; the page's plan must keep
    them (UNKNOWN, not "not breached"), where it used to remove L2's past-stay breaches."""
    fetched = audits_read(mapping, sandbox)
    now = sandbox.clock.now()
    tags = mapping.tags
    known = frozenset(tags.render(signal) for signal in evaluate(fetched, POLICY, now).signals)
    assert {"esc_l2_breached_acknowledgment", "esc_l2_breached_assessment", "esc_l3_breached_assessment"} <= known
    sandbox.update(TICKET, author_id=API_USER_ID, additional_tags=sorted(known))  # the re-read's write
    sandbox.clock.advance(timedelta(minutes=20))

    polled = export_read(mapping, sandbox)
    assert set(HISTORY) - {"status_history"} <= polled.missing_facts
    assert known <= polled.tags
    decision = evaluate(polled, POLICY, sandbox.clock.now())
    assessment = next(clock for clock in decision.clocks if clock.name == "assessment")
    assert assessment.state is ClockState.UNKNOWN
    writeback = plan(decision, polled, tags)
    assert writeback.remove_tags == frozenset()


def test_every_ticket_of_the_soak_account_reads_alike_both_ways(mapping) -> None:
    """The same comparison over the whole account after two hours of activity (replies, moves, pauses)."""
    app = ZendeskSandbox(SimClock(DEMO_START), seed=7)
    app.seed_tickets(40)
    app.simulate(timedelta(hours=2))
    app.clock.advance(timedelta(minutes=2))
    zd = _connector(mapping, app, history_pages_per_poll=20, initial_lookback_hours=24 * 60)
    cursor, records = None, {}
    for _ in range(50):
        page = zd.poll(cursor, app.clock.now())
        records.update((record.id, record) for record in page.records)
        cursor = page.cursor
        if not page.has_more:
            break
    compared = 0
    for rid, record in sorted(records.items()):
        if record.data.get("status") == "deleted" or str(record.data.get("custom_fields")).count("sev_legacy"):
            continue  # tombstones and the seed's deliberately unmappable tickets
        polled = mapping.normalize(record, "soak-zendesk")
        fetched_record = _connector(mapping, app).fetch(rid)
        assert fetched_record is not None
        fetched = mapping.normalize(fetched_record, "soak-zendesk")
        for fact in (*HISTORY, "missing_facts", "last_customer_message_at", "tier_entered_at", "note_texts"):
            assert getattr(polled, fact) == getattr(fetched, fact), (rid, fact)
        assert evaluate(polled, POLICY, app.clock.now()) == evaluate(fetched, POLICY, app.clock.now()), rid
        compared += 1
    assert compared >= 40

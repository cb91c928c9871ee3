"""Issue 9 item 9: the complete ESCALATION HANDOFF FORM (engine/handoff.py and the mappings' new facts).

Fixture shapes: tests/fixtures/zendesk/ticket_events_attachments.json is the "Incremental Ticket Event Export"
with the `comment_events` sideload (the same shape as ticket_events_page.json, see the fixtures' README), a
comment's `attachments` as the Ticket Comments API shows them (`{url, id, file_name, content_url,
mapped_content_url, content_type, size, width, height, inline, deleted, thumbnails}`,
https://developer.zendesk.com/api-reference/ticketing/tickets/ticket-attachments/);
tests/fixtures/jsm/issue_get_attachments.json is `GET /rest/api/2/issue/{key}` with the `attachment` field
(`[{self, id, filename, author, created, size, mimeType, content}]`, "Get issue" in the Jira Cloud platform REST
API v2) and the `comment` field (`{comments, maxResults, total, startAt}`, `jsdPublic` on each comment).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from engine.configfile import ConfigFileError
from engine.escalate import evaluate
from engine.handoff import COMMENT_LIMITS
from engine.model import Attachment, EscalationHistory, Flags, NoteText, Priority, Status, Ticket, Tier
from engine.policy import load_policy, policy_from_dict
from mappings import load_mapping

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
POLICY = load_policy(ROOT / "config.example.toml")
H = timedelta(hours=1)
M = timedelta(minutes=1)
FRIDAY = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def ticket(**changes: Any) -> Ticket:
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
        description="Checkout fails with a 502",
        first_public_reply_at=FRIDAY + H / 4,
        last_public_reply_at=FRIDAY + H / 4,
        last_agent_action_at=FRIDAY + H / 4,
        tier=Tier.L1,
        tier_entered_at=FRIDAY,
    )
    return replace(base, **changes)


def body(t: Ticket, now: datetime, history: EscalationHistory | None = None) -> str:
    decision = evaluate(t, POLICY, now, history) if history is not None else evaluate(t, POLICY, now)
    assert decision.comment is not None
    return decision.comment.body


def section(text: str, label: str) -> list[str]:
    """The lines under a label line, up to the next line that does not start with "- "."""
    lines = text.splitlines()
    start = lines.index(label) + 1
    end = start
    while end < len(lines) and lines[end].startswith("- "):
        end += 1
    return lines[start:end]


def test_issue9_item9_troubleshooting_lists_the_notes_since_the_tier_entry_with_times_cut_short():
    notes = (
        NoteText(FRIDAY - H, "written before the ticket was at L1: not part of this tier's work"),
        NoteText(FRIDAY + H, "Checked the gateway logs:\n  502 from the PSP since 07:40"),
        NoteText(FRIDAY + 2 * H, "Restarted the checkout pods " + "x" * 400),
    )
    t = ticket(note_texts=notes, internal_notes=tuple(note.at for note in notes))
    text = body(t, FRIDAY + 3 * H)
    lines = section(text, "Troubleshooting steps taken (internal notes):")
    assert lines[0] == "- 2026-11-27 10:00 UTC: Checked the gateway logs: 502 from the PSP since 07:40"
    assert lines[1].startswith("- 2026-11-27 11:00 UTC: Restarted the checkout pods xxx")
    assert lines[1].endswith("\u2026") and len(lines[1]) < 260
    assert len(lines) == 2
    assert "not part of this tier's work" not in text


def test_issue9_item9_troubleshooting_says_none_and_falls_back_to_the_count_and_is_left_out_when_unknown():
    quiet = body(ticket(note_texts=(), internal_notes=()), FRIDAY + 3 * H)
    assert section(quiet, "Troubleshooting steps taken (internal notes):") == [
        "- none since the ticket entered L1 at 2026-11-27 09:00 UTC"
    ]
    counted = body(ticket(internal_notes=(FRIDAY + H, FRIDAY + 2 * H)), FRIDAY + 3 * H)
    assert section(counted, "Troubleshooting steps taken (internal notes):") == [
        "- 2 since the ticket entered L1 at 2026-11-27 09:00 UTC, the last at 2026-11-27 11:00 UTC"
        " (their text is not read on this platform)"
    ]
    unknown = body(ticket(internal_notes=None, note_texts=None), FRIDAY + 3 * H)
    assert "Troubleshooting" not in unknown


def test_issue9_item9_attachments_count_and_links_left_out_where_the_platform_supplies_none():
    files = (
        Attachment("checkout.har", "https://acme.zendesk.com/attachments/token/abc/?name=checkout.har", FRIDAY),
        Attachment("screenshot.png", "https://acme.zendesk.com/attachments/token/def/?name=screenshot.png", FRIDAY),
    )
    text = body(ticket(attachments=files), FRIDAY + 3 * H)
    lines = text.splitlines()
    at = lines.index("Attachments: 2")
    assert lines[at + 1 : at + 3] == [
        "- checkout.har https://acme.zendesk.com/attachments/token/abc/?name=checkout.har",
        "- screenshot.png https://acme.zendesk.com/attachments/token/def/?name=screenshot.png",
    ]
    assert "Attachments: none" in body(ticket(attachments=()), FRIDAY + 3 * H)
    assert "Attachments" not in body(ticket(attachments=None), FRIDAY + 3 * H)


def test_issue9_item9_customer_side_last_communication_notified_sentiment_relationship():
    t = ticket(
        last_customer_message_at=FRIDAY + 2 * H,
        public_replies=(FRIDAY + H / 4, FRIDAY + H),
        segment="enterprise",
        organization="Acme GmbH",
        sentiment="negative (tag customer_angry)",
    )
    text = body(t, FRIDAY + 3 * H, EscalationHistory(customer_escalations_30d=2))
    lines = text.splitlines()
    assert (
        "Last customer communication: the customer wrote at 2026-11-27 11:00 UTC; "
        "our last public reply at 2026-11-27 10:00 UTC"
    ) in lines
    notified = next(line for line in lines if line.startswith("Customer notified of the escalation: "))
    assert notified.startswith("Customer notified of the escalation: not yet")
    assert "first public reply after this note" in notified
    assert "Customer sentiment: negative (tag customer_angry)" in lines
    assert (
        "Relationship: enterprise customer (Acme GmbH); 2 escalated tickets of this customer in the last 30 days"
    ) in lines


def test_issue9_item9_customer_fields_the_platform_cannot_supply_are_left_out():
    t = ticket(
        first_public_reply_at=None,
        last_public_reply_at=None,
        last_agent_action_at=None,
        missing_facts=frozenset({"public_replies"}),
    )
    text = body(t, FRIDAY + 3 * H)
    assert "Last customer communication" not in text
    assert "Customer sentiment" not in text
    assert "Relationship" not in text  # no segment, and no store history given
    notified = next(line for line in text.splitlines() if line.startswith("Customer notified"))
    assert "its clock records when" not in notified  # the replies cannot be read: no clock will tell


def test_issue9_item9_customer_notified_of_the_earlier_escalation_and_no_clock_claimed_where_none_runs():
    at_l2 = ticket(
        tier=Tier.L2,
        tier_entered_at=FRIDAY + H,
        public_replies=(FRIDAY + H / 4, FRIDAY + 90 * M),
        agent_actions=(FRIDAY + H / 4, FRIDAY + 70 * M, FRIDAY + 90 * M),
        flags=Flags(engineering_required=True),
    )
    notified = next(line for line in body(at_l2, FRIDAY + 2 * H).splitlines() if line.startswith("Customer notified"))
    assert notified.endswith(
        "; of the escalation to L2 (2026-11-27 10:00 UTC): yes, public reply at 2026-11-27 10:30 UTC"
    )
    silent = replace(at_l2, public_replies=(FRIDAY + H / 4,))
    notified = next(line for line in body(silent, FRIDAY + 2 * H).splitlines() if line.startswith("Customer notified"))
    assert notified.endswith("; of the escalation to L2 (2026-11-27 10:00 UTC): no public reply since")
    # L4 has no assessment target: no clock is claimed for the reply, and none for acceptance when ack is 0.
    at_l3 = replace(at_l2, tier=Tier.L3, flags=Flags(vendor_dependency=True))
    text = body(at_l3, FRIDAY + 2 * H)
    notified = next(line for line in text.splitlines() if line.startswith("Customer notified"))
    assert "clock" not in notified
    data = tomllib.loads((ROOT / "config.example.toml").read_text())["policy"]
    data["tiers"]["L4"]["acknowledgment_minutes"] = 0
    no_ack = evaluate(at_l3, policy_from_dict(data), FRIDAY + 2 * H).comment
    assert no_ack is not None
    assert "no deadline is set for it, so nothing measures it" in no_ack.body
    assert "due by" not in section(no_ack.body, "Acceptance (received by / when):")[0]


def test_issue9_item9_acceptance_block_says_how_it_is_filled():
    text = body(ticket(), FRIDAY + 6 * H + H / 2)
    lines = section(text, "Acceptance (received by / when):")
    assert len(lines) == 1
    assert lines[0].startswith(
        "- received by the first Specialist (L2) agent action on the ticket after this note (a comment, status or"
        " assignee change), due by 2026-11-27 15:45 UTC."
    )
    assert "not edited" in lines[0] and "records it as the acknowledgment clock (tagged if late)" in lines[0]


def test_issue9_item9_an_l1_to_l4_chain_names_its_path_and_the_rule_of_each_step():
    t = ticket(flags=Flags(engineering_required=True, vendor_dependency=True))
    decision = evaluate(t, POLICY, FRIDAY + 3 * H)
    assert decision.target_tier is Tier.L4 and decision.comment is not None
    lines = decision.comment.body.splitlines()
    assert "Escalated from L1 Front line to L4 Vendor at 2026-11-27 12:00 UTC" in lines
    assert (
        "Path: L1 -> L2 (l1-time-limit) -> L3 (engineering-required) -> L4 (vendor-dependency); "
        "L2, L3 did not hold the ticket: each step's rule held at once"
    ) in lines
    single = body(ticket(), FRIDAY + 3 * H)
    assert "Path:" not in single


def management_ticket(**changes: Any) -> Ticket:
    return ticket(priority=Priority.P2, segment="enterprise", flags=Flags(churn_threat=True), **changes)


def test_issue9_item9_management_todos_have_their_own_heading():
    text = body(management_ticket(), FRIDAY + H / 2)
    assert "Management must:" in text
    assert "Receiving tier must:" not in text  # the tier does not change: no tier to-do at all
    todo = section(text, "Management must:")
    assert todo[0] == "- acknowledge by 2026-11-27 10:00 UTC"
    assert "- notify the executive sponsor by 2026-11-27 10:30 UTC" in todo
    assert not any(line.startswith("- management:") for line in todo)


def test_issue9_item9_deadlines_already_past_are_listed_as_past_not_as_todos():
    # The management track started at 09:30; at 12:00 the ticket escalates to L2 (l1-time-limit). Nobody acted
    # since: acknowledgment (10:00), executive notification (10:30) and customer contact (11:30) are past; the
    # resolution plan (13:30) is still ahead.
    history = EscalationHistory(management_started_at=FRIDAY + H / 2)
    decision = evaluate(management_ticket(), POLICY, FRIDAY + 3 * H, history)
    assert decision.target_tier is Tier.L2 and decision.comment is not None
    text = decision.comment.body
    todo = section(text, "Management must:")
    past = section(text, "Deadlines already past:")
    assert todo[0] == "- share a resolution plan by 2026-11-27 13:30 UTC"
    assert not any("acknowledge" in line or "executive" in line or "contact" in line for line in todo)
    assert past == [
        "- management: acknowledge was due 2026-11-27 10:00 UTC (past)",
        "- management: notify the executive sponsor was due 2026-11-27 10:30 UTC (past)",
        "- management: contact the customer was due 2026-11-27 11:30 UTC (past)",
    ]
    # A deadline its clock shows met (a reply and an action at 09:45) is done: neither to-do nor past.
    acted = management_ticket(
        public_replies=(FRIDAY + H / 4, FRIDAY + 45 * M), agent_actions=(FRIDAY + H / 4, FRIDAY + 45 * M)
    )
    done = evaluate(acted, POLICY, FRIDAY + 3 * H, history).comment
    assert done is not None
    lines = section(done.body, "Management must:") + section(done.body, "Deadlines already past:")
    assert not any("acknowledge" in line or "contact the customer" in line for line in lines)


@pytest.mark.parametrize("platform", sorted(COMMENT_LIMITS))
def test_issue9_item9_the_note_fits_each_platforms_comment_limit(platform: str):
    huge = "\n".join(f"line {n} " + "y" * 20_000 for n in range(8))
    notes = tuple(NoteText(FRIDAY + n * M, "z" * 5000) for n in range(1, 100))
    files = tuple(Attachment(f"f{n}.log" + "w" * 200, f"https://acme/att/{n}" + "v" * 300) for n in range(200))
    t = ticket(
        platform=platform,
        subject="s" * 40_000,
        description=huge,
        note_texts=notes,
        internal_notes=tuple(note.at for note in notes),
        attachments=files,
    )
    comment = evaluate(t, POLICY, FRIDAY + 3 * H).comment
    assert comment is not None
    assert len(comment.text) <= COMMENT_LIMITS[platform]
    assert comment.text.endswith(f"({comment.marker})")  # the marker survives the cut whole
    small = evaluate(ticket(platform=platform), POLICY, FRIDAY + 3 * H).comment
    assert small is not None and "cut to fit" not in small.text


def test_issue9_item9_on_servicenow_long_note_lists_give_way_before_the_why_and_the_acceptance():
    notes = tuple(NoteText(FRIDAY + n * M, f"step {n} " + "z" * 400) for n in range(1, 40))
    files = tuple(
        Attachment(f"f{n}.har", "https://acme.service-now.com/sys_attachment.do?sys_id=" + "a" * 32) for n in range(30)
    )
    t = ticket(note_texts=notes, internal_notes=tuple(note.at for note in notes), attachments=files)
    comment = evaluate(t, POLICY, FRIDAY + 3 * H).comment
    assert comment is not None and len(comment.text) <= COMMENT_LIMITS["servicenow"]
    assert "cut to fit" not in comment.body
    assert "Why:" in comment.body and "Acceptance (received by / when):" in comment.body
    notes_shown = section(comment.body, "Troubleshooting steps taken (internal notes):")
    assert notes_shown[0].startswith("- 34 earlier notes since the ticket entered L1")  # the latest 5 shown
    assert notes_shown[-1].startswith("- 2026-11-27 09:39 UTC: step 39 ")
    roomy = evaluate(replace(t, platform="zendesk"), POLICY, FRIDAY + 3 * H).comment
    assert roomy is not None and "- 29 earlier notes" in roomy.body  # Zendesk holds the default 10


def test_issue9_item9_new_placeholders_validate_and_a_misspelling_is_refused():
    raw = tomllib.loads((ROOT / "config.example.toml").read_text())["policy"]
    fields = "$path $notes $attachments $last_contact $customer_notified $sentiment $relationship"
    fields += " $management_todo $past_deadlines $acceptance"
    policy_from_dict({**raw, "handoff": {"template": fields}})
    with pytest.raises(ConfigFileError, match="sentimnet"):
        policy_from_dict({**raw, "handoff": {"template": "Sentiment: $sentimnet"}})


# -- the mappings' new facts ------------------------------------------------------------------------------------


def fixture(platform: str, name: str) -> Any:
    return json.loads((FIXTURES / platform / name).read_text())


def test_issue9_item9_zendesk_events_give_note_texts_and_comment_attachments():
    page = fixture("zendesk", "ticket_events_attachments.json")
    events = [event for event in page["ticket_events"] if event["ticket_id"] == 4102]
    data = fixture("zendesk", "ticket_show.json")["ticket"]
    data = {**data, "id": 4102, "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T12:30:00Z"}
    window = [int(datetime(2026, 11, 20, tzinfo=UTC).timestamp()), int(datetime(2026, 11, 21, tzinfo=UTC).timestamp())]
    record = RawRecord("4102", data, {"ticket_events": events, "ticket_events_window": window})
    t = load_mapping("zendesk").normalize(record, "acme-zendesk")
    assert t.note_texts is not None and t.internal_notes is not None
    assert [note.at for note in t.note_texts] == list(t.internal_notes)
    assert [note.text for note in t.note_texts] == [
        "Reproduced with a test card: the PSP answers 502 after 30 s. HAR attached."
    ]
    assert t.attachments == (
        Attachment(
            "checkout.har",
            "https://acme.zendesk.com/attachments/token/Qm9ndXNUb2tlbkhBUg/?name=checkout.har",
            datetime(2026, 11, 20, 10, 0, tzinfo=UTC),
        ),
        Attachment(
            "psp-timeout.png",
            "https://acme.zendesk.com/attachments/token/Qm9ndXNUb2tlblBORw/?name=psp-timeout.png",
            datetime(2026, 11, 20, 11, 5, tzinfo=UTC),
        ),
    )
    # Without the complete event history neither is known: left out, never guessed.
    bare = load_mapping("zendesk").normalize(RawRecord("4102", data, {}), "acme-zendesk")
    assert bare.note_texts is None and bare.attachments is None


def test_issue9_item9_jsm_attachment_field_and_internal_note_texts():
    mapping = load_mapping("jsm")
    assert "attachment" in mapping.read_spec().fields
    data = fixture("jsm", "issue_get_attachments.json")
    t = mapping.normalize(RawRecord(data["id"], data), "acme-jsm")
    assert t.attachments == (
        Attachment(
            "gateway.log",
            "https://acme.atlassian.net/rest/api/3/attachment/content/10210",
            datetime(2026, 11, 20, 9, 12, tzinfo=UTC),
        ),
    )
    assert t.note_texts is not None
    assert [note.text for note in t.note_texts] == ["Gateway log attached; the 502s start at 07:40 UTC."]
    assert [note.at for note in t.note_texts] == list(t.internal_notes or ())
    without = {**data, "fields": {k: v for k, v in data["fields"].items() if k != "attachment"}}
    assert mapping.normalize(RawRecord(data["id"], without), "acme-jsm").attachments is None


def test_issue9_item9_servicenow_work_notes_give_texts_and_no_attachments_are_invented():
    mapping = load_mapping("servicenow")
    rows = fixture("servicenow", "sys_journal_field_for_page1.json")["result"]
    noted = {row["element_id"] for row in rows if row["element"] == "work_notes"}
    page = next(r for r in fixture("servicenow", "incident_poll_page1.json")["result"] if r["sys_id"] in noted)
    journal = [row for row in rows if row["element_id"] == page["sys_id"]]
    t = mapping.normalize(RawRecord(page["sys_id"], page, {"sys_journal_field": journal}), "acme-snow")
    assert t.internal_notes is not None and t.note_texts is not None
    assert [note.at for note in t.note_texts] == list(t.internal_notes)
    assert all(note.text for note in t.note_texts)
    assert t.attachments is None


def test_issue9_item9_sentiment_from_a_mapped_tag_and_absent_by_default():
    mapping = load_mapping("jsm")
    data = fixture("jsm", "issue_get_attachments.json")
    labels = {**data, "fields": {**data["fields"], "labels": ["customer_angry"]}}
    assert mapping.normalize(RawRecord(data["id"], labels), "acme-jsm").sentiment is None  # nothing mapped
    spec = mapping.spec.model_copy(
        update={"sentiment": type(mapping.spec.sentiment)(tags={"customer_angry": "negative"})}
    )
    mapped = type(mapping)(spec, "jsm.toml")
    assert mapped.normalize(RawRecord(data["id"], labels), "acme-jsm").sentiment == "negative (tag customer_angry)"


def test_issue9_item9_zendesk_satisfaction_rating_is_the_real_sentiment_field():
    data = fixture("zendesk", "ticket_show.json")["ticket"]
    mapping = load_mapping("zendesk")
    assert mapping.normalize(RawRecord(str(data["id"]), data), "z").sentiment is None  # satisfaction_rating null
    rated = {**data, "satisfaction_rating": {"id": 35436, "score": "bad", "comment": "Still broken"}}
    assert mapping.normalize(RawRecord(str(data["id"]), rated), "z").sentiment == "satisfaction rating: bad"
    offered = {**data, "satisfaction_rating": {"score": "offered"}}
    assert mapping.normalize(RawRecord(str(data["id"]), offered), "z").sentiment is None

"""The Zendesk event book keeps what the mapping reads of each event, and drops what nobody reads (issue 14).

The book holds the raw events of up to `_BOOK_SIZE` tickets from the incremental ticket event export with the
`comment_events` sideload (fixture shapes: tests/fixtures/zendesk/README.md). A comment's `html_body` and
`plain_body` repeat its `body`, the audit's `system` and `metadata` are read by nobody, and only an internal
note's first NOTE_TEXT_CHARS characters (on one line) reach the handoff; the rest would sit in memory for every
ticket of the book.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import connectors.zendesk
from connectors.base import RawRecord
from connectors.zendesk import _EventBook
from engine.model import COMMENT_MARKER
from mappings import load_mapping
from mappings.common import NOTE_TEXT_CHARS, note_text
from mappings.zendesk import _quotable, trimmed_event

FIXTURES = Path(__file__).parent / "fixtures" / "zendesk"
AGENT = 370000222
WINDOW = [int(datetime(2026, 11, 20, tzinfo=UTC).timestamp()), int(datetime(2026, 11, 21, tzinfo=UTC).timestamp())]
LONG_NOTE = "Checked the PSP logs:\n\n" + "  the gateway   answers 502 after 30 s.\n" * 120
OUR_NOTE = "Escalated to L2.\n\n" + "- a line of the handoff\n" * 400 + "\n(" + COMMENT_MARKER.format(key="k-1") + ")"


def _comment(event_id: int, body: str, public: bool) -> dict[str, Any]:
    return {
        "id": event_id,
        "via": "Web form",
        "via_reference_id": None,
        "event_type": "Comment",
        "author_id": AGENT,
        "body": body,
        "html_body": f'<div class="zd-comment" dir="auto"><p dir="auto">{body}</p></div>',
        "plain_body": body,
        "public": public,
        "attachments": [],
        "audit_id": event_id,
    }


def _events() -> list[dict[str, Any]]:
    """Ticket 4102's events from the fixture, with a long internal note and one of our own long notes added."""
    page = json.loads((FIXTURES / "ticket_events_attachments.json").read_text())
    events = [event for event in page["ticket_events"] if event["ticket_id"] == 4102]
    for event in events:
        for child in event["child_events"]:
            for item in child.get("attachments") or ():
                item.update({"size": 48213, "width": None, "thumbnails": [{"id": 1, "content_url": "x", "size": 9}]})
    notification = {"id": 1, "event_type": "Notification", "subject": "Re: 4102", "body": LONG_NOTE, "recipients": [7]}
    events[0]["child_events"].append(notification)  # a trigger's e-mail: read by nobody
    last = events[-1]
    for offset, (body, public) in enumerate([(LONG_NOTE, False), (OUR_NOTE, False), ("Plain  reply.", True)]):
        extra = copy.deepcopy(last)
        extra["id"] = last["id"] + 10 + offset
        extra["timestamp"] = last["timestamp"] + 60 * (offset + 1)
        extra["created_at"] = f"2026-11-20T12:0{offset + 1}:00Z"
        extra["updater_id"] = AGENT
        extra["child_events"] = [_comment(extra["id"] * 10, body, public)]
        events.append(extra)
    return events


def _ticket(events: list[dict[str, Any]]) -> Any:
    data = json.loads((FIXTURES / "ticket_show.json").read_text())["ticket"]
    data = {**data, "id": 4102, "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T12:30:00Z"}
    related = {"ticket_events": events, "ticket_events_window": WINDOW}
    return load_mapping("zendesk").normalize(RawRecord("4102", data, related), "acme-zendesk")


def _booked(events: list[dict[str, Any]]) -> list[Any]:
    book = _EventBook(trimmed_event)
    book.since, book.until = WINDOW
    for event in copy.deepcopy(events):
        book.add(event)
    related = book.related(4102)
    assert related["ticket_events_window"] == WINDOW
    return list(related["ticket_events"])


def test_the_book_gives_the_mapping_the_same_ticket_as_the_raw_events() -> None:
    events = _events()
    booked = _booked(events)
    assert len(booked) == len(events)
    assert _ticket(booked) == _ticket(events)
    note_texts = _ticket(booked).note_texts
    assert note_texts is not None and len(note_texts[-1].text) == NOTE_TEXT_CHARS  # the long note, cut as before


def test_the_book_drops_what_nobody_reads() -> None:
    booked = _booked(_events())
    comments = [child for event in booked for child in event["child_events"] if child["event_type"] == "Comment"]
    assert comments and all("html_body" not in child and "plain_body" not in child for child in comments)
    assert all(len(child["body"]) <= 2 * NOTE_TEXT_CHARS for child in comments)
    public = [child["body"] for child in comments if child["public"] is True]
    assert public and all(body in ("", "(escalation-sync:k-1)") for body in public)  # never quoted: not kept
    ours = [child["body"] for child in comments if COMMENT_MARKER.partition("{")[0] in child["body"]]
    assert len(ours) == 2 and ours[-1].startswith("Escalated to L2.")  # the fixture's and ours: still known, readable
    assert all("system" not in event and "metadata" not in event for event in booked)
    kinds = {child["event_type"] for event in booked for child in event["child_events"]}
    assert kinds == {"Comment", "Create", "Change"}  # the notification is gone
    changes = [child for event in booked for child in event["child_events"] if child["event_type"] != "Comment"]
    assert changes and all(not {"id", "via", "via_reference_id"} & set(child) for child in changes)
    files = [item for child in comments for item in child["attachments"]]
    assert files and all(set(item) <= {"file_name", "content_url", "deleted"} for item in files)
    assert len(json.dumps(booked)) * 4 < len(json.dumps(_events()))


def test_the_connector_keeps_of_each_event_what_its_mapping_reads() -> None:
    mapping = load_mapping("zendesk")
    assert mapping.read_spec().history_trim is trimmed_event  # one definition, beside its readers


def test_a_cut_note_reads_as_the_whole_one() -> None:
    """Whatever its whitespace, the kept start of a note gives the same quoted text as the whole note."""
    rng = random.Random(14)
    for _ in range(500):
        pieces = rng.choices(["a", "word", "x" * 40, " ", "  ", "\n", "\n\n \t"], k=rng.randint(0, 400))
        text = "".join(pieces)
        kept = _quotable(text, NOTE_TEXT_CHARS)
        assert text.startswith(kept) and note_text(kept) == note_text(text)
        assert len(note_text(text)) < NOTE_TEXT_CHARS or len(kept) < len(text) or not text[len(kept) :].strip()
    assert _quotable("Our note." + " " * 900 + "(escalation-sync:k-9)", 0) == "(escalation-sync:k-9)"


def test_the_book_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tickets with long histories fill the book's bytes before its count of tickets: the oldest go, and the
    window then starts where the book was when it forgot them (their tickets cannot be complete any more)."""
    monkeypatch.setattr(connectors.zendesk, "_BOOK_BYTES", 20_000)
    book = _EventBook(trimmed_event)
    book.since, book.until = WINDOW
    rng = random.Random(20)
    for ticket in range(1, 21):
        text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=1800))  # a long text field, hardly compressible
        change = {"event_type": "Change", "description": text, "previous_value": None}
        book.position = WINDOW[0] + ticket
        book.add({"id": ticket, "ticket_id": ticket, "timestamp": book.position, "child_events": [change]})
    assert book.related(20)["ticket_events"][0]["child_events"] == [change]
    assert book.related(1)["ticket_events"] == []  # forgotten
    kept = [ticket for ticket in range(1, 21) if book.related(ticket)["ticket_events"]]
    assert 5 <= len(kept) < 20 and kept == list(range(21 - len(kept), 21))
    assert book.related(20)["ticket_events_window"] == [WINDOW[0] + 20, WINDOW[1]]


def _read_only(value: Any) -> Any:
    """The same event with every object a read-only Mapping that is no dict."""
    if isinstance(value, dict):
        return MappingProxyType({key: _read_only(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_read_only(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def test_any_mapping_is_trimmed_and_booked_as_a_dict_is() -> None:
    """The trim and the book ask `dict` first (issue 14: the abstract `Mapping` check was a large share of the trim's
    cost); an event, child or attachment that is another kind of Mapping is still read, not taken as malformed."""
    events = _events()
    assert any(item for event in events for child in event["child_events"] for item in child.get("attachments") or ())
    for event in events:
        assert _plain(trimmed_event(_read_only(event))) == trimmed_event(event)
    book = _EventBook(trimmed_event)
    book.since, book.until = WINDOW
    for event in events:
        book.add(_read_only(event))
    assert book.related(4102)["ticket_events"] == _booked(events)


def test_an_event_seen_again_replaces_its_first_copy_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export repeats a page's last second: an event that comes again replaces the copy the book holds, in
    its place, and the book's byte count follows (what is held, each event once), also once a ticket is
    forgotten."""
    book = _EventBook(trimmed_event)
    book.since, book.until = WINDOW

    def audit(event_id: int, ticket: int, status: str) -> dict[str, Any]:
        change = {"event_type": "Change", "status": status, "previous_value": "new", "id": event_id * 10}
        return {"id": event_id, "ticket_id": ticket, "timestamp": WINDOW[0] + event_id, "child_events": [change]}

    first, second, again = audit(1, 7, "open"), audit(2, 7, "pending"), audit(1, 7, "solved")
    for event in (first, second, audit(3, 8, "open"), again):
        book.add(copy.deepcopy(event))
    events = book.related(7)["ticket_events"]
    assert [event["id"] for event in events] == [1, 2]
    assert [event["child_events"][0]["status"] for event in events] == ["solved", "pending"]

    def size(*held: dict[str, Any]) -> int:
        return sum(len(connectors.zendesk._pack(trimmed_event(event))) for event in held)

    assert book._bytes == size(again, second, audit(3, 8, "open"))
    monkeypatch.setattr(connectors.zendesk, "_BOOK_SIZE", 2)
    book.add(copy.deepcopy(audit(4, 9, "open")))  # ticket 8 is the oldest now (7 came again after it): it goes
    assert book.related(8)["ticket_events"] == []
    assert [event["id"] for event in book.related(7)["ticket_events"]] == [1, 2]
    assert book._bytes == size(again, second, audit(4, 9, "open"))

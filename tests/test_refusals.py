"""Every malformed record is refused with NormalizeError naming its field, never another exception.

The cycle quarantines any exception, but "AttributeError: 'str' object has no attribute 'get'" does not tell an
admin which field of which record is wrong. Starting from valid recorded records (tests/fixtures/, with their
sideloads and histories in `related`), hypothesis replaces one value anywhere in the record, nested ones too, by
a JSON value of another type; normalize (and through it the history readers) must return a Ticket or raise
NormalizeError.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.base import RawRecord
from mappings import NormalizeError, load_mapping
from tests.test_fuzz import _paths, _replace

FIXTURES = Path(__file__).parent / "fixtures"

JSON_VALUES = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "x", "true", "2026-11-20T08:15:02Z", "2026-11-20 08:15:02", "1"]),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=2),
    st.dictionaries(st.sampled_from(["value", "calendar", "id", "x"]), st.one_of(st.integers(), st.text(max_size=3))),
)
"""What a mutated value becomes: each JSON type, with shapes the mappings look for (dates, `value`, `calendar`)."""


def _fixture(platform: str, name: str) -> Any:
    return json.loads((FIXTURES / platform / name).read_text(encoding="utf-8"))


def zendesk_records() -> list[RawRecord]:
    """The export page's tickets with their sideloads, one with its complete ticket events, one with its audits."""
    records = []
    for name in ("incremental_cursor_page1.json", "incremental_cursor_page2.json"):
        body = _fixture("zendesk", name)
        orgs = {org["id"]: org for org in body.get("organizations", [])}
        metrics = {metric["ticket_id"]: metric for metric in body.get("metric_sets", [])}
        for ticket in body["tickets"]:
            related: dict[str, Any] = {}
            if ticket.get("organization_id") in orgs:
                related["organization"] = orgs[ticket["organization_id"]]
            if ticket["id"] in metrics:
                related["metric_set"] = metrics[ticket["id"]]
            records.append(RawRecord(str(ticket["id"]), ticket, related))
    first = records[0]
    events = [e for e in _fixture("zendesk", "ticket_events_page.json")["ticket_events"] if e["ticket_id"] == 4101]
    window = [0, 2**40]
    records.append(
        RawRecord(first.id, first.data, {**first.related, "ticket_events": events, "ticket_events_window": window})
    )
    audits = _fixture("zendesk", "ticket_audits_4101.json")["audits"]
    records.append(RawRecord(first.id, first.data, {**first.related, "ticket_audits": audits}))
    return records


def jsm_records() -> list[RawRecord]:
    """Issues of the search pages, one with its changelog and comments."""
    issues = [
        *_fixture("jsm", "search_page1.json")["issues"],
        *_fixture("jsm", "search_with_history.json")["issues"],
    ]
    return [RawRecord(issue["id"], issue) for issue in issues]


def servicenow_records() -> list[RawRecord]:
    """The poll page's incidents with their task_sla, sys_audit and sys_journal_field rows."""
    slas = _fixture("servicenow", "task_sla_for_page1.json")["result"]
    audit = _fixture("servicenow", "sys_audit_for_page1.json")["result"]
    journal = _fixture("servicenow", "sys_journal_field_for_page1.json")["result"]
    records = []
    for row in _fixture("servicenow", "incident_poll_page1.json")["result"]:
        sys_id = row["sys_id"]
        related = {
            "instance_url": "https://acme.service-now.com",
            "table": "incident",
            "task_sla": [sla for sla in slas if sla.get("task") == sys_id],
            "sys_audit": [entry for entry in audit if entry.get("documentkey") == sys_id],
            "sys_journal_field": [entry for entry in journal if entry.get("element_id") == sys_id],
        }
        records.append(RawRecord(sys_id, row, related))
    return records


SAMPLES = {"zendesk": zendesk_records, "jsm": jsm_records, "servicenow": servicenow_records}


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def sample(request: pytest.FixtureRequest) -> tuple[Any, list[RawRecord]]:
    records = SAMPLES[request.param]()
    mapping = load_mapping(request.param)
    for record in records:
        mapping.normalize(record, "i")  # every starting record is valid
    return mapping, records


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_mutated_value_is_read_or_refused_by_name(sample: tuple[Any, list[RawRecord]], data: st.DataObject) -> None:
    mapping, records = sample
    record = data.draw(st.sampled_from(records))
    whole = {"data": copy.deepcopy(record.data), "related": copy.deepcopy(record.related)}
    # The record's own `data` and `related` are objects by the connectors' contract (connectors.base.RawRecord).
    path = data.draw(st.sampled_from([path for path in _paths(whole) if len(path) > 1]))
    new = data.draw(JSON_VALUES)
    _replace(whole, path, new)
    try:
        mapping.normalize(RawRecord(record.id, whole["data"], whole["related"]), "i")
    except NormalizeError as error:
        assert error.field and error.reason
    # Any other exception fails the test, with the path and value hypothesis reports.


def _mutated(records: list[RawRecord], where: str, path: tuple[Any, ...], new: Any) -> RawRecord:
    record = copy.deepcopy(records[0])
    _replace(record.data if where == "data" else record.related, path, new)
    return record


@pytest.mark.parametrize(
    ("platform", "where", "path", "new", "field"),
    [
        ("zendesk", "related", ("metric_set", "reply_time_in_seconds"), "42", "metric_set.reply_time_in_seconds"),
        ("zendesk", "related", ("metric_set", "reply_time_in_minutes"), [1], "metric_set.reply_time_in_minutes"),
        # A reply time that puts the first reply before year 1 (hypothesis found -1_065_512_656): OverflowError.
        (
            "zendesk",
            "related",
            ("metric_set", "reply_time_in_minutes", "calendar"),
            -1_065_512_656,
            "metric_set.reply_time_in_minutes",
        ),
        ("zendesk", "related", ("organization", "organization_fields"), "x", "organization.organization_fields"),
        ("servicenow", "related", ("task_sla",), "x", "task_sla"),
        ("servicenow", "related", ("task_sla", 0), 1, "task_sla"),
        ("servicenow", "related", ("task_sla", 0, "stage"), ["in_progress"], "task_sla.stage"),
        ("servicenow", "related", ("task_sla", 0, "has_breached"), {"x": 1}, "task_sla.has_breached"),
        ("jsm", "data", ("fields", "customfield_10031", "completedCycles"), [1], "customfield_10031.completedCycles"),
    ],
)
def test_the_known_escapes_are_refused_by_field(platform: str, where: str, path: tuple, new: Any, field: str) -> None:
    records = SAMPLES[platform]()
    if platform == "jsm":  # the issue whose resolution SLA has an ongoing cycle
        records = [r for r in records if (r.data["fields"].get("customfield_10031") or {}).get("ongoingCycle")]
    with pytest.raises(NormalizeError) as refused:
        load_mapping(platform).normalize(_mutated(records, where, path, new), "i")
    assert refused.value.field == field


def test_odd_history_rows_leave_the_facts_missing_not_the_ticket() -> None:
    """A sys_audit or journal row with a list or object where text belongs is a malformed row: its source's facts
    are missing (as for any malformed row), the ticket is still read."""
    records = [r for r in servicenow_records() if r.related["sys_audit"] and r.related["sys_journal_field"]]
    record = copy.deepcopy(records[0])
    record.related["sys_audit"][0]["sys_id"] = ["x"]
    record.related["sys_journal_field"][0]["element"] = {"x": 1}
    ticket = load_mapping("servicenow").normalize(record, "i")
    assert {"status_history", "public_replies"} <= ticket.missing_facts


def test_a_mention_with_odd_attributes_reads_as_no_text() -> None:
    """An ADF node's `attrs` that is no object shows nothing, as an unknown node does; the ticket is read."""
    record = copy.deepcopy(jsm_records()[0])
    mention = {"type": "mention", "attrs": "x"}
    record.data["fields"]["description"] = {"type": "doc", "content": [{"type": "paragraph", "content": [mention]}]}
    assert load_mapping("jsm").normalize(record, "i").description.strip() == ""

"""The normalizers' fast paths (issue 14) agree with their checked paths.

Each mapping reads the shapes the platforms send (dicts, integer ids, `Z` or offset timestamps as text, JSON
booleans, raw-mode text) without the general checks; any other shape goes the checked way. These tests feed
the same facts in both kinds of shape and expect the same Ticket, or the same refusal naming the field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from mappings import NormalizeError, load_mapping

FIXTURES = Path(__file__).parent / "fixtures"


class Frozen(Mapping[str, Any]):
    """A read-only mapping that is no dict: what the checked path accepts and the fast path leaves to it."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def zendesk_record() -> RawRecord:
    body = json.loads((FIXTURES / "zendesk" / "incremental_cursor_page1.json").read_text(encoding="utf-8"))
    ticket = copy.deepcopy(body["tickets"][0])
    metrics = {metric["ticket_id"]: metric for metric in body.get("metric_sets", [])}
    related: dict[str, Any] = {}
    if ticket["id"] in metrics:
        related["metric_set"] = copy.deepcopy(metrics[ticket["id"]])
    return RawRecord(str(ticket["id"]), ticket, related)


def test_zendesk_checked_shapes_give_the_same_ticket() -> None:
    mapping = load_mapping("zendesk")
    plain = zendesk_record()
    plain.data["custom_fields"] = [
        {"id": 360000000201, "value": True},
        {"id": 360020000001, "value": 75000.5},
        {"id": 360020000002, "value": 12.0},
    ]
    plain.data["created_at"] = "2026-11-20T08:00:00Z"
    plain.related["metric_set"]["assignee_updated_at"] = "2026-11-21T10:30:00Z"
    other = copy.deepcopy(plain)
    other.data["custom_fields"] = [
        Frozen({"id": 360000000201, "value": "yes"}),
        {"id": 360020000001, "value": "75,000.50"},
        {"id": 360020000002, "value": "12"},
    ]
    other.data["created_at"] = "2026-11-20T10:00:00+02:00"
    other.related["metric_set"]["assignee_updated_at"] = "2026-11-21T10:30:00+00:00"
    first, second = mapping.normalize(plain, "zd"), mapping.normalize(other, "zd")
    assert first.flags.engineering_required and first.flags.revenue_at_risk == 75000.5
    assert first.flags.affected_customers == 12
    assert first == second
    assert first.created_at.tzinfo is second.created_at.tzinfo


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("custom_fields", [{"id": True, "value": "x"}]),
        ("custom_fields", [{"value": "x"}]),
        ("custom_fields", [Frozen({"id": "360020000002", "value": "x"})]),
        ("id", True),
        ("created_at", "2026-11-20T08:00:00"),
    ],
)
def test_zendesk_fast_paths_refuse_what_the_checked_path_refuses(field: str, value: Any) -> None:
    record = zendesk_record()
    record.data[field] = value
    with pytest.raises(NormalizeError) as caught:
        load_mapping("zendesk").normalize(record, "zd")
    assert caught.value.field == field


def test_zendesk_checkbox_flag_given_as_text_that_is_no_boolean_is_refused() -> None:
    record = zendesk_record()
    record.data["custom_fields"] = [{"id": 360000000201, "value": "maybe"}]
    with pytest.raises(NormalizeError, match="engineering_required"):
        load_mapping("zendesk").normalize(record, "zd")


def jsm_record() -> RawRecord:
    body = json.loads((FIXTURES / "jsm" / "search_page1.json").read_text(encoding="utf-8"))
    issue = copy.deepcopy(body["issues"][0])
    return RawRecord(str(issue["id"]), issue, {})


def test_jsm_checked_shapes_give_the_same_ticket() -> None:
    mapping = load_mapping("jsm")
    plain = jsm_record()
    fields = plain.data["fields"]
    fields["labels"] = ["Churn-Risk", "api"]
    fields["customfield_10110"] = {"value": "Yes", "id": "10500"}
    fields["customfield_10120"] = 250000.0
    fields["customfield_10031"] = {
        "id": "1",
        "name": "Time to resolution",
        "completedCycles": [],
        "ongoingCycle": {
            "breachTime": {"epochMillis": 1764000000000},
            "breached": False,
            "paused": False,
            "remainingTime": {"millis": 3600000},
        },
    }
    other = copy.deepcopy(plain)
    other_fields = other.data["fields"]
    other_fields["customfield_10110"] = [Frozen({"value": "yes"})]
    other_fields["customfield_10120"] = "250,000"
    other_fields["customfield_10031"] = Frozen(
        {
            "id": "1",
            "name": "Time to resolution",
            "completedCycles": [],
            "ongoingCycle": Frozen(
                {
                    "breachTime": Frozen({"epochMillis": 1764000000000.0}),
                    "breached": False,
                    "paused": False,
                    "remainingTime": Frozen({"millis": 3600000.0}),
                }
            ),
        }
    )
    first, second = mapping.normalize(plain, "jsm"), mapping.normalize(other, "jsm")
    assert first.flags.churn_threat and first.flags.engineering_required
    assert first.flags.revenue_at_risk == 250000.0
    assert first.platform_slas == second.platform_slas
    assert first == second


def test_jsm_text_timestamp_and_date_object_agree() -> None:
    mapping = load_mapping("jsm")
    text = jsm_record()
    text.data["fields"]["created"] = "2026-11-20T03:00:00.000-0500"
    stamp = copy.deepcopy(text)
    stamp.data["fields"]["created"] = {"epochMillis": 1795161600000}
    assert mapping.normalize(text, "jsm").created_at == mapping.normalize(stamp, "jsm").created_at
    text.data["fields"]["created"] = "2026-11-20T03:00:00.000"
    with pytest.raises(NormalizeError, match="without a UTC offset") as caught:
        mapping.normalize(text, "jsm")
    assert caught.value.field == "created"


def servicenow_record(**changes: Any) -> RawRecord:
    row = json.loads((FIXTURES / "servicenow" / "incident_poll_page1.json").read_text(encoding="utf-8"))["result"][0]
    row = {**row, **changes}
    return RawRecord(str(row["sys_id"]), row, {"instance_url": "https://acme.service-now.com", "table": "incident"})


def test_servicenow_references_and_texts_agree() -> None:
    mapping = load_mapping("servicenow")
    plain = servicenow_record(u_churn_risk="true", u_security_legal="false", u_affected_customers="40")
    other = servicenow_record(u_churn_risk="Yes", u_security_legal=" 0 ", u_affected_customers=40)
    group = plain.data["assignment_group"]
    other.data["assignment_group"] = {"link": "https://acme.service-now.com/x", "value": text_of(group)}
    first, second = mapping.normalize(plain, "snow"), mapping.normalize(other, "snow")
    assert first.flags.churn_threat and not first.flags.security_legal
    assert first.flags.affected_customers == 40
    assert first == second


def text_of(value: Any) -> str:
    return value["value"] if isinstance(value, dict) else value


def test_servicenow_display_value_record_is_still_refused() -> None:
    record = servicenow_record(company={"display_value": "Globex", "link": "https://acme.service-now.com/x"})
    with pytest.raises(NormalizeError, match="display-value mode") as caught:
        load_mapping("servicenow").normalize(record, "snow")
    assert caught.value.field == "company"


def test_servicenow_flag_text_that_is_no_boolean_is_refused() -> None:
    with pytest.raises(NormalizeError) as caught:
        load_mapping("servicenow").normalize(servicenow_record(u_churn_risk="perhaps"), "snow")
    assert caught.value.field == "u_churn_risk"

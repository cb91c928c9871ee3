"""Tests for mappings/jsm.py and the default mappings/jsm.toml.

Fixture shapes follow Atlassian's documentation and real recordings:
- issue fields, option objects `{self, value, id}`, arrays of options, ADF `description` (API v3) vs a string
  (API v2), Cloud users (`accountId`) vs Server users (`name`/`key`): Jira Cloud platform REST API v3
  "Get issue" / "Search for issues using JQL enhanced search"
  (https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/).
- timestamps `2015-11-21T07:03:02.000-0500` (no colon in the offset; the offset follows DST).
- SLA custom fields `{id, name, _links, completedCycles, ongoingCycle?, slaDisplayFormat}` with cycles
  `{startTime, stopTime?, breachTime?, breached, paused?, withinCalendarHours?, goalDuration, elapsedTime,
  remainingTime}` and date objects `{iso8601, jira, friendly, epochMillis}`: JSM Cloud REST API
  "Get SLA information" (https://developer.atlassian.com/cloud/jira/service-desk/rest/api-group-request/).
- the JSM organizations field: `[{id, name, _links}]` (servicedeskapi organization DTO).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from engine.model import Priority, Status, Tier
from mappings import MappingError, NormalizeError, load_mapping
from mappings.jsm import JsmMapping, adf_to_text, load, parse_jira_time

FIXTURES = Path(__file__).parent / "fixtures" / "jsm"
DEFAULT_TOML = Path(__file__).parent.parent / "mappings" / "jsm.toml"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def issue(key: str) -> dict[str, Any]:
    for name in ("search_page1.json", "search_page2.json", "search_overlap.json"):
        for found in fixture(name)["issues"]:
            if found["key"] == key:
                return copy.deepcopy(found)
    raise KeyError(key)


@pytest.fixture(scope="module")
def mapping() -> JsmMapping:
    loaded = load_mapping("jsm")
    assert isinstance(loaded, JsmMapping)
    return loaded


def normalize(mapping: JsmMapping, data: dict[str, Any]):
    return mapping.normalize(RawRecord(id=data["id"], data=data), "acme-jsm")


def test_cloud_issue_with_adf_options_orgs_and_slas(mapping: JsmMapping) -> None:
    ticket = normalize(mapping, issue("SUP-101"))
    assert (ticket.platform, ticket.instance, ticket.id, ticket.key) == ("jsm", "acme-jsm", "10101", "SUP-101")
    assert ticket.url == "https://acme.atlassian.net/browse/SUP-101"
    assert ticket.priority is Priority.P1
    assert ticket.status is Status.OPEN  # "Escalated" is not named: its category (indeterminate) decides
    # -0500 before the DST change, -0400 after it, both to UTC.
    assert ticket.created_at == datetime(2026, 3, 6, 14, 12, 44, 318000, tzinfo=UTC)
    assert ticket.updated_at == datetime(2026, 3, 9, 14, 41, 5, 902000, tzinfo=UTC)
    assert ticket.revision == "2026-03-09T10:41:05.902-0400"
    assert ticket.description.splitlines() == [
        "Since the deploy at 08:50 every checkout call from EU tenants fails.",
        "Region: eu-west-1",
        "Error: 502 Bad Gateway",
        "since 08:50",
        "@Mia Krystof please check.",
    ]
    assert ticket.requester == "qm:2e8fd0b4-9a6c-4a8e-9d0f-6b7c8a1d2e3f:61a0c1d2e3f4a5b6c7d8e9f0"
    assert ticket.organization == "Globex Corporation"
    assert ticket.segment == "enterprise"
    assert ticket.tier is Tier.L2
    assert ticket.tags == {"churn-risk", "api", "esc_at_risk_time_to_first_response"}
    assert ticket.flags.churn_threat and ticket.flags.engineering_required
    assert not ticket.flags.public_complaint
    assert ticket.flags.revenue_at_risk == 250000.0 and ticket.flags.affected_customers == 40
    assert ticket.first_public_reply_at == datetime(2026, 3, 6, 14, 47, 10, 551000, tzinfo=UTC)
    slas = {sla.name: sla for sla in ticket.platform_slas}
    first, resolution = slas["time_to_first_response"], slas["time_to_resolution"]
    assert first.completed and not first.breached and first.remaining == timedelta(milliseconds=1533767)
    assert not resolution.completed and resolution.breached and not resolution.paused
    assert resolution.remaining == timedelta(milliseconds=-250101584)
    assert resolution.due_at == datetime(2026, 3, 6, 18, 12, 44, 318000, tzinfo=UTC)


def test_null_priority_pending_override_paused_sla_and_option_array(mapping: JsmMapping) -> None:
    ticket = normalize(mapping, issue("SUP-102"))
    assert ticket.priority is Priority.P3  # priority null -> the mapping's default
    assert ticket.status is Status.PENDING  # "Waiting for customer" named in status.names
    assert ticket.tier is None
    assert ticket.organization == "Initech"  # first of several organizations
    assert ticket.segment == "business"
    assert ticket.flags.engineering_required  # a multi-select array holding "Yes"
    assert ticket.first_public_reply_at is None
    slas = {sla.name: sla for sla in ticket.platform_slas}
    assert "time_to_first_response" not in slas  # completedCycles [] and no ongoingCycle: SLA not running
    paused = slas["time_to_resolution"]
    assert paused.paused and not paused.breached and paused.due_at is None


def test_done_without_resolution_is_solved_at_category_change(mapping: JsmMapping) -> None:
    ticket = normalize(mapping, issue("SUP-103"))
    assert ticket.status is Status.SOLVED
    assert ticket.solved_at == datetime(2026, 3, 9, 15, 20, 2, 345000, tzinfo=UTC)
    assert ticket.description == ""  # description null
    assert ticket.platform_slas == ()  # SLA fields null: the issue is not a customer request
    assert ticket.organization is None and ticket.segment is None
    assert ticket.priority is Priority.P4


def test_server_issue_v2_string_description_named_users_negative_completed_sla(mapping: JsmMapping) -> None:
    ticket = normalize(mapping, fixture("issue_server_v2_done_no_resolution.json"))
    assert ticket.url == "https://jira.acme.internal/browse/HELP-812"
    assert ticket.requester == "jdoe"  # Server users have name/key, no accountId
    assert ticket.description.startswith("The VPN client disconnects *every* 10 minutes.")
    assert ticket.priority is Priority.P3
    assert ticket.status is Status.SOLVED
    assert ticket.solved_at == datetime(2015, 11, 20, 23, 30, tzinfo=UTC)
    assert ticket.updated_at == datetime(2015, 11, 21, 12, 3, 2, tzinfo=UTC)
    assert ticket.flags.vendor_dependency
    assert ticket.flags.revenue_at_risk == 1500.5  # a number held as text
    (sla,) = ticket.platform_slas
    assert sla.name == "time_to_first_response" and sla.completed and sla.breached
    assert sla.remaining == timedelta(milliseconds=-13129216)
    assert ticket.first_public_reply_at == datetime(2015, 11, 3, 19, 0, tzinfo=UTC)


def test_server_user_without_name_falls_back_to_key(mapping: JsmMapping) -> None:
    data = fixture("issue_server_v2_done_no_resolution.json")
    del data["fields"]["reporter"]["name"]
    assert normalize(mapping, data).requester == "JIRAUSER10412"


def test_tier_read_by_option_id_when_value_was_renamed(mapping: JsmMapping) -> None:
    data = issue("SUP-101")
    data["fields"]["customfield_10200"]["value"] = "Level 3 (renamed in Jira)"
    data["fields"]["customfield_10200"]["id"] = "10302"
    assert normalize(mapping, data).tier is Tier.L3
    data["fields"]["customfield_10200"] = {"self": "x", "value": "Tier 9", "id": "99999"}
    assert normalize(mapping, data).tier is None


def test_tier_fields_by_value_and_by_id(mapping: JsmMapping, tmp_path: Path) -> None:
    assert mapping.tier_fields(Tier.L3) == {"customfield_10200": {"value": "L3 - Product Specialists"}}
    by_id = tmp_path / "jsm.toml"
    by_id.write_text(DEFAULT_TOML.read_text().replace('write_by = "value"', 'write_by = "id"'))
    assert load(by_id).tier_fields(Tier.L4) == {"customfield_10200": {"id": "10303"}}


def test_request_fields_cover_what_normalize_reads(mapping: JsmMapping) -> None:
    fields = mapping.request_fields
    for name in ("summary", "status", "priority", "updated", "labels", "customfield_10200", "customfield_10031"):
        assert name in fields
    assert len(fields) == len(set(fields))
    # A record holding only the requested fields normalizes (nothing else is needed).
    data = issue("SUP-101")
    data["fields"] = {name: value for name, value in data["fields"].items() if name in fields}
    assert normalize(mapping, data).key == "SUP-101"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda f: f.update(priority={"name": "Showstopper", "id": "9"}), "priority"),
        (lambda f: f.update(updated="last tuesday"), "updated"),
        (lambda f: f.update(created="2026-03-06T09:12:44.318"), "created"),  # no offset
        (lambda f: f.pop("created"), "created"),
        (lambda f: f.pop("status"), "status"),
        (lambda f: f.update(status={"name": "Limbo", "statusCategory": {"key": "mystery"}}), "status"),
        (lambda f: f.update(summary=None), "summary"),
        (lambda f: f.update(labels="churn-risk"), "labels"),
        (lambda f: f.update(customfield_10031=["not", "an", "sla"]), "customfield_10031"),
        (lambda f: f["customfield_10031"]["ongoingCycle"].update(remainingTime={"millis": "soon"}), "remainingTime"),
        (lambda f: f.update(customfield_10121="forty"), "customfield_10121"),
        (lambda f: f.update(customfield_10200="L2"), "customfield_10200"),
    ],
)
def test_bad_records_raise_normalize_error(mapping: JsmMapping, change, field: str) -> None:
    data = issue("SUP-101")
    change(data["fields"])
    with pytest.raises(NormalizeError) as caught:
        normalize(mapping, data)
    assert caught.value.record_id == "SUP-101"
    assert field in caught.value.field


def test_missing_fields_object_is_a_normalize_error(mapping: JsmMapping) -> None:
    with pytest.raises(NormalizeError, match="fields"):
        mapping.normalize(RawRecord(id="10101", data={"id": "10101", "key": "SUP-101"}), "acme-jsm")


def test_priority_names_are_configurable(tmp_path: Path) -> None:
    custom = tmp_path / "jsm.toml"
    text = DEFAULT_TOML.read_text().replace('Highest = "P1"', 'Highest = "P1"\nShowstopper = "P1"')
    custom.write_text(text.replace('default = "P3"', 'default = "P4"'))
    mapping = load(custom)
    data = issue("SUP-101")
    data["fields"]["priority"] = {"name": "showstopper", "id": "9"}
    assert normalize(mapping, data).priority is Priority.P1
    data["fields"]["priority"] = None
    assert normalize(mapping, data).priority is Priority.P4


def test_parse_jira_time_offsets_without_colon() -> None:
    assert parse_jira_time("2015-11-21T07:03:02.000-0500", "X-1", "updated") == datetime(
        2015, 11, 21, 12, 3, 2, tzinfo=UTC
    )
    assert parse_jira_time("2022-06-09T16:29:31.871-0700", "X-1", "created").hour == 23
    assert parse_jira_time({"epochMillis": 1444360920000, "friendly": "Today 10:22 AM"}, "X", "t") == datetime(
        2015, 10, 9, 3, 22, tzinfo=UTC
    )
    with pytest.raises(NormalizeError):
        parse_jira_time({"friendly": "Today 10:22 AM"}, "X-1", "created")


def test_adf_walks_nested_content_and_accepts_strings() -> None:
    doc = {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Impact"}]},
            {
                "type": "orderedList",
                "content": [
                    {
                        "type": "listItem",
                        "content": [{"type": "paragraph", "content": [{"type": "text", "text": "one"}]}],
                    },
                ],
            },
            {"type": "codeBlock", "content": [{"type": "text", "text": "x = 1"}]},
            {"type": "paragraph", "content": [{"type": "emoji", "attrs": {"shortName": ":fire:", "text": "🔥"}}]},
        ],
    }
    assert adf_to_text(doc).splitlines() == ["Impact", "one", "x = 1", "🔥"]
    assert adf_to_text("plain *wiki* text") == "plain *wiki* text"
    assert adf_to_text(None) == ""


# ---- broken mapping files ---------------------------------------------------------------------------------


def broken(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_TOML.read_text()
    assert old in text
    path = tmp_path / "jsm.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_unknown_key_is_refused_with_line(tmp_path: Path) -> None:
    path = broken(tmp_path, 'write_by = "value"', 'write_by = "value"\nfeild = "customfield_1"')
    with pytest.raises(MappingError) as caught:
        load(path)
    assert caught.value.key == "tier.feild"
    assert caught.value.line == line_of(path, "feild")
    assert str(caught.value).startswith(f"{path}:{caught.value.line}: tier.feild:")


def test_bad_priority_value_names_the_key(tmp_path: Path) -> None:
    path = broken(tmp_path, 'High = "P2"', 'High = "P5"')
    with pytest.raises(MappingError) as caught:
        load(path)
    assert caught.value.key == "priority.values.High"
    assert caught.value.line == line_of(path, 'High = "P5"')


def test_tier_field_must_be_a_custom_field(tmp_path: Path) -> None:
    path = broken(tmp_path, 'field = "customfield_10200"', 'field = "Support tier"')
    with pytest.raises(MappingError, match="custom field id") as caught:
        load(path)
    assert caught.value.key == "tier.field"


def test_write_by_id_needs_every_option_id(tmp_path: Path) -> None:
    text = broken(tmp_path, 'write_by = "value"', 'write_by = "id"').read_text()
    path = tmp_path / "jsm.toml"
    path.write_text(text.replace(', id = "10303"', ""))
    with pytest.raises(MappingError, match="L4"):
        load(path)


def test_unknown_status_value_and_category(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as caught:
        load(broken(tmp_path, '"Pending" = "pending"', '"Pending" = "paused"'))
    assert caught.value.key == "status.names.Pending"
    with pytest.raises(MappingError, match="category"):
        load(broken(tmp_path, 'indeterminate = "open"', 'in_progress = "open"'))


def test_first_response_must_name_an_sla(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="first_response"):
        load(broken(tmp_path, 'first_response = "time_to_first_response"', 'first_response = "ttfr"'))


def test_label_scheme_without_spaces(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="spaces"):
        load(broken(tmp_path, 'management = "esc_management"', 'management = "esc management"'))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = broken(tmp_path, "[priority.values]", "[priority.values")
    with pytest.raises(MappingError) as caught:
        load(path)
    assert caught.value.line == line_of(path, "[priority.values")
    with pytest.raises(MappingError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_flag_needs_a_source(tmp_path: Path) -> None:
    path = broken(tmp_path, 'labels = ["vendor-dependency"]', 'values = ["x"]')
    with pytest.raises(MappingError) as caught:
        load(path)
    assert caught.value.key.startswith("flags.vendor_dependency")


def test_server5_search_page_statuses_without_category_classic_priorities_and_a_tostring_segment(
    mapping: JsmMapping,
) -> None:
    """Jira Server 5.x: no statusCategory on statuses, the classic priority scheme, and a field the mapping
    reads as the segment holding a Java toString (an approvals object): no segment, not that text."""
    page = fixture("search_server5_classic.json")
    tickets = {issue["key"]: normalize(mapping, issue) for issue in page["issues"]}
    assert [(t.status, t.priority) for t in tickets.values()] == [
        (Status.NEW, Priority.P1),
        (Status.OPEN, Priority.P3),
        (Status.SOLVED, Priority.P4),
    ]
    assert tickets["OPS-311"].segment is None
    assert tickets["OPS-312"].segment == "enterprise"
    assert tickets["OPS-311"].requester == "mkrause"


def test_a_server5_status_not_named_in_the_mapping_says_it_has_no_category(mapping: JsmMapping) -> None:
    issue_data = fixture("search_server5_classic.json")["issues"][0]
    issue_data["fields"]["status"]["name"] = "Triage"
    with pytest.raises(NormalizeError, match=r"'Triage' has no statusCategory .*add it to \[status.names\]"):
        normalize(mapping, issue_data)

"""mappings/zendesk.py: normalizing Zendesk tickets, tier fields, and refusing broken mapping files.

Ticket shapes are the fixtures of tests/fixtures/zendesk/ (see tests/test_zendesk_connector.py for the doc
pages they follow). Ticket metric sets follow https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_metrics/.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from engine.model import Priority, Status, TagScheme, Tier
from mappings import MAPPINGS_DIR, MappingError, NormalizeError, load_mapping
from mappings.zendesk import ZendeskMapping, load

FIXTURES = Path(__file__).parent / "fixtures" / "zendesk"
DEFAULT_TOML = (MAPPINGS_DIR / "zendesk.toml").read_text(encoding="utf-8")


def page_records(name: str) -> dict[str, RawRecord]:
    body = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    orgs = {org["id"]: org for org in body.get("organizations", [])}
    metrics = {metric["ticket_id"]: metric for metric in body.get("metric_sets", [])}
    records = {}
    for ticket in body["tickets"]:
        related: dict[str, Any] = {}
        if ticket["organization_id"] in orgs:
            related["organization"] = orgs[ticket["organization_id"]]
        if ticket["id"] in metrics:
            related["metric_set"] = metrics[ticket["id"]]
        records[str(ticket["id"])] = RawRecord(str(ticket["id"]), ticket, related)
    return records


@pytest.fixture(scope="module")
def mapping() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


@pytest.fixture(scope="module")
def records() -> dict[str, RawRecord]:
    return {**page_records("incremental_cursor_page1.json"), **page_records("incremental_cursor_page2.json")}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_urgent_ticket_with_org_and_metrics(mapping: ZendeskMapping, records: dict[str, RawRecord]) -> None:
    ticket = mapping.normalize(records["4101"], "acme-zendesk")
    assert (ticket.platform, ticket.instance, ticket.id, ticket.key) == ("zendesk", "acme-zendesk", "4101", "4101")
    assert ticket.url == "https://acme.zendesk.com/agent/tickets/4101"
    assert ticket.priority is Priority.P1 and ticket.status is Status.OPEN
    assert ticket.created_at == at("2026-11-20T08:15:02Z") and ticket.created_at.tzinfo is not None
    assert ticket.description.startswith("Since 08:00 UTC")
    assert ticket.tier is Tier.L2 and ticket.assignee_group == "360000000102"
    assert ticket.organization == "Globex Corporation"
    assert ticket.segment == "enterprise"  # organization field "Premium" translated
    assert ticket.requester == "383838001"
    assert ticket.first_public_reply_at == ticket.created_at + timedelta(minutes=42)
    assert ticket.last_public_reply_at == ticket.first_public_reply_at  # exactly one agent reply
    assert ticket.last_agent_action_at == at("2026-11-21T16:40:11Z")
    assert ticket.tier_entered_at == at("2026-11-21T16:40:11Z")  # moved between groups: the last assignment
    assert ticket.flags.churn_threat is True  # tag churn_risk
    assert ticket.flags.engineering_required is True  # checkbox field 360000000201
    assert ticket.flags.affected_customers == 240
    assert ticket.flags.revenue_at_risk == 0.0  # the organization's annual_revenue is not revenue at risk
    assert ticket.flags.reopen_count == 1
    assert ticket.flags.public_complaint is False
    assert ticket.revision == "2026-11-21T16:40:11Z"
    assert ticket.tags == frozenset({"checkout", "churn_risk", "eu"})


def test_null_priority_gets_the_default_and_no_tier(mapping: ZendeskMapping, records: dict[str, RawRecord]) -> None:
    ticket = mapping.normalize(records["4102"], "acme-zendesk")
    assert ticket.priority is Priority.P3
    assert ticket.status is Status.NEW
    assert ticket.tier is None and ticket.tier_entered_at is None
    assert ticket.segment == "standard" and ticket.organization is None
    assert ticket.first_public_reply_at is None and ticket.last_agent_action_at is None


def test_hold_ticket_flags_from_org_field_and_vendor_tag(
    mapping: ZendeskMapping, records: dict[str, RawRecord]
) -> None:
    ticket = mapping.normalize(records["4103"], "acme-zendesk")
    assert ticket.status is Status.ON_HOLD and ticket.status.pauses_sla
    assert ticket.priority is Priority.P2
    assert ticket.tier is Tier.L3
    assert ticket.tier_entered_at == ticket.created_at  # one group station: in this group since creation
    assert ticket.flags.churn_threat is True  # organization field churn_risk = true
    assert ticket.flags.vendor_dependency is True
    assert ticket.flags.engineering_required is False  # checkbox false
    assert ticket.last_public_reply_at is None  # three replies: the last one's time is not in the metrics
    assert ticket.segment == "standard"  # org field null, no segment tag


def test_deleted_ticket_is_a_tombstone(mapping: ZendeskMapping, records: dict[str, RawRecord]) -> None:
    ticket = mapping.normalize(records["3977"], "acme-zendesk")
    assert ticket.status is Status.DELETED and ticket.status.is_terminal


def broken(records: dict[str, RawRecord], key: str, **changes: Any) -> RawRecord:
    data = copy.deepcopy(records[key].data)
    for name, value in changes.items():
        if value is ...:
            data.pop(name)
        else:
            data[name] = value
    return RawRecord(key, data, records[key].related)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"priority": "critical"}, "priority"),
        ({"status": "archived"}, "status"),
        ({"status": ...}, "status"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"updated_at": None}, "updated_at"),
        ({"id": ...}, "id"),
        ({"tags": "a,b"}, "tags"),
    ],
)
def test_unnormalizable_records_raise_normalize_error(
    mapping: ZendeskMapping, records: dict[str, RawRecord], changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(NormalizeError) as caught:
        mapping.normalize(broken(records, "4101", **changes), "acme-zendesk")
    assert caught.value.field == field
    assert caught.value.record_id == "4101"


def test_non_numeric_number_flag_is_a_normalize_error(mapping: ZendeskMapping, records: dict[str, RawRecord]) -> None:
    fields = [{"id": 360020000002, "value": "lots"}]
    with pytest.raises(NormalizeError, match="affected_customers"):
        mapping.normalize(broken(records, "4101", custom_fields=fields), "acme-zendesk")


def test_tier_fields_and_tag_scheme_from_the_default_file(mapping: ZendeskMapping) -> None:
    assert mapping.tier_fields(Tier.L4) == {"group_id": 360000000104}
    assert mapping.tags == TagScheme()
    assert mapping.tier_tags == frozenset()


CUSTOM_FIELD_TOML = """
[priority]
default = "P4"
[priority.values]
urgent = "P1"
high = "P2"
normal = "P3"
low = "P4"

[tier]
mode = "custom_field"
field_id = 360000000300
[tier.options]
L1 = "tier_l1"
L2 = "tier_l2"
L3 = "tier_l3"
L4 = "tier_l4"

[segment.tags]
vip = "enterprise"

[flags.security_legal]
custom_field = 360000000301
values = ["legal", "security"]

[tags]
breached = "sla_breach_{clock}"
at_risk = "sla_risk_{clock}"
management = "mgmt_escalation"
update_due = "customer_update_due"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zendesk.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_custom_field_tier_mode(tmp_path: Path, records: dict[str, RawRecord]) -> None:
    mapping = load(write(tmp_path, CUSTOM_FIELD_TOML))
    assert mapping.tier_fields(Tier.L2) == {"custom_fields": [{"id": 360000000300, "value": "tier_l2"}]}
    assert mapping.tier_tags == frozenset({"tier_l1", "tier_l2", "tier_l3", "tier_l4"})
    assert mapping.tags.breached == "sla_breach_{clock}"
    fields = [{"id": 360000000300, "value": "tier_l3"}, {"id": 360000000301, "value": "legal"}]
    record = broken(records, "4102", custom_fields=fields, tags=["vip"])
    ticket = mapping.normalize(record, "acme-zendesk")
    assert ticket.tier is Tier.L3
    assert ticket.priority is Priority.P4  # this file's default for null
    assert ticket.segment == "enterprise"
    assert ticket.flags.security_legal is True
    assert ticket.tier_entered_at is None  # field tiers and no assignment: entry time unknown, never updated_at


def replace_line(old: str, new: str) -> str:
    assert old in DEFAULT_TOML
    return DEFAULT_TOML.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    lines = enumerate(text.splitlines(), start=1)
    return next(number for number, line in lines if needle in line and not line.lstrip().startswith("#"))


@pytest.mark.parametrize(
    ("text", "key", "needle", "reason"),
    [
        (replace_line("[priority]\n", "[priorty]\n"), "priorty", "[priorty]", "Extra inputs"),
        (replace_line('urgent = "P1"', 'urgent = "P5"'), "priority.values.urgent", 'urgent = "P5"', "P1"),
        (replace_line('low = "P4"', 'critical = "P4"'), "priority.values", "[priority.values]", "critical"),
        (replace_line("L3 = 360000000103", "L3 = 360000000102"), "tier.groups.L3", "L3 = 360000000102", "both map"),
        (replace_line("L4 = 360000000104\n", ""), "tier.groups.L4", "[tier.groups]", "no group for tier L4"),
        (replace_line('mode = "group"', 'mode = "groups"'), "tier.mode", 'mode = "groups"', "group"),
        (replace_line("L2 = 360000000102", "L5 = 360000000102"), "tier.groups.L5", "L5 = ", "L1"),
        (
            replace_line('breached = "esc_breached_{clock}"', 'breached = "esc_breached"'),
            "tags.breached",
            'breached = "esc_breached"',
            "{clock}",
        ),
        (
            replace_line('tags = ["public_complaint", "social_media"]', "colour = 1"),
            "flags.public_complaint.colour",
            "colour = 1",
            "Extra inputs",
        ),
        (
            replace_line('tags = ["public_complaint", "social_media"]', 'tags = ["public complaint"]'),
            "flags.public_complaint.tags",
            'tags = ["public complaint"]',
            "not a Zendesk tag",
        ),
        (
            replace_line("[flags.affected_customers]\ncustom_field = 360020000002", "[flags.affected_customers]"),
            "flags.affected_customers",
            "[flags.affected_customers]",
            "needs custom_field",
        ),
    ],
)
def test_broken_mapping_files_name_file_line_and_key(
    tmp_path: Path, text: str, key: str, needle: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        load(path)
    error = caught.value
    assert error.path == str(path)
    assert error.key == key
    assert error.line == line_of(text, needle)
    assert reason in error.reason
    assert str(error).startswith(f"{path}:{error.line}: {key}: ")


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    text = replace_line('normal = "P3"', "normal = P3")
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        load(path)
    assert caught.value.line == line_of(text, "normal = P3")


def test_missing_file_is_a_mapping_error(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read"):
        load(tmp_path / "absent.toml")


def test_normalize_parses_offsets_to_utc(mapping: ZendeskMapping, records: dict[str, RawRecord]) -> None:
    ticket = mapping.normalize(broken(records, "4102", created_at="2026-11-21T12:02:44+02:00"), "acme-zendesk")
    assert ticket.created_at == datetime(2026, 11, 21, 10, 2, 44, tzinfo=UTC)
    assert ticket.revision == "2026-11-21T17:05:30Z"


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("sev_2", Priority.P2), ("sev_4", Priority.P4), (None, Priority.P1), ("", Priority.P1)],
)
def test_severity_field_wins_over_priority_when_set(
    mapping: ZendeskMapping, records: dict[str, RawRecord], severity: str | None, expected: Priority
) -> None:
    fields = [{"id": 360020000004, "value": severity}]
    ticket = mapping.normalize(broken(records, "4101", custom_fields=fields), "acme-zendesk")  # priority urgent
    assert ticket.priority is expected


def test_retired_severity_option_is_quarantined(mapping: ZendeskMapping, records: dict[str, RawRecord]) -> None:
    fields = [{"id": 360020000004, "value": "sev_legacy_0"}]
    with pytest.raises(NormalizeError, match="sev_legacy_0") as caught:
        mapping.normalize(broken(records, "4101", custom_fields=fields), "acme-zendesk")
    assert caught.value.field == "priority"


def test_severity_field_without_values_is_refused(tmp_path: Path) -> None:
    text = re.sub(r"\[priority\.field_values\]\n(?:.+\n)+\n", "", DEFAULT_TOML, count=1)
    assert "sev_1" not in text and "[priority.values]" in text
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as caught:
        load(path)
    assert caught.value.key == "priority.field_id"
    assert caught.value.line == line_of(text, "field_id = 360020000004")


def test_an_org_segment_value_not_in_segment_values_is_no_segment(
    mapping: ZendeskMapping, records: dict[str, RawRecord]
) -> None:
    """A value the mapping does not list (here a Java toString pasted into the field) falls through to the
    segment tags and the default, never becomes the segment itself."""
    record = records["4101"]
    organization = copy.deepcopy(record.related["organization"])
    organization["organization_fields"]["segment"] = "com.acme.crm.SegmentRef@5e9f23b4"
    odd = RawRecord(record.id, record.data, {**record.related, "organization": organization})
    ticket = mapping.normalize(odd, "acme-zendesk")
    assert ticket.segment == "standard"  # no segment tag on 4101: the default

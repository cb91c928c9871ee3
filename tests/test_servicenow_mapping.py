"""mappings/servicenow.py: raw Table API records -> Ticket, and broken mapping files.

Fixture shapes follow the ServiceNow Table API reference ("Table - GET", raw mode: every value a string, "" for
empty, references as `{link, value}` or, with sysparm_exclude_reference_link=true, bare sys_ids; dates UTC
"YYYY-MM-DD HH:MM:SS"; durations as epoch datetimes) and the "Task SLA table" reference (stage, has_breached,
planned_end_time, business_time_left), checked against recorded instance responses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.base import RawRecord
from engine.model import Priority, Status, Tier
from mappings import MappingError, NormalizeError, load_mapping
from mappings.servicenow import ServiceNowMapping, load

FIXTURES = Path(__file__).parent / "fixtures" / "servicenow"
DEFAULT = Path(__file__).parent.parent / "mappings" / "servicenow.toml"
INSTANCE_URL = "https://acme.service-now.com"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def mapping() -> ServiceNowMapping:
    loaded = load_mapping("servicenow")
    assert isinstance(loaded, ServiceNowMapping)
    return loaded


def record(data: dict, **related: object) -> RawRecord:
    return RawRecord(
        id=str(data.get("sys_id", "")),
        data=data,
        related={"instance_url": INSTANCE_URL, "table": "incident", **related},
    )


def page_row(index: int) -> dict:
    return fixture("incident_poll_page1.json")["result"][index]


def test_bare_sys_id_record_normalizes(mapping: ServiceNowMapping) -> None:
    slas = [row for row in fixture("task_sla_for_page1.json")["result"] if row["task"] == page_row(0)["sys_id"]]
    ticket = mapping.normalize(record(page_row(0), task_sla=slas), "acme-snow")
    assert ticket.id == "1c741bd70b2322007518478d83673af3"
    assert ticket.key == "INC0010017"
    assert ticket.url == f"{INSTANCE_URL}/incident.do?sys_id=1c741bd70b2322007518478d83673af3"
    assert ticket.status is Status.OPEN
    assert ticket.priority is Priority.P1
    assert ticket.tier is Tier.L1
    assert ticket.segment == "enterprise"
    assert ticket.created_at == datetime(2026, 11, 18, 8, 12, 40, tzinfo=UTC)
    assert ticket.updated_at == datetime(2026, 11, 20, 9, 14, 3, tzinfo=UTC)
    assert ticket.flags.churn_threat and ticket.flags.customer_requested
    assert ticket.flags.affected_customers == 40
    assert not ticket.flags.vendor_dependency
    assert ticket.revision == "2026-11-20 09:14:03#6"
    assert [(sla.name, sla.breached, sla.completed) for sla in ticket.platform_slas] == [
        ("P1 resolution (4 hour)", True, False),
        ("Priority 1 response (15 min)", False, True),
    ]
    assert ticket.platform_slas[0].due_at == datetime(2026, 11, 20, 9, 2, 30, tzinfo=UTC)
    assert ticket.platform_slas[1].remaining == timedelta(minutes=9, seconds=12)


def test_link_value_references_and_all_string_values(mapping: ServiceNowMapping) -> None:
    data = fixture("incident_get_with_links.json")["result"]
    assert all(isinstance(value, (str, dict)) for value in data.values())
    ticket = mapping.normalize(record(data), "acme-snow")
    assert ticket.tier is Tier.L4
    assert ticket.assignee_group == "972a846916419f828b9d2434e465e150"
    assert ticket.organization == "4737819096da1dac72ff5d2a386ecbe0"
    assert ticket.requester == "a8f98bb0eb32010045e1a5115206fe3a"
    assert ticket.segment == "enterprise"
    assert ticket.status is Status.ON_HOLD
    assert ticket.priority is Priority.P2
    assert ticket.tags == frozenset({"esc_breached_resolution", "public_complaint"})
    assert ticket.flags.public_complaint and ticket.flags.security_legal and ticket.flags.engineering_required
    assert ticket.flags.vendor_dependency  # hold_reason 4 = Awaiting Vendor
    assert ticket.flags.linked_incidents == 2 and ticket.flags.affected_customers == 1250
    assert ticket.revision == "2026-11-20 10:02:18#9"


def test_empty_strings_are_absent_values(mapping: ServiceNowMapping) -> None:
    ticket = mapping.normalize(record(fixture("incident_poll_page2.json")["result"][0]), "acme-snow")
    assert ticket.tier is None and ticket.effective_tier is Tier.L1
    assert ticket.assignee_group is None and ticket.organization is None
    assert ticket.segment == "standard"
    assert ticket.tags == frozenset()
    assert ticket.solved_at is None
    assert ticket.status is Status.NEW and ticket.priority is Priority.P4


def test_priority_five_and_resolved_state(mapping: ServiceNowMapping) -> None:
    ticket = mapping.normalize(record(page_row(2)), "acme-snow")
    assert ticket.priority is Priority.P4
    assert ticket.status is Status.SOLVED
    assert ticket.solved_at == datetime(2026, 11, 20, 9, 20, 57, tzinfo=UTC)
    assert ticket.tier is None  # the Network group is not a tier group
    assert ticket.flags.reopen_count == 1


def test_closed_without_resolved_at_uses_closed_at(mapping: ServiceNowMapping) -> None:
    data = {**page_row(2), "state": "8", "resolved_at": "", "closed_at": "2026-11-20 11:00:00"}
    ticket = mapping.normalize(record(data), "acme-snow")
    assert ticket.status is Status.CLOSED
    assert ticket.solved_at == datetime(2026, 11, 20, 11, 0, tzinfo=UTC)


def test_paused_and_cancelled_task_slas(mapping: ServiceNowMapping) -> None:
    rows = fixture("task_sla_for_page1.json")["result"]
    paused = mapping.normalize(
        record(page_row(1), task_sla=[r for r in rows if r["task"] == page_row(1)["sys_id"]]), "i"
    )
    assert [(sla.paused, sla.remaining) for sla in paused.platform_slas] == [
        (True, timedelta(days=2, hours=7, minutes=20, seconds=5))
    ]
    cancelled = mapping.normalize(
        record(page_row(2), task_sla=[r for r in rows if r["task"] == page_row(2)["sys_id"]]), "i"
    )
    assert cancelled.platform_slas == ()


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"state": "9"}, "state", "unknown state code '9'"),
        ({"priority": "0"}, "priority", "unknown priority code '0'"),
        ({"sys_updated_on": "20/11/2026 09:14"}, "sys_updated_on", "not a date"),
        ({"opened_at": "2026-11-20T09:14:03Z"}, "opened_at", "not a date"),
        ({"opened_at": ""}, "opened_at", "missing date"),
        ({"sys_id": ""}, "sys_id", "missing sys_id"),
        ({"assignment_group": {"display_value": "Service Desk", "link": "x"}}, "assignment_group", "reference"),
        ({"u_affected_customers": "many"}, "u_affected_customers", "not a number"),
    ],
)
def test_bad_records_raise_normalize_error(mapping: ServiceNowMapping, change: dict, field: str, reason: str) -> None:
    with pytest.raises(NormalizeError) as caught:
        mapping.normalize(record({**page_row(0), **change}), "acme-snow")
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_empty_priority_uses_configured_default(mapping: ServiceNowMapping, tmp_path: Path) -> None:
    assert mapping.normalize(record({**page_row(0), "priority": ""}), "i").priority is Priority.P4
    strict = tmp_path / "strict.toml"
    strict.write_text(DEFAULT.read_text().replace('empty = "P4"\n', ""))
    with pytest.raises(NormalizeError, match="unknown priority code ''"):
        load(strict).normalize(record({**page_row(0), "priority": ""}), "i")


def test_tier_fields_and_custom_tier_field(mapping: ServiceNowMapping, tmp_path: Path) -> None:
    assert mapping.tier_fields(Tier.L3) == {"assignment_group": "bd9c66b3ad3c2d6d1a3d1fa7bc8960a9"}
    custom = tmp_path / "custom.toml"
    text = DEFAULT.read_text().replace('field = "assignment_group"', 'field = "u_support_tier"', 1)
    for tier, value in (
        ("L1", "bdd640fb06671ad11c80317fa3b1799d"),
        ("L2", "23b8c1e9392456de3eb13b9046685257"),
        ("L3", "bd9c66b3ad3c2d6d1a3d1fa7bc8960a9"),
        ("L4", "972a846916419f828b9d2434e465e150"),
    ):
        text = text.replace(f'{tier} = "{value}"', f'{tier} = "tier_{tier[1]}"')
    custom.write_text(text)
    loaded = load(custom)
    assert loaded.tier_fields(Tier.L2) == {"u_support_tier": "tier_2"}
    assert "u_support_tier" in loaded.poll_fields()
    assert loaded.normalize(record({**page_row(0), "u_support_tier": "tier_3"}), "i").tier is Tier.L3


def test_dot_walked_segment_field(tmp_path: Path) -> None:
    path = tmp_path / "segment.toml"
    text = DEFAULT.read_text()
    start = text.index("[segment]")
    end = text.index("[flags]")
    path.write_text(text[:start] + '[segment]\nfield = "company.u_segment"\n\n' + text[end:])
    loaded = load(path)
    assert "company.u_segment" in loaded.poll_fields()
    ticket = loaded.normalize(record({**page_row(1), "company.u_segment": "strategic"}), "i")
    assert ticket.segment == "strategic"


def test_poll_fields_cover_what_normalize_reads(mapping: ServiceNowMapping) -> None:
    fields = set(mapping.poll_fields())
    assert fields == set(page_row(0))  # the connector's fixture carries exactly the requested fields
    assert "work_notes" not in fields and "comments" not in fields


def test_tags_round_trip(mapping: ServiceNowMapping) -> None:
    assert mapping.split_tags(" vip, ,esc_at_risk_resolution ,") == ["vip", "esc_at_risk_resolution"]
    assert mapping.join_tags(["a", "b"]) == "a,b"
    assert mapping.tags.is_managed("esc_breached_resolution") and not mapping.tags.is_managed("vip")


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT.read_text()
    assert old in text
    path = tmp_path / "servicenow.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "key", "needle", "reason"),
    [
        ('"3" = "on_hold"', '"3" = "paused"', "status.values.3", '"3" = "paused"', "Input should be"),
        ('"5" = "P4"', '"5" = "P5"', "priority.values.5", '"5" = "P5"', "Input should be"),
        ("[tags]\n", "[tags]\ncolour = \"red\"\n", "tags.colour", "colour", "Extra inputs are not permitted"),
        ('churn_threat = { field = "u_churn_risk" }', 'churn_threat = { field = "u_churn_risk", tag = "churn" }',
         "flags.churn_threat", "churn_threat", "exactly one"),
        ('at_risk = "esc_at_risk_{clock}"', 'at_risk = "esc_at_risk"', "tags.at_risk", 'at_risk = "esc_at_risk"',
         "{clock}"),
        ('L2 = "23b8c1e9392456de3eb13b9046685257"', 'L2 = "bdd640fb06671ad11c80317fa3b1799d"', "tier",
         "[tier]", "same value"),
    ],
)  # fmt: skip
def test_broken_mapping_names_file_line_key(
    tmp_path: Path, old: str, new: str, key: str, needle: str, reason: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(MappingError) as caught:
        load(path)
    error = caught.value
    assert error.path == str(path)
    assert error.key.startswith(key)
    assert reason in error.reason
    assert error.line == _line_of(path, needle)
    assert str(error).startswith(f"{path}:{error.line}: ")


def test_mapping_missing_section_and_bad_toml(tmp_path: Path) -> None:
    text = DEFAULT.read_text()
    missing = tmp_path / "missing.toml"
    missing.write_text(text[: text.index("[priority]")] + text[text.index("[tier]") :])
    with pytest.raises(MappingError, match="priority: Field required"):
        load(missing)
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(text.replace("[status.values]", "[status.values", 1))
    with pytest.raises(MappingError, match="not valid TOML") as caught:
        load(invalid)
    assert caught.value.line is not None
    with pytest.raises(MappingError, match="cannot read"):
        load(tmp_path / "absent.toml")


def test_a_display_value_mode_record_is_refused_as_such(mapping: ServiceNowMapping) -> None:
    """sysparm_display_value=true: `{display_value, link}` references, labels for codes, local times. The error
    says so and how to fetch it, instead of "unknown state code 'Closed'; add it to [status.values]"."""
    active, closed = fixture("incident_poll_display_values.json")["result"]
    with pytest.raises(NormalizeError) as caught:
        mapping.normalize(record(active), "acme")
    assert "display-value mode" in str(caught.value) and "sysparm_display_value=false" in str(caught.value)
    assert caught.value.field == "caller_id"
    with pytest.raises(NormalizeError) as caught:
        mapping.normalize(record(closed), "acme")
    assert caught.value.field == "state" and "the label 'Closed'" in str(caught.value)
    assert "unknown state code" not in str(caught.value)


def test_an_unknown_numeric_state_code_keeps_its_own_advice(mapping: ServiceNowMapping) -> None:
    data = page_row(0) | {"state": "42"}
    with pytest.raises(NormalizeError, match=r"unknown state code '42'; add it to \[status.values\]"):
        mapping.normalize(record(data), "acme")


def test_a_reference_holding_garbage_is_no_requester(mapping: ServiceNowMapping) -> None:
    data = page_row(0) | {"caller_id": "no value", "company": "ACME (see notes)"}
    ticket = mapping.normalize(record(data), "acme")
    assert ticket.requester is None and ticket.organization is None
    assert mapping.normalize(record(page_row(0)), "acme").requester == page_row(0)["caller_id"]


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-24 15:00:01",
        "2024-02-29 00:00:00",
        "2026-1-5 1:2:3",
        "2026-02-30 10:00:00",
        "2026-13-01 00:00:00",
        "2026-11-24 25:00:00",
        "2026-11-24T15:00:00",
        "2026-11-24 15:00:00+01:00",
        "2026-11-24 15:00:00.5",
        "",
        "x",
    ],
)
def test_fast_date_parse_accepts_and_refuses_exactly_what_strptime_does(value: str) -> None:
    # parse_datetime takes the fixed shape through fromisoformat (issue 14): nothing else may change.
    from mappings.servicenow import DATE_FORMAT, parse_datetime

    try:
        expected: object = datetime.strptime(value, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError as error:
        expected = str(error)
    try:
        got: object = parse_datetime(value)
    except ValueError as error:
        got = str(error)
    assert got == expected and (not isinstance(got, datetime) or got.tzinfo is UTC)

"""ServiceNow history facts (issue 8): sys_audit and sys_journal_field read once per page, on fixtures and sandbox.

Fixture shapes: ServiceNow "Table API" (`GET /api/now/table/{table}` answers `{"result": [...]}`, raw values are
strings, references bare sys_ids with `sysparm_exclude_reference_link=true`), the `sys_audit` table (one row per
changed field: `documentkey`, `fieldname`, `oldvalue`, `newvalue`, `user` = user_name, `sys_created_on`) and the
`sys_journal_field` table (`element_id`, `element` = comments | work_notes, `value`, `sys_created_by`); the journal
rows were checked against the recorded shape in the reference payloads. A query the ACLs refuse answers 403
`{"error": {"message": "Insufficient rights to query records", ...}, "status": "failure"}`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.http import HttpClient
from connectors.servicenow import ServiceNowConnector, make_auth
from engine.escalate import evaluate, tier_clocks, tier_started_at
from engine.model import ClockState, EscalationHistory, Status, StatusChange, Tier, TierChange, WriteBack
from engine.policy import load_policy
from engine.sla import pauses_of
from mappings import load_mapping
from mappings.servicenow import ServiceNowMapping
from sandbox.base import SimClock
from sandbox.servicenow import TIER_GROUPS, ServiceNowSandbox

BASE = "https://acme.service-now.com"
FIXTURES = Path(__file__).parent / "fixtures" / "servicenow"
POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
RECORD = "46b87022a9fe198101a78787e40d7547"
DATE = "Fri, 20 Nov 2026 10:05:00 GMT"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def reply(name: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=fixture(name), headers={"Date": DATE})


def query_of(request: httpx.Request) -> str:
    return parse_qs(urlsplit(str(request.url)).query)["sysparm_query"][0]


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


@pytest.fixture
def mapping() -> ServiceNowMapping:
    loaded = load_mapping("servicenow")
    assert isinstance(loaded, ServiceNowMapping)
    return loaded


def fixture_connector(mapping: ServiceNowMapping) -> ServiceNowConnector:
    off = mapping.spec.platform_sla.model_copy(update={"enabled": False})
    mapping = ServiceNowMapping(mapping.spec.model_copy(update={"platform_sla": off}), mapping.path)
    http = HttpClient("acme-snow", BASE, auth=httpx.BasicAuth("escalation.sync", "pw"), sleep=lambda _: None)
    return ServiceNowConnector("acme-snow", http, mapping, {"page_size": 3})


def mock_page(api: respx.MockRouter, *, audit: httpx.Response | None = None, journal: httpx.Response | None = None):
    api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page1.json"))
    audits = api.get("/api/now/table/sys_audit").mock(return_value=audit or reply("sys_audit_for_page1.json"))
    journals = api.get("/api/now/table/sys_journal_field").mock(
        return_value=journal or reply("sys_journal_field_for_page1.json")
    )
    return audits, journals


def test_one_audit_and_one_journal_query_per_page(mapping: ServiceNowMapping) -> None:
    with respx.mock(base_url=BASE) as api:
        audits, journals = mock_page(api)
        page = fixture_connector(mapping).poll(None, NOW)
    ids = ",".join(record.id for record in page.records)
    assert audits.call_count == 1 and journals.call_count == 1
    assert query_of(audits.calls.last.request) == (
        f"documentkeyIN{ids}^tablename=incident^fieldnameINstate,assignment_group,assigned_to,priority^ORDERBYsys_id"
    )
    assert query_of(journals.calls.last.request) == (
        f"element_idIN{ids}^name=incident^elementINcomments,work_notes^ORDERBYsys_id"
    )
    by_id = {record.id: record for record in page.records}
    assert len(by_id[RECORD].related["sys_audit"]) == 6
    assert by_id["9d385017c611228701d22104cc95c371"].related["sys_journal_field"] == []


def normalized(mapping: ServiceNowMapping, **responses: httpx.Response):
    with respx.mock(base_url=BASE) as api:
        mock_page(api, **responses)
        page = fixture_connector(mapping).poll(None, NOW)
    record = next(record for record in page.records if record.id == RECORD)
    return mapping.normalize(record, "acme-snow")


def test_history_facts_of_a_recorded_page(mapping: ServiceNowMapping) -> None:
    ticket = normalized(mapping)
    assert ticket.status is Status.ON_HOLD and ticket.tier is Tier.L2
    # Inserts are not audited: the state at creation is the first change's oldvalue.
    assert ticket.status_history == (
        StatusChange(at("2026-11-19 14:02:11"), Status.NEW),
        StatusChange(at("2026-11-19 14:30:00"), Status.OPEN),
        StatusChange(at("2026-11-19 16:00:00"), Status.ON_HOLD),
        StatusChange(at("2026-11-20 08:00:00"), Status.OPEN),
        StatusChange(at("2026-11-20 09:00:00"), Status.ON_HOLD),
    )
    assert ticket.tier_changes == (
        TierChange(at("2026-11-19 14:02:11"), Tier.L1),
        TierChange(at("2026-11-19 15:10:00"), Tier.L2),
    )
    assert ticket.public_replies == (at("2026-11-19 15:50:00"), at("2026-11-20 08:05:00"))
    assert ticket.last_customer_message_at == at("2026-11-20 07:55:00")
    # Our own handoff note (it carries the marker) is neither a note by a person nor an agent action.
    assert ticket.internal_notes == (at("2026-11-19 15:25:00"), at("2026-11-20 08:30:00"))
    assert ticket.agent_actions == (
        at("2026-11-19 14:30:00"),
        at("2026-11-19 15:25:00"),
        at("2026-11-19 15:40:00"),
        at("2026-11-19 15:50:00"),
        at("2026-11-19 16:00:00"),
        at("2026-11-20 08:00:00"),
        at("2026-11-20 08:05:00"),
        at("2026-11-20 08:30:00"),
        at("2026-11-20 09:00:00"),
    )
    assert ticket.missing_facts == frozenset()


def test_every_clock_of_the_recorded_ticket_stops_at_a_real_fact(mapping: ServiceNowMapping) -> None:
    ticket = normalized(mapping)
    decision = evaluate(ticket, POLICY, NOW)
    clocks = {clock.name: clock for clock in decision.clocks}
    assert tier_started_at(ticket, EscalationHistory()) == at("2026-11-19 15:10:00")
    assert clocks["acknowledgment"].state is ClockState.MET and clocks["acknowledgment"].elapsed == timedelta(
        minutes=15
    )
    assert clocks["assessment"].state is ClockState.MET and clocks["assessment"].elapsed == timedelta(minutes=40)
    assert clocks["first_response"].state is ClockState.MET
    # Both on-hold periods are pauses: 16:00 -> 08:00 and 09:00 -> now.
    assert pauses_of(ticket) == (
        (at("2026-11-19 16:00:00"), at("2026-11-20 08:00:00")),
        (at("2026-11-20 09:00:00"), None),
    )
    assert clocks["customer_update"].state is ClockState.PAUSED


def test_a_table_the_user_may_not_read_makes_its_facts_unknown(mapping: ServiceNowMapping) -> None:
    ticket = normalized(mapping, journal=reply("error_403_query_acl.json", 403))
    assert ticket.public_replies is None and ticket.agent_actions is None
    assert {"public_replies", "agent_actions", "internal_notes"} <= ticket.missing_facts
    states = {clock.name: clock.state for clock in evaluate(ticket, POLICY, NOW).clocks}
    assert states["acknowledgment"] is ClockState.UNKNOWN and states["assessment"] is ClockState.UNKNOWN
    # The audit history still arrived: status and tier facts stand.
    assert ticket.tier_changes is not None and len(ticket.status_history) == 5


def test_a_malformed_history_row_makes_the_fact_absent_not_a_crash(mapping: ServiceNowMapping) -> None:
    body = fixture("sys_audit_for_page1.json")
    body["result"][0]["sys_created_on"] = "yesterday"
    ticket = normalized(mapping, audit=httpx.Response(200, json=body, headers={"Date": DATE}))
    assert ticket.tier_changes is None and {"status_history", "tier_changes"} <= ticket.missing_facts


# -- on the sandbox ------------------------------------------------------------------------------------------------

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # a Tuesday, inside business hours
USER = ("escalation.sync", "sandbox-password")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START)


@pytest.fixture
def sandbox(clock: SimClock) -> ServiceNowSandbox:
    app = ServiceNowSandbox(clock, credentials=USER)
    app.seed_tickets(30)
    return app


def sandbox_connector(sandbox: ServiceNowSandbox, **options: Any) -> ServiceNowConnector:
    mapping = load_mapping("servicenow")
    assert isinstance(mapping, ServiceNowMapping)
    credentials = {"username": SecretStr(USER[0]), "password": SecretStr(USER[1])}
    http = HttpClient("acme-snow", BASE, auth=make_auth(credentials), transport=sandbox.transport())
    return ServiceNowConnector("acme-snow", http, mapping, {"page_size": 50, **options})


def open_l1_incident(sandbox: ServiceNowSandbox) -> str:
    sys_id = next(
        sys_id
        for sys_id, row in sandbox.tables["incident"].items()
        if row["assignment_group"] == TIER_GROUPS[0] and row["state"] == "2"
    )
    sandbox.update(sys_id, priority="2")
    return sys_id


def read(snow: ServiceNowConnector, sys_id: str):
    record = snow.fetch(sys_id)
    assert record is not None
    return snow.mapping.normalize(record, "acme-snow")


def test_sandbox_two_pauses_are_kept_after_the_ticket_resumes(sandbox, clock) -> None:
    snow = sandbox_connector(sandbox)
    sys_id = open_l1_incident(sandbox)
    marks = []
    for state in ("3", "2", "3", "2"):
        clock.advance(timedelta(hours=1))
        sandbox.update(sys_id, state=state)
        marks.append(clock.now())
    ticket = read(snow, sys_id)
    assert pauses_of(ticket)[-2:] == ((marks[0], marks[1]), (marks[2], marks[3]))


def test_sandbox_a_second_public_reply_moves_the_update_cadence(sandbox, clock) -> None:
    snow = sandbox_connector(sandbox)
    sys_id = open_l1_incident(sandbox)
    clock.advance(timedelta(minutes=10))
    sandbox.update(sys_id, comments="We are on it.")
    clock.advance(timedelta(hours=3))
    sandbox.update(sys_id, comments="Update: the fix is in test.")
    second = clock.now()
    clock.advance(timedelta(minutes=30))
    update = next(c for c in evaluate(read(snow, sys_id), POLICY, clock.now()).clocks if c.name == "customer_update")
    assert update.elapsed == timedelta(minutes=30) and update.state is ClockState.OK
    assert read(snow, sys_id).public_replies[-1] == second


def test_sandbox_first_action_after_escalation_stops_acknowledgment_and_l2_reassignment_keeps_entry(
    sandbox, clock
) -> None:
    snow = sandbox_connector(sandbox)
    sys_id = open_l1_incident(sandbox)
    before = read(snow, sys_id)
    clock.advance(timedelta(minutes=1))
    snow.apply(WriteBack("servicenow", "acme-snow", sys_id, before.revision, tier=Tier.L2))
    entered = clock.now()
    clock.advance(timedelta(minutes=10))
    sandbox.update(sys_id, work_notes="Looking at the logs.")
    clock.advance(timedelta(minutes=30))
    sandbox.update(sys_id, assigned_to="8a5055c9c61122780043563ef53438e3")  # handed to a colleague in L2
    clock.advance(timedelta(minutes=30))
    sandbox.update(sys_id, work_notes="More digging.")
    ticket = read(snow, sys_id)
    assert tier_started_at(ticket, EscalationHistory()) == entered
    # The tier's own clocks (evaluate would show the next tier's when a rule moves the ticket on meanwhile).
    clocks = tier_clocks(ticket, POLICY, clock.now(), Tier.L2, tier_started_at(ticket, EscalationHistory()))
    ack = next(c for c in clocks if c.name == "acknowledgment")
    assert ack.state is ClockState.MET and ack.elapsed == timedelta(minutes=10) and ack.breached_at is None


def test_sandbox_our_own_tag_write_moves_no_clock(sandbox, clock) -> None:
    snow = sandbox_connector(sandbox)
    sys_id = open_l1_incident(sandbox)
    sandbox.update(sys_id, state="3")
    clock.advance(timedelta(minutes=20))
    before = read(snow, sys_id)
    tags = frozenset({"esc_breached_resolution"})
    snow.apply(WriteBack("servicenow", "acme-snow", sys_id, before.revision, add_tags=tags, tags=tags))
    after = read(snow, sys_id)
    assert after.updated_at > before.updated_at
    clock.advance(timedelta(minutes=5))
    assert evaluate(before, POLICY, clock.now()).clocks == evaluate(after, POLICY, clock.now()).clocks


@pytest.mark.parametrize("count", [10, 1000])
def test_sandbox_extra_calls_per_page_stay_constant(clock, count: int) -> None:
    sandbox = ServiceNowSandbox(clock, credentials=USER)
    sandbox.seed_tickets(count)
    for sys_id in list(sandbox.tables["incident"])[: count // 2]:
        sandbox.update(sys_id, comments="Any update?")
    snow = sandbox_connector(sandbox, page_size=count, sla_batch=1000)
    before = len(sandbox.requests)
    page = snow.poll(None, clock.now())
    assert len(page.records) == count
    paths = [path for _, path in sandbox.requests[before:]]
    # One page of incidents + one task_sla (sla_batch at its maximum), one sys_audit and one sys_journal_field
    # query: 3 extra calls, whatever the page size.
    assert sorted(paths) == sorted(
        f"/api/now/table/{table}" for table in ("incident", "task_sla", "sys_audit", "sys_journal_field")
    )


def test_sandbox_a_denied_history_table_is_unknown_not_fatal(sandbox, clock) -> None:
    sandbox.denied_tables.add("sys_journal_field")
    snow = sandbox_connector(sandbox)
    page = snow.poll(None, clock.now())
    ticket = snow.mapping.normalize(page.records[0], "acme-snow")
    assert ticket.agent_actions is None and "agent_actions" in ticket.missing_facts
    assert ticket.status_history  # sys_audit was readable


def test_the_platforms_own_changes_are_no_agent_actions(mapping: ServiceNowMapping) -> None:
    body = fixture("sys_audit_for_page1.json")
    for row in body["result"]:
        if row["documentkey"] == RECORD and row["sys_created_on"] == "2026-11-20 09:00:00":
            row["user"] = "system"  # a business rule put it on hold
    ticket = normalized(mapping, audit=httpx.Response(200, json=body, headers={"Date": DATE}))
    assert at("2026-11-20 09:00:00") not in ticket.agent_actions
    assert ticket.status_history[-1] == StatusChange(at("2026-11-20 09:00:00"), Status.ON_HOLD)

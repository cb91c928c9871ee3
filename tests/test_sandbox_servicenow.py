"""sandbox/servicenow.py through httpx, and the connector against it.

What the sandbox must reproduce comes from the ServiceNow Table API reference (parameters, `{"result": ...}`,
Link / X-Total-Count headers, error bodies `{"error": {"message", "detail"}, "status": "failure"}`, unknown
parameters silently ignored), "Encoded query strings" (^, ^OR, ^NQ, ORDERBY, IN, LIKE), "OAuth tokens"
(/oauth_token.do), "Inbound REST API rate limiting" (429, Retry-After, X-RateLimit-*), the Task SLA table and the
sys_journal_field journal table.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from connectors.http import HttpClient
from connectors.servicenow import ServiceNowConnector, make_auth
from engine.model import Comment, Tier, WriteBack
from mappings import load_mapping
from mappings.servicenow import ServiceNowMapping
from sandbox.base import Fault, SimClock
from sandbox.servicenow import ENTERPRISE, TIER_GROUPS, ServiceNowSandbox

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BASE = "https://acme.service-now.com"
INCIDENTS = "/api/now/table/incident"


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START)


USER = ("escalation.sync", "sandbox-password")
CLIENT = ("3e57b1f4a6c80210f877e3a1b7c0d9e2", "sandbox-client-secret")


@pytest.fixture
def sandbox(clock: SimClock) -> ServiceNowSandbox:
    app = ServiceNowSandbox(clock, credentials=USER, client=CLIENT)
    app.seed_tickets(300)
    return app


@pytest.fixture
def client(sandbox: ServiceNowSandbox):
    with httpx.Client(transport=sandbox.transport(), base_url=BASE, auth=USER) as http:
        yield http


def test_seeded_incidents_look_real(sandbox: ServiceNowSandbox) -> None:
    rows = list(sandbox.tables["incident"].values())
    assert len(rows) == 300
    assert sorted(row["number"] for row in rows)[:2] == ["INC0010001", "INC0010002"]
    assert all(re.fullmatch(r"[0-9a-f]{32}", row["sys_id"]) for row in rows)
    assert all(isinstance(value, str) for row in rows for value in row.values())
    assert {row["assignment_group"] for row in rows} >= set(TIER_GROUPS)
    assert {row["company"] for row in rows} & ENTERPRISE
    assert any(row["u_churn_risk"] == "true" for row in rows)
    assert {row["priority"] for row in rows} >= {"1", "2", "3", "4", "5"}
    assert {row["state"] for row in rows} >= {"1", "2", "3", "6", "7"}
    opened = [datetime.strptime(row["opened_at"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for row in rows]
    assert START - timedelta(days=5, minutes=1) <= min(opened) and max(opened) < START
    assert sandbox.task_slas(rows[0]["sys_id"])


def test_authorization_is_required(sandbox: ServiceNowSandbox) -> None:
    with httpx.Client(transport=sandbox.transport(), base_url=BASE) as anonymous:
        response = anonymous.get(INCIDENTS)
        assert response.status_code == 401
        assert response.json() == {
            "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
            "status": "failure",
        }
        assert anonymous.get(INCIDENTS, auth=("escalation.sync", "wrong")).status_code == 401
        assert anonymous.get(INCIDENTS, auth=USER, params={"sysparm_limit": "1"}).status_code == 200
    open_sandbox = ServiceNowSandbox(SimClock(START))  # no credentials configured: any Basic pair will do
    with httpx.Client(transport=open_sandbox.transport(), base_url=BASE) as http:
        assert http.get(INCIDENTS, auth=("demo.integration", "x")).status_code == 200
        assert http.get(INCIDENTS).status_code == 401


def test_oauth_client_credentials(sandbox: ServiceNowSandbox, clock: SimClock) -> None:
    with httpx.Client(transport=sandbox.transport(), base_url=BASE) as http:
        form = {"grant_type": "client_credentials", "client_id": CLIENT[0], "client_secret": "nope"}
        denied = http.post("/oauth_token.do", data=form)
        assert denied.status_code == 401 and denied.json()["error"] == "server_error"
        granted = http.post("/oauth_token.do", data={**form, "client_secret": CLIENT[1]}).json()
        assert granted["token_type"] == "Bearer" and granted["expires_in"] == 1799
        bearer = {"Authorization": f"Bearer {granted['access_token']}"}
        assert http.get(INCIDENTS, params={"sysparm_limit": "1"}, headers=bearer).status_code == 200
        clock.advance(timedelta(seconds=1800))
        assert http.get(INCIDENTS, params={"sysparm_limit": "1"}, headers=bearer).status_code == 401


def test_misspelled_parameter_is_silently_ignored(client: httpx.Client) -> None:
    right = client.get(INCIDENTS, params={"sysparm_query": "number=INC0010007"})
    assert [row["number"] for row in right.json()["result"]] == ["INC0010007"]
    wrong = client.get(INCIDENTS, params={"sysparm_qeury": "number=INC0010007"})
    assert wrong.status_code == 200
    assert len(wrong.json()["result"]) == 300 and wrong.headers["X-Total-Count"] == "300"


def test_encoded_query_operators(sandbox: ServiceNowSandbox, client: httpx.Client) -> None:
    rows = list(sandbox.tables["incident"].values())

    def numbers(query: str) -> list[str]:
        response = client.get(INCIDENTS, params={"sysparm_query": query, "sysparm_fields": "number"})
        return [row["number"] for row in response.json()["result"]]

    assert numbers("priority=1^ORpriority=2^ORDERBYnumber") == sorted(
        row["number"] for row in rows if row["priority"] in ("1", "2")
    )
    assert numbers("numberININC0010003,INC0010001^ORDERBYDESCnumber") == ["INC0010003", "INC0010001"]
    assert numbers("number=INC0010001^NQnumber=INC0010002^ORDERBYnumber") == ["INC0010001", "INC0010002"]
    assert numbers("state=2^priority=1^NQnumber=INC0010004^ORDERBYnumber") == sorted(
        row["number"]
        for row in rows
        if (row["state"] == "2" and row["priority"] == "1") or row["number"] == "INC0010004"
    )
    assert set(numbers("short_descriptionLIKEvpn")) == {
        row["number"] for row in rows if "vpn" in row["short_description"].lower()
    }
    ordered = sorted(rows, key=lambda row: (row["sys_updated_on"], row["sys_id"]))
    middle = ordered[100]
    after = numbers(
        f"sys_updated_on>={middle['sys_updated_on']}^sys_updated_on>{middle['sys_updated_on']}"
        f"^ORsys_id>{middle['sys_id']}^ORDERBYsys_updated_on^ORDERBYsys_id"
    )
    assert after == [row["number"] for row in ordered[101:]]


def test_fields_references_paging_and_headers(client: httpx.Client) -> None:
    params = {"sysparm_query": "ORDERBYnumber", "sysparm_limit": "2", "sysparm_offset": "2"}
    response = client.get(INCIDENTS, params={**params, "sysparm_fields": "number,assignment_group,company.name"})
    result = response.json()["result"]
    assert [row["number"] for row in result] == ["INC0010003", "INC0010004"]
    group = next(row["assignment_group"] for row in result if row["assignment_group"])
    assert set(group) == {"link", "value"} and group["link"].endswith(f"/sys_user_group/{group['value']}")
    assert all(set(row) == {"number", "assignment_group", "company.name"} for row in result)
    links = response.headers["Link"]
    assert (
        'sysparm_offset=4>;rel="next"' in links and 'rel="prev"' in links and 'sysparm_offset=298>;rel="last"' in links
    )
    assert response.headers["X-Total-Count"] == "300"
    bare = client.get(
        INCIDENTS,
        params={**params, "sysparm_fields": "assignment_group", "sysparm_exclude_reference_link": "true",
                "sysparm_no_count": "true"},
    )  # fmt: skip
    assert all(isinstance(row["assignment_group"], str) for row in bare.json()["result"])
    assert "X-Total-Count" not in bare.headers
    shown = client.get(INCIDENTS, params={**params, "sysparm_fields": "company", "sysparm_display_value": "true"})
    company = shown.json()["result"][0]["company"]
    assert set(company) == {"display_value", "link"} and not re.fullmatch(r"[0-9a-f]{32}", company["display_value"])


def test_patch_work_notes_moves_the_record_and_writes_the_journal(
    sandbox: ServiceNowSandbox, client: httpx.Client, clock: SimClock
) -> None:
    sys_id = sandbox.incident_ids()[0]
    before = sandbox.ticket(sys_id)
    clock.advance(timedelta(minutes=3))
    response = client.patch(
        f"{INCIDENTS}/{sys_id}",
        params={"sysparm_fields": "sys_id,sys_updated_on,sys_mod_count,work_notes"},
        json={"work_notes": "Escalated.\n\n(escalation-sync:k1)", "u_no_such_field": "x"},
    )
    assert response.status_code == 200
    result = response.json()["result"]
    assert result == {
        "sys_id": sys_id,
        "sys_updated_on": "2026-11-20 12:03:00",
        "sys_mod_count": str(int(before["sys_mod_count"]) + 1),
        "work_notes": "",
    }
    note = sandbox.comments(sys_id)[-1]
    assert (note["element"], note["element_id"], note["name"]) == ("work_notes", sys_id, "incident")
    journal = client.get(
        "/api/now/table/sys_journal_field",
        params={"sysparm_query": f"element_id={sys_id}^element=work_notes^valueLIKEescalation-sync:k1"},
    )
    assert [row["sys_id"] for row in journal.json()["result"]] == [note["sys_id"]]
    shown = client.get(
        f"{INCIDENTS}/{sys_id}", params={"sysparm_fields": "work_notes", "sysparm_display_value": "true"}
    )
    assert "(escalation-sync:k1)" in shown.json()["result"]["work_notes"]
    unchanged = client.patch(f"{INCIDENTS}/{sys_id}", json={"state": sandbox.ticket(sys_id)["state"]})
    assert unchanged.json()["result"]["sys_mod_count"] == result["sys_mod_count"]


def test_error_bodies(client: httpx.Client) -> None:
    missing = client.get(f"{INCIDENTS}/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"message": "No Record found", "detail": "Record doesn't exist or ACL restricts the record retrieval"},
        "status": "failure",
    }
    invalid = client.get("/api/now/table/incidnet")
    assert invalid.status_code == 400 and invalid.json()["error"]["message"] == "Invalid table incidnet"
    assert client.patch(f"{INCIDENTS}/nope", json={"state": "2"}).status_code == 404


def test_rate_limit_headers_and_429(sandbox: ServiceNowSandbox, client: httpx.Client) -> None:
    sandbox.rate_limit = 2
    ok = client.get(INCIDENTS, params={"sysparm_limit": "1"})
    assert ok.headers["X-RateLimit-Limit"] == "2" and int(ok.headers["X-RateLimit-Reset"]) > START.timestamp()
    client.get(INCIDENTS, params={"sysparm_limit": "1"})
    limited = client.get(INCIDENTS, params={"sysparm_limit": "1"})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) == 3600  # START is on the hour
    assert limited.json()["status"] == "failure"


def test_simulate_is_deterministic_and_moves_records(clock: SimClock) -> None:
    first, second = ServiceNowSandbox(clock), ServiceNowSandbox(SimClock(START))
    first.seed_tickets(50)
    second.seed_tickets(50)
    before = {sys_id: first.ticket(sys_id)["sys_updated_on"] for sys_id in first.incident_ids()}
    first.simulate(timedelta(hours=3))
    second.simulate(timedelta(hours=3))
    assert first.to_json() == second.to_json()
    assert clock.now() == START + timedelta(hours=3)
    moved = [sys_id for sys_id, stamp in before.items() if first.ticket(sys_id)["sys_updated_on"] != stamp]
    assert moved and len(first.incident_ids()) > 50
    assert all(first.ticket(sys_id)["sys_updated_on"] > "2026-11-20 12:00:00" for sys_id in moved)


# -- the connector against the sandbox --------------------------------------------------------------------------


def make_connector(sandbox: ServiceNowSandbox, clock: SimClock, **options: object) -> ServiceNowConnector:
    mapping = load_mapping("servicenow")
    assert isinstance(mapping, ServiceNowMapping)
    auth = make_auth({"client_id": SecretStr(CLIENT[0]), "client_secret": SecretStr(CLIENT[1])})
    http = HttpClient(
        "acme-snow",
        BASE,
        auth=auth,
        transport=sandbox.transport(),
        sleep=lambda seconds: clock.advance(timedelta(seconds=seconds)) and None,
    )
    return ServiceNowConnector("acme-snow", http, mapping, {"page_size": 40, **options})


def test_connector_reads_everything_while_records_move(sandbox: ServiceNowSandbox, clock: SimClock) -> None:
    snow = make_connector(sandbox, clock)
    mapping = snow.mapping
    seen: set[str] = set()
    cursor = None
    lookback_start = (START - timedelta(hours=72)).strftime("%Y-%m-%d %H:%M:%S")
    wanted = {sys_id for sys_id, row in sandbox.tables["incident"].items() if row["sys_updated_on"] >= lookback_start}
    for _ in range(100):
        page = snow.poll(cursor, clock.now())
        for record in page.records:
            seen.add(record.id)
            ticket = mapping.normalize(record, "acme-snow")
            assert len(ticket.platform_slas) == len(
                [sla for sla in sandbox.task_slas(record.id) if sla["stage"] != "cancelled"]
            )
        cursor = page.cursor
        sandbox.simulate(timedelta(minutes=5))  # agents keep working between our pages
        if not page.has_more:
            break
    moved_meanwhile = {
        sys_id for sys_id, row in sandbox.tables["incident"].items() if row["sys_updated_on"] > "2026-11-20 12:00:00"
    }
    assert wanted <= seen
    assert seen <= wanted | moved_meanwhile
    # Catch up, then an idle poll costs one request and returns nothing.
    while True:
        page = snow.poll(cursor, clock.now())
        cursor = page.cursor
        if not page.has_more:
            break
    clock.advance(timedelta(minutes=1))
    calls = sandbox.calls()
    idle = snow.poll(cursor, clock.now())
    assert idle.records == [] and sandbox.calls() - calls == 1


def test_connector_writes_back_and_leaves_peoples_tags_alone(sandbox: ServiceNowSandbox, clock: SimClock) -> None:
    snow = make_connector(sandbox, clock)
    sys_id = next(
        sys_id for sys_id, row in sandbox.tables["incident"].items()
        if row["assignment_group"] == TIER_GROUPS[0] and row["state"] == "2"
    )  # fmt: skip
    sandbox.update(sys_id, u_escalation_tags="esc_at_risk_resolution", u_tags="vip")
    record = snow.fetch(sys_id)
    assert record is not None
    ticket = snow.mapping.normalize(record, "acme-snow")
    assert ticket.tier is Tier.L1 and {"vip", "esc_at_risk_resolution"} <= ticket.tags
    clock.advance(timedelta(minutes=1))
    # A person tags the incident after our read, just before our write: no read of ours sees it, and it survives.
    sandbox.update(sys_id, u_tags="vip,handled")
    comment = Comment("Escalated to L2.", "acme-snow|k-1")
    result = snow.apply(
        WriteBack(
            "servicenow", "acme-snow", sys_id, ticket.revision, tier=Tier.L2,
            add_tags=frozenset({"esc_breached_resolution"}), remove_tags=frozenset({"esc_at_risk_resolution"}),
            comment=comment, tags=frozenset({"esc_breached_resolution"}),
        )
    )  # fmt: skip
    stored = sandbox.ticket(sys_id)
    assert stored["assignment_group"] == TIER_GROUPS[1]
    assert stored["u_escalation_tags"] == "esc_breached_resolution"
    assert stored["u_tags"] == "vip,handled"
    assert result.revision == f"{stored['sys_updated_on']}#{stored['sys_mod_count']}"
    notes = [row for row in sandbox.comments(sys_id) if comment.marker in row["value"]]
    assert [row["element"] for row in notes] == ["work_notes"]  # never the customer-visible comments
    assert sandbox.calls("PATCH") == 1 and sandbox.calls("GET", f"/incident/{sys_id}$") == 1  # the fetch only
    assert snow.has_comment(sys_id, "acme-snow|k-1") and not snow.has_comment(sys_id, "acme-snow|k-2")


def test_connector_survives_faults_and_deleted_records(sandbox: ServiceNowSandbox, clock: SimClock) -> None:
    snow = make_connector(sandbox, clock)
    sandbox.inject(Fault(503, times=2, method="GET", path_pattern="/table/incident$", headers={"Retry-After": "4"}))
    page = snow.poll(None, clock.now())
    assert len(page.records) == 40
    assert clock.now() == START + timedelta(seconds=8)
    sys_id = page.records[0].id
    sandbox.delete(sys_id)
    assert snow.fetch(sys_id) is None


def test_connector_waits_out_the_rate_limit(sandbox: ServiceNowSandbox, clock: SimClock) -> None:
    snow = make_connector(sandbox, clock)
    clock.advance(timedelta(minutes=58))
    sandbox.rate_limit = 4  # a poll is four requests (incidents, their task_sla, sys_audit and journal rows)
    first = snow.poll(None, clock.now())
    assert clock.now() == START + timedelta(minutes=58)
    second = snow.poll(first.cursor, clock.now())  # 429, Retry-After 120 s; the injected sleep moves the clock
    assert clock.now() == START + timedelta(hours=1)
    assert second.records and sandbox.calls(path_pattern="/table/incident$") == 3


def test_task_slas_beyond_one_page_are_keyset_read(
    sandbox: ServiceNowSandbox, clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connectors.servicenow.SLA_PAGE_SIZE", 3)
    snow = make_connector(sandbox, clock, page_size=20)
    page = snow.poll(None, clock.now())
    expected = {record.id: {sla["sys_id"] for sla in sandbox.task_slas(record.id)} for record in page.records}
    got = {record.id: {sla["sys_id"] for sla in record.related["task_sla"]} for record in page.records}
    assert got == expected and sum(map(len, got.values())) > 3
    assert sandbox.calls("GET", "/table/task_sla$") == sum(map(len, got.values())) // 3 + 1


def test_query_escapes_and_journal_display(sandbox: ServiceNowSandbox, client: httpx.Client) -> None:
    sys_id = sandbox.incident_ids()[1]
    sandbox.add_comment(sys_id, "ratio a^b reached", public=False)
    sandbox.add_comment(sys_id, "customer can see this", public=True)
    found = client.get(
        "/api/now/table/sys_journal_field",
        params={"sysparm_query": f"element_id={sys_id}^element=work_notes^valueLIKEa^^b", "sysparm_fields": "value"},
    )
    assert found.json()["result"] == [{"value": "ratio a^b reached"}]
    shown = client.get(
        f"{INCIDENTS}/{sys_id}", params={"sysparm_fields": "work_notes,comments", "sysparm_display_value": "true"}
    )
    result = shown.json()["result"]
    assert "ratio a^b reached" in result["work_notes"] and "(Work notes)" in result["work_notes"]
    assert "customer can see this" in result["comments"] and "customer can see this" not in result["work_notes"]

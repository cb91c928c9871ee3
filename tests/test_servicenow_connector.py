"""connectors/servicenow.py against recorded-shape responses (respx).

Shapes follow the ServiceNow Table API reference ("Table - GET / PATCH": `{"result": [...]}` for queries,
`{"result": {...}}` for one record, errors `{"error": {"message", "detail"}, "status": "failure"}`), "Encoded query
strings" (^, ^OR, ^NQ, ORDERBY, IN, LIKE), "Inbound REST API rate limiting" (429 + Retry-After, X-RateLimit-*),
"OAuth tokens" (POST /oauth_token.do, `{access_token, scope, token_type, expires_in}`), "Task SLA table" and the
journal table sys_journal_field (element_id, element, value); checked against recorded instance responses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.base import AuthError, ConflictError, ConnectorError, PermanentWriteError, TransientError
from connectors.http import HttpClient
from connectors.servicenow import (
    ALLOWED_PARAMS,
    ServiceNowConnector,
    ServiceNowOAuth,
    encode_cursor,
    make_auth,
    table_params,
    with_query,
)
from engine.model import Comment, Tier, WriteBack
from mappings import load_mapping
from mappings.servicenow import ServiceNowMapping

BASE = "https://acme.service-now.com"
FIXTURES = Path(__file__).parent / "fixtures" / "servicenow"
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
LATER = format_datetime(datetime(2026, 11, 20, 10, 5, tzinfo=UTC), usegmt=True)  # a server Date well after
ORDER = "^ORDERBYsys_updated_on^ORDERBYsys_id"
RECORD = "46b87022a9fe198101a78787e40d7547"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def reply(name: str, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=fixture(name), headers={"Date": LATER, **headers})


def params_of(request: httpx.Request) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(str(request.url)).query).items()}


@pytest.fixture
def mapping() -> ServiceNowMapping:
    loaded = load_mapping("servicenow")
    assert isinstance(loaded, ServiceNowMapping)
    return loaded


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def api(sleeps: list[float]):
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def connector(
    mapping: ServiceNowMapping, sleeps: list[float], *, sla: bool = False, history: bool = False, **options: Any
) -> ServiceNowConnector:
    if not sla:
        mapping = ServiceNowMapping(
            mapping.spec.model_copy(
                update={"platform_sla": mapping.spec.platform_sla.model_copy(update={"enabled": False})}
            ),
            mapping.path,
        )
    if not history:
        off = mapping.spec.history.model_copy(update={"audit": False, "journal": False})
        mapping = ServiceNowMapping(mapping.spec.model_copy(update={"history": off}), mapping.path)
    http = HttpClient("acme-snow", BASE, auth=httpx.BasicAuth("sync", "pw"), sleep=sleeps.append)
    return ServiceNowConnector("acme-snow", http, mapping, {"page_size": 3, **options})


def test_first_poll_asks_for_exactly_what_the_mapping_needs(api, mapping, sleeps) -> None:
    route = api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page1.json"))
    page = connector(mapping, sleeps).poll(None, NOW)
    sent = params_of(route.calls.last.request)
    assert sent == {
        "sysparm_query": "sys_updated_on>=2026-11-17 10:00:00" + ORDER,
        "sysparm_fields": sent["sysparm_fields"],
        "sysparm_display_value": "false",
        "sysparm_exclude_reference_link": "true",
        "sysparm_limit": "3",
        "sysparm_no_count": "true",
    }
    assert set(sent["sysparm_fields"].split(",")) == set(mapping.poll_fields())
    assert [record.id for record in page.records] == [
        row["sys_id"] for row in fixture("incident_poll_page1.json")["result"]
    ]
    assert page.has_more
    assert page.cursor == encode_cursor("2026-11-20 09:20:57", "9d385017c611228701d22104cc95c371")
    assert page.records[0].related["instance_url"] == BASE
    connector(mapping, sleeps, initial_lookback_hours=1.5).poll(None, NOW)  # the daemon passes a float
    assert params_of(route.calls.last.request)["sysparm_query"] == "sys_updated_on>=2026-11-20 08:30:00" + ORDER


def test_keyset_paging_to_the_end_and_resume(api, mapping, sleeps) -> None:
    pages = iter(["incident_poll_page1.json", "incident_poll_page2.json", "incident_poll_empty.json"])
    route = api.get("/api/now/table/incident").mock(side_effect=lambda request: reply(next(pages)))
    snow = connector(mapping, sleeps)
    first = snow.poll(None, NOW)
    second = snow.poll(first.cursor, NOW)
    assert params_of(route.calls[1].request)["sysparm_query"] == (
        "sys_updated_on>=2026-11-20 09:20:57^sys_updated_on>2026-11-20 09:20:57"
        "^ORsys_id>9d385017c611228701d22104cc95c371" + ORDER
    )
    assert "sysparm_offset" not in params_of(route.calls[1].request)
    assert [record.id for record in second.records] == ["e8caedcbc0a80164017df472f39eaed1"]
    assert not second.has_more
    assert second.cursor == encode_cursor("2026-11-20 09:31:44", "e8caedcbc0a80164017df472f39eaed1")
    # A restarted daemon resumes from the stored cursor alone: same query, nothing re-read.
    idle = connector(mapping, sleeps).poll(second.cursor, NOW)
    assert params_of(route.calls[2].request)["sysparm_query"] == (
        "sys_updated_on>=2026-11-20 09:31:44^sys_updated_on>2026-11-20 09:31:44"
        "^ORsys_id>e8caedcbc0a80164017df472f39eaed1" + ORDER
    )
    assert idle.records == [] and not idle.has_more and idle.cursor == second.cursor
    assert route.call_count == 3


def test_short_page_in_an_unsettled_second_rewinds_to_that_second(api, mapping, sleeps) -> None:
    just_after = format_datetime(datetime(2026, 11, 20, 9, 31, 46, tzinfo=UTC), usegmt=True)
    api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page2.json", Date=just_after))
    page = connector(mapping, sleeps).poll(encode_cursor("2026-11-20 09:20:57", "9d38"), NOW)
    assert page.cursor == encode_cursor("2026-11-20 09:31:44", "")
    api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page2.json"))
    settled = connector(mapping, sleeps).poll(page.cursor, NOW)
    assert settled.cursor == encode_cursor("2026-11-20 09:31:44", "e8caedcbc0a80164017df472f39eaed1")


def test_only_allowed_parameter_names_are_ever_sent(api, mapping, sleeps) -> None:
    api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page1.json"))
    api.get("/api/now/table/task_sla").mock(return_value=reply("task_sla_for_page1.json"))
    api.get(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_before_write.json"))
    api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_patch_result.json"))
    api.get("/api/now/table/sys_journal_field").mock(return_value=reply("journal_marker_found.json"))
    snow = connector(mapping, sleeps, sla=True)
    snow.poll(None, NOW)
    snow.fetch(RECORD)
    snow.apply(WriteBack("servicenow", "acme-snow", RECORD, "2026-11-20 09:14:03#3", tier=Tier.L2))
    snow.has_comment(RECORD, "k")
    assert api.calls.call_count == 6  # poll + its task_sla, fetch + its task_sla, one PATCH, one journal lookup
    for call in api.calls:
        names = set(params_of(call.request))
        assert names <= ALLOWED_PARAMS, names - ALLOWED_PARAMS
    with pytest.raises(ValueError, match="sysparm_qeury"):
        table_params(sysparm_qeury="active=true")
    with pytest.raises(ValueError, match="sysparm_offset"):
        table_params(sysparm_offset=200)


def test_task_slas_for_a_page_in_one_query(api, mapping, sleeps) -> None:
    api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page1.json"))
    slas = api.get("/api/now/table/task_sla").mock(return_value=reply("task_sla_for_page1.json"))
    page = connector(mapping, sleeps, sla=True).poll(None, NOW)
    assert slas.call_count == 1
    sent = params_of(slas.calls.last.request)
    ids = [record.id for record in page.records]
    assert sent["sysparm_query"] == f"taskIN{','.join(ids)}^ORDERBYsys_id"
    assert "sla.name" in sent["sysparm_fields"].split(",")
    by_id = {record.id: record for record in page.records}
    assert [row["sla.name"] for row in by_id[ids[0]].related["task_sla"]] == [
        "P1 resolution (4 hour)",
        "Priority 1 response (15 min)",
    ]
    assert len(by_id[ids[1]].related["task_sla"]) == 1
    ticket = mapping.normalize(by_id[ids[0]], "acme-snow")
    assert ticket.platform_slas[0].breached


def test_queries_go_out_once_encoded_with_commas_and_carets_raw(api, mapping, sleeps) -> None:
    """A page's reads and the PATCH carry their query in the URL as one string: the IN list's commas and the
    carets between conditions as they are, what could end or split a value (`&`, `=`, `#`, `+`, space, `%`)
    escaped; the platform reads the same parameters as from httpx's own encoding."""
    poll = api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_page1.json"))
    slas = api.get("/api/now/table/task_sla").mock(return_value=reply("task_sla_for_page1.json"))
    patch = api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_patch_result.json"))
    snow = connector(mapping, sleeps, sla=True)
    page = snow.poll(None, NOW)
    ids = [record.id for record in page.records]
    raw = slas.calls.last.request.url.query.decode()
    assert f"sysparm_query=taskIN{','.join(ids)}^ORDERBYsys_id&" in raw
    assert "%2C" not in raw and "%5E" not in raw
    assert "%2C" not in poll.calls.last.request.url.query.decode()
    snow.apply(WriteBack("servicenow", "acme-snow", RECORD, "r", comment=Comment("note", "k")))
    assert patch.calls.last.request.url.query.decode() == (
        "sysparm_fields=sys_id,sys_updated_on,sys_mod_count"
        "&sysparm_display_value=false&sysparm_exclude_reference_link=true"
    )
    odd = table_params(sysparm_query="short_descriptionLIKEa&b=c#d+e f%g,h^i>j", sysparm_limit=1)
    url = httpx.URL(BASE + with_query("/api/now/table/incident", odd))
    assert dict(url.params) == odd == dict(httpx.Request("GET", BASE, params=odd).url.params)
    assert url.query.decode().startswith("sysparm_query=short_descriptionLIKEa%26b%3Dc%23d%2Be+f%25g,h^i%3Ej&")
    assert with_query("/api/now/table/incident", {}) == "/api/now/table/incident"


def test_no_task_sla_query_for_an_empty_page(api, mapping, sleeps) -> None:
    api.get("/api/now/table/incident").mock(return_value=reply("incident_poll_empty.json"))
    slas = api.get("/api/now/table/task_sla").mock(return_value=reply("task_sla_for_page1.json"))
    page = connector(mapping, sleeps, sla=True).poll(encode_cursor("2026-11-20 09:31:44", "e8ca"), NOW)
    assert page.records == [] and slas.call_count == 0


def test_apply_sends_one_patch_without_a_read(api, mapping, sleeps) -> None:
    read = api.get(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_before_write.json"))
    patch = api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_patch_result.json"))
    comment = Comment("Escalated to L2: resolution clock breached.", "snow|46b8|L2|1")
    writeback = WriteBack(
        "servicenow",
        "acme-snow",
        RECORD,
        "2026-11-20 09:14:03#3",
        tier=Tier.L2,
        add_tags=frozenset({"esc_breached_resolution"}),
        remove_tags=frozenset({"esc_at_risk_resolution"}),
        comment=comment,
        tags=frozenset({"esc_breached_resolution", "esc_customer_update_due"}),
    )
    result = connector(mapping, sleeps).apply(writeback)
    assert read.call_count == 0 and patch.call_count == 1
    body = json.loads(patch.calls.last.request.content)
    # Our tags field is written whole from the plan; the people's tags field is never in the body.
    assert body == {
        "assignment_group": "23b8c1e9392456de3eb13b9046685257",
        "u_escalation_tags": "esc_breached_resolution,esc_customer_update_due",
        "work_notes": comment.text,
    }
    assert "comments" not in body and "u_tags" not in body
    assert result.revision == "2026-11-20 09:40:52#4"


def test_apply_comment_only_is_a_single_patch(api, mapping, sleeps) -> None:
    read = api.get(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_before_write.json"))
    patch = api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_patch_result.json"))
    comment = Comment("Handoff note", "key-1")
    connector(mapping, sleeps).apply(WriteBack("servicenow", "acme-snow", RECORD, "x#1", comment=comment))
    assert read.call_count == 0 and patch.call_count == 1
    assert json.loads(patch.calls.last.request.content) == {"work_notes": comment.text}


def test_apply_refuses_a_tag_change_without_the_plans_tag_set(api, mapping, sleeps) -> None:
    patch = api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_patch_result.json"))
    writeback = WriteBack("servicenow", "acme-snow", RECORD, "r#1", add_tags=frozenset({"esc_breached_resolution"}))
    with pytest.raises(ValueError, match="whole set of managed tags"):
        connector(mapping, sleeps).apply(writeback)
    assert patch.call_count == 0


@pytest.mark.parametrize(
    ("status", "name", "error", "match"),
    [
        (404, "error_404_no_record.json", PermanentWriteError, "no longer exists"),
        (403, "error_403_acl_update.json", PermanentWriteError, "refused"),
        (400, "error_400_invalid_table.json", PermanentWriteError, "Invalid table"),
        (409, "error_404_no_record.json", ConflictError, "409"),
    ],
)
def test_apply_errors(api, mapping, sleeps, status: int, name: str, error: type, match: str) -> None:
    api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply(name, status))
    writeback = WriteBack("servicenow", "acme-snow", RECORD, "", comment=Comment("note", "k"))
    with pytest.raises(error, match=match):
        connector(mapping, sleeps).apply(writeback)


def test_apply_to_a_deleted_record_is_permanent(api, mapping, sleeps) -> None:
    api.patch(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("error_404_no_record.json", 404))
    with pytest.raises(PermanentWriteError, match="no longer exists"):
        connector(mapping, sleeps).apply(WriteBack("servicenow", "acme-snow", RECORD, "r", tier=Tier.L3))


def test_429_retry_after_is_honoured(api, mapping, sleeps) -> None:
    responses = iter(
        [
            reply("error_429_rate_limit.json", 429, **{"Retry-After": "7", "X-RateLimit-Limit": "1000"}),
            reply("incident_poll_page1.json"),
        ]
    )
    api.get("/api/now/table/incident").mock(side_effect=lambda request: next(responses))
    page = connector(mapping, sleeps).poll(None, NOW)
    assert len(page.records) == 3
    assert sleeps == [7.0]


def test_server_error_then_success(api, mapping, sleeps) -> None:
    responses = iter([httpx.Response(502, text="<html>Bad Gateway</html>"), reply("incident_poll_page2.json")])
    api.get("/api/now/table/incident").mock(side_effect=lambda request: next(responses))
    page = connector(mapping, sleeps).poll(None, NOW)
    assert [record.id for record in page.records] == ["e8caedcbc0a80164017df472f39eaed1"]
    assert len(sleeps) == 1


def test_hibernating_instance_html_is_transient(api, mapping, sleeps) -> None:
    api.get("/api/now/table/incident").mock(return_value=httpx.Response(200, text="<html>Instance hibernating</html>"))
    with pytest.raises(TransientError, match="not JSON"):
        connector(mapping, sleeps).poll(None, NOW)


def test_invalid_table_read_error_names_the_platform_message(api, mapping, sleeps) -> None:
    api.get("/api/now/table/incidnet").mock(return_value=reply("error_400_invalid_table.json", 400))
    with pytest.raises(ConnectorError, match="Invalid table incidnet"):
        connector(mapping, sleeps, table="incidnet").poll(None, NOW)


def test_bad_cursor_and_bad_options(mapping, sleeps) -> None:
    with pytest.raises(ConnectorError, match="not a ServiceNow cursor"):
        connector(mapping, sleeps).poll("2026-11-20|abc", NOW)
    with pytest.raises(ValueError, match="initial_lookback_hours"):
        connector(mapping, sleeps, initial_lookback_hours="3 days")
    with pytest.raises(ValueError, match="page_size"):
        connector(mapping, sleeps, page_size=20000)
    with pytest.raises(ValueError, match="table"):
        connector(mapping, sleeps, table="incident^active=true")


def test_fetch(api, mapping, sleeps) -> None:
    row = fixture("incident_poll_page1.json")["result"][1]
    api.get(f"/api/now/table/incident/{RECORD}").mock(return_value=httpx.Response(200, json={"result": row}))
    api.get("/api/now/table/incident/gone").mock(return_value=reply("error_404_no_record.json", 404))
    slas = api.get("/api/now/table/task_sla").mock(return_value=reply("task_sla_for_page1.json"))
    snow = connector(mapping, sleeps, sla=True)
    fetched = snow.fetch(RECORD)
    assert fetched is not None and fetched.data == row
    assert params_of(slas.calls.last.request)["sysparm_query"] == f"taskIN{RECORD}^ORDERBYsys_id"
    assert [sla["sla.name"] for sla in fetched.related["task_sla"]] == ["P3 resolution (3 day)"]
    assert snow.fetch("gone") is None


def test_has_comment_queries_work_notes_journal(api, mapping, sleeps) -> None:
    responses = iter([reply("journal_marker_found.json"), reply("incident_poll_empty.json")])
    route = api.get("/api/now/table/sys_journal_field").mock(side_effect=lambda request: next(responses))
    snow = connector(mapping, sleeps)
    assert snow.has_comment(RECORD, "snow|46b8|L2|1")
    assert not snow.has_comment(RECORD, "a^b")
    first, second = (params_of(call.request) for call in route.calls)
    assert first["sysparm_query"] == (
        f"name=incident^element_id={RECORD}^element=work_notes^valueLIKEescalation-sync:snow|46b8|L2|1"
    )
    assert second["sysparm_query"].endswith("^valueLIKEescalation-sync:a^^b")  # a literal caret is doubled
    assert first["sysparm_limit"] == "1"


def test_has_comment_by_display_value(api, mapping, sleeps) -> None:
    route = api.get(f"/api/now/table/incident/{RECORD}").mock(return_value=reply("incident_work_notes_display.json"))
    snow = connector(mapping, sleeps, journal_lookup="display_value")
    assert snow.has_comment(RECORD, "snow|46b87022a9fe198101a78787e40d7547|L2|1")
    assert not snow.has_comment(RECORD, "snow|46b87022a9fe198101a78787e40d7547|L3|1")
    assert params_of(route.calls.last.request) == {"sysparm_fields": "work_notes", "sysparm_display_value": "true"}


def test_make_auth_basic_and_missing_credentials() -> None:
    auth = make_auth({"username": SecretStr("sync"), "password": SecretStr("pw")})
    assert isinstance(auth, httpx.BasicAuth)
    with pytest.raises(ValueError, match="'password'"):
        make_auth({"username": SecretStr("sync")})
    with pytest.raises(ValueError, match="'client_secret'"):
        make_auth({"client_id": SecretStr("abc")})
    with pytest.raises(ValueError, match="'username'"):
        make_auth({})
    assert isinstance(make_auth({"client_id": SecretStr("a"), "client_secret": SecretStr("b")}), ServiceNowOAuth)


def test_oauth_token_fetched_cached_and_refreshed_on_401(api, mapping, sleeps) -> None:
    token = fixture("oauth_token.json")["access_token"]
    tokens = iter([token, "second-token"])
    token_route = api.post("/oauth_token.do").mock(
        side_effect=lambda request: httpx.Response(
            200, json={**fixture("oauth_token.json"), "access_token": next(tokens)}
        )
    )
    seen: list[str] = []

    def table(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if len(seen) == 2:  # the platform revoked the first token
            return reply("error_401_not_authenticated.json", 401)
        return reply("incident_poll_empty.json")

    api.get("/api/now/table/incident").mock(side_effect=table)
    now = [0.0]
    auth = ServiceNowOAuth(SecretStr("client"), SecretStr("s3cret"), clock=lambda: now[0])
    http = HttpClient("acme-snow", BASE, auth=auth, sleep=sleeps.append)
    snow = ServiceNowConnector("acme-snow", http, mapping, {"page_size": 3})
    snow.poll(None, NOW)
    snow.poll(None, NOW)
    assert seen == [f"Bearer {token}", f"Bearer {token}", "Bearer second-token"]
    assert token_route.call_count == 2
    form = parse_qs(token_route.calls[0].request.content.decode())
    assert form == {"grant_type": ["client_credentials"], "client_id": ["client"], "client_secret": ["s3cret"]}
    now[0] = 1799.0  # past expires_in minus the margin: fetched again before use, no 401 needed
    api.post("/oauth_token.do").mock(return_value=reply("oauth_token.json"))
    snow.poll(None, NOW)
    assert seen[-1] == f"Bearer {token}" and auth.fetches == 3


def test_oauth_refused_is_an_auth_error_without_the_secret(api, mapping, sleeps) -> None:
    api.post("/oauth_token.do").mock(return_value=reply("oauth_token_denied.json", 401))
    auth = ServiceNowOAuth(SecretStr("client"), SecretStr("s3cret-value"))
    http = HttpClient("acme-snow", BASE, auth=auth, sleep=sleeps.append)
    with pytest.raises(AuthError) as caught:
        ServiceNowConnector("acme-snow", http, mapping, {}).poll(None, NOW)
    assert "s3cret-value" not in str(caught.value)


def test_a_malformed_last_row_is_handed_out_but_does_not_move_the_cursor(api, mapping, sleeps) -> None:
    rows = fixture("incident_poll_page1.json")["result"][:2]
    broken = {**fixture("incident_poll_page2.json")["result"][0], "sys_updated_on": "20.11.2026 09:31"}
    api.get("/api/now/table/incident").mock(return_value=httpx.Response(200, json={"result": [*rows, broken]}))
    page = connector(mapping, sleeps).poll(None, NOW)
    assert len(page.records) == 3 and page.has_more
    assert page.cursor == encode_cursor("2026-11-20 09:14:03", "46b87022a9fe198101a78787e40d7547")


def test_ids_that_are_not_sys_ids_never_reach_a_url_or_query(api, mapping, sleeps) -> None:
    snow = connector(mapping, sleeps)
    assert snow.fetch("abc/../sys_user") is None
    assert snow.has_comment("abc^ORactive=true", "k") is False
    with pytest.raises(PermanentWriteError):
        snow.apply(WriteBack("servicenow", "acme-snow", "x^y", "", comment=Comment("n", "k")))
    assert api.calls.call_count == 0

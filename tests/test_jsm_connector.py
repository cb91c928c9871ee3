"""Tests for connectors/jsm.py: respx at the httpx level (through connectors.http.HttpClient), then the sandbox.

Fixtures in tests/fixtures/jsm/ are written from Atlassian's documentation and checked against real
recordings:
- `POST /rest/api/3/search/jql` body `{jql, fields, maxResults, nextPageToken}`, answer
  `{issues, nextPageToken, isLast}` (no `total`/`maxResults`; fewer issues than asked is normal): "Search for
  issues using JQL enhanced search (POST)",
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/
- `PUT /rest/api/3/issue/{issueIdOrKey}` with `fields` and `update: {labels: [{add}, {remove}]}`, 204 on
  success, errors `{"errorMessages": [...], "errors": {field: message}}`: "Edit issue",
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/ and "Updating an Issue via the
  JIRA REST APIs" (https://developer.atlassian.com/server/jira/platform/updating-an-issue-via-the-jira-rest-apis-6848604)
- `POST /rest/servicedeskapi/request/{issueIdOrKey}/comment` `{body, public}` -> 201 CommentDTO, and
  `GET` of the same path with `public`, `internal`, `start`, `limit` -> `{size, start, limit, isLastPage,
  _links, values}`: JSM Cloud REST API "Create request comment" / "Get request comments",
  https://developer.atlassian.com/cloud/jira/service-desk/rest/api-group-request/
- 429 with `Retry-After` (seconds) and `RateLimit-Reason`: "Rate limiting",
  https://developer.atlassian.com/cloud/jira/platform/rate-limiting/
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.base import AuthError, ConflictError, ConnectorError, PermanentWriteError
from connectors.http import HttpClient, HttpOptions
from connectors.jsm import JsmConnector, make_auth
from engine.model import Comment, Tier, WriteBack
from mappings import load_mapping
from mappings.jsm import JsmMapping
from sandbox.base import Fault, SimClock
from sandbox.jsm import JsmSandbox

BASE = "https://acme.atlassian.net"
SEARCH = f"{BASE}/rest/api/3/search/jql"
FIXTURES = Path(__file__).parent / "fixtures" / "jsm"
NOW = datetime(2026, 3, 9, 15, 30, tzinfo=UTC)
TOKEN = "ATATT3xFfGF0-not-a-real-token"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def mapping() -> JsmMapping:
    loaded = load_mapping("jsm")
    assert isinstance(loaded, JsmMapping)
    return loaded


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def http(sleeps: Sleeps):
    auth = make_auth({"email": SecretStr("bot@acme.example"), "api_token": SecretStr(TOKEN)})
    client = HttpClient("acme-jsm", BASE, auth=auth, secrets=[TOKEN], options=HttpOptions(max_attempts=3), sleep=sleeps)
    yield client
    client.close()


def connector(http: HttpClient, mapping: JsmMapping, **options: Any) -> JsmConnector:
    return JsmConnector(
        "acme-jsm", http, mapping, {"page_size": 50, "overlap_seconds": 120, "jql": "project = SUP", **options}
    )


def sent(route: respx.Route, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# ---- poll ------------------------------------------------------------------------------------------------


@respx.mock
def test_poll_pages_to_the_end_by_keyset(http: HttpClient, mapping: JsmMapping) -> None:
    route = respx.post(SEARCH).mock(
        side_effect=[
            httpx.Response(200, json=fixture("search_page1.json")),
            httpx.Response(200, json=fixture("search_page2.json")),
        ]
    )
    jsm = connector(http, mapping)
    first = jsm.poll(None, NOW)
    assert [record.data["key"] for record in first.records] == ["SUP-101", "SUP-102"]
    assert [record.id for record in first.records] == ["10101", "10102"]
    assert first.has_more
    second = jsm.poll(first.cursor, NOW)
    assert [record.data["key"] for record in second.records] == ["SUP-103"]
    assert not second.has_more

    body1, body2 = sent(route, 0), sent(route, 1)
    since = millis(NOW - timedelta(hours=72))
    assert body1["jql"] == f"(project = SUP) AND updated >= {since} ORDER BY updated ASC, key ASC"
    assert "nextPageToken" not in body1
    assert body1["maxResults"] == 50
    assert body1["fields"] == mapping.request_fields
    # Page 2 is a fresh search from where page 1 ended (keyset), not the page token: issues updated while we
    # page (our own writes) move to the end of the order, and a token would then skip the ones behind them.
    last = max(millis(datetime.fromisoformat(i["fields"]["updated"])) for i in fixture("search_page1.json")["issues"])
    assert body2["jql"] == f"(project = SUP) AND updated >= {last} ORDER BY updated ASC, key ASC"
    assert "nextPageToken" not in body2


@respx.mock
def test_short_page_is_not_the_end(http: HttpClient, mapping: JsmMapping) -> None:
    """Jira may return fewer issues than maxResults; only isLast / nextPageToken say the data ended."""
    respx.post(SEARCH).mock(return_value=httpx.Response(200, json=fixture("search_page1.json")))
    page = connector(http, mapping, page_size=100).poll(None, NOW)
    assert len(page.records) == 2 and page.has_more


@respx.mock
def test_overlap_window_drops_what_was_delivered(http: HttpClient, mapping: JsmMapping) -> None:
    # The server's clock runs 30 s ahead of ours: the next window counts back from the server's time, or from
    # the newest `updated` delivered (the records' own clock) where that is earlier.
    server_time = NOW + timedelta(seconds=30)
    date = {"Date": format_datetime(server_time, usegmt=True)}
    route = respx.post(SEARCH).mock(
        side_effect=[
            httpx.Response(200, json=fixture("search_page1.json"), headers=date),
            httpx.Response(200, json=fixture("search_page2.json"), headers=date),
            httpx.Response(200, json=fixture("search_overlap.json")),
        ]
    )
    jsm = connector(http, mapping)
    cursor = jsm.poll(None, NOW).cursor
    cursor = jsm.poll(cursor, NOW).cursor
    third = jsm.poll(cursor, NOW + timedelta(minutes=5))
    # SUP-103 comes back unchanged (dropped); SUP-104 is new; SUP-102 changed again (delivered again).
    assert [record.data["key"] for record in third.records] == ["SUP-104", "SUP-102"]
    assert not third.has_more
    high_water = json.loads(cursor)["hw"]
    assert f"updated >= {min(millis(server_time), high_water) - 120_000} " in sent(route, 2)["jql"]
    assert "nextPageToken" not in sent(route, 2)


@respx.mock
def test_a_cursor_without_a_completed_search_counts_back_from_the_high_water_mark(
    http: HttpClient, mapping: JsmMapping
) -> None:
    route = respx.post(SEARCH).mock(return_value=httpx.Response(200, json=fixture("search_empty.json")))
    high_water = millis(datetime(2026, 3, 9, 15, 20, 2, 345000, tzinfo=UTC))
    older_cursor = json.dumps({"v": 1, "hw": high_water, "seen": {}})
    connector(http, mapping).poll(older_cursor, NOW)
    assert f"updated >= {high_water - 120_000} " in sent(route, 0)["jql"]


@respx.mock
def test_cursor_resumes_after_restart(http: HttpClient, mapping: JsmMapping) -> None:
    respx.post(SEARCH).mock(
        side_effect=[
            httpx.Response(200, json=fixture("search_page1.json")),
            httpx.Response(200, json=fixture("search_page2.json")),
            httpx.Response(200, json=fixture("search_overlap.json")),
        ]
    )
    mid = connector(http, mapping).poll(None, NOW).cursor
    # A new process (new connector) continues the paging from the stored cursor alone.
    end = connector(http, mapping).poll(mid, NOW)
    assert [record.data["key"] for record in end.records] == ["SUP-103"]
    again = connector(http, mapping).poll(end.cursor, NOW)
    assert [record.data["key"] for record in again.records] == ["SUP-104", "SUP-102"]


@respx.mock
def test_idle_poll_costs_one_call(http: HttpClient, mapping: JsmMapping) -> None:
    route = respx.post(SEARCH).mock(
        side_effect=[
            httpx.Response(200, json=fixture("search_page2.json")),
            httpx.Response(200, json=fixture("search_page2.json")),
        ]
    )
    jsm = connector(http, mapping)
    cursor = jsm.poll(None, NOW).cursor
    idle = jsm.poll(cursor, NOW + timedelta(minutes=1))
    assert idle.records == [] and not idle.has_more
    assert route.call_count == 2


@respx.mock
def test_expired_page_token_restarts_the_window(http: HttpClient, mapping: JsmMapping) -> None:
    """Tokens are only used to step past a page tied on one `updated` instant; an expired one restarts."""
    route = respx.post(SEARCH).mock(
        side_effect=[
            httpx.Response(400, json=fixture("error_400_page_token.json")),
            httpx.Response(200, json=fixture("search_overlap.json")),
        ]
    )
    high_water = millis(datetime.fromisoformat("2026-03-09T10:04:00+00:00"))
    tied = json.dumps({"v": 1, "hw": high_water, "seen": {}, "since": high_water, "token": "CAEaAggD"})
    page = connector(http, mapping).poll(tied, NOW)
    assert sent(route, 0)["nextPageToken"] == "CAEaAggD"
    restarted = sent(route, 1)
    assert "nextPageToken" not in restarted
    assert f"updated >= {high_water - 120_000} " in restarted["jql"]  # the high-water mark minus the overlap
    assert [record.data["key"] for record in page.records] == [
        i["key"] for i in fixture("search_overlap.json")["issues"]
    ]


@respx.mock
def test_bad_jql_is_a_connector_error_with_jira_message(http: HttpClient, mapping: JsmMapping) -> None:
    respx.post(SEARCH).mock(return_value=httpx.Response(400, json=fixture("error_400_jql.json")))
    with pytest.raises(ConnectorError, match="Field 'projekt' does not exist"):
        connector(http, mapping, jql="projekt = SUP").poll(None, NOW)


def test_unreadable_cursor_is_a_connector_error(http: HttpClient, mapping: JsmMapping) -> None:
    with pytest.raises(ConnectorError, match="cursor"):
        connector(http, mapping).poll("2026-03-09T10:00:00Z", NOW)


@respx.mock
def test_429_retry_after_is_honoured(http: HttpClient, mapping: JsmMapping, sleeps: Sleeps) -> None:
    route = respx.post(SEARCH).mock(
        side_effect=[
            httpx.Response(
                429,
                headers={"Retry-After": "7", "RateLimit-Reason": "jira-quota-based", "X-RateLimit-Limit": "350"},
                json=fixture("error_429_rate_limit.json"),
            ),
            httpx.Response(200, json=fixture("search_page2.json")),
        ]
    )
    page = connector(http, mapping).poll(None, NOW)
    assert [record.data["key"] for record in page.records] == ["SUP-103"]
    assert sleeps == [7.0]
    assert route.call_count == 2


# ---- fetch -----------------------------------------------------------------------------------------------


@respx.mock
def test_fetch_reads_through_the_jira_library(http: HttpClient, mapping: JsmMapping) -> None:
    route = respx.get(f"{BASE}/rest/api/3/issue/SUP-101").mock(
        return_value=httpx.Response(200, json=fixture("issue_get_sup101.json"))
    )
    record = connector(http, mapping).fetch("SUP-101")
    assert record is not None and record.id == "10101"
    assert record.data["fields"]["customfield_10200"]["value"] == "L2 - Technical Support"
    request = route.calls[0].request
    assert request.url.params["fields"].split(",") == mapping.request_fields
    assert request.headers["authorization"].startswith("Basic ")
    assert mapping.normalize(record, "acme-jsm").tier is Tier.L2


@respx.mock
def test_fetch_of_missing_issue_is_none(http: HttpClient, mapping: JsmMapping) -> None:
    respx.get(f"{BASE}/rest/api/3/issue/SUP-999").mock(
        return_value=httpx.Response(404, json=fixture("error_404_issue.json"))
    )
    assert connector(http, mapping).fetch("SUP-999") is None


# ---- apply -----------------------------------------------------------------------------------------------


def writeback(**changes: Any) -> WriteBack:
    values: dict[str, Any] = {
        "platform": "jsm",
        "instance": "acme-jsm",
        "ticket_id": "10101",
        "revision": "2026-03-09T10:41:05.902-0400",
        "tier": Tier.L3,
        "add_tags": frozenset({"esc_breached_time_to_resolution", "esc_management"}),
        "remove_tags": frozenset({"esc_at_risk_time_to_first_response"}),
        "comment": Comment("Escalated to L3 - Product Specialists: resolution SLA breached.", "acme-jsm|10101|L3|k42"),
    }
    values.update(changes)
    return WriteBack(**values)


@respx.mock
def test_apply_sends_one_edit_and_one_internal_comment(http: HttpClient, mapping: JsmMapping) -> None:
    edit = respx.put(f"{BASE}/rest/api/3/issue/10101").mock(return_value=httpx.Response(204))
    comment = respx.post(f"{BASE}/rest/servicedeskapi/request/10101/comment").mock(
        return_value=httpx.Response(201, json=fixture("comment_created_internal.json"))
    )
    result = connector(http, mapping).apply(writeback())
    assert result.ticket_id == "10101" and result.revision == "2026-03-09T10:41:05.902-0400"
    assert edit.call_count == 1 and comment.call_count == 1
    assert sent(edit) == {
        "fields": {"customfield_10200": {"value": "L3 - Product Specialists"}},
        "update": {
            "labels": [
                {"add": "esc_breached_time_to_resolution"},
                {"add": "esc_management"},
                {"remove": "esc_at_risk_time_to_first_response"},
            ]
        },
    }
    posted = sent(comment)
    assert posted["public"] is False
    assert posted["body"].endswith("(escalation-sync:acme-jsm|10101|L3|k42)")
    assert len(respx.calls) == 2


@respx.mock
def test_apply_without_comment_or_without_edit(http: HttpClient, mapping: JsmMapping) -> None:
    edit = respx.put(f"{BASE}/rest/api/3/issue/10101").mock(return_value=httpx.Response(204))
    comment = respx.post(f"{BASE}/rest/servicedeskapi/request/10101/comment").mock(
        return_value=httpx.Response(201, json=fixture("comment_created_internal.json"))
    )
    jsm = connector(http, mapping)
    jsm.apply(writeback(tier=None, comment=None, remove_tags=frozenset()))
    assert sent(edit) == {"update": {"labels": [{"add": "esc_breached_time_to_resolution"}, {"add": "esc_management"}]}}
    assert comment.call_count == 0
    jsm.apply(writeback(tier=None, add_tags=frozenset(), remove_tags=frozenset()))
    assert edit.call_count == 1 and comment.call_count == 1


@pytest.mark.parametrize(
    ("status", "name", "error", "text"),
    [
        (400, "error_400_edit_option.json", PermanentWriteError, "customfield_10200: Option value 'L3 - Specialists'"),
        (400, "error_400_edit_not_on_screen.json", PermanentWriteError, "It is not on the appropriate screen"),
        (404, "error_404_issue.json", PermanentWriteError, "issue not found"),
        (403, "error_403_edit.json", PermanentWriteError, "You do not have permission to edit issues"),
        (409, "error_409_edit.json", ConflictError, "changed by another request"),
    ],
)
@respx.mock
def test_edit_errors_are_mapped(
    http: HttpClient, mapping: JsmMapping, status: int, name: str, error: type, text: str
) -> None:
    respx.put(f"{BASE}/rest/api/3/issue/10101").mock(return_value=httpx.Response(status, json=fixture(name)))
    comment = respx.post(f"{BASE}/rest/servicedeskapi/request/10101/comment")
    with pytest.raises(error, match="10101") as caught:
        connector(http, mapping).apply(writeback())
    assert text in str(caught.value)
    assert comment.call_count == 0  # a refused edit posts no handoff note


@respx.mock
def test_comment_on_missing_request_and_bad_credentials(http: HttpClient, mapping: JsmMapping) -> None:
    respx.put(f"{BASE}/rest/api/3/issue/10101").mock(return_value=httpx.Response(204))
    respx.post(f"{BASE}/rest/servicedeskapi/request/10101/comment").mock(
        return_value=httpx.Response(404, json=fixture("error_404_request_servicedesk.json"))
    )
    with pytest.raises(PermanentWriteError, match="The request could not be found"):
        connector(http, mapping).apply(writeback())
    respx.put(f"{BASE}/rest/api/3/issue/10102").mock(return_value=httpx.Response(401, text="Unauthorized"))
    with pytest.raises(AuthError) as caught:
        connector(http, mapping).apply(writeback(ticket_id="10102"))
    assert TOKEN not in str(caught.value)


# ---- has_comment -----------------------------------------------------------------------------------------


@respx.mock
def test_has_comment_pages_through_internal_comments(http: HttpClient, mapping: JsmMapping) -> None:
    route = respx.get(f"{BASE}/rest/servicedeskapi/request/10101/comment").mock(
        side_effect=[
            httpx.Response(200, json=fixture("comments_page1.json")),
            httpx.Response(200, json=fixture("comments_page2.json")),
            httpx.Response(200, json=fixture("comments_page1.json")),
            httpx.Response(200, json=fixture("comments_page2.json")),
        ]
    )
    jsm = connector(http, mapping)
    assert jsm.has_comment("10101", "acme-jsm|10101|L3|k42")
    first, second = route.calls[0].request.url.params, route.calls[1].request.url.params
    assert (first["public"], first["internal"], first["start"]) == ("false", "true", "0")
    assert second["start"] == "2"
    assert not jsm.has_comment("10101", "acme-jsm|10101|L4|k43")
    assert route.call_count == 4


@respx.mock
def test_has_comment_on_missing_request_is_false(http: HttpClient, mapping: JsmMapping) -> None:
    respx.get(f"{BASE}/rest/servicedeskapi/request/10999/comment").mock(
        return_value=httpx.Response(404, json=fixture("error_404_request_servicedesk.json"))
    )
    assert not connector(http, mapping).has_comment("10999", "k")


# ---- auth ------------------------------------------------------------------------------------------------


def test_make_auth_builds_basic_and_names_missing_credentials() -> None:
    auth = make_auth({"email": SecretStr("bot@acme.example"), "api_token": SecretStr("t0ken")})
    request = next(auth.auth_flow(httpx.Request("GET", BASE)))
    assert request.headers["authorization"] == httpx.BasicAuth("bot@acme.example", "t0ken")._auth_header
    with pytest.raises(ValueError, match="api_token"):
        make_auth({"email": SecretStr("bot@acme.example")})
    with pytest.raises(ValueError, match="email"):
        make_auth({"email": SecretStr(""), "api_token": SecretStr("t0ken")})


# ---- against the sandbox ---------------------------------------------------------------------------------


def test_full_cycle_against_the_sandbox(mapping: JsmMapping) -> None:
    clock = SimClock(datetime(2026, 11, 3, 15, 0, tzinfo=UTC))
    sandbox = JsmSandbox(clock, seed=11)
    sandbox.seed_tickets(300)
    sandbox.page_cap = 40  # smaller pages than asked, as Jira does for costly field lists
    auth = make_auth({"email": SecretStr("bot@acme.example"), "api_token": SecretStr(TOKEN)})
    sleeps = Sleeps()
    http = HttpClient("acme-jsm", BASE, auth=auth, transport=sandbox.transport(), sleep=sleeps)
    jsm = connector(http, mapping)
    cursor, keys, pages = None, [], 0
    while True:
        page = jsm.poll(cursor, clock.now())
        keys += [record.data["key"] for record in page.records]
        cursor, pages = page.cursor, pages + 1
        if not page.has_more:
            break
    assert len(keys) == len(set(keys)) > 150
    assert pages == -(-len(keys) // 40)
    tickets = [mapping.normalize(jsm.fetch(key), "acme-jsm") for key in keys[:5]]  # type: ignore[arg-type]
    assert all(ticket.key in keys for ticket in tickets)

    before = sandbox.calls()
    idle = jsm.poll(cursor, clock.now())
    assert idle.records == [] and sandbox.calls() - before == 1

    target = tickets[0]
    comment = Comment("Escalated to L2.", f"acme-jsm|{target.id}|L2|x1")
    before = sandbox.calls()
    jsm.apply(
        WriteBack(
            "jsm",
            "acme-jsm",
            target.id,
            target.revision,
            tier=Tier.L2,
            add_tags=frozenset({"esc_management"}),
            comment=comment,
        )
    )
    assert sandbox.calls() - before == 2
    stored = sandbox.ticket(target.key)["fields"]
    assert stored["customfield_10200"]["value"] == "L2 - Technical Support"
    assert "esc_management" in stored["labels"]
    assert sandbox.comments(target.key)[-1]["public"] is False
    assert jsm.has_comment(target.id, comment.idempotency_key)

    clock.advance(timedelta(minutes=1))
    sandbox.inject(Fault(429, headers={"Retry-After": "2", "RateLimit-Reason": "jira-quota-based"}, body="{}"))
    echo = jsm.poll(idle.cursor, clock.now())
    assert [record.data["key"] for record in echo.records] == [target.key]
    assert sleeps == [2.0]
    http.close()

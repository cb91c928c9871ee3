"""connectors/zendesk.py against respx, through the real HttpClient and (for comments) the real zenpy.

Fixtures in tests/fixtures/zendesk/ were written for these tests in the shapes of the Zendesk API docs and
checked against recordings of the real API:
- incremental_cursor_page{1,2}.json: Incremental Ticket Export, cursor based, with `include=metric_sets,
  organizations` (https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/):
  `tickets`, `after_url`, `after_cursor`, `before_url`, `before_cursor`, `end_of_stream`; sideloads as
  top-level `metric_sets` / `organizations` arrays; page 2 holds a deleted ticket (`status: "deleted"`).
- ticket_show.json: Show Ticket; ticket_update_200.json: Update Ticket `{ticket, audit}`
  (https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/).
- ticket_comments_page{1,2}.json: List Comments with cursor pagination (`meta.has_more`, `links.next`)
  (https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_comments/,
  https://developer.zendesk.com/api-reference/introduction/pagination/).
- error_409_update_conflict.json: safe update collision (creating-and-updating-tickets, "Protecting against
  ticket update collisions"); error_422_closed_ticket.json: `RecordInvalid` with `details`;
  error_404_record_not_found.json; error_429_too_many_requests.html: 429 bodies are HTML, rely on Retry-After
  (https://developer.zendesk.com/api-reference/introduction/rate-limits/).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.base import AuthError, ConflictError, PermanentWriteError, RawRecord, TransientError
from connectors.http import HttpClient, HttpOptions
from connectors.zendesk import ZendeskConnector, make_auth
from engine.model import Comment, Status, Tier, WriteBack
from mappings import load_mapping
from mappings.zendesk import ZendeskMapping

FIXTURES = Path(__file__).parent / "fixtures" / "zendesk"
BASE = "https://acme.zendesk.com"
EMAIL = "agent@acme.test"
TOKEN = "zd-api-token-9f8e7d6c5b4a"
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
INCREMENTAL = f"{BASE}/api/v2/incremental/tickets/cursor.json"


def fixture(name: str) -> Any:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else text


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def mapping() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


def make_connector(mapping: ZendeskMapping, sleeps: list[float], base: str = BASE, **options: Any) -> ZendeskConnector:
    credentials = {"email": SecretStr(EMAIL), "api_token": SecretStr(TOKEN)}
    http = HttpClient(
        "acme-zendesk",
        base,
        auth=make_auth(credentials),
        secrets=[TOKEN],
        options=HttpOptions(max_attempts=3),
        sleep=sleeps.append,
    )
    # History (the event export, audits on fetch) is covered in tests/test_zendesk_history.py; here the tickets.
    off = mapping.config.history.model_copy(update={"ticket_events": False})
    mapping = ZendeskMapping(mapping.config.model_copy(update={"history": off}), mapping.path)
    return ZendeskConnector("acme-zendesk", http, mapping, {"page_size": 2, **options})


@pytest.fixture
def connector(mapping: ZendeskMapping, sleeps: list[float]):
    made = make_connector(mapping, sleeps)
    yield made
    made.close()


# -- auth ---------------------------------------------------------------------------------------------------


def test_make_auth_api_token_is_basic_with_token_suffix() -> None:
    auth = make_auth({"email": SecretStr(EMAIL), "api_token": SecretStr(TOKEN)})
    request = next(auth.auth_flow(httpx.Request("GET", BASE)))
    expected = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


def test_make_auth_oauth_is_bearer_and_never_shows_the_token() -> None:
    auth = make_auth({"oauth_token": SecretStr("oauth-abc")})
    request = next(auth.auth_flow(httpx.Request("GET", BASE)))
    assert request.headers["authorization"] == "Bearer oauth-abc"
    assert "oauth-abc" not in repr(auth)


def test_make_auth_names_the_missing_credential() -> None:
    with pytest.raises(ValueError, match="api_token"):
        make_auth({"email": SecretStr(EMAIL)})


# -- poll ---------------------------------------------------------------------------------------------------


@respx.mock
def test_first_poll_sends_start_time_from_lookback_and_sideloads(connector: ZendeskConnector) -> None:
    route = respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, json=fixture("incremental_cursor_page1.json")))
    page = connector.poll(None, NOW)
    params = route.calls.last.request.url.params
    assert params["start_time"] == str(int((NOW - timedelta(hours=72)).timestamp()))
    assert "cursor" not in params
    assert set(params["include"].split(",")) == {"metric_sets", "organizations"}
    assert params["per_page"] == "2"
    assert [record.id for record in page.records] == ["4101", "4102"]
    assert page.cursor == "MTc5NTM2NzEzMC4wfHw0MTAyfA=="
    assert page.has_more is True
    first = page.records[0]
    assert first.related["organization"]["name"] == "Globex Corporation"
    assert first.related["metric_set"]["ticket_id"] == 4101
    assert "organization" not in page.records[1].related


@respx.mock
def test_start_time_is_clamped_a_minute_into_the_past(mapping: ZendeskMapping, sleeps: list[float]) -> None:
    connector = make_connector(mapping, sleeps, initial_lookback_hours=0)
    route = respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, json=fixture("incremental_cursor_page2.json")))
    connector.poll(None, NOW)
    assert route.calls.last.request.url.params["start_time"] == str(int(NOW.timestamp()) - 60)


@respx.mock
def test_resume_from_cursor_sends_no_start_time(connector: ZendeskConnector, mapping: ZendeskMapping) -> None:
    route = respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, json=fixture("incremental_cursor_page2.json")))
    page = connector.poll("MTc5NTM2NzEzMC4wfHw0MTAyfA==", NOW)
    params = route.calls.last.request.url.params
    assert params["cursor"] == "MTc5NTM2NzEzMC4wfHw0MTAyfA=="
    assert "start_time" not in params
    assert page.has_more is False
    assert page.cursor == "MTc5NTM3MTA0NS4wfHw0MTAzfA=="
    tombstone = mapping.normalize(page.records[0], "acme-zendesk")
    assert tombstone.id == "3977" and tombstone.status is Status.DELETED


@respx.mock
def test_pagination_runs_to_end_of_stream(connector: ZendeskConnector) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        name = (
            "incremental_cursor_page2.json"
            if cursor == "MTc5NTM2NzEzMC4wfHw0MTAyfA=="
            else "incremental_cursor_page1.json"
        )
        return httpx.Response(200, json=fixture(name))

    route = respx.get(INCREMENTAL).mock(side_effect=answer)
    cursor, seen, has_more = None, [], True
    while has_more:
        page = connector.poll(cursor, NOW)
        seen += [record.id for record in page.records]
        cursor, has_more = page.cursor, page.has_more
    assert seen == ["4101", "4102", "3977", "4103"]
    assert route.call_count == 2
    assert "start_time" in route.calls[0].request.url.params
    assert "start_time" not in route.calls[1].request.url.params
    assert cursor == "MTc5NTM3MTA0NS4wfHw0MTAzfA=="


@respx.mock
def test_poll_waits_out_an_html_429(connector: ZendeskConnector, sleeps: list[float]) -> None:
    respx.get(INCREMENTAL).mock(
        side_effect=[
            httpx.Response(
                429,
                headers={"Retry-After": "23", "Content-Type": "text/html"},
                text=fixture("error_429_too_many_requests.html"),
            ),
            httpx.Response(200, json=fixture("incremental_cursor_page2.json")),
        ]
    )
    page = connector.poll("abc", NOW)
    assert sleeps == [23.0]
    assert len(page.records) == 2


@respx.mock
def test_poll_with_non_json_body_is_transient(connector: ZendeskConnector) -> None:
    respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(TransientError, match="not JSON"):
        connector.poll("abc", NOW)


# -- fetch --------------------------------------------------------------------------------------------------


@respx.mock
def test_fetch_returns_the_raw_ticket_and_none_when_gone(connector: ZendeskConnector) -> None:
    respx.get(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_show.json"))
    )
    respx.get(f"{BASE}/api/v2/tickets/9999.json").mock(
        return_value=httpx.Response(404, json=fixture("error_404_record_not_found.json"))
    )
    record = connector.fetch("4101")
    assert record is not None and record.data["updated_at"] == "2026-11-21T19:02:13Z"
    assert connector.fetch("9999") is None


# -- apply --------------------------------------------------------------------------------------------------

REVISION = "2026-11-21T19:02:13Z"


def writeback(**changes: Any) -> WriteBack:
    fields: dict[str, Any] = {
        "platform": "zendesk",
        "instance": "acme-zendesk",
        "ticket_id": "4101",
        "revision": REVISION,
        "tier": Tier.L3,
        "add_tags": frozenset({"esc_breached_first_response", "esc_management"}),
        "remove_tags": frozenset({"esc_at_risk_first_response"}),
        "comment": Comment("Escalated to L3: first response breached.", "acme-zendesk:4101:L3:1"),
    }
    fields.update(changes)
    return WriteBack(**fields)


@respx.mock
def test_apply_sends_one_safe_put_with_tier_tags_and_private_comment(connector: ZendeskConnector) -> None:
    show = respx.get(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_show.json"))
    )
    connector.fetch("4101")  # the cycle read the ticket at REVISION
    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_update_200.json"))
    )
    result = connector.apply(writeback())
    assert put.call_count == 1 and show.call_count == 1
    assert json.loads(put.calls.last.request.content) == {
        "ticket": {
            "group_id": 360000000103,
            "tags": ["checkout", "churn_risk", "esc_breached_first_response", "esc_management", "eu"],
            "comment": {
                "body": "Escalated to L3: first response breached.\n\n(escalation-sync:acme-zendesk:4101:L3:1)",
                "public": False,
            },
            "safe_update": True,
            "updated_stamp": REVISION,
        }
    }
    assert result.ticket_id == "4101"
    assert result.revision == "2026-11-21T19:05:40Z"


@respx.mock
def test_apply_after_polling_more_tickets_than_the_memo_holds_needs_no_read(
    connector: ZendeskConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle hands the connector the book's record before the write: a backlog larger than the memo (whose
    writes all come after the whole read) is written with no GET before its PUTs."""
    monkeypatch.setattr("connectors.zendesk._MEMO_SIZE", 1)
    shown = fixture("ticket_show.json")
    page = {
        "tickets": [shown["ticket"], {**shown["ticket"], "id": 4102}, {**shown["ticket"], "id": 4103}],
        "after_cursor": "MTc2MzY3",
        "after_url": f"{INCREMENTAL}?cursor=MTc2MzY3",
        "before_cursor": None,
        "before_url": None,
        "end_of_stream": True,
    }
    respx.get(INCREMENTAL).mock(return_value=httpx.Response(200, json=page))
    show = respx.get(f"{BASE}/api/v2/tickets/4101.json").mock(return_value=httpx.Response(200, json=shown))
    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_update_200.json"))
    )
    records = connector.poll(None, NOW).records
    connector.observe(next(record for record in records if record.id == "4101"))
    result = connector.apply(writeback())
    assert show.call_count == 0 and put.call_count == 1
    assert json.loads(put.calls.last.request.content)["ticket"]["tags"] == [
        "checkout",
        "churn_risk",
        "esc_breached_first_response",
        "esc_management",
        "eu",
    ]
    # The answer's ticket comes back: the cycle books the ticket as written, not as it was before the write.
    assert result.record is not None and result.record.data["updated_at"] == result.revision == "2026-11-21T19:05:40Z"


def test_the_ticket_as_written_keeps_its_sideloads_and_a_complete_history_window(
    connector: ZendeskConnector,
) -> None:
    """A safe PUT at the planned revision proves nobody changed the ticket in between: the planned record's
    complete event window is moved past the written revision (none of our write's events is a reply or an
    agent's action), so the record as written reads the same facts as its echo will."""
    planned_at = int(datetime(2026, 11, 21, 19, 2, 13, tzinfo=UTC).timestamp())
    related = {"metric_set": {"ticket_id": 4101}, "ticket_events": [], "ticket_events_window": [0, planned_at + 60]}
    shown = fixture("ticket_show.json")["ticket"]
    connector.observe(RawRecord("4101", shown, related))
    written = connector._written(writeback(), {**shown, "updated_at": "2026-11-21T19:05:40Z"}, None)
    assert written.related["metric_set"] == {"ticket_id": 4101}
    assert written.related["ticket_events_window"] == [0, planned_at + 208]
    # Planned from another revision (or never observed): the answer alone, no history claimed.
    assert connector._written(writeback(), shown, None).related == {}


@respx.mock
def test_apply_without_a_read_at_that_revision_reads_first(connector: ZendeskConnector) -> None:
    show = respx.get(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_show.json"))
    )
    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_update_200.json"))
    )
    connector.apply(writeback())
    assert show.call_count == 1 and put.call_count == 1


@respx.mock
def test_apply_planned_on_an_older_revision_is_a_conflict_without_writing(connector: ZendeskConnector) -> None:
    respx.get(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_show.json"))
    )
    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(return_value=httpx.Response(200))
    with pytest.raises(ConflictError, match="2026-11-21T19:02:13Z"):
        connector.apply(writeback(revision="2026-11-21T16:40:11Z"))
    assert put.call_count == 0


@respx.mock
def test_comment_only_apply_sends_no_tags_and_no_read(connector: ZendeskConnector) -> None:
    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(200, json=fixture("ticket_update_200.json"))
    )
    connector.apply(writeback(tier=None, add_tags=frozenset(), remove_tags=frozenset()))
    body = json.loads(put.calls.last.request.content)["ticket"]
    assert set(body) == {"comment", "safe_update", "updated_stamp"}
    assert len(respx.calls) == 1


@respx.mock
def test_apply_409_is_a_conflict(connector: ZendeskConnector) -> None:
    respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(409, json=fixture("error_409_update_conflict.json"))
    )
    with pytest.raises(ConflictError, match="UpdateConflict"):
        connector.apply(writeback(tier=Tier.L2, add_tags=frozenset(), remove_tags=frozenset()))


@respx.mock
def test_apply_422_is_permanent_with_the_api_reason(connector: ZendeskConnector) -> None:
    respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(422, json=fixture("error_422_closed_ticket.json"))
    )
    with pytest.raises(PermanentWriteError, match="closed prevents ticket update"):
        connector.apply(writeback(add_tags=frozenset(), remove_tags=frozenset()))


@respx.mock
def test_apply_404_is_permanent(connector: ZendeskConnector) -> None:
    respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(
        return_value=httpx.Response(404, json=fixture("error_404_record_not_found.json"))
    )
    with pytest.raises(PermanentWriteError, match="RecordNotFound"):
        connector.apply(writeback(tier=None, add_tags=frozenset(), remove_tags=frozenset()))


@respx.mock
def test_apply_to_a_closed_ticket_is_refused_before_writing(connector: ZendeskConnector) -> None:
    closed = fixture("ticket_show.json")
    closed["ticket"]["status"] = "closed"
    respx.get(f"{BASE}/api/v2/tickets/4101.json").mock(return_value=httpx.Response(200, json=closed))
    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(return_value=httpx.Response(200))
    with pytest.raises(PermanentWriteError, match="closed"):
        connector.apply(writeback())
    assert put.call_count == 0


@respx.mock
def test_apply_500_is_ambiguous_not_retried(connector: ZendeskConnector) -> None:
    from connectors.base import AmbiguousWriteError

    put = respx.put(f"{BASE}/api/v2/tickets/4101.json").mock(return_value=httpx.Response(500))
    with pytest.raises(AmbiguousWriteError):
        connector.apply(writeback(tier=None, add_tags=frozenset(), remove_tags=frozenset()))
    assert put.call_count == 1


# -- has_comment (zenpy over the HttpClient session) ---------------------------------------------------------


def comment_routes(base: str) -> respx.Route:
    def answer(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("page[after]")
        return httpx.Response(
            200, json=fixture("ticket_comments_page2.json" if after else "ticket_comments_page1.json")
        )

    return respx.get(url__regex=rf"^{base}/api/v2/tickets/4101/comments\.json").mock(side_effect=answer)


@respx.mock
def test_has_comment_finds_the_marker_on_a_later_page(connector: ZendeskConnector) -> None:
    route = comment_routes(BASE)
    assert connector.has_comment("4101", "acme-zendesk:4101:L2:1") is True
    assert route.call_count == 2
    sent = route.calls[0].request
    assert sent.headers["authorization"].startswith("Basic ")


@respx.mock
def test_has_comment_is_false_when_no_page_has_the_marker(connector: ZendeskConnector) -> None:
    comment_routes(BASE)
    assert connector.has_comment("4101", "acme-zendesk:4101:L3:1") is False


@respx.mock
def test_has_comment_through_a_proxy_base_url(mapping: ZendeskMapping, sleeps: list[float]) -> None:
    proxy = "http://127.0.0.1:8081/zendesk"
    connector = make_connector(mapping, sleeps, base=proxy)
    route = comment_routes(proxy)
    assert connector.has_comment("4101", "acme-zendesk:4101:L2:1") is True
    assert route.call_count == 2


@respx.mock
def test_auth_failure_surfaces_through_zenpy(connector: ZendeskConnector) -> None:
    respx.get(url__regex=rf"^{BASE}/api/v2/tickets/4101/comments\.json").mock(
        return_value=httpx.Response(401, json={"error": "Couldn't authenticate you"})
    )
    with pytest.raises(AuthError) as caught:
        connector.has_comment("4101", "k")
    assert TOKEN not in str(caught.value)

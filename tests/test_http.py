"""connectors/http.py: retries, write safety, auth errors, pacing, redaction and the requests adapter.

Everything runs against respx (no network) with a recording `sleep`, so no test waits. The 429 body is
text/html, as Zendesk sends it ("a 429 body is text/html, not JSON; rely on Retry-After"; Zendesk rate
limits: https://developer.zendesk.com/api-reference/introduction/rate-limits/).
"""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

from connectors.base import AmbiguousWriteError, AuthError, TransientError
from connectors.http import HttpClient, HttpOptions, parse_retry_after, rate_limit_wait

BASE = "https://acme.zendesk.com"
SECRET = "s3cr3t-T0KEN-value"
HTML_429 = "<html><head><title>429 Too Many Requests</title></head><body><h1>Too Many Requests</h1></body></html>"


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps):
    http = HttpClient(
        "acme-zendesk",
        BASE,
        auth=httpx.BasicAuth("agent@acme.test/token", SECRET),
        secrets=[SECRET],
        options=HttpOptions(max_attempts=3, max_retry_after=60.0),
        sleep=sleeps,
    )
    yield http
    http.close()


@respx.mock
def test_429_waits_retry_after_then_succeeds(client: HttpClient, sleeps: Sleeps) -> None:
    route = respx.get(f"{BASE}/api/v2/tickets/1.json").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7", "Content-Type": "text/html"}, text=HTML_429),
            httpx.Response(200, json={"ticket": {"id": 1}}),
        ]
    )
    response = client.request("GET", "/api/v2/tickets/1.json")
    assert response.status_code == 200
    assert route.call_count == 2
    assert sleeps == [7.0]
    assert client.stats["retry 429"] == 1
    assert client.stats["GET 200"] == 1


@respx.mock
def test_retry_after_http_date_is_relative_to_response_date(client: HttpClient, sleeps: Sleeps) -> None:
    respx.get(f"{BASE}/x").mock(
        side_effect=[
            httpx.Response(
                503,
                headers={
                    "Retry-After": "Sun, 22 Nov 2026 10:00:30 GMT",
                    "Date": "Sun, 22 Nov 2026 10:00:00 GMT",
                },
            ),
            httpx.Response(200),
        ]
    )
    assert client.request("GET", "/x").status_code == 200
    assert sleeps == [30.0]


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Sun, 22 Nov 2026 10:00:00 GMT", "Sun, 22 Nov 2026 10:01:00 GMT") == 0.0


@respx.mock
def test_retry_after_over_the_cap_is_capped(client: HttpClient, sleeps: Sleeps) -> None:
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200)])
    client.request("GET", "/x")
    assert sleeps == [60.0]


@respx.mock
def test_503_exhausted_raises_transient_with_status_and_excerpt(client: HttpClient, sleeps: Sleeps) -> None:
    route = respx.get(f"{BASE}/x").mock(
        return_value=httpx.Response(503, headers={"Content-Type": "text/html"}, text=HTML_429)
    )
    with pytest.raises(TransientError) as caught:
        client.request("GET", "/x")
    assert not isinstance(caught.value, AmbiguousWriteError)
    assert route.call_count == 3
    assert len(sleeps) == 2
    message = str(caught.value)
    assert "HTTP 503" in message and "Too Many Requests" in message
    assert "<h1>" not in message


@respx.mock
def test_500_then_success_for_get_backs_off(client: HttpClient, sleeps: Sleeps) -> None:
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(500), httpx.Response(500), httpx.Response(200)])
    assert client.request("GET", "/x").status_code == 200
    assert len(sleeps) == 2
    # exponential: attempt 1 waits base..2*base, attempt 2 waits 2*base..3*base (base 0.5)
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 1.5


@respx.mock
def test_read_timeout_on_get_is_retried(client: HttpClient) -> None:
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200)])
    assert client.request("GET", "/x").status_code == 200
    assert client.stats["retry ReadTimeout"] == 1


@respx.mock
def test_500_on_put_is_ambiguous_and_not_retried(client: HttpClient, sleeps: Sleeps) -> None:
    route = respx.put(f"{BASE}/api/v2/tickets/1.json").mock(return_value=httpx.Response(500))
    with pytest.raises(AmbiguousWriteError):
        client.request("PUT", "/api/v2/tickets/1.json", json={"ticket": {}})
    assert route.call_count == 1
    assert sleeps == []


@respx.mock
def test_read_timeout_on_post_is_ambiguous(client: HttpClient) -> None:
    route = respx.post(f"{BASE}/x").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(AmbiguousWriteError):
        client.request("POST", "/x", json={})
    assert route.call_count == 1


@respx.mock
def test_a_read_only_post_is_retried_like_a_get(client: HttpClient) -> None:
    route = respx.post(f"{BASE}/rest/api/3/search/jql").mock(
        side_effect=[httpx.Response(500), httpx.ReadTimeout("slow"), httpx.Response(200, json={"issues": []})]
    )
    response = client.request("POST", "/rest/api/3/search/jql", json={"jql": "x"}, read_only=True)
    assert response.status_code == 200
    assert route.call_count == 3


@respx.mock
def test_connect_error_on_post_is_retried(client: HttpClient) -> None:
    route = respx.post(f"{BASE}/x").mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(201)])
    assert client.request("POST", "/x", json={"a": 1}).status_code == 201
    assert route.call_count == 2
    assert route.calls[1].request.content == b'{"a":1}'


@respx.mock
def test_429_on_put_is_retried(client: HttpClient, sleeps: Sleeps) -> None:
    respx.put(f"{BASE}/x").mock(side_effect=[httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200)])
    assert client.request("PUT", "/x", json={}).status_code == 200
    assert sleeps == [2.0]


@respx.mock
def test_connect_errors_exhausted_raise_transient(client: HttpClient) -> None:
    respx.get(f"{BASE}/x").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError, match="ConnectError"):
        client.request("GET", "/x")


@respx.mock
@pytest.mark.parametrize("status", [404, 409, 422])
def test_other_4xx_are_returned_without_retry(client: HttpClient, status: int) -> None:
    route = respx.get(f"{BASE}/x").mock(return_value=httpx.Response(status, json={"error": "RecordNotFound"}))
    assert client.request("GET", "/x").status_code == status
    assert route.call_count == 1


@respx.mock
@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_raise_auth_error(client: HttpClient, status: int) -> None:
    route = respx.get(f"{BASE}/x").mock(
        return_value=httpx.Response(status, json={"error": "Couldn't authenticate you"})
    )
    with pytest.raises(AuthError, match=str(status)):
        client.request("GET", "/x")
    assert route.call_count == 1


@respx.mock
def test_secrets_never_reach_messages_or_logs(sleeps: Sleeps, caplog: pytest.LogCaptureFixture) -> None:
    http = HttpClient(
        "acme",
        BASE,
        auth=httpx.BasicAuth("agent@acme.test/token", SECRET),
        secrets=[SECRET],
        options=HttpOptions(max_attempts=2),
        sleep=sleeps,
    )
    # The server echoes the secret in its body and we put it in a query string: both must be redacted.
    respx.get(url__startswith=f"{BASE}/x").mock(return_value=httpx.Response(500, text=f"bad token {SECRET}"))
    caplog.set_level(logging.DEBUG, logger="escalation_sync.http")
    with pytest.raises(TransientError) as caught:
        http.request("GET", "/x", params={"api_token": SECRET, "q": "ok"})
    text = str(caught.value) + "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "one debug record per request expected"
    assert SECRET not in text
    assert "[REDACTED]" in str(caught.value)
    basic = respx.calls.last.request.headers["authorization"]
    assert basic not in text and basic.split()[1] not in text
    assert http.redacted_headers(respx.calls.last.request.headers)["authorization"] == "[REDACTED]"


@respx.mock
def test_echoed_basic_credentials_are_redacted(client: HttpClient) -> None:
    encoded = httpx.BasicAuth("agent@acme.test/token", SECRET)._auth_header.split()[1]
    respx.get(f"{BASE}/x").mock(return_value=httpx.Response(502, text=f"upstream rejected Basic {encoded}"))
    with pytest.raises(TransientError) as caught:
        client.request("GET", "/x")
    assert encoded not in str(caught.value)
    assert "Basic [REDACTED]" in str(caught.value)


@respx.mock
def test_auth_error_message_is_redacted(client: HttpClient) -> None:
    respx.get(f"{BASE}/x").mock(return_value=httpx.Response(401, text=f"token {SECRET} invalid"))
    with pytest.raises(AuthError) as caught:
        client.request("GET", "/x")
    assert SECRET not in str(caught.value)


@respx.mock
def test_debug_record_per_request(client: HttpClient, caplog: pytest.LogCaptureFixture) -> None:
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(500), httpx.Response(200)])
    caplog.set_level(logging.DEBUG, logger="escalation_sync.http")
    client.request("GET", "/x")
    requests_logged = [r for r in caplog.records if getattr(r, "status", None) is not None]
    assert [r.status for r in requests_logged] == [500, 200]
    assert all(r.method == "GET" and hasattr(r, "elapsed_ms") for r in requests_logged)


@respx.mock
def test_pacing_when_remaining_is_zero(client: HttpClient, sleeps: Sleeps) -> None:
    respx.get(f"{BASE}/x").mock(
        return_value=httpx.Response(200, headers={"ratelimit-remaining": "0", "ratelimit-reset": "12"})
    )
    client.request("GET", "/x")
    assert sleeps == []
    client.request("GET", "/x")
    assert sleeps == [12.0]
    assert client.stats["paced"] == 1


@respx.mock
def test_429_with_spent_budget_waits_once(client: HttpClient, sleeps: Sleeps) -> None:
    limited = {"Retry-After": "5", "ratelimit-remaining": "0", "ratelimit-reset": "5"}
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(429, headers=limited), httpx.Response(200)])
    client.request("GET", "/x")
    assert sleeps == [5.0]


def test_rate_limit_wait_header_forms() -> None:
    date = "Sun, 22 Nov 2026 10:00:00 GMT"
    servicenow = httpx.Headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1795341630", "Date": date})
    assert rate_limit_wait(servicenow) == pytest.approx(30.0)
    jira = httpx.Headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2026-11-22T10:00:45Z", "Date": date})
    assert rate_limit_wait(jira) == pytest.approx(45.0)
    assert rate_limit_wait(httpx.Headers({"X-Rate-Limit-Remaining": "5", "ratelimit-reset": "9"})) is None
    assert rate_limit_wait(httpx.Headers({"X-Rate-Limit-Remaining": "0", "ratelimit-reset": "9"})) == 9.0
    assert rate_limit_wait(httpx.Headers({})) is None
    endpoint = httpx.Headers({"Zendesk-RateLimit-tickets-update": "total=100; remaining=0; resets=42"})
    assert rate_limit_wait(endpoint) == 42.0
    spare = httpx.Headers({"Zendesk-RateLimit-tickets-update": "total=100; remaining=7; resets=42"})
    assert rate_limit_wait(spare) is None


@respx.mock
def test_absolute_urls_are_rebased_onto_a_proxy_base(sleeps: Sleeps) -> None:
    http = HttpClient("acme", "http://127.0.0.1:8081/zendesk", sleep=sleeps)
    route = respx.get("http://127.0.0.1:8081/zendesk/api/v2/tickets.json").mock(return_value=httpx.Response(200))
    http.request("GET", "https://other.zendesk.com/api/v2/tickets.json?page%5Bafter%5D=abc")
    http.request("GET", "api/v2/tickets.json")
    http.request("GET", "http://127.0.0.1:8081/zendesk/api/v2/tickets.json")
    assert route.call_count == 3
    assert route.calls[0].request.url.params["page[after]"] == "abc"


@respx.mock
def test_on_exchange_sees_every_exchange(sleeps: Sleeps) -> None:
    seen: list[tuple[str, int]] = []
    http = HttpClient(
        "acme", BASE, sleep=sleeps, on_exchange=lambda req, resp: seen.append((req.method, resp.status_code))
    )
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    http.request("GET", "/x")
    assert seen == [("GET", 503), ("GET", 200)]


@respx.mock
def test_requests_adapter_round_trip(client: HttpClient) -> None:
    route = respx.put(f"{BASE}/api/v2/tickets/5.json").mock(
        return_value=httpx.Response(
            200, json={"ticket": {"id": 5, "subject": "Ünïcode"}}, headers={"X-Request-Id": "abc"}
        )
    )
    session = client.session()
    session.auth = ("someone-else", "other-password")  # must be replaced by the client's own auth
    response = session.put("https://acme.zendesk.com/api/v2/tickets/5.json", json={"ticket": {"status": "open"}})
    assert response.status_code == 200
    assert response.ok and response.reason == "OK"
    assert response.json() == {"ticket": {"id": 5, "subject": "Ünïcode"}}
    assert response.headers["x-request-id"] == "abc"
    assert response.url == f"{BASE}/api/v2/tickets/5.json"
    assert response.request.method == "PUT"
    sent = route.calls.last.request
    assert sent.content == b'{"ticket": {"status": "open"}}'
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["authorization"] == httpx.BasicAuth("agent@acme.test/token", SECRET)._auth_header
    assert client.stats["PUT 200"] == 1


@respx.mock
def test_requests_adapter_propagates_retries_and_errors(client: HttpClient, sleeps: Sleeps) -> None:
    respx.get(f"{BASE}/api/v2/y.json").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "1"}, text=HTML_429),
            httpx.Response(200, json={}),
        ]
    )
    session = client.session()
    assert session.get(f"{BASE}/api/v2/y.json").json() == {}
    assert sleeps == [1.0]
    respx.get(f"{BASE}/api/v2/z.json").mock(return_value=httpx.Response(401))
    with pytest.raises(AuthError):
        session.get(f"{BASE}/api/v2/z.json")

"""connectors/http.py: retries, write safety, auth errors, pacing, redaction and the requests adapter.

Everything runs against respx (no network) with a recording `sleep`, so no test waits. The 429 body is
text/html, as Zendesk sends it ("a 429 body is text/html, not JSON; rely on Retry-After"; Zendesk rate
limits: https://developer.zendesk.com/api-reference/introduction/rate-limits/).
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from connectors.base import (
    AmbiguousWriteError,
    AuthError,
    InvalidIdError,
    PermanentWriteError,
    RateLimitedError,
    TransientError,
    WaitInterruptedError,
)
from connectors.http import (
    EXCERPT_CHARS,
    HttpClient,
    HttpOptions,
    InsecureUrlError,
    check_base_url,
    parse_retry_after,
    path_segment,
    rate_limit_wait,
)

BASE = "https://acme.zendesk.com"
SECRET = "s3cr3t-T0KEN-value"
OUR_NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
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
        clock=lambda: OUR_NOW,
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
def test_retry_after_over_the_cap_defers_instead_of_sending_early(sleeps: Sleeps) -> None:
    http = HttpClient("acme", BASE, options=HttpOptions(max_retry_after=60.0), sleep=sleeps, clock=lambda: OUR_NOW)
    route = respx.get(f"{BASE}/x").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200)]
    )
    with pytest.raises(RateLimitedError) as caught:
        http.request("GET", "/x")
    assert route.call_count == 1 and sleeps == []
    assert caught.value.retry_at == OUR_NOW + timedelta(seconds=3600)
    assert caught.value.retry_at.tzinfo is not None
    assert isinstance(caught.value, TransientError) and not isinstance(caught.value, AmbiguousWriteError)


@respx.mock
def test_http_date_retry_after_over_the_cap_uses_the_servers_date(sleeps: Sleeps) -> None:
    """The server's clock runs two hours behind ours: the delay is its Date to its Retry-After, not ours."""
    http = HttpClient("acme", BASE, options=HttpOptions(max_retry_after=60.0), sleep=sleeps, clock=lambda: OUR_NOW)
    headers = {"Retry-After": "Sun, 22 Nov 2026 10:10:00 GMT", "Date": "Sun, 22 Nov 2026 10:00:00 GMT"}
    respx.get(f"{BASE}/x").mock(return_value=httpx.Response(503, headers=headers))
    with pytest.raises(RateLimitedError) as caught:
        http.request("GET", "/x")
    assert caught.value.retry_at == OUR_NOW + timedelta(minutes=10)
    assert sleeps == []


@respx.mock
def test_after_a_deferral_nothing_is_sent_before_retry_at(sleeps: Sleeps) -> None:
    """The next cycle asks again with the same client: it must not reach the platform before retry_at."""
    clock = [OUR_NOW]
    http = HttpClient("acme", BASE, options=HttpOptions(max_retry_after=60.0), sleep=sleeps, clock=lambda: clock[0])
    route = respx.get(f"{BASE}/x").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200)]
    )
    with pytest.raises(RateLimitedError):
        http.request("GET", "/x")
    clock[0] = OUR_NOW + timedelta(minutes=1)
    with pytest.raises(RateLimitedError) as caught:
        http.request("GET", "/x")
    assert caught.value.retry_at == OUR_NOW + timedelta(seconds=3600)
    assert route.call_count == 1
    clock[0] = OUR_NOW + timedelta(seconds=3590)  # within the cap of the end: wait out the rest, then send
    assert http.request("GET", "/x").status_code == 200
    assert sleeps == [10.0] and route.call_count == 2


@respx.mock
def test_a_503_with_retry_after_on_a_write_holds_back_the_next_request(client: HttpClient, sleeps: Sleeps) -> None:
    respx.put(f"{BASE}/w").mock(return_value=httpx.Response(503, headers={"Retry-After": "20"}))
    read = respx.get(f"{BASE}/r").mock(return_value=httpx.Response(200))
    with pytest.raises(AmbiguousWriteError):
        client.request("PUT", "/w", json={})
    assert sleeps == []
    client.request("GET", "/r")
    assert sleeps == [20.0] and read.call_count == 1


@respx.mock
def test_a_429_on_a_write_over_the_cap_is_deferred_not_ambiguous(sleeps: Sleeps) -> None:
    http = HttpClient("acme", BASE, options=HttpOptions(max_retry_after=60.0), sleep=sleeps, clock=lambda: OUR_NOW)
    route = respx.post(f"{BASE}/x").mock(return_value=httpx.Response(429, headers={"Retry-After": "900"}))
    with pytest.raises(RateLimitedError) as caught:
        http.request("POST", "/x", json={"body": "note"})
    assert not isinstance(caught.value, AmbiguousWriteError)
    assert route.call_count == 1 and caught.value.retry_at == OUR_NOW + timedelta(seconds=900)


@respx.mock
def test_429s_until_attempts_run_out_say_when_to_come_back(sleeps: Sleeps) -> None:
    http = HttpClient("acme", BASE, options=HttpOptions(max_attempts=3), sleep=sleeps, clock=lambda: OUR_NOW)
    route = respx.get(f"{BASE}/x").mock(return_value=httpx.Response(429, headers={"Retry-After": "20"}))
    with pytest.raises(RateLimitedError) as caught:
        http.request("GET", "/x")
    assert route.call_count == 3 and sleeps == [20.0, 20.0]
    assert caught.value.retry_at == OUR_NOW + timedelta(seconds=20)


@respx.mock
def test_a_spent_budget_resetting_past_the_cap_holds_the_next_request_back(sleeps: Sleeps) -> None:
    clock = [OUR_NOW]
    http = HttpClient("acme", BASE, options=HttpOptions(max_retry_after=60.0), sleep=sleeps, clock=lambda: clock[0])
    spent = {"ratelimit-remaining": "0", "ratelimit-reset": "600"}
    route = respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(200, headers=spent), httpx.Response(200)])
    assert http.request("GET", "/x").status_code == 200
    with pytest.raises(RateLimitedError) as caught:
        http.request("GET", "/x")
    assert caught.value.retry_at == OUR_NOW + timedelta(seconds=600)
    assert route.call_count == 1 and sleeps == []
    clock[0] = OUR_NOW + timedelta(seconds=601)
    assert http.request("GET", "/x").status_code == 200
    assert route.call_count == 2 and sleeps == []


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


# ---- writes that may have been applied ---------------------------------------------------------------------


@respx.mock
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_any_5xx_on_a_write_is_ambiguous_and_sent_once(
    client: HttpClient, sleeps: Sleeps, method: str, status: int
) -> None:
    """503 included, with or without Retry-After: the server may have committed before it failed."""
    route = respx.route(method=method, url=f"{BASE}/x").mock(
        return_value=httpx.Response(status, headers={"Retry-After": "1"})
    )
    with pytest.raises(AmbiguousWriteError):
        client.request(method, "/x", json={"comment": "handoff"})
    assert route.call_count == 1
    assert sleeps == []


@respx.mock
@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
    ids=type,
)
def test_a_write_that_failed_after_sending_is_ambiguous(client: HttpClient, failure: Exception) -> None:
    route = respx.patch(f"{BASE}/x").mock(side_effect=failure)
    with pytest.raises(AmbiguousWriteError):
        client.request("PATCH", "/x", json={})
    assert route.call_count == 1


@respx.mock
@pytest.mark.parametrize("failure", [httpx.ConnectTimeout("syn"), httpx.PoolTimeout("pool")], ids=type)
def test_a_write_that_provably_never_left_is_retried(client: HttpClient, failure: Exception) -> None:
    route = respx.put(f"{BASE}/x").mock(side_effect=[failure, httpx.Response(200)])
    assert client.request("PUT", "/x", json={}).status_code == 200
    assert route.call_count == 2


@respx.mock
def test_a_5xx_body_answering_a_write_is_never_quoted(client: HttpClient, caplog: pytest.LogCaptureFixture) -> None:
    """A failing proxy echoes the request: the handoff text must not reach the error (dead letters, status)."""
    handoff = "Customer Globex threatens to churn; escalated to L3"
    respx.post(f"{BASE}/x").mock(return_value=httpx.Response(502, text=f"upstream said no to: {handoff}"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AmbiguousWriteError) as caught:
        client.request("POST", "/x", json={"body": handoff})
    logged = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    assert "Globex" not in str(caught.value) and "Globex" not in logged
    assert "502" in str(caught.value)


# ---- interruptible waits ---------------------------------------------------------------------------------


@respx.mock
def test_stop_during_a_retry_after_wait_abandons_the_request() -> None:
    stop = threading.Event()
    waited: list[float] = []

    def sigterm_arrives(seconds: float) -> None:
        waited.append(seconds)
        stop.set()

    http = HttpClient("acme", BASE, sleep=sigterm_arrives, stop=stop)
    route = respx.get(f"{BASE}/x").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "120"}), httpx.Response(200)]
    )
    with pytest.raises(WaitInterruptedError, match="stop requested") as caught:
        http.request("GET", "/x")
    assert isinstance(caught.value, TransientError)
    assert route.call_count == 1 and waited == [120.0]


@respx.mock
def test_stop_cuts_a_real_wait_short() -> None:
    """With `stop` and no `sleep`, waits block on the event itself: a 300 s Retry-After ends when it is set."""
    stop = threading.Event()
    http = HttpClient("acme", BASE, stop=stop)
    respx.get(f"{BASE}/x").mock(return_value=httpx.Response(503, headers={"Retry-After": "300"}))
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(WaitInterruptedError):
        http.request("GET", "/x")
    assert time.monotonic() - started < 5


@respx.mock
def test_stop_interrupts_backoff_of_a_connect_error_on_a_write(sleeps: Sleeps) -> None:
    stop = threading.Event()
    http = HttpClient("acme", BASE, sleep=lambda seconds: stop.set(), stop=stop)
    route = respx.post(f"{BASE}/x").mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(201)])
    with pytest.raises(WaitInterruptedError) as caught:
        http.request("POST", "/x", json={})
    assert not isinstance(caught.value, AmbiguousWriteError)  # never sent, so nothing to verify
    assert route.call_count == 1


@respx.mock
def test_stop_already_set_skips_the_pacing_pause(sleeps: Sleeps) -> None:
    stop = threading.Event()
    http = HttpClient("acme", BASE, sleep=sleeps, stop=stop)
    route = respx.get(f"{BASE}/x").mock(
        return_value=httpx.Response(200, headers={"ratelimit-remaining": "0", "ratelimit-reset": "30"})
    )
    http.request("GET", "/x")
    stop.set()
    with pytest.raises(WaitInterruptedError):
        http.request("GET", "/x")
    assert route.call_count == 1 and sleeps == []


@respx.mock
def test_an_unset_stop_changes_nothing(sleeps: Sleeps) -> None:
    http = HttpClient("acme", BASE, sleep=sleeps, stop=threading.Event())
    respx.get(f"{BASE}/x").mock(side_effect=[httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200)])
    assert http.request("GET", "/x").status_code == 200
    assert sleeps == [3.0]


# ---- security: transport, ids in paths, redaction, excerpts ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://acme.service-now.com", "http://10.0.0.5:8080", "http://127.0.0.1.evil.example", "ftp://acme.example"],
)
def test_plain_http_to_a_real_host_is_refused(url: str) -> None:
    with pytest.raises(InsecureUrlError):
        check_base_url(url)
    with pytest.raises(InsecureUrlError):
        HttpClient("acme", url)


@pytest.mark.parametrize(
    "url",
    ["https://acme.zendesk.com", "http://127.0.0.1:8081", "http://127.9.9.9", "http://[::1]:9000", "http://localhost"],
)
def test_https_and_loopback_are_accepted(url: str) -> None:
    check_base_url(url)


def test_plain_http_is_accepted_when_the_instance_allows_it() -> None:
    check_base_url("http://jira.intranet.example", allow_insecure_http=True)
    HttpClient("acme", "http://jira.intranet.example", allow_insecure_http=True).close()


def test_credentials_in_the_base_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(InsecureUrlError) as caught:
        check_base_url(f"https://bot:{SECRET}@acme.zendesk.com")
    assert SECRET not in str(caught.value)


def test_config_refuses_plain_http_unless_allowed() -> None:
    from pydantic import ValidationError

    from runtime.config import InstanceSection

    with pytest.raises(ValidationError, match="allow_insecure_http"):
        InstanceSection(name="snow", platform="servicenow", base_url="http://acme.service-now.com")
    allowed = InstanceSection(
        name="snow", platform="servicenow", base_url="http://acme.service-now.com", allow_insecure_http=True
    )
    assert allowed.allow_insecure_http
    InstanceSection(name="snow", platform="servicenow", base_url="http://127.0.0.1:9100")


@pytest.mark.parametrize(
    "value", ["10099/../../../api/3/project/X", "..", ".", "", "a\\b", "ok\r\nX-Injected: 1", "a\x00b", "x" * 300]
)
def test_path_segment_refuses_ids_that_would_change_the_path(value: str) -> None:
    with pytest.raises(InvalidIdError):
        path_segment(value)


def test_path_segment_encodes_the_rest() -> None:
    assert path_segment("SUP-42") == "SUP-42"
    assert path_segment(10099) == "10099"
    assert path_segment("a b?c#d%e") == "a%20b%3Fc%23d%25e"
    assert issubclass(InvalidIdError, PermanentWriteError)  # the cycle dead-letters it, it does not crash


@respx.mock
def test_a_jsm_id_with_a_path_never_reaches_the_network() -> None:
    from connectors.jsm import JsmConnector
    from engine.model import Comment, WriteBack
    from mappings import load_mapping

    http = HttpClient("acme-jsm", "https://acme.atlassian.net", sleep=Sleeps())
    connector = JsmConnector("acme-jsm", http, load_mapping("jsm"), {"jql": "project = SUP"})
    evil = "10099/../../../api/3/project/X"
    writeback = WriteBack("jsm", "acme-jsm", evil, "r1", None, frozenset({"esc_x"}), frozenset(), Comment("n", "k"))
    with pytest.raises(InvalidIdError):
        connector.apply(writeback)
    with pytest.raises(InvalidIdError):
        connector.has_comment(evil, "k")
    assert not respx.calls


TRICKY = 'pa"ss\\w/rd+&=:é ok'


@respx.mock
@pytest.mark.parametrize(
    "encode",
    [
        lambda secret: secret,
        lambda secret: json.dumps(secret)[1:-1],
        lambda secret: json.dumps(secret, ensure_ascii=False)[1:-1],
        lambda secret: str(httpx.QueryParams({"q": secret}))[2:],
        lambda secret: base64.b64encode(f"bot@acme.example:{secret}".encode()).decode(),
    ],
    ids=["raw", "json", "json-unicode", "url-encoded", "basic-base64"],
)
def test_a_secret_is_redacted_in_every_encoding(encode, caplog: pytest.LogCaptureFixture) -> None:
    http = HttpClient("acme", BASE, auth=httpx.BasicAuth("bot@acme.example", TRICKY), secrets=[TRICKY], sleep=Sleeps())
    echoed = encode(TRICKY)
    assert echoed
    respx.get(url__startswith=f"{BASE}/x").mock(return_value=httpx.Response(500, text=f"rejected {echoed} here"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransientError) as caught:
        http.request("GET", "/x", params={"q": TRICKY})
    logged = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    for text in (str(caught.value), logged, http.redact(f"detail: {echoed}")):
        assert echoed not in text
    assert "[REDACTED]" in str(caught.value)


@respx.mock
def test_quoted_bodies_are_cut_and_a_secret_at_the_cut_leaves_nothing(client: HttpClient) -> None:
    body = "x" * (EXCERPT_CHARS - 5) + SECRET + "y" * 1_000_000
    respx.get(f"{BASE}/x").mock(return_value=httpx.Response(500, text=body))
    with pytest.raises(TransientError) as caught:
        client.request("GET", "/x")
    message = str(caught.value)
    assert len(message) < 2 * EXCERPT_CHARS + 200
    assert SECRET[:5] not in message and "yyyy" not in message
    assert len(client.redact("z" * 1_000_000)) < 2 * EXCERPT_CHARS


def test_a_read_response_is_freed_by_reference_counting(sleeps: Sleeps) -> None:
    """Issue 14 (memory): httpx binds a response's stream back to the response, a reference cycle that kept every
    body (an export page is megabytes) until the garbage collector ran; the layer unbinds it once read, so the
    last reference going frees it (the collector is off here), and the body reads as before."""
    body = {"tickets": [{"id": 1, "subject": "x" * 1000}]}
    http = HttpClient(
        "acme-zendesk",
        BASE,
        auth=None,
        secrets=[SECRET],
        options=HttpOptions(),
        sleep=sleeps,
        clock=lambda: OUR_NOW,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)),
    )
    gc.disable()
    try:
        response = http.request("GET", "/api/v2/incremental/tickets/cursor.json")
        assert response.json() == body
        assert b"".join(response.iter_bytes()) == response.content
        freed = weakref.ref(response)
        del response
        assert freed() is None
    finally:
        gc.enable()
        http.close()

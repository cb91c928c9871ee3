"""The Zendesk sandbox's documented ceilings (off by default), on a clock that moves while requests are made.

Zendesk developer documentation: "Incremental Exports" ("You can make up to 10 requests per minute to these
endpoints"), "Rate limits" (the account's requests per minute, `X-Rate-Limit` / `X-Rate-Limit-Remaining`;
Ticketing APIs also send `ratelimit-limit` / `ratelimit-remaining` / `ratelimit-reset` seconds; the Update
Ticket endpoint allows 100 requests a minute per account; over a limit: 429 with `Retry-After` seconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sandbox.base import ScaledClock, SimClock
from sandbox.zendesk import EXPORT_LIMIT, UPDATE_TICKET_LIMIT, ZendeskSandbox

START = datetime(2026, 11, 20, 9, 15, 12, tzinfo=UTC)
"""12 s into a minute: the window ends 48 s later."""
BASE = "https://acme.zendesk.com"
AUTH = ("agent@acme.example/token", "not-a-real-token")
EXPORT = "/api/v2/incremental/tickets/cursor.json"
EVENTS = "/api/v2/incremental/ticket_events.json"


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START)


@pytest.fixture
def sandbox(clock: SimClock) -> ZendeskSandbox:
    sb = ZendeskSandbox(clock, seed=3)
    sb.seed_idle(5)
    sb.enforce_ceilings = True
    return sb


@pytest.fixture
def client(sandbox: ZendeskSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(transport=sandbox.transport(), base_url=BASE, auth=AUTH) as http:
        yield http


def _export(client: httpx.Client) -> httpx.Response:
    return client.get(EXPORT, params={"start_time": int((START - timedelta(days=20)).timestamp())})


def test_the_eleventh_export_in_a_minute_is_refused_until_the_window_ends(
    client: httpx.Client, clock: SimClock
) -> None:
    assert [_export(client).status_code for _ in range(EXPORT_LIMIT)] == [200] * EXPORT_LIMIT
    refused = _export(client)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == 48
    clock.advance(timedelta(seconds=47))
    assert _export(client).status_code == 429  # still the same minute
    clock.advance(timedelta(seconds=1))
    assert _export(client).status_code == 200


def test_the_event_export_has_its_own_ten_a_minute(client: httpx.Client) -> None:
    for _ in range(EXPORT_LIMIT):
        _export(client)
    start = int((START - timedelta(days=20)).timestamp())
    assert client.get(EVENTS, params={"start_time": start}).status_code == 200
    assert client.get("/api/v2/users/me.json").status_code == 200  # other endpoints are not held back


def test_update_ticket_allows_a_hundred_a_minute_per_account(
    sandbox: ZendeskSandbox, client: httpx.Client, clock: SimClock
) -> None:
    ticket_id = sandbox.seed_idle(1)[0]
    body = {"ticket": {"additional_tags": ["x"]}}
    statuses = [client.put(f"/api/v2/tickets/{ticket_id}.json", json=body).status_code for _ in range(101)]
    assert statuses[:UPDATE_TICKET_LIMIT] == [200] * UPDATE_TICKET_LIMIT
    assert statuses[UPDATE_TICKET_LIMIT] == 429
    clock.advance(timedelta(seconds=48))
    assert client.put(f"/api/v2/tickets/{ticket_id}.json", json=body).status_code == 200


def test_account_limit_with_ticketing_headers_that_say_when_it_resets(
    sandbox: ZendeskSandbox, client: httpx.Client
) -> None:
    sandbox.rate_limit = 3
    answers = [client.get("/api/v2/users/me.json") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    last = answers[2].headers
    assert (last["ratelimit-limit"], last["ratelimit-remaining"], last["ratelimit-reset"]) == ("3", "0", "48")
    assert last["X-Rate-Limit-Remaining"] == "0"
    assert answers[3].headers["Retry-After"] == "48"


def test_ceilings_are_off_by_default(clock: SimClock) -> None:
    sandbox = ZendeskSandbox(clock, seed=3)
    with httpx.Client(transport=sandbox.transport(), base_url=BASE, auth=AUTH) as http:
        assert {_export(http).status_code for _ in range(EXPORT_LIMIT + 5)} == {200}
        assert "ratelimit-reset" not in _export(http).headers


def test_scaled_clock_runs_with_real_time_and_waits_without_it() -> None:
    real = [100.0]
    clock = ScaledClock(START, scale=10.0, timer=lambda: real[0])
    real[0] += 1.5  # held: real time does not count yet
    assert clock.now() == START and not clock.running
    clock.run()
    assert clock.running
    real[0] += 2.0
    assert clock.now() == START + timedelta(seconds=20)  # processing time counts, scaled
    clock.sleep(30.0)  # a wait costs its own length of simulated time and no real time
    assert clock.now() == START + timedelta(seconds=50)
    assert (clock.worked, clock.waited) == (20.0, 30.0)
    clock.hold()
    real[0] += 5.0
    assert clock.now() == START + timedelta(seconds=50)
    assert clock.now().tzinfo is UTC and not math.isnan(clock.now().timestamp())

"""Tests for sandbox/jsm.py through plain httpx (no connector code), against the documented API shapes.

References: Jira Cloud REST v3 "Search for issues using JQL enhanced search" (`{issues, nextPageToken, isLast}`,
ids only unless `fields` are asked, bounded JQL required), "Edit issue" (204; 400 with `{errorMessages,
errors}`), JSM "Create request comment" / "Get request comments" (servicedeskapi paging envelope, DateDTO
`{iso8601, jira, friendly, epochMillis}`), JSM SLA fields (`completedCycles`, `ongoingCycle` with `breached`,
`paused`, `remainingTime.millis`, `breachTime`): see tests/test_jsm_connector.py for the URLs.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sandbox.base import Fault, SimClock
from sandbox.jsm import JsmSandbox

BASE = "https://acme.atlassian.net"
START = datetime(2026, 11, 3, 15, 0, tzinfo=UTC)  # two days after the US DST change: -0400 and -0500 both occur
JIRA_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$")
FIELDS = [
    "summary",
    "status",
    "priority",
    "updated",
    "labels",
    "customfield_10200",
    "customfield_10030",
    "customfield_10031",
]


@pytest.fixture
def clock() -> SimClock:
    return SimClock(START)


@pytest.fixture
def sandbox(clock: SimClock) -> JsmSandbox:
    app = JsmSandbox(clock, seed=3)
    app.seed_tickets(250)
    return app


@pytest.fixture
def client(sandbox: JsmSandbox):
    with httpx.Client(transport=sandbox.transport(), base_url=BASE, auth=("bot@acme.example", "token")) as http:
        yield http


def search(client: httpx.Client, jql: str, **body: Any) -> httpx.Response:
    return client.post("/rest/api/3/search/jql", json={"jql": jql, **body})


def search_all(client: httpx.Client, jql: str, max_results: int) -> tuple[list[dict[str, Any]], int]:
    issues: list[dict[str, Any]] = []
    token, pages = None, 0
    while True:
        body: dict[str, Any] = {"maxResults": max_results, "fields": FIELDS}
        if token:
            body["nextPageToken"] = token
        answer = search(client, jql, **body).json()
        issues += answer["issues"]
        pages += 1
        if answer["isLast"]:
            assert "nextPageToken" not in answer
            return issues, pages
        token = answer["nextPageToken"]


def test_authorization_is_required(sandbox: JsmSandbox) -> None:
    with httpx.Client(transport=sandbox.transport(), base_url=BASE) as anonymous:
        answer = anonymous.post("/rest/api/3/search/jql", json={"jql": "project = SUP"})
    assert answer.status_code == 401
    assert answer.json()["errorMessages"]


def test_search_pages_with_tokens_and_caps_page_size(sandbox: JsmSandbox, client: httpx.Client) -> None:
    sandbox.page_cap = 30
    issues, pages = search_all(client, "project = SUP ORDER BY updated ASC, key ASC", max_results=50)
    keys = [issue["key"] for issue in issues]
    assert len(keys) == len(set(keys)) == 250
    assert pages == 9  # 30 a page although 50 were asked
    updated = [datetime.fromisoformat(issue["fields"]["updated"]) for issue in issues]
    assert updated == sorted(updated)
    assert set(issues[0]["fields"]) == set(FIELDS)
    assert issues[0]["self"] == f"{BASE}/rest/api/3/issue/{issues[0]['id']}"


def test_search_without_fields_returns_ids_only(client: httpx.Client) -> None:
    answer = search(client, "project = SUP", maxResults=3).json()
    assert [set(issue) for issue in answer["issues"]] == [{"id"}] * 3


def test_attachment_field_is_an_empty_list_when_asked_for(client: httpx.Client) -> None:
    """Jira answers `attachment: []` for an issue without files (README of tests/fixtures/jsm), by search or by
    Get issue, when the field is asked for by name or through `*all`; a field not asked for stays out."""
    asked = search(client, "project = SUP", maxResults=3, fields=["summary", "attachment"]).json()["issues"]
    assert [issue["fields"]["attachment"] for issue in asked] == [[]] * 3
    key = asked[0]["key"]
    assert client.get(f"/rest/api/3/issue/{key}", params={"fields": "attachment"}).json()["fields"] == {
        "attachment": []
    }
    assert client.get(f"/rest/api/3/issue/{key}", params={"fields": "*all"}).json()["fields"]["attachment"] == []
    not_asked = search(client, "project = SUP", maxResults=3, fields=["summary"]).json()["issues"]
    assert all("attachment" not in issue["fields"] for issue in not_asked)


def test_every_field_the_mapping_reads_is_answered() -> None:
    """The stand-in answers each field the default mapping asks the search for, as a site that has them does."""
    from pathlib import Path

    from mappings import load_mapping

    mapping = load_mapping("jsm", Path(__file__).resolve().parent.parent / "mappings" / "jsm.toml")
    wanted = list(mapping.read_spec().fields)
    app = JsmSandbox(SimClock(START), seed=3)
    app.seed_tickets(40)
    with httpx.Client(transport=app.transport(), base_url=BASE, auth=("bot@acme.example", "token")) as http:
        issues = search(http, "project = SUP", maxResults=40, fields=wanted).json()["issues"]
    assert issues
    assert all(set(issue["fields"]) == set(wanted) for issue in issues)


def test_search_filters_on_epoch_millis_and_user_time_zone(client: httpx.Client, clock: SimClock) -> None:
    since = clock.now() - timedelta(hours=12)
    issues, _ = search_all(client, f"project = SUP AND updated >= {int(since.timestamp() * 1000)}", 100)
    assert issues and all(datetime.fromisoformat(issue["fields"]["updated"]) >= since for issue in issues)
    # A bare date-time is read in the API user's time zone (America/New_York, -0500 in November).
    local = since.astimezone(UTC) - timedelta(hours=5)
    same, _ = search_all(client, f'project = SUP AND updated >= "{local:%Y-%m-%d %H:%M}"', 100)
    assert {issue["key"] for issue in same} >= {issue["key"] for issue in issues}


def test_search_errors_have_jira_shape(client: httpx.Client) -> None:
    for jql in ("ORDER BY updated ASC", "projekt = SUP", "project ~ SUP", "updated >= tomorrowish"):
        answer = search(client, jql)
        assert answer.status_code == 400, jql
        assert set(answer.json()) == {"errorMessages", "errors"} and answer.json()["errorMessages"]
    first = search(client, "project = SUP", maxResults=5).json()
    foreign = search(client, "project = SUP AND labels = api", nextPageToken=first["nextPageToken"])
    assert foreign.status_code == 400


def test_timestamps_look_like_jira(client: httpx.Client) -> None:
    issues, _ = search_all(client, "project = SUP", 100)
    offsets = Counter(issue["fields"]["updated"][-5:] for issue in issues)
    assert all(JIRA_TIME.match(issue["fields"]["updated"]) for issue in issues)
    assert set(offsets) == {"-0400", "-0500"}


def test_seeded_data_is_varied(sandbox: JsmSandbox, client: httpx.Client) -> None:
    raw = [sandbox.ticket(key)["fields"] for key in sandbox.issue_keys()]
    priorities = Counter(fields["priority"]["name"] if fields["priority"] else None for fields in raw)
    assert None in priorities and len(priorities) == 6
    categories = Counter(fields["status"]["statusCategory"]["key"] for fields in raw)
    assert set(categories) == {"new", "indeterminate", "done"}
    segments = Counter((fields["customfield_10100"] or {}).get("value") for fields in raw)
    assert segments["Enterprise"] > 20 and segments[None] > 0
    labels = Counter(label for fields in raw for label in fields["labels"])
    assert labels["churn-risk"] > 0 and labels["engineering-required"] > 0
    assert any(fields["customfield_10002"] and fields["customfield_10002"][0]["name"] for fields in raw)
    assert any(fields["status"]["name"] == "Done" and fields["resolution"] is None for fields in raw)
    assert any(fields["customfield_10031"] is None for fields in raw)


def test_sla_fields_running_paused_and_completed(sandbox: JsmSandbox, clock: SimClock) -> None:
    key = sandbox.seed_tickets(1)[0]
    sandbox.update(key, priority="Highest", status="Waiting for support")
    clock.advance(timedelta(hours=6))
    running = sandbox.ticket(key)["fields"]["customfield_10031"]
    cycle = running["ongoingCycle"]
    assert cycle["breached"] and cycle["remainingTime"]["millis"] < 0 and not cycle["paused"]
    assert cycle["goalDuration"] == {"millis": 4 * 3600 * 1000, "friendly": "4h"}
    assert set(cycle["breachTime"]) == {"iso8601", "jira", "friendly", "epochMillis"}
    sandbox.update(key, status="Waiting for customer")
    clock.advance(timedelta(hours=1))
    paused = sandbox.ticket(key)["fields"]["customfield_10031"]["ongoingCycle"]
    assert paused["paused"] and "breachTime" not in paused
    assert paused["elapsedTime"]["millis"] == cycle["elapsedTime"]["millis"]
    sandbox.add_comment(key, "Fixed on our side.", public=True)
    sandbox.update(key, status="Resolved")
    done = sandbox.ticket(key)["fields"]
    assert "ongoingCycle" not in done["customfield_10031"] and done["customfield_10031"]["completedCycles"]
    assert done["customfield_10030"]["completedCycles"][0]["stopTime"]["epochMillis"] == int(
        clock.now().timestamp() * 1000
    )


def test_edit_labels_and_tier(sandbox: JsmSandbox, client: httpx.Client, clock: SimClock) -> None:
    key = next(k for k in sandbox.issue_keys() if sandbox.ticket(k)["fields"]["status"]["name"] != "Closed")
    sandbox.update(key, labels=["api", "sso"])
    clock.advance(timedelta(minutes=3))
    answer = client.put(
        f"/rest/api/3/issue/{key}",
        json={
            "fields": {"customfield_10200": {"value": "L3 - Product Specialists"}},
            "update": {"labels": [{"add": "esc_management"}, {"remove": "sso"}, {"remove": "absent"}]},
        },
    )
    assert answer.status_code == 204 and answer.content == b""
    fields = sandbox.ticket(key)["fields"]
    assert fields["labels"] == ["api", "esc_management"]
    assert fields["customfield_10200"]["id"] == "10302"
    assert datetime.fromisoformat(fields["updated"]) == clock.now()
    by_id = client.put(f"/rest/api/3/issue/{key}", json={"fields": {"customfield_10200": {"id": "10303"}}})
    assert by_id.status_code == 204
    assert sandbox.ticket(key)["fields"]["customfield_10200"]["value"] == "L4 - Engineering"


def test_edit_errors(sandbox: JsmSandbox, client: httpx.Client) -> None:
    key = sandbox.issue_keys()[0]
    sandbox.update(key, status="In Progress")
    bad_option = client.put(f"/rest/api/3/issue/{key}", json={"fields": {"customfield_10200": {"value": "L9"}}})
    assert bad_option.status_code == 400
    assert set(bad_option.json()["errors"]) == {"customfield_10200"}
    spaces = client.put(f"/rest/api/3/issue/{key}", json={"update": {"labels": [{"add": "two words"}]}})
    assert spaces.status_code == 400 and "spaces" in spaces.json()["errors"]["labels"]
    missing = client.put("/rest/api/3/issue/SUP-99999", json={"fields": {}})
    assert missing.status_code == 404
    assert missing.json() == {
        "errorMessages": ["Issue does not exist or you do not have permission to see it."],
        "errors": {},
    }
    sandbox.update(key, status="Closed")
    closed = client.put(f"/rest/api/3/issue/{key}", json={"update": {"labels": [{"add": "x"}]}})
    assert closed.status_code == 400 and "not on the appropriate screen" in closed.json()["errors"]["labels"]


def test_internal_comment_and_paged_listing(sandbox: JsmSandbox, client: httpx.Client) -> None:
    key = sandbox.issue_keys()[1]
    issue_id = sandbox.ticket(key)["id"]
    before = len(sandbox.comments(key))
    for number in range(3):
        created = client.post(
            f"/rest/servicedeskapi/request/{key}/comment", json={"body": f"note {number}", "public": False}
        )
        assert created.status_code == 201
    body = created.json()
    assert body["public"] is False and body["body"] == "note 2"
    assert set(body["created"]) == {"iso8601", "jira", "friendly", "epochMillis"}
    assert body["_links"]["self"].endswith(f"/request/{issue_id}/comment/{body['id']}")
    sandbox.add_comment(key, "public hello", public=True)
    bodies, start = [], 0
    while True:
        page = client.get(
            f"/rest/servicedeskapi/request/{issue_id}/comment", params={"public": "false", "start": start, "limit": 2}
        ).json()
        assert {"size", "start", "limit", "isLastPage", "_links", "values"} <= set(page)
        bodies += [comment["body"] for comment in page["values"]]
        if page["isLastPage"]:
            break
        assert "next" in page["_links"]
        start += page["size"]
    assert bodies[-3:] == ["note 0", "note 1", "note 2"] and "public hello" not in bodies
    assert len(sandbox.comments(key)) == before + 4
    empty = client.post(f"/rest/servicedeskapi/request/{key}/comment", json={"body": "  ", "public": False})
    assert empty.status_code == 400 and "errorMessage" in empty.json()
    assert client.get("/rest/servicedeskapi/request/SUP-99999/comment").status_code == 404


def test_rate_limit_fault(sandbox: JsmSandbox, client: httpx.Client) -> None:
    sandbox.inject(Fault(429, headers={"Retry-After": "5", "RateLimit-Reason": "jira-quota-based"}, body="{}"))
    limited = search(client, "project = SUP")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "5"
    assert search(client, "project = SUP").status_code == 200


def test_simulate_is_deterministic_and_moves_things(clock: SimClock) -> None:
    def run() -> list[tuple[str, str, str]]:
        app = JsmSandbox(SimClock(START), seed=5)
        app.seed_tickets(80)
        app.simulate(timedelta(hours=6))
        return [
            (key, app.ticket(key)["fields"]["status"]["name"], app.ticket(key)["fields"]["updated"])
            for key in app.issue_keys()
        ]

    first, second = run(), run()
    assert first == second
    app = JsmSandbox(SimClock(START), seed=5)
    app.seed_tickets(80)
    before = {key: app.ticket(key)["fields"]["updated"] for key in app.issue_keys()}
    app.simulate(timedelta(hours=6))
    assert app.clock.now() == START + timedelta(hours=6)
    assert len(app.issue_keys()) > 80  # new tickets arrived
    changed = [key for key in before if app.ticket(key)["fields"]["updated"] != before[key]]
    assert len(changed) >= 5


def test_served_on_loopback(sandbox: JsmSandbox) -> None:
    url, stop = sandbox.serve()
    try:
        answer = httpx.get(f"{url}/rest/api/3/issue/SUP-1", params={"fields": "summary"}, auth=("a", "b"))
        assert answer.status_code == 200
        assert answer.json()["self"].startswith(url) and set(answer.json()["fields"]) == {"summary"}
    finally:
        stop()

"""What bench/soak.py needs of the batch path and the sandboxes to come out at zero.

- A Zendesk update_many job whose answer was lost is settled in the same cycle: once List Job Statuses shows
  no job queued or working, a ticket whose note is absent was applied by no job and goes out alone now (a
  delayed write changes that ticket's later life); without the list, today's wait for the next cycle.
- A write that did not land is planned again from the facts it was planned from (the book's record), not from a
  fresh read whose history can differ, and a fault that hits the retry too does not leave it a cycle late.
- The sandboxes' simulated activity: one ticket's state never changes another ticket's activity.
https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/#list-job-statuses
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from test_batch_writes import BASE, SINGLE, batching, connector, job_status
from test_cycle import PLATFORMS, World, without_retry_pass

from runtime.demo import DEMO_START
from sandbox.base import Fault, SimClock
from sandbox.zendesk import GROUP_L3, ZendeskSandbox

LIST = r"^/api/v2/job_statuses(\.json)?$"


@pytest.fixture
def zd(tmp_path: Path):
    created = batching(World(tmp_path, PLATFORMS["zendesk"]))
    yield created
    created.close()


class JobLostBeforeQueued:
    """WSGI wrapper: the first update_many never reaches the server (a 503 from a proxy): nothing is queued."""

    def __init__(self, app: Any) -> None:
        self.app, self.hit = app, 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.hit or not environ.get("PATH_INFO", "").startswith("/api/v2/tickets/update_many"):
            return self.app(environ, start_response)
        self.hit += 1
        start_response("503 Service Unavailable", [("Content-Type", "text/html")])
        return [b"<html><body>503 Service Unavailable</body></html>"]


def lose_first_job(zd: World) -> JobLostBeforeQueued:
    faulty = JobLostBeforeQueued(zd.sandbox)
    zd.sandbox.transport = lambda: httpx.WSGITransport(app=faulty)  # type: ignore[method-assign]
    return faulty


def test_a_lost_job_that_never_ran_is_sent_alone_in_the_same_cycle(zd: World) -> None:
    faulty = lose_first_job(zd)
    report = zd.syncer().run_cycle()
    assert faulty.hit == 1 and report.error == "" and report.failed >= 3
    assert zd.store.pending(zd.name) == [], "every write of the lost job landed in this cycle"
    assert zd.sandbox.calls("GET", LIST) >= 1
    assert zd.sandbox.calls("PUT", SINGLE) >= 3, "each went out alone, with the safe PUT"
    counts = zd.marker_counts()
    assert counts and all(count == 1 for count in counts.values())
    escalated = [key.split(":")[2] for key in counts if not key.endswith("MGMT")]
    assert all(zd.store.tier_entries(zd.name, ticket) for ticket in escalated), "each tier entry recorded"


@pytest.mark.parametrize("status", [404, 403])
def test_without_the_job_list_a_lost_job_waits_for_the_next_cycle(zd: World, status: int) -> None:
    lose_first_job(zd)
    zd.sandbox.inject(Fault(status, times=10**6, method="GET", path_pattern=LIST, body='{"error": "Forbidden"}'))
    syncer = zd.syncer()
    first = syncer.run_cycle()
    assert first.error == "" and first.failed >= 3
    waiting = zd.store.pending(zd.name)
    assert waiting, "unknown whether a job still holds them: the notes are not sent again in this cycle"
    assert all(json.loads(intent.payload)["comment"] for intent in waiting), "what carries no note went out"
    zd.clock.advance(timedelta(seconds=61))
    second = syncer.run_cycle()
    assert second.error == ""
    assert zd.store.pending(zd.name) == []
    counts = zd.marker_counts()
    assert counts and all(count == 1 for count in counts.values())


# -- the connector: List Job Statuses, waited on while a job runs ----------------------------------------------


def job_list(*statuses: str, next_page: str | None = None) -> dict[str, Any]:
    jobs = [job_status(status, None)["job_status"] for status in statuses]
    return {"job_statuses": jobs, "next_page": next_page, "previous_page": None, "count": len(jobs)}


@respx.mock
def test_jobs_idle_waits_while_a_job_is_working_then_says_so() -> None:
    sleeps: list[float] = []
    listed = respx.get(f"{BASE}/api/v2/job_statuses.json").mock(
        side_effect=[
            httpx.Response(200, json=job_list("working", "completed")),
            httpx.Response(200, json=job_list("queued", "completed")),
            httpx.Response(200, json=job_list("completed", "failed", "killed")),
        ]
    )
    assert connector(sleeps).jobs_idle() is True
    assert listed.call_count == 3 and sleeps == [1.0, 2.0]


@respx.mock
def test_jobs_idle_is_false_while_a_job_runs_past_the_bound() -> None:
    sleeps: list[float] = []
    respx.get(f"{BASE}/api/v2/job_statuses.json").mock(return_value=httpx.Response(200, json=job_list("working")))
    assert connector(sleeps).jobs_idle() is False
    assert len(sleeps) == 7, "job_polls (8) lists, waits between them"


@respx.mock
def test_jobs_idle_reads_every_page_and_is_unknown_when_refused() -> None:
    respx.get(f"{BASE}/api/v2/job_statuses.json", params={"page": "2"}).mock(
        return_value=httpx.Response(200, json=job_list("working"))
    )
    respx.get(f"{BASE}/api/v2/job_statuses.json").mock(
        return_value=httpx.Response(
            200, json=job_list("completed", next_page=f"{BASE}/api/v2/job_statuses.json?page=2")
        )
    )
    zendesk = connector([])
    zendesk.job_polls = 1
    assert zendesk.jobs_idle() is False, "the working job on page 2 counts"
    respx.routes.clear()
    respx.get(f"{BASE}/api/v2/job_statuses.json").mock(return_value=httpx.Response(404, json={"error": "NotFound"}))
    assert zendesk.jobs_idle() is None, "refused: the list cannot tell (not the same as a job still running)"


# -- the sandbox: List Job Statuses in the reference's shape ---------------------------------------------------


def test_sandbox_lists_job_statuses_unfinished_first_each_list_a_poll() -> None:
    sandbox = ZendeskSandbox(SimClock(DEMO_START), seed=3)
    first_id, second_id = sandbox.seed_tickets(2)
    client = httpx.Client(transport=sandbox.transport(), base_url=BASE, auth=("a/token", "t"))

    def queue(ticket_id: int) -> str:
        body = {"tickets": [{"id": ticket_id, "additional_tags": ["batched"]}]}
        return str(client.put("/api/v2/tickets/update_many.json", json=body).json()["job_status"]["id"])

    sandbox.job_polls_to_finish = 1
    done = queue(first_id)
    sandbox.job_polls_to_finish = 3
    running = queue(second_id)
    listed = client.get("/api/v2/job_statuses.json").json()
    assert set(listed) == {"job_statuses", "next_page", "previous_page", "count"}
    assert listed["count"] == 2 and listed["next_page"] is None
    assert [(job["id"], job["status"]) for job in listed["job_statuses"]] == [(running, "working"), (done, "completed")]
    assert "batched" not in sandbox.ticket(second_id)["tags"], "listing is not a reason for the job to run"
    client.get("/api/v2/job_statuses.json")
    page = client.get("/api/v2/job_statuses.json", params={"per_page": 1}).json()
    assert [job["status"] for job in page["job_statuses"]] == ["completed"] and page["next_page"]
    assert "batched" in sandbox.ticket(second_id)["tags"], "the third poll ran it"
    second_page = client.get(page["next_page"]).json()
    assert len(second_page["job_statuses"]) == 1 and second_page["next_page"] is None


# -- the sandboxes' activity: per ticket -----------------------------------------------------------------------


def zendesk_activity(change: dict[str, Any]) -> dict[int, list[str]]:
    """Every other ticket's comments and tags after six simulated hours, `change` made to the first open one."""
    sandbox = ZendeskSandbox(SimClock(DEMO_START), seed=5)
    ids = sandbox.seed_tickets(30)
    moved = next(i for i in sorted(ids) if sandbox.ticket(i)["status"] in ("new", "open"))
    if change:
        sandbox.update(moved, **change)
    sandbox.simulate(timedelta(hours=6))
    return {
        ticket_id: [str(c["body"]) for c in sandbox.comments(ticket_id)] + sorted(sandbox.ticket(ticket_id)["tags"])
        for ticket_id in sandbox.ticket_ids(include_deleted=True)
        if ticket_id != moved
    }


@pytest.mark.parametrize(
    "change",
    [{"group_id": GROUP_L3}, {"status": "closed"}, {"additional_tags": ["escalation_mgmt"], "status": "pending"}],
    ids=["tier", "closed", "tags-and-status"],
)
def test_zendesk_one_tickets_state_does_not_change_another_tickets_activity(change: dict[str, Any]) -> None:
    assert zendesk_activity({}) == zendesk_activity(change)


# -- a re-sent write decides from what the write was planned from ----------------------------------------------

# Seed 11's ticket 1010 sits at L2; the export's history cannot place its entry into L2, its audits can (later),
# so a decision from a fresh read (audits) differs from the poll's: L3 from the poll, no move from the read.
DIVERGING = "1010"


@pytest.mark.parametrize("retry_pass", [True, False], ids=["same-cycle", "after-restart"])
def test_a_lost_write_is_sent_again_as_the_poll_planned_it(tmp_path: Path, retry_pass: bool) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"])  # one call per write
    try:
        assert world.sandbox.escalation_view(int(DIVERGING))[0] == "L2"
        world.sandbox.inject(Fault(status=502, times=1, method="PUT", path_pattern=rf"/tickets/{DIVERGING}\.json"))
        syncer = world.syncer()
        first = (syncer if retry_pass else without_retry_pass(syncer)).run_cycle()
        assert first.error == "" and first.failed >= 1
        if not retry_pass:
            [lost] = [i for i in world.store.pending(world.name) if i.ticket_id == DIVERGING]
            assert json.loads(lost.payload)["tier"] == "L3", "the poll planned L3"
            world.syncer().run_cycle()  # restarted at the same moment (as the soak restarts a killed daemon)
        assert world.store.pending(world.name) == []
        assert world.sandbox.escalation_view(int(DIVERGING))[0] == "L3"
        assert [tier for tier, _ in world.store.tier_entries(world.name, DIVERGING)] == ["L3"]
        notes = {key: n for key, n in world.marker_counts().items() if f":{DIVERGING}:" in key}
        assert [key.rsplit(":", 1)[1] for key in notes] == ["L3"] and list(notes.values()) == [1]
    finally:
        world.close()


def test_a_write_that_fails_twice_in_a_row_still_lands_in_its_cycle(tmp_path: Path) -> None:
    """A passing fault can hit the retry too (the soak: 10 % of requests): another pass follows while the last
    one settled something, so the write is not left a cycle late."""
    world = World(tmp_path, PLATFORMS["zendesk"])  # one call per write
    try:
        target = rf"/tickets/{DIVERGING}\.json"
        world.sandbox.inject(Fault(status=502, times=2, method="PUT", path_pattern=target))
        report = world.syncer().run_cycle()
        assert report.error == "" and report.failed >= 2
        assert world.store.pending(world.name) == []
        assert world.sandbox.escalation_view(int(DIVERGING))[0] == "L3"
    finally:
        world.close()


def test_an_outage_is_not_retried_pass_after_pass(tmp_path: Path) -> None:
    """Every write failing again: the retry stops after one pass without progress (attempts are not burned)."""
    world = World(tmp_path, PLATFORMS["zendesk"])
    try:
        world.sandbox.inject(Fault(status=502, times=10**6, method="PUT", path_pattern=SINGLE))
        report = world.syncer().run_cycle()
        pending = world.store.pending(world.name)
        assert report.error == "" and pending
        assert {intent.attempts for intent in pending} == {2}, "the first send and one retry pass"
    finally:
        world.close()


def test_a_job_still_queued_at_the_next_start_does_not_get_its_notes_sent_again(zd: World) -> None:
    """A job queued before the daemon stopped is still queued when it starts again (a busy job queue): its notes
    are not sent alone while it may still post them; once it has run, each note is on the ticket once."""
    from test_batch_writes import JobAppliedThenLost

    zd.sandbox.jobs_run_unasked = False
    zd.sandbox.job_polls_to_finish = 10**6
    faulty = JobAppliedThenLost(zd.sandbox, "drop")
    zd.sandbox.transport = lambda: httpx.WSGITransport(app=faulty)  # type: ignore[method-assign]
    first = zd.syncer().run_cycle()
    assert faulty.hit == 1 and first.error == "" and first.failed >= 3
    with_notes = [i for i in zd.store.pending(zd.name) if json.loads(i.payload)["comment"]]
    assert with_notes, "the job never ended: its notes are still unknown"

    zd.clock.advance(timedelta(seconds=61))
    restarted = zd.syncer().run_cycle()  # a new process: nothing in memory says these came from a job
    assert restarted.error == ""
    assert {i.key for i in zd.store.pending(zd.name)} >= {i.key for i in with_notes}, "not sent while queued"
    assert not zd.marker_counts(), "no note was posted alone while the job could still post it"

    zd.sandbox.jobs_run_unasked = True  # the queue drains: the job runs before whatever comes next
    zd.clock.advance(timedelta(seconds=61))
    last = zd.syncer().run_cycle()
    assert last.error == "" and zd.store.pending(zd.name) == []
    counts = zd.marker_counts()
    assert counts and all(count == 1 for count in counts.values())

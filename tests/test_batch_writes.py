"""Issue 14: Zendesk writes batched as Update Many Tickets jobs, and the echo of our own writes recognised.

Against the Zendesk sandbox (sandbox/zendesk.py serves `PUT /api/v2/tickets/update_many.json` and
`GET /api/v2/job_statuses/{id}.json`, a job queued and run on a later poll) through the real daemon wiring,
and one exchange against respx in the shapes of the API reference:
https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#update-many-tickets
https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr
from test_cycle import PLATFORMS, World

from connectors.base import AmbiguousWriteError, ApplyResult, NotBatchedError
from connectors.http import HttpClient, HttpOptions
from connectors.zendesk import ZendeskConnector, make_auth
from engine.model import Comment, Tier, WriteBack
from mappings import load_mapping
from mappings.zendesk import ZendeskMapping
from sandbox.base import Fault

JOBS = r"/api/v2/tickets/update_many"
STATUSES = r"/api/v2/job_statuses/"
SINGLE = r"/api/v2/tickets/\d+(\.json)?$"


def batching(world: World, **daemon: Any) -> World:
    world.config = replace(
        world.config, daemon=world.config.daemon.model_copy(update={"batch_writes_from": 3, **daemon})
    )
    return world


@pytest.fixture
def zd(tmp_path: Path):
    created = batching(World(tmp_path, PLATFORMS["zendesk"]))
    yield created
    created.close()


def test_issue14_due_writes_go_out_as_update_many_jobs(zd: World) -> None:
    report = zd.syncer().run_cycle()
    assert report.error == ""
    assert report.writes >= 3
    jobs = math.ceil(report.writes / 100)
    assert zd.sandbox.calls("PUT", JOBS) == jobs
    assert zd.sandbox.calls("PUT", SINGLE) == 0
    assert zd.sandbox.calls("GET", STATUSES) == jobs  # the sandbox runs a job on its first status poll
    assert zd.store.pending(zd.name) == []
    assert all(count == 1 for count in zd.marker_counts().values())
    # Polls are calls like any other: the cycle's count includes them.
    assert report.api_calls == zd.sandbox.calls()


def test_issue14_few_writes_go_one_call_each(zd: World) -> None:
    batching(zd, max_writes_per_cycle=2)
    report = zd.syncer().run_cycle()
    assert report.writes == 2
    assert zd.sandbox.calls("PUT", JOBS) == 0
    assert zd.sandbox.calls("PUT", SINGLE) == 2


def test_issue14_job_status_is_polled_with_backoff_until_completed(zd: World) -> None:
    zd.sandbox.job_polls_to_finish = 3
    report = zd.syncer().run_cycle()
    assert report.error == ""
    assert zd.sandbox.calls("GET", STATUSES) == 3
    # The first poll goes out as soon as the jobs are queued; the waits double after each unfinished answer.
    assert zd.sleeps[:2] == [1.0, 2.0] and 4.0 not in zd.sleeps
    assert zd.store.pending(zd.name) == []


def test_issue14_a_ticket_the_job_refused_is_sent_alone_then_dead_lettered(zd: World) -> None:
    original = zd.sandbox._refusal
    refused: list[int] = []

    def refuse_first(state: Any, fields: dict[str, Any]) -> Any:
        if "id" not in fields and (not refused or refused[0] == state.data["id"]):
            # In the job and again alone (neither passes `id` here): this ticket is closed for good.
            refused.append(state.data["id"])
            return httpx_closed()
        return original(state, fields)

    zd.sandbox._refusal = refuse_first
    report = zd.syncer().run_cycle()
    assert report.error == ""
    assert len(refused) == 2, "refused once in the job, once alone"
    assert zd.sandbox.calls("PUT", SINGLE) == 1
    [dead] = zd.store.dead_letters(zd.name)
    assert dead.ticket_id == str(refused[0]) and "closed" in dead.last_error
    assert zd.store.pending(zd.name) == []


def httpx_closed() -> Any:
    from sandbox.zendesk import ERROR_CLOSED, _json

    return _json(422, ERROR_CLOSED)


def test_issue14_a_ticket_the_job_failed_goes_out_alone_once(zd: World) -> None:
    original = zd.sandbox._refusal
    state = {"refused": None}

    def refuse_in_job_once(ticket: Any, fields: dict[str, Any]) -> Any:
        if state["refused"] is None:
            state["refused"] = ticket.data["id"]
            return httpx_closed()
        return original(ticket, fields)

    zd.sandbox._refusal = refuse_in_job_once
    report = zd.syncer().run_cycle()
    assert report.error == "" and report.dead_lettered == 0
    assert zd.sandbox.calls("PUT", SINGLE) == 1
    assert zd.store.pending(zd.name) == []
    assert all(count == 1 for count in zd.marker_counts().values())


def test_issue14_a_persons_tag_edit_during_the_job_survives(zd: World) -> None:
    run_job = zd.sandbox._run_job

    def person_edits_first(job: Any) -> None:
        for fields in job.tickets:
            zd.sandbox.update(fields["id"], additional_tags=["vip_by_hand"])
        run_job(job)

    zd.sandbox._run_job = person_edits_first
    report = zd.syncer().run_cycle()
    assert report.writes >= 3
    written = [
        ticket_id for ticket_id in zd.sandbox.ticket_ids() if "vip_by_hand" in zd.sandbox.ticket(ticket_id)["tags"]
    ]
    assert len(written) == report.writes
    assert report.tags_added > 0, "our own tags were added beside the person's"


def test_issue14_a_crash_while_the_job_runs_posts_every_note_once(zd: World, tmp_path: Path) -> None:
    # The job was queued; our process dies before it learns how the job went (an auth failure on the poll
    # aborts the cycle just as a kill would: nothing after the PUT is recorded).
    zd.sandbox.inject(
        Fault(401, times=1, method="GET", path_pattern=STATUSES, body='{"error": "Couldn\'t authenticate you"}')
    )
    first = zd.syncer().run_cycle()
    assert first.error.startswith("AuthError")
    pending = zd.store.pending(zd.name)
    assert pending and first.writes == 0
    with_notes = [intent for intent in pending if json.loads(intent.payload).get("comment")]
    assert with_notes

    second = zd.syncer().run_cycle()
    assert second.error == ""
    assert second.recovered >= len(pending)
    assert zd.store.pending(zd.name) == []
    counts = zd.marker_counts()
    assert counts and all(count == 1 for count in counts.values())
    assert zd.sandbox.calls("PUT", SINGLE) == 0, "nothing the job applied was sent again"


def test_issue14_a_job_that_never_ends_leaves_its_writes_to_recovery(zd: World) -> None:
    zd.sandbox.job_polls_to_finish = 10**6
    first = zd.syncer().run_cycle()
    assert first.error == "" and first.writes == 0 and first.failed >= 3
    assert zd.sandbox.calls("GET", STATUSES) == 8  # DEFAULT_JOB_POLLS, then given up
    zd.sandbox.job_polls_to_finish = 1
    second = zd.syncer().run_cycle()
    assert second.error == ""
    assert zd.store.pending(zd.name) == []
    assert all(count == 1 for count in zd.marker_counts().values())


# -- the connector's exchange, against respx in the reference's shapes ----------------------------------------

BASE = "https://acme.zendesk.com"


def connector(sleeps: list[float]) -> ZendeskConnector:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    off = loaded.config.history.model_copy(update={"ticket_events": False})
    mapping = ZendeskMapping(loaded.config.model_copy(update={"history": off}), loaded.path)
    credentials = {"email": SecretStr("agent@acme.test"), "api_token": SecretStr("zd-token-123456")}
    http = HttpClient(
        "acme-zendesk",
        BASE,
        auth=make_auth(credentials),
        secrets=["zd-token-123456"],
        options=HttpOptions(max_attempts=2),
        sleep=sleeps.append,
    )
    return ZendeskConnector("acme-zendesk", http, mapping, {})


JOB_ID = "V3-8b726e606741012ffc2d782bcb7848fe"
SHOW_MANY = f"{BASE}/api/v2/job_statuses/show_many.json"


def many(*shown: dict[str, Any]) -> dict[str, Any]:
    """A Show Many Job Statuses answer (`{"job_statuses": [...]}`) from Show Job Status answers."""
    return {"job_statuses": [answer["job_status"] for answer in shown]}


def job_status(status: str, results: list[dict[str, Any]] | None) -> dict[str, Any]:
    done = status == "completed"
    return {
        "job_status": {
            "id": JOB_ID,
            "job_type": "Bulk Update Ticket",
            "url": f"{BASE}/api/v2/job_statuses/{JOB_ID}.json",
            "total": 2 if status != "queued" else None,
            "progress": len(results or []) if status != "queued" else None,
            "status": status,
            "message": "Completed at 2026-11-22 12:00:03 +0000" if done else None,
            "results": results,
        }
    }


def job(job_id: str, status: str, ids: range | None = None) -> dict[str, Any]:
    """A Show Job Status answer of job `job_id`, every ticket of `ids` (when given) updated."""
    body = job_status(status, None)
    body["job_status"].update(id=job_id, url=f"{BASE}/api/v2/job_statuses/{job_id}.json")
    if ids is not None:
        body["job_status"]["results"] = [
            {"id": n, "action": "update", "success": True, "status": "Updated"} for n in ids
        ]
    return body


@respx.mock
def test_issue14_update_many_sends_per_ticket_values_and_reads_each_result() -> None:
    sleeps: list[float] = []
    zendesk = connector(sleeps)
    note = Comment(body="Escalated to L2", idempotency_key="k1")
    writebacks = [
        WriteBack(
            platform="zendesk",
            instance="acme-zendesk",
            ticket_id="35436",
            revision="2026-11-22T11:50:00Z",
            tier=Tier.L2,
            comment=note,
        ),
        WriteBack(
            platform="zendesk",
            instance="acme-zendesk",
            ticket_id="35437",
            revision="2026-11-22T11:51:00Z",
            add_tags=frozenset({"escalation_mgmt"}),
        ),
    ]
    sent = respx.put(f"{BASE}/api/v2/tickets/update_many.json").mock(
        return_value=httpx.Response(200, json=job_status("queued", None))
    )
    respx.get(SHOW_MANY, params={"ids": JOB_ID}).mock(
        side_effect=[
            httpx.Response(200, json=many(job_status("working", []))),
            httpx.Response(
                200,
                json=many(
                    job_status(
                        "completed",
                        [
                            {"id": 35436, "action": "update", "success": True, "status": "Updated"},
                            {
                                "index": 1,
                                "id": 35437,
                                "error": "RecordInvalid",
                                "details": "Status: closed prevents ticket update",
                            },
                        ],
                    )
                ),
            ),
        ]
    )
    outcomes = zendesk.apply_many(writebacks)
    body = json.loads(sent.calls[0].request.content)
    first, second = body["tickets"]
    assert first["id"] == 35436 and first["comment"] == {"body": note.text, "public": False}
    assert "tags" not in first and "tags" not in second, "a batch never replaces a person's tag list"
    assert second["additional_tags"] == ["escalation_mgmt"]
    assert first["updated_stamp"] == "2026-11-22T11:50:00Z" and first["safe_update"] is True
    assert isinstance(outcomes[0], ApplyResult) and outcomes[0].ticket_id == "35436"
    assert isinstance(outcomes[1], NotBatchedError) and "closed prevents" in str(outcomes[1])
    assert sleeps == [1.0], "the first poll at once, the second after the first wait"


@respx.mock
def test_issue14_a_killed_job_sends_back_what_it_did_not_report() -> None:
    zendesk = connector([])
    writebacks = [
        WriteBack(
            platform="zendesk", instance="acme-zendesk", ticket_id=str(n), revision="2026-11-22T11:50:00Z", tier=Tier.L2
        )
        for n in (1, 2)
    ]
    respx.put(f"{BASE}/api/v2/tickets/update_many.json").mock(
        return_value=httpx.Response(200, json=job_status("queued", None))
    )
    respx.get(SHOW_MANY).mock(
        return_value=httpx.Response(
            200,
            json=many(job_status("killed", [{"id": 1, "action": "update", "success": True, "status": "Updated"}])),
        )
    )
    done, missing = zendesk.apply_many(writebacks)
    assert isinstance(done, ApplyResult)
    assert isinstance(missing, NotBatchedError) and "killed" in str(missing)


@respx.mock
def test_issue14_a_job_status_without_an_id_is_ambiguous() -> None:
    zendesk = connector([])
    respx.put(f"{BASE}/api/v2/tickets/update_many.json").mock(return_value=httpx.Response(200, json={"job_status": {}}))
    [outcome] = zendesk.apply_many(
        [
            WriteBack(
                platform="zendesk",
                instance="acme-zendesk",
                ticket_id="1",
                revision="2026-11-22T11:50:00Z",
                tier=Tier.L2,
            )
        ]
    )
    assert isinstance(outcome, AmbiguousWriteError)


@respx.mock
def test_a_lost_job_answer_leaves_only_that_jobs_tickets_unknown() -> None:
    """Three jobs in one call, the second's answer lost: the first and third are followed and settled, and only
    the second's tickets come back as maybe applied (before, the whole call raised and all 250 were unknown)."""
    zendesk = connector([])
    writebacks = [
        WriteBack(
            platform="zendesk", instance="acme-zendesk", ticket_id=str(n), revision="2026-11-22T11:50:00Z", tier=Tier.L2
        )
        for n in range(1, 251)
    ]

    respx.put(f"{BASE}/api/v2/tickets/update_many.json").mock(
        side_effect=[
            httpx.Response(200, json=job("job1", "queued", None)),
            httpx.Response(503, text="unavailable"),
            httpx.Response(200, json=job("job3", "queued", None)),
        ]
    )
    polled = respx.get(SHOW_MANY, params={"ids": "job1,job3"}).mock(
        return_value=httpx.Response(
            200, json=many(job("job1", "completed", range(1, 101)), job("job3", "completed", range(201, 251)))
        )
    )
    outcomes = zendesk.apply_many(writebacks)
    kinds = [type(outcome).__name__ for outcome in outcomes]
    assert kinds[:100] == ["ApplyResult"] * 100 and kinds[200:] == ["ApplyResult"] * 50
    assert kinds[100:200] == ["AmbiguousWriteError"] * 100
    assert polled.call_count == 1, "one Show Many Job Statuses request followed both jobs"


class JobAppliedThenLost:
    """WSGI wrapper: the update_many request is served (the job queued), then its answer is lost."""

    def __init__(self, app: Any, answer: str) -> None:
        self.app, self.answer, self.hit = app, answer, 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.hit or not environ.get("PATH_INFO", "").startswith("/api/v2/tickets/update_many"):
            return self.app(environ, start_response)
        self.hit += 1
        list(self.app(environ, lambda status, headers, exc_info=None: None))
        if self.answer == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        start_response("503 Service Unavailable", [("Content-Type", "text/html")])
        return [b"<html><body>503 Service Unavailable</body></html>"]


@pytest.mark.parametrize("answer", ["503", "drop"])
def test_issue14_a_job_queued_but_unanswered_posts_every_note_once(zd: World, answer: str) -> None:
    faulty = JobAppliedThenLost(zd.sandbox, answer)
    zd.sandbox.transport = lambda: httpx.WSGITransport(app=faulty)  # type: ignore[method-assign]
    syncer = zd.syncer()
    first = syncer.run_cycle()
    assert faulty.hit == 1 and first.failed >= 3 and first.writes == 0
    zd.clock.advance(timedelta(seconds=61))
    second = syncer.run_cycle()
    assert second.error == "" and first.recovered + second.recovered >= first.failed
    assert zd.store.pending(zd.name) == []
    counts = zd.marker_counts()
    assert counts and all(count == 1 for count in counts.values())


def test_a_job_applied_but_unanswered_is_settled_in_the_same_cycle(zd: World) -> None:
    """The retry pass finds the notes the job posted: done and recorded now, not one poll interval later, and
    nothing is sent twice."""
    faulty = JobAppliedThenLost(zd.sandbox, "503")
    zd.sandbox.transport = lambda: httpx.WSGITransport(app=faulty)  # type: ignore[method-assign]
    first = zd.syncer().run_cycle()
    assert faulty.hit == 1 and first.failed >= 3
    assert first.recovered >= first.failed
    assert zd.store.pending(zd.name) == []
    counts = zd.marker_counts()
    assert counts and all(count == 1 for count in counts.values())
    escalated = [key.split(":")[2] for key in counts if not key.endswith("MGMT")]
    missing = [ticket for ticket in escalated if not zd.store.tier_entries(zd.name, ticket)]
    assert not missing, (missing, sorted(counts))


def test_issue14_a_stop_before_the_job_leaves_the_queued_writes_due(zd: World) -> None:
    syncer = zd.syncer()
    review_one = syncer._review_one
    seen: list[str] = []

    def stop_after_five(entry: Any, *args: Any) -> bool:
        seen.append(entry.ticket_id)
        if len(seen) == 5:
            syncer.stop.set()
        return review_one(entry, *args)

    syncer._review_one = stop_after_five  # type: ignore[method-assign]
    report = syncer.run_cycle()
    assert report.stopped_early
    assert zd.sandbox.calls("PUT", JOBS) == 0 and zd.sandbox.calls("PUT", SINGLE) == 0
    assert zd.store.pending(zd.name) == []
    due = {entry.ticket_id for entry in zd.store.book_due(zd.name, zd.clock.now(), 1000)}
    assert set(seen) <= due, "nothing was sent, so every reviewed ticket is still due"


def test_issue14_sandbox_serves_update_many_as_a_queued_job_in_the_references_shape(tmp_path: Path) -> None:
    from runtime.demo import DEMO_START
    from sandbox.base import SimClock
    from sandbox.zendesk import ZendeskSandbox

    sandbox = ZendeskSandbox(SimClock(DEMO_START), seed=3)
    open_id, closed_id = sandbox.seed_tickets(2)
    sandbox.update(closed_id, status="closed")
    client = httpx.Client(transport=sandbox.transport(), base_url="https://acme.zendesk.com", auth=("a/token", "t"))
    tickets = [
        {"id": open_id, "additional_tags": ["batched"], "comment": {"body": "note", "public": False}},
        {"id": closed_id, "additional_tags": ["batched"]},
    ]
    queued = client.put("/api/v2/tickets/update_many.json", json={"tickets": tickets}).json()["job_status"]
    assert set(queued) == {"id", "job_type", "url", "total", "progress", "status", "message", "results"}
    assert queued["status"] == "queued" and queued["results"] is None and queued["total"] is None
    assert "batched" not in sandbox.ticket(open_id)["tags"], "the work is done when the job runs, not before"
    done = client.get(f"/api/v2/job_statuses/{queued['id']}.json").json()["job_status"]
    assert done["status"] == "completed" and done["total"] == 2 and done["progress"] == 2
    ok, refused = done["results"]
    assert ok == {"id": open_id, "action": "update", "success": True, "status": "Updated"}
    assert refused["id"] == closed_id and refused["index"] == 1 and refused["error"] == "RecordInvalid"
    assert "batched" in sandbox.ticket(open_id)["tags"]
    assert sandbox.comments(open_id)[-1]["public"] is False
    too_many = [{"id": open_id}] * 101
    assert client.put("/api/v2/tickets/update_many.json", json={"tickets": too_many}).status_code == 422
    assert client.get("/api/v2/job_statuses/V3-unknown.json").status_code == 404


@respx.mock
def test_show_many_asks_only_after_unfinished_jobs_and_a_job_never_shown_stays_unknown_alone() -> None:
    """Two jobs: the first ends on the first round, so later rounds ask after the second only; the answer keeps
    leaving the second out (an expired or unknown id), so after `job_polls` rounds only its tickets are unknown."""
    sleeps: list[float] = []
    zendesk = connector(sleeps)
    zendesk.job_polls = 3
    writebacks = [
        WriteBack(
            platform="zendesk", instance="acme-zendesk", ticket_id=str(n), revision="2026-11-22T11:50:00Z", tier=Tier.L2
        )
        for n in range(1, 151)
    ]

    respx.put(f"{BASE}/api/v2/tickets/update_many.json").mock(
        side_effect=[httpx.Response(200, json=job("jobA", "queued")), httpx.Response(200, json=job("jobB", "queued"))]
    )
    both = respx.get(SHOW_MANY, params={"ids": "jobA,jobB"}).mock(
        return_value=httpx.Response(200, json=many(job("jobA", "completed", range(1, 101))))
    )
    second_only = respx.get(SHOW_MANY, params={"ids": "jobB"}).mock(return_value=httpx.Response(200, json=many()))
    outcomes = zendesk.apply_many(writebacks)
    kinds = [type(outcome).__name__ for outcome in outcomes]
    assert kinds[:100] == ["ApplyResult"] * 100
    assert kinds[100:] == ["AmbiguousWriteError"] * 50
    assert both.call_count == 1 and second_only.call_count == 2
    assert sleeps == [1.0, 2.0]


def test_sandbox_shows_many_job_statuses_each_a_poll() -> None:
    from runtime.demo import DEMO_START
    from sandbox.base import SimClock
    from sandbox.zendesk import ZendeskSandbox

    sandbox = ZendeskSandbox(SimClock(DEMO_START), seed=3)
    sandbox.jobs_run_unasked = False
    sandbox.job_polls_to_finish = 2
    [ticket_id] = sandbox.seed_tickets(1)
    client = httpx.Client(transport=sandbox.transport(), base_url="https://acme.zendesk.com", auth=("a/token", "t"))
    queued = [
        client.put(
            "/api/v2/tickets/update_many.json", json={"tickets": [{"id": ticket_id, "additional_tags": [tag]}]}
        ).json()["job_status"]["id"]
        for tag in ("one", "two")
    ]
    ids = ",".join([*queued, "V3-unknown"])
    first = client.get(f"/api/v2/job_statuses/show_many.json?ids={ids}").json()
    assert set(first) == {"job_statuses"}
    assert [(job["id"], job["status"]) for job in first["job_statuses"]] == [
        (queued[0], "working"),
        (queued[1], "working"),
    ]
    second = client.get("/api/v2/job_statuses/show_many.json", params={"ids": ",".join(queued)}).json()
    assert [job["status"] for job in second["job_statuses"]] == ["completed", "completed"]
    assert [len(job["results"]) for job in second["job_statuses"]] == [1, 1]
    assert {"one", "two"} <= set(sandbox.ticket(ticket_id)["tags"])
    assert client.get("/api/v2/job_statuses/show_many.json").status_code == 400


@respx.mock
def test_a_job_id_unfit_to_ask_after_leaves_only_that_jobs_tickets_unknown() -> None:
    """Asked after in one request, a job whose queued answer names an id that cannot go into the query must not
    make the other jobs of the round unknown too."""
    zendesk = connector([])
    writebacks = [
        WriteBack(
            platform="zendesk", instance="acme-zendesk", ticket_id=str(n), revision="2026-11-22T11:50:00Z", tier=Tier.L2
        )
        for n in range(1, 151)
    ]
    good = job_status("queued", None)
    bad = job_status("queued", None)
    bad["job_status"]["id"] = "../tickets/1"
    respx.put(f"{BASE}/api/v2/tickets/update_many.json").mock(
        side_effect=[httpx.Response(200, json=good), httpx.Response(200, json=bad)]
    )
    done = job_status(
        "completed", [{"id": n, "action": "update", "success": True, "status": "Updated"} for n in range(1, 101)]
    )
    respx.get(SHOW_MANY, params={"ids": JOB_ID}).mock(return_value=httpx.Response(200, json=many(done)))
    kinds = [type(outcome).__name__ for outcome in zendesk.apply_many(writebacks)]
    assert kinds[:100] == ["ApplyResult"] * 100
    assert kinds[100:] == ["AmbiguousWriteError"] * 50

"""Peak RSS through a Zendesk backlog of growing size (issue 14: flat, at most 150 MB through 1,000,000 tickets).

Prints one figure a line (`name value unit`). Each run is a fresh process (its peak RSS is its own) doing what
`sync.py once` does for one instance: the real Syncer, Zendesk connector, HTTP layer, mapping, engine and a
SQLite state file, over synthetic export pages served by an in-process httpx transport (no sandbox: a sandbox
holding a million tickets would weigh more than the daemon). Pages are generated on demand, 1,000 tickets each,
from bench/engine.py's Zendesk generator (incremental-export ticket objects with `metric_sets` and
`organizations` sideloads), serialized to JSON and parsed by the connector as on the wire. The incremental ticket event export (with
`include=comment_events`) is served too, as the connector follows it into its event book alongside the ticket
pages: two or three audits a ticket (its creation with the description, an agent's reply changing the status,
sometimes an internal note), comments with `body`, `html_body` and `plain_body` of a few hundred to a few
thousand characters, so the book's memory is measured.

- ``memory.read.<n>``: a backlog of n tickets polled, evaluated and put in the book, writes capped at one
  (`max_writes_per_cycle`): the read path.
- ``memory.write.<n>``: the same backlog with every write the engine asks for sent, as the daemon sends them
  by default: Update Many Tickets jobs of up to 100 tickets (queued, then completed at the first status poll),
  through the ledger; the write path. ``memory.write.<n>.calls`` counts the write requests.

The child imports the daemon (`sync`) and settles its memory as `once` does before the first cycle
(`sync.settle_memory`: the collector's young generation, glibc's mmap threshold), so the figure is the daemon's.
The state file skips the disk sync (``durable=False``): RSS does not depend on it, the run time would.
The open-ticket scan is marked done beforehand, so the backlog is read once (by the poll).

Usage: python bench/memory.py [--sizes 10000,100000] [--modes read,write]   (1M: --sizes 10000,100000,1000000)
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import logging
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine.policy import load_policy  # noqa: E402
from runtime.config import AppConfig, DaemonSection, InstanceSection  # noqa: E402
from runtime.cycle import SCAN_DONE  # noqa: E402
from runtime.wiring import wire  # noqa: E402
from state.sql import SCAN_SUFFIX  # noqa: E402
from state.sqlite import SqliteStore  # noqa: E402
from sync import settle_memory  # noqa: E402

PAGE = 1000
EVENTS_PAGE = 1000
"""The ticket event export's page: up to 1000 events, a second never split across pages (Zendesk's limit)."""
EVENTS_FROM = int((datetime(2026, 11, 1, tzinfo=UTC)).timestamp())
"""Ticket n's events carry the export time EVENTS_FROM + n: the export is time ordered and generated on demand,
so each ticket gets a second of its own (its events' `created_at` are the ticket's own times)."""
AGENT = 370000111
SENTENCES = (
    "Thanks for the details, I checked the logs of your account.",
    "The error started after the deployment of the new checkout flow on our side.",
    "Could you send us the request id shown at the bottom of the error page?",
    "We reproduced it in our staging environment and raised it with the payments team.",
    "As a workaround, retrying the order after a minute succeeds in most cases.",
    "I am escalating this to our second line, they will come back to you today.",
)
TICKET_PATH = re.compile(r"^/api/v2/tickets/(\d+)\.json$")
COMMENTS_PATH = re.compile(r"^/api/v2/tickets/(\d+)/comments\.json$")
JOB_PATH = re.compile(r"^/api/v2/job_statuses/([A-Za-z0-9]+)\.json$")


def _generator() -> Any:
    """bench/engine.py as a module of its own name (its file name would shadow the `engine` package)."""
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).with_name("engine.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_engine"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class Backlog:
    """A Zendesk account of `size` tickets, generated page by page when asked for (nothing kept)."""

    def __init__(self, size: int) -> None:
        self.gen = _generator()
        self.size = size
        self.orgs = self.gen._organizations(random.Random(7))
        self.puts = 0
        self.jobs: dict[str, list[int]] = {}
        """Queued Update Many jobs: the ticket ids each one carries, until its status is asked for."""

    def ticket(self, number: int) -> tuple[dict[str, Any], dict[str, Any]]:
        record = self.gen.zendesk_record(number, random.Random(number), self.gen.NOW, self.orgs)
        return record.data, record.related

    def page(self, start: int) -> dict[str, Any]:
        end = min(start + PAGE, self.size)
        tickets, metric_sets, orgs = [], [], {}
        for number in range(start, end):
            data, related = self.ticket(number)
            tickets.append(data)
            metric_sets.append(related["metric_set"])
            if "organization" in related:
                orgs[related["organization"]["id"]] = related["organization"]
        # https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
        # (cursor-based export: after_cursor, after_url, end_of_stream; sideloads as top-level lists)
        return {
            "tickets": tickets,
            "metric_sets": metric_sets,
            "organizations": list(orgs.values()),
            "after_cursor": str(end),
            "before_cursor": str(start),
            "after_url": f"https://acme.zendesk.com/api/v2/incremental/tickets/cursor.json?cursor={end}",
            "before_url": None,
            "end_of_stream": end >= self.size,
        }

    def events_page(self, start_time: int, comments: bool) -> dict[str, Any]:
        """Incremental Ticket Event Export, time based: events at or after `start_time`, up to EVENTS_PAGE a page
        (whole seconds), `end_time` the last event's time and the next `start_time`, so the last second comes
        again on the next page; `end_of_stream` once the last ticket's events are on the page
        (https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
        #incremental-ticket-event-export; shapes as sandbox/zendesk.py serves them)."""
        events: list[dict[str, Any]] = []
        number = max(0, start_time - EVENTS_FROM)
        while number < self.size:
            audits = self.ticket_events(number, comments)
            if events and len(events) + len(audits) > EVENTS_PAGE:
                break
            events += audits
            number += 1
        end_time = events[-1]["timestamp"] if events else start_time
        query = f"start_time={end_time}" + ("&include=comment_events" if comments else "")
        return {
            "ticket_events": events,
            "next_page": f"https://acme.zendesk.com/api/v2/incremental/ticket_events.json?{query}",
            "count": len(events),
            "end_of_stream": number >= self.size,
            "end_time": end_time,
        }

    def ticket_events(self, number: int, comments: bool) -> list[dict[str, Any]]:
        """Ticket n's audits as the export shows them: the creation (a Create child event per set field, then
        the description), an agent's public reply that sets the status, and for every third ticket an internal
        note; each event `{id, ticket_id, timestamp, created_at, updater_id, via, system, metadata, event_type:
        "Audit", child_events}`."""
        data, _ = self.ticket(number)
        rng = random.Random(-1 - number)
        timestamp = EVENTS_FROM + number
        ticket_id, requester = data["id"], data["requester_id"]
        creates: list[dict[str, Any]] = [
            {name: data[name], "event_type": "Create"}
            for name in ("subject", "priority", "requester_id", "group_id", "tags")
            if data[name] is not None
        ]
        audits = [
            (data["created_at"], requester, [{"status": "new", "event_type": "Create"}, *creates]),
            (data["updated_at"], AGENT, [{"status": data["status"], "previous_value": "new", "event_type": "Change"}]),
        ]
        texts = [(data["description"] or "It fails.", requester, True), (self.text(rng), AGENT, True)]
        if number % 3 == 0:
            audits.append((data["updated_at"], AGENT, []))
            texts.append((self.text(rng), AGENT, False))
        events = []
        for index, ((at, author, children), (text, by, public)) in enumerate(zip(audits, texts, strict=True)):
            audit_id = ticket_id * 10 + index
            if comments:
                children = [*children, self.comment(text, by, public, audit_id)]
            system = {"client": "Mozilla/5.0 (X11; Linux x86_64)", "ip_address": "203.0.113.7", "location": "Berlin"}
            events.append(
                {
                    "id": audit_id,
                    "ticket_id": ticket_id,
                    "timestamp": timestamp,
                    "created_at": at,
                    "updater_id": author,
                    "via": "Web form",
                    "system": system,
                    "metadata": {"system": system, "custom": {}},
                    "event_type": "Audit",
                    "child_events": [
                        {"id": audit_id * 100 + n, "via": "Web form", "via_reference_id": None, **child}
                        for n, child in enumerate(children)
                    ],
                }
            )
        return events

    @staticmethod
    def text(rng: random.Random) -> str:
        """An agent's comment: a few paragraphs, a few hundred to a few thousand characters."""
        paragraphs = [" ".join(rng.choices(SENTENCES, k=rng.randint(2, 8))) for _ in range(rng.randint(1, 6))]
        return "\n\n".join(paragraphs)

    @staticmethod
    def comment(text: str, author: int, public: bool, audit_id: int) -> dict[str, Any]:
        paragraphs = "".join(f'<p dir="auto">{html.escape(p)}</p>' for p in text.split("\n\n") if p.strip())
        return {
            "event_type": "Comment",
            "author_id": author,
            "body": text,
            "html_body": f'<div class="zd-comment" dir="auto">{paragraphs}</div>',
            "plain_body": text,
            "public": public,
            "attachments": [],
            "audit_id": audit_id,
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v2/incremental/tickets/cursor.json":
            cursor = request.url.params.get("cursor")
            return httpx.Response(200, json=self.page(int(cursor) if cursor else 0))
        if path == "/api/v2/incremental/ticket_events.json":
            comments = "comment_events" in request.url.params.get("include", "")
            return httpx.Response(200, json=self.events_page(int(request.url.params.get("start_time", "0")), comments))
        if path == "/api/v2/tickets/update_many.json" and request.method == "PUT":
            return self.update_many(request)
        if path == "/api/v2/job_statuses/show_many.json":
            return self.job_statuses(request.url.params.get("ids", "").split(","))
        if match := JOB_PATH.match(path):
            return self.job_status(match.group(1))
        if match := COMMENTS_PATH.match(path):
            return httpx.Response(200, json={"comments": [], "next_page": None, "previous_page": None, "count": 0})
        if match := TICKET_PATH.match(path):
            number = int(match.group(1)) - 100000
            if not 0 <= number < self.size:
                return httpx.Response(404, json={"error": "RecordNotFound", "description": "Not found"})
            data, related = self.ticket(number)
            if request.method == "PUT":
                self.puts += 1
                update = json.loads(request.content)["ticket"]
                data.update({k: v for k, v in update.items() if k in ("tags", "group_id", "custom_fields")})
                data["updated_at"] = (self.gen.NOW + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                return httpx.Response(200, json={"ticket": data, "audit": {"ticket_id": data["id"], "events": []}})
            return httpx.Response(200, json={"ticket": data, "metric_set": related["metric_set"]})
        return httpx.Response(404, json={"error": "InvalidEndpoint", "description": "Not found"})

    def update_many(self, request: httpx.Request) -> httpx.Response:
        """Update Many Tickets (batch form, up to 100 tickets): answered with a queued job, as Zendesk does;
        https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#update-many-tickets"""
        tickets = json.loads(request.content)["tickets"]
        job_id = f"{len(self.jobs) + 1:032x}"
        self.jobs[job_id] = [int(ticket["id"]) for ticket in tickets]
        self.puts += 1
        return httpx.Response(200, json={"job_status": self._job(job_id, "queued", [])})

    def job_status(self, job_id: str) -> httpx.Response:
        """Show Job Status: the job has run by the first poll, one result per ticket
        (https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/)."""
        ids = self.jobs.pop(job_id, None)
        if ids is None:
            return httpx.Response(404, json={"error": "RecordNotFound", "description": "Not found"})
        results = [{"id": ticket_id, "action": "update", "success": True, "status": "Updated"} for ticket_id in ids]
        return httpx.Response(200, json={"job_status": self._job(job_id, "completed", results)})

    def job_statuses(self, job_ids: list[str]) -> httpx.Response:
        """Show Many Job Statuses (`ids` comma-separated): each known job as Show Job Status answers it."""
        shown = [self.job_status(job_id) for job_id in job_ids if job_id in self.jobs]
        return httpx.Response(
            200, json={"job_statuses": [json.loads(answer.content)["job_status"] for answer in shown]}
        )

    @staticmethod
    def _job(job_id: str, status: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        done = status == "completed"
        return {
            "id": job_id,
            "job_type": "ThirdPartyTicketUpdate",
            "url": f"https://acme.zendesk.com/api/v2/job_statuses/{job_id}.json",
            "total": len(results) if done else None,
            "progress": len(results) if done else None,
            "status": status,
            "message": "Completed at 2026-12-01 12:00:00 +0000" if done else None,
            "results": results if done else None,
        }


def child(mode: str, size: int) -> None:
    logging.disable(logging.WARNING)
    backlog = Backlog(size)
    section = InstanceSection(
        name="zd",
        platform="zendesk",
        base_url="https://acme.zendesk.com",
        credentials={"email": "ZD_EMAIL", "api_token": "ZD_TOKEN"},
        options={"page_size": PAGE},
        initial_lookback_hours=24 * 365,
    )
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        path = Path(tmp) / "state.sqlite3"
        store = SqliteStore(path, durable=False)
        store.set_cursor("zd" + SCAN_SUFFIX, SCAN_DONE)
        writes = 10**9 if mode == "write" else 1
        config = AppConfig(
            path=ROOT / "config.example.toml",
            daemon=DaemonSection(max_writes_per_cycle=writes),
            state_url=f"sqlite:///{path}",
            instances=(section,),
            policy=load_policy(ROOT / "config.example.toml"),
        )
        wired = wire(
            config,
            section,
            store,
            environ={"ZD_EMAIL": "bench@example.com", "ZD_TOKEN": "bench-token"},
            clock=lambda: backlog.gen.NOW,
            transport=httpx.MockTransport(backlog.handle),
            sleep=lambda seconds: None,
        )
        settle_memory()  # as `sync.py once` does before its first cycle
        started = time.process_time()
        report = wired.syncer.run_cycle()
        cpu = time.process_time() - started
        wired.close()
        store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert report.error == "", report.error
    assert report.tickets_seen == size, (report.tickets_seen, size)
    print(
        json.dumps(
            {"peak": peak, "cpu": cpu, "writes": report.writes, "seen": report.tickets_seen, "calls": backlog.puts}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="backlog sizes, comma-separated")
    parser.add_argument("--modes", default="read,write")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    for mode in args.modes.split(","):
        for size in (int(size) for size in args.sizes.split(",")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(size)], check=True, capture_output=True, text=True
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"memory.{mode}.{size}.peak_rss {result['peak']:.0f} MB")
            print(f"memory.{mode}.{size}.cpu_seconds {result['cpu']:.1f} s")
            print(f"memory.{mode}.{size}.writes {result['writes']} tickets")
            if mode == "write":
                print(f"memory.{mode}.{size}.calls {result['calls']} requests")


if __name__ == "__main__":
    main()

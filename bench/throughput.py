"""Throughput against Zendesk's real ceilings: a read backlog and a write backlog, as a ratio of the ceiling.

The Zendesk sandbox enforces its documented ceilings (`enforce_ceilings`: the account's 700 requests a minute,
each incremental export endpoint's 10 a minute, Update Ticket's 100; 429 + Retry-After) on a scaled clock
(`sandbox.base.ScaledClock`): simulated time = start + waits + `--scale` x real time elapsed. The real daemon
wiring (`runtime.wiring.wire`, as `sync.py` builds it) runs in-process on the same clock: the sandbox's rate
windows, the Syncer's `now`, the HTTP layer's `clock` (holds) and `sleep` (pacing, Retry-After, job polls) all
read or move it. So no second is free: every real second of work (the daemon's CPU, its SQLite store, and the
sandbox's own serving of requests, counted against the daemon as a stand-in for the platform's response time)
costs `scale` simulated seconds, while a wait
costs exactly what it asks for in simulated time and no real time. A loop in the shape of `sync.py run` drives
the cycles: one cycle, then the rest of `interval_seconds` (or until the platform's hold ends) waited on the
clock. Set-up (seeding, the cycles that fill the book) runs with the clock held and is not measured.
Because waits cost no real time, ceiling windows pass as fast as the work allows and no speed-up is needed: at
the default `--scale 1` the work costs on the simulated clock what it costs on this machine (wall time, so a
loaded machine counts against the daemon); a larger scale models a host that many times slower (headroom:
the read keeps its ceiling while 10 x `work_seconds_per_page` fits in a minute).

Read backlog: the book and cursor are current, then `--tickets` tickets change at once (created in the last
two hours); the measured cycle pages the incremental export through them with `page_size` 1000 (the example
config's 100 would spend a request of the 10 a minute on every 100 tickets). Rate: tickets in the export's
pages per clock minute, over the full minutes of the sweep (it starts on a minute boundary; the minute it ends
in is left out, the backlog having run out in it). Ceiling: 10 pages a minute x 1,000 tickets.

Write backlog: `--tickets` tickets are in the book, then time passes until every one is due a write (SLA
breached: tier, tags, handoff note); the measured cycles write them with no per-cycle cap
(`max_writes_per_cycle` 10^6; the default 100 a cycle is a first-start safety cap, not a ceiling) as Update
Many Tickets jobs of 100. Rate: tickets a completed job reported written, per clock minute, over the full
minutes of the work (as above; with less than one full minute, over the elapsed time). A job's own run is not
charged to the daemon: Zendesk runs jobs on its workers while the client waits (the sandbox runs one inside the
client's next request, so the bench holds the clock for it). Ceiling: update_many
has no request limit of its own, the account's 700 requests a minute bounds it. A job costs its PUT plus its
share of the status polls that see it end: Show Many Job Statuses follows many jobs in one request, and at most
30 jobs can be queued or running at once (Rate limits, "Job limit"), so the least the API allows is one poll
for 30 jobs: 1 + 1/30 requests a job, 677 jobs x 100 tickets a minute. (It was 2 requests a job, 35,000
tickets a minute, while each job needed its own Show Job Status poll.) `requests_per_job` is what the daemon
spent (PUTs and polls over jobs); `calls_ratio` sets it against that least.
With less than one full minute of work (`full_minutes` 0) the rate is the elapsed time's, where the account's
budget cannot bind yet: the ratio then measures the daemon's own speed and waits, and can pass 1.

Prints one figure a line (`name value unit`).
Usage: python bench/throughput.py [--tickets 40000] [--scale 10] [--only read|write]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.policy import load_policy  # noqa: E402
from runtime.config import AppConfig, DaemonSection  # noqa: E402
from runtime.cycle import CycleReport  # noqa: E402
from runtime.demo import DEMO_ENVIRON, DEMO_INSTANCES, DEMO_START  # noqa: E402
from runtime.wiring import Wired, wire  # noqa: E402
from sandbox.base import ScaledClock  # noqa: E402
from sandbox.zendesk import EXPORT_LIMIT, EXPORT_MAX_PER_PAGE, JOB_LIMIT, RATE_LIMIT, ZendeskSandbox  # noqa: E402
from state import open_store  # noqa: E402

EXPORT_PATH = "/api/v2/incremental/tickets/cursor.json"
JOB_PATH = "/api/v2/job_statuses/"
INTERVAL = 60.0
ACCOUNT_JOB_LIMIT = 30
"""Jobs an account may have queued or running at once (https://developer.zendesk.com/api-reference/introduction/rate-limits/)."""
MIN_CALLS_PER_JOB = 1 + 1 / ACCOUNT_JOB_LIMIT
"""The PUT that queues a job and its share of the one Show Many Job Statuses poll that sees the most jobs a
client can have in flight end: the least a job can be followed with."""


@dataclass
class Tally:
    """What the daemon got through, by clock minute (the sandbox's rate windows)."""

    clock: ScaledClock
    counted: Counter[int] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    statuses: Counter[str] = field(default_factory=Counter)

    def add(self, amount: int) -> None:
        moment = self.clock.now()
        self.first = self.first or moment
        self.last = moment
        self.counted[math.floor(moment.timestamp()) // 60] += amount

    def per_minute(self, start: datetime) -> tuple[float, int]:
        """Amount per minute over the full minutes from `start` (a minute boundary) to the last one counted;
        the minute the work ended in is left out. With no full minute, over the elapsed time."""
        if self.last is None:
            return 0.0, 0
        first_minute = math.floor(start.timestamp()) // 60
        last_minute = math.floor(self.last.timestamp()) // 60
        full = last_minute - first_minute
        if full <= 0:
            elapsed = max((self.last - start).total_seconds(), 1e-9)
            return sum(self.counted.values()) * 60 / elapsed, 0
        return sum(self.counted[m] for m in range(first_minute, last_minute)) / full, full


def _wired(clock: ScaledClock, sandbox: ZendeskSandbox, workdir: Path, name: str, hook: Callable, cap: int) -> Wired:
    base = next(section for section in DEMO_INSTANCES if section.platform == "zendesk")
    section = base.model_copy(update={"options": {"page_size": EXPORT_MAX_PER_PAGE}})
    url = f"sqlite:///{workdir / f'{name}.sqlite3'}"
    config = AppConfig(
        path=ROOT / "config.example.toml",
        daemon=DaemonSection(max_writes_per_cycle=cap, interval_seconds=INTERVAL),
        state_url=url,
        instances=(section,),
        policy=load_policy(ROOT / "config.example.toml"),
    )
    return wire(
        config,
        section,
        open_store(url),
        environ=DEMO_ENVIRON,
        clock=clock.now,
        transport=sandbox.transport(),
        sleep=clock.sleep,
        on_exchange=hook,
    )


def _run(
    wired: Wired, clock: ScaledClock, done: Callable[[CycleReport], bool], max_cycles: int = 50
) -> list[CycleReport]:
    """Cycles as `sync.py run` runs them: one cycle, then the rest of the interval (or the hold) on the clock."""
    reports = []
    for _ in range(max_cycles):
        started = clock.now()
        report = wired.syncer.run_cycle()
        reports.append(report)
        if done(report):
            break
        wait = INTERVAL - (clock.now() - started).total_seconds()
        if report.retry_at is not None:
            wait = max(wait, (report.retry_at - clock.now()).total_seconds())
        clock.sleep(max(0.0, wait))
    return reports


def _to_next_minute(clock: ScaledClock) -> datetime:
    now = clock.now()
    boundary = math.floor(now.timestamp()) // 60 * 60 + 60
    return clock.advance(timedelta(seconds=boundary - now.timestamp()))


def measure_read(tickets: int, scale: float, workdir: Path, seed: int) -> dict[str, float]:
    clock = ScaledClock(DEMO_START, scale)
    sandbox = ZendeskSandbox(clock, seed=seed)
    tally = Tally(clock)

    def hook(request: httpx.Request, response: httpx.Response) -> None:
        if request.url.path == EXPORT_PATH:
            tally.statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                tally.add(response.content.count(b'"generated_timestamp"'))

    wired = _wired(clock, sandbox, workdir, "read", hook, cap=1)
    try:
        wired.syncer.run_cycle()  # empty account: the cursor is set and the open-ticket scan is done
        now = clock.now()
        for index in range(tickets):
            sandbox.add_idle_ticket(now - timedelta(seconds=120 + 7200 * index / tickets))
        tally.counted.clear()
        tally.statuses.clear()
        sandbox.enforce_ceilings = True
        start = _to_next_minute(clock)
        clock.run()
        reports = _run(wired, clock, lambda report: not report.stopped_early)
        clock.hold()
    finally:
        wired.close()
        wired.syncer.store.close()
    rate, windows = tally.per_minute(start)
    ceiling = EXPORT_LIMIT * EXPORT_MAX_PER_PAGE
    return {
        "tickets_per_minute": rate,
        "ceiling": ceiling,
        "ratio": rate / ceiling,
        "full_minutes": windows,
        "tickets_read": sum(tally.counted.values()),
        "pages": tally.statuses["200"],
        "work_seconds_per_page": clock.worked / max(1, tally.statuses["200"]),
        "waited_seconds": clock.waited,
        "export_429": tally.statuses["429"],
        "cycles": len(reports),
        "errors": sum(bool(report.error) for report in reports),
    }


def measure_write(tickets: int, scale: float, workdir: Path, seed: int) -> dict[str, float]:
    clock = ScaledClock(DEMO_START, scale)
    sandbox = ZendeskSandbox(clock, seed=seed)
    tally = Tally(clock)

    def hook(request: httpx.Request, response: httpx.Response) -> None:
        if request.url.path.startswith(JOB_PATH):
            tally.statuses["poll"] += 1
            if response.status_code == 200 and b'"status": "completed"' in response.content:
                tally.add(response.content.count(b'"success": true'))
        elif "update_many" in request.url.path:
            tally.statuses[str(response.status_code)] += 1

    run_job = sandbox._run_job

    def in_the_background(job: Any) -> None:
        """Zendesk runs a job on its own workers while the client waits: not the client's time. (Here it runs
        inside the client's next request, so its work would otherwise be charged to the daemon.)"""
        if not clock.running:
            return run_job(job)
        clock.hold()
        try:
            run_job(job)
        finally:
            clock.run()

    sandbox._run_job = in_the_background  # type: ignore[method-assign]
    wired = _wired(clock, sandbox, workdir, "write", hook, cap=10**6)
    try:
        now = clock.now()
        for index in range(tickets):
            sandbox.add_idle_ticket(now - timedelta(seconds=120 + 600 * index / tickets), priority="high")
        wired.syncer.run_cycle()  # reads them all while none is due yet
        clock.advance(timedelta(days=3))  # every one breached: each is due a write
        tally.counted.clear()
        tally.statuses.clear()
        sandbox.enforce_ceilings = True
        start = _to_next_minute(clock)
        clock.run()
        reports = _run(wired, clock, lambda report: report.deferred == 0 and not report.stopped_early)
        clock.hold()
    finally:
        wired.close()
        wired.syncer.store.close()
    rate, windows = tally.per_minute(start)
    ceiling = math.floor(RATE_LIMIT / MIN_CALLS_PER_JOB) * JOB_LIMIT
    jobs = max(1, tally.statuses["200"])
    requests_per_job = (tally.statuses["200"] + tally.statuses["429"] + tally.statuses["poll"]) / jobs
    return {
        "tickets_per_minute": rate,
        "ceiling": ceiling,
        "ratio": rate / ceiling,
        "full_minutes": windows,
        "tickets_written": sum(tally.counted.values()),
        "jobs": tally.statuses["200"],
        "work_seconds_per_job": clock.worked / max(1, tally.statuses["200"]),
        "wait_seconds_per_job": clock.waited / max(1, tally.statuses["200"]),
        "requests_per_job": requests_per_job,
        "calls_ratio": requests_per_job / MIN_CALLS_PER_JOB,
        "update_many_429": tally.statuses["429"],
        "cycles": len(reports),
        "errors": sum(bool(report.error) for report in reports),
    }


UNITS = {
    "tickets_per_minute": "tickets/min",
    "ceiling": "tickets/min",
    "ratio": "x",
    "full_minutes": "minutes",
    "cycles": "cycles",
    "errors": "cycles",
    "jobs": "jobs",
    "pages": "pages",
    "work_seconds_per_page": "s",
    "work_seconds_per_job": "s",
    "wait_seconds_per_job": "s",
    "requests_per_job": "requests",
    "calls_ratio": "x",
    "waited_seconds": "s",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=40_000)
    parser.add_argument("--scale", type=float, default=1.0, help="simulated seconds per real second of work")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=("read", "write"))
    args = parser.parse_args(argv)
    print(f"throughput.zendesk.scale {args.scale:g} x")
    with tempfile.TemporaryDirectory() as directory:
        for kind, measure in (("read", measure_read), ("write", measure_write)):
            if args.only and args.only != kind:
                continue
            for name, value in measure(args.tickets, args.scale, Path(directory), args.seed).items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                print(
                    f"throughput.zendesk.{kind}.{name} {shown} {UNITS.get(name, 'requests' if '429' in name else 'tickets')}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

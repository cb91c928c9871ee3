"""Calls per written ticket against the theoretical minimum, per platform, on a first start with N writes due.

Each platform's sandbox (in-process transport, no socket) is seeded with N idle tickets old enough that the
policy escalates them; the real daemon wiring (`runtime.wiring.wire`, as `sync.py once` builds it) then runs
its first cycle with no write cap, and the sandbox's request log is counted. Write-side calls are every
request of the write step: the writes themselves, Zendesk's job status polls, and any read a connector makes
just before a write. The theoretical minimum: Zendesk ceil(N/100) update_many jobs plus one Show Many Job Statuses
poll for every 30 of them (the most an account may have queued at once, so the least they can be followed with); JSM one edit per written ticket plus one call per handoff note (its
edit endpoint documents no internal comment); ServiceNow one call per written ticket. A second cycle two
minutes later (past Zendesk's one-minute export hold-back) prints the records it read: the echoes of the
first cycle's writes.

Prints one figure a line (`name value unit`).
Usage: python bench/calls.py [--tickets 250]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.policy import load_policy  # noqa: E402
from runtime.config import AppConfig, DaemonSection  # noqa: E402
from runtime.demo import DEMO_ENVIRON, DEMO_INSTANCES, DEMO_START, make_sandbox  # noqa: E402
from runtime.wiring import wire  # noqa: E402
from sandbox.base import SimClock  # noqa: E402
from state import open_store  # noqa: E402

WRITE_SIDE = {
    "zendesk": (
        ("PUT", r"^/api/v2/tickets/update_many"),
        ("PUT", r"^/api/v2/tickets/\d+(\.json)?$"),
        ("GET", r"^/api/v2/job_statuses/"),
        ("GET", r"^/api/v2/tickets/\d+(\.json)?$"),
    ),
    "jsm": (
        ("PUT", r"^/rest/api/3/issue/[^/]+$"),
        ("POST", r"^/rest/servicedeskapi/request/[^/]+/comment$"),
        ("POST", r"^/rest/api/3/issue/[^/]+/comment$"),
        ("GET", r"^/rest/api/3/issue/[^/]+$"),
    ),
    "servicenow": (
        ("PATCH", r"^/api/now/table/incident/[0-9a-f]{32}$"),
        ("GET", r"^/api/now/table/incident/[0-9a-f]{32}$"),
    ),
}


def measure(platform: str, tickets: int, workdir: Path) -> dict[str, float]:
    section = next(section for section in DEMO_INSTANCES if section.platform == platform)
    clock = SimClock(DEMO_START)
    sandbox = make_sandbox(platform, clock, seed=7)
    sandbox.seed_idle(tickets)  # type: ignore[attr-defined]
    store_url = f"sqlite:///{workdir / f'{platform}.sqlite3'}"
    store = open_store(store_url)
    config = AppConfig(
        path=ROOT / "config.example.toml",
        daemon=DaemonSection(max_writes_per_cycle=10**6),
        state_url=store_url,
        instances=(section,),
        policy=load_policy(ROOT / "config.example.toml"),
    )
    wired = wire(
        config,
        section,
        store,
        environ=DEMO_ENVIRON,
        clock=clock.now,
        transport=sandbox.transport(),
        sleep=lambda s: None,
    )
    try:
        first = wired.syncer.run_cycle()
        writes = first.writes
        write_calls = sum(sandbox.calls(method, pattern) for method, pattern in WRITE_SIDE[platform])
        polls = sandbox.calls("GET", r"^/api/v2/job_statuses/") if platform == "zendesk" else 0
        minimum = {
            # A job's PUT, and one Show Many Job Statuses poll for up to the 30 jobs an account may have queued.
            "zendesk": math.ceil(writes / 100) + math.ceil(writes / 100 / 30),
            # The edit cannot carry an internal note (connectors/jsm.py): a note is a call of its own.
            "jsm": writes + first.comments,
            "servicenow": writes,
        }[platform]
        clock.advance(timedelta(minutes=2))
        second = wired.syncer.run_cycle()
    finally:
        wired.close()
        store.close()
    return {
        "written": writes,
        "notes": first.comments,
        "write_calls": write_calls,
        "job_polls": polls,
        "minimum_calls": minimum,
        "ratio": write_calls / minimum if minimum else 0.0,
        "calls_per_written_ticket": write_calls / writes if writes else 0.0,
        "first_cycle_records_read": first.tickets_seen,
        "second_cycle_records_read": second.tickets_seen,
        "second_cycle_writes": second.writes,
        "errors": int(bool(first.error)) + int(bool(second.error)),
    }


UNITS = {"ratio": "x", "calls_per_written_ticket": "calls/ticket", "errors": "cycles"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=250)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        for platform in ("zendesk", "jsm", "servicenow"):
            figures = measure(platform, args.tickets, Path(directory))
            for name, value in figures.items():
                unit = UNITS.get(name, "calls" if "calls" in name or "polls" in name else "records")
                if name in ("written", "notes", "second_cycle_writes"):
                    unit = "tickets"
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                print(f"{platform}_{name} {shown} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

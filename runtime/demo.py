"""`sync.py demo`: the real daemon, against the built-in sandboxes, with simulated time running fast.

Nothing here is canned: each sandbox is seeded with a few hundred tickets (a fifth more that nobody ever touches), simulated time advances in steps
while the sandboxes generate activity (replies, status moves, new tickets), and after every step the very same
Syncer that production runs polls, evaluates, plans and writes back through the very same connectors and HTTP
layer, into a fresh embedded SQLite store. The only difference from production is the httpx transport (the
sandbox in-process, or on a loopback port with `--loopback`).
"""

from __future__ import annotations

import importlib
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from engine.policy import Policy
from runtime.config import AppConfig, DaemonSection, InstanceSection
from runtime.cycle import CycleReport, Event
from runtime.report import read_history
from runtime.wiring import Wired, wire
from sandbox.base import SandboxApp, SimClock
from state.sqlite import SqliteStore

SANDBOXES = {
    "zendesk": ("sandbox.zendesk", "ZendeskSandbox"),
    "jsm": ("sandbox.jsm", "JsmSandbox"),
    "servicenow": ("sandbox.servicenow", "ServiceNowSandbox"),
}

# Monday 08:00 in New York: the simulated day starts with a night's backlog and a working day ahead.
DEMO_START = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)

DEMO_INSTANCES = (
    InstanceSection(
        name="demo-zendesk",
        platform="zendesk",
        base_url="https://demo.zendesk.com",
        credentials={"email": "DEMO_ZENDESK_EMAIL", "api_token": "DEMO_ZENDESK_TOKEN"},
        options={"page_size": 100},
    ),
    InstanceSection(
        name="demo-jsm",
        platform="jsm",
        base_url="https://demo.atlassian.net",
        credentials={"email": "DEMO_JSM_EMAIL", "api_token": "DEMO_JSM_TOKEN"},
        options={"page_size": 50},
    ),
    InstanceSection(
        name="demo-servicenow",
        platform="servicenow",
        base_url="https://demo.service-now.com",
        credentials={"username": "DEMO_SNOW_USER", "password": "DEMO_SNOW_PASSWORD"},
        options={"page_size": 100},
    ),
)

# Sandbox credentials: the sandboxes only check that an Authorization header is present.
DEMO_ENVIRON = {
    "DEMO_ZENDESK_EMAIL": "demo@example.com",
    "DEMO_ZENDESK_TOKEN": "sandbox-token",
    "DEMO_JSM_EMAIL": "demo@example.com",
    "DEMO_JSM_TOKEN": "sandbox-token",
    "DEMO_SNOW_USER": "demo.integration",
    "DEMO_SNOW_PASSWORD": "sandbox-password",
}


FULL_NOTES = 3
"""Handoff notes the summary shows in full (the earliest); the rest are counted."""

# The CycleReport counters the summary adds up over all cycles of an instance.
SUMMED = (
    "tickets_seen",
    "writes",
    "comments",
    "tags_added",
    "tags_removed",
    "management",
    "api_calls",
    "quarantined",
    "dead_lettered",
    "conflicts",
    "failed",
    "recovered",
    "scanned",
    "review_writes",
    "review_escalations",
    "deferred",
)


@dataclass
class InstanceTotals:
    platform: str
    tickets_touched: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    escalations: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, report: CycleReport) -> None:
        self.counts.update({name: getattr(report, name) for name in SUMMED})
        self.counts["cycles"] += 1
        self.escalations.update(report.escalations)
        if report.error:
            self.errors.append(report.error)

    def as_dict(self) -> dict[str, Any]:
        counts = {name: self.counts[name] for name in (*SUMMED, "cycles")}
        return {
            "platform": self.platform,
            "records_polled": counts.pop("tickets_seen"),
            "tickets_written": len(self.tickets_touched),
            "management_escalations": counts.pop("management"),
            **counts,
            "escalations": dict(sorted(self.escalations.items())),
            "errors": self.errors,
        }


def make_sandbox(platform: str, clock: SimClock, seed: int) -> SandboxApp:
    module_name, class_name = SANDBOXES[platform]
    sandbox_class = getattr(importlib.import_module(module_name), class_name)
    sandbox: SandboxApp = sandbox_class(clock, seed=seed)
    return sandbox


def _printer(out: TextIO, clock: SimClock) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        stamp = clock.now().strftime("%a %H:%M")
        detail = event.detail
        if event.kind == "written":
            parts = []
            if detail.get("tier"):
                parts.append(f"{detail.get('from_tier')} -> {detail['tier']}")
            if detail.get("add_tags"):
                parts.append("+" + " +".join(detail["add_tags"]))
            if detail.get("remove_tags"):
                parts.append("-" + " -".join(detail["remove_tags"]))
            if detail.get("comment"):
                parts.append("handoff note")
            rule = detail.get("tier_rule")
            reason = f"  ({rule['name']}: {rule['reason']})" if detail.get("tier") and rule else ""
            key = detail.get("key", event.ticket_id)
            line = f"{stamp}  {event.instance:16} {key:12} {detail.get('priority', ''):3} {', '.join(parts)}{reason}"
            print(line, file=out)
        elif event.kind in ("quarantined", "dead_letter", "conflict", "recovered"):
            print(f"{stamp}  {event.instance:16} {event.ticket_id:12} {event.kind}: {detail}", file=out)

    return show


def run_demo(
    policy: Policy,
    *,
    hours: float = 10.0,
    step_minutes: float = 15.0,
    tickets: int = 200,
    seed: int = 7,
    loopback: bool = False,
    out: TextIO | None = None,
    quiet: bool = False,
    state_dir: Path | None = None,
    serve: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the demo and return its summary (what `--json` prints). With `loopback` the summary names each
    sandbox's base URL, and `serve`, if given, is called with it while they still listen (`--serve` waits there)."""
    clock = SimClock(DEMO_START)
    workdir = tempfile.TemporaryDirectory(prefix="escalation-sync-demo-") if state_dir is None else None
    state_path = (state_dir or Path(workdir.name if workdir else ".")) / "demo.sqlite3"
    state_url = f"sqlite:///{state_path}"
    # Not synced to disk at every commit (the durability the daemon needs): the demo's state is a scratch file,
    # and waiting on the disk would make the demo several times slower.
    store = SqliteStore(state_path, durable=False)
    config = AppConfig(
        path=Path("demo.toml"),
        daemon=DaemonSection(interval_seconds=step_minutes * 60, log_format="text", max_write_attempts=5),
        state_url=state_url,
        instances=DEMO_INSTANCES,
        policy=policy,
    )
    stop = threading.Event()
    show = _printer(out, clock) if out is not None and not quiet else (lambda event: None)
    totals: dict[str, InstanceTotals] = {}
    wired: list[Wired] = []
    stoppers: list[Callable[[], None]] = []
    sandboxes: dict[str, SandboxApp] = {}
    ports: list[tuple[str, str]] = []
    try:
        for index, section in enumerate(DEMO_INSTANCES):
            # Each sandbox moves its own clock when it simulates; all start together and advance by the same
            # step, so they always agree with `clock`, the one the printer reads.
            sandbox_clock = clock if index == 0 else SimClock(DEMO_START)
            sandbox = make_sandbox(section.platform, sandbox_clock, seed + index)
            sandbox.seed_tickets(tickets)  # type: ignore[attr-defined]
            # Tickets nobody touches after creation: only reviews of the book can escalate them.
            sandbox.seed_idle(max(1, tickets // 5))  # type: ignore[attr-defined]
            sandboxes[section.name] = sandbox
            if loopback:
                base_url, stop_server = sandbox.serve()
                stoppers.append(stop_server)
                ports.append((section.name, base_url))
                section = section.model_copy(update={"base_url": base_url})
                transport = None
            else:
                transport = sandbox.transport()
            totals[section.name] = InstanceTotals(section.platform)

            def on_event(event: Event, seen: InstanceTotals = totals[section.name]) -> None:
                if event.kind == "written":
                    seen.tickets_touched.add(event.ticket_id)
                show(event)

            wired.append(
                wire(
                    config,
                    section,
                    store,
                    environ=DEMO_ENVIRON,
                    clock=sandbox_clock.now,
                    stop=stop,
                    on_event=on_event,
                    transport=transport,
                    sleep=lambda seconds: None,
                )
            )
        if out is not None and not quiet:
            print(
                f"escalation-sync demo: {len(wired)} sandboxed platforms, {tickets} tickets each, "
                f"{hours:g} simulated hours in {step_minutes:g}-minute cycles, from {clock.now():%a %Y-%m-%d %H:%M} UTC",
                file=out,
            )
        steps = max(1, round(hours * 60 / step_minutes))
        for step in range(steps):
            for instance in wired:
                report = instance.syncer.run_cycle()
                seen = totals[instance.section.name]
                seen.add(report)
            if step < steps - 1:
                for sandbox in sandboxes.values():
                    sandbox.simulate(timedelta(minutes=step_minutes))  # type: ignore[attr-defined]
        summary = {
            "simulated_from": DEMO_START.isoformat(),
            "simulated_to": clock.now().isoformat(),
            "instances": {name: seen.as_dict() for name, seen in totals.items()},
        }
        summary["totals"] = _grand_totals(summary["instances"])
        notes = sorted((w for w in read_history(config.state_url).writes if w.note), key=lambda w: w.at)
        summary["handoff_notes"] = {"count": len(notes), "first": [note.note for note in notes[:FULL_NOTES]]}
        if ports:
            summary["sandboxes"] = dict(ports)
            if serve is not None:
                serve(summary)
        return summary
    finally:
        for instance in wired:
            instance.close()
        for stop_server in stoppers:
            stop_server()
        store.close()
        if workdir is not None:
            workdir.cleanup()


def _grand_totals(instances: dict[str, dict[str, Any]]) -> dict[str, Any]:
    escalations: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for data in instances.values():
        escalations.update(data["escalations"])
        for key in (
            "records_polled",
            "tickets_written",
            "management_escalations",
            "comments",
            "tags_added",
            "tags_removed",
            "api_calls",
            "review_escalations",
            "review_writes",
        ):
            totals[key] += data[key]
    return {**dict(totals), "escalations": dict(sorted(escalations.items()))}


LEGEND = """
polled: records read (a ticket seen in several cycles counts each time)  written: distinct tickets written to
L2 L3 L4: tier changes written, by target tier  mgmt: management escalations started  notes: handoff notes posted
+tags -tags: SLA and management tags added / removed  calls: API requests, retries included
quar.: records quarantined (could not be normalized)  dead: writes the platform refused for good"""


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print(f"\nsummary: {summary['simulated_from']} .. {summary['simulated_to']}", file=out)
    header = f"{'instance':18} {'polled':>7} {'written':>7} {'L2':>4} {'L3':>4} {'L4':>4} {'mgmt':>5} {'notes':>6} "
    header += f"{'+tags':>6} {'-tags':>6} {'calls':>6} {'quar.':>5} {'dead':>5}"
    print(header, file=out)
    for name, data in summary["instances"].items():
        esc = data["escalations"]
        print(
            f"{name:18} {data['records_polled']:>7} {data['tickets_written']:>7} {esc.get('L2', 0):>4} {esc.get('L3', 0):>4} {esc.get('L4', 0):>4} "
            f"{data['management_escalations']:>5} {data['comments']:>6} {data['tags_added']:>6} "
            f"{data['tags_removed']:>6} {data['api_calls']:>6} {data['quarantined']:>5} {data['dead_lettered']:>5}",
            file=out,
        )
        print(
            f"  {data['review_escalations']} escalations and {data['review_writes']} writes came from reviews of "
            f"tickets no poll returned (time passing alone); {data['deferred']} writes waited for a later cycle "
            "(max_writes_per_cycle)",
            file=out,
        )
        for error in data["errors"][:3]:
            print(f"  error: {error}", file=out)

"""Soak: the real daemon, as separate processes, against the three sandboxes on loopback, with faults and kill -9.

One run = N cycles. Before each cycle the three sandboxes (seeded) simulate `--step-minutes` of activity; then
`sync.py once` runs as a subprocess with a config pointing at them. In the faulty run, a seeded `--fault-rate`
of requests fail (chosen per request, in order): 500/502 not applied, 503 *after* the server applied it, 429 and
503 with `Retry-After: 1`, the connection dropped before, or after, the server applied it. At K seeded moments
(the r-th request of a seeded daemon run) the daemon is killed with SIGKILL, before or after the server applied
that request, and restarted at the same simulated time (a kill whose run ends sooner moves on to the next run). Then `--flush` quiet cycles (no faults, no activity) let
queued writes settle. A clean run of the same seed does the same with no faults and no kills; the two are
compared, ticket by ticket.

The daemon's clock is pinned to the sandboxes' simulated clock (the wrapper below sets `sync.utcnow` from
SOAK_NOW; nothing else differs from `python sync.py once`), so both runs evaluate at the same moments and any
difference is the faults' doing. Slow answers past the 30 s client timeout are not injected (each would cost the
soak 30 s); a timeout takes the same code path as a dropped connection after the request was sent.

Prints `name value unit` lines: duplicate comments, tickets whose tier or tags differ from the clean run,
escalation history rows missing, cursor regressions, crash loops, peak RSS of a daemon process, and counts of
what was injected.

Usage: python bench/soak.py [--seed 7] [--cycles 24] [--kills 6] [--tickets 40] [--fault-rate 0.1]
       [--batch-writes-from 1000000] [--details]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connectors.base import RawRecord  # noqa: E402
from engine.model import COMMENT_MARKER  # noqa: E402
from mappings import load_mapping  # noqa: E402
from runtime.config import InstanceSection  # noqa: E402
from runtime.demo import DEMO_START, make_sandbox  # noqa: E402
from runtime.wiring import build_connector  # noqa: E402
from sandbox.base import SandboxApp, SimClock  # noqa: E402
from state import open_store  # noqa: E402

MARKER = re.compile(re.escape(COMMENT_MARKER.format(key="")) + r"[^)\s]+")
WRAPPER = """
import os, sys
from datetime import datetime
sys.path.insert(0, os.environ["SOAK_ROOT"])
import sync
_now = datetime.fromisoformat(os.environ["SOAK_NOW"])
sync.utcnow = lambda: _now
sys.exit(sync.main(sys.argv[1:]))
"""
ENVIRON = {
    "SOAK_ZD_EMAIL": "soak@example.com",
    "SOAK_ZD_TOKEN": "soak-zendesk-token",
    "SOAK_JSM_EMAIL": "soak@example.com",
    "SOAK_JSM_TOKEN": "soak-jsm-token",
    "SOAK_SNOW_USER": "soak.integration",
    "SOAK_SNOW_PASSWORD": "soak-snow-password",
}
CREDENTIALS = {
    "zendesk": {"email": "SOAK_ZD_EMAIL", "api_token": "SOAK_ZD_TOKEN"},
    "jsm": {"email": "SOAK_JSM_EMAIL", "api_token": "SOAK_JSM_TOKEN"},
    "servicenow": {"username": "SOAK_SNOW_USER", "password": "SOAK_SNOW_PASSWORD"},
}
NOTE_TEXT = {"zendesk": "body", "jsm": "body", "servicenow": "value"}
FAULTS = ("500", "502", "503_after_apply", "429_retry_after", "503_retry_after", "drop_before", "drop_after")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Plan:
    seed: int = 7
    cycles: int = 24
    kills: int = 6
    tickets: int = 40
    fault_rate: float = 0.10
    step_minutes: int = 20
    flush: int = 3
    kill_window: int = 20
    """A kill lands on request 1..kill_window of its daemon run (one that ends sooner is not killed)."""
    batch_writes_from: int | None = None
    """`[daemon] batch_writes_from` for both runs; None: the daemon's default (Zendesk update_many jobs on)."""


# ---- faults on the wire ------------------------------------------------------------------------------------

_connection = threading.local()


class _Drop(Exception):
    """Raised by the fault layer after closing the client's socket: no answer is written."""


class _Handler(WSGIRequestHandler):
    """Remembers the socket so the fault layer can drop it; keeps the soak's output clean."""

    def handle(self) -> None:
        _connection.socket = self.connection
        super().handle()

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _Server(WSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a dropped or killed client is the point of the exercise


@dataclass
class Wire:
    """What the fault layer does and counts, shared by the three sandboxes of one soak run."""

    rng: random.Random
    rate: float
    kill_at: int | None = None
    """Request index (in the current daemon process) at which to kill it; None: no kill in this process."""
    kill_after_apply: bool = False
    pid: int | None = None
    requests: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    killed: bool = False


class FaultLayer:
    """WSGI middleware in front of one sandbox: injects the seeded faults and the kill -9."""

    def __init__(self, app: SandboxApp, wire: Wire) -> None:
        self.app, self.wire = app, wire

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        wire = self.wire
        wire.requests += 1
        if wire.kill_at is not None and wire.requests == wire.kill_at and wire.pid:
            if wire.kill_after_apply:
                self._apply(environ)
            os.kill(wire.pid, signal.SIGKILL)
            wire.killed = True
            wire.injected["kill_after_apply" if wire.kill_after_apply else "kill_before_apply"] += 1
            self._drop()
        if wire.rate and wire.rng.random() < wire.rate:
            fault = wire.rng.choice(FAULTS)
            is_write = environ["REQUEST_METHOD"] in WRITES
            wire.injected[fault + ("_write" if is_write else "_read")] += 1
            if fault in ("503_after_apply", "drop_after"):
                self._apply(environ)
            if fault.startswith("drop"):
                self._drop()
            status = {"500": "500 Internal Server Error", "502": "502 Bad Gateway", "429_retry_after": "429 Too Many"}
            headers = [("Content-Type", "text/html")]
            if "retry_after" in fault:
                headers.append(("Retry-After", "1"))
            start_response(status.get(fault, "503 Service Unavailable"), headers)
            return [b"<html><body>injected fault</body></html>"]
        return self.app(environ, start_response)

    def _apply(self, environ: dict[str, Any]) -> None:
        list(self.app(environ, lambda status, headers, exc_info=None: None))

    @staticmethod
    def _drop() -> None:
        sock = getattr(_connection, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise _Drop


# ---- one soak run ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    states: dict[tuple[str, str], tuple[str | None, tuple[str, ...]]]
    markers: Counter[str]
    history: Counter[tuple[str, str, str]]
    cursor_regressions: int
    crash_loops: int
    cycles_crashed: int
    daemon_runs: int
    kills: int
    injected: Counter[str]
    pending: int
    dead_letters: int
    seconds: float


def write_config(directory: Path, urls: dict[str, str], batch_writes_from: int | None = None) -> Path:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    policy = text.split("# ---- escalation policy", 1)[1]
    batching = f"batch_writes_from = {batch_writes_from}\n" if batch_writes_from is not None else ""
    parts = [
        '[daemon]\nlog_format = "json"\n' + batching,
        f'[state]\nurl = "sqlite:///{directory / "state.sqlite3"}"\n',
    ]
    for platform, url in urls.items():
        credentials = "\n".join(f'{name} = "{variable}"' for name, variable in CREDENTIALS[platform].items())
        parts.append(
            f'[[instances]]\nname = "soak-{platform}"\nplatform = "{platform}"\nbase_url = "{url}"\n'
            f'mapping = "{ROOT / "mappings" / f"{platform}.toml"}"\n\n[instances.credentials]\n{credentials}\n'
        )
    path = directory / "config.toml"
    path.write_text("\n".join(parts) + "\n# ---- escalation policy" + policy, encoding="utf-8")
    return path


def soak(plan: Plan, faulty: bool, workdir: Path) -> Outcome:
    started = time.monotonic()
    sandboxes: dict[str, SandboxApp] = {}
    for platform in CREDENTIALS:
        sandbox: Any = make_sandbox(platform, SimClock(DEMO_START), plan.seed)
        sandbox.seed_tickets(plan.tickets)
        sandboxes[platform] = sandbox
    # Faults and kills draw from their own seeded streams, so the sandboxes' activity is the same in both runs.
    wire = Wire(random.Random(plan.seed * 7919 + 1), plan.fault_rate if faulty else 0.0)
    kill_rng = random.Random(plan.seed * 104729 + 2)
    kill_cycles = set(kill_rng.sample(range(plan.cycles), k=min(plan.kills, plan.cycles))) if faulty else set()
    servers = []
    urls = {}
    for platform, sandbox in sandboxes.items():
        server = make_server("127.0.0.1", 0, FaultLayer(sandbox, wire), server_class=_Server, handler_class=_Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        urls[platform] = f"http://127.0.0.1:{server.server_port}"
    config = write_config(workdir, urls, plan.batch_writes_from)
    env = {**os.environ, **ENVIRON, "SOAK_ROOT": str(ROOT), "ESCALATION_SYNC_LOG_LEVEL": "INFO"}
    cursors: dict[str, list[str | None]] = {f"soak-{platform}": [] for platform in sandboxes}
    crashed_streak: Counter[str] = Counter()
    crash_loops: set[str] = set()
    crashed = runs = armed = 0
    try:
        for cycle in range(plan.cycles + plan.flush):
            quiet = cycle >= plan.cycles
            if not quiet:
                for index, sandbox in enumerate(sandboxes.values()):
                    _reseed(sandbox, plan.seed * 1_000_003 + cycle * 10 + index)
                    sandbox.simulate(timedelta(minutes=plan.step_minutes))  # type: ignore[attr-defined]
            wire.rate = 0.0 if quiet or not faulty else plan.fault_rate
            # A kill that did not land (the run ended before its request) waits for the next cycle's run.
            armed += cycle in kill_cycles
            restart = False
            while True:
                wire.requests, wire.killed = 0, False
                kill_here = armed > 0 and not quiet and not restart  # the restart after a kill runs to its end
                wire.kill_at = kill_rng.randint(1, plan.kill_window) if kill_here else None
                wire.kill_after_apply = kill_rng.random() < 0.5
                now = next(iter(sandboxes.values())).clock.now()
                process = subprocess.Popen(
                    [sys.executable, "-c", WRAPPER, "once", "--config", str(config)],
                    env={**env, "SOAK_NOW": now.isoformat()},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                wire.pid = process.pid
                _, log_text = process.communicate(timeout=600)
                runs += 1
                events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
                for name in cursors:
                    broke = any(e.get("msg") == "cycle crashed" and e.get("instance") == name for e in events)
                    crashed += broke
                    crashed_streak[name] = crashed_streak[name] + 1 if broke else 0
                    if crashed_streak[name] >= 3:
                        crash_loops.add(name)
                store = open_store(f"sqlite:///{workdir / 'state.sqlite3'}")
                try:
                    for name, seen in cursors.items():
                        seen.append(store.get_cursor(name))
                finally:
                    store.close()
                if not wire.killed:
                    break
                armed -= 1
                restart = True
        outcome_states, markers = _final_states(sandboxes)
        store = open_store(f"sqlite:///{workdir / 'state.sqlite3'}")
        try:
            history: Counter[tuple[str, str, str]] = Counter()
            pending = dead = 0
            for platform, ticket_id in outcome_states:
                name = f"soak-{platform}"
                for tier, _at in store.tier_entries(name, ticket_id):
                    history[(name, ticket_id, tier)] += 1
            for name in cursors:
                pending += len(store.pending(name))
                dead += len(store.dead_letters(name))
        finally:
            store.close()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    return Outcome(
        states=outcome_states,
        markers=markers,
        history=history,
        cursor_regressions=sum(_regressions(seen) for seen in cursors.values()),
        crash_loops=len(crash_loops),
        cycles_crashed=crashed,
        daemon_runs=runs,
        kills=sum(count for name, count in wire.injected.items() if name.startswith("kill")),
        injected=wire.injected,
        pending=pending,
        dead_letters=dead,
        seconds=time.monotonic() - started,
    )


def _reseed(sandbox: SandboxApp, seed: int) -> None:
    """Make a cycle's activity the same in both runs whatever requests the daemon sent before it.

    The sandboxes draw ids for the rows our writes create (ServiceNow journal entries) from the same seeded
    RNG as their activity, so without this a retried write would shift every later draw and the comparison
    would measure the sandbox, not the daemon.
    """
    for name in ("_rng", "rng"):
        rng = getattr(sandbox, name, None)
        if isinstance(rng, random.Random):
            rng.seed(seed)
            return


def _regressions(seen: list[str | None]) -> int:
    """A cursor that goes back to a value it had already left behind (or back to none) is a regression."""
    count = 0
    for index in range(1, len(seen)):
        current, previous = seen[index], seen[index - 1]
        if current != previous and (current is None or current in seen[:index]):
            count += 1
    return count


def _final_states(
    sandboxes: dict[str, SandboxApp],
) -> tuple[dict[tuple[str, str], tuple[str | None, tuple[str, ...]]], Counter[str]]:
    """Each ticket's tier and tags as our own mapping reads them, and every handoff marker on the platforms."""
    states: dict[tuple[str, str], tuple[str | None, tuple[str, ...]]] = {}
    markers: Counter[str] = Counter()
    for platform, sandbox in sandboxes.items():
        section = InstanceSection(
            name=f"soak-{platform}",
            platform=platform,  # type: ignore[arg-type]
            base_url=f"https://soak-{platform}.example.com",
            credentials=CREDENTIALS[platform],
        )
        mapping = load_mapping(platform)
        http, connector = build_connector(section, mapping, ENVIRON, transport=sandbox.transport())
        try:
            for ticket_id in _ticket_ids(platform, sandbox):
                for comment in sandbox.comments(ticket_id):  # type: ignore[attr-defined]
                    markers.update(MARKER.findall(str(comment.get(NOTE_TEXT[platform], ""))))
                record: RawRecord | None = connector.fetch(str(ticket_id))
                if record is None:
                    continue
                try:
                    ticket = mapping.normalize(record, section.name)
                except Exception as error:  # a record our mapping refuses is compared by its refusal
                    states[(platform, record.id)] = (f"unreadable: {type(error).__name__}", ())
                    continue
                states[(platform, record.id)] = (ticket.tier.value if ticket.tier else None, tuple(sorted(ticket.tags)))
        finally:
            connector.close()
            http.close()
    return states, markers


def _ticket_ids(platform: str, sandbox: Any) -> list[Any]:
    if platform == "zendesk":
        return list(sandbox.ticket_ids())
    if platform == "jsm":
        return list(sandbox.issue_keys())
    return list(sandbox.incident_ids())


def compare(clean: Outcome, faulty: Outcome) -> dict[str, tuple[float, str]]:
    differing = sorted(
        key for key in clean.states.keys() | faulty.states.keys() if clean.states.get(key) != faulty.states.get(key)
    )
    missing = sum((clean.history - faulty.history).values())
    return {
        "duplicate_comments": (sum(n - 1 for n in faulty.markers.values() if n > 1), "comments"),
        "duplicate_comments_clean": (sum(n - 1 for n in clean.markers.values() if n > 1), "comments"),
        "handoff_notes": (len(faulty.markers), "notes"),
        "tickets_differing": (len(differing), "tickets"),
        "tickets_compared": (len(clean.states), "tickets"),
        "history_rows_missing": (missing, "rows"),
        "cursor_regressions": (faulty.cursor_regressions, "regressions"),
        "crash_loops": (faulty.crash_loops, "instances"),
        "cycles_crashed": (faulty.cycles_crashed, "cycles"),
        "kills": (faulty.kills, "kills"),
        "faults_injected": (sum(n for name, n in faulty.injected.items() if not name.startswith("kill")), "requests"),
        "daemon_runs": (faulty.daemon_runs, "processes"),
        "pending_after_flush": (faulty.pending, "intents"),
        "dead_letters": (faulty.dead_letters, "intents"),
        "dead_letters_clean": (clean.dead_letters, "intents"),
        "peak_rss": (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "MiB"),
        "seconds_clean": (clean.seconds, "s"),
        "seconds_faulty": (faulty.seconds, "s"),
    }, differing


def run(plan: Plan, out: Any = sys.stdout, details: bool = False) -> dict[str, float]:
    # The two runs share nothing (own sandboxes, ports, state file), so they run side by side.
    with (
        tempfile.TemporaryDirectory(prefix="soak-clean-") as clean_dir,
        tempfile.TemporaryDirectory(prefix="soak-faulty-") as faulty_dir,
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        clean_run = pool.submit(soak, plan, False, Path(clean_dir))
        faulty_run = pool.submit(soak, plan, True, Path(faulty_dir))
        clean, faulty = clean_run.result(), faulty_run.result()
    figures, differing = compare(clean, faulty)
    for name, (value, unit) in figures.items():
        print(f"{name} {value:g} {unit}" if isinstance(value, int) else f"{name} {value:.1f} {unit}", file=out)
    if details:
        for name, count in sorted(faulty.injected.items()):
            print(f"injected_{name} {count} requests", file=out)
        for key in differing[:20]:
            print(f"# differs {key}: clean {clean.states.get(key)} faulty {faulty.states.get(key)}", file=out)
    return {name: value for name, (value, _unit) in figures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Plan()
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cycles", type=int, default=defaults.cycles)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--tickets", type=int, default=defaults.tickets, help="seeded tickets per platform")
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--step-minutes", type=int, default=defaults.step_minutes)
    parser.add_argument("--flush", type=int, default=defaults.flush)
    parser.add_argument("--kill-window", type=int, default=defaults.kill_window)
    parser.add_argument("--batch-writes-from", type=int, default=None, help="1000000: Zendesk batching off")
    parser.add_argument("--details", action="store_true", help="also print injected faults and differing tickets")
    args = parser.parse_args(argv)
    plan = Plan(
        args.seed,
        args.cycles,
        args.kills,
        args.tickets,
        args.fault_rate,
        args.step_minutes,
        args.flush,
        args.kill_window,
        args.batch_writes_from,
    )
    figures = run(plan, details=args.details)
    bad = figures["duplicate_comments"] or figures["tickets_differing"] or figures["crash_loops"]
    return 1 if bad or figures["cursor_regressions"] or figures["history_rows_missing"] else 0


if __name__ == "__main__":
    sys.exit(main())

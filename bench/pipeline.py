"""The daemon's own CPU per polled ticket and per written ticket, per platform (issue 14: the read pipeline at
most 100 us of CPU per polled ticket, the write path at most 2 ms per written ticket, ledger included).

Why a bench of its own: bench/memory.py's CPU figure counts generating and serializing the pages in the same
process, and bench/peer.py covers Zendesk only. Here each platform's sandbox (sandbox/<platform>.py, seeded with
`--tickets` busy tickets plus a fifth as many idle ones, as the demo seeds them) is served on a loopback port
from a SEPARATE process (this file with `--serve`), so the CPU spent serving is not ours. The daemon is
`sync.py once` as a subprocess (the production entry point; durable SQLite store; the mapping and policy of
config.example.toml; its clock pinned to the sandbox's, as bench/peer.py does), and its CPU is its own rusage
(user + system, through bench/peer.py's launcher).

- `read`: every ticket polled, normalized, evaluated, planned and booked; writes capped at one
  (`max_writes_per_cycle` cannot be 0): the read pipeline, HTTP + JSON + normalize + evaluate + plan + store.
- `write`: the same with every due write sent (no cap).

The open-ticket scan is marked done in the store beforehand and the first poll looks back 30 days, so the poll
reads every seeded ticket once (the steady state; the first start's scan would read them a second time). The
fixed cost of a run (interpreter, imports, config, policy compile, store creation, one empty poll) is measured
by the same command against an empty sandbox of the platform and subtracted:

    cpu_per_polled_ticket  = (cpu(read)  - cpu(empty)) / polled                       [us]
    cpu_per_written_ticket = (cpu(write) - cpu(read))  / (written(write) - written(read))  [ms]

One figure a line, `name value unit`; with `--runs N` each figure is the median of N runs (fresh sandbox and
store each run). `--profile` runs the daemon's read mode once under cProfile per platform and prints the top
entries (by own time, and cumulative), not timed figures: cProfile slows the daemon severalfold.

Usage: python bench/pipeline.py [--platforms zendesk,jsm,servicenow] [--tickets 5000] [--runs 1] [--modes read,write]
                                [--profile] [--top 25]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _peer() -> Any:
    """bench/peer.py's launcher (a child's own rusage), loaded by path: bench/ is no package."""
    spec = importlib.util.spec_from_file_location("bench_peer", Path(__file__).with_name("peer.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peer"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


measure = _peer().measure

DAEMON_ROOT = ROOT
"""The checkout the daemon runs from (`--root`); the sandboxes and this bench are always this checkout's."""
ENVIRON = {
    "BENCH_ZD_EMAIL": "bench@example.com",
    "BENCH_ZD_TOKEN": "bench-zendesk-token",
    "BENCH_JSM_EMAIL": "bench@example.com",
    "BENCH_JSM_TOKEN": "bench-jsm-token",
    "BENCH_SNOW_USER": "bench.integration",
    "BENCH_SNOW_PASSWORD": "bench-snow-password",
}
INSTANCES = {
    # platform: (credentials table, options table); page sizes as config.example.toml has them.
    "zendesk": ('email = "BENCH_ZD_EMAIL"\napi_token = "BENCH_ZD_TOKEN"\n', "page_size = 100\n"),
    "jsm": ('email = "BENCH_JSM_EMAIL"\napi_token = "BENCH_JSM_TOKEN"\n', "page_size = 50\n"),
    "servicenow": (
        'username = "BENCH_SNOW_USER"\npassword = "BENCH_SNOW_PASSWORD"\n',
        'table = "incident"\npage_size = 200\n',
    ),
}
WRAPPER = """
import os, sys
from datetime import datetime
sys.path.insert(0, os.environ["BENCH_ROOT"])
import sync
_now = datetime.fromisoformat(os.environ["BENCH_NOW"])
sync.utcnow = lambda: _now
profile = os.environ.get("BENCH_PROFILE")
if not profile:
    sys.exit(sync.main(sys.argv[1:]))
import cProfile, pstats
profiler = cProfile.Profile()
code = profiler.runcall(sync.main, sys.argv[1:])
profiler.dump_stats(profile + ".prof")
with open(profile, "w") as out:
    top = int(os.environ.get("BENCH_TOP", "25"))
    for order in ("tottime", "cumulative"):
        out.write(f"# sorted by {order}\\n")
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
sys.exit(code)
"""
"""The daemon's entry point with the clock pinned to the sandbox's frozen one (seeded tickets stay as old as
seeded), optionally under cProfile."""


# ---- the sandbox, in a process of its own ----------------------------------------------------------------


def serve(platform: str, tickets: int, seed: int) -> None:
    """`--serve`: seed the platform's sandbox, serve it on loopback, print its URL and clock, then answer
    stdin: `count` prints the requests served so far by method (JSON), end of input stops."""
    import threading
    from wsgiref.simple_server import WSGIServer, make_server

    from runtime.demo import DEMO_START, make_sandbox
    from sandbox.base import SimClock, _QuietHandler

    sandbox = make_sandbox(platform, SimClock(DEMO_START), seed)
    if tickets:
        sandbox.seed_tickets(tickets)  # type: ignore[attr-defined]
        sandbox.seed_idle(max(1, tickets // 5))  # type: ignore[attr-defined]
    server = make_server("127.0.0.1", 0, sandbox, server_class=WSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_port}", "now": sandbox.clock.now().isoformat()}))
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() == "count":
            with sandbox._lock:
                methods = [method for method, _path in sandbox.requests]
            print(json.dumps({method: methods.count(method) for method in sorted(set(methods))}), flush=True)
    server.shutdown()


class Server:
    """A `--serve` child: started seeded, asked for its request counts, stopped."""

    def __init__(self, platform: str, tickets: int, seed: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", platform, "--tickets", str(tickets), "--seed", str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        hello = json.loads(self.process.stdout.readline())
        self.url: str = hello["url"]
        self.now: str = hello["now"]

    def counts(self) -> dict[str, int]:
        assert self.process.stdout is not None and self.process.stdin is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        counts: dict[str, int] = json.loads(self.process.stdout.readline())
        return counts

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---- the daemon ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    cpu: float
    wall: float
    polled: int
    written: int
    calls: int
    non_get_calls: int
    """Requests other than GET: the writes, and JSM's search (a read-only POST)."""


def write_config(directory: Path, platform: str, base_url: str, max_writes: int) -> Path:
    text = (DAEMON_ROOT / "config.example.toml").read_text(encoding="utf-8")
    policy = text.split("# ---- escalation policy", 1)[1]
    credentials, options = INSTANCES[platform]
    config = (
        f'[daemon]\nlog_format = "json"\nmax_writes_per_cycle = {max_writes}\n\n'
        f'[state]\nurl = "sqlite:///{directory / "state.sqlite3"}"\n\n'
        f'[[instances]]\nname = "bench-{platform}"\nplatform = "{platform}"\nbase_url = "{base_url}"\n'
        f'mapping = "{DAEMON_ROOT / "mappings" / f"{platform}.toml"}"\ninitial_lookback_hours = {24 * 30}\n\n'
        f"[instances.credentials]\n{credentials}\n[instances.options]\n{options}"
    )
    path = directory / "config.toml"
    path.write_text(config + "\n# ---- escalation policy" + policy, encoding="utf-8")
    return path


def mark_scanned(directory: Path, instance: str) -> None:
    """The open-ticket scan is done already: the poll alone reads the backlog, once."""
    from runtime.cycle import SCAN_DONE
    from state.sql import SCAN_SUFFIX
    from state.sqlite import SqliteStore

    store = SqliteStore(directory / "state.sqlite3")
    store.set_cursor(instance + SCAN_SUFFIX, SCAN_DONE)
    store.close()


def run_daemon(server: Server, platform: str, max_writes: int, profile: Path | None = None, top: int = 25) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        directory = Path(scratch)
        config = write_config(directory, platform, server.url, max_writes)
        mark_scanned(directory, f"bench-{platform}")
        env = {
            **os.environ,
            **ENVIRON,
            "BENCH_ROOT": str(DAEMON_ROOT),
            "BENCH_NOW": server.now,
            "ESCALATION_SYNC_LOG_LEVEL": "INFO",
        }
        if profile is not None:
            env |= {"BENCH_PROFILE": str(profile), "BENCH_TOP": str(top)}
        before = server.counts()
        wall, cpu, _rss, _capped, log = measure(
            [sys.executable, "-c", WRAPPER, "once", "--config", str(config)], env, None, None
        )
        after = server.counts()
    cycles = [
        event
        for event in (json.loads(line) for line in log.splitlines() if line.startswith("{"))
        if event.get("event") == "cycle"
    ]
    if not cycles or cycles[-1].get("error"):
        tail = "\n".join(log.strip().splitlines()[-5:])
        raise RuntimeError(f"{platform}: sync.py once logged no good cycle; its last log lines:\n{tail}")
    cycle = cycles[-1]
    calls = {method: after.get(method, 0) - before.get(method, 0) for method in after}
    non_get = sum(count for method, count in calls.items() if method != "GET")
    return Run(cpu, wall, cycle["tickets_seen"], cycle["writes"], sum(calls.values()), non_get)


# ---- the figures -----------------------------------------------------------------------------------------


def measure_platform(platform: str, tickets: int, seed: int, modes: list[str]) -> dict[str, tuple[float, str]]:
    """One run of every mode on fresh sandboxes: the figures, by name."""
    empty = Server(platform, 0, seed)
    try:
        baseline = run_daemon(empty, platform, 1)
    finally:
        empty.stop()
    name = f"pipeline.{platform}"
    figures: dict[str, tuple[float, str]] = {f"{name}.startup_cpu": (baseline.cpu * 1e3, "ms")}
    runs: dict[str, Run] = {}
    for mode in modes:
        server = Server(platform, tickets, seed)
        try:
            runs[mode] = run = run_daemon(server, platform, 1 if mode == "read" else 10**9)
        finally:
            server.stop()
        prefix = f"{name}.{mode}"
        net = max(run.cpu - baseline.cpu, 0.0)
        figures |= {
            f"{prefix}.polled": (run.polled, "tickets"),
            f"{prefix}.written": (run.written, "tickets"),
            f"{prefix}.calls": (run.calls, "calls"),
            f"{prefix}.non_get_calls": (run.non_get_calls, "calls"),
            f"{prefix}.cpu": (run.cpu, "s"),
            f"{prefix}.wall": (run.wall, "s"),
            f"{prefix}.cpu_per_polled_ticket": (1e6 * net / run.polled if run.polled else 0.0, "us"),
        }
    if "read" in runs and "write" in runs:
        read, write = runs["read"], runs["write"]
        extra = write.written - read.written
        per_written = 1e3 * (write.cpu - read.cpu) / extra if extra > 0 else 0.0
        figures[f"{name}.write.cpu_per_written_ticket"] = (per_written, "ms")
    return figures


def show(name: str, value: float, unit: str) -> None:
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    print(f"{name} {text} {unit}", flush=True)


def profile_platform(platform: str, tickets: int, seed: int, top: int) -> None:
    server = Server(platform, tickets, seed)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-profile-") as scratch:
            out = Path(scratch) / "profile.txt"
            run = run_daemon(server, platform, 1, profile=out, top=top)
            print(f"# profile of {platform} read: {run.polled} polled, {run.cpu:.2f} s CPU under cProfile")
            print(out.read_text(encoding="utf-8"))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platforms", default="zendesk,jsm,servicenow")
    parser.add_argument("--modes", default="read,write")
    parser.add_argument("--tickets", type=int, default=5000, help="busy tickets seeded (plus a fifth as many idle)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=1, help="runs per figure; the median is printed")
    parser.add_argument("--profile", action="store_true", help="profile the daemon's read mode instead")
    parser.add_argument("--top", type=int, default=25, help="profile entries printed per ordering")
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the checkout whose sync.py, mappings and config.example.toml are measured (default: this one), "
        "to compare a branch with main by the same bench",
    )
    parser.add_argument("--serve", metavar="PLATFORM", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DAEMON_ROOT
    DAEMON_ROOT = args.root.resolve()
    if args.serve:
        serve(args.serve, args.tickets, args.seed)
        return 0
    platforms = args.platforms.split(",")
    for platform in platforms:
        if platform not in INSTANCES:
            parser.error(f"unknown platform {platform!r} (one of {', '.join(INSTANCES)})")
    if args.profile:
        for platform in platforms:
            profile_platform(platform, args.tickets, args.seed, args.top)
        return 0
    for platform in platforms:
        samples: dict[str, list[float]] = {}
        units: dict[str, str] = {}
        for _ in range(args.runs):
            for key, (value, unit) in measure_platform(
                platform, args.tickets, args.seed, args.modes.split(",")
            ).items():
                samples.setdefault(key, []).append(value)
                units[key] = unit
        for key, values in samples.items():
            show(key, statistics.median(values), units[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())

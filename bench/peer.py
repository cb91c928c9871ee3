"""The peer, side by side: our whole pipeline and tap-zendesk over the same Zendesk stand-in, in one run.

Why: the claim that reading is not where we lose (issue 14) is only worth something measured against what
people run today, on the same tickets through the same server. One Zendesk sandbox (sandbox/zendesk.py) is
seeded with `--tickets` tickets and served on a loopback port; then
1. the peer, tap-zendesk (the Singer extractor), reads it: installed from PyPI into its own venv
   (bench/.peer-venv, made here with `python -m venv` + pip; skipped with a message when it cannot be installed),
   run by bench/peer/run_tap.py, which only re-bases the tap's `https://{subdomain}.zendesk.com` URLs onto the
   loopback URL; the tickets stream selected, as a user extracting tickets would. It paces itself (about 460
   tickets a minute: a sleep to the next minute after every 460), so `--peer-timeout` caps it and the rate it
   reached is printed with the tickets it read (a cap of several minutes: it reads in bursts, so a cap of less
   than a few of them over- or under-states the rate by up to a burst);
2. ours: `sync.py once` as a subprocess (the production entry point, durable SQLite store) with the default
   mapping and policy of config.example.toml: poll, the first start's scan of every open ticket, evaluate, and
   write back every due ticket (`--max-writes`, default no cap, so the whole backlog is written in this run).
The peer runs first, so it reads the account exactly as seeded (it writes nothing); then ours.

Both processes get the sandbox's simulated clock frozen at the seeding moment: ours through `sync.utcnow` (as
bench/soak.py does), the peer needs none (it reads from its start_date to the export's end). Figures per side:
wall and CPU time (user+system of the process, its own rusage), API calls (requests the sandbox served),
tickets read (ours: records polled plus records the open-ticket scan read), peak RSS; then the ratios. One
figure a line: `name value unit`. `<side>_bench_process_cpu` is this process's CPU meanwhile: mostly the
sandbox serving that side (for the peer, also counting its records). Wall times include waiting for a core:
on a loaded machine read the CPU figures.

One shim, in front of the sandbox and for both sides: tap-zendesk sends the export's `start_time` as a float
("1700000000.0", `datetime.timestamp()`), which the sandbox refuses (it parses an integer); it is truncated to
its integer seconds here. Zendesk accepts what the tap sends (the tap syncs real accounts with it).

Usage: python bench/peer.py [--tickets 100000] [--peer-timeout 600] [--seed 7] [--max-writes N] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.demo import DEMO_START  # noqa: E402
from sandbox.base import SimClock  # noqa: E402
from sandbox.zendesk import SUBDOMAIN, ZendeskSandbox  # noqa: E402

PEER_PACKAGE = "tap-zendesk==2.8.2"
"""Pinned: the runner builds the catalog from the tap's stream classes, which are not a public API."""
PEER_VENV = ROOT / "bench" / ".peer-venv"
RUNNER = ROOT / "bench" / "peer" / "run_tap.py"
WRAPPER = """
import os, sys
from datetime import datetime
sys.path.insert(0, os.environ["PEER_ROOT"])
import sync
_now = datetime.fromisoformat(os.environ["PEER_NOW"])
sync.utcnow = lambda: _now
sys.exit(sync.main(sys.argv[1:]))
"""
ENVIRON = {"PEER_ZD_EMAIL": "bench@example.com", "PEER_ZD_TOKEN": "bench-zendesk-token"}
PEER_TOKEN = "bench-oauth-token"
CALL_KINDS = {
    "put": ("PUT", r"^/api/v2/tickets/\d+"),
    "get_ticket": ("GET", r"^/api/v2/tickets/\d+(\.json)?$"),
    "ticket_export": ("GET", r"^/api/v2/incremental/tickets/"),
    "event_export": ("GET", r"^/api/v2/incremental/ticket_events"),
}
"""Our calls by kind, to see where the calls beyond one per written ticket go."""
_FLOAT_START = re.compile(r"(^|&)start_time=(\d+)\.\d+(?=&|$)")


@dataclass
class Side:
    name: str
    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0
    tickets: int = 0
    rss_mib: float = 0.0
    capped: bool = False
    extra: dict[str, tuple[float, str]] = field(default_factory=dict)

    def figures(self) -> list[tuple[str, float, str]]:
        rows = [
            (f"{self.name}_wall", self.wall, "s"),
            (f"{self.name}_cpu", self.cpu, "s"),
            (f"{self.name}_api_calls", self.calls, "calls"),
            (f"{self.name}_tickets_read", self.tickets, "tickets"),
            (f"{self.name}_peak_rss", self.rss_mib, "MiB"),
            (f"{self.name}_tickets_per_s", self.tickets / self.wall if self.wall else 0.0, "tickets/s"),
            (f"{self.name}_cpu_per_ticket", 1e6 * self.cpu / self.tickets if self.tickets else 0.0, "us"),
        ]
        rows += [(f"{self.name}_{key}", value, unit) for key, (value, unit) in self.extra.items()]
        return rows


# ---- the server both sides read --------------------------------------------------------------------------


class _IntegerStartTime:
    """WSGI middleware: `start_time=1700000000.0` -> `start_time=1700000000` (see the module docstring)."""

    def __init__(self, app: ZendeskSandbox) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["QUERY_STRING"] = _FLOAT_START.sub(r"\1start_time=\2", environ.get("QUERY_STRING", ""))
        return self.app(environ, start_response)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(sandbox: ZendeskSandbox) -> tuple[str, Callable[[], None]]:
    server = make_server("127.0.0.1", 0, _IntegerStartTime(sandbox), server_class=WSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_port}", stop


# ---- measuring a child process ---------------------------------------------------------------------------


LAUNCHER = r"""
import json, os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}, out)
"""
"""Starts the measured command from a small process and reports its rusage. Why: a child forked from this
process (hundreds of MB once the sandbox is seeded) keeps that size as its peak RSS across exec (Linux records
the old address space's high-water mark at exec), so wait4 on a direct child would report our size, not its."""


def measure(
    command: list[str], env: dict[str, str], timeout: float | None, stdout_line: Callable[[str], None] | None
) -> tuple[float, float, float, bool, str]:
    """Run a command to its end (or SIGTERM it at `timeout`): its wall, user+system CPU and peak RSS (its own
    rusage through LAUNCHER, so the two sides never add up), whether it was capped, and its stderr."""
    with (
        tempfile.TemporaryFile(mode="w+", encoding="utf-8") as errors,
        tempfile.TemporaryDirectory(prefix="peer-usage-") as scratch,
    ):
        usage_file = Path(scratch) / "usage.json"
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(usage_file), *command],
            env=env,
            stdout=subprocess.PIPE if stdout_line else subprocess.DEVNULL,
            stderr=errors,
            text=True,
        )
        reader = None
        if stdout_line is not None and process.stdout is not None:
            stream = process.stdout

            def read() -> None:
                for line in stream:
                    stdout_line(line)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
        capped = False
        try:
            while process.poll() is None:
                if timeout is not None and time.monotonic() - started > timeout:
                    capped = True
                    process.send_signal(signal.SIGTERM)  # the launcher passes it on and waits for the end
                    process.wait()
                    break
                time.sleep(0.1)
        except BaseException:  # the bench itself stopped (Ctrl-C, SIGTERM): never leave the command running
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        wall = time.monotonic() - started
        if reader is not None:
            reader.join(timeout=30)
        errors.seek(0)
        log = errors.read()
        if not usage_file.exists():
            raise RuntimeError(f"the launcher reported no usage (exit {process.returncode}): {log[-500:]}")
        usage = json.loads(usage_file.read_text(encoding="utf-8"))
        return wall, usage["cpu"], usage["maxrss_kib"] / 1024, capped, log


# ---- the peer --------------------------------------------------------------------------------------------


def peer_python(venv: Path, out: Any) -> Path | None:
    """The peer venv's python with tap-zendesk importable, made on first use; None (and why) if it cannot be."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import tap_zendesk, singer, zenpy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", PEER_PACKAGE],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        last = (detail.strip().splitlines() or ["no output"])[-1]
        print(f"# peer skipped: could not install {PEER_PACKAGE} into {venv}: {last}", file=out)
        return None
    if subprocess.run(check, capture_output=True).returncode != 0:
        print(f"# peer skipped: {PEER_PACKAGE} installed into {venv} but does not import", file=out)
        return None
    return python


def run_peer(python: Path, base_url: str, sandbox: ZendeskSandbox, timeout: float, workdir: Path) -> Side:
    start_date = (sandbox.clock.now() - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    seen: set[str] = set()
    records = 0

    def on_line(line: str) -> None:
        nonlocal records
        if '"type": "RECORD"' not in line or '"stream": "tickets"' not in line:
            return
        records += 1
        message = json.loads(line)
        seen.add(str(message["record"].get("id")))

    before, server_before = len(sandbox.requests), time.process_time()
    wall, cpu, rss, capped, errors = measure(
        [str(python), str(RUNNER), base_url, SUBDOMAIN, start_date, PEER_TOKEN, str(workdir)],
        {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir)},
        timeout,
        on_line,
    )
    if not capped and not records:
        tail = "\n".join(errors.strip().splitlines()[-5:])
        raise RuntimeError(f"tap-zendesk read no ticket; its last log lines:\n{tail}")
    side = Side("peer", wall, cpu, len(sandbox.requests) - before, len(seen), rss, capped)
    side.extra["records_emitted"] = (records, "records")
    side.extra["bench_process_cpu"] = (time.process_time() - server_before, "s")
    side.extra["capped"] = (int(capped), "bool")
    return side


# ---- ours ------------------------------------------------------------------------------------------------


def write_config(directory: Path, base_url: str, max_writes: int) -> Path:
    """config.example.toml's daemon settings and policy, one Zendesk instance pointing at the stand-in."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    policy = text.split("# ---- escalation policy", 1)[1]
    config = (
        f'[daemon]\nlog_format = "json"\nmax_writes_per_cycle = {max_writes}\n\n'
        f'[state]\nurl = "sqlite:///{directory / "state.sqlite3"}"\n\n'
        f'[[instances]]\nname = "peer-zendesk"\nplatform = "zendesk"\nbase_url = "{base_url}"\n'
        f'mapping = "{ROOT / "mappings" / "zendesk.toml"}"\n\n'
        '[instances.credentials]\nemail = "PEER_ZD_EMAIL"\napi_token = "PEER_ZD_TOKEN"\n\n'
        "[instances.options]\npage_size = 100\n"
    )
    path = directory / "config.toml"
    path.write_text(config + "\n# ---- escalation policy" + policy, encoding="utf-8")
    return path


def run_ours(base_url: str, sandbox: ZendeskSandbox, max_writes: int, workdir: Path) -> Side:
    config = write_config(workdir, base_url, max_writes)
    env = {
        **os.environ,
        **ENVIRON,
        "PEER_ROOT": str(ROOT),
        "PEER_NOW": sandbox.clock.now().isoformat(),
        "ESCALATION_SYNC_LOG_LEVEL": "INFO",
    }
    before, server_before = len(sandbox.requests), time.process_time()
    kinds_before = {kind: sandbox.calls(method, path) for kind, (method, path) in CALL_KINDS.items()}
    wall, cpu, rss, _capped, errors = measure(
        [sys.executable, "-c", WRAPPER, "once", "--config", str(config)], env, None, None
    )
    cycles = [
        event
        for event in (json.loads(line) for line in errors.splitlines() if line.startswith("{"))
        if event.get("event") == "cycle"
    ]
    if not cycles:
        tail = "\n".join(errors.strip().splitlines()[-5:])
        raise RuntimeError(f"sync.py once logged no cycle; its last log lines:\n{tail}")
    cycle = cycles[-1]
    side = Side("ours", wall, cpu, len(sandbox.requests) - before, cycle["tickets_seen"] + cycle["scanned"], rss)
    side.extra["records_polled"] = (cycle["tickets_seen"], "records")
    side.extra["records_scanned"] = (cycle["scanned"], "records")
    side.extra["writes"] = (cycle["writes"], "tickets")
    side.extra["bench_process_cpu"] = (time.process_time() - server_before, "s")
    for kind, (method, path) in CALL_KINDS.items():
        side.extra[f"{kind}_calls"] = (sandbox.calls(method, path) - kinds_before[kind], "calls")
    side.extra["deferred"] = (cycle["deferred"], "tickets")
    side.extra["quarantined"] = (cycle["quarantined"], "records")
    if cycle.get("error"):
        print(f"# ours: cycle error: {cycle['error']}", file=sys.stderr)
    return side


# ---- the run ---------------------------------------------------------------------------------------------


def ratios(ours: Side, peer: Side) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    our_rate = ours.tickets / ours.wall if ours.wall else 0.0
    peer_rate = peer.tickets / peer.wall if peer.wall else 0.0
    if peer_rate:
        rows.append(("ratio_tickets_per_s_ours_to_peer", our_rate / peer_rate, "x"))
        # Capped: the wall the peer would need for all the tickets ours read, at the rate it reached.
        rows.append(("peer_wall_projected", ours.tickets / peer_rate, "s"))
        rows.append(("ratio_wall_peer_to_ours", (ours.tickets / peer_rate) / ours.wall if ours.wall else 0.0, "x"))
    if ours.tickets and peer.tickets and peer.cpu:
        rows.append(("ratio_cpu_per_ticket_ours_to_peer", (ours.cpu / ours.tickets) / (peer.cpu / peer.tickets), "x"))
    if peer.rss_mib:
        rows.append(("ratio_peak_rss_ours_to_peer", ours.rss_mib / peer.rss_mib, "x"))
    return rows


def show(rows: list[tuple[str, float, str]], out: Any) -> None:
    """Printed as soon as measured: a long run stopped half-way still leaves the figures it has."""
    for name, value, unit in rows:
        text = f"{value:d}" if isinstance(value, int) else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        print(f"{name} {text} {unit}", file=out, flush=True)


def run(
    tickets: int, seed: int, peer_timeout: float, max_writes: int, with_peer: bool, venv: Path, out: Any
) -> dict[str, float]:
    python = peer_python(venv, out) if with_peer else None
    sandbox = ZendeskSandbox(SimClock(DEMO_START), seed=seed)
    began = time.process_time()
    sandbox.seed_tickets(tickets)
    rows: list[tuple[str, float, str]] = [
        ("seed_tickets", tickets, "tickets"),
        ("seed_cpu", time.process_time() - began, "s"),
    ]
    show(rows, out)
    base_url, stop = serve(sandbox)
    try:
        with tempfile.TemporaryDirectory(prefix="peer-bench-") as scratch:
            peer = None
            if python is not None:
                peer_dir = Path(scratch) / "peer"
                peer_dir.mkdir()
                peer = run_peer(python, base_url, sandbox, peer_timeout, peer_dir)
                rows += peer.figures()
                show(peer.figures(), out)
            ours_dir = Path(scratch) / "ours"
            ours_dir.mkdir()
            ours = run_ours(base_url, sandbox, max_writes, ours_dir)
            rows += ours.figures()
            show(ours.figures(), out)
            if peer is not None:
                rows += ratios(ours, peer)
                show(ratios(ours, peer), out)
    finally:
        stop()
    return {name: value for name, value, _unit in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=100_000, help="tickets seeded in the sandbox (default 100000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=600.0,
        help="seconds the peer may read before it is stopped; its rate so far is reported (default 600)",
    )
    parser.add_argument(
        "--max-writes", type=int, default=10**9, help="our max_writes_per_cycle (default: no cap, write every due)"
    )
    parser.add_argument("--no-peer", action="store_true", help="measure our side only")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV, help=f"the peer's venv (default {PEER_VENV})")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so the finally blocks run
    run(args.tickets, args.seed, args.peer_timeout, args.max_writes, not args.no_peer, args.peer_venv, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency: from a change on the platform to our write-back landing on it, per platform, on a real wall clock.

Why: escalation is about time; a churn threat that waits two intervals for its management escalation is late
however fast each cycle is. Issue 14's target: a change reaches its write-back within the poll interval, plus the
platform's own hold-back (Zendesk's incremental export leaves out the last minute; JSM and ServiceNow hold
nothing back: their connectors re-read an overlap instead), plus 1 s.

How: the three sandboxes run on a clock that *is* the wall clock (so Zendesk's minute is a real minute), each
seeded with `--tickets` tickets and served on a loopback port; `sync.py run` (the production daemon, unchanged,
as a subprocess) polls them every `--interval` seconds. Once every instance has finished two cycles (the first
start's sweep and one more), each platform in its own thread, `--samples` times: wait a random part of an interval
(so changes land at every phase of the poll loop), flag one untouched L1 ticket as a churn threat the way the
default mapping reads it (Zendesk tag `churn_risk`, JSM label `churn-risk`, ServiceNow `u_churn_risk=true`: the
`mgmt-churn-threat` rule starts the management track), and time until the ticket's tier or tags change on the
sandbox: our write landing. Each figure is the median of the samples, printed beside its target.

To say *why* a figure misses, each sample is placed against the daemon's own cycle log (JSON lines: each cycle's
`started_at` and end): `poll_wait` is from the moment the change was visible through the API (the change, plus
the hold-back) to the start of the cycle that wrote it, `in_cycle` from that start to the write landing, and
`missed_polls` counts cycles of that instance that started after the change was visible and did not write it.

Usage: python bench/latency.py [--interval 10] [--samples 6] [--tickets 30] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.demo import make_sandbox  # noqa: E402
from sandbox.base import SandboxApp, SimClock  # noqa: E402

PLATFORMS = ("zendesk", "jsm", "servicenow")
HOLD_BACK = {"zendesk": 60.0, "jsm": 0.0, "servicenow": 0.0}
"""Seconds the platform itself keeps a change out of what we read (Zendesk's export: the last minute)."""
SLACK = 1.0
ENVIRON = {
    "LAT_ZD_EMAIL": "latency@example.com",
    "LAT_ZD_TOKEN": "latency-zendesk-token",
    "LAT_JSM_EMAIL": "latency@example.com",
    "LAT_JSM_TOKEN": "latency-jsm-token",
    "LAT_SNOW_USER": "latency.integration",
    "LAT_SNOW_PASSWORD": "latency-snow-password",
}
CREDENTIALS = {
    "zendesk": {"email": "LAT_ZD_EMAIL", "api_token": "LAT_ZD_TOKEN"},
    "jsm": {"email": "LAT_JSM_EMAIL", "api_token": "LAT_JSM_TOKEN"},
    "servicenow": {"username": "LAT_SNOW_USER", "password": "LAT_SNOW_PASSWORD"},
}


class WallClock(SimClock):
    """The sandbox's clock is the real one: holds-back and Date headers run in real seconds."""

    def __init__(self) -> None:
        super().__init__(datetime.now(UTC))

    def now(self) -> datetime:
        return datetime.now(UTC)

    def advance(self, delta: timedelta) -> datetime:
        raise RuntimeError("a wall clock does not jump; wait instead")


# ---- the platforms: an untouched ticket, the change, what we look at -------------------------------------


def add_subject(platform: str, sandbox: Any, created: datetime) -> Any:
    """An L1 ticket nobody touches, created minutes ago: no clock near a threshold, nothing due on its own."""
    if platform == "zendesk":
        return sandbox.add_idle_ticket(created)
    if platform == "jsm":
        return sandbox.add_idle_ticket(created, tier="10300")
    return sandbox.add_idle_ticket(created, tier=0)


def flag_churn(platform: str, sandbox: Any, ticket: Any) -> None:
    """What an agent does on the platform: flag the churn threat the way mappings/<platform>.toml reads it."""
    if platform == "zendesk":
        sandbox.update(ticket, additional_tags=["churn_risk"])
    elif platform == "jsm":
        _tier, labels = sandbox.escalation_view(ticket)
        sandbox.update(ticket, labels=[*sorted(labels), "churn-risk"])
    else:
        sandbox.update(ticket, u_churn_risk="true")


# ---- the daemon and its log ------------------------------------------------------------------------------


@dataclass
class CycleLog:
    """The daemon's `cycle` events per instance: (started, ended) wall times, read from its stderr."""

    cycles: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def feed(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        if event.get("level") in ("error", "critical") or event.get("msg") in ("cycle failed", "cycle crashed"):
            with self.lock:
                self.errors.append(line.strip()[:300])
        if event.get("event") != "cycle":
            return
        span = (datetime.fromisoformat(event["started_at"]), datetime.fromisoformat(event["ts"]))
        with self.lock:
            self.cycles.setdefault(event["instance"], []).append(span)

    def count(self, instance: str) -> int:
        with self.lock:
            return len(self.cycles.get(instance, []))

    def spans(self, instance: str) -> list[tuple[datetime, datetime]]:
        with self.lock:
            return list(self.cycles.get(instance, []))


def write_config(directory: Path, urls: dict[str, str], interval: float) -> Path:
    """config.example.toml's policy, three instances on the loopback sandboxes, `interval` between cycles."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    policy = text.split("# ---- escalation policy", 1)[1]
    parts = [
        f'[daemon]\ninterval_seconds = {interval}\nlog_format = "json"\n',
        f'[state]\nurl = "sqlite:///{directory / "state.sqlite3"}"\n',
    ]
    for platform, url in urls.items():
        credentials = "\n".join(f'{name} = "{variable}"' for name, variable in CREDENTIALS[platform].items())
        parts.append(
            f'[[instances]]\nname = "lat-{platform}"\nplatform = "{platform}"\nbase_url = "{url}"\n'
            f'mapping = "{ROOT / "mappings" / f"{platform}.toml"}"\n\n[instances.credentials]\n{credentials}\n'
        )
    path = directory / "config.toml"
    path.write_text("\n".join(parts) + "\n# ---- escalation policy" + policy, encoding="utf-8")
    return path


# ---- one platform's samples ------------------------------------------------------------------------------


@dataclass
class Sample:
    changed: datetime
    landed: datetime | None
    poll_wait: float | None = None
    in_cycle: float | None = None
    missed_polls: int = 0

    @property
    def latency(self) -> float | None:
        return None if self.landed is None else (self.landed - self.changed).total_seconds()


def measure_platform(
    platform: str,
    sandbox: SandboxApp,
    subjects: list[Any],
    interval: float,
    rng: random.Random,
    stopping: threading.Event,
) -> list[tuple[Any, datetime, datetime | None]]:
    """Change each subject in turn and wait for our write; (ticket, changed at, landed at or None)."""
    view: Callable[[Any], Any] = sandbox.escalation_view  # type: ignore[attr-defined]
    timeout = 3 * (interval + HOLD_BACK[platform]) + 60
    results = []
    for ticket in subjects:
        stopping.wait(rng.uniform(0, interval))
        if stopping.is_set():
            break
        flag_churn(platform, sandbox, ticket)
        changed = datetime.now(UTC)
        baseline = view(ticket)
        landed = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stopping.is_set():
            if view(ticket) != baseline:
                landed = datetime.now(UTC)
                break
            time.sleep(0.02)
        results.append((ticket, changed, landed))
    return results


def explain(
    platform: str, changed: datetime, landed: datetime | None, spans: list[tuple[datetime, datetime]]
) -> Sample:
    """Place one sample against the instance's cycles (see the module docstring)."""
    sample = Sample(changed, landed)
    if landed is None:
        return sample
    visible = changed + timedelta(seconds=HOLD_BACK[platform])
    writer = next(((start, end) for start, end in spans if start <= landed <= end + timedelta(seconds=0.5)), None)
    if writer is None:
        return sample
    sample.poll_wait = (writer[0] - visible).total_seconds()
    sample.in_cycle = (landed - writer[0]).total_seconds()
    sample.missed_polls = sum(1 for start, _end in spans if visible < start < writer[0])
    return sample


# ---- the run ---------------------------------------------------------------------------------------------


def run(interval: float, samples: int, tickets: int, seed: int, out: Any) -> dict[str, float]:
    sandboxes: dict[str, SandboxApp] = {}
    subjects: dict[str, list[Any]] = {}
    stoppers: list[Callable[[], None]] = []
    urls: dict[str, str] = {}
    log = CycleLog()
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as scratch:
        try:
            for index, platform in enumerate(PLATFORMS):
                sandbox: Any = make_sandbox(platform, WallClock(), seed + index)
                sandbox.seed_tickets(tickets)
                created = datetime.now(UTC) - timedelta(minutes=10)
                subjects[platform] = [add_subject(platform, sandbox, created) for _ in range(samples)]
                sandboxes[platform] = sandbox
                urls[platform], stop = sandbox.serve()
                stoppers.append(stop)
            config = write_config(Path(scratch), urls, interval)
            env = {**os.environ, **ENVIRON, "ESCALATION_SYNC_LOG_LEVEL": "INFO"}
            daemon = subprocess.Popen(
                [sys.executable, str(ROOT / "sync.py"), "run", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert daemon.stderr is not None
            stderr = daemon.stderr
            reader = threading.Thread(target=lambda: [log.feed(line) for line in stderr], daemon=True)
            reader.start()
            try:
                names = [f"lat-{platform}" for platform in PLATFORMS]
                deadline = time.monotonic() + 600
                while any(log.count(name) < 2 for name in names):
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the daemon did not complete two cycles per instance: {log.errors[-3:]}")
                    time.sleep(0.2)
                stopping = threading.Event()
                results: dict[str, list[tuple[Any, datetime, datetime | None]]] = {}
                threads = []
                for index, platform in enumerate(PLATFORMS):
                    rng = random.Random(seed * 31 + index)

                    def work(platform: str = platform, rng: random.Random = rng) -> None:
                        results[platform] = measure_platform(
                            platform, sandboxes[platform], subjects[platform], interval, rng, stopping
                        )

                    threads.append(threading.Thread(target=work, daemon=True))
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                time.sleep(1.0)  # the log line of the cycle that wrote the last sample
            finally:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                reader.join(timeout=10)
        finally:
            for stop in stoppers:
                stop()
    rows.append(("interval", interval, "s"))
    for platform in PLATFORMS:
        spans = log.spans(f"lat-{platform}")
        explained = [explain(platform, changed, landed, spans) for _ticket, changed, landed in results[platform]]
        latencies = [s.latency for s in explained if s.latency is not None]
        target = interval + HOLD_BACK[platform] + SLACK
        rows.append((f"latency_{platform}_target", target, "s"))
        if latencies:
            median = statistics.median(latencies)
            rows.append((f"latency_{platform}_median", median, "s"))
            rows.append((f"latency_{platform}_min", min(latencies), "s"))
            rows.append((f"latency_{platform}_max", max(latencies), "s"))
            rows.append((f"latency_{platform}_met", int(median <= target), "bool"))
        rows.append((f"latency_{platform}_samples", len(latencies), "samples"))
        rows.append((f"latency_{platform}_timeouts", len(explained) - len(latencies), "samples"))
        waits = [s.poll_wait for s in explained if s.poll_wait is not None]
        inside = [s.in_cycle for s in explained if s.in_cycle is not None]
        if waits:
            rows.append((f"latency_{platform}_poll_wait_median", statistics.median(waits), "s"))
            rows.append((f"latency_{platform}_in_cycle_median", statistics.median(inside), "s"))
        rows.append((f"latency_{platform}_missed_polls", sum(s.missed_polls for s in explained), "cycles"))
        durations = [(end - start).total_seconds() for start, end in spans[2:]]
        if durations:
            rows.append((f"latency_{platform}_cycle_median", statistics.median(durations), "s"))
    for name, value, unit in rows:
        print(f"{name} {value:d} {unit}" if isinstance(value, int) else f"{name} {value:.2f} {unit}", file=out)
    for error in log.errors[:5]:
        print(f"# daemon: {error}", file=out)
    return {name: value for name, value, _unit in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=10.0, help="the daemon's interval_seconds (default 10)")
    parser.add_argument("--samples", type=int, default=6, help="changes per platform; the median is printed")
    parser.add_argument("--tickets", type=int, default=30, help="tickets seeded per sandbox (default 30)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # the daemon is stopped too
    figures = run(args.interval, args.samples, args.tickets, args.seed, sys.stdout)
    missed = [p for p in PLATFORMS if figures.get(f"latency_{p}_met", 0) != 1]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

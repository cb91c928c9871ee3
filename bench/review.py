"""Review cost: one cycle over a book of open tickets in which all (or 1 %) are due, with no API read.

Prints one figure a line (`name value unit`). The book is built first, untimed, in a SQLite file: synthetic raw
records of the three platforms (bench/engine.py's generator: the shapes the connectors hand to the mappings),
evaluated once and changed as the platform shows them after our write-back (the echo), with the escalation
history the daemon would have recorded, so that the reviewed tickets are the daemon's normal case: most are
already as the engine wants them. Each measurement then runs in a fresh process (so its peak RSS is its own):
the real `Syncer.run_cycle` on that store, one instance per platform, with a connector whose poll finds no
change (an idle cycle) and whose writes go nowhere, and every due ticket reviewed (no write cap).

Usage: python bench/review.py [--tickets 100000] [--due-share 0.01]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.base import ApplyResult, Page, RawRecord  # noqa: E402
from engine.escalate import evaluate  # noqa: E402
from engine.model import EscalationHistory, WriteBack  # noqa: E402
from engine.plan import plan  # noqa: E402
from engine.policy import load_policy  # noqa: E402
from mappings import NormalizeError, load_mapping  # noqa: E402
from runtime.codec import decode_record, encode_record  # noqa: E402
from runtime.cycle import MANAGEMENT, SCAN_DONE, Syncer, history_from_rows  # noqa: E402
from state import open_store  # noqa: E402
from state.base import BookEntry  # noqa: E402
from state.sql import SCAN_SUFFIX  # noqa: E402
from state.sqlite import SqliteStore  # noqa: E402


def _generator() -> Any:
    """bench/engine.py as a module of its own name (its file name would shadow the `engine` package)."""
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).with_name("engine.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_engine"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class IdleConnector:
    """A platform with no change to report, whose writes are accepted and go nowhere."""

    def __init__(self, platform: str, instance: str) -> None:
        self.platform, self.instance, self.writes = platform, instance, 0

    def poll(self, cursor: str | None, now: datetime) -> Page:
        return Page(records=[], cursor="idle", has_more=False)

    def apply(self, writeback: WriteBack) -> ApplyResult:
        self.writes += 1
        return ApplyResult(writeback.ticket_id, writeback.revision)

    def fetch(self, ticket_id: str) -> RawRecord | None:
        return None

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        return False

    def close(self) -> None:
        pass


def build(path: Path, tickets: int, due_share: float) -> dict[str, int]:
    """The book of `tickets` open tickets at the benchmark's `NOW`, `due_share` of them due a minute later."""
    gen = _generator()
    policy = load_policy(ROOT / "config.example.toml")
    mappings = {platform: load_mapping(platform) for platform, _, _ in gen.SHARES}
    orgs = gen._organizations(random.Random(7))
    store = SqliteStore(path, durable=False)  # building, not measured: no disk sync per commit
    rng = random.Random(11)
    later = gen.NOW + timedelta(minutes=1)
    booked: dict[str, int] = {}
    for spec in gen.page_specs(tickets):
        mapping = mappings[spec.platform]
        instance = f"bench-{spec.platform}"
        entries = []
        for record in gen.generate(spec, gen.NOW, orgs):
            try:
                ticket = mapping.normalize(record, instance)
            except NormalizeError:
                continue
            if ticket.status.is_terminal:
                continue
            decision = evaluate(ticket, policy, gen.NOW, EscalationHistory())
            writeback = plan(decision, ticket, mapping.tags)
            customer = ticket.organization or ticket.requester or ""
            if writeback.tier is not None:
                store.record_escalation(instance, customer, ticket.id, writeback.tier.value, gen.NOW)
            if decision.management:
                store.record_escalation(instance, customer, ticket.id, MANAGEMENT, gen.NOW)
            if not writeback.is_empty:
                tier = writeback.tier.value if writeback.tier else None
                echo = (tier, tuple(writeback.add_tags), tuple(writeback.remove_tags))
                gen.apply_echo(spec.platform, mapping, record, echo, gen.NOW)
                ticket = mapping.normalize(record, instance)
            due = rng.random() < due_share
            review_at = later if due else later + timedelta(days=30)
            entries.append(
                BookEntry(ticket.id, True, ticket.updated_at, ticket.revision, encode_record(record), customer,
                          review_at, 4, False, gen.NOW)
            )  # fmt: skip
        store.book_put(instance, entries)
        booked[spec.platform] = booked.get(spec.platform, 0) + len(entries)
    for _ in range(2):
        _settle(store, policy, mappings, gen)
    for platform in booked:
        store.set_cursor(f"bench-{platform}", "idle")
        store.set_cursor(f"bench-{platform}{SCAN_SUFFIX}", SCAN_DONE)
    store.close()
    return booked


def _settle(store: Any, policy: Any, mappings: dict[str, Any], gen: Any) -> None:
    """Evaluate the book again with the history the first pass recorded (tier entries, management starts,
    customers' counts) and play the echo of what that changes: the daemon's steady state, where reviews of
    tickets that are already as the engine wants them write nothing."""
    counts = store.escalation_counts(gen.NOW - timedelta(days=30))
    for platform, mapping in mappings.items():
        instance = f"bench-{platform}"
        rows = store.book_due(instance, gen.NOW + timedelta(days=365), 10**9)
        history = store.tier_entries_many(instance, [row.ticket_id for row in rows])
        changed = []
        for row in rows:
            record = decode_record(row.raw or "{}")
            ticket = mapping.normalize(record, instance)
            known = history_from_rows(history.get(row.ticket_id, []), counts.get(row.customer, 0))
            decision = evaluate(ticket, policy, gen.NOW, known)
            writeback = plan(decision, ticket, mapping.tags)
            if writeback.is_empty:
                continue
            if writeback.tier is not None:
                store.record_escalation(instance, row.customer, row.ticket_id, writeback.tier.value, gen.NOW)
            if decision.management:
                store.record_escalation(instance, row.customer, row.ticket_id, MANAGEMENT, gen.NOW)
            tier = writeback.tier.value if writeback.tier else None
            gen.apply_echo(
                platform, mapping, record, (tier, tuple(writeback.add_tags), tuple(writeback.remove_tags)), gen.NOW
            )
            changed.append(replace(row, raw=encode_record(record)))
        store.book_put(instance, changed)


def _peak_rss_mib() -> float:
    """This process's own peak RSS. Linux carries `ru_maxrss` over an exec (the builder's peak would show in
    the measuring child), while VmHWM in /proc is the high-water mark of this program's memory alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, profile: bool = False) -> None:
    """One idle cycle per platform instance over the book in `path`; prints a JSON line of figures."""
    gen = _generator()
    policy = load_policy(ROOT / "config.example.toml")
    store = open_store(f"sqlite:///{path}")
    later = gen.NOW + timedelta(minutes=1)
    reviewed = writes = 0
    mappings = {platform: load_mapping(platform) for platform, _, _ in gen.SHARES}
    # What a running daemon has warm: each mapping's first normalize, the calendars' holiday years.
    for platform, mapping in mappings.items():
        rows = store.book_due(f"bench-{platform}", later + timedelta(days=60), 1)
        if rows:
            evaluate(mapping.normalize(decode_record(rows[0].raw or "{}"), platform), policy, later)
    wall, cpu = time.perf_counter(), time.process_time()
    for platform, _, _ in gen.SHARES:
        instance = f"bench-{platform}"
        connector = IdleConnector(platform, instance)
        syncer = Syncer(
            instance=instance,
            platform=platform,
            connector=connector,
            mapping=mappings[platform],
            policy=policy,
            store=store,
            clock=lambda: later,
            max_writes_per_cycle=10**9,
        )
        report = syncer.run_cycle()
        assert report.error == "", report.error
        reviewed += report.reviewed
        writes += connector.writes
    figures = {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "reviewed": reviewed,
        "writes": writes,
        "peak_rss_mib": _peak_rss_mib(),
    }
    store.close()
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--due-share", type=float, default=0.01)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help="build the all-due book into this file and stop")
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    if args.keep:
        print(build(args.keep, args.tickets, 1.0))
        return
    with tempfile.TemporaryDirectory(prefix="review-bench-") as folder:
        for name, share in (("all", 1.0), ("one_percent", args.due_share)):
            path = Path(folder) / f"{name}.sqlite3"
            booked = build(path, args.tickets, share)
            run = subprocess.run(
                [sys.executable, __file__, "--measure", str(path)], check=True, capture_output=True, text=True
            )
            figures = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"review.{name}.book {sum(booked.values())} tickets")
            print(f"review.{name}.reviewed {figures['reviewed']} tickets")
            print(f"review.{name}.writes {figures['writes']} writes")
            print(f"review.{name}.seconds {figures['seconds']:.2f} s")
            print(f"review.{name}.cpu_seconds {figures['cpu_seconds']:.2f} s")
            print(f"review.{name}.tickets_per_second {figures['reviewed'] / figures['seconds']:.0f} tickets/s")
            print(f"review.{name}.peak_rss {figures['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()

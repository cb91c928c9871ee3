"""State store at scale (issue 14): the customer count at growing history, commits per write, file size.

Prints one figure a line (`name value unit`):

- ``store.count.<rows>.*``: the 30-day customer count (`escalations_since`, run once per ticket before issue 14)
  and the count of every customer (`escalation_counts`, once per cycle) on a SQLite store holding `rows` history
  rows, all of ONE customer (the worst case: the measured 11 ms came from one big customer), half of them in
  the window, every ticket escalated to two tiers. ``recount`` is the query the counts replaced (COUNT DISTINCT
  over the customer's history rows), run on the same data for comparison.
- ``store.cycle.*``: commits per written ticket in a real first cycle (Syncer, Zendesk connector and in-process
  sandbox, SQLite store with full sync), counted through SQLite's trace callback.
- ``store.write.*``: milliseconds per write of the ledger's own store calls with a full disk sync (intent; done
  and history in one transaction), on a file in the system's temporary directory; ``store.write_separate_commits``
  the same calls each committed on its own, as before issue 14.
- ``store.file.*``: the state file's size after `--writes` writes made as the cycle makes them, spread over 90
  simulated days with the hourly pruning of done entries (30-day retention), and without pruning.

Usage: python bench/store.py [--writes 100000] [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.policy import load_policy  # noqa: E402
from runtime.config import AppConfig, DaemonSection, InstanceSection  # noqa: E402
from runtime.demo import DEMO_START  # noqa: E402
from runtime.wiring import wire  # noqa: E402
from sandbox.base import SimClock  # noqa: E402
from sandbox.zendesk import ZendeskSandbox  # noqa: E402
from state.base import LEDGER_RETENTION  # noqa: E402
from state.sqlite import SqliteStore  # noqa: E402

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
WINDOW = timedelta(days=30)
RECOUNT = (
    "SELECT COUNT(*) FROM (SELECT DISTINCT instance, ticket_id FROM escalations "
    "WHERE customer = ? AND at >= ? AND tier <> 'RESOLVED') AS tickets"
)


def per_call(call: Callable[[], object], least: float = 0.3) -> float:
    """Microseconds per call, repeated for at least `least` seconds."""
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        spent = time.perf_counter() - started
        if spent >= least:
            return spent / calls * 1e6


def counts(rows: int, directory: Path) -> None:
    store = SqliteStore(directory / f"history-{rows}.sqlite3", durable=False)
    tickets = rows // 2
    with store.transaction():
        for n in range(tickets):
            # Half inside the window (spread over its days), half before it.
            days = (n % 29) + 0.5 if n % 2 == 0 else 31 + n % 300
            at = NOW - timedelta(days=days, minutes=n % 700)
            store.record_escalation("zd", "acme", str(n), "L2", at)
            store.record_escalation("zd", "acme", str(n), "L3", at + timedelta(hours=2))
    since = NOW - WINDOW
    expected = (tickets + 1) // 2
    assert store.escalations_since("acme", since) == expected, store.escalations_since("acme", since)
    db = store._db()
    recount_args = ("acme", store._encode_time(since, "since"))
    assert db.execute(RECOUNT, recount_args).fetchone()[0] == expected
    name = f"store.count.{rows}"
    print(f"{name}.customer_count {per_call(lambda: store.escalations_since('acme', since)):.1f} us")
    print(f"{name}.every_customer_count {per_call(lambda: store.escalation_counts(since)):.1f} us")
    print(f"{name}.recount_before_issue14 {per_call(lambda: db.execute(RECOUNT, recount_args).fetchone()):.1f} us")
    store.close()


class Commits:
    """Commits on a SQLite connection, seen through its trace callback: each COMMIT, and each write statement
    run outside an explicit transaction (autocommit: a commit of its own); `synced` the ones made while the
    connection waits for the disk (``synchronous=FULL``)."""

    def __init__(self, store: SqliteStore) -> None:
        self.db, self.count, self.synced = store._db(), 0, 0
        self.full = store.durable
        self.db.set_trace_callback(self._seen)

    def _seen(self, statement: str) -> None:
        words = statement.split()
        verb = words[0].upper() if words else ""
        if verb == "PRAGMA" and words[1].lower().startswith("synchronous="):
            self.full = words[1].split("=", 1)[1].upper() == "FULL"
        if verb == "COMMIT" or (verb in {"INSERT", "UPDATE", "DELETE"} and not self.db.in_transaction):
            self.count += 1
            self.synced += self.full


def cycle(directory: Path) -> list[str]:
    """A real first cycle on the Zendesk sandbox: commits per written ticket; returns the ledger's payloads."""
    section = InstanceSection(
        name="zd",
        platform="zendesk",
        base_url="https://example.zendesk.com",
        credentials={"email": "ZD_EMAIL", "api_token": "ZD_TOKEN"},
        options={"page_size": 100},
    )
    clock = SimClock(DEMO_START)
    sandbox = ZendeskSandbox(clock, seed=11)
    sandbox.seed_tickets(300)
    path = directory / "cycle.sqlite3"
    store = SqliteStore(path)
    config = AppConfig(
        path=ROOT / "config.example.toml",
        daemon=DaemonSection(max_writes_per_cycle=1000),
        state_url=f"sqlite:///{path}",
        instances=(section,),
        policy=load_policy(ROOT / "config.example.toml"),
    )
    wired = wire(
        config,
        section,
        store,
        environ={"ZD_EMAIL": "bench@example.com", "ZD_TOKEN": "bench-token"},
        clock=clock.now,
        transport=sandbox.transport(),
        sleep=lambda seconds: None,
    )
    syncer = wired.syncer
    commits = Commits(store)
    per_write: list[int] = []
    synced: list[int] = []
    send = syncer._send

    def counted(writeback: Any, *args: Any, **kwargs: Any) -> None:
        before, synced_before = commits.count, commits.synced
        writes = sandbox.calls("PUT", r"^/api/v2/tickets/\d+\.json$")
        send(writeback, *args, **kwargs)
        if sandbox.calls("PUT", r"^/api/v2/tickets/\d+\.json$") != writes:
            per_write.append(commits.count - before)
            synced.append(commits.synced - synced_before)

    syncer._send = counted  # type: ignore[method-assign]
    total_before = commits.count
    report = syncer.run_cycle()
    assert report.error == "", report.error
    print(f"store.cycle.writes {report.writes} tickets")
    print(f"store.cycle.commits_per_write {sum(per_write) / max(len(per_write), 1):.2f} commits")
    print(f"store.cycle.commits_per_write_max {max(per_write, default=0)} commits")
    print(f"store.cycle.synced_commits_per_write {sum(synced) / max(len(synced), 1):.2f} commits")
    print(f"store.cycle.commits_total {commits.count - total_before} commits")
    payloads = [row[0] for row in store._db().execute("SELECT payload FROM intents").fetchall()]
    wired.close()
    store.close()
    return payloads


def write(store: SqliteStore, n: int, payload: str, at: datetime) -> None:
    """One written ticket's store calls as runtime/cycle.py `_send` makes them."""
    key = f"zd:{n}:L2"
    store.record_intent("zd", str(n), key, payload, at)
    with store.transaction(sync=False):
        store.mark_done(key, at)
        store.record_escalation("zd", f"org-{n % 500}", str(n), "L2", at)


def write_before_issue14(store: SqliteStore, n: int, payload: str, at: datetime) -> None:
    """The same calls as `write`, each committed on its own as the cycle did before issue 14."""
    key = f"zd:{n}:L2"
    store.record_intent("zd", str(n), key, payload, at)
    store.mark_done(key, at)
    store.record_escalation("zd", f"org-{n % 500}", str(n), "L2", at)


def durable_writes(directory: Path, payload: str, writes: int = 300) -> None:
    for name, how in (("", write), ("_separate_commits", write_before_issue14)):
        store = SqliteStore(directory / f"durable{name}.sqlite3")
        commits = Commits(store)
        started = time.perf_counter()
        for n in range(writes):
            how(store, n, payload, NOW)
        spent = time.perf_counter() - started
        print(f"store.write{name}.milliseconds_per_write {spent / writes * 1e3:.3f} ms")
        print(f"store.write{name}.commits_per_write {commits.count / writes:.2f} commits")
        print(f"store.write{name}.synced_commits_per_write {commits.synced / writes:.2f} commits")
        store.close()


def size(path: Path) -> float:
    wal = path.with_name(path.name + "-wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 2**20


def file_size(directory: Path, writes: int, payloads: list[str], prune: bool) -> None:
    path = directory / f"size-{'pruned' if prune else 'kept'}.sqlite3"
    store = SqliteStore(path, durable=False)  # the size does not depend on the sync; the time would
    start = NOW - timedelta(days=90)
    step = timedelta(days=90) / writes
    pruned_at = start
    for n in range(writes):
        at = start + step * n
        write(store, n, payloads[n % len(payloads)], at)
        if prune and at - pruned_at >= timedelta(hours=1):
            store.prune_ledger(at - LEDGER_RETENTION)
            pruned_at = at
    store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    kept = store._db().execute("SELECT COUNT(*) FROM intents").fetchone()[0]
    label = "with_pruning" if prune else "without_pruning"
    print(f"store.file.{writes}_writes.{label} {size(path):.1f} MiB")
    print(f"store.file.{writes}_writes.{label}.ledger_entries {kept} entries")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=100_000)
    parser.add_argument("--sizes", default="1000,10000,100000", help="history rows, comma-separated")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the sandbox's few unreadable records are quarantined on purpose
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        directory = Path(tmp)
        for rows in (int(size) for size in args.sizes.split(",")):
            counts(rows, directory)
        payloads = cycle(directory) or [json.dumps({"ticket_id": "1", "comment": "x" * 1000})]
        print(f"store.payload.mean_bytes {sum(map(len, payloads)) / len(payloads):.0f} bytes")
        durable_writes(directory, payloads[0])
        file_size(directory, args.writes, payloads, prune=True)
        file_size(directory, args.writes, payloads, prune=False)


if __name__ == "__main__":
    main()

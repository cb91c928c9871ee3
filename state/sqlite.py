"""The embedded state store: one SQLite file (stdlib `sqlite3`), the default for a single daemon.

Durability is the point of the ledger: an intent recorded before an API call must survive the process being
killed right after. So the connection runs in autocommit mode (every call is committed before it returns),
the journal is WAL (readers such as a status command never block the daemon) and ``synchronous=FULL`` makes
each commit survive a power cut too, not only a process crash. The one exception is a `transaction(sync=False)`
(a write's done mark and history, whose loss recovery settles): it survives a crash, and a power cut loses it
only with what followed it before the next synced commit. Every write is a single statement (upserts with
RETURNING), so there is no multi-statement transaction to leave half done; migrations (so two processes
opening a fresh file cannot both create the schema), batches and fenced writes use an explicit
``BEGIN IMMEDIATE`` (`_transaction`). `sync.py run` and `once` hold the file's lock (state/lease.py): one daemon
per file. The queries themselves are shared with PostgreSQL in state/sql.py; this module owns the file, its
pragmas and migrations.

Threads: a `SqliteStore` is for the one thread that opened it (sqlite3's ``check_same_thread`` stays on and
raises if another thread uses it). Several processes may open the same file (SQLite locks it; writers wait up
to `BUSY_TIMEOUT_S`), but sharing state between daemons on several hosts is what PostgreSQL is for.

Times are stored as fixed-width ISO-8601 UTC text ("2026-01-02T03:04:05.000006+00:00") so that text order is
time order and they read back as aware UTC datetimes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from state import StoreError, StoreUrlError, as_utc, redact_url
from state.sql import SqlStore

BUSY_TIMEOUT_S = 10.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%f000+00:00"
"""SQLite's clock in the stored format: its %f is seconds with milliseconds, padded here to microseconds."""
MEMORY = ":memory:"
_STORED_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"
"""How a time is stored (see the module docstring)."""

# Each migration is a list of statements applied in one transaction; its version is its position + 1.
# Append new migrations, never edit applied ones. postgres.py keeps the same tables and columns.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE cursors (
            instance TEXT PRIMARY KEY,
            cursor TEXT NOT NULL
        )""",
        """CREATE TABLE intents (
            seq INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX intents_by_instance_state ON intents (instance, state, created_at, seq)",
        """CREATE TABLE quarantine (
            instance TEXT NOT NULL,
            record_id TEXT NOT NULL,
            raw TEXT NOT NULL,
            error TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            seen_count INTEGER NOT NULL,
            PRIMARY KEY (instance, record_id)
        )""",
        """CREATE TABLE escalations (
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            customer TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (instance, ticket_id, tier)
        )""",
        "CREATE INDEX escalations_by_customer ON escalations (customer, at)",
    ],
    # 2: the open-ticket book (time-driven reviews) and settings (what the book was last evaluated with).
    [
        """CREATE TABLE book (
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            is_open INTEGER NOT NULL,
            updated_at TEXT NOT NULL,
            revision TEXT NOT NULL,
            raw TEXT,
            customer TEXT NOT NULL DEFAULT '',
            review_at TEXT,
            urgency INTEGER NOT NULL DEFAULT 0,
            adopt INTEGER NOT NULL DEFAULT 0,
            seen_at TEXT,
            PRIMARY KEY (instance, ticket_id)
        )""",
        "CREATE INDEX book_due ON book (instance, urgency, review_at, ticket_id) WHERE is_open = 1",
        "CREATE INDEX book_by_customer ON book (customer) WHERE is_open = 1",
        """CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ],
    # 3: leases (which daemon runs which instance; state/lease.py) and the daemons taking part.
    [
        """CREATE TABLE leases (
            instance TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            expires_at TEXT NOT NULL,
            acquired_at TEXT NOT NULL
        )""",
        """CREATE TABLE daemons (
            holder TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
    ],
    # 4 (issue 9): a ticket may enter a tier several times (a person moved it down, we escalated it again):
    # one row per entry, keyed by its time. A management track's start, plan and end (`MGMT`, `MGMT_PLAN`,
    # `MGMT_END`, `#n` for the n-th track) and the resolution stay one row each.
    [
        """CREATE TABLE escalations_by_entry (
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            customer TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (instance, ticket_id, tier, at)
        )""",
        "INSERT INTO escalations_by_entry SELECT instance, ticket_id, tier, customer, at FROM escalations",
        "DROP TABLE escalations",
        "ALTER TABLE escalations_by_entry RENAME TO escalations",
        "CREATE INDEX escalations_by_customer ON escalations (customer, at)",
        "CREATE UNIQUE INDEX escalations_once ON escalations (instance, ticket_id, tier) "
        "WHERE tier = 'RESOLVED' OR tier LIKE 'MGMT%'",
    ],
    # 5 (issue 14): customers' escalation counts kept, not recounted from the history on every ticket
    # (state/sql.py `_count_escalation`), filled from the history already there; and an index
    # for pruning old done ledger entries (`prune_ledger`).
    [
        """CREATE TABLE escalated_tickets (
            customer TEXT NOT NULL,
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            last_at TEXT NOT NULL,
            PRIMARY KEY (customer, instance, ticket_id)
        )""",
        "CREATE INDEX escalated_tickets_by_customer ON escalated_tickets (customer, last_at)",
        "CREATE INDEX escalated_tickets_by_time ON escalated_tickets (last_at, customer)",
        """CREATE TABLE escalation_days (
            customer TEXT NOT NULL,
            day TEXT NOT NULL,
            tickets INTEGER NOT NULL,
            PRIMARY KEY (customer, day)
        )""",
        "CREATE INDEX escalation_days_by_day ON escalation_days (day, customer, tickets)",
        "INSERT INTO escalated_tickets (customer, instance, ticket_id, last_at) "
        "SELECT customer, instance, ticket_id, MAX(at) FROM escalations WHERE tier <> 'RESOLVED' "
        "AND tier NOT LIKE 'MGMT_END%' AND tier NOT LIKE 'MGMT_PLAN%' "
        "GROUP BY customer, instance, ticket_id",
        "INSERT INTO escalation_days (customer, day, tickets) "
        "SELECT customer, substr(last_at, 1, 10) || 'T00:00:00.000000+00:00', COUNT(*) FROM escalated_tickets "
        "GROUP BY customer, substr(last_at, 1, 10) || 'T00:00:00.000000+00:00'",
        "CREATE INDEX intents_done ON intents (updated_at) WHERE state = 'done'",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///`` URL: relative after three slashes, absolute with four."""
    path = url[len("sqlite:///") :] if url.lower().startswith("sqlite:///") else ""
    if not path:
        raise StoreUrlError(f"state URL {redact_url(url)!r} names no file: use sqlite:///path/to/state.sqlite3")
    if "?" in path or "#" in path:
        raise StoreUrlError(f"state URL {redact_url(url)!r}: SQLite URLs take no query options")
    return path


class SqliteStore(SqlStore):
    """The `state.base.Store` on one SQLite file; see the module docstring for durability and threading.

    Only what is SQLite's own is here (opening the file, pragmas, migrations, time as text); every Store method
    is `state.sql.SqlStore`'s.
    """

    DRIVER_ERROR: ClassVar[type[Exception]] = sqlite3.Error
    NOW: ClassVar[str] = f"strftime('{_TIME_FORMAT}', 'now')"

    def __init__(self, path: str | Path, *, url: str | None = None, durable: bool = True) -> None:
        """`durable=False` skips the per-commit disk sync: for scratch stores (the demo) only."""
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        self.durable = durable
        self._in_transaction = False
        try:
            fresh = self.path != MEMORY and not Path(self.path).exists()
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
            if fresh:
                # The ledger holds ticket contents: readable by the daemon's user only (SQLite gives its
                # -wal and -shm files the same mode).
                os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state store {redact_url(self.url)}: {exc}") from exc
        try:
            with self._errors("open"):
                self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
                self._conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
                self._migrate()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(path_from_url(url), url=url)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {redact_url(self.url)} is closed")
        return self._conn

    @staticmethod
    def _encode_time(value: datetime, what: str) -> str:
        # isoformat writes the same text as the strftime below, in a third of the time (three times a booked
        # ticket), for years of four digits; strftime pads none (glibc), so older years keep its text.
        utc = as_utc(value, what)
        return utc.isoformat(timespec="microseconds") if utc.year >= 1000 else utc.strftime(_STORED_FORMAT)

    @staticmethod
    def _decode_time(value: str) -> datetime:
        return datetime.fromisoformat(value)

    def _migrate(self) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            self._too_new(current, SCHEMA_VERSION)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, applied_at) "
                    "VALUES (?, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))",
                    (version,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _many(self, action: str, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._transaction(action), self._errors(action):
            self._db().executemany(sql, rows)

    def _later(self, seconds: float) -> tuple[str, Any]:
        return f"strftime('{_TIME_FORMAT}', 'now', ?)", f"{seconds:+.3f} seconds"

    @contextmanager
    def _transaction(self, action: str) -> Iterator[None]:
        if self._in_transaction:
            yield
            return
        db = self._db()
        with self._errors(action):
            db.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            db.execute("ROLLBACK")
            raise
        self._in_transaction = False
        with self._errors(action):
            db.execute("COMMIT")

    @contextmanager
    def transaction(self, *, sync: bool = True) -> Iterator[None]:
        # sync=False commits without waiting for the disk (synchronous=NORMAL, WAL): the commit survives the
        # process being killed, and a power cut can lose it only together with everything committed after it
        # and before the next synced commit (the WAL is one sequential file), never out of order.
        relax = not sync and self.durable and not self._in_transaction
        if relax:
            with self._errors("writing"):
                self._db().execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction("writing"):
                yield
        finally:
            if relax and self._conn is not None:
                with self._errors("writing"):
                    self._conn.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

"""The shared state store: PostgreSQL through psycopg 3, so several daemons can work from one state.

Same tables, columns and semantics as state/sqlite.py, with ``timestamptz`` for times.

Transactions: the connection is in autocommit mode and every write is ONE statement (an upsert with
``ON CONFLICT``, or an ``UPDATE ... RETURNING``), so each call is its own transaction, committed before the
method returns, and concurrent daemons cannot interleave inside a read-modify-write: ``record_intent`` of the
same key from two daemons yields one row, ``mark_failed`` counts every attempt, ``quarantine`` reports a new
(record, error) exactly once. Migrations are a multi-statement transaction, serialised between daemons
by an advisory lock on the schema name; so is a write under a lease (`fenced`), whose check locks the lease
row ``FOR SHARE`` until the write commits, so that no takeover can come between the two. The queries themselves are shared with SQLite in state/sql.py; this
module owns the connection, its session settings and migrations.

Schema: the tables live in the connection's current schema, so ``?options=-csearch_path%3Dname`` in the URL
(passed through to libpq) selects one; that schema must exist. The session time zone is set to UTC and every
time read back is an aware UTC datetime.

A lost connection surfaces as `StoreError` for the call in flight; the next call reconnects. One
`PostgresStore` is for one thread (psycopg connections are thread-safe, but the store keeps no pool).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from state import StoreError, StoreUrlError, as_utc, redact_url, scrub
from state.sql import SqlStore

DEFAULT_CONNECT_TIMEOUT_S = 10

# Each migration is a list of statements applied in one transaction; its version is its position + 1.
# Append new migrations, never edit applied ones. sqlite.py keeps the same tables and columns.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE cursors (
            instance TEXT PRIMARY KEY,
            cursor TEXT NOT NULL
        )""",
        """CREATE TABLE intents (
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            key TEXT PRIMARY KEY,
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )""",
        "CREATE INDEX intents_by_instance_state ON intents (instance, state, created_at, seq)",
        """CREATE TABLE quarantine (
            instance TEXT NOT NULL,
            record_id TEXT NOT NULL,
            raw TEXT NOT NULL,
            error TEXT NOT NULL,
            first_seen TIMESTAMPTZ NOT NULL,
            last_seen TIMESTAMPTZ NOT NULL,
            seen_count INTEGER NOT NULL,
            PRIMARY KEY (instance, record_id)
        )""",
        """CREATE TABLE escalations (
            instance TEXT NOT NULL,
            ticket_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            customer TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL,
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
            updated_at TIMESTAMPTZ NOT NULL,
            revision TEXT NOT NULL,
            raw TEXT,
            customer TEXT NOT NULL DEFAULT '',
            review_at TIMESTAMPTZ,
            urgency INTEGER NOT NULL DEFAULT 0,
            adopt INTEGER NOT NULL DEFAULT 0,
            seen_at TIMESTAMPTZ,
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
            epoch BIGINT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            acquired_at TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE daemons (
            holder TEXT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        )""",
    ],
    # 4 (issue 9): a ticket may enter a tier several times (a person moved it down, we escalated it again):
    # one row per entry, keyed by its time. A management track's start, plan and end (`MGMT`, `MGMT_PLAN`,
    # `MGMT_END`, `#n` for the n-th track) and the resolution stay one row each.
    [
        "ALTER TABLE escalations DROP CONSTRAINT escalations_pkey",
        "ALTER TABLE escalations ADD PRIMARY KEY (instance, ticket_id, tier, at)",
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
            last_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (customer, instance, ticket_id)
        )""",
        "CREATE INDEX escalated_tickets_by_customer ON escalated_tickets (customer, last_at)",
        "CREATE INDEX escalated_tickets_by_time ON escalated_tickets (last_at, customer)",
        """CREATE TABLE escalation_days (
            customer TEXT NOT NULL,
            day TIMESTAMPTZ NOT NULL,
            tickets INTEGER NOT NULL,
            PRIMARY KEY (customer, day)
        )""",
        "CREATE INDEX escalation_days_by_day ON escalation_days (day, customer, tickets)",
        "INSERT INTO escalated_tickets (customer, instance, ticket_id, last_at) "
        "SELECT customer, instance, ticket_id, MAX(at) FROM escalations WHERE tier <> 'RESOLVED' "
        "AND tier NOT LIKE 'MGMT_END%' AND tier NOT LIKE 'MGMT_PLAN%' "
        "GROUP BY customer, instance, ticket_id",
        "INSERT INTO escalation_days (customer, day, tickets) "
        "SELECT customer, date_trunc('day', last_at, 'UTC'), COUNT(*) FROM escalated_tickets "
        "GROUP BY customer, date_trunc('day', last_at, 'UTC')",
        "CREATE INDEX intents_done ON intents (updated_at) WHERE state = 'done'",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class PostgresStore(SqlStore):
    """The `state.base.Store` on PostgreSQL; see the module docstring for transactions and schemas.

    Only what is PostgreSQL's own is here (connecting and reconnecting, session settings, migrations, time as
    ``timestamptz``); every Store method is `state.sql.SqlStore`'s.
    """

    PARAM: ClassVar[str] = "%s"
    DRIVER_ERROR: ClassVar[type[Exception]] = psycopg.Error
    NOW: ClassVar[str] = "clock_timestamp()"
    LOCK_SHARE: ClassVar[str] = " FOR SHARE"
    SKIP_LOCKED: ClassVar[str] = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreUrlError(
                f"state URL {redact_url(url)!r} is not a valid PostgreSQL URL: {scrub(str(exc), url)}"
            ) from None
        self._extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
        self._closed = False
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        try:
            self._connect()
            with self._errors("creating the schema"):
                self._migrate()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, **self._extra)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the state store {redact_url(self.url)}: {scrub(str(exc), self.url)}"
            ) from None  # the driver's own exception is not re-shown: only the scrubbed text above
        try:
            conn.execute("SET TIME ZONE 'UTC'")
            schema = conn.execute("SELECT current_schema()").fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"state store {redact_url(self.url)}: {scrub(str(exc), self.url)}") from exc
        if schema is None or schema[0] is None:
            conn.close()
            raise StoreError(
                f"state store {redact_url(self.url)}: the search_path names no existing schema; "
                "create the schema first or fix options=-csearch_path in the URL"
            )
        self._conn = conn
        return conn

    def _db(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._closed:
            raise StoreError(f"state store {redact_url(self.url)} is closed")
        if self._conn is None or self._conn.closed:
            return self._connect()
        return self._conn

    @staticmethod
    def _encode_time(value: datetime, what: str) -> datetime:
        return as_utc(value, what)

    @staticmethod
    def _decode_time(value: datetime) -> datetime:
        return value.astimezone(UTC)

    def _migrate(self) -> None:
        db = self._db()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext('escalation-sync:' || current_schema()))")
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            self._too_new(current, SCHEMA_VERSION)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)  # type: ignore[arg-type]  # literal DDL from this module
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def _many(self, action: str, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._errors(action):
            db = self._db()
            with db.transaction(), db.cursor() as cursor:
                cursor.executemany(sql, rows)  # type: ignore[arg-type]  # SQL built from this package's text

    def _later(self, seconds: float) -> tuple[str, Any]:
        return "clock_timestamp() + make_interval(secs => ?)", seconds

    @contextmanager
    def _transaction(self, action: str) -> Iterator[None]:
        with self._errors(action):
            db = self._db()
            with db.transaction():  # inside another: a savepoint, committed with it
                yield

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

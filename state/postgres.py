"""The shared state store: PostgreSQL through psycopg 3, so several daemons can work from one state.

Same tables, columns and semantics as state/sqlite.py, with ``timestamptz`` for times.

Transactions: the connection is in autocommit mode and every write is ONE statement (an upsert with
``ON CONFLICT``, or an ``UPDATE ... RETURNING``), so each call is its own transaction, committed before the
method returns, and concurrent daemons cannot interleave inside a read-modify-write: ``record_intent`` of the
same key from two daemons yields one row, ``mark_failed`` counts every attempt, ``quarantine`` reports a new
(record, error) exactly once. Migrations are the one multi-statement transaction, serialised between daemons
by an advisory lock on the schema name.

Schema: the tables live in the connection's current schema, so ``?options=-csearch_path%3Dname`` in the URL
(passed through to libpq) selects one; that schema must exist. The session time zone is set to UTC and every
time read back is an aware UTC datetime.

A lost connection surfaces as `StoreError` for the call in flight; the next call reconnects. One
`PostgresStore` is for one thread (psycopg connections are thread-safe, but the store keeps no pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from state import StoreError, StoreUrlError, UnknownIntentError, as_utc, redact_url, scrub
from state.base import Intent, IntentState, QuarantinedRecord

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
]
SCHEMA_VERSION = len(MIGRATIONS)

_INTENT_COLUMNS = "key, instance, ticket_id, payload, state, attempts, last_error, created_at, updated_at"
_QUARANTINE_COLUMNS = "instance, record_id, raw, error, first_seen, last_seen, seen_count"


def _intent(row: tuple[Any, ...]) -> Intent:
    key, instance, ticket_id, payload, state, attempts, last_error, created_at, updated_at = row
    return Intent(
        key=key,
        instance=instance,
        ticket_id=ticket_id,
        payload=payload,
        state=IntentState(state),
        attempts=attempts,
        last_error=last_error,
        created_at=created_at.astimezone(UTC),
        updated_at=updated_at.astimezone(UTC),
    )


def _quarantined(row: tuple[Any, ...]) -> QuarantinedRecord:
    instance, record_id, raw, error, first_seen, last_seen, count = row
    return QuarantinedRecord(
        instance=instance,
        record_id=record_id,
        raw=raw,
        error=error,
        first_seen=first_seen.astimezone(UTC),
        last_seen=last_seen.astimezone(UTC),
        count=count,
    )


class PostgresStore:
    """The `state.base.Store` on PostgreSQL; see the module docstring for transactions and schemas."""

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

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors into a StoreError naming the URL (password redacted, also from the message)."""
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(
                f"state store {redact_url(self.url)}: {action} failed: {scrub(str(exc), self.url)}"
            ) from exc

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
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"state store {redact_url(self.url)} has schema version {current}, newer than this "
                    f"escalation-sync understands ({SCHEMA_VERSION}): upgrade escalation-sync"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)  # type: ignore[arg-type]  # literal DDL from this module
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def schema_version(self) -> int:
        with self._errors("reading the schema version"):
            row = self._db().execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _one(self, action: str, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._errors(action):
            return self._db().execute(sql, params).fetchone()  # type: ignore[arg-type]

    def _all(self, action: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._errors(action):
            return self._db().execute(sql, params).fetchall()  # type: ignore[arg-type]

    def _run(self, action: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._errors(action):
            self._db().execute(sql, params)  # type: ignore[arg-type]

    # Cursors

    def get_cursor(self, instance: str) -> str | None:
        row = self._one("reading a cursor", "SELECT cursor FROM cursors WHERE instance = %s", (instance,))
        return None if row is None else str(row[0])

    def set_cursor(self, instance: str, cursor: str) -> None:
        self._run(
            "saving a cursor",
            "INSERT INTO cursors (instance, cursor) VALUES (%s, %s) "
            "ON CONFLICT (instance) DO UPDATE SET cursor = EXCLUDED.cursor",
            (instance, cursor),
        )

    # The write ledger

    def record_intent(self, instance: str, ticket_id: str, key: str, payload: str, now: datetime) -> Intent:
        at = as_utc(now, "now")
        row = self._one(
            "recording an intent",
            f"INSERT INTO intents ({_INTENT_COLUMNS}) VALUES (%s, %s, %s, %s, 'pending', 0, '', %s, %s) "
            f"ON CONFLICT (key) DO NOTHING RETURNING {_INTENT_COLUMNS}",
            (key, instance, ticket_id, payload, at, at),
        )
        if row is None:  # the key exists (maybe just inserted by another daemon): return that row unchanged
            row = self._one("reading an intent", f"SELECT {_INTENT_COLUMNS} FROM intents WHERE key = %s", (key,))
        if row is None:
            raise StoreError(f"state store {redact_url(self.url)}: intent {key!r} vanished while recording it")
        return _intent(row)

    def get_intent(self, key: str) -> Intent | None:
        row = self._one("reading an intent", f"SELECT {_INTENT_COLUMNS} FROM intents WHERE key = %s", (key,))
        return None if row is None else _intent(row)

    def _update_intent(self, key: str, action: str, sql: str, params: tuple[Any, ...]) -> Intent:
        row = self._one(action, sql + f" WHERE key = %s RETURNING {_INTENT_COLUMNS}", (*params, key))
        if row is None:
            raise UnknownIntentError(f"state store {redact_url(self.url)}: no intent with key {key!r}")
        return _intent(row)

    def mark_done(self, key: str, now: datetime) -> None:
        self._update_intent(
            key, "marking an intent done", "UPDATE intents SET state = 'done', updated_at = %s", (as_utc(now, "now"),)
        )

    def mark_failed(self, key: str, error: str, now: datetime) -> Intent:
        # The state is left alone: a pending intent stays pending, a done or dead one is not resurrected.
        return self._update_intent(
            key,
            "counting a failed attempt",
            "UPDATE intents SET attempts = attempts + 1, last_error = %s, updated_at = %s",
            (error, as_utc(now, "now")),
        )

    def mark_dead(self, key: str, error: str, now: datetime) -> None:
        # Not an attempt of its own: the caller has already counted the failure that made it give up.
        self._update_intent(
            key,
            "moving an intent to the dead letters",
            "UPDATE intents SET state = 'dead', last_error = %s, updated_at = %s",
            (error, as_utc(now, "now")),
        )

    def _intents(self, instance: str, state: IntentState) -> list[Intent]:
        rows = self._all(
            "listing intents",
            f"SELECT {_INTENT_COLUMNS} FROM intents WHERE instance = %s AND state = %s ORDER BY created_at, seq",
            (instance, state.value),
        )
        return [_intent(row) for row in rows]

    def pending(self, instance: str) -> list[Intent]:
        return self._intents(instance, IntentState.PENDING)

    def dead_letters(self, instance: str) -> list[Intent]:
        return self._intents(instance, IntentState.DEAD)

    # Quarantine

    def quarantine(self, instance: str, record_id: str, raw: str, error: str, now: datetime) -> bool:
        # One row per record. The same error again only counts; a different error is news (True) and restarts
        # the count. The latest raw payload is kept either way: it is the one to look at.
        at = as_utc(now, "now")
        row = self._one(
            "quarantining a record",
            f"INSERT INTO quarantine ({_QUARANTINE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, 1) "
            "ON CONFLICT (instance, record_id) DO UPDATE SET "
            "seen_count = CASE WHEN quarantine.error = EXCLUDED.error "
            "THEN quarantine.seen_count + 1 ELSE 1 END, "
            "first_seen = CASE WHEN quarantine.error = EXCLUDED.error "
            "THEN quarantine.first_seen ELSE EXCLUDED.first_seen END, "
            "raw = EXCLUDED.raw, error = EXCLUDED.error, last_seen = EXCLUDED.last_seen "
            "RETURNING seen_count",
            (instance, record_id, raw, error, at, at),
        )
        return row is not None and row[0] == 1

    def release(self, instance: str, record_id: str) -> None:
        self._run(
            "releasing a quarantined record",
            "DELETE FROM quarantine WHERE instance = %s AND record_id = %s",
            (instance, record_id),
        )

    def quarantined(self, instance: str) -> list[QuarantinedRecord]:
        rows = self._all(
            "listing quarantined records",
            f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE instance = %s ORDER BY first_seen, record_id",
            (instance,),
        )
        return [_quarantined(row) for row in rows]

    # Escalation history

    def record_escalation(self, instance: str, customer: str, ticket_id: str, tier: str, at: datetime) -> None:
        self._run(
            "recording an escalation",
            "INSERT INTO escalations (instance, ticket_id, tier, customer, at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (instance, ticket_id, tier) DO NOTHING",
            (instance, ticket_id, tier, customer, as_utc(at, "at")),
        )

    def tier_entries(self, instance: str, ticket_id: str) -> list[tuple[str, datetime]]:
        rows = self._all(
            "reading tier entries",
            "SELECT tier, at FROM escalations WHERE instance = %s AND ticket_id = %s ORDER BY at, tier",
            (instance, ticket_id),
        )
        return [(tier, as_utc(at)) for tier, at in rows]

    def escalations_since(self, customer: str, since: datetime) -> int:
        row = self._one(
            "counting escalations",
            "SELECT COUNT(*) FROM (SELECT DISTINCT instance, ticket_id FROM escalations "
            "WHERE customer = %s AND at >= %s) AS tickets",
            (customer, as_utc(since, "since")),
        )
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

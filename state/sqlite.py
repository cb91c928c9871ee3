"""The embedded state store: one SQLite file (stdlib `sqlite3`), the default for a single daemon.

Durability is the point of the ledger: an intent recorded before an API call must survive the process being
killed right after. So the connection runs in autocommit mode (every call is committed before it returns),
the journal is WAL (readers such as a status command never block the daemon) and ``synchronous=FULL`` makes
each commit survive a power cut too, not only a process crash. Every write is a single statement (upserts with
RETURNING), so there is no multi-statement transaction to leave half done; only migrations use an explicit
``BEGIN IMMEDIATE`` so two processes opening a fresh file cannot both create the schema.

Threads: a `SqliteStore` is for the one thread that opened it (sqlite3's ``check_same_thread`` stays on and
raises if another thread uses it). Several processes may open the same file (SQLite locks it; writers wait up
to `BUSY_TIMEOUT_S`), but sharing state between daemons on several hosts is what PostgreSQL is for.

Times are stored as fixed-width ISO-8601 UTC text ("2026-01-02T03:04:05.000006+00:00") so that text order is
time order and they read back as aware UTC datetimes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from state import StoreError, StoreUrlError, UnknownIntentError, as_utc, redact_url
from state.base import Intent, IntentState, QuarantinedRecord

BUSY_TIMEOUT_S = 10.0
MEMORY = ":memory:"

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
]
SCHEMA_VERSION = len(MIGRATIONS)

_INTENT_COLUMNS = "key, instance, ticket_id, payload, state, attempts, last_error, created_at, updated_at"
_QUARANTINE_COLUMNS = "instance, record_id, raw, error, first_seen, last_seen, seen_count"


def _ts(value: datetime, what: str = "time") -> str:
    return as_utc(value, what).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


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
        created_at=_dt(created_at),
        updated_at=_dt(updated_at),
    )


def _quarantined(row: tuple[Any, ...]) -> QuarantinedRecord:
    instance, record_id, raw, error, first_seen, last_seen, count = row
    return QuarantinedRecord(
        instance=instance,
        record_id=record_id,
        raw=raw,
        error=error,
        first_seen=_dt(first_seen),
        last_seen=_dt(last_seen),
        count=count,
    )


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///`` URL: relative after three slashes, absolute with four."""
    path = url[len("sqlite:///") :] if url.lower().startswith("sqlite:///") else ""
    if not path:
        raise StoreUrlError(f"state URL {redact_url(url)!r} names no file: use sqlite:///path/to/state.sqlite3")
    if "?" in path or "#" in path:
        raise StoreUrlError(f"state URL {redact_url(url)!r}: SQLite URLs take no query options")
    return path


class SqliteStore:
    """The `state.base.Store` on one SQLite file; see the module docstring for durability and threading."""

    def __init__(self, path: str | Path, *, url: str | None = None) -> None:
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state store {redact_url(self.url)}: {exc}") from exc
        try:
            with self._errors("open"):
                self._conn.execute("PRAGMA journal_mode=WAL").fetchall()
                self._conn.execute("PRAGMA synchronous=FULL")
                self._migrate()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(path_from_url(url), url=url)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors (disk full, read-only file, not a database...) into a StoreError naming the URL."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"state store {redact_url(self.url)}: {action} failed: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"state store {redact_url(self.url)} is closed")
        return self._conn

    def _migrate(self) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"state store {redact_url(self.url)} has schema version {current}, newer than this "
                    f"escalation-sync understands ({SCHEMA_VERSION}): upgrade escalation-sync"
                )
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

    def schema_version(self) -> int:
        row = self._one("reading the schema version", "SELECT MAX(version) FROM schema_version", ())
        return int(row[0]) if row else 0

    def _one(self, action: str, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._errors(action):
            rows = self._db().execute(sql, params).fetchall()  # drained: a RETURNING statement commits at its end
        return rows[0] if rows else None

    def _all(self, action: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._errors(action):
            return self._db().execute(sql, params).fetchall()

    def _run(self, action: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._errors(action):
            self._db().execute(sql, params)

    # Cursors

    def get_cursor(self, instance: str) -> str | None:
        row = self._one("reading a cursor", "SELECT cursor FROM cursors WHERE instance = ?", (instance,))
        return None if row is None else str(row[0])

    def set_cursor(self, instance: str, cursor: str) -> None:
        self._run(
            "saving a cursor",
            "INSERT INTO cursors (instance, cursor) VALUES (?, ?) "
            "ON CONFLICT (instance) DO UPDATE SET cursor = excluded.cursor",
            (instance, cursor),
        )

    # The write ledger

    def record_intent(self, instance: str, ticket_id: str, key: str, payload: str, now: datetime) -> Intent:
        at = _ts(now, "now")
        self._run(
            "recording an intent",
            f"INSERT INTO intents ({_INTENT_COLUMNS}) VALUES (?, ?, ?, ?, 'pending', 0, '', ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (key, instance, ticket_id, payload, at, at),
        )
        row = self._one("reading an intent", f"SELECT {_INTENT_COLUMNS} FROM intents WHERE key = ?", (key,))
        if row is None:
            raise StoreError(f"state store {redact_url(self.url)}: intent {key!r} vanished while recording it")
        return _intent(row)

    def get_intent(self, key: str) -> Intent | None:
        row = self._one("reading an intent", f"SELECT {_INTENT_COLUMNS} FROM intents WHERE key = ?", (key,))
        return None if row is None else _intent(row)

    def _update_intent(self, key: str, action: str, sql: str, params: tuple[Any, ...]) -> Intent:
        row = self._one(action, sql + f" WHERE key = ? RETURNING {_INTENT_COLUMNS}", (*params, key))
        if row is None:
            raise UnknownIntentError(f"state store {redact_url(self.url)}: no intent with key {key!r}")
        return _intent(row)

    def mark_done(self, key: str, now: datetime) -> None:
        self._update_intent(
            key, "marking an intent done", "UPDATE intents SET state = 'done', updated_at = ?", (_ts(now, "now"),)
        )

    def mark_failed(self, key: str, error: str, now: datetime) -> Intent:
        # The state is left alone: a pending intent stays pending, a done or dead one is not resurrected.
        return self._update_intent(
            key,
            "counting a failed attempt",
            "UPDATE intents SET attempts = attempts + 1, last_error = ?, updated_at = ?",
            (error, _ts(now, "now")),
        )

    def mark_dead(self, key: str, error: str, now: datetime) -> None:
        # Not an attempt of its own: the caller has already counted the failure that made it give up.
        self._update_intent(
            key,
            "moving an intent to the dead letters",
            "UPDATE intents SET state = 'dead', last_error = ?, updated_at = ?",
            (error, _ts(now, "now")),
        )

    def _intents(self, instance: str, state: IntentState) -> list[Intent]:
        rows = self._all(
            "listing intents",
            f"SELECT {_INTENT_COLUMNS} FROM intents WHERE instance = ? AND state = ? ORDER BY created_at, seq",
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
        at = _ts(now, "now")
        row = self._one(
            "quarantining a record",
            f"INSERT INTO quarantine ({_QUARANTINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 1) "
            "ON CONFLICT (instance, record_id) DO UPDATE SET "
            "seen_count = CASE WHEN quarantine.error = excluded.error "
            "THEN quarantine.seen_count + 1 ELSE 1 END, "
            "first_seen = CASE WHEN quarantine.error = excluded.error "
            "THEN quarantine.first_seen ELSE excluded.first_seen END, "
            "raw = excluded.raw, error = excluded.error, last_seen = excluded.last_seen "
            "RETURNING seen_count",
            (instance, record_id, raw, error, at, at),
        )
        return row is not None and row[0] == 1

    def release(self, instance: str, record_id: str) -> None:
        self._run(
            "releasing a quarantined record",
            "DELETE FROM quarantine WHERE instance = ? AND record_id = ?",
            (instance, record_id),
        )

    def quarantined(self, instance: str) -> list[QuarantinedRecord]:
        rows = self._all(
            "listing quarantined records",
            f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE instance = ? ORDER BY first_seen, record_id",
            (instance,),
        )
        return [_quarantined(row) for row in rows]

    # Escalation history

    def record_escalation(self, instance: str, customer: str, ticket_id: str, tier: str, at: datetime) -> None:
        self._run(
            "recording an escalation",
            "INSERT INTO escalations (instance, ticket_id, tier, customer, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (instance, ticket_id, tier) DO NOTHING",
            (instance, ticket_id, tier, customer, _ts(at, "at")),
        )

    def tier_entries(self, instance: str, ticket_id: str) -> list[tuple[str, datetime]]:
        rows = self._all(
            "reading tier entries",
            "SELECT tier, at FROM escalations WHERE instance = ? AND ticket_id = ? ORDER BY at, tier",
            (instance, ticket_id),
        )
        return [(tier, _dt(at)) for tier, at in rows]

    def escalations_since(self, customer: str, since: datetime) -> int:
        row = self._one(
            "counting escalations",
            "SELECT COUNT(*) FROM (SELECT DISTINCT instance, ticket_id FROM escalations "
            "WHERE customer = ? AND at >= ?)",
            (customer, _ts(since, "since")),
        )
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

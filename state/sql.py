"""The `state.base.Store` written once in SQL, for both backends (state/sqlite.py and state/postgres.py).

The two databases share tables, columns and every query; what differs is small and lives in the backends:
the connection (`_db`, which also decides what "closed" and "reconnect" mean), the driver's error type
(`DRIVER_ERROR`), the placeholder style (`PARAM`: queries here are written with ``?`` and rewritten for
``%s`` drivers), how a time is stored (`_encode_time`: ISO text for SQLite, ``timestamptz`` for PostgreSQL)
and read back (`_decode_time`), and the migrations that create the tables.

Every write is one statement (an upsert with ``ON CONFLICT``, or an ``UPDATE ... RETURNING``) on an
autocommit connection, so each call is its own transaction on both databases: nothing is left half done,
and concurrent writers cannot interleave inside a read-modify-write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar, Protocol, Self

from state import StoreError, UnknownIntentError, redact_url, scrub
from state.base import Intent, IntentState, QuarantinedRecord

INTENT_COLUMNS = "key, instance, ticket_id, payload, state, attempts, last_error, created_at, updated_at"
QUARANTINE_COLUMNS = "instance, record_id, raw, error, first_seen, last_seen, seen_count"


class _Cursor(Protocol):
    def fetchall(self) -> list[tuple[Any, ...]]: ...


class Connection(Protocol):
    """What the shared code needs of a DB-API connection: sqlite3's and psycopg's both fit."""

    def execute(self, sql: Any, params: Any = ..., /) -> _Cursor: ...


class SqlStore:
    """Every `Store` method over the backend hooks listed in the module docstring."""

    PARAM: ClassVar[str] = "?"
    """The driver's placeholder; queries in this class are written with ``?``."""
    DRIVER_ERROR: ClassVar[type[Exception]] = Exception
    """The driver's base exception, translated into `StoreError` by `_errors`."""

    url: str

    # Backend hooks

    def _db(self) -> Connection:
        """The open connection (reconnecting if the backend can); `StoreError` once the store is closed."""
        raise NotImplementedError

    @staticmethod
    def _encode_time(value: datetime, what: str) -> Any:
        """A time as the database stores it; a naive `value` is refused (`ValueError` naming `what`)."""
        raise NotImplementedError

    @staticmethod
    def _decode_time(value: Any) -> datetime:
        """A stored time back as an aware UTC datetime."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # Plumbing

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors (disk full, server gone...) into a StoreError naming the URL, password redacted
        from the URL and from the driver's message too."""
        try:
            yield
        except self.DRIVER_ERROR as exc:
            raise StoreError(
                f"state store {redact_url(self.url)}: {action} failed: {scrub(str(exc), self.url)}"
            ) from exc

    def _too_new(self, current: int, supported: int) -> None:
        """Refuse a schema written by a newer escalation-sync: its data may mean what this one cannot know."""
        if current > supported:
            raise StoreError(
                f"state store {redact_url(self.url)} has schema version {current}, newer than this "
                f"escalation-sync understands ({supported}): upgrade escalation-sync"
            )

    def _sql(self, sql: str) -> str:
        return sql if self.PARAM == "?" else sql.replace("?", self.PARAM)

    def _one(self, action: str, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._errors(action):
            # Drained with fetchall: SQLite commits a RETURNING statement only once its rows are all read.
            rows = self._db().execute(self._sql(sql), params).fetchall()
        return rows[0] if rows else None

    def _all(self, action: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._errors(action):
            return self._db().execute(self._sql(sql), params).fetchall()

    def _exec(self, action: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._errors(action):
            self._db().execute(self._sql(sql), params)

    def _intent(self, row: tuple[Any, ...]) -> Intent:
        key, instance, ticket_id, payload, state, attempts, last_error, created_at, updated_at = row
        return Intent(
            key=key,
            instance=instance,
            ticket_id=ticket_id,
            payload=payload,
            state=IntentState(state),
            attempts=attempts,
            last_error=last_error,
            created_at=self._decode_time(created_at),
            updated_at=self._decode_time(updated_at),
        )

    def _quarantined(self, row: tuple[Any, ...]) -> QuarantinedRecord:
        instance, record_id, raw, error, first_seen, last_seen, count = row
        return QuarantinedRecord(
            instance=instance,
            record_id=record_id,
            raw=raw,
            error=error,
            first_seen=self._decode_time(first_seen),
            last_seen=self._decode_time(last_seen),
            count=count,
        )

    def schema_version(self) -> int:
        row = self._one("reading the schema version", "SELECT MAX(version) FROM schema_version", ())
        return int(row[0]) if row else 0

    # Cursors

    def get_cursor(self, instance: str) -> str | None:
        row = self._one("reading a cursor", "SELECT cursor FROM cursors WHERE instance = ?", (instance,))
        return None if row is None else str(row[0])

    def set_cursor(self, instance: str, cursor: str) -> None:
        self._exec(
            "saving a cursor",
            "INSERT INTO cursors (instance, cursor) VALUES (?, ?) "
            "ON CONFLICT (instance) DO UPDATE SET cursor = EXCLUDED.cursor",
            (instance, cursor),
        )

    # The write ledger

    def record_intent(self, instance: str, ticket_id: str, key: str, payload: str, now: datetime) -> Intent:
        at = self._encode_time(now, "now")
        row = self._one(
            "recording an intent",
            f"INSERT INTO intents ({INTENT_COLUMNS}) VALUES (?, ?, ?, ?, 'pending', 0, '', ?, ?) "
            f"ON CONFLICT (key) DO NOTHING RETURNING {INTENT_COLUMNS}",
            (key, instance, ticket_id, payload, at, at),
        )
        if row is None:  # the key exists (maybe just inserted by another daemon): return that row unchanged
            row = self._one("reading an intent", f"SELECT {INTENT_COLUMNS} FROM intents WHERE key = ?", (key,))
        if row is None:
            raise StoreError(f"state store {redact_url(self.url)}: intent {key!r} vanished while recording it")
        return self._intent(row)

    def get_intent(self, key: str) -> Intent | None:
        row = self._one("reading an intent", f"SELECT {INTENT_COLUMNS} FROM intents WHERE key = ?", (key,))
        return None if row is None else self._intent(row)

    def _update_intent(self, key: str, action: str, sql: str, params: tuple[Any, ...]) -> Intent:
        row = self._one(action, sql + f" WHERE key = ? RETURNING {INTENT_COLUMNS}", (*params, key))
        if row is None:
            raise UnknownIntentError(f"state store {redact_url(self.url)}: no intent with key {key!r}")
        return self._intent(row)

    def mark_done(self, key: str, now: datetime) -> None:
        self._update_intent(
            key,
            "marking an intent done",
            "UPDATE intents SET state = 'done', updated_at = ?",
            (self._encode_time(now, "now"),),
        )

    def mark_failed(self, key: str, error: str, now: datetime) -> Intent:
        # The state is left alone: a pending intent stays pending, a done or dead one is not resurrected.
        return self._update_intent(
            key,
            "counting a failed attempt",
            "UPDATE intents SET attempts = attempts + 1, last_error = ?, updated_at = ?",
            (error, self._encode_time(now, "now")),
        )

    def mark_dead(self, key: str, error: str, now: datetime) -> None:
        # Not an attempt of its own: the caller has already counted the failure that made it give up.
        self._update_intent(
            key,
            "moving an intent to the dead letters",
            "UPDATE intents SET state = 'dead', last_error = ?, updated_at = ?",
            (error, self._encode_time(now, "now")),
        )

    def _intents(self, instance: str, state: IntentState) -> list[Intent]:
        rows = self._all(
            "listing intents",
            f"SELECT {INTENT_COLUMNS} FROM intents WHERE instance = ? AND state = ? ORDER BY created_at, seq",
            (instance, state.value),
        )
        return [self._intent(row) for row in rows]

    def pending(self, instance: str) -> list[Intent]:
        return self._intents(instance, IntentState.PENDING)

    def dead_letters(self, instance: str) -> list[Intent]:
        return self._intents(instance, IntentState.DEAD)

    # Quarantine

    def quarantine(self, instance: str, record_id: str, raw: str, error: str, now: datetime) -> bool:
        # One row per record. The same error again only counts; a different error is news (True) and restarts
        # the count. The latest raw payload is kept either way: it is the one to look at.
        at = self._encode_time(now, "now")
        row = self._one(
            "quarantining a record",
            f"INSERT INTO quarantine ({QUARANTINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 1) "
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
        self._exec(
            "releasing a quarantined record",
            "DELETE FROM quarantine WHERE instance = ? AND record_id = ?",
            (instance, record_id),
        )

    def quarantined(self, instance: str) -> list[QuarantinedRecord]:
        rows = self._all(
            "listing quarantined records",
            f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE instance = ? ORDER BY first_seen, record_id",
            (instance,),
        )
        return [self._quarantined(row) for row in rows]

    # Escalation history

    def record_escalation(self, instance: str, customer: str, ticket_id: str, tier: str, at: datetime) -> None:
        self._exec(
            "recording an escalation",
            "INSERT INTO escalations (instance, ticket_id, tier, customer, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (instance, ticket_id, tier) DO NOTHING",
            (instance, ticket_id, tier, customer, self._encode_time(at, "at")),
        )

    def tier_entries(self, instance: str, ticket_id: str) -> list[tuple[str, datetime]]:
        rows = self._all(
            "reading tier entries",
            "SELECT tier, at FROM escalations WHERE instance = ? AND ticket_id = ? ORDER BY at, tier",
            (instance, ticket_id),
        )
        return [(tier, self._decode_time(at)) for tier, at in rows]

    def escalations_since(self, customer: str, since: datetime) -> int:
        row = self._one(
            "counting escalations",
            "SELECT COUNT(*) FROM (SELECT DISTINCT instance, ticket_id FROM escalations "
            "WHERE customer = ? AND at >= ?) AS tickets",
            (customer, self._encode_time(since, "since")),
        )
        return int(row[0]) if row else 0

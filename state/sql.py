"""The `state.base.Store` written once in SQL, for both backends (state/sqlite.py and state/postgres.py).

The two databases share tables, columns and every query; what differs is small and lives in the backends:
the connection (`_db`, which also decides what "closed" and "reconnect" mean), the driver's error type
(`DRIVER_ERROR`), the placeholder style (`PARAM`: queries here are written with ``?`` and rewritten for
``%s`` drivers), how a time is stored (`_encode_time`: ISO text for SQLite, ``timestamptz`` for PostgreSQL)
and read back (`_decode_time`), and the migrations that create the tables.

Every write is one transaction on an autocommit connection: mostly one statement (an upsert with
``ON CONFLICT``, or an ``UPDATE ... RETURNING``), so nothing is left half done and concurrent writers cannot
interleave inside a read-modify-write; `record_escalation` is the history row and the customer counts it moves
(`_count_escalation`), in one transaction. `transaction()` joins several calls into one commit (the cycle
commits a write's done mark and its history together), and `fenced` runs a write made for an instance under
its lease (state/lease.py) in one transaction with the lease check.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, Self

from state import LeaseLostError, StoreError, UnknownIntentError, as_utc, redact_url, scrub
from state.base import BookEntry, Fence, Intent, IntentState, Lease, QuarantinedRecord

BOOK_COLUMNS = "ticket_id, is_open, updated_at, revision, raw, customer, review_at, urgency, adopt, seen_at"
_IN_CHUNK = 500
"""Ids per `IN (...)` list: well under SQLite's and PostgreSQL's parameter limits."""


def _in_chunks(ids: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """`ids` in slices of _IN_CHUNK, each with its `?, ?, ...` placeholder list."""
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        yield chunk, ", ".join("?" for _ in chunk)


INTENT_COLUMNS = "key, instance, ticket_id, payload, state, attempts, last_error, created_at, updated_at"
QUARANTINE_COLUMNS = "instance, record_id, raw, error, first_seen, last_seen, seen_count"
LEASE_COLUMNS = "instance, holder, epoch, acquired_at, expires_at"
RESOLVED_TIER = "RESOLVED"
"""The history row of a ticket's resolution (runtime/cycle.py): no count of escalations includes it."""
_NOT_ESCALATIONS = ("MGMT_END", "MGMT_PLAN")
"""History rows of a management track's plan and end (`#n` for a later track): events, not escalations."""


def counts_as_escalation(tier: str) -> bool:
    """Whether a history row is an escalation the customer counts include (a tier entry or a track's start)."""
    return tier != RESOLVED_TIER and not tier.startswith(_NOT_ESCALATIONS)


_COUNT_RACES = 5
_DAY = timedelta(days=1)


def _day(at: datetime) -> datetime:
    """The start of `at`'s UTC day (`at` is aware UTC): the key of the day counts."""
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


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

    NOW: ClassVar[str] = "CURRENT_TIMESTAMP"
    """SQL for the database's clock now, in the stored time format: every lease time is the database's."""
    LOCK_SHARE: ClassVar[str] = ""
    """Appended to the lease check of a fenced write: locks the lease row until the write commits."""
    SKIP_LOCKED: ClassVar[str] = ""
    """Appended to the lease claim's row selection: rows another daemon is claiming are skipped."""

    url: str

    # Backend hooks

    def _later(self, seconds: float) -> tuple[str, Any]:
        """SQL (with one ``?``) and its parameter for the database's clock `seconds` from now."""
        raise NotImplementedError

    def _transaction(self, action: str) -> AbstractContextManager[None]:
        """One transaction around several calls (joined, not nested, if one is open already)."""
        raise NotImplementedError

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

    def _many(self, action: str, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run `sql` once per row, all in one transaction (one disk sync, not one per row)."""
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

    def _count(self, action: str, sql: str, params: tuple[Any, ...]) -> int:
        """Run an UPDATE or DELETE and say how many rows it touched, from the driver's row count: fetching a
        `RETURNING 1` row each only to count them built a list of every row at once (some 56 MB for the
        1,000,000 done intents or open tickets a large backlog leaves, issue 14's memory bound)."""
        with self._errors(action):
            return max(self._db().execute(self._sql(sql), params).rowcount, 0)

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

    def prune_ledger(self, before: datetime) -> int:
        # Done entries only: a pending one is a write whose outcome is unknown and a dead one waits for a person.
        return self._count(
            "pruning the ledger",
            "DELETE FROM intents WHERE state = 'done' AND updated_at < ?",
            (self._encode_time(before, "before"),),
        )

    def transaction(self, *, sync: bool = True) -> AbstractContextManager[None]:
        return self._transaction("writing")  # PostgreSQL: every commit is synced (see SqliteStore.transaction)

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
        """One row per entry into a tier (a re-escalation after a person moved the ticket down is a new entry);
        replaying the same entry, a second management start or a second resolution adds nothing."""
        with self._transaction("recording an escalation"):
            inserted = self._one(
                "recording an escalation",
                "INSERT INTO escalations (instance, ticket_id, tier, customer, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (instance, ticket_id, tier, customer, self._encode_time(at, "at")),
            )
            # The counts follow the history rows: an escalation the history ignores (a repeat) moves no count.
            if inserted is not None and counts_as_escalation(tier):
                self._count_escalation(customer, instance, ticket_id, as_utc(at, "at"))

    def _count_escalation(self, customer: str, instance: str, ticket_id: str, at: datetime) -> None:
        """Keep the customer counts (`escalated_tickets`, `escalation_days`) true after an escalation at `at`.

        A ticket counts for a customer from its latest escalation: `escalated_tickets` keeps that time, one row
        per (customer, instance, ticket) however often the ticket escalates, and `escalation_days` how many of
        a customer's tickets have their latest escalation on each UTC day. A count over 30 days then reads at
        most 31 day rows and the tickets of one boundary day, whatever the history's size. The old time is read,
        then replaced only if it is still the one read: a concurrent writer (another daemon during a lease
        takeover) makes the loop read again instead of counting a ticket twice.
        """
        key = (customer, instance, ticket_id)
        for _ in range(_COUNT_RACES):
            row = self._one(
                "counting an escalation",
                "SELECT last_at FROM escalated_tickets WHERE customer = ? AND instance = ? AND ticket_id = ?",
                key,
            )
            if row is None:
                inserted = self._one(
                    "counting an escalation",
                    "INSERT INTO escalated_tickets (customer, instance, ticket_id, last_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (customer, instance, ticket_id) DO NOTHING RETURNING 1",
                    (*key, self._encode_time(at, "at")),
                )
                if inserted is not None:
                    self._count_day(customer, _day(at), 1)
                    return
                continue
            before = self._decode_time(row[0])
            if before >= at:
                return  # an older (or the same) escalation: the ticket's latest is unchanged
            moved = self._one(
                "counting an escalation",
                "UPDATE escalated_tickets SET last_at = ? "
                "WHERE customer = ? AND instance = ? AND ticket_id = ? AND last_at = ? RETURNING 1",
                (self._encode_time(at, "at"), *key, row[0]),
            )
            if moved is not None:
                if _day(before) != _day(at):
                    self._count_day(customer, _day(before), -1)
                    self._count_day(customer, _day(at), 1)
                return
        raise StoreError(
            f"state store {redact_url(self.url)}: the escalation count of ticket {ticket_id!r} kept changing "
            f"under concurrent writers ({_COUNT_RACES} tries)"
        )

    def _count_day(self, customer: str, day: datetime, change: int) -> None:
        self._exec(
            "counting an escalation",
            "INSERT INTO escalation_days (customer, day, tickets) VALUES (?, ?, ?) "
            "ON CONFLICT (customer, day) DO UPDATE SET tickets = escalation_days.tickets + EXCLUDED.tickets",
            (customer, self._encode_time(day, "day"), change),
        )

    def tier_entries(self, instance: str, ticket_id: str) -> list[tuple[str, datetime]]:
        rows = self._all(
            "reading tier entries",
            "SELECT tier, at FROM escalations WHERE instance = ? AND ticket_id = ? ORDER BY at, tier",
            (instance, ticket_id),
        )
        return [(tier, self._decode_time(at)) for tier, at in rows]

    def escalations_since(self, customer: str, since: datetime) -> int:
        # Whole days after the one `since` falls in from the day counts, that day's tickets one by one.
        first, boundary = self._window(since)
        row = self._one(
            "counting escalations",
            "SELECT (SELECT COALESCE(SUM(tickets), 0) FROM escalation_days WHERE customer = ? AND day >= ?) + "
            "(SELECT COUNT(*) FROM escalated_tickets WHERE customer = ? AND last_at >= ? AND last_at < ?)",
            (customer, boundary, customer, first, boundary),
        )
        return int(row[0]) if row else 0

    def _window(self, since: datetime) -> tuple[Any, Any]:
        """`since` and the start of the next UTC day, encoded: the two bounds of a count's boundary day."""
        return self._encode_time(since, "since"), self._encode_time(_day(as_utc(since, "since")) + _DAY, "since")

    # The open-ticket book

    def _entry(self, row: tuple[Any, ...]) -> BookEntry:
        ticket_id, is_open, updated_at, revision, raw, customer, review_at, urgency, adopt, seen_at = row
        return BookEntry(
            ticket_id=ticket_id,
            is_open=bool(is_open),
            updated_at=self._decode_time(updated_at),
            revision=revision,
            raw=raw,
            customer=customer,
            review_at=None if review_at is None else self._decode_time(review_at),
            urgency=int(urgency),
            adopt=bool(adopt),
            seen_at=None if seen_at is None else self._decode_time(seen_at),
        )

    def _time_or_none(self, value: datetime | None, what: str) -> Any:
        return None if value is None else self._encode_time(value, what)

    def book_put(self, instance: str, entries: Sequence[BookEntry]) -> None:
        if not entries:
            return
        # A page's entries share their `seen_at` (the cycle's now), and most due ones their `review_at`: each
        # distinct moment is encoded once a call, not once an entry.
        moments: dict[datetime, Any] = {}

        def moment(value: datetime | None, what: str) -> Any:
            if value is None:
                return None
            encoded = moments.get(value)
            if encoded is None:
                encoded = moments[value] = self._encode_time(value, what)
            return encoded

        rows = [
            (
                instance,
                entry.ticket_id,
                int(entry.is_open),
                self._encode_time(entry.updated_at, "updated_at"),
                entry.revision,
                entry.raw,
                entry.customer,
                moment(entry.review_at, "review_at"),
                entry.urgency,
                int(entry.adopt),
                moment(entry.seen_at, "seen_at"),
            )
            for entry in entries
        ]
        self._many(
            "saving tickets in the book",
            self._sql(
                f"INSERT INTO book (instance, {BOOK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (instance, ticket_id) DO UPDATE SET is_open = EXCLUDED.is_open, "
                "updated_at = EXCLUDED.updated_at, revision = EXCLUDED.revision, raw = EXCLUDED.raw, "
                "customer = EXCLUDED.customer, review_at = EXCLUDED.review_at, urgency = EXCLUDED.urgency, "
                "seen_at = EXCLUDED.seen_at WHERE book.updated_at <= EXCLUDED.updated_at"
            ),
            rows,
        )

    def book_schedule(self, instance: str, updates: Sequence[tuple[str, datetime | None, int, bool]]) -> None:
        if not updates:
            return
        rows = [
            (self._time_or_none(review_at, "review_at"), urgency, int(adopt), instance, ticket_id)
            for ticket_id, review_at, urgency, adopt in updates
        ]
        self._many(
            "scheduling reviews",
            self._sql("UPDATE book SET review_at = ?, urgency = ?, adopt = ? WHERE instance = ? AND ticket_id = ?"),
            rows,
        )

    def book_due(self, instance: str, now: datetime, limit: int) -> list[BookEntry]:
        # Keys first, then the rows: ordering the raw records themselves would make the database sort every due
        # record in memory (hundreds of MB for a book that is all due) to hand back a few hundred.
        keys = self._all(
            "reading due reviews",
            "SELECT ticket_id FROM book WHERE instance = ? AND is_open = 1 AND review_at <= ? "
            "ORDER BY urgency, review_at, ticket_id LIMIT ?",
            (instance, self._encode_time(now, "now"), limit),
        )
        order = {key: index for index, (key,) in enumerate(keys)}
        found: list[BookEntry] = []
        ids = list(order)
        for chunk, marks in _in_chunks(ids):
            rows = self._all(
                "reading due reviews",
                f"SELECT {BOOK_COLUMNS} FROM book WHERE instance = ? AND ticket_id IN ({marks})",
                (instance, *chunk),
            )
            found.extend(self._entry(row) for row in rows)
        return sorted(found, key=lambda entry: order[entry.ticket_id])

    def book_entry(self, instance: str, ticket_id: str) -> BookEntry | None:
        row = self._one(
            "reading a book entry",
            f"SELECT {BOOK_COLUMNS} FROM book WHERE instance = ? AND ticket_id = ?",
            (instance, ticket_id),
        )
        return None if row is None else self._entry(row)

    def book_mark_due(self, now: datetime, *, instance: str | None = None, customer: str | None = None) -> int:
        if (instance is None) == (customer is None):
            raise ValueError("book_mark_due needs exactly one of instance and customer")
        at = self._encode_time(now, "now")
        column, value = ("instance", instance) if instance is not None else ("customer", customer)
        return self._count(
            "marking reviews due",
            f"UPDATE book SET review_at = ? WHERE {column} = ? AND is_open = 1 AND (review_at IS NULL OR review_at > ?)",
            (at, value, at),
        )

    def book_stats(self, instance: str, now: datetime) -> tuple[int, int]:
        row = self._one(
            "counting the book",
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN review_at <= ? THEN 1 ELSE 0 END), 0) FROM book "
            "WHERE instance = ? AND is_open = 1",
            (self._encode_time(now, "now"), instance),
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def book_purge(self, instance: str, before: datetime) -> int:
        return self._count(
            "forgetting old tombstones",
            "DELETE FROM book WHERE instance = ? AND is_open = 0 AND seen_at < ?",
            (instance, self._encode_time(before, "before")),
        )

    # Settings (fingerprints of what the book was evaluated with)

    def get_setting(self, key: str) -> str | None:
        row = self._one("reading a setting", "SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        self._exec(
            "saving a setting",
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    # History in bulk, for reviews of many tickets

    def tier_entries_many(self, instance: str, ticket_ids: Sequence[str]) -> dict[str, list[tuple[str, datetime]]]:
        found: dict[str, list[tuple[str, datetime]]] = {}
        ids = list(dict.fromkeys(ticket_ids))
        for chunk, marks in _in_chunks(ids):
            rows = self._all(
                "reading tier entries",
                f"SELECT ticket_id, tier, at FROM escalations WHERE instance = ? AND ticket_id IN ({marks}) "
                "ORDER BY at, tier",
                (instance, *chunk),
            )
            for ticket_id, tier, at in rows:
                found.setdefault(ticket_id, []).append((tier, self._decode_time(at)))
        return found

    def book_seen_since(self, instance: str, ticket_ids: Sequence[str], since: datetime) -> set[str]:
        seen: set[str] = set()
        ids = list(dict.fromkeys(ticket_ids))
        at = self._encode_time(since, "since")
        for chunk, marks in _in_chunks(ids):
            rows = self._all(
                "reading when tickets were seen",
                f"SELECT ticket_id FROM book WHERE instance = ? AND seen_at >= ? AND ticket_id IN ({marks})",
                (instance, at, *chunk),
            )
            seen.update(ticket_id for (ticket_id,) in rows)
        return seen

    def escalation_counts(self, since: datetime) -> dict[str, int]:
        first, boundary = self._window(since)
        rows = self._all(
            "counting escalations",
            # Grouped once, outside: grouping inside would make SQLite walk every day of every customer in
            # customer order instead of the window's days by the day index.
            "SELECT customer, SUM(tickets) FROM ("
            "SELECT customer, tickets FROM escalation_days WHERE day >= ? "
            "UNION ALL SELECT customer, 1 AS tickets FROM escalated_tickets "
            "WHERE last_at >= ? AND last_at < ?) AS counts GROUP BY customer",
            (boundary, first, boundary),
        )
        return {customer: int(count) for customer, count in rows if count}

    # Leases (state/lease.py)

    def _lease(self, row: tuple[Any, ...]) -> Lease:
        instance, holder, epoch, acquired_at, expires_at = row
        return Lease(instance, holder, int(epoch), self._decode_time(acquired_at), self._decode_time(expires_at))

    def daemon_heartbeat(self, holder: str, ttl: float) -> int:
        later, param = self._later(ttl)
        with self._transaction("announcing this daemon"):
            self._exec(
                "announcing this daemon",
                f"INSERT INTO daemons (holder, started_at, expires_at) VALUES (?, {self.NOW}, {later}) "
                "ON CONFLICT (holder) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                (holder, param),
            )
            self._exec("forgetting stopped daemons", f"DELETE FROM daemons WHERE expires_at <= {self.NOW}", ())
            row = self._one("counting daemons", f"SELECT COUNT(*) FROM daemons WHERE expires_at > {self.NOW}", ())
        return int(row[0]) if row else 1

    def daemon_leave(self, holder: str) -> None:
        self._exec("leaving", "DELETE FROM daemons WHERE holder = ?", (holder,))

    def leases_renew(self, holder: str, instances: Sequence[str], ttl: float) -> list[Lease]:
        if not instances:
            return []
        later, param = self._later(ttl)
        marks = ", ".join("?" for _ in instances)
        rows = self._all(
            "renewing leases",
            f"UPDATE leases SET expires_at = {later} WHERE holder = ? AND instance IN ({marks}) "
            f"RETURNING {LEASE_COLUMNS}",
            (param, holder, *instances),
        )
        return sorted((self._lease(row) for row in rows), key=lambda lease: lease.instance)

    def leases_claim(self, holder: str, instances: Sequence[str], ttl: float, limit: int) -> list[Lease]:
        if not instances or limit <= 0:
            return []
        self._many(
            "registering leases",
            self._sql(
                "INSERT INTO leases (instance, holder, epoch, expires_at, acquired_at) "
                f"VALUES (?, '', 0, {self.NOW}, {self.NOW}) ON CONFLICT (instance) DO NOTHING"
            ),
            [(instance,) for instance in instances],
        )
        later, param = self._later(ttl)
        marks = ", ".join("?" for _ in instances)
        # The row selection locks what it takes and skips what another daemon's claim has locked, so racing
        # daemons share the free leases out instead of queueing on the same rows. A lease of our own is taken
        # again too (a new epoch): the caller stepped back from it after a refused write.
        rows = self._all(
            "claiming leases",
            f"UPDATE leases SET holder = ?, epoch = epoch + 1, acquired_at = {self.NOW}, expires_at = {later} "
            f"WHERE instance IN (SELECT instance FROM leases WHERE instance IN ({marks}) AND (holder = ? "
            f"OR expires_at <= {self.NOW}) ORDER BY instance LIMIT ?{self.SKIP_LOCKED}) RETURNING {LEASE_COLUMNS}",
            (holder, param, *instances, holder, limit),
        )
        return sorted((self._lease(row) for row in rows), key=lambda lease: lease.instance)

    def leases_release(self, holder: str, instances: Sequence[str]) -> None:
        if not instances:
            return
        marks = ", ".join("?" for _ in instances)
        self._exec(
            "releasing leases",
            f"UPDATE leases SET holder = '', expires_at = {self.NOW} WHERE holder = ? AND instance IN ({marks})",
            (holder, *instances),
        )

    def leases_next_expiry(self, holder: str, instances: Sequence[str]) -> float | None:
        if not instances:
            return None
        marks = ", ".join("?" for _ in instances)
        row = self._one(
            "reading lease expiries",
            f"SELECT MIN(expires_at), {self.NOW} FROM leases WHERE instance IN ({marks}) "
            "AND holder <> '' AND holder <> ?",
            (*instances, holder),
        )
        if row is None or row[0] is None:
            return None
        return (self._decode_time(row[0]) - self._decode_time(row[1])).total_seconds()

    def leases(self) -> list[Lease]:
        rows = self._all("listing leases", f"SELECT {LEASE_COLUMNS} FROM leases ORDER BY instance", ())
        return [self._lease(row) for row in rows]

    def lease_check(self, fence: Fence) -> None:
        row = self._one(
            "checking the lease",
            "SELECT 1 FROM leases WHERE instance = ? AND holder = ? AND epoch = ? "
            f"AND expires_at > {self.NOW}{self.LOCK_SHARE}",
            (fence.instance, fence.holder, fence.epoch),
        )
        if row is None:
            raise LeaseLostError(
                f"state store {redact_url(self.url)}: the lease of {fence.instance!r} is no longer held by "
                f"{fence.holder} at epoch {fence.epoch} (taken over or expired): write refused"
            )

    @contextmanager
    def fenced(self, fence: Fence) -> Iterator[None]:
        with self._transaction("writing under a lease"):
            self.lease_check(fence)
            yield

    # Dry runs

    def snapshot(self, instance: str) -> SqlStore:
        from state.sqlite import SqliteStore

        copy = SqliteStore(":memory:")
        cursor = self.get_cursor(instance)
        if cursor is not None:
            copy.set_cursor(instance, cursor)
        for suffix in (SCAN_SUFFIX,):
            scan = self.get_cursor(instance + suffix)
            if scan is not None:
                copy.set_cursor(instance + suffix, scan)
        rows = self._all("copying the book", f"SELECT {BOOK_COLUMNS} FROM book WHERE instance = ?", (instance,))
        copy.book_put(instance, [self._entry(row) for row in rows])
        for row in self._all("copying settings", "SELECT key, value FROM settings", ()):
            copy.set_setting(str(row[0]), str(row[1]))
        history = self._all(
            "copying escalations", "SELECT instance, ticket_id, tier, customer, at FROM escalations", ()
        )
        with copy.transaction():
            for other, ticket_id, tier, customer, at in history:
                copy.record_escalation(other, customer, ticket_id, tier, self._decode_time(at))
        return copy


SCAN_SUFFIX = "#open-scan"
"""The cursors-table key suffix under which an instance's scan of all open tickets keeps its progress."""

"""The state store contract, shared by the SQLite and PostgreSQL implementations.

The ledger is what makes a crash harmless: a write-back is recorded as an intent (with its whole payload)
before the API call, marked done after it, and a pending intent is retried on the next cycle. A cursor is
committed only after every ticket of its page is done or durably pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

LEDGER_RETENTION = timedelta(days=30)
"""How long a done ledger entry is kept by default (`[state] ledger_retention_days`): long past any retry."""


class IntentState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True)
class Intent:
    key: str
    instance: str
    ticket_id: str
    payload: str
    """The WriteBack as JSON, enough to retry it without re-polling."""
    state: IntentState
    attempts: int
    last_error: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class QuarantinedRecord:
    instance: str
    record_id: str
    raw: str
    error: str
    first_seen: datetime
    last_seen: datetime
    count: int


@dataclass(frozen=True)
class BookEntry:
    """One ticket in the open-ticket book: what a review needs to evaluate it again without the network.

    The raw record is kept (not the normalized ticket) so that a mapping edited since the last poll is applied
    at the next review. A terminal or deleted ticket stays as a tombstone (`is_open` False, no raw) so that a
    stale read of it (a lagging search index) cannot put it back in the book.
    """

    ticket_id: str
    is_open: bool
    updated_at: datetime
    """The platform's last-update time of the record: a newer one replaces the entry, an older one never."""
    revision: str
    raw: str | None
    """The RawRecord as JSON (runtime.codec), None for tombstones."""
    customer: str = ""
    review_at: datetime | None = None
    """When to evaluate it again (None: nothing changes without new input)."""
    urgency: int = 0
    """Order among due entries, lowest first: breached before not, then priority."""
    adopt: bool = False
    """First seen with its escalation already overdue during an adoption sweep: write tiers and tags only."""
    seen_at: datetime | None = None


@dataclass(frozen=True)
class Fence:
    """Who may write for an instance: the lease's holder at this epoch. A store write made under a fence is
    refused (`state.LeaseLostError`) unless the lease still has this holder and epoch and has not expired, checked
    in the write's own transaction."""

    instance: str
    holder: str
    epoch: int


@dataclass(frozen=True)
class Lease:
    """One instance's lease: `holder` ("" once released) runs it until `expires_at` unless it renews;
    `epoch` grows by one at every change of holder, so a write fenced with an older epoch is refused."""

    instance: str
    holder: str
    epoch: int
    acquired_at: datetime
    expires_at: datetime

    @property
    def fence(self) -> Fence:
        return Fence(self.instance, self.holder, self.epoch)


class Store(Protocol):
    def get_cursor(self, instance: str) -> str | None: ...

    def set_cursor(self, instance: str, cursor: str) -> None: ...

    def record_intent(self, instance: str, ticket_id: str, key: str, payload: str, now: datetime) -> Intent:
        """Insert a pending intent; if `key` exists already, return the existing row unchanged."""
        ...

    def get_intent(self, key: str) -> Intent | None: ...

    def mark_done(self, key: str, now: datetime) -> None: ...

    def mark_failed(self, key: str, error: str, now: datetime) -> Intent:
        """Count a failed attempt, keep the intent pending, and return it (attempts incremented)."""
        ...

    def mark_dead(self, key: str, error: str, now: datetime) -> None: ...

    def prune_ledger(self, before: datetime) -> int:
        """Forget done intents last updated before `before` (every instance's); returns how many.

        Pending and dead intents are never pruned. A done entry is what stops a handoff note being posted
        twice; once it is pruned, the note's key embedded in the posted comment is what a writer checks on the
        platform instead (runtime/cycle.py `_posted_before`)."""
        ...

    def transaction(self, *, sync: bool = True) -> AbstractContextManager[None]:
        """One commit for every write made inside (joined, not nested, inside another): all or none.

        `sync=False` lets the store commit without waiting for the disk where losing that commit in a power cut
        is harmless (SQLite only): it can then be lost only with every later unsynced commit, never before an
        earlier one."""
        ...

    def pending(self, instance: str) -> list[Intent]:
        """Pending intents, oldest first."""
        ...

    def dead_letters(self, instance: str) -> list[Intent]: ...

    def quarantine(self, instance: str, record_id: str, raw: str, error: str, now: datetime) -> bool:
        """Store a record that could not be normalized; True the first time this (record, error) is seen."""
        ...

    def release(self, instance: str, record_id: str) -> None:
        """Forget a quarantined record once it normalizes again."""
        ...

    def quarantined(self, instance: str) -> list[QuarantinedRecord]: ...

    def record_escalation(self, instance: str, customer: str, ticket_id: str, tier: str, at: datetime) -> None:
        """Remember an entry into a tier (idempotent per instance, ticket, tier and time; MGMT and RESOLVED once)."""
        ...

    def tier_entries(self, instance: str, ticket_id: str) -> list[tuple[str, datetime]]:
        """When we moved this ticket into each tier, oldest first: the exact tier-entry times the engine's
        acknowledgment and time-at-tier clocks need, which most platforms do not expose on the ticket."""
        ...

    def escalations_since(self, customer: str, since: datetime) -> int:
        """Distinct tickets of this customer escalated since `since`, across instances."""
        ...

    # The open-ticket book (see BookEntry)

    def book_put(self, instance: str, entries: Sequence[BookEntry]) -> None:
        """Insert or replace entries in one transaction; an entry older than the stored one is ignored, and
        `adopt` is only ever set by an insert."""
        ...

    def book_schedule(self, instance: str, updates: Sequence[tuple[str, datetime | None, int, bool]]) -> None:
        """Set (review_at, urgency, adopt) of these tickets, in one transaction."""
        ...

    def book_due(self, instance: str, now: datetime, limit: int) -> list[BookEntry]:
        """Open entries whose review_at has passed, most urgent first."""
        ...

    def book_entry(self, instance: str, ticket_id: str) -> BookEntry | None: ...

    def book_mark_due(self, now: datetime, *, instance: str | None = None, customer: str | None = None) -> int:
        """Make open entries of an instance (or of a customer, across instances) due now; returns how many."""
        ...

    def book_stats(self, instance: str, now: datetime) -> tuple[int, int]:
        """(open entries, of which due)."""
        ...

    def book_purge(self, instance: str, before: datetime) -> int:
        """Forget tombstones last seen before `before`."""
        ...

    def get_setting(self, key: str) -> str | None: ...

    def set_setting(self, key: str, value: str) -> None: ...

    def tier_entries_many(self, instance: str, ticket_ids: Sequence[str]) -> dict[str, list[tuple[str, datetime]]]:
        """`tier_entries` of several tickets in one query."""
        ...

    def escalation_counts(self, since: datetime) -> dict[str, int]:
        """`escalations_since` of every customer at once."""
        ...

    def book_seen_since(self, instance: str, ticket_ids: Sequence[str], since: datetime) -> set[str]:
        """Which of these tickets the book last saw at or after `since` (a cycle asks which its poll has
        booked already, instead of holding every polled id in memory)."""
        ...

    # Leases (state/lease.py): times are the database's clock, so daemons on hosts whose clocks differ agree.

    def daemon_heartbeat(self, holder: str, ttl: float) -> int:
        """Say `holder` is alive for `ttl` seconds more; returns how many daemons are alive (itself included)."""
        ...

    def daemon_leave(self, holder: str) -> None: ...

    def leases_renew(self, holder: str, instances: Sequence[str], ttl: float) -> list[Lease]:
        """Extend the leases `holder` still holds among `instances`; the ones it lost are not returned."""
        ...

    def leases_claim(self, holder: str, instances: Sequence[str], ttl: float, limit: int) -> list[Lease]:
        """Take up to `limit` of `instances` whose lease is free, expired or `holder`'s own (epoch + 1); rows
        another daemon is claiming at this moment are skipped, not waited for."""
        ...

    def leases_release(self, holder: str, instances: Sequence[str]) -> None:
        """Give these leases up at once (SIGTERM, surplus): another daemon may claim them at its next heartbeat."""
        ...

    def leases_next_expiry(self, holder: str, instances: Sequence[str]) -> float | None:
        """Seconds until the first of `instances` held by another daemon could lapse (None: none is held)."""
        ...

    def leases(self) -> list[Lease]:
        """Every lease, by instance."""
        ...

    def lease_check(self, fence: Fence) -> None:
        """Raise `state.LeaseLostError` unless `fence` still holds its lease."""
        ...

    def fenced(self, fence: Fence) -> AbstractContextManager[None]:
        """A transaction whose writes commit only if `fence` holds its lease (checked first, and the lease row
        locked against a takeover until the commit); `state.LeaseLostError` otherwise."""
        ...

    def snapshot(self, instance: str) -> Store:
        """A throwaway in-memory copy of what a cycle of `instance` reads and writes: dry runs work on it."""
        ...

    def close(self) -> None: ...

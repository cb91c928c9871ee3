"""The state store contract, shared by the SQLite and PostgreSQL implementations.

The ledger is what makes a crash harmless: a write-back is recorded as an intent (with its whole payload)
before the API call, marked done after it, and a pending intent is retried on the next cycle. A cursor is
committed only after every ticket of its page is done or durably pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


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
        """Remember an escalation (idempotent per instance, ticket and tier)."""
        ...

    def tier_entries(self, instance: str, ticket_id: str) -> list[tuple[str, datetime]]:
        """When we moved this ticket into each tier, oldest first: the exact tier-entry times the engine's
        acknowledgment and time-at-tier clocks need, which most platforms do not expose on the ticket."""
        ...

    def escalations_since(self, customer: str, since: datetime) -> int:
        """Distinct tickets of this customer escalated since `since`, across instances."""
        ...

    def close(self) -> None: ...

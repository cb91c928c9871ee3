"""One sync cycle for one instance: recover the ledger, poll, normalize, evaluate, plan, write, move the cursor.

The order is what makes a crash harmless (DESIGN.md, principles 1, 2 and 7):
- a write-back is recorded in the ledger as a pending intent before the API call and marked done after it;
  pending intents are recovered first on the next cycle, checking the ticket's comments for the intent's
  key before anything is re-sent, so a comment is never posted twice;
- the cursor of a page is committed only once every ticket on it is written, durably pending, dead-lettered
  or quarantined; anything unexpected aborts the cycle before the cursor moves;
- a record that cannot be normalized is quarantined with its error and the cycle goes on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from connectors.base import (
    AuthError,
    ConflictError,
    Connector,
    PermanentWriteError,
    RawRecord,
    TransientError,
)
from engine.escalate import evaluate
from engine.model import Comment, Decision, EscalationHistory, Status, Ticket, Tier, WriteBack
from engine.plan import plan
from engine.policy import Policy
from mappings import NormalizeError, PlatformMapping
from runtime.codec import decode, encode
from state.base import IntentState, Store

log = logging.getLogger("escalation_sync.cycle")

REPEAT_WINDOW = timedelta(days=30)
TIER_NAMES = frozenset(tier.value for tier in Tier)
MANAGEMENT = "MGMT"
"""Recorded beside the tier entries when the management track starts: its clocks run from then on."""


@dataclass(frozen=True)
class Event:
    """Something worth telling a person about, as it happens (the demo prints these)."""

    kind: str
    instance: str
    ticket_id: str
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CycleReport:
    instance: str
    platform: str
    started_at: datetime
    dry_run: bool = False
    tickets_seen: int = 0
    pages: int = 0
    quarantined: int = 0
    tombstones: int = 0
    escalations: Counter[str] = field(default_factory=Counter)
    management: int = 0
    comments: int = 0
    tags_added: int = 0
    tags_removed: int = 0
    writes: int = 0
    planned: int = 0
    conflicts: int = 0
    failed: int = 0
    dead_lettered: int = 0
    recovered: int = 0
    api_calls: int = 0
    cursor_committed: bool = False
    stopped_early: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["escalations"] = dict(sorted(self.escalations.items()))
        return data


class Syncer:
    """Runs cycles for one instance. Holds no ticket state between cycles: the store does."""

    def __init__(
        self,
        *,
        instance: str,
        platform: str,
        connector: Connector,
        mapping: PlatformMapping,
        policy: Policy,
        store: Store,
        clock: Callable[[], datetime],
        max_write_attempts: int = 5,
        dry_run: bool = False,
        stop: threading.Event | None = None,
        on_event: Callable[[Event], None] | None = None,
        api_calls: Callable[[], int] = lambda: 0,
    ) -> None:
        self.instance = instance
        self.platform = platform
        self.connector = connector
        self.mapping = mapping
        self.policy = policy
        self.store = store
        self.clock = clock
        self.max_write_attempts = max_write_attempts
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.on_event = on_event or (lambda event: None)
        self.api_calls = api_calls

    def run_cycle(self) -> CycleReport:
        now = self.clock()
        report = CycleReport(self.instance, self.platform, now, dry_run=self.dry_run)
        calls_before = self.api_calls()
        try:
            if not self.dry_run:
                self._recover_pending(now, report)
            self._poll_all(now, report)
        except (AuthError, TransientError) as error:
            report.error = f"{type(error).__name__}: {error}"
            log.error("cycle aborted", extra={"event": "cycle_error", "instance": self.instance, "error": str(error)})
        finally:
            report.api_calls = self.api_calls() - calls_before
        return report

    # -- polling ---------------------------------------------------------------------------------------------

    def _poll_all(self, now: datetime, report: CycleReport) -> None:
        cursor = self.store.get_cursor(self.instance)
        quarantined = {record.record_id for record in self.store.quarantined(self.instance)}
        while not self.stop.is_set():
            page = self.connector.poll(cursor, now)
            report.pages += 1
            for record in page.records:
                if self.stop.is_set():
                    report.stopped_early = True
                    return
                self._handle(record, now, report, quarantined)
            if not self.dry_run:
                self.store.set_cursor(self.instance, page.cursor)
                report.cursor_committed = True
            cursor = page.cursor
            if not page.has_more:
                return
        report.stopped_early = True

    def _handle(self, record: RawRecord, now: datetime, report: CycleReport, quarantined: set[str]) -> None:
        report.tickets_seen += 1
        try:
            ticket = self.mapping.normalize(record, self.instance)
        except NormalizeError as error:
            self._quarantine(record, str(error), now, report)
            return
        if record.id in quarantined and not self.dry_run:
            self.store.release(self.instance, record.id)
            quarantined.discard(record.id)
        if ticket.status is Status.DELETED:
            report.tombstones += 1
            return
        try:
            decision, writeback = self._decide(ticket, now)
        except Exception as error:  # an engine fault on one ticket must not stop the others
            log.exception("evaluation failed", extra={"instance": self.instance, "ticket": ticket.id})
            self._quarantine(record, f"evaluation failed: {type(error).__name__}: {error}", now, report)
            return
        self._send(writeback, decision, ticket, now, report, retry_conflict=True)

    def _quarantine(self, record: RawRecord, error: str, now: datetime, report: CycleReport) -> None:
        report.quarantined += 1
        raw = json.dumps(record.data, default=str, sort_keys=True)
        first = self.dry_run or self.store.quarantine(self.instance, record.id, raw, error, now)
        if first:
            log.warning(
                "record quarantined",
                extra={"event": "quarantined", "instance": self.instance, "ticket": record.id, "error": error},
            )
        self.on_event(Event("quarantined", self.instance, record.id, now, {"error": error}))

    # -- deciding and writing --------------------------------------------------------------------------------

    def _decide(self, ticket: Ticket, now: datetime) -> tuple[Decision, WriteBack]:
        decision = evaluate(ticket, self.policy, now, self._history(ticket, now))
        return decision, plan(decision, ticket, self.mapping.tags)

    def _history(self, ticket: Ticket, now: datetime) -> EscalationHistory:
        recorded = self.store.tier_entries(self.instance, ticket.id)
        entries = tuple((Tier(tier), at) for tier, at in recorded if tier in TIER_NAMES)
        management = [at for tier, at in recorded if tier == MANAGEMENT]
        customer = ticket.organization or ticket.requester
        repeats = self.store.escalations_since(customer, now - REPEAT_WINDOW) if customer else 0
        return EscalationHistory(
            customer_escalations_30d=repeats,
            tier_entries=entries,
            management_started_at=min(management) if management else None,
        )

    def _send(
        self,
        writeback: WriteBack,
        decision: Decision | None,
        ticket: Ticket,
        now: datetime,
        report: CycleReport,
        *,
        retry_conflict: bool,
    ) -> None:
        if writeback.is_empty:
            return
        if self.dry_run:
            report.planned += 1
            self.on_event(Event("planned", self.instance, ticket.id, now, _describe(writeback, decision)))
            return
        intent = self.store.record_intent(self.instance, ticket.id, writeback.key, encode(writeback), now)
        if writeback.comment is not None and intent.state is IntentState.DONE:
            # This handoff was posted in an earlier life of the ticket: never post it twice.
            writeback = replace(writeback, comment=None)
            if writeback.is_empty:
                return
            intent = self.store.record_intent(self.instance, ticket.id, writeback.key, encode(writeback), now)
        key = writeback.key
        try:
            self.connector.apply(writeback)
        except ConflictError:
            report.conflicts += 1
            self.on_event(Event("conflict", self.instance, ticket.id, now, {}))
            if not retry_conflict:
                self._failed(key, "409 conflict twice in a row", now, report, ticket.id)
                return
            self._replan(ticket.id, key, None, now, report)
            return
        except PermanentWriteError as error:
            self._dead(key, str(error), now, report, ticket.id)
            return
        except TransientError as error:
            self._failed(key, str(error), now, report, ticket.id)
            return
        self.store.mark_done(key, now)
        self._count_write(writeback, decision, ticket, now, report)

    def _replan(self, ticket_id: str, key: str, carried: Comment | None, now: datetime, report: CycleReport) -> None:
        """Re-read a ticket and plan again; the old intent is settled by whatever the new plan does."""
        raw = self.connector.fetch(ticket_id)
        if raw is None:
            self._dead(key, "ticket no longer exists", now, report, ticket_id)
            return
        try:
            ticket = self.mapping.normalize(raw, self.instance)
        except NormalizeError as error:
            self._quarantine(raw, str(error), now, report)
            self._dead(key, f"ticket cannot be normalized: {error}", now, report, ticket_id)
            return
        decision, writeback = self._decide(ticket, now)
        if carried is not None and writeback.comment is None and not ticket.status.is_terminal:
            writeback = replace(writeback, comment=carried)
        self._send(writeback, decision, ticket, now, report, retry_conflict=False)
        if writeback.is_empty or writeback.key != key:
            self.store.mark_done(key, now)

    def _recover_pending(self, now: datetime, report: CycleReport) -> None:
        for intent in self.store.pending(self.instance):
            if self.stop.is_set():
                return
            writeback = decode(intent.payload)
            comment = writeback.comment
            try:
                if comment and self.connector.has_comment(writeback.ticket_id, comment.idempotency_key):
                    self.store.mark_done(intent.key, now)
                    report.recovered += 1
                    self.on_event(Event("recovered", self.instance, writeback.ticket_id, now, {"key": intent.key}))
                    continue
                self._replan(writeback.ticket_id, intent.key, comment, now, report)
                report.recovered += 1
            except (PermanentWriteError, ConflictError) as error:
                self._dead(intent.key, str(error), now, report, writeback.ticket_id)
            except TransientError as error:
                self._failed(intent.key, str(error), now, report, writeback.ticket_id)

    def _failed(self, key: str, error: str, now: datetime, report: CycleReport, ticket_id: str) -> None:
        intent = self.store.mark_failed(key, error, now)
        report.failed += 1
        if intent.attempts >= self.max_write_attempts:
            self._dead(key, f"gave up after {intent.attempts} attempts: {error}", now, report, ticket_id)

    def _dead(self, key: str, error: str, now: datetime, report: CycleReport, ticket_id: str) -> None:
        self.store.mark_dead(key, error, now)
        report.dead_lettered += 1
        log.warning("write dead-lettered", extra={"event": "dead_letter", "instance": self.instance, "error": error})
        self.on_event(Event("dead_letter", self.instance, ticket_id, now, {"error": error}))

    def _count_write(
        self, writeback: WriteBack, decision: Decision | None, ticket: Ticket, now: datetime, report: CycleReport
    ) -> None:
        report.writes += 1
        report.tags_added += len(writeback.add_tags)
        report.tags_removed += len(writeback.remove_tags)
        if writeback.comment is not None:
            report.comments += 1
        customer = ticket.organization or ticket.requester or ""
        if writeback.tier is not None:
            report.escalations[writeback.tier.value] += 1
            self.store.record_escalation(self.instance, customer, ticket.id, writeback.tier.value, now)
        if decision is not None and decision.management and self.mapping.tags.management in writeback.add_tags:
            report.management += 1
            self.store.record_escalation(self.instance, customer, ticket.id, MANAGEMENT, now)
        self.on_event(Event("written", self.instance, ticket.id, now, _describe(writeback, decision, ticket)))


def _describe(writeback: WriteBack, decision: Decision | None, ticket: Ticket | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "tier": writeback.tier.value if writeback.tier else None,
        "add_tags": sorted(writeback.add_tags),
        "remove_tags": sorted(writeback.remove_tags),
        "comment": writeback.comment is not None,
    }
    if ticket is not None:
        detail["key"] = ticket.key
        detail["priority"] = ticket.priority.value
    if decision is not None:
        detail["from_tier"] = decision.current_tier.value
        detail["reasons"] = [rule.reason for rule in decision.fired]
        detail["management"] = decision.management
    return detail

"""One sync cycle for one instance: recover the ledger, poll into the book, scan, review what is due, write.

Each cycle, in this order:
1. recover pending ledger intents (below);
2. poll what changed since the cursor: every record is normalized and evaluated, and put in the open-ticket
   book with the moment its answer could next change (`Decision.review_at`); a record whose plan is not
   empty is due now. Terminal and deleted tickets leave the book (a tombstone stays against stale reads);
3. until it has completed once (and again after `sync.py backfill`), scan *all* open tickets whatever their
   age through the connector's `open_tickets`, into the book the same way;
4. review the book: every due ticket, most urgent first (breached, then priority), is evaluated from its
   stored record with no API read, and only the difference is written, through the ledger, up to
   `max_writes_per_cycle`; the rest stays due. This is how a ticket nobody touches still escalates.
Writes happen only in step 4, so the write cap orders a whole backlog by urgency, and a page's cursor can be
committed as soon as its records are in the book: a durably queued write (DESIGN.md, principle 2).

The order is what makes a crash harmless (DESIGN.md, principles 1, 2 and 7):
- a write-back is recorded in the ledger as a pending intent before the API call and marked done after it;
  pending intents are recovered first on the next cycle, checking the ticket's comments for the intent's
  key before anything is re-sent, so a comment is never posted twice;
- the cursor of a page is committed only once every ticket on it is in the book, quarantined or a tombstone;
  anything unexpected aborts the cycle before the cursor moves;
- a record that cannot be normalized or evaluated, for any reason, is quarantined with its error and the
  cycle goes on.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from connectors.base import (
    AmbiguousWriteError,
    ApplyResult,
    AuthError,
    BatchOutcome,
    ConflictError,
    Connector,
    ConnectorError,
    NotBatchedError,
    Page,
    PermanentWriteError,
    RateLimitedError,
    RawRecord,
    TransientError,
    WaitInterruptedError,
    apply_many,
)
from engine.escalate import MANAGEMENT_END, MANAGEMENT_PLAN, MANAGEMENT_START, evaluate, management_label
from engine.model import ClockState, Comment, Decision, EscalationHistory, Status, Ticket, Tier, WriteBack
from engine.plan import plan
from engine.policy import Policy
from engine.review import time_watch
from mappings import NormalizeError, PlatformMapping
from runtime.codec import decode, decode_record, encode, encode_record
from state.base import LEDGER_RETENTION, BookEntry, Intent, IntentState, Store
from state.sql import SCAN_SUFFIX

log = logging.getLogger("escalation_sync.cycle")

REPEAT_WINDOW = timedelta(days=30)
TIER_NAMES = frozenset(tier.value for tier in Tier)
MANAGEMENT = MANAGEMENT_START
"""Recorded beside the tier entries when the management track starts: its clocks run from then on."""
RESOLVED = "RESOLVED"
"""Recorded beside the tier entries when an escalated ticket is solved or closed (for `sync.py report`)."""
SCAN_DONE = "done"
"""The open-ticket scan's progress once it has completed (`sync.py backfill` clears it to scan again)."""
REVIEW_CHUNK = 1500
"""Due entries read from the book at a time. A chunk flushes what it queued before its entries are rescheduled,
so it is also the most writes one Show Many Job Statuses poll can follow: at 500 (5 jobs a poll) the account's
request budget capped a write backlog at 0.857 of its ceiling; at 1,500, 0.953 (bench/throughput.py)."""
BATCH_SIZE = REVIEW_CHUNK
"""Due writes handed to a connector's `apply_many` at once (Zendesk: up to 15 update_many jobs of 100, queued
before they are followed, so one Show Many Job Statuses poll serves them all)."""
DECIDED_SIZE = 500
"""Due tickets of this cycle's poll whose evaluation the review may reuse, at most (fewer under a smaller write
cap: see `Syncer._hold_decided`): bounded, so the cycle's memory stays flat in the backlog's size. Smaller than
a review chunk: a reused evaluation saves CPU, while each held one (record, ticket, decision) weighs; with the
chunk at 1,500 and this at 500 a write run peaked at 147 MB through 1,000,000 tickets (bench/memory.py)."""
MAX_PAGES = 100_000
"""A poll that pages this often in one cycle is looping, whatever its cursors say."""
PURGE_EVERY = timedelta(hours=1)
"""Old tombstones are looked for at most this often: the query reads every row of the instance."""
RETRY_BACKOFF = timedelta(seconds=2)
"""How long a cycle waits before each pass over writes that may have landed (a 5xx or a dropped answer):
long enough for a passing fault to pass, short against any poll interval."""
RETRY_PASSES = 3
"""Same-cycle retry passes at most (see `Syncer._retry_maybe_applied`)."""
TOMBSTONE_DAYS = 30
"""How long a terminal ticket's tombstone guards the book against a stale read of it."""
CUSTOMER_COUNT = "history.customer_escalations_30d"
UNVERIFIED = "unverified:"
"""Dead-letter reason prefix of a note that may have been posted: its key is never sent again."""
_HOLD = "hold-until:"
"""Settings key prefix: when an instance may send again after a long Retry-After."""


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
    scanned: int = 0
    """Records read by the scan of all open tickets (first start, `sync.py backfill`)."""
    quarantined: int = 0
    tombstones: int = 0
    reviewed: int = 0
    """Book entries evaluated because their review moment had come (polled ones included)."""
    review_writes: int = 0
    """Writes to tickets this cycle did not read: time passing alone made them necessary."""
    review_escalations: int = 0
    deferred: int = 0
    """Due writes left for a later cycle by max_writes_per_cycle."""
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
    book_open: int = 0
    book_due: int = 0
    cursor_committed: bool = False
    stopped_early: bool = False
    retry_at: datetime | None = None
    """Set when the platform asked us to hold off: no request is sent for this instance before then."""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["retry_at"] = self.retry_at.isoformat() if self.retry_at else None
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
        retry_backoff: timedelta = RETRY_BACKOFF,
        max_writes_per_cycle: int = 100,
        batch_writes_from: int = 3,
        review_interval: timedelta = timedelta(hours=1),
        ledger_retention: timedelta = LEDGER_RETENTION,
        adopt: str = "notes",
        fingerprint: str = "",
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
        self.state: Store = store
        """The store this cycle works on: `store`, or a throwaway copy of it in a dry run."""
        self.clock = clock
        self.max_write_attempts = max_write_attempts
        self.retry_backoff = retry_backoff
        self._maybe_applied: set[str] = set()
        self._maybe_queued: set[str] = set()
        """Ledger keys of writes that may have landed (a 5xx, timeout or dropped connection after sending) in
        this cycle: verified and sent again once, after `retry_backoff`, before the cycle ends."""
        self.max_writes_per_cycle = max_writes_per_cycle
        self.batch_writes_from = batch_writes_from
        self._batch: list[tuple[WriteBack, Decision | None, Ticket]] = []
        """Due writes of the review step waiting to go out together (their intents are recorded when they go)."""
        self._planned_from: dict[str, RawRecord] = {}
        """The book's record each queued review write was planned from, until it is settled: a write's answer
        that carries the ticket as written is booked with the sideloads of this record."""
        self._decided: dict[str, tuple[RawRecord, Ticket, EscalationHistory, Decision, WriteBack]] = {}
        """What the poll decided for a ticket it found due, and from which history: the review of the same
        ticket at the same `now` from the same history is the same pure evaluation (a written ticket used to
        be decoded, normalized and evaluated twice in one cycle), so it is reused while the history matches."""
        self._decided_order: list[tuple[int, str]] = []
        """The held tickets' places in the review's order (urgency, then id), sorted: the last goes first."""
        self._decided_history: EscalationHistory | None = None
        """The history the last `_decide` evaluated with (None when it recorded rows of what it saw)."""
        self.review_interval = review_interval
        self.ledger_retention = ledger_retention
        self.adopt_tag_only = adopt == "tag_only"
        self.fingerprint = fingerprint
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.on_event = on_event or (lambda event: None)
        self.api_calls = api_calls
        self.rescan = False
        """Scan every open ticket again in the next cycle, even if a scan has completed (`sync.py backfill`)."""
        self._generation_checked = False
        self._unpolled: set[str] = set()
        """Tickets with a write queued by the review step that this cycle did not poll (cleared as each settles):
        the cycle keeps no set of every id it polled, so its memory stays flat in the backlog's size."""
        self._rebooked: set[str] = set()
        self._quarantined_now: set[str] = set()
        """Records quarantined this cycle (the book does not mark them seen): a scan does not read them twice."""
        self._page_oldest: datetime | None = None
        self._page_newest: datetime | None = None
        """The last booked page's range of update times (the scan's progress)."""
        self._purged_at: datetime | None = None
        self._page_ids: set[str] = set()
        self._page_rows: dict[str, list[tuple[str, datetime]]] = {}
        """The history rows of the page being booked, read in one query (`tier_entries_many`)."""
        self._cycle_counts: dict[str, int] | None = None
        self._counts_before: dict[str, int] = {}
        """Customers escalated this cycle, with their 30-day count before the first of those escalations."""
        self._attempts = 0

    def run_cycle(self) -> CycleReport:
        now = self.clock()
        report = CycleReport(self.instance, self.platform, now, dry_run=self.dry_run)
        calls_before = self.api_calls()
        held = self._held_until(now)
        if held is not None:
            report.retry_at = held
            report.error = f"RateLimitedError: the platform asked us to wait until {held.isoformat()}"
            return report
        self.state = self.store.snapshot(self.instance) if self.dry_run else self.store
        self._unpolled, self._rebooked, self._quarantined_now, self._attempts = set(), set(), set(), 0
        self._counts_before, self._cycle_counts = {}, None
        self._maybe_applied, self._maybe_queued, self._planned_from = set(), set(), {}
        self._decided.clear()
        self._decided_order.clear()
        try:
            if not self.dry_run:
                self._recover_pending(now, report)
            self._check_generation(now)
            self._poll_all(now, report)
            self._scan_open(now, report)
            self._review(now, report)
            self._retry_maybe_applied(now, report)
            self._recount(now)
            report.book_open, report.book_due = self.state.book_stats(self.instance, now)
            if not self.dry_run and (self._purged_at is None or now - self._purged_at >= PURGE_EVERY):
                self.state.book_purge(self.instance, now - timedelta(days=TOMBSTONE_DAYS))
                self.state.prune_ledger(now - self.ledger_retention)
                self._purged_at = now
        except (AuthError, TransientError) as error:
            report.error = f"{type(error).__name__}: {error}"
            if isinstance(error, RateLimitedError):
                report.retry_at = error.retry_at
                if not self.dry_run:  # kept in the store: a `once` from cron must hold off too
                    self.store.set_setting(_HOLD + self.instance, error.retry_at.isoformat())
            log.error("cycle aborted", extra={"event": "cycle_error", "instance": self.instance, "error": str(error)})
        finally:
            self._decided.clear()  # nothing of a cycle's tickets is held until the next one
            self._decided_order.clear()
            report.api_calls = self.api_calls() - calls_before
            if self.state is not self.store:
                self.state.close()
                self.state = self.store
        return report

    def _held_until(self, now: datetime) -> datetime | None:
        value = self.store.get_setting(_HOLD + self.instance)
        try:
            held = datetime.fromisoformat(value) if value else None
        except ValueError:  # not ours to keep: an unreadable hold holds nothing
            return None
        return held if held is not None and held > now else None

    def _check_generation(self, now: datetime) -> None:
        """A policy or mapping edited since the book was last evaluated may move any review moment earlier:
        make the whole book due once (CPU only, no API call)."""
        if self._generation_checked or not self.fingerprint:
            return
        key = f"book-generation:{self.instance}"
        if self.state.get_setting(key) != self.fingerprint:
            marked = self.state.book_mark_due(now, instance=self.instance)
            if marked:
                log.info(
                    "policy or mapping changed: reviewing the whole book",
                    extra={"event": "book_generation", "instance": self.instance, "due": marked},
                )
            self.state.set_setting(key, self.fingerprint)
        self._generation_checked = not self.dry_run

    # -- reading into the book -------------------------------------------------------------------------------

    def _poll_all(self, now: datetime, report: CycleReport) -> None:
        cursor = self.state.get_cursor(self.instance)
        adopting = cursor is None  # the first sweep of this instance
        quarantined = {record.record_id for record in self.state.quarantined(self.instance)}
        pages = 0
        while not self.stop.is_set():
            page = self.connector.poll(cursor, now)
            report.pages += 1
            pages += 1
            self._guard(cursor, page, pages, "poll")
            # The page's entries and then its cursor, in one commit (one disk sync a page, not two): the cursor
            # still never moves without them.
            with self.state.transaction():
                if not self._book_page(page.records, now, report, quarantined, adopting, scan=False):
                    return
                self.state.set_cursor(self.instance, page.cursor)
            report.cursor_committed = True
            cursor, more = page.cursor, page.has_more
            del page  # booked: its records are not held while the next page is read and decoded (issue 14)
            if not more:
                return
        report.stopped_early = True

    def _scan_open(self, now: datetime, report: CycleReport) -> None:
        """Read every open ticket into the book until the scan has completed once (see the module docstring)."""
        scan_open = getattr(self.connector, "open_tickets", None)
        key = self.instance + SCAN_SUFFIX
        progress = "" if self.rescan else self.state.get_cursor(key)
        self.rescan = False
        if scan_open is None or progress == SCAN_DONE:
            return
        cursor = progress or None
        quarantined = {record.record_id for record in self.state.quarantined(self.instance)}
        started, pages = time.monotonic(), 0
        origin: datetime | None = None
        while not self.stop.is_set():
            page: Page = scan_open(cursor, now)
            pages += 1
            report.pages += 1
            self._guard(cursor, page, pages, "open-ticket scan")
            before = report.tickets_seen
            with self.state.transaction():  # as in `_poll_all`: entries and progress in one commit
                if not self._book_page(page.records, now, report, quarantined, adopting=True, scan=True):
                    return
                self.state.set_cursor(key, page.cursor if page.has_more else SCAN_DONE)
            report.scanned += report.tickets_seen - before
            elapsed = max(time.monotonic() - started, 1e-6)
            detail: dict[str, Any] = {
                "pages": pages,
                "tickets": report.scanned,
                "per_second": round(report.scanned / elapsed, 1),
                "done": not page.has_more,
                "eta_seconds": None,
            }
            origin = origin or self._page_oldest
            if page.has_more and origin is not None and self._page_newest is not None and now > origin:
                # The scan reads in order of last update: how far it has come in time estimates what is left
                # (roughly: recent months hold more open tickets than old ones).
                share = (self._page_newest - origin) / (now - origin)
                if share > 0:
                    detail["eta_seconds"] = round(elapsed * (1 - share) / share)
            log.info("open-ticket scan", extra={"event": "scan_progress", "instance": self.instance, **detail})
            self.on_event(Event("scan_progress", self.instance, "", now, detail))
            cursor, more = page.cursor, page.has_more
            del page  # as in `_poll_all`: not held while the next page is read
            if not more:
                return
        report.stopped_early = True

    def _guard(self, cursor: str | None, page: Page, pages: int, what: str) -> None:
        if page.has_more and page.cursor == cursor:
            raise TransientError(f"{self.instance}: {what} cursor does not advance ({str(cursor)[:120]!r})")
        if pages > MAX_PAGES:
            raise TransientError(f"{self.instance}: {what} returned more than {MAX_PAGES} pages in one cycle")

    def _book_page(
        self,
        records: list[RawRecord],
        now: datetime,
        report: CycleReport,
        quarantined: set[str],
        adopting: bool,
        *,
        scan: bool,
    ) -> bool:
        """Put a page's records in the book; False if a stop request cut the page short (cursor stays)."""
        self._page_ids = {record.id for record in records}
        self._page_rows = self.state.tier_entries_many(self.instance, list(self._page_ids))
        # A scan reading what this cycle has booked already (its poll, or an earlier page): the book says so.
        booked = self.state.book_seen_since(self.instance, list(self._page_ids), now) if scan else set()
        entries: list[BookEntry] = []
        complete = True
        for record in records:
            if self.stop.is_set():
                report.stopped_early = True
                complete = False
                break
            if record.id in booked or (scan and record.id in self._quarantined_now):
                continue
            entry = self._book_entry(record, now, report, quarantined, adopting, scan)
            if entry is not None:
                entries.append(entry)
        self.state.book_put(self.instance, entries)
        times = [entry.updated_at for entry in entries]
        self._page_oldest = min(times) if times else None
        self._page_newest = max(times) if times else None
        return complete

    def _book_entry(
        self,
        record: RawRecord,
        now: datetime,
        report: CycleReport,
        quarantined: set[str],
        adopting: bool,
        scan: bool = False,
    ) -> BookEntry | None:
        report.tickets_seen += 1
        ticket = self._normalize(record, now, report)
        if ticket is None:
            # Its last good version may be in the book: no review may act on it while the platform's own
            # record cannot be read (it comes back when a poll normalizes it again).
            self.state.book_schedule(self.instance, [(record.id, None, 0, False)])
            return None
        if record.id in quarantined:
            self.state.release(self.instance, record.id)
            quarantined.discard(record.id)
        if ticket.status is Status.DELETED:
            report.tombstones += 1
            return _tombstone(ticket, now)
        if scan and ticket.status.is_terminal:
            # The scan looks for open tickets; the closed ones Zendesk's export hands along (most of an old
            # account) are history: no evaluation, no store query each. Closing is seen by the poll.
            return _tombstone(ticket, now)
        decided = self._decide_safely(record, ticket, now, report, self._page_history(ticket, now))
        if decided is None:
            return None
        decision, writeback = decided
        due = not writeback.is_empty
        if ticket.status.is_terminal:
            self._resolved(ticket, now)
        if ticket.status.is_terminal and not due:
            return _tombstone(ticket, now)
        urgency = _urgency(decision, ticket)
        if due and self._decided_history is not None:
            self._hold_decided(urgency, record, ticket, self._decided_history, decision, writeback)
        review_at = now if due else self._review_time(decision, now)
        adopt = adopting and due and self.adopt_tag_only
        return _open_entry(record, ticket, decision, review_at, now, adopt=adopt, urgency=urgency)

    def _hold_decided(
        self,
        urgency: int,
        record: RawRecord,
        ticket: Ticket,
        history: EscalationHistory,
        decision: Decision,
        writeback: WriteBack,
    ) -> None:
        """Keep a due ticket's evaluation for the review, if the review can reach it (`_decided`).

        The review takes due tickets by urgency, then review time, then id, and stops at the write cap: of the
        tickets this poll found due (all due at `now`), it reaches at most `max_writes_per_cycle` + 1 (the one
        found over the cap is evaluated too), the first by urgency and id. So those are the ones held, at most
        `DECIDED_SIZE`. Holding the most recent 500 whatever the cap cost a read-mode run about 40 us of CPU
        per polled ticket in all, half of it in the cycle's own share (bench/pipeline.py, JSM): each held
        (record, ticket, decision) is walked by the collector while held and freed cold, and under a cap of one
        nearly none of them was ever reused."""
        limit = min(DECIDED_SIZE, self.max_writes_per_cycle + 1)
        order = self._decided_order
        place = (urgency, ticket.id)
        if ticket.id in self._decided:  # read twice in one cycle: the later reading replaces the earlier
            del self._decided[ticket.id]
            order.pop(next(index for index, (_, held) in enumerate(order) if held == ticket.id))
        if len(order) >= limit:
            if not order or place > order[-1]:
                return  # the review cannot reach it before the cap
            del self._decided[order.pop()[1]]
        bisect.insort(order, place)
        self._decided[ticket.id] = (record, ticket, history, decision, writeback)

    def _resolved(self, ticket: Ticket, now: datetime) -> None:
        """A ticket we escalated reached a terminal status: the report's resolution time and success rate by
        tier read this row (tier RESOLVED), which no count of escalations includes."""
        if self.dry_run or ticket.status is Status.DELETED:
            return
        # A polled ticket's history rows are the page's, read in one query (a query each was 1 in 5 of them).
        rows = self._page_rows.get(ticket.id, []) if ticket.id in self._page_ids else None
        if rows is None:
            rows = self.state.tier_entries(self.instance, ticket.id)
        if any(tier in TIER_NAMES for tier, _ in rows):
            at = ticket.solved_at or ticket.updated_at
            self.state.record_escalation(self.instance, _customer(ticket), ticket.id, RESOLVED, at)

    def _normalize(self, record: RawRecord, now: datetime, report: CycleReport) -> Ticket | None:
        try:
            return self.mapping.normalize(record, self.instance)
        except NormalizeError as error:
            self._quarantine(record, str(error), now, report)
        except Exception as error:  # any fault on one record is that record's problem, never the instance's
            self._quarantine(record, f"cannot be normalized: {type(error).__name__}: {str(error)[:300]}", now, report)
        return None

    def _decide_safely(
        self,
        record: RawRecord,
        ticket: Ticket,
        now: datetime,
        report: CycleReport,
        history: EscalationHistory | None = None,
    ) -> tuple[Decision, WriteBack] | None:
        try:
            return self._decide(ticket, now, history)
        except Exception as error:  # an engine fault on one ticket must not stop the others
            log.exception("evaluation failed", extra={"instance": self.instance, "ticket": ticket.id})
            self._quarantine(record, f"evaluation failed: {type(error).__name__}: {str(error)[:300]}", now, report)
            return None

    def _quarantine(self, record: RawRecord, error: str, now: datetime, report: CycleReport) -> None:
        report.quarantined += 1
        self._quarantined_now.add(record.id)
        raw = json.dumps(record.data, default=str, sort_keys=True)
        first = self.dry_run or self.state.quarantine(self.instance, record.id, raw, error, now)
        if first:
            log.warning(
                "record quarantined",
                extra={"event": "quarantined", "instance": self.instance, "ticket": record.id, "error": error},
            )
        self.on_event(Event("quarantined", self.instance, record.id, now, {"error": error}))

    def _review_time(self, decision: Decision, now: datetime) -> datetime | None:
        at = decision.review_at
        if not decision.review_exact:
            fallback = now + self.review_interval
            at = fallback if at is None else min(at, fallback)
        return at

    # -- reviewing what is due -------------------------------------------------------------------------------

    def _review(self, now: datetime, report: CycleReport) -> None:
        """Evaluate due book entries, most urgent first, and write what differs (see the module docstring)."""
        processed: set[str] = set()
        counts: dict[str, int] | None = None
        window = REVIEW_CHUNK
        while not self.stop.is_set():
            rows = self.state.book_due(self.instance, now, window)
            due = [entry for entry in rows if entry.ticket_id not in processed][:REVIEW_CHUNK]
            if not due:
                if len(rows) < window:
                    return
                # Only entries reviewed this cycle are due (a safety net: each is rescheduled past `now` as it
                # is reviewed): look past them; they wait for the next cycle.
                window += REVIEW_CHUNK
                continue
            if counts is None and CUSTOMER_COUNT in self.policy.fact_paths:
                counts = self.state.escalation_counts(now - REPEAT_WINDOW)
            entries = self.state.tier_entries_many(self.instance, [entry.ticket_id for entry in due])
            updates: list[tuple[str, datetime | None, int, bool]] = []
            for entry in due:
                if self.stop.is_set():
                    report.stopped_early = True
                    break
                history = history_from_rows(entries.get(entry.ticket_id, []), (counts or {}).get(entry.customer, 0))
                if not self._review_one(entry, history, now, report, updates):
                    self._schedule(updates, now, report)
                    return
            self._schedule(updates, now, report)
            # Each reviewed entry is rescheduled past `now` as a rule; what is still due (or was re-read and
            # booked afresh) is not reviewed twice in one cycle. Only those ids are held: flat in the book's size.
            processed.update(ticket_id for ticket_id, at, _, _ in updates if at is not None and at <= now)
            processed.update(self._rebooked)

    def _schedule(
        self, updates: list[tuple[str, datetime | None, int, bool]], now: datetime, report: CycleReport
    ) -> None:
        """Send the writes still queued, then store the reviewed entries' next moments (a ticket re-read after
        a conflict is in the book afresh already)."""
        unsent: set[str] = set()
        if self.stop.is_set():
            # Stopping: the queued writes are not started (no intent recorded yet); their tickets stay due.
            unsent = {ticket.id for _, _, ticket in self._batch}
            self._batch = []
        self._flush(now, report)  # raising, it leaves every entry of the chunk due
        skip = self._rebooked | unsent
        self.state.book_schedule(self.instance, [update for update in updates if update[0] not in skip])

    def _review_one(
        self,
        entry: BookEntry,
        history: EscalationHistory,
        now: datetime,
        report: CycleReport,
        updates: list[tuple[str, datetime | None, int, bool]],
    ) -> bool:
        """Evaluate one due entry and write what differs; False once the write cap is reached."""
        report.reviewed += 1
        cached = self._decided.pop(entry.ticket_id, None)
        if (
            cached is not None
            and cached[2] == history
            and cached[1].revision == entry.revision
            and cached[1].updated_at == entry.updated_at
        ):
            record, ticket, _, decision, writeback = cached
        else:
            record = decode_record(entry.raw or "{}")
            normalized = self._normalize(record, now, report)
            if normalized is None:  # the mapping changed under it: quarantined until it normalizes again
                updates.append((entry.ticket_id, None, entry.urgency, False))
                return True
            ticket = normalized
            decided = self._decide_safely(record, ticket, now, report, history)
            if decided is None:
                updates.append((entry.ticket_id, None, entry.urgency, False))
                return True
            decision, writeback = decided
        if entry.adopt and writeback.comment is not None:
            # Adopting an instance: this escalation was due before the daemon first saw the ticket.
            writeback = replace(writeback, comment=None)
        if not writeback.is_empty:
            if self._attempts >= self.max_writes_per_cycle:
                report.deferred += 1
                updates.append((entry.ticket_id, now, _urgency(decision, ticket), entry.adopt))
                return False
            if not self._rendered(record, writeback, ticket, now, report):
                updates.append((entry.ticket_id, None, entry.urgency, False))
                return True
            self._attempts += 1
            self._observe(record)
            if entry.seen_at is None or entry.seen_at < now:
                self._unpolled.add(entry.ticket_id)
            if getattr(self.connector, "apply_many", None) is not None and not self.dry_run:
                self._batch.append((writeback, decision, ticket))
                if len(self._batch) >= BATCH_SIZE:
                    self._flush(now, report)
            else:
                self._hand_over(ticket.id)
                with self._review_counts(ticket, report):
                    self._send(writeback, decision, ticket, now, report, retry_conflict=True)
        if ticket.id in self._rebooked:
            return True  # re-read after a conflict: the fresh record is in the book already
        if ticket.status.is_terminal:
            self.state.book_put(self.instance, [_tombstone(ticket, now)])
            return True
        updates.append((entry.ticket_id, self._review_time(decision, now), _urgency(decision, ticket), False))
        return True

    def _rendered(
        self, record: RawRecord, writeback: WriteBack, ticket: Ticket, now: datetime, report: CycleReport
    ) -> bool:
        """Render the handoff note of a write about to go out; False (the record quarantined) if it fails.

        The engine defers the note's text to its first read (`Comment.deferred`); it is read here, for the
        writes this cycle sends, not where every due ticket is evaluated: a backlog held back by the write cap
        renders none of the notes that wait for a later cycle. A fault rendering it is still that ticket's
        evaluation fault, quarantined, never one of the write path's."""
        if writeback.comment is None:
            return True
        try:
            writeback.comment.body  # noqa: B018 - the first read renders it
        except Exception as error:
            log.exception("evaluation failed", extra={"instance": self.instance, "ticket": ticket.id})
            self._quarantine(record, f"evaluation failed: {type(error).__name__}: {str(error)[:300]}", now, report)
            return False
        return True

    def _observe(self, record: RawRecord) -> None:
        """Keep the record a queued write is planned from (the book's copy) until the write is sent."""
        if not self.dry_run:
            self._planned_from[record.id] = record

    def _hand_over(self, ticket_id: str) -> None:
        """Just before a write is sent, give the connector the record it was planned from, so a connector that
        needs the ticket's current values to write (Zendesk's safe PUT replaces the tag list) reads none."""
        record = self._planned_from.get(ticket_id)
        observe = getattr(self.connector, "observe", None)
        if record is not None and observe is not None:
            observe(record)

    def _book_written(
        self, written: RawRecord, before: RawRecord | None, ticket: Ticket, decision: Decision | None, now: datetime
    ) -> None:
        """Book the ticket as our write left it (the answer's record, with the sideloads it was planned with),
        evaluated as written: a review before the echo is polled then plans from what the platform shows now,
        and sends nothing again. Where the written ticket cannot be evaluated, the write's decision says when to
        look again. The echo itself is evaluated in full when it is polled: at the answer's revision it still
        carries our own write's events (the tier change, an assignee Zendesk cleared), and an answer can come
        without the sideloads it was planned with (a re-send after a failed job), so the decision booked here
        is not always the echo's (issue 14: a skip by revision left a ticket unreviewed in the soak)."""
        if decision is None or ticket.status.is_terminal:
            return
        record = RawRecord(written.id, written.data, {**(before.related if before else {}), **written.related})
        try:
            after = self.mapping.normalize(record, self.instance)
        except Exception:  # the answer is not a record we can read: the echo's poll books the ticket instead
            return
        if after.status.is_terminal:
            return
        try:
            decision, _ = self._decide(after, now)
        except Exception:  # its evaluation is the echo's then, with the poll's guard
            log.debug("written ticket not evaluated", extra={"instance": self.instance, "ticket": after.id})
        self.state.book_put(
            self.instance, [_open_entry(record, after, decision, self._review_time(decision, now), now)]
        )

    # -- deciding and writing --------------------------------------------------------------------------------

    def _decide(
        self, ticket: Ticket, now: datetime, history: EscalationHistory | None = None
    ) -> tuple[Decision, WriteBack]:
        history, seen = seen_on_ticket(history or self._history(ticket, now), ticket, self.policy, self.mapping, now)
        self._decided_history = history if not seen else None  # rows recorded now: the review's history differs
        for label in seen:
            self.state.record_escalation(self.instance, _customer(ticket), ticket.id, label, now)
        decision = evaluate(ticket, self.policy, now, history)
        writeback = plan(decision, ticket, self.mapping.tags)
        running = history.management_started_at is not None and history.management_ended_at is None
        if running and not decision.management and self.mapping.tags.management not in ticket.tags:
            # The policy ended the track and no tag is left to remove: the end is recorded now. (With the tag
            # there, it is recorded once the write removing it is done; see `_count_write`.)
            self._end_management(_customer(ticket), ticket.id, history, now)
        return decision, writeback

    def _end_management(self, customer: str, ticket_id: str, history: EscalationHistory, now: datetime) -> None:
        label = management_label(MANAGEMENT_END, history.management_track)
        self.state.record_escalation(self.instance, customer, ticket_id, label, now)

    def _management_history(self, ticket_id: str) -> EscalationHistory:
        return history_from_rows(self.state.tier_entries(self.instance, ticket_id), 0)

    def _page_history(self, ticket: Ticket, now: datetime) -> EscalationHistory:
        """The history of a ticket on the page being booked, from one query for the page's tier entries and
        one per cycle for the customers' counts (nothing is escalated before the review step)."""
        if ticket.id not in self._page_ids:
            return self._history(ticket, now)
        if self._cycle_counts is None:
            wanted = CUSTOMER_COUNT in self.policy.fact_paths
            self._cycle_counts = self.state.escalation_counts(now - REPEAT_WINDOW) if wanted else {}
        repeats = self._cycle_counts.get(_customer(ticket), 0)
        return history_from_rows(self._page_rows.get(ticket.id, []), repeats)

    def _history(self, ticket: Ticket, now: datetime) -> EscalationHistory:
        customer = _customer(ticket)
        repeats = self.state.escalations_since(customer, now - REPEAT_WINDOW) if customer else 0
        return history_from_rows(self.state.tier_entries(self.instance, ticket.id), repeats)

    @contextlib.contextmanager
    def _review_counts(self, ticket: Ticket, report: CycleReport) -> Iterator[None]:
        """Writes and escalations of a ticket this cycle did not poll: time passing alone made them necessary."""
        written, escalated = report.writes, sum(report.escalations.values())
        yield
        if ticket.id in self._unpolled:
            self._unpolled.discard(ticket.id)
            report.review_writes += report.writes - written
            report.review_escalations += sum(report.escalations.values()) - escalated

    def _flush(self, now: datetime, report: CycleReport) -> None:
        """Send the queued writes: as the connector's batch when at least `batch_writes_from` are due together,
        else one call each. Every write of a batch has its intent recorded before the batch is sent, so a crash
        while a job runs leaves pending intents that recovery checks by their comment key, as for one write."""
        queued, self._batch = self._batch, []
        if len(queued) < self.batch_writes_from:
            for writeback, decision, ticket in queued:
                self._hand_over(ticket.id)
                with self._review_counts(ticket, report):
                    self._send(writeback, decision, ticket, now, report, retry_conflict=True)
            return
        batch = []
        # Every intent of the job in one synced commit before the job is sent (not one disk sync each: the
        # measured cost of a batched write was mostly these syncs); a crash before it commits sends nothing.
        with self.state.transaction():
            for writeback, decision, ticket in queued:
                prepared = self._prepare(writeback, decision, ticket, now, report)
                if prepared is None:
                    self._planned_from.pop(ticket.id, None)
                    continue
                self._hand_over(ticket.id)
                batch.append((prepared, decision, ticket))
        if not batch:
            return
        try:
            outcomes = apply_many(self.connector, [writeback for writeback, _, _ in batch])
        except (RateLimitedError, WaitInterruptedError):
            raise  # nothing is known to have been applied (or not): the intents stay pending for recovery
        except TransientError as error:
            # The job was (or may have been) queued but its end was not seen: one attempt each. This cycle's
            # retry pass settles those a finished job applied (their note is found) and re-sends those with no
            # note (tier and tags are idempotent); a note not found is re-sent alone once the platform lists no
            # job running, else it waits for the next cycle: a job still queued would post it a second time.
            for writeback, _, ticket in batch:
                self._planned_from.pop(ticket.id, None)
                self._unpolled.discard(ticket.id)
                self._failed(writeback.key, str(error), now, report, ticket.id)
                self._maybe_queued.add(writeback.key)
            return
        settled = list(zip(batch, outcomes, strict=True))
        # What the job applied is marked done in one commit; the rest (each may call the platform) one by one.
        with self.state.transaction(sync=False):
            for (writeback, decision, ticket), outcome in settled:
                if isinstance(outcome, ApplyResult):
                    with self._review_counts(ticket, report):
                        self._settle(writeback, decision, ticket, now, report, outcome, retry_conflict=True)
        stopped: TransientError | None = None
        for (writeback, decision, ticket), outcome in settled:
            if isinstance(outcome, ApplyResult):
                continue
            if isinstance(outcome, RateLimitedError | WaitInterruptedError):
                stopped = stopped or outcome  # never sent: pending, not an attempt
                self._planned_from.pop(ticket.id, None)
                continue
            if isinstance(outcome, AmbiguousWriteError):
                # Its job may still be queued: settled as a lost job answer is (see the TransientError above).
                self._planned_from.pop(ticket.id, None)
                self._unpolled.discard(ticket.id)
                self._failed(writeback.key, str(outcome), now, report, ticket.id)
                self._maybe_queued.add(writeback.key)
                continue
            self._hand_over(ticket.id)
            with self._review_counts(ticket, report):
                if isinstance(outcome, NotBatchedError):
                    self._deliver(writeback, decision, ticket, now, report, retry_conflict=True)
                else:
                    self._settle(writeback, decision, ticket, now, report, outcome, retry_conflict=True)
        if stopped is not None:
            raise stopped  # the instance holds off (or stops) as after any call refused so

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
        prepared = self._prepare(writeback, decision, ticket, now, report)
        if prepared is None:
            self._planned_from.pop(ticket.id, None)
            return
        self._deliver(prepared, decision, ticket, now, report, retry_conflict=retry_conflict)

    def _prepare(
        self, writeback: WriteBack, decision: Decision | None, ticket: Ticket, now: datetime, report: CycleReport
    ) -> WriteBack | None:
        """The write to send, its intent recorded in the ledger first; None when there is nothing to send."""
        if writeback.is_empty:
            return None
        if self.dry_run:
            report.planned += 1
            self.on_event(Event("planned", self.instance, ticket.id, now, _describe(writeback, decision, ticket)))
            return None
        intent = self.state.record_intent(self.instance, ticket.id, writeback.key, encode(writeback), now)
        unverified = intent.state is IntentState.DEAD and intent.last_error.startswith(UNVERIFIED)
        posted = intent.state is IntentState.DONE or unverified or self._posted_before(writeback, intent, now)
        if writeback.comment is not None and posted:
            # This handoff was posted in an earlier life of the ticket (or may have been, and we could not look):
            # never post it twice.
            writeback = replace(writeback, comment=None)
            if writeback.is_empty:
                return None
            self.state.record_intent(self.instance, ticket.id, writeback.key, encode(writeback), now)
        return writeback

    def _deliver(
        self,
        writeback: WriteBack,
        decision: Decision | None,
        ticket: Ticket,
        now: datetime,
        report: CycleReport,
        *,
        retry_conflict: bool,
    ) -> None:
        """One call for one prepared write, and its outcome settled in the ledger."""
        try:
            outcome: BatchOutcome = self.connector.apply(writeback)
        except (RateLimitedError, WaitInterruptedError):
            raise  # nothing was sent: not an attempt; the intent stays pending and the cycle stops here
        except (ConflictError, PermanentWriteError, TransientError) as error:
            outcome = error
        self._settle(writeback, decision, ticket, now, report, outcome, retry_conflict=retry_conflict)

    def _settle(
        self,
        writeback: WriteBack,
        decision: Decision | None,
        ticket: Ticket,
        now: datetime,
        report: CycleReport,
        outcome: BatchOutcome,
        *,
        retry_conflict: bool,
    ) -> None:
        key = writeback.key
        planned = self._planned_from.pop(ticket.id, None)
        try:
            if not isinstance(outcome, ApplyResult):
                raise outcome
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
            self._forget_if_gone(ticket, now)
            return
        except TransientError as error:
            self._failed(key, str(error), now, report, ticket.id)
            self._maybe_applied.add(key)
            return
        except ConnectorError as error:  # a batch's refusal of another kind, for this ticket only
            self._dead(key, str(error), now, report, ticket.id)
            return
        # The done mark and its history rows: one commit, all or none, not waiting for the disk. Lost in a power
        # cut, the intent is pending again and recovery settles it as after any crash before this point (the
        # comment check, then the history as of the intent).
        with self.state.transaction(sync=False):
            self.state.mark_done(key, now)
            self._count_write(writeback, decision, ticket, now, report)
            if outcome.record is not None:
                self._book_written(outcome.record, planned, ticket, decision, now)

    def _posted_before(self, writeback: WriteBack, intent: Intent, now: datetime) -> bool:
        """Whether a note recorded as a new intent just now was posted already, its done entry since pruned from
        the ledger (`[state] ledger_retention_days`): only then (the history shows this ticket entered the
        note's tier before) is the platform asked, and the key embedded in the comment answers."""
        comment = writeback.comment
        if comment is None or intent.state is not IntentState.PENDING or intent.attempts or intent.created_at != now:
            return False
        tier = writeback.tier.value if writeback.tier is not None else MANAGEMENT
        if all(entered != tier for entered, _ in self.state.tier_entries(self.instance, writeback.ticket_id)):
            return False
        try:
            posted = self.connector.has_comment(writeback.ticket_id, comment.idempotency_key)
        except (RateLimitedError, WaitInterruptedError):
            raise  # nothing was sent: the intent stays pending and the cycle stops here
        except ConnectorError:
            return True  # unknown: not posted now; the intent stays pending and recovery asks again
        if posted:
            self.state.mark_done(intent.key, now)
        return posted

    def _forget_if_gone(self, ticket: Ticket, now: datetime) -> None:
        """A refused write may mean the ticket was deleted where no poll can tell (ServiceNow and Jira drop
        deleted records without a trace): one read settles it, and a ticket that is gone leaves the book."""
        try:
            gone = self.connector.fetch(ticket.id) is None
        except ConnectorError:
            return
        if gone:
            self.state.book_put(self.instance, [replace(_tombstone(ticket, now), updated_at=now)])
            self._rebooked.add(ticket.id)

    def _replan(
        self,
        ticket_id: str,
        key: str,
        carried: Comment | None,
        now: datetime,
        report: CycleReport,
        intended: WriteBack | None = None,
        intended_at: datetime | None = None,
    ) -> None:
        """Re-read a ticket and plan again; the old intent is settled by whatever the new plan does.

        `carried` is the note of an intent that may not have been posted: it goes out with the new plan unless
        the ticket has moved past the tier it announced (a note for L2 on a ticket now at L3 is history). Where
        the platform shows that the intent's tier or management tag did land, its history is recorded as of
        the intent (`intended_at`), exactly as a first-time write records it.

        A write that did not land (the ticket still at the revision it was planned at) is planned again from the
        book's record of that revision, the facts it was first planned from, and that record stays booked: the
        re-read's facts can differ from the poll's (Zendesk: a history the event export did not hold completely,
        read from the audits here), and whether a passing fault or a restart hit the first send must not change
        what is decided, now or at the ticket's later reviews."""
        raw = self.connector.fetch(ticket_id)
        if raw is None:
            self._dead(key, "ticket no longer exists", now, report, ticket_id)
            entry = self.state.book_entry(self.instance, ticket_id)
            if entry is not None:
                self.state.book_put(self.instance, [replace(entry, is_open=False, raw=None, updated_at=now)])
            self._rebooked.add(ticket_id)
            return
        ticket = self._normalize(raw, now, report)
        if ticket is None:
            self._dead(key, "ticket cannot be normalized", now, report, ticket_id)
            return
        carried_tier = intended.tier if intended is not None else None
        if intended is not None and intended_at is not None:
            # What of the intent the platform shows now did land: record its history as of the intent.
            landed = replace(
                intended,
                tier=carried_tier if ticket.effective_tier is carried_tier else None,
                add_tags=intended.add_tags & ticket.tags,
            )
            self._record_history(landed, intended_at, _customer(ticket))
        unchanged = intended is not None and intended.revision == ticket.revision
        booked = self._booked_at(ticket_id, ticket.revision, now, report) if unchanged else None
        if booked is not None:
            raw, ticket = booked
        decision, writeback = self._decide(ticket, now)
        superseded = carried_tier is not None and ticket.effective_tier.rank > carried_tier.rank
        if carried is not None and writeback.comment is None and not ticket.status.is_terminal and not superseded:
            writeback = replace(writeback, comment=carried)
        self._send(writeback, decision, ticket, now, report, retry_conflict=False)
        if writeback.is_empty or writeback.key != key:
            self.state.mark_done(key, now)
        self._rebooked.add(ticket_id)
        if ticket.status.is_terminal:
            self.state.book_put(self.instance, [_tombstone(ticket, now)])
            return
        self.state.book_put(self.instance, [_open_entry(raw, ticket, decision, self._review_time(decision, now), now)])

    def _booked_at(
        self, ticket_id: str, revision: str, now: datetime, report: CycleReport
    ) -> tuple[RawRecord, Ticket] | None:
        """The book's record of a ticket, and its reading, when the book holds it at `revision`."""
        entry = self.state.book_entry(self.instance, ticket_id)
        if entry is None or not entry.raw or entry.revision != revision:
            return None
        record = decode_record(entry.raw)
        ticket = self._normalize(record, now, report)
        return (record, ticket) if ticket is not None else None

    def _retry_maybe_applied(self, now: datetime, report: CycleReport) -> None:
        """Passes over this cycle's maybe-applied writes, each after a short backoff: each write is verified (the
        ledger's comment-key lookup, then a re-read and re-plan) and sent again now, not a poll interval later,
        so a passing 5xx does not delay an escalation or shift its clocks by a cycle. A fault can hit the retry
        too, so another pass follows, `RETRY_PASSES` at most, unless all of several writes failed again: that
        is an outage, not a passing fault, and what is left waits for the next cycle's recovery (each failure
        counts against max_write_attempts, so a lone write in an outage spends its attempts a cycle sooner).

        A batch job whose end was not seen may still be queued, and would post its notes a second time after a
        re-send: its writes are re-sent now only once the platform says no job is queued or working any more
        (the connector's optional `jobs_idle`, which waits a bounded while); otherwise they are only verified,
        and a note not found yet waits for the next cycle."""
        for _ in range(RETRY_PASSES):
            keys, self._maybe_applied = self._maybe_applied, set()
            queued, self._maybe_queued = self._maybe_queued, set()
            if not (keys or queued) or self.stop.wait(self.retry_backoff.total_seconds()):
                break
            if queued and self._jobs_idle() is True:
                keys, queued = keys | queued, set()
            tried = len(keys | queued)
            self._recover_pending(now, report, only=keys | queued, verify_only=queued)
            if tried > 1 and len(self._maybe_applied) >= tried:
                break  # every one failed again: an outage, not a passing fault
        self._maybe_applied, self._maybe_queued = set(), set()

    def _jobs_idle(self) -> bool | None:
        """Whether the platform says none of its batch jobs is still queued or working: True, False (one still
        is), None (it cannot tell, or the platform has no batch jobs)."""
        idle = getattr(self.connector, "jobs_idle", None)
        return idle() if idle is not None else None

    def _recover_pending(
        self, now: datetime, report: CycleReport, only: set[str] | None = None, verify_only: set[str] = frozenset()
    ) -> None:
        """Settle pending intents: done when the note's key is on the ticket, else re-read, re-planned and sent.
        Keys in `verify_only` (a batch job whose end was not seen) are only settled when their note is found.

        At a cycle's start (`only` None) the pending intents may come from a job queued before a crash or stop:
        when any of them carries a note, the platform is asked once, before any note is looked for, whether a
        batch job is still queued or working; if one is, notes not found wait for the next cycle (a job still
        queued would post them a second time; asked after the look, a job ending in between would too). A
        platform that cannot tell, or has no batch jobs, is not waited for: an interval has passed since then."""
        pending = [
            (intent, decode(intent.payload))
            for intent in self.state.pending(self.instance)
            if only is None or intent.key in only
        ]
        jobs_running = only is None and any(wb.comment for _, wb in pending) and self._jobs_idle() is False
        for intent, writeback in pending:
            if self.stop.is_set():
                return
            comment = writeback.comment
            try:
                if comment and self.connector.has_comment(writeback.ticket_id, comment.idempotency_key):
                    with self.state.transaction(sync=False):
                        self.state.mark_done(intent.key, now)
                        self._record_history(writeback, intent.created_at)
                    report.recovered += 1
                    self.on_event(Event("recovered", self.instance, writeback.ticket_id, now, {"key": intent.key}))
                    continue
                if comment and (intent.key in verify_only or jobs_running):
                    continue  # the job may still be queued: the next cycle's recovery looks again
                self._replan(writeback.ticket_id, intent.key, comment, now, report, writeback, intent.created_at)
                report.recovered += 1
            except (PermanentWriteError, ConflictError) as error:
                self._dead(intent.key, str(error), now, report, writeback.ticket_id)
            except (RateLimitedError, WaitInterruptedError):
                raise  # nothing was sent: not an attempt
            except TransientError as error:
                self._failed(intent.key, str(error), now, report, writeback.ticket_id)
                self._maybe_applied.add(intent.key)
            except AuthError as error:
                if error.status != 403:
                    raise  # wrong credentials: nothing else on this instance can work either
                self._dead(
                    intent.key, f"{UNVERIFIED} refused for this ticket: {error}", now, report, writeback.ticket_id
                )
            except ConnectorError as error:
                # Refused for good (400, an unreadable answer): dead-letter it so that polling goes on.
                self._dead(intent.key, f"{UNVERIFIED} lookup failed: {error}", now, report, writeback.ticket_id)

    def _record_history(self, writeback: WriteBack, now: datetime, customer: str | None = None) -> None:
        """The escalation history of a write confirmed done by recovery, as a first-time write records it."""
        if customer is None:
            entry = self.state.book_entry(self.instance, writeback.ticket_id)
            customer = entry.customer if entry is not None else ""
        if writeback.tier is not None:
            self._escalated(customer, writeback.ticket_id, writeback.tier.value, now)
        if self.mapping.tags.management in writeback.add_tags:
            self._escalated(customer, writeback.ticket_id, self._next_track(writeback.ticket_id), now)

    def _next_track(self, ticket_id: str) -> str:
        """The row that records a track starting now: `MGMT`, or `MGMT#n` after n - 1 ended tracks."""
        history = self._management_history(ticket_id)
        if history.management_started_at is not None and history.management_ended_at is None:
            return management_label(MANAGEMENT_START, history.management_track)  # already recorded: a no-op
        return management_label(MANAGEMENT_START, history.management_track + 1)

    def _escalated(self, customer: str, ticket_id: str, tier: str, now: datetime) -> None:
        if customer and CUSTOMER_COUNT in self.policy.fact_paths and customer not in self._counts_before:
            self._counts_before[customer] = self.state.escalations_since(customer, now - REPEAT_WINDOW)
        self.state.record_escalation(self.instance, customer, ticket_id, tier, now)

    def _recount(self, now: datetime) -> None:
        """Customers whose 30-day count crossed a number a rule compares it with: their other open tickets, on
        every instance, are reviewed in the next cycle (a repeated-failure rule may now fire for them)."""
        watch = time_watch(self.policy)
        for customer, before in self._counts_before.items():
            after = self.state.escalations_since(customer, now - REPEAT_WINDOW)
            if watch.count_crossed(before, after):
                self.state.book_mark_due(now, customer=customer)
        self._counts_before = {}

    def _failed(self, key: str, error: str, now: datetime, report: CycleReport, ticket_id: str) -> None:
        intent = self.state.mark_failed(key, error, now)
        report.failed += 1
        if intent.attempts >= self.max_write_attempts:
            self._dead(key, f"gave up after {intent.attempts} attempts: {error}", now, report, ticket_id)

    def _dead(self, key: str, error: str, now: datetime, report: CycleReport, ticket_id: str) -> None:
        self.state.mark_dead(key, error, now)
        report.dead_lettered += 1
        log.warning(
            "write dead-lettered",
            extra={"event": "dead_letter", "instance": self.instance, "ticket": ticket_id, "error": error},
        )
        self.on_event(Event("dead_letter", self.instance, ticket_id, now, {"error": error}))

    def _count_write(
        self, writeback: WriteBack, decision: Decision | None, ticket: Ticket, now: datetime, report: CycleReport
    ) -> None:
        report.writes += 1
        report.tags_added += len(writeback.add_tags)
        report.tags_removed += len(writeback.remove_tags)
        if writeback.comment is not None:
            report.comments += 1
        customer = _customer(ticket)
        if writeback.tier is not None:
            report.escalations[writeback.tier.value] += 1
            self._escalated(customer, ticket.id, writeback.tier.value, now)
        if decision is not None and decision.management and self.mapping.tags.management in writeback.add_tags:
            report.management += 1
            self._escalated(customer, ticket.id, self._next_track(ticket.id), now)
        if decision is not None and not decision.management and self.mapping.tags.management in writeback.remove_tags:
            history = self._management_history(ticket.id)
            if history.management_started_at is not None and history.management_ended_at is None:
                self._end_management(customer, ticket.id, history, now)
        self.on_event(Event("written", self.instance, ticket.id, now, _describe(writeback, decision, ticket)))


def _customer(ticket: Ticket) -> str:
    return ticket.organization or ticket.requester or ""


def history_from_rows(recorded: list[tuple[str, datetime]], repeats: int) -> EscalationHistory:
    """The engine's EscalationHistory from the store's rows of one ticket and its customer's 30-day count.

    Management rows: `MGMT` / `MGMT_PLAN` / `MGMT_END` for the first track, with `#n` for the n-th (a trigger
    firing after the policy ended a track starts the next); the history describes the latest track.
    """
    if not recorded:  # most polled tickets were never escalated: nothing to sort out
        return EscalationHistory(customer_escalations_30d=repeats)
    entries = tuple((Tier(tier), at) for tier, at in recorded if tier in TIER_NAMES)
    events: dict[tuple[str, int], datetime] = {}
    for label, at in recorded:
        event, _, number = label.partition("#")
        if event in _TRACK_EVENTS and (not number or number.isdigit()):
            key = (event, int(number) if number else 1)
            events[key] = min(at, events.get(key, at))
    track = max((number for event, number in events if event == MANAGEMENT_START), default=0)
    return EscalationHistory(
        customer_escalations_30d=repeats,
        tier_entries=entries,
        management_started_at=events.get((MANAGEMENT_START, track)),
        management_ended_at=events.get((MANAGEMENT_END, track)),
        resolution_plan_at=events.get((MANAGEMENT_PLAN, track)),
        management_track=track,
    )


_TRACK_EVENTS = frozenset({MANAGEMENT_START, MANAGEMENT_END, MANAGEMENT_PLAN})


def seen_on_ticket(
    history: EscalationHistory, ticket: Ticket, policy: Policy, mapping: PlatformMapping, now: datetime
) -> tuple[EscalationHistory, list[str]]:
    """The history completed with what the ticket shows and no write of ours recorded, and the rows that
    record it (the cycle writes them; `explain` only uses the history).

    - The management tag with no running track (a person set it, another tool, a store reset): the track
      started at the latest when we first see it, and its clocks run from then. After a track the policy
      ended, only a ticket changed since the end counts (a person set the tag again): the book's copy of the
      ticket from before our removal still shows it.
    - The resolution plan tag (`[policy.management] resolution_plan_tag`) during a running track: the plan
      was delivered at the latest when we first see it.
    """
    if ticket.status.is_terminal:
        return history, []
    seen: list[str] = []
    started, ended = history.management_started_at, history.management_ended_at
    running = started is not None and ended is None
    if not running and mapping.tags.management in ticket.tags and (ended is None or ticket.updated_at > ended):
        track = history.management_track + 1
        seen.append(management_label(MANAGEMENT_START, track))
        history = replace(
            history,
            management_started_at=now,
            management_ended_at=None,
            resolution_plan_at=None,
            management_track=track,
        )
        running = True
    if running and history.resolution_plan_at is None and policy.management.resolution_plan_tag in ticket.tags:
        seen.append(management_label(MANAGEMENT_PLAN, history.management_track))
        history = replace(history, resolution_plan_at=now)
    return history, seen


def _urgency(decision: Decision, ticket: Ticket) -> int:
    """Order of due reviews, lowest first: a breached clock before any other, then by priority."""
    breached = any(clock.state is ClockState.BREACHED for clock in decision.clocks) or any(
        sla.breached for sla in ticket.platform_slas
    )
    return (0 if breached else 4) + int(ticket.priority.value[1]) - 1


def _open_entry(
    record: RawRecord,
    ticket: Ticket,
    decision: Decision,
    review_at: datetime | None,
    now: datetime,
    adopt: bool = False,
    urgency: int | None = None,
) -> BookEntry:
    """An open ticket as the book keeps it: its raw record (a mapping edited later applies to it) and when to
    look at it again. `urgency` is `_urgency(decision, ticket)` where the caller has it already."""
    return BookEntry(
        ticket_id=ticket.id,
        is_open=True,
        updated_at=ticket.updated_at,
        revision=ticket.revision,
        raw=encode_record(record),
        customer=_customer(ticket),
        review_at=review_at,
        urgency=_urgency(decision, ticket) if urgency is None else urgency,
        adopt=adopt,
        seen_at=now,
    )


def _tombstone(ticket: Ticket, now: datetime) -> BookEntry:
    return BookEntry(ticket.id, False, ticket.updated_at, ticket.revision, None, _customer(ticket), seen_at=now)


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
        detail["rules"] = [rule.name for rule in decision.fired]
        detail["management"] = decision.management
        # The rule that set the tier: the first fired rule aiming at the tier the decision chose.
        setting = next((r for r in decision.fired if r.target_tier is decision.target_tier and r.target_tier), None)
        if setting is not None and writeback.tier is not None:
            detail["tier_rule"] = {"name": setting.name, "reason": setting.reason}
    return detail

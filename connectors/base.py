"""The connector contract: what the sync cycle may ask of any platform, and the errors it may get back.

A connector knows nothing of escalation: it returns raw records exactly as the platform sent them (the
mapping normalizes them), and it applies a `WriteBack` already planned by the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from engine.model import WriteBack

MAPPINGS = (dict, Mapping)
"""`isinstance(value, MAPPINGS)` is `isinstance(value, Mapping)` answered at once for the dicts a decoded page
holds: the abstract class's own check costs several times more, and the connectors' event book and the
mappings' readers run it for every event, field and history item of every polled ticket (issue 14)."""


@dataclass(frozen=True)
class RawRecord:
    """One ticket as the platform sent it, plus side-loaded records the mapping may read (org, metrics)."""

    id: str
    data: dict[str, Any]
    related: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HistorySource:
    """A history source a mapping asks the connector to read in bulk for every page of tickets.

    Plain data, so a connector learns what to read without importing a mapping: `name` is the platform's own
    (`sys_audit`, `sys_journal_field`, `changelog`, `comments`, `ticket_events`), `fields` narrows it to the
    fields or elements whose history is wanted (empty: all). The rows reach the mapping under
    `RawRecord.related[name]`; a source the platform refused (no rights) is named in
    `related["history_unavailable"]` instead, so its facts are absent, never guessed.
    """

    name: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadSpec:
    """What a mapping needs read, as plain data a connector sends as it is (it never imports a mapping).

    - `fields`: the record fields to request (JSM `fields`, ServiceNow `sysparm_fields`);
    - `sideloads`: records to side-load (Zendesk `include=`);
    - `history`: the history sources to read with each page (see HistorySource);
    - `platform_slas` / `sla_fields`: read the platform's own SLA records (ServiceNow task_sla) and these fields;
    - `write_reads`: fields to read back just before a write that needs their current value (a ServiceNow tag
      field is read-modify-write);
    - `tier_moves_tags`: a tier write changes the ticket's tags too (a Zendesk dropdown's option is a tag), so
      the write needs the tags as they are;
    - `history_trim`: what of a history event the mapping reads (the rest is not kept between polls: a
      connector holding many tickets' events keeps only this); None keeps the event whole.
    """

    fields: tuple[str, ...] = ()
    sideloads: tuple[str, ...] = ()
    history: tuple[HistorySource, ...] = ()
    platform_slas: bool = False
    sla_fields: tuple[str, ...] = ()
    write_reads: tuple[str, ...] = ()
    tier_moves_tags: bool = False
    history_trim: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None


class RecordSpec(Protocol):
    """The mapping as a connector sees it: what to read, and the write rendered into the platform's patch.

    Data flows one way: the mapping declares and renders, the connector moves the bytes. A connector is given an
    object with these two methods (its platform's mapping) and knows nothing else of it.
    """

    def read_spec(self) -> ReadSpec: ...

    def render_patch(self, writeback: WriteBack, current: Mapping[str, Any] | None) -> dict[str, Any]:
        """The platform fields that carry the write-back's tier and tags, given the record's current values
        (`ReadSpec.write_reads`, or the tags) when the write needs them; {} when nothing is to change."""
        ...


@dataclass(frozen=True)
class Page:
    records: list[RawRecord]
    cursor: str
    """Where the next poll resumes; committed by the cycle only after every record here is handled."""
    has_more: bool


@dataclass(frozen=True)
class ApplyResult:
    ticket_id: str
    revision: str
    """The ticket's revision after the write, so the echo on the next poll is recognised as ours."""
    record: RawRecord | None = None
    """The ticket as the write left it, when the platform's answer carries it (Zendesk's Update Ticket does):
    the cycle books it, so a review before the echo arrives sees our write, not the record from before it
    (which would plan the same write again and meet a 409)."""


class ConnectorError(Exception):
    """Base of every error a connector raises; the message names the instance and the ticket."""


class TransientError(ConnectorError):
    """Retries were exhausted (5xx, 429, connection): keep the intent queued and try next cycle."""


class AmbiguousWriteError(TransientError):
    """A write timed out after it may have reached the server: verify (comment key) before retrying."""


class ConflictError(ConnectorError):
    """The ticket changed under us (409, stale revision): re-read it and plan again."""


class PermanentWriteError(ConnectorError):
    """The platform refused the write for good (422, 404, closed or deleted ticket): dead-letter it."""


class AuthError(ConnectorError):
    """401/403: credentials are wrong or lack rights. Fatal for the instance, never retried.

    `status` lets a connector tell a 403 on one record's write (an ACL or workflow refusing that record, to be
    dead-lettered) from credentials that are wrong for everything.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Connector(Protocol):
    platform: str
    instance: str

    def poll(self, cursor: str | None, now: datetime) -> Page:
        """Return the next page of changed tickets after `cursor` (None: start from the configured look-back)."""
        ...

    def open_tickets(self, cursor: str | None, now: datetime) -> Page:
        """The next page of *all* open tickets, whatever their age (first start, `sync.py backfill`), through
        the platform's cheapest path for that; None starts the scan. Records are shaped as `poll` gives them."""
        ...

    def fetch(self, ticket_id: str) -> RawRecord | None:
        """Re-read one ticket (after a conflict); None when it no longer exists."""
        ...

    def apply(self, writeback: WriteBack) -> ApplyResult:
        """Send the write-back in one API call (tier, tags, internal comment)."""
        ...

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        """Whether an internal comment carrying this key is already on the ticket (crash recovery)."""
        ...

    def close(self) -> None: ...


class NotBatchedError(TransientError):
    """A batched write that the platform's job did not apply to this ticket (its own failure in the job's
    results, or a job that failed or was killed before reaching it): send it again on its own."""


BatchOutcome = ApplyResult | ConnectorError
"""One write-back's fate in a batch: its result, or the error its single apply would have raised."""


def apply_many(connector: Connector, writebacks: list[WriteBack]) -> list[BatchOutcome]:
    """Send several write-backs, in as few calls as the platform allows; outcomes in the order given.

    Optional for a connector: one that has its own `apply_many` (Zendesk's update_many jobs) is asked to send
    them together; any other gets one `apply` per write. A connector's own `apply_many` raises only for what
    stops the whole batch (rate limit, a stop request, a job that may have been queued but cannot be told
    apart: `AmbiguousWriteError`), and returns a ConnectorError per ticket for the rest.
    """
    own = getattr(connector, "apply_many", None)
    if own is not None:
        return list(own(writebacks))
    outcomes: list[BatchOutcome] = []
    for writeback in writebacks:
        try:
            outcomes.append(connector.apply(writeback))
        except (RateLimitedError, WaitInterruptedError, AmbiguousWriteError, AuthError):
            raise
        except ConnectorError as error:
            outcomes.append(error)
    return outcomes


class RateLimitedError(TransientError):
    """The platform asked us to wait longer than the HTTP layer waits in-process (`HttpOptions.max_retry_after`).

    Raised instead of sending early: nothing was applied by the request that raised it. `retry_at` (an aware
    UTC datetime on our clock, computed from the platform's own delay or its `Date` header) is when this
    instance may send again; the daemon defers the instance until then rather than sleeping through a cycle.
    """

    def __init__(self, message: str, retry_at: datetime) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class WaitInterruptedError(TransientError):
    """A stop was requested (SIGTERM/SIGINT set the HTTP client's `stop` event) while the HTTP layer waited.

    Waits only come before a send that has not happened yet (pacing, backoff after a failure that proved the
    request unsent, a Retry-After), so the abandoned request was not applied: keep the intent, stop the cycle.
    """


class InvalidIdError(PermanentWriteError):
    """An id that cannot be put in a URL path safely (`/`, `..`, control characters): refused, never sent.

    A record id comes from the platform's payload; used raw, `10099/../../other` would address another resource.
    """

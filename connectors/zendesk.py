"""Zendesk Support connector: incremental polling, re-reads, one safe write per ticket or batch jobs, comment lookup.

Every request goes through `connectors.http.HttpClient` (retries, pacing, redaction, recording). zenpy is used
where its model fits, over `http.session()`; raw requests through `http.request` where it does not:

- poll: `GET /api/v2/incremental/tickets/cursor.json` through `http.request`. zenpy's
  `tickets.incremental(cursor=..., paginate_by_time=False)` returns a generator that walks every page itself
  and hides each page's `after_cursor` and `end_of_stream`; the sync cycle must commit the cursor page by page,
  after the page's tickets are handled, so we need one page per call with its cursor.
  `start_time` (epoch seconds) is sent on the first call only (no stored cursor), at most `now - 60 s`:
  Zendesk excludes the last minute from the export. `exclude_deleted` is left false so deleted tickets come
  back with `status: "deleted"` (the mapping turns them into tombstones). `include=metric_sets,organizations`
  sideloads what the mapping reads. Docs:
  https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/
  https://developer.zendesk.com/documentation/ticketing/managing-tickets/using-the-incremental-export-api/
- fetch: `GET /api/v2/tickets/{id}.json` through `http.request`: we need the raw JSON for the mapping, and
  zenpy would deserialize (and cache) an object. 404 -> None. With history, also the ticket's audits
  (`GET /api/v2/tickets/{id}/audits.json`, every page): a single-ticket read (a conflict, `explain`) is per ticket
  anyway, and it must not depend on how long this process has followed the event export.
- apply: ONE `PUT /api/v2/tickets/{id}.json` through `http.request` with `safe_update: true` and
  `updated_stamp: <revision>` (the ticket's updated_at as we read it), so a ticket changed under us answers
  409 instead of being overwritten. Tags: the Tickets API documents `additional_tags`/`remove_tags` only for
  the bulk `update_many` form ("Updating tag lists"), and says a `tags` array on Update Ticket *replaces*
  the list. Because the PUT is a safe update, replacing is exact: we send `tags` = the tags we read at
  `revision`, minus `remove_tags`, plus `add_tags`; if anyone changed the ticket since, Zendesk refuses with
  409 and the cycle re-reads and re-plans. The tags at `revision` come from the record the write was planned
  from: the cycle hands it over (`observe`) from its book before the write, and a fetch or a write's answer
  leaves it too (a small memo); only when the memo does not hold that revision do we GET the ticket first.
  The answer's ticket comes back in the ApplyResult, so the cycle books the ticket as written.
  Docs: https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#update-ticket
  https://developer.zendesk.com/documentation/ticketing/managing-tickets/creating-and-updating-tickets/
  (Protecting against ticket update collisions; the 409 body is `{"error": "UpdateConflict", ...}`)
  https://developer.zendesk.com/documentation/ticketing/managing-tickets/adding-tags-to-tickets-without-overwriting-existing-tags/
  409 -> ConflictError; 422 (e.g. "Status: closed prevents ticket update"), 404 and other 4xx ->
  PermanentWriteError carrying the API's `error`/`description`/`details`.
- apply_many: several write-backs as Update Many Tickets jobs (`PUT /api/v2/tickets/update_many.json`, 100
  tickets a job, each with its own values), up to `JOBS_IN_FLIGHT` queued, then followed to their ends together
  (Show Many Job Statuses, one request a round for all of them); see `apply_many` for how a job's collisions,
  per-ticket failures and lost answers are handled.
  https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#update-many-tickets
- has_comment: zenpy `tickets.comments(id)` (cursor pagination, `links.next` while `meta.has_more`), over the
  same session. https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_comments/
- auth: API token as basic auth `{email}/token:{api_token}`, or an OAuth access token as a bearer token.
  https://developer.zendesk.com/api-reference/introduction/security-and-auth/

- history: the incremental ticket event export (`GET /api/v2/incremental/ticket_events.json?start_time=...
  &include=comment_events`, time based, 1000 events a page, `end_time` the next `start_time`) followed alongside
  the ticket export, `history_pages_per_poll` pages (default 1) per poll whatever the page size: Zendesk has no
  audits-of-these-tickets query, and one audits call per ticket is what the cost rule forbids. The events go into
  an in-memory book by ticket; a ticket's facts come from it only when the book holds all its events (see
  `_EventBook.related`); a restarted daemon follows again from its look-back.
  https://developer.zendesk.com/api-reference/ticketing/ticket-management/incremental_exports/#incremental-ticket-event-export

RawRecord.related carries `organization` (the sideloaded organization of the ticket, or absent), `metric_set`
(its ticket metric set, or absent) and, when the mapping reads history, `ticket_events` with
`ticket_events_window` ([since, until) epoch seconds the book is complete for) or `history_unavailable`
(the export was refused): the contract with the mapping, which this module never imports (connectors.base
RecordSpec: it reads `read_spec()` and sends what `render_patch()` renders).
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import SecretStr
from zenpy import Zenpy
from zenpy.lib.exception import RecordNotFoundException

from connectors.base import (
    MAPPINGS,
    AmbiguousWriteError,
    ApplyResult,
    AuthError,
    BatchOutcome,
    ConflictError,
    ConnectorError,
    HistorySource,
    NotBatchedError,
    Page,
    PermanentWriteError,
    RateLimitedError,
    RawRecord,
    RecordSpec,
    TransientError,
    WaitInterruptedError,
)
from connectors.http import HttpClient, decode_json
from connectors.paging import CursorExport, TimeExport
from engine.model import COMMENT_MARKER, WriteBack

PLATFORM = "zendesk"
INCREMENTAL_PATH = "/api/v2/incremental/tickets/cursor.json"
EVENTS_PATH = "/api/v2/incremental/ticket_events.json"
UPDATE_MANY_PATH = "/api/v2/tickets/update_many.json"
JOB_STATUSES_PATH = "/api/v2/job_statuses.json"
JOB_STATUSES_SHOW_MANY_PATH = "/api/v2/job_statuses/show_many.json"
JOB_LIST_PAGES = 5
"""Pages of List Job Statuses read at most (100 jobs each) before an unfinished job is taken to be possible."""
JOB_SIZE = 100
"""Tickets a batch update job takes at most (Update Many Tickets: "up to 100 tickets")."""
JOB_ENDED = frozenset({"completed", "failed", "killed"})
JOBS_IN_FLIGHT = 15
"""Jobs queued before they are followed. An account may have 30 queued or running (Rate limits, "Job
limit": https://developer.zendesk.com/api-reference/introduction/rate-limits/); half leaves room for the
account's other integrations. One Show Many Job Statuses poll follows them all, so a job costs 1 + 1/15
requests of the account's 700 a minute: 0.97 of the least the API allows (1 + 1/30), where 10 a poll gave
0.86 of it at best and 0.857 measured (bench/throughput.py, 100,000 tickets)."""
DEFAULT_JOB_POLL_SECONDS = 1.0
"""The first wait before asking how a job went; doubled after each answer that it is still queued or working."""
MAX_JOB_POLL_SECONDS = 30.0
DEFAULT_JOB_POLLS = 8
DEFAULT_HISTORY_PAGES = 1
_BOOK_SIZE = 20000
_BOOK_BYTES = 16 * 1024 * 1024
"""The event book's bound in stored bytes (trimmed, compressed events: a few hundred bytes a ticket with a note
or two): tickets with long histories (many changes, long text fields) fill it before _BOOK_SIZE tickets do."""
MIN_EXPORT_AGE = timedelta(seconds=60)
DEFAULT_LOOKBACK_HOURS = 72
DEFAULT_PAGE_SIZE = 1000
"""The export's own maximum: its ceiling is 10 requests a minute whatever the page size, so smaller pages only
read slower (100 a page is a tenth of the ceiling)."""
MAX_PAGE_SIZE = 1000
_MEMO_SIZE = 5000
_PLACEHOLDER_SUBDOMAIN = "escalation-sync"


class BearerAuth(httpx.Auth):
    """OAuth access token: `Authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


def make_auth(credentials: Mapping[str, SecretStr]) -> httpx.Auth:
    """email + api_token -> basic `{email}/token:{api_token}`; oauth_token alone -> bearer."""
    if "oauth_token" in credentials:
        return BearerAuth(_secret(credentials, "oauth_token"))
    email = _secret(credentials, "email")
    token = _secret(credentials, "api_token")
    return httpx.BasicAuth(f"{email}/token", token)


def _secret(credentials: Mapping[str, SecretStr], name: str) -> str:
    value = credentials.get(name)
    if value is None:
        raise ValueError(f"zendesk credentials: {name!r} is missing (give email + api_token, or oauth_token)")
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    if not text:
        raise ValueError(f"zendesk credentials: {name!r} is empty")
    return text


class ZendeskConnector:
    """connectors.base.Connector for one Zendesk Support instance."""

    platform = PLATFORM

    def __init__(self, instance: str, http: HttpClient, mapping: RecordSpec, options: Mapping[str, Any]) -> None:
        self.instance = instance
        self.http = http
        self.mapping = mapping
        self.spec = mapping.read_spec()
        self.options = dict(options)
        self.page_size = max(1, min(int(self.options.get("page_size", DEFAULT_PAGE_SIZE)), MAX_PAGE_SIZE))
        self.lookback = timedelta(hours=float(self.options.get("initial_lookback_hours", DEFAULT_LOOKBACK_HOURS)))
        self._memo: OrderedDict[str, tuple[str, frozenset[str], str]] = OrderedDict()
        self._planned: OrderedDict[str, tuple[str, Mapping[str, Any]]] = OrderedDict()
        """The sideloads of each observed record, by ticket (its revision beside them): a write's answer is
        handed back as the ticket as written, with these sideloads (`_written`)."""
        sources = {source.name: source for source in self.spec.history}
        unknown = set(sources) - {"ticket_events"}
        if unknown:
            raise ValueError(f"{instance}: the mapping asks for history sources Zendesk has not: {sorted(unknown)}")
        self.events: HistorySource | None = sources.get("ticket_events")
        self.history_pages = max(0, int(self.options.get("history_pages_per_poll", DEFAULT_HISTORY_PAGES)))
        self.job_poll_seconds = max(0.0, float(self.options.get("job_poll_seconds", DEFAULT_JOB_POLL_SECONDS)))
        self.job_polls = max(1, int(self.options.get("job_polls", DEFAULT_JOB_POLLS)))
        self._book = _EventBook(self.spec.history_trim)
        self._tickets_paging = CursorExport(instance, "incremental ticket export")
        self._events_paging = TimeExport(instance, "incremental ticket event export")
        # zenpy builds https://{subdomain}.zendesk.com URLs; the adapter re-bases them onto http.base_url.
        # anonymous=True: the HttpClient owns authentication, so zenpy never holds a secret.
        self.zenpy = Zenpy(
            subdomain=self._subdomain(),
            session=http.session(),
            anonymous=True,
            disable_cache=True,
            timeout=http.options.timeout,
        )

    def _subdomain(self) -> str:
        if self.options.get("subdomain"):
            return str(self.options["subdomain"])
        host = urlsplit(self.http.base_url).hostname or ""
        if host.endswith(".zendesk.com"):
            return host.removesuffix(".zendesk.com")
        return _PLACEHOLDER_SUBDOMAIN

    # -- poll -------------------------------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> Page:
        return self._export(cursor, min(now - self.lookback, now - MIN_EXPORT_AGE), self.page_size, now)

    def open_tickets(self, cursor: str | None, now: datetime) -> Page:
        """Every ticket, through the same incremental export from its beginning (start_time 0).

        Why not the search export (`status<solved`): it sideloads nothing, so every 100 tickets would cost a
        `show_many` with metric sets on top, and without metric sets first-response clocks look breached.
        The export reads 1,000 tickets a call, closed ones included (the cycle drops them).
        """
        return self._export(cursor, datetime.fromtimestamp(0, UTC), MAX_PAGE_SIZE, now)

    def _export(self, cursor: str | None, start: datetime, per_page: int, now: datetime) -> Page:
        params: dict[str, Any] = {"per_page": per_page, "include": ",".join(self.spec.sideloads)}
        if cursor:
            params["cursor"] = cursor
        else:
            params["start_time"] = int(start.timestamp())
        response = self.http.request("GET", INCREMENTAL_PATH, params=params)
        body = self._json(response, "incremental export")
        if response.status_code != 200:
            raise TransientError(
                f"{self.instance}: incremental export: HTTP {response.status_code}: {_error_text(body)}"
            )
        del response  # decoded: its bytes are not held while the event export is read (issue 14, memory)
        tickets = body.get("tickets")
        if not isinstance(tickets, list):
            raise TransientError(f"{self.instance}: incremental export: no tickets list in the page")
        end_of_stream = body.get("end_of_stream") is True
        next_cursor = self._tickets_paging.next_cursor(cursor, body.get("after_cursor"), end_of_stream)
        if tickets or not self._book.caught_up:
            # An idle cycle stays one call: with no ticket changed and the book caught up, no fact can be missing.
            self._follow_events(now)
        records = self._records(tickets, body, remember=False)
        return Page(records=records, cursor=str(next_cursor), has_more=not end_of_stream)

    def _follow_events(self, now: datetime) -> None:
        """Read the next page(s) of the ticket event export into the book: `history_pages_per_poll` calls per
        poll (1 by default) whatever the page's size, never one per ticket.

        The book is this process's memory of every event since it started following (the configured look-back
        before its first poll); a ticket's facts are complete only when all its events fall inside it, which the
        mapping judges from `ticket_events_window`. The export needs an admin's access: a 403 leaves the facts
        to the metric set (the window stays empty), with the history reported as unavailable."""
        if self.events is None:
            return
        book = self._book
        cutoff = int((now - MIN_EXPORT_AGE).timestamp())
        if book.position is None:
            book.position = book.since = min(int((now - self.lookback).timestamp()), cutoff)
        for _ in range(self.history_pages):
            start = min(book.position, cutoff)
            params = {"start_time": start, "include": ",".join(self.events.fields)}
            try:
                response = self.http.request("GET", EVENTS_PATH, params=params)
            except AuthError as error:
                if error.status != 403:
                    raise
                book.denied = True
                return
            body = self._json(response, "ticket event export")
            if response.status_code != 200 or not isinstance(body.get("ticket_events"), list):
                raise TransientError(
                    f"{self.instance}: ticket event export: HTTP {response.status_code}: {_error_text(body)}"
                )
            book.denied = False
            del response  # decoded: not held while its events are packed into the book
            for event in body["ticket_events"]:
                book.add(event)
            end_of_stream = body.get("end_of_stream") is True
            book.position = self._events_paging.next_start(start, body.get("end_time"), end_of_stream)
            book.caught_up = end_of_stream
            if end_of_stream:
                book.until = max(book.until or 0, cutoff + 1)  # everything up to the cutoff has been delivered
                return
            book.until = max(book.until or 0, book.position)

    def _records(self, tickets: Iterable[Any], body: Mapping[str, Any], remember: bool = True) -> list[RawRecord]:
        organizations = {org.get("id"): org for org in _objects(body.get("organizations"))}
        metric_sets = {metric.get("ticket_id"): metric for metric in _objects(body.get("metric_sets"))}
        if isinstance(body.get("metric_set"), Mapping):
            metric_sets[body["metric_set"].get("ticket_id")] = body["metric_set"]
        records = []
        for ticket in tickets:
            if not isinstance(ticket, dict):
                continue
            related: dict[str, Any] = {}
            organization = organizations.get(ticket.get("organization_id"))
            if organization is not None:
                related["organization"] = organization
            metric_set = metric_sets.get(ticket.get("id"))
            if metric_set is not None:
                related["metric_set"] = metric_set
            if self.events is not None:
                related.update(self._book.related(ticket.get("id")))
            if remember:
                self._remember(ticket)
            records.append(RawRecord(id=str(ticket.get("id")), data=ticket, related=related))
        return records

    def observe(self, record: RawRecord) -> None:
        """The record a write about to be sent was planned from (the cycle's book): its tags at its revision
        are what a safe PUT's `tags` list starts from, so the write needs no read first. Polled pages are not
        memoised: a backlog larger than the memo would push out the tickets whose writes come after it."""
        self._remember(record.data)
        revision = record.data.get("updated_at")
        if isinstance(revision, str):
            self._planned[record.id] = (revision, record.related)
            self._planned.move_to_end(record.id)
            while len(self._planned) > _MEMO_SIZE:
                self._planned.popitem(last=False)

    def _written(self, writeback: WriteBack, ticket: dict[str, Any], audit: Any) -> RawRecord:
        """The ticket as our safe PUT left it, with the sideloads of the record the write was planned from.

        The PUT was a safe update at `writeback.revision`: nobody changed the ticket between that revision and
        our write, so the planned record's history plus this write's own audit is its whole history up to now.
        The event window is moved past the written revision accordingly (when it covered the planned revision):
        none of our write's events counts as a reply, an agent action or a person's note, and a tier change
        of ours shows as the history lagging behind the ticket, which the engine dates from its own record.
        """
        ticket_id = str(writeback.ticket_id)
        planned = self._planned.pop(ticket_id, None)
        if planned is None or planned[0] != writeback.revision:
            return RawRecord(id=ticket_id, data=ticket)
        related = dict(planned[1])
        audits = related.get("ticket_audits")
        if isinstance(audits, list) and isinstance(audit, Mapping):
            related["ticket_audits"] = [*audits, audit]
        window, written_at = related.get("ticket_events_window"), _epoch(ticket.get("updated_at"))
        before_at = _epoch(writeback.revision)
        if (
            isinstance(window, list)
            and len(window) == 2
            and all(isinstance(edge, int) for edge in window)
            and written_at is not None
            and before_at is not None
            and before_at < window[1]
        ):
            related["ticket_events_window"] = [window[0], max(window[1], int(written_at) + 1)]
        return RawRecord(id=ticket_id, data=ticket, related=related)

    def _remember(self, ticket: Mapping[str, Any]) -> None:
        updated_at, tags = ticket.get("updated_at"), ticket.get("tags")
        if not isinstance(updated_at, str) or not isinstance(tags, list):
            return
        key = str(ticket.get("id"))
        self._memo[key] = (updated_at, frozenset(str(tag) for tag in tags), str(ticket.get("status")))
        self._memo.move_to_end(key)
        while len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)

    # -- fetch ------------------------------------------------------------------------------------------------

    def fetch(self, ticket_id: str) -> RawRecord | None:
        """Re-read one ticket; with history, its audits too (a per-ticket read anyway: a conflict, `explain`),
        so a daemon that has not followed the event export long enough still knows the whole history."""
        record = self._fetch(ticket_id)
        if record is None or self.events is None:
            return record
        return RawRecord(record.id, record.data, {**record.related, **self._audits(ticket_id)})

    def _audits(self, ticket_id: str) -> dict[str, Any]:
        """`GET /api/v2/tickets/{id}/audits.json`, every page (offset pagination, `next_page` until null).
        https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_audits/#list-audits-for-a-ticket"""
        audits: list[Any] = []
        url: str | None = f"/api/v2/tickets/{_ticket_path_id(ticket_id)}/audits.json"
        used: str | None = None
        paging = CursorExport(self.instance, f"audits of ticket {ticket_id}")
        while url is not None:
            try:
                response = self.http.request("GET", url)
            except AuthError as error:
                if error.status != 403:
                    raise
                return {"history_unavailable": ["ticket_audits"]}
            body = self._json(response, f"audits of ticket {ticket_id}")
            if response.status_code != 200 or not isinstance(body.get("audits"), list):
                raise TransientError(
                    f"{self.instance}: audits of ticket {ticket_id}: HTTP {response.status_code}: {_error_text(body)}"
                )
            audits.extend(body["audits"])
            following = body.get("next_page") if isinstance(body.get("next_page"), str) else None
            if following is None:
                break
            used = url = paging.next_cursor(used, following, end_of_stream=False)
        return {"ticket_audits": audits}

    def _fetch(self, ticket_id: str) -> RawRecord | None:
        params = {"include": ",".join(self.spec.sideloads)}
        response = self.http.request("GET", f"/api/v2/tickets/{_ticket_path_id(ticket_id)}.json", params=params)
        if response.status_code == 404:
            self._memo.pop(str(ticket_id), None)
            return None
        body = self._json(response, f"ticket {ticket_id}")
        if response.status_code != 200 or not isinstance(body.get("ticket"), dict):
            raise TransientError(
                f"{self.instance}: ticket {ticket_id}: HTTP {response.status_code}: {_error_text(body)}"
            )
        return self._records([body["ticket"]], body)[0]

    # -- apply ------------------------------------------------------------------------------------------------

    def apply(self, writeback: WriteBack) -> ApplyResult:
        ticket_id = writeback.ticket_id
        where = f"{self.instance}: ticket {ticket_id}"
        tier_moves_tags = writeback.tier is not None and self.spec.tier_moves_tags
        current = None
        if writeback.add_tags or writeback.remove_tags or tier_moves_tags:
            current = {"tags": sorted(self._current_tags(writeback, where))}
        # The mapping renders tier and tags into ticket fields; a `tags` list replaces the ticket's tags, which
        # is exact because the PUT is a safe update at the revision those tags were read at.
        update = dict(self.mapping.render_patch(writeback, current))
        if writeback.comment is not None:
            update["comment"] = {"body": writeback.comment.text, "public": False}
        update["safe_update"] = True
        update["updated_stamp"] = writeback.revision
        response = self.http.request(
            "PUT", f"/api/v2/tickets/{_ticket_path_id(ticket_id)}.json", json={"ticket": update}
        )
        status = response.status_code
        if status == 409:
            self._memo.pop(str(ticket_id), None)
            raise ConflictError(
                f"{where}: changed since revision {writeback.revision}: {_error_text(self._body(response))}"
            )
        if status in (200, 201):
            body = self._json(response, where)
            ticket = body.get("ticket")
            if not isinstance(ticket, dict) or not ticket:
                return ApplyResult(ticket_id=str(ticket_id), revision="")
            self._remember(ticket)
            written = self._written(writeback, ticket, body.get("audit"))
            return ApplyResult(ticket_id=str(ticket_id), revision=str(ticket.get("updated_at") or ""), record=written)
        text = _error_text(self._body(response))
        if 400 <= status < 500:
            if status == 404:
                self._memo.pop(str(ticket_id), None)
            raise PermanentWriteError(f"{where}: HTTP {status}: {text}")
        raise TransientError(f"{where}: unexpected HTTP {status}: {text}")

    def apply_many(self, writebacks: list[WriteBack]) -> list[BatchOutcome]:
        """Send up to `JOB_SIZE` write-backs a call as Update Many Tickets jobs, each followed to its end.

        `PUT /api/v2/tickets/update_many.json` with `{"tickets": [{"id", ...}]}` (a batch update: different
        values per ticket, the per-ticket `comment` included) answers a queued `job_status`; up to
        `JOBS_IN_FLIGHT` jobs are queued, then `GET /api/v2/job_statuses/show_many.json?ids=...` asks after
        every unfinished one at once (`_follow_jobs`: at once, then `job_poll_seconds` doubling, `job_polls`
        rounds at most, each a counted call) until each is `completed`, `failed` or `killed`. A result
        `{"id", "action": "update", "success": true, "status": "Updated"}` is done; any other (`{"id", "index", "error", "details"}`),
        and every ticket a failed or killed job never reported, comes back as NotBatchedError so the cycle
        sends it again on its own with the safe single PUT.
        https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#update-many-tickets
        https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/

        Collisions: safe_update/updated_stamp are documented for Update Ticket only, so a job cannot be
        relied on to refuse a ticket a person changed since we read it. The job therefore never replaces a
        list: tags go as `additional_tags`/`remove_tags` (the update_many form, "Updating tag lists"), so a
        person's tag edit survives, and a dropdown tier's option tag follows the field on Zendesk's side. What a
        job can still overwrite is the tier field itself, set by a person in the last minute or so before the
        job (the export holds back a minute: newer edits are not in the book yet). `safe_update` is still sent
        per ticket: were it honoured, that ticket fails in the results and goes out alone, where a 409 makes
        the cycle re-read it. A ticket whose last read shows it closed is refused here, never sent.
        A job that was, or may have been, queued but whose end was not seen gives AmbiguousWriteError for its own
        tickets (the others' outcomes stand): the cycle leaves those intents pending for the comment key check
        instead of sending them twice. A rate limit or a stop before a job was sent gives RateLimitedError or
        WaitInterruptedError for the tickets not sent; the jobs already queued are still followed.
        """
        outcomes: list[BatchOutcome] = []
        step = JOB_SIZE * JOBS_IN_FLIGHT
        for start in range(0, len(writebacks), step):
            outcomes.extend(self._jobs(writebacks[start : start + step]))
        return outcomes

    def _jobs(self, writebacks: list[WriteBack]) -> list[BatchOutcome]:
        """Queue a job per `JOB_SIZE` write-backs, then follow them to their ends together: the jobs run on
        Zendesk's side while the others are queued, so one round of polls serves them all (following them one
        after the other cost a whole wait per job: at most 60 jobs a minute whatever the ceilings allow)."""
        outcomes: dict[str, BatchOutcome] = {}
        queued: list[tuple[dict[str, Any], set[str]]] = []
        for start in range(0, len(writebacks), JOB_SIZE):
            tickets: list[dict[str, Any]] = []
            for writeback in writebacks[start : start + JOB_SIZE]:
                where = f"{self.instance}: ticket {writeback.ticket_id}"
                try:
                    tickets.append(self._batch_update(writeback, where))
                except ConnectorError as error:
                    outcomes[str(writeback.ticket_id)] = error
            if not tickets:
                continue
            sent = {str(ticket["id"]) for ticket in tickets}
            try:
                response = self.http.request("PUT", UPDATE_MANY_PATH, json={"tickets": tickets})
                queued.append((self._job_status(response, "update_many"), sent))
            except PermanentWriteError as error:  # the batch as a whole refused (4xx): nothing was queued
                outcomes.update({ticket_id: NotBatchedError(str(error)) for ticket_id in sent})
            except (RateLimitedError, WaitInterruptedError) as error:
                # Not sent, and nothing after it may go out now; the jobs already queued are still followed.
                unsent = {str(w.ticket_id) for w in writebacks[start:] if str(w.ticket_id) not in outcomes}
                outcomes.update(dict.fromkeys(unsent, error))
                break
            except TransientError as error:  # this job may have been queued: only its own tickets are unknown
                outcomes.update(dict.fromkeys(sent, AmbiguousWriteError(str(error))))
        outcomes.update(self._follow_jobs(queued))
        return [outcomes[str(writeback.ticket_id)] for writeback in writebacks]

    def _batch_update(self, writeback: WriteBack, where: str) -> dict[str, Any]:
        """One ticket of a batch update: the mapping's tier fields, tags as a difference, the note."""
        self._planned.pop(str(writeback.ticket_id), None)  # a job's answer carries no ticket to book
        memo = self._memo.get(str(writeback.ticket_id))
        if memo is not None and memo[0] == writeback.revision and memo[2] == "closed":
            raise PermanentWriteError(f"{where}: closed tickets cannot be updated")
        tier_only = replace(writeback, add_tags=frozenset(), remove_tags=frozenset(), comment=None)
        # The mapping renders a whole tag list only to move a dropdown's option tag: Zendesk moves it itself
        # when the field changes, and a list would replace a person's concurrent tag edit, so it is dropped.
        update = {k: v for k, v in self.mapping.render_patch(tier_only, {"tags": []}).items() if k != "tags"}
        update["id"] = _ticket_path_id(writeback.ticket_id)
        if writeback.add_tags:
            update["additional_tags"] = sorted(writeback.add_tags)
        if writeback.remove_tags:
            update["remove_tags"] = sorted(writeback.remove_tags)
        if writeback.comment is not None:
            update["comment"] = {"body": writeback.comment.text, "public": False}
        update["safe_update"] = True
        update["updated_stamp"] = writeback.revision
        return update

    def _job_status(self, response: httpx.Response, what: str) -> dict[str, Any]:
        status = response.status_code
        body = self._body(response)
        job = body.get("job_status") if body else None
        if status in (200, 201, 202) and isinstance(job, dict) and isinstance(job.get("id"), str):
            _job_path_id(job["id"])  # an id unfit to ask after leaves this job's tickets unknown, not the others'
            return job
        text = _error_text(body)
        if what == "update_many" and 400 <= status < 500:
            raise PermanentWriteError(f"{self.instance}: update_many refused: HTTP {status}: {text}")
        raise AmbiguousWriteError(f"{self.instance}: {what}: HTTP {status}, no job status: {text}")

    def _follow_jobs(self, queued: list[tuple[dict[str, Any], set[str]]]) -> dict[str, BatchOutcome]:
        """Poll the queued jobs to their ends, all of them in one Show Many Job Statuses request a round
        (`GET /api/v2/job_statuses/show_many.json?ids=a,b,...`): a poll per job was half the requests of a
        write backlog. The first round goes out as soon as the last job is
        queued (the jobs have run meanwhile; the API documents no earliest poll), later ones after
        `job_poll_seconds`, doubling, `job_polls` rounds at most. Each job's outcomes come from its own answer;
        a job whose end was not seen (the request failed past its retries, or still unfinished at the bound)
        leaves only its own tickets unknown (AmbiguousWriteError)."""
        jobs = {str(job["id"]): job for job, _ in queued}
        outcomes: dict[str, BatchOutcome] = {}
        wait = self.job_poll_seconds
        for attempt in range(self.job_polls):
            unfinished = [job_id for job_id, job in jobs.items() if job.get("status") not in JOB_ENDED]
            if not unfinished:
                break
            if attempt:
                self.http.pause(wait, f"waiting for {len(unfinished)} jobs")
                wait = min(wait * 2, MAX_JOB_POLL_SECONDS)
            try:
                jobs.update(self._show_jobs(unfinished))
            except WaitInterruptedError:
                raise
            except TransientError as error:  # their ends were not seen: their tickets are unknown, not the others'
                for job, sent in queued:
                    if str(job["id"]) in unfinished:
                        outcomes.update(dict.fromkeys(sent, AmbiguousWriteError(str(error))))
                        jobs.pop(str(job["id"]))
                break
        for job, sent in queued:
            seen = jobs.get(str(job["id"]))
            if seen is None:
                continue
            if seen.get("status") not in JOB_ENDED:
                error = AmbiguousWriteError(
                    f"{self.instance}: job {seen['id']} still {seen.get('status')} after {self.job_polls} polls"
                )
                outcomes.update(dict.fromkeys(sent, error))
                continue
            outcomes.update(self._results(seen, sent))
        return outcomes

    def _show_jobs(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The statuses of these jobs by id, from one request; a job the answer leaves out is not in it."""
        ids = ",".join(_job_path_id(job_id) for job_id in job_ids)
        # The ids go as the reference writes them (`ids=a,b`); each one is checked to need no escaping.
        response = self.http.request("GET", f"{JOB_STATUSES_SHOW_MANY_PATH}?ids={ids}")
        body = self._body(response)
        listed = body.get("job_statuses") if body else None
        if response.status_code != 200 or not isinstance(listed, list):
            text = _error_text(body)
            raise AmbiguousWriteError(
                f"{self.instance}: jobs {ids}: HTTP {response.status_code}, no job statuses: {text}"
            )
        wanted = set(job_ids)
        return {
            str(job["id"]): job
            for job in listed
            if isinstance(job, dict) and isinstance(job.get("id"), str) and job["id"] in wanted
        }

    def _results(self, job: dict[str, Any], sent: set[str]) -> dict[str, BatchOutcome]:
        """Each sent ticket's outcome from an ended job's results."""
        outcomes: dict[str, BatchOutcome] = {}
        results = job.get("results") if isinstance(job.get("results"), list) else []
        for result in results:
            if not isinstance(result, Mapping) or str(result.get("id")) not in sent:
                continue
            ticket_id = str(result["id"])
            if result.get("success") is True:
                outcomes[ticket_id] = ApplyResult(ticket_id=ticket_id, revision="")
            else:
                reason = ": ".join(str(result[k]) for k in ("error", "errors", "details") if result.get(k))
                outcomes[ticket_id] = NotBatchedError(
                    f"{self.instance}: ticket {ticket_id}: not applied by job {job['id']}: {reason or 'no reason'}"
                )
        for ticket_id in sent - set(outcomes):
            outcomes[ticket_id] = NotBatchedError(
                f"{self.instance}: ticket {ticket_id}: job {job['id']} {job.get('status')} without a result for it"
            )
        return outcomes

    def jobs_idle(self) -> bool | None:
        """Whether no batch job of the account is queued or working any more, waiting (bounded) while one is.

        A job whose queued answer was lost cannot be followed by id, so List Job Statuses (`GET
        /api/v2/job_statuses.json`, the jobs of the last day, `{job_statuses, next_page, count}`) is asked
        instead, with the same waits as following one job (`job_poll_seconds`, doubling, `job_polls` lists at
        most, interruptible). True means every job that could hold one of our tickets has ended: a ticket whose
        note is still absent was applied by none and can go out alone. False: a job was still queued or working
        at the bound, so one may still apply it. None: the list cannot tell (more than `JOB_LIST_PAGES` pages,
        or refused: a plan or stand-in without it answers 403/404).
        https://developer.zendesk.com/api-reference/ticketing/ticket-management/job_statuses/#list-job-statuses
        """
        wait = self.job_poll_seconds
        for attempt in range(self.job_polls):
            if attempt:
                self.http.pause(wait, "waiting for batch jobs to end")
                wait = min(wait * 2, MAX_JOB_POLL_SECONDS)
            try:
                running = self._jobs_running()
            except (RateLimitedError, WaitInterruptedError):
                raise  # the cycle stops (and holds off) as after any call
            except AuthError as error:
                if error.status != 403:
                    raise
                return None  # this account may not list jobs
            except TransientError:
                return None  # the list failed past its retries, and nothing was written
            if running is None:
                return None
            if not running:
                return True
        return False

    def _jobs_running(self) -> bool | None:
        """Whether any listed job is unfinished; None when the list cannot tell (refused, unreadable, too long)."""
        url: str | None = JOB_STATUSES_PATH
        for _ in range(JOB_LIST_PAGES):
            if url is None:
                return False
            response = self.http.request("GET", url, params={"per_page": 100} if url == JOB_STATUSES_PATH else None)
            body = self._body(response) if response.status_code == 200 else None
            jobs = body.get("job_statuses") if body else None
            if not isinstance(jobs, list):
                return None
            if any(not isinstance(job, Mapping) or job.get("status") not in JOB_ENDED for job in jobs):
                return True
            next_page = body.get("next_page") if body else None
            url = str(next_page) if next_page else None
        return None if url is not None else False

    def _current_tags(self, writeback: WriteBack, where: str) -> frozenset[str]:
        """The ticket's tags at `writeback.revision` (the memo of the last read, else a re-read)."""
        memo = self._memo.get(str(writeback.ticket_id))
        if memo is None or memo[0] != writeback.revision:
            record = self._fetch(writeback.ticket_id)
            if record is None:
                raise PermanentWriteError(f"{where}: ticket no longer exists")
            memo = self._memo.get(str(writeback.ticket_id))
            if memo is None or memo[0] != writeback.revision:
                seen = record.data.get("updated_at")
                raise ConflictError(
                    f"{where}: now at revision {seen}, the write-back was planned at {writeback.revision}"
                )
        _, current, status = memo
        if status == "closed":
            raise PermanentWriteError(f"{where}: closed tickets cannot be updated")
        return current

    # -- has_comment ------------------------------------------------------------------------------------------

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        marker = COMMENT_MARKER.format(key=idempotency_key)
        try:
            for comment in self.zenpy.tickets.comments(int(ticket_id)):
                for text in (getattr(comment, "body", None), getattr(comment, "plain_body", None)):
                    if text and marker in text:
                        return True
        except RecordNotFoundException:
            return False
        return False

    def close(self) -> None:
        self.http.close()

    # -- helpers ----------------------------------------------------------------------------------------------

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = self._body(response)
        if body is None:
            excerpt = self.http.redact(response.text[:120].replace("\n", " "))
            raise TransientError(f"{self.instance}: {what}: HTTP {response.status_code}, not JSON: {excerpt!r}")
        return body

    @staticmethod
    def _body(response: httpx.Response) -> dict[str, Any] | None:
        try:
            body = decode_json(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None


class _EventBook:
    """Ticket events seen since this process started following the export, by ticket (bounded, oldest out).

    Bounded in tickets and in bytes (issue 14): each event is kept trimmed to what the mapping reads of it (`ReadSpec.history_trim`)
    and stored as compressed JSON (`_pack`), a tenth of the memory of the same values as Python objects (a dict
    per child event), unpacked when a ticket's record is built; the oldest tickets go when either bound is
    passed."""

    def __init__(self, trim: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> None:
        self._trim = trim or (lambda event: event)
        """What of an event the mapping reads (`ReadSpec.history_trim`): all that is kept of it."""
        self.position: int | None = None
        self.since: int | None = None
        self.until: int | None = None
        self.denied = False
        self.caught_up = False
        """The last page read was the end of the stream (then an empty ticket page needs no event call)."""
        self._events: OrderedDict[Any, tuple[Any, ...]] = OrderedDict()
        """Each ticket's events as one flat tuple, `(id, stored, id, stored, ...)` in the order they came: a dict
        a ticket (with its key table) weighed more than the ticket's compressed events (issue 14, memory:
        about 5 MB of the book's 13 MB at 20,000 tickets)."""
        self._bytes = 0
        """The encoded events' size, held under _BOOK_BYTES."""
        self._dropped_until: int | None = None

    def add(self, event: Any) -> None:
        if not isinstance(event, MAPPINGS):
            return
        ticket, event_id = event.get("ticket_id"), event.get("id")
        kept = self._trim(event)
        try:
            stored: bytes | Mapping[str, Any] = _pack(kept)
        except orjson.JSONEncodeError:  # an integer wider than 64 bits (read by `json`): kept as it is
            stored = kept
        held = self._events.get(ticket, ())
        # An event seen again (the export repeats a page's last second) replaces the earlier copy in its place.
        at = next((index for index in range(0, len(held), 2) if held[index] == event_id), None)
        if at is None:
            self._bytes += _size(stored)
            self._events[ticket] = (*held, event_id, stored)
        else:
            self._bytes += _size(stored) - _size(held[at + 1])
            self._events[ticket] = (*held[: at + 1], stored, *held[at + 2 :])
        self._events.move_to_end(ticket)
        while len(self._events) > 1 and (len(self._events) > _BOOK_SIZE or self._bytes > _BOOK_BYTES):
            _, forgotten = self._events.popitem(last=False)
            self._bytes -= sum(_size(item) for item in forgotten[1::2])
            # A forgotten ticket's events are gone: only tickets created after now can be complete again.
            self._dropped_until = self.position

    def related(self, ticket_id: Any) -> dict[str, Any]:
        """What the mapping reads: the ticket's events and the window [since, until) they are complete for."""
        if self.denied:
            return {"history_unavailable": ["ticket_events"]}
        if self.since is None or self.until is None:
            return {}
        since = max(self.since, self._dropped_until or self.since)
        stored = self._events.get(ticket_id, ())[1::2]
        events = [_unpack(item) if isinstance(item, bytes) else item for item in stored]
        events.sort(key=lambda event: str(event.get("timestamp")))
        return {"ticket_events": events, "ticket_events_window": [since, self.until]}


_ZDICT = orjson.dumps(
    {
        "id": 0,
        "ticket_id": 0,
        "timestamp": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "updater_id": 0,
        "event_type": "Audit",
        "child_events": [
            {"subject": "", "event_type": "Create"},
            {"requester_id": 0, "event_type": "Create"},
            {"group_id": 0, "event_type": "Create"},
            {"tags": [], "event_type": "Create"},
            {"priority": "normal", "previous_value": None, "event_type": "Change"},
            {"status": "open", "previous_value": "new", "event_type": "Change"},
            {"event_type": "Comment", "author_id": 0, "body": "", "public": False, "attachments": []},
            {"event_type": "Comment", "author_id": 0, "body": "", "public": True, "attachments": []},
        ],
    }
)
"""zlib's preset dictionary for one event: its keys and usual values, which a single event is too short to
repeat (an event then packs to about a third of its JSON rather than a half)."""


def _pack(event: Mapping[str, Any]) -> bytes:
    """One kept event as compressed JSON (orjson.JSONEncodeError when it cannot be encoded)."""
    packer = zlib.compressobj(zdict=_ZDICT)
    return packer.compress(orjson.dumps(event)) + packer.flush()


def _unpack(stored: bytes) -> Any:
    return decode_json(zlib.decompressobj(zdict=_ZDICT).decompress(stored))


def _size(stored: bytes | Mapping[str, Any] | None) -> int:
    """An event's share of _BOOK_BYTES: its encoded length (one that could not be encoded counts as a page's)."""
    if stored is None:
        return 0
    return len(stored) if isinstance(stored, bytes) else 64 * 1024


def _epoch(value: Any) -> float | None:
    """Zendesk's `updated_at` (`2026-11-16T10:23:37Z`) as epoch seconds; None when it is not such a time."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _objects(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _ticket_path_id(ticket_id: str) -> int:
    """Ticket ids are integers; refusing anything else keeps a bad id from building a different URL."""
    try:
        return int(str(ticket_id))
    except ValueError:
        raise PermanentWriteError(f"not a Zendesk ticket id: {ticket_id!r}") from None


def _job_path_id(job_id: str) -> str:
    """Job ids are opaque strings (`V3-326ff9...`): only letters, digits and dashes go into the path."""
    if not job_id or not all(ch.isalnum() or ch in "-_" for ch in job_id):
        raise AmbiguousWriteError(f"not a Zendesk job id: {job_id[:60]!r}")
    return job_id


def _error_text(body: Mapping[str, Any] | None) -> str:
    """`RecordInvalid: Record validation errors (status: Status: closed prevents ticket update)`."""
    if not body:
        return "no error body"
    error = body.get("error")
    if isinstance(error, Mapping):  # some endpoints nest {"error": {"title", "message"}}
        parts = [str(error.get("title") or ""), str(error.get("message") or "")]
    else:
        parts = [str(error or ""), str(body.get("description") or "")]
    text = ": ".join(part for part in parts if part)
    details = body.get("details")
    if isinstance(details, Mapping):
        notes = []
        for field, problems in details.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                note = problem.get("description") if isinstance(problem, Mapping) else problem
                notes.append(f"{field}: {note}")
        if notes:
            text += f" ({'; '.join(notes)})"
    return text or json.dumps(body)[:200]

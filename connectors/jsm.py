"""Jira Service Management connector: polls changed issues, re-reads one, writes tier, labels and a handoff note.

Which calls, and why (every one goes through `connectors.http.HttpClient`, so retries, 429 `Retry-After`,
pacing, redaction and respx replay are the same as for the other platforms):

- poll: `POST /rest/api/3/search/jql` with `{jql, fields, maxResults, nextPageToken}`, directly on the
  HttpClient. The `jira` library's `enhanced_search_issues` translates field names through an extra
  `GET /rest/api/3/field` and returns Issue objects; we need the raw JSON and exactly one call per page.
  The response is `{issues, nextPageToken, isLast}`: it carries no `maxResults` or `total`, and Jira may return
  fewer issues than asked (it caps pages by the size of the requested fields), so the end of the data is known
  only from `isLast` / a missing `nextPageToken`, never from a short page.
- history, with the poll and never per issue: `expand=changelog` on the search embeds each issue's changelog
  (status, assignee, tier-field and other changes, `{startAt, maxResults, total, histories}`), and the `comment`
  field (in the mapping's fields) brings the comments with `jsdPublic`. Jira embeds at most 100 histories, so
  the issues of a page whose changelog is cut off get theirs from ONE `POST /rest/api/3/changelog/bulkfetch`
  (up to 1000 issues, filtered to the mapping's history fields): at most one extra call per page.
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/ (expand)
  https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/ (Bulk fetch changelogs)
- fetch: the `jira` library (`JIRA.issue(key, fields=...)`, `GET /rest/api/3/issue/{key}`), its requests
  session replaced by `HttpClient.session()`.
- apply: one `PUT /rest/api/3/issue/{id}` carrying the tier (a select custom field, `fields`) and the labels as
  `update.labels` add/remove operations (no read-modify-write, so a label another agent adds meanwhile survives),
  then, when there is a handoff note, `POST /rest/servicedeskapi/request/{id}/comment` with `public: false`.
  Two calls, not one (issue 14 asked whether the edit's `update.comment` `add` can carry the internal property
  `properties: [{key: "sd.public.comment", value: {internal: true}}]`): the Edit issue reference
  (https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-issueidorkey-put)
  documents `update` only as field operations (`FieldUpdateOperation`: add/set/remove/edit/copy, "the value
  to add to the field") and says nothing of comment properties there; comment properties, and with them the
  `sd.public.comment` visibility, are documented on the comment resources (Add comment,
  `POST /rest/api/3/issue/{id}/comment`, `Comment.properties`; the JSM request comment with `public`), which is
  also where client libraries put them (pycontribs/jira#313). Relying on the undocumented form would risk the
  one failure we must never have: an edit that accepts the comment but drops the property posts the handoff
  note PUBLIC, to the customer, and nothing in the 204 would tell us. Each is idempotent
  or covered by the ledger: the PUT sets absolute values, and the comment carries its idempotency key, which
  `has_comment` finds before a retry re-posts it. Both are sent directly: the library's `Issue.update` ignores
  the PUT's status and re-reads the whole issue afterwards (a second call on every write), and the library has
  no servicedeskapi comment call (its `add_comment(is_internal=True)` uses an issue property instead).
- has_comment: `GET /rest/servicedeskapi/request/{id}/comment?public=false&internal=true`, paged by
  `start`/`limit` until `isLastPage`.

The cursor is JSON: the high-water mark (epoch millis of the newest `updated` delivered), the issues delivered
within the overlap window with their `updated` millis (so the overlap's re-reads are dropped, after a restart
too), the server time of the last completed search, and while a search is being paged its keyset position.
Jira search is eventually consistent, so each new search starts `overlap_seconds` before the last completed
search (before the high-water mark for a cursor that has none). JQL gets the bound as epoch
millis: a bare date-time would be read in the API user's time zone.

An idle cycle costs one call: the search of the overlap window, whose issues are all already seen.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from jira import JIRA, JIRAError
from pydantic import SecretStr

from connectors.base import (
    ApplyResult,
    AuthError,
    ConflictError,
    ConnectorError,
    HistorySource,
    Page,
    PermanentWriteError,
    RawRecord,
    RecordSpec,
)
from connectors.http import HttpClient, decode_json, path_segment
from connectors.paging import CursorExport
from engine.model import COMMENT_MARKER, WriteBack

log = logging.getLogger("escalation_sync.jsm")

SEARCH_PATH = "/rest/api/3/search/jql"
BULK_CHANGELOG_PATH = "/rest/api/3/changelog/bulkfetch"
BULK_CHANGELOG_ISSUES = 1000  # the most issues one bulk changelog request may name
BULK_CHANGELOG_FIELDS = 10  # the most fieldIds it may filter by
ISSUE_PATH = "/rest/api/3/issue/{id}"
COMMENT_PATH = "/rest/servicedeskapi/request/{id}/comment"
DEFAULT_PAGE_SIZE = 50
DEFAULT_OVERLAP_SECONDS = 120
DEFAULT_LOOKBACK_HOURS = 72
COMMENT_PAGE_SIZE = 100
CURSOR_VERSION = 1


def make_auth(credentials: Mapping[str, SecretStr]) -> httpx.Auth:
    """Jira Cloud: basic auth with the account's email and an API token."""
    for name in ("email", "api_token"):
        if name not in credentials or not credentials[name].get_secret_value():
            raise ValueError(f"JSM credentials need {name!r} (email + api_token)")
    return httpx.BasicAuth(credentials["email"].get_secret_value(), credentials["api_token"].get_secret_value())


def error_text(response: httpx.Response) -> str:
    """Jira's `{"errorMessages": [...], "errors": {field: message}}` as one line; the raw text otherwise."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if not isinstance(body, Mapping):
        return str(body)[:200]
    parts = [str(message) for message in body.get("errorMessages") or []]
    errors = body.get("errors")
    if isinstance(errors, Mapping):
        parts += [f"{field}: {message}" for field, message in errors.items()]
    if not parts and "message" in body:  # servicedeskapi errors: {"errorMessage": ...} / {"message": ...}
        parts.append(str(body["message"]))
    if not parts and "errorMessage" in body:
        parts.append(str(body["errorMessage"]))
    return "; ".join(parts) or response.text.strip()[:200]


class _Cursor:
    """Where polling stands; see the module docstring. Serialized as compact JSON."""

    def __init__(
        self,
        high_water: int | None = None,
        seen: dict[str, int] | None = None,
        since: int | None = None,
        token: str | None = None,
        searched_at: int | None = None,
        polled_until: int | None = None,
    ) -> None:
        self.high_water = high_water
        self.seen = dict(seen or {})
        self.since = since
        self.token = token
        self.searched_at = searched_at
        """Server time (epoch millis) of the current window's first search."""
        self.polled_until = polled_until
        """`searched_at` of the last completed window: everything visible then has been delivered."""

    @classmethod
    def decode(cls, text: str | None) -> _Cursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError("unknown cursor version")
            seen = {str(key): int(value) for key, value in (data.get("seen") or {}).items()}
            return cls(
                high_water=_optional_int(data.get("hw")),
                seen=seen,
                since=_optional_int(data.get("since")),
                token=data.get("token") or None,
                searched_at=_optional_int(data.get("at")),
                polled_until=_optional_int(data.get("until")),
            )
        except (ValueError, TypeError, AttributeError) as error:
            raise ConnectorError(f"unreadable JSM cursor {text[:80]!r}: {error}") from None

    def encode(self) -> str:
        data: dict[str, Any] = {"v": CURSOR_VERSION, "hw": self.high_water, "seen": self.seen}
        if self.since is not None:
            data["since"] = self.since
        if self.token:
            data["token"] = self.token
        if self.searched_at is not None:
            data["at"] = self.searched_at
        if self.polled_until is not None:
            data["until"] = self.polled_until
        return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _changelog_cut(issue: Mapping[str, Any]) -> bool:
    """Whether the issue's embedded changelog shows fewer histories than it has (Jira embeds at most 100)."""
    changelog = issue.get("changelog")
    if not isinstance(changelog, Mapping):
        return False
    histories = changelog.get("histories")
    total = changelog.get("total")
    shown = len(histories) if isinstance(histories, list) else 0
    return isinstance(total, int) and total > shown


def _optional_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _server_millis(response: httpx.Response, fallback: datetime) -> int:
    """The server's clock from the `Date` header (our own clock may be skewed), else `fallback`."""
    try:
        moment = parsedate_to_datetime(response.headers["date"])
    except (KeyError, TypeError, ValueError):
        moment = fallback
    return int(moment.timestamp() * 1000)


def _updated_millis(issue: Mapping[str, Any]) -> int | None:
    fields = issue.get("fields")
    value = fields.get("updated") if isinstance(fields, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp() * 1000)


class JsmConnector:
    """The Connector for one Jira Service Management site (Cloud)."""

    platform = "jsm"

    def __init__(self, instance: str, http: HttpClient, mapping: RecordSpec, options: Mapping[str, Any]) -> None:
        self.instance = instance
        self.http = http
        self.mapping = mapping
        self.spec = mapping.read_spec()
        self._tie_paging = CursorExport(instance, "JQL search page token")
        self.page_size = int(options.get("page_size", DEFAULT_PAGE_SIZE))
        self.overlap_ms = int(options.get("overlap_seconds", DEFAULT_OVERLAP_SECONDS)) * 1000
        self.lookback = timedelta(hours=float(options.get("initial_lookback_hours", DEFAULT_LOOKBACK_HOURS)))
        self.extra_jql = str(options.get("jql", "")).strip()
        sources = {source.name: source for source in self.spec.history}
        unknown = set(sources) - {"changelog"}
        if unknown:
            raise ValueError(f"{instance}: the mapping asks for history sources JSM has not: {sorted(unknown)}")
        self.changelog: HistorySource | None = sources.get("changelog")
        if self.page_size < 1:
            raise ValueError(f"{instance}: page_size must be at least 1")
        # The library only builds URLs and parses responses here; every byte goes through our HttpClient.
        self._jira = JIRA(
            server=http.base_url,
            options={"rest_api_version": "3", "check_update": False},
            get_server_info=False,
        )
        self._jira._session = http.session()  # type: ignore[assignment]

    # -- poll -------------------------------------------------------------------------------------------

    def jql(self, since_millis: int, open_only: bool = False) -> str:
        bound = f"updated >= {since_millis}"
        if open_only:
            bound = f"statusCategory != Done AND {bound}"
        where = f"({self.extra_jql}) AND {bound}" if self.extra_jql else bound
        return f"{where} ORDER BY updated ASC, key ASC"

    def poll(self, cursor: str | None, now: datetime) -> Page:
        state = _Cursor.decode(cursor)
        starts_window = state.since is None
        if starts_window:
            since, token = self._window_start(state, now), None
        else:
            since, token = state.since, state.token
        response = self._search(since, token)
        if token and response.status_code == 400:
            # An expired or foreign page token: start this window again; the overlap de-dup absorbs it.
            log.info("%s: search page token refused, restarting the window", self.instance)
            starts_window = True
            since, token = self._window_start(state, now), None
            response = self._search(since, None)
        body = self._search_body(response)
        if starts_window:
            state.searched_at = _server_millis(response, now)
        records, last_updated = self._take_issues(body, state)
        next_token = body.get("nextPageToken") or None
        has_more = bool(next_token) and body.get("isLast") is not True
        if not has_more:
            state.since = state.token = None
            state.polled_until, state.searched_at = state.searched_at, None
        elif last_updated is not None and last_updated > since:
            # Keyset: the next page is a fresh search from where this one ended, not the page token. Issues
            # updated while we page (our own writes among them) move to the end of `ORDER BY updated`; with a
            # token that shift would skip the issues behind them, with a fresh search it only re-reads them.
            state.since, state.token = last_updated, None
        else:
            # A whole page tied on one `updated` instant: only the token can step past the tie.
            state.since, state.token = since, self._tie_paging.next_cursor(token, next_token, not has_more)
        if state.high_water is not None:
            floor = state.high_water - self.overlap_ms
            state.seen = {key: value for key, value in state.seen.items() if value >= floor}
        return Page(records=records, cursor=state.encode(), has_more=has_more)

    def _window_start(self, state: _Cursor, now: datetime) -> int:
        """A window re-reads `overlap` before the last completed search, and never starts after the newest
        `updated` delivered (the high-water mark) minus `overlap`.

        Why both: the search time is the `Date` header, the server's clock; `updated` is the records' clock, and
        a search index that lags (or a clock that runs behind) makes fresh edits carry times older than the
        search that could not see them yet. Counted from `Date` alone, an edit whose `updated` lags it by more
        than `overlap` fell before the next window and was never read (5 edits missed with a 600 s lag). The
        high-water mark is in the records' own clock, so the window holds whatever the skew; an update indexed
        late is at most `overlap` older than the newest one seen. The price: the issues updated within `overlap`
        of the newest one are re-read (and dropped as seen) by every idle search, one call while they fit a
        page (after a bulk edit of more than `page_size` issues at one instant, a call per page of them until
        the next edit moves the mark)."""
        if state.high_water is None:
            if state.polled_until is not None:
                return state.polled_until - self.overlap_ms
            return int((now - self.lookback).timestamp() * 1000)
        if state.polled_until is None:
            return state.high_water - self.overlap_ms
        return min(state.polled_until, state.high_water) - self.overlap_ms

    def open_tickets(self, cursor: str | None, now: datetime) -> Page:
        """Every issue whose status category is not Done, oldest update first, keyset-paged like `poll`."""
        state = _Cursor.decode(cursor)
        since = state.since if state.since is not None else 0
        body = self._search_body(self._search(since, state.token, open_only=True))
        records, last_updated = self._take_issues(body, state)
        next_token = body.get("nextPageToken") or None
        has_more = bool(next_token) and body.get("isLast") is not True
        if has_more and last_updated is not None and last_updated > since:
            state.since, state.token = last_updated, None
        elif has_more:  # a page tied on one instant: only the token steps on
            state.since, state.token = since, self._tie_paging.next_cursor(state.token, next_token, False)
        state.seen = {key: value for key, value in state.seen.items() if value >= (state.since or 0)}
        return Page(records=records, cursor=state.encode(), has_more=has_more)

    def _take_issues(self, body: Mapping[str, Any], state: _Cursor) -> tuple[list[RawRecord], int | None]:
        """A search page's issues not delivered before (the overlap, or the key boundary of the previous
        page), with their changelogs completed; and the newest `updated` on the page."""
        records: list[RawRecord] = []
        last_updated: int | None = None
        seen = state.seen
        for issue in body.get("issues") or []:
            # A decoded page's issues are dicts, handed on as they are (the page is not kept); any other Mapping
            # is copied into one.
            if type(issue) is not dict:
                if not isinstance(issue, Mapping):
                    continue
                issue = dict(issue)
            key = str(issue.get("key") or issue.get("id") or "")
            updated = _updated_millis(issue)
            if updated is not None:
                last_updated = max(last_updated or updated, updated)
                if key:
                    if seen.get(key, -1) >= updated:
                        continue
                    seen[key] = updated
                    state.high_water = max(state.high_water or updated, updated)
            records.append(RawRecord(id=str(issue.get("id") or key), data=issue))
        return self._complete_changelogs(records), last_updated

    def _search(self, since: int, token: str | None, open_only: bool = False) -> httpx.Response:
        payload: dict[str, Any] = {
            "jql": self.jql(since, open_only),
            "maxResults": self.page_size,
            "fields": list(self.spec.fields),
        }
        if token:
            payload["nextPageToken"] = token
        if self.changelog is not None:
            payload["expand"] = "changelog"
        return self.http.request("POST", SEARCH_PATH, json=payload, read_only=True)

    def _complete_changelogs(self, records: list[RawRecord]) -> list[RawRecord]:
        """Issues whose embedded changelog is cut off (`total` above the histories shown) get their full
        changelog of the mapping's fields from one bulk request for the whole page (paged by `nextPageToken`
        only when the page's history is longer than one answer): never a request per issue.
        `POST /rest/api/3/changelog/bulkfetch` takes up to 1000 issues and 10 field ids."""
        if self.changelog is None:
            return records
        cut = [record for record in records if _changelog_cut(record.data)]
        if not cut:
            return records
        found: dict[str, list[Any]] = {record.id: [] for record in cut}
        fields = list(self.changelog.fields)[:BULK_CHANGELOG_FIELDS]
        for start in range(0, len(cut), BULK_CHANGELOG_ISSUES):
            batch = [record.id for record in cut[start : start + BULK_CHANGELOG_ISSUES]]
            token: str | None = None
            while True:
                body: dict[str, Any] = {"issueIdsOrKeys": batch, "fieldIds": fields, "maxResults": 1000}
                if token:
                    body["nextPageToken"] = token
                response = self.http.request("POST", BULK_CHANGELOG_PATH, json=body, read_only=True)
                answer = self._bulk_body(response)
                for log in answer.get("issueChangeLogs") or []:
                    if isinstance(log, Mapping) and str(log.get("issueId")) in found:
                        found[str(log.get("issueId"))].extend(log.get("changeHistories") or [])
                next_token = answer.get("nextPageToken") or None
                if not next_token or next_token == token:
                    break
                token = str(next_token)
        return [
            RawRecord(record.id, record.data, {**record.related, "changelog": found[record.id]})
            if record.id in found
            else record
            for record in records
        ]

    def _bulk_body(self, response: httpx.Response) -> Mapping[str, Any]:
        if response.status_code != 200:
            raise ConnectorError(
                f"{self.instance}: bulk changelog refused (HTTP {response.status_code}): "
                f"{self.http.redact(error_text(response))}"
            )
        try:
            body = decode_json(response.content)
        except ValueError:
            raise ConnectorError(f"{self.instance}: bulk changelog answered with a body that is not JSON") from None
        if not isinstance(body, Mapping):
            raise ConnectorError(f"{self.instance}: bulk changelog answer is not an object")
        return body

    def _search_body(self, response: httpx.Response) -> Mapping[str, Any]:
        if response.status_code != 200:
            raise ConnectorError(
                f"{self.instance}: search refused (HTTP {response.status_code}): "
                f"{self.http.redact(error_text(response))}"
            )
        try:
            body = decode_json(response.content)
        except ValueError:
            raise ConnectorError(f"{self.instance}: search answered with a body that is not JSON") from None
        if not isinstance(body, Mapping) or not isinstance(body.get("issues", []), list):
            raise ConnectorError(f"{self.instance}: search answer has no issues list")
        return body

    # -- fetch ------------------------------------------------------------------------------------------

    def fetch(self, ticket_id: str) -> RawRecord | None:
        expand = "changelog" if self.changelog is not None else None
        try:
            issue = self._jira.issue(path_segment(ticket_id), fields=",".join(list(self.spec.fields)), expand=expand)
        except JIRAError as error:
            if error.status_code == 404:
                return None
            raise ConnectorError(
                f"{self.instance}: reading issue {ticket_id} failed (HTTP {error.status_code}): "
                f"{self.http.redact(str(error.text))}"
            ) from None
        raw = issue.raw
        return self._complete_changelogs([RawRecord(id=str(raw.get("id") or ticket_id), data=raw)])[0]

    # -- apply ------------------------------------------------------------------------------------------

    def edit_payload(self, writeback: WriteBack) -> dict[str, Any]:
        """The one edit body, as the mapping renders it (tier as `fields`, labels as `update` operations)."""
        return dict(self.mapping.render_patch(writeback, None))

    def apply(self, writeback: WriteBack) -> ApplyResult:
        ticket = writeback.ticket_id
        payload = self.edit_payload(writeback)
        if payload:
            response = self._write("PUT", ISSUE_PATH.format(id=path_segment(ticket)), payload, ticket, "edit")
            self._check(response, ticket, "edit", ok=(200, 204))
        if writeback.comment is not None:
            body = {"body": writeback.comment.text, "public": False}
            response = self._write(
                "POST", COMMENT_PATH.format(id=path_segment(ticket)), body, ticket, "internal comment"
            )
            self._check(response, ticket, "internal comment", ok=(200, 201))
        # The edit answers 204 without the new `updated`; the echo costs no write anyway (the planner finds
        # nothing to change), so we hand back the revision we acted on instead of paying for a re-read.
        return ApplyResult(ticket_id=ticket, revision=writeback.revision)

    def _write(self, method: str, path: str, body: Any, ticket: str, what: str) -> httpx.Response:
        try:
            return self.http.request(method, path, json=body)
        except AuthError as error:
            # Jira answers 403 when this account may not edit or comment on this one issue (closed, issue
            # security, project role): a refusal of this write, not bad credentials. 401 stays fatal.
            if error.status == 403:
                raise PermanentWriteError(f"{self.instance}: {what} of {ticket} forbidden: {error}") from None
            raise

    def _check(self, response: httpx.Response, ticket: str, what: str, ok: tuple[int, ...]) -> None:
        status = response.status_code
        if status in ok:
            return
        detail = self.http.redact(error_text(response))
        message = f"{self.instance}: {what} of {ticket} refused (HTTP {status}): {detail}"
        if status == 409:
            raise ConflictError(message)
        if status == 404:
            raise PermanentWriteError(f"{self.instance}: {what} of {ticket}: issue not found: {detail}")
        raise PermanentWriteError(message)

    # -- comments ---------------------------------------------------------------------------------------

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        marker = COMMENT_MARKER.format(key=idempotency_key)
        start = 0
        path = COMMENT_PATH.format(id=path_segment(ticket_id))
        while True:
            params = {"public": "false", "internal": "true", "start": start, "limit": COMMENT_PAGE_SIZE}
            response = self.http.request("GET", path, params=params)
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                raise ConnectorError(
                    f"{self.instance}: reading comments of {ticket_id} failed (HTTP {response.status_code}): "
                    f"{self.http.redact(error_text(response))}"
                )
            try:
                page = response.json()
            except ValueError:
                page = None
            if not isinstance(page, Mapping) or not isinstance(page.get("values", []), list):
                raise ConnectorError(f"{self.instance}: comments of {ticket_id}: answer is not a comment page")
            values = page.get("values") or []
            if any(marker in str(comment.get("body", "")) for comment in values if isinstance(comment, Mapping)):
                return True
            if page.get("isLastPage", True) or not values:
                return False
            start = int(page.get("start", start)) + int(page.get("size", len(values)))

    def close(self) -> None:
        self.http.close()

"""ServiceNow connector: polls a task table (incident by default) through the Table API and writes back.

Facts this module relies on (ServiceNow "Table API" reference, "Encoded query strings", "Inbound REST API rate
limiting", "OAuth tokens"; checked against recorded responses):
- `GET /api/now/table/{table}` answers `{"result": [...]}`; `GET|PATCH /api/now/table/{table}/{sys_id}` answer
  `{"result": {...}}`; errors are `{"error": {"message", "detail"}, "status": "failure"}`.
- Unknown query parameters are silently ignored: a misspelled `sysparm_query` returns the whole table. So every
  parameter we send comes from `ALLOWED_PARAMS` (`table_params` refuses anything else).
- Paging is keyset, never `sysparm_offset`: records updated while we read move to the end of the
  `sys_updated_on` order, so offsets would skip some. The cursor is (sys_updated_on, sys_id) of the last record
  handed out; the next page asks for `sys_updated_on>=T^sys_updated_on>T^ORsys_id>ID`, i.e.
  "(updated after T) or (updated at T and sys_id after ID)". `^OR` binds only its two neighbours, so this is one
  AND-group; we avoid `^NQ` because it splits the query into independent groups (the ORDERBY and any later
  condition would have to be repeated in each group, and the platform's known errors with ^NQ filters show how
  easily a condition ends up applying to one group only).
- `sys_updated_on` has one-second resolution, so a record committed a moment after our read can carry the same
  second as the last record we handed out, with a smaller sys_id. When a page comes back short (we are caught
  up) and its last second is less than `settle_seconds` (default 10) old by the server's own `Date` header, the
  cursor is rewound to the start of that second: the next poll re-reads that second's few records (the engine
  reconciles them into no writes) instead of losing one. Once the second has settled the cursor is exact again,
  so an idle cycle costs one request that returns nothing.
- Dates in raw mode are UTC "YYYY-MM-DD HH:MM:SS"; encoded-query date values are compared as such. Give the
  integration user the GMT time zone so no session time zone can shift them.
- Deleted records simply vanish from the table; the Table API has no tombstones (finding them would need
  `sys_audit_delete`, out of scope). Canceled and closed incidents are ordinary states the mapping handles.
- Rate limits: a 429 carries `Retry-After`, which HttpClient honours; `X-RateLimit-*` headers pace it.
- Work notes (`work_notes`) are internal; `comments` are shown to the customer: we only ever write work notes.

Writing: one PATCH per ticket and no read first (issue 14): the polled record was the read. The PATCH carries
only the fields we change (the tier's field, our tags field, `work_notes`), so a person's edit of any other field
survives whatever the timing. Our tags are a field only the daemon writes (see mappings/servicenow.py `TagsMap`),
written whole from the plan's set of managed tags; people's tags live in another field we never write. The
trade-offs, since the Table API has no conditional update (no If-Match, no sys_mod_count precondition):
- a person's tier change landing between our poll and our PATCH (seconds) is overwritten by our tier; the next
  poll shows ours, as it would had they been a moment earlier. The old guard (a GET of `sys_mod_count` before
  every PATCH) narrowed that window to milliseconds at the price of a read per write, and still lost a person's
  tag edit landing inside it: tags were one shared field rewritten from that read.
- the platform's own tags (`label_entry`: `label` reference, `table`, `table_key`, `title`, `id_type`, `url`)
  would give true add/remove operations, but inserting one needs write access to `table` and `table_key`,
  which the platform's ACLs reserve to the maint role: no integration user has it.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
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
    TransientError,
)
from connectors.http import HttpClient, decode_json
from connectors.paging import Keyset
from engine.model import COMMENT_MARKER, WriteBack

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_DATE_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


def _parse_date(value: str) -> datetime:
    """A raw-mode date (DATE_FORMAT) as a naive datetime; ValueError if it is none.

    Checked on every row: `strptime` looks up the locale on each call, so the fixed shape goes through
    `fromisoformat` and only anything else (refused or not, as before) through `strptime`.
    """
    if _DATE_SHAPE.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass  # out of range: strptime refuses it below with its own message
    return datetime.strptime(value, DATE_FORMAT)


MAX_PAGE_SIZE = 10000
# Related rows (task_sla, sys_audit, sys_journal_field) per request: a page of 200 records has a few hundred
# SLAs and a few thousand history rows; more are keyset-read on sys_id.
SLA_PAGE_SIZE = 10000
# History sources per page (ServiceNow "Audit" / "sys_audit" and "Journal fields" / "sys_journal_field" tables):
# source -> (the field naming the record, the condition on top of it, the fields read). `{names}` is the mapping's
# list of audited fields / journal elements. sys_audit names the author by user_name (`user`), journal rows by
# `sys_created_by`; values are read raw (a reference's old and new values are sys_ids).
HISTORY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sys_audit": (
        "documentkey",
        "tablename={table}^fieldnameIN{names}",
        ("sys_id", "documentkey", "fieldname", "oldvalue", "newvalue", "user", "sys_created_on"),
    ),
    "sys_journal_field": (
        "element_id",
        "name={table}^elementIN{names}",
        ("sys_id", "element_id", "element", "value", "sys_created_by", "sys_created_on"),
    ),
}
CURSOR_VERSION = "v1"
TOKEN_PATH = "/oauth_token.do"
# The only query parameters this connector may send. The platform ignores names it does not know (it would not
# tell us about a typo), so a name outside this list is a programming error caught before any request.
ALLOWED_PARAMS = frozenset(
    {
        "sysparm_query",
        "sysparm_fields",
        "sysparm_limit",
        "sysparm_display_value",
        "sysparm_exclude_reference_link",
        "sysparm_no_count",
    }
)
WRITE_FIELDS = ("sys_id", "sys_updated_on", "sys_mod_count")


class ServiceNowSpec(RecordSpec, Protocol):
    """The mapping as this connector sees it: a RecordSpec that also names a record's revision, the token the
    conflict check compares (`sys_updated_on` and `sys_mod_count` in the mapping's format)."""

    def revision_of(self, data: dict[str, Any]) -> str: ...


def table_params(**params: str | int) -> dict[str, str]:
    """Query parameters for the Table API, refusing any name outside ALLOWED_PARAMS."""
    unknown = sorted(set(params) - ALLOWED_PARAMS)
    if unknown:
        raise ValueError(f"not a Table API parameter we send: {', '.join(unknown)}")
    return {name: str(value) for name, value in params.items()}


def raw_params(fields: Iterable[str], **params: str | int) -> dict[str, str]:
    """Raw values, bare sys_ids for references, no total count: what every read of ours asks for."""
    return table_params(
        sysparm_fields=",".join(dict.fromkeys(fields)),
        sysparm_display_value="false",
        sysparm_exclude_reference_link="true",
        **params,
    )


QUERY_SAFE = ",^"
"""Left as they are in a query string: the commas of every `IN` list and field list, the `^` between conditions.
Both are plain query characters (RFC 3986 sub-delimiter; WHATWG's query set, which browsers and the platform's
own list URLs send raw); what the platform decodes is the same either way."""


def with_query(path: str, params: Mapping[str, str]) -> str:
    """`path?query` for parameters already checked by `table_params`, encoded once here.

    Why not `params=`: httpx then encodes the query, merges it into the URL and validates the merged URL again,
    character by character, and every `%2C` of an escaped comma splits its re-quoting into one more piece. A
    history read names 200 sys_ids (7 KB of query): building that request cost 1.6 ms through `params=` and
    1.0 ms as one string with its commas and carets raw, on each of three reads per page (and 0.16 against
    0.08 ms for a PATCH's short query)."""
    return f"{path}?{urlencode(params, safe=QUERY_SAFE)}" if params else path


def query_value(value: str) -> str:
    """A value inside an encoded query: `^` separates conditions, so a literal caret is written `^^`."""
    return value.replace("^", "^^")


SCAN_FROM = "1970-01-01 00:00:00"
"""Where the scan of all active records starts: before any record."""


def encode_cursor(updated_on: str, sys_id: str) -> str:
    return f"{CURSOR_VERSION}|{updated_on}|{sys_id}"


def decode_cursor(cursor: str) -> tuple[str, str]:
    version, _, rest = cursor.partition("|")
    updated_on, _, sys_id = rest.partition("|")
    try:
        _parse_date(updated_on)
    except ValueError:
        raise ValueError(f"not a ServiceNow cursor: {cursor!r}") from None
    if version != CURSOR_VERSION or not (sys_id == "" or sys_id.replace("_", "").isalnum()):
        raise ValueError(f"not a ServiceNow cursor: {cursor!r}")
    return updated_on, sys_id


def keyset_query(updated_on: str, after_sys_id: str) -> str:
    """Records at or after the cursor, in cursor order (see the module docstring for the encoding)."""
    order = "^ORDERBYsys_updated_on^ORDERBYsys_id"
    if not after_sys_id:
        return f"sys_updated_on>={updated_on}{order}"
    return f"sys_updated_on>={updated_on}^sys_updated_on>{updated_on}^ORsys_id>{after_sys_id}{order}"


class ServiceNowOAuth(httpx.Auth):
    """OAuth 2.0 client credentials against the instance's `/oauth_token.do`, token cached and refreshed.

    The token is fetched on first use and again when it is within `margin` of its `expires_in`, or when a
    request comes back 401 (revoked or expired early); that request is then sent once more with the new token.
    """

    requires_response_body = True

    def __init__(
        self,
        client_id: SecretStr,
        client_secret: SecretStr,
        *,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 60.0,
    ) -> None:
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._margin = margin
        self._token: str | None = None
        self._expires_at = 0.0
        self.fetches = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None or self._clock() >= self._expires_at:
            self._store((yield self._token_request(request)))
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            self._store((yield self._token_request(request)))
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    def _token_request(self, request: httpx.Request) -> httpx.Request:
        path = request.url.path
        prefix = path[: path.index("/api/")] if "/api/" in path else ""
        url = f"{request.url.scheme}://{request.url.netloc.decode()}{prefix}{TOKEN_PATH}"
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id.get_secret_value(),
            "client_secret": self._client_secret.get_secret_value(),
        }
        return httpx.Request("POST", url, data=form, headers={"Accept": "application/json"})

    def _store(self, response: httpx.Response) -> None:
        self.fetches += 1
        status = response.status_code
        if status in (400, 401, 403):
            raise AuthError(f"OAuth token request refused: HTTP {status} (check client_id / client_secret)")
        if status != 200:
            raise TransientError(f"OAuth token request failed: HTTP {status}")
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 1800))
        except (ValueError, KeyError, TypeError):
            raise AuthError("OAuth token response is not the expected JSON with access_token") from None
        self._token = str(token)
        self._expires_at = self._clock() + max(0.0, lifetime - self._margin)


def make_auth(credentials: Mapping[str, SecretStr]) -> httpx.Auth:
    """Basic auth from username + password, or OAuth client credentials from client_id + client_secret."""

    def present(name: str) -> bool:
        value = credentials.get(name)
        return value is not None and bool(value.get_secret_value())

    if present("client_id") or present("client_secret"):
        for name in ("client_id", "client_secret"):
            if not present(name):
                raise ValueError(f"ServiceNow credential {name!r} is missing (OAuth needs client_id and client_secret)")
        return ServiceNowOAuth(credentials["client_id"], credentials["client_secret"])
    for name in ("username", "password"):
        if not present(name):
            raise ValueError(f"ServiceNow credential {name!r} is missing (or give client_id + client_secret)")
    return httpx.BasicAuth(credentials["username"].get_secret_value(), credentials["password"].get_secret_value())


class ServiceNowConnector:
    """Implements connectors.base.Connector for one ServiceNow instance and one task table."""

    platform = "servicenow"

    def __init__(self, instance: str, http: HttpClient, mapping: ServiceNowSpec, options: Mapping[str, Any]) -> None:
        self.instance = instance
        self.http = http
        self.mapping = mapping
        self.spec = mapping.read_spec()
        self.table = str(options.get("table", "incident"))
        self._paging = Keyset(instance, f"{self.table} keyset poll")
        if not self.table.replace("_", "").isalnum():
            raise ValueError(f"{instance}: options.table {self.table!r} is not a table name")
        self.page_size = _int_option(options, "page_size", 200, instance, 1, MAX_PAGE_SIZE)
        hours = options.get("initial_lookback_hours", 72)
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 <= hours <= 24 * 365:
            raise ValueError(f"{instance}: initial_lookback_hours must be a number of hours, got {hours!r}")
        self.lookback = timedelta(hours=hours)
        self.sla_batch = _int_option(options, "sla_batch", 200, instance, 1, 1000)
        self.settle_seconds = _int_option(options, "settle_seconds", 10, instance, 0, 3600)
        self.journal_lookup = str(options.get("journal_lookup", "sys_journal_field"))
        if self.journal_lookup not in ("sys_journal_field", "display_value"):
            raise ValueError(f"{instance}: options.journal_lookup must be 'sys_journal_field' or 'display_value'")
        self.fields = list(dict.fromkeys([*WRITE_FIELDS, *self.spec.fields]))
        self.history_sources: tuple[HistorySource, ...] = self.spec.history
        self.history_batch = _int_option(options, "history_batch", 1000, instance, 1, 1000)
        self._write_query = urlencode(raw_params(WRITE_FIELDS), safe=QUERY_SAFE)
        """The query of every PATCH (the fields its answer carries), encoded once."""

    # -- reading ------------------------------------------------------------------------------------------------

    def poll(self, cursor: str | None, now: datetime) -> Page:
        if cursor is None:
            since = (now - self.lookback).astimezone(UTC).strftime(DATE_FORMAT)
            updated_on, after = since, ""
        else:
            try:
                updated_on, after = decode_cursor(cursor)
            except ValueError as error:
                raise ConnectorError(f"{self.instance}: {error}") from None
        params = raw_params(
            self.fields,
            sysparm_query=keyset_query(updated_on, after),
            sysparm_limit=self.page_size,
            sysparm_no_count="true",
        )
        response = self.http.request("GET", with_query(self._table_url(), params))
        rows = self._result_list(response, "poll")
        has_more = len(rows) >= self.page_size
        # The cursor comes from the last row whose keys are well formed; a malformed row is still handed out (the
        # mapping quarantines it) but must not poison the cursor.
        last = next((row for row in reversed(rows) if _cursor_key(row) is not None), None)
        if last is not None:
            used = (updated_on, after)
            updated_on, after = self._paging.next_key(
                used, (_str(last["sys_updated_on"]), _str(last["sys_id"])), has_more
            )
        if not has_more and not self._settled(updated_on, response):
            after = ""
        ids = [_str(row.get("sys_id")) for row in rows]
        slas = self._task_slas(ids)
        history = self._history(ids)
        records = [self._record(row, slas, history) for row in rows]
        return Page(records=records, cursor=encode_cursor(updated_on, after), has_more=has_more)

    def open_tickets(self, cursor: str | None, now: datetime) -> Page:
        """Every active record (`active=true`), keyset-paged on (sys_updated_on, sys_id) like `poll`."""
        try:
            updated_on, after = decode_cursor(cursor) if cursor else (SCAN_FROM, "")
        except ValueError as error:
            raise ConnectorError(f"{self.instance}: {error}") from None
        params = raw_params(
            self.fields,
            sysparm_query="active=true^" + keyset_query(updated_on, after),
            sysparm_limit=self.page_size,
            sysparm_no_count="true",
        )
        rows = self._result_list(self.http.request("GET", with_query(self._table_url(), params)), "open-record scan")
        has_more = len(rows) >= self.page_size
        last = next((row for row in reversed(rows) if _cursor_key(row) is not None), None)
        if last is not None:
            updated_on, after = self._paging.next_key(
                (updated_on, after), (_str(last["sys_updated_on"]), _str(last["sys_id"])), has_more
            )
        ids = [_str(row.get("sys_id")) for row in rows]
        slas = self._task_slas(ids)
        history = self._history(ids)
        records = [self._record(row, slas, history) for row in rows]
        return Page(records=records, cursor=encode_cursor(updated_on, after), has_more=has_more)

    def _settled(self, updated_on: str, response: httpx.Response) -> bool:
        """Whether no more writes can land in the second `updated_on`, judged by the server's own Date header."""
        if self.settle_seconds <= 0:
            return True
        try:
            server_now = email.utils.parsedate_to_datetime(response.headers.get("date", ""))
            last = _parse_date(updated_on).replace(tzinfo=UTC)
        except (TypeError, ValueError):
            return False
        if server_now.tzinfo is None:
            server_now = server_now.replace(tzinfo=UTC)
        return last < server_now - timedelta(seconds=self.settle_seconds)

    def fetch(self, ticket_id: str) -> RawRecord | None:
        if not _is_sys_id(ticket_id):
            return None
        params = raw_params(self.fields)
        response = self.http.request("GET", with_query(self._table_url(ticket_id), params))
        if response.status_code == 404:
            return None
        row = self._result_object(response, f"fetch {ticket_id}")
        return self._record(row, self._task_slas([ticket_id]), self._history([ticket_id]))

    def _record(self, row: dict[str, Any], slas: dict[str, list[dict[str, Any]]], history: _Histories) -> RawRecord:
        sys_id = _str(row.get("sys_id"))
        related: dict[str, Any] = {"instance_url": self.http.base_url, "table": self.table}
        if self.spec.platform_slas:
            related["task_sla"] = slas.get(sys_id, [])
        rows, unavailable = history
        for source, by_record in rows.items():
            related[source] = by_record.get(sys_id, [])
        if unavailable:
            related["history_unavailable"] = sorted(unavailable)
        return RawRecord(id=sys_id, data=row, related=related)

    def _history(self, sys_ids: list[str]) -> _Histories:
        """The history rows the mapping asks for, one query per source for the whole page (see HISTORY).

        A source the integration user may not read (403) is reported as unavailable, not raised: the facts it
        feeds become unknown and the cycle goes on.
        """
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        unavailable: set[str] = set()
        ids = [sys_id for sys_id in dict.fromkeys(sys_ids) if _is_sys_id(sys_id)]
        if not ids:
            return rows, unavailable
        for source in self.history_sources:
            spec = HISTORY.get(source.name)
            if spec is None:
                raise ValueError(f"{self.instance}: the mapping asks for an unknown history source {source.name!r}")
            key, condition, fields = spec
            names = ",".join(query_value(name) for name in source.fields)
            where = condition.format(table=query_value(self.table), names=names)
            try:
                rows[source.name] = self._rows_of(source.name, key, ids, where, fields, self.history_batch)
            except AuthError as error:
                if error.status != 403:
                    raise
                unavailable.add(source.name)
        return rows, unavailable

    def _rows_of(
        self, table: str, key: str, ids: list[str], where: str, fields: Iterable[str], batch_size: int
    ) -> dict[str, list[dict[str, Any]]]:
        """Rows of `table` whose `key` is one of `ids`: one query per `batch_size` ids, keyset-paged on sys_id
        when one answer would exceed SLA_PAGE_SIZE rows (more calls only for more history, not more records)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(ids), batch_size):
            batch = ",".join(ids[start : start + batch_size])
            after = ""
            while True:
                query = f"{key}IN{batch}" + (f"^{where}" if where else "")
                query += (f"^sys_id>{after}" if after else "") + "^ORDERBYsys_id"
                params = raw_params(fields, sysparm_query=query, sysparm_limit=SLA_PAGE_SIZE, sysparm_no_count="true")
                response = self.http.request("GET", with_query(self._table_url(table=table), params))
                found_rows = self._result_list(response, table)
                for row in found_rows:
                    found.setdefault(_str(row.get(key)), []).append(row)
                next_after = _str(found_rows[-1].get("sys_id")) if found_rows else ""
                if len(found_rows) < SLA_PAGE_SIZE or not next_after or next_after <= after:
                    break
                after = next_after
        return found

    def _task_slas(self, sys_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """task_sla rows of these records: one query per `sla_batch` records, keyset-paged on sys_id if large."""
        ids = [sys_id for sys_id in dict.fromkeys(sys_ids) if _is_sys_id(sys_id)]
        if not self.spec.platform_slas or not ids:
            return {}
        return self._rows_of("task_sla", "task", ids, "", self.spec.sla_fields, self.sla_batch)

    # -- writing ------------------------------------------------------------------------------------------------

    def apply(self, writeback: WriteBack) -> ApplyResult:
        sys_id = writeback.ticket_id
        if not _is_sys_id(sys_id):
            raise PermanentWriteError(f"{self.instance}: {sys_id!r} is not a sys_id")
        payload: dict[str, Any] = dict(self.mapping.render_patch(writeback, None))
        if writeback.comment is not None:
            payload["work_notes"] = writeback.comment.text
        if not payload:
            return ApplyResult(ticket_id=sys_id, revision=writeback.revision)
        try:
            response = self.http.request("PATCH", f"{self._table_url(sys_id)}?{self._write_query}", json=payload)
        except AuthError as error:
            # On a write, 403 is how the platform says an ACL, business rule or data policy refused this record.
            if error.status == 403:
                raise PermanentWriteError(f"{self.instance}: {self.table} {sys_id}: write refused (403)") from None
            raise
        status = response.status_code
        if status == 200:
            row = self._result_object(response, f"apply {sys_id}")
            return ApplyResult(ticket_id=sys_id, revision=self.mapping.revision_of(row))
        reason = self.http.redact(_error_text(response))
        if status == 409:
            raise ConflictError(f"{self.instance}: {self.table} {sys_id}: HTTP 409 {reason}")
        if status == 404:
            raise PermanentWriteError(f"{self.instance}: {self.table} {sys_id} no longer exists ({reason})")
        raise PermanentWriteError(f"{self.instance}: {self.table} {sys_id}: HTTP {status} {reason}")

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        marker = COMMENT_MARKER.format(key=idempotency_key)
        if not _is_sys_id(ticket_id):
            return False
        if self.journal_lookup == "display_value":
            params = table_params(sysparm_fields="work_notes", sysparm_display_value="true")
            response = self.http.request("GET", with_query(self._table_url(ticket_id), params))
            if response.status_code == 404:
                return False
            row = self._result_object(response, f"work notes of {ticket_id}")
            notes = row.get("work_notes")
            text = notes.get("display_value", "") if isinstance(notes, dict) else _str(notes)
            return marker in text
        query = f"name={self.table}^element_id={ticket_id}^element=work_notes^valueLIKE{query_value(marker)}"
        params = raw_params(("sys_id",), sysparm_query=query, sysparm_limit=1, sysparm_no_count="true")
        url = self._table_url(table="sys_journal_field")
        return bool(self._result_list(self.http.request("GET", with_query(url, params)), "journal"))

    def close(self) -> None:
        self.http.close()

    # -- responses ----------------------------------------------------------------------------------------------

    def _table_url(self, sys_id: str = "", *, table: str = "") -> str:
        url = f"/api/now/table/{table or self.table}"
        return f"{url}/{sys_id}" if sys_id else url

    def _body(self, response: httpx.Response, what: str) -> Any:
        if response.status_code != 200:
            reason = self.http.redact(_error_text(response))
            raise ConnectorError(f"{self.instance}: {what}: HTTP {response.status_code} {reason}")
        try:
            return decode_json(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A hibernating developer instance answers 200 with an HTML wake-up page.
            raise TransientError(f"{self.instance}: {what}: response is not JSON (instance asleep?)") from None

    def _result_list(self, response: httpx.Response, what: str) -> list[dict[str, Any]]:
        body = self._body(response, what)
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list):
            raise TransientError(f"{self.instance}: {what}: response has no result list")
        return [row for row in result if isinstance(row, dict)]

    def _result_object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = self._body(response, what)
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise TransientError(f"{self.instance}: {what}: response has no result object")
        return result


_Histories = tuple[dict[str, dict[str, list[dict[str, Any]]]], set[str]]
"""History rows by source and record sys_id, and the sources the platform refused."""


def _is_sys_id(value: str) -> bool:
    """sys_ids are 32 hex characters on every instance; anything else must not reach a URL or a query."""
    return bool(value) and len(value) <= 64 and value.replace("_", "").isalnum()


def _cursor_key(row: dict[str, Any]) -> tuple[str, str] | None:
    updated_on, sys_id = _str(row.get("sys_updated_on")), _str(row.get("sys_id"))
    try:
        _parse_date(updated_on)
    except ValueError:
        return None
    return (updated_on, sys_id) if _is_sys_id(sys_id) else None


def _str(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("value", "")
    return value if isinstance(value, str) else ""


def _error_text(response: httpx.Response) -> str:
    """The platform's error message and detail, for a person to act on."""
    try:
        error = response.json().get("error") or {}
        parts = [str(error.get("message") or ""), str(error.get("detail") or "")]
        return ": ".join(part for part in parts if part)[:300]
    except (ValueError, AttributeError):
        return response.text[:200].strip()


def _int_option(options: Mapping[str, Any], name: str, default: int, instance: str, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{instance}: options.{name} must be an integer from {low} to {high}, got {value!r}")
    return value

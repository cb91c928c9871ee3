"""A stand-in for the part of the ServiceNow Table API that escalation-sync uses, written from the documentation.

Endpoints (ServiceNow "Table API" reference; "OAuth tokens"; "Inbound REST API rate limiting"):
- `GET /api/now/table/{table}` with `sysparm_query` (encoded query), `sysparm_fields` (dot-walking allowed),
  `sysparm_limit` (default 10000), `sysparm_offset`, `sysparm_display_value` (false | true | all),
  `sysparm_exclude_reference_link`, `sysparm_no_count`. Answers `{"result": [...]}` with `X-Total-Count` and a
  `Link` header (first / prev / next / last, offset based). Parameters the platform does not know are ignored
  without a word, exactly like the real instance: a misspelled `sysparm_qeury` returns every record.
- `GET /api/now/table/{table}/{sys_id}`, `PATCH` / `PUT` of the same: `{"result": {...}}`. Journal fields
  (`work_notes`, `comments`) are write-only inputs: a value becomes a `sys_journal_field` row, and the field reads
  back as "" in raw mode. A write that changes something moves `sys_updated_on` and `sys_mod_count`; unknown
  fields in the body are ignored (as the platform does).
- History tables read like any other: `sys_journal_field` (one row per journal entry: `element_id`, `element`,
  `value`, `sys_created_by`) and `sys_audit` (one row per changed field of an incident: `documentkey`,
  `fieldname`, `oldvalue`, `newvalue`, `user` = the user_name, `sys_created_on`; inserts not audited). A table in
  `denied_tables` answers 403, as a table read ACL makes it.
- `POST /oauth_token.do` (form encoded, `grant_type=client_credentials`): a bearer token valid `expires_in` s.
- Every `/api/` request needs an `Authorization` header (Basic, or Bearer with a live token), else 401; given
  `credentials` / `client`, only those are accepted.
- Errors have the platform's shape: `{"error": {"message", "detail"}, "status": "failure"}`.
- Optional hourly rate limit: `X-RateLimit-Limit` / `X-RateLimit-Reset` / `X-RateLimit-Rule`, 429 + Retry-After.

Encoded queries: conditions joined by `^` (AND), `^OR` (OR of the neighbouring conditions), `^NQ` (OR of whole
groups); operators = != > >= < <= IN NOT IN LIKE NOTLIKE STARTSWITH ENDSWITH ISEMPTY ISNOTEMPTY; `ORDERBY` /
`ORDERBYDESC`; `^^` is a literal caret. A condition on a field the table does not have is ignored (the platform
default, `glide.invalid_query.returns_no_rows=false`).

Values are stored as the platform stores them: strings, "" for empty, sys_ids for references, UTC
"YYYY-MM-DD HH:MM:SS" dates, durations as epoch datetimes.
"""

from __future__ import annotations

import base64
import email.utils
import json
import random
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from sandbox.base import Request, Response, SandboxApp, SimClock

DATE = "%Y-%m-%d %H:%M:%S"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_LIMIT = 10000
_QUERY_ACL_DETAIL = "Field(s) present in the query do not have permission to be read"
TOKEN_LIFETIME = 1799

# Reference fields per table and the table they point to (what the `link` of a reference names).
REFERENCES: dict[str, dict[str, str]] = {
    "incident": {
        "assignment_group": "sys_user_group",
        "company": "core_company",
        "caller_id": "sys_user",
        "opened_by": "sys_user",
        "assigned_to": "sys_user",
        "resolved_by": "sys_user",
        "closed_by": "sys_user",
        "sys_domain": "sys_user_group",
    },
    "task_sla": {"task": "task", "sla": "contract_sla"},
    "sys_user": {"company": "core_company"},
    "sys_user_group": {},
    "core_company": {},
    "contract_sla": {},
    "sys_journal_field": {},
    "sys_audit": {},
}
# Fields whose changes the platform audits into sys_audit (every field of an audited table but the system
# fields and journal fields, whose entries are sys_journal_field rows). Inserts are not audited, as on a
# default instance (`glide.sys.audit_inserts` false): a field's value at creation is its first change's oldvalue.
AUDITED_TABLES = frozenset({"incident"})
JOURNAL_FIELDS = {"incident": ("work_notes", "comments")}
DISPLAY_FIELD = {"sys_user_group": "name", "core_company": "name", "sys_user": "name", "contract_sla": "name"}
# Fields the platform maintains itself; a PATCH naming them is ignored (no sysparm_suppress_auto_sys_field).
SYSTEM_FIELDS = {"sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by", "sys_mod_count"}

GROUPS = {
    "bdd640fb06671ad11c80317fa3b1799d": "Service Desk",
    "23b8c1e9392456de3eb13b9046685257": "Application Support",
    "bd9c66b3ad3c2d6d1a3d1fa7bc8960a9": "Product Engineering",
    "972a846916419f828b9d2434e465e150": "Core Platform Engineering",
    "17fc695a07a0ca6e0822e8f36c031199": "Network",
    "9a1de644815ef6d13b8faa1837f8a88b": "Database",
}
TIER_GROUPS = list(GROUPS)[:4]
COMPANIES = {
    "b74d0fb132e706298fadc1a606cb0fb3": "Globex Corporation",
    "6b65a6a48b8148f6b38a088ca65ed389": "Initech",
    "4737819096da1dac72ff5d2a386ecbe0": "Umbrella Health",
    "c241330b01a9e71fde8a774bcf36d58b": "Bluth Bananas",
    "6c307511b2b9437a28df6ec4ce4a2bbd": "Vandelay Industries",
    "371ecd7b27cd813047229389571aa876": "Stark Logistics",
    "1a2a73ed562b0f79c37459eef50bea63": "Wonka Foods",
}
ENTERPRISE = set(list(COMPANIES)[:3])
SUBJECTS = [
    ("Unable to connect to email", "email", "inquiry"),
    ("VPN drops every few minutes", "vpn", "network"),
    ("Checkout page returns 500", "", "software"),
    ("Invoices export is empty", "", "software"),
    ("SSO login loops back to the sign-in page", "", "software"),
    ("Report dashboard very slow", "", "software"),
    ("Cannot print to floor 3 printer", "", "hardware"),
    ("Data sync with ERP stalled", "", "database"),
    ("API returns 429 for our integration", "", "software"),
    ("Password reset email never arrives", "email", "inquiry"),
]
# Impact x urgency -> priority (the default incident priority lookup).
PRIORITY_MATRIX = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("2", "1"): "2",
    ("1", "3"): "3",
    ("2", "2"): "3",
    ("3", "1"): "3",
    ("2", "3"): "4",
    ("3", "2"): "4",
    ("3", "3"): "5",
}
# SLA definitions: (name, priorities it applies to, duration).
SLA_DEFINITIONS = [
    ("P1 resolution (4 hour)", {"1"}, timedelta(hours=4)),
    ("P2 resolution (8 hour)", {"2"}, timedelta(hours=8)),
    ("P3 resolution (3 day)", {"3"}, timedelta(days=3)),
    ("P4 resolution (5 day)", {"4", "5"}, timedelta(days=5)),
    ("Priority 1 response (15 min)", {"1"}, timedelta(minutes=15)),
]

_CONDITION = re.compile(
    r"^(?P<field>[a-z0-9_.]+?)"
    r"(?P<op>ISNOTEMPTY|ISEMPTY|NOT IN|IN|NOTLIKE|LIKE|STARTSWITH|ENDSWITH|>=|<=|!=|=|>|<)(?P<value>.*)$",
    re.DOTALL,
)


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(DATE)


def _duration(delta: timedelta) -> str:
    return _fmt(EPOCH + max(delta, timedelta(0)))


def _error(status: int, message: str, detail: str | None = None, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"error": {"message": message, "detail": detail}, "status": "failure"}, headers or {})


class EncodedQuery:
    """A parsed encoded query: OR of groups (^NQ), each an AND of clauses, each an OR (^OR) of conditions."""

    def __init__(self, text: str) -> None:
        self.groups: list[list[list[tuple[str, str, str]]]] = [[]]
        self.order: list[tuple[str, bool]] = []
        for token in self._tokens(text):
            if not token:
                continue
            if token.startswith("ORDERBYDESC"):
                self.order.append((token[len("ORDERBYDESC") :], True))
                continue
            if token.startswith("ORDERBY"):
                self.order.append((token[len("ORDERBY") :], False))
                continue
            alternative = False
            if token.startswith("NQ"):
                self.groups.append([])
                token = token[2:]
            elif token.startswith("OR") and self.groups[-1]:
                alternative = True
                token = token[2:]
            match = _CONDITION.match(token)
            if match is None:
                continue  # not a condition we understand: the platform ignores it too
            condition = (match["field"], match["op"], match["value"])
            if alternative:
                self.groups[-1][-1].append(condition)
            else:
                self.groups[-1].append([condition])

    @staticmethod
    def _tokens(text: str) -> list[str]:
        tokens, current, index = [], [], 0
        while index < len(text):
            char = text[index]
            if char == "^":
                if text.startswith("^^", index):
                    current.append("^")
                    index += 2
                    continue
                tokens.append("".join(current))
                current = []
            else:
                current.append(char)
            index += 1
        tokens.append("".join(current))
        return tokens

    def matches(self, get: Callable[[str], str | None]) -> bool:
        groups = [group for group in self.groups if group] or [[]]
        return any(all(any(_test(get, c) for c in clause) for clause in group) for group in groups)


def _compare(left: str, right: str) -> int:
    try:
        a, b = float(left), float(right)
    except ValueError:
        a, b = left, right  # type: ignore[assignment]
    return (a > b) - (a < b)  # type: ignore[operator]


def _test(get: Callable[[str], str | None], condition: tuple[str, str, str]) -> bool:
    field, op, value = condition
    actual = get(field)
    if actual is None:
        return True  # an unknown field: the condition is dropped, as on a default instance
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    if op in (">", ">=", "<", "<="):
        if actual == "":
            return False
        order = _compare(actual, value)
        return {">": order > 0, ">=": order >= 0, "<": order < 0, "<=": order <= 0}[op]
    if op == "IN":
        return actual in value.split(",")
    if op == "NOT IN":
        return actual not in value.split(",")
    if op == "LIKE":
        return value.lower() in actual.lower()
    if op == "NOTLIKE":
        return value.lower() not in actual.lower()
    if op == "STARTSWITH":
        return actual.lower().startswith(value.lower())
    if op == "ENDSWITH":
        return actual.lower().endswith(value.lower())
    if op == "ISEMPTY":
        return actual == ""
    if op == "ISNOTEMPTY":
        return actual != ""
    return False


class ServiceNowSandbox(SandboxApp):
    """Incidents, groups, companies, users, task_sla and journal rows, served through the Table API subset."""

    platform = "servicenow"

    def __init__(
        self,
        clock: SimClock,
        *,
        seed: int = 7,
        credentials: tuple[str, str] | None = None,
        client: tuple[str, str] | None = None,
    ) -> None:
        """`credentials` (user, password) and `client` (OAuth id, secret): None accepts any non-empty pair."""
        super().__init__(clock)
        self.rng = random.Random(seed)
        self._idle: set[str] = set()
        """Incidents nobody touches after creation (simulate() leaves them alone)."""
        self._audit_rng = random.Random(seed + 1)
        self.credentials = credentials
        self.client = client
        self.tokens: dict[str, datetime] = {}
        self.tables: dict[str, dict[str, dict[str, str]]] = {name: {} for name in REFERENCES}
        self.rate_limit: int | None = None
        self.denied_tables: set[str] = set()
        """Tables the integration user may not read: a list read answers 403, as a table ACL makes it."""
        self._as_of: datetime | None = None
        self._window: tuple[int, int] = (0, 0)  # (hour index, requests counted)
        self._next_number = 10001
        self._seed_reference_data()
        api = r"/api/now(?:/v[12])?/table/(?P<table>[A-Za-z0-9_]+)"
        self.route("GET", api, self._list)
        self.route("GET", api + r"/(?P<sys_id>[A-Za-z0-9_.-]+)", self._get)
        self.route("PATCH", api + r"/(?P<sys_id>[A-Za-z0-9_.-]+)", self._patch)
        self.route("PUT", api + r"/(?P<sys_id>[A-Za-z0-9_.-]+)", self._patch)
        self.route("POST", r"/oauth_token\.do", self._token)

    # -- HTTP ---------------------------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/api/"):
            if not self._authorized(request):
                with self._lock:
                    self.requests.append((request.method, request.path))
                return _error(401, "User Not Authenticated", "Required to provide Auth information")
            limited = self._count_rate(request)
            if limited is not None:
                return limited
        response = super().dispatch(request)
        if self.rate_limit is not None and request.path.startswith("/api/"):
            response.headers.update(self._rate_headers())
        response.headers.setdefault("Date", email.utils.format_datetime(self.clock.now(), usegmt=True))
        return response

    def not_found(self, request: Request) -> Response:
        return _error(400, "Requested URI does not represent any resource", None)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return bool(user and password) and self.credentials in (None, (user, password))
        if scheme.lower() == "bearer":
            expires = self.tokens.get(value)
            return expires is not None and self.clock.now() < expires
        return False

    def _count_rate(self, request: Request) -> Response | None:
        if self.rate_limit is None:
            return None
        now = self.clock.now()
        hour = int(now.timestamp() // 3600)
        index, used = self._window
        used = used + 1 if index == hour else 1
        self._window = (hour, used)
        if used <= self.rate_limit:
            return None
        with self._lock:
            self.requests.append((request.method, request.path))
        reset = (hour + 1) * 3600
        headers = {**self._rate_headers(), "Retry-After": str(int(reset - now.timestamp()))}
        return _error(
            429,
            "Rate limit exceeded",
            f"Rate limit of {self.rate_limit} requests per hour exceeded for rule 'escalation-sync'",
            headers,
        )

    def _rate_headers(self) -> dict[str, str]:
        hour, _ = self._window
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Reset": str((hour + 1) * 3600),
            "X-RateLimit-Rule": "a3c0e1f2b4d60210f877e3a1b7c0d9e2",
        }

    def _token(self, request: Request) -> Response:
        form = {key: values[0] for key, values in parse_qs(request.body.decode(errors="replace")).items()}
        pair = (form.get("client_id", ""), form.get("client_secret", ""))
        if form.get("grant_type") != "client_credentials" or not all(pair) or self.client not in (None, pair):
            return Response(401, {"error_description": "access_denied", "error": "server_error"})
        token = secrets.token_urlsafe(48)
        self.tokens[token] = self.clock.now() + timedelta(seconds=TOKEN_LIFETIME)
        return Response(
            200, {"access_token": token, "scope": "useraccount", "token_type": "Bearer", "expires_in": TOKEN_LIFETIME}
        )

    def _list(self, request: Request, table: str) -> Response:
        if table not in self.tables:
            return _error(400, f"Invalid table {table}")
        if table in self.denied_tables:
            return _error(403, "Insufficient rights to query records", _QUERY_ACL_DETAIL)
        rows = list(self.tables[table].values())
        query = EncodedQuery(request.param("sysparm_query", "") or "")
        rows = [row for row in rows if query.matches(lambda name, row=row: self._get_value(table, row, name))]
        for field, descending in reversed(query.order):
            rows.sort(key=lambda row, f=field: self._get_value(table, row, f) or "", reverse=descending)
        total = len(rows)
        try:
            limit = int(request.param("sysparm_limit", str(DEFAULT_LIMIT)) or DEFAULT_LIMIT)
            offset = int(request.param("sysparm_offset", "0") or 0)
        except ValueError:
            return _error(400, "Invalid parameter", "sysparm_limit and sysparm_offset must be integers")
        limit = max(1, limit)
        page = rows[max(0, offset) : max(0, offset) + limit]
        result = [self._render(request, table, row) for row in page]
        headers = {"Link": self._links(request, offset, limit, total)}
        if (request.param("sysparm_no_count") or "").lower() != "true":
            headers["X-Total-Count"] = str(total)
        return Response(200, {"result": result}, headers)

    def _get(self, request: Request, table: str, sys_id: str) -> Response:
        if table not in self.tables:
            return _error(400, f"Invalid table {table}")
        row = self.tables[table].get(sys_id)
        if row is None:
            return _error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
        return Response(200, {"result": self._render(request, table, row)})

    def _patch(self, request: Request, table: str, sys_id: str) -> Response:
        if table not in self.tables:
            return _error(400, f"Invalid table {table}")
        row = self.tables[table].get(sys_id)
        if row is None:
            return _error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
        try:
            body = request.json()
        except ValueError:
            return _error(400, "Exception while reading request", "The payload is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "Exception while reading request", "The payload is not a JSON object.")
        user = self._user_of(request)
        self._write(table, row, {key: self._input(value) for key, value in body.items()}, user)
        return Response(200, {"result": self._render(request, table, row)})

    def _links(self, request: Request, offset: int, limit: int, total: int) -> str:
        base = f"{self._origin(request)}{request.path}"
        params = {key: values[0] for key, values in request.query.items() if key != "sysparm_offset"}

        def link(at: int, rel: str) -> str:
            return f'<{base}?{urlencode({**params, "sysparm_offset": at})}>;rel="{rel}"'

        links = [link(0, "first")]
        if offset > 0:
            links.append(link(max(0, offset - limit), "prev"))
        if offset + limit < total:
            links.append(link(offset + limit, "next"))
        links.append(link(max(0, ((total - 1) // limit) * limit), "last"))
        return ",".join(links)

    @staticmethod
    def _origin(request: Request) -> str:
        host = request.headers.get("host", "instance.service-now.com")
        scheme = "http" if host.startswith(("127.0.0.1", "localhost")) else "https"
        return f"{scheme}://{host}"

    @staticmethod
    def _input(value: Any) -> str:
        if isinstance(value, dict):
            value = value.get("value", value.get("sys_id", ""))
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def _user_of(self, request: Request) -> str:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            return base64.b64decode(value).decode(errors="replace").partition(":")[0]
        return "oauth.client"

    # -- rendering ----------------------------------------------------------------------------------------------

    def _get_value(self, table: str, row: dict[str, str], name: str) -> str | None:
        """A stored value, following dot-walks through references; None when the field does not exist."""
        head, _, rest = name.partition(".")
        if head not in row and head not in JOURNAL_FIELDS.get(table, ()):
            return None
        value = row.get(head, "")
        if not rest:
            return value
        target = REFERENCES.get(table, {}).get(head)
        if target is None:
            return None
        target = "incident" if target == "task" else target
        referenced = self.tables.get(target, {}).get(value)
        if referenced is None:
            return ""
        return self._get_value(target, referenced, rest)

    def _render(self, request: Request, table: str, row: dict[str, str]) -> dict[str, Any]:
        display = (request.param("sysparm_display_value", "false") or "false").lower()
        exclude = (request.param("sysparm_exclude_reference_link", "false") or "false").lower() == "true"
        fields_param = request.param("sysparm_fields", "") or ""
        names = [name.strip() for name in fields_param.split(",") if name.strip()]
        if not names:
            names = [*row.keys(), *JOURNAL_FIELDS.get(table, ())]
        origin = self._origin(request)
        out: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            value = self._get_value(table, row, name)
            if value is None:
                continue
            if "." in name:
                out[name] = value
                continue
            if name in JOURNAL_FIELDS.get(table, ()):
                out[name] = self._journal_text(table, row["sys_id"], name) if display != "false" else ""
                continue
            target = REFERENCES.get(table, {}).get(name)
            if target is None or value == "":
                out[name] = value if display != "all" else {"display_value": value, "value": value}
                continue
            link = f"{origin}/api/now/table/{target}/{value}"
            shown = self._display(target, value)
            if display == "false":
                out[name] = value if exclude else {"link": link, "value": value}
            elif display == "true":
                out[name] = shown if exclude else {"display_value": shown, "link": link}
            else:
                out[name] = {"display_value": shown, "value": value, **({} if exclude else {"link": link})}
        return out

    def _display(self, table: str, sys_id: str) -> str:
        table = "incident" if table == "task" else table
        row = self.tables.get(table, {}).get(sys_id)
        if row is None:
            return sys_id
        return row.get(DISPLAY_FIELD.get(table, "number"), sys_id)

    def _journal_text(self, table: str, sys_id: str, element: str) -> str:
        """A journal field's display value: every entry, newest first, headed by time and author."""
        rows = [
            row
            for row in self.tables["sys_journal_field"].values()
            if row["element_id"] == sys_id and row["element"] == element and row["name"] == table
        ]
        rows.sort(key=lambda row: row["sys_created_on"], reverse=True)
        label = "Work notes" if element == "work_notes" else "Additional comments"
        return "".join(
            f"{row['sys_created_on']} - {row['sys_created_by']} ({label})\n{row['value']}\n\n" for row in rows
        )

    # -- data -----------------------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._as_of or self.clock.now()

    def _new_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _stamp(self, row: dict[str, str], user: str, *, created: bool = False) -> None:
        now = _fmt(self._now())
        if created:
            row.update(sys_created_on=now, sys_created_by=user, sys_mod_count="0")
        else:
            row["sys_mod_count"] = str(int(row.get("sys_mod_count") or 0) + 1)
        row.update(sys_updated_on=now, sys_updated_by=user)

    def _write(self, table: str, row: dict[str, str], values: dict[str, str], user: str) -> bool:
        """Apply field values as the platform does; True when the record changed (and so moved)."""
        changed = False
        for name, value in values.items():
            if name in JOURNAL_FIELDS.get(table, ()):
                if value.strip():
                    self._journal(table, row["sys_id"], name, value, user)
                    changed = True
            elif name in row and name not in SYSTEM_FIELDS and row[name] != value:
                if table in AUDITED_TABLES:
                    self._audit(table, row, name, row[name], value, user)
                row[name] = value
                changed = True
        if table == "incident" and "priority" not in values and ("impact" in values or "urgency" in values):
            # The priority lookup rule derives priority from impact x urgency; the derived change is audited.
            derived = PRIORITY_MATRIX.get((row.get("impact", ""), row.get("urgency", "")))
            if derived is not None and row.get("priority") != derived:
                self._audit(table, row, "priority", row.get("priority", ""), derived, user)
                row["priority"] = derived
                changed = True
        if changed:
            if table == "incident":
                row["incident_state"] = row.get("state", "")
                self._sync_slas(row)
            self._stamp(row, user)
        return changed

    def _audit(self, table: str, row: dict[str, str], field: str, old: str, new: str, user: str) -> None:
        """One sys_audit row per changed field, as the platform writes them (raw values, user by user_name)."""
        # Its own random stream: auditing must not change what the seeded simulation does.
        entry = {
            "sys_id": f"{self._audit_rng.getrandbits(128):032x}",
            "sys_created_on": _fmt(self._now()),
            "sys_created_by": user,
            "tablename": table,
            "documentkey": row["sys_id"],
            "fieldname": field,
            "oldvalue": old,
            "newvalue": new,
            "user": user,
            "reason": "",
            "record_checkpoint": str(int(row.get("sys_mod_count") or 0) + 1),
            "internal_checkpoint": f"{self._audit_rng.getrandbits(48):012x}",
        }
        self.tables["sys_audit"][entry["sys_id"]] = entry

    def _journal(self, table: str, sys_id: str, element: str, value: str, user: str) -> None:
        entry = {
            "sys_id": self._new_id(),
            "sys_created_on": _fmt(self._now()),
            "name": table,
            "element_id": sys_id,
            "sys_tags": "",
            "value": value,
            "sys_created_by": user,
            "element": element,
        }
        self.tables["sys_journal_field"][entry["sys_id"]] = entry

    def _seed_reference_data(self) -> None:
        system = {"sys_created_on": "2024-03-01 09:00:00", "sys_created_by": "admin", "sys_mod_count": "0"}
        system.update(sys_updated_on="2024-03-01 09:00:00", sys_updated_by="admin")
        for sys_id, name in GROUPS.items():
            self.tables["sys_user_group"][sys_id] = {"sys_id": sys_id, "name": name, "active": "true", **system}
        for sys_id, name in COMPANIES.items():
            row = {"sys_id": sys_id, "name": name, "customer": "true", **system}
            row["u_segment"] = "enterprise" if sys_id in ENTERPRISE else "standard"
            self.tables["core_company"][sys_id] = row
        first = ["Abel", "Beth", "Carlos", "Dana", "Eitan", "Fatima", "Greta", "Hiro", "Ines", "Jamal"]
        last = ["Tuter", "Anglin", "Mendez", "Kowalski", "Levi", "Haddad", "Lind", "Tanaka", "Sousa", "Okafor"]
        for index in range(30):
            sys_id = self._new_id()
            given, family = first[index % 10], last[(index * 3) % 10]
            company = list(COMPANIES)[index % len(COMPANIES)]
            self.tables["sys_user"][sys_id] = {
                "sys_id": sys_id,
                "user_name": f"{given}.{family}{index}".lower(),
                "name": f"{given} {family}",
                "email": f"{given}.{family}{index}@example.com".lower(),
                "company": company,
                **system,
            }
        for name, _, duration in SLA_DEFINITIONS:
            sys_id = self._new_id()
            self.tables["contract_sla"][sys_id] = {
                "sys_id": sys_id,
                "name": name,
                "duration": _duration(duration),
                "active": "true",
                **system,
            }

    def seed_tickets(self, count: int) -> list[str]:
        """`count` incidents opened over the last five days, varied; returns their sys_ids."""
        created = []
        now = self.clock.now()
        for _ in range(count):
            opened = now - timedelta(minutes=self.rng.randint(10, 5 * 24 * 60))
            created.append(self._create_incident(opened, backfill=True))
        return created

    def seed_idle(self, count: int, *, within: timedelta = timedelta(days=5)) -> list[str]:
        """`count` incidents opened over the last `within` that nobody touches afterwards (add_idle_ticket)."""
        now = self.clock.now()
        ages = sorted((self.rng.uniform(60, within.total_seconds()) for _ in range(count)), reverse=True)
        return [self.add_idle_ticket(now - timedelta(seconds=age)) for age in ages]

    def add_idle_ticket(self, opened: datetime, impact: str = "2", urgency: str = "2", tier: int = 0) -> str:
        """One plain incident (state New, no flags, no journal) opened at `opened` in the tier's group and
        never touched again: `simulate` leaves it alone. Returns its sys_id."""
        with self._lock:
            sys_id = self._create_incident(opened)
            row = self.tables["incident"][sys_id]
            row.update(impact=impact, urgency=urgency, priority=PRIORITY_MATRIX[(impact, urgency)])
            row.update(assignment_group=TIER_GROUPS[tier], u_escalation_tags="", u_tags="", u_churn_risk="false")
            row.update(u_security_legal="false", u_engineering_required="false", u_affected_customers="0")
            row.update(reopen_count="0", child_incidents="0")
            for sla in [sla for sla in self.tables["task_sla"].values() if sla["task"] == sys_id]:
                del self.tables["task_sla"][sla["sys_id"]]
            self._as_of = opened
            try:
                self._attach_slas(row)
            finally:
                self._as_of = None
            self._idle.add(sys_id)
            return sys_id

    def escalation_view(self, sys_id: str) -> tuple[str | None, frozenset[str]]:
        """(tier by assignment group, tags of u_escalation_tags and u_tags) as the instance shows them now."""
        with self._lock:
            row = self.tables["incident"][sys_id]
            group = row["assignment_group"]
            tier = f"L{TIER_GROUPS.index(group) + 1}" if group in TIER_GROUPS else None
            tags = f"{row['u_escalation_tags']},{row.get('u_tags', '')}"
            return tier, frozenset(tag for tag in tags.split(",") if tag)

    def _create_incident(self, opened: datetime, *, backfill: bool = False) -> str:
        rng = self.rng
        users = list(self.tables["sys_user"].values())
        caller = rng.choice(users)
        impact, urgency = rng.choice(["1", "2", "2", "3", "3", "3"]), rng.choice(["1", "2", "3", "3"])
        subject, subcategory, category = rng.choice(SUBJECTS)
        sys_id = self._new_id()
        number = f"INC{self._next_number:07d}"
        self._next_number += 1
        group = rng.choices([*TIER_GROUPS, *list(GROUPS)[4:], ""], weights=[40, 20, 8, 3, 6, 6, 5])[0]
        state = "1" if not group else rng.choices(["1", "2", "3", "6", "7", "8"], weights=[10, 45, 12, 15, 12, 3])[0]
        if not backfill:
            state = "1"
        stamp = _fmt(opened)
        row = {
            "parent": "", "made_sla": "true", "caused_by": "", "watch_list": "", "upon_reject": "cancel",
            "child_incidents": str(rng.choice([0, 0, 0, 0, 1, 3])), "hold_reason": "", "approval_history": "",
            "number": number, "resolved_by": "", "opened_by": caller["sys_id"], "user_input": "",
            "sys_domain": "global", "state": state, "knowledge": "false", "order": "", "closed_at": "",
            "cmdb_ci": "", "delivery_plan": "", "contract": "", "impact": impact, "active": "true",
            "work_notes_list": "", "business_service": "", "priority": PRIORITY_MATRIX[(impact, urgency)],
            "sys_domain_path": "/", "rfc": "", "time_worked": "", "expected_start": "", "opened_at": stamp,
            "business_duration": "", "group_list": "", "work_end": "", "caller_id": caller["sys_id"],
            "reopened_time": "", "resolved_at": "", "approval_set": "", "subcategory": subcategory,
            "short_description": subject, "close_code": "", "correlation_display": "", "delivery_task": "",
            "work_start": "", "assignment_group": group, "additional_assignee_list": "", "business_stc": "",
            "description": f"{subject}. Reported by {caller['name']}.", "calendar_duration": "",
            "close_notes": "", "notify": "1", "sys_class_name": "incident", "closed_by": "", "follow_up": "",
            "parent_incident": "", "sys_id": sys_id, "contact_type": rng.choice(["email", "phone", "self-service"]),
            "reopened_by": "", "incident_state": state, "urgency": urgency, "problem_id": "",
            "company": caller["company"], "reassignment_count": str(rng.choice([0, 0, 1, 2])),
            "activity_due": "", "assigned_to": "", "severity": "3", "approval": "not requested", "sla_due": "",
            "comments_and_work_notes": "", "due_date": "", "reopen_count": str(rng.choice([0, 0, 0, 0, 1, 2])),
            "sys_tags": "", "escalation": "0", "upon_approval": "proceed", "correlation_id": "", "location": "",
            "category": category,
            "u_tags": rng.choice(["", "", "", "", "customer_escalation", "public_complaint"]),
            "u_escalation_tags": "",
            "u_churn_risk": "true" if rng.random() < 0.08 else "false",
            "u_security_legal": "true" if rng.random() < 0.04 else "false",
            "u_engineering_required": "true" if rng.random() < 0.12 else "false",
            "u_affected_customers": str(rng.choice([0, 0, 1, 1, 5, 40])),
        }  # fmt: skip
        self.tables["incident"][sys_id] = row
        now = self.clock.now()
        self._as_of = opened  # a seeded record's history is written at its own (past) times
        try:
            self._stamp(row, caller["user_name"], created=True)
            self._attach_slas(row)
            if backfill:
                self._backfill(row, now)
        finally:
            self._as_of = None
        return sys_id

    def _backfill(self, row: dict[str, str], now: datetime) -> None:
        """Give a seeded incident the journal and timestamps its state implies, at times before `now`."""
        opened = datetime.strptime(row["opened_at"], DATE).replace(tzinfo=UTC)
        span = max(timedelta(minutes=1), now - opened)
        agent = "service.desk.agent"
        for step in range(self.rng.randint(0, 3)):
            self._as_of = opened + span * (step + 1) / 5
            element = self.rng.choice(["work_notes", "comments"])
            self._journal("incident", row["sys_id"], element, self.rng.choice(_NOTES), agent)
            self._stamp(row, agent)
        state = row["state"]
        self._as_of = opened + span * 0.9
        if state == "3":
            row["hold_reason"] = self.rng.choice(["1", "4", "4", "5"])
        if state in ("6", "7"):
            row["resolved_at"] = _fmt(self._now())
            row["resolved_by"] = ""
            row["close_code"] = "Solved (Permanently)"
            row["close_notes"] = "Fixed."
        if state in ("7", "8"):
            row["closed_at"] = _fmt(self._now())
            row["active"] = "false"
        self._stamp(row, agent)
        self._sync_slas(row)

    def _attach_slas(self, row: dict[str, str]) -> None:
        for definition in self.tables["contract_sla"].values():
            applies = next(spec for spec in SLA_DEFINITIONS if spec[0] == definition["name"])[1]
            if row["priority"] not in applies:
                continue
            duration = datetime.strptime(definition["duration"], DATE).replace(tzinfo=UTC) - EPOCH
            start = self._now()
            sla = {
                "sys_id": self._new_id(),
                "task": row["sys_id"],
                "sla": definition["sys_id"],
                "stage": "in_progress",
                "has_breached": "false",
                "active": "true",
                "start_time": _fmt(start),
                "end_time": "",
                "planned_end_time": _fmt(start + duration),
                "original_breach_time": _fmt(start + duration),
                "duration": "1970-01-01 00:00:00",
                "business_duration": "1970-01-01 00:00:00",
                "pause_duration": "1970-01-01 00:00:00",
                "business_pause_duration": "1970-01-01 00:00:00",
                "pause_time": "",
                "time_left": _duration(duration),
                "business_time_left": _duration(duration),
                "percentage": "0",
                "business_percentage": "0",
                "schedule": "",
                "timezone": "GMT",
            }
            self._stamp(sla, "system", created=True)
            self.tables["task_sla"][sla["sys_id"]] = sla

    def _sync_slas(self, incident: dict[str, str]) -> None:
        """The SLA engine, simplified: pause on hold, stop when resolved, breach when the planned end passes."""
        now = self._now()
        state = incident.get("state", "")
        for sla in self.tables["task_sla"].values():
            if sla["task"] != incident["sys_id"] or sla["active"] != "true":
                continue
            before = dict(sla)
            planned = datetime.strptime(sla["planned_end_time"], DATE).replace(tzinfo=UTC)
            start = datetime.strptime(sla["start_time"], DATE).replace(tzinfo=UTC)
            target = datetime.strptime(sla["original_breach_time"], DATE).replace(tzinfo=UTC) - start
            if sla["stage"] == "paused" and state != "3":
                paused_at = datetime.strptime(sla["pause_time"], DATE).replace(tzinfo=UTC)
                planned += now - paused_at
                sla.update(stage="in_progress", pause_time="", planned_end_time=_fmt(planned))
            if sla["stage"] == "in_progress":
                left = planned - now
                elapsed = target - left
                percent = f"{max(0.0, elapsed / target * 100):.2f}" if target else "0"
                sla.update(time_left=_duration(left), business_time_left=_duration(left))
                sla.update(percentage=percent, business_percentage=percent)
                sla["has_breached"] = "true" if left < timedelta(0) else "false"
                if state == "3":
                    sla.update(stage="paused", pause_time=_fmt(now))
                elif state in ("6", "7", "8"):
                    stage = "cancelled" if state == "8" else "completed"
                    sla.update(stage=stage, active="false", end_time=_fmt(now))
            if sla != before:
                self._stamp(sla, "system")

    # -- simulation -----------------------------------------------------------------------------------------------

    def simulate(self, delta: timedelta, step: timedelta = timedelta(minutes=5)) -> None:
        """Advance time in steps; at each, a few deterministic pseudo-random things happen to incidents."""
        end = self.clock.now() + delta
        while self.clock.now() < end:
            self.clock.advance(min(step, end - self.clock.now()))
            with self._lock:
                self._tick()

    def _tick(self) -> None:
        rng = self.rng
        active = [row for row in self.tables["incident"].values() if row["active"] == "true"]
        incidents = [row for row in active if row["sys_id"] not in self._idle]
        if rng.random() < 0.15 or not incidents:
            self._create_incident(self.clock.now())
        for _ in range(rng.randint(0, 3)):
            if not incidents:
                break
            row = rng.choice(incidents)
            roll = rng.random()
            caller = self.tables["sys_user"].get(row["caller_id"], {}).get("user_name", "guest")
            if roll < 0.3:
                self._write("incident", row, {"comments": rng.choice(_CUSTOMER)}, caller)
            elif roll < 0.55:
                element = rng.choice(["work_notes", "comments"])
                self._write("incident", row, {element: rng.choice(_NOTES)}, "service.desk.agent")
            else:
                self._move(row)
        for row in active:  # the platform's SLA engine runs for every open incident, touched or not
            self._sync_slas(row)

    def _move(self, row: dict[str, str]) -> None:
        state, now = row["state"], _fmt(self.clock.now())
        agent = "service.desk.agent"
        if state == "1":
            group = row["assignment_group"] or TIER_GROUPS[0]
            self._write("incident", row, {"state": "2", "assignment_group": group}, agent)
        elif state == "2":
            choice = self.rng.random()
            if choice < 0.3:
                self._write("incident", row, {"state": "3", "hold_reason": self.rng.choice(["1", "4", "5"])}, agent)
            elif choice < 0.7:
                values = {"state": "6", "resolved_at": now, "close_code": "Solved (Permanently)"}
                self._write("incident", row, {**values, "close_notes": "Resolved."}, agent)
            else:
                self._write("incident", row, {"work_notes": self.rng.choice(_NOTES)}, agent)
        elif state == "3":
            self._write("incident", row, {"state": "2", "hold_reason": ""}, agent)
        elif state == "6":
            self._write("incident", row, {"state": "7", "closed_at": now, "active": "false"}, "system")

    # -- helpers for tests ----------------------------------------------------------------------------------------

    def ticket(self, sys_id: str) -> dict[str, str]:
        """The stored incident (raw values: strings, sys_ids for references)."""
        return dict(self.tables["incident"][sys_id])

    def comments(self, sys_id: str) -> list[dict[str, str]]:
        """Journal rows (work_notes and comments) of an incident, oldest first."""
        rows = [row for row in self.tables["sys_journal_field"].values() if row["element_id"] == sys_id]
        return sorted((dict(row) for row in rows), key=lambda row: row["sys_created_on"])

    def audits(self, sys_id: str) -> list[dict[str, str]]:
        """sys_audit rows of an incident, oldest first."""
        rows = [row for row in self.tables["sys_audit"].values() if row["documentkey"] == sys_id]
        return sorted((dict(row) for row in rows), key=lambda row: row["sys_created_on"])

    def task_slas(self, sys_id: str) -> list[dict[str, str]]:
        return [dict(row) for row in self.tables["task_sla"].values() if row["task"] == sys_id]

    def update(self, sys_id: str, *, user: str = "other.agent", **fields: str) -> dict[str, str]:
        """Act as another agent (or as `user`: the caller's user_name acts as the customer): set fields (journal
        fields append) and move the record."""
        with self._lock:
            row = self.tables["incident"][sys_id]
            self._write("incident", row, {key: self._input(value) for key, value in fields.items()}, user)
            return dict(row)

    def add_comment(self, sys_id: str, body: str, public: bool) -> None:
        self.update(sys_id, **{"comments" if public else "work_notes": body})

    def delete(self, sys_id: str) -> None:
        """Delete an incident: it simply disappears from the table (no tombstone in the Table API)."""
        with self._lock:
            del self.tables["incident"][sys_id]

    def incident_ids(self) -> list[str]:
        return list(self.tables["incident"])

    def to_json(self) -> str:
        return json.dumps(self.tables, sort_keys=True)


_NOTES = [
    "Checked logs, the error started after the 02:00 deploy.",
    "Asked the customer for a HAR file.",
    "Reproduced on staging; needs a fix in the sync service.",
    "Waiting for the vendor to confirm the outage.",
    "Applied the workaround from KB0012345.",
]
_CUSTOMER = [
    "Any update? This is blocking our finance team.",
    "Still happening this morning.",
    "Thanks, the workaround helps for now.",
    "Our CFO is asking about this, please escalate.",
]

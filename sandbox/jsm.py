"""A stand-in for the Jira Service Management Cloud APIs escalation-sync uses, written from Atlassian's docs.

Serves, with the real paths, payloads, paging and error bodies:
- `POST /rest/api/3/search/jql` (and `GET` with query parameters): JQL subset (`project`, `key`, `status`,
  `labels`, `statusCategory` (name or key), `updated`/`created` against epoch millis or "yyyy-MM-dd HH:mm", AND, parentheses, ORDER BY),
  `{issues, nextPageToken, isLast}` pages of at most `page_cap` issues whatever `maxResults` asks, an opaque
  `nextPageToken` bound to its query, and only the requested `fields` (`id` alone when none are asked).
- `GET /rest/api/3/issue/{idOrKey}?fields=...`
- `expand=changelog` on both (the issue's `changelog`: `{startAt, maxResults, total, histories}`, at most
  `changelog_cap` histories, oldest first), and `POST /rest/api/3/changelog/bulkfetch` (`issueIdsOrKeys`, `fieldIds`,
  `maxResults`, `nextPageToken` -> `{issueChangeLogs: [{issueId, changeHistories}], nextPageToken}`). Status moves,
  tier option and label edits are recorded, each history `{id, author, created, items: [{field, fieldtype,
  fieldId, from, fromString, to, toString}]}`.
- the `comment` field: `{comments, self, maxResults, total, startAt}`, ADF bodies, `jsdPublic` (Cloud service
  projects: false for an internal note), authors with `accountType` ("customer" for portal customers); the
  `attachment` field, always `[]` (the stand-in keeps no files).
- `PUT /rest/api/3/issue/{idOrKey}`: `fields` (the tier select by `value` or `id`, numbers, text) and `update`
  operations on labels (`add`, `remove`, `set`); 204, or 400 `{"errorMessages": [...], "errors": {...}}`.
- `POST`/`GET /rest/servicedeskapi/request/{idOrKey}/comment`: public and internal comments, the servicedeskapi
  paging envelope (`size/start/limit/isLastPage/_links/values`) and its date objects
  (`{iso8601, jira, friendly, epochMillis}`).

Timestamps are rendered as Jira renders them for an API user in America/New_York: `...T07:03:02.000-0500`
(and `-0400` across daylight saving time). SLA fields (time to first response, time to resolution) are computed
roughly from priority goals on a 24x7 calendar, pausing while "Waiting for customer". Every request needs an
Authorization header (401 otherwise); 429s and other faults come from `SandboxApp.inject`.

It shares no code with connectors/jsm.py or mappings/jsm.py; the custom field ids below are the ones the default
mapping names, as a real site would have them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.base import Request, Response, SandboxApp, SimClock

PROJECT_KEY = "SUP"
PROJECT_ID = "10010"
USER_TZ = ZoneInfo("America/New_York")
TIER_FIELD = "customfield_10200"
FIRST_RESPONSE_FIELD = "customfield_10030"
RESOLUTION_FIELD = "customfield_10031"
SEGMENT_FIELD = "customfield_10100"
ORGANIZATIONS_FIELD = "customfield_10002"
ENGINEERING_FIELD = "customfield_10110"
REVENUE_FIELD = "customfield_10120"
AFFECTED_FIELD = "customfield_10121"

TIER_OPTIONS = {
    "10300": "L1 - Service Desk",
    "10301": "L2 - Technical Support",
    "10302": "L3 - Product Specialists",
    "10303": "L4 - Engineering",
}
SEGMENT_OPTIONS = {"10400": "Enterprise", "10401": "Business", "10402": "Standard"}
ENGINEERING_OPTIONS = {"10500": "Yes", "10501": "No"}

PRIORITIES = {  # name -> (id, first response goal, resolution goal)
    "Highest": ("1", timedelta(hours=1), timedelta(hours=4)),
    "High": ("2", timedelta(hours=2), timedelta(hours=8)),
    "Medium": ("3", timedelta(hours=4), timedelta(hours=24)),
    "Low": ("4", timedelta(hours=8), timedelta(hours=48)),
    "Lowest": ("5", timedelta(hours=16), timedelta(hours=72)),
}
NO_PRIORITY_GOALS = (timedelta(hours=4), timedelta(hours=24))

CATEGORIES = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {"id": 4, "key": "indeterminate", "colorName": "yellow", "name": "In Progress"},
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
STATUSES = {  # name -> (id, category key)
    "Waiting for support": ("10001", "new"),
    "In Progress": ("3", "indeterminate"),
    "Waiting for customer": ("10002", "indeterminate"),
    "Escalated": ("10003", "indeterminate"),
    "Resolved": ("10004", "done"),
    "Closed": ("6", "done"),
    "Done": ("10005", "done"),
}
PAUSING_STATUS = "Waiting for customer"
NOT_EDITABLE_STATUS = "Closed"

ORGANIZATIONS = [  # id, name, segment option id
    ("1", "Globex Corporation", "10400"),
    ("2", "Initech", "10401"),
    ("3", "Umbrella Health", "10400"),
    ("4", "Stark Logistics", "10400"),
    ("5", "Hooli Retail", "10401"),
    ("6", "Vandelay Imports", "10402"),
    ("7", "Pied Piper", "10402"),
    ("8", "Soylent Foods", "10401"),
]
LABEL_POOL = [
    "billing",
    "onboarding",
    "api",
    "sso",
    "mobile",
    "churn-risk",
    "public-complaint",
    "security",
    "legal",
    "engineering-required",
    "vendor-dependency",
    "customer-escalation",
]
SUBJECTS = [
    "Cannot log in with SSO after certificate rotation",
    "Invoices show the wrong VAT rate",
    "API returns 502 for bulk export",
    "Mobile app crashes when opening attachments",
    "Webhook deliveries delayed by hours",
    "Password reset emails not arriving",
    "Dashboard totals differ from CSV export",
    "Need audit log for admin changes",
    "Data import stuck at 99%",
    "Search results missing recent records",
]
AGENTS = [
    ("5b10ac8d82e05b22cc7d4ef5", "Mia Krystof", "mia@acme.example"),
    ("5b109f2e9729b51b54dc274d", "Ravi Patel", "ravi@acme.example"),
    ("5b10a0effa615349cb016cd8", "Lena Ortiz", "lena@acme.example"),
]
JIRA_ERROR_NOT_FOUND = "Issue does not exist or you do not have permission to see it."


def jira_time(moment: datetime) -> str:
    """`2015-11-21T07:03:02.000-0500`: milliseconds and a colon-less offset, in the API user's time zone."""
    local = moment.astimezone(USER_TZ)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}" + local.strftime("%z")


def date_object(moment: datetime) -> dict[str, Any]:
    """The servicedeskapi DateDTO."""
    local = moment.astimezone(USER_TZ)
    return {
        "iso8601": local.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jira": jira_time(moment),
        "friendly": local.strftime("%d/%b/%y %I:%M %p"),
        "epochMillis": int(moment.timestamp() * 1000),
    }


def friendly_duration(delta: timedelta) -> str:
    total = int(delta.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, minutes = total // 3600, (total % 3600) // 60
    if hours and minutes:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{hours}h" if hours else f"{sign}{minutes}m"


def duration_object(delta: timedelta) -> dict[str, Any]:
    return {"millis": int(delta.total_seconds() * 1000), "friendly": friendly_duration(delta)}


def jira_error(status: int, messages: list[str], errors: dict[str, str] | None = None) -> Response:
    return Response(status, {"errorMessages": messages, "errors": errors or {}})


def servicedesk_error(status: int, message: str, key: str) -> Response:
    return Response(status, {"errorMessage": message, "i18nErrorMessage": {"i18nKey": key, "parameters": []}})


@dataclass
class _Comment:
    id: str
    body: str
    public: bool
    author: tuple[str, str, str]
    created: datetime


@dataclass
class _History:
    """One changelog entry: who changed which fields when (items in the REST API's shape)."""

    id: str
    author: tuple[str, str, str]
    created: datetime
    items: list[dict[str, Any]]


@dataclass
class _Issue:
    id: str
    key: str
    summary: str
    description: str
    status: str
    priority: str | None
    created: datetime
    updated: datetime
    reporter: tuple[str, str, str]
    labels: list[str]
    organization: int | None
    segment: str | None
    tier: str | None
    engineering: str | None
    revenue: float | None
    affected: int | None
    sla_applies: bool = True
    resolution: bool = True
    status_changed: datetime | None = None
    resolved_at: datetime | None = None
    first_response_at: datetime | None = None
    paused_since: datetime | None = None
    paused_total: timedelta = timedelta()
    comments: list[_Comment] = field(default_factory=list)
    histories: list[_History] = field(default_factory=list)


class JqlError(ValueError):
    pass


@dataclass(frozen=True)
class _Query:
    clauses: tuple[tuple[str, str, Any], ...]
    order: tuple[tuple[str, bool], ...]


class JsmSandbox(SandboxApp):
    platform = "jsm"

    def __init__(self, clock: SimClock, *, seed: int = 7) -> None:
        super().__init__(clock)
        self._rng = random.Random(seed)
        self._idle: set[str] = set()
        """Issues nobody touches after creation (simulate() leaves them alone)."""
        self._issues: dict[str, _Issue] = {}
        self._by_key: dict[str, str] = {}
        self._next_issue = 10001
        self._next_number = 1
        self._next_comment = 20001
        self.page_cap = 100
        """The most issues one search page holds, whatever maxResults asks (Jira caps by field cost)."""
        self.changelog_cap = 100
        """The most histories `expand=changelog` embeds in an issue (the oldest first; `total` tells the rest)."""
        self.comment_cap = 5000
        """The most comments the `comment` field holds (`total` tells the rest)."""
        self._next_history = 30001
        self.date_skew = timedelta(0)
        """How far the `Date` header (the web node's clock) runs ahead of the issues' `updated` (the database's
        clock, and the time a search's lagging index has caught up to): on a real site the two differ."""
        self.route("POST", r"/rest/api/3/search/jql", self._search_post)
        self.route("GET", r"/rest/api/3/search/jql", self._search_get)
        self.route("GET", r"/rest/api/3/issue/(?P<ref>[^/]+)", self._get_issue)
        self.route("PUT", r"/rest/api/3/issue/(?P<ref>[^/]+)", self._edit_issue)
        self.route("POST", r"/rest/servicedeskapi/request/(?P<ref>[^/]+)/comment", self._add_comment)
        self.route("GET", r"/rest/servicedeskapi/request/(?P<ref>[^/]+)/comment", self._list_comments)
        self.route("POST", r"/rest/api/3/changelog/bulkfetch", self._bulk_changelogs)

    # -- serving ----------------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        if not request.headers.get("authorization"):
            with self._lock:
                self.requests.append((request.method, request.path))
            return Response(
                401,
                {
                    "errorMessages": ["You are not authenticated. Authentication required to perform this operation."],
                    "errors": {},
                },
                headers={"WWW-Authenticate": 'Basic realm="protected-area"'},
            )
        response = super().dispatch(request)
        if self.date_skew:
            response.headers.setdefault("Date", format_datetime(self.clock.now() + self.date_skew, usegmt=True))
        return response

    def not_found(self, request: Request) -> Response:
        return jira_error(404, [f"null for uri: {request.path}"])

    def _base(self, request: Request) -> str:
        host = request.headers.get("host", "sandbox.atlassian.net")
        scheme = "http" if host.startswith(("127.0.0.1", "localhost")) else "https"
        return f"{scheme}://{host}"

    # -- search -----------------------------------------------------------------------------------------

    def _search_post(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return jira_error(400, ["Unexpected character in the request body: not valid JSON."])
        if not isinstance(body, dict):
            return jira_error(400, ["The request body must be a JSON object."])
        fields = body.get("fields")
        if fields is not None and not isinstance(fields, list):
            return jira_error(400, ["'fields' must be a list of field ids."])
        expand = body.get("expand")
        if expand is not None and not isinstance(expand, str):
            return jira_error(400, ["'expand' must be a comma-separated string."])
        changelog = "changelog" in (expand or "").split(",")
        jql, token = body.get("jql"), body.get("nextPageToken")
        return self._search(request, jql, body.get("maxResults"), fields, token, changelog=changelog)

    def _search_get(self, request: Request) -> Response:
        fields_param = request.param("fields")
        fields = [name.strip() for name in fields_param.split(",")] if fields_param else None
        max_results = request.param("maxResults")
        try:
            max_value = int(max_results) if max_results is not None else None
        except ValueError:
            return jira_error(400, ["maxResults: must be a number."])
        return self._search(request, request.param("jql"), max_value, fields, request.param("nextPageToken"))

    def _search(
        self,
        request: Request,
        jql: Any,
        max_results: Any,
        fields: list[str] | None,
        token: Any,
        *,
        changelog: bool = False,
    ) -> Response:
        if not isinstance(jql, str) or not jql.strip():
            return jira_error(400, ["Unbounded JQL queries are not allowed here. Please add a search restriction."])
        if max_results is None:
            max_results = 50
        if not isinstance(max_results, int) or max_results < 0:
            return jira_error(400, ["maxResults: must be a non-negative number."])
        try:
            query = self._parse(jql)
        except JqlError as error:
            return jira_error(400, [str(error)])
        digest = hashlib.sha1(jql.encode()).hexdigest()[:12]
        offset = 0
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(str(token).encode()))
                if decoded["q"] != digest:
                    raise ValueError("token of another query")
                offset = int(decoded["o"])
            except (ValueError, KeyError, TypeError):
                return jira_error(400, ["The provided next page token is invalid or expired."])
        with self._lock:
            matches = [issue for issue in self._issues.values() if self._matches(issue, query)]
            for name, descending in reversed(query.order):
                matches.sort(key=lambda issue, name=name: self._sort_key(issue, name), reverse=descending)
            size = min(max_results, self.page_cap)
            page = matches[offset : offset + size]
            base = self._base(request)
            issues = [self._render(issue, base, fields, search=True, changelog=changelog) for issue in page]
        end = offset + len(page)
        body: dict[str, Any] = {"issues": issues}
        if end < len(matches) and size > 0:
            next_token = base64.urlsafe_b64encode(json.dumps({"q": digest, "o": end}).encode()).decode()
            body["nextPageToken"] = next_token
            body["isLast"] = False
        else:
            body["isLast"] = True
        return Response(200, body)

    def _parse(self, jql: str) -> _Query:
        order: list[tuple[str, bool]] = []
        match = re.search(r"(?i)\border\s+by\s+(.+)$", jql)
        where = jql[: match.start()] if match else jql
        if match:
            for part in match.group(1).split(","):
                words = part.split()
                if not words or words[0].lower() not in ("updated", "created", "key", "priority"):
                    raise JqlError(f"Error in the JQL Query: cannot order by '{part.strip()}'.")
                descending = len(words) > 1 and words[1].upper() == "DESC"
                order.append((words[0].lower(), descending))
        else:
            order.append(("key", True))
        where = where.replace("(", " ").replace(")", " ").strip()
        if not where:
            raise JqlError("Unbounded JQL queries are not allowed here. Please add a search restriction.")
        clauses = []
        for clause in re.split(r"(?i)\s+AND\s+", where):
            found = re.fullmatch(r'\s*(\w+)\s*(!=|>=|<=|=|>|<)\s*("[^"]*"|\'[^\']*\'|[^\s"\']+)\s*', clause)
            if not found:
                raise JqlError(f"Error in the JQL Query: could not parse '{clause.strip()}'.")
            name, operator, raw = found.group(1).lower(), found.group(2), found.group(3).strip("\"'")
            if name in ("updated", "created"):
                clauses.append((name, operator, self._jql_date(raw)))
            elif name in ("project", "key", "status", "labels", "statuscategory"):
                if operator not in ("=", "!="):
                    raise JqlError(f"The operator '{operator}' is not supported by the '{name}' field.")
                clauses.append((name, operator, raw))
            else:
                raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")
        return _Query(tuple(clauses), tuple(order))

    @staticmethod
    def _jql_date(raw: str) -> datetime:
        if re.fullmatch(r"-?\d+", raw):
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        for pattern in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
            try:
                # A bare date-time is read in the API user's time zone.
                return datetime.strptime(raw, pattern).replace(tzinfo=USER_TZ).astimezone(UTC)
            except ValueError:
                continue
        raise JqlError(f"Date value '{raw}' for field 'updated' is invalid.")

    @staticmethod
    def _matches(issue: _Issue, query: _Query) -> bool:
        for name, operator, value in query.clauses:
            if name in ("updated", "created"):
                moment: datetime = getattr(issue, name)
                # JQL compares at millisecond precision, as Jira stores the timestamps.
                left = int(moment.timestamp() * 1000)
                right = int(value.timestamp() * 1000)
                ok = {
                    "=": left == right,
                    "!=": left != right,
                    ">=": left >= right,
                    "<=": left <= right,
                    ">": left > right,
                    "<": left < right,
                }[operator]
            else:
                actual = {
                    "project": [PROJECT_KEY.lower()],
                    "key": [issue.key.lower()],
                    "status": [issue.status.lower()],
                    "labels": [label.lower() for label in issue.labels],
                    # A status category matches by name ("Done") or key ("done"), as in Jira.
                    "statuscategory": [
                        CATEGORIES[STATUSES[issue.status][1]]["name"].lower(),
                        STATUSES[issue.status][1],
                    ],
                }[name]
                ok = (value.lower() in actual) == (operator == "=")
            if not ok:
                return False
        return True

    @staticmethod
    def _sort_key(issue: _Issue, name: str) -> Any:
        if name == "key":
            return int(issue.key.split("-")[1])
        if name == "priority":
            return PRIORITIES[issue.priority][0] if issue.priority else "9"
        return getattr(issue, name)

    # -- issues -----------------------------------------------------------------------------------------

    def _find(self, ref: str) -> _Issue | None:
        return self._issues.get(ref) or self._issues.get(self._by_key.get(ref.upper(), ""))

    def _get_issue(self, request: Request, ref: str) -> Response:
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                return jira_error(404, [JIRA_ERROR_NOT_FOUND])
            fields_param = request.param("fields")
            fields = [name.strip() for name in fields_param.split(",")] if fields_param else ["*all"]
            changelog = "changelog" in (request.param("expand") or "").split(",")
            return Response(200, self._render(issue, self._base(request), fields, changelog=changelog))

    def _edit_issue(self, request: Request, ref: str) -> Response:
        try:
            body = request.json()
        except ValueError:
            return jira_error(400, ["Unexpected character in the request body: not valid JSON."])
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                return jira_error(404, [JIRA_ERROR_NOT_FOUND])
            if not isinstance(body, dict):
                return jira_error(400, ["Can not deserialize the request body."])
            fields = body.get("fields") or {}
            update = body.get("update") or {}
            errors: dict[str, str] = {}
            if issue.status == NOT_EDITABLE_STATUS:
                # A workflow step with jira.issue.editable = false: every field is off the edit screen.
                for name in [*fields, *update]:
                    errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
                return jira_error(400, [], errors)
            changes: list[Any] = []
            for name, value in fields.items():
                self._edit_field(name, value, errors, changes)
            for name, operations in update.items():
                self._edit_operations(issue, name, operations, errors, changes)
            if errors:
                return jira_error(400, [], errors)
            before = (issue.tier, list(issue.labels), issue.priority)
            for change in changes:
                change(issue)
            if changes:
                issue.updated = self.clock.now()
                self._log_edit(issue, AGENTS[0], before)
            return Response(204, None)

    def _log_edit(
        self, issue: _Issue, author: tuple[str, str, str], before: tuple[str | None, list[str], str | None]
    ) -> None:
        """The changelog entry of an edit: the tier option, the labels and the priority, as Jira records them
        (a system field's item: `fieldId` "priority", `from`/`to` the priority ids, the strings their names)."""
        tier, labels, priority = before
        items = []
        if priority != issue.priority:
            items.append(
                {
                    "field": "priority",
                    "fieldtype": "jira",
                    "fieldId": "priority",
                    "from": PRIORITIES[priority][0] if priority else None,
                    "fromString": priority,
                    "to": PRIORITIES[issue.priority][0] if issue.priority else None,
                    "toString": issue.priority,
                }
            )
        if tier != issue.tier:
            items.append(
                {
                    "field": "Support tier",
                    "fieldtype": "custom",
                    "fieldId": TIER_FIELD,
                    "from": tier,
                    "fromString": TIER_OPTIONS.get(tier or ""),
                    "to": issue.tier,
                    "toString": TIER_OPTIONS.get(issue.tier or ""),
                }
            )
        if labels != issue.labels:
            items.append(
                {
                    "field": "labels",
                    "fieldtype": "jira",
                    "fieldId": "labels",
                    "from": None,
                    "fromString": " ".join(labels),
                    "to": None,
                    "toString": " ".join(issue.labels),
                }
            )
        self._log(issue, author, issue.updated, items)

    def _log(self, issue: _Issue, author: tuple[str, str, str], moment: datetime, items: list[dict[str, Any]]) -> None:
        if items:
            issue.histories.append(_History(str(self._next_history), author, moment, items))
            self._next_history += 1

    def _render_history(self, history: _History, base: str) -> dict[str, Any]:
        author = self._user(history.author, base)
        return {"id": history.id, "author": author, "created": jira_time(history.created), "items": history.items}

    def _bulk_changelogs(self, request: Request) -> Response:
        """`POST /rest/api/3/changelog/bulkfetch`: changelogs of up to 1000 issues, filtered by up to 10 fields,
        oldest first across the issues, paged by `nextPageToken`."""
        try:
            body = request.json()
        except ValueError:
            return jira_error(400, ["Unexpected character in the request body: not valid JSON."])
        refs = body.get("issueIdsOrKeys") if isinstance(body, dict) else None
        if not isinstance(refs, list) or not refs or len(refs) > 1000:
            return jira_error(400, ["issueIdsOrKeys must list between 1 and 1000 issues."])
        field_ids = body.get("fieldIds") or []
        if not isinstance(field_ids, list) or len(field_ids) > 10:
            return jira_error(400, ["fieldIds must list at most 10 fields."])
        limit = body.get("maxResults", 1000)
        token = body.get("nextPageToken")
        try:
            offset = int(base64.urlsafe_b64decode(str(token).encode())) if token else 0
            limit = max(1, min(int(limit), 10000))
        except ValueError:
            return jira_error(400, ["The provided next page token is invalid or expired."])
        base = self._base(request)
        with self._lock:
            found = []
            for ref in refs:
                issue = self._find(str(ref))
                if issue is None:
                    continue
                for history in issue.histories:
                    items = [item for item in history.items if not field_ids or item["fieldId"] in field_ids]
                    if items:
                        found.append((history.created, int(issue.id), issue.id, history, items))
            found.sort(key=lambda entry: (entry[0], entry[1], int(entry[3].id)))
            page = found[offset : offset + limit]
            logs: dict[str, list[dict[str, Any]]] = {}
            for _, _, issue_id, history, items in page:
                logs.setdefault(issue_id, []).append({**self._render_history(history, base), "items": items})
        answer: dict[str, Any] = {
            "issueChangeLogs": [{"issueId": issue_id, "changeHistories": entries} for issue_id, entries in logs.items()]
        }
        if offset + limit < len(found):
            answer["nextPageToken"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
        return Response(200, answer)

    def _edit_field(self, name: str, value: Any, errors: dict[str, str], changes: list[Any]) -> None:
        if name == TIER_FIELD:
            if value is None:
                changes.append(lambda issue: setattr(issue, "tier", None))
                return
            option = None
            if isinstance(value, dict) and value.get("id") in TIER_OPTIONS:
                option = value["id"]
            elif isinstance(value, dict):
                option = next((oid for oid, text in TIER_OPTIONS.items() if text == value.get("value")), None)
            if option is None:
                errors[name] = f"Option value '{value}' is not valid"
                return
            changes.append(lambda issue: setattr(issue, "tier", option))
        elif name == "labels":
            if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
                errors[name] = "Field labels must be an array of strings."
                return
            bad = [label for label in value if " " in label]
            if bad:
                errors[name] = f"The label '{bad[0]}' contains spaces which is invalid."
                return
            changes.append(lambda issue: setattr(issue, "labels", list(dict.fromkeys(value))))
        elif name == "summary" and isinstance(value, str):
            changes.append(lambda issue: setattr(issue, "summary", value))
        else:
            errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."

    def _edit_operations(
        self, issue: _Issue, name: str, operations: Any, errors: dict[str, str], changes: list[Any]
    ) -> None:
        if name != "labels":
            errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
            return
        if not isinstance(operations, list):
            errors[name] = "Operations on labels must be an array."
            return
        for operation in operations:
            if not isinstance(operation, dict) or len(operation) != 1:
                errors[name] = "Each operation must have exactly one verb."
                return
            verb, value = next(iter(operation.items()))
            if verb in ("add", "remove") and (not isinstance(value, str) or " " in value or not value):
                errors[name] = f"The label '{value}' contains spaces which is invalid."
                return
            if verb == "add":
                changes.append(lambda issue, v=value: issue.labels.append(v) if v not in issue.labels else None)
            elif verb == "remove":
                changes.append(lambda issue, v=value: issue.labels.remove(v) if v in issue.labels else None)
            elif verb == "set" and isinstance(value, list):
                changes.append(lambda issue, v=value: setattr(issue, "labels", list(dict.fromkeys(v))))
            else:
                errors[name] = f"Operation '{verb}' is not supported for labels."
                return

    # -- comments ---------------------------------------------------------------------------------------

    def _add_comment(self, request: Request, ref: str) -> Response:
        try:
            body = request.json()
        except ValueError:
            return servicedesk_error(400, "The request body is not valid JSON.", "sd.rest.body.invalid")
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                return servicedesk_error(404, "The request could not be found.", "sd.request.error.not.found")
            if not isinstance(body, dict) or not isinstance(body.get("body"), str) or not body["body"].strip():
                return servicedesk_error(400, "Comment body is required.", "sd.comment.body.required")
            public = body.get("public", True)
            if not isinstance(public, bool):
                return servicedesk_error(400, "'public' must be true or false.", "sd.comment.public.invalid")
            comment = self._comment(issue, body["body"], public, AGENTS[0])
            return Response(201, self._render_comment(issue, comment, self._base(request)))

    def _list_comments(self, request: Request, ref: str) -> Response:
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                return servicedesk_error(404, "The request could not be found.", "sd.request.error.not.found")
            want_public = request.param("public", "true") != "false"
            want_internal = request.param("internal", "true") != "false"
            try:
                start = int(request.param("start", "0") or 0)
                limit = int(request.param("limit", "50") or 50)
            except ValueError:
                return servicedesk_error(400, "start and limit must be numbers.", "sd.paging.invalid")
            limit = max(1, min(limit, 100))
            chosen = [c for c in issue.comments if (c.public and want_public) or (not c.public and want_internal)]
            page = chosen[start : start + limit]
            base = self._base(request)
            path = f"{base}/rest/servicedeskapi/request/{issue.id}/comment"
            links: dict[str, str] = {"base": f"{base}/rest/servicedeskapi", "context": "", "self": path}
            if start + limit < len(chosen):
                links["next"] = f"{path}?start={start + limit}&limit={limit}"
            if start > 0:
                links["prev"] = f"{path}?start={max(0, start - limit)}&limit={limit}"
            return Response(
                200,
                {
                    "_expands": [],
                    "size": len(page),
                    "start": start,
                    "limit": limit,
                    "isLastPage": start + limit >= len(chosen),
                    "_links": links,
                    "values": [self._render_comment(issue, comment, base) for comment in page],
                },
            )

    def _comment(
        self,
        issue: _Issue,
        body: str,
        public: bool,
        author: tuple[str, str, str],
        moment: datetime | None = None,
    ) -> _Comment:
        now = moment or self.clock.now()
        comment = _Comment(str(self._next_comment), body, public, author, now)
        self._next_comment += 1
        issue.comments.append(comment)
        if public and author in AGENTS and issue.first_response_at is None:
            issue.first_response_at = now
        issue.updated = now
        return comment

    @staticmethod
    def _user(user: tuple[str, str, str], base: str) -> dict[str, Any]:
        account, name, email = user
        return {
            "accountId": account,
            "emailAddress": email,
            "displayName": name,
            "active": True,
            "timeZone": "America/New_York",
            "accountType": "atlassian" if user in AGENTS else "customer",
            "_links": {
                "jiraRest": f"{base}/rest/api/2/user?accountId={account}",
                "avatarUrls": {"48x48": f"https://avatar-management.example/{account}/48"},
                "self": f"{base}/rest/api/2/user?accountId={account}",
            },
        }

    def _render_comment(self, issue: _Issue, comment: _Comment, base: str) -> dict[str, Any]:
        return {
            "_expands": ["attachment", "renderedBody"],
            "id": comment.id,
            "body": comment.body,
            "public": comment.public,
            "author": self._user(comment.author, base),
            "created": date_object(comment.created),
            "_links": {"self": f"{base}/rest/servicedeskapi/request/{issue.id}/comment/{comment.id}"},
        }

    # -- rendering an issue -----------------------------------------------------------------------------

    def _render(
        self, issue: _Issue, base: str, fields: list[str] | None, search: bool = False, *, changelog: bool = False
    ) -> dict[str, Any]:
        if search and fields is None:
            return {"id": issue.id}  # /search/jql returns ids only unless fields are asked for
        every = self._fields(issue, base)
        if fields is None:
            chosen: dict[str, Any] = every
        elif "*all" in fields or "*navigable" in fields:
            chosen = every
        else:
            chosen = {name: every[name] for name in fields if name in every}
        rendered: dict[str, Any] = {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": issue.id,
            "self": f"{base}/rest/api/3/issue/{issue.id}",
            "key": issue.key,
        }
        rendered["fields"] = chosen
        if changelog:
            shown = issue.histories[: self.changelog_cap]
            rendered["changelog"] = {
                "startAt": 0,
                "maxResults": len(shown),
                "total": len(issue.histories),
                "histories": [self._render_history(history, base) for history in shown],
            }
        return rendered

    def _fields(self, issue: _Issue, base: str) -> dict[str, Any]:
        status_id, category = STATUSES[issue.status]
        resolved = category == "done"
        reporter = {
            "self": f"{base}/rest/api/3/user?accountId={issue.reporter[0]}",
            "accountId": issue.reporter[0],
            "emailAddress": issue.reporter[2],
            "avatarUrls": {"48x48": f"https://avatar-management.example/{issue.reporter[0]}/48"},
            "displayName": issue.reporter[1],
            "active": True,
            "timeZone": "America/New_York",
            "accountType": "customer",
        }
        organization = ORGANIZATIONS[issue.organization] if issue.organization is not None else None
        fields: dict[str, Any] = {
            "summary": issue.summary,
            "issuetype": {
                "self": f"{base}/rest/api/3/issuetype/10100",
                "id": "10100",
                "name": "[System] Service request",
                "subtask": False,
                "hierarchyLevel": 0,
            },
            "project": {
                "self": f"{base}/rest/api/3/project/{PROJECT_ID}",
                "id": PROJECT_ID,
                "key": PROJECT_KEY,
                "name": "Customer Support",
                "projectTypeKey": "service_desk",
                "simplified": False,
            },
            "status": {
                "self": f"{base}/rest/api/3/status/{status_id}",
                "description": "",
                "iconUrl": f"{base}/images/icons/statuses/generic.png",
                "name": issue.status,
                "id": status_id,
                "statusCategory": {"self": f"{base}/rest/api/3/statuscategory/{CATEGORIES[category]['id']}"}
                | CATEGORIES[category],
            },
            "priority": None,
            "created": jira_time(issue.created),
            "updated": jira_time(issue.updated),
            "statuscategorychangedate": jira_time(issue.status_changed or issue.created),
            "resolution": None,
            "resolutiondate": None,
            "description": {
                "version": 1,
                "type": "doc",
                "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": line}]}
                    for line in issue.description.split("\n")
                ],
            },
            "reporter": reporter,
            "labels": list(issue.labels),
            TIER_FIELD: None,
            FIRST_RESPONSE_FIELD: None,
            RESOLUTION_FIELD: None,
            SEGMENT_FIELD: None,
            ORGANIZATIONS_FIELD: [],
            ENGINEERING_FIELD: None,
            REVENUE_FIELD: issue.revenue,
            AFFECTED_FIELD: issue.affected,
            "comment": self._comment_field(issue, base),
            # The stand-in keeps no files; Jira answers an issue without any with an empty list, not by leaving
            # the field out (issue_get_attachments.json shows a full one, its README the empty one).
            "attachment": [],
        }
        if issue.priority:
            priority_id = PRIORITIES[issue.priority][0]
            fields["priority"] = {
                "self": f"{base}/rest/api/3/priority/{priority_id}",
                "iconUrl": f"{base}/images/icons/priorities/{issue.priority.lower()}.svg",
                "name": issue.priority,
                "id": priority_id,
            }
        if resolved and issue.resolution:
            fields["resolution"] = {
                "self": f"{base}/rest/api/3/resolution/10000",
                "id": "10000",
                "description": "Work has been completed on this issue.",
                "name": "Done",
            }
            fields["resolutiondate"] = jira_time(issue.resolved_at or issue.updated)
        for option_field, options, chosen in (
            (TIER_FIELD, TIER_OPTIONS, issue.tier),
            (SEGMENT_FIELD, SEGMENT_OPTIONS, issue.segment),
            (ENGINEERING_FIELD, ENGINEERING_OPTIONS, issue.engineering),
        ):
            if chosen is not None:
                fields[option_field] = {
                    "self": f"{base}/rest/api/3/customFieldOption/{chosen}",
                    "value": options[chosen],
                    "id": chosen,
                }
        if organization is not None:
            fields[ORGANIZATIONS_FIELD] = [
                {
                    "id": organization[0],
                    "name": organization[1],
                    "_links": {"self": f"{base}/rest/servicedeskapi/organization/{organization[0]}"},
                }
            ]
        if issue.sla_applies:
            first_goal, resolution_goal = PRIORITIES[issue.priority][1:] if issue.priority else NO_PRIORITY_GOALS
            fields[FIRST_RESPONSE_FIELD] = self._sla(issue, base, "2", "Time to first response", first_goal)
            fields[RESOLUTION_FIELD] = self._sla(issue, base, "1", "Time to resolution", resolution_goal)
        return fields

    def _comment_field(self, issue: _Issue, base: str) -> dict[str, Any]:
        """The issue's `comment` field (platform API v3): ADF bodies, and `jsdPublic` on a service project."""
        shown = issue.comments[: self.comment_cap]
        comments = []
        for comment in shown:
            author = self._user(comment.author, base)
            comments.append(
                {
                    "self": f"{base}/rest/api/3/issue/{issue.id}/comment/{comment.id}",
                    "id": comment.id,
                    "author": author,
                    "body": {
                        "version": 1,
                        "type": "doc",
                        "content": [{"type": "paragraph", "content": [{"type": "text", "text": comment.body}]}],
                    },
                    "updateAuthor": author,
                    "created": jira_time(comment.created),
                    "updated": jira_time(comment.created),
                    "jsdPublic": comment.public,
                }
            )
        return {
            "comments": comments,
            "self": f"{base}/rest/api/3/issue/{issue.id}/comment",
            "maxResults": len(shown),
            "total": len(issue.comments),
            "startAt": 0,
        }

    def _sla(self, issue: _Issue, base: str, sla_id: str, name: str, goal: timedelta) -> dict[str, Any]:
        """A rough JSM SLA: one cycle from creation, 24x7; resolution pauses while waiting for the customer."""
        now = self.clock.now()
        first_response = sla_id == "2"
        stop = issue.first_response_at if first_response else None
        if stop is None and STATUSES[issue.status][1] == "done":
            stop = issue.resolved_at or issue.updated
        paused_for = timedelta() if first_response else issue.paused_total
        paused = not first_response and stop is None and issue.paused_since is not None
        if paused and issue.paused_since is not None:
            paused_for += now - issue.paused_since
        elapsed = (stop or now) - issue.created - paused_for
        remaining = goal - elapsed
        breach_at = issue.created + paused_for + goal
        cycle: dict[str, Any] = {
            "startTime": date_object(issue.created),
            "breached": remaining < timedelta(),
            "goalDuration": duration_object(goal),
            "elapsedTime": duration_object(elapsed),
            "remainingTime": duration_object(remaining),
        }
        body: dict[str, Any] = {
            "id": sla_id,
            "name": name,
            "_links": {"self": f"{base}/rest/servicedeskapi/request/{issue.id}/sla/{sla_id}"},
            "completedCycles": [],
            "slaDisplayFormat": "NEW_SLA_FORMAT",
        }
        if stop is not None:
            cycle["stopTime"] = date_object(stop)
            cycle["breachTime"] = date_object(breach_at)
            body["completedCycles"] = [cycle]
        else:
            if not paused:
                cycle["breachTime"] = date_object(breach_at)
            cycle["paused"] = paused
            cycle["withinCalendarHours"] = True
            body["ongoingCycle"] = cycle
        return body

    # -- data for tests ---------------------------------------------------------------------------------

    def seed_tickets(self, count: int) -> list[str]:
        """Create `count` issues spread over the last five days; return their keys."""
        now = self.clock.now()
        keys = []
        with self._lock:
            ages = sorted((self._rng.uniform(0, 5 * 24 * 3600) for _ in range(count)), reverse=True)
            for age in ages:
                created = now - timedelta(seconds=age)
                issue = self._new_issue(created)
                self._age(issue, created, now)
                keys.append(issue.key)
        return keys

    def seed_idle(self, count: int, *, within: timedelta = timedelta(days=5)) -> list[str]:
        """`count` issues created over the last `within` that nobody touches afterwards (see add_idle_ticket)."""
        now = self.clock.now()
        ages = sorted((self._rng.uniform(60, within.total_seconds()) for _ in range(count)), reverse=True)
        return [self.add_idle_ticket(now - timedelta(seconds=age)) for age in ages]

    def add_idle_ticket(self, created: datetime, priority: str = "Medium", tier: str | None = "10300") -> str:
        """One plain issue (no escalation flags, no comment, waiting for support) created at `created` and
        never touched again: `simulate` leaves it alone. Returns its key."""
        with self._lock:
            issue = self._new_issue(created)
            issue.priority, issue.tier, issue.labels = priority, tier, []
            issue.engineering, issue.revenue, issue.affected = None, None, None
            self._idle.add(issue.id)
            return issue.key

    def escalation_view(self, ref: str) -> tuple[str | None, frozenset[str]]:
        """(tier option's level "L1".."L4", labels) as the site shows them now."""
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                raise KeyError(ref)
            text = TIER_OPTIONS.get(issue.tier or "")
            return (text.split(" ", 1)[0] if text else None), frozenset(issue.labels)

    def _new_issue(self, created: datetime) -> _Issue:
        rng = self._rng
        priority = rng.choices([*PRIORITIES, None], weights=[1, 3, 6, 3, 1, 2])[0]
        org = rng.randrange(len(ORGANIZATIONS)) if rng.random() < 0.85 else None
        labels = sorted(set(rng.sample(LABEL_POOL, k=rng.choice([0, 0, 1, 1, 2, 3]))))
        customer = f"qm:{rng.getrandbits(64):016x}"
        person = rng.choice(["alex", "sam", "jordan", "kim", "noor", "pat"])
        org_name = ORGANIZATIONS[org][1] if org is not None else "example"
        domain = re.sub(r"[^a-z]", "", org_name.lower()) + ".example"
        issue = _Issue(
            id=str(self._next_issue),
            key=f"{PROJECT_KEY}-{self._next_number}",
            summary=rng.choice(SUBJECTS),
            description=f"Reported by {person} at {org_name}.\nSteps to reproduce are attached.",
            status="Waiting for support",
            priority=priority,
            created=created,
            updated=created,
            reporter=(customer, person.title(), f"{person}@{domain}"),
            labels=labels,
            organization=org,
            segment=ORGANIZATIONS[org][2] if org is not None else None,
            tier=rng.choice([None, None, "10300", "10300", "10301", "10302"]),
            engineering=rng.choice([None, None, None, "10501", "10500"]),
            revenue=rng.choice([None, None, 0.0, 12000.0, 250000.0]),
            affected=rng.choice([None, 1, 3, 40]),
            sla_applies=rng.random() > 0.05,
            resolution=rng.random() > 0.1,
        )
        self._next_issue += 1
        self._next_number += 1
        self._issues[issue.id] = issue
        self._by_key[issue.key] = issue.id
        return issue

    def _age(self, issue: _Issue, start: datetime, end: datetime) -> None:
        """Give a seeded issue a plausible history between its creation and now."""
        rng = self._rng
        moment = start
        for _ in range(rng.randrange(0, 4)):
            moment += timedelta(minutes=rng.uniform(10, 600))
            if moment >= end:
                break
            self._activity(issue, moment)

    def _activity(self, issue: _Issue, moment: datetime) -> None:
        """One deterministic pseudo-random event on an open issue, as if it happened at `moment`."""
        rng = self._rng
        if STATUSES[issue.status][1] == "done":
            if issue.status == "Resolved" and rng.random() < 0.3:
                self._move(issue, "Closed", moment)
            return
        roll = rng.random()
        agent = rng.choice(AGENTS)
        if roll < 0.4:
            self._comment(issue, "Thanks, we are looking into it.", True, agent, moment)
            self._move(issue, rng.choice(["In Progress", "Waiting for customer"]), moment)
        elif roll < 0.6:
            self._comment(issue, "Any update on this?", True, issue.reporter, moment)
            if issue.status == PAUSING_STATUS:
                self._move(issue, "Waiting for support", moment)
        elif roll < 0.7:
            self._comment(issue, "Checked logs, no errors on our side.", False, agent, moment)
        elif roll < 0.8:
            self._move(issue, "Escalated", moment)
        else:
            self._move(issue, rng.choice(["Resolved", "Resolved", "Done"]), moment)

    def _move(self, issue: _Issue, status: str, moment: datetime, author: tuple[str, str, str] = AGENTS[0]) -> None:
        if status == issue.status:
            return
        item = {"field": "status", "fieldtype": "jira", "fieldId": "status", "from": STATUSES[issue.status][0]}
        item |= {"fromString": issue.status, "to": STATUSES[status][0], "toString": status}
        self._log(issue, author, moment, [item])
        if issue.paused_since is not None:
            issue.paused_total += moment - issue.paused_since
            issue.paused_since = None
        if status == PAUSING_STATUS:
            issue.paused_since = moment
        if STATUSES[status][1] != STATUSES[issue.status][1]:
            issue.status_changed = moment
        if STATUSES[status][1] == "done" and issue.resolved_at is None:
            issue.resolved_at = moment
        issue.status = status
        issue.updated = moment

    def simulate(self, delta: timedelta, step: timedelta = timedelta(minutes=5)) -> None:
        """Advance the clock by `delta` in `step`s, with replies, status moves, resolutions and new issues."""
        end = self.clock.now() + delta
        while self.clock.now() < end:
            moment = self.clock.advance(min(step, end - self.clock.now()))
            with self._lock:
                active = [
                    issue
                    for issue in self._issues.values()
                    if STATUSES[issue.status][1] != "done" and issue.id not in self._idle
                ]
                for issue in self._rng.sample(active, k=min(len(active), max(1, len(active) // 40))):
                    self._activity(issue, moment)
                if self._rng.random() < 0.3:
                    self._new_issue(moment)

    # -- inspection and acting as another agent -------------------------------------------------------

    def ticket(self, ref: str) -> dict[str, Any]:
        """The issue as `GET /rest/api/3/issue/{ref}` returns it (all fields)."""
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                raise KeyError(ref)
            return self._render(issue, "https://sandbox.atlassian.net", ["*all"])

    def comments(self, ref: str) -> list[dict[str, Any]]:
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                raise KeyError(ref)
            return [self._render_comment(issue, c, "https://sandbox.atlassian.net") for c in issue.comments]

    def issue_keys(self) -> list[str]:
        with self._lock:
            return [issue.key for issue in self._issues.values()]

    def update(self, ref: str, **changes: Any) -> None:
        """Change an issue as another agent would: status/priority by name, labels, tier by option value."""
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                raise KeyError(ref)
            now = self.clock.now()
            before = (issue.tier, list(issue.labels), issue.priority)
            for name, value in changes.items():
                if name == "status":
                    if value not in STATUSES:
                        raise ValueError(f"unknown status {value!r}")
                    self._move(issue, value, now, AGENTS[1])
                elif name == "priority":
                    if value is not None and value not in PRIORITIES:
                        raise ValueError(f"unknown priority {value!r}")
                    issue.priority = value
                elif name == "labels":
                    issue.labels = list(dict.fromkeys(value))
                elif name == "tier":
                    issue.tier = next((oid for oid, text in TIER_OPTIONS.items() if text == value), None)
                    if value is not None and issue.tier is None:
                        raise ValueError(f"unknown tier option {value!r}")
                elif name == "summary":
                    issue.summary = value
                else:
                    raise ValueError(f"the sandbox cannot change {name!r}")
            issue.updated = now
            self._log_edit(issue, AGENTS[1], before)

    def add_comment(self, ref: str, body: str, public: bool, *, by_customer: bool = False) -> dict[str, Any]:
        with self._lock:
            issue = self._find(ref)
            if issue is None:
                raise KeyError(ref)
            author = issue.reporter if by_customer else AGENTS[1]
            comment = self._comment(issue, body, public, author)
            return self._render_comment(issue, comment, "https://sandbox.atlassian.net")

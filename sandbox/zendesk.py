"""Zendesk Support sandbox: the tickets, comments, organizations and users the daemon reads and writes.

Written from Zendesk's API documentation, sharing no code with `connectors/zendesk.py`, so it cannot share
the client's misunderstandings. What it follows (developer.zendesk.com):
- Incremental Exports, "Incremental Ticket Export, Cursor Based" and "Using the Incremental Exports API":
  `GET /api/v2/incremental/tickets/cursor.json?start_time=<epoch>|cursor=<opaque>`, `per_page` up to 1000,
  `{tickets, after_url, after_cursor, before_url, before_cursor, end_of_stream}`; tickets ordered by
  `generated_timestamp`; deleted tickets included with `status: "deleted"` unless `exclude_deleted=true`;
  changes made in the minute before the request are left out (announced Oct 2024), and a `start_time` that
  recent is refused with 422 `InvalidValue` "Too recent start_time" (the 422 and body are what clients in the
  wild handle; the documented floor moved from five minutes to one).
- Tickets: show, update with `additional_tags`/`remove_tags` (adding tags without overwriting), `comment`
  `{body, public, author_id}`, `safe_update` + `updated_stamp` -> 409 `UpdateConflict`; a closed ticket
  refuses updates with 422 `RecordInvalid` "Status: closed prevents ticket update"; unknown id -> 404
  `{"error": "RecordNotFound", "description": "Not found"}`; a missing or bad login -> 401
  `{"error": "Couldn't authenticate you"}`. The update answers `{ticket, audit}`.
- Update Many Tickets, batch form (`PUT /api/v2/tickets/update_many.json`, `{"tickets": [{"id", ...}]}`, up
  to 100, each with its own fields) answers a queued `job_status`; the job runs on a later `GET
  /api/v2/job_statuses/{id}.json` (`job_polls_to_finish`), or before any other request (a background job runs
  whether or not anyone polls it), then `completed` with one result per ticket,
  `{"id", "action": "update", "success": true, "status": "Updated"}` or `{"index", "id", "error", "details"}`.
  `safe_update` is documented for Update Ticket only, so a batch update does not apply it.
- Job Statuses: show one (above), Show Many Job Statuses (`GET /api/v2/job_statuses/show_many.json?ids=a,b`,
  "a comma-separated list of job status ids", `{job_statuses: [...]}`, each a poll as a show is) and List Job Statuses (`GET /api/v2/job_statuses.json`: the account's jobs of
  the last day, "sorted first by completion date and then by creation date in descending order", as
  `{job_statuses, next_page, previous_page, count}`). A job still queued or working has no completion date;
  where such jobs sort is not documented: here they come first, newest first (inferred). A list answer counts
  as one status poll of every unfinished job, like a show.
- Ticket Comments: cursor pagination (`page[size]` <= 100, `page[after]`, `page[before]`, `meta.has_more`,
  `meta.after_cursor`, `links.next`) and the older offset pagination (`next_page`, `count`); `sort_order`.
- Incremental Ticket Event Export: `GET /api/v2/incremental/ticket_events.json?start_time=<epoch>` with
  `include=comment_events`: `{ticket_events, next_page, count, end_of_stream, end_time}`, each event `{id,
  ticket_id, timestamp, created_at, updater_id, via, system, metadata, event_type: "Audit", child_events}`, a
  change child event naming its field as the key (`"status": "pending", "previous_value": "open"`), comments as
  `event_type: "Comment"` with `author_id`, `body`, `public` (only with the sideload). Time based: up to 1000
  events a page, `end_time` is the next `start_time`; the last minute is left out as in the ticket export.
- Ticket Audits: `GET /api/v2/tickets/{id}/audits.json`, oldest first, offset pagination (`next_page`, `count`);
  events `{id, type, field_name, value, previous_value}` (values as text) and comments.
- Ticket Metrics (`metric_sets` sideload): minutes as `{calendar, business}`, null until reached.
- Request format: `X-Rate-Limit` / `X-Rate-Limit-Remaining` on every response; 429 with `Retry-After`.
- Ceilings (`enforce_ceilings`, off by default), from "Rate limits" and "Incremental Exports": the account's
  `rate_limit` a minute; each incremental export endpoint (tickets, ticket events) 10 requests a minute
  ("You can make up to 10 requests per minute to these endpoints": read as a budget per endpoint); Update
  Ticket 100 requests a minute per account; every window a clock minute (the headers count "the current
  minute"), over it 429 with `Retry-After` the seconds to the window's end. With ceilings on, responses also
  carry the Ticketing API headers `ratelimit-limit` / `ratelimit-remaining` / `ratelimit-reset` (seconds).
  Not modelled: the job limit (30 queued or running jobs): a job here runs before the next request, so a
  client never has two queued; "30 updates per 10 minutes per user per ticket", which one sync never nears.
Inferred, not documented (kept plausible and marked here): the wording of 422 parameter errors, the 400 for a
too-large `page[size]`, the cursor encodings (opaque by contract), and the 429 body (text/html, as observed).

The account it models: groups 360000000101..104 are the tiers L1 Support, L2 Specialists, L3 Engineering and
L4 Vendor; escalation facts are ticket tags (`SIGNAL_TAGS`); the customer segment is the organization's
`organization_fields.segment`; revenue at risk and affected customers are custom fields. Its activity is
pseudo-random from `seed`, so a seed and a sequence of calls always produce the same account; once seeded, each
ticket's activity draws from a stream of its own (seed, ticket, moment), so what a client writes to one ticket
(or when) never changes what happens to another.
This module is the behaviour; the text it draws tickets and messages from is in sandbox/zendesk_data.py.
"""

from __future__ import annotations

import base64
import binascii
import copy
import html
import math
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from sandbox.base import Fault, Request, Response, SandboxApp, SimClock
from sandbox.zendesk_data import (
    AGENT_FOLLOW_UPS,
    AGENT_REPLIES,
    AGENTS,
    CUSTOMER_ANSWERS,
    CUSTOMER_NUDGES,
    CUSTOMER_REOPENS,
    ENGINEERING_NOTES,
    FIRST_NAMES,
    INTERNAL_NOTES,
    LAST_NAMES,
    ORGS,
    PROBLEMS,
    SIGNAL_MESSAGES,
    SOLVE_REPLIES,
    VENDOR_NOTES,
)

SUBDOMAIN = "acme"

GROUP_L1 = 360000000101
GROUP_L2 = 360000000102
GROUP_L3 = 360000000103
GROUP_L4 = 360000000104
GROUPS: dict[int, str] = {
    GROUP_L1: "L1 Support",
    GROUP_L2: "L2 Specialists",
    GROUP_L3: "L3 Engineering",
    GROUP_L4: "L4 Vendor",
}

TAG_CHURN = "churn_risk"
TAG_ENGINEERING = "engineering_required"
TAG_VENDOR = "vendor_dependency"
TAG_CUSTOMER_ESCALATION = "customer_requested_escalation"
TAG_SECURITY = "security_concern"
TAG_PUBLIC_COMPLAINT = "public_complaint"
SIGNAL_TAGS = (TAG_CHURN, TAG_ENGINEERING, TAG_VENDOR, TAG_CUSTOMER_ESCALATION, TAG_SECURITY, TAG_PUBLIC_COMPLAINT)

FIELD_REVENUE_AT_RISK = 360020000001
"""Decimal field; Zendesk returns custom field values as strings ("48000.00"), null when empty."""
FIELD_AFFECTED_CUSTOMERS = 360020000002
"""Integer field, value a string ("12")."""
FIELD_PRODUCT_AREA = 360020000003
"""Drop-down; its value is also a ticket tag, as Zendesk does for drop-down fields."""
FIELD_SEVERITY = 360020000004
"""Drop-down: sev_1..sev_4. Two seeded tickets carry UNMAPPED_SEVERITY, a retired option, for quarantine demos."""
CUSTOM_FIELD_IDS = (FIELD_REVENUE_AT_RISK, FIELD_AFFECTED_CUSTOMERS, FIELD_PRODUCT_AREA, FIELD_SEVERITY)
DROPDOWN_FIELDS = frozenset({FIELD_PRODUCT_AREA, FIELD_SEVERITY})
SEVERITY_VALUES = ("sev_1", "sev_2", "sev_3", "sev_4")
UNMAPPED_SEVERITY = "sev_legacy_0"

API_USER_ID = 361000000001
"""The agent the API credentials belong to: author of comments posted through the API without author_id."""
_SYSTEM_USER_ID = -1
"""Zendesk attributes automation and trigger updates to user -1."""

STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
PRIORITIES = ("urgent", "high", "normal", "low")
TYPES = ("question", "incident", "problem", "task")

RATE_LIMIT = 700
EXPORT_LIMIT = 10
"""Requests a minute to each incremental export endpoint (Incremental Exports, "Rate limits")."""
UPDATE_TICKET_LIMIT = 100
"""Update Ticket requests a minute per account (Rate limits, "Endpoint rate limits")."""
_CEILINGS = (
    ("GET", r"/api/v2/incremental/tickets/cursor\.json", "incremental-tickets", EXPORT_LIMIT),
    ("GET", r"/api/v2/incremental/ticket_events(?:\.json)?", "incremental-ticket-events", EXPORT_LIMIT),
    ("PUT", r"/api/v2/tickets/\d+(?:\.json)?", "update-ticket", UPDATE_TICKET_LIMIT),
)
EXPORT_MAX_PER_PAGE = 1000
COMMENTS_MAX_PAGE_SIZE = 100
EXPORT_LAG = 60
"""Seconds: the incremental export leaves out the minute before the request and refuses a start_time in it."""
AUTO_CLOSE_AFTER = timedelta(days=4)
"""Zendesk's default automation closes solved tickets after four days."""
SCHEDULE_HOURS = (9, 17)
"""The account's business schedule for metric `business` minutes: Monday-Friday 09:00-17:00 UTC."""

_FORM_ID = 360030000001
_BRAND_ID = 360040000001
_CUSTOM_STATUS_IDS = {
    "new": 360050000001,
    "open": 360050000002,
    "pending": 360050000003,
    "hold": 360050000004,
    "solved": 360050000005,
    "closed": 360050000005,
}
_MAX_KEY = 2**62

ERROR_UNAUTHENTICATED = {"error": "Couldn't authenticate you"}
ERROR_NOT_FOUND = {"error": "RecordNotFound", "description": "Not found"}
ERROR_CONFLICT = {
    "error": "UpdateConflict",
    "description": "Safe Update prevented the update due to outdated ticket data. "
    "Please fetch the latest ticket data and try again.",
}
ERROR_CLOSED = {
    "error": "RecordInvalid",
    "description": "Record validation errors",
    "details": {"status": [{"description": "Status: closed prevents ticket update"}]},
}


# --------------------------------------------------------------------------------------------- the account


# The corpus (organizations, people, ticket texts) lives in sandbox/zendesk_data.py; this binds it to the account.
_TIER_GROUPS = {"L1": GROUP_L1, "L2": GROUP_L2, "L3": GROUP_L3, "L4": GROUP_L4}
_AGENTS = tuple((_TIER_GROUPS[tier], name) for tier, name in AGENTS)
"""(group id, name) of each agent, in corpus order: the order fixes their user ids."""
if not set(SIGNAL_MESSAGES) <= set(SIGNAL_TAGS):  # the corpus names tags by their text; keep the two in step
    raise RuntimeError(f"zendesk_data.SIGNAL_MESSAGES names unknown tags: {set(SIGNAL_MESSAGES) - set(SIGNAL_TAGS)}")


# --------------------------------------------------------------------------------------------- helpers


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(moment: datetime) -> int:
    return math.floor(moment.timestamp())


def _second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else None


def _minutes(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() // 60))


def business_minutes(start: datetime, end: datetime) -> int:
    """Minutes between two moments within the account schedule (Mon-Fri, SCHEDULE_HOURS UTC)."""
    total = 0.0
    day = start.date()
    while day <= end.date():
        if day.weekday() < 5:
            opens = datetime.combine(day, time(SCHEDULE_HOURS[0]), UTC)
            closes = datetime.combine(day, time(SCHEDULE_HOURS[1]), UTC)
            low, high = max(start, opens), min(end, closes)
            if high > low:
                total += (high - low).total_seconds()
        day += timedelta(days=1)
    return int(total // 60)


def _busy(moment: datetime) -> bool:
    """When the support floor is staffed (activity is much lower outside): weekdays 08:00-18:00 UTC."""
    return moment.weekday() < 5 and 8 <= moment.hour < 18


def _tag_list(value: Any) -> list[str]:
    """Zendesk tags are lower case and contain no spaces: a string with spaces is several tags."""
    if value is None:
        return []
    items = value.split() if isinstance(value, str) else [str(v) for v in value]
    return [word.lower() for item in items for word in str(item).split() if word]


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _encode_cursor(kind: str, *parts: int) -> str:
    return base64.b64encode(f"{kind}:{':'.join(str(p) for p in parts)}".encode()).decode()


def _decode_cursor(cursor: str, kinds: Iterable[str]) -> tuple[str, list[int]] | None:
    try:
        text = base64.b64decode(cursor.encode(), validate=True).decode()
        kind, _, rest = text.partition(":")
        parts = [int(p) for p in rest.split(":")]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (kind, parts) if kind in kinds else None


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, body, dict(headers or {}), "application/json; charset=utf-8")


def _invalid(description: str) -> Response:
    return _json(422, {"error": "InvalidValue", "description": description})


def _record_invalid(details: dict[str, list[dict[str, str]]]) -> Response:
    return _json(422, {"error": "RecordInvalid", "description": "Record validation errors", "details": details})


class UpdateRefused(Exception):
    """A test helper asked for an update the API would refuse (closed ticket, bad value)."""


JOB_LIMIT = 100
"""Tickets an Update Many Tickets request takes at most."""


@dataclass
class _Job:
    id: str
    tickets: list[dict[str, Any]]
    polls_left: int
    status: str = "queued"
    results: list[dict[str, Any]] = field(default_factory=list)
    finished: datetime | None = None


def _job_error(body: Any) -> dict[str, Any]:
    """A failed ticket's result: `error` and `details` as the job statuses reference names them."""
    body = body if isinstance(body, dict) else {}
    return {"error": body.get("error", "TicketUpdateFailed"), "details": body.get("description", "")}


@dataclass
class _TicketState:
    """One ticket: the resource as the API shows it, plus what the platform tracks behind it (metrics)."""

    data: dict[str, Any]
    created: datetime
    updated: datetime
    generated: int
    metric_id: int
    attentiveness: float
    comments: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[tuple[datetime, str]] = field(default_factory=list)
    group_stations: int = 0
    assignee_stations: int = 0
    reopens: int = 0
    deleted: bool = False
    assigned_at: datetime | None = None
    initially_assigned_at: datetime | None = None
    assignee_updated_at: datetime | None = None
    requester_updated_at: datetime | None = None
    audits: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- the sandbox


class ZendeskSandbox(SandboxApp):
    """A Zendesk Support account on a simulated clock; see the module docstring for the API it follows."""

    platform = "zendesk"

    def __init__(self, clock: SimClock, *, seed: int = 7, subdomain: str = SUBDOMAIN) -> None:
        super().__init__(clock)
        self.seed = seed
        self.canonical = f"https://{subdomain}.zendesk.com"
        """Host of resource `url`s; paging links use the host the request came to (as a proxy would see)."""
        self.accepted_authorizations: set[str] | None = None
        """None: any Basic/Bearer Authorization passes; a set: only these exact header values do."""
        self.rate_limit = RATE_LIMIT
        self.enforce_rate_limit = False
        """Off by default: simulated time stands still during a cycle, so a per-minute budget would never refill."""
        self.enforce_ceilings = False
        """The account limit and the endpoint ceilings (module docstring); for a clock that moves while the client
        works (sandbox.base.ScaledClock), off by default for the same reason."""
        self._endpoint_counts: dict[tuple[str, int], int] = {}
        self._rng = random.Random(seed)
        self._idle: set[int] = set()
        """Tickets nobody touches after creation (simulate() leaves them alone)."""
        self._local = threading.local()
        self._minute_counts: dict[int, int] = {}
        self._tickets: dict[int, _TicketState] = {}
        self._counters = {"ticket": 1000, "event": 36100000000000, "audit": 36200000000000, "metric": 36300000000000}
        self._counters["create_event"] = 36400000000000
        self._counters["job"] = 0x326FF9154427BE70C7CCE4274A4B0000
        self._ticket_events: list[dict[str, Any]] = []
        """Every audit as the incremental ticket event export shows it (comment child events included)."""
        self._users: dict[int, dict[str, Any]] = {}
        self._orgs: dict[int, dict[str, Any]] = {}
        self._groups: dict[int, dict[str, Any]] = {}
        self._agents_by_group: dict[int, list[int]] = {}
        self._requesters: list[tuple[int, int]] = []
        self._jobs: dict[str, _Job] = {}
        self.job_polls_to_finish = 1
        """Status polls a job answers `queued`/`working` to before it runs (the first poll runs it by default)."""
        self.jobs_run_unasked = True
        """False: a job moves only when its status is asked for (a busy job queue), not before other requests."""
        self._build_directory()
        for method, pattern, handler in (
            ("GET", r"/api/v2/incremental/tickets/cursor\.json", self._export),
            ("GET", r"/api/v2/incremental/ticket_events(?:\.json)?", self._export_events),
            ("GET", r"/api/v2/tickets/(?P<ticket_id>\d+)(?:\.json)?", self._show_ticket),
            ("PUT", r"/api/v2/tickets/(?P<ticket_id>\d+)(?:\.json)?", self._update_ticket),
            ("PUT", r"/api/v2/tickets/update_many(?:\.json)?", self._update_many),
            ("GET", r"/api/v2/job_statuses(?:\.json)?", self._list_jobs),
            ("GET", r"/api/v2/job_statuses/show_many(?:\.json)?", self._show_many_jobs),
            ("GET", r"/api/v2/job_statuses/(?P<job_id>[A-Za-z0-9-]+?)(?:\.json)?", self._show_job),
            ("GET", r"/api/v2/tickets/(?P<ticket_id>\d+)/comments(?:\.json)?", self._list_comments),
            ("GET", r"/api/v2/tickets/(?P<ticket_id>\d+)/audits(?:\.json)?", self._list_audits),
            ("GET", r"/api/v2/tickets/(?P<ticket_id>\d+)/metrics(?:\.json)?", self._show_metrics),
            ("GET", r"/api/v2/organizations/(?P<org_id>\d+)(?:\.json)?", self._show_org),
            ("GET", r"/api/v2/users/me(?:\.json)?", self._show_me),
            ("GET", r"/api/v2/users/(?P<user_id>\d+)(?:\.json)?", self._show_user),
            ("GET", r"/api/v2/groups/(?P<group_id>\d+)(?:\.json)?", self._show_group),
        ):
            self.route(method, pattern, self._authed(handler))

    # ------------------------------------------------------------------ directory: orgs, groups, users

    def _next(self, kind: str) -> int:
        self._counters[kind] += 1
        return self._counters[kind]

    def _build_directory(self) -> None:
        since = _iso(_second(self.clock.now() - timedelta(days=400)))
        for group_id, name in GROUPS.items():
            self._groups[group_id] = {
                "url": f"{self.canonical}/api/v2/groups/{group_id}.json",
                "id": group_id,
                "is_public": True,
                "name": name,
                "description": f"{name} tier",
                "default": group_id == GROUP_L1,
                "deleted": False,
                "created_at": since,
                "updated_at": since,
            }
            self._agents_by_group[group_id] = []
        self._add_user(API_USER_ID, "Escalation Sync (API)", "escalation-sync@acme.example", "admin", None, since)
        for index, (group_id, name) in enumerate(_AGENTS):
            user_id = 361000000101 + index
            email = name.lower().replace(" ", ".").replace("á", "a").replace("é", "e") + "@acme.example"
            self._add_user(user_id, name, email, "agent", None, since, default_group_id=group_id)
            self._agents_by_group[group_id].append(user_id)
        next_user = 363000000001
        for org in ORGS:
            self._orgs[org.id] = {
                "url": f"{self.canonical}/api/v2/organizations/{org.id}.json",
                "id": org.id,
                "name": org.name,
                "shared_tickets": False,
                "shared_comments": False,
                "external_id": None,
                "created_at": since,
                "updated_at": since,
                "domain_names": [org.domain],
                "details": "",
                "notes": "",
                "group_id": None,
                "tags": [org.segment],
                "organization_fields": {"segment": org.segment, "account_manager": None},
            }
            for _ in range(2 + org.weight // 2):
                first, last = self._rng.choice(FIRST_NAMES), self._rng.choice(LAST_NAMES)
                email = f"{first}.{last}.{next_user % 1000}@{org.domain}".lower()
                self._add_user(next_user, f"{first} {last}", email, "end-user", org.id, since)
                self._requesters.extend([(next_user, org.id)] * org.weight)
                next_user += 1
        for _ in range(8):
            first, last = self._rng.choice(FIRST_NAMES), self._rng.choice(LAST_NAMES)
            email = f"{first}.{last}.{next_user % 1000}@mail.example".lower()
            self._add_user(next_user, f"{first} {last}", email, "end-user", None, since)
            self._requesters.append((next_user, 0))
            next_user += 1

    def _add_user(
        self,
        user_id: int,
        name: str,
        email: str,
        role: str,
        org_id: int | None,
        since: str,
        *,
        default_group_id: int | None = None,
    ) -> None:
        self._users[user_id] = {
            "id": user_id,
            "url": f"{self.canonical}/api/v2/users/{user_id}.json",
            "name": name,
            "email": email,
            "created_at": since,
            "updated_at": since,
            "time_zone": "UTC",
            "iana_time_zone": "Etc/UTC",
            "phone": None,
            "locale": "en-US",
            "locale_id": 1,
            "organization_id": org_id,
            "role": role,
            "verified": True,
            "external_id": None,
            "tags": [],
            "active": True,
            "suspended": False,
            "default_group_id": default_group_id,
            "user_fields": {},
        }

    def _is_agent(self, user_id: int | None) -> bool:
        user = self._users.get(user_id or 0)
        return user is not None and user["role"] in ("agent", "admin")

    # ------------------------------------------------------------------ HTTP plumbing

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
        self._local.origin = f"{environ.get('wsgi.url_scheme', 'https')}://{host}" if host else None
        return super().__call__(environ, start_response)

    def _origin(self) -> str:
        return getattr(self._local, "origin", None) or self.canonical

    def dispatch(self, request: Request) -> Response:
        with self._lock:
            if self.jobs_run_unasked and "/job_statuses" not in request.path:
                # A background job runs whether or not anyone asks after it: by the time the client sends
                # anything else (its next cycle, a restart), the jobs it queued have run.
                for job in self._jobs.values():
                    if job.status in ("queued", "working"):
                        self._run_job(job)
            response = super().dispatch(request)
            now = self.clock.now()
            used = self._minute_counts.get(_epoch(now) // 60, 0)
            remaining = str(max(0, self.rate_limit - used))
            response.headers.setdefault("X-Rate-Limit", str(self.rate_limit))
            response.headers.setdefault("X-Rate-Limit-Remaining", remaining)
            if self.enforce_ceilings:
                response.headers.setdefault("ratelimit-limit", str(self.rate_limit))
                response.headers.setdefault("ratelimit-remaining", remaining)
                response.headers.setdefault("ratelimit-reset", str(_window_left(now)))
            return response

    def not_found(self, request: Request) -> Response:
        return _json(404, {"error": "InvalidEndpoint", "description": "Not found"})

    def _authed(self, handler: Callable[..., Response]) -> Callable[..., Response]:
        def guarded(request: Request, **params: str) -> Response:
            header = request.headers.get("authorization", "")
            if self.accepted_authorizations is not None:
                allowed = header in self.accepted_authorizations
            else:
                scheme, _, credentials = header.partition(" ")
                allowed = scheme.lower() in ("basic", "bearer") and bool(credentials.strip())
            if not allowed:
                return _json(401, ERROR_UNAUTHENTICATED, {"WWW-Authenticate": 'Basic realm="Web Password"'})
            now = self.clock.now()
            minute = _epoch(now) // 60
            self._minute_counts[minute] = self._minute_counts.get(minute, 0) + 1
            limited = self.enforce_rate_limit or self.enforce_ceilings
            if limited and self._minute_counts[minute] > self.rate_limit:
                return rate_limited_response(_window_left(now))
            if self.enforce_ceilings and not self._within_ceiling(request, minute):
                return rate_limited_response(_window_left(now))
            return handler(request, **params)

        return guarded

    def _within_ceiling(self, request: Request, minute: int) -> bool:
        """Count the request against its endpoint's budget for this minute; False when that budget is spent
        (a refused request does not use it up further)."""
        for method, pattern, name, limit in _CEILINGS:
            if method == request.method and re.fullmatch(pattern, request.path):
                key = (name, minute)
                if self._endpoint_counts.get(key, 0) >= limit:
                    return False
                self._endpoint_counts[key] = self._endpoint_counts.get(key, 0) + 1
        return True

    def _includes(self, request: Request) -> set[str]:
        return {part.strip() for part in (request.param("include") or "").split(",") if part.strip()}

    def _sideloads(self, includes: set[str], states: list[_TicketState]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if "metric_sets" in includes:
            extra["metric_sets"] = [self._metric_set(state) for state in states]
        if "organizations" in includes:
            org_ids = sorted({s.data["organization_id"] for s in states if s.data["organization_id"]})
            extra["organizations"] = [copy.deepcopy(self._orgs[i]) for i in org_ids if i in self._orgs]
        if "users" in includes:
            user_ids = sorted(
                {s.data[k] for s in states for k in ("requester_id", "submitter_id", "assignee_id") if s.data[k]}
            )
            extra["users"] = [copy.deepcopy(self._users[i]) for i in user_ids if i in self._users]
        if "groups" in includes:
            group_ids = sorted({s.data["group_id"] for s in states if s.data["group_id"]})
            extra["groups"] = [copy.deepcopy(self._groups[i]) for i in group_ids if i in self._groups]
        return extra

    # ------------------------------------------------------------------ incremental export

    def _export(self, request: Request) -> Response:
        cutoff = _epoch(self.clock.now()) - EXPORT_LAG
        raw_per_page = request.param("per_page")
        try:
            per_page = EXPORT_MAX_PER_PAGE if raw_per_page is None else int(raw_per_page)
        except ValueError:
            return _invalid("per_page must be an integer")
        per_page = min(max(per_page, 1), EXPORT_MAX_PER_PAGE)
        cursor = request.param("cursor")
        backwards = False
        if cursor:
            decoded = _decode_cursor(cursor, ("after", "before"))
            if decoded is None or len(decoded[1]) != 2:
                return _invalid("Invalid cursor")
            backwards = decoded[0] == "before"
            position = (decoded[1][0], decoded[1][1])
        else:
            raw_start = request.param("start_time")
            if raw_start is None:
                return _invalid("start_time or cursor is required")
            try:
                start_time = int(raw_start)
            except ValueError:
                return _invalid("start_time must be a Unix epoch time in seconds")
            if start_time > cutoff:
                return _invalid("Too recent start_time. Use a start_time older than 1 minute")
            position = (start_time - 1, _MAX_KEY)
        exclude_deleted = _truthy(request.param("exclude_deleted"))
        keys = sorted(
            (state.generated, ticket_id)
            for ticket_id, state in self._tickets.items()
            if state.generated <= cutoff and not (exclude_deleted and state.deleted)
        )
        if backwards:
            earlier = [key for key in keys if key < position]
            page, end_of_stream = earlier[-per_page:], False
        else:
            later = [key for key in keys if key > position]
            page, end_of_stream = later[:per_page], len(later) <= per_page
        after = page[-1] if page else position
        after_cursor = _encode_cursor("after", *after)
        before_cursor = _encode_cursor("before", *page[0]) if page and cursor else None
        states = [self._tickets[ticket_id] for _, ticket_id in page]
        keep = {k: v for k, v in (("per_page", raw_per_page), ("include", request.param("include"))) if v}
        if exclude_deleted:
            keep["exclude_deleted"] = "true"
        base = f"{self._origin()}/api/v2/incremental/tickets/cursor.json"
        body: dict[str, Any] = {
            "tickets": [self._ticket_json(state, exported=True) for state in states],
            "after_url": f"{base}?{urlencode({'cursor': after_cursor, **keep})}",
            "after_cursor": after_cursor,
            "before_url": f"{base}?{urlencode({'cursor': before_cursor, **keep})}" if before_cursor else None,
            "before_cursor": before_cursor,
            "end_of_stream": end_of_stream,
        }
        body.update(self._sideloads(self._includes(request), states))
        return _json(200, body)

    # ------------------------------------------------------------------ tickets

    def _live(self, ticket_id: str | int) -> _TicketState | None:
        state = self._tickets.get(int(ticket_id))
        return None if state is None or state.deleted else state

    def _ticket_json(self, state: _TicketState, *, exported: bool = False) -> dict[str, Any]:
        data = copy.deepcopy(state.data)
        if exported:
            data["generated_timestamp"] = state.generated
        return data

    def _show_ticket(self, request: Request, ticket_id: str) -> Response:
        state = self._live(ticket_id)
        if state is None:
            return _json(404, ERROR_NOT_FOUND)
        body: dict[str, Any] = {"ticket": self._ticket_json(state)}
        body.update(self._sideloads(self._includes(request), [state]))
        return _json(200, body)

    def _update_ticket(self, request: Request, ticket_id: str) -> Response:
        state = self._live(ticket_id)
        if state is None:
            return _json(404, ERROR_NOT_FOUND)
        try:
            payload = request.json()
        except ValueError:
            return _json(400, {"error": "InvalidJSON", "description": "The request body is not valid JSON"})
        fields = payload.get("ticket") if isinstance(payload, dict) else None
        if not isinstance(fields, dict):
            return _invalid("The request body must be an object with a 'ticket' object")
        refusal = self._refusal(state, fields)
        if refusal is not None:
            return refusal
        audit = self._apply(state, self.clock.now(), API_USER_ID, fields, "api")
        return _json(200, {"ticket": self._ticket_json(state), "audit": audit})

    def _update_many(self, request: Request) -> Response:
        """Update Many Tickets, batch form: `{"tickets": [{"id", ...fields}]}`, up to 100, each with its own
        values; answered with a queued job status, the work done when the job runs (on a later status poll).
        Per ticket the fields are those of Update Ticket; `safe_update` is documented for Update Ticket only and
        is not applied here (a batch update does not refuse a ticket changed since the client read it)."""
        try:
            payload = request.json()
        except ValueError:
            return _json(400, {"error": "InvalidJSON", "description": "The request body is not valid JSON"})
        tickets = payload.get("tickets") if isinstance(payload, dict) else None
        if not isinstance(tickets, list) or not tickets or not all(isinstance(t, dict) for t in tickets):
            return _invalid("The request body must be an object with a 'tickets' array of ticket objects")
        if len(tickets) > JOB_LIMIT:
            return _invalid(f"Too many tickets: at most {JOB_LIMIT} per request")
        job_id = f"V3-{self._next('job'):032x}"
        self._jobs[job_id] = _Job(job_id, copy.deepcopy(tickets), self.job_polls_to_finish)
        return _json(200, {"job_status": self._job_json(self._jobs[job_id], request)})

    def _show_job(self, request: Request, job_id: str) -> Response:
        job = self._jobs.get(job_id)
        if job is None:
            return _json(404, ERROR_NOT_FOUND)
        self._poll_job(job)
        return _json(200, {"job_status": self._job_json(job, request)})

    def _show_many_jobs(self, request: Request) -> Response:
        """Show Many Job Statuses: `ids` a comma-separated list of job ids, answered as `{job_statuses: [...]}`
        (each a status poll, as a show is). Inferred, not documented: ids in the order asked, an unknown or
        expired id left out rather than failing the request, a missing `ids` refused with 400."""
        ids = [part.strip() for part in (request.param("ids") or "").split(",") if part.strip()]
        if not ids:
            return _json(400, {"error": "InvalidParameter", "description": "ids is required"})
        found = [self._jobs[job_id] for job_id in dict.fromkeys(ids) if job_id in self._jobs]
        for job in found:
            self._poll_job(job)
        return _json(200, {"job_statuses": [self._job_json(job, request) for job in found]})

    def _list_jobs(self, request: Request) -> Response:
        """List Job Statuses: unfinished jobs first, then by completion and creation, newest first (see the
        module docstring); offset pagination (`per_page` up to 100, `page`)."""
        try:
            per_page = min(max(int(request.param("per_page") or 100), 1), 100)
            number = max(int(request.param("page") or 1), 1)
        except ValueError:
            return _invalid("page and per_page must be integers")
        created = list(self._jobs.values())  # in creation order
        for job in created:
            self._poll_job(job)
        ordered = sorted(
            reversed(created), key=lambda job: job.finished or datetime.max.replace(tzinfo=UTC), reverse=True
        )
        start = (number - 1) * per_page

        def link(target: int) -> str:
            return f"{self._origin()}/api/v2/job_statuses.json?{urlencode({'page': target, 'per_page': per_page})}"

        return _json(
            200,
            {
                "job_statuses": [self._job_json(job, request) for job in ordered[start : start + per_page]],
                "next_page": link(number + 1) if start + per_page < len(ordered) else None,
                "previous_page": link(number - 1) if number > 1 else None,
                "count": len(ordered),
            },
        )

    def _poll_job(self, job: _Job) -> None:
        """A status poll: a queued job starts working, and runs once `job_polls_to_finish` polls have seen it."""
        if job.status in ("queued", "working"):
            job.polls_left -= 1
            if job.polls_left > 0:
                job.status = "working"
            else:
                self._run_job(job)

    def _run_job(self, job: _Job) -> None:
        """Apply each ticket's update in order, one result each, as the job statuses reference shows them."""
        for index, fields in enumerate(job.tickets):
            ticket_id = fields.get("id")
            state = self._live(ticket_id) if isinstance(ticket_id, int) else None
            if state is None:
                job.results.append({"index": index, "id": ticket_id, **_job_error(ERROR_NOT_FOUND)})
                continue
            update = {k: v for k, v in fields.items() if k not in ("id", "safe_update", "updated_stamp")}
            refusal = self._refusal(state, update)
            if refusal is not None:
                job.results.append({"index": index, "id": ticket_id, **_job_error(refusal.body)})
                continue
            self._apply(state, self.clock.now(), API_USER_ID, update, "api")
            job.results.append({"id": ticket_id, "action": "update", "success": True, "status": "Updated"})
        job.status = "completed"
        job.finished = self.clock.now()

    def _job_json(self, job: _Job, request: Request) -> dict[str, Any]:
        done = job.status == "completed"
        return {
            "id": job.id,
            "job_type": "Bulk Update Ticket",
            "url": f"{self.canonical}/api/v2/job_statuses/{job.id}.json",
            "total": len(job.tickets) if job.status != "queued" else None,
            "progress": len(job.results) if job.status != "queued" else None,
            "status": job.status,
            "message": f"Completed at {job.finished:%Y-%m-%d %H:%M:%S} +0000" if done and job.finished else None,
            "results": copy.deepcopy(job.results) if done else None,
        }

    def job_count(self) -> int:
        return len(self._jobs)

    def _refusal(self, state: _TicketState, fields: dict[str, Any]) -> Response | None:
        """What the API answers instead of applying `fields`, or None when it would apply them."""
        if state.data["status"] == "closed":
            return _json(422, ERROR_CLOSED)
        if _truthy(fields.get("safe_update")) and "updated_stamp" in fields:
            stamp = _parse_time(fields["updated_stamp"])
            if stamp is None or _second(stamp) != state.updated:
                return _json(409, ERROR_CONFLICT)
        details: dict[str, list[dict[str, str]]] = {}
        if "status" in fields and fields["status"] not in STATUSES:
            details["status"] = [{"description": f"Status: {fields['status']!r} is not a valid status"}]
        if "priority" in fields and fields["priority"] not in (*PRIORITIES, None):
            details["priority"] = [{"description": f"Priority: {fields['priority']!r} is not a valid priority"}]
        if "group_id" in fields and fields["group_id"] is not None and fields["group_id"] not in self._groups:
            details["group"] = [{"description": "Group: is invalid"}]
        if "assignee_id" in fields and fields["assignee_id"] is not None and not self._is_agent(fields["assignee_id"]):
            details["assignee"] = [{"description": "Assignee: is invalid"}]
        comment = fields.get("comment")
        if comment is not None and not isinstance(comment, dict):
            details["comment"] = [{"description": "Comment: must be an object"}]
        custom = fields.get("custom_fields")
        if custom is not None and not (
            isinstance(custom, list) and all(isinstance(item, dict) and "id" in item for item in custom)
        ):
            details["custom_fields"] = [{"description": "Custom fields: each entry needs an id and a value"}]
        return _record_invalid(details) if details else None

    def _apply(
        self, state: _TicketState, at: datetime, actor: int, fields: dict[str, Any], channel: str
    ) -> dict[str, Any]:
        """Apply an update as Zendesk does: one audit, one event per change, updated_at moves only on change."""
        at = max(_second(at), state.updated)
        data = state.data
        audit_id = self._next("audit")
        events: list[dict[str, Any]] = []
        comment_spec = fields.get("comment")
        author = actor
        if isinstance(comment_spec, dict):
            body = str(comment_spec.get("body") or comment_spec.get("html_body") or "")
            if body.strip():
                author = int(comment_spec.get("author_id") or actor)
                public = _truthy(comment_spec.get("public", True))
                comment = self._make_comment(author, body, public, at, audit_id, channel)
                state.comments.append(comment)
                event_keys = ("id", "type", "author_id", "body", "html_body", "plain_body", "public", "attachments")
                events.append({**{k: copy.deepcopy(comment[k]) for k in event_keys}, "audit_id": audit_id})
                if not self._is_agent(author):
                    state.requester_updated_at = at
                # Zendesk's default behaviour: an agent's public reply opens a new ticket, and a requester's
                # reply reopens a pending or solved one, unless the update sets a status itself.
                if "status" not in fields:
                    by_agent = self._is_agent(author)
                    opens = data["status"] == "new" if by_agent else data["status"] in ("pending", "solved")
                    if opens and (public or not by_agent):
                        fields = {**fields, "status": "open"}

        def change(name: str, value: Any) -> None:
            if data[name] != value:
                events.append(
                    {
                        "id": self._next("event"),
                        "type": "Change",
                        "value": _event_value(value),
                        "field_name": name,
                        "previous_value": _event_value(data[name]),
                    }
                )
                data[name] = value

        for name in ("subject", "type", "priority", "due_at"):
            if name in fields:
                change(name, fields[name])
        if "subject" in fields:
            data["raw_subject"] = data["subject"]
        if "group_id" in fields and fields["group_id"] != data["group_id"]:
            change("group_id", fields["group_id"])
            if fields["group_id"] is not None:
                state.group_stations += 1
            assignee = fields.get("assignee_id", data["assignee_id"])
            if assignee is not None and assignee not in self._agents_by_group.get(fields["group_id"], []):
                fields = {**fields, "assignee_id": None}
        if "assignee_id" in fields and fields["assignee_id"] != data["assignee_id"]:
            change("assignee_id", fields["assignee_id"])
            if fields["assignee_id"] is not None:
                state.assignee_stations += 1
                state.assigned_at = at
                state.initially_assigned_at = state.initially_assigned_at or at
                if data["group_id"] is None:
                    change("group_id", self._users[fields["assignee_id"]]["default_group_id"])
                    state.group_stations += 1
        if "status" in fields and fields["status"] != data["status"]:
            if data["status"] == "solved" and fields["status"] != "closed":
                state.reopens += 1
            change("status", fields["status"])
            data["custom_status_id"] = _CUSTOM_STATUS_IDS[data["status"]]
            state.statuses.append((at, data["status"]))
        tags = set(data["tags"])
        if "tags" in fields:
            tags = set(_tag_list(fields["tags"]))
        if "custom_fields" in fields:
            values = {item["id"]: item.get("value") for item in fields["custom_fields"]}
            for entry in data["custom_fields"]:
                if entry["id"] in values and entry["value"] != values[entry["id"]]:
                    old, new = entry["value"], values[entry["id"]]
                    events.append(
                        {
                            "id": self._next("event"),
                            "type": "Change",
                            "value": new,
                            "field_name": str(entry["id"]),
                            "previous_value": old,
                        }
                    )
                    entry["value"] = new
                    if entry["id"] in DROPDOWN_FIELDS:
                        tags.discard(str(old))
                        tags.update(_tag_list(new))
            data["fields"] = copy.deepcopy(data["custom_fields"])
        tags.update(_tag_list(fields.get("additional_tags")))
        tags.difference_update(_tag_list(fields.get("remove_tags")))
        if sorted(tags) != data["tags"]:
            change("tags", sorted(tags))
        if not events:
            return self._audit(audit_id, state, at, actor, [], channel)
        if self._is_agent(author) and author == data["assignee_id"]:
            state.assignee_updated_at = at
        data["updated_at"] = _iso(at)
        state.updated = at
        state.generated = _epoch(at)
        self._log_event(audit_id, state, at, author, events, channel)
        return self._audit(audit_id, state, at, author, events, channel)

    def _log_event(
        self, audit_id: int, state: _TicketState, at: datetime, author: int, events: list[dict[str, Any]], channel: str
    ) -> None:
        """The audit as a ticket event: a change child event names its field as the key, with `previous_value`.
        The Ticket Audits API's form (`type`, `field_name`, `value` as text) is kept with the ticket too."""
        shown = [
            event if event["type"] == "Comment" else {**event, "value": _event_value(event["value"])}
            for event in events
        ]
        state.audits.append(self._audit(audit_id, state, at, author, copy.deepcopy(shown), channel))
        children = []
        for event in events:
            base = {"id": event["id"], "via": _VIA_LABELS.get(channel, channel), "via_reference_id": None}
            if event["type"] == "Comment":
                keys = ("author_id", "body", "html_body", "plain_body", "public", "attachments", "audit_id")
                children.append({**base, "event_type": "Comment", **{key: copy.deepcopy(event[key]) for key in keys}})
            else:
                field_name, value = event["field_name"], state.data.get(event["field_name"], event["value"])
                if field_name.isdigit():  # a custom field
                    value = event["value"]
                child = {**base, field_name: copy.deepcopy(value), "event_type": event["type"]}
                if event["type"] == "Change":
                    previous = event["previous_value"]
                    if field_name in ("group_id", "assignee_id") and isinstance(previous, str) and previous.isdigit():
                        previous = int(previous)
                    child["previous_value"] = copy.deepcopy(previous)
                children.append(child)
        self._ticket_events.append(
            {
                "id": audit_id,
                "ticket_id": state.data["id"],
                "timestamp": _epoch(at),
                "created_at": _iso(at),
                "updater_id": author,
                "via": _VIA_LABELS.get(channel, channel),
                "system": {"client": "sandbox", "ip_address": "127.0.0.1"},
                "metadata": {"system": {"client": "sandbox", "ip_address": "127.0.0.1"}, "custom": {}},
                "event_type": "Audit",
                "child_events": children,
            }
        )

    def _log_creation(self, state: _TicketState, channel: str) -> None:
        """The ticket event of a new ticket: a Create child event per set field, then the description comment."""
        data, comment = state.data, state.comments[0]
        events = [
            {"id": self._next("create_event"), "type": "Create", "field_name": name, "value": data[name]}
            for name in ("subject", "status", "priority", "requester_id", "group_id", "tags")
            if data[name] is not None
        ]
        keys = ("id", "type", "author_id", "body", "html_body", "plain_body", "public", "attachments", "audit_id")
        events.append({key: comment[key] for key in keys})
        self._log_event(comment["audit_id"], state, state.created, data["requester_id"], events, channel)

    def _export_events(self, request: Request) -> Response:
        """Incremental Ticket Event Export (time based): events at or after `start_time`, oldest first, 1000 a
        page (a second is never split: all its events come on one page), `end_time` = the last event's time, to
        be the next `start_time`; events of the last minute are left out, as with the ticket export."""
        cutoff = _epoch(self.clock.now()) - EXPORT_LAG
        raw_start = request.param("start_time")
        if raw_start is None:
            return _invalid("start_time is required")
        try:
            start_time = int(raw_start)
        except ValueError:
            return _invalid("start_time must be a Unix epoch time in seconds")
        if start_time > cutoff:
            return _invalid("Too recent start_time. Use a start_time older than 1 minute")
        comments = "comment_events" in self._includes(request)
        found = sorted(
            (event for event in self._ticket_events if start_time <= event["timestamp"] <= cutoff),
            key=lambda event: (event["timestamp"], event["id"]),
        )
        page = found[:EXPORT_MAX_PER_PAGE]
        if len(found) > len(page):
            last = page[-1]["timestamp"]
            page += [event for event in found[len(page) :] if event["timestamp"] == last]
        end_of_stream = len(page) == len(found)
        end_time = page[-1]["timestamp"] if page else start_time
        shown = []
        for event in page:
            event = copy.deepcopy(event)
            if not comments:
                event["child_events"] = [child for child in event["child_events"] if child["event_type"] != "Comment"]
            shown.append(event)
        query = urlencode({"start_time": end_time, **({"include": "comment_events"} if comments else {})})
        body = {
            "ticket_events": shown,
            "next_page": f"{self._origin()}/api/v2/incremental/ticket_events.json?{query}",
            "count": len(shown),
            "end_of_stream": end_of_stream,
            "end_time": end_time,
        }
        return _json(200, body)

    def _audit(
        self, audit_id: int, state: _TicketState, at: datetime, author: int, events: list[dict[str, Any]], channel: str
    ) -> dict[str, Any]:
        return {
            "id": audit_id,
            "ticket_id": state.data["id"],
            "created_at": _iso(at),
            "author_id": author,
            "metadata": {"system": {"client": "sandbox", "ip_address": "127.0.0.1"}, "custom": {}},
            "events": events,
            "via": {"channel": channel, "source": {"from": {}, "to": {}, "rel": None}},
        }

    def _make_comment(
        self, author: int, body: str, public: bool, at: datetime, audit_id: int, channel: str
    ) -> dict[str, Any]:
        paragraphs = "".join(f'<p dir="auto">{html.escape(p)}</p>' for p in body.split("\n\n") if p.strip())
        return {
            "id": self._next("event"),
            "type": "Comment",
            "author_id": author,
            "body": body,
            "html_body": f'<div class="zd-comment" dir="auto">{paragraphs}</div>',
            "plain_body": body,
            "public": public,
            "attachments": [],
            "audit_id": audit_id,
            "via": {"channel": channel, "source": {"from": {}, "to": {}, "rel": None}},
            "created_at": _iso(at),
            "metadata": {"system": {"client": "sandbox", "ip_address": "127.0.0.1"}, "custom": {}},
        }

    # ------------------------------------------------------------------ comments, metrics, directory reads

    def _list_comments(self, request: Request, ticket_id: str) -> Response:
        state = self._live(ticket_id)
        if state is None:
            return _json(404, ERROR_NOT_FOUND)
        descending = (request.param("sort_order") or "asc").lower() == "desc"
        ordered = list(reversed(state.comments)) if descending else list(state.comments)
        base = f"{self._origin()}/api/v2/tickets/{state.data['id']}/comments.json"
        extra = {k: v for k, v in (("sort_order", request.param("sort_order")),) if v}
        if any(key.startswith("page[") for key in request.query):
            response = self._comments_cursor_page(request, ordered, base, extra)
        else:
            response = self._comments_offset_page(request, ordered, base, extra)
        if response.status == 200 and "users" in self._includes(request):
            authors = sorted({c["author_id"] for c in response.body["comments"]})
            response.body["users"] = [copy.deepcopy(self._users[a]) for a in authors if a in self._users]
        return response

    def _comments_cursor_page(
        self, request: Request, ordered: list[dict[str, Any]], base: str, extra: dict[str, str]
    ) -> Response:
        try:
            size = int(request.param("page[size]") or COMMENTS_MAX_PAGE_SIZE)
        except ValueError:
            return _json(400, {"error": "InvalidPaginationParameter", "description": "page[size] must be an integer"})
        if not 1 <= size <= COMMENTS_MAX_PAGE_SIZE:
            return _json(
                400,
                {
                    "error": "InvalidPaginationParameter",
                    "description": f"page[size] must be between 1 and {COMMENTS_MAX_PAGE_SIZE}",
                },
            )
        ids = [c["id"] for c in ordered]
        after, before = request.param("page[after]"), request.param("page[before]")
        start, stop = 0, min(size, len(ordered))
        for raw, kind in ((after, "after"), (before, "before")):
            if not raw:
                continue
            decoded = _decode_cursor(raw, ("comment",))
            if decoded is None or decoded[1][0] not in ids:
                return _json(400, {"error": "InvalidPaginationParameter", "description": f"page[{kind}] is invalid"})
            index = ids.index(decoded[1][0])
            if kind == "after":
                start, stop = index + 1, min(index + 1 + size, len(ordered))
            else:
                start, stop = max(0, index - size), index
            break
        page = ordered[start:stop]
        has_more = stop < len(ordered) if not before else start > 0
        after_cursor = _encode_cursor("comment", page[-1]["id"]) if page else None
        before_cursor = _encode_cursor("comment", page[0]["id"]) if page else None
        return _json(
            200,
            {
                "comments": copy.deepcopy(page),
                "meta": {"has_more": has_more, "after_cursor": after_cursor, "before_cursor": before_cursor},
                "links": {
                    "prev": f"{base}?{urlencode({**extra, 'page[before]': before_cursor, 'page[size]': size})}"
                    if before_cursor
                    else None,
                    "next": f"{base}?{urlencode({**extra, 'page[after]': after_cursor, 'page[size]': size})}"
                    if after_cursor
                    else None,
                },
            },
        )

    def _comments_offset_page(
        self, request: Request, ordered: list[dict[str, Any]], base: str, extra: dict[str, str]
    ) -> Response:
        try:
            per_page = min(max(int(request.param("per_page") or COMMENTS_MAX_PAGE_SIZE), 1), COMMENTS_MAX_PAGE_SIZE)
            number = max(int(request.param("page") or 1), 1)
        except ValueError:
            return _invalid("page and per_page must be integers")
        start = (number - 1) * per_page
        page = ordered[start : start + per_page]

        def link(target: int) -> str:
            return f"{base}?{urlencode({**extra, 'page': target, 'per_page': per_page})}"

        return _json(
            200,
            {
                "comments": copy.deepcopy(page),
                "next_page": link(number + 1) if start + per_page < len(ordered) else None,
                "previous_page": link(number - 1) if number > 1 else None,
                "count": len(ordered),
            },
        )

    def _list_audits(self, request: Request, ticket_id: str) -> Response:
        """List Audits for a Ticket: oldest first, offset pagination (`next_page`, `previous_page`, `count`)."""
        state = self._live(ticket_id)
        if state is None:
            return _json(404, ERROR_NOT_FOUND)
        try:
            per_page = min(max(int(request.param("per_page") or 100), 1), 100)
            number = max(int(request.param("page") or 1), 1)
        except ValueError:
            return _invalid("page and per_page must be integers")
        start = (number - 1) * per_page
        base = f"{self._origin()}/api/v2/tickets/{state.data['id']}/audits.json"

        def link(target: int) -> str:
            return f"{base}?{urlencode({'page': target, 'per_page': per_page})}"

        return _json(
            200,
            {
                "audits": copy.deepcopy(state.audits[start : start + per_page]),
                "next_page": link(number + 1) if start + per_page < len(state.audits) else None,
                "previous_page": link(number - 1) if number > 1 else None,
                "count": len(state.audits),
            },
        )

    def _show_metrics(self, request: Request, ticket_id: str) -> Response:
        state = self._live(ticket_id)
        if state is None:
            return _json(404, ERROR_NOT_FOUND)
        return _json(200, {"ticket_metric": self._metric_set(state)})

    def _show_org(self, request: Request, org_id: str) -> Response:
        org = self._orgs.get(int(org_id))
        return _json(200, {"organization": copy.deepcopy(org)}) if org else _json(404, ERROR_NOT_FOUND)

    def _show_user(self, request: Request, user_id: str) -> Response:
        user = self._users.get(int(user_id))
        return _json(200, {"user": copy.deepcopy(user)}) if user else _json(404, ERROR_NOT_FOUND)

    def _show_me(self, request: Request) -> Response:
        return _json(200, {"user": copy.deepcopy(self._users[API_USER_ID])})

    def _show_group(self, request: Request, group_id: str) -> Response:
        group = self._groups.get(int(group_id))
        return _json(200, {"group": copy.deepcopy(group)}) if group else _json(404, ERROR_NOT_FOUND)

    def _metric_set(self, state: _TicketState) -> dict[str, Any]:
        """Ticket metrics computed from the ticket's own comments and status history, so they agree with them."""
        created = state.created
        replies = [c for c in state.comments if c["public"] and self._is_agent(c["author_id"])]
        first_reply = _parse_time(replies[0]["created_at"]) if replies else None
        solved_times = [at for at, status in state.statuses if status == "solved"]
        current = state.data["status"]
        # Waits are summed over completed status intervals (up to the last status change), like Zendesk's
        # metrics, which are recomputed on ticket updates: the agent waits while pending, the requester while
        # new, open or on hold.
        durations = {"pending": 0.0, "hold": 0.0, "waiting": 0.0}
        business = {"pending": 0, "hold": 0, "waiting": 0}
        for (start, status), (end, _) in zip(state.statuses, state.statuses[1:], strict=False):
            keys = {"pending": ("pending",), "hold": ("hold", "waiting"), "new": ("waiting",), "open": ("waiting",)}
            for key in keys.get(status, ()):
                durations[key] += (end - start).total_seconds()
                business[key] += business_minutes(start, end)

        def span(end: datetime | None) -> dict[str, int | None]:
            if end is None:
                return {"calendar": None, "business": None}
            return {"calendar": _minutes(created, end), "business": business_minutes(created, end)}

        resolved = current in ("solved", "closed")
        latest_comment = state.comments[-1]["created_at"] if state.comments else None
        status_at = state.statuses[-1][0] if state.statuses else created

        def optional(moment: datetime | None) -> str | None:
            return _iso(moment) if moment else None

        return {
            "url": f"{self.canonical}/api/v2/ticket_metrics/{state.metric_id}.json",
            "id": state.metric_id,
            "ticket_id": state.data["id"],
            "created_at": _iso(created),
            "updated_at": state.data["updated_at"],
            "group_stations": state.group_stations,
            "assignee_stations": state.assignee_stations,
            "reopens": state.reopens,
            "replies": len(replies),
            "assignee_updated_at": optional(state.assignee_updated_at),
            "requester_updated_at": optional(state.requester_updated_at),
            "status_updated_at": _iso(status_at),
            "initially_assigned_at": optional(state.initially_assigned_at),
            "assigned_at": optional(state.assigned_at),
            "solved_at": optional(solved_times[-1]) if resolved and solved_times else None,
            "latest_comment_added_at": latest_comment,
            "custom_status_updated_at": _iso(status_at),
            "reply_time_in_minutes": span(first_reply),
            "reply_time_in_seconds": {
                "calendar": int((first_reply - created).total_seconds()) if first_reply else None
            },
            "first_resolution_time_in_minutes": span(solved_times[0] if solved_times else None),
            "full_resolution_time_in_minutes": span(solved_times[-1] if resolved and solved_times else None),
            "agent_wait_time_in_minutes": {
                "calendar": int(durations["pending"] // 60),
                "business": business["pending"],
            },
            "requester_wait_time_in_minutes": {
                "calendar": int(durations["waiting"] // 60),
                "business": business["waiting"],
            },
            "on_hold_time_in_minutes": {"calendar": int(durations["hold"] // 60), "business": business["hold"]},
        }

    # ------------------------------------------------------------------ helpers for tests

    def ticket(self, ticket_id: int) -> dict[str, Any]:
        """The stored resource (deleted tickets too, with status "deleted"); KeyError when it never existed."""
        with self._lock:
            return self._ticket_json(self._tickets[ticket_id])

    def comments(self, ticket_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._tickets[ticket_id].comments)

    def metric_set(self, ticket_id: int) -> dict[str, Any]:
        with self._lock:
            return self._metric_set(self._tickets[ticket_id])

    def ticket_ids(self, *, include_deleted: bool = False) -> list[int]:
        with self._lock:
            return sorted(i for i, s in self._tickets.items() if include_deleted or not s.deleted)

    def organization(self, org_id: int) -> dict[str, Any]:
        return copy.deepcopy(self._orgs[org_id])

    def user(self, user_id: int) -> dict[str, Any]:
        return copy.deepcopy(self._users[user_id])

    def agents(self, group_id: int) -> list[int]:
        return list(self._agents_by_group[group_id])

    def update(self, ticket_id: int, *, author_id: int | None = None, **fields: Any) -> dict[str, Any]:
        """Act like another agent (default: the assignee, else the group's first agent), now, with PUT fields."""
        with self._lock:
            state = self._live(ticket_id)
            if state is None:
                raise KeyError(ticket_id)
            refusal = self._refusal(state, fields)
            if refusal is not None:
                raise UpdateRefused(str(refusal.body))
            actor = author_id or self._default_agent(state)
            self._apply(state, self.clock.now(), actor, fields, "web")
            return self._ticket_json(state)

    def add_comment(
        self, ticket_id: int, body: str, public: bool = True, author_id: int | None = None
    ) -> dict[str, Any]:
        """Post a comment now, by an agent by default; pass the requester's id to reply as the customer."""
        with self._lock:
            state = self._live(ticket_id)
            if state is None:
                raise KeyError(ticket_id)
            if state.data["status"] == "closed":
                raise UpdateRefused(str(ERROR_CLOSED))
            actor = author_id or self._default_agent(state)
            self._apply(state, self.clock.now(), actor, {"comment": {"body": body, "public": public}}, "web")
            return copy.deepcopy(state.comments[-1])

    def delete(self, ticket_id: int) -> None:
        """Delete a ticket as an agent would: it leaves the API but stays in the export as status "deleted"."""
        with self._lock:
            state = self._live(ticket_id)
            if state is None:
                raise KeyError(ticket_id)
            self._delete(state, self.clock.now())

    def rate_limit_fault(self, times: int = 1, retry_after: int = 7, path_pattern: str = "") -> Fault:
        """Inject (and return) the 429 Zendesk sends when over the limit: Retry-After in seconds, an HTML body."""
        response = rate_limited_response(retry_after)
        fault = Fault(429, times, None, path_pattern, response.headers, response.body, response.content_type)
        self.inject(fault)
        return fault

    def _default_agent(self, state: _TicketState) -> int:
        assignee = state.data["assignee_id"]
        return assignee or self._agents_by_group[state.data["group_id"] or GROUP_L1][0]

    def _delete(self, state: _TicketState, at: datetime) -> None:
        at = max(_second(at), state.updated)
        state.deleted = True
        state.data["status"] = "deleted"
        state.data["updated_at"] = _iso(at)
        state.updated = at
        state.generated = _epoch(at)
        state.statuses.append((at, "deleted"))

    # ------------------------------------------------------------------ seeding and simulation

    def seed_tickets(self, count: int) -> list[int]:
        """Create `count` tickets over the last ten days, each with a history replayed up to now."""
        with self._lock:
            now = self.clock.now()
            ages = sorted((self._draw_age() for _ in range(count)), reverse=True)
            created_ids = []
            for index, age in enumerate(ages):
                created = _second(now - age)
                state = self._spawn(created, seeded_index=index)
                created_ids.append(state.data["id"])
                moment = created
                while moment < now:
                    step_end = min(moment + timedelta(minutes=45), now)
                    self._tick(state, moment, step_end, self._rng)
                    moment = step_end
            return created_ids

    def seed_idle(self, count: int, *, within: timedelta = timedelta(days=10)) -> list[int]:
        """`count` tickets created over the last `within` that nobody touches afterwards: no reply, no status
        change, and `simulate` leaves them alone. The case the daemon exists for."""
        with self._lock:
            now = self.clock.now()
            ages = sorted(timedelta(seconds=self._rng.uniform(60, within.total_seconds())) for _ in range(count))
            return [self.add_idle_ticket(now - age) for age in reversed(ages)]

    def add_idle_ticket(self, created: datetime, priority: str = "normal", group: int | None = GROUP_L1) -> int:
        """One plain ticket (no escalation flags, no reply) created at `created` and never touched again."""
        with self._lock:
            state = self._spawn(_second(created))
            data = state.data
            area = data["custom_fields"][0]["value"] if data["custom_fields"] else None
            custom = {FIELD_PRODUCT_AREA: area, FIELD_SEVERITY: SEVERITY_VALUES[PRIORITIES.index(priority)]}
            fields = [{"id": fid, "value": custom.get(fid)} for fid in CUSTOM_FIELD_IDS]
            tags = {
                tag for tag in data["tags"] if tag.startswith("area_") or tag in ("email", "web_form", "api_created")
            }
            tags.add(custom[FIELD_SEVERITY])
            data.update(priority=priority, group_id=group, tags=sorted(tags), custom_fields=fields)
            data["fields"] = copy.deepcopy(fields)
            state.group_stations = 1 if group else 0
            self._idle.add(data["id"])
            return data["id"]

    def escalation_view(self, ticket_id: int) -> tuple[str | None, frozenset[str]]:
        """(tier by group, tags) as the account shows them now: what a test checks after our writes."""
        with self._lock:
            data = self._tickets[ticket_id].data
            tiers = {GROUP_L1: "L1", GROUP_L2: "L2", GROUP_L3: "L3", GROUP_L4: "L4"}
            return tiers.get(data["group_id"]), frozenset(data["tags"])

    def simulate(self, delta: timedelta) -> int:
        """Advance the clock by `delta` in 5-15 minute steps with activity; returns the number of changes made."""
        with self._lock:
            end = self.clock.now() + delta
            changes = 0
            while self.clock.now() < end:
                start = self.clock.now()
                step = min(timedelta(minutes=self._rng.randint(5, 15)), end - start)
                self.clock.advance(step)
                changes += self._step(start, self.clock.now())
            return changes

    def _step(self, start: datetime, end: datetime) -> int:
        """One step of activity. Each ticket lives from its own stream (`_ticket_rng`), the account-wide events
        (step lengths, arrivals, a deletion) from the seeded one, which draws the same whatever state any ticket
        is in: so a write that lands a cycle later changes that ticket's own activity at most, never another's."""
        changes = 0
        for ticket_id in sorted(self._tickets):
            state = self._tickets[ticket_id]
            if not state.deleted and state.data["status"] != "closed" and ticket_id not in self._idle:
                changes += self._tick(state, start, end, self._ticket_rng(ticket_id, start))
        hours = (end - start).total_seconds() / 3600
        arrivals = self._poisson((5.0 if _busy(start) else 0.8) * hours)
        for moment in sorted(self._moment(start, end) for _ in range(arrivals)):
            self._spawn(moment)
            changes += 1
        if self._rng.random() < 0.02 * hours:
            moment = self._moment(start, end)
            fresh = [s for _, s in sorted(self._tickets.items()) if s.data["status"] == "new" and not s.deleted]
            if fresh:
                # The new ticket with the lowest draw of its own: which one goes does not hang on how many are new.
                doomed = min(fresh, key=lambda s: self._ticket_rng(s.data["id"], start, "delete").random())
                self._delete(doomed, moment)
                changes += 1
        return changes

    def _ticket_rng(self, ticket_id: int, start: datetime, purpose: str = "tick") -> random.Random:
        """The stream one ticket's activity in the step starting at `start` draws from: a function of the seed,
        the ticket and the moment only (same seed, same calls: same account)."""
        return random.Random(f"{self.seed}:{ticket_id}:{start.isoformat()}:{purpose}")

    def _moment(self, start: datetime, end: datetime, rng: random.Random | None = None) -> datetime:
        return _second(start + (end - start) * (rng or self._rng).random())

    def _poisson(self, mean: float) -> int:
        threshold, count, product = math.exp(-mean), 0, self._rng.random()
        while product > threshold:
            count += 1
            product *= self._rng.random()
        return count

    def _draw_age(self) -> timedelta:
        roll = self._rng.random()
        if roll < 0.3:
            return timedelta(minutes=self._rng.uniform(5, 8 * 60))
        if roll < 0.7:
            return timedelta(hours=self._rng.uniform(8, 72))
        return timedelta(hours=self._rng.uniform(72, 240))

    def _spawn(self, at: datetime, seeded_index: int | None = None) -> _TicketState:
        rng = self._rng
        requester, org_id = rng.choice(self._requesters)
        area, kind, subject, description = rng.choice(PROBLEMS)
        segment = next((o.segment for o in ORGS if o.id == org_id), None)
        priority = rng.choices((*PRIORITIES, None), weights=(8, 22, 40, 12, 18))[0]
        group = rng.choices((GROUP_L1, GROUP_L2, GROUP_L3, GROUP_L4, None), weights=(70, 15, 6, 3, 6))[0]
        channel = rng.choice(("email", "web", "web", "api"))
        tags = {area, {"email": "email", "web": "web_form", "api": "api_created"}[channel]}
        chances = {
            TAG_CHURN: 0.10 if segment == "enterprise" else 0.04,
            TAG_ENGINEERING: 0.35 if group == GROUP_L3 else 0.05,
            TAG_VENDOR: 1.0 if group == GROUP_L4 else 0.03,
            TAG_CUSTOMER_ESCALATION: 0.04,
            TAG_SECURITY: 0.5 if area == "area_security" else 0.02,
            TAG_PUBLIC_COMPLAINT: 0.03,
        }
        tags.update(tag for tag, chance in chances.items() if rng.random() < chance)
        custom: dict[int, Any] = {FIELD_PRODUCT_AREA: area}
        if rng.random() < 0.6:
            custom[FIELD_SEVERITY] = SEVERITY_VALUES[PRIORITIES.index(priority or "normal")]
        if seeded_index in (7, 19):
            custom[FIELD_SEVERITY] = UNMAPPED_SEVERITY
        if FIELD_SEVERITY in custom:
            tags.add(custom[FIELD_SEVERITY])
        if segment == "enterprise" and (TAG_CHURN in tags or rng.random() < 0.2):
            custom[FIELD_REVENUE_AT_RISK] = f"{rng.randrange(20, 400) * 1000}.00"
        if kind == "incident" and rng.random() < 0.5:
            custom[FIELD_AFFECTED_CUSTOMERS] = str(rng.choice((1, 3, 12, 40, 150, 600)))
        ticket_id = self._next("ticket")
        user = self._users[requester]
        source = (
            {
                "from": {"address": user["email"], "name": user["name"]},
                "to": {"name": "Acme Support", "address": "support@acme.example"},
                "rel": None,
            }
            if channel == "email"
            else {"from": {}, "to": {}, "rel": None}
        )
        custom_fields = [{"id": fid, "value": custom.get(fid)} for fid in CUSTOM_FIELD_IDS]
        data: dict[str, Any] = {
            "url": f"{self.canonical}/api/v2/tickets/{ticket_id}.json",
            "id": ticket_id,
            "external_id": None,
            "via": {"channel": channel, "source": source},
            "created_at": _iso(at),
            "updated_at": _iso(at),
            "type": kind if rng.random() < 0.8 else None,
            "subject": subject,
            "raw_subject": subject,
            "description": description,
            "priority": priority,
            "status": "new",
            "recipient": "support@acme.example" if channel == "email" else None,
            "requester_id": requester,
            "submitter_id": requester,
            "assignee_id": None,
            "organization_id": org_id or None,
            "group_id": group,
            "collaborator_ids": [],
            "follower_ids": [],
            "email_cc_ids": [],
            "forum_topic_id": None,
            "problem_id": None,
            "has_incidents": False,
            "is_public": True,
            "due_at": None,
            "tags": sorted(tags),
            "custom_fields": custom_fields,
            "satisfaction_rating": None,
            "sharing_agreement_ids": [],
            "custom_status_id": _CUSTOM_STATUS_IDS["new"],
            "fields": copy.deepcopy(custom_fields),
            "followup_ids": [],
            "ticket_form_id": _FORM_ID,
            "brand_id": _BRAND_ID,
            "allow_channelback": False,
            "allow_attachments": True,
            "from_messaging_channel": False,
        }
        state = _TicketState(
            data=data,
            created=at,
            updated=at,
            generated=_epoch(at),
            metric_id=self._next("metric"),
            attentiveness=rng.choice((0.15, 0.5, 1.0, 1.0, 1.4)),
            statuses=[(at, "new")],
            group_stations=1 if group else 0,
            requester_updated_at=at,
        )
        state.comments.append(self._make_comment(requester, description, True, at, self._next("audit"), channel))
        self._tickets[ticket_id] = state
        self._log_creation(state, channel)
        return state

    def _tick(self, state: _TicketState, start: datetime, end: datetime, rng: random.Random) -> int:
        """Let the ticket live through [start, end): maybe an agent acts, maybe the customer writes (drawn from
        `rng`: the ticket's own stream in `simulate`, the seeded one while seeding, where nothing else runs)."""
        status = state.data["status"]
        if status == "solved":
            solved_at = state.statuses[-1][0]
            if solved_at + AUTO_CLOSE_AFTER <= end:
                closing = max(solved_at + AUTO_CLOSE_AFTER, start)
                self._apply(state, closing, _SYSTEM_USER_ID, {"status": "closed"}, "rule")
                return 1
        hours = (end - start).total_seconds() / 3600
        busy = _busy(start)
        base = {"urgent": 1.2, "high": 0.6, "normal": 0.3, "low": 0.15}.get(state.data["priority"], 0.25)
        agent_rate = base * state.attentiveness * (1.0 if busy else 0.05)
        agent_rate *= {"new": 0.8, "open": 1.0, "pending": 0.12, "hold": 0.15}.get(status, 0.0)
        customer_rate = {"new": 0.04, "open": 0.05, "pending": 0.25, "hold": 0.03, "solved": 0.008}.get(status, 0.0)
        customer_rate *= 1.0 if busy else 0.35
        acted = 0
        if rng.random() < 1 - math.exp(-agent_rate * hours):
            self._agent_action(state, self._moment(start, end, rng), rng)
            acted += 1
        if rng.random() < 1 - math.exp(-customer_rate * hours):
            self._customer_action(state, self._moment(start, end, rng), rng)
            acted += 1
        return acted

    def _agent_action(self, state: _TicketState, at: datetime, rng: random.Random) -> None:
        data = state.data
        group = data["group_id"] or GROUP_L1
        agent = data["assignee_id"] or rng.choice(self._agents_by_group[group])
        fields: dict[str, Any] = {}
        if data["assignee_id"] is None:
            fields.update(assignee_id=agent, group_id=group)
        roll, status = rng.random(), data["status"]
        if status == "hold":
            if roll < 0.5:
                fields["comment"] = {"body": rng.choice(INTERNAL_NOTES), "public": False}
            else:
                fields.update(status="open", comment={"body": rng.choice(AGENT_REPLIES), "public": True})
        elif status == "pending":
            if roll < 0.55:
                fields.update(status="solved", comment={"body": rng.choice(SOLVE_REPLIES), "public": True})
            else:
                fields["comment"] = {"body": rng.choice(AGENT_FOLLOW_UPS), "public": True}
        elif roll < 0.07 and group in (GROUP_L1, GROUP_L2):
            fields.update(
                comment={"body": rng.choice(ENGINEERING_NOTES), "public": False},
                additional_tags=[TAG_ENGINEERING],
                status="open",
            )
            if rng.random() < 0.5:
                fields["group_id"] = GROUP_L3
        elif roll < 0.10:
            fields.update(
                comment={"body": rng.choice(VENDOR_NOTES), "public": False},
                additional_tags=[TAG_VENDOR],
                status="hold",
            )
            if rng.random() < 0.4:
                fields["group_id"] = GROUP_L4
        elif roll < 0.18:
            fields.update(comment={"body": rng.choice(INTERNAL_NOTES), "public": False}, status="open")
        elif roll < 0.30:
            fields.update(status="solved", comment={"body": rng.choice(SOLVE_REPLIES), "public": True})
        else:
            fields.update(
                status="pending" if rng.random() < 0.65 else "open",
                comment={"body": rng.choice(AGENT_REPLIES), "public": True},
            )
        self._apply(state, at, agent, fields, "web")

    def _customer_action(self, state: _TicketState, at: datetime, rng: random.Random) -> None:
        data = state.data
        status = data["status"]
        fields: dict[str, Any] = {}
        if status == "pending":
            body = rng.choice(CUSTOMER_ANSWERS).format(n=rng.randrange(10**7, 10**8))
        elif status == "solved":
            body = rng.choice(CUSTOMER_REOPENS)
        else:
            body = rng.choice(CUSTOMER_NUDGES)
            age_days = (at - state.created).total_seconds() / 86400
            if rng.random() < min(0.25, 0.04 + 0.03 * age_days):
                options = [tag for tag in SIGNAL_MESSAGES if tag not in data["tags"]]
                if options:
                    tag = rng.choice(options)
                    body = rng.choice(SIGNAL_MESSAGES[tag])
                    fields["additional_tags"] = [tag]
        fields["comment"] = {"body": body, "public": True}
        self._apply(state, at, data["requester_id"], fields, data["via"]["channel"])


_VIA_LABELS = {"email": "Mail", "web": "Web form", "api": "Web service", "rule": "Rule"}
"""How ticket events name the channel (`via`), as the export shows it."""


def _window_left(now: datetime) -> int:
    """Whole seconds until the current clock minute ends: waiting that long always reaches the next window."""
    return 60 - _epoch(now) % 60


def rate_limited_response(retry_after: int) -> Response:
    """The 429 Zendesk answers when over the limit: the wait in `Retry-After` seconds, a short HTML body."""
    return Response(
        429,
        "<html><body><h1>429 Too Many Requests</h1></body></html>",
        {"Retry-After": str(max(1, retry_after))},
        "text/html; charset=utf-8",
    )


def _event_value(value: Any) -> Any:
    """Audit events carry ids as strings and tags as lists, as Zendesk's audits do."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, str)):
        return value
    return str(value)

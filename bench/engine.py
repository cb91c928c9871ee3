"""Pipeline throughput: normalize + evaluate + plan over synthetic raw platform payloads on one core.

Prints one figure a line (`name value unit`) so runs can be compared. The records are built here from a seeded
RNG in the shapes the connectors hand to the mappings (`connectors.base.RawRecord`):
- Zendesk (most of them): incremental-export ticket objects with the `metric_set` and `organization`
  sideloads in `related`, as connectors/zendesk.py attaches them (one organization object shared by the tickets
  of that organization, as on an export page);
- Jira Service Management: `/rest/api/3/search/jql` issues (status objects, priority objects, ADF description,
  select options, SLA fields with completed and ongoing cycles);
- ServiceNow: incident table rows (display values off: codes and sys_ids) with `task_sla` rows in `related`.
Priorities (including none), statuses, tiers, tags and flags, ages, replies and organizations/segments vary.
Everything is evaluated against the default policy of config.example.toml and the default mappings.

Records are processed page by page, as the daemon does (generate a page untimed, then time normalize, evaluate
and plan of that page with `time.process_time`): memory stays flat and the garbage collector sees what a
running daemon sees. Two passes:
- backlog: the first sweep over tickets nobody has evaluated (many escalate, many handoff comments rendered);
- steady: the next cycle a minute later over the echo of those writes (tier moved, tags written, revision
  bumped), the daemon's normal case: most plans are empty.
The handoff note of a write-back that posts one is rendered when the write reads it (`Comment.deferred`): its
CPU is timed apart and printed per comment (`handoff_render`) and added in `with_handoff_render`, because it is
write-path cost (issue 14's write budget), not per polled ticket.
A warm-up pass runs first (calendar day tables, holiday years, CEL programs: what a running daemon has), then
the collector is set as the daemon sets it after start-up (sync.py `_settle_collector`). Every pass is the best
of `--repeat` runs (other processes only ever make a run slower); each backlog run starts with the policy's
outcome memo empty, as a first start does.

Usage: python bench/engine.py [--tickets 100000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.base import RawRecord  # noqa: E402
from engine.escalate import evaluate  # noqa: E402
from engine.model import EscalationHistory, Tier  # noqa: E402
from engine.plan import plan  # noqa: E402
from engine.policy import Policy, load_policy  # noqa: E402
from mappings import NormalizeError, PlatformMapping, load_mapping  # noqa: E402
from sync import _settle_collector as settle_collector  # noqa: E402

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
INSTANCE = "bench"
SHARES = (("zendesk", 0.8, 1000), ("jsm", 0.1, 100), ("servicenow", 0.1, 500))
"""Platform, share of the tickets, page size (Zendesk export pages hold up to 1000, JSM search 100)."""

ZD_GROUPS = {Tier.L1: 360000000101, Tier.L2: 360000000102, Tier.L3: 360000000103, Tier.L4: 360000000104}
ZD_TAGS = ("billing", "eu", "api", "login", "mobile", "checkout", "vip", "enterprise", "churn_risk", "social_media")
ZD_RARE_TAGS = ("bug_confirmed", "legal", "waiting_on_vendor", "customer_requested_escalation", "data_breach")
OUR_TAGS = ("esc_breached_resolution", "esc_at_risk_first_response", "esc_management", "esc_customer_update_due")
JSM_TIERS = {
    Tier.L1: ("L1 - Service Desk", "10300"),
    Tier.L2: ("L2 - Technical Support", "10301"),
    Tier.L3: ("L3 - Product Specialists", "10302"),
    Tier.L4: ("L4 - Engineering", "10303"),
}
JSM_STATUSES = (
    ("Open", "new"),
    ("In Progress", "indeterminate"),
    ("In Progress", "indeterminate"),
    ("Escalated", "indeterminate"),
    ("Waiting for customer", "indeterminate"),
    ("Waiting for vendor", "indeterminate"),
    ("Resolved", "done"),
)
SN_GROUPS = {
    Tier.L1: "bdd640fb06671ad11c80317fa3b1799d",
    Tier.L2: "23b8c1e9392456de3eb13b9046685257",
    Tier.L3: "bd9c66b3ad3c2d6d1a3d1fa7bc8960a9",
    Tier.L4: "972a846916419f828b9d2434e465e150",
}
SN_COMPANIES = (
    "b74d0fb132e706298fadc1a606cb0fb3",
    "6b65a6a48b8148f6b38a088ca65ed389",
    "0e1c2d3b4a5968778695a4b3c2d1e0f1",
    "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "",
)
EASTERN = timezone(timedelta(hours=-5))


# -- payload generation (never timed) ---------------------------------------------------------------------------


def _zulu(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _jira(moment: datetime) -> str:
    local = moment.astimezone(EASTERN)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}-0500"


def _snow(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _organizations(rng: random.Random) -> list[dict[str, Any]]:
    """The sideloaded organizations, built once: an export page shares one object per organization."""
    orgs = []
    for number in range(60):
        segment = rng.choice(["Premium", "Enterprise", "business", "standard", "", None])
        orgs.append(
            {
                "url": f"https://acme.zendesk.com/api/v2/organizations/{360011110000 + number}.json",
                "id": 360011110000 + number,
                "name": f"Customer {number} Ltd",
                "shared_tickets": False,
                "shared_comments": False,
                "external_id": None,
                "created_at": "2024-02-01T12:00:00Z",
                "updated_at": "2026-10-02T09:30:00Z",
                "domain_names": [f"customer{number}.example"],
                "details": "",
                "notes": "",
                "group_id": None,
                "tags": ["enterprise"] if segment in ("Premium", "Enterprise") else [],
                "organization_fields": {
                    "segment": segment,
                    "churn_risk": rng.random() < 0.05,
                    "annual_revenue": rng.choice([None, 0.0, 80000.0, 1250000.0]),
                },
            }
        )
    return orgs


def _ticket_times(rng: random.Random, now: datetime) -> tuple[datetime, datetime, datetime | None]:
    created = now - timedelta(minutes=rng.randint(5, 60 * 24 * 21), seconds=rng.randint(0, 59))
    updated = max(created, now - timedelta(minutes=rng.randint(1, 600)))
    first_reply = created + (updated - created) * rng.random() * 0.5 if rng.random() < 0.7 else None
    return created, updated, first_reply


def zendesk_record(number: int, rng: random.Random, now: datetime, orgs: list[dict[str, Any]]) -> RawRecord:
    created, updated, first_reply = _ticket_times(rng, now)
    status = rng.choice(["new", "open", "open", "open", "pending", "hold", "solved", "solved", "closed"])
    ticket_id = 100000 + number
    tier = rng.choice([None, Tier.L1, Tier.L1, Tier.L1, Tier.L2, Tier.L3, Tier.L4])
    group = ZD_GROUPS[tier] if tier else rng.choice([None, 360000000199])
    tags = set(rng.sample(ZD_TAGS, rng.randint(0, 3)))
    if rng.random() < 0.08:
        tags.add(rng.choice(ZD_RARE_TAGS))
    if rng.random() < 0.3:
        tags.add(rng.choice(OUR_TAGS))
    severity = rng.choice([None] * 8 + ["sev_1", "sev_2", "sev_3", ""])
    org = rng.choice(orgs) if rng.random() < 0.85 else None
    fields = [
        {"id": 360000000201, "value": rng.random() < 0.08},
        {"id": 360020000001, "value": rng.choice([None, None, None, "15000.00", "75000.50"])},
        {"id": 360020000002, "value": rng.choice([None, None, "1", "12", "240"])},
        {"id": 360020000004, "value": severity},
        {"id": 360000000203, "value": rng.choice([None, "text", "other"])},
    ]
    solved = updated if status in ("solved", "closed") else None
    description = "\n".join(
        rng.choice(["It fails since this morning.", "Error 502 on checkout.", "", "Please help, this blocks us."])
        for _ in range(rng.randint(1, 8))
    )
    data: dict[str, Any] = {
        "url": f"https://acme.zendesk.com/api/v2/tickets/{ticket_id}.json",
        "id": ticket_id,
        "external_id": None,
        "via": {"channel": "email", "source": {"from": {}, "to": {}, "rel": None}},
        "created_at": _zulu(created),
        "updated_at": _zulu(updated),
        "generated_timestamp": int(updated.timestamp()),
        "type": rng.choice(["incident", "problem", "question", None]),
        "subject": f"Synthetic ticket {ticket_id}",
        "raw_subject": f"Synthetic ticket {ticket_id}",
        "description": description,
        "priority": rng.choice(["urgent", "high", "normal", "normal", "low", None, None, None]),
        "status": status,
        "recipient": "support@acme.zendesk.com",
        "requester_id": 383838000 + rng.randint(0, 5000),
        "submitter_id": 383838000 + rng.randint(0, 5000),
        "assignee_id": rng.choice([None, 370000111, 370000112]),
        "organization_id": org["id"] if org else None,
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
        "custom_fields": fields,
        "satisfaction_rating": None,
        "sharing_agreement_ids": [],
        "custom_status_id": 360000555001,
        "fields": fields,
        "followup_ids": [],
        "ticket_form_id": 360000444001,
        "brand_id": 360000333001,
        "allow_channelback": False,
        "allow_attachments": True,
        "from_messaging_channel": False,
    }
    reply_minutes = int((first_reply - created).total_seconds() // 60) if first_reply else None
    status_since = created + (updated - created) * rng.random()
    metric_set: dict[str, Any] = {
        "url": f"https://acme.zendesk.com/api/v2/ticket_metrics/{360099990000 + number}.json",
        "id": 360099990000 + number,
        "ticket_id": ticket_id,
        "created_at": _zulu(created),
        "updated_at": _zulu(updated),
        "group_stations": rng.choice([1, 1, 2, 3]),
        "assignee_stations": rng.choice([0, 1, 2]),
        "reopens": rng.choice([0, 0, 0, 1, 3]),
        "replies": rng.choice([0, 1, 1, 2, 5]) if first_reply else 0,
        "assignee_updated_at": _zulu(updated) if rng.random() < 0.6 else None,
        "requester_updated_at": _zulu(created),
        "status_updated_at": _zulu(status_since),
        "initially_assigned_at": _zulu(created + timedelta(minutes=3)) if group else None,
        "assigned_at": _zulu(created + (updated - created) * rng.random() * 0.5) if group else None,
        "solved_at": _zulu(solved) if solved else None,
        "latest_comment_added_at": _zulu(updated),
        "custom_status_updated_at": _zulu(status_since),
        "reply_time_in_minutes": {"calendar": reply_minutes, "business": reply_minutes},
        "first_resolution_time_in_minutes": {"calendar": None, "business": None},
        "full_resolution_time_in_minutes": {"calendar": None, "business": None},
        "agent_wait_time_in_minutes": {"calendar": None, "business": None},
        "requester_wait_time_in_minutes": {"calendar": None, "business": None},
        "on_hold_time_in_minutes": {"calendar": 0, "business": 0},
    }
    if first_reply and rng.random() < 0.5:
        seconds = int((first_reply - created).total_seconds())
        metric_set["reply_time_in_seconds"] = {"calendar": seconds}
    related: dict[str, Any] = {"metric_set": metric_set}
    if org is not None:
        related["organization"] = org
    return RawRecord(id=str(ticket_id), data=data, related=related)


def _jira_date(moment: datetime) -> dict[str, Any]:
    return {
        "iso8601": moment.astimezone(EASTERN).strftime("%Y-%m-%dT%H:%M:%S-0500"),
        "jira": _jira(moment),
        "friendly": "",
        "epochMillis": int(moment.timestamp() * 1000),
    }


def _jira_sla(
    sla_id: str, name: str, start: datetime, stop: datetime | None, goal: timedelta, now: datetime, paused: bool
) -> dict[str, Any]:
    goal_ms = int(goal.total_seconds() * 1000)
    end = stop or now
    elapsed = int((end - start).total_seconds() * 1000)
    cycle: dict[str, Any] = {
        "startTime": _jira_date(start),
        "breachTime": _jira_date(start + goal),
        "breached": elapsed > goal_ms,
        "goalDuration": {"millis": goal_ms, "friendly": ""},
        "elapsedTime": {"millis": elapsed, "friendly": ""},
        "remainingTime": {"millis": goal_ms - elapsed, "friendly": ""},
    }
    sla: dict[str, Any] = {"id": sla_id, "name": name, "_links": {}, "completedCycles": []}
    if stop is not None:
        sla["completedCycles"].append({**cycle, "stopTime": _jira_date(stop)})
    else:
        sla["ongoingCycle"] = {**cycle, "paused": paused, "withinCalendarHours": True}
    sla["slaDisplayFormat"] = "NEW_SLA_FORMAT"
    return sla


def jsm_record(number: int, rng: random.Random, now: datetime) -> RawRecord:
    created, updated, first_reply = _ticket_times(rng, now)
    name, category = rng.choice(JSM_STATUSES)
    issue_id = str(20000 + number)
    key = f"SUP-{20000 + number}"
    tier = rng.choice([None, Tier.L1, Tier.L1, Tier.L2, Tier.L3, Tier.L4])
    done = category == "done"
    labels = set(rng.sample(["api", "billing", "churn-risk", "security", "vendor-dependency", "eu"], rng.randint(0, 2)))
    if rng.random() < 0.3:
        labels.add(rng.choice(OUR_TAGS))
    fields: dict[str, Any] = {
        "summary": f"Synthetic issue {key}",
        "status": {"name": name, "id": "1", "statusCategory": {"id": 4, "key": category, "name": category}},
        "priority": rng.choice([None, {"name": "Highest"}, {"name": "High"}, {"name": "Medium"}, {"name": "Low"}]),
        "created": _jira(created),
        "updated": _jira(updated),
        "resolutiondate": _jira(updated) if done and rng.random() < 0.8 else None,
        "statuscategorychangedate": _jira(created + (updated - created) * rng.random()),
        "description": {
            "version": 1,
            "type": "doc",
            "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "Checkout fails for EU tenants."}]},
                {"type": "paragraph", "content": [{"type": "text", "text": "Please check.", "marks": []}]},
            ],
        },
        "reporter": {"accountId": f"qm:{number:08x}", "displayName": "Customer", "accountType": "customer"},
        "labels": sorted(labels),
        "customfield_10200": {"self": "", "value": JSM_TIERS[tier][0], "id": JSM_TIERS[tier][1]} if tier else None,
        "customfield_10030": _jira_sla(
            "2", "Time to first response", created, first_reply, timedelta(hours=1), now, name.startswith("Waiting")
        ),
        "customfield_10031": _jira_sla(
            "1", "Time to resolution", created, updated if done else None, timedelta(hours=8), now, False
        ),
        "customfield_10100": rng.choice([None, {"value": "Enterprise", "id": "10400"}, {"value": "Standard"}]),
        "customfield_10002": [{"id": "1", "name": f"Customer {rng.randint(0, 40)}", "_links": {}}],
        "customfield_10110": rng.choice([None, None, {"value": "Yes", "id": "10500"}, {"value": "No", "id": "10501"}]),
        "customfield_10120": rng.choice([None, 250000.0, 0.0]),
        "customfield_10121": rng.choice([None, 0, 3, 40]),
    }
    data = {"expand": "", "id": issue_id, "self": f"https://acme.atlassian.net/rest/api/3/issue/{issue_id}"}
    data["key"] = key
    data["fields"] = fields
    return RawRecord(id=issue_id, data=data)


def servicenow_record(number: int, rng: random.Random, now: datetime) -> RawRecord:
    created, updated, _ = _ticket_times(rng, now)
    sys_id = f"{number:032x}"
    state = rng.choice(["1", "2", "2", "2", "3", "6", "7"])
    tier = rng.choice([None, Tier.L1, Tier.L1, Tier.L2, Tier.L3, Tier.L4])
    tags = [rng.choice(["customer_escalation", "public_complaint"])] if rng.random() < 0.1 else []
    if rng.random() < 0.3:
        tags.append(rng.choice(OUR_TAGS))
    terminal = state in ("6", "7")
    row = {
        "sys_id": sys_id,
        "sys_updated_on": _snow(updated),
        "sys_mod_count": str(rng.randint(0, 20)),
        "number": f"INC{10000 + number:07d}",
        "short_description": f"Synthetic incident {number}",
        "description": "Since 08:00 UTC every checkout in the EU region fails with HTTP 500.",
        "state": state,
        "priority": rng.choice(["1", "2", "3", "3", "4", "5", ""]),
        "opened_at": _snow(created),
        "resolved_at": _snow(updated) if terminal else "",
        "closed_at": _snow(updated) if state == "7" else "",
        "caller_id": f"{rng.randint(0, 1 << 64):032x}",
        "company": rng.choice(SN_COMPANIES),
        "assignment_group": SN_GROUPS[tier] if tier else "",
        "u_escalation_tags": ",".join(tags),
        "u_churn_risk": rng.choice(["false", "false", "false", "true"]),
        "u_security_legal": "false",
        "u_engineering_required": rng.choice(["false", "false", "true"]),
        "hold_reason": rng.choice(["", "", "1", "4"]) if state == "3" else "",
        "u_affected_customers": rng.choice(["0", "0", "3", "40"]),
        "child_incidents": rng.choice(["0", "0", "1", "4"]),
        "reopen_count": rng.choice(["0", "0", "1"]),
    }
    slas = []
    if rng.random() < 0.6:
        breached = rng.random() < 0.3
        slas.append(
            {
                "sys_id": f"{number + (1 << 100):032x}",
                "task": sys_id,
                "sla.name": "P1 resolution (4 hour)",
                "stage": rng.choice(["in_progress", "in_progress", "paused", "completed"]),
                "has_breached": "true" if breached else "false",
                "planned_end_time": _snow(created + timedelta(hours=4)),
                "business_time_left": "1970-01-01 00:00:00" if breached else "1970-01-01 02:10:00",
                "time_left": "1970-01-01 00:00:00" if breached else "1970-01-01 02:10:00",
                "percentage": "104.48" if breached else "45.20",
                "business_percentage": "104.48" if breached else "45.20",
                "active": "true",
            }
        )
    related = {"instance_url": "https://acme.service-now.com", "table": "incident", "task_sla": slas}
    return RawRecord(id=sys_id, data=row, related=related)


@dataclass(frozen=True)
class PageSpec:
    platform: str
    first: int
    count: int


Page = tuple[PageSpec, list[RawRecord]]


def page_specs(total: int) -> list[PageSpec]:
    """Pages of each platform, interleaved as the daemon's instances take turns."""
    per_platform: list[list[PageSpec]] = []
    for platform, share, size in SHARES:
        count = (
            round(total * share)
            if platform != SHARES[0][0]
            else total - sum(round(total * s) for _, s, _ in SHARES[1:])
        )
        per_platform.append([PageSpec(platform, start, min(size, count - start)) for start in range(0, count, size)])
    specs: list[PageSpec] = []
    while any(per_platform):
        for pages in per_platform:
            if pages:
                specs.append(pages.pop(0))
    return specs


def generate(spec: PageSpec, now: datetime, orgs: list[dict[str, Any]]) -> list[RawRecord]:
    rng = random.Random(f"{spec.platform}:{spec.first}")
    numbers = range(spec.first, spec.first + spec.count)
    if spec.platform == "zendesk":
        return [zendesk_record(n, rng, now, orgs) for n in numbers]
    if spec.platform == "jsm":
        return [jsm_record(n, rng, now) for n in numbers]
    return [servicenow_record(n, rng, now) for n in numbers]


# -- the echo of our writes (what the next poll returns; never timed) -------------------------------------------


Echo = tuple[str | None, tuple[str, ...], tuple[str, ...]]
"""What a write-back changed: tier (value), tags added, tags removed. Plain tuples of strings on purpose: the
benchmark's bookkeeping for 100,000 tickets must not weigh on the garbage collector (the daemon keeps it in
its state store, not in memory)."""

Row = tuple[tuple[tuple[str, datetime], ...], datetime | None]
"""The state store's row of a ticket: tier entries we made (tier value, when), management track start."""


class Store:
    """Plays the daemon's state store: what it remembers per ticket, handed to the engine as EscalationHistory."""

    NONE = EscalationHistory()

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Row]] = {platform: {} for platform, _, _ in SHARES}

    def copy(self) -> Store:
        store = Store()
        store.rows = {platform: dict(rows) for platform, rows in self.rows.items()}
        return store

    def history(self, platform: str, ticket_id: str) -> EscalationHistory:
        row = self.rows[platform].get(ticket_id)
        if row is None:
            return self.NONE
        entries, started = row
        return EscalationHistory(
            tier_entries=tuple((Tier(tier), at) for tier, at in entries), management_started_at=started
        )

    def record(self, platform: str, ticket_id: str, tier: Tier | None, starts: bool, at: datetime) -> None:
        """A write-back went out at `at`: it moved the ticket to `tier` and/or started the management track."""
        entries, started = self.rows[platform].get(ticket_id, ((), None))
        if tier is not None:
            entries += ((tier.value, at),)
        self.rows[platform][ticket_id] = (entries, at if starts and started is None else started)


def apply_echo(platform: str, mapping: Any, record: RawRecord, echo: Echo, at: datetime) -> None:
    """Change the freshly generated raw record as the platform would show it after our write-back."""
    data = record.data
    tier = Tier(echo[0]) if echo[0] else None
    add, remove = set(echo[1]), set(echo[2])
    if platform == "zendesk":
        data["tags"] = sorted((set(data["tags"]) | add) - remove)
        data["updated_at"] = _zulu(at)
        if tier is not None:
            data.update(mapping.tier_fields(tier))
            metrics = record.related["metric_set"]
            metrics["group_stations"] += 1
            metrics["assigned_at"] = _zulu(at)
    elif platform == "jsm":
        fields = data["fields"]
        fields["labels"] = sorted((set(fields["labels"]) | add) - remove)
        fields["updated"] = _jira(at)
        if tier is not None:
            fields.update(mapping.tier_fields(tier))
    else:
        tags = set(mapping.split_tags(data["u_escalation_tags"]))
        data["u_escalation_tags"] = mapping.join_tags(sorted((tags | add) - remove))
        data["sys_updated_on"] = _snow(at)
        data["sys_mod_count"] = str(int(data["sys_mod_count"]) + 1)
        if tier is not None:
            data.update(mapping.tier_fields(tier))


# -- the timed pipeline -----------------------------------------------------------------------------------------


@dataclass
class Result:
    normalize: dict[str, float] = field(default_factory=dict)
    evaluate: dict[str, float] = field(default_factory=dict)
    plan: dict[str, float] = field(default_factory=dict)
    tickets: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    writebacks: int = 0
    comments: int = 0
    escalations: int = 0
    render: float = 0.0
    """CPU seconds spent rendering the handoff notes the write-backs post: the engine defers the text to its
    first read (`Comment.deferred`), which is the write, so it counts on the write path, printed apart."""

    def seconds(self, platform: str | None = None) -> float:
        stages = (self.normalize, self.evaluate, self.plan)
        if platform is None:
            return sum(sum(stage.values()) for stage in stages)
        return sum(stage.get(platform, 0.0) for stage in stages)


def run(
    policy: Policy,
    mappings: dict[str, PlatformMapping],
    pages: Callable[[], Iterator[Page]],
    now: datetime,
    store: Store,
    echoes: dict[str, Echo] | None = None,
) -> Result:
    """Normalize, evaluate and plan every page; CPU seconds per stage and platform.

    `store` plays the state store (management track start, tier entries we made), read as the cycle does it
    (inside the evaluate figure); `echoes`, when given, is filled with what each ticket's write-back changes,
    for the next cycle's payloads.
    """
    result = Result()
    clock = time.process_time
    for spec, records in pages():
        platform = spec.platform
        mapping = mappings[platform]
        scheme = mapping.tags
        started = clock()
        tickets = []
        for record in records:
            try:
                tickets.append(mapping.normalize(record, INSTANCE))
            except NormalizeError:
                result.quarantined += 1
        normalized = clock()
        found = [store.history(platform, ticket.id) for ticket in tickets]
        decisions = [evaluate(ticket, policy, now, history) for ticket, history in zip(tickets, found, strict=True)]
        evaluated = clock()
        writebacks = [plan(decision, ticket, scheme) for decision, ticket in zip(decisions, tickets, strict=True)]
        planned = clock()
        for writeback in writebacks:
            if writeback.comment is not None:
                writeback.comment.body  # noqa: B018 - the write reads it: render it here, timed apart
        result.render += clock() - planned
        result.normalize[platform] = result.normalize.get(platform, 0.0) + normalized - started
        result.evaluate[platform] = result.evaluate.get(platform, 0.0) + evaluated - normalized
        result.plan[platform] = result.plan.get(platform, 0.0) + planned - evaluated
        result.tickets[platform] = result.tickets.get(platform, 0) + len(records)
        for ticket, history, decision, writeback in zip(tickets, found, decisions, writebacks, strict=True):
            result.escalations += decision.escalates
            # What the daemon's store records: the management track's start and the tier moves we made.
            starts = decision.management and history.management_started_at is None
            if starts or writeback.tier is not None:
                store.record(platform, ticket.id, writeback.tier, starts, now)
            if writeback.is_empty:
                continue
            result.writebacks += 1
            result.comments += writeback.comment is not None
            if echoes is not None:
                tier = writeback.tier.value if writeback.tier else None
                echoes[f"{platform}:{ticket.id}"] = (tier, tuple(writeback.add_tags), tuple(writeback.remove_tags))
    return result


def report(name: str, result: Result) -> None:
    total = sum(result.tickets.values())
    seconds = result.seconds()
    print(f"pipeline.{name}.tickets_per_second {total / seconds:.0f} tickets/s")
    for platform in result.tickets:
        count = result.tickets[platform]
        print(f"pipeline.{name}.{platform}.tickets_per_second {count / result.seconds(platform):.0f} tickets/s")
    for stage in ("normalize", "evaluate", "plan"):
        spent = sum(getattr(result, stage).values())
        print(f"pipeline.{name}.{stage}.microseconds_per_ticket {spent / total * 1e6:.1f} us")
        for platform, value in getattr(result, stage).items():
            per = value / result.tickets[platform] * 1e6
            print(f"pipeline.{name}.{stage}.{platform}.microseconds_per_ticket {per:.1f} us")
    print(f"pipeline.{name}.microseconds_per_ticket {seconds / total * 1e6:.1f} us")
    if result.comments:
        print(f"pipeline.{name}.handoff_render.microseconds_per_comment {result.render / result.comments * 1e6:.1f} us")
    with_render = (seconds + result.render) / total * 1e6
    print(f"pipeline.{name}.with_handoff_render.microseconds_per_ticket {with_render:.1f} us")
    print(f"pipeline.{name}.quarantined {result.quarantined} tickets")
    print(f"pipeline.{name}.writebacks_non_empty {result.writebacks} tickets")
    print(f"pipeline.{name}.comments {result.comments} tickets")
    print(f"pipeline.{name}.escalations {result.escalations} tickets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one steady pass; top functions to stderr")
    args = parser.parse_args()
    policy = load_policy(ROOT / "config.example.toml")
    mappings = {platform: load_mapping(platform) for platform, _, _ in SHARES}
    orgs = _organizations(random.Random(7))
    specs = page_specs(args.tickets)
    later = NOW + timedelta(minutes=1)

    def fresh() -> Iterator[Page]:
        for spec in specs:
            yield spec, generate(spec, NOW, orgs)

    def echoed(echoes: dict[str, Echo], chosen: list[PageSpec] = specs) -> Callable[[], Iterator[Page]]:
        def pages() -> Iterator[Page]:
            for spec in chosen:
                records = generate(spec, NOW, orgs)
                for record in records:
                    echo = echoes.get(f"{spec.platform}:{record.id}")
                    if echo is not None:
                        apply_echo(spec.platform, mappings[spec.platform], record, echo, NOW)
                yield spec, records

        return pages

    # Warm-up: calendar day tables, holiday years, compiled templates, as a running daemon has them.
    warm = specs[:4]
    run(policy, mappings, lambda: ((s, generate(s, NOW, orgs)) for s in warm), NOW, Store())
    # The collector as the daemon sets it once start-up is done (sync.py): what start-up built frozen out of
    # its sight, the young generation collected less often.
    settle_collector()
    # Backlog: the first cycle over tickets nobody evaluated yet; many are overdue somewhere. Every run gives
    # the same write-backs (the engine is deterministic); the last run's store and echoes are kept. Each run
    # starts with the policy's outcome memo empty, as a first start does (module-level tables stay warm).
    backlog: list[Result] = []
    for _ in range(args.repeat):
        store, echoes = Store(), dict[str, Echo]()
        policy = replace(policy, outcome_cache={})
        backlog.append(run(policy, mappings, fresh, NOW, store, echoes))
    report("backlog", min(backlog, key=lambda result: result.seconds()))
    # Steady state: the next cycle a minute later sees the echo of those writes (what a running daemon sees).
    steady = [run(policy, mappings, echoed(echoes), later, store.copy()) for _ in range(args.repeat)]
    report("steady", min(steady, key=lambda result: result.seconds()))
    print(f"pipeline.tickets {args.tickets} tickets")
    if args.profile:
        # Pages generated before profiling starts, so the profile shows the pipeline only.
        ready = list(echoed(echoes, specs[: max(1, len(specs) // 5)])())
        profiler = cProfile.Profile()
        profiler.enable()
        run(policy, mappings, lambda: iter(ready), later, store.copy())
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue(), file=sys.stderr)


if __name__ == "__main__":
    main()

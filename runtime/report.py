"""`sync.py report`: the escalation dashboard, from the state store's history alone (no platform is called).

Sources, read with read-only SQL of this module's own (the store's interface is for the daemon):
- the ``escalations`` table: when each ticket first entered each tier (``L2``..``L4``), the management track
  (``MGMT``) and, where the daemon records it, its resolution (``RESOLVED``, see `RESOLVED`);
- the intents ledger, done writes only: the tags written (breach and at-risk tags, by clock) and the handoff
  notes, whose "Escalated from X to Y" line gives the tier a ticket left and whose rule lines (``- name: reason``
  for each rule of the policy) say which rules fired.

What it shows: volume by tier and by path (L1→L2, L2→L3, L3→L4, management), escalations over time, the rules
that fired, re-escalation rate (escalated tickets that were escalated again), SLA breaches and at-risk warnings
per clock, top organizations and, once resolutions are recorded, resolution time and success rate by tier. Text
for the terminal (`render_text`) and one self-contained HTML page (`render_html`) drawn with Chart.js.

Why Chart.js: the most used charting library on npm (MIT, maintained, releases every few months), one 200 kB
file with no dependencies, canvas charts that need no server; it is vendored under runtime/assets/ (from the
npm package, version and checksum in `CHART_JS`) and inlined into the page, so the report opens offline and from
a mail attachment, with no CDN.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import sqlite3
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any, TextIO

from engine.model import TagScheme
from mappings import load_mapping
from runtime.config import AppConfig
from state import StoreError, open_store, redact_url, scrub
from state.sqlite import path_from_url

TIERS = ("L1", "L2", "L3", "L4")
MANAGEMENT = "MGMT"
RESOLVED = "RESOLVED"
_TRACK_MILESTONES = frozenset({"MGMT_END", "MGMT_PLAN"})
"""Rows of a management track's end and resolution plan (runtime/cycle.py): no escalation of their own."""
"""An ``escalations`` row with this tier records when the ticket was resolved. The daemon does not write it yet:
until it does, resolution time and success rate show as not recorded."""
CHART_JS = ("chart.umd.min.js", "4.6.1", "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2")
"""The vendored Chart.js: file under runtime/assets/, version, sha256 (checked before it is inlined)."""
_FROM_TO = re.compile(r"\bfrom (L[1-4])\b[^\n]*?\bto (L[1-4])\b")
"""The handoff note's "Escalated from L1 Front line to L3 Engineering" line (tier labels may follow the ids)."""
_SQLITE_TIME = "%Y-%m-%dT%H:%M:%S.%f+00:00"
"""state/sqlite.py's time format: fixed width, so text order is time order and `since` can be compared as text."""
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([hdw])$")


@dataclass(frozen=True)
class Entry:
    instance: str
    ticket_id: str
    tier: str
    customer: str
    at: datetime


@dataclass(frozen=True)
class Write:
    instance: str
    ticket_id: str
    at: datetime
    add_tags: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class History:
    entries: tuple[Entry, ...]
    writes: tuple[Write, ...]


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an ISO date or time (UTC unless it says otherwise), or a span back from now: 12h, 7d, 2w."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2)
        return now - timedelta(hours=amount * {"h": 1, "d": 24, "w": 168}[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use an ISO date or time (2026-11-01, 2026-11-01T08:00) or 12h, 7d, 2w"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- reading the store ---------------------------------------------------------------------------------------


def read_history(url: str, since: datetime | None = None) -> History:
    """Escalation rows (all: a path needs the tier before the window) and done writes since `since`."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return _read_sqlite(url, since)
    if scheme in ("postgresql", "postgres"):
        return _read_postgres(url, since)
    open_store(url).close()  # any other scheme is refused there, with the message every command gives
    raise StoreError(f"state URL {redact_url(url)!r}: cannot read a report from it")


_ENTRIES = "SELECT instance, ticket_id, tier, customer, at FROM escalations"
_WRITES = "SELECT instance, ticket_id, payload, created_at FROM intents WHERE state = 'done'"


def _read_sqlite(url: str, since: datetime | None) -> History:
    path = Path(path_from_url(url))
    if not path.is_file():
        raise StoreError(f"state store {redact_url(url)}: no such file (has the daemon run with this state URL?)")
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            entries = db.execute(_ENTRIES).fetchall()
            if since is None:
                writes = db.execute(_WRITES).fetchall()
            else:
                writes = db.execute(_WRITES + " AND created_at >= ?", (since.strftime(_SQLITE_TIME),)).fetchall()
    except sqlite3.Error as error:
        raise StoreError(f"state store {redact_url(url)}: reading the history failed: {error}") from error
    return _history(entries, writes, datetime.fromisoformat)


def _read_postgres(url: str, since: datetime | None) -> History:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
            entries = db.execute(_ENTRIES).fetchall()
            if since is None:
                writes = db.execute(_WRITES).fetchall()
            else:
                writes = db.execute(_WRITES + " AND created_at >= %s", (since,)).fetchall()
    except psycopg.Error as error:
        raise StoreError(
            f"state store {redact_url(url)}: reading the history failed: {scrub(str(error), url)}"
        ) from error
    return _history(entries, writes, lambda value: value.astimezone(UTC))


def _history(entries: Iterable[tuple[Any, ...]], writes: Iterable[tuple[Any, ...]], time: Any) -> History:
    parsed: list[Write] = []
    for instance, ticket_id, payload, created_at in writes:
        if instance.startswith("notify:"):
            continue  # a notification (runtime/notify.py), not a write to the platform
        try:
            data = json.loads(payload)
        except (TypeError, ValueError):
            continue  # not a write-back (another kind of ledger entry): nothing to report from it
        if not isinstance(data, dict):
            continue
        comment = data.get("comment") or {}
        note = comment.get("body", "") if isinstance(comment, dict) else ""
        tags = tuple(tag for tag in data.get("add_tags", ()) if isinstance(tag, str))
        parsed.append(Write(instance, ticket_id, time(created_at), tags, note))
    return History(
        entries=tuple(Entry(i, t, tier, customer, time(at)) for i, t, tier, customer, at in entries),
        writes=tuple(parsed),
    )


# -- computing -----------------------------------------------------------------------------------------------


@dataclass
class Report:
    since: datetime | None
    until: datetime
    first: datetime | None = None
    """The earliest escalation in the window (what "since the beginning" means)."""
    escalated_tickets: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)
    over_time: dict[str, dict[str, int]] = field(default_factory=dict)
    """Bucket label -> tier -> escalations (hours for a window under three days, else days)."""
    rules: dict[str, int] = field(default_factory=dict)
    rules_by_tier: dict[str, dict[str, int]] = field(default_factory=dict)
    re_escalated: int = 0
    sla: dict[str, dict[str, int]] = field(default_factory=dict)
    """Clock -> {"breached": tickets, "at_risk": tickets}."""
    tickets_written: int = 0
    organizations: list[tuple[str, int]] = field(default_factory=list)
    resolution_hours: dict[str, dict[str, float]] = field(default_factory=dict)
    """Tier resolved at -> {"tickets", "median", "p90"}; empty when no resolution is recorded."""
    success: dict[str, dict[str, int]] = field(default_factory=dict)
    """Tier escalated to -> {"resolved": tickets resolved at all, "there": resolved at that tier}."""
    notes: int = 0

    @property
    def re_escalation_rate(self) -> float | None:
        return self.re_escalated / self.escalated_tickets if self.escalated_tickets else None

    def as_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in vars(self).items()}
        data["since"] = self.since.isoformat() if self.since else None
        data["until"] = self.until.isoformat()
        data["first"] = self.first.isoformat() if self.first else None
        data["re_escalation_rate"] = self.re_escalation_rate
        data["organizations"] = [list(row) for row in self.organizations]
        return data


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def _tier_rank(tier: str) -> int:
    return TIERS.index(tier) if tier in TIERS else -1


def build_report(
    history: History,
    *,
    rule_names: Iterable[str],
    tag_schemes: Mapping[str, TagScheme] | None = None,
    since: datetime | None = None,
    until: datetime,
    top: int = 10,
) -> Report:
    """The dashboard's figures. `tag_schemes` per instance say which tags are breach / at-risk tags (an instance
    not named is read with every scheme given, and the default one)."""
    schemes = dict(tag_schemes or {})
    fallback = {*schemes.values(), TagScheme()}
    in_window = [e for e in history.entries if (since is None or e.at >= since) and e.at <= until]
    report = Report(since=since, until=until)
    by_ticket: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in sorted(history.entries, key=lambda e: (e.at, _tier_rank(e.tier))):
        by_ticket[(entry.instance, entry.ticket_id)].append(entry)
    notes = {(w.instance, w.ticket_id, w.at): w.note for w in history.writes if w.note}

    escalated: set[tuple[str, str]] = set()
    tiers: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    customers: Counter[str] = Counter()
    buckets: dict[str, Counter[str]] = defaultdict(Counter)
    moments = [e.at for e in in_window]
    report.first = min(moments, default=None)
    span = max(moments, default=until) - (since or min(moments, default=until))
    hourly = span < timedelta(days=3)
    for entry in in_window:
        event = entry.tier.partition("#")[0]  # MGMT#2: a later management track of the ticket
        if entry.tier == RESOLVED or event in _TRACK_MILESTONES:
            continue
        ticket = (entry.instance, entry.ticket_id)
        escalated.add(ticket)
        label = "management" if event == MANAGEMENT else entry.tier
        tiers[label] += 1
        bucket = entry.at.strftime("%Y-%m-%d %H:00" if hourly else "%Y-%m-%d")
        buckets[bucket][label] += 1
        if event == MANAGEMENT:
            paths["management"] += 1
            continue
        earlier = [e.tier for e in by_ticket[ticket] if e.at < entry.at and e.tier in TIERS]
        found = _FROM_TO.search(notes.get((entry.instance, entry.ticket_id, entry.at), ""))
        source = earlier[-1] if earlier else (found.group(1) if found else "?")
        source = "?" if source == entry.tier else source  # the platform showed the tier before we wrote it
        paths[f"{source}→{entry.tier}"] += 1
    for ticket in escalated:
        customer = next((e.customer for e in by_ticket[ticket] if e.customer), "")
        customers[customer or "(none)"] += 1
        if sum(1 for e in by_ticket[ticket] if e.tier in TIERS) > 1:
            report.re_escalated += 1
    report.escalated_tickets = len(escalated)
    report.by_tier = {tier: tiers[tier] for tier in (*TIERS[1:], "management") if tiers[tier]}
    report.paths = dict(paths.most_common())
    report.over_time = {key: dict(value) for key, value in sorted(buckets.items())}
    report.organizations = customers.most_common(top)

    names = set(rule_names)
    rules: Counter[str] = Counter()
    rules_by_tier: dict[str, Counter[str]] = defaultdict(Counter)
    breached: dict[str, set[tuple[str, str]]] = defaultdict(set)
    at_risk: dict[str, set[tuple[str, str]]] = defaultdict(set)
    written: set[tuple[str, str]] = set()
    for write in history.writes:
        if (since is not None and write.at < since) or write.at > until:
            continue
        ticket = (write.instance, write.ticket_id)
        written.add(ticket)
        for tag in write.add_tags:
            for scheme in [schemes[write.instance]] if write.instance in schemes else fallback:
                if (clock := scheme.clock_of(tag, "breached")) is not None:
                    breached[clock].add(ticket)
                elif (clock := scheme.clock_of(tag, "at_risk")) is not None:
                    at_risk[clock].add(ticket)
        if not write.note:
            continue
        report.notes += 1
        fired = {line[2:].split(":", 1)[0] for line in write.note.splitlines() if line.startswith("- ")} & names
        found = _FROM_TO.search(write.note)
        target = found.group(2) if found else "management"
        for rule in fired:
            rules[rule] += 1
            rules_by_tier[target][rule] += 1
    report.rules = dict(rules.most_common())
    report.rules_by_tier = {tier: dict(counts.most_common()) for tier, counts in sorted(rules_by_tier.items())}
    report.tickets_written = len(written)
    report.sla = {
        clock: {"breached": len(breached.get(clock, ())), "at_risk": len(at_risk.get(clock, ()))}
        for clock in sorted({*breached, *at_risk})
    }
    _resolutions(report, by_ticket, since, until)
    return report


def _resolutions(
    report: Report, by_ticket: Mapping[tuple[str, str], list[Entry]], since: datetime | None, until: datetime
) -> None:
    hours: dict[str, list[float]] = defaultdict(list)
    success: dict[str, Counter[str]] = defaultdict(Counter)
    for entries in by_ticket.values():
        resolved = next((e.at for e in entries if e.tier == RESOLVED), None)
        if resolved is None or (since is not None and resolved < since) or resolved > until:
            continue
        reached = [e for e in entries if e.tier in TIERS and e.at <= resolved]
        if not reached:
            continue
        final = max(reached, key=lambda e: _tier_rank(e.tier))
        hours[final.tier].append((resolved - final.at).total_seconds() / 3600)
        for entry in reached:
            success[entry.tier]["resolved"] += 1
            success[entry.tier]["there"] += entry.tier == final.tier
    report.resolution_hours = {
        tier: {"tickets": len(v), "median": statistics.median(v), "p90": _percentile(v, 0.9)}
        for tier, v in sorted(hours.items())
    }
    report.success = {tier: dict(counts) for tier, counts in sorted(success.items())}


# -- rendering -----------------------------------------------------------------------------------------------


def _window(report: Report) -> str:
    start = report.since or report.first
    if start is None:
        return f"nothing recorded up to {report.until.strftime('%Y-%m-%d %H:%M')} UTC"
    return f"{start.strftime('%Y-%m-%d %H:%M')} .. {report.until.strftime('%Y-%m-%d %H:%M')} UTC"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render_text(report: Report) -> str:
    lines = [f"escalation report, {_window(report)}", ""]
    lines.append(f"escalated tickets: {report.escalated_tickets}   handoff notes: {report.notes}")
    rate = report.re_escalation_rate
    lines.append(
        f"re-escalated: {report.re_escalated} ({_pct(report.re_escalated, report.escalated_tickets)}: escalated "
        "again after their first escalation)"
        if rate is not None
        else "re-escalated: -"
    )

    def table(title: str, rows: Iterable[tuple[str, object]], empty: str = "none") -> None:
        rows = list(rows)
        lines.extend(["", title])
        width = max((len(str(name)) for name, _ in rows), default=0)
        lines.extend(f"  {name!s:{width}}  {value}" for name, value in rows)
        if not rows:
            lines.append(f"  {empty}")

    table("escalations by tier (tickets entering it)", report.by_tier.items())
    table("paths (? = the tier before was not recorded)", report.paths.items())
    table("rules that fired (handoff notes)", report.rules.items(), "no handoff note in the window")
    sla_rows = [
        (clock, f"breached {c['breached']} ({_pct(c['breached'], report.tickets_written)}), at risk {c['at_risk']}")
        for clock, c in report.sla.items()
    ]
    table(f"SLA per clock (of {report.tickets_written} tickets written to)", sla_rows, "no breach or at-risk tag")
    table("top organizations (escalated tickets)", report.organizations)
    if report.resolution_hours:
        table(
            "resolution time by tier resolved at (hours)",
            (
                (tier, f"median {v['median']:.1f}, p90 {v['p90']:.1f} ({v['tickets']:.0f} tickets)")
                for tier, v in report.resolution_hours.items()
            ),
        )
        table(
            "success rate (resolved at the tier escalated to)",
            ((tier, f"{_pct(c['there'], c['resolved'])} of {c['resolved']}") for tier, c in report.success.items()),
        )
    else:
        lines.extend(["", "resolution time and success rate: not recorded (the store has no resolutions yet)"])
    return "\n".join(lines) + "\n"


def chart_js() -> str:
    """The vendored Chart.js, checked against its recorded checksum: a damaged copy fails loudly, not blankly."""
    name, version, digest = CHART_JS
    data = files("runtime").joinpath("assets", name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"runtime/assets/{name} is not Chart.js {version} (checksum differs)")
    return data.decode("utf-8")


_CHARTS = """
const data = JSON.parse(document.getElementById("report-data").textContent);
const palette = ["#2563eb", "#f59e0b", "#dc2626", "#7c3aed", "#059669", "#db2777", "#0891b2", "#65a30d"];
const made = [];
function chart(id, type, labels, datasets, options = {}) {
  const canvas = document.getElementById(id);
  if (!canvas || !labels.length) { if (canvas) canvas.closest("section").classList.add("empty"); return; }
  made.push(new Chart(canvas, {type, data: {labels, datasets}, options: Object.assign(
    {animation: false, responsive: false, plugins: {legend: {display: datasets.length > 1}}}, options)}));
}
const one = (obj, label) => [{label, data: Object.values(obj), backgroundColor: palette}];
chart("tiers", "bar", Object.keys(data.by_tier), one(data.by_tier, "tickets"));
const every = {y: {ticks: {autoSkip: false}}};
chart("paths", "bar", Object.keys(data.paths), one(data.paths, "escalations"), {indexAxis: "y", scales: every});
const buckets = Object.keys(data.over_time);
const series = [...new Set(buckets.flatMap(b => Object.keys(data.over_time[b])))].sort();
chart("time", "bar", buckets, series.map((tier, i) => ({label: tier, backgroundColor: palette[i % palette.length],
  data: buckets.map(b => data.over_time[b][tier] || 0)})), {scales: {x: {stacked: true}, y: {stacked: true}}});
chart("rules", "bar", Object.keys(data.rules), one(data.rules, "notes"), {indexAxis: "y", scales: every});
const clocks = Object.keys(data.sla);
chart("sla", "bar", clocks, [
  {label: "breached", backgroundColor: "#dc2626", data: clocks.map(c => data.sla[c].breached)},
  {label: "at risk", backgroundColor: "#f59e0b", data: clocks.map(c => data.sla[c].at_risk)}]);
chart("orgs", "bar", data.organizations.map(r => r[0]), [{label: "escalated tickets",
  data: data.organizations.map(r => r[1]), backgroundColor: palette[0]}], {indexAxis: "y", scales: every});
const resolved = Object.keys(data.resolution_hours);
chart("resolution", "bar", resolved, [
  {label: "median hours", backgroundColor: palette[0], data: resolved.map(t => data.resolution_hours[t].median)},
  {label: "p90 hours", backgroundColor: palette[1], data: resolved.map(t => data.resolution_hours[t].p90)}]);
// Mark what was drawn, for the browser test and for anyone checking a page that looks empty.
for (const c of made) {
  const px = c.ctx.getImageData(0, 0, c.canvas.width, c.canvas.height).data;
  let painted = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i]) painted++;
  c.canvas.dataset.painted = painted;
}
document.body.dataset.charts = made.length;
"""

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111;background:#fff}
h1{font-size:20px;margin:0 0 4px}.sub{color:#555;margin:0 0 16px}
.grid{display:flex;flex-wrap:wrap;gap:16px}section{border:1px solid #ddd;border-radius:6px;padding:12px}
section.empty canvas{display:none}section.empty::after{content:"no data in this window";color:#777}
h2{font-size:15px;margin:0 0 8px}.kpi{display:flex;gap:24px;margin-bottom:16px}.kpi b{font-size:22px;display:block}
pre{background:#f6f6f6;padding:12px;border-radius:6px;overflow:auto}
"""

_SECTIONS = (
    ("tiers", "Escalations by tier"),
    ("paths", "Paths"),
    ("time", "Escalations over time"),
    ("rules", "Rules that fired"),
    ("sla", "SLA breaches and at-risk warnings per clock"),
    ("orgs", "Top organizations"),
    ("resolution", "Resolution time by tier (hours)"),
)


def render_html(report: Report) -> str:
    data = json.dumps(report.as_dict(), default=str).replace("</", "<\\/")
    rate = report.re_escalation_rate
    kpis = [
        ("escalated tickets", str(report.escalated_tickets)),
        ("handoff notes", str(report.notes)),
        ("re-escalation rate", f"{100 * rate:.0f}%" if rate is not None else "-"),
        ("tickets written to", str(report.tickets_written)),
    ]
    sections = "".join(
        f'<section><h2>{html.escape(title)}</h2><canvas id="{name}" width="520" height="300"></canvas></section>'
        for name, title in _SECTIONS
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>escalation-sync report</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Escalation report</h1><p class=sub>{html.escape(_window(report))}</p>"
        '<div class="kpi">'
        + "".join(f"<div><b>{html.escape(v)}</b>{html.escape(k)}</div>" for k, v in kpis)
        + f'</div><div class="grid">{sections}</div>'
        f"<h2>As text</h2><pre>{html.escape(render_text(report))}</pre>"
        f'<script id="report-data" type="application/json">{data}</script>'
        f"<script>{chart_js()}</script><script>{_CHARTS}</script></body></html>"
    )


# -- the command ---------------------------------------------------------------------------------------------


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--since", help="from this ISO date/time, or this far back: 12h, 7d, 2w (default: everything)")
    sub.add_argument("--html", metavar="FILE", help="also write the dashboard as one self-contained HTML page")
    sub.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    sub.add_argument("--top", type=int, default=10, help="organizations listed (default 10)")


def run(args: argparse.Namespace, config: AppConfig, now: datetime, out: TextIO) -> int:
    """`sync.py report`: read the store named by the config, print the figures, write the page if asked."""
    try:
        since = parse_since(args.since, now) if args.since else None
    except ValueError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    schemes = {
        section.name: load_mapping(section.platform, config.mapping_path(section)).tags for section in config.instances
    }
    history = read_history(config.state_url, since)
    report = build_report(
        history,
        rule_names=[rule.name for rule in config.policy.rules],
        tag_schemes=schemes,
        since=since,
        until=now,
        top=args.top,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str), file=out)
    else:
        out.write(render_text(report))
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0

"""The internal handoff comment posted when a ticket escalates (tier or management track).

It follows the handoff form: ticket, priority, escalated from / to and when, SLA remaining per clock, the
customer's description (first lines), impact, the rules that fired and why, and what the receiving side must do
by when. The text comes from the policy's editable template (string.Template placeholders). Anything the data
cannot fill is left out rather than invented: a template line whose placeholder would be empty is dropped, and
so is a label line ending in ":" that would then introduce nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from string import Template

from engine.calendar import format_duration
from engine.model import Clock, ClockState, Comment, RuleOutcome, Ticket, Tier
from engine.policy import Policy

_PLACEHOLDER = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


@dataclass(frozen=True)
class HandoffContext:
    ticket: Ticket
    policy: Policy
    now: datetime
    current: Tier
    target: Tier
    management: bool
    management_start: datetime
    clocks: tuple[Clock, ...]
    fired: tuple[RuleOutcome, ...]
    key: str


def _time(moment: datetime, policy: Policy) -> str:
    local = moment.astimezone(policy.handoff_zone)
    # Spelled out rather than strftime: this runs several times per comment and strftime is slow.
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d} {local.hour:02d}:{local.minute:02d} {local.tzname()}"


def _clock_line(clock: Clock, policy: Policy) -> str:
    if clock.state is ClockState.MET:
        late = f", {format_duration(-clock.remaining)} late" if clock.breached_at else ""
        return f"- {clock.name}: met{late}"
    if clock.state is ClockState.BREACHED:
        overdue = format_duration(-clock.remaining)
        due = f" (was due {_time(clock.due_at, policy)})" if clock.due_at else ""
        return f"- {clock.name}: BREACHED, overdue by {overdue}{due}"
    if clock.state is ClockState.UNKNOWN:
        return f"- {clock.name}: unknown (the platform's history for it cannot be read)"
    due = f", due {_time(clock.due_at, policy)}" if clock.due_at else ""
    state = {ClockState.AT_RISK: " (at risk)", ClockState.PAUSED: " (paused)"}.get(clock.state, "")
    return (
        f"- {clock.name}: {format_duration(clock.remaining)} remaining of {format_duration(clock.target)}{due}{state}"
    )


def _description(ticket: Ticket, lines: int) -> str:
    kept = [line.rstrip() for line in ticket.description.strip().splitlines() if line.strip()]
    text = "\n".join(kept[:lines])
    return text + ("\n[...]" if len(kept) > lines else "") if text else ""


def _impact(ticket: Ticket) -> str:
    flags = ticket.flags
    parts = []
    if ticket.segment:
        parts.append(f"{ticket.segment} customer" + (f" ({ticket.organization})" if ticket.organization else ""))
    if flags.affected_customers:
        parts.append(f"{flags.affected_customers} customers affected")
    if flags.linked_incidents:
        parts.append(f"{flags.linked_incidents} linked incidents")
    if flags.revenue_at_risk:
        parts.append(f"revenue at risk {flags.revenue_at_risk:,.0f}")
    for name, label in (
        ("security_legal", "security/legal exposure"),
        ("churn_threat", "churn threat"),
        ("public_complaint", "public complaint"),
    ):
        if getattr(flags, name):
            parts.append(label)
    return "; ".join(parts)


def _todo(context: HandoffContext) -> str:
    policy, now = context.policy, context.now
    calendar = policy.sla[context.ticket.priority].calendar
    lines = []
    if context.target.rank > context.current.rank:
        tier = policy.tiers[context.target]
        for label, target in (("acknowledge", tier.acknowledgment), ("send the initial assessment", tier.assessment)):
            if target:
                due = calendar.add_business_time(now, target)
                lines.append(
                    f"- {tier.label} ({context.target}): {label} by {_time(due, policy)} ({format_duration(target)})"
                )
    if context.management:
        mgmt = policy.management
        start = context.management_start
        flags = context.ticket.flags
        steps = [("management: acknowledge", mgmt.acknowledgment)]
        if context.ticket.segment == "enterprise" or flags.revenue_at_risk > 0:
            steps.append(("management: notify the executive sponsor", mgmt.executive_notification))
        steps += [
            ("management: contact the customer", mgmt.customer_contact),
            ("management: share a resolution plan", mgmt.resolution_plan),
        ]
        for label, target in steps:
            if target:
                due = mgmt.calendar.add_business_time(start, target)
                lines.append(f"- {label} by {_time(due, policy)}")
        if mgmt.update_interval:
            lines.append(f"- management: then update the customer every {format_duration(mgmt.update_interval)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Line:
    text: str
    """The line as a str.format pattern (placeholders $name become {name}, other braces escaped)."""
    names: tuple[str, ...]


@lru_cache(maxsize=32)
def _compile(template: str) -> tuple[_Line, ...]:
    lines = []
    for line in template.splitlines():
        names = tuple(a or b for a, b in _PLACEHOLDER.findall(line))
        marked = Template(line).safe_substitute({name: f"\x00{name}\x01" for name in names})
        pattern = marked.replace("{", "{{").replace("}", "}}").replace("\x00", "{").replace("\x01", "}")
        lines.append(_Line(pattern, names))
    return tuple(lines)


def render_template(template: str, values: dict[str, str]) -> str:
    """Substitute placeholders, dropping lines with an empty value and labels left introducing nothing."""
    kept: list[str] = []
    labels: list[bool] = []
    for line in _compile(template):
        if line.names and not all(values.get(name) for name in line.names):
            if labels and labels[-1]:
                kept.pop()
                labels.pop()
            continue
        text = line.text.format_map(values) if line.names else line.text.format()
        kept.append(text)
        labels.append(not line.names and text.rstrip().endswith(":"))
    return "\n".join(kept).strip("\n")


def render_handoff(context: HandoffContext) -> Comment:
    ticket, policy = context.ticket, context.policy
    escalates = context.target.rank > context.current.rank
    values = {
        "ticket": " ".join(part for part in (ticket.key or ticket.id, ticket.subject, ticket.url) if part),
        "priority": ticket.priority.value,
        "from_tier": f"{context.current} {policy.tiers[context.current].label}" if escalates else "",
        "to_tier": f"{context.target} {policy.tiers[context.target].label}" if escalates else "",
        "time": _time(context.now, policy),
        "management": "yes, management track started" if context.management else "",
        "sla": "\n".join(_clock_line(clock, policy) for clock in context.clocks),
        "description": _description(ticket, policy.description_lines),
        "impact": _impact(ticket),
        "rules": "\n".join(f"- {rule.name}: {rule.reason}" for rule in context.fired),
        "todo": _todo(context),
    }
    return Comment(body=render_template(policy.handoff_template, values), idempotency_key=context.key)

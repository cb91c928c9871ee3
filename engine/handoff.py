"""The internal handoff comment posted when a ticket escalates (tier or management track).

It follows the seeds' ESCALATION HANDOFF FORM: ticket, priority, escalated from / to and when (and the path a
chain took, with the rules that moved each step), SLA remaining per clock, the customer's description (first
lines), impact, the troubleshooting steps taken (the internal notes since the tier was entered, with their
times), attachments, the customer's side (last communication, whether they were told of the escalation,
sentiment, relationship), the rules that fired and why, what the receiving side must do by when (deadlines
already past listed apart), and the acceptance block. The text comes from the policy's editable template
(string.Template placeholders). Anything the data cannot fill is left out rather than invented: a template line
whose placeholder would be empty is dropped, and so is a label line ending in ":" that would then introduce
nothing.

The acceptance block cannot be filled in later: the note is never edited (Zendesk and ServiceNow comments cannot
be, and an edit would break the idempotency marker's crash recovery) and no follow-up comment is posted (one more
note per escalation for a fact the platform already shows). So it says how acceptance happens: the first agent
action on the ticket after the note is the acceptance; the platform's own history names who and when, and the
daemon measures it as the receiving side's acknowledgment clock (tagged if late, shown by `explain`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import pairwise
from string import Template

from engine.calendar import format_duration
from engine.model import Clock, ClockState, Comment, RuleOutcome, Ticket, Tier
from engine.policy import Policy

_PLACEHOLDER = re.compile(r"\$(?:(\w+)|\{(\w+)\})")
NOTE_CHARS = 200
"""An internal note's text in the troubleshooting summary is cut to this many characters: a summary, not a copy."""
MAX_NOTES = 10
"""The latest notes shown; earlier ones are counted."""
MAX_ATTACHMENTS = 20
_SHRINK = ((MAX_NOTES, MAX_ATTACHMENTS), (5, 10), (2, 5), (0, 0))
"""(notes, attachments) shown, tried in turn until the note fits the platform's limit: the long lists give way
before the tail (why, to-dos, acceptance) is cut."""
COMMENT_LIMITS = {"zendesk": 64_000, "jsm": 32_767, "servicenow": 4_000}
"""Characters a comment may hold, marker included. Zendesk: about 65,000 ("a size limit that roughly translates to
a character limit of ~65,000", Zendesk developer support, support.zendesk.com/hc/en-us/community/posts/4719863289498);
Jira: 32,767 (the text field limit `jira.text.field.character.limit`); ServiceNow: 4,000 (the default limit of
multi-line text fields, "Journal field type" in the platform administration docs; an instance may allow more)."""
_CUT = "\n[... cut to fit the platform's comment limit]"


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
    tier_start: datetime | None = None
    """When the ticket entered its current tier: the troubleshooting summary covers the notes written since."""
    path: tuple[Tier, ...] = ()
    """The tiers a chained escalation passed through in this evaluation, current first, target last."""
    customer_escalations_30d: int | None = None
    """The customer's escalated tickets in the last 30 days, from the state store (None: not known)."""


def _time(moment: datetime, policy: Policy) -> str:
    """The moment in the handoff's zone, to the minute; memoized: a cycle's `now` and the due times counted from
    it recur in every note of the cycle (about 9 times a note, issue 14's profile)."""
    key = (moment, policy.handoff_zone)
    text = _TIMES.get(key)
    if text is None:
        local = moment.astimezone(policy.handoff_zone)
        # Spelled out rather than strftime: strftime is slow.
        text = f"{local.year:04d}-{local.month:02d}-{local.day:02d} {local.hour:02d}:{local.minute:02d} "
        text += str(local.tzname())
        if len(_TIMES) >= 4096:
            _TIMES.clear()
        _TIMES[key] = text
    return text


_TIMES: dict[tuple[datetime, object], str] = {}


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
    parts = []  # the customer's segment is under "Relationship" (see `_relationship`)
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


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def _path(context: HandoffContext) -> str:
    """The chain's steps with the rules that moved each (a rule moved a step when its target lies within it)."""
    path = context.path
    if len(path) <= 2:
        return ""  # one step: the "Escalated from ... to ..." line says it all
    parts = [path[0].value]
    for before, after in pairwise(path):
        movers = [
            rule.name
            for rule in context.fired
            if rule.target_tier is not None and before.rank < rule.target_tier.rank <= after.rank
        ]
        parts.append(f"{after.value} ({', '.join(movers)})" if movers else after.value)
    passed = ", ".join(tier.value for tier in path[1:-1])
    return f"{' -> '.join(parts)}; {passed} did not hold the ticket: each step's rule held at once"


def _notes(context: HandoffContext, most: int = MAX_NOTES) -> str:
    """The internal notes people wrote since the tier was entered, oldest first, with their times."""
    ticket, policy = context.ticket, context.policy
    start = context.tier_start or ticket.created_at
    since = f"since the ticket entered {context.current} at {_time(start, policy)}"
    if ticket.note_texts is not None:
        later = [note for note in ticket.note_texts if note.at > start]
        if not later:
            return f"- none {since}"
        shown = later[len(later) - most :]
        hidden = len(later) - len(shown)
        lines = [f"- {hidden} earlier note{'s' if hidden != 1 else ''} {since} not shown"] if hidden else []
        lines += [f"- {_time(note.at, policy)}: {_one_line(note.text, NOTE_CHARS)}" for note in shown]
        return "\n".join(lines)
    counted = ticket.internal_notes_since(start)
    if counted is None:
        return ""
    count, last = counted
    if not count or last is None:
        return f"- none {since}"
    return f"- {count} {since}, the last at {_time(last, policy)} (their text is not read on this platform)"


def _attachments(ticket: Ticket, most: int = MAX_ATTACHMENTS) -> str:
    files = ticket.attachments
    if files is None:
        return ""
    if not files:
        return "none"
    lines = [f"{len(files)}"] + [f"- {item.name} {item.url}".rstrip() for item in files[:most]]
    if len(files) > most:
        lines.append(f"- {'and ' if most else ''}{len(files) - most} {'more ' if most else ''}on the ticket")
    return "\n".join(lines)


def _last_reply(ticket: Ticket) -> datetime | None:
    if ticket.public_replies:
        return max(ticket.public_replies)
    return ticket.last_public_reply_at


def _last_contact(ticket: Ticket, policy: Policy) -> str:
    parts = []
    if ticket.last_customer_message_at is not None:
        parts.append(f"the customer wrote at {_time(ticket.last_customer_message_at, policy)}")
    reply = _last_reply(ticket)
    if reply is not None:
        parts.append(f"our last public reply at {_time(reply, policy)}")
    elif ticket.public_replies is not None:
        parts.append("no public reply yet")
    return "; ".join(parts)


def _customer_notified(context: HandoffContext) -> str:
    """ "Not yet" for this escalation when the note is written (it happens now, and the note is internal), and how
    the answer becomes known: the first public reply after the note, measured by the receiving tier's assessment
    clock or the management customer-contact clock where one is set and the platform's replies can be read. A
    ticket already above L1 also says whether the customer heard from us since it entered its tier."""
    ticket, policy = context.ticket, context.policy
    known = ticket.public_replies is not None or "public_replies" not in ticket.missing_facts
    text = "not yet (this note is internal; escalation-sync never writes to the customer)"
    escalates = context.target.rank > context.current.rank
    measured = (escalates and bool(policy.tiers[context.target].assessment)) or (
        context.management and bool(policy.management.customer_contact)
    )
    if known:
        clock = ", and its clock records when" if measured else ""
        text += f": the first public reply after this note tells them{clock}"
    if ticket.public_replies is not None and context.current.rank > 1 and context.tier_start is not None:
        since = [reply for reply in ticket.public_replies if reply > context.tier_start]
        entered = _time(context.tier_start, policy)
        text += (
            f"; of the escalation to {context.current} ({entered}): yes, public reply at {_time(min(since), policy)}"
            if since
            else f"; of the escalation to {context.current} ({entered}): no public reply since"
        )
    return text


def _relationship(context: HandoffContext) -> str:
    ticket = context.ticket
    parts = []
    if ticket.segment:
        parts.append(f"{ticket.segment} customer" + (f" ({ticket.organization})" if ticket.organization else ""))
    count = context.customer_escalations_30d
    if count is not None and (ticket.organization or ticket.requester):
        parts.append(f"{count} escalated ticket{'s' if count != 1 else ''} of this customer in the last 30 days")
    return "; ".join(parts)


def _deadlines(context: HandoffContext) -> tuple[list[str], list[str], list[str]]:
    """(receiving tier's to-dos, management's to-dos, deadlines already past). A past deadline is no to-do: it
    is listed as past; one whose clock shows it met is done and not listed at all."""
    policy, now = context.policy, context.now
    calendar = policy.sla[context.ticket.priority].calendar
    tier_todo: list[str] = []
    mgmt_todo: list[str] = []
    past: list[str] = []
    if context.target.rank > context.current.rank:
        tier = policy.tiers[context.target]
        for label, target in (("acknowledge", tier.acknowledgment), ("send the initial assessment", tier.assessment)):
            if target:
                due = calendar.add_business_time(now, target)
                tier_todo.append(
                    f"- {tier.label} ({context.target}): {label} by {_time(due, policy)} ({format_duration(target)})"
                )
    if context.management:
        mgmt = policy.management
        start = context.management_start
        flags = context.ticket.flags
        met = {clock.name for clock in context.clocks if clock.state is ClockState.MET}
        steps = [("acknowledge", mgmt.acknowledgment, "mgmt_acknowledgment")]
        if context.ticket.segment == "enterprise" or flags.revenue_at_risk > 0:
            steps.append(("notify the executive sponsor", mgmt.executive_notification, "mgmt_executive_notification"))
        steps += [
            ("contact the customer", mgmt.customer_contact, "mgmt_customer_contact"),
            ("share a resolution plan", mgmt.resolution_plan, "mgmt_resolution_plan"),
        ]
        for label, target, clock in steps:
            if not target or clock in met:
                continue
            due = mgmt.calendar.add_business_time(start, target)
            if due <= now:
                past.append(f"- management: {label} was due {_time(due, policy)} (past)")
            else:
                mgmt_todo.append(f"- {label} by {_time(due, policy)}")
        if mgmt.update_interval:
            mgmt_todo.append(f"- then update the customer every {format_duration(mgmt.update_interval)}")
    return tier_todo, mgmt_todo, past


def _acceptance(context: HandoffContext) -> str:
    """How the form's "received by / when" gets its answer (see the module docstring: the note is never edited)."""
    policy = context.policy
    if context.target.rank > context.current.rank:
        side = f"{policy.tiers[context.target].label} ({context.target})"
        target = policy.tiers[context.target].acknowledgment
        due = policy.sla[context.ticket.priority].calendar.add_business_time(context.now, target) if target else None
        clock = "acknowledgment"
    else:
        side = "management"
        target = policy.management.acknowledgment
        due = policy.management.calendar.add_business_time(context.management_start, target) if target else None
        clock = "mgmt_acknowledgment"
    by = f", due by {_time(due, policy)}" if due is not None else ""
    measured = (
        f"escalation-sync records it as the {clock} clock (tagged if late)"
        if due is not None
        else "no deadline is set for it, so nothing measures it"
    )
    return (
        f"- received by the first {side} agent action on the ticket after this note (a comment, status or assignee "
        f"change){by}. This note is not edited: the ticket's history shows who and when; {measured}."
    )


def _fit(body: str, platform: str, key: str) -> str:
    """The body cut at a line so that body and marker fit the platform's comment limit (the marker stays whole:
    crash recovery finds the note by it)."""
    limit = COMMENT_LIMITS.get(platform)
    if limit is None:
        return body
    room = limit - len(Comment(body="", idempotency_key=key).text)
    if len(body) <= room:
        return body
    cut = body[: room - len(_CUT)]
    if "\n" in cut:
        cut = cut[: cut.rindex("\n")]
    return cut + _CUT


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
        if line.names and not all(map(values.get, line.names)):  # map: no generator frame per line
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
    tier_todo, mgmt_todo, past = _deadlines(context)
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
        "todo": "\n".join(tier_todo),
        "path": _path(context),
        "notes": _notes(context),
        "attachments": _attachments(ticket),
        "last_contact": _last_contact(ticket, policy),
        "customer_notified": _customer_notified(context),
        "sentiment": ticket.sentiment or "",
        "relationship": _relationship(context),
        "management_todo": "\n".join(mgmt_todo),
        "past_deadlines": "\n".join(past),
        "acceptance": _acceptance(context),
    }
    limit = COMMENT_LIMITS.get(ticket.platform)
    body = render_template(policy.handoff_template, values)
    for notes, files in _SHRINK[1:]:
        if limit is None or len(Comment(body=body, idempotency_key=context.key).text) <= limit:
            break
        values["notes"], values["attachments"] = _notes(context, notes), _attachments(ticket, files)
        body = render_template(policy.handoff_template, values)
    return Comment(body=_fit(body, ticket.platform, context.key), idempotency_key=context.key)

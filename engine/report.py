"""Explaining a decision to a person (`sync.py explain`): text and a JSON-able dict with the same content.

Shows the normalized ticket, every clock (elapsed, remaining, due, state), every rule (fired and why, or why
not) and the planned write-back, so an admin can see exactly why the engine wants what it wants.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from engine.calendar import format_duration
from engine.model import Decision, Ticket, WriteBack


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (frozenset, set)):
        return sorted(_jsonable(item) for item in value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {item.name: _jsonable(getattr(value, item.name)) for item in fields(value)}
    return value


def explain_dict(ticket: Ticket, decision: Decision, writeback: WriteBack) -> dict[str, Any]:
    """Everything `explain` shows, as plain JSON types (times ISO 8601, durations in seconds)."""
    return {
        "ticket": _jsonable(ticket),
        "evaluated_at": decision.evaluated_at.isoformat(),
        "current_tier": decision.current_tier.value,
        "target_tier": decision.target_tier.value,
        "escalates": decision.escalates,
        "management": decision.management,
        "clocks": [
            {
                "name": clock.name,
                "state": clock.state.value,
                "calendar": clock.calendar,
                "target_seconds": clock.target.total_seconds(),
                "elapsed_seconds": clock.elapsed.total_seconds(),
                "remaining_seconds": clock.remaining.total_seconds(),
                "due_at": clock.due_at.isoformat() if clock.due_at else None,
                "breached_at": clock.breached_at.isoformat() if clock.breached_at else None,
            }
            for clock in decision.clocks
        ],
        "rules": [
            {
                "name": rule.name,
                "description": rule.description,
                "fired": rule.fired,
                "reason": rule.reason,
                "target_tier": rule.target_tier.value if rule.target_tier else None,
                "management": rule.management,
            }
            for rule in decision.rules
        ],
        "signals": sorted(
            f"{signal.kind}:{signal.clock}" if signal.clock else signal.kind for signal in decision.signals
        ),
        "writeback": {
            "empty": writeback.is_empty,
            "key": writeback.key,
            "revision": writeback.revision,
            "tier": writeback.tier.value if writeback.tier else None,
            "add_tags": sorted(writeback.add_tags),
            "remove_tags": sorted(writeback.remove_tags),
            "comment": writeback.comment.text if writeback.comment else None,
            "comment_key": writeback.comment.idempotency_key if writeback.comment else None,
        },
    }


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="minutes") if moment else "-"


def explain(ticket: Ticket, decision: Decision, writeback: WriteBack) -> str:
    """A human-readable account of the decision for one ticket."""
    out = [
        f"Ticket {ticket.key or ticket.id} ({ticket.platform}/{ticket.instance}) {ticket.subject!r}",
        f"  status {ticket.status.value}, priority {ticket.priority.value}, tier {ticket.tier or '-'}"
        f" (entered {_when(ticket.tier_entered_at)}), segment {ticket.segment or '-'},"
        f" organization {ticket.organization or '-'}",
        f"  created {_when(ticket.created_at)}, updated {_when(ticket.updated_at)},"
        f" first public reply {_when(ticket.first_public_reply_at)}, last public reply"
        f" {_when(ticket.last_public_reply_at)}, last agent action {_when(ticket.last_agent_action_at)},"
        f" solved {_when(ticket.solved_at)}",
        f"  tags: {', '.join(sorted(ticket.tags)) or '-'}",
        "  flags: " + ", ".join(f"{item.name}={getattr(ticket.flags, item.name)}" for item in fields(ticket.flags)),
        f"Evaluated at {_when(decision.evaluated_at)}: tier {decision.current_tier} -> {decision.target_tier}"
        f"{' (escalates)' if decision.escalates else ''}, management {'yes' if decision.management else 'no'}",
        "Clocks:",
    ]
    if not decision.clocks:
        out.append("  (none)")
    for clock in decision.clocks:
        breached = f", breached at {_when(clock.breached_at)}" if clock.breached_at else ""
        out.append(
            f"  {clock.name:<22} {clock.state.value:<8} elapsed {format_duration(clock.elapsed)}"
            f" of {format_duration(clock.target)}, remaining {format_duration(clock.remaining)},"
            f" due {_when(clock.due_at)} [{clock.calendar}]{breached}"
        )
    out.append("Rules:")
    for rule in decision.rules:
        target = " -> ".join(
            part
            for part in (rule.target_tier.value if rule.target_tier else "", "management" if rule.management else "")
            if part
        )
        out.append(f"  [{'FIRED' if rule.fired else '     '}] {rule.name} ({target}): {rule.reason}")
    out.append("Write-back:")
    if writeback.is_empty:
        out.append("  nothing to write (the platform already shows the desired state)")
    else:
        if writeback.tier:
            out.append(f"  set tier {writeback.tier}")
        if writeback.add_tags:
            out.append(f"  add tags {', '.join(sorted(writeback.add_tags))}")
        if writeback.remove_tags:
            out.append(f"  remove tags {', '.join(sorted(writeback.remove_tags))}")
        if writeback.comment:
            out.append(f"  post internal comment (key {writeback.comment.idempotency_key}):")
            out.extend("    " + line for line in writeback.comment.text.splitlines())
    return "\n".join(out)

"""The compiled fact functions (issue 14) give exactly what the readable getters give.

`engine.escalate.compute_facts` runs one function compiled from `_EXPRESSIONS` instead of one getter call per
fact; a chained pass (`_moved_facts`) recomputes only the facts of the tier and the clocks. Both must equal
a plain reading of each fact of the vocabulary, value and type (CEL tells 1 from 1.0 and True).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import engine.escalate as escalate
from engine.model import (
    ClockState,
    EscalationHistory,
    Flags,
    PlatformSla,
    Priority,
    Status,
    Ticket,
    Tier,
)
from engine.policy import CLOCK_FIELDS, CLOCK_NAMES, FACTS, load_policy
from engine.sla import pauses_of

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
PATHS = tuple(FACTS)


def _ticket(number: int) -> Ticket:
    created = NOW - timedelta(hours=3 * number + 1, minutes=7 * number)
    reply = created + timedelta(minutes=20) if number % 2 else None
    return Ticket(
        platform="zendesk",
        instance="t",
        id=str(number),
        key=str(number),
        url="",
        subject="s",
        status=[Status.OPEN, Status.PENDING, Status.NEW, Status.SOLVED, Status.ON_HOLD][number % 5],
        priority=list(Priority)[number % 4],
        created_at=created,
        updated_at=created + timedelta(minutes=30),
        first_public_reply_at=reply,
        last_public_reply_at=reply,
        last_agent_action_at=reply,
        organization=None if number % 3 else f"org {number}",
        segment=[None, "enterprise", "standard"][number % 3],
        tags=frozenset({"b", "a", f"t{number}"}) if number % 2 else frozenset(),
        assignee_group=None if number % 4 else "g",
        tier=[None, Tier.L1, Tier.L2, Tier.L3, Tier.L4][number % 5],
        tier_entered_at=created,
        flags=Flags(
            churn_threat=number % 2 == 0,
            security_legal=number % 3 == 0,
            engineering_required=number % 4 == 1,
            revenue_at_risk=[0.0, 15000.0, 75000.5][number % 3],
            affected_customers=number * 3,
            linked_incidents=number % 5,
            reopen_count=number % 4,
        ),
        platform_slas=tuple(PlatformSla(f"sla {i}", breached=(number + i) % 2 == 0) for i in range(number % 3)),
    )


def _history(number: int) -> EscalationHistory:
    if number % 2:
        return EscalationHistory()
    return EscalationHistory(
        customer_escalations_30d=number,
        tier_entries=((Tier.L2, NOW - timedelta(hours=number)),),
        management_started_at=NOW - timedelta(hours=2),
        management_ended_at=NOW - timedelta(hours=1) if number % 4 == 0 else None,
    )


def _clocks(ticket: Ticket, history: EscalationHistory, tier: Tier, start: datetime) -> list[escalate.Clock]:
    clocks = escalate.measure_clocks(ticket, POLICY, NOW, pauses_of(ticket))
    clocks += escalate.tier_clocks(ticket, POLICY, NOW, tier, start)
    if history.management_started_at is not None:
        clocks += escalate.management_clocks(ticket, POLICY, NOW, history.management_started_at)
    return clocks


def _by_getters(
    ticket: Ticket, clocks: list[escalate.Clock], hours: float, history: EscalationHistory, tier: Tier
) -> dict[str, object]:
    """Each fact read the plain way, one at a time (the getters the engine ran before it compiled them)."""
    by_name = {clock.name: clock for clock in clocks}
    counted = [clock for name, clock in by_name.items() if name not in escalate._CADENCE_CLOCKS]
    facts: dict[str, object] = {
        "ticket.priority": ticket.priority.value,
        "ticket.priority_rank": int(ticket.priority.value[1]),
        "ticket.status": ticket.status.value,
        "ticket.tier": tier.value,
        "ticket.tier_rank": escalate.RANK[tier],
        "ticket.is_open": not ticket.status.is_terminal,
        "ticket.segment": ticket.segment or "",
        "ticket.organization": ticket.organization or "",
        "ticket.assignee_group": ticket.assignee_group or "",
        "ticket.platform": ticket.platform,
        "ticket.tags": sorted(ticket.tags),
        "ticket.age_hours": max((NOW - ticket.created_at).total_seconds(), 0.0) / 3600.0,
        "ticket.has_public_reply": ticket.first_public_reply_at is not None,
        "hours_at_tier": hours,
        "any_clock_breached": any(clock.state is ClockState.BREACHED for clock in counted),
        "any_clock_at_risk": any(clock.state is ClockState.AT_RISK for clock in counted),
        "history.customer_escalations_30d": history.customer_escalations_30d,
        "history.tier_entries": len(history.tier_entries),
        "history.management_active": history.management_started_at is not None and history.management_ended_at is None,
        "platform_slas.any_breached": any(sla.breached for sla in ticket.platform_slas),
        "platform_slas.breached": sorted(sla.name for sla in ticket.platform_slas if sla.breached),
    }
    for path, sample in FACTS.items():
        if path.startswith("flags."):
            # Coerced to the vocabulary's type: a mapping may hand over 50000 for a float field.
            facts[path] = type(sample)(getattr(ticket.flags, path.removeprefix("flags.")))
    for name in CLOCK_NAMES:
        clock = by_name.get(name)
        minutes = {
            field: getattr(clock, attribute).total_seconds() / 60.0 if clock is not None else 0.0
            for field, attribute in (
                ("elapsed_minutes", "elapsed"),
                ("remaining_minutes", "remaining"),
                ("target_minutes", "target"),
            )
        }
        for field in CLOCK_FIELDS:
            if field == "state":
                facts[f"clocks.{name}.state"] = clock.state.value if clock is not None else "none"
            elif field == "active":
                facts[f"clocks.{name}.active"] = clock is not None
            else:
                facts[f"clocks.{name}.{field}"] = minutes.get(field, minutes["target_minutes"])
    return {path: facts[path] for path in PATHS}


def _typed(facts: dict[str, object]) -> list[tuple[str, object, type]]:
    return [(path, value, type(value)) for path, value in facts.items()]


@pytest.mark.parametrize("number", range(12))
def test_compiled_facts_equal_the_getters(number: int) -> None:
    ticket, history = _ticket(number), _history(number)
    tier = ticket.effective_tier
    clocks = _clocks(ticket, history, tier, ticket.created_at)
    hours = 1.25 * number
    compiled = escalate.compute_facts(ticket, NOW, clocks, hours, history, PATHS)
    assert _typed(compiled) == _typed(_by_getters(ticket, clocks, hours, history, tier))


@pytest.mark.parametrize("number", range(12))
def test_moved_facts_equal_a_full_pass_at_the_new_tier(number: int) -> None:
    ticket, history = _ticket(number), _history(number)
    clocks = _clocks(ticket, history, ticket.effective_tier, ticket.created_at)
    first = escalate.compute_facts(ticket, NOW, clocks, 3.5, history, PATHS)
    before = dict(first)
    for level in Tier:
        moved_clocks = _clocks(ticket, history, level, NOW)
        moved = escalate._moved_facts(first, ticket, NOW, moved_clocks, history, PATHS, level)
        full = escalate.compute_facts(ticket, NOW, moved_clocks, 0.0, history, PATHS, level)
        assert _typed(moved) == _typed(full)
    assert first == before  # deferred reasons keep reading the first pass's facts


def test_every_fact_has_an_expression() -> None:
    assert set(escalate._EXPRESSIONS) == set(FACTS)

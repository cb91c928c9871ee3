"""The engine's memos (rule outcomes grouped by fact values, tag signal sets, reason texts) never change a result.

run_rules and evaluate reuse outcomes computed for earlier tickets with the same fact values. These tests
feed many random tickets through one long-lived policy (warm memos, shared across tickets and tiers) and
compare every answer with a fresh copy of the policy whose memo is empty, so a key that leaves out something
the answer depends on shows up as a difference.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.escalate import evaluate, run_rules
from engine.model import EscalationHistory, Flags, Priority, Status, StatusChange, Ticket, Tier
from engine.policy import FACTS, Policy, load_policy

POLICY = load_policy(Path(__file__).resolve().parent.parent / "config.example.toml")
NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def _fresh() -> Policy:
    return replace(POLICY, outcome_cache={})


def _random_facts(rng: random.Random) -> dict[str, object]:
    facts: dict[str, object] = {}
    for path in POLICY.fact_paths:
        sample = FACTS[path]
        if isinstance(sample, bool):
            facts[path] = rng.random() < 0.3
        elif isinstance(sample, int):
            facts[path] = rng.choice([0, 1, 2, 3, 4, 12])
        elif isinstance(sample, float):
            facts[path] = rng.choice([0.0, 1.5, 2.0, 4.01, 8.0, 15000.0, 75000.0, rng.random() * 100])
        elif isinstance(sample, list):
            facts[path] = rng.sample(["vip", "eu", "api"], rng.randint(0, 2))
        elif path.endswith(".state"):
            facts[path] = rng.choice(["ok", "at_risk", "breached", "paused", "met", "none"])
        elif path == "ticket.tier":
            facts[path] = rng.choice(["L1", "L2", "L3", "L4"])
        elif path == "ticket.priority":
            facts[path] = rng.choice(["P1", "P2", "P3", "P4"])
        else:
            facts[path] = rng.choice(["", "enterprise", "smb", "standard"])
    return facts


def test_run_rules_with_warm_memo_equals_cold_memo() -> None:
    rng = random.Random(11)
    warm = _fresh()
    fired = 0
    for _ in range(400):
        facts = _random_facts(rng)
        current = Tier(str(facts.get("ticket.tier", "L1")))
        expected = run_rules(_fresh(), dict(facts), current)
        assert run_rules(warm, dict(facts), current) == expected
        fired += sum(outcome.fired for outcome in expected)
    assert fired > 0  # the random facts do make rules fire, so both paths were exercised


def _random_ticket(rng: random.Random, number: int) -> Ticket:
    created = NOW - timedelta(minutes=rng.randint(5, 60 * 24 * 14))
    status = rng.choice(list(Status))
    reply = created + (NOW - created) * rng.random() if rng.random() < 0.6 else None
    history = ()
    if status.pauses_sla:
        history = (StatusChange(NOW - timedelta(minutes=rng.randint(1, 600)), status),)
    return Ticket(
        platform="zendesk",
        instance="t",
        id=str(number),
        key=str(number),
        url="",
        subject="s",
        status=status,
        priority=rng.choice(list(Priority)),
        created_at=created,
        updated_at=NOW - timedelta(minutes=rng.randint(0, 300)),
        first_public_reply_at=reply,
        last_public_reply_at=reply,
        last_agent_action_at=reply if rng.random() < 0.5 else None,
        segment=rng.choice([None, "enterprise", "smb"]),
        tags=frozenset(rng.sample(["vip", "esc_management", "esc_breached_resolution"], rng.randint(0, 2))),
        tier=rng.choice([None, *Tier]),
        tier_entered_at=created + (NOW - created) * rng.random() * 0.5,
        flags=Flags(
            churn_threat=rng.random() < 0.1,
            engineering_required=rng.random() < 0.2,
            vendor_dependency=rng.random() < 0.1,
            revenue_at_risk=rng.choice([0.0, 15000.0, 75000.0]),
            affected_customers=rng.choice([0, 12]),
            reopen_count=rng.choice([0, 3]),
        ),
        status_history=history,
    )


def test_evaluate_with_warm_memos_equals_cold_memos() -> None:
    rng = random.Random(5)
    warm = _fresh()
    for number in range(300):
        ticket = _random_ticket(rng, number)
        history = EscalationHistory(customer_escalations_30d=rng.choice([0, 3]))
        expected = evaluate(ticket, _fresh(), NOW, history)
        assert evaluate(ticket, warm, NOW, history) == expected


def test_a_full_memo_keeps_the_compiled_rules(monkeypatch) -> None:
    """A full memo starts over on outcomes only: the compiled CEL batch stays the same object, so a large backlog
    does not recompile the policy every 20,000th outcome, and answers after the reset stay those of a cold memo."""
    import engine.escalate as escalate

    monkeypatch.setattr(escalate, "_CACHE_LIMIT", 8)
    rng = random.Random(5)
    warm = _fresh()
    run_rules(warm, _random_facts(rng), Tier.L1)
    prepared = warm.outcome_cache["prepared"]
    for _ in range(60):
        facts = _random_facts(rng)
        current = Tier(str(facts.get("ticket.tier", "L1")))
        assert run_rules(warm, dict(facts), current) == run_rules(_fresh(), dict(facts), current)
    assert warm.outcome_cache["prepared"] is prepared
    assert len(warm.outcome_cache) <= 8 + 1


def _policy_with_rules(rules: list[dict[str, object]]) -> Policy:
    import copy
    import tomllib

    from engine.policy import policy_from_dict

    data = copy.deepcopy(tomllib.loads(CONFIG.read_text(encoding="utf-8"))["policy"])
    data["rules"] = rules
    return policy_from_dict(data)


CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
_TIMED_RULES: list[dict[str, object]] = [
    {"name": "over", "description": "", "when": "hours_at_tier > 2.0 && ticket.tier == 'L1'", "tier": "L2"},
    {"name": "at-least", "description": "", "when": "4 <= hours_at_tier || ticket.age_hours == 8.0", "tier": "L3"},
    {"name": "exactly", "description": "", "when": "hours_at_tier == 3.5", "management": True},
]


def test_the_batch_memo_tells_each_side_of_every_threshold() -> None:
    """The batch of time-dependent rules is memoized by where each hours value lies among the numbers the
    conditions compare it with (engine.escalate._batch_key): values just below, at and just above each of
    them, met in any order with a warm memo, give what a cold memo gives."""
    from engine.escalate import _prepare

    warm = _policy_with_rules(_TIMED_RULES)
    assert _prepare(warm).batch_key is not None
    values = [0.0, 1.99, 2.0, 2.01, 3.49, 3.5, 3.51, 3.99, 4.0, 4.01, 7.99, 8.0, 8.01, 100.0]
    rng = random.Random(5)
    seen = set()
    for _ in range(300):
        facts = {path: 0 for path in warm.fact_paths}
        facts.update({"ticket.tier": rng.choice(["L1", "L2"]), "hours_at_tier": rng.choice(values)})
        facts["ticket.age_hours"] = rng.choice(values)
        current = Tier(str(facts["ticket.tier"]))
        cold = replace(warm, outcome_cache={})
        expected = run_rules(cold, dict(facts), current)
        got = run_rules(warm, dict(facts), current)
        assert got == expected
        seen.add(tuple(outcome.fired for outcome in got))
    assert len(seen) >= 6  # every rule both fired and not, in several combinations


def test_the_batch_memo_is_off_when_a_number_is_used_otherwise() -> None:
    """Arithmetic on an hours value (or a chained comparison) is not a plain comparison: no memo key, and the
    conditions run on every ticket."""
    from engine.escalate import _prepare

    for when in ("hours_at_tier * 2.0 > 5.0", "hours_at_tier + 1.0 > 3.5 || ticket.tier == 'L3'"):
        rules = [*_TIMED_RULES, {"name": "odd", "description": "", "when": when, "tier": "L2"}]
        policy = _policy_with_rules(rules)
        assert _prepare(policy).batch_key is None
        facts = {"ticket.tier": "L2", "hours_at_tier": 2.6, "ticket.age_hours": 1.0}
        fired = {outcome.name: outcome.fired for outcome in run_rules(policy, dict(facts), Tier.L2)}
        assert fired["odd"] is True and fired["over"] is False
        # 2.4 lies where 2.6 does among the other rules' literals (2, 3.5, 4, 8), not for this condition.
        facts["hours_at_tier"] = 2.4
        fired = {outcome.name: outcome.fired for outcome in run_rules(policy, dict(facts), Tier.L2)}
        assert fired["odd"] is False

"""Issue 9, items 2-5: the engine works with people (tier moves by hand, reopen, priority change, per-tier tags).

Times: T0 is Tuesday 2026-11-24 09:00 UTC, inside the default business_hours calendar (weekdays 08:00-16:00
UTC in winter). P1 runs on the 24x7 calendar. Policy: config.example.toml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.escalate import evaluate
from engine.model import (
    ClockState,
    EscalationHistory,
    Flags,
    Priority,
    PriorityChange,
    Status,
    StatusChange,
    TagScheme,
    TagSignal,
    Ticket,
    Tier,
    TierChange,
)
from engine.plan import plan
from engine.policy import load_policy
from mappings import load_mapping
from state import open_store

CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
POLICY = load_policy(CONFIG)
H = timedelta(hours=1)
M = timedelta(minutes=1)
D = timedelta(days=1)
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TAGS = TagScheme()


def ticket(**changes) -> Ticket:
    base = Ticket(
        platform="zendesk",
        instance="acme",
        id="42",
        key="42",
        url="https://acme.zendesk.com/agent/tickets/42",
        subject="Export fails",
        status=Status.OPEN,
        priority=Priority.P3,
        created_at=T0,
        updated_at=T0,
        first_public_reply_at=T0 + 10 * M,
        last_public_reply_at=T0 + 10 * M,
        last_agent_action_at=T0 + 10 * M,
        public_replies=(T0 + 10 * M,),
        agent_actions=(T0 + 10 * M,),
        tier=Tier.L1,
        tier_entered_at=T0,
        tier_changes=(TierChange(T0, Tier.L1),),
        status_history=(StatusChange(T0, Status.OPEN),),
    )
    return replace(base, **changes)


# -- item 2: a person moving a ticket down is respected ---------------------------------------------------------

ESCALATED = T0 + 2 * H + 1 * M  # l1-time-limit moved it to L2 (our write, recorded in the store)
MOVED_BACK = T0 + 2 * H + 12 * M  # an agent moved it back to L1 by hand
OURS = EscalationHistory(tier_entries=((Tier.L2, ESCALATED),))


def moved_back(**changes) -> Ticket:
    changes.setdefault(
        "tier_changes", (TierChange(T0, Tier.L1), TierChange(ESCALATED, Tier.L2), TierChange(MOVED_BACK, Tier.L1))
    )
    values = {"tier": Tier.L1, "tier_entered_at": MOVED_BACK, "updated_at": MOVED_BACK, **changes}
    return ticket(**values)


def test_issue9_item2_time_at_tier_counts_from_the_human_move() -> None:
    decision = evaluate(moved_back(), POLICY, MOVED_BACK + 1 * M, OURS)
    assert decision.target_tier is Tier.L1
    # 1h59m of business time after the move: still inside L1's own limit.
    assert evaluate(moved_back(), POLICY, MOVED_BACK + 1 * H + 59 * M, OURS).target_tier is Tier.L1


def test_issue9_item2_a_rule_already_firing_at_the_human_move_is_held_off() -> None:
    # The customer asked for escalation before the agent moved the ticket down: the agent knew, and decided.
    requested = moved_back(flags=Flags(customer_requested=True))
    decision = evaluate(requested, POLICY, MOVED_BACK + 1 * M, OURS)
    assert decision.target_tier is Tier.L1 and decision.comment is None
    held = next(rule for rule in decision.rules if rule.name == "customer-requested")
    assert not held.fired and "held off" in held.reason and "moved" in held.reason
    # Still held an hour later: no new trigger, L1's own limit not reached.
    assert evaluate(requested, POLICY, MOVED_BACK + 1 * H, OURS).target_tier is Tier.L1


def test_issue9_item2_without_the_store_entry_a_move_down_is_still_a_human_move() -> None:
    # A ticket a person had raised to L2 and lowered again: nothing of ours to match, still a person's call.
    requested = moved_back(flags=Flags(customer_requested=True))
    assert evaluate(requested, POLICY, MOVED_BACK + 1 * M, EscalationHistory()).target_tier is Tier.L1


def test_issue9_item2_a_new_trigger_after_the_human_move_escalates() -> None:
    # A P2 the customer asked to escalate, moved to L2 by us and back to L1 by an agent 10 minutes later; no
    # public reply yet: the first response (2 business hours) breaches at T0+2h, after the move.
    escalated, back = T0 + 30 * M, T0 + 40 * M
    silent = ticket(
        priority=Priority.P2,
        flags=Flags(customer_requested=True),
        first_public_reply_at=None,
        last_public_reply_at=None,
        public_replies=(),
        agent_actions=(back,),
        tier_entered_at=back,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(escalated, Tier.L2), TierChange(back, Tier.L1)),
    )
    ours = EscalationHistory(tier_entries=((Tier.L2, escalated),))
    assert evaluate(silent, POLICY, T0 + 1 * H + 59 * M, ours).target_tier is Tier.L1
    decision = evaluate(silent, POLICY, T0 + 2 * H + 1 * M, ours)  # 1h21m at L1: inside L1's own limit
    assert decision.target_tier is Tier.L2
    fired = {rule.name: rule.reason for rule in decision.fired}
    assert "sla-breached-at-front-line" in fired and not fired["sla-breached-at-front-line"].startswith("once at")
    assert decision.comment is not None and decision.comment.idempotency_key == "acme:42:L2:2"


def test_issue9_item2_the_re_escalation_is_a_new_escalation_with_its_own_key_and_clocks() -> None:
    at = MOVED_BACK + 2 * H + 1 * M  # L1's own 2 business hours, counted from the move
    assert evaluate(moved_back(), POLICY, at - 2 * M, OURS).target_tier is Tier.L1
    decision = evaluate(moved_back(), POLICY, at, OURS)
    assert decision.target_tier is Tier.L2
    assert decision.comment is not None
    first_key = "acme:42:L2"
    assert decision.comment.idempotency_key != first_key
    assert decision.comment.idempotency_key == "acme:42:L2:2"
    writeback = plan(decision, moved_back(), TAGS)
    assert writeback.tier is Tier.L2 and writeback.comment == decision.comment
    # The second entry recorded (state test below): five minutes later L2's clocks run from the new entry.
    again = EscalationHistory(tier_entries=((Tier.L2, ESCALATED), (Tier.L2, at)))
    echo = moved_back(
        tier=Tier.L2,
        tier_entered_at=at,
        tier_changes=(*moved_back().tier_changes, TierChange(at, Tier.L2)),
    )
    later = evaluate(echo, POLICY, at + 5 * M, again)
    ack = next(clock for clock in later.clocks if clock.name == "acknowledgment")
    assert ack.state is ClockState.OK and ack.elapsed == 5 * M
    assert not any(signal.kind == "breached" for signal in later.signals)
    # The echo of our own second write is ours, not a person's: a rule firing now is not held off.
    assert evaluate(replace(echo, flags=Flags(engineering_required=True)), POLICY, at + 6 * M, again).target_tier is (
        Tier.L3
    )


def test_issue9_item2_our_own_first_escalation_keeps_its_key() -> None:
    decision = evaluate(ticket(), POLICY, T0 + 2 * H + 1 * M)
    assert decision.target_tier is Tier.L2
    assert decision.comment is not None and decision.comment.idempotency_key == "acme:42:L2"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/state.sqlite3")
        yield opened
        opened.close()
        return
    from tests.test_state import PG_URL, private_schema, with_search_path

    for _, schema in private_schema():
        opened = open_store(with_search_path(PG_URL, schema))
        yield opened
        opened.close()


def test_issue9_item2_the_store_keeps_every_entry_into_a_tier(store) -> None:
    store.record_escalation("acme", "org", "42", "L2", ESCALATED)
    store.record_escalation("acme", "org", "42", "L2", ESCALATED)  # a replay of the same write: one row
    store.record_escalation("acme", "org", "42", "L2", ESCALATED + D)
    store.record_escalation("acme", "org", "42", "MGMT", ESCALATED)
    store.record_escalation("acme", "org", "42", "MGMT", ESCALATED + H)  # the track starts once
    store.record_escalation("acme", "org", "42", "RESOLVED", ESCALATED + 2 * D)
    store.record_escalation("acme", "org", "42", "RESOLVED", ESCALATED + 3 * D)
    entries = store.tier_entries("acme", "42")
    assert [entry for entry in entries if entry[0] == "L2"] == [("L2", ESCALATED), ("L2", ESCALATED + D)]
    assert [entry for entry in entries if entry[0] == "MGMT"] == [("MGMT", ESCALATED)]
    assert [entry for entry in entries if entry[0] == "RESOLVED"] == [("RESOLVED", ESCALATED + 2 * D)]
    assert store.tier_entries_many("acme", ["42"])["42"] == entries
    assert store.escalations_since("org", T0) == 1  # one ticket, however many entries


# -- item 3: a reopened ticket does not count the time it sat solved --------------------------------------------


def test_issue9_item3_reopened_two_days_after_solving_stays_at_l1() -> None:
    solved, reopened = T0 + 1 * H, T0 + 2 * D + 1 * H
    history = (StatusChange(T0, Status.OPEN), StatusChange(solved, Status.SOLVED), StatusChange(reopened, Status.OPEN))
    reopen = ticket(status_history=history, updated_at=reopened, solved_at=None)
    decision = evaluate(reopen, POLICY, reopened + 1 * M)
    assert decision.target_tier is Tier.L1, [rule.reason for rule in decision.fired]
    resolution = next(clock for clock in decision.clocks if clock.name == "resolution")
    assert resolution.elapsed == 1 * H + 1 * M
    # L1's limit still comes: 2 business hours at L1, the solved days left out.
    assert evaluate(reopen, POLICY, reopened + 1 * H + 1 * M).target_tier is Tier.L2


def test_issue9_item3_a_reopened_p1_does_not_jump_to_l3() -> None:
    solved, reopened = T0 + 1 * H + 30 * M, T0 + 2 * D + 1 * H
    history = (StatusChange(T0, Status.OPEN), StatusChange(solved, Status.SOLVED), StatusChange(reopened, Status.OPEN))
    reopen = ticket(
        priority=Priority.P1,
        status_history=history,
        updated_at=reopened,
        public_replies=(T0 + 10 * M, solved),
        last_public_reply_at=solved,
    )
    decision = evaluate(reopen, POLICY, reopened + 1 * M)
    assert decision.target_tier is Tier.L1, [rule.reason for rule in decision.fired]
    resolution = next(clock for clock in decision.clocks if clock.name == "resolution")
    assert resolution.state is ClockState.OK and resolution.breached_at is None
    assert resolution.elapsed == 1 * H + 31 * M
    assert not decision.signals


# -- item 4: a priority change applies from its moment on -------------------------------------------------------


def test_issue9_item4_p3_to_p1_breaches_at_the_change_not_before() -> None:
    changed = T0 + 4 * H  # 4 business hours at P3 (target 8h) without a reply, then P1 (target 30 min)
    raised = ticket(
        priority=Priority.P1,
        priority_changes=(PriorityChange(T0, Priority.P3), PriorityChange(changed, Priority.P1)),
        first_public_reply_at=None,
        last_public_reply_at=None,
        public_replies=(),
        updated_at=changed,
    )
    decision = evaluate(raised, POLICY, changed + 1 * M)
    first = next(clock for clock in decision.clocks if clock.name == "first_response")
    assert first.state is ClockState.BREACHED
    assert first.breached_at == changed
    # Without history the current priority is all we know: measured as before.
    plain = evaluate(replace(raised, priority_changes=None), POLICY, changed + 1 * M)
    assert next(c for c in plain.clocks if c.name == "first_response").breached_at == T0 + 30 * M


def test_issue9_item4_p3_to_p1_before_any_breach_gets_the_new_target_from_the_change() -> None:
    changed = T0 + 10 * M
    raised = ticket(
        priority=Priority.P1,
        priority_changes=(PriorityChange(T0, Priority.P3), PriorityChange(changed, Priority.P1)),
        first_public_reply_at=None,
        last_public_reply_at=None,
        public_replies=(),
    )
    first = next(c for c in evaluate(raised, POLICY, changed + 5 * M).clocks if c.name == "first_response")
    assert first.state is ClockState.OK and first.elapsed == 15 * M and first.remaining == 15 * M
    late = next(c for c in evaluate(raised, POLICY, changed + 25 * M).clocks if c.name == "first_response")
    assert late.state is ClockState.BREACHED and late.breached_at == T0 + 30 * M


def test_issue9_item4_p2_to_p4_keeps_the_breach_that_happened() -> None:
    breach, changed = T0 + 2 * H, T0 + 3 * H  # P2 first response: 2 business hours
    lowered = ticket(
        priority=Priority.P4,
        priority_changes=(PriorityChange(T0, Priority.P2), PriorityChange(changed, Priority.P4)),
        first_public_reply_at=None,
        last_public_reply_at=None,
        public_replies=(),
        updated_at=changed,
    )
    decision = evaluate(lowered, POLICY, changed + 1 * H)
    first = next(clock for clock in decision.clocks if clock.name == "first_response")
    assert first.breached_at == breach
    assert first.target == 24 * H  # P4's target applies now
    assert TagSignal("breached", "first_response") in decision.signals
    assert "esc_breached_first_response" in plan(decision, lowered, TAGS).add_tags


# -- item 5: per-tier breach tags -------------------------------------------------------------------------------


def test_issue9_item5_tier_clock_tags_name_the_tier() -> None:
    at_l2 = ticket(
        tier=Tier.L2,
        tier_entered_at=T0 + 1 * H,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(T0 + 1 * H, Tier.L2)),
    )
    history = EscalationHistory(tier_entries=((Tier.L2, T0 + 1 * H),))
    decision = evaluate(at_l2, POLICY, T0 + 1 * H + 20 * M, history)
    tags = plan(decision, at_l2, TAGS).add_tags
    assert "esc_l2_breached_acknowledgment" in tags
    assert "esc_breached_acknowledgment" not in tags


def test_issue9_item5_moving_up_keeps_the_previous_tiers_breach_and_removes_the_old_name() -> None:
    entered = T0 + 1 * H
    at_l2 = ticket(
        tier=Tier.L2,
        tier_entered_at=entered,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(entered, Tier.L2)),
        flags=Flags(engineering_required=True),
        tags=frozenset({"esc_l2_breached_acknowledgment", "esc_breached_acknowledgment", "customer_tag"}),
    )
    history = EscalationHistory(tier_entries=((Tier.L2, entered),))
    now = entered + 20 * M  # L2's 15-minute acknowledgment breached, then engineering asked for L3
    decision = evaluate(at_l2, POLICY, now, history)
    assert decision.target_tier is Tier.L3
    writeback = plan(decision, at_l2, TAGS)
    assert "esc_l2_breached_acknowledgment" not in writeback.remove_tags  # L2's breach stays on record
    assert "esc_breached_acknowledgment" in writeback.remove_tags  # the pre-upgrade name is cleaned up
    assert "customer_tag" not in writeback.remove_tags
    assert not writeback.add_tags & writeback.remove_tags
    # The echo at L3: L2's breach is still kept, L3's clocks are fresh.
    echo = replace(
        at_l2,
        tier=Tier.L3,
        tier_entered_at=now,
        tier_changes=(*at_l2.tier_changes, TierChange(now, Tier.L3)),
        tags=(at_l2.tags | writeback.add_tags) - writeback.remove_tags,
    )
    after = evaluate(echo, POLICY, now + 40 * M, EscalationHistory(tier_entries=((Tier.L2, entered), (Tier.L3, now))))
    again = plan(after, echo, TAGS)
    assert "esc_l2_breached_acknowledgment" not in again.remove_tags
    assert "esc_l3_breached_acknowledgment" in again.add_tags


def test_issue9_item5_old_and_new_names_are_managed() -> None:
    for tag in ("esc_breached_acknowledgment", "esc_l2_breached_acknowledgment", "esc_l3_at_risk_assessment"):
        assert TAGS.is_managed(tag)
    assert not TAGS.is_managed("esc_l2_other")
    assert TAGS.render(TagSignal("breached", "acknowledgment", "L3")) == "esc_l3_breached_acknowledgment"
    assert TAGS.render(TagSignal("breached", "resolution")) == "esc_breached_resolution"


# Item 4 on the three platforms: each mapping reads the priority history the platform records (sandboxes).


def test_issue9_item4_zendesk_reads_priority_changes_from_ticket_events() -> None:
    from sandbox.base import SimClock
    from sandbox.zendesk import FIELD_SEVERITY, ZendeskSandbox
    from tests.test_zendesk_history import START, connector, read, recent_l1_ticket

    clock = SimClock(START)
    sandbox = ZendeskSandbox(clock, seed=11)
    sandbox.seed_tickets(40)
    mapping = load_mapping("zendesk")
    ticket_id = recent_l1_ticket(sandbox)
    clock.advance(30 * M)
    # The severity dropdown wins over the native priority: clear it so the native "urgent" applies.
    sandbox.update(ticket_id, priority="urgent", custom_fields=[{"id": FIELD_SEVERITY, "value": None}])
    changed = clock.now()
    polled = read(sandbox, ticket_id, mapping)
    assert polled.priority is Priority.P1
    assert polled.priority_changes is not None and len(polled.priority_changes) >= 2
    assert polled.priority_changes[-1] == PriorityChange(changed, Priority.P1)
    record = connector(mapping, sandbox.transport()).fetch(str(ticket_id))  # the audits of a single read
    assert record is not None
    assert mapping.normalize(record, "acme-zendesk").priority_changes == polled.priority_changes


def test_issue9_item4_jsm_reads_priority_changes_from_the_changelog() -> None:
    from sandbox.base import SimClock
    from sandbox.jsm import JsmSandbox
    from tests.test_jsm_history import START, connector, fresh_issue, read

    clock = SimClock(START)
    sandbox = JsmSandbox(clock, seed=3)
    sandbox.seed_tickets(20)
    jsm = connector(load_mapping("jsm"), sandbox.transport())
    key = fresh_issue(sandbox)  # priority High
    clock.advance(30 * M)
    sandbox.update(key, priority="Highest")
    changed = clock.now()
    ticket = read(jsm, key)
    assert ticket.priority is Priority.P1
    assert ticket.priority_changes is not None
    assert ticket.priority_changes[-1] == PriorityChange(changed, Priority.P1)
    assert ticket.priority_changes[-2].priority is Priority.P2
    assert ticket.priority_changes[0].at == ticket.created_at


def test_issue9_item4_servicenow_reads_priority_changes_from_sys_audit() -> None:
    from sandbox.base import SimClock
    from sandbox.servicenow import ServiceNowSandbox
    from tests.test_servicenow_history import START, USER, open_l1_incident, read, sandbox_connector

    clock = SimClock(START)
    sandbox = ServiceNowSandbox(clock, credentials=USER)
    sandbox.seed_tickets(30)
    snow = sandbox_connector(sandbox)
    sys_id = open_l1_incident(sandbox)  # priority 2
    clock.advance(30 * M)
    sandbox.update(sys_id, impact="1", urgency="1")  # the priority lookup makes it 1 - Critical
    changed = clock.now()
    ticket = read(snow, sys_id)
    assert ticket.priority is Priority.P1
    assert ticket.priority_changes is not None
    assert ticket.priority_changes[-1] == PriorityChange(changed, Priority.P1)
    assert ticket.priority_changes[-2].priority is Priority.P2


def test_issue9_item2_a_lagging_tier_history_still_shows_the_human_move() -> None:
    # The platform's history does not show the move back yet (an export that lags): the ticket is at L1 below
    # our L2 entry, so a person moved it, at the latest at its last update.
    lagging = moved_back(
        tier_changes=(TierChange(T0, Tier.L1), TierChange(ESCALATED, Tier.L2)),
        tier_entered_at=T0,
        flags=Flags(customer_requested=True),
    )
    decision = evaluate(lagging, POLICY, MOVED_BACK + 1 * M, OURS)
    assert decision.target_tier is Tier.L1
    held = next(rule for rule in decision.rules if rule.name == "customer-requested")
    assert "held off" in held.reason
    assert "at L1 for" not in " ".join(rule.reason for rule in decision.fired)
    unread = replace(lagging, tier_changes=None)
    assert evaluate(unread, POLICY, MOVED_BACK + 1 * M, OURS).target_tier is Tier.L1


# Item 2 through real cycles: Syncer, connector, mapping, engine and store against each platform's sandbox.


def _move_down(platform: str) -> Callable[[Any, Any], Any]:
    from sandbox.servicenow import TIER_GROUPS
    from sandbox.zendesk import GROUP_L1

    return {
        "zendesk": lambda sandbox, ticket: sandbox.update(ticket, group_id=GROUP_L1),
        "jsm": lambda sandbox, ticket: sandbox.update(ticket, tier="L1 - Service Desk"),
        "servicenow": lambda sandbox, ticket: sandbox.update(ticket, assignment_group=TIER_GROUPS[0]),
    }[platform]


@pytest.mark.parametrize("platform", ["jsm", "servicenow", "zendesk"])
def test_issue9_item2_cycle_a_person_moving_the_ticket_down_is_respected(platform: str, tmp_path: Path) -> None:
    from tests.test_cycle import PLATFORMS, World
    from tests.test_reviews import IDLE

    world = World(tmp_path, PLATFORMS[platform], tickets=0)
    try:
        calendar = world.config.policy.sla[Priority.P3].calendar
        ticket = IDLE[platform].create(world.sandbox, world.clock.now())
        syncer = world.syncer()
        step = 5 * M

        def cycle() -> str | None:
            report = syncer.run_cycle()
            assert report.error == ""
            world.clock.advance(step)
            return world.sandbox.escalation_view(ticket)[0]

        deadline = calendar.add_business_time(world.clock.now(), 3 * H)
        tier = cycle()
        while tier != "L2" and world.clock.now() < deadline:
            tier = cycle()
        assert tier == "L2"
        world.clock.advance(10 * M)
        _move_down(platform)(world.sandbox, ticket)  # an agent sends it back to the front line
        moved = world.clock.now()
        limit = calendar.add_business_time(moved, 2 * H)
        while world.clock.now() < limit - 10 * M:
            assert cycle() == "L1", f"fought the person at {world.clock.now()}"
        while tier := cycle():
            if tier == "L2" or world.clock.now() > limit + 30 * M:
                break
        assert tier == "L2" and world.clock.now() >= limit
        notes = world.marker_counts()
        assert sorted(key.rsplit(":", 2)[-2:] != ["L2", "2"] for key in notes) == [False, True], notes
        assert set(notes.values()) == {1}, "one note per escalation"
        first = next(key for key in notes if key.endswith(":L2"))
        ticket_id = first.split(":")[-2]
        entries = [tier for tier, _ in world.store.tier_entries(world.name, ticket_id)]
        assert entries.count("L2") == 2
        for _ in range(2):  # ten minutes later: L2's clocks run from the new entry, nothing breached
            cycle()
        assert not {tag for tag in world.sandbox.escalation_view(ticket)[1] if "breached" in tag}
    finally:
        world.close()


def test_issue9_item2_stale_copies_plan_the_same_key_never_a_second_note() -> None:
    # The book's copy from before our first write (its echo not polled yet): no person moved anything.
    before_write = ticket(updated_at=T0)
    decision = evaluate(before_write, POLICY, ESCALATED + 5 * M, OURS)
    assert decision.comment is not None and decision.comment.idempotency_key == "acme:42:L2"
    # The copy from after the person's move, reviewed once the re-escalation was written and recorded: the
    # same move, the same key (its ledger intent is done, so the note is not posted again).
    at = MOVED_BACK + 2 * H + 1 * M
    again = EscalationHistory(tier_entries=((Tier.L2, ESCALATED), (Tier.L2, at)))
    stale = evaluate(moved_back(), POLICY, at + 5 * M, again)
    assert stale.comment is not None and stale.comment.idempotency_key == "acme:42:L2:2"


def test_issue9_item5_a_lagging_echo_keeps_the_previous_tiers_breach() -> None:
    entered, now = T0 + 1 * H, T0 + 1 * H + 20 * M
    at_l3 = ticket(
        tier=Tier.L3,
        tier_entered_at=now,
        tier_changes=(TierChange(T0, Tier.L1), TierChange(entered, Tier.L2)),  # L3 not in the history yet
        tags=frozenset({"esc_l2_breached_acknowledgment"}),
        updated_at=now,
    )
    history = EscalationHistory(tier_entries=((Tier.L2, entered), (Tier.L3, now)))
    writeback = plan(evaluate(at_l3, POLICY, now + 5 * M, history), at_l3, TAGS)
    assert "esc_l2_breached_acknowledgment" not in writeback.remove_tags


def test_issue9_item5_notifications_and_the_report_read_tier_tags_as_breaches() -> None:
    from runtime.notify import Event, Route, notices_for

    assert TAGS.clock_of("esc_l3_breached_acknowledgment", "breached") == "acknowledgment"
    assert TAGS.clock_of("esc_breached_resolution", "breached") == "resolution"
    assert TAGS.clock_of("esc_l2_at_risk_assessment", "at_risk") == "assessment"
    assert TAGS.clock_of("esc_management", "breached") is None
    route = Route(name="pager", kind="pagerduty", routing_key_env="PD_KEY")
    event = Event("written", "acme", "42", T0, {"add_tags": ["esc_l3_breached_acknowledgment"]})
    notices = notices_for(event, [route], TAGS)
    assert [notice.topic for notice in notices] == ["breach:acknowledgment"]

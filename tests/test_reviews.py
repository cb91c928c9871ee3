"""Time passing: tickets nobody touches are reviewed from the open-ticket book and escalate on time.

The real Syncer, connectors, HTTP layer, mappings, engine and SQLite store run against each platform's
sandbox; the sandbox's clock is the only clock. Expected moments are computed from the policy's own calendar,
so a wrong business-time sum in the daemon and a wrong expectation cannot agree by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.model import Priority
from runtime.cycle import CycleReport, Syncer
from tests.test_cycle import PLATFORMS, World, crash_once_before_done

CYCLE = timedelta(minutes=5)


@dataclass(frozen=True)
class Idle:
    """How to create a plain, untouched P3 ticket at L1 on each sandbox, and how to age one."""

    create: Callable[[Any, datetime], Any]
    close: Callable[[Any, Any], None]


IDLE = {
    "zendesk": Idle(
        create=lambda sandbox, at: sandbox.add_idle_ticket(at),
        close=lambda sandbox, ticket: sandbox.update(ticket, status="solved"),
    ),
    "jsm": Idle(
        create=lambda sandbox, at: sandbox.add_idle_ticket(at),
        close=lambda sandbox, ticket: sandbox.update(ticket, status="Resolved"),
    ),
    "servicenow": Idle(
        create=lambda sandbox, at: sandbox.add_idle_ticket(at),
        close=lambda sandbox, ticket: sandbox.update(ticket, state="6", close_code="Solved (Permanently)"),
    ),
}


@pytest.fixture(params=sorted(PLATFORMS))
def empty_world(request: pytest.FixtureRequest, tmp_path: Path):
    created = World(tmp_path, PLATFORMS[request.param], tickets=0)
    created.idle = IDLE[request.param]  # type: ignore[attr-defined]
    yield created
    created.close()


def booked(world: World) -> tuple[Any, Syncer]:
    """An untouched ticket created now, read into the book by a first cycle two minutes later (Zendesk's
    export leaves out the last minute)."""
    ticket = world.idle.create(world.sandbox, world.clock.now())  # type: ignore[attr-defined]
    world.clock.advance(timedelta(minutes=2))
    syncer = world.syncer()
    syncer.run_cycle()
    return ticket, syncer


def run_until(world: World, syncer: Syncer, end: datetime, watch: Any) -> tuple[dict[str, datetime], list[int]]:
    """Cycles every CYCLE until `end`; when each tier and tag first appeared on the platform, and the number
    of requests sent (read from the sandbox's own request log) by each idle cycle: one whose poll found no
    change and that wrote nothing (the first cycle, which also scans every open ticket, is not idle)."""
    first_seen: dict[str, datetime] = {}
    idle_calls: list[int] = []
    start = world.clock.now()
    while world.clock.now() <= end:
        before = len(world.sandbox.requests)
        writes_before = world.writes()
        report = syncer.run_cycle()
        assert report.error == ""
        tier, tags = world.sandbox.escalation_view(watch)
        for seen in (tier, *tags):
            first_seen.setdefault(seen, world.clock.now())
        first_sweep = report.started_at == start
        if world.writes() == writes_before and report.tickets_seen == 0 and not first_sweep:
            idle_calls.append(len(world.sandbox.requests) - before)
        world.clock.advance(CYCLE)
    return first_seen, idle_calls


def test_an_untouched_ticket_escalates_and_is_tagged_on_time(empty_world: World) -> None:
    world = empty_world
    policy = world.config.policy
    start = world.clock.now()
    ticket = world.idle.create(world.sandbox, start)  # type: ignore[attr-defined]
    syncer = world.syncer()
    calendar = policy.sla[Priority.P3].calendar
    add = calendar.add_business_time
    l2 = add(start, timedelta(hours=policy.thresholds["l1_max_hours"]))
    l3 = add(l2, timedelta(hours=policy.thresholds["l2_max_hours"]))
    sla, fraction = policy.sla[Priority.P3], policy.at_risk_fraction
    ack = policy.tiers[policy_tier("L2")].acknowledgment
    assessment = policy.tiers[policy_tier("L2")].assessment
    second = timedelta(seconds=1)

    def breach(start: datetime, target: timedelta) -> datetime:
        """Breached is elapsed > target: the instant after the target, in business time (a target that ends
        at closing time is breached at the next opening)."""
        return add(start, target + second) - second

    first_seen, idle_calls = run_until(world, syncer, l3 + timedelta(minutes=30), ticket)
    # The time limits are strict ("> 2 hours"): the cycle at the limit itself does not move the ticket, the one
    # after it does, and L2's own clocks and limit count from that move.
    entered = first_seen["L2"]
    expected = {
        "L2": l2,
        "L3": add(entered, timedelta(hours=policy.thresholds["l2_max_hours"])),
        "esc_at_risk_first_response": add(start, sla.first_response * fraction),
        "esc_breached_first_response": breach(start, sla.first_response),
        "esc_l2_at_risk_acknowledgment": add(entered, ack * fraction),
        "esc_l2_breached_acknowledgment": breach(entered, ack),
        "esc_l2_at_risk_assessment": add(entered, assessment * fraction),
        "esc_l2_breached_assessment": breach(entered, assessment),
    }
    for name, moment in expected.items():
        assert name in first_seen, f"{name} never appeared"
        # At the moment itself or within one cycle after it: never before (a breach is strictly after).
        assert moment <= first_seen[name] <= moment + CYCLE, (name, moment, first_seen[name])
    assert idle_calls and set(idle_calls) == {1}, "an idle cycle is exactly one read"
    notes = world.marker_counts()
    assert len(notes) == 2 and set(notes.values()) == {1}, "one handoff note per escalation"


def policy_tier(name: str) -> Any:
    from engine.model import Tier

    return Tier(name)


def test_the_first_cycle_finds_open_tickets_older_than_the_look_back(empty_world: World) -> None:
    world = empty_world
    old = world.clock.now() - timedelta(days=30)
    ticket = world.idle.create(world.sandbox, old)  # type: ignore[attr-defined]
    report = world.syncer().run_cycle()
    assert report.scanned >= 1
    tier, _ = world.sandbox.escalation_view(ticket)
    assert tier in ("L2", "L3"), "a month at L1 is far past both limits"
    assert report.comments == 1


def test_a_closed_ticket_leaves_the_book_on_the_next_poll(empty_world: World) -> None:
    world = empty_world
    ticket, syncer = booked(world)
    assert world.store.book_stats(world.name, world.clock.now())[0] == 1
    world.clock.advance(CYCLE)
    world.idle.close(world.sandbox, ticket)  # type: ignore[attr-defined]
    world.clock.advance(CYCLE)
    syncer.run_cycle()
    assert world.store.book_stats(world.name, world.clock.now())[0] == 0
    # Nothing is reviewed again, however late it gets.
    world.clock.advance(timedelta(days=3))
    assert syncer.run_cycle().reviewed == 0


def test_a_deleted_ticket_leaves_the_book(empty_world: World) -> None:
    world = empty_world
    ticket, syncer = booked(world)
    if not hasattr(world.sandbox, "delete"):
        pytest.skip("this sandbox cannot delete")
    world.sandbox.delete(ticket)
    # Zendesk's export shows a tombstone; ServiceNow drops the record: the first refused review finds out.
    world.clock.advance(timedelta(hours=3))
    syncer.run_cycle()
    world.clock.advance(CYCLE)
    syncer.run_cycle()
    assert world.store.book_stats(world.name, world.clock.now())[0] == 0
    world.clock.advance(timedelta(days=2))
    assert syncer.run_cycle().writes == 0


def test_an_edit_between_our_read_and_our_write_is_never_clobbered(empty_world: World) -> None:
    world = empty_world
    ticket, syncer = booked(world)
    world.clock.advance(timedelta(hours=2, minutes=1))
    real_poll = syncer.connector.poll

    def poll_then_someone_edits(cursor, now):
        page = real_poll(cursor, now)
        edit_by_someone_else(world, ticket)
        return page

    syncer.connector.poll = poll_then_someone_edits  # type: ignore[method-assign]
    report = syncer.run_cycle()
    syncer.connector.poll = real_poll  # type: ignore[method-assign]
    assert report.error == ""
    tier, tags = world.sandbox.escalation_view(ticket)
    assert tier == "L2", "the review's escalation still lands"
    assert "vip_watch" in tags, "the other person's edit survives our write"
    assert set(world.marker_counts().values()) == {1}


def edit_by_someone_else(world: World, ticket: Any) -> None:
    platform = world.platform.section.platform
    if platform == "zendesk":
        tags = sorted(world.sandbox.ticket(ticket)["tags"])
        world.sandbox.update(ticket, tags=[*tags, "vip_watch"])
    elif platform == "jsm":
        _, labels = world.sandbox.escalation_view(ticket)
        world.sandbox.update(ticket, labels=[*sorted(labels), "vip_watch"])
    else:
        world.sandbox.update(ticket, u_tags="vip_watch")  # people's tags field: the daemon never writes it


def test_a_crash_between_a_reviews_write_and_done_leaves_one_note(empty_world: World) -> None:
    world = empty_world
    ticket = world.idle.create(world.sandbox, world.clock.now())  # type: ignore[attr-defined]
    world.clock.advance(timedelta(minutes=2))  # Zendesk's export leaves out the last minute
    world.syncer().run_cycle()
    world.clock.advance(timedelta(hours=2, minutes=1))
    original = world.store.mark_done
    crash_once_before_done(world.store)
    with pytest.raises(RuntimeError, match="injected crash"):
        world.syncer().run_cycle()
    world.store.mark_done = original  # type: ignore[method-assign]
    world.clock.advance(CYCLE)
    report = world.syncer().run_cycle()
    assert report.recovered == 1
    assert world.store.pending(world.name) == []
    assert world.sandbox.escalation_view(ticket)[0] == "L2"
    assert set(world.marker_counts().values()) == {1} and len(world.marker_counts()) == 1
    # The recovered escalation is in the history: L2's clocks run from it, nothing restarts.
    assert [tier for tier, _ in world.store.tier_entries(world.name, str(ticket_id_of(world, ticket)))] == ["L2"]


def ticket_id_of(world: World, ticket: Any) -> str:
    if world.platform.section.platform == "jsm":
        return str(world.sandbox.ticket(ticket)["id"])
    return str(ticket)


def test_the_write_cap_spreads_a_backlog_over_cycles_most_urgent_first(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        now = world.clock.now()
        urgent = [world.sandbox.add_idle_ticket(now - timedelta(days=3), priority="urgent") for _ in range(4)]
        calm = [world.sandbox.add_idle_ticket(now - timedelta(days=3), priority="low") for _ in range(11)]
        world.config = replace(world.config, daemon=world.config.daemon.model_copy(update={"max_writes_per_cycle": 4}))
        syncer = world.syncer()
        written: list[list[int]] = []
        reports: list[CycleReport] = []
        for _ in range(6):
            before = {t: world.sandbox.escalation_view(t) for t in urgent + calm}
            reports.append(syncer.run_cycle())
            written.append([t for t in urgent + calm if world.sandbox.escalation_view(t) != before[t]])
            world.clock.advance(CYCLE)
        assert all(report.writes <= 4 for report in reports)
        assert sorted(written[0]) == sorted(urgent), "breached P1s first"
        assert reports[0].deferred == 1 and reports[0].book_due == len(calm)
        assert {t for batch in written for t in batch} == set(urgent + calm), "nothing is lost"
        assert all(world.sandbox.escalation_view(t)[0] in ("L2", "L3") for t in urgent + calm)
        assert set(world.marker_counts().values()) == {1}
    finally:
        world.close()


def test_adopting_tag_only_writes_tiers_without_back_dated_notes(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        world.platform = replace(
            world.platform, section=world.platform.section.model_copy(update={"adopt": "tag_only"})
        )
        old = world.sandbox.add_idle_ticket(world.clock.now() - timedelta(days=3))
        fresh = world.sandbox.add_idle_ticket(world.clock.now())
        syncer = world.syncer()
        first = syncer.run_cycle()
        assert world.sandbox.escalation_view(old)[0] == "L2"
        assert first.comments == 0, "an escalation overdue before the daemon first saw the ticket gets no note"
        world.clock.advance(timedelta(hours=3))
        syncer.run_cycle()
        assert world.sandbox.escalation_view(fresh)[0] == "L2"
        keys = world.marker_counts()
        assert len(keys) == 1 and all(f":{fresh}:" in key for key in keys), "a live escalation gets its note"
    finally:
        world.close()


def test_the_scan_of_all_open_tickets_reports_its_progress(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["jsm"], tickets=0)  # 25 issues a page
    try:
        start = world.clock.now()
        for days in range(70, 0, -1):
            world.sandbox.add_idle_ticket(start - timedelta(days=days))
        syncer = world.syncer()
        progress: list[dict[str, Any]] = []
        syncer.on_event = lambda event: progress.append(event.detail) if event.kind == "scan_progress" else None
        report = syncer.run_cycle()
        # The first poll's look-back (72 h) found the three newest; the scan read the rest, 25 a page.
        assert report.tickets_seen == 70 and report.scanned == 67
        assert [step["pages"] for step in progress] == [1, 2, 3]
        counts = [step["tickets"] for step in progress]
        assert counts == sorted(counts) and counts[0] == 25 and counts[-1] == 67  # keyset pages share an edge
        assert [step["done"] for step in progress] == [False, False, True]
        assert all(step["eta_seconds"] is not None for step in progress[:-1]) and progress[-1]["eta_seconds"] is None
        assert world.store.book_stats(world.name, start)[0] == 70
    finally:
        world.close()


def test_an_escalated_ticket_that_closes_records_its_resolution_once(empty_world: World) -> None:
    world = empty_world
    ticket = world.idle.create(world.sandbox, world.clock.now())  # type: ignore[attr-defined]
    world.clock.advance(timedelta(minutes=2))
    syncer = world.syncer()
    syncer.run_cycle()
    world.clock.advance(timedelta(hours=2, minutes=5))
    syncer.run_cycle()
    ticket_id = ticket_id_of(world, ticket)
    customer = world.store.book_entry(world.name, ticket_id).customer  # type: ignore[union-attr]
    counted = world.store.escalations_since(customer, world.clock.now() - timedelta(days=30))
    world.idle.close(world.sandbox, ticket)  # type: ignore[attr-defined]
    world.clock.advance(CYCLE)
    syncer.run_cycle()
    world.clock.advance(CYCLE)
    syncer.run_cycle()
    tiers = [tier for tier, _ in world.store.tier_entries(world.name, ticket_id)]
    assert tiers == ["L2", "RESOLVED"]
    assert world.store.escalations_since(customer, world.clock.now() - timedelta(days=30)) == counted


def test_a_ticket_whose_new_version_is_quarantined_is_not_reviewed_from_its_old_one(tmp_path: Path) -> None:
    from sandbox.zendesk import FIELD_SEVERITY, UNMAPPED_SEVERITY

    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        world.idle = IDLE["zendesk"]  # type: ignore[attr-defined]
        ticket, syncer = booked(world)
        world.sandbox.update(ticket, custom_fields=[{"id": FIELD_SEVERITY, "value": UNMAPPED_SEVERITY}])
        world.clock.advance(timedelta(minutes=2))
        assert syncer.run_cycle().quarantined == 1
        writes = world.writes()
        world.clock.advance(timedelta(hours=3))  # long past the L1 limit of the version in the book
        syncer.run_cycle()
        assert world.writes() == writes and world.sandbox.escalation_view(ticket)[0] == "L1"
    finally:
        world.close()


def test_a_rule_whose_time_use_cannot_be_solved_is_looked_at_every_fallback_interval(tmp_path: Path) -> None:
    import tomllib

    from engine.policy import policy_from_dict

    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        data = tomllib.loads((Path(__file__).parent.parent / "config.example.toml").read_text())["policy"]
        data["rules"] = [{"name": "minutes-at-l1", "when": "hours_at_tier * 60.0 >= 120.0", "tier": "L2"}]
        interval = timedelta(minutes=40)
        daemon = world.config.daemon.model_copy(update={"review_interval_seconds": interval.total_seconds()})
        world.config = replace(world.config, policy=policy_from_dict(data), daemon=daemon)
        world.idle = IDLE["zendesk"]  # type: ignore[attr-defined]
        start = world.clock.now()
        ticket, syncer = booked(world)
        entry = world.store.book_entry(world.name, str(ticket))
        assert entry is not None and entry.review_at == world.clock.now() + interval
        while world.sandbox.escalation_view(ticket)[0] == "L1":
            world.clock.advance(timedelta(minutes=5))
            syncer.run_cycle()
        limit = world.config.policy.sla[Priority.P3].calendar.add_business_time(start, timedelta(hours=2))
        assert limit <= world.clock.now() <= limit + interval, "escalated within one fallback interval"
    finally:
        world.close()

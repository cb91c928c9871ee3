"""Our own write is no person's action: the clocks that start with our escalation keep running until someone acts.

When our write moves a Zendesk ticket's group, Zendesk clears an assignee who is not in the new group, in the
same audit, authored by our API user (the sandbox models it). The daemon dates a clock that starts with our write
from its own store row, the cycle's `now`, taken before the write arrives: so the audit's `created_at` comes
after the start, and a reader counting that clearing as an agent action stops the clock at once. The scenarios
run the real Syncer against each platform's sandbox with the cycle's clock LAG behind the platform's, as a real
cycle's writes arrive after its `now` (with one shared clock the audit and the start are the same instant, and
nothing after the start can be seen).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from engine.model import COMMENT_MARKER, Priority
from mappings import load_mapping
from mappings.zendesk import ZendeskMapping
from runtime.cycle import Syncer
from runtime.wiring import wire
from sandbox.zendesk import API_USER_ID, GROUP_L1, GROUP_L2
from tests.test_cycle import PLATFORMS, World
from tests.test_reviews import IDLE

M = timedelta(minutes=1)
CYCLE = 5 * M
LAG = timedelta(seconds=30)
"""How long after the cycle's `now` its write reaches the platform (a poll, the evaluation, earlier writes)."""


def lagging_syncer(world: World) -> Syncer:
    """The world's Syncer with its clock LAG behind the sandbox's."""
    wired = wire(
        world.config,
        world.platform.section,
        world.store,
        environ=world.platform.environ,
        clock=lambda: world.clock.now() - LAG,
        transport=world.sandbox.transport(),
        sleep=lambda _: None,
    )
    world.wired.append(wired)
    wired.syncer.retry_backoff = timedelta(0)
    return wired.syncer


def first_cycle_showing(world: World, syncer: Syncer, ticket: Any, tag: str, until: datetime) -> datetime | None:
    """Run cycles until `tag` is on the ticket after one; that cycle's `now`, or None by `until`."""
    while world.clock.now() - LAG < until:
        now = world.clock.now() - LAG
        report = syncer.run_cycle()
        assert report.error == ""
        world.clock.advance(CYCLE)
        if tag in world.sandbox.escalation_view(ticket)[1]:
            return now
    return None


def entered(world: World, label: str) -> datetime:
    """When the store recorded our write of `label` (a tier, or MGMT for the management track's start)."""
    ticket_id = next(iter(world.marker_counts())).split(":")[-2]  # the one ticket's note: ...:{id}:{tier}
    return max(at for recorded, at in world.store.tier_entries(world.name, ticket_id) if recorded == label)


# -- the facts on Zendesk: the assignee is cleared by our move, and the new tier's clock still runs -----------


def test_zendesk_our_move_to_l2_clears_the_l1_assignee_and_l2_acknowledgment_still_breaches(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        calendar = world.config.policy.sla[Priority.P3].calendar
        ticket = IDLE["zendesk"].create(world.sandbox, world.clock.now())
        world.sandbox.update(ticket, assignee_id=world.sandbox.agents(GROUP_L1)[0])
        syncer = lagging_syncer(world)
        deadline = calendar.add_business_time(world.clock.now(), 3 * 60 * M)
        while world.sandbox.escalation_view(ticket)[0] != "L2" and world.clock.now() < deadline:
            assert syncer.run_cycle().error == ""
            world.clock.advance(CYCLE)
        assert world.sandbox.escalation_view(ticket)[0] == "L2"
        assert world.sandbox.ticket(ticket)["assignee_id"] is None, "the sandbox clears the L1 assignee"
        target = calendar.add_business_time(entered(world, "L2"), 15 * M)  # [policy.tiers.L2] acknowledgment
        breached = first_cycle_showing(world, syncer, ticket, "esc_l2_breached_acknowledgment", target + 2 * CYCLE)
        assert breached is not None, "our own assignee-clearing acknowledged L2"
        assert target < breached <= target + CYCLE
    finally:
        world.close()


# -- the management track started by the same write: its acknowledgment is owed by a person ---------------------


def _flag_security(platform: str) -> Callable[[Any, Any], None]:
    """Mark the idle ticket security/legal (the security-legal rule: L3 and management in one write); on
    Zendesk it also gets an L1 assignee, whom our move to L3 clears."""

    def zendesk(sandbox: Any, ticket: Any) -> None:
        tags = sorted(sandbox.escalation_view(ticket)[1] | {"security_concern"})
        sandbox.update(ticket, assignee_id=sandbox.agents(GROUP_L1)[0], tags=tags)

    return {
        "zendesk": zendesk,
        "jsm": lambda sandbox, ticket: sandbox.update(ticket, labels=[*sandbox.escalation_view(ticket)[1], "security"]),
        "servicenow": lambda sandbox, ticket: sandbox.update(ticket, u_security_legal="true"),
    }[platform]


@pytest.mark.parametrize("platform", ["jsm", "servicenow", "zendesk"])
def test_the_management_acknowledgment_started_by_our_write_breaches_at_its_target(
    platform: str, tmp_path: Path
) -> None:
    world = World(tmp_path, PLATFORMS[platform], tickets=0)
    try:
        ticket = IDLE[platform].create(world.sandbox, world.clock.now())
        _flag_security(platform)(world.sandbox, ticket)
        syncer = lagging_syncer(world)
        for _ in range(3):
            assert syncer.run_cycle().error == ""
            world.clock.advance(CYCLE)
        tier, tags = world.sandbox.escalation_view(ticket)
        assert tier == "L3" and "esc_management" in tags
        if platform == "zendesk":
            assert world.sandbox.ticket(ticket)["assignee_id"] is None, "the sandbox clears the L1 assignee"
        target = entered(world, "MGMT") + 30 * M  # [policy.management] acknowledgment, around the clock
        tag = "esc_breached_mgmt_acknowledgment"
        breached = first_cycle_showing(world, syncer, ticket, tag, target + 2 * CYCLE)
        assert breached is not None, "our own write acknowledged the management track"
        assert target < breached <= target + CYCLE
    finally:
        world.close()


# -- the same on each Zendesk history path the mapping reads: the event export and the ticket's audits -------


@pytest.fixture(scope="module")
def mapping() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


def _audit(at: str, updater: int, *children: dict[str, Any]) -> dict[str, Any]:
    return {"id": len(at), "created_at": at, "updater_id": updater, "child_events": list(children)}


REQUESTER, L1_AGENT, L2_AGENT = 9001, 9002, 9003
CREATED = _audit(
    "2026-11-24T09:00:00Z",
    REQUESTER,
    {"event_type": "Create", "status": "open"},
    {"event_type": "Create", "group_id": GROUP_L1},
    {"event_type": "Comment", "author_id": REQUESTER, "body": "Export fails", "public": True},
)
ASSIGNED = _audit("2026-11-24T09:10:00Z", L1_AGENT, {"event_type": "Change", "assignee_id": L1_AGENT})
OUR_MOVE = _audit(
    "2026-11-24T11:05:30Z",
    API_USER_ID,
    {"event_type": "Change", "group_id": GROUP_L2, "previous_value": GROUP_L1},
    {"event_type": "Change", "assignee_id": None, "previous_value": L1_AGENT},
    {"event_type": "Comment", "author_id": API_USER_ID, "public": False, "body": COMMENT_MARKER.format(key="k:1:L2")},
)
A_PERSONS_MOVE = _audit(
    "2026-11-24T11:05:30Z",
    L1_AGENT,
    {"event_type": "Change", "group_id": GROUP_L2, "previous_value": GROUP_L1},
    {"event_type": "Change", "assignee_id": None, "previous_value": L1_AGENT},
)
TAKEN = _audit("2026-11-24T11:40:00Z", L2_AGENT, {"event_type": "Change", "assignee_id": L2_AGENT})
TICKET = {
    "id": 77,
    "status": "open",
    "priority": "normal",
    "requester_id": REQUESTER,
    "group_id": GROUP_L2,
    "assignee_id": None,
    "tags": [],
    "created_at": "2026-11-24T09:00:00Z",
    "updated_at": "2026-11-24T11:05:30Z",
}


def _as_audits(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same history as the Ticket Audits API returns it (`_audits_as_events` reads it back)."""
    audits = []
    for event in events:
        items = []
        for child in event["child_events"]:
            if child["event_type"] == "Comment":
                items.append({**child, "type": "Comment"})
                continue
            name = next(key for key in child if key not in ("event_type", "previous_value"))
            item = {"type": child["event_type"], "field_name": name, "value": child[name]}
            if "previous_value" in child:
                item["previous_value"] = child["previous_value"]
            items.append(item)
        audits.append(
            {
                "id": str(event["id"]),
                "created_at": event["created_at"],
                "author_id": str(event["updater_id"]),
                "events": items,
            }
        )
    return audits


def _record(events: list[dict[str, Any]], path: str, ticket: dict[str, Any] = TICKET) -> RawRecord:
    if path == "audits":
        return RawRecord(id="77", data=ticket, related={"ticket_audits": _as_audits(events)})
    window = [int(datetime.fromisoformat("2026-11-24T08:00:00+00:00").timestamp()), 2_000_000_000]
    return RawRecord(id="77", data=ticket, related={"ticket_events": events, "ticket_events_window": window})


@pytest.mark.parametrize("path", ["events", "audits"])
def test_zendesk_the_assignee_our_move_cleared_is_no_agent_action(mapping: ZendeskMapping, path: str) -> None:
    ticket = mapping.normalize(_record([CREATED, ASSIGNED, OUR_MOVE], path), "zd")
    assert ticket.missing_facts == frozenset()
    assert [change.tier for change in ticket.tier_changes][-1] is not None  # the move itself is in the history
    assert ticket.agent_actions == (datetime.fromisoformat("2026-11-24T09:10:00+00:00"),)


@pytest.mark.parametrize("path", ["events", "audits"])
def test_zendesk_a_person_acting_after_our_move_still_counts(mapping: ZendeskMapping, path: str) -> None:
    later = {**TICKET, "assignee_id": L2_AGENT, "updated_at": "2026-11-24T11:40:00Z"}
    ticket = mapping.normalize(_record([CREATED, ASSIGNED, OUR_MOVE, TAKEN], path, later), "zd")
    assert ticket.agent_actions is not None
    assert ticket.agent_actions[-1] == datetime.fromisoformat("2026-11-24T11:40:00+00:00")
    assert len(ticket.agent_actions) == 2


@pytest.mark.parametrize("path", ["events", "audits"])
def test_zendesk_a_persons_own_group_move_is_read_as_before(mapping: ZendeskMapping, path: str) -> None:
    # No note of ours in the audit: the assignee change is the person's, counted as it always was.
    ticket = mapping.normalize(_record([CREATED, ASSIGNED, A_PERSONS_MOVE], path), "zd")
    assert ticket.agent_actions is not None and len(ticket.agent_actions) == 2

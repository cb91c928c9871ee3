"""Our write without a note is no person's action either (Zendesk): `adopt = "tag_only"`, or any write of tier
and tags that posts no note (a de-escalation, a tag update).

Such a write's audit carries no marker of ours, so `_is_our_write` cannot recognise it; when it moves the group,
Zendesk clears an assignee who is not in the new group in the same audit, authored by our API user, and the
history reader counted that clearing as an agent action: the new tier's acknowledgment was met by our own write.
The audit is recognised by its shape instead: changes to the tags this daemon manages, the tier, and an assignee
cleared to nobody, and nothing else. A person touching only our tags has acknowledged nothing; a person doing
anything more (a comment, a status, an assignee of their own choosing) is read as before.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mappings import load_mapping
from mappings.zendesk import ZendeskMapping
from runtime.cycle import Syncer
from sandbox.zendesk import API_USER_ID, GROUP_L1, GROUP_L2
from tests.test_cycle import PLATFORMS, World
from tests.test_own_write import (
    ASSIGNED,
    CREATED,
    L1_AGENT,
    L2_AGENT,
    TICKET,
    M,
    _audit,
    _record,
    first_cycle_showing,
    lagging_syncer,
)

BEFORE = ["area_api", "sev_3"]
"""The ticket's tags before our write (a person's and the platform's: none of them ours)."""


def _tags(after: list[str], before: list[str] = BEFORE) -> dict[str, Any]:
    """A tags change as the ticket event export shows it (the whole list, and the one before as
    `previous_value`); the Ticket Audits API form (`field_name: "tags"`, `value`) follows by `_as_audits`."""
    return {"event_type": "Change", "tags": after, "previous_value": before}


OUR_TAG_ONLY_MOVE = _audit(
    "2026-11-24T11:05:30Z",
    API_USER_ID,
    {"event_type": "Change", "group_id": GROUP_L2, "previous_value": GROUP_L1},
    {"event_type": "Change", "assignee_id": None, "previous_value": L1_AGENT},
    _tags([*BEFORE, "esc_breached_first_response"]),
)
MOVED = {**TICKET, "tags": [*BEFORE, "esc_breached_first_response"]}
ACK = datetime.fromisoformat("2026-11-24T09:10:00+00:00")


@pytest.fixture(scope="module")
def mapping() -> ZendeskMapping:
    loaded = load_mapping("zendesk")
    assert isinstance(loaded, ZendeskMapping)
    return loaded


@pytest.mark.parametrize("path", ["events", "audits"])
def test_zendesk_the_assignee_our_tag_only_move_cleared_is_no_agent_action(mapping: ZendeskMapping, path: str) -> None:
    ticket = mapping.normalize(_record([CREATED, ASSIGNED, OUR_TAG_ONLY_MOVE], path, MOVED), "zd")
    assert ticket.missing_facts == frozenset()
    assert ticket.tier_changes is not None and ticket.tier_changes[-1].tier is not None  # the move is read
    assert ticket.agent_actions == (ACK,)


def test_zendesk_the_tags_of_the_added_and_removed_lists_are_read_too(mapping: ZendeskMapping) -> None:
    """The event export may also list what a tags change added and removed: those name the same tags."""
    listed = {**_tags([*BEFORE, "esc_breached_first_response"]), "added_tags": ["esc_breached_first_response"]}
    listed["removed_tags"] = []
    move = _audit("2026-11-24T11:05:30Z", API_USER_ID, *OUR_TAG_ONLY_MOVE["child_events"][:2], listed)
    ticket = mapping.normalize(_record([CREATED, ASSIGNED, move], "events"), "zd")
    assert ticket.agent_actions == (ACK,)


PERSON = "2026-11-24T11:05:30Z"
COUNTED = [
    (
        "a foreign tag with ours",
        [
            {"event_type": "Change", "group_id": GROUP_L2, "previous_value": GROUP_L1},
            {"event_type": "Change", "assignee_id": None, "previous_value": L1_AGENT},
            _tags([*BEFORE, "esc_management", "billing"]),
        ],
    ),
    (
        "an assignee of their own",
        [
            {"event_type": "Change", "assignee_id": L2_AGENT, "previous_value": L1_AGENT},
            _tags([*BEFORE, "esc_management"]),
        ],
    ),
    ("a status", [{"event_type": "Change", "status": "pending", "previous_value": "open"}, _tags(BEFORE[:1])]),
    (
        "a move with no tag of ours",
        [
            {"event_type": "Change", "group_id": GROUP_L2, "previous_value": GROUP_L1},
            {"event_type": "Change", "assignee_id": None, "previous_value": L1_AGENT},
        ],
    ),
]


@pytest.mark.parametrize("path", ["events", "audits"])
@pytest.mark.parametrize(("case", "children"), COUNTED, ids=[row[0] for row in COUNTED])
def test_zendesk_a_person_doing_more_than_our_tags_is_read_as_before(
    mapping: ZendeskMapping, path: str, case: str, children: list[dict[str, Any]]
) -> None:
    ticket = mapping.normalize(_record([CREATED, ASSIGNED, _audit(PERSON, L1_AGENT, *children)], path), "zd")
    assert ticket.agent_actions == (ACK, datetime.fromisoformat("2026-11-24T11:05:30+00:00")), case


# -- the same through the daemon: adopting an instance with `adopt = "tag_only"` ----------------------------------


def test_zendesk_tag_only_adoption_leaves_the_management_acknowledgment_owed(tmp_path: Path) -> None:
    """The security-legal rule moves the ticket to L3 and starts the management track in one write; adopted with
    `tag_only`, that write has no note. The track's clocks run from our store's row (the cycle's `now`, before
    the audit), so the L1 assignee the move cleared, counted as an action, met its acknowledgment at once."""
    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    section = world.platform.section.model_copy(update={"adopt": "tag_only"})
    world.platform = replace(world.platform, section=section)
    world.config = replace(world.config, instances=(section,))
    try:
        ticket = world.sandbox.add_idle_ticket(world.clock.now() - 60 * M)
        tags = sorted(world.sandbox.escalation_view(ticket)[1] | {"security_concern"})
        world.sandbox.update(ticket, assignee_id=world.sandbox.agents(GROUP_L1)[0], tags=tags)
        world.clock.advance(2 * M)  # the first sweep (adopting the instance) reads it: the export holds back 1 min
        syncer: Syncer = lagging_syncer(world)
        assert syncer.run_cycle().error == ""
        world.clock.advance(5 * M)
        tier, tags_now = world.sandbox.escalation_view(ticket)
        assert tier == "L3" and "esc_management" in tags_now, "precondition: the first sweep escalated it"
        assert world.marker_counts() == {}, "precondition: adopted with no note"
        assert world.sandbox.ticket(ticket)["assignee_id"] is None, "the sandbox clears the L1 assignee"
        started = max(at for label, at in world.store.tier_entries(world.name, str(ticket)) if label == "MGMT")
        target = started + 30 * M  # [policy.management] acknowledgment, around the clock
        tag = "esc_breached_mgmt_acknowledgment"
        breached = first_cycle_showing(world, syncer, ticket, tag, target + 10 * M)
        assert breached is not None, "our own note-less write acknowledged the management track"
        assert target < breached <= target + 5 * M
    finally:
        world.close()

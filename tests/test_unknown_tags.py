"""Not knowing is not evidence: a clock whose facts cannot be read for a while keeps the tags it had set.

The real Syncer runs against the Zendesk sandbox. A ticket breaches its first response and is tagged; then the
ticket event export is refused (403, as for an account that lost the admin right, or while the history cannot
be read), so its replies are unknown and the clock is UNKNOWN: the cycle that reads the ticket then must not
remove the breach tag; and once the export answers again (the facts are back) it must not write it back either.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from engine.model import ClockState, Decision, WriteBack
from runtime.cycle import Syncer
from sandbox.base import Fault
from tests.test_cycle import PLATFORMS, World

M = timedelta(minutes=1)
TAG = "esc_breached_first_response"
SETTLED = frozenset({TAG, "esc_customer_update_due", "esc_l2_breached_acknowledgment", "esc_l2_breached_assessment"})
"""The sandbox's idle P1 ticket's tags about 70 minutes in; the next change (the management track) is hours away."""


def _run(world: World, syncer: Syncer) -> None:
    report = syncer.run_cycle()
    assert report.error == ""
    world.clock.advance(5 * M)


def test_a_breach_tag_stays_while_its_clock_is_unknown_and_is_not_rewritten_after(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        ticket = world.sandbox.add_idle_ticket(world.clock.now(), priority="urgent")  # P1: first reply in 30 min
        world.clock.advance(2 * M)
        syncer = world.syncer()
        for _ in range(30):  # P1 at L1 breaches, moves to L2, whose clocks breach too: then it settles for hours
            _run(world, syncer)
            if world.sandbox.escalation_view(ticket)[1] >= SETTLED:
                break
        assert world.sandbox.escalation_view(ticket)[1] >= SETTLED, "precondition: the breaches are tagged"
        _run(world, syncer)  # the echo of our write settles
        written = world.sandbox.escalation_view(ticket)[1]

        refused = Fault(status=403, times=10**6, method="GET", path_pattern=r"/incremental/ticket_events")
        world.sandbox.inject(refused)
        decisions: list[Decision] = []
        original = syncer._decide

        def deciding(*args: Any, **kwargs: Any) -> tuple[Decision, WriteBack]:
            decision, writeback = original(*args, **kwargs)
            decisions.append(decision)
            return decision, writeback

        syncer._decide = deciding  # type: ignore[method-assign]
        before = world.writes()
        world.sandbox.update(ticket, tags=sorted(world.sandbox.escalation_view(ticket)[1] | {"vip"}))  # polled
        world.clock.advance(2 * M)
        _run(world, syncer)
        _run(world, syncer)
        states = [clock.state for decision in decisions for clock in decision.clocks if clock.name == "first_response"]
        assert ClockState.UNKNOWN in states, "precondition: the ticket was evaluated with its replies unknown"
        assert world.sandbox.escalation_view(ticket)[1] == written | {"vip"}, "not knowing removed a breach tag"
        assert world.writes() == before, "a cycle with the clock unknown writes nothing"

        refused.times = 0  # the export answers again: the facts are back
        decisions.clear()
        world.sandbox.update(ticket, tags=sorted(world.sandbox.escalation_view(ticket)[1] - {"vip"}))
        world.clock.advance(2 * M)
        for _ in range(3):
            _run(world, syncer)
        states = [clock.state for decision in decisions for clock in decision.clocks if clock.name == "first_response"]
        assert states and states[-1] is ClockState.BREACHED, "precondition: the facts are back"
        assert world.sandbox.escalation_view(ticket)[1] == written
        assert world.writes() == before, "nothing was removed, so nothing is written back"
    finally:
        world.close()

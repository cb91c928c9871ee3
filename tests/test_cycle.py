"""The reconciliation properties of the sync cycle, on the Zendesk sandbox (DESIGN.md principles 1, 2, 7).

Each test runs the real Syncer, connector, HTTP layer, mapping, engine and SQLite store against a sandbox
seeded with tickets; only the httpx transport differs from production. Time is the sandbox's SimClock.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from engine.model import COMMENT_MARKER
from engine.policy import load_policy
from runtime.config import AppConfig, DaemonSection, InstanceSection
from runtime.cycle import CycleReport
from runtime.demo import DEMO_START
from runtime.wiring import Wired, wire
from sandbox.base import Fault, SimClock
from sandbox.zendesk import ZendeskSandbox
from state import open_store
from state.base import Store

ROOT = Path(__file__).resolve().parent.parent
ENVIRON = {"ZD_EMAIL": "bot@example.com", "ZD_TOKEN": "s3cr3t-token-value"}
SECTION = InstanceSection(
    name="zd",
    platform="zendesk",
    base_url="https://example.zendesk.com",
    credentials={"email": "ZD_EMAIL", "api_token": "ZD_TOKEN"},
    options={"page_size": 25},
)
MARKER = re.compile(re.escape(COMMENT_MARKER.format(key="")) + r"[^)\s]+")


class World:
    def __init__(self, tmp_path: Path, tickets: int = 60) -> None:
        self.clock = SimClock(DEMO_START)
        self.sandbox = ZendeskSandbox(self.clock, seed=11)
        self.sandbox.seed_tickets(tickets)
        self.store_url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
        self.store: Store = open_store(self.store_url)
        self.config = AppConfig(
            path=ROOT / "config.example.toml",
            daemon=DaemonSection(max_write_attempts=3),
            state_url=self.store_url,
            instances=(SECTION,),
            policy=load_policy(ROOT / "config.example.toml"),
        )
        self.wired: list[Wired] = []

    def syncer(self, store: Store | None = None):
        wired = wire(
            self.config,
            SECTION,
            store or self.store,
            environ=ENVIRON,
            clock=self.clock.now,
            transport=self.sandbox.transport(),
            sleep=lambda seconds: None,
        )
        self.wired.append(wired)
        return wired.syncer

    def puts(self) -> int:
        return self.sandbox.calls("PUT", r"^/api/v2/tickets/\d+\.json$")

    def marker_counts(self) -> dict[str, int]:
        """How many times each idempotency key appears across all ticket comments."""
        counts: dict[str, int] = {}
        for ticket_id in self.sandbox.ticket_ids():
            for comment in self.sandbox.comments(ticket_id):
                for key in MARKER.findall(comment.get("body", "")):
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def close(self) -> None:
        for wired in self.wired:
            wired.close()
        self.store.close()


@pytest.fixture
def world(tmp_path: Path):
    created = World(tmp_path)
    yield created
    created.close()


def test_first_cycle_escalates_and_writes(world: World) -> None:
    window = (DEMO_START - timedelta(hours=SECTION.initial_lookback_hours), DEMO_START - timedelta(minutes=1))
    updated = [datetime.fromisoformat(world.sandbox.ticket(i)["updated_at"]) for i in world.sandbox.ticket_ids()]
    expected = sum(1 for moment in updated if window[0] <= moment <= window[1])
    report = world.syncer().run_cycle()
    assert report.error == ""
    # The first poll looks back initial_lookback_hours and, like Zendesk's export, leaves out the last minute.
    assert report.tickets_seen == expected
    assert report.writes > 0
    assert sum(report.escalations.values()) > 0
    assert report.comments > 0
    assert report.cursor_committed
    assert world.puts() == report.writes


def test_ten_unchanged_cycles_write_nothing_after_the_first(world: World) -> None:
    syncer = world.syncer()
    first = syncer.run_cycle()
    assert first.writes > 0
    puts_after_first = world.puts()
    later: list[CycleReport] = [syncer.run_cycle() for _ in range(9)]
    assert world.puts() == puts_after_first
    assert all(report.writes == 0 and report.error == "" for report in later)


def test_the_echo_of_our_own_write_costs_no_write(world: World) -> None:
    # The repeated-failure rule rightly reacts to the escalations cycle 1 made (a customer with many escalated
    # tickets gets management attention in cycle 2); hold that input still to look at the echo alone.
    world.store.escalations_since = lambda customer, since: 0  # type: ignore[method-assign]
    syncer = world.syncer()
    first = syncer.run_cycle()
    written = world.puts()
    world.clock.advance(timedelta(seconds=61))  # the export shows changes once they are a minute old
    echo = syncer.run_cycle()
    assert echo.tickets_seen >= first.writes, "the second poll must read back the tickets we wrote"
    assert echo.writes == 0
    assert world.puts() == written


def test_every_handoff_note_is_posted_once(world: World) -> None:
    syncer = world.syncer()
    for _ in range(4):
        syncer.run_cycle()
        world.sandbox.simulate(timedelta(minutes=30))
    counts = world.marker_counts()
    assert counts, "the scenario must produce handoff notes"
    assert set(counts.values()) == {1}


def test_crash_between_write_and_ledger_done_leaves_one_comment(world: World, tmp_path: Path) -> None:
    syncer = world.syncer()
    original = world.store.mark_done
    crashed: list[str] = []

    def crash_once(key: str, now):  # the API write happened; the process dies before the ledger says so
        if not crashed:
            crashed.append(key)
            raise RuntimeError("injected crash")
        return original(key, now)

    world.store.mark_done = crash_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="injected crash"):
        syncer.run_cycle()
    assert crashed
    assert world.store.get_cursor("zd") is None, "the cursor must not move past the crashed page"
    pending = world.store.pending("zd")
    assert [intent.key for intent in pending] == crashed

    restarted_store = open_store(world.store_url)
    try:
        report = world.syncer(restarted_store).run_cycle()
        assert report.error == ""
        assert report.recovered == 1
        assert restarted_store.pending("zd") == []
        assert restarted_store.get_cursor("zd") is not None
    finally:
        restarted_store.close()
    counts = world.marker_counts()
    assert all(count == 1 for count in counts.values())
    if crashed[0] in counts:
        assert counts[crashed[0]] == 1


def test_cursor_does_not_move_when_a_write_cannot_be_queued(world: World) -> None:
    syncer = world.syncer()

    def broken_intent(*args, **kwargs):
        raise OSError("disk full")

    world.store.record_intent = broken_intent  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        syncer.run_cycle()
    assert world.store.get_cursor("zd") is None
    assert world.puts() == 0


def test_ambiguous_write_is_queued_then_recovered_without_duplicate(world: World) -> None:
    world.sandbox.inject(Fault(status=502, times=1, method="PUT", path_pattern=r"^/api/v2/tickets/\d+\.json$"))
    syncer = world.syncer()
    first = syncer.run_cycle()
    assert first.failed == 1
    assert first.cursor_committed, "a durably queued write lets the cursor move"
    assert len(world.store.pending("zd")) == 1
    second = syncer.run_cycle()
    assert second.recovered == 1
    assert world.store.pending("zd") == []
    assert set(world.marker_counts().values()) == {1}


def test_dry_run_plans_but_writes_nothing(world: World) -> None:
    planned: list[str] = []
    syncer = world.syncer()
    syncer.dry_run = True
    syncer.on_event = lambda event: planned.append(event.ticket_id) if event.kind == "planned" else None
    report = syncer.run_cycle()
    assert report.planned == len(planned) > 0
    assert world.puts() == 0
    assert world.store.get_cursor("zd") is None
    assert world.store.pending("zd") == []


def test_refused_write_is_dead_lettered_and_blocks_nothing(world: World) -> None:
    planned: list[str] = []
    probe = world.syncer()
    probe.dry_run = True
    probe.on_event = lambda event: planned.append(event.ticket_id) if event.kind == "planned" else None
    probe.run_cycle()
    refused = planned[0]
    world.sandbox.inject(
        Fault(
            status=422,
            times=1000,
            method="PUT",
            path_pattern=rf"^/api/v2/tickets/{refused}\.json$",
            body='{"error":"RecordInvalid","description":"Record validation errors","details":{}}',
        )
    )
    report = world.syncer().run_cycle()
    assert report.dead_lettered == 1
    assert report.writes >= len(planned) - 1  # escalation history can add a few in a real run
    assert report.cursor_committed
    dead = world.store.dead_letters("zd")
    assert [intent.ticket_id for intent in dead] == [refused]
    assert "RecordInvalid" in dead[0].last_error or "422" in dead[0].last_error

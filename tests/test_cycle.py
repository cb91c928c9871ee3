"""The reconciliation properties of the sync cycle, on each platform's sandbox (DESIGN.md principles 1, 2, 7).

Each test runs the real Syncer, connector, HTTP layer, mapping, engine and SQLite store against a sandbox
seeded with tickets; only the httpx transport differs from production. Time is the sandbox's SimClock.
"""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import AmbiguousWriteError, Page
from engine.model import COMMENT_MARKER
from engine.policy import load_policy
from runtime.config import AppConfig, DaemonSection, InstanceSection
from runtime.cycle import CycleReport, Syncer
from runtime.demo import DEMO_START
from runtime.wiring import Wired, wire
from sandbox.base import Fault, SandboxApp, SimClock
from sandbox.jsm import JsmSandbox
from sandbox.servicenow import ServiceNowSandbox
from sandbox.zendesk import GROUP_L3, ZendeskSandbox
from state import open_store
from state.base import Store

ROOT = Path(__file__).resolve().parent.parent
# A refusal in the platform's own error shape is not needed: the connectors map any 422 to a dead letter.
REFUSAL = '{"error": "invalid"}'
MARKER = re.compile(re.escape(COMMENT_MARKER.format(key="")) + r"[^)\s]+")


@dataclass(frozen=True)
class Platform:
    """What the generic scenarios need to know of one platform's sandbox."""

    section: InstanceSection
    environ: dict[str, str]
    sandbox: Callable[[SimClock], SandboxApp]
    ticket_ids: Callable[[Any], list[Any]]
    note_text: str
    """The key of a stored comment or journal row that holds its text."""
    write: tuple[str, str]
    """Method and path pattern of the call that carries tier and tags."""
    write_for: Callable[[str], str]
    """The write path pattern for one ticket id."""
    poll: str = ""
    """Path pattern of the poll request."""
    echo_next_cycle: bool = True
    """False where the poll re-reads our writes within the same cycle (JSM's keyset search moves an issue we
    updated to the end of the order it is reading)."""


PLATFORMS = {
    "zendesk": Platform(
        section=InstanceSection(
            name="zd",
            platform="zendesk",
            base_url="https://example.zendesk.com",
            credentials={"email": "ZD_EMAIL", "api_token": "ZD_TOKEN"},
            options={"page_size": 25},
        ),
        environ={"ZD_EMAIL": "bot@example.com", "ZD_TOKEN": "s3cr3t-token-value"},
        sandbox=lambda clock: ZendeskSandbox(clock, seed=11),
        ticket_ids=lambda sandbox: sandbox.ticket_ids(),
        note_text="body",
        write=("PUT", r"^/api/v2/tickets/\d+\.json$"),
        poll=r"^/api/v2/incremental/tickets/cursor\.json$",
        write_for=lambda ticket_id: rf"^/api/v2/tickets/{ticket_id}\.json$",
    ),
    "jsm": Platform(
        section=InstanceSection(
            name="jsm",
            platform="jsm",
            base_url="https://example.atlassian.net",
            credentials={"email": "JSM_EMAIL", "api_token": "JSM_TOKEN"},
            options={"page_size": 25},
        ),
        environ={"JSM_EMAIL": "bot@example.com", "JSM_TOKEN": "jsm-token-value"},
        sandbox=lambda clock: JsmSandbox(clock, seed=11),
        ticket_ids=lambda sandbox: sandbox.issue_keys(),
        note_text="body",
        write=("PUT", r"^/rest/api/3/issue/[^/]+$"),
        poll=r"^/rest/api/3/search/jql$",
        write_for=lambda ticket_id: rf"^/rest/api/3/issue/{ticket_id}$",
        echo_next_cycle=False,
    ),
    "servicenow": Platform(
        section=InstanceSection(
            name="snow",
            platform="servicenow",
            base_url="https://example.service-now.com",
            credentials={"username": "SNOW_USER", "password": "SNOW_PASSWORD"},
            options={"page_size": 25},
        ),
        environ={"SNOW_USER": "integration", "SNOW_PASSWORD": "snow-password-value"},
        sandbox=lambda clock: ServiceNowSandbox(clock, seed=11),
        ticket_ids=lambda sandbox: sandbox.incident_ids(),
        note_text="value",
        write=("PATCH", r"^/api/now/table/incident/[0-9a-f]{32}$"),
        poll=r"^/api/now/table/incident$",
        write_for=lambda ticket_id: rf"^/api/now/table/incident/{ticket_id}$",
    ),
}


class World:
    def __init__(self, tmp_path: Path, platform: Platform, tickets: int = 60) -> None:
        self.platform = platform
        self.name = platform.section.name
        self.clock = SimClock(DEMO_START)
        self.sandbox: Any = platform.sandbox(self.clock)
        self.sandbox.seed_tickets(tickets)
        self.store_url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
        self.store: Store = open_store(self.store_url)
        self.config = AppConfig(
            path=ROOT / "config.example.toml",
            # One call per write: these scenarios inject faults into the single write; batched writes (Zendesk
            # update_many jobs) have theirs in tests/test_batch_writes.py.
            daemon=DaemonSection(max_write_attempts=3, batch_writes_from=10**6),
            state_url=self.store_url,
            instances=(platform.section,),
            policy=load_policy(ROOT / "config.example.toml"),
        )
        self.wired: list[Wired] = []

    def syncer(self, store: Store | None = None) -> Syncer:
        self.sleeps: list[float] = []
        wired = wire(
            self.config,
            self.platform.section,
            store or self.store,
            environ=self.platform.environ,
            clock=self.clock.now,
            transport=self.sandbox.transport(),
            sleep=self.sleeps.append,
        )
        self.wired.append(wired)
        wired.syncer.retry_backoff = timedelta(0)  # the same-cycle retry of maybe-applied writes waits for nothing
        return wired.syncer

    def writes(self) -> int:
        return self.sandbox.calls(*self.platform.write)

    def marker_counts(self) -> dict[str, int]:
        """How many times each idempotency key appears across all tickets' comments (or work notes)."""
        counts: dict[str, int] = {}
        for ticket_id in self.platform.ticket_ids(self.sandbox):
            for comment in self.sandbox.comments(ticket_id):
                for key in MARKER.findall(str(comment.get(self.platform.note_text, ""))):
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def close(self) -> None:
        for wired in self.wired:
            wired.close()
        self.store.close()


def without_retry_pass(syncer: Syncer) -> Syncer:
    """A daemon that stops (or dies) before its same-cycle retry of maybe-applied writes: what is left pending
    is for the next cycle's recovery, the path these scenarios check."""
    syncer._retry_maybe_applied = lambda now, report: None  # type: ignore[method-assign]
    return syncer


@pytest.fixture(params=sorted(PLATFORMS))
def world(request: pytest.FixtureRequest, tmp_path: Path):
    created = World(tmp_path, PLATFORMS[request.param])
    yield created
    created.close()


@pytest.fixture
def zendesk_world(tmp_path: Path):
    created = World(tmp_path, PLATFORMS["zendesk"])
    yield created
    created.close()


def test_first_cycle_escalates_and_writes(zendesk_world: World) -> None:
    world = zendesk_world
    window = (
        DEMO_START - timedelta(hours=world.platform.section.initial_lookback_hours),
        DEMO_START - timedelta(minutes=1),
    )
    updated = [datetime.fromisoformat(world.sandbox.ticket(i)["updated_at"]) for i in world.sandbox.ticket_ids()]
    expected = sum(1 for moment in updated if window[0] <= moment <= window[1])
    report = world.syncer().run_cycle()
    assert report.error == ""
    # The first poll looks back initial_lookback_hours and, like Zendesk's export, leaves out the last minute;
    # the scan of all open tickets then reads the rest, whatever their age, each ticket once.
    assert report.tickets_seen == len(world.sandbox.ticket_ids())
    assert report.scanned == report.tickets_seen - expected > 0
    assert report.writes > 0
    assert sum(report.escalations.values()) > 0
    assert report.comments > 0
    assert report.cursor_committed
    assert world.writes() == report.writes


def freeze_customer_history(world: World) -> None:
    """The repeated-failure rules rightly react to the escalations a cycle made (a customer whose tickets were
    just escalated gets management attention on the next pass): hold that one input still where a test looks
    at reconciliation alone."""
    world.store.escalations_since = lambda customer, since: 0  # type: ignore[method-assign]
    world.store.escalation_counts = lambda since: {}  # type: ignore[method-assign]


def test_ten_unchanged_cycles_write_nothing_after_the_first(world: World) -> None:
    freeze_customer_history(world)
    syncer = world.syncer()
    first = syncer.run_cycle()
    assert first.writes > 0
    puts_after_first = world.writes()
    later: list[CycleReport] = [syncer.run_cycle() for _ in range(9)]
    assert world.writes() == puts_after_first
    assert all(report.writes == 0 and report.error == "" for report in later)


def test_with_live_history_unchanged_tickets_settle_within_three_cycles(world: World) -> None:
    syncer = world.syncer()
    reports = [syncer.run_cycle() for _ in range(10)]
    assert reports[0].writes > 0
    assert all(report.writes == 0 for report in reports[3:]), [report.writes for report in reports]


def test_a_review_soon_after_our_writes_plans_from_the_tickets_as_written(zendesk_world: World) -> None:
    """The first cycle's escalations cross the customers' repeated-failure count, so their open tickets are due
    again at once. Ten seconds later (no echo polled yet) the book holds each written ticket as our write's
    answer showed it: no write is planned again, so no 409 and no re-read; the cycle costs its one poll call
    plus one call per write (it was 117 calls, 38 of them conflicts, when the book kept the records from
    before the writes)."""
    world = zendesk_world
    syncer = world.syncer()
    first = syncer.run_cycle()
    assert first.writes > 0 and first.error == ""
    before = len(world.sandbox.requests)
    world.clock.advance(timedelta(seconds=10))
    second = syncer.run_cycle()
    assert second.error == "" and second.reviewed > 0
    assert second.conflicts == 0
    assert second.api_calls == 1 + second.writes
    gets = [path for method, path in world.sandbox.requests[before:] if method == "GET" and "/tickets/" in path]
    assert [path for path in gets if "incremental" not in path] == []


def test_a_backlog_larger_than_the_connectors_memo_is_written_with_no_read(
    zendesk_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes come after the whole read: the record each write is planned from is the book's, handed to the
    connector, not one it may have forgotten (its memo of polled tickets once sent a GET before such PUTs)."""
    monkeypatch.setattr("connectors.zendesk._MEMO_SIZE", 3)
    world = zendesk_world
    report = world.syncer().run_cycle()
    assert report.writes > 3 and report.error == ""
    assert world.sandbox.calls("GET", r"^/api/v2/tickets/\d+\.json$") == 0
    assert world.writes() == report.writes


def _count_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (ticket, revision) of every evaluation the cycle runs from now on."""
    import runtime.cycle

    calls: list[tuple[str, str]] = []
    real = runtime.cycle.evaluate

    def counting(ticket: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((ticket.id, ticket.revision))
        return real(ticket, *args, **kwargs)

    monkeypatch.setattr(runtime.cycle, "evaluate", counting)
    return calls


def test_a_ticket_polled_due_is_evaluated_once_in_the_cycle(
    zendesk_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review of a ticket the same cycle's poll found due, at the same moment and from the same history, is
    the same pure evaluation: the poll's decision is reused (it was decoded, normalized and evaluated again).
    A written ticket is evaluated once more as the write left it (a new revision: see the echo test below)."""

    calls = _count_evaluations(monkeypatch)
    world = zendesk_world
    report = world.syncer().run_cycle()
    assert report.error == "" and report.writes > 0 and report.reviewed >= report.writes
    assert len(calls) == len(set(calls)) <= report.tickets_seen + report.writes


def test_under_a_write_cap_the_tickets_written_are_evaluated_once(
    zendesk_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a write cap the review reaches only the most urgent of the tickets the poll found due, and those
    are the evaluations it reuses, however few it may hold (it held the most recent ones, which the review
    mostly never reached, and evaluated the ones it wrote a second time)."""
    import runtime.cycle

    calls = _count_evaluations(monkeypatch)
    monkeypatch.setattr(runtime.cycle, "DECIDED_SIZE", 5)
    world = zendesk_world
    syncer = world.syncer()
    syncer.max_writes_per_cycle = 3
    report = syncer.run_cycle()
    assert report.error == "" and report.writes == 3 and report.deferred == 1
    assert report.reviewed >= report.writes + report.deferred
    assert len(calls) == len(set(calls)) <= report.tickets_seen + report.writes
    assert syncer._decided == {}, "nothing of the cycle's tickets is held once it ends"


def test_the_echo_of_our_own_write_costs_no_write(world: World) -> None:
    freeze_customer_history(world)
    syncer = world.syncer()
    first = syncer.run_cycle()
    written = world.writes()
    world.clock.advance(timedelta(seconds=61))  # the export shows changes once they are a minute old
    echo = syncer.run_cycle()
    if world.platform.echo_next_cycle:
        assert echo.tickets_seen >= first.writes, "the second poll must read back the tickets we wrote"
    assert echo.writes == 0
    assert world.writes() == written


def test_every_handoff_note_is_posted_once(world: World) -> None:
    syncer = world.syncer()
    for _ in range(4):
        syncer.run_cycle()
        world.sandbox.simulate(timedelta(minutes=30))
    counts = world.marker_counts()
    assert counts, "the scenario must produce handoff notes"
    assert set(counts.values()) == {1}


def crash_once_before_done(store: Store) -> list[str]:
    """Make the store's next `mark_done` raise, as if the process died after the API write and before the
    ledger said so; returns the list that receives the key of the write that 'crashed'."""
    original = store.mark_done
    crashed: list[str] = []

    def crash_once(key: str, now):
        if not crashed:
            crashed.append(key)
            raise RuntimeError("injected crash")
        return original(key, now)

    store.mark_done = crash_once  # type: ignore[method-assign]
    return crashed


def test_crash_between_write_and_ledger_done_leaves_one_comment(world: World, tmp_path: Path) -> None:
    syncer = world.syncer()
    crashed = crash_once_before_done(world.store)
    with pytest.raises(RuntimeError, match="injected crash"):
        syncer.run_cycle()
    assert crashed
    pending = world.store.pending(world.name)
    assert [intent.key for intent in pending] == crashed
    # The cursor moved once its pages were in the book: every write not yet done is still due there.
    [intent] = pending
    entry = world.store.book_entry(world.name, intent.ticket_id)
    assert entry is not None and entry.review_at is not None and entry.review_at <= world.clock.now()

    restarted_store = open_store(world.store_url)
    try:
        report = world.syncer(restarted_store).run_cycle()
        assert report.error == ""
        assert report.recovered == 1
        assert restarted_store.pending(world.name) == []
        assert restarted_store.get_cursor(world.name) is not None
    finally:
        restarted_store.close()
    counts = world.marker_counts()
    assert all(count == 1 for count in counts.values())
    if crashed[0] in counts:
        assert counts[crashed[0]] == 1


def test_cursor_does_not_move_when_a_page_cannot_be_booked(world: World) -> None:
    syncer = world.syncer()

    def broken_book(*args, **kwargs):
        raise OSError("disk full")

    world.store.book_put = broken_book  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        syncer.run_cycle()
    assert world.store.get_cursor(world.name) is None
    assert world.writes() == 0


def test_no_write_is_sent_before_its_intent_is_recorded(world: World) -> None:
    syncer = world.syncer()

    def broken_intent(*args, **kwargs):
        raise OSError("disk full")

    world.store.record_intent = broken_intent  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        syncer.run_cycle()
    assert world.writes() == 0
    _, due = world.store.book_stats(world.name, world.clock.now())
    assert due > 0, "the writes that could not be recorded stay due in the book"


def test_ambiguous_write_is_queued_then_recovered_without_duplicate(world: World) -> None:
    method, path = world.platform.write
    world.sandbox.inject(Fault(status=502, times=1, method=method, path_pattern=path))
    syncer = world.syncer()
    first = syncer.run_cycle()
    assert first.failed == 1
    assert first.cursor_committed, "a durably queued write lets the cursor move"
    assert first.recovered == 1, "verified and sent again in the same cycle, after the retry backoff"
    assert world.store.pending(world.name) == []
    assert set(world.marker_counts().values()) == {1}


def test_dry_run_plans_but_writes_nothing(world: World) -> None:
    planned: list[str] = []
    syncer = world.syncer()
    syncer.dry_run = True
    syncer.on_event = lambda event: planned.append(event.ticket_id) if event.kind == "planned" else None
    report = syncer.run_cycle()
    assert report.planned == len(planned) > 0
    assert world.writes() == 0
    assert world.store.get_cursor(world.name) is None
    assert world.store.pending(world.name) == []


def test_refused_write_is_dead_lettered_and_blocks_nothing(world: World) -> None:
    planned: list[str] = []
    probe = world.syncer()
    probe.dry_run = True
    probe.on_event = lambda event: planned.append(event.ticket_id) if event.kind == "planned" else None
    probe.run_cycle()
    refused = planned[0]
    method, _ = world.platform.write
    world.sandbox.inject(
        Fault(status=422, times=1000, method=method, path_pattern=world.platform.write_for(refused), body=REFUSAL)
    )
    report = world.syncer().run_cycle()
    assert report.dead_lettered == 1
    assert report.writes >= len(planned) - 1  # escalation history can add a few in a real run
    assert report.cursor_committed
    dead = world.store.dead_letters(world.name)
    assert [intent.ticket_id for intent in dead] == [refused]
    assert "422" in dead[0].last_error or "invalid" in dead[0].last_error.lower()


def test_management_track_started_once_keeps_its_clocks(zendesk_world: World) -> None:
    world = zendesk_world
    # Follow the event export back over every seeded ticket, so each one's agent actions are known (a ticket
    # older than the look-back has them "unknown", and its management acknowledgment is never tagged).
    section = world.platform.section.model_copy(update={"initial_lookback_hours": 24 * 11})
    world.platform = replace(world.platform, section=section)
    syncer = world.syncer()
    started: list[str] = []
    syncer.on_event = lambda event: (
        started.append(event.ticket_id) if event.kind == "written" and event.detail.get("management") else None
    )
    syncer.run_cycle()
    assert started, "the scenario must start management tracks"
    ticket_id = started[0]
    entries = world.store.tier_entries(world.name, ticket_id)
    assert ("MGMT", DEMO_START) in entries
    world.clock.advance(timedelta(minutes=45))  # nobody acted: management acknowledgment (30 min) is overdue
    syncer.on_event = lambda event: None
    syncer.run_cycle()
    tags = set(world.sandbox.ticket(int(ticket_id))["tags"])
    assert "esc_management" in tags
    assert "esc_breached_mgmt_acknowledgment" in tags


def test_a_409_collision_rereads_and_plans_again(world: World) -> None:
    method, path = world.platform.write
    world.sandbox.inject(Fault(status=409, times=1, method=method, path_pattern=path, body="{}"))
    report = world.syncer().run_cycle()
    assert report.conflicts == 1
    assert report.dead_lettered == 0 and report.failed == 0
    assert world.store.pending(world.name) == []
    assert set(world.marker_counts().values()) == {1}


def test_5xx_then_success_and_429_with_retry_after_on_the_poll(world: World) -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    world.sandbox.inject(
        Fault(status=502, times=1, path_pattern=world.platform.poll, body=html, content_type="text/html")
    )
    world.sandbox.inject(Fault(status=429, times=1, path_pattern=world.platform.poll, headers={"Retry-After": "17"}))
    report = world.syncer().run_cycle()
    assert report.error == "" and report.cursor_committed and report.writes > 0
    assert 17.0 in world.sleeps


def test_an_outage_aborts_the_cycle_without_moving_the_cursor(world: World) -> None:
    html = "<html><body>Service Unavailable</body></html>"
    world.sandbox.inject(
        Fault(status=503, times=100, path_pattern=world.platform.poll, body=html, content_type="text/html")
    )
    syncer = world.syncer()
    down = syncer.run_cycle()
    assert down.error.startswith("TransientError") and "503" in down.error
    assert world.store.get_cursor(world.name) is None and world.writes() == 0
    world.sandbox.faults.clear()
    up = syncer.run_cycle()
    assert up.error == "" and up.cursor_committed and up.writes > 0


def test_unknown_values_are_quarantined_and_released_once_fixed(zendesk_world: World) -> None:
    world = zendesk_world
    report = world.syncer().run_cycle()
    quarantined = world.store.quarantined(world.name)
    assert report.quarantined == len(quarantined) > 0
    assert report.cursor_committed, "a quarantined record does not hold the cursor back"
    assert all("sev_legacy_0" in record.error for record in quarantined)
    fixed = int(quarantined[0].record_id)
    world.sandbox.update(fixed, custom_fields=[{"id": 360020000004, "value": "sev_2"}])
    world.clock.advance(timedelta(minutes=2))
    world.syncer().run_cycle()
    assert str(fixed) not in {record.record_id for record in world.store.quarantined(world.name)}


def test_a_write_applied_but_unanswered_is_not_posted_twice(world: World) -> None:
    """The worst ambiguous write: the platform applied it, the answer was lost (timeout, 502 from a proxy)."""
    syncer = world.syncer()
    real_apply = syncer.connector.apply
    lost: list[str] = []

    def applied_then_lost(writeback):
        result = real_apply(writeback)
        if not lost and writeback.comment is not None:
            lost.append(writeback.key)
            raise AmbiguousWriteError("read timeout after the request was sent")
        return result

    syncer.connector.apply = applied_then_lost  # type: ignore[method-assign]
    first = syncer.run_cycle()
    assert lost and first.failed == 1
    for _ in range(3):
        world.clock.advance(timedelta(seconds=61))
        syncer.run_cycle()
    assert world.store.pending(world.name) == []
    counts = world.marker_counts()
    assert counts[COMMENT_MARKER.format(key=lost[0])] == 1
    assert set(counts.values()) == {1}


def test_a_page_that_repeats_its_cursor_ends_the_cycle_with_an_error(world: World) -> None:
    syncer = world.syncer()
    real_poll = syncer.connector.poll
    polls: list[str | None] = []

    def stuck(cursor, now):
        polls.append(cursor)
        page = real_poll(cursor, now)
        return replace(page, cursor=cursor or "stuck", has_more=True) if cursor else replace(page, has_more=True)

    syncer.connector.poll = stuck  # type: ignore[method-assign]
    report = syncer.run_cycle()
    assert "does not advance" in report.error and len(polls) <= 3
    assert world.writes() == 0


def test_a_recovery_lookup_refused_for_good_dead_letters_and_polling_goes_on(zendesk_world: World) -> None:
    world = zendesk_world
    method, path = world.platform.write
    world.sandbox.inject(Fault(status=502, times=1, method=method, path_pattern=path))
    syncer = without_retry_pass(world.syncer())
    assert syncer.run_cycle().failed == 1
    [pending] = world.store.pending(world.name)
    # The integration user lost access to that one ticket's comments.
    world.sandbox.inject(
        Fault(status=403, times=100, method="GET", path_pattern=rf"/tickets/{pending.ticket_id}/comments")
    )
    world.sandbox.update(int(world.sandbox.ticket_ids()[0]), subject="a change to poll")
    world.clock.advance(timedelta(minutes=2))
    report = syncer.run_cycle()
    assert report.error == "" and report.dead_lettered == 1 and report.tickets_seen >= 1
    assert world.store.pending(world.name) == []
    [dead] = world.store.dead_letters(world.name)
    assert "refused" in dead.last_error
    # The note may have been posted: its key is never sent again, whatever the next plans say.
    world.clock.advance(timedelta(hours=1))
    syncer.run_cycle()
    assert COMMENT_MARKER.format(key=dead.key) not in world.marker_counts()


def test_recovery_never_posts_a_note_the_ticket_has_moved_past(zendesk_world: World) -> None:
    world = zendesk_world
    syncer = world.syncer()
    real_apply = syncer.connector.apply
    lost: list[str] = []

    def not_sent(writeback):  # the connection dropped before the request went out: nothing was applied
        if not lost and writeback.tier is not None and writeback.tier.value == "L2" and writeback.comment:
            lost.append(writeback.ticket_id)
            raise AmbiguousWriteError("connection reset")
        return real_apply(writeback)

    syncer.connector.apply = not_sent  # type: ignore[method-assign]
    without_retry_pass(syncer).run_cycle()
    assert lost
    ticket = int(lost[0])
    world.sandbox.update(ticket, group_id=GROUP_L3)  # meanwhile a person sends it to engineering
    world.clock.advance(timedelta(minutes=2))
    syncer.run_cycle()
    assert world.store.pending(world.name) == []
    keys = [key for key in world.marker_counts() if f":{ticket}:" in key]
    assert not any(key.endswith(":L2") for key in keys), keys


def test_a_long_retry_after_holds_the_instance_back_across_processes(zendesk_world: World) -> None:
    world = zendesk_world
    world.sandbox.rate_limit_fault(times=1, retry_after=3600, path_pattern="incremental")
    report = world.syncer().run_cycle()
    assert report.retry_at is not None and "RateLimited" in report.error
    assert world.store.pending(world.name) == []
    sent = len(world.sandbox.requests)
    world.clock.advance(timedelta(minutes=30))
    held = world.syncer().run_cycle()  # a new process, as `once` from cron would be
    assert held.retry_at == report.retry_at and len(world.sandbox.requests) == sent, "nothing sent before retry_at"
    world.clock.advance(timedelta(minutes=31))
    resumed = world.syncer().run_cycle()
    assert resumed.error == "" and resumed.tickets_seen > 0


def test_a_tier_that_landed_before_its_note_failed_is_in_the_history_after_recovery(tmp_path: Path) -> None:
    """JSM writes the tier (an issue edit), then the note (a second call): when only the edit lands, recovery
    posts the note once and records the escalation as of the intent, as a first-time write would."""
    world = World(tmp_path, PLATFORMS["jsm"])
    try:
        world.sandbox.inject(Fault(status=502, times=1, method="POST", path_pattern=r"/request/[^/]+/comment$"))
        syncer = without_retry_pass(world.syncer())
        first = syncer.run_cycle()
        [pending] = world.store.pending(world.name)
        assert first.failed == 1
        world.clock.advance(timedelta(minutes=5))
        syncer.run_cycle()
        assert world.store.pending(world.name) == []
        entries = [tier for tier, _ in world.store.tier_entries(world.name, pending.ticket_id)]
        assert any(tier in ("L2", "L3", "L4") for tier in entries), entries
        assert set(world.marker_counts().values()) == {1}
    finally:
        world.close()


def test_a_management_tag_set_by_a_person_starts_the_track_and_its_clocks(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"], tickets=0)
    try:
        ticket = world.sandbox.add_idle_ticket(world.clock.now())
        world.clock.advance(timedelta(minutes=2))
        syncer = world.syncer()
        syncer.run_cycle()
        tags = sorted(world.sandbox.ticket(ticket)["tags"])
        world.sandbox.update(ticket, tags=[*tags, "esc_management"])  # a team lead escalates by hand
        world.clock.advance(timedelta(minutes=2))
        syncer.run_cycle()
        [(tier, started)] = world.store.tier_entries(world.name, str(ticket))
        assert tier == "MGMT" and started == world.clock.now()
        world.clock.advance(timedelta(minutes=35))  # management acknowledgment: 30 minutes, nobody acted
        syncer.run_cycle()
        assert "esc_breached_mgmt_acknowledgment" in world.sandbox.ticket(ticket)["tags"]
        assert world.marker_counts() == {}, "no management note for a track a person started"
    finally:
        world.close()


def test_a_handoff_note_that_cannot_be_rendered_quarantines_its_ticket(
    zendesk_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine defers the note's text to its first read (Comment.deferred): a fault rendering it must still
    # be that ticket's evaluation fault (quarantined), not escape into the write path or stop the cycle.
    import engine.escalate

    def broken(context: Any) -> Any:
        raise RuntimeError("template broke")

    monkeypatch.setattr(engine.escalate, "render_handoff", broken)
    world = zendesk_world
    report = world.syncer().run_cycle()
    assert report.error == "" and report.cursor_committed
    assert report.comments == 0 and not world.marker_counts()
    failed = [record for record in world.store.quarantined(world.name) if "template broke" in record.error]
    assert failed and all(record.error.startswith("evaluation failed: RuntimeError") for record in failed)


def test_a_booked_page_is_not_held_while_the_next_is_read(world: World) -> None:
    """Issue 14 (memory): a page's records, once booked, are freed before the next page is read and decoded, by
    reference counting alone (the collector is off here), in the poll and in the open-ticket scan alike."""
    syncer = world.syncer()
    pages: list[weakref.ref[Page]] = []
    alive_at_next: list[int] = []

    def recording(read: Callable[[str | None, datetime], Page]) -> Callable[[str | None, datetime], Page]:
        def read_page(cursor: str | None, now: datetime) -> Page:
            alive_at_next.append(sum(ref() is not None for ref in pages))
            page = read(cursor, now)
            pages.append(weakref.ref(page))
            return page

        return read_page

    syncer.connector.poll = recording(syncer.connector.poll)  # type: ignore[method-assign]
    scan = getattr(syncer.connector, "open_tickets", None)
    if scan is not None:
        syncer.connector.open_tickets = recording(scan)  # type: ignore[attr-defined]
    gc.disable()
    try:
        report = syncer.run_cycle()
    finally:
        gc.enable()
    assert report.error == ""
    assert len(pages) > 2
    assert alive_at_next == [0] * len(alive_at_next)

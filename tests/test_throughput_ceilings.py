"""The daemon against the Zendesk sandbox's ceilings: a refused export page waits out its Retry-After and the
sweep goes on in the same cycle, reading no page twice; the account budget is paced from `ratelimit-reset`
without a 429. Time moves only when the daemon waits (the HTTP layer's injected sleep advances the clock)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from engine.policy import load_policy
from runtime.config import AppConfig, DaemonSection
from runtime.demo import DEMO_ENVIRON, DEMO_INSTANCES
from runtime.wiring import Wired, wire
from sandbox.base import SimClock
from sandbox.zendesk import EXPORT_LIMIT, ZendeskSandbox
from state import open_store

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 18, 10, 0, 20, tzinfo=UTC)
EXPORT = "/api/v2/incremental/tickets/cursor.json"


class World:
    def __init__(self, tmp_path: Path, page_size: int, max_writes: int = 100) -> None:
        self.clock = SimClock(START)
        self.sandbox = ZendeskSandbox(self.clock, seed=5)
        self.exchanges: list[tuple[str, int, str]] = []
        self.sleeps: list[float] = []
        base = next(section for section in DEMO_INSTANCES if section.platform == "zendesk")
        section = base.model_copy(update={"options": {"page_size": page_size}})
        url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
        config = AppConfig(
            path=ROOT / "config.example.toml",
            daemon=DaemonSection(max_writes_per_cycle=max_writes),
            state_url=url,
            instances=(section,),
            policy=load_policy(ROOT / "config.example.toml"),
        )
        self.wired: Wired = wire(
            config,
            section,
            open_store(url),
            environ=DEMO_ENVIRON,
            clock=self.clock.now,
            transport=self.sandbox.transport(),
            sleep=self._sleep,
            on_exchange=self._record,
        )

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(timedelta(seconds=seconds))

    def _record(self, request: httpx.Request, response: httpx.Response) -> None:
        self.exchanges.append((request.url.path, response.status_code, request.url.query.decode()))

    def close(self) -> None:
        self.wired.close()
        self.wired.syncer.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path, page_size=2)
    yield world
    world.close()


def test_a_refused_export_page_resumes_after_retry_after_in_the_same_cycle(world: World) -> None:
    for minutes in range(30, 0, -1):  # 30 tickets changed in the last half hour: 15 pages of 2
        world.sandbox.add_idle_ticket(START - timedelta(minutes=minutes, seconds=30))
    world.sandbox.enforce_ceilings = True

    report = world.wired.syncer.run_cycle()

    assert report.error == ""
    exports = [(status, query) for path, status, query in world.exchanges if path == EXPORT]
    served = [query for status, query in exports if status == 200]
    assert len(served) == len(set(served))  # no page was asked for twice once it was served
    refused = [query for status, query in exports if status == 429]
    assert refused and set(refused) <= set(served)  # each refused page was then read, in this cycle
    assert report.tickets_seen == 30 and report.pages >= 15
    # One wait to the end of the minute let pages 11-15 through: no whole interval was waited.
    assert world.clock.now() - START < timedelta(seconds=60)
    assert len(served) >= 15 > EXPORT_LIMIT


def test_the_account_budget_is_paced_from_ratelimit_reset_without_a_429(world: World) -> None:
    for minutes in range(6, 0, -1):
        world.sandbox.add_idle_ticket(START - timedelta(minutes=minutes, seconds=30))
    world.sandbox.enforce_ceilings = True
    world.sandbox.rate_limit = 3  # the cycle needs more than three requests

    report = world.wired.syncer.run_cycle()

    assert report.error == ""
    assert [status for _, status, _ in world.exchanges].count(429) == 0
    assert len(world.exchanges) > 3
    assert world.clock.now() > START  # it waited for the next minute instead


def test_update_many_jobs_queued_together_share_one_poll_wait(tmp_path: Path) -> None:
    world = World(tmp_path, page_size=1000, max_writes=1000)
    try:
        for index in range(250):  # three days old, never answered: every one is due a write
            world.sandbox.add_idle_ticket(START - timedelta(days=3, minutes=index), priority="high")
        report = world.wired.syncer.run_cycle()
    finally:
        world.close()
    assert report.error == "" and report.writes == 250
    jobs = [status for path, status, _ in world.exchanges if path.endswith("update_many.json")]
    assert jobs == [200, 200, 200]
    # Following the jobs one after the other cost a wait and a poll each ([1.0, 1.0, 1.0], three GETs); then one
    # wait for all of them; now one Show Many Job Statuses request right after the last PUT finds all three ended.
    assert world.sleeps == []
    assert [(path, status) for path, status, _ in world.exchanges if "/job_statuses/" in path] == [
        ("/api/v2/job_statuses/show_many.json", 200)
    ]

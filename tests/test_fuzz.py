"""Fuzzing the cycle with mutated real-shaped records: every record is booked or quarantined with a reason, and
nothing escapes the cycle (DESIGN.md, principle 7), on all three platforms.

The records come from each sandbox through the real connector (the shapes the mappings are given); hypothesis
then replaces values anywhere in them with values of other types, sizes and signs (non-finite numbers, huge
and negative integers, nested containers, odd strings, times far out of range). The page goes through the
real Syncer, mapping, engine and store, with a connector that hands out the mutated page and accepts writes.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from connectors.base import ApplyResult, Page, RawRecord
from runtime.cycle import Syncer
from state import open_store
from tests.test_cycle import PLATFORMS, World

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1e400", "NaN", "no value"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value that a mutation can replace."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for step in path[:-1]:
        value = value[step]
    value[path[-1]] = new


class PageConnector:
    """Hands out one page of records, then nothing; accepts every write."""

    def __init__(self, platform: str, instance: str, records: list[RawRecord]) -> None:
        self.platform, self.instance, self.records = platform, instance, records

    def poll(self, cursor: str | None, now: datetime) -> Page:
        records, self.records = self.records, []
        return Page(records=records, cursor=f"after-{len(records)}-{cursor}", has_more=False)

    def apply(self, writeback: Any) -> ApplyResult:
        return ApplyResult(writeback.ticket_id, writeback.revision)

    def fetch(self, ticket_id: str) -> RawRecord | None:
        return None

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def sample(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A few real-shaped records of one platform, read from its sandbox by the real connector."""
    world = World(tmp_path_factory.mktemp(request.param), PLATFORMS[request.param], tickets=6)
    wired = world.syncer()
    records = wired.connector.open_tickets(None, world.clock.now()).records  # type: ignore[attr-defined]
    yield world, records
    world.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_record_is_booked_or_quarantined_never_fatal(sample, data: st.DataObject, tmp_path: Path) -> None:
    world, records = sample
    record = data.draw(st.sampled_from(records))
    mutated = copy.deepcopy(record.data)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(mutated)
        if not paths:
            break
        _replace(mutated, data.draw(st.sampled_from(paths)), data.draw(ODD_VALUES))
    target = RawRecord(record.id, mutated, copy.deepcopy(record.related))
    store = open_store("sqlite:///:memory:")
    try:
        syncer = Syncer(
            instance=world.name,
            platform=world.platform.section.platform,
            connector=PageConnector(world.platform.section.platform, world.name, [target]),
            mapping=world.wired[0].mapping,
            policy=world.config.policy,
            store=store,
            clock=world.clock.now,
        )
        report = syncer.run_cycle()
        assert report.error == ""
        assert report.cursor_committed
        quarantined = store.quarantined(world.name)
        # A mutation may have replaced the record's own id: the book then keys it by the id the record gives.
        ids = {target.id, *(str(mutated.get(name)) for name in ("id", "sys_id") if name in mutated)}
        booked = next((e for e in (store.book_entry(world.name, i) for i in ids) if e is not None), None)
        note(f"quarantined {[q.error for q in quarantined]}, report {report}")
        assert quarantined or booked is not None, "the record must be somewhere"
        for row in quarantined:
            assert row.error and len(row.error) < 2000
        if booked is not None and booked.review_at is not None:
            assert not math.isnan(booked.review_at.timestamp())
    finally:
        store.close()

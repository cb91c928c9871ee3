"""Leases: the store methods on both backends, the fence, the keeper's balance, the SQLite lock, and real daemon
processes sharing six instances on one PostgreSQL (the sandboxes on loopback, each daemon known to them by the
e-mail in its credentials).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from state import LeaseLostError, StoreError, open_store
from state.base import BookEntry, Fence, Store
from state.lease import FencedStore, LeaseKeeper, exclusive_file
from tests.test_state import PG_URL, private_schema, with_search_path

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
INSTANCES = [f"zd-{n}" for n in range(1, 7)]


@pytest.fixture
def pg_schema() -> Iterator[tuple[psycopg.Connection, str]]:
    yield from private_schema()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.sqlite3"
    return with_search_path(PG_URL, request.getfixturevalue("pg_schema")[1])


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


# The store methods, on SQLite and PostgreSQL


def test_a_free_lease_is_claimed_once_with_epoch_one(store: Store) -> None:
    taken = store.leases_claim("a", ["x", "y"], 30, 5)
    assert [(lease.instance, lease.holder, lease.epoch) for lease in taken] == [("x", "a", 1), ("y", "a", 1)]
    assert taken[0].expires_at > taken[0].acquired_at
    assert store.leases_claim("b", ["x", "y"], 30, 5) == [], "a live lease is not taken"
    assert [lease.holder for lease in store.leases()] == ["a", "a"]


def test_claim_takes_at_most_the_limit(store: Store) -> None:
    assert len(store.leases_claim("a", INSTANCES, 30, 2)) == 2
    assert len(store.leases_claim("b", INSTANCES, 30, 10)) == 4


def test_an_expired_lease_is_taken_over_with_the_next_epoch(store: Store) -> None:
    store.leases_claim("a", ["x"], 0, 1)  # a TTL of 0: expired as soon as it is taken
    (taken,) = store.leases_claim("b", ["x"], 30, 1)
    assert (taken.holder, taken.epoch) == ("b", 2)
    assert store.leases_renew("a", ["x"], 30) == [], "the old holder cannot renew it"
    assert [lease.epoch for lease in store.leases_renew("b", ["x"], 30)] == [2], "renewing keeps the epoch"


def test_a_released_lease_is_free_at_once(store: Store) -> None:
    store.leases_claim("a", ["x", "y"], 30, 2)
    store.leases_release("a", ["x"])
    store.leases_release("b", ["y"])  # not b's to release
    assert {lease.instance: lease.holder for lease in store.leases()} == {"x": "", "y": "a"}
    (taken,) = store.leases_claim("b", ["x", "y"], 30, 2)
    assert (taken.instance, taken.epoch) == ("x", 2)


def test_live_daemons_are_counted_and_leave(store: Store) -> None:
    assert store.daemon_heartbeat("a", 30) == 1
    assert store.daemon_heartbeat("b", 30) == 2
    assert store.daemon_heartbeat("c", 0) == 2, "a daemon whose announcement lapsed is not counted"
    store.daemon_leave("b")
    assert store.daemon_heartbeat("a", 30) == 1


def test_next_expiry_counts_only_other_daemons_leases(store: Store) -> None:
    store.leases_claim("a", ["x"], 30, 1)
    store.leases_claim("b", ["y"], 5, 1)
    assert store.leases_next_expiry("c", ["z"]) is None
    lapse = store.leases_next_expiry("a", ["x", "y"])
    assert lapse is not None and 3 < lapse <= 5


def entry(ticket_id: str) -> BookEntry:
    return BookEntry(ticket_id, True, T0, "r1", "{}", seen_at=T0)


def test_fenced_writes_commit_only_under_the_current_lease(store: Store) -> None:
    (lease,) = store.leases_claim("a", ["x"], 0, 1)
    fenced = FencedStore(store, "x")
    fenced.fence = lease.fence
    with pytest.raises(LeaseLostError, match="'x'"):
        fenced.set_cursor("x", "c1")  # a's lease expired (TTL 0)
    (taken,) = store.leases_claim("b", ["x"], 30, 1)
    with pytest.raises(LeaseLostError):
        fenced.record_intent("x", "1", "k1", "{}", T0)
    with pytest.raises(LeaseLostError):
        fenced.book_put("x", [entry("1")])
    assert store.get_cursor("x") is None and store.get_intent("k1") is None and store.book_entry("x", "1") is None
    fenced.fence = taken.fence
    fenced.set_cursor("x", "c2")
    fenced.record_intent("x", "1", "k1", "{}", T0)
    fenced.book_put("x", [entry("1")])
    fenced.mark_done("k1", T0)
    assert store.get_cursor("x") == "c2" and store.book_entry("x", "1") is not None
    assert fenced.get_cursor("x") == "c2", "reads pass through"
    fenced.fence = None
    with pytest.raises(LeaseLostError, match="holds no lease"):
        fenced.set_setting("k", "v")


def test_a_refused_fenced_write_leaves_nothing_behind(store: Store) -> None:
    (lease,) = store.leases_claim("a", ["x"], 30, 1)
    with pytest.raises(RuntimeError), store.fenced(lease.fence):
        store.set_cursor("x", "c1")
        store.book_put("x", [entry("1")])
        raise RuntimeError("the cycle failed between two writes")
    assert store.get_cursor("x") is None and store.book_entry("x", "1") is None, "rolled back together"
    with pytest.raises(LeaseLostError):
        store.lease_check(Fence("x", "a", lease.epoch + 1))


@pytest.mark.postgres
def test_a_takeover_waits_for_a_fenced_write_in_flight(pg_schema: tuple[psycopg.Connection, str]) -> None:
    """The lease row is locked by the fenced write's check: a claim skips it instead of slipping in between."""
    url = with_search_path(PG_URL, pg_schema[1])
    a, b = open_store(url), open_store(url)
    try:
        (lease,) = a.leases_claim("a", ["x"], 0.5, 1)
        with a.fenced(lease.fence):
            a.set_cursor("x", "c1")
            time.sleep(0.6)  # the lease lapses while the write is in flight: the TTL is the point of this test
            assert b.leases_claim("b", ["x"], 30, 1) == [], "skipped while locked"
        (taken,) = b.leases_claim("b", ["x"], 30, 1)
        assert taken.epoch == 2 and b.get_cursor("x") == "c1"
    finally:
        a.close()
        b.close()


# The keeper's balance, with in-process keepers on one store


def _keepers(url: str, count: int, ttl: float = 30.0) -> list[LeaseKeeper]:
    return [LeaseKeeper(lambda: open_store(url), INSTANCES, ttl, holder=f"d{n}") for n in range(count)]


def test_keepers_share_instances_out_and_shed_their_surplus(store_url: str) -> None:
    first, second, third = _keepers(store_url, 3)
    first.beat()
    assert first.holds() == INSTANCES, "alone, a daemon takes everything"
    second.beat()
    third.beat()
    assert second.holds() == [] and third.holds() == [], "nothing is free yet"
    first.beat()
    assert len(first.holds()) == 2, "three live daemons: first sheds four"
    second.beat()
    third.beat()
    assert sorted(first.holds() + second.holds() + third.holds()) == INSTANCES
    assert [len(k.holds()) for k in (first, second, third)] == [2, 2, 2]
    busy = first.holds()[0]
    with first.hold(busy) as fence:
        assert fence is not None and fence.instance == busy and fence.holder == "d0"
        third.stop()  # SIGTERM: released at once
        first.beat()
        second.beat()
    assert sorted(first.holds() + second.holds()) == INSTANCES and len(first.holds()) == 3
    with first.hold("zd-unknown") as fence:
        assert fence is None
    first.stop()
    second.stop()


def test_a_busy_instance_is_not_shed(store_url: str) -> None:
    first, second = _keepers(store_url, 2)
    first.beat()
    second.beat()
    busy = first.holds()[-1]  # the one shed first otherwise
    with first.hold(busy):
        first.beat()
    assert busy in first.holds() and len(first.holds()) == 3
    first.stop()
    second.stop()


# SQLite: one daemon per file


def test_a_second_daemon_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with exclusive_file(path):
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from state.lease import exclusive_file\n"
             f"with exclusive_file({str(path)!r}): pass"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert other.returncode == 1
        assert "in use by another escalation-sync process (pid" in other.stderr and "PostgreSQL" in other.stderr
        with pytest.raises(StoreError, match=str(os.getpid())), exclusive_file(path):
            pass  # flock is per open file: the same process opening it again is refused too
    with exclusive_file(path):
        pass  # released with the block

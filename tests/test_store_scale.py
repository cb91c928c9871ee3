"""The state store at scale (issue 14): customer counts kept rather than recounted, one commit for a write's
done mark and its history, done ledger entries pruned, and a note whose entry was pruned still posted once.

Cost is asserted as work, never as time: SQLite's progress handler counts the virtual-machine steps a query
takes, which grow with the rows it visits and not with the machine's load.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from engine.model import Tier
from runtime.codec import decode
from runtime.config import StateSection, load_config
from runtime.cycle import CycleReport, Syncer
from state import Store, open_store
from state.base import LEDGER_RETENTION
from state.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from state.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from state.sqlite import SqliteStore
from tests.test_cycle import PLATFORMS, World
from tests.test_state import PG_URL, private_schema, with_search_path

T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
WINDOW = timedelta(days=30)
# The history tables as they were before the counts were kept (schema version 3).
V3 = 3


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/state.sqlite3")
        yield opened
        opened.close()
        return
    schemas = private_schema()
    _, schema = next(schemas)
    opened = open_store(with_search_path(PG_URL, schema))
    try:
        yield opened
    finally:
        opened.close()
        schemas.close()


def recount(history: list[tuple[str, str, str, str, datetime]], customer: str, since: datetime) -> int:
    """The definition the kept counts must agree with: distinct tickets of the customer with a history row
    (other than a resolution) at or after `since`. A tier entry is one row per (instance, ticket, tier, time):
    a ticket re-enters a tier after a person moved it down; a management start or a resolution keeps its first."""
    rows: dict[tuple[str, str, str, datetime | None], tuple[str, datetime]] = {}
    for instance, who, ticket, tier, at in history:
        once = tier in ("MGMT", "RESOLVED")
        rows.setdefault((instance, ticket, tier, None if once else at), (who, at))
    return len(
        {
            (instance, ticket)
            for (instance, ticket, tier, _), (who, at) in rows.items()
            if who == customer and at >= since and tier != "RESOLVED"
        }
    )


_moments = st.integers(min_value=-3 * 24, max_value=3 * 24).map(lambda hours: T0 + timedelta(hours=hours))
_history = st.lists(
    st.tuples(
        st.sampled_from(["zd", "jsm"]),
        st.sampled_from(["acme", "globex"]),
        st.sampled_from(["1", "2", "3"]),
        st.sampled_from(["L2", "L3", "MGMT", "RESOLVED"]),
        _moments,
    ),
    max_size=30,
)
_sinces = [T0 + timedelta(hours=hours) for hours in range(-80, 80, 7)] + [
    datetime(2026, 3, 2, tzinfo=UTC),  # exactly a day's start
    datetime(2026, 3, 3, tzinfo=UTC) - timedelta(microseconds=1),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=_history)
def test_issue14_kept_counts_agree_with_a_recount_of_the_history(store: Store, history: list[tuple]) -> None:
    # Tickets re-escalated across days, customers sharing ticket ids, resolutions, days' edges: every count
    # read through the kept tables equals the recount of the rows, one customer at a time and all at once.
    prefix = f"{len(history)}-{hash(tuple(history)) & 0xFFFFFF:x}:"
    history = [(prefix + instance, prefix + who, ticket, tier, at) for instance, who, ticket, tier, at in history]
    for instance, customer, ticket, tier, at in history:
        store.record_escalation(instance, customer, ticket, tier, at)
    for since in _sinces:
        counts = store.escalation_counts(since)
        for customer in (prefix + "acme", prefix + "globex"):
            expected = recount(history, customer, since)
            assert store.escalations_since(customer, since) == expected
            assert counts.get(customer, 0) == expected


def _steps(store: SqliteStore, call: Callable[[], Any]) -> int:
    """SQLite virtual-machine instructions `call` executes (counted in hundreds by the progress handler)."""
    db = store._db()
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 100
        return 0

    db.set_progress_handler(tick, 100)
    try:
        call()
    finally:
        db.set_progress_handler(None, 100)
    return steps


def _fill(store: SqliteStore, tickets: int) -> None:
    """`tickets` tickets of one customer escalated across the 30 days (never on the day the window starts in),
    each twice, and as many again of many customers escalated before the window: history no count may walk."""
    with store.transaction():
        for n in range(tickets):
            at = T0 - timedelta(days=1 + n % 28, minutes=n % 600)
            store.record_escalation("zd", "acme", str(n), "L2", at)
            store.record_escalation("zd", "acme", str(n), "L3", at + timedelta(minutes=5))
            store.record_escalation("zd", f"org-{n % 500}", f"old-{n}", "L2", T0 - timedelta(days=40 + n % 100))


def test_issue14_a_customer_count_reads_the_same_rows_at_1k_and_20k_tickets(tmp_path: Path) -> None:
    small, large = SqliteStore(tmp_path / "small.sqlite3"), SqliteStore(tmp_path / "large.sqlite3")
    try:
        _fill(small, 1_000)
        _fill(large, 20_000)
        since = T0 - WINDOW
        assert small.escalations_since("acme", since) == 1_000
        assert large.escalations_since("acme", since) == 20_000
        one = _steps(small, lambda: small.escalations_since("acme", since))
        twenty = _steps(large, lambda: large.escalations_since("acme", since))
        assert twenty <= one + 200, f"{one} steps for 1k tickets, {twenty} for 20k"
        every_small = _steps(small, lambda: small.escalation_counts(since))
        every_large = _steps(large, lambda: large.escalation_counts(since))
        assert every_large <= every_small + 200, f"all customers: {every_small} steps, then {every_large}"
    finally:
        small.close()
        large.close()


def test_issue14_a_version_3_sqlite_file_gets_its_counts_from_the_history_there(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    history = [
        ("zd", "acme", "1", "L2", T0 - timedelta(days=2)),
        ("zd", "acme", "1", "L3", T0 - timedelta(hours=3)),
        ("jsm", "acme", "1", "L2", T0 - timedelta(days=40)),
        ("zd", "acme", "2", "RESOLVED", T0),
        ("zd", "globex", "3", "MGMT", T0 - timedelta(days=1, hours=1)),
    ]
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version in range(V3):
            for statement in SQLITE_MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?, '2026-01-01T00:00:00.000000+00:00')", (version + 1,))
        db.executemany(
            "INSERT INTO escalations (instance, customer, ticket_id, tier, at) VALUES (?, ?, ?, ?, ?)",
            [(*row[:4], SqliteStore._encode_time(row[4], "at")) for row in history],
        )
    with open_store(f"sqlite:///{path}") as migrated:
        for since in [*_sinces, T0 - WINDOW, T0 - timedelta(days=1, hours=2)]:
            for customer in ("acme", "globex"):
                assert migrated.escalations_since(customer, since) == recount(history, customer, since)
        migrated.record_escalation("zd", "acme", "1", "L4", T0)  # moves ticket 1 from its old day
        assert migrated.escalations_since("acme", T0 - timedelta(hours=1)) == 1
        assert migrated.escalation_counts(T0 - WINDOW) == {"acme": 1, "globex": 1}


@pytest.mark.postgres
def test_issue14_a_version_3_postgres_schema_gets_its_counts_from_the_history_there() -> None:
    schemas = private_schema()
    admin, schema = next(schemas)
    try:
        admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        admin.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for version in range(V3):
            for statement in POSTGRES_MIGRATIONS[version]:
                admin.execute(statement)  # type: ignore[arg-type]
            admin.execute("INSERT INTO schema_version VALUES (%s, now())", (version + 1,))
        # A session in another zone than UTC: the day counts are UTC days whatever the server's zone.
        admin.execute("SET TIME ZONE 'Pacific/Auckland'")
        history = [
            ("zd", "acme", "1", "L2", datetime(2026, 3, 1, 23, 30, tzinfo=UTC)),
            ("zd", "acme", "2", "L2", datetime(2026, 3, 2, 0, 30, tzinfo=UTC)),
            ("zd", "acme", "2", "L3", datetime(2026, 3, 2, 1, 30, tzinfo=UTC)),
        ]
        with admin.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO escalations (instance, customer, ticket_id, tier, at) VALUES (%s, %s, %s, %s, %s)",
                history,
            )
        with open_store(with_search_path(PG_URL, schema)) as migrated:
            for since in [*_sinces, datetime(2026, 3, 1, 23, tzinfo=UTC), datetime(2026, 3, 2, 1, tzinfo=UTC)]:
                assert migrated.escalations_since("acme", since) == recount(history, "acme", since)
    finally:
        schemas.close()


def test_issue14_a_done_mark_and_its_history_commit_together_or_not_at_all(store: Store) -> None:
    store.record_intent("zd", "7", "k1", "{}", T0)
    with pytest.raises(RuntimeError), store.transaction():
        store.mark_done("k1", T0)
        store.record_escalation("zd", "acme", "7", "L2", T0)
        raise RuntimeError("killed between the two")
    assert [intent.key for intent in store.pending("zd")] == ["k1"]
    assert store.tier_entries("zd", "7") == [] and store.escalations_since("acme", T0) == 0
    with store.transaction():
        store.mark_done("k1", T0)
        store.record_escalation("zd", "acme", "7", "L2", T0)
    assert store.pending("zd") == [] and store.escalations_since("acme", T0) == 1


class Commits:
    """Commits on a SQLite connection, seen through its trace callback: each COMMIT, and each write statement
    run outside an explicit transaction (autocommit: a commit of its own); `synced` the ones made while the
    connection waits for the disk (``synchronous=FULL``)."""

    def __init__(self, store: SqliteStore) -> None:
        self.db, self.count, self.synced = store._db(), 0, 0
        self.full = store.durable
        self.db.set_trace_callback(self._seen)

    def _seen(self, statement: str) -> None:
        words = statement.split()
        verb = words[0].upper() if words else ""
        if verb == "PRAGMA" and words[1].lower().startswith("synchronous="):
            self.full = words[1].split("=", 1)[1].upper() == "FULL"
        if verb == "COMMIT" or (verb in {"INSERT", "UPDATE", "DELETE"} and not self.db.in_transaction):
            self.count += 1
            self.synced += self.full


def test_issue14_a_written_ticket_costs_two_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"])
    try:
        assert isinstance(world.store, SqliteStore)
        commits = Commits(world.store)
        per_write: list[tuple[int, int]] = []
        send = Syncer._send

        def counted(syncer: Syncer, writeback: Any, *args: Any, **kwargs: Any) -> None:
            before, synced, writes = commits.count, commits.synced, world.writes()
            send(syncer, writeback, *args, **kwargs)
            if world.writes() != writes:
                per_write.append((commits.count - before, commits.synced - synced))

        monkeypatch.setattr(Syncer, "_send", counted)
        report = world.syncer().run_cycle()
        assert report.error == "" and report.writes > 5 and report.comments > 0
        assert len(per_write) == report.writes
        # The intent (synced before the call), then the done mark with every history row of the write, which
        # need not wait for the disk: lost in a power cut, the intent is pending and recovery settles it.
        assert set(per_write) == {(2, 1)}, per_write
    finally:
        world.close()


def test_issue14_prune_forgets_old_done_entries_only(store: Store) -> None:
    old, recent = T0 - timedelta(days=31), T0 - timedelta(days=1)
    for key, at in (("done-old", old), ("done-recent", recent), ("pending-old", old), ("dead-old", old)):
        store.record_intent("zd", key, key, "{}", at)
    store.mark_done("done-old", old)
    store.mark_done("done-recent", recent)
    store.mark_dead("dead-old", "refused", old)
    store.record_intent("notify:zd", "1", "notice-old", "{}", old)
    store.mark_done("notice-old", old)
    assert store.prune_ledger(T0 - LEDGER_RETENTION) == 2
    assert store.get_intent("done-old") is None and store.get_intent("notice-old") is None
    assert store.get_intent("done-recent") is not None
    assert [intent.key for intent in store.pending("zd")] == ["pending-old"]
    assert [intent.key for intent in store.dead_letters("zd")] == ["dead-old"]
    assert store.prune_ledger(T0 - LEDGER_RETENTION) == 0


def test_issue14_ledger_retention_is_a_state_setting_with_a_documented_default(tmp_path: Path) -> None:
    assert StateSection().ledger_retention_days == LEDGER_RETENTION.days == 30
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    assert load_config(example).state.ledger_retention_days == 30
    text = example.read_text().replace("ledger_retention_days = 30", "ledger_retention_days = 0")
    broken = tmp_path / "config.toml"
    broken.write_text(text)
    with pytest.raises(Exception, match="ledger_retention_days"):
        load_config(broken)


def test_issue14_the_cycle_prunes_done_entries_past_the_retention(tmp_path: Path) -> None:
    world = World(tmp_path, PLATFORMS["zendesk"])
    try:
        syncer = world.syncer()
        assert syncer.ledger_retention == LEDGER_RETENTION
        assert syncer.run_cycle().writes > 0
        done = world.store._all("", "SELECT COUNT(*) FROM intents WHERE state = 'done'", ())[0][0]  # type: ignore[attr-defined]
        assert done > 0
        world.clock.advance(LEDGER_RETENTION + timedelta(hours=2))
        syncer.run_cycle()
        kept = world.store._all(  # type: ignore[attr-defined]
            "",
            "SELECT COUNT(*) FROM intents WHERE state = 'done' AND updated_at < ?",
            (SqliteStore._encode_time(world.clock.now() - LEDGER_RETENTION, "t"),),
        )[0][0]
        assert kept == 0
    finally:
        world.close()


def test_issue14_a_note_whose_done_entry_was_pruned_is_not_posted_again(tmp_path: Path) -> None:
    """The ledger's done entry was the only guard against posting a note again; once pruned, the platform's
    comments are (the key is embedded in the note): a note of a tier this ticket entered before is looked up."""
    world = World(tmp_path, PLATFORMS["zendesk"])
    try:
        syncer = world.syncer()
        assert syncer.run_cycle().comments > 0
        rows = world.store._all("", "SELECT payload FROM intents WHERE state = 'done'", ())  # type: ignore[attr-defined]
        noted = [writeback for writeback in (decode(row[0]) for row in rows) if writeback.comment is not None]
        assert noted
        assert world.store.prune_ledger(world.clock.now() + timedelta(days=1)) > 0  # every done entry gone
        world.clock.advance(timedelta(minutes=1))
        report = CycleReport(world.name, "zendesk", world.clock.now())
        for writeback in noted:
            again = syncer._prepare(writeback, None, SimpleNamespace(id=writeback.ticket_id), world.clock.now(), report)
            assert again is None or again.comment is None, f"{writeback.key}: the note would be posted again"
        # A note of a tier the ticket never entered is not looked up: it goes out.
        first = noted[0]
        assert first.comment is not None
        comment = replace(first.comment, idempotency_key=f"{world.name}:{first.ticket_id}:L4")
        fresh = replace(first, tier=Tier.L4, comment=comment)
        assert world.store.tier_entries(world.name, fresh.ticket_id)
        prepared = syncer._prepare(fresh, None, SimpleNamespace(id=fresh.ticket_id), world.clock.now(), report)
        assert prepared is not None and prepared.comment is not None
    finally:
        world.close()


def test_issue14_an_unsynced_transaction_leaves_the_connection_synced_after_it(tmp_path: Path) -> None:
    durable, scratch = SqliteStore(tmp_path / "durable.sqlite3"), SqliteStore(tmp_path / "x.sqlite3", durable=False)
    try:
        for store, expected in ((durable, 2), (scratch, 0)):  # 2: FULL, 0: OFF
            store.record_intent("zd", "1", "k", "{}", T0)
            with pytest.raises(RuntimeError), store.transaction(sync=False):
                store.mark_done("k", T0)
                raise RuntimeError("refused")
            assert store._db().execute("PRAGMA synchronous").fetchone() == (expected,)
            with store.transaction(sync=False):
                store.mark_done("k", T0)
            assert store._db().execute("PRAGMA synchronous").fetchone() == (expected,)
            assert store.pending("zd") == []
    finally:
        durable.close()
        scratch.close()

"""The state store: one suite run over both backends, then what is specific to SQLite and to PostgreSQL.

PostgreSQL tests use the real server named by ESCALATION_SYNC_TEST_POSTGRES_URL (default: the local test
database). Each test gets a fresh schema with a random name, selected through the URL's
``options=-csearch_path%3D...`` exactly as a user would, and dropped afterwards, so parallel runs never meet.
If the server cannot be reached the PostgreSQL tests are skipped with a message naming the URL.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from state import (
    IntentState,
    Store,
    StoreError,
    StoreUrlError,
    UnknownIntentError,
    open_store,
    redact_url,
    scrub,
)
from state.base import BookEntry
from state.postgres import PostgresStore
from state.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from state.sqlite import SCHEMA_VERSION, SqliteStore

PG_URL = os.environ.get("ESCALATION_SYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


def with_search_path(url: str, schema: str) -> str:
    option = "options=" + quote(f"-csearch_path={schema}", safe="")
    return url + ("&" if "?" in url else "?") + option


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {redact_url(PG_URL)}: {scrub(str(exc), PG_URL)}")


@pytest.fixture
def pg_schema() -> Iterator[tuple[psycopg.Connection, str]]:
    """A fresh schema on the test server (dropped afterwards) and an admin connection to inspect it."""
    yield from private_schema()


def private_schema() -> Iterator[tuple[psycopg.Connection, str]]:
    """`pg_schema`'s body, for other test modules' fixtures (tests/test_leases.py)."""
    admin = _admin()
    name = f"escalation_sync_test_{secrets.token_hex(6)}"
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield admin, name
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/escalation-sync.sqlite3"
    _, schema = request.getfixturevalue("pg_schema")
    return with_search_path(PG_URL, schema)


@pytest.fixture
def reopen(store_url: str) -> Iterator[Callable[[], Store]]:
    """Open the test's store (again); every store opened is closed at the end."""
    opened: list[Store] = []

    def _open() -> Store:
        opened.append(open_store(store_url))
        return opened[-1]

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(reopen: Callable[[], Store]) -> Store:
    return reopen()


# The same behaviour on both backends


def test_cursors_are_per_instance_and_overwritten(store: Store, reopen: Callable[[], Store]) -> None:
    assert store.get_cursor("zd") is None
    store.set_cursor("zd", "c1")
    store.set_cursor("jsm", "j1")
    store.set_cursor("zd", "c2")
    assert store.get_cursor("zd") == "c2"
    assert store.get_cursor("jsm") == "j1"
    assert reopen().get_cursor("zd") == "c2"


def test_record_intent_is_idempotent_by_key(store: Store) -> None:
    first = store.record_intent("zd", "42", "k1", '{"tier": "L2"}', T0)
    assert (first.key, first.instance, first.ticket_id, first.payload) == ("k1", "zd", "42", '{"tier": "L2"}')
    assert (first.state, first.attempts, first.last_error) == (IntentState.PENDING, 0, "")
    assert first.created_at == first.updated_at == T0
    store.mark_failed("k1", "timeout", T0 + timedelta(minutes=1))

    again = store.record_intent("other", "43", "k1", '{"tier": "L3"}', T0 + timedelta(hours=1))
    assert again == store.get_intent("k1")
    assert (again.instance, again.payload, again.created_at, again.attempts) == ("zd", '{"tier": "L2"}', T0, 1)
    assert len(store.pending("zd")) == 1
    assert store.pending("other") == []
    assert store.get_intent("nope") is None


def test_mark_failed_counts_and_keeps_pending(store: Store) -> None:
    store.record_intent("zd", "42", "k1", "{}", T0)
    one = store.mark_failed("k1", "HTTP 503", T0 + timedelta(seconds=5))
    two = store.mark_failed("k1", "HTTP 502", T0 + timedelta(seconds=9))
    assert (one.attempts, one.last_error, one.state) == (1, "HTTP 503", IntentState.PENDING)
    assert (two.attempts, two.last_error, two.state) == (2, "HTTP 502", IntentState.PENDING)
    assert two.updated_at == T0 + timedelta(seconds=9)
    assert two.created_at == T0
    assert store.get_intent("k1") == two
    assert [i.key for i in store.pending("zd")] == ["k1"]


def test_done_and_dead_leave_the_pending_list(store: Store) -> None:
    for n in range(3):
        store.record_intent("zd", str(n), f"k{n}", "{}", T0 + timedelta(seconds=n))
    store.mark_done("k0", T0 + timedelta(minutes=1))
    store.mark_failed("k1", "HTTP 500", T0 + timedelta(minutes=1))
    store.mark_dead("k1", "HTTP 422: field invalid", T0 + timedelta(minutes=2))

    done, dead = store.get_intent("k0"), store.get_intent("k1")
    assert done is not None and done.state is IntentState.DONE and done.updated_at == T0 + timedelta(minutes=1)
    assert dead is not None and dead.state is IntentState.DEAD
    assert (dead.last_error, dead.attempts) == ("HTTP 422: field invalid", 1)
    assert [i.key for i in store.pending("zd")] == ["k2"]
    assert [i.key for i in store.dead_letters("zd")] == ["k1"]
    assert store.dead_letters("jsm") == []


@pytest.mark.parametrize("call", ["mark_done", "mark_failed", "mark_dead"])
def test_unknown_intent_key_is_loud(store: Store, call: str) -> None:
    args = (T0,) if call == "mark_done" else ("boom", T0)
    with pytest.raises(UnknownIntentError, match="missing-key"):
        getattr(store, call)("missing-key", *args)
    with pytest.raises(KeyError):
        getattr(store, call)("missing-key", *args)


def test_pending_is_oldest_first_and_per_instance(store: Store) -> None:
    # Recorded out of time order; two share a timestamp and keep their recording order.
    store.record_intent("zd", "1", "late", "{}", T0 + timedelta(hours=2))
    store.record_intent("zd", "2", "early", "{}", T0)
    store.record_intent("jsm", "3", "elsewhere", "{}", T0 - timedelta(days=1))
    store.record_intent("zd", "4", "middle-a", "{}", T0 + timedelta(hours=1))
    store.record_intent("zd", "5", "middle-b", "{}", T0 + timedelta(hours=1))
    store.record_intent("zd", "6", "finished", "{}", T0 - timedelta(days=2))
    store.mark_done("finished", T0)
    assert [i.key for i in store.pending("zd")] == ["early", "middle-a", "middle-b", "late"]
    assert [i.key for i in store.pending("jsm")] == ["elsewhere"]


def test_quarantine_reports_news_once(store: Store) -> None:
    assert store.quarantine("zd", "r1", '{"id": 1}', "priority: unknown 'urgentish'", T0) is True
    assert store.quarantine("zd", "r1", '{"v": 2}', "priority: unknown 'urgentish'", T0 + timedelta(1)) is False
    assert store.quarantine("zd", "r1", "{}", "priority: unknown 'urgentish'", T0 + timedelta(2)) is False
    assert store.quarantine("zd", "r2", "{}", "status: missing", T0 + timedelta(3)) is True
    assert store.quarantine("jsm", "r1", "{}", "priority: unknown 'urgentish'", T0) is True

    records = store.quarantined("zd")
    assert [(r.record_id, r.count) for r in records] == [("r1", 3), ("r2", 1)]
    r1 = records[0]
    assert (r1.first_seen, r1.last_seen, r1.raw) == (T0, T0 + timedelta(2), "{}")

    # A different error for the same record is news again, and starts counting afresh.
    assert store.quarantine("zd", "r1", '{"id": 1}', "status: missing", T0 + timedelta(4)) is True
    r1 = {r.record_id: r for r in store.quarantined("zd")}["r1"]
    assert (r1.error, r1.count, r1.first_seen) == ("status: missing", 1, T0 + timedelta(4))

    store.release("zd", "r1")
    store.release("zd", "never-seen")
    assert [r.record_id for r in store.quarantined("zd")] == ["r2"]
    assert [r.record_id for r in store.quarantined("jsm")] == ["r1"]
    assert store.quarantine("zd", "r1", "{}", "status: missing", T0 + timedelta(5)) is True


def test_escalations_count_distinct_tickets_across_instances(store: Store) -> None:
    store.record_escalation("zd", "acme", "100", "L2", T0)
    store.record_escalation("zd", "acme", "100", "L2", T0 + timedelta(hours=1))  # repeat: ignored
    store.record_escalation("zd", "acme", "100", "L3", T0 + timedelta(hours=2))  # same ticket, new tier
    store.record_escalation("jsm", "acme", "100", "L2", T0 + timedelta(hours=3))  # same id, other instance
    store.record_escalation("zd", "acme", "101", "L2", T0 - timedelta(days=10))  # too old
    store.record_escalation("zd", "globex", "102", "L2", T0)  # other customer

    assert store.escalations_since("acme", T0) == 2
    assert store.escalations_since("acme", T0 - timedelta(days=10)) == 3  # the boundary is inclusive
    assert store.escalations_since("acme", T0 + timedelta(hours=2, microseconds=1)) == 1
    assert store.escalations_since("globex", T0) == 1
    assert store.escalations_since("initech", T0) == 0


def test_tier_entries_are_per_ticket_oldest_first(store: Store) -> None:
    store.record_escalation("zd", "acme", "100", "L3", T0 + timedelta(hours=2))
    store.record_escalation("zd", "acme", "100", "L2", T0)
    store.record_escalation("zd", "acme", "100", "L2", T0)  # a replay of the same entry adds nothing
    store.record_escalation("zd", "acme", "100", "L2", T0 + timedelta(hours=5))  # entered again (issue 9): kept
    store.record_escalation("jsm", "acme", "100", "L4", T0)  # same id on another instance
    later = ("L2", T0 + timedelta(hours=5))
    assert store.tier_entries("zd", "100") == [("L2", T0), ("L3", T0 + timedelta(hours=2)), later]
    assert store.tier_entries("zd", "999") == []


def test_datetimes_round_trip_as_aware_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 11, 0, 0, 654321, tzinfo=paris)
    intent = store.record_intent("zd", "1", "k", "{}", local)
    assert intent.created_at == local
    assert intent.created_at.utcoffset() == timedelta(0)
    assert intent.created_at.hour == 9 and intent.created_at.microsecond == 654321

    store.quarantine("zd", "r", "{}", "e", local)
    record = store.quarantined("zd")[0]
    assert record.first_seen == local and record.first_seen.tzinfo is not None
    assert record.first_seen.utcoffset() == timedelta(0)

    store.record_escalation("zd", "acme", "1", "L2", local)
    assert store.escalations_since("acme", datetime(2026, 6, 1, 9, 0, 0, 654321, tzinfo=UTC)) == 1
    assert store.escalations_since("acme", datetime(2026, 6, 1, 9, 0, 0, 654322, tzinfo=UTC)) == 0


def test_naive_datetimes_are_refused(store: Store) -> None:
    naive = datetime(2026, 1, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_intent("zd", "1", "k", "{}", naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.escalations_since("acme", naive)
    assert store.get_intent("k") is None


def test_state_survives_reopening(store: Store, reopen: Callable[[], Store]) -> None:
    store.record_intent("zd", "1", "k", '{"a": 1}', T0)
    store.mark_failed("k", "HTTP 500", T0 + timedelta(seconds=1))
    store.quarantine("zd", "r", "{}", "bad", T0)
    store.record_escalation("zd", "acme", "1", "L2", T0)
    store.close()

    again = reopen()
    assert again.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
    [intent] = again.pending("zd")
    assert (intent.key, intent.attempts, intent.last_error, intent.created_at) == ("k", 1, "HTTP 500", T0)
    assert [r.record_id for r in again.quarantined("zd")] == ["r"]
    assert again.escalations_since("acme", T0) == 1


def test_a_newer_schema_is_refused(store: Store, reopen: Callable[[], Store]) -> None:
    store._db().execute("INSERT INTO schema_version (version, applied_at) VALUES (99, '2030-01-01T00:00:00Z')")  # type: ignore[attr-defined]
    store.close()
    with pytest.raises(StoreError, match="schema version 99"):
        reopen()


def test_a_closed_store_says_so(store: Store) -> None:
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.get_cursor("zd")


# URLs and messages


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        ("postgresql://bob:s3cr%40t@db:5432/x", "postgresql://bob:***@db:5432/x", "s3cr"),
        ("postgres://db/x?user=bob&password=hunter2&sslmode=require", "password=***", "hunter2"),
        ("postgresql://bob@db/x", "postgresql://bob@db/x", None),
        ("sqlite:///var/state.sqlite3", "sqlite:///var/state.sqlite3", None),
    ],
)
def test_redact_url(url: str, shown: str, hidden: str | None) -> None:
    assert shown in redact_url(url)
    if hidden:
        assert hidden not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:topsecret@db/escalation", "unsupported scheme 'mysql'"),
        ("redis://cache:6379", "unsupported scheme 'redis'"),
        ("var/state.sqlite3", "has no scheme"),
        ("sqlite://relative.sqlite3", "sqlite:///relative/path"),
        ("sqlite:///", "names no file"),
        ("sqlite:///state.sqlite3?mode=ro", "no query options"),
    ],
)
def test_bad_urls_raise_value_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        open_store(url)
    assert isinstance(caught.value, StoreUrlError)
    assert "topsecret" not in str(caught.value)


# SQLite specifics


def test_sqlite_file_is_wal_durable_and_its_directory_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.sqlite3"
    with open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SqliteStore)
        assert path.is_file()
        assert store._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sqlite_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///var/escalation-sync.sqlite3") as store:
        store.set_cursor("zd", "c")
    assert (tmp_path / "var" / "escalation-sync.sqlite3").is_file()


@pytest.mark.parametrize(
    ("moment", "stored"),
    [
        (datetime(2026, 6, 1, 9, 0, tzinfo=UTC), "2026-06-01T09:00:00.000000+00:00"),
        (
            datetime(2026, 6, 1, 11, 0, 0, 654321, tzinfo=timezone(timedelta(hours=2))),
            "2026-06-01T09:00:00.654321+00:00",
        ),
        (datetime(999, 12, 31, 23, 59, 59, 5, tzinfo=UTC), "999-12-31T23:59:59.000005+00:00"),
    ],
)
def test_sqlite_stores_times_as_fixed_width_utc_text(tmp_path: Path, moment: datetime, stored: str) -> None:
    """Text order is time order only if every time has its microseconds and the UTC offset written out (a
    whole second too), as the strftime format has always written them (a year below 1000 is not padded)."""
    store = SqliteStore(tmp_path / "state.sqlite3")
    store.book_put("zd", [BookEntry("1", True, moment, "r", "{}", review_at=moment, seen_at=moment)])
    store.close()
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        assert db.execute("SELECT updated_at, review_at, seen_at FROM book").fetchone() == (stored,) * 3


def test_sqlite_in_memory() -> None:
    with open_store("sqlite:///:memory:") as store:
        store.set_cursor("zd", "c")
        assert store.get_cursor("zd") == "c"
    assert not Path(":memory:").exists()


_CHILD = """
import os, signal, sys
from datetime import datetime, UTC
from state import open_store
store = open_store(sys.argv[1])
store.record_intent("zd", "42", "comment:42:L2", '{"tier": "L2"}', datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
store.set_cursor("zd", "page-7")
if sys.argv[2] == "exit":
    os._exit(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_sqlite_intent_survives_the_process_dying(tmp_path: Path, death: str) -> None:
    url = f"sqlite:///{tmp_path}/state.sqlite3"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, url, death], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == (1 if death == "exit" else -9), child.stderr
    with open_store(url) as store:
        [intent] = store.pending("zd")
        assert (intent.key, intent.payload, intent.state) == ("comment:42:L2", '{"tier": "L2"}', IntentState.PENDING)
        assert store.get_cursor("zd") == "page-7"


def test_sqlite_unwritable_path_names_the_url(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker}/sub/state.sqlite3"
    with pytest.raises(StoreError, match="cannot open state store") as caught:
        open_store(url)
    assert url in str(caught.value)


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite3"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match=r"notes\.sqlite3"):
        open_store(f"sqlite:///{path}")


def test_sqlite_store_refuses_other_threads(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.sqlite3")
    errors: list[BaseException] = []

    def use() -> None:
        try:
            store.set_cursor("zd", "c")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    store.close()
    assert len(errors) == 1 and isinstance(errors[0], StoreError)
    assert isinstance(errors[0].__cause__, sqlite3.ProgrammingError)


# PostgreSQL specifics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.postgres
def test_postgres_tables_live_in_the_search_path_schema(pg_schema: tuple[psycopg.Connection, str]) -> None:
    admin, schema = pg_schema
    with open_store(with_search_path(PG_URL.replace("postgresql://", "postgres://", 1), schema)) as store:
        assert isinstance(store, PostgresStore)
        store.set_cursor("zd", "c")
    tables = {
        row[0]
        for row in admin.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    }
    assert tables == {
        "schema_version",
        "cursors",
        "intents",
        "quarantine",
        "escalations",
        "book",
        "settings",
        "leases",
        "daemons",
        "escalated_tickets",
        "escalation_days",
    }
    types = dict(
        admin.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'intents'",
            (schema,),
        ).fetchall()
    )
    assert types["created_at"] == types["updated_at"] == "timestamp with time zone"
    cursor = admin.execute(sql.SQL("SELECT cursor FROM {}.cursors").format(sql.Identifier(schema))).fetchone()
    assert cursor == ("c",)


@pytest.mark.postgres
def test_postgres_missing_schema_is_a_clear_error() -> None:
    _admin().close()  # skip when the server is away
    url = with_search_path(PG_URL, f"no_such_schema_{secrets.token_hex(4)}")
    with pytest.raises(StoreError, match="search_path names no existing schema"):
        open_store(url)


@pytest.mark.postgres
def test_postgres_refused_connection_names_the_url_without_password() -> None:
    url = f"postgresql://escalation:pa55word-xyz@127.0.0.1:{_free_port()}/escalation"
    with pytest.raises(StoreError, match="cannot connect") as caught:
        open_store(url)
    message = str(caught.value)
    assert "pa55word-xyz" not in message
    assert f"escalation:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in message


@pytest.mark.postgres
def test_postgres_invalid_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a valid PostgreSQL URL") as caught:
        open_store("postgresql://bob:zzsecret@db/x?nonsense_option=1")
    assert "zzsecret" not in str(caught.value)


@pytest.mark.postgres
def test_postgres_stores_share_state_safely(pg_schema: tuple[psycopg.Connection, str]) -> None:
    """Several daemons on one schema: opening, recording, counting and quarantining from threads at once."""
    url = with_search_path(PG_URL, pg_schema[1])
    workers = 6
    barrier = threading.Barrier(workers)
    news: list[bool] = []
    errors: list[BaseException] = []

    def daemon(n: int) -> None:
        try:
            barrier.wait()
            with open_store(url) as store:  # every worker races to create the schema
                store.record_intent("zd", "42", "shared", f'{{"from": {n}}}', T0 + timedelta(seconds=n))
                for _ in range(10):
                    store.mark_failed("shared", f"from {n}", T0)
                news.append(store.quarantine("zd", "r1", "{}", "bad", T0))
                store.record_escalation("zd", "acme", "42", "L2", T0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=daemon, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with open_store(url) as store:
        [intent] = store.pending("zd")
        assert intent.attempts == workers * 10
        assert sorted(news) == [False] * (workers - 1) + [True]
        assert store.quarantined("zd")[0].count == workers
        assert store.escalations_since("acme", T0) == 1
        assert store.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_postgres_reconnects_after_losing_the_connection(pg_schema: tuple[psycopg.Connection, str]) -> None:
    admin, schema = pg_schema
    with open_store(with_search_path(PG_URL, schema)) as store:
        store.set_cursor("zd", "c1")
        pid = store._db().info.backend_pid  # type: ignore[attr-defined]
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreError, match="reading a cursor failed"):
            store.get_cursor("zd")
        assert store.get_cursor("zd") == "c1"
        assert store._db().info.backend_pid != pid  # type: ignore[attr-defined]


# A model check: random operation sequences against a plain-Python model of the contract.

_keys = st.sampled_from(["k0", "k1", "k2", "k3"])
_times = st.integers(min_value=0, max_value=5).map(lambda h: T0 + timedelta(hours=h))
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("intent"), _keys, _times),
        st.tuples(st.just("fail"), _keys, _times),
        st.tuples(st.just("done"), _keys, _times),
        st.tuples(st.just("dead"), _keys, _times),
        st.tuples(st.just("quarantine"), st.sampled_from(["r0", "r1"]), st.sampled_from(["e0", "e1"]), _times),
        st.tuples(st.just("release"), st.sampled_from(["r0", "r1"])),
        st.tuples(
            st.just("escalate"),
            st.sampled_from(["zd", "jsm"]),
            st.sampled_from([("acme", "1"), ("acme", "2"), ("globex", "3")]),  # a ticket has one customer
            st.sampled_from(["L2", "L3"]),
            _times,
        ),
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_operations)
def test_store_matches_a_model_of_the_contract(store: Store, operations: list[tuple]) -> None:
    # Examples share the store; a fresh prefix on every name keeps them apart.
    p = secrets.token_hex(4) + ":"
    intents: dict[str, dict] = {}  # key -> state, attempts, created_at, order of recording
    quarantine: dict[str, tuple[str, int]] = {}  # record -> error, count
    escalations: dict[tuple[str, str, str, datetime], str] = {}  # (instance, ticket, tier, at) -> customer
    for op in operations:
        kind = op[0]
        if kind == "intent":
            _, key, at = op
            got = store.record_intent(p + "zd", "t", p + key, "{}", at)
            want = intents.setdefault(key, {"state": IntentState.PENDING, "attempts": 0, "at": at, "n": len(intents)})
            assert (got.state, got.attempts, got.created_at) == (want["state"], want["attempts"], want["at"])
        elif kind in ("fail", "done", "dead"):
            _, key, at = op
            if key not in intents:
                with pytest.raises(UnknownIntentError):
                    store.mark_done(p + key, at)
                continue
            if kind == "fail":
                intents[key]["attempts"] += 1
                assert store.mark_failed(p + key, "e", at).attempts == intents[key]["attempts"]
            elif kind == "done":
                store.mark_done(p + key, at)
                intents[key]["state"] = IntentState.DONE
            else:
                store.mark_dead(p + key, "e", at)
                intents[key]["state"] = IntentState.DEAD
        elif kind == "quarantine":
            _, record, error, at = op
            previous = quarantine.get(record)
            news = previous is None or previous[0] != error
            quarantine[record] = (error, 1 if news else previous[1] + 1)  # type: ignore[index]
            assert store.quarantine(p + "zd", record, "{}", error, at) is news
        elif kind == "release":
            store.release(p + "zd", op[1])
            quarantine.pop(op[1], None)
        else:
            _, instance, (customer, ticket), tier, at = op
            store.record_escalation(p + instance, p + customer, ticket, tier, at)
            escalations.setdefault((instance, ticket, tier, at), customer)

    def expected(state: IntentState) -> list[str]:
        keys = [k for k, v in intents.items() if v["state"] is state]
        return [p + k for k in sorted(keys, key=lambda k: (intents[k]["at"], intents[k]["n"]))]

    assert [i.key for i in store.pending(p + "zd")] == expected(IntentState.PENDING)
    assert [i.key for i in store.dead_letters(p + "zd")] == expected(IntentState.DEAD)
    assert {r.record_id: (r.error, r.count) for r in store.quarantined(p + "zd")} == quarantine
    for customer in ("acme", "globex"):
        for hours in range(7):
            since = T0 + timedelta(hours=hours)
            tickets = {(i, t) for (i, t, _, at), c in escalations.items() if c == customer and at >= since}
            assert store.escalations_since(p + customer, since) == len(tickets)


# The open-ticket book, on both backends


def entry(ticket_id: str, updated: datetime, **changes) -> BookEntry:
    base = BookEntry(ticket_id, True, updated, f"rev-{updated.timestamp():.0f}", f'{{"id": "{ticket_id}"}}', "acme")
    return replace(base, seen_at=T0, **changes)


def test_the_book_keeps_the_newest_record_of_a_ticket(store: Store) -> None:
    store.book_put("zd", [entry("1", T0 + timedelta(minutes=5), review_at=T0)])
    store.book_put("zd", [entry("1", T0, raw='{"stale": true}', review_at=T0)])  # a lagging index, older
    [kept] = store.book_due("zd", T0, 10)
    assert kept.updated_at == T0 + timedelta(minutes=5) and "stale" not in (kept.raw or "")
    store.book_put("zd", [replace(entry("1", T0 + timedelta(minutes=5)), is_open=False, raw=None)])
    assert store.book_due("zd", T0 + timedelta(days=1), 10) == []
    store.book_put("zd", [entry("1", T0 + timedelta(minutes=1), review_at=T0)])  # older than the tombstone
    assert store.book_stats("zd", T0) == (0, 0)


def test_due_entries_come_most_urgent_first_and_only_when_due(store: Store) -> None:
    store.book_put(
        "zd",
        [
            entry("calm", T0, review_at=T0 - timedelta(hours=2), urgency=6),
            entry("breached", T0, review_at=T0 - timedelta(minutes=1), urgency=0),
            entry("later", T0, review_at=T0 + timedelta(seconds=1), urgency=0),
            entry("never", T0, review_at=None, urgency=0),
        ],
    )
    assert [e.ticket_id for e in store.book_due("zd", T0, 10)] == ["breached", "calm"]
    assert store.book_stats("zd", T0) == (4, 2)
    store.book_schedule("zd", [("calm", None, 6, False)])
    assert [e.ticket_id for e in store.book_due("zd", T0 + timedelta(seconds=1), 10)] == ["breached", "later"]


def test_adopt_is_set_only_when_a_ticket_enters_the_book(store: Store) -> None:
    store.book_put("zd", [entry("1", T0, adopt=True, review_at=T0)])
    store.book_put("zd", [entry("1", T0 + timedelta(minutes=1), adopt=False, review_at=T0)])
    assert store.book_due("zd", T0, 1)[0].adopt
    store.book_put("zd", [entry("2", T0, adopt=False)])
    store.book_put("zd", [entry("2", T0 + timedelta(minutes=1), adopt=True, review_at=T0)])
    assert not store.book_entry("zd", "2").adopt  # type: ignore[union-attr]


def test_a_customers_tickets_are_made_due_across_instances(store: Store) -> None:
    later = T0 + timedelta(days=2)
    store.book_put("zd", [entry("1", T0, review_at=later), entry("2", T0, review_at=later, customer="other")])
    store.book_put("jsm", [entry("SUP-1", T0, review_at=None)])
    assert store.book_mark_due(T0, customer="acme") == 2
    assert [e.ticket_id for e in store.book_due("zd", T0, 10)] == ["1"]
    assert [e.ticket_id for e in store.book_due("jsm", T0, 10)] == ["SUP-1"]
    assert store.book_mark_due(T0, instance="zd") == 1  # "1" is due already


def test_old_tombstones_are_forgotten(store: Store) -> None:
    store.book_put("zd", [replace(entry("1", T0), is_open=False, raw=None), entry("2", T0)])
    assert store.book_purge("zd", T0 + timedelta(days=1)) == 1
    assert store.book_entry("zd", "1") is None and store.book_entry("zd", "2") is not None


def test_history_in_bulk_matches_history_one_by_one(store: Store) -> None:
    store.record_escalation("zd", "acme", "1", "L2", T0)
    store.record_escalation("zd", "acme", "1", "L3", T0 + timedelta(hours=1))
    store.record_escalation("jsm", "acme", "9", "L2", T0)
    store.record_escalation("zd", "globex", "2", "L2", T0 - timedelta(days=40))
    assert store.tier_entries_many("zd", ["1", "2", "3"]) == {
        "1": store.tier_entries("zd", "1"),
        "2": store.tier_entries("zd", "2"),
    }
    assert store.escalation_counts(T0 - timedelta(days=30)) == {"acme": 2}
    assert store.escalations_since("acme", T0 - timedelta(days=30)) == 2


def test_book_seen_since_names_the_tickets_booked_at_or_after_a_moment(store: Store) -> None:
    """How a cycle's scan skips what its poll booked, without a set of every polled id in memory."""
    t0 = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)
    entries = [
        BookEntry(f"{n}", True, t0 - timedelta(days=1), "r", "{}", "acme", seen_at=t0 - timedelta(seconds=n % 2))
        for n in range(1200)
    ]
    store.book_put("zd", [*entries, replace(entries[0], ticket_id="never", seen_at=None)])
    store.book_put("other", [replace(entries[1], seen_at=t0)])
    asked = [str(n) for n in range(1200)] + ["never", "unknown"]
    assert store.book_seen_since("zd", asked, t0) == {str(n) for n in range(0, 1200, 2)}
    assert store.book_seen_since("zd", ["1"], t0 - timedelta(seconds=1)) == {"1"}
    assert store.book_seen_since("zd", [], t0) == set()


def test_a_snapshot_is_a_throwaway_copy(store: Store) -> None:
    store.set_cursor("zd", "c1")
    store.book_put("zd", [entry("1", T0, review_at=T0)])
    store.record_escalation("zd", "acme", "1", "L2", T0)
    copy = store.snapshot("zd")
    try:
        assert copy.get_cursor("zd") == "c1" and copy.tier_entries("zd", "1") == store.tier_entries("zd", "1")
        copy.set_cursor("zd", "c2")
        copy.book_schedule("zd", [("1", None, 0, False)])
        assert store.get_cursor("zd") == "c1" and len(store.book_due("zd", T0, 10)) == 1
    finally:
        copy.close()


def test_a_version_1_sqlite_file_is_migrated_to_the_book(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for statement in SQLITE_MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00.000000+00:00')")
        db.execute("INSERT INTO cursors VALUES ('zd', 'kept')")
    with open_store(f"sqlite:///{path}") as migrated:
        assert migrated.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
        assert migrated.get_cursor("zd") == "kept"
        migrated.book_put("zd", [entry("1", T0)])
        assert migrated.book_stats("zd", T0) == (1, 0)


def test_a_new_state_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "private.sqlite3"
    open_store(f"sqlite:///{path}").close()
    assert path.stat().st_mode & 0o777 == 0o600

"""The connector contract: one suite every platform connector must pass, run against that platform's sandbox.

Why a shared suite: the sync cycle treats all connectors alike (DESIGN.md: poll -> normalize -> plan -> apply,
the cursor committed last), so what it relies on must hold for each of them in the same words: paging reaches
the end exactly once, a cursor survives a restart, an incremental poll returns only what changed, deletions and
closures are visible as far as the platform exports them, write-backs are idempotent and internal, 429/5xx
are retried (writes never blindly), unknown values are quarantined one record at a time, and bad credentials
fail fast without retries.

Each platform module subclasses `ConnectorContract` and fills in the hooks (sandbox, credentials, paths,
how to act on a ticket as another agent). Everything else is here. The connector is built exactly as the
daemon builds it (`runtime.wiring.build_connector`) with the real mapping from `mappings/<platform>.toml`;
only the httpx transport (the sandbox, in-process) and `sleep` (recorded, never slept) differ. Time is the
sandbox's SimClock.

`ConnectorContract` itself is not collected (`__test__ = False`); every subclass is (`__init_subclass__`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from connectors.base import AmbiguousWriteError, AuthError, Connector, Page, RawRecord
from connectors.http import WRITE_METHODS, HttpClient
from engine.model import Comment, Decision, Status, TagSignal, Ticket, Tier, WriteBack
from engine.plan import plan
from mappings import NormalizeError, PlatformMapping, load_mapping
from runtime.config import InstanceSection
from runtime.wiring import build_connector
from sandbox.base import Fault, SandboxApp, SimClock

START = datetime(2026, 11, 17, 14, 30, tzinfo=UTC)
"""A Tuesday afternoon: the sandboxes' simulated support floor is staffed, so seeded tickets are varied."""
LOOKBACK_HOURS = 72.0
SMALL_PAGE = 7
LARGE_PAGE = 100
SEED_TICKETS = 32
RETRY_AFTER = 17


@dataclass
class World:
    """One sandboxed platform instance: clock, sandbox, mapping, and the connectors built against it."""

    contract: ConnectorContract
    clock: SimClock
    sandbox: SandboxApp
    mapping: PlatformMapping
    sleeps: list[float] = field(default_factory=list)
    clients: list[HttpClient] = field(default_factory=list)

    def connector(self, *, environ: dict[str, str] | None = None, page_size: int = SMALL_PAGE) -> Connector:
        """A fresh connector, as after a restart: nothing shared with earlier ones but the sandbox."""
        section = self.contract.section(page_size)
        http, connector = build_connector(
            section,
            self.mapping,
            environ if environ is not None else self.contract.environ,
            transport=self.sandbox.transport(),
            sleep=self.sleeps.append,
        )
        self.clients.append(http)
        return connector

    def poll_to_end(self, connector: Connector, cursor: str | None = None, limit: int = 50) -> tuple[list[Page], str]:
        """Poll until has_more is False; returns every page and the final cursor."""
        pages: list[Page] = []
        while True:
            page = connector.poll(cursor, self.clock.now())
            pages.append(page)
            cursor = page.cursor
            if not page.has_more:
                return pages, cursor
            assert len(pages) < limit, "paging did not come to an end"

    def normalize(self, record: RawRecord) -> Ticket:
        return self.mapping.normalize(record, self.contract.instance)

    def after_lag(self) -> None:
        """Move the clock past the platform's export lag, so a change just made becomes visible."""
        self.clock.advance(self.contract.export_lag + timedelta(seconds=1))

    def writes(self) -> int:
        """Write requests the sandbox received (poll searches that happen to use POST excluded)."""
        poll = re.compile(self.contract.poll_path)
        return sum(1 for method, path in self.sandbox.requests if method in WRITE_METHODS and not poll.search(path))

    def close(self) -> None:
        for http in self.clients:
            http.close()


def managed_after(world: World, observed: Ticket, added: str) -> frozenset[str]:
    """The plan's whole set of managed tags after adding `added` (what engine.plan puts in WriteBack.tags)."""
    return frozenset(tag for tag in observed.tags if world.mapping.tags.is_managed(tag)) | {added}


def ids(pages: list[Page]) -> list[str]:
    return [record.id for page in pages for record in page.records]


class ConnectorContract:
    """The contract tests; subclasses provide the platform hooks below."""

    __test__ = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__test__ = True

    # -- platform hooks ---------------------------------------------------------------------------------------

    platform: ClassVar[str]
    base_url: ClassVar[str]
    credentials: ClassVar[dict[str, str]]
    """Credential name -> environment variable name, as in config.example.toml."""
    environ: ClassVar[dict[str, str]]
    bogus_environ: ClassVar[dict[str, str]]
    export_lag: ClassVar[timedelta] = timedelta(0)
    """How long a change stays out of the export (Zendesk: the last minute)."""
    exports_tombstones: ClassVar[bool] = False
    poll_path: ClassVar[str]
    """Regex of the path the poll reads tickets from (faults are injected there)."""
    write_method: ClassVar[str]
    write_path: ClassVar[str]
    """Method and path regex of the request that writes tier and tags."""
    missing_id: ClassVar[str] = "0"
    """A ticket id that never existed (used where the sandbox cannot delete)."""

    def make_sandbox(self, clock: SimClock) -> SandboxApp:
        raise NotImplementedError

    def ref(self, ticket_id: str) -> Any:
        """The sandbox's handle of a connector's RawRecord.id."""
        return ticket_id

    def all_refs(self, sandbox: Any) -> list[Any]:
        """Every ticket the sandbox holds, deleted ones included where the platform keeps them."""
        raise NotImplementedError

    def record_id(self, sandbox: Any, ref: Any) -> str:
        """The RawRecord.id the connector reports for a sandbox ticket."""
        return str(ref)

    def updated_at(self, sandbox: Any, ref: Any) -> datetime:
        raise NotImplementedError

    def touch(self, sandbox: Any, ref: Any) -> None:
        """Change the ticket as another agent would (a comment or a field), now."""
        raise NotImplementedError

    def close_ticket(self, sandbox: Any, ref: Any) -> None:
        """Resolve or close the ticket as an agent would, now."""
        raise NotImplementedError

    def delete_ticket(self, sandbox: Any, ref: Any) -> bool:
        """Delete the ticket; False when the sandbox cannot express a deletion."""
        raise NotImplementedError

    def comment_visibility(self, sandbox: Any, ref: Any, marker: str) -> list[bool]:
        """For each stored comment carrying `marker`: True when customers can see it (public)."""
        raise NotImplementedError

    def rate_limit_fault(self, retry_after: int) -> Fault:
        raise NotImplementedError

    def auth_fault(self) -> Fault:
        raise NotImplementedError

    def require_credentials(self, sandbox: Any) -> bool:
        """Make the sandbox accept only `environ`'s credentials; False when it cannot check them."""
        return False

    def inject_unknown_value(self, sandbox: Any, ref: Any) -> tuple[str, str] | None:
        """Give the ticket a value the default mapping does not know; returns (field, value), or None when the
        sandbox cannot express it (then `unknown_record` edits the raw payload instead)."""
        return None

    def unknown_record(self, record: RawRecord) -> tuple[RawRecord, str, str]:
        raise NotImplementedError

    # -- fixtures and helpers ---------------------------------------------------------------------------------

    @property
    def instance(self) -> str:
        return f"contract-{self.platform}"

    def section(self, page_size: int) -> InstanceSection:
        return InstanceSection(
            name=self.instance,
            platform=self.platform,  # type: ignore[arg-type]
            base_url=self.base_url,
            initial_lookback_hours=LOOKBACK_HOURS,
            credentials=dict(self.credentials),
            options={"page_size": page_size},
        )

    @pytest.fixture
    def world(self) -> Iterator[World]:
        clock = SimClock(START)
        sandbox = self.make_sandbox(clock)
        sandbox.seed_tickets(SEED_TICKETS)
        created = World(self, clock, sandbox, load_mapping(self.platform))
        yield created
        created.close()

    def expected_ids(self, world: World, since: datetime) -> set[str]:
        """What a first poll at `now` with look-back `since` must export, from the sandbox's own data."""
        latest = world.clock.now() - self.export_lag
        return {
            self.record_id(world.sandbox, ref)
            for ref in self.all_refs(world.sandbox)
            if since <= self.updated_at(world.sandbox, ref) <= latest
        }

    def open_ticket(self, world: World, records: list[RawRecord], *, below: Tier = Tier.L3) -> Ticket:
        """A ticket that can be written to: not terminal, below `below`, no tags of ours yet."""
        for record in records:
            try:
                ticket = world.normalize(record)
            except NormalizeError:
                continue
            managed = [tag for tag in ticket.tags if world.mapping.tags.is_managed(tag)]
            if not ticket.status.is_terminal and ticket.effective_tier.rank < below.rank and not managed:
                return ticket
        raise AssertionError("the seeded sandbox has no open ticket below the tier; seed more tickets")

    def all_records(self, world: World) -> list[RawRecord]:
        pages, _ = world.poll_to_end(world.connector(page_size=LARGE_PAGE))
        return [record for page in pages for record in page.records]

    # -- 1. pagination --------------------------------------------------------------------------------------

    def test_poll_pages_to_the_end_exactly_once(self, world: World) -> None:
        records = self.all_records(world)
        # A change made right now: platforms with an export lag leave it out, the others include it.
        fresh = self.open_ticket(world, records)
        self.touch(world.sandbox, self.ref(fresh.id))
        since = world.clock.now() - timedelta(hours=LOOKBACK_HOURS)
        expected = self.expected_ids(world, since)
        assert len(expected) > 2 * SMALL_PAGE, "the seed must span several pages"
        assert (fresh.id in expected) == (self.export_lag == timedelta(0))

        pages, _ = world.poll_to_end(world.connector(page_size=SMALL_PAGE))
        got = ids(pages)
        assert len(got) == len(set(got)), f"duplicates across pages: {sorted(i for i in got if got.count(i) > 1)}"
        assert set(got) == expected
        assert all(len(page.records) <= SMALL_PAGE for page in pages)
        assert len(pages) >= -(-len(expected) // SMALL_PAGE)
        assert [page.has_more for page in pages] == [True] * (len(pages) - 1) + [False]

    # -- 2. cursor resume -----------------------------------------------------------------------------------

    def test_cursor_resumes_after_a_restart(self, world: World) -> None:
        full = set(ids(world.poll_to_end(world.connector())[0]))
        first = world.connector().poll(None, world.clock.now())
        assert first.has_more and first.records
        restarted = world.connector()  # a new process: only the committed cursor carries over
        rest, _ = world.poll_to_end(restarted, first.cursor)
        got = [record.id for record in first.records] + ids(rest)
        assert len(got) == len(set(got)), "the resumed poll repeated tickets of the first page"
        assert set(got) == full

    # -- 3. incremental ----------------------------------------------------------------------------------------

    def test_incremental_poll_returns_only_the_change(self, world: World) -> None:
        connector = world.connector()
        pages, cursor = world.poll_to_end(connector)
        target = self.open_ticket(world, [record for page in pages for record in page.records])
        world.clock.advance(timedelta(seconds=5))
        idle, cursor = world.poll_to_end(connector, cursor)
        assert ids(idle) == [], "nothing changed, yet the poll returned tickets"
        self.touch(world.sandbox, self.ref(target.id))
        world.after_lag()
        changed, _ = world.poll_to_end(world.connector(), cursor)
        assert ids(changed) == [target.id]
        ticket = world.normalize(changed[0].records[0])
        assert ticket.updated_at > target.updated_at

    # -- 4. deleted and closed -----------------------------------------------------------------------------------

    def test_closed_ticket_normalizes_to_a_terminal_status(self, world: World) -> None:
        connector = world.connector()
        pages, cursor = world.poll_to_end(connector)
        target = self.open_ticket(world, [record for page in pages for record in page.records])
        self.close_ticket(world.sandbox, self.ref(target.id))
        world.after_lag()
        changed, _ = world.poll_to_end(connector, cursor)
        assert ids(changed) == [target.id]
        polled = world.normalize(changed[0].records[0])
        assert polled.status.is_terminal and polled.status is not Status.DELETED
        fetched = connector.fetch(target.id)
        assert fetched is not None
        assert world.normalize(fetched).status is polled.status

    def test_deleted_ticket(self, world: World) -> None:
        connector = world.connector()
        pages, cursor = world.poll_to_end(connector)
        target = self.open_ticket(world, [record for page in pages for record in page.records])
        if not self.delete_ticket(world.sandbox, self.ref(target.id)):
            # The sandbox cannot delete: the contract still says a record that is not there reads as None.
            assert connector.fetch(self.missing_id) is None
            assert connector.fetch(target.id) is not None
            return
        world.after_lag()
        assert connector.fetch(target.id) is None
        changed, _ = world.poll_to_end(connector, cursor)
        if self.exports_tombstones:
            assert ids(changed) == [target.id]
            assert world.normalize(changed[0].records[0]).status is Status.DELETED
        else:
            assert target.id not in ids(changed)

    # -- 5. idempotent write-back ----------------------------------------------------------------------------

    def test_write_back_is_applied_internal_and_idempotent(self, world: World) -> None:
        connector = world.connector()
        records = [record for page in world.poll_to_end(connector)[0] for record in page.records]
        observed = self.open_ticket(world, records)
        fetched = connector.fetch(observed.id)
        assert fetched is not None
        observed = world.normalize(fetched)
        signal = TagSignal("breached", "resolution")
        tag = world.mapping.tags.render(signal)
        key = f"contract-{self.platform}-{observed.id}-L3"
        writeback = WriteBack(
            platform=self.platform,
            instance=self.instance,
            ticket_id=observed.id,
            revision=observed.revision,
            tier=Tier.L3,
            add_tags=frozenset({tag}),
            comment=Comment("Escalated to L3 by the contract suite.", key),
            tags=managed_after(world, observed, tag),
        )
        writes_before = world.writes()
        result = connector.apply(writeback)
        assert result.ticket_id == observed.id
        assert world.writes() > writes_before

        reread = connector.fetch(observed.id)
        assert reread is not None
        after = world.normalize(reread)
        assert after.tier is Tier.L3
        assert tag in after.tags
        assert observed.tags - after.tags == frozenset(), "tags we do not manage were dropped"
        assert connector.has_comment(observed.id, key)
        assert not connector.has_comment(observed.id, key + "-other")
        assert self.comment_visibility(world.sandbox, self.ref(observed.id), writeback.comment.marker) == [False]

        decision = Decision(
            platform=self.platform,
            instance=self.instance,
            ticket_id=observed.id,
            evaluated_at=world.clock.now(),
            current_tier=after.effective_tier,
            target_tier=Tier.L3,
            management=False,
            clocks=(),
            rules=(),
            signals=frozenset({signal}),
            comment=Comment("Escalated to L3 by the contract suite.", key + "-replay"),
        )
        again = plan(decision, after, world.mapping.tags)
        assert again.is_empty, again

    # -- 6. 429 then success ---------------------------------------------------------------------------------

    def test_rate_limited_poll_waits_retry_after_then_succeeds(self, world: World) -> None:
        expected = set(ids(world.poll_to_end(world.connector(page_size=LARGE_PAGE))[0]))
        world.sleeps.clear()
        before = world.sandbox.calls(None, self.poll_path)
        world.sandbox.inject(self.rate_limit_fault(RETRY_AFTER))
        pages, _ = world.poll_to_end(world.connector(page_size=LARGE_PAGE))
        assert set(ids(pages)) == expected
        assert RETRY_AFTER in world.sleeps
        assert world.sandbox.calls(None, self.poll_path) - before == len(pages) + 1

    # -- 7. 5xx: reads retried, writes not ------------------------------------------------------------------

    @pytest.mark.parametrize("status", [500, 503])
    def test_server_error_on_poll_is_retried(self, world: World, status: int) -> None:
        connector = world.connector(page_size=LARGE_PAGE)
        before = world.sandbox.calls(None, self.poll_path)
        world.sandbox.inject(Fault(status, times=1, path_pattern=self.poll_path, body='{"error": "upstream"}'))
        page = connector.poll(None, world.clock.now())
        assert page.records
        assert world.sandbox.calls(None, self.poll_path) - before == 2
        assert len(world.sleeps) == 1

    def test_bad_gateway_on_write_is_ambiguous_and_not_retried(self, world: World) -> None:
        connector = world.connector()
        records = [record for page in world.poll_to_end(connector)[0] for record in page.records]
        observed = self.open_ticket(world, records)
        writeback = WriteBack(
            platform=self.platform,
            instance=self.instance,
            ticket_id=observed.id,
            revision=observed.revision,
            tier=Tier.L3,
            add_tags=frozenset({world.mapping.tags.render(TagSignal("at_risk", "resolution"))}),
            comment=Comment("Escalated to L3 by the contract suite.", f"contract-502-{observed.id}"),
            tags=managed_after(world, observed, world.mapping.tags.render(TagSignal("at_risk", "resolution"))),
        )
        world.sandbox.inject(Fault(502, times=1, method=self.write_method, path_pattern=self.write_path))
        writes = world.writes()
        with pytest.raises(AmbiguousWriteError):
            connector.apply(writeback)
        assert world.writes() - writes == 1, "a write that may have been applied was sent again"
        assert world.sleeps == []

    # -- 8. unknown values quarantined ----------------------------------------------------------------------

    def test_unknown_value_is_quarantined_alone(self, world: World) -> None:
        before = self.all_records(world)
        baseline = {record.id for record in before if _fails(world, record)}
        target = self.open_ticket(world, before)
        injected = self.inject_unknown_value(world.sandbox, self.ref(target.id))
        if injected is not None:
            world.after_lag()
            records = self.all_records(world)
            field_name, value = injected
        else:
            records = []
            for record in before:
                if record.id == target.id:
                    record, field_name, value = self.unknown_record(record)
                records.append(record)
        assert target.id in {record.id for record in records}
        failed: dict[str, NormalizeError] = {}
        normalized = 0
        for record in records:
            try:
                world.normalize(record)
                normalized += 1
            except NormalizeError as error:
                failed[record.id] = error
        error = failed.get(target.id)
        assert error is not None, "a value the mapping does not know was accepted"
        assert error.record_id in (target.id, target.key)
        assert error.field == field_name
        assert value in str(error)
        current = {record.id for record in records}
        assert set(failed) == (baseline & current) | {target.id}
        assert normalized == len(records) - len(failed) and normalized > 0

    # -- 9. auth ---------------------------------------------------------------------------------------------

    def test_unauthorized_poll_raises_auth_error_without_retry(self, world: World) -> None:
        connector = world.connector()
        before = world.sandbox.calls(None, self.poll_path)
        world.sandbox.inject(self.auth_fault())
        with pytest.raises(AuthError) as raised:
            connector.poll(None, world.clock.now())
        assert raised.value.status == 401
        assert world.sandbox.calls(None, self.poll_path) - before == 1
        assert world.sleeps == []

    def test_bogus_credentials_raise_auth_error_without_retry(self, world: World) -> None:
        if not self.require_credentials(world.sandbox):
            pytest.skip(f"the {self.platform} sandbox accepts any Authorization header; covered by the 401 fault")
        assert world.connector().poll(None, world.clock.now()).records, "the real credentials must still pass"
        before = len(world.sandbox.requests)
        connector = world.connector(environ=self.bogus_environ)
        with pytest.raises(AuthError) as raised:
            connector.poll(None, world.clock.now())
        assert raised.value.status == 401
        assert len(world.sandbox.requests) - before == 1
        assert world.sleeps == []
        for secret in self.bogus_environ.values():
            assert secret not in str(raised.value)


def _fails(world: World, record: RawRecord) -> bool:
    try:
        world.normalize(record)
    except NormalizeError:
        return True
    return False


def with_data(record: RawRecord, **changes: Any) -> RawRecord:
    """A copy of the record with top-level data keys replaced."""
    return replace(record, data={**record.data, **changes})

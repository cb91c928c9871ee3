"""Several daemons on one PostgreSQL: each instance is run by the one daemon holding its lease.

Why leases and fences, and why in the database: PostgreSQL is the one component every daemon already trusts, so
it decides who runs what. A lease (table ``leases``) names its holder (``host:pid:random``), an epoch that grows
at every change of holder, and an expiry on the database's clock (so daemons on hosts whose clocks differ agree).
A daemon renews its leases on a heartbeat well inside the TTL (`LeaseKeeper`, a thread with its own connection,
so a long cycle does not let them lapse); a lease whose holder stopped renewing is claimed by another daemon
after the TTL, with ``FOR UPDATE SKIP LOCKED`` so racing daemons share free leases out instead of queueing.

A lease alone is not enough: a daemon paused past its TTL (SIGSTOP, a VM stall, a long GC) wakes up believing
it still holds it. So every store write of a cycle goes through `FencedStore`, which runs it in one transaction
with a check that the lease still has this holder and epoch and has not expired, locking the lease row
(``FOR SHARE``) so a takeover cannot slip between the check and the commit. A late write raises
`state.LeaseLostError`; the daemon stops that cycle and steps back. What the fence cannot stop is an API call
already on the wire when the pause began; the ledger's intents make the new holder check the ticket's comments
before re-sending, which covers a note posted just before the takeover.

Balance: each daemon also announces itself (table ``daemons``, same TTL); with N live daemons and M instances a
daemon holds at most ceil(M/N): it claims free leases up to that share and releases its surplus at renewal, so a
new daemon gets its share within a few heartbeats. SIGTERM releases every lease at once.

SQLite is for one daemon: `exclusive_file` holds an exclusive ``flock`` on ``<file>.lock`` for the process's
life. A lock the kernel drops when the process dies (even by kill -9) lets a restarted daemon go on at once,
where a lease row would make it wait a TTL, and it needs no clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from state import LeaseLostError, StoreError
from state.base import BookEntry, Fence, Intent, Lease, Store

log = logging.getLogger("escalation_sync.lease")
LAPSE_MARGIN = 0.05
"""Seconds past a foreign lease's expiry before looking again: its holder's announcement lapses just before it."""

__all__ = ["FencedStore", "LeaseKeeper", "LeaseLostError", "daemon_id", "exclusive_file"]


def daemon_id() -> str:
    """``host:pid:random``: unique even when a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class FencedStore:
    """`inner` for one instance's Syncer, with every write fenced by the lease it holds (see the module docstring).

    `fence` is set by the daemon loop before each cycle (None: not held, every write refused); reads pass
    through unfenced, since a stale read cannot harm what the fenced writes then refuse.
    """

    def __init__(self, inner: Store, instance: str) -> None:
        self.inner = inner
        self.instance = instance
        self.fence: Fence | None = None

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        if self.fence is None:
            raise LeaseLostError(f"this daemon holds no lease of {self.instance!r}: write refused")
        return self.inner.fenced(self.fence)

    def __getattr__(self, name: str) -> Any:  # reads, and what the cycle never writes through
        return getattr(self.inner, name)

    def set_cursor(self, instance: str, cursor: str) -> None:
        with self._guard():
            self.inner.set_cursor(instance, cursor)

    def record_intent(self, instance: str, ticket_id: str, key: str, payload: str, now: datetime) -> Intent:
        with self._guard():
            return self.inner.record_intent(instance, ticket_id, key, payload, now)

    def mark_done(self, key: str, now: datetime) -> None:
        with self._guard():
            self.inner.mark_done(key, now)

    def mark_failed(self, key: str, error: str, now: datetime) -> Intent:
        with self._guard():
            return self.inner.mark_failed(key, error, now)

    def mark_dead(self, key: str, error: str, now: datetime) -> None:
        with self._guard():
            self.inner.mark_dead(key, error, now)

    def prune_ledger(self, before: datetime) -> int:
        with self._guard():
            return self.inner.prune_ledger(before)

    def transaction(self, *, sync: bool = True) -> contextlib.AbstractContextManager[None]:
        return self._guard()  # one transaction, its lease checked once at the start and locked to the commit

    def quarantine(self, instance: str, record_id: str, raw: str, error: str, now: datetime) -> bool:
        with self._guard():
            return self.inner.quarantine(instance, record_id, raw, error, now)

    def release(self, instance: str, record_id: str) -> None:
        with self._guard():
            self.inner.release(instance, record_id)

    def record_escalation(self, instance: str, customer: str, ticket_id: str, tier: str, at: datetime) -> None:
        with self._guard():
            self.inner.record_escalation(instance, customer, ticket_id, tier, at)

    def book_put(self, instance: str, entries: Sequence[BookEntry]) -> None:
        with self._guard():
            self.inner.book_put(instance, entries)

    def book_schedule(self, instance: str, updates: Sequence[tuple[str, datetime | None, int, bool]]) -> None:
        with self._guard():
            self.inner.book_schedule(instance, updates)

    def book_mark_due(self, now: datetime, *, instance: str | None = None, customer: str | None = None) -> int:
        with self._guard():
            return self.inner.book_mark_due(now, instance=instance, customer=customer)

    def book_purge(self, instance: str, before: datetime) -> int:
        with self._guard():
            return self.inner.book_purge(instance, before)

    def set_setting(self, key: str, value: str) -> None:
        with self._guard():
            self.inner.set_setting(key, value)


class LeaseKeeper:
    """Which of `instances` this daemon holds, kept by a heartbeat every `ttl / 3` seconds (see the docstring).

    `beat()` is one heartbeat (announce, renew, shed the surplus, claim up to the share); `start()` runs it on
    a thread with its own store from `open_store`, so the daemon's cycles and the heartbeat never share a
    connection. `hold(instance)` is how the daemon loop starts a cycle: the lease's fence, and the instance
    marked busy so that shedding never releases a lease in the middle of its cycle.
    """

    def __init__(
        self,
        open_store: Callable[[], Store],
        instances: Sequence[str],
        ttl: float,
        *,
        holder: str | None = None,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.open_store = open_store
        self.instances = sorted(set(instances))
        self.ttl = ttl
        self.holder = holder or daemon_id()
        self.on_change = on_change or (lambda instance, what: None)
        """Called with (instance, change) as leases come and go (metrics, logs): "acquired" (a free lease),
        "taken_over" (from a daemon that stopped renewing), "lost" (to another daemon) or "released"."""
        self.held: dict[str, Lease] = {}
        self.live = 1
        self._busy: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._wait = self.ttl / 3

    @property
    def heartbeat(self) -> float:
        return self.ttl / 3

    def beat(self) -> None:
        """One heartbeat; a store error is logged and the next beat tries again (leases lapse after the TTL)."""
        store = self._store = self._store or self.open_store()
        with self._lock:
            self.live = store.daemon_heartbeat(self.holder, self.ttl)
            renewed = {lease.instance: lease for lease in store.leases_renew(self.holder, list(self.held), self.ttl)}
            for instance in set(self.held) - set(renewed):
                self._changed(instance, "lost")
            self.held = renewed
            share = math.ceil(len(self.instances) / max(self.live, 1))
            surplus = [instance for instance in sorted(self.held, reverse=True) if instance != self._busy]
            surplus = surplus[: max(0, len(self.held) - share)]
            if surplus:
                store.leases_release(self.holder, surplus)
                for instance in surplus:
                    del self.held[instance]
                    self._changed(instance, "released")
            wanted = [instance for instance in self.instances if instance not in self.held]
            if wanted and len(self.held) < share:
                # Who held them before, only to tell a takeover (its holder stopped renewing) from a free lease.
                before = {lease.instance: lease.holder for lease in store.leases() if lease.instance in wanted}
                for lease in store.leases_claim(self.holder, wanted, self.ttl, share - len(self.held)):
                    self.held[lease.instance] = lease
                    previous = before.get(lease.instance, "")
                    self._changed(lease.instance, "taken_over" if previous not in ("", self.holder) else "acquired")
            # Look again just after the next lease of another daemon could lapse (a live one renews long before),
            # so a dead daemon's instances are taken over at the TTL rather than up to a heartbeat later.
            lapse = store.leases_next_expiry(self.holder, [i for i in self.instances if i not in self.held])
            self._wait = self.heartbeat if lapse is None else min(self.heartbeat, max(lapse, 0.0) + LAPSE_MARGIN)

    def _changed(self, instance: str, what: str) -> None:
        log.info(f"lease {what}", extra={"event": f"lease_{what}", "instance": instance, "holder": self.holder})
        self.on_change(instance, what)

    def start(self) -> None:
        """The first heartbeat now (so the first cycles run what it claimed), then one every `heartbeat` s."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._wait):
            try:
                self.beat()
            except Exception as error:  # whatever it is, the next beat tries again; the leases lapse meanwhile
                log.error("lease heartbeat failed", extra={"event": "lease_error", "error": str(error)})
                if self._store is not None:
                    self._store.close()
                    self._store = None

    def holds(self) -> list[str]:
        with self._lock:
            return sorted(self.held)

    @contextlib.contextmanager
    def hold(self, instance: str) -> Iterator[Fence | None]:
        """The fence to run a cycle of `instance` under (None if not held), busy until the block ends."""
        with self._lock:
            lease = self.held.get(instance)
            self._busy = instance if lease is not None else None
        try:
            yield lease.fence if lease is not None else None
        finally:
            with self._lock:
                self._busy = None

    @contextlib.contextmanager
    def running(self, store: Any) -> Iterator[bool]:
        """Around a cycle on `store` (a `FencedStore`): False if its instance's lease is not held; else the lease
        checked first (a lost one raises `LeaseLostError` before a single request) and the fence set."""
        if not isinstance(store, FencedStore):
            raise TypeError("LeaseKeeper.running needs the Syncer's FencedStore")
        with self.hold(store.instance) as fence:
            if fence is None:
                yield False
                return
            store.inner.lease_check(fence)
            store.fence = fence
            yield True

    def step_back(self, instance: str) -> None:
        """A write was refused: this daemon lost `instance`'s lease; forget it until a heartbeat claims it again."""
        with self._lock:
            if self.held.pop(instance, None) is not None:
                self._changed(instance, "lost")

    def stop(self) -> None:
        """Stop the heartbeat and release every lease at once (SIGTERM): the others take over without a TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        with self._lock:
            try:
                store = self._store or self.open_store()
                store.leases_release(self.holder, list(self.held))
                store.daemon_leave(self.holder)
                store.close()
            except StoreError as error:
                log.error("cannot release leases", extra={"event": "lease_error", "error": str(error)})
            for instance in list(self.held):
                self._changed(instance, "released")
            self.held = {}
            self._store = None


@contextlib.contextmanager
def exclusive_file(path: str | Path) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively for the block: a second daemon on the same SQLite file is refused."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  # held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "unknown"
            raise StoreError(
                f"state file {path} is in use by another escalation-sync process ({other}): SQLite serves one "
                "daemon; stop it, or point several daemons at one PostgreSQL ([state] url)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()

"""Prometheus metrics and health endpoints for the daemon: what an on-call engineer graphs, alerts and probes on.

Counters are fed from each cycle's CycleReport and from the HTTP layer's per-instance request counters, so the
sync code itself stays free of metrics calls; the gauges for the store's backlog (pending writes, dead letters,
quarantine) are read from the store after each cycle, and the review backlog (open tickets in the book whose
review is due) from each CycleReport.
`expect()` registers every instance at start-up, so each series has a sample before the first cycle ends (a
first backfill can take minutes, and "no data" cannot be told from "broken").

`sync.py run` serves, on `[daemon] metrics_port` when set:
- ``/metrics`` (and ``/``): the Prometheus text format;
- ``/healthz``: 200 while the process serves at all (liveness);
- ``/readyz``: 200 when the last cycle of every instance succeeded and ended within `ready_intervals`
  intervals; otherwise 503 with a JSON body naming the failing instances and why (readiness).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client import Counter as PromCounter

from runtime.cycle import CycleReport

READY_INTERVALS = 3
"""An instance is unready once its last successful cycle ended more than this many intervals ago."""
CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RATE_LIMIT_OUTCOMES = {"paced": "quota", "retry 429": "retry_after"}
"""HTTP-layer counters that mean we waited for the platform's rate limit: pacing on a spent quota, and a 429
answered with Retry-After."""


class BacklogStore(Protocol):
    """The part of `state.base.Store` the backlog gauges read."""

    def pending(self, instance: str) -> list[Any]: ...

    def dead_letters(self, instance: str) -> list[Any]: ...

    def quarantined(self, instance: str) -> list[Any]: ...


@dataclass
class _Last:
    ok: bool
    finished: float
    error: str = ""


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        ready_intervals: float = READY_INTERVALS,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.ready_intervals = ready_intervals
        self.interval_seconds = 60.0
        self.started = clock()
        self._instances: dict[str, str] = {}
        self._expected = False
        self._last: dict[str, _Last] = {}
        self._caught_up: dict[str, float] = {}
        self._lock = threading.Lock()
        reg = self.registry
        labels = ["instance", "platform"]
        self.cycles = PromCounter("escalation_sync_cycles", "Sync cycles run", labels, registry=reg)
        self.cycle_errors = PromCounter(
            "escalation_sync_cycle_errors", "Cycles aborted (auth, retries exhausted)", labels, registry=reg
        )
        self.cycle_duration = Histogram(
            "escalation_sync_cycle_duration_seconds",
            "Wall time of one cycle",
            labels,
            buckets=CYCLE_BUCKETS,
            registry=reg,
        )
        self.tickets = PromCounter("escalation_sync_tickets_polled", "Records polled", labels, registry=reg)
        self.escalations = PromCounter(
            "escalation_sync_escalations", "Tier changes written", [*labels, "tier"], registry=reg
        )
        self.writes = PromCounter("escalation_sync_writes", "Write-backs applied", labels, registry=reg)
        self.comments = PromCounter(
            "escalation_sync_handoff_notes", "Internal handoff notes posted", labels, registry=reg
        )
        self.quarantined = PromCounter(
            "escalation_sync_quarantined", "Records that could not be normalized", labels, registry=reg
        )
        self.dead_letters = PromCounter(
            "escalation_sync_dead_letters", "Writes the platform refused for good", labels, registry=reg
        )
        self.write_failures = PromCounter(
            "escalation_sync_write_failures", "Writes left pending for retry", labels, registry=reg
        )
        self.last_success = Gauge(
            "escalation_sync_last_successful_cycle_timestamp_seconds",
            "When the instance last completed a cycle without error",
            labels,
            registry=reg,
        )
        self.cursor_lag = Gauge(
            "escalation_sync_cursor_lag_seconds",
            "Seconds since the start of the last cycle that read every change to the end (since start-up until "
            "the first): the cursor is at most this far behind the platform",
            labels,
            registry=reg,
        )
        self.pending = Gauge("escalation_sync_pending_writes", "Writes waiting for a retry", labels, registry=reg)
        self.dead = Gauge(
            "escalation_sync_dead_letters_stored", "Dead-lettered writes in the store", labels, registry=reg
        )
        self.quarantine = Gauge(
            "escalation_sync_quarantined_stored", "Quarantined records in the store", labels, registry=reg
        )
        self.review_backlog = Gauge(
            "escalation_sync_review_backlog", "Open tickets whose review is due and not yet done", labels, registry=reg
        )
        self.rate_limit_waits = PromCounter(
            "escalation_sync_rate_limit_waits",
            "Times a request waited for the platform's rate limit (quota: pacing on a spent quota; "
            "retry_after: a 429 with Retry-After)",
            ["instance", "reason"],
            registry=reg,
        )
        self.requests = PromCounter(
            "escalation_sync_http_requests", "HTTP requests by outcome", ["instance", "outcome"], registry=reg
        )
        self.leases_held = Gauge(
            "escalation_sync_leases_held", "Instance leases this daemon holds (PostgreSQL state)", registry=reg
        )
        self.lease_changes = PromCounter(
            "escalation_sync_lease_changes",
            "Leases this daemon took (acquired: a free one; taken_over: from a daemon that stopped renewing), "
            "had taken over by another daemon (lost) or gave up (released: surplus, SIGTERM)",
            ["instance", "change"],
            registry=reg,
        )
        self._held: set[str] = set()
        self._seen_requests: dict[str, Counter[str]] = {}
        self._metrics_app = make_wsgi_app(self.registry)

    # -- feeding --------------------------------------------------------------------------------------------

    def expect(self, instances: Iterable[tuple[str, str]], interval_seconds: float) -> None:
        """Register the (instance, platform) pairs the daemon runs, so every series has a sample from now on.

        Called again after a reload: instances no longer configured stop counting towards readiness."""
        with self._lock:
            self.interval_seconds = interval_seconds
            self._instances = dict(instances)
            self._expected = True
            self._last = {name: last for name, last in self._last.items() if name in self._instances}
        for name, platform in self._instances.items():
            labels = (name, platform)
            for family in (self.cycles, self.cycle_errors, self.tickets, self.writes, self.comments):
                family.labels(*labels)
            for family in (self.quarantined, self.dead_letters, self.write_failures, self.cycle_duration):
                family.labels(*labels)
            for gauge in (self.pending, self.dead, self.quarantine, self.review_backlog):
                gauge.labels(*labels)
            for reason in RATE_LIMIT_OUTCOMES.values():
                self.rate_limit_waits.labels(name, reason)
            self.cursor_lag.labels(*labels).set_function(lambda name=name: self._lag(name))

    def record_cycle(self, report: CycleReport, duration_seconds: float | None = None) -> None:
        labels = (report.instance, report.platform)
        self.cycles.labels(*labels).inc()
        self.tickets.labels(*labels).inc(report.tickets_seen)
        self.writes.labels(*labels).inc(report.writes)
        self.comments.labels(*labels).inc(report.comments)
        self.quarantined.labels(*labels).inc(report.quarantined)
        self.dead_letters.labels(*labels).inc(report.dead_lettered)
        self.write_failures.labels(*labels).inc(report.failed)
        if duration_seconds is not None:
            self.cycle_duration.labels(*labels).observe(duration_seconds)
        for tier, count in report.escalations.items():
            self.escalations.labels(*labels, tier).inc(count)
        self.review_backlog.labels(*labels).set(report.book_due)
        if report.error:
            self.cycle_errors.labels(*labels).inc()
        else:
            self.last_success.labels(*labels).set(report.started_at.timestamp())
            if not report.stopped_early and not report.dry_run:
                with self._lock:
                    self._caught_up[report.instance] = report.started_at.timestamp()
        self.record_result(report.instance, not report.error, report.error)

    def record_lease(self, instance: str, change: str) -> None:
        """A lease acquired, taken over, lost or released (state.lease.LeaseKeeper's `on_change`)."""
        with self._lock:
            if change in ("acquired", "taken_over"):
                self._held.add(instance)
            else:
                self._held.discard(instance)
            self.leases_held.set(len(self._held))
        self.lease_changes.labels(instance, change).inc()

    def record_result(self, instance: str, ok: bool, error: str = "") -> None:
        """The outcome of one cycle for readiness; `record_cycle` calls it, and the daemon for a crashed cycle."""
        with self._lock:
            self._last[instance] = _Last(ok, self.clock(), error)

    def record_http(self, instance: str, stats: Counter[str]) -> None:
        """Add what the HTTP layer counted since the last call (its counters only ever grow)."""
        seen = self._seen_requests.setdefault(instance, Counter())
        for outcome, total in stats.items():
            if total > seen[outcome]:
                delta = total - seen[outcome]
                self.requests.labels(instance, outcome).inc(delta)
                if outcome in RATE_LIMIT_OUTCOMES:
                    self.rate_limit_waits.labels(instance, RATE_LIMIT_OUTCOMES[outcome]).inc(delta)
                seen[outcome] = total

    def record_store(self, instance: str, platform: str, store: BacklogStore) -> None:
        """Set the backlog gauges from what the store holds for `instance` now."""
        labels = (instance, platform)
        self.pending.labels(*labels).set(len(store.pending(instance)))
        self.dead.labels(*labels).set(len(store.dead_letters(instance)))
        self.quarantine.labels(*labels).set(len(store.quarantined(instance)))

    def set_review_backlog(self, instance: str, count: int, platform: str | None = None) -> None:
        """Open tickets of `instance` whose review is due, outside a cycle (`record_cycle` sets it after each)."""
        self.review_backlog.labels(instance, platform or self._instances.get(instance, "")).set(count)

    # -- reading --------------------------------------------------------------------------------------------

    def _lag(self, instance: str) -> float:
        with self._lock:
            since = self._caught_up.get(instance, self.started)
        return max(0.0, self.clock() - since)

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, {instance: why it is not}) over every expected instance."""
        now = self.clock()
        window = self.ready_intervals * self.interval_seconds
        failing: dict[str, str] = {}
        with self._lock:
            if not self._expected:
                return False, {"*": "starting: the instances are not wired yet"}
            for name in self._instances:
                last = self._last.get(name)
                if last is None:
                    failing[name] = "no cycle completed yet"
                elif not last.ok:
                    failing[name] = f"last cycle failed: {last.error}" if last.error else "last cycle failed"
                elif now - last.finished > window:
                    failing[name] = f"no cycle for {now - last.finished:.0f} s (limit {window:.0f} s)"
        return not failing, failing

    # -- serving --------------------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes] | list[bytes]:
        """The WSGI application: /healthz, /readyz, and the metrics for every other path."""
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _reply(start_response, "200 OK", {"status": "alive"})
        if path == "/readyz":
            ready, failing = self.readiness()
            body = {"status": "ready"} if ready else {"status": "unready", "failing": failing}
            return _reply(start_response, "200 OK" if ready else "503 Service Unavailable", body)
        return self._metrics_app(environ, start_response)

    def serve(self, port: int, address: str = "127.0.0.1") -> WSGIServer:
        """Serve `app` on a daemon thread; returns the server (its `server_port`, `shutdown()`)."""
        server = make_server(address, port, self.app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


def _reply(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the daemon's stderr is its JSON log, and probes would flood it."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

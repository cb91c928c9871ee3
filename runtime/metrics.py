"""Prometheus metrics for the daemon: what an on-call engineer graphs and alerts on.

Counters are fed from each cycle's CycleReport and from the HTTP layer's per-instance request counters, so the
sync code itself stays free of metrics calls. `sync.py run` serves them on `[daemon] metrics_port` when set.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import Counter as PromCounter

from runtime.cycle import CycleReport


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["instance", "platform"]
        self.cycles = PromCounter("escalation_sync_cycles", "Sync cycles run", labels, registry=self.registry)
        self.cycle_errors = PromCounter(
            "escalation_sync_cycle_errors", "Cycles aborted (auth, retries exhausted)", labels, registry=self.registry
        )
        self.tickets = PromCounter("escalation_sync_tickets_polled", "Records polled", labels, registry=self.registry)
        self.escalations = PromCounter(
            "escalation_sync_escalations", "Tier changes written", [*labels, "tier"], registry=self.registry
        )
        self.writes = PromCounter("escalation_sync_writes", "Write-backs applied", labels, registry=self.registry)
        self.comments = PromCounter(
            "escalation_sync_handoff_notes", "Internal handoff notes posted", labels, registry=self.registry
        )
        self.quarantined = PromCounter(
            "escalation_sync_quarantined", "Records that could not be normalized", labels, registry=self.registry
        )
        self.dead_letters = PromCounter(
            "escalation_sync_dead_letters", "Writes the platform refused for good", labels, registry=self.registry
        )
        self.write_failures = PromCounter(
            "escalation_sync_write_failures", "Writes left pending for retry", labels, registry=self.registry
        )
        self.last_success = Gauge(
            "escalation_sync_last_successful_cycle_timestamp_seconds",
            "When the instance last completed a cycle without error",
            labels,
            registry=self.registry,
        )
        self.requests = PromCounter(
            "escalation_sync_http_requests", "HTTP requests by outcome", ["instance", "outcome"], registry=self.registry
        )
        self._seen_requests: dict[str, Counter[str]] = {}

    def record_cycle(self, report: CycleReport) -> None:
        labels = (report.instance, report.platform)
        self.cycles.labels(*labels).inc()
        self.tickets.labels(*labels).inc(report.tickets_seen)
        self.writes.labels(*labels).inc(report.writes)
        self.comments.labels(*labels).inc(report.comments)
        self.quarantined.labels(*labels).inc(report.quarantined)
        self.dead_letters.labels(*labels).inc(report.dead_lettered)
        self.write_failures.labels(*labels).inc(report.failed)
        for tier, count in report.escalations.items():
            self.escalations.labels(*labels, tier).inc(count)
        if report.error:
            self.cycle_errors.labels(*labels).inc()
        else:
            self.last_success.labels(*labels).set(report.started_at.timestamp())

    def record_http(self, instance: str, stats: Counter[str]) -> None:
        """Add what the HTTP layer counted since the last call (its counters only ever grow)."""
        seen = self._seen_requests.setdefault(instance, Counter())
        for outcome, total in stats.items():
            if total > seen[outcome]:
                self.requests.labels(instance, outcome).inc(total - seen[outcome])
                seen[outcome] = total

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        start_http_server(port, addr=address, registry=self.registry)

"""Metrics reflect what the cycles and the HTTP layer did."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from prometheus_client import generate_latest

from runtime.cycle import CycleReport
from runtime.metrics import Metrics

STARTED = datetime(2026, 11, 16, 13, 0, tzinfo=UTC)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_cycle_reports_add_up() -> None:
    metrics = Metrics()
    first = CycleReport("zd", "zendesk", STARTED, tickets_seen=40, writes=5, comments=3, quarantined=1)
    first.escalations.update({"L2": 2, "L3": 1})
    second = CycleReport("zd", "zendesk", STARTED.replace(minute=1), tickets_seen=2, error="AuthError: 401")
    metrics.record_cycle(first)
    metrics.record_cycle(second)
    labels = {"instance": "zd", "platform": "zendesk"}
    assert sample(metrics, "escalation_sync_cycles_total", **labels) == 2
    assert sample(metrics, "escalation_sync_tickets_polled_total", **labels) == 42
    assert sample(metrics, "escalation_sync_escalations_total", **labels, tier="L2") == 2
    assert sample(metrics, "escalation_sync_cycle_errors_total", **labels) == 1
    # The failed second cycle does not move the last-success time.
    assert sample(metrics, "escalation_sync_last_successful_cycle_timestamp_seconds", **labels) == STARTED.timestamp()


def test_http_counters_are_added_as_deltas() -> None:
    metrics = Metrics()
    stats: Counter[str] = Counter({"GET 200": 3, "retry 429": 1})
    metrics.record_http("zd", stats)
    stats["GET 200"] += 2
    metrics.record_http("zd", stats)
    assert sample(metrics, "escalation_sync_http_requests_total", instance="zd", outcome="GET 200") == 5
    assert sample(metrics, "escalation_sync_http_requests_total", instance="zd", outcome="retry 429") == 1
    assert b"escalation_sync_http_requests_total" in generate_latest(metrics.registry)

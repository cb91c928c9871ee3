"""The read path's shortcuts give what the long way gives (issue 14: CPU per polled ticket)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.model import EscalationHistory, Tier
from runtime.cycle import history_from_rows

AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_a_ticket_without_rows_has_the_empty_history_with_its_customers_count() -> None:
    assert history_from_rows([], 4) == EscalationHistory(customer_escalations_30d=4)
    assert history_from_rows([], 0) == EscalationHistory()


def test_rows_still_make_the_history() -> None:
    rows = [("L2", AT), ("MGMT", AT + timedelta(hours=1)), ("MGMT_END", AT + timedelta(hours=3)), ("L3", AT)]
    history = history_from_rows(rows, 2)
    assert history.customer_escalations_30d == 2
    assert history.tier_entries == ((Tier.L2, AT), (Tier.L3, AT))
    assert history.management_track == 1
    assert history.management_started_at == AT + timedelta(hours=1)
    assert history.management_ended_at == AT + timedelta(hours=3)
    assert history.resolution_plan_at is None

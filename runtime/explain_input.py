"""What `sync.py explain` reads: any saved payload an admin has, turned into the records a cycle would see.

Admins paste whatever they have: one record, a page of the export, a vendor envelope (`{"result": ...}`,
`{"tickets": [...]}`, `{"ticket": ...}`, `{"issues": [...]}`), a top-level JSON list, or an exchange recorded
by `sync.py record` (`{status, headers, body}`). Each is unwrapped here into `RawRecord`s with the side-loads a
connector would attach (Zendesk organizations and metric sets), so `explain` normalizes exactly what the
cycle normalizes. The history (tier entries, the customer's escalations) comes from the state store when one
is configured, the same way `runtime.cycle.Syncer._history` builds it. Nothing here raises on a strange
shape: an item that is no record becomes a `Skipped` with a reason a person can read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from connectors.base import RawRecord
from engine.model import EscalationHistory, Ticket
from engine.policy import Policy
from mappings import PlatformMapping
from runtime.cycle import REPEAT_WINDOW, _customer, history_from_rows, seen_on_ticket
from state.base import Store

ENVELOPES = ("result", "tickets", "ticket", "issues", "results", "records")
"""Keys whose value is the record or the records (ServiceNow Table API, Zendesk list/show/search, Jira search)."""
_ZENDESK_SIDELOADS = ("organizations", "metric_sets", "metric_set", "users", "groups")


@dataclass(frozen=True)
class Skipped:
    """An item of the file that is not a ticket record, and why (printed, never raised)."""

    where: str
    reason: str


def _is_exchange(data: Mapping[str, Any]) -> bool:
    return "body" in data and isinstance(data.get("status"), int)


def _record_id(data: Mapping[str, Any]) -> str:
    for key in ("sys_id", "id", "key", "number"):
        value = data.get(key)
        if isinstance(value, Mapping):  # a display-value mode field: {"display_value": ..., "value": ...}
            value = value.get("value") or value.get("display_value")
        if value not in (None, ""):
            return str(value)
    return ""


def _zendesk_related(ticket: Mapping[str, Any], envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The side-loads a Zendesk page carries, attached per ticket as connectors.zendesk does."""
    related: dict[str, Any] = {}
    organizations = [o for o in envelope.get("organizations") or [] if isinstance(o, Mapping)]
    organization = next((o for o in organizations if o.get("id") == ticket.get("organization_id")), None)
    if organization is not None:
        related["organization"] = organization
    metric_sets = [m for m in envelope.get("metric_sets") or [] if isinstance(m, Mapping)]
    if isinstance(envelope.get("metric_set"), Mapping):
        metric_sets.append(envelope["metric_set"])
    metric_set = next((m for m in metric_sets if m.get("ticket_id") == ticket.get("id")), None)
    if metric_set is not None:
        related["metric_set"] = metric_set
    return related


def records_in(data: Any, platform: str, where: str = "file") -> Iterator[RawRecord | Skipped]:
    """Every ticket record in `data`, whatever the wrapping, in file order."""
    if isinstance(data, str):  # an exchange body saved as text
        try:
            data = json.loads(data)
        except ValueError:
            yield Skipped(where, "a text body that is not JSON")
            return
    if isinstance(data, list):
        if not data:
            yield Skipped(where, "an empty list: no ticket in it")
        for index, item in enumerate(data):
            yield from records_in(item, platform, f"{where}[{index}]")
        return
    if not isinstance(data, Mapping):
        yield Skipped(where, f"a JSON {type(data).__name__}, not a ticket record")
        return
    if _is_exchange(data):
        status = data["status"]
        if not 200 <= status < 300:
            yield Skipped(where, f"a recorded exchange answered {status}: no ticket in it")
            return
        yield from records_in(data["body"], platform, f"{where}.body")
        return
    for key in ENVELOPES:
        if key in data and isinstance(data[key], (list, Mapping)):
            inner = data[key]
            if platform == "zendesk" and any(side in data for side in _ZENDESK_SIDELOADS):
                for index, ticket in enumerate(inner if isinstance(inner, list) else [inner]):
                    if isinstance(ticket, Mapping):
                        yield RawRecord(_record_id(ticket), dict(ticket), _zendesk_related(ticket, data))
                    else:
                        yield Skipped(f"{where}.{key}[{index}]", "not a ticket record")
                return
            yield from records_in(inner, platform, f"{where}.{key}")
            return
    yield RawRecord(_record_id(data), dict(data))


def history_for(
    store: Store | None, instance: str, ticket: Ticket, now: datetime, policy: Policy, mapping: PlatformMapping
) -> EscalationHistory:
    """The history a cycle would give the engine for this ticket (runtime.cycle.Syncer._decide): the store's
    rows (empty without a store), completed with what the ticket shows that the cycle would record on first
    sight (a management tag, the resolution plan tag; `runtime.cycle.seen_on_ticket`). Nothing is written."""
    history = EscalationHistory()
    if store is not None:
        customer = _customer(ticket)
        repeats = store.escalations_since(customer, now - REPEAT_WINDOW) if customer else 0
        history = history_from_rows(store.tier_entries(instance, ticket.id), repeats)
    return seen_on_ticket(history, ticket, policy, mapping, now)[0]


def open_history_store(url: str) -> Store | None:
    """The configured store, to read history from; None when it is a SQLite file that does not exist yet
    (explaining a ticket must not create a state store as a side effect)."""
    from state import open_store
    from state.sqlite import path_from_url

    if url.partition("://")[0].lower() == "sqlite" and not Path(path_from_url(url)).exists():
        return None
    return open_store(url)


def on_instance(item: RawRecord | Skipped, platform: str, url: str, options: Mapping[str, Any]) -> RawRecord | Skipped:
    """What the connector adds to every record of this instance (ServiceNow: the instance URL and table, from
    which the ticket's link is built), where the file does not say."""
    if isinstance(item, Skipped) or platform != "servicenow":
        return item
    related = {"instance_url": url, "table": str(options.get("table", "incident")), **item.related}
    return RawRecord(item.id, item.data, related)

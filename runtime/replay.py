"""`sync.py replay DIR`: the cycle `sync.py record` saved, run again against those exchanges only.

The run is the same read-only cycle (runtime/record.py `read_only_cycle`: dry run, empty in-memory store, the
recorded limit) with the HTTP layer's transport serving the recorded files: nothing reaches the network, and a
request that was not recorded fails the replay naming its method, path and query. The plan, one entry per
ticket the cycle would write to (tier from -> to, tags, note, reasons) or quarantine, is what an admin's CI
compares with an approved one (`--expect PLAN.json`): any difference fails with ticket, field, before and after.
Credentials are never needed: each variable the instance names gets a placeholder value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from runtime.config import AppConfig, InstanceSection
from runtime.cycle import CycleReport, Event
from runtime.record import MANIFEST, read_only_cycle

OAUTH_TOKEN_PATH = "/oauth_token.do"
"""ServiceNow's OAuth grant (connectors/servicenow.py TOKEN_PATH)."""
PLAN_FIELDS = ("priority", "from_tier", "tier", "add_tags", "remove_tags", "comment", "management", "reasons")


class ReplayError(Exception):
    """The recording cannot be replayed (missing, unreadable, or a request it does not hold)."""


@dataclass
class ReplayTransport(httpx.BaseTransport):
    """Serves recorded exchanges: the first unused one with the same method, path, query and JSON body, else
    the first unused one with the same method and path (a later `--now` moves the poll's time window). A
    request with neither is refused (`missed`) and answered 599 so the cycle stops there."""

    exchanges: list[dict[str, Any]]
    missed: list[str] = field(default_factory=list)
    used: set[int] = field(default_factory=set)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        query = [list(pair) for pair in request.url.params.multi_items()]
        body: Any = None
        if request.content and "json" in request.headers.get("content-type", ""):
            try:
                body = json.loads(request.content)
            except ValueError:
                body = None
        same_path = [
            index
            for index, exchange in enumerate(self.exchanges)
            if index not in self.used and exchange["method"] == request.method and exchange["path"] == request.url.path
        ]
        exact = [
            index
            for index in same_path
            if self.exchanges[index]["query"] == query and self.exchanges[index].get("request_body") == body
        ]
        chosen = (exact or same_path or [None])[0]
        if chosen is None and request.method == "POST" and request.url.path.endswith(OAUTH_TOKEN_PATH):
            # The auth flow's grant is sent inside httpx's auth, below the HTTP layer's hook, so `record` never
            # sees (or saves) it: a replay answers it with a placeholder token of the documented shape.
            grant = {"access_token": "replay-token", "scope": "useraccount", "token_type": "Bearer", "expires_in": 1799}
            return httpx.Response(200, json=grant, request=request)
        if chosen is None:
            shown = f"{request.method} {request.url.path}" + (f"?{request.url.query.decode()}" if query else "")
            self.missed.append(shown)
            return httpx.Response(599, json={"error": f"not recorded: {shown}"}, request=request)
        self.used.add(chosen)
        exchange = self.exchanges[chosen]
        payload = exchange["body"]
        content = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        headers = {k: v for k, v in exchange["headers"].items() if k.lower() != "content-length"}
        return httpx.Response(exchange["status"], headers=headers, content=content, request=request)


def load_recording(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and the exchanges, in the order they were sent."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = sorted(path for path in directory.glob("*.json") if path.name != MANIFEST)
        exchanges = [json.loads(path.read_text(encoding="utf-8")) for path in files]
    except (OSError, ValueError) as error:
        raise ReplayError(f"{directory}: not a recording of `sync.py record` ({error})") from None
    return manifest, exchanges


@dataclass
class Plan:
    """Per ticket (its key), what the cycle would do; tickets it would leave alone are absent."""

    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def on_event(self, event: Event) -> None:
        key = str(event.detail.get("key") or event.ticket_id)
        if event.kind == "planned":
            self.tickets[key] = {name: event.detail.get(name) for name in PLAN_FIELDS}
        elif event.kind == "quarantined":
            self.tickets[event.ticket_id] = {"quarantined": event.detail.get("error")}

    def as_dict(self, manifest: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        return {"instance": manifest.get("instance"), "now": now.isoformat(), "tickets": self.tickets}


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """`ticket field: before -> after` for every difference between two plans' tickets."""
    lines = []
    before, after = expected.get("tickets", {}), actual.get("tickets", {})
    for ticket in sorted(set(before) | set(after)):
        old, new = before.get(ticket), after.get(ticket)
        if old is None or new is None:
            lines.append(f"{ticket} plan: {_show(old)} -> {_show(new)}")
            continue
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                lines.append(f"{ticket} {name}: {json.dumps(old.get(name))} -> {json.dumps(new.get(name))}")
    return lines


def _show(entry: Mapping[str, Any] | None) -> str:
    return "no change" if entry is None else json.dumps(entry, sort_keys=True)


def replay(
    config: AppConfig,
    directory: Path,
    *,
    now: datetime | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> tuple[CycleReport, dict[str, Any], list[str]]:
    """Run the recorded cycle again; its report, its plan, and the requests it made that were not recorded."""
    manifest, exchanges = load_recording(directory)
    section = _section(config, manifest)
    at = now or datetime.fromisoformat(manifest["recorded_at"])
    transport = ReplayTransport(exchanges)
    plan = Plan()

    def both(event: Event) -> None:
        plan.on_event(event)
        if on_event is not None:
            on_event(event)

    environ = {variable: "replay-placeholder" for variable in section.credentials.values()}
    report = read_only_cycle(
        config, section, now=at, environ=environ, limit=manifest.get("limit"), on_event=both, transport=transport
    )
    return report, plan.as_dict(manifest, at), transport.missed


def _section(config: AppConfig, manifest: Mapping[str, Any]) -> InstanceSection:
    name = manifest.get("instance")
    section = next((s for s in config.instances if s.name == name), None)
    if section is None:
        known = ", ".join(s.name for s in config.instances) or "none"
        raise ReplayError(f"the recording is of instance {name!r}, which the config does not name (known: {known})")
    return section

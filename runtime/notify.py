"""Notifications for management escalations and SLA breaches: Slack and Microsoft Teams incoming webhooks and the
PagerDuty Events API v2, fed by the cycle's `Event`s (the Syncer's ``on_event``), never blocking it.

Configuration is a file of its own, ``notifications.toml`` beside the config file (or the path in
``ESCALATION_SYNC_NOTIFICATIONS``), so it needs nothing from the main config's schema; it is re-read on SIGHUP
with the rest. Each ``[[notify]]`` table is one route: a kind (``slack``, ``teams``, ``pagerduty``), which
events (``management``: the management track starts; ``breach``: a breach tag is written, optionally for some
clocks only), which instances (all by default), and the *name of the environment variable* holding the secret
(the webhook URL, or PagerDuty's routing key). Secrets are typed `SecretStr`, given to the HTTP layer for
redaction, and never written to the ledger or the log.

What is sent: a chat message when a management escalation or a breach starts; for PagerDuty a ``trigger`` with
the dedup key ``escalation-sync:<instance>:<ticket>:<management|breach:<clock>>`` and a ``resolve`` with the same
key when our tag is removed again (the track or the breach is over).

Never twice: each notice is recorded in the store's intents ledger before it is sent (key
``notify:<route>:<dedup key>:<action>``, instance ``notify:<instance>`` so the cycle's own recovery never picks it
up) and marked done after. A notice whose key is already done or dead is not sent again. A chat post whose
outcome is unknown (5xx or a lost connection after sending, a restart with it pending) is dead-lettered rather
than re-sent: a missed message is named in `status`, a duplicate cannot be taken back. PagerDuty deduplicates by
key, so there it is retried.

Never blocking: `on_event` only computes the notices (pure, `notices_for`) and queues them; one worker thread
per daemon sends them through `connectors.http.HttpClient` (timeouts, 429 Retry-After, backoff, redaction) with
its own store connection (a SQLite connection is for one thread).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.base import AmbiguousWriteError, AuthError, TransientError
from connectors.http import HttpClient, HttpOptions
from engine.configfile import ConfigFileError, load_toml, validate
from engine.model import TagScheme
from runtime.cycle import Event
from state import StoreError, open_store
from state.base import IntentState, Store

log = logging.getLogger("escalation_sync.notify")

FILE_NAME = "notifications.toml"
ENV_PATH = "ESCALATION_SYNC_NOTIFICATIONS"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
LEDGER_PREFIX = "notify:"
RETRY_DELAYS = (30.0, 120.0, 600.0)
"""Seconds before a notice whose send failed (after the HTTP layer's own retries) is tried again; then dead."""
NOTIFY_HTTP = HttpOptions(timeout=10.0, max_attempts=4)
"""Webhooks answer fast or not at all: a shorter timeout than the platforms' APIs, fewer attempts."""
Kind = Literal["slack", "teams", "pagerduty"]
Topic = Literal["management", "breach"]


class Route(BaseModel):
    """One ``[[notify]]`` table."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Kind
    on: list[Topic] = Field(default_factory=lambda: ["management", "breach"], min_length=1)
    instances: list[str] = Field(default_factory=list)
    """Instance names this route listens to; empty: every instance."""
    clocks: list[str] = Field(default_factory=list)
    """For breaches: only these clocks; empty: every clock."""
    url_env: str | None = None
    """Slack, Teams: the environment variable holding the incoming webhook URL."""
    routing_key_env: str | None = None
    """PagerDuty: the environment variable holding the integration's routing key."""
    events_url: str = PAGERDUTY_EVENTS_URL
    severity: Literal["critical", "error", "warning", "info"] = "critical"

    @model_validator(mode="after")
    def _secret_named(self) -> Route:
        needed = "routing_key_env" if self.kind == "pagerduty" else "url_env"
        if not getattr(self, needed):
            raise ValueError(f"a {self.kind} route needs {needed} (the environment variable that holds it)")
        return self

    def listens(self, instance: str, topic: str, clock: str | None) -> bool:
        if self.instances and instance not in self.instances:
            return False
        if topic not in self.on:
            return False
        return not (topic == "breach" and self.clocks and clock not in self.clocks)


class NotifyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notify: list[Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> NotifyFile:
        names = [route.name for route in self.notify]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"route names must be unique; repeated: {', '.join(repeated)}")
        return self


def routes_path(config_path: Path, environ: Mapping[str, str]) -> Path:
    return Path(environ[ENV_PATH]) if environ.get(ENV_PATH) else config_path.parent / FILE_NAME


def load_routes(path: Path) -> list[Route]:
    """The routes of `path`; none if the file does not exist. Errors name file, line and key."""
    if not path.exists():
        return []
    data, text = load_toml(path)
    return validate(NotifyFile, data, path, text).notify


# -- what to send (pure) -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    route: str
    kind: str
    action: Literal["trigger", "resolve"]
    instance: str
    ticket_id: str
    topic: str
    """``management`` or ``breach:<clock>``."""
    at: str
    title: str
    facts: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    @property
    def dedup_key(self) -> str:
        return f"escalation-sync:{self.instance}:{self.ticket_id}:{self.topic}"

    @property
    def ledger_key(self) -> str:
        return f"{LEDGER_PREFIX}{self.route}:{self.dedup_key}:{self.action}"

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, payload: str) -> Notice:
        data = json.loads(payload)
        data["reasons"] = tuple(data.get("reasons", ()))
        return cls(**data)


def notices_for(event: Event, routes: Sequence[Route], tags: TagScheme) -> list[Notice]:
    """The notices a written event calls for: management start / end, breach start / end, per listening route."""
    if event.kind != "written":
        return []
    detail = event.detail
    added, removed = set(detail.get("add_tags", ())), set(detail.get("remove_tags", ()))
    changes: list[tuple[str, str | None, Literal["trigger", "resolve"]]] = []
    if tags.management in added:
        changes.append(("management", None, "trigger"))
    if tags.management in removed:
        changes.append(("management", None, "resolve"))
    for tag in sorted(added):
        if (clock := tags.clock_of(tag, "breached")) is not None:
            changes.append(("breach", clock, "trigger"))
    for tag in sorted(removed):
        if (clock := tags.clock_of(tag, "breached")) is not None:
            changes.append(("breach", clock, "resolve"))
    key = str(detail.get("key") or event.ticket_id)
    facts = {"Instance": event.instance, "Ticket": key}
    if detail.get("priority"):
        facts["Priority"] = str(detail["priority"])
    if detail.get("tier") or detail.get("from_tier"):
        facts["Tier"] = f"{detail.get('from_tier') or '?'} -> {detail.get('tier') or detail.get('from_tier')}"
    notices = []
    for topic, clock, action in changes:
        what = "Management escalation" if topic == "management" else f"SLA breached: {clock}"
        title = f"{what} on {event.instance} ticket {key}" + (" is over" if action == "resolve" else "")
        for route in routes:
            if not route.listens(event.instance, topic, clock):
                continue
            if action == "resolve" and route.kind != "pagerduty":
                continue  # a chat message says when it starts; only an incident has a state to close
            notices.append(
                Notice(
                    route=route.name,
                    kind=route.kind,
                    action=action,
                    instance=event.instance,
                    ticket_id=event.ticket_id,
                    topic=topic if clock is None else f"breach:{clock}",
                    at=event.at.astimezone(UTC).isoformat(),
                    title=title,
                    facts=facts,
                    reasons=tuple(str(reason) for reason in detail.get("reasons", ())),
                )
            )
    return notices


def slack_body(notice: Notice) -> dict[str, Any]:
    """Slack incoming webhook: `text` (the notification fallback) and Block Kit blocks."""
    lines = [f"*{notice.title}*", *(f"{k}: {v}" for k, v in notice.facts.items())]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]
    if notice.reasons:
        why = "\n".join(f"• {reason}" for reason in notice.reasons)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Why*\n{why}"}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"escalation-sync · {notice.at}"}]})
    return {"text": notice.title, "blocks": blocks}


def teams_body(notice: Notice) -> dict[str, Any]:
    """Teams incoming webhook / Workflows: a message with one Adaptive Card attachment."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": notice.title, "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in notice.facts.items()]},
    ]
    body += [{"type": "TextBlock", "text": f"- {reason}", "wrap": True} for reason in notice.reasons]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
    return {"type": "message", "attachments": [attachment]}


def pagerduty_body(notice: Notice, routing_key: str, severity: str) -> dict[str, Any]:
    """PagerDuty Events API v2: trigger with a payload, resolve with the dedup key alone."""
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": notice.action, "dedup_key": notice.dedup_key}
    if notice.action == "trigger":
        event["payload"] = {
            "summary": notice.title[:1024],
            "source": notice.instance,
            "severity": severity,
            "timestamp": notice.at,
            "component": notice.facts.get("Ticket", notice.ticket_id),
            "group": notice.instance,
            "class": notice.topic.split(":", 1)[0],
            "custom_details": {**notice.facts, "reasons": list(notice.reasons)},
        }
        event["client"] = "escalation-sync"
    return event


# -- sending (one worker thread) -----------------------------------------------------------------------------


class _Sender:
    """One route's HTTP client and secret; builds the body and judges the answer by the vendor's contract."""

    def __init__(self, route: Route, secret: SecretStr, **http: Any) -> None:
        self.route = route
        self.secret = secret
        value = secret.get_secret_value()
        self.url = route.events_url if route.kind == "pagerduty" else value
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            variable = route.url_env or route.events_url
            raise ConfigFileError("environment", f"notify route {route.name!r}: {variable} is not an http(s) URL")
        secrets = [value, parts.path] if route.kind != "pagerduty" else [value]
        self.http = HttpClient(f"notify:{route.name}", f"{parts.scheme}://{parts.netloc}", secrets=secrets, **http)

    def body(self, notice: Notice) -> dict[str, Any]:
        if self.route.kind == "slack":
            return slack_body(notice)
        if self.route.kind == "teams":
            return teams_body(notice)
        return pagerduty_body(notice, self.secret.get_secret_value(), self.route.severity)

    def send(self, notice: Notice) -> str | None:
        """None when delivered; otherwise why the vendor refused it for good (raises on transient trouble)."""
        response = self.http.request("POST", self.url, json=self.body(notice), headers={"Accept": "*/*"})
        status = response.status_code
        if self.route.kind == "slack" and status == 200:
            return None
        if self.route.kind == "teams" and status in (200, 202):
            return None
        if self.route.kind == "pagerduty" and status == 202:
            return None
        return f"HTTP {status}: {self.http.redact(response.text[:300])}"

    def close(self) -> None:
        self.http.close()


class Notifier:
    """Queues the notices of the cycle's events and sends them from one worker thread, ledger first."""

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        state_url: str,
        environ: Mapping[str, str],
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        options: HttpOptions = NOTIFY_HTTP,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        _require_secrets(routes, environ)
        self.routes = list(routes)
        self.state_url = state_url
        self.clock = clock
        self.retry_delays = tuple(retry_delays)
        self._tags: dict[str, TagScheme] = {}
        self._senders = {
            route.name: _Sender(
                route,
                SecretStr(environ[route.routing_key_env or route.url_env or ""]),
                transport=transport,
                sleep=sleep,
                options=options,
            )
            for route in routes
        }
        self._queue: queue.Queue[Notice | str | None] = queue.Queue(maxsize=10_000)
        """Notices to send; an instance name: recover its pending notices; None: stop."""
        self._later: list[tuple[float, int, Notice]] = []
        self._pending = 0
        self._idle = threading.Condition()
        self._store_error: str = ""
        self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
        self._thread.start()

    # -- the cycle's side (never blocks) --------------------------------------------------------------------

    def watch(self, instance: str, tags: TagScheme) -> None:
        """Tell the notifier how `instance` names its tags (from its mapping) before its first cycle; its notices
        left pending by an earlier run are settled first."""
        if instance not in self._tags:
            self._queue.put(instance)
        self._tags[instance] = tags

    def on_event(self, event: Event) -> None:
        """The Syncer's ``on_event``: compute, queue, return."""
        tags = self._tags.get(event.instance)
        if tags is None:
            return
        for notice in notices_for(event, self.routes, tags):
            with self._idle:
                self._pending += 1
            try:
                self._queue.put_nowait(notice)
            except queue.Full:
                self._settled()
                log.error("notification dropped: queue full", extra={"key": notice.ledger_key})

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued notice is settled (sent, dead, or waiting for a retry); True if all were."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending > len(self._later):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        for sender in self._senders.values():
            sender.close()

    # -- the worker -----------------------------------------------------------------------------------------

    def _settled(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _work(self) -> None:
        try:
            store = open_store(self.state_url)
        except StoreError as error:
            log.error("notifications disabled: cannot open the state store", extra={"error": str(error)})
            self._drain()
            return
        try:
            while True:
                timeout = max(0.0, self._later[0][0] - time.monotonic()) if self._later else None
                try:
                    notice = self._queue.get(timeout=timeout)
                except queue.Empty:
                    _, _, notice = heapq.heappop(self._later)
                    self._deliver(store, notice, retry=True)
                    continue
                if notice is None:
                    return
                if isinstance(notice, str):
                    self._recover(store, notice)
                    continue
                self._deliver(store, notice)
        finally:
            store.close()

    def _drain(self) -> None:
        while (notice := self._queue.get()) is not None:
            if isinstance(notice, Notice):
                self._settled()

    def _recover(self, store: Store, instance: str) -> None:
        """Pending notices of an earlier run: PagerDuty's are re-sent (it deduplicates); a chat post may have
        gone out before the crash, so it is dead-lettered, never posted twice."""
        for intent in store.pending(f"{LEDGER_PREFIX}{instance}"):
            notice = Notice.decode(intent.payload)
            if notice.kind == "pagerduty" and notice.route in self._senders:
                with self._idle:
                    self._pending += 1
                self._deliver(store, notice, retry=True)
            else:
                store.mark_dead(intent.key, "outcome unknown after a restart: not re-sent", self.clock())

    def _deliver(self, store: Store, notice: Notice, *, retry: bool = False) -> None:
        now = self.clock()
        key = notice.ledger_key
        try:
            intent = store.record_intent(
                f"{LEDGER_PREFIX}{notice.instance}", notice.ticket_id, key, notice.encode(), now
            )
            if intent.state is not IntentState.PENDING or (intent.attempts and not retry):
                self._settled()  # done or dead already, or another delivery of it is under way: never twice
                return
            sender = self._senders[notice.route]
            try:
                refused = sender.send(notice)
            except AmbiguousWriteError as error:
                if notice.kind == "pagerduty":
                    self._again(store, notice, str(error))
                else:
                    store.mark_dead(key, f"may have been delivered, not re-sent: {error}", now)
                    self._settled()
                return
            except AuthError as error:
                refused = str(error)
            except TransientError as error:
                self._again(store, notice, str(error))
                return
            if refused is None:
                store.mark_done(key, self.clock())
                log.info("notification sent", extra={"route": notice.route, "key": notice.dedup_key})
            else:
                store.mark_failed(key, refused, now)
                store.mark_dead(key, refused, now)
                log.error("notification refused", extra={"route": notice.route, "error": refused})
            self._settled()
        except StoreError as error:
            log.error("notification not recorded", extra={"route": notice.route, "error": str(error)})
            self._settled()

    def _again(self, store: Store, notice: Notice, error: str) -> None:
        intent = store.mark_failed(notice.ledger_key, error, self.clock())
        if intent.attempts > len(self.retry_delays):
            store.mark_dead(notice.ledger_key, f"gave up after {intent.attempts} attempts: {error}", self.clock())
            log.error("notification dead-lettered", extra={"route": notice.route, "error": error})
            self._settled()
            return
        delay = self.retry_delays[intent.attempts - 1]
        with self._idle:
            heapq.heappush(self._later, (time.monotonic() + delay, id(notice), notice))
            self._idle.notify_all()


def _require_secrets(routes: Sequence[Route], environ: Mapping[str, str]) -> None:
    missing = sorted({v for r in routes if (v := r.routing_key_env or r.url_env) and not environ.get(v)})
    if missing:
        raise ConfigFileError("environment", f"notifications need the environment variable(s) {', '.join(missing)}")


def check(config_path: Path, environ: Mapping[str, str]) -> str:
    """For `sync.py check`: what the routes file holds, or ConfigFileError (file, line, key; or the variable)."""
    path = routes_path(config_path, environ)
    routes = load_routes(path)
    _require_secrets(routes, environ)
    return f"{len(routes)} route(s) in {path}" if routes else f"none ({path} does not exist)"


def start(
    config_path: Path, state_url: str, environ: Mapping[str, str] | None = None, **kwargs: Any
) -> Notifier | None:
    """The notifier for the routes beside `config_path`, or None when there are none."""
    environ = os.environ if environ is None else environ
    routes = load_routes(routes_path(config_path, environ))
    return Notifier(routes, state_url=state_url, environ=environ, **kwargs) if routes else None

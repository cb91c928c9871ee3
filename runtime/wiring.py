"""Turns one [[instances]] table into a running Syncer: HTTP client, connector, mapping, store, policy.

This is the only place that knows which connector class serves which platform, so `sync.py`, the demo and
the tests all build instances the same way; the demo differs only by the httpx transport it passes in.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from connectors.base import Connector
from connectors.http import HttpClient, HttpOptions
from mappings import PlatformMapping, load_mapping
from runtime.config import AppConfig, InstanceSection
from runtime.cycle import Event, Syncer
from state.base import Store

CONNECTOR_CLASSES = {
    "zendesk": ("connectors.zendesk", "ZendeskConnector"),
    "jsm": ("connectors.jsm", "JsmConnector"),
    "servicenow": ("connectors.servicenow", "ServiceNowConnector"),
}


HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})


def api_calls(http: HttpClient) -> int:
    """Requests sent (every attempt, retries included), from the HTTP layer's per-method counters."""
    return sum(count for name, count in http.stats.items() if name.split(" ", 1)[0] in HTTP_METHODS)


@dataclass
class Wired:
    section: InstanceSection
    http: HttpClient
    connector: Connector
    mapping: PlatformMapping
    syncer: Syncer

    def close(self) -> None:
        self.connector.close()
        self.http.close()


def load_instance_mapping(config: AppConfig, section: InstanceSection) -> PlatformMapping:
    return load_mapping(section.platform, config.mapping_path(section))


def build_connector(
    section: InstanceSection, mapping: PlatformMapping, environ: Mapping[str, str], **http_kwargs: Any
) -> tuple[HttpClient, Connector]:
    module_name, class_name = CONNECTOR_CLASSES[section.platform]
    module = importlib.import_module(module_name)
    credentials = section.read_credentials(environ)
    http = HttpClient(
        section.name,
        section.url,
        auth=module.make_auth(credentials),
        secrets=[secret.get_secret_value() for secret in credentials.values()],
        options=HttpOptions(),
        allow_insecure_http=section.allow_insecure_http,
        **http_kwargs,
    )
    options = {"initial_lookback_hours": section.initial_lookback_hours, **section.options}
    connector = getattr(module, class_name)(section.name, http, mapping, options)
    return http, connector


def fingerprint(config: AppConfig, mapping: PlatformMapping) -> str:
    """What the book's review moments were computed with: the config file (policy) and the mapping file.
    When either changes, the whole book is reviewed once."""
    digest = hashlib.sha256()
    for path in (config.path, Path(mapping.path)):
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(str(path).encode())
    return digest.hexdigest()[:32]


def wire(
    config: AppConfig,
    section: InstanceSection,
    store: Store,
    *,
    environ: Mapping[str, str],
    clock: Callable[[], datetime],
    dry_run: bool = False,
    stop: threading.Event | None = None,
    on_event: Callable[[Event], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] | None = None,
    on_exchange: Callable[[httpx.Request, httpx.Response], None] | None = None,
) -> Wired:
    mapping = load_instance_mapping(config, section)
    http_kwargs: dict[str, Any] = {}
    if transport is not None:
        http_kwargs["transport"] = transport
    if sleep is not None:
        http_kwargs["sleep"] = sleep
    if stop is not None:  # SIGTERM/SIGINT end the HTTP layer's waits too, not only the loop over tickets
        http_kwargs["stop"] = stop
    if on_exchange is not None:  # `sync.py record`: every exchange of the HTTP layer saved as a fixture
        http_kwargs["on_exchange"] = on_exchange
    http_kwargs["clock"] = clock  # RateLimitedError.retry_at on the same time line as the cycle
    http, connector = build_connector(section, mapping, environ, **http_kwargs)
    syncer = Syncer(
        instance=section.name,
        platform=section.platform,
        connector=connector,
        mapping=mapping,
        policy=config.policy,
        store=store,
        clock=clock,
        max_write_attempts=config.daemon.max_write_attempts,
        max_writes_per_cycle=config.daemon.max_writes_per_cycle,
        batch_writes_from=config.daemon.batch_writes_from,
        review_interval=timedelta(seconds=config.daemon.review_interval_seconds),
        ledger_retention=timedelta(days=config.state.ledger_retention_days),
        adopt=section.adopt,
        fingerprint=fingerprint(config, mapping),
        dry_run=dry_run,
        stop=stop,
        on_event=on_event,
        api_calls=lambda: api_calls(http),
    )
    return Wired(section, http, connector, mapping, syncer)

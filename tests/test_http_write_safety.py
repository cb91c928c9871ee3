"""A write the platform applied but answered with a 5xx (or never answered) is never sent twice, end to end.

The real Syncer, connector, HTTP layer and SQLite store run against each platform's sandbox; a WSGI wrapper
lets the sandbox apply the handoff-note write and then replaces its answer with a 503 (with Retry-After, as a
load balancer sends it) or drops it. Before issue 10, the HTTP layer retried that 503 as "not applied" and
JSM and ServiceNow got the note twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.model import COMMENT_MARKER
from engine.policy import load_policy
from runtime.config import AppConfig, DaemonSection, InstanceSection
from runtime.demo import DEMO_START
from runtime.wiring import wire
from sandbox.base import SimClock
from sandbox.jsm import JsmSandbox
from sandbox.servicenow import ServiceNowSandbox
from sandbox.zendesk import ZendeskSandbox
from state import open_store

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(re.escape(COMMENT_MARKER.format(key="")) + r"[^)\s]+")

PLATFORMS: dict[str, tuple[InstanceSection, dict[str, str], Callable[[SimClock], Any], str, str]] = {
    "zendesk": (
        InstanceSection(
            name="zd",
            platform="zendesk",
            base_url="https://example.zendesk.com",
            credentials={"email": "ZD_EMAIL", "api_token": "ZD_TOKEN"},
        ),
        {"ZD_EMAIL": "bot@example.com", "ZD_TOKEN": "zd-token-value"},
        lambda clock: ZendeskSandbox(clock, seed=11),
        r"^PUT /api/v2/tickets/\d+\.json$",
        "body",
    ),
    "jsm": (
        InstanceSection(
            name="jsm",
            platform="jsm",
            base_url="https://example.atlassian.net",
            credentials={"email": "JSM_EMAIL", "api_token": "JSM_TOKEN"},
        ),
        {"JSM_EMAIL": "bot@example.com", "JSM_TOKEN": "jsm-token-value"},
        lambda clock: JsmSandbox(clock, seed=11),
        r"^POST /rest/servicedeskapi/request/[^/]+/comment$",
        "body",
    ),
    "servicenow": (
        InstanceSection(
            name="snow",
            platform="servicenow",
            base_url="https://example.service-now.com",
            credentials={"username": "SNOW_USER", "password": "SNOW_PASSWORD"},
        ),
        {"SNOW_USER": "integration", "SNOW_PASSWORD": "snow-password-value"},
        lambda clock: ServiceNowSandbox(clock, seed=11),
        r"^PATCH /api/now/table/incident/[0-9a-f]{32}$",
        "value",
    ),
}


class AppliedThenLost:
    """WSGI wrapper: the first `times` matching requests are served (applied), then their answer is replaced."""

    def __init__(self, app: Any, pattern: str, times: int, answer: str) -> None:
        self.app, self.pattern, self.times, self.answer = app, re.compile(pattern), times, answer
        self.hit = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        line = f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}"
        if self.hit >= self.times or not self.pattern.match(line):
            return self.app(environ, start_response)
        self.hit += 1
        list(self.app(environ, lambda status, headers, exc_info=None: None))  # the server commits the write
        if self.answer == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        start_response("503 Service Unavailable", [("Content-Type", "text/html"), ("Retry-After", "2")])
        return [b"<html><body>503 Service Unavailable</body></html>"]


@pytest.mark.parametrize("answer", ["503", "drop"])
@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_a_write_applied_then_lost_is_posted_once(tmp_path: Path, name: str, answer: str) -> None:
    section, environ, make_sandbox, pattern, text_key = PLATFORMS[name]
    clock = SimClock(DEMO_START)
    sandbox = make_sandbox(clock)
    sandbox.seed_tickets(40)
    faulty = AppliedThenLost(sandbox, pattern, times=3, answer=answer)
    store = open_store(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    config = AppConfig(
        path=ROOT / "config.example.toml",
        daemon=DaemonSection(batch_writes_from=10**6),  # the single write; a lost job: tests/test_batch_writes.py
        state_url="",
        instances=(section,),
        policy=load_policy(ROOT / "config.example.toml"),
    )
    wired = wire(
        config,
        section,
        store,
        environ=environ,
        clock=clock.now,
        transport=httpx.WSGITransport(app=faulty),
        sleep=lambda seconds: None,
    )
    try:
        reports = []
        for _ in range(4):
            reports.append(wired.syncer.run_cycle())
            clock.advance(timedelta(seconds=61))
        assert faulty.hit == 3, "the scenario must lose three applied writes"
        assert reports[0].failed >= 1
        assert store.pending(section.name) == []
        counts: dict[str, int] = {}
        ids = (
            sandbox.ticket_ids()
            if name == "zendesk"
            else (sandbox.issue_keys() if name == "jsm" else sandbox.incident_ids())
        )
        for ticket_id in ids:
            for comment in sandbox.comments(ticket_id):
                for key in MARKER.findall(str(comment.get(text_key, ""))):
                    counts[key] = counts.get(key, 0) + 1
        assert counts and set(counts.values()) == {1}, {key: n for key, n in counts.items() if n > 1}
    finally:
        wired.close()
        store.close()

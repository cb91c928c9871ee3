"""`sync.py record`: one read-only cycle against a live instance, every HTTP exchange saved as a fixture.

What an admin's CI replays (`sync.py replay`, runtime/replay.py) to see what a mapping or policy change does to
*their* tickets. The cycle is a dry run (`Syncer(dry_run=True)`: it plans, never writes) on an empty in-memory
store, so it reads what a first start reads and a replay from an empty store asks for exactly the same requests;
the configured state store is never opened.

One JSON file per exchange, in the order sent: `method`, `path`, `query` (pairs), the request `body` of a JSON
read (Jira's JQL search is a POST), `status`, response `headers` and `body` as the platform sent it (parsed
JSON, else text), the shape `sync.py explain --file` reads. Never written: request headers (Authorization,
cookies), `Set-Cookie` and other credential headers of the response, a form body (the ServiceNow OAuth grant
carries the client secret and password), token fields of any body (`access_token`, ...), and every credential
value of the instance wherever it would appear (the HTTP layer's redactor runs over each file's text).
`--scrub-pii` also replaces e-mail addresses, people's names and free text (subjects, descriptions, comments)
with stable fakes: the same input gives the same fake in every file, so references between records still hold,
and our own note keys `(escalation-sync:...)` are kept so replayed history reads as recorded.

Why not vcrpy: it records httpx by patching httpcore globally and writes one cassette (YAML or JSON) per
scenario in its own schema; our HttpClient already has an `on_exchange` hook and takes a transport, so recording
is the hook below and replay an `httpx.BaseTransport`, with no extra runtime dependency on the admins' hosts,
no global patching, and fixtures in the same one-file-per-exchange vendor shape as tests/fixtures/ (retries,
pacing, redaction and the requests adapter of zenpy and jira run exactly as they do live).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from connectors.base import ApplyResult, Connector, Page, RawRecord
from engine.model import WriteBack
from runtime.config import AppConfig, InstanceSection
from runtime.cycle import CycleReport, Event

MANIFEST = "manifest.json"
DROPPED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "www-authenticate",
        "x-csrf-token",
        "x-userid",
        "x-auserid",
        "x-ausername",
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)
"""Credential headers, and framing headers that would be wrong once the body is re-serialised."""
TOKEN_KEYS = frozenset({"access_token", "refresh_token", "id_token", "token", "client_secret", "password"})
REDACTED = "[REDACTED]"


class RecordError(Exception):
    """The recording cannot be made (output directory not empty, unknown instance)."""


def _body(content: bytes, content_type: str) -> Any:
    text = content.decode("utf-8", errors="replace")
    if "json" in content_type or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def strip_tokens(value: Any) -> Any:
    """Token and password fields of a body blanked, at any depth (an OAuth grant's answer)."""
    if isinstance(value, Mapping):
        return {k: REDACTED if k.lower() in TOKEN_KEYS else strip_tokens(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_tokens(item) for item in value]
    return value


def request_body(request: httpx.Request) -> Any:
    """A JSON read's body (JQL search); None for no body or a form (credentials travel in forms)."""
    if not request.content or "json" not in request.headers.get("content-type", ""):
        return None
    return strip_tokens(_body(request.content, "json"))


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_NOTE_KEY = re.compile(r"\(escalation-sync:[^)\s]+\)")
_USER_KEYS = frozenset({"emailAddress", "email", "accountId", "displayName", "user_name", "first_name", "last_name"})
_NAME_KEYS = frozenset({"name", "displayName", "display_name", "first_name", "last_name", "user_name", "alias"})
_TEXT_KEYS = frozenset(
    {
        "subject",
        "raw_subject",
        "description",
        "summary",
        "short_description",
        "body",
        "html_body",
        "plain_body",
        "text",
        "work_notes",
        "comments",
        "close_notes",
    }
)


def _fake(kind: str, value: str) -> str:
    digest = hashlib.sha256(f"escalation-sync:{kind}:{value}".encode()).hexdigest()[:10]
    if kind == "email":
        return f"person-{digest}@example.invalid"
    if kind == "login":
        return f"person.{digest}"
    if kind == "name":
        return f"Person {digest}"
    return f"[text {digest}]" + "".join(f" {key}" for key in _NOTE_KEY.findall(value))


def scrub(value: Any, key: str = "", parent: Mapping[str, Any] | None = None) -> Any:
    """Emails, people's names and free text replaced by stable fakes (see the module docstring)."""
    if isinstance(value, Mapping):
        user_like = any(name in value for name in _USER_KEYS)
        journal = "element_id" in value and "element" in value
        out = {}
        for name, item in value.items():
            if isinstance(item, str) and item and user_like and name in _NAME_KEYS:
                out[name] = _fake("login" if name == "user_name" else "name", item)
            elif isinstance(item, str) and item and journal and name == "value":
                out[name] = _fake("text", item)
            else:
                out[name] = scrub(item, name, value)
        return out
    if isinstance(value, list):
        return [scrub(item, key, parent) for item in value]
    if not isinstance(value, str) or not value:
        return value
    if key in _TEXT_KEYS:
        return _fake("text", value)
    if key.endswith((".user_name", ".name", ".first_name", ".last_name")):  # ServiceNow dot-walked fields
        return _fake("login" if key.endswith(".user_name") else "name", value)
    return _EMAIL.sub(lambda match: _fake("email", match.group(0)), value)


def secret_remover(secrets: list[str]) -> Callable[[str], str]:
    """Every credential value, in each form it could take in a JSON text (plain, JSON-escaped, URL-encoded, a
    Basic header's base64 of any two of them), replaced. Not the HTTP layer's log redactor: that one clips text
    to a log excerpt and rewrites `token=...` query text, which could cut through a JSON string."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    for first in secrets:
        for second in secrets:
            for pair in (f"{first}:{second}", f"{first}/token:{second}"):
                forms.add(base64.b64encode(pair.encode()).decode())
    ordered = sorted((form for form in forms if len(form) >= 4), key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
    return (lambda text: pattern.sub(REDACTED, text)) if pattern else (lambda text: text)


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")[:80] or "root"


@dataclass
class Recorder:
    """The HttpClient `on_exchange` hook: writes each exchange as it completes (retries included)."""

    out: Path
    redact: Callable[[str], str] = lambda text: text
    scrub_pii: bool = False
    count: int = 0
    written: list[Path] = field(default_factory=list)

    def __call__(self, request: httpx.Request, response: httpx.Response) -> None:
        self.count += 1
        body = strip_tokens(_body(response.content, response.headers.get("content-type", "")))
        sent = request_body(request)
        if self.scrub_pii:
            body, sent = scrub(body), scrub(sent)
        exchange: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "query": [list(pair) for pair in request.url.params.multi_items()],
            **({"request_body": sent} if sent is not None else {}),
            "status": response.status_code,
            "headers": {k: v for k, v in response.headers.items() if k.lower() not in DROPPED_HEADERS},
            "body": body,
        }
        text = self.redact(json.dumps(exchange, indent=2, ensure_ascii=False))
        path = self.out / f"{self.count:04d}-{request.method}-{_slug(request.url.path)}.json"
        path.write_text(text + "\n", encoding="utf-8")
        self.written.append(path)


class Limited:
    """A connector whose polls and scan stop after `limit` tickets in all: a small recording of a big instance.

    Replay wraps its connector the same way with the recorded limit, so it asks for the same pages."""

    def __init__(self, inner: Connector, limit: int | None) -> None:
        self.inner = inner
        self.left = limit
        self.platform = inner.platform
        self.instance = inner.instance

    def _cap(self, page: Page) -> Page:
        if self.left is None:
            return page
        records = page.records[: self.left]
        self.left -= len(records)
        return Page(records, page.cursor, page.has_more and self.left > 0)

    def poll(self, cursor: str | None, now: datetime) -> Page:
        return self._cap(self.inner.poll(cursor, now))

    def open_tickets(self, cursor: str | None, now: datetime) -> Page:
        return self._cap(self.inner.open_tickets(cursor, now))

    def fetch(self, ticket_id: str) -> RawRecord | None:
        return self.inner.fetch(ticket_id)

    def apply(self, writeback: WriteBack) -> ApplyResult:  # a dry run never calls it
        return self.inner.apply(writeback)

    def has_comment(self, ticket_id: str, idempotency_key: str) -> bool:
        return self.inner.has_comment(ticket_id, idempotency_key)

    def close(self) -> None:
        self.inner.close()


def prepare(out: Path) -> None:
    """The output directory: created, and refused when it already holds a recording (never mixed)."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.json")):
        raise RecordError(f"{out} already holds JSON files: record into an empty directory")


def write_manifest(out: Path, data: Mapping[str, Any]) -> None:
    (out / MANIFEST).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_only_cycle(
    config: AppConfig,
    section: InstanceSection,
    *,
    now: datetime,
    environ: Mapping[str, str],
    limit: int | None,
    on_event: Callable[[Event], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    recorder: Recorder | None = None,
) -> CycleReport:
    """One dry-run cycle of `section` on an empty in-memory store at the fixed time `now` (record and replay)."""
    from runtime.wiring import wire
    from state.sqlite import SqliteStore

    store = SqliteStore(":memory:")
    options = dict(section.options)
    if limit is not None:  # small pages: a recording of 20 tickets should not hold a page of 1000
        options["page_size"] = min(int(options.get("page_size", limit)), limit)
    section = section.model_copy(update={"options": options})
    # Live (record): the HTTP layer waits out rate limits for real. Replayed: a recorded 429 is followed by the
    # recorded retry, so nothing is waited for.
    sleep = (lambda seconds: None) if transport is not None else None
    try:
        wired = wire(
            config, section, store, environ=environ, clock=lambda: now, dry_run=True, on_event=on_event,
            transport=transport, on_exchange=recorder, sleep=sleep,
        )  # fmt: skip
        if recorder is not None:
            recorder.redact = secret_remover(
                [value.get_secret_value() for value in section.read_credentials(environ).values()]
            )
        wired.syncer.connector = Limited(wired.connector, limit)
        try:
            return wired.syncer.run_cycle()
        finally:
            wired.close()
    finally:
        store.close()


def record(
    config: AppConfig,
    section: InstanceSection,
    out: Path,
    *,
    now: datetime,
    environ: Mapping[str, str],
    limit: int | None = None,
    scrub_pii: bool = False,
    on_event: Callable[[Event], None] | None = None,
) -> tuple[CycleReport, int]:
    """Record one read-only cycle of `section` into `out`; the report and the number of exchanges saved."""
    prepare(out)
    recorder = Recorder(out, scrub_pii=scrub_pii)
    report = read_only_cycle(
        config, section, now=now, environ=environ, limit=limit, on_event=on_event, recorder=recorder
    )
    write_manifest(
        out,
        {
            "instance": section.name,
            "platform": section.platform,
            "recorded_at": now.isoformat(),
            "limit": limit,
            "scrubbed": scrub_pii,
            "exchanges": recorder.count,
            "cycle_error": report.error,
        },
    )
    return report, recorder.count

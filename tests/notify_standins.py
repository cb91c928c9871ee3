"""Stand-ins for the notification vendors, written from their documentation (not from our client), for tests.

- Slack incoming webhooks: POST JSON to the webhook URL; ``text`` (required unless ``blocks``; the notification
  fallback), Block Kit ``blocks`` (section: a text object ``{type: plain_text|mrkdwn, text}`` of at most 3000
  characters; context: at most 10 elements; at most 50 blocks). Answers 200 ``ok``; 400 ``invalid_payload`` or
  ``no_text``; 404 ``no_service`` for an unknown webhook.
- Microsoft Teams (Workflows "when a Teams webhook request is received", and the older incoming webhook): a
  ``message`` whose ``attachments`` hold one Adaptive Card (``contentType``
  ``application/vnd.microsoft.card.adaptive``, ``content`` of ``type`` AdaptiveCard with a ``version`` and a
  ``body`` of elements: TextBlock needs ``text``, FactSet needs ``facts`` of ``{title, value}``). Answers 202.
- PagerDuty Events API v2, ``POST /v2/enqueue``: ``routing_key`` (32 characters), ``event_action`` trigger /
  acknowledge / resolve, ``dedup_key`` (at most 255); a trigger needs ``payload`` with ``summary`` (at most
  1024), ``source`` and ``severity`` (critical, error, warning, info), optional ``timestamp`` (ISO 8601),
  ``component``, ``group``, ``class``, ``custom_details``; acknowledge and resolve need ``dedup_key``. Answers 202
  ``{"status": "success", "message": "Event processed", "dedup_key": ...}`` or 400 ``{"status": "invalid event",
  "message": "Event object is invalid", "errors": [...]}``. Alerts are kept by dedup key (triggered / resolved).

Each records what it accepted, and can be told to fail the next requests (status, or a dropped connection).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlackText(_Strict):
    type: Literal["plain_text", "mrkdwn"]
    text: str = Field(min_length=1, max_length=3000)
    emoji: bool | None = None
    verbatim: bool | None = None


class SlackBlock(_Strict):
    type: Literal["section", "context", "divider", "header"]
    text: SlackText | None = None
    elements: list[SlackText] | None = Field(None, max_length=10)
    block_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> SlackBlock:
        if self.type == "section" and self.text is None:
            raise ValueError("a section block needs text")
        if self.type == "context" and not self.elements:
            raise ValueError("a context block needs elements")
        return self


class SlackMessage(_Strict):
    text: str | None = None
    blocks: list[SlackBlock] | None = Field(None, max_length=50)
    mrkdwn: bool | None = None


class CardFact(_Strict):
    title: str
    value: str


class CardElement(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    facts: list[CardFact] | None = None

    @model_validator(mode="after")
    def _shape(self) -> CardElement:
        if self.type == "TextBlock" and not self.text:
            raise ValueError("a TextBlock needs text")
        if self.type == "FactSet" and self.facts is None:
            raise ValueError("a FactSet needs facts")
        return self


class AdaptiveCard(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["AdaptiveCard"]
    version: str = Field(pattern=r"^\d+\.\d+$")
    body: list[CardElement] = Field(min_length=1)
    schema_: str | None = Field(None, alias="$schema")


class CardAttachment(_Strict):
    contentType: Literal["application/vnd.microsoft.card.adaptive"]
    contentUrl: None = None
    content: AdaptiveCard


class TeamsMessage(_Strict):
    type: Literal["message"]
    attachments: list[CardAttachment] = Field(min_length=1)


class PdPayload(_Strict):
    summary: str = Field(min_length=1, max_length=1024)
    source: str = Field(min_length=1)
    severity: Literal["critical", "error", "warning", "info"]
    timestamp: datetime | None = None
    component: str | None = None
    group: str | None = None
    class_: str | None = Field(None, alias="class")
    custom_details: dict[str, Any] | None = None


class PdEvent(_Strict):
    routing_key: str = Field(min_length=32, max_length=32)
    event_action: Literal["trigger", "acknowledge", "resolve"]
    dedup_key: str | None = Field(None, max_length=255)
    payload: PdPayload | None = None
    client: str | None = None
    client_url: str | None = None
    links: list[dict[str, str]] | None = None
    images: list[dict[str, str]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> PdEvent:
        if self.event_action == "trigger" and self.payload is None:
            raise ValueError("a trigger needs a payload")
        if self.event_action != "trigger" and not self.dedup_key:
            raise ValueError(f"{self.event_action} needs a dedup_key")
        return self


Reply = tuple[int, dict[str, str], bytes]


class StandIn:
    """Common plumbing: the accepted bodies, injected failures, httpx transport and loopback server."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.requests = 0
        self.faults: list[int | Literal["drop"]] = []
        self.gate: threading.Event | None = None
        """When set to an unset Event, every request waits for it (a slow vendor)."""
        self._lock = threading.Lock()

    def answer(self, method: str, path: str, body: bytes) -> Reply:
        raise NotImplementedError

    def _handle(self, method: str, path: str, body: bytes) -> Reply | None:
        if self.gate is not None:
            self.gate.wait(30)
        with self._lock:
            self.requests += 1
            fault = self.faults.pop(0) if self.faults else None
        if fault == "drop":
            return None
        if fault is not None:
            return fault, {"content-type": "text/plain"}, b"injected failure"
        return self.answer(method, path, body)

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            reply = self._handle(request.method, request.url.path, request.content)
            if reply is None:
                raise httpx.RemoteProtocolError("server dropped the connection", request=request)
            status, headers, content = reply
            return httpx.Response(status, headers=headers, content=content)

        return httpx.MockTransport(handler)

    def serve(self) -> tuple[str, Callable[[], None]]:
        """Serve on 127.0.0.1; returns the base URL and a stop function."""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                reply = standin._handle("POST", self.path, body)
                if reply is None:
                    self.close_connection = True
                    return
                status, headers, content = reply
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(content))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return f"http://127.0.0.1:{server.server_address[1]}", stop


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class SlackWebhook(StandIn):
    PATH = "/services/T0000TEST/B0000TEST/xoxbSECRETwebhookTOKEN1"

    def answer(self, method: str, path: str, body: bytes) -> Reply:
        text = {"content-type": "text/html"}
        if path != self.PATH:
            return 404, text, b"no_service"
        data = _parse(body)
        try:
            message = SlackMessage.model_validate(data)
        except ValidationError:
            return 400, text, b"invalid_payload"
        if not message.text and not message.blocks:
            return 400, text, b"no_text"
        self.accepted.append(data)
        return 200, text, b"ok"


class TeamsWebhook(StandIn):
    PATH = "/workflows/abc123/triggers/manual/paths/invoke"

    def answer(self, method: str, path: str, body: bytes) -> Reply:
        if path != self.PATH:
            return 404, {"content-type": "application/json"}, b'{"error": {"code": "WorkflowNotFound"}}'
        data = _parse(body)
        try:
            TeamsMessage.model_validate(data)
        except ValidationError as error:
            detail = json.dumps({"error": {"code": "InvalidRequestContent", "message": str(error)[:200]}})
            return 400, {"content-type": "application/json"}, detail.encode()
        self.accepted.append(data)
        return 202, {}, b""


class PagerDutyEvents(StandIn):
    ROUTING_KEY = "R0UTINGKEY0123456789abcdefABCDEF"

    def __init__(self) -> None:
        super().__init__()
        self.alerts: dict[str, str] = {}
        """dedup key -> "triggered" | "acknowledged" | "resolved"."""

    def answer(self, method: str, path: str, body: bytes) -> Reply:
        as_json = {"content-type": "application/json"}
        if path != "/v2/enqueue":
            return 404, as_json, b'{"status": "not found"}'
        data = _parse(body)
        try:
            event = PdEvent.model_validate(data)
        except ValidationError as error:
            errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
            reply = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            return 400, as_json, json.dumps(reply).encode()
        key = event.dedup_key or f"generated-{len(self.accepted)}"
        state = {"trigger": "triggered", "acknowledge": "acknowledged", "resolve": "resolved"}[event.event_action]
        if event.event_action == "trigger" or key in self.alerts:
            self.alerts[key] = state
        self.accepted.append(data)
        reply = {"status": "success", "message": "Event processed", "dedup_key": key}
        return 202, as_json, json.dumps(reply).encode()

"""What every platform sandbox shares: a controllable clock, fault injection, request log, and serving.

A sandbox is a stateful stand-in for the subset of a platform API that we use, written from the vendor's
documentation and sharing no code with the connectors. Each platform's sandbox is a WSGI app, so the very
same object serves in-process (`transport()`, an httpx transport) or on a loopback port (`serve()`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx


class SimClock:
    """Simulated time: starts where it is told and moves only when advanced."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("SimClock needs an aware datetime")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now


class ScaledClock(SimClock):
    """Simulated time that also runs on its own: start + waits + `scale` x real time elapsed while running.

    For benchmarks against ceilings (a per-minute budget only refills if time moves while the client works):
    every real second of work, the sandbox's and the client's alike, costs `scale` simulated seconds, so a
    client's processing time is never free, while a wait (`sleep`, `advance`) costs exactly its own length
    of simulated time and no real time. `hold()` stops the real-time part (set-up work that is not measured);
    it starts held, `run()` starts it.
    """

    def __init__(self, start: datetime, scale: float, *, timer: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(start)
        if scale <= 0:
            raise ValueError("ScaledClock needs a positive scale")
        self.scale = scale
        self._timer = timer
        self._since: float | None = None
        """Real time the clock started running at (None while held)."""
        self._lock = threading.Lock()
        self.worked = 0.0
        """Simulated seconds that were real time at work (scaled) while running."""
        self.waited = 0.0
        """Simulated seconds that were waits (`sleep`, `advance`) while running."""

    def _fold(self) -> None:
        """Move the running real time into the base moment (so `scale` applies to it once)."""
        if self._since is not None:
            moment = self._timer()
            worked = self.scale * (moment - self._since)
            self._now += timedelta(seconds=worked)
            self.worked += worked
            self._since = moment

    def now(self) -> datetime:
        with self._lock:
            self._fold()
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._fold()
            self._now += delta
            if self._since is not None:
                self.waited += delta.total_seconds()
            return self._now

    def sleep(self, seconds: float) -> None:
        """An injected `sleep`: the wait passes on this clock at once."""
        self.advance(timedelta(seconds=max(0.0, seconds)))

    @property
    def running(self) -> bool:
        return self._since is not None

    def run(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = self._timer()

    def hold(self) -> None:
        with self._lock:
            self._fold()
            self._since = None


@dataclass
class Fault:
    """Answer the next `times` matching requests with this status, headers and body instead of serving them."""

    status: int
    times: int = 1
    method: str | None = None
    path_pattern: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    content_type: str = "application/json"

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        return re.search(self.path_pattern, path) is not None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


Handler = Callable[..., Response]

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class SandboxApp:
    """Routing, faults and the request log; subclasses register routes and own the platform's data."""

    platform = ""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._lock = threading.RLock()

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def inject(self, fault: Fault) -> None:
        self.faults.append(fault)

    def calls(self, method: str | None = None, path_pattern: str = "") -> int:
        return sum(
            1 for m, p in self.requests if (method is None or m == method) and re.search(path_pattern, p) is not None
        )

    def dispatch(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, request.path))
            for fault in self.faults:
                if fault.times > 0 and fault.matches(request.method, request.path):
                    fault.times -= 1
                    return Response(fault.status, fault.body, dict(fault.headers), fault.content_type)
            for method, pattern, handler in self._routes:
                match = pattern.match(request.path)
                if match and method == request.method:
                    return handler(request, **match.groupdict())
            return self.not_found(request)

    def not_found(self, request: Request) -> Response:
        return Response(404, {"error": "not found", "path": request.path})

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        request = Request(
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO", "/"),
            query=parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True),
            headers=headers,
            body=body,
        )
        response = self.dispatch(request)
        if response.body is None:
            payload = b""
        elif isinstance(response.body, (bytes, str)):
            payload = response.body.encode() if isinstance(response.body, str) else response.body
        else:
            payload = json.dumps(response.body).encode()
        reason = _REASONS.get(response.status, "Unknown")
        out_headers = [("Content-Type", response.content_type), ("Content-Length", str(len(payload)))]
        if not any(name.lower() == "date" for name in response.headers):
            # The platform's clock is the simulated one: clients read it (Retry-After dates, search windows).
            out_headers.append(("Date", format_datetime(self.clock.now(), usegmt=True)))
        out_headers += list(response.headers.items())
        start_response(f"{response.status} {reason}", out_headers)
        return [payload]

    def transport(self) -> httpx.BaseTransport:
        """In-process: an httpx transport that calls this app directly, no socket."""
        return httpx.WSGITransport(app=self)

    def serve(self, port: int = 0) -> tuple[str, Callable[[], None]]:
        """On loopback: returns the base URL and a function that stops the server."""
        server = make_server("127.0.0.1", port, self, server_class=WSGIServer, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return f"http://127.0.0.1:{server.server_port}", stop


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None

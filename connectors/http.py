"""The one HTTP layer every connector goes through: one `httpx.Client` per platform instance.

It owns what must be identical for all platforms: timeouts; retries with tenacity (429/503 honour
`Retry-After`; reads retry other 5xx and transport errors with exponential backoff and jitter; writes are
retried only when the server certainly did not act on them: connect errors and 429); pacing from
rate-limit headers; secret redaction; one debug log record and one metric per request; and the `on_exchange`
hook that records fixtures. zenpy and jira speak `requests`, so `session()` gives them a `requests.Session`
whose adapter forwards to `request()`: their traffic gets the same retries and limits, and respx sees it at
the httpx level.

Why writes are special: a write answered with any 5xx (503 included), a timeout or a dropped connection may
have been applied; retrying it blindly could post a handoff comment twice. Such a failure raises
`AmbiguousWriteError` at once, and the sync cycle checks the ticket (comment idempotency key) before sending
again. Only failures that prove the request never left us (connect errors, pool timeouts) and 429 (refused
before processing) are retried for writes. No request body is ever logged, and the body of a 5xx answering
a write is never quoted (a failing proxy may echo the request); a 4xx refusal's reason is quoted, cut short.

Waits: every wait (pacing, backoff, Retry-After) goes through the injected `sleep`, so tests never sleep,
and is cut short by the optional `stop` event (SIGTERM/SIGINT), abandoning the request with
`WaitInterruptedError`. A wait longer than `max_retry_after` is never shortened: the request is not sent and
`RateLimitedError.retry_at` says when the instance may send again. Retry-After HTTP-dates and absolute
rate-limit resets are measured against the server's `Date` header, then placed on our clock.

Security: `check_base_url` refuses plain http:// except for loopback (or when explicitly allowed);
`path_segment` makes an id safe to put in a URL path; `Redactor` replaces each secret in every encoding this
code can produce (raw, JSON-escaped, URL-encoded, and the base64 `user:secret` of Basic auth); quoted values
in error messages are cut to `EXCERPT_CHARS`.
"""

from __future__ import annotations

import collections
import email.utils
import ipaddress
import json
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx
import orjson
import requests
import requests.adapters
import requests.structures
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.nap import sleep_using_event

from connectors.base import (
    AmbiguousWriteError,
    AuthError,
    InvalidIdError,
    RateLimitedError,
    TransientError,
    WaitInterruptedError,
)

log = logging.getLogger("escalation_sync.http")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_AFTER_STATUSES = frozenset({429, 503})
REDACTED = "[REDACTED]"
EXCERPT_CHARS = 300
"""The longest quoted value (response body, payload text, URL) an error message carries."""
_SENSITIVE_QUERY = re.compile(r"(?i)((?:access_|api_|client_)?(?:token|secret|password|key|signature|code)=)[^&#\s]*")
_SENSITIVE_NAME_CHARS = len("client_") + len("signature")
"""The longest name `_SENSITIVE_QUERY` matches before its `=` (case-insensitive matching is char for char)."""
_TAGS = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")
# Hop-by-hop or length headers that requests computed for its own transport; httpx sets its own.
_DROP_FORWARDED = frozenset({"connection", "content-length", "host", "transfer-encoding", "keep-alive"})


@dataclass(frozen=True)
class HttpOptions:
    timeout: float = 30.0
    max_attempts: int = 5
    max_retry_after: float = 300.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0


class InsecureUrlError(ValueError):
    """A base URL that would send credentials in clear text (or carries them itself)."""


class _Interrupted(Exception):
    """Internal: the stop event was set during a wait; `_request` turns it into WaitInterruptedError."""


class _Retry(Exception):
    """Internal: one attempt failed in a way worth retrying; carries what the final error should say."""

    def __init__(self, label: str, response: httpx.Response | None = None, wait: float | None = None) -> None:
        super().__init__(label)
        self.label = label
        self.response = response
        self.wait = wait


def parse_retry_after(value: str | None, date_header: str | None = None) -> float | None:
    """Seconds to wait for a Retry-After value: delta-seconds, or an HTTP-date relative to `Date`."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = _parse_http_date(date_header) or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rate_limit_wait(headers: httpx.Headers) -> float | None:
    """How long to pause before the next request when the platform says the budget is spent, else None.

    Zendesk sends `X-Rate-Limit-Remaining` and `ratelimit-remaining`/`ratelimit-reset` (seconds until
    reset) plus per-endpoint `Zendesk-RateLimit-<endpoint>: total=..; remaining=..; resets=..` headers
    (https://developer.zendesk.com/api-reference/introduction/rate-limits/); Jira and ServiceNow send `X-RateLimit-Remaining` with `X-RateLimit-Reset` (Jira an ISO 8601 time,
    ServiceNow epoch seconds). An absolute reset is measured against the response's `Date` header, not our
    clock. When the reset is unknown we do not guess: the next request gets a 429 whose Retry-After is exact.
    """
    endpoint_wait = _zendesk_endpoint_wait(headers)
    if endpoint_wait is not None:
        return endpoint_wait
    remaining = None
    for name in ("ratelimit-remaining", "x-rate-limit-remaining", "x-ratelimit-remaining"):
        if name in headers:
            remaining = headers[name]
            break
    if remaining is None:
        return None
    try:
        if float(remaining.split(",")[0]) > 0:
            return None
    except ValueError:
        return None
    reset = headers.get("ratelimit-reset") or headers.get("x-ratelimit-reset")
    if not reset:
        return None
    reset = reset.strip()
    try:
        number = float(reset)
    except ValueError:
        number = None
    if number is not None:
        if number < 1_000_000_000:  # a delta in seconds
            return max(0.0, number)
        now = _parse_http_date(headers.get("date"))
        return max(0.0, number - now.timestamp()) if now else None
    try:
        when = datetime.fromisoformat(reset.replace("Z", "+00:00"))
    except ValueError:
        return None
    now = _parse_http_date(headers.get("date"))
    if now is None or when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def _zendesk_endpoint_wait(headers: httpx.Headers) -> float | None:
    """Zendesk endpoint limits: `Zendesk-RateLimit-<name>: total=100; remaining=0; resets=42` (seconds)."""
    for name, value in headers.items():
        if not name.lower().startswith("zendesk-ratelimit-"):
            continue
        fields = dict(part.strip().partition("=")[::2] for part in value.split(";") if "=" in part)
        try:
            if float(fields.get("remaining", "1")) <= 0 and "resets" in fields:
                return max(0.0, float(fields["resets"]))
        except ValueError:
            continue
    return None


def _unbind(response: httpx.Response) -> None:
    """Let a read, closed response be freed as soon as nobody holds it, body included (issue 14, memory).

    httpx wraps the transport's stream in one that points back at the response (to stamp `elapsed` on close),
    a reference cycle: every response, its whole body with it (a Zendesk export page is megabytes), then waited
    for the garbage collector, and with the daemon's larger young generation (`sync.py settle_memory`) a read of
    30,000 tickets peaked at 192 MB (bench/memory.py), 136 MB with the cycle broken. Once read and closed the
    stream is spent, so it is replaced by the body's bytes, which keep nothing else alive (a body never read is
    left as it is)."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        return
    response.stream = httpx.ByteStream(content)


def decode_json(content: bytes | str) -> Any:
    """A response body (or stored JSON) as Python values: orjson's parser, several times cheaper than the
    standard library's on a page of records, with the standard library's outcome kept where they differ.

    orjson refuses what is not strict JSON: `NaN`/`Infinity` literals, numbers that overflow to infinity
    (`1e999`), invalid UTF-8, lone surrogates. The standard library reads the first two, and the mappings refuse
    the value (issue 10), so one such record is quarantined instead of the whole page being refused and the
    instance stalled on it. Such a body is read again by `json`, a non-finite number kept as its own text (which
    the mappings refuse alike, and which the book's codec stores without loss); what `json` cannot read either
    raises its `JSONDecodeError`/`UnicodeDecodeError` as `httpx.Response.json()` did. orjson reads an integer
    wider than 64 bits as a float (`json`: an int); no platform id or field we read is that wide.
    """
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content, parse_constant=str, parse_float=_finite_or_text)


def _finite_or_text(text: str) -> float | str:
    number = float(text)
    return number if number - number == 0 else text


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`: traffic that never leaves this machine."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_insecure_http: bool = False) -> None:
    """Refuse a base URL that would send credentials in clear text, or that carries credentials itself.

    Plain http:// is accepted only for loopback (the sandboxes, a local proxy) or when the instance says
    `allow_insecure_http = true`; Basic auth over http:// to a real host hands the password to the network.
    """
    parts = urlsplit(url)
    shown = parts._replace(netloc=parts.hostname or "").geturl() if parts.username or parts.password else url
    if parts.username or parts.password:
        raise InsecureUrlError(f"base URL {shown!r} must not contain credentials; put them in the environment")
    scheme = parts.scheme.lower()
    if scheme == "https" and parts.hostname:
        return
    if scheme == "http" and parts.hostname:
        if allow_insecure_http or is_loopback(parts.hostname):
            return
        raise InsecureUrlError(
            f"base URL {shown!r} would send credentials in clear text: use https:// (plain http:// is accepted "
            "only for loopback hosts, or with allow_insecure_http = true)"
        )
    raise InsecureUrlError(f"base URL {shown!r} is not an http(s) URL with a host")


_UNSAFE_ID = re.compile(r"[\x00-\x1f\x7f/\\]")


def path_segment(value: str | int) -> str:
    """`value` as one URL path segment: percent-encoded, or refused with `InvalidIdError`.

    Ids come from the platform's payloads (or a stored intent); `10099/../../api/3/project/X` must not
    address another resource. Separators, dot segments and control characters are refused outright rather
    than encoded, because some servers and proxies decode `%2F` before routing.
    """
    text = str(value)
    if not text or text in (".", "..") or ".." in text or _UNSAFE_ID.search(text) or len(text) > 200:
        raise InvalidIdError(f"refusing to put id {clip(repr(text), 80)} in a URL path")
    return quote(text, safe="")


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of a quoted value for an error message (a 1 MB field is not a message)."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _encodings(secret: str) -> set[str]:
    """Every form in which this code (or a server echoing our request) can write the secret."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
    } - {""}


class Redactor:
    """Replaces secret values (and sensitive query parameters) in any text we log or put in an exception.

    Each secret is matched in each of its encodings (`_encodings`); give it the Basic credential's base64 as
    one more secret, since a proxy may echo the Authorization header.
    """

    def __init__(self, secrets: Sequence[Any]) -> None:
        values: set[str] = set()
        for secret in secrets:
            text = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
            if text:
                values |= _encodings(text)
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return redact_query(text)

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers safe to record: Authorization and cookies blanked, secrets replaced."""
        safe = {}
        for name, value in headers.items():
            lowered = name.lower()
            sensitive = lowered in ("authorization", "proxy-authorization", "cookie", "set-cookie")
            safe[name] = REDACTED if sensitive else self(value)
        return safe


def redact_query(text: str) -> str:
    """`_SENSITIVE_QUERY.sub(name + REDACTED)`, trying the pattern only just before each `=`.

    Why: every request's URL is redacted before it is logged, and the pattern has no fixed first character, so
    `re` tries it at every position: a ServiceNow history read (200 sys_ids in its query) spent 0.8 ms on it.
    A match is a name of at most `_SENSITIVE_NAME_CHARS` characters, none of them `=`, then `=`: it can only
    start within that many characters before an `=` and after the `=` before that one. The leftmost match found
    there is the one `sub` finds next, and the pattern matched from its start gives it whole (its value may run
    over more `=`s, which then end no name: the search goes on after it, as `sub` does)."""
    parts: list[str] = []
    done = 0
    previous = -1
    equals = text.find("=")
    while equals >= 0:
        if equals >= done:
            start = max(done, previous + 1, equals - _SENSITIVE_NAME_CHARS)
            found = _SENSITIVE_QUERY.search(text, start, equals + 1)
            if found is not None:
                match = _SENSITIVE_QUERY.match(text, found.start())
                assert match is not None  # it matched up to this `=`; its value may be empty
                parts += (text[done : match.start()], match.group(1), REDACTED)
                done = match.end()
        previous, equals = equals, text.find("=", equals + 1)
    return "".join(parts) + text[done:] if parts else text


_LIVE_REDACTORS: weakref.WeakSet[Redactor] = weakref.WeakSet()


class RedactingFilter(logging.Filter):
    """Redacts every live HttpClient's secrets from a record's message, whoever logged it.

    httpx logs each request's full URL at INFO ("HTTP Request: GET https://...?q=<secret>"); this filter is
    installed on the `httpx` logger at import. Put it on a handler to cover every logger the handler serves.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = list(_LIVE_REDACTORS)
        if redactors:
            message = record.getMessage()
            for redactor in redactors:
                message = redactor(message)
            record.msg, record.args = message, None
        return True


logging.getLogger("httpx").addFilter(RedactingFilter())


def body_excerpt(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """A short, single-line, redacted excerpt of an error body (HTML bodies lose their tags).

    Redacted before it is cut, so a secret straddling the cut cannot leave a readable half behind.
    """
    try:
        text = redact(response.text)
    except Exception:  # undecodable bodies must not hide the real error
        return ""
    if "html" in response.headers.get("content-type", "").lower() or text.lstrip().startswith("<"):
        text = _TAGS.sub(" ", text)
    return clip(_SPACES.sub(" ", text).strip())


class HttpClient:
    """HTTP for one platform instance. See the module docstring for the retry and redaction rules."""

    def __init__(
        self,
        instance: str,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        secrets: Sequence[str] = (),
        options: HttpOptions = HttpOptions(),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        headers: Mapping[str, str] | None = None,
        on_exchange: Callable[[httpx.Request, httpx.Response], None] | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        allow_insecure_http: bool = False,
    ) -> None:
        """`stop` (set by SIGTERM/SIGINT) cuts every wait short; `sleep` defaults to waiting on it (else
        `time.sleep`); `clock` places `RateLimitedError.retry_at` on our time line. A plain http:// base URL
        is refused unless it is loopback or `allow_insecure_http` (see `check_base_url`)."""
        check_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self.instance = instance
        self.base_url = base_url.rstrip("/")
        self.options = options
        self.stats: collections.Counter[str] = collections.Counter()
        self._stop = stop
        if sleep is None:
            sleep = sleep_using_event(stop) if stop is not None else time.sleep
        self._sleep = sleep
        self._clock = clock
        self._on_exchange = on_exchange
        # The encoded Basic credentials are as secret as the token: a proxy may echo them in an error body.
        encoded = getattr(auth, "_auth_header", "").partition(" ")[2] if isinstance(auth, httpx.BasicAuth) else ""
        self._redact = Redactor([*secrets, encoded])
        _LIVE_REDACTORS.add(self._redact)
        self._has_auth = auth is not None
        self._not_before: datetime | None = None
        """No request of this client is sent before this moment (rate-limit pacing, Retry-After)."""
        base = urlsplit(self.base_url)
        self._origin = f"{base.scheme}://{base.netloc}"
        self._prefix = base.path.rstrip("/")
        self._client = httpx.Client(
            auth=auth,
            timeout=httpx.Timeout(options.timeout),
            transport=transport,
            headers={"Accept": "application/json", **(headers or {})},
            follow_redirects=False,
        )

    # -- public API ------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        read_only: bool = False,
    ) -> httpx.Response:
        """Send one request with retries; return any response that is not retried away or an auth failure.

        `read_only=True` marks a POST that only reads (Jira's JQL search), so it is retried like a GET: it
        cannot have changed anything on the server, whatever happened to it.
        """
        return self._request(method, url, params=params, json=json, headers=headers, read_only=read_only)

    def session(self) -> requests.Session:
        """A requests.Session (for zenpy and jira) whose every request goes through this client."""
        session = requests.Session()
        adapter = _ForwardingAdapter(self)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def redact(self, text: str) -> str:
        """Text for an error message a connector builds: secrets redacted, then cut to `EXCERPT_CHARS`."""
        return clip(self._redact(text))

    def redacted_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return self._redact.headers(headers)

    def close(self) -> None:
        self._client.close()

    # -- internals -------------------------------------------------------------------------------------------

    def absolute(self, url: str) -> str:
        """`url` on our base: relative paths are joined; absolute URLs elsewhere are re-based onto it."""
        if url.startswith(self.base_url + "/") or url == self.base_url:
            return url
        parts = urlsplit(url)
        if parts.scheme and parts.netloc:
            path = parts.path
            if self._prefix and (path == self._prefix or path.startswith(self._prefix + "/")):
                path = path[len(self._prefix) :]
        else:
            path = parts.path if parts.path.startswith("/") else "/" + parts.path
        rebased = f"{self._origin}{self._prefix}{path}"
        return f"{rebased}?{parts.query}" if parts.query else rebased

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_only: bool = False,
    ) -> httpx.Response:
        method = method.upper()
        request = self._client.build_request(
            method, self.absolute(url), params=params, json=json, content=content, headers=headers
        )
        safe_url = self._redact(str(request.url))
        where = f"{self.instance}: {method} {clip(safe_url)}"
        is_write = method in WRITE_METHODS and not read_only
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.options.max_attempts)),
            wait=self._wait,
            retry=retry_if_exception_type(_Retry),
            sleep=self._nap,
            before_sleep=lambda state: self._before_sleep(state, method, safe_url),
            reraise=True,
        )
        try:
            return retrying(self._attempt, request, method, safe_url, where, is_write)
        except _Interrupted:
            self.stats["interrupted"] += 1
            raise WaitInterruptedError(f"{where}: stop requested during a wait; request abandoned, not sent") from None
        except _Retry as exhausted:
            self.stats["exhausted"] += 1
            attempts = max(1, self.options.max_attempts)
            detail = exhausted.label
            if exhausted.response is not None and not is_write:  # never quote a body of a write
                excerpt = body_excerpt(exhausted.response, self._redact)
                detail += f": {excerpt}" if excerpt else ""
            message = f"{where} failed after {attempts} attempts: {detail}"
            if exhausted.wait is not None:
                # The platform said when it will take requests again; nothing may come sooner, next cycle included.
                raise RateLimitedError(message, self._hold(exhausted.wait)) from None
            raise TransientError(message) from None

    def _hold(self, seconds: float) -> datetime:
        """The platform asked for quiet: no request of this client goes out before now + `seconds`."""
        until = self._clock() + timedelta(seconds=seconds)
        if self._not_before is None or until > self._not_before:
            self._not_before = until
        return self._not_before

    def pause(self, seconds: float, what: str) -> None:
        """A connector's own wait between calls (following an asynchronous job): the same injected sleep, cut
        short by `stop` with WaitInterruptedError like every wait of this layer."""
        try:
            self._nap(seconds)
        except _Interrupted:
            raise WaitInterruptedError(f"{self.instance}: stop requested while {what}") from None

    def _nap(self, seconds: float) -> None:
        """Every wait of this layer: raises `_Interrupted` when `stop` is set before or during it."""
        if self._stop is not None and self._stop.is_set():
            raise _Interrupted
        self._sleep(seconds)
        if self._stop is not None and self._stop.is_set():
            raise _Interrupted

    def _attempt(
        self, request: httpx.Request, method: str, safe_url: str, where: str, is_write: bool
    ) -> httpx.Response:
        if self._not_before is not None:
            remaining = (self._not_before - self._clock()).total_seconds()
            if remaining > self.options.max_retry_after:
                self.stats["deferred"] += 1
                raise RateLimitedError(
                    f"{where}: the platform asked for quiet until {self._not_before.isoformat()}; not sent",
                    self._not_before,
                )
            self._not_before = None
            if remaining > 0:
                self.stats["paced"] += 1
                log.debug("%s: rate limit spent, pausing %.1f s", self.instance, remaining)
                self._nap(remaining)
        started = time.perf_counter()
        try:
            response = self._client.send(request)
        except httpx.TransportError as error:
            elapsed_ms = (time.perf_counter() - started) * 1000
            kind = type(error).__name__
            self.stats[f"{method} {kind}"] += 1
            log.debug(
                "%s %s -> %s in %d ms",
                method,
                safe_url,
                kind,
                elapsed_ms,
                extra={"instance": self.instance, "method": method, "url": safe_url, "status": kind},
            )
            # Only these guarantee the request never left us; anything later may have reached the server.
            connect_failed = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
            if is_write and not connect_failed:
                raise AmbiguousWriteError(f"{where}: {kind} after the request may have been sent") from None
            raise _Retry(kind) from None
        try:
            response.read()
        finally:
            response.close()
            _unbind(response)
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        self.stats[f"{method} {status}"] += 1
        log.debug(
            "%s %s -> %s in %d ms",
            method,
            safe_url,
            status,
            elapsed_ms,
            extra={
                "instance": self.instance,
                "method": method,
                "url": safe_url,
                "status": status,
                "elapsed_ms": round(elapsed_ms),
            },
        )
        if self._on_exchange is not None:
            try:
                self._on_exchange(request, response)
            except Exception:  # a broken recorder must not break the sync
                log.warning("%s: on_exchange hook failed", self.instance, exc_info=True)
        retry_after_given = status in RETRY_AFTER_STATUSES and "retry-after" in response.headers
        pause = rate_limit_wait(response.headers)
        if pause and not retry_after_given:  # a Retry-After wait already covers it: never wait twice
            self._hold(pause)
        if status in (401, 403):
            self.stats["auth_error"] += 1
            # A refusal's reason is what a person acts on, so it is quoted (redacted, cut) even for a write;
            # 5xx bodies of writes never are: a failing proxy may echo the request, handoff text included.
            excerpt = body_excerpt(response, self._redact)
            raise AuthError(f"{where}: HTTP {status} {excerpt}".rstrip(), status=status)
        if is_write and status >= 500:
            # The server may have applied it before failing (503 included): the caller must check first.
            wait = parse_retry_after(response.headers.get("retry-after"), response.headers.get("date"))
            if wait:
                self._hold(wait)  # and whatever comes next keeps to the platform's Retry-After
            raise AmbiguousWriteError(
                f"{where}: HTTP {status} {response.reason_phrase}; the write may have been applied"
            )
        if status in RETRY_AFTER_STATUSES:
            wait = parse_retry_after(response.headers.get("retry-after"), response.headers.get("date"))
            if wait is not None and wait > self.options.max_retry_after:
                self.stats["deferred"] += 1
                retry_at = self._hold(wait)
                raise RateLimitedError(
                    f"{where}: HTTP {status}, Retry-After {wait:.0f} s exceeds the "
                    f"{self.options.max_retry_after:.0f} s cap; retry at {retry_at.isoformat()}",
                    retry_at,
                )
            raise _Retry(f"HTTP {status}", response, wait)
        if status >= 500:
            raise _Retry(f"HTTP {status}", response)
        return response

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retry) and error.wait is not None:
            return min(error.wait, self.options.max_retry_after)
        exponential = self.options.backoff_base * 2 ** (state.attempt_number - 1)
        jitter = random.uniform(0, self.options.backoff_base)
        return min(self.options.backoff_max, exponential + jitter)

    def _before_sleep(self, state: RetryCallState, method: str, safe_url: str) -> None:
        error = state.outcome.exception() if state.outcome else None
        label = error.label if isinstance(error, _Retry) else type(error).__name__
        self.stats[f"retry {label.removeprefix('HTTP ')}"] += 1
        wait = state.next_action.sleep if state.next_action else 0.0
        log.debug("%s: %s %s: %s, retrying in %.1f s", self.instance, method, safe_url, label, wait)


class _ForwardingAdapter(requests.adapters.BaseAdapter):
    """Sends a requests.PreparedRequest through HttpClient and hands back a requests.Response."""

    def __init__(self, client: HttpClient) -> None:
        super().__init__()
        self._client = client

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _DROP_FORWARDED}
        if self._client._has_auth:
            # The HttpClient's own auth is authoritative; never send two Authorization headers.
            headers = {name: value for name, value in headers.items() if name.lower() != "authorization"}
        body = request.body
        content = body.encode("utf-8") if isinstance(body, str) else body
        reply = self._client._request(request.method or "GET", request.url or "", content=content, headers=headers)
        response = requests.Response()
        response.status_code = reply.status_code
        response.headers = requests.structures.CaseInsensitiveDict(
            {name: value for name, value in reply.headers.items() if name.lower() != "content-encoding"}
        )
        response._content = reply.content
        response._content_consumed = True
        response.encoding = reply.encoding
        response.reason = reply.reason_phrase
        response.url = str(reply.request.url)
        response.request = request
        return response

    def close(self) -> None:
        """The HttpClient owns the connection pool; it is closed with the client."""

"""Durable state: cursors, the write ledger, quarantine and escalation history (SQLite or PostgreSQL).

`open_store(url)` is the one entry point: the daemon passes `[state] url` from its config and gets a `Store`.

- ``sqlite:///relative/path.sqlite3`` (relative to the working directory), ``sqlite:////absolute/path.sqlite3``
  (four slashes: the path itself starts with ``/``), or ``sqlite:///:memory:`` (tests, dry runs).
- ``postgresql://user@host/db`` or ``postgres://...``: every libpq URL option works, e.g.
  ``?options=-csearch_path%3Dmyschema`` keeps the tables in schema ``myschema`` (which must exist).

Errors a user can hit (bad URL, unwritable file, server refusing) raise `StoreError` naming the URL with any
password replaced by ``***``; a malformed URL raises `StoreUrlError`, which is also a `ValueError`.

Layout: state/base.py is the `Store` contract, state/sql.py implements it once in SQL, and state/sqlite.py and
state/postgres.py add only what each database does its own way (connection, settings, migrations, time types).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

from state.base import Intent, IntentState, QuarantinedRecord, Store

__all__ = [
    "Intent",
    "IntentState",
    "LeaseLostError",
    "QuarantinedRecord",
    "Store",
    "StoreError",
    "StoreUrlError",
    "UnknownIntentError",
    "as_utc",
    "open_store",
    "redact_url",
    "scrub",
]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class StoreError(Exception):
    """The state store cannot be opened or used; the message names the (redacted) URL and what to fix."""


class StoreUrlError(StoreError, ValueError):
    """The state URL itself is malformed or names a scheme we do not support."""


class LeaseLostError(StoreError):
    """This daemon no longer holds the lease of the instance it was writing for (another daemon took it over
    after the TTL, or it was released): the write was refused, and the cycle must stop and step back."""


class UnknownIntentError(StoreError, KeyError):
    """An intent key that was never recorded: a caller bug, so it is loud rather than ignored."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def redact_url(url: str) -> str:
    """The URL with any password (in the userinfo or a ``password=`` query option) replaced by ``***``.

    Used for every message that names a URL: a store URL may carry credentials and messages end up in logs.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparseable (e.g. a broken IPv6 literal): hide anything between "://user:" and "@" by hand.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query and "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    # Edit the text in place rather than urlunsplit(), which would turn "sqlite:///x" into "sqlite:/x".
    redacted = url.replace("//" + parts.netloc, "//" + netloc, 1) if netloc != parts.netloc else url
    return redacted.replace("?" + parts.query, "?" + query, 1) if query != parts.query else redacted


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password (if any) removed, for driver messages we pass on to the user."""
    secrets: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            secrets.append(parts.password)
        secrets += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    except ValueError:
        pass
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def open_store(url: str) -> Store:
    """Open (creating and migrating if needed) the store named by `url`."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise StoreUrlError(
            f"state URL {redact_url(url)!r} has no scheme: use sqlite:///path.sqlite3 or postgresql://host/db"
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        if url[: len(_SQLITE_PREFIX)].lower() != _SQLITE_PREFIX:
            raise StoreUrlError(
                f"state URL {redact_url(url)!r}: a SQLite URL is sqlite:///relative/path, "
                "sqlite:////absolute/path or sqlite:///:memory:"
            )
        from state.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in _POSTGRES_SCHEMES:
        from state.postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise StoreUrlError(
        f"state URL {redact_url(url)!r}: unsupported scheme {scheme!r} (use sqlite, postgresql or postgres)"
    )


def as_utc(value: datetime, what: str = "time") -> datetime:
    """`value` as an aware UTC datetime; a naive one is refused (its zone would be a guess)."""
    if value.tzinfo is UTC:  # most times are UTC already: no conversion, no copy
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)

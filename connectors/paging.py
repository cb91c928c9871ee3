"""Pagination strategies, as small named objects a connector composes.

Each knows how one kind of export moves from page to page and refuses a position that does not advance while the
platform says there is more: following it would re-read the same page for ever (a platform bug, a proxy serving a
stale page, a burst of changes inside one second), so it is a ConnectorError naming the instance and the position,
not a silent loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.base import ConnectorError, TransientError


class StuckCursorError(ConnectorError):
    """A page said there is more but handed back a position that does not advance."""


@dataclass(frozen=True)
class CursorExport:
    """An opaque-cursor export (Zendesk's cursor-based incremental exports): `after_cursor` until
    `end_of_stream`. A cursor equal to the one just used, with more to come, is refused."""

    instance: str
    what: str

    def next_cursor(self, used: str | None, after: str | None, end_of_stream: bool) -> str:
        cursor = after or used
        if not cursor:
            raise TransientError(f"{self.instance}: {self.what}: the page has no cursor to resume from")
        if not end_of_stream and used is not None and cursor == used:
            raise StuckCursorError(
                f"{self.instance}: {self.what}: cursor {cursor[:60]!r} did not advance although more pages remain"
            )
        return cursor


@dataclass(frozen=True)
class TimeExport:
    """A time-based export (Zendesk's incremental ticket event export): the next `start_time` is the page's
    `end_time`; the page at `end_time` is read again, so items of that second are de-duplicated by id. A full
    page whose `end_time` is not after its `start_time` is refused (every item in one second, or a bad answer)."""

    instance: str
    what: str

    def next_start(self, start: int, end_time: object, end_of_stream: bool) -> int:
        if isinstance(end_time, bool) or not isinstance(end_time, int):
            raise ConnectorError(f"{self.instance}: {self.what}: end_time {end_time!r} is not an epoch time")
        if not end_of_stream and end_time <= start:
            raise StuckCursorError(
                f"{self.instance}: {self.what}: start_time {start} did not advance (end_time {end_time}) although "
                "more pages remain"
            )
        return max(start, end_time)


@dataclass(frozen=True)
class Keyset:
    """A keyset-paged query (ServiceNow `sys_updated_on, sys_id`; Jira `updated, key` searches): the next page
    starts after the last key handed out. A full page whose last key is not after the position it started from
    is refused: the next query would be the same query."""

    instance: str
    what: str

    def next_key(self, used: tuple[str, ...], last: tuple[str, ...], has_more: bool) -> tuple[str, ...]:
        if has_more and last <= used:
            raise StuckCursorError(
                f"{self.instance}: {self.what}: position {'|'.join(used)!r} did not advance although more pages remain"
            )
        return last

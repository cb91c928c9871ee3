"""Business calendars: every piece of time arithmetic the engine does lives here.

A calendar answers two questions: how much business time lies between two instants, and which instant is a
given amount of business time after another. Working hours are defined in the calendar's local wall time
(zoneinfo), so a 09:00-17:00 day stays 09:00-17:00 across a DST change; the instants are then converted to UTC
and all arithmetic happens on UTC datetimes, which makes a 23- or 25-hour local day come out right.

Speed matters (the engine evaluates tens of thousands of tickets a second), so the calendar never walks minute
by minute: it computes, once per local day, the day's business intervals in UTC, lays the intervals of a span
of days end to end with the running total of business time before and after each, and then answers both
questions with one bisection over instants (no time zone conversion per instant). Holiday lookups are cached
per year.

Three shapes share one class:
- a zone calendar: weekly hours (several intervals a day allowed) in one time zone, minus holidays taken from
  the `holidays` package (country and optional subdivision) and custom dates;
- a 24x7 calendar (`BusinessCalendar.always`), where business time is wall time;
- a follow-the-sun calendar (`BusinessCalendar.union`): business time whenever any member calendar is open.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays as holidays_lib

ZERO = timedelta(0)
DAY = timedelta(days=1)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_SEARCH_DAYS = 366 * 20
"""add_business_time gives up after this many days without business hours (a calendar that is never open)."""

Interval = tuple[datetime, datetime]
DayHours = tuple[tuple[int, int], ...]
"""One weekday's working hours as (start minute, end minute) pairs in local wall time; end may be 1440."""


def parse_hours(spec: str) -> tuple[int, int]:
    """Turn "09:00-17:30" into minutes (540, 1050). "24:00" is allowed as an end. Raises ValueError."""
    try:
        start_text, end_text = (part.strip() for part in spec.split("-"))
        start, end = _minutes(start_text), _minutes(end_text)
    except ValueError:
        raise ValueError(f"{spec!r} is not a range like 09:00-17:00") from None
    if not start < end:
        raise ValueError(f"{spec!r}: the end must come after the start (use 00:00-24:00 for a whole day)")
    return start, end


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    value = int(hours) * 60 + int(minutes or "0")
    if not 0 <= value <= 1440 or not 0 <= int(minutes or "0") < 60:
        raise ValueError(text)
    return value


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    merged: list[list[datetime]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
        else:
            merged.append([start, end])
    return tuple((start, end) for start, end in merged)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the engine works with timezone-aware UTC times")
    return moment.astimezone(UTC)


class BusinessCalendar:
    """A named calendar of business time. Build with the constructor, `always()` or `union()`."""

    def __init__(
        self,
        name: str,
        tz: str | ZoneInfo = "UTC",
        weekly: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        *,
        holiday_country: str | None = None,
        holiday_subdivision: str | None = None,
        custom_holidays: Iterable[date] = (),
    ) -> None:
        self.name = name
        self.zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        weekly = weekly or {}
        unknown = set(weekly) - set(WEEKDAYS)
        if unknown:
            raise ValueError(f"unknown weekday(s) {sorted(unknown)}; use {', '.join(WEEKDAYS)}")
        self.weekly: tuple[DayHours, ...] = tuple(tuple(sorted(weekly.get(day, ()))) for day in WEEKDAYS)
        if not any(self.weekly):
            raise ValueError(f"calendar {name!r} has no working hours on any day")
        self.holiday_country = holiday_country
        self.holiday_subdivision = holiday_subdivision
        self.custom_holidays = frozenset(custom_holidays)
        self._always = False
        self._members: tuple[BusinessCalendar, ...] = ()
        self._days: dict[int, tuple[tuple[Interval, ...], timedelta]] = {}
        # Every business interval of the days _first.._last (see `_cover`), flat and in order, with the running
        # total of business time before and after each: measuring or adding a span of months costs a
        # bisection over instants, with no time zone conversion and no walk over days.
        self._first = self._last = 0
        self._covered: tuple[datetime, datetime] | None = None
        """From the start of day _first to the start of day _last + 1 (UTC); None until first used."""
        self._starts: list[datetime] = []
        self._ends: list[datetime] = []
        self._before: list[timedelta] = []
        self._after: list[timedelta] = []
        self._ordinals: dict[datetime, int] = {}
        self._positions: dict[datetime, timedelta] = {}
        self._holiday_years: dict[int, frozenset[date]] = {}
        if holiday_country:
            # Fail at load, not mid-cycle, on an unknown country or subdivision.
            holidays_lib.country_holidays(holiday_country, subdiv=holiday_subdivision, years=2000)

    @classmethod
    def always(cls, name: str = "24x7") -> BusinessCalendar:
        """Open every minute of every day: business time equals wall time."""
        calendar = cls(name, "UTC", {day: [(0, 1440)] for day in WEEKDAYS})
        calendar._always = True
        return calendar

    @classmethod
    def union(cls, name: str, members: Sequence[BusinessCalendar]) -> BusinessCalendar:
        """Follow-the-sun: open whenever at least one member is open. Days are counted in UTC."""
        if not members:
            raise ValueError(f"follow-the-sun calendar {name!r} needs at least one member calendar")
        calendar = cls(name, "UTC", {day: [(0, 1440)] for day in WEEKDAYS})
        calendar._members = tuple(members)
        calendar._always = all(member._always for member in members)
        return calendar

    @property
    def is_always(self) -> bool:
        return self._always

    def __repr__(self) -> str:
        return f"BusinessCalendar({self.name!r})"

    # -- holidays and days -----------------------------------------------------------------------------------

    def is_holiday(self, day: date) -> bool:
        if day in self.custom_holidays:
            return True
        if not self.holiday_country:
            return False
        year = self._holiday_years.get(day.year)
        if year is None:
            table = holidays_lib.country_holidays(self.holiday_country, subdiv=self.holiday_subdivision, years=day.year)
            year = self._holiday_years[day.year] = frozenset(table.keys())
        return day in year

    def _day_of(self, moment: datetime) -> int:
        """The ordinal of the day (in this calendar's day zone) that contains `moment` (a UTC datetime)."""
        if self._members:
            return moment.toordinal()
        # Memoized (small: the repeats are `now` within a cycle and a ticket's times across its clocks),
        # because astimezone is the slow part.
        ordinal = self._ordinals.get(moment)
        if ordinal is None:
            if len(self._ordinals) > 2048:
                self._ordinals.clear()
            ordinal = self._ordinals[moment] = moment.astimezone(self.zone).toordinal()
        return ordinal

    def day(self, ordinal: int) -> tuple[tuple[Interval, ...], timedelta]:
        """The business intervals (UTC, merged, sorted) of one day and their total, cached."""
        cached = self._days.get(ordinal)
        if cached is not None:
            return cached
        intervals = self._union_day(ordinal) if self._members else self._zone_day(ordinal)
        total = sum((end - start for start, end in intervals), ZERO)
        result = self._days[ordinal] = (intervals, total)
        return result

    def _zone_day(self, ordinal: int) -> tuple[Interval, ...]:
        local = date.fromordinal(ordinal)
        hours = self.weekly[local.weekday()]
        if not hours or self.is_holiday(local):
            return ()
        found = []
        for start_min, end_min in hours:
            start = self._local_to_utc(local, start_min)
            end = self._local_to_utc(local, end_min)
            found.append((start, end))
        return _merge(found)

    def _local_to_utc(self, local: date, minute: int) -> datetime:
        if minute >= 1440:
            local = local + DAY
            minute -= 1440
        # A wall time that does not exist (spring forward) maps through the offset before the change, a
        # repeated one (fall back) to its first occurrence: zoneinfo's fold=0 behaviour, good enough for hours.
        wall = datetime.combine(local, time(minute // 60, minute % 60), tzinfo=self.zone)
        return wall.astimezone(UTC)

    def _union_day(self, ordinal: int) -> tuple[Interval, ...]:
        day_start = datetime.combine(date.fromordinal(ordinal), time(0), tzinfo=UTC)
        day_end = day_start + DAY
        found: list[Interval] = []
        for member in self._members:
            # Zones lie within +-14 h of UTC, so a UTC day touches at most three local days of a member.
            for member_day in (ordinal - 1, ordinal, ordinal + 1):
                for start, end in member.day(member_day)[0]:
                    start, end = max(start, day_start), min(end, day_end)
                    if start < end:
                        found.append((start, end))
        return _merge(found)

    # -- running totals -------------------------------------------------------------------------------------

    def _day_start(self, ordinal: int) -> datetime:
        """The instant (UTC) the day `ordinal` starts in this calendar's day zone."""
        if self._members:
            return datetime.combine(date.fromordinal(ordinal), time(0), tzinfo=UTC)
        return self._local_to_utc(date.fromordinal(ordinal), 0)

    def _cover(self, moment: datetime) -> None:
        """Extend the running totals to the days around `moment`: a year either side on first use, a year
        further back when reaching back (the totals then start again from the new first day, so memoized
        positions are dropped), a month further on when reaching forward (earlier totals stay as they are)."""
        covered = self._covered
        if covered is not None and covered[0] <= moment < covered[1]:
            return
        ordinal = self._day_of(moment)
        if covered is None or moment < covered[0]:
            first = ordinal - 366
            last = max(ordinal + 366, self._last) if covered is not None else ordinal + 366
            self._starts, self._ends, self._before, self._after = [], [], [], []
            self._positions.clear()  # measured from the old first day
            self._first, self._last = first, first - 1
            self._append_days(last)
        else:
            self._append_days(ordinal + 30)

    def _append_days(self, last: int) -> None:
        """Add the intervals of the days after `_last` up to `last` to the running totals."""
        starts, ends, before, after = self._starts, self._ends, self._before, self._after
        total = after[-1] if after else ZERO
        for ordinal in range(self._last + 1, last + 1):
            for start, end in self.day(ordinal)[0]:
                starts.append(start)
                ends.append(end)
                before.append(total)
                total += end - start
                after.append(total)
        self._last = last
        self._covered = (self._day_start(self._first), self._day_start(last + 1))

    # -- the two questions ----------------------------------------------------------------------------------

    def _position(self, moment: datetime) -> timedelta:
        """Business time from the start of day `_first` to `moment`: a monotonic clock of business time.

        Memoized, small, because `now` and a ticket's creation are measured for several clocks.
        """
        position = self._positions.get(moment)
        if position is None:
            covered = self._covered
            if covered is None or not covered[0] <= moment < covered[1]:
                self._cover(moment)
            # The last interval starting at or before `moment`: all of it if it ended by then, else up to it.
            index = bisect_right(self._starts, moment) - 1
            if index < 0:
                position = ZERO
            elif self._ends[index] <= moment:
                position = self._after[index]
            else:
                position = self._before[index] + (moment - self._starts[index])
            if len(self._positions) > 2048:
                self._positions.clear()
            self._positions[moment] = position
        return position

    def business_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Business time in [start, end); zero if end is not after start."""
        if start.tzinfo is not UTC:
            start = _utc(start)
        if end.tzinfo is not UTC:
            end = _utc(end)
        if end <= start:
            return ZERO
        if self._always:
            return end - start
        # start first: reaching back may restart the totals, reaching forward (end) never does.
        low = self._position(start)
        return self._position(end) - low

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """The earliest instant at which `duration` of business time has passed since `start`.

        A zero duration returns `start` itself, even outside business hours ("due immediately").
        """
        if start.tzinfo is not UTC:
            start = _utc(start)
        if duration <= ZERO:
            return start
        if self._always:
            return start + duration
        goal = self._position(start) + duration
        while not self._after or self._after[-1] < goal:
            if self._last - self._day_of(start) > _MAX_SEARCH_DAYS:
                raise ValueError(f"calendar {self.name!r}: no business time found within {_MAX_SEARCH_DAYS} days")
            self._append_days(self._last + 31)
        # The first interval whose end-of-interval total reaches the goal holds the answer.
        index = bisect_left(self._after, goal)
        return self._starts[index] + (goal - self._before[index])


def weekly_from_spec(spec: Mapping[str, Sequence[str]]) -> dict[str, list[tuple[int, int]]]:
    """Expand a config `hours` table: keys mon..sun, plus "weekdays" (mon-fri), "weekend" and "daily"."""
    groups = {"weekdays": WEEKDAYS[:5], "weekend": WEEKDAYS[5:], "daily": WEEKDAYS}
    weekly: dict[str, list[tuple[int, int]]] = {}
    # Group keys first, then single days override them ("weekdays" 9-17 but "fri" 9-15).
    for key in sorted(spec, key=lambda k: k not in groups):
        days = groups.get(key, (key,))
        ranges = [parse_hours(text) for text in spec[key]]
        for day in days:
            if day not in WEEKDAYS:
                raise ValueError(f"unknown day {key!r}; use mon..sun, weekdays, weekend or daily")
            weekly[day] = ranges
    return weekly


def format_duration(delta: timedelta) -> str:
    """Short human form used in reasons and reports: "2h30m", "45m", "72h", "-1h05m".

    No days: business durations ("24h" of business time is three working days) read wrong as "1d".
    """
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours:
        return f"{sign}{hours}h{minutes:02d}m" if minutes else f"{sign}{hours}h"
    if minutes:
        return f"{sign}{minutes}m"
    return f"{sign}{seconds % 60}s" if seconds else "0m"

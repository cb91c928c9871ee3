"""Business calendars: weekly hours in local wall time, DST, holidays, 24x7 and follow-the-sun unions.

Expected values are worked out by hand from the calendar definitions (Berlin is UTC+1 in winter and UTC+2 in
summer; the EU changes on the last Sunday of March and October at 01:00 UTC; New York changes on the second
Sunday of March; Singapore is UTC+8 all year).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from engine.calendar import BusinessCalendar, format_duration, parse_hours, weekly_from_spec


def u(month: int, day: int, hour: int = 0, minute: int = 0, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


H = timedelta(hours=1)
BERLIN = BusinessCalendar(
    "berlin",
    "Europe/Berlin",
    weekly_from_spec({"weekdays": ["09:00-17:00"]}),
    holiday_country="DE",
    holiday_subdivision="BE",
    custom_holidays=[date(2026, 12, 24)],
)
SPLIT = BusinessCalendar("split", "UTC", weekly_from_spec({"weekdays": ["09:00-12:30", "13:30-17:00"]}))
DAILY_BERLIN = BusinessCalendar("daily", "Europe/Berlin", weekly_from_spec({"daily": ["00:00-24:00"]}))
ALWAYS = BusinessCalendar.always("24x7")
EMEA = BusinessCalendar("emea", "Europe/London", weekly_from_spec({"weekdays": ["08:00-16:00"]}), holiday_country="GB")
AMER = BusinessCalendar(
    "amer", "America/New_York", weekly_from_spec({"weekdays": ["08:00-16:00"]}), holiday_country="US"
)
APAC = BusinessCalendar("apac", "Asia/Singapore", weekly_from_spec({"weekdays": ["08:00-16:00"]}), holiday_country="SG")
SUN = BusinessCalendar.union("follow_the_sun", [EMEA, AMER, APAC])


@pytest.mark.parametrize(
    ("case", "calendar", "start", "end", "expected"),
    [
        ("within one day (Berlin winter, 08-16 UTC)", BERLIN, u(11, 24, 9), u(11, 24, 12), 3 * H),
        ("starts before opening", BERLIN, u(11, 24, 5), u(11, 24, 10), 2 * H),
        ("overnight", BERLIN, u(11, 24, 15), u(11, 25, 9), 2 * H),
        ("over a weekend", BERLIN, u(11, 27, 15), u(11, 30, 9), 2 * H),
        ("created Saturday, outside hours", BERLIN, u(11, 28, 10), u(11, 30, 10), 2 * H),
        ("whole weekend only", BERLIN, u(11, 28, 0), u(11, 30, 0), timedelta(0)),
        ("Christmas holidays + custom 24 Dec", BERLIN, u(12, 23, 15), u(12, 28, 9), 2 * H),
        ("31 Dec is a workday, New Year's Day is not", BERLIN, u(12, 31, 0), u(1, 2, 0, year=2027), 8 * H),
        ("DST spring forward: Fri 08-16 UTC, Mon 07-15 UTC", BERLIN, u(3, 27, 15), u(3, 30, 8), 2 * H),
        ("DST fall back: Fri 07-15 UTC, Mon 08-16 UTC", BERLIN, u(10, 23, 14), u(10, 26, 9), 2 * H),
        ("23-hour local day at spring forward", DAILY_BERLIN, u(3, 28, 23), u(3, 29, 22), 23 * H),
        ("25-hour local day at fall back", DAILY_BERLIN, u(10, 24, 22), u(10, 25, 23), 25 * H),
        ("two intervals a day, lunch excluded", SPLIT, u(11, 24, 12), u(11, 24, 14), timedelta(minutes=60)),
        ("24x7 is wall time", ALWAYS, u(11, 27, 15), u(11, 30, 9), 66 * H),
        ("follow-the-sun weekday 00-21 UTC", SUN, u(11, 23, 0), u(11, 24, 0), 21 * H),
        ("follow-the-sun over a weekend", SUN, u(11, 27, 0), u(11, 30, 0), 21 * H),
        ("follow-the-sun, US Thanksgiving closes NY", SUN, u(11, 26, 0), u(11, 27, 0), 16 * H),
        ("end before start", BERLIN, u(11, 24, 12), u(11, 24, 9), timedelta(0)),
    ],
)
def test_business_time_between(case, calendar, start, end, expected):
    assert calendar.business_time_between(start, end) == expected, case


@pytest.mark.parametrize(
    ("case", "calendar", "start", "duration", "expected"),
    [
        ("same day", BERLIN, u(11, 24, 9), 2 * H, u(11, 24, 11)),
        ("rolls to next morning", BERLIN, u(11, 24, 15), 2 * H, u(11, 25, 9)),
        ("Friday evening to Monday", BERLIN, u(11, 27, 15), 2 * H, u(11, 30, 9)),
        ("from Saturday", BERLIN, u(11, 28, 12), 30 * timedelta(minutes=1), u(11, 30, 8, 30)),
        ("exactly to closing", BERLIN, u(11, 24, 8), 8 * H, u(11, 24, 16)),
        ("over Christmas", BERLIN, u(12, 23, 15), 2 * H, u(12, 28, 9)),
        ("over spring-forward weekend", BERLIN, u(3, 27, 15), 2 * H, u(3, 30, 8)),
        ("zero stays put even outside hours", BERLIN, u(11, 28, 12), timedelta(0), u(11, 28, 12)),
        ("skips lunch", SPLIT, u(11, 24, 12), timedelta(minutes=60), u(11, 24, 14)),
        ("24x7", ALWAYS, u(11, 27, 15), 66 * H, u(11, 30, 9)),
        ("follow-the-sun Friday night to Monday", SUN, u(11, 27, 20), 2 * H, u(11, 30, 1)),
        ("many days", BERLIN, u(11, 2, 8), 80 * H, u(11, 13, 16)),
    ],
)
def test_add_business_time(case, calendar, start, duration, expected):
    assert calendar.add_business_time(start, duration) == expected, case
    assert calendar.business_time_between(start, expected) == duration, case


def test_non_utc_inputs_are_converted():
    from zoneinfo import ZoneInfo

    local = datetime(2026, 11, 24, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert BERLIN.business_time_between(local, u(11, 24, 12)) == 3 * H


def test_naive_datetime_is_rejected():
    with pytest.raises(ValueError, match="naive"):
        BERLIN.business_time_between(datetime(2026, 1, 1), u(1, 2))


def test_holidays_are_looked_up_once_per_year(monkeypatch):
    import engine.calendar as module

    calls: list[int] = []
    real = module.holidays_lib.country_holidays

    def counting(country, subdiv=None, years=None):
        calls.append(years)
        return real(country, subdiv=subdiv, years=years)

    monkeypatch.setattr(module.holidays_lib, "country_holidays", counting)
    calendar = BusinessCalendar(
        "de", "Europe/Berlin", weekly_from_spec({"weekdays": ["09:00-17:00"]}), holiday_country="DE"
    )
    calls.clear()  # the construction-time check
    for _ in range(3):
        calendar.business_time_between(u(1, 1), u(12, 31))
        calendar.add_business_time(u(6, 1), timedelta(hours=500))
    assert sorted(calls) == sorted(set(calls))
    assert calendar.is_holiday(date(2026, 10, 3))  # German Unity Day
    assert not calendar.is_holiday(date(2026, 10, 2))


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"weekdays": ["17:00-09:00"]}, "end must come after"),
        ({"weekdays": ["9-5pm"]}, "not a range"),
        ({"funday": ["09:00-17:00"]}, "unknown day"),
        ({"mon": ["25:00-26:00"]}, "not a range"),
    ],
)
def test_bad_hours(spec, error):
    with pytest.raises(ValueError, match=error):
        weekly_from_spec(spec)


def test_calendar_without_hours_is_rejected():
    with pytest.raises(ValueError, match="no working hours"):
        BusinessCalendar("never", "UTC", {})


def test_unknown_holiday_country_fails_at_construction():
    with pytest.raises(NotImplementedError):
        BusinessCalendar("x", "UTC", weekly_from_spec({"daily": ["00:00-24:00"]}), holiday_country="XX")


def test_weekday_override_of_group():
    weekly = weekly_from_spec({"weekdays": ["09:00-17:00"], "fri": ["09:00-15:00"]})
    assert weekly["mon"] == [(540, 1020)]
    assert weekly["fri"] == [(540, 900)]
    assert parse_hours("00:00-24:00") == (0, 1440)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(hours=2, minutes=30), "2h30m"),
        (timedelta(minutes=45), "45m"),
        (timedelta(hours=72), "72h"),
        (timedelta(hours=-1, minutes=-5), "-1h05m"),
        (timedelta(0), "0m"),
        (timedelta(seconds=20), "20s"),
    ],
)
def test_format_duration(delta, text):
    assert format_duration(delta) == text


def test_results_do_not_depend_on_query_order():
    def fresh() -> BusinessCalendar:
        return BusinessCalendar(
            "de", "Europe/Berlin", weekly_from_spec({"weekdays": ["09:00-17:00"]}), holiday_country="DE"
        )

    spans = [(u(3, 1, year=2027), u(5, 1, year=2027)), (u(1, 5, year=2024), u(2, 1, year=2024)), (u(11, 2), u(12, 24))]
    forward, backward = fresh(), fresh()
    expected = [forward.business_time_between(a, b) for a, b in spans]
    assert [backward.business_time_between(a, b) for a, b in reversed(spans)] == expected[::-1]
    assert backward.add_business_time(u(1, 5, year=2024), 100 * H) == fresh().add_business_time(
        u(1, 5, year=2024), 100 * H
    )


def _open_minutes(calendar: BusinessCalendar, start: datetime, minutes: int) -> list[bool]:
    """Whether each minute from `start` on is business time, from the calendar's definition read minute by
    minute in local wall time (boundaries are whole minutes, so a minute is open or closed as a whole)."""
    flags = []
    for offset in range(minutes):
        local = (start + timedelta(minutes=offset)).astimezone(calendar.zone)
        minute = local.hour * 60 + local.minute
        hours = calendar.weekly[local.weekday()]
        flags.append(not calendar.is_holiday(local.date()) and any(a <= minute < b for a, b in hours))
    return flags


@pytest.mark.parametrize("calendar", [BERLIN, SPLIT, DAILY_BERLIN, SUN], ids=lambda calendar: calendar.name)
def test_business_time_between_matches_a_minute_by_minute_count(calendar: BusinessCalendar) -> None:
    """Random spans over two weeks around the spring DST change (and a union's overlapping members), at odd
    seconds: the running totals and the day's intervals (engine.calendar._position) give exactly the count."""
    import random

    base = u(3, 22)
    minutes = 14 * 24 * 60
    if calendar is SUN:
        members = [_open_minutes(member, base, minutes) for member in (EMEA, AMER, APAC)]
        open_at = [any(flag) for flag in zip(*members, strict=True)]
    else:
        open_at = _open_minutes(calendar, base, minutes)
    prefix = [0]
    for flag in open_at:
        prefix.append(prefix[-1] + flag)

    def position(moment: datetime) -> timedelta:
        index, rest = divmod(moment - base, timedelta(minutes=1))
        return timedelta(minutes=prefix[index]) + (rest if open_at[index] else timedelta(0))

    rng = random.Random(calendar.name)
    for _ in range(300):
        start, end = sorted(base + timedelta(seconds=rng.randrange(minutes * 60 - 1)) for _ in range(2))
        assert calendar.business_time_between(start, end) == position(end) - position(start), (start, end)


def test_answers_do_not_depend_on_what_was_asked_before() -> None:
    """The running totals start around the first instant asked about and grow both ways (a reach years back
    starts them again from there): the same question gets the same answer before and after such reaches, and
    the same as on a calendar asked nothing else."""
    spec = weekly_from_spec({"weekdays": ["08:00-12:00", "13:00-17:00"], "sat": ["00:00-24:00"]})

    def calendar() -> BusinessCalendar:
        return BusinessCalendar("ny", "America/New_York", spec, holiday_country="US")

    questions = [
        (u(3, 6, 15), u(3, 10, 14)),  # across the spring DST change
        (u(10, 30, 20), u(11, 3, 13)),  # across the autumn one
        (u(12, 24, 9), u(1, 5, 9, year=2027)),  # across holidays and the year's end
    ]
    fresh = [(calendar().business_time_between(a, b), calendar().add_business_time(a, 30 * H)) for a, b in questions]
    asked = calendar()
    for reach in (u(6, 1), u(1, 1, year=2021), u(6, 1, year=2030), u(1, 1, year=2019), u(3, 8, 7)):
        asked.business_time_between(reach, reach + 50 * H)
        answers = [(asked.business_time_between(a, b), asked.add_business_time(a, 30 * H)) for a, b in questions]
        assert answers == fresh

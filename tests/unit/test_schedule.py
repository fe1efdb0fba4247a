"""Tests for reconciler.schedule: ZLayer's cron dialect (Rust crate ``cron`` 0.15).

Every entry of ACCEPTED and REJECTED was checked against the reference parser
(zlayer 0.12.10, ``zlayer.validate_spec``); the oracle is not needed to run these tests.
Expected fire times were worked out by hand from a calendar (weekdays noted in comments).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from reconciler.errors import ScheduleError, ZlayerError
from reconciler.schedule import CronSchedule, parse_cron


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


FRI_1000 = utc(2026, 11, 20, 10, 0, 0)  # Friday 2026-11-20 10:00:00 UTC

# --- fire times --------------------------------------------------------------------------

FIRST_FIRES = [
    # weekdays at 09:00; Friday's 09:00 is past, Sat 21 and Sun 22 are skipped
    ("0 0 9 * * MON-FRI", FRI_1000, utc(2026, 11, 23, 9)),
    # day-of-week 1 is Sunday: the next Sunday is 2026-11-22
    ("0 30 * * * 1", FRI_1000, utc(2026, 11, 22, 0, 30)),
    ("0 30 * * * SUN", FRI_1000, utc(2026, 11, 22, 0, 30)),
    # day-of-week 7 is Saturday (in crontab 7 would be Sunday)
    ("0 0 12 * * 7", FRI_1000, utc(2026, 11, 21, 12)),
    ("0 0 12 * * SAT", FRI_1000, utc(2026, 11, 21, 12)),
    # the year field
    ("0 0 0 1 1 * 2027", FRI_1000, utc(2027, 1, 1)),
    ("0 0 0 1 1 * 2030-2040/5", FRI_1000, utc(2030, 1, 1)),
    # shorthands; @weekly is Sunday midnight, the crate's day-of-week 1
    ("@hourly", FRI_1000, utc(2026, 11, 20, 11)),
    ("@daily", FRI_1000, utc(2026, 11, 21)),
    ("@weekly", FRI_1000, utc(2026, 11, 22)),
    ("@monthly", FRI_1000, utc(2026, 12, 1)),
    ("@yearly", FRI_1000, utc(2027, 1, 1)),
    (" @daily ", FRI_1000, utc(2026, 11, 21)),
    # month names: January and July
    ("0 0 0 1 JAN,JUL *", FRI_1000, utc(2027, 1, 1)),
    ("0 0 0 1 july *", FRI_1000, utc(2027, 7, 1)),
    # day-of-month AND day-of-week must match (crontab would fire on either):
    # Friday the 13th after 2026-11-20 is 2027-08-13 (Nov 13 2026 is already past)
    ("0 0 0 13 * FRI", FRI_1000, utc(2027, 8, 13)),
    ("0 0 0 13 * 6", FRI_1000, utc(2027, 8, 13)),
    # Feb 29 only in leap years
    ("0 0 0 29 2 *", FRI_1000, utc(2028, 2, 29)),
    # ? is * in day-of-month and day-of-week
    ("0 0 12 ? * ?", FRI_1000, utc(2026, 11, 20, 12)),
    # a point with a step runs to the field's end: seconds 50, 55 only
    ("50/5 * * * * *", FRI_1000, utc(2026, 11, 20, 10, 0, 50)),
    # fields need no separating spaces: six stars fire every second
    ("******", FRI_1000, utc(2026, 11, 20, 10, 0, 1)),
    # the last possible fire time: 2100 is the crate's last year (2100-12-31 is a Friday)
    ("0 0 0 31 12 * 2100", FRI_1000, utc(2100, 12, 31)),
    ("59 59 23 31 12 FRI 2100", FRI_1000, utc(2100, 12, 31, 23, 59, 59)),
]


@pytest.mark.parametrize(("text", "after", "expected"), FIRST_FIRES)
def test_next_after(text: str, after: datetime, expected: datetime) -> None:
    assert parse_cron(text).next_after(after) == expected


SEQUENCES = [
    # every 15 seconds
    (
        "*/15 * * * * *",
        [utc(2026, 11, 20, 10, 0, s) for s in (15, 30, 45)] + [utc(2026, 11, 20, 10, 1)],
    ),
    # 1-7/2 = 1,3,5,7 = Sun, Tue, Thu, Sat: Sat 21, Sun 22, Tue 24, Thu 26
    ("0 0 12 * * 1-7/2", [utc(2026, 11, d, 12) for d in (21, 22, 24, 26)]),
    ("0 0 12 * * */2", [utc(2026, 11, d, 12) for d in (21, 22, 24, 26)]),
    # 3/2 = 3,5,7 = Tue, Thu, Sat: Sat 21, Tue 24, Thu 26, Sat 28
    ("0 0 12 * * 3/2", [utc(2026, 11, d, 12) for d in (21, 24, 26, 28)]),
    # MON-FRI/2 = 2,4,6 = Mon, Wed, Fri: today (Fri 20) at noon, Mon 23, Wed 25, Fri 27
    ("0 0 12 * * MON-FRI/2", [utc(2026, 11, d, 12) for d in (20, 23, 25, 27)]),
    # list of numbers 2,4,6 = Mon, Wed, Fri
    ("0 0 12 * * 2,4,6", [utc(2026, 11, d, 12) for d in (20, 23, 25, 27)]),
    # TUES and THURS are crate spellings croniter does not know
    ("0 0 12 * * TUES,THURS", [utc(2026, 11, d, 12) for d in (24, 26)] + [utc(2026, 12, 1, 12)]),
    # months FEB-DEC/3 = Feb, May, Aug, Nov; Nov 20 12:00 is still ahead
    ("0 0 12 20 FEB-DEC/3 *", [utc(2026, 11, 20, 12), utc(2027, 2, 20, 12), utc(2027, 5, 20, 12)]),
]


@pytest.mark.parametrize(("text", "expected"), SEQUENCES)
def test_fire_times(text: str, expected: list[datetime]) -> None:
    assert parse_cron(text).fire_times(FRI_1000, len(expected)) == expected


@pytest.mark.parametrize(
    ("text", "after"),
    [
        ("0 0 0 1 1 * 2026", FRI_1000),  # its only fire time is in the past
        ("0 0 0 1 1 * 2020-2025", FRI_1000),
        ("0 0 0 29 2 * 2100", FRI_1000),  # 2100 is not a leap year
        ("0 0 0 30 2 *", FRI_1000),  # never fires at all
        ("* * * * * *", utc(2100, 12, 31, 23, 59, 59)),  # the crate's years end in 2100
    ],
)
def test_never_fires_again(text: str, after: datetime) -> None:
    assert parse_cron(text).next_after(after) is None
    assert parse_cron(text).fire_times(after, 3) == []


def test_fire_times_stop_when_the_years_run_out() -> None:
    schedule = parse_cron("0 0 0 1 1 * 2027-2028")
    assert schedule.fire_times(FRI_1000, 5) == [utc(2027, 1, 1), utc(2028, 1, 1)]


def test_fire_times_count() -> None:
    schedule = parse_cron("@daily")
    assert schedule.fire_times(FRI_1000, 0) == []
    with pytest.raises(ValueError, match="count"):
        schedule.fire_times(FRI_1000, -1)


def test_strictly_after() -> None:
    schedule = parse_cron("0 0 10 * * *")
    assert schedule.next_after(FRI_1000) == utc(2026, 11, 21, 10)
    # a fraction of a second before the fire time still gets it
    almost = FRI_1000 - timedelta(microseconds=1)
    assert schedule.next_after(almost) == FRI_1000
    assert schedule.next_after(FRI_1000 + timedelta(microseconds=1)) == utc(2026, 11, 21, 10)


def test_other_time_zones_are_converted_and_results_are_utc() -> None:
    # 11:30 at +02:00 is 09:30 UTC, so today's 10:00 UTC is still ahead
    after = datetime(2026, 11, 20, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    found = parse_cron("0 0 10 * * *").next_after(after)
    assert found == FRI_1000
    assert found is not None and found.utcoffset() == timedelta(0)


def test_daylight_saving_time_changes_nothing() -> None:
    # Berlin moves its clocks forward on Sunday 2026-03-29; schedules are UTC, so 02:30 UTC
    # (04:30 Berlin summer time, 03:30 winter time) keeps firing every 24 hours
    after = datetime(2026, 3, 28, 0, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    times = parse_cron("0 30 2 * * *").fire_times(after, 3)
    assert times == [utc(2026, 3, d, 2, 30) for d in (28, 29, 30)]


def test_naive_datetime_is_rejected() -> None:
    schedule = parse_cron("@daily")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 11, 20, 10))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.fire_times(datetime(2026, 11, 20, 10), 2)


def test_text_is_kept_as_written_and_defines_equality() -> None:
    schedule = parse_cron(" 0 0 9 * * MON-FRI ")
    assert schedule.text == " 0 0 9 * * MON-FRI "
    assert schedule == CronSchedule(" 0 0 9 * * MON-FRI ")
    assert hash(schedule) == hash(CronSchedule(" 0 0 9 * * MON-FRI "))
    assert schedule != parse_cron("0 0 9 * * MON-FRI")


# --- accept / reject, as the oracle does -----------------------------------------------------

ACCEPTED = [
    "0 */5 * * * *",
    "* * * * * *",
    "0 0 12 * * 7",
    "0 0 12 * * 1-7/2",
    "0 0 12 * * 3/2",
    "0 0 12 * * */7",
    "0 0 0 1 1 * 2027",
    "0 0 0 1 1 * 1970",
    "59 59 23 31 12 7 2100",
    "0 0 0 1 1 * 2020-2040/2100",
    "0 0 0 1 1 ? 2020-2040/10",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@yearly",
    " @daily ",
    "0 0 12 ? * MON",
    "0 0 12 * * ?",
    "0 0 12 * * ?/2",
    "0 0 12 * * MON-FRI/2",
    "0 0 12 * * Mon-Thurs/2",
    "0 0 12 * * monday",
    "0 0 12 * * Tues",
    "0 0 12 * * THURS",
    "0 0 12 * * MON,Wed,fri",
    "0 0 12 * JAN-MAR *",
    "0 0 12 * january *",
    "0 0 12 * sep *",
    "0 0 12 31 * *",
    "0 0 12 30 2 *",  # valid, it just never fires
    "*/59 * * * * *",
    "59/59 * * * * *",
    "5-5 * * * * *",
    "1-3,5/10 * * * * *",
    "00 00 012 * * *",
    "0 0 12 * * *,*",
    "0 0 12 *,5 * *",
    " 0 0 12 * * *",
    "\t0 0 12 * * *\n",
    "0\n0\n12 * * *",
    # quirks of the crate's parser
    "******",  # fields need no whitespace between them
    "0 0 12 * JAN1",  # ... so this is month JAN, day-of-week 1
    "0 0 12 * * 1 , 2",  # whitespace around ',', '-' and '/' next to numbers or names
    "0 0 12 * * 1, 2",
    "0 0 12 * * 1 - 5",
    "0 0 12 * * MON - FRI",
    "0 0 12 * * 1-5 /2",
    "0 0 12 * * */ 2",
]

FIVE_FIELD_HINT = "ZLayer schedules start with a seconds field"

REJECTED = [
    # (text, fragment of the message or hint)
    ("*/5 * * * *", 'did you mean "0 */5 * * * *"? ZLayer schedules start with a seconds field'),
    ("0 9 * * 1-5", 'did you mean "0 0 9 * * 2-6"?'),  # crontab Mon-Fri, renumbered
    ("0 0 * * 0", 'did you mean "0 0 0 * * 1"?'),  # crontab Sunday
    ("0 0 * * 5-7", FIVE_FIELD_HINT),  # would wrap in ZLayer's numbering: no suggestion
    ("0 0 12 * * 0", "day-of-week: 0 is out of range 1-7 (1 = Sunday)"),
    ("0 0 12 * * 0", "use 1 or SUN for Sunday"),
    ("0 0 12 * * 0-5", "use 1 or SUN for Sunday"),
    ("0 0 12 * * 8", "day-of-week: 8 is out of range 1-7"),
    ("0 0 12 * * */8", "day-of-week: step 8 is out of range 1-7"),
    ("0 0 12 * * 7-1", "day-of-week: range 7-1 runs backwards"),
    ("0 0 12 * * SAT-SUN", "day-of-week: range SAT-SUN runs backwards"),
    ("0 0 12 * * thur", "day-of-week: unknown name 'thur'"),
    ("0 0 12 * * L", "day-of-week: unknown name 'L'"),
    ("0 0 12 * * MON/2", "a lone name takes no step"),
    ("0 0 12 * * 5#3", "cannot read '#3'"),
    ("1 2 3 4 5 6 2030 8", "unexpected '8' after the year"),
    ("0 0 0 * * * * *", "unexpected '*' after the year"),
    ("garbage", "expected 6 or 7 fields"),
    ("", "schedule is empty"),
    ("   ", "schedule is empty"),
    ("0 0 12 * *", FIVE_FIELD_HINT),
    ("0 0 12 * * * 2", "year: 2 is out of range 1970-2100"),
    ("0 0 0 1 1 * 1969", "year: 1969 is out of range 1970-2100"),
    ("0 0 0 1 1 * 2101", "year: 2101 is out of range 1970-2100"),
    ("0 0 0 1 1 * 2020-2040/2101", "year: step 2101 is out of range"),
    ("60 0 0 * * *", "second: 60 is out of range 0-59"),
    ("*/60 * * * * *", "second: step 60 is out of range 1-59"),
    ("*/0 * * * * *", "second: step 0 is out of range"),
    ("5-1 * * * * *", "second: range 5-1 runs backwards"),
    ("4294967296 * * * * *", "second: cannot read '4294967296'"),
    ("H * * * * *", "second: 'H' is not a number"),
    ("? 0 12 * * *", "'?' is allowed only in day-of-month and day-of-week"),
    ("0 60 0 * * *", "minute: 60 is out of range 0-59"),
    ("0 ? 12 * * *", "'?' is allowed only"),
    ("0 0 24 * * *", "hour: 24 is out of range 0-23"),
    ("0 0 12 0 * *", "day-of-month: 0 is out of range 1-31"),
    ("0 0 12 32 * *", "day-of-month: 32 is out of range 1-31"),
    ("0 0 12 L * *", "day-of-month: 'L' is not a number"),
    ("0 0 12 * 13 *", "month: 13 is out of range 1-12"),
    ("0 0 12 * 0 *", "month: 0 is out of range 1-12"),
    ("0 0 12 * Sept *", "month: unknown name 'Sept'"),
    ("0 0 12 * DEC-JAN *", "month: range DEC-JAN runs backwards"),
    ("0 0 12 * ? *", "'?' is allowed only"),
    ("@annually", "unknown shorthand '@annually'"),
    ("@midnight", "unknown shorthand"),
    ("@reboot", "unknown shorthand"),
    ("@DAILY", "unknown shorthand"),
    ("@daily x", "unknown shorthand"),
    ("@every 5s", "unknown shorthand"),
    # quirks: whitespace is not allowed everywhere
    ("0 0 12 * * * ,2", "cannot read ',2'"),  # no space before ',' after '*'
    ("0 0 12 * * * /2", "cannot read '/2'"),
    ("0 0 12 * * 1, *", "cannot read ','"),  # nor between ',' and '*'
    ("0 0 12 * * 1,", "cannot read ','"),
    ("0 0 12 * * 1,,2", "cannot read ',,2'"),
    ("0 0 12 * * 1 2", "year: 2 is out of range"),
    ("0\u00a00 12 * * * *", "cannot read"),  # only ASCII whitespace separates fields
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted(text: str) -> None:
    assert parse_cron(text).text == text


@pytest.mark.parametrize(("text", "fragment"), REJECTED)
def test_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cron(text)
    assert fragment in str(caught.value)


def test_five_field_error_carries_the_hint_separately() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cron("*/5 * * * *")
    error = caught.value
    assert "5 fields" in error.message
    assert error.hint == 'did you mean "0 */5 * * * *"? ZLayer schedules start with a seconds field'


def test_day_of_week_zero_message_and_hint() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cron("0 0 12 * * 0")
    assert caught.value.message == "day-of-week: 0 is out of range 1-7 (1 = Sunday)"
    assert caught.value.hint == "day-of-week is 1-7 with 1 = Sunday; use 1 or SUN for Sunday"


def test_schedule_error_is_a_value_error_and_a_zlayer_error() -> None:
    with pytest.raises(ValueError, match="out of range") as caught:
        CronSchedule("0 0 24 * * *")
    assert isinstance(caught.value, ZlayerError)

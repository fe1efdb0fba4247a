"""Cron schedules in ZLayer's dialect, evaluated with croniter.

ZLayer validates ``schedule`` with the Rust crate ``cron`` 0.15, whose dialect is not
crontab(5):

* 6 or 7 fields, seconds first: ``sec min hour day-of-month month day-of-week [year]``,
  or exactly one of ``@yearly @monthly @weekly @daily @hourly`` (lowercase).
* day-of-week is 1-7 with 1 = Sunday, or SUN..SAT (also full names, TUES, THURS);
  months are 1-12 or JAN..DEC (also full names); names ignore case.
* ``?`` means ``*`` and is allowed in day-of-month and day-of-week only.
* ``a/n`` runs from ``a`` to the field's maximum; ranges may not wrap (``SAT-SUN``).
* day-of-month and day-of-week must *both* match (crontab fires when either does).
* years are 1970-2100; there is no ``L``, ``W``, ``#`` or ``H``.

The parser mirrors the crate's combinators, quirks included: whitespace may surround
``-``, ``/`` and ``,`` where a number or name touches them, and fields need no
whitespace between them (``******`` is six stars). Times are UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from croniter import CroniterBadDateError, croniter

from reconciler.errors import ScheduleError

__all__ = ["CronSchedule", "parse_cron"]

_WS = " \t\r\n"  # winnow's multispace0: other Unicode spaces separate nothing
_NUMBER = re.compile(r"[ \t\r\n]*([0-9]+)[ \t\r\n]*")
_NAME = re.compile(r"[ \t\r\n]*([A-Za-z]+)[ \t\r\n]*")
_U32_MAX = 2**32 - 1  # the crate reads numbers as u32; longer ones do not parse
_LAYOUT = "sec min hour day-of-month month day-of-week [year]"
_SHORTHANDS = {
    "@yearly": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 1",  # Sunday midnight, as in the crate
    "@daily": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


def _names(*groups: tuple[str, ...]) -> dict[str, int]:
    return {name: number for number, names in enumerate(groups, 1) for name in names}


_DAY_NAMES = _names(
    ("sun", "sunday"), ("mon", "monday"), ("tue", "tues", "tuesday"), ("wed", "wednesday"),
    ("thu", "thurs", "thursday"), ("fri", "friday"), ("sat", "saturday"),
)  # fmt: skip
_MONTH_NAMES = _names(
    ("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
    ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "september"),
    ("oct", "october"), ("nov", "november"), ("dec", "december"),
)  # fmt: skip


@dataclass(frozen=True)
class _Unit:
    label: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)
    any_ok: bool = False  # accepts "?"

    @property
    def full(self) -> frozenset[int]:
        return frozenset(range(self.low, self.high + 1))


_DOW = _Unit("day-of-week", 1, 7, _DAY_NAMES, any_ok=True)
_YEAR = _Unit("year", 1970, 2100)
_UNITS = (
    _Unit("second", 0, 59),
    _Unit("minute", 0, 59),
    _Unit("hour", 0, 23),
    _Unit("day-of-month", 1, 31, any_ok=True),
    _Unit("month", 1, 12, _MONTH_NAMES),
    _DOW,
)
_Fields = tuple[frozenset[int], ...]  # the values of each of _UNITS, then the years


@dataclass(frozen=True)
class _Item:  # one list item: ``*``/``?``, a value or a range, each maybe with a step
    kind: Literal["all", "one", "range"]
    low: str = ""  # a number or a name, as written
    high: str = ""
    step: int | None = None


class _Cursor:
    """A position in the text; a failed read leaves it where it was."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def take(self, char: str) -> bool:
        found = self.text.startswith(char, self.pos)
        self.pos += len(char) if found else 0
        return found

    def read(self, pattern: re.Pattern[str]) -> str | None:
        """A number or name, with the whitespace around it."""
        match = pattern.match(self.text, self.pos)
        if match is None or (pattern is _NUMBER and int(match[1]) > _U32_MAX):
            return None
        self.pos = match.end()
        return match[1]

    def skip_ws(self) -> bool:
        """Skip whitespace; True if nothing follows."""
        self.pos = len(self.text) - len(self.text[self.pos :].lstrip(_WS))
        return self.pos == len(self.text)

    def next_token(self) -> str:
        return re.split(f"[{_WS}]", self.text[self.pos :], maxsplit=1)[0]


def _item(cur: _Cursor, unit: _Unit) -> _Item | None:
    """``*``, ``?``, ``n``, ``a-b``, ``NAME-NAME`` (each maybe ``/step``), or ``NAME``."""
    if cur.take("*") or (unit.any_ok and cur.take("?")):
        base = _Item("all")
    elif (low := cur.read(_NUMBER) or cur.read(_NAME)) is None:
        return None
    else:
        pattern = _NUMBER if low.isdigit() else _NAME
        mark = cur.pos
        high = cur.read(pattern) if cur.take("-") else None
        if high is None:
            cur.pos = mark
            if pattern is _NAME:
                return _Item("one", low)  # a lone name takes no step
        base = _Item("one", low) if high is None else _Item("range", low, high)
    mark = cur.pos
    if cur.take("/") and (step := cur.read(_NUMBER)) is not None:
        return replace(base, step=int(step))
    cur.pos = mark
    return base


def _field(cur: _Cursor, unit: _Unit) -> frozenset[int]:
    """Read a comma-separated list of items and expand it to the values it matches."""
    cur.skip_ws()
    first = _item(cur, unit)
    if first is None:
        raise _syntax_error(cur, unit)
    items = [first]
    while True:
        mark = cur.pos
        following = _item(cur, unit) if cur.take(",") else None
        if following is None:
            cur.pos = mark  # the crate leaves a dangling "," to the next field, which fails
            break
        items.append(following)
    cur.skip_ws()
    return frozenset(value for item in items for value in _expand(unit, item))


def _expand(unit: _Unit, item: _Item) -> range:
    if item.step is not None and not 1 <= item.step <= unit.high:
        raise ScheduleError(f"{unit.label}: step {item.step} is out of range 1-{unit.high}")
    step = item.step or 1
    if item.kind == "all":
        return range(unit.low, unit.high + 1, step)
    low = _resolve(unit, item.low)
    if item.kind == "one":
        return range(low, unit.high + 1, step) if item.step else range(low, low + 1)
    high = _resolve(unit, item.high)
    if low > high:
        raise ScheduleError(
            f"{unit.label}: range {item.low}-{item.high} runs backwards",
            hint="ranges cannot wrap around; list the two parts separated by ','",
        )
    return range(low, high + 1, step)


def _resolve(unit: _Unit, token: str) -> int:
    """The value of a number or name, checked against the unit's range."""
    if not token.isdigit() and not unit.names:
        raise ScheduleError(f"{unit.label}: {token!r} is not a number (names are not allowed)")
    if not token.isdigit() and token.lower() not in unit.names:
        examples = "SUN-SAT or full day names" if unit is _DOW else "JAN-DEC or full month names"
        raise ScheduleError(f"{unit.label}: unknown name {token!r}", hint=f"use {examples}")
    value = int(token) if token.isdigit() else unit.names[token.lower()]
    if unit.low <= value <= unit.high:
        return value
    if unit is not _DOW:
        raise ScheduleError(f"{unit.label}: {value} is out of range {unit.low}-{unit.high}")
    hint = "day-of-week is 1-7 with 1 = Sunday; use 1 or SUN for Sunday" if value == 0 else None
    raise ScheduleError(f"{unit.label}: {value} is out of range 1-7 (1 = Sunday)", hint=hint)


def _syntax_error(cur: _Cursor, unit: _Unit) -> ScheduleError:
    if cur.skip_ws():
        return ScheduleError(f"{unit.label} field is missing; expected {_LAYOUT}")
    token = cur.next_token()
    hint = None
    if token[0] == "?":
        hint = "'?' is allowed only in day-of-month and day-of-week"
    elif token[0] in ",-/":
        hint = "',', '-' and '/' need a value on each side; a lone name takes no step"
    return ScheduleError(f"{unit.label}: cannot read {token!r}", hint=hint)


def _parse_fields(text: str) -> _Fields:
    """The crate's grammar: six fields, an optional year field, then the end."""
    cur = _Cursor(text)
    fields = [_field(cur, unit) for unit in _UNITS]
    fields.append(_YEAR.full if cur.skip_ws() else _field(cur, _YEAR))
    if not cur.skip_ws():
        raise ScheduleError(f"unexpected {cur.next_token()!r} after the year; expected {_LAYOUT}")
    return tuple(fields)


def _compile(text: str) -> _Fields:
    stripped = text.strip(_WS)
    if not stripped:
        raise ScheduleError("schedule is empty", hint=f"expected {_LAYOUT}")
    if stripped.startswith("@"):
        if stripped not in _SHORTHANDS:
            hint = f"use one of {', '.join(_SHORTHANDS)}"
            raise ScheduleError(f"unknown shorthand {stripped!r}", hint=hint)
        return _parse_fields(_SHORTHANDS[stripped])
    try:
        return _parse_fields(text)
    except ScheduleError as error:
        tokens = re.findall(f"[^{_WS}]+", text)
        if len(tokens) == 5:
            raise _five_field_error(tokens) from error
        if len(tokens) < 5:
            raise ScheduleError(f"expected 6 or 7 fields ({_LAYOUT}), got {len(tokens)}") from error
        raise


def _five_field_error(tokens: list[str]) -> ScheduleError:
    """A crontab line: suggest the same schedule with a seconds field and ZLayer day numbers."""
    message = f"{' '.join(tokens)!r} has 5 fields; ZLayer schedules have 6 or 7: {_LAYOUT}"
    hint = "ZLayer schedules start with a seconds field"
    dow = _crontab_dow(tokens[4])
    suggestion = " ".join(["0", *tokens[:4], dow]) if dow is not None else None
    try:
        _parse_fields(suggestion or "")
    except ScheduleError:
        return ScheduleError(message, hint=hint)
    if dow != tokens[4]:
        hint += "; day-of-week is 1-7 with 1 = Sunday"
    return ScheduleError(message, hint=f'did you mean "{suggestion}"? {hint}')


def _crontab_dow(token: str) -> str | None:
    """Renumber a crontab day-of-week (0-7, 0 and 7 = Sunday) to ZLayer's (1-7, 1 = Sunday).

    Steps keep their meaning (crontab ``1-5/2`` = ZLayer ``2-6/2`` = Mon,Wed,Fri); a lone 7
    becomes 1, but a range ending at 7 would wrap, so it gets no suggestion (None).
    """
    items = []
    for item in token.split(","):
        base, slash, step = item.partition("/")
        ends = base.split("-")
        if all(re.fullmatch("[0-9]+", end) for end in ends):
            shifted = [int(end) + 1 for end in ends]
            shifted = [1] if shifted == [8] else shifted
            if max(shifted) > 7:
                return None
            base = "-".join(map(str, shifted))
        elif re.search("[0-9]", base):
            return None
        items.append(base + slash + step)
    return ",".join(items)


def _croniter_expression(fields: _Fields) -> str:
    """Spell out the matched values for croniter (seconds first), renumbering days of week.

    Each field becomes ``*`` or the explicit list of values the crate matches. Rewriting
    ZLayer's text instead would go wrong: croniter counts days of week 0-6 from Sunday
    and reads 7 as Sunday, where ZLayer's 7 is Saturday; ``3/2`` and ``MON-FRI/2`` step
    through ZLayer's numbering; and croniter knows no TUES, THURS or full day names.
    So each ZLayer day d becomes d - 1 once the set is known.
    """
    parts = []
    for unit, values in zip(_UNITS, fields[: len(_UNITS)], strict=True):
        numbers = sorted(value - 1 if unit is _DOW else value for value in values)
        parts.append("*" if values == unit.full else ",".join(map(str, numbers)))
    return " ".join(parts)


@dataclass(frozen=True)
class CronSchedule:
    """A schedule valid in ZLayer's dialect; creating one validates ``text``.

    The year field is applied here, not by croniter: croniter's years end at 2099 (the
    crate's at 2100) and by default it gives up after 50 years without a match.
    """

    text: str  # as written by the user
    _expression: str = field(init=False, repr=False, compare=False)
    _years: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = _compile(self.text)
        object.__setattr__(self, "_expression", _croniter_expression(fields))
        object.__setattr__(self, "_years", fields[-1])

    def next_after(self, after: datetime) -> datetime | None:
        """First fire time strictly after ``after`` (tz-aware), in UTC.

        None if the schedule never fires again: its years are used up, or no date
        matches at all (``0 0 0 30 2 *``).
        """
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError(f"next_after needs a timezone-aware datetime, got {after!r}")
        cursor = after.astimezone(UTC).replace(microsecond=0)
        while True:
            year = min((y for y in self._years if y >= cursor.year), default=None)
            if year is None:
                return None
            if year > cursor.year:
                cursor = datetime(year, 1, 1, tzinfo=UTC) - timedelta(seconds=1)
            found = self._croniter_next(cursor)
            if found is None or found.year > _YEAR.high:
                return None
            if found.year in self._years:
                return found
            cursor = found

    def fire_times(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times after ``after`` (fewer if the schedule runs out)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        times: list[datetime] = []
        while len(times) < count:
            found = self.next_after(times[-1] if times else after)
            if found is None:
                break
            times.append(found)
        return times

    def _croniter_next(self, cursor: datetime) -> datetime | None:
        iterator = croniter(
            self._expression,
            cursor,
            day_or=False,  # the crate needs day-of-month AND day-of-week to match
            second_at_beginning=True,
            max_years_between_matches=_YEAR.high - _YEAR.low + 1,
        )
        try:
            return iterator.get_next(datetime).astimezone(UTC)
        except CroniterBadDateError:
            return None


def parse_cron(text: str) -> CronSchedule:
    """Validate ``text`` in ZLayer's dialect; raise ScheduleError saying what is wrong."""
    return CronSchedule(text)

"""Durations as ZLayer writes them (humantime 2.3): parsed to nanoseconds and
formatted back (pure, and free of pydantic, so the drivers and the policy can read
a compiled config's durations without loading the spec models).
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["format_duration", "parse_duration"]

_UNIT_NANOS: dict[str, int] = {}
for _names, _nanos in (
    (("nanos", "nsec", "ns"), 1),
    (("usec", "us", "µs"), 1_000),
    (("millis", "msec", "ms"), 1_000_000),
    (("seconds", "second", "secs", "sec", "s"), 10**9),
    (("minutes", "minute", "min", "mins", "m"), 60 * 10**9),
    (("hours", "hour", "hr", "hrs", "h"), 3600 * 10**9),
    (("days", "day", "d"), 86400 * 10**9),
    (("weeks", "week", "w"), 7 * 86400 * 10**9),
    (("months", "month", "M"), 2_630_016 * 10**9),
    (("years", "year", "y"), 31_557_600 * 10**9),
):
    for _name in _names:
        _UNIT_NANOS[_name] = _nanos

_SPAN_RE = re.compile(r"\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[a-zA-Zµ]*)")
_MAX_NANOS = (2**64 - 1) * 10**9 + 999_999_999


def parse_duration(text: str) -> int:
    """Parse a humantime duration (``1m 30s``, ``1.5s``, ``500ms``) into nanoseconds.

    Raises ``ValueError`` with a user-facing reason.
    """
    if not text.strip():
        raise ValueError("empty duration")
    if text.strip() == "0":
        return 0  # humantime accepts a bare zero, and only zero
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _SPAN_RE.match(text, pos)
        if match is None:
            bad = text[pos:].lstrip()[:1]
            raise ValueError(f"expected a number before {bad!r}")
        num, unit = match["num"], match["unit"]
        if not unit:
            raise ValueError(f"time unit needed after {num} (for example {num}s or {num}ms)")
        if unit not in _UNIT_NANOS:
            raise ValueError(f"unknown time unit {unit!r} (use ns, us, ms, s, m, h, d, w, M, y)")
        total += Fraction(num) * _UNIT_NANOS[unit]
        pos = match.end()
        if pos < len(text) and not (text[pos].isspace() or text[pos].isdigit()):
            raise ValueError(f"unexpected character {text[pos]!r}")
    if total.denominator != 1 or total > _MAX_NANOS:
        raise ValueError("too large, or finer than 1ns")
    return int(total)


def format_duration(nanos: int) -> str:
    """Canonical compact form: ``90s`` → ``1m30s``; ``0`` → ``0s``."""
    if nanos == 0:
        return "0s"
    parts = []
    for unit, size in (
        ("d", 86400 * 10**9),
        ("h", 3600 * 10**9),
        ("m", 60 * 10**9),
        ("s", 10**9),
        ("ms", 10**6),
        ("us", 10**3),
        ("ns", 1),
    ):
        count, nanos = divmod(nanos, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)

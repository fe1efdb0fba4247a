"""Crash-restart backoff (pure): how long a crashed replica waits before its restart.

A replica's *streak* counts its crashes since it last ran healthy for
``reset_after`` seconds. The first crash of a streak waits ``initial`` seconds,
each further one ``factor`` times longer, never more than ``cap``; a random
``jitter`` (a fraction, ±) spreads replicas that crashed together. The total
restart count is separate and only ever grows (it lives in the journal).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import ZlayerError


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 1.0
    """Seconds before the restart after the first crash of a streak."""
    factor: float = 2.0
    """Each further crash of the streak waits this many times longer."""
    cap: float = 300.0
    """No wait is longer than this (seconds)."""
    reset_after: float = 600.0
    """Running (and healthy, where checked) this long ends the streak."""
    jitter: float = 0.1
    """± this fraction of the delay, at random."""
    give_up_after: int = 0
    """After this many restarts in a row (one streak) the next crash is not restarted:
    the replica is *failed* until a new revision or ``zlayer daemon retry``. 0: never."""

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0 or self.reset_after < 0:
            raise ZlayerError("backoff: initial, cap and reset_after must not be negative")
        if self.factor < 1:
            raise ZlayerError(f"backoff: factor {self.factor:g} must be at least 1")
        if self.give_up_after < 0:
            raise ZlayerError("backoff: give_up_after must not be negative (0: never)")
        if not 0 <= self.jitter < 1:
            raise ZlayerError(f"backoff: jitter {self.jitter:g} must be in [0, 1)")

    def base_delay(self, streak: int) -> float:
        """The delay before restart number ``streak`` (≥ 1) of a streak, without jitter."""
        if streak < 1:
            return 0.0
        delay = self.initial
        for _ in range(streak - 1):
            delay *= self.factor
            if delay >= self.cap:
                break
        return min(delay, self.cap)

    def delay(self, streak: int, unit: float) -> float:
        """:meth:`base_delay` with jitter; ``unit`` is a random number in [0, 1)."""
        base = self.base_delay(streak)
        return max(0.0, base * (1 + self.jitter * (2 * unit - 1)))


def describe_wait(seconds: float) -> str:
    """``40s``, ``2m30s``, ``1h5m``: a wait as people read it."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"

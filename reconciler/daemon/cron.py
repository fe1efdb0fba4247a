"""When cron services fire (UTC), remembered across daemon restarts.

The journal keeps, per cron service, when it last fired (or, for a service just
seen, when it was first seen: a new schedule does not fire for the past). A fire
time that passed while the daemon was down starts one run when it is back, however
many were missed; the next fire time is then counted from now.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache

from reconciler.daemon.journal import Journal
from reconciler.desired import DesiredService, DesiredState
from reconciler.errors import ScheduleError
from reconciler.schedule import CronSchedule, parse_cron

LATE = 5.0
"""A run started this many seconds after its fire time is recorded as a late one."""


@lru_cache(maxsize=256)
def _schedule(text: str) -> CronSchedule | None:
    try:
        return parse_cron(text)
    except ScheduleError:
        return None  # validation reported it; nothing to fire


def _key(service: DesiredService) -> str:
    return f"cron:{service.deployment}/{service.name}"


class Cron:
    def __init__(self, journal: Journal, clock: Callable[[], float]) -> None:
        self.journal = journal
        self.clock = clock

    def _next(self, service: DesiredService, now: float) -> float | None:
        schedule = _schedule(str(service.config.get("schedule", "")))
        if schedule is None:
            return None
        last = self.journal.get(_key(service))
        if last is None:
            self.journal.put(_key(service), now)
            last = now
        found = schedule.next_after(datetime.fromtimestamp(float(last), UTC))
        return found.timestamp() if found else None

    def services(self, desired: DesiredState) -> list[DesiredService]:
        return [s for s in desired.services.values() if s.rtype == "cron"]

    def next_wake(self, desired: DesiredState) -> float | None:
        now = self.clock()
        times = [t for s in self.services(desired) if (t := self._next(s, now)) is not None]
        return min(times, default=None)

    def due(self, desired: DesiredState) -> list[tuple[DesiredService, str]]:
        """The cron services to run now, each with the trigger to record; marks them fired."""
        now = self.clock()
        out = []
        for service in self.services(desired):
            fire = self._next(service, now)
            if fire is None or fire > now:
                continue
            self.journal.put(_key(service), now)
            when = datetime.fromtimestamp(fire, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if now - fire <= LATE:
                trigger = f"cron {when}"
            else:
                trigger = f"cron {when} (missed while the daemon was down; one run for all missed)"
            out.append((service, trigger))
        return out

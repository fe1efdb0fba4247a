"""Fault matrix, row 6: the wall clock jumps, forward and back, injected at the clock
seam of the daemon's bookkeeping (cron, crash backoff, the journal), with a monotonic
clock that keeps counting seconds: cron fires neither twice nor never, a backoff never
waits hours nor nothing, durations are never negative, and the journal keeps order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.backoff import BackoffPolicy
from reconciler.daemon.cron import Cron
from reconciler.daemon.journal import Journal
from reconciler.daemon.supervise import Supervisor
from reconciler.plan.planner import plan_changes
from tests.daemon.test_supervision import Clock, _desired, _observed

pytestmark = pytest.mark.faults

HOUR = 3600.0
POLICY = BackoffPolicy(initial=10, factor=2, cap=60, jitter=0)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    opened = Journal(tmp_path / "journal.db")
    yield opened  # type: ignore[misc]
    opened.close()


def crashed_web(supervisor: Supervisor, run: str = "id-1") -> tuple[float | None, list[str]]:
    """One supervise pass with web exited 1 (run ``run``): (its wake, held targets)."""
    desired = _desired()
    observed = _observed(desired, {"web": ("exited", 1, run)})
    result = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
    return result.wake_at, sorted(result.held)


def test_a_backoff_waits_its_delay_whichever_way_the_wall_clock_jumps(journal: Journal) -> None:
    wall, mono = Clock(1_800_000_000.0), Clock(500.0)
    supervisor = Supervisor(journal, POLICY, clock=wall, monotonic=mono)
    wake, held = crashed_web(supervisor)
    assert held == ["demo/web/1"] and wake == wall.now + 10
    # Set back an hour, 3 s later: 7 s to go, not an hour and 7 s.
    wall.now -= HOUR - 3
    mono.now += 3
    wake, held = crashed_web(supervisor)
    assert held == ["demo/web/1"] and wake == pytest.approx(wall.now + 7)
    # Set forward two hours, 4 s later: 3 s still to go, not due at once.
    wall.now += 2 * HOUR + 4
    mono.now += 4
    wake, held = crashed_web(supervisor)
    assert held == ["demo/web/1"] and wake == pytest.approx(wall.now + 3)
    # 3 s later it is due, and restarted.
    wall.now += 3
    mono.now += 3
    wake, held = crashed_web(supervisor)
    assert held == [] and journal.crash("demo/web/1").restarts == 1  # type: ignore[union-attr]


def test_a_backoff_from_an_earlier_daemon_never_waits_longer_than_the_policy_allows(
    journal: Journal,
) -> None:
    wall = Clock(1_800_000_000.0)
    crashed_web(Supervisor(journal, POLICY, clock=wall))  # recorded: due in 10 s
    wall.now -= 5 * HOUR  # the host's clock set back, and a new daemon
    wake, held = crashed_web(Supervisor(journal, POLICY, clock=wall))
    assert held == ["demo/web/1"] and wake is not None
    assert 0 < wake - wall.now <= POLICY.cap, wake - wall.now


def test_cron_fires_neither_twice_nor_never_across_jumps(journal: Journal) -> None:
    wall = Clock(datetime(2026, 11, 22, 2, 0, tzinfo=UTC).timestamp())
    cron = Cron(journal, wall)
    desired = _desired()  # nightly at 03:00
    assert cron.due(desired) == []
    wall.now = datetime(2026, 11, 22, 3, 0, 1, tzinfo=UTC).timestamp()
    assert [s.name for s, _ in cron.due(desired)] == ["nightly"]
    # Set back to 02:30: 03:00 today has fired; it does not fire again at 03:00.
    wall.now = datetime(2026, 11, 22, 2, 30, tzinfo=UTC).timestamp()
    assert cron.due(desired) == []
    wall.now = datetime(2026, 11, 22, 3, 0, 30, tzinfo=UTC).timestamp()
    assert cron.due(desired) == []
    assert cron.next_wake(desired) == datetime(2026, 11, 23, 3, 0, tzinfo=UTC).timestamp()
    # Set forward over two fire times: one run, said to be for the missed ones.
    wall.now = datetime(2026, 11, 25, 4, 0, tzinfo=UTC).timestamp()
    fired = cron.due(desired)
    assert len(fired) == 1 and "missed" in fired[0][1]
    assert cron.due(desired) == []


def test_the_journal_keeps_order_and_no_duration_is_negative(journal: Journal) -> None:
    first = journal.start_reconcile("a", 1_800_000_000.0)
    journal.finish_reconcile(first, at=1_800_000_000.0 - HOUR, revision=None,
                             outcome="no-changes", summary="", duration=0.25)  # fmt: skip
    second = journal.start_reconcile("b", 1_800_000_000.0 - HOUR)
    journal.finish_reconcile(second, at=1_800_000_000.0 - HOUR + 1, revision=None,
                             outcome="no-changes", summary="", duration=-3.0)  # fmt: skip
    rows = journal.reconciles(10)
    assert [r["trigger"] for r in rows] == ["b", "a"]  # by id: the order they happened
    assert [r["duration"] for r in rows] == [0.0, 0.25]
    journal.event("t", "k", "later by the clock", 1_800_000_000.0)
    journal.event("t", "k", "after the jump back", 1_800_000_000.0 - HOUR)
    assert [e["message"] for e in journal.events(10)][:2] == [
        "after the jump back", "later by the clock"
    ]  # fmt: skip

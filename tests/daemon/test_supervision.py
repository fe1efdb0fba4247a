"""Crash backoff, the journal and cron timing: the daemon's bookkeeping, on a clock the
tests move (the loop itself runs against real runtimes in test_daemon*.py)."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.backoff import BackoffPolicy, describe_wait
from reconciler.daemon.cron import Cron
from reconciler.daemon.journal import MAX_ROWS, Journal
from reconciler.daemon.supervise import Supervisor
from reconciler.desired import CompileInputs, DesiredState, compile_specs
from reconciler.errors import JournalDamaged, ZlayerError
from reconciler.observed import ObservedState, Workload
from reconciler.plan.planner import plan_changes
from tests.conftest import load_ok, spec_text

SPEC = spec_text(
    """
    services:
      db:
        image: {name: postgres}
        errors: {on_panic: {action: restart}}
      web:
        image: {name: nginx}
        depends:
          - {service: db, condition: started}
      stopper:
        image: {name: nginx}
        errors: {on_panic: {action: shutdown}}
      keeper:
        image: {name: nginx}
        errors: {on_panic: {action: isolate}}
      nightly:
        rtype: cron
        image: {name: busybox}
        schedule: "0 0 3 * * *"
    """
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _desired() -> DesiredState:
    desired, problems = compile_specs([load_ok(SPEC)], "r1", CompileInputs(env={}))
    assert desired is not None, problems
    return desired


Overrides = dict[str, tuple[str, int | None, str]]


def _observed(desired: DesiredState, status: Overrides) -> ObservedState:
    """Replica 1 of each long-running service; ``status`` overrides (status, code, id)."""
    workloads = []
    for (dep, name), service in desired.services.items():
        if service.is_definition:
            workloads.append(
                Workload(deployment=dep, service=name, fingerprint=service.fingerprint,
                         status="registered")
            )  # fmt: skip
            continue
        state, code, rid = status.get(name, ("running", None, f"id-{name}"))
        workloads.append(
            Workload(deployment=dep, service=name, replica=1, fingerprint=service.fingerprint,
                     status=state, exit_code=code, runtime_id=rid)  # type: ignore[arg-type]
        )  # fmt: skip
    return ObservedState(runtime="fake", workloads=tuple(workloads))


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    opened = Journal(tmp_path / "journal.db")
    yield opened  # type: ignore[misc]
    opened.close()


def test_backoff_doubles_from_initial_to_the_cap() -> None:
    policy = BackoffPolicy(initial=1, factor=2, cap=300)
    assert [policy.base_delay(n) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300,
    ]  # fmt: skip
    assert policy.base_delay(10_000) == 300
    jittered = BackoffPolicy(initial=10, jitter=0.1)
    assert jittered.delay(1, 0.0) == pytest.approx(9.0)
    assert jittered.delay(1, 0.999999) == pytest.approx(11.0, abs=1e-4)
    with pytest.raises(ZlayerError, match="factor"):
        BackoffPolicy(factor=0.5)
    assert describe_wait(40) == "40s" and describe_wait(150) == "2m30s"


def test_crash_loop_follows_the_schedule_and_counts_only_up(journal: Journal) -> None:
    clock = Clock()
    policy = BackoffPolicy(initial=1, factor=2, cap=8, jitter=0)
    supervisor = Supervisor(journal, policy, clock=clock, rng=lambda: 0.5)
    desired = _desired()
    waits = []
    for attempt in range(1, 7):
        observed = _observed(desired, {"db": ("exited", 1, "id-db")})
        first = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
        held = first.held["demo/db/1"]
        assert "restart:demo/db/1" not in {a.id for a in first.plan.actions}
        # the same exited run seen again by the next resync is the same crash
        again = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
        assert again.held["demo/db/1"].streak == held.streak == attempt
        assert first.wake_at is not None
        waits.append(first.wake_at - clock.now)
        clock.now = first.wake_at
        due = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
        assert "restart:demo/db/1" in {a.id for a in due.plan.actions}
        crash = journal.crash("demo/db/1")
        assert crash is not None and crash.restarts == attempt
        clock.now += 0.5  # it restarts, and crashes again
    assert waits == [1, 2, 4, 8, 8, 8]
    # running long enough ends the streak; the count stays
    clock.now += policy.reset_after + 1
    running = _observed(desired, {})
    supervisor.supervise(plan_changes(desired, running), desired, running, {})
    crash = journal.crash("demo/db/1")
    assert crash is not None and (crash.streak, crash.restarts) == (0, 6)
    assert "crash backoff reset" in journal.events(5, target="demo/db/1")[0]["message"]


def test_dependents_wait_with_a_held_restart(journal: Journal) -> None:
    clock = Clock()
    supervisor = Supervisor(journal, BackoffPolicy(jitter=0), clock=clock)
    desired = _desired()
    observed = _observed(desired, {"db": ("exited", 2, "a"), "web": ("exited", 1, "b")})
    result = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
    ids = {a.id for a in result.plan.actions}
    assert "restart:demo/db/1" not in ids and "restart:demo/web/1" not in ids
    notes = {n.subject: n.message for n in result.plan.notes}
    assert notes["demo/db/1"].startswith("crash-looping: 0 restarts, next in 1s")
    clock.now += 5
    result = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
    restart_web = result.plan.action("restart:demo/web/1")
    assert "restart:demo/db/1" in restart_web.waits_for


def test_on_panic_shutdown_and_isolate_are_never_restarted(journal: Journal) -> None:
    clock = Clock()
    supervisor = Supervisor(journal, BackoffPolicy(jitter=0), clock=clock)
    desired = _desired()
    observed = _observed(desired, {"stopper": ("exited", 1, "s")})
    unhealthy = {w.id: "health check failed 3 times in a row: refused"
                 for w in observed.workloads if w.service == "keeper"}  # fmt: skip
    for _ in range(3):
        result = supervisor.supervise(plan_changes(desired, observed), desired, observed, unhealthy)
        clock.now += 3600
        assert result.held["demo/stopper/1"].held == "shutdown"
        assert result.wake_at is None
    assert "stopped after a crash (on_panic: shutdown)" in result.held["demo/stopper/1"].describe(
        clock.now
    )
    # the unhealthy isolate replica is only counted when the planner restarts it
    assert result.stop == ()
    released = journal.release_held()
    assert released == ["demo/stopper/1"]


def test_journal_survives_reopening_and_counters_never_go_down(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = Journal(path)
    first.record_crash("d/s/1", instance="a", exit_code=1, at=1.0, next_at=2.0, held=None)
    first.count_restart("d/s/1", 2.0)
    first.close()
    second = Journal(path)
    crash = second.crash("d/s/1")
    assert crash is not None and (crash.restarts, crash.streak) == (1, 1)
    second.end_streak("d/s/1")
    second.count_restart("d/s/1", 3.0)
    crash = second.crash("d/s/1")
    assert crash is not None and (crash.restarts, crash.streak) == (2, 0)
    second.close()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert path.stat().st_mode & 0o777 == 0o600


def test_journal_retention_bounds_history(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", retention_days=1)
    old = journal.start_reconcile("old", 1000.0)
    journal.finish_reconcile(old, at=1001.0, revision="r", outcome="applied", summary="")
    journal.event("x", "old", "long ago", 1000.0)
    now = 1000.0 + 2 * 86400
    new = journal.start_reconcile("new", now)
    journal.finish_reconcile(new, at=now + 1, revision="r", outcome="applied", summary="")
    assert [r["trigger"] for r in journal.reconciles()] == ["new"]
    assert journal.events() == []
    assert MAX_ROWS >= 1000
    journal.close()


def test_cron_fires_on_schedule_once_for_missed_runs(journal: Journal) -> None:
    start = datetime(2026, 11, 22, 2, 0, tzinfo=UTC).timestamp()
    clock = Clock(start)
    cron = Cron(journal, clock)
    desired = _desired()
    assert cron.due(desired) == []  # first seen at 02:00: nothing from the past
    wake = cron.next_wake(desired)
    assert wake == datetime(2026, 11, 22, 3, 0, tzinfo=UTC).timestamp()
    clock.now = wake
    fired = cron.due(desired)
    assert [(s.name, t) for s, t in fired] == [("nightly", "cron 2026-11-22T03:00:00Z")]
    assert cron.due(desired) == []  # fired once
    # down for three days: one run when back, marked as missed
    clock.now = wake + 3 * 86400 + 60
    fired = cron.due(desired)
    assert len(fired) == 1 and "missed" in fired[0][1]
    assert cron.due(desired) == []
    assert cron.next_wake(desired) == datetime(2026, 11, 26, 3, 0, tzinfo=UTC).timestamp()


def test_a_replica_that_exits_0_completed_and_is_no_crash(journal: Journal) -> None:
    """Exit status 0 is ``completed``: the plan does not restart it, the supervisor
    records no crash, so it never enters backoff; status 1 is a crash."""
    supervisor = Supervisor(journal, BackoffPolicy(jitter=0), clock=Clock())
    desired = _desired()
    observed = _observed(desired, {"db": ("exited", 0, "a"), "web": ("exited", 1, "b")})
    done = next(w for w in observed.workloads if w.service == "db")
    assert done.completed and done.state == "completed"
    assert supervisor.crash_of(done, None) is None
    plan = plan_changes(desired, observed)
    assert "restart:demo/db/1" not in {a.id for a in plan.actions}
    result = supervisor.supervise(plan, desired, observed, {})
    assert journal.crash("demo/db/1") is None
    assert journal.crash("demo/web/1") is not None
    assert set(result.held) == {"demo/web/1"}  # its backoff; db has none


def test_a_replica_stopped_by_a_reboot_is_restarted_at_once_and_is_no_crash(
    journal: Journal,
) -> None:
    supervisor = Supervisor(journal, BackoffPolicy(jitter=0), clock=Clock())
    desired = _desired()
    observed = _observed(desired, {"db": ("exited", 0, "a")})
    rebooted = tuple(
        dataclasses.replace(w, stopped_by_reboot=True) if w.service == "db" else w
        for w in observed.workloads
    )
    observed = dataclasses.replace(observed, workloads=rebooted)
    plan = plan_changes(desired, observed)
    assert plan.action("restart:demo/db/1").reason == "stopped by a reboot of the host"
    result = supervisor.supervise(plan, desired, observed, {})
    assert "restart:demo/db/1" in {a.id for a in result.plan.actions}  # no backoff wait
    assert journal.crash("demo/db/1") is None


RESTARTS = spec_text(
    """
    services:
      again:
        image: {name: nginx}
        restart_policy: {kind: always, delay: 5s}
      capped:
        image: {name: nginx}
        restart_policy: {kind: on_failure, max_attempts: 2}
      never:
        image: {name: nginx}
        restart_policy: {kind: "no"}
    """
)


def test_restart_policy_steers_what_the_daemon_restarts(journal: Journal) -> None:
    """``always``: a completion is restarted too, through the backoff (never at once)
    and at least ``delay`` later, as an ``exited`` event, not a crash; ``max_attempts``
    gives up on this service after that many restarts in a row, whatever
    ``give_up_after`` says; ``no``: nothing is restarted."""
    clock = Clock()
    policy = BackoffPolicy(initial=1, factor=2, cap=60, jitter=0)
    supervisor = Supervisor(journal, policy, clock=clock)
    desired, problems = compile_specs([load_ok(RESTARTS)], "r1", CompileInputs(env={}))
    assert desired is not None, problems
    states: Overrides = {
        "again": ("exited", 0, "a1"),
        "capped": ("exited", 3, "c1"),
        "never": ("exited", 3, "n1"),
    }
    observed = _observed(desired, states)
    plan = plan_changes(desired, observed)
    assert plan.action("restart:demo/again/1").reason == (
        "completed (exited with status 0); restart_policy: always"
    )
    assert "restart:demo/never/1" not in {a.id for a in plan.actions}
    notes = {n.subject: n.message for n in plan.notes}
    assert notes["demo/never/1"] == "exited with status 3; not restarted (restart_policy: no)"

    first = supervisor.supervise(plan, desired, observed, {})
    again = first.held["demo/again/1"]
    assert again.next_at == clock.now + 5  # the delay, above the backoff's 1s
    assert first.held["demo/capped/1"].next_at == clock.now + 1
    (event,) = journal.events(10, target="demo/again/1")
    assert event["kind"] == "exited" and event["message"].startswith("completed (exited")

    for run in ("c2", "c3"):
        clock.now += 10
        due = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
        assert "restart:demo/capped/1" in {a.id for a in due.plan.actions}, run
        states["capped"] = ("exited", 3, run)  # it restarts and exits again
        observed = _observed(desired, states)
        held = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
    capped = held.held["demo/capped/1"]
    assert capped.held == "failed" and capped.restarts == 2
    gave_up = journal.events(1, target="demo/capped/1")[0]["message"]
    assert "gave up after 2 restarts in a row (restart_policy.max_attempts)" in gave_up
    assert journal.crash("demo/never/1") is None


def test_an_oom_killed_replica_is_a_crash_that_says_so(journal: Journal) -> None:
    """Killed by the OOM killer: a crash (backoff), recorded with the reason, not a bare
    status 137."""
    supervisor = Supervisor(journal, BackoffPolicy(jitter=0), clock=Clock())
    desired = _desired()
    observed = _observed(desired, {"db": ("running", None, "a"), "web": ("exited", 137, "b")})
    web = next(w for w in observed.workloads if w.service == "web")
    oom = dataclasses.replace(web, oom_killed=True)
    assert supervisor.crash_of(web, None) == "exited with status 137"
    assert supervisor.crash_of(oom, None) == "oom-killed (at its memory limit, status 137)"
    observed = dataclasses.replace(
        observed, workloads=tuple(oom if w.id == web.id else w for w in observed.workloads)
    )
    result = supervisor.supervise(plan_changes(desired, observed), desired, observed, {})
    assert journal.crash("demo/web/1") is not None and "demo/web/1" in result.held
    (event,) = [e for e in journal.events(10, target="demo/web/1") if e["kind"] == "crashed"]
    assert event["message"].startswith("oom-killed (at its memory limit, status 137); restart 1")


@pytest.mark.parametrize(
    "damage",
    [b"not a database at all\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["garbage", "torn-header"],
)
def test_a_damaged_journal_is_refused_to_readers_and_moved_aside_by_its_owner(
    tmp_path: Path, damage: bytes
) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.event("t", "kind", "before the damage", 1.0)
    journal.close()
    for extra in ("journal.db-wal", "journal.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    (tmp_path / "journal.db").write_bytes(damage)
    with pytest.raises(JournalDamaged, match="the daemon moves it aside"):
        Journal(tmp_path / "journal.db")
    assert (tmp_path / "journal.db").read_bytes() == damage  # a reader changes nothing
    owner = Journal(tmp_path / "journal.db", recover=True)
    try:
        assert owner.moved_aside is not None and owner.moved_aside.read_bytes() == damage
        assert owner.moved_aside.name.startswith("journal.db.damaged-")
        assert owner.events(10) == []  # a new journal
        owner.event("t", "kind", "after", 2.0)
        assert [e["message"] for e in owner.events(10)] == ["after"]
    finally:
        owner.close()
    again = Journal(tmp_path / "journal.db", recover=True)  # sound now: nothing moved
    assert again.moved_aside is None
    again.close()

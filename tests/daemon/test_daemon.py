"""The daemon for real on the process runtime: a spec directory it follows, real
processes it keeps running, its journal and its API on a unix socket.

Checked on the runtime (the workloads' ids and start times through /v1/observed,
which is the driver's observe), not only in what the daemon says about itself."""

from __future__ import annotations

import itertools
import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon.journal import Journal
from tests.daemon_support import Daemon, observed_workloads
from tests.support import needs_root, wait_for

pytest_plugins = ["tests.daemon_support"]

DEP = "dmn"


def write_specs(directory: Path, services: dict[str, Any], name: str = "app.yaml") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    document = {"version": "v1", "deployment": DEP, "services": services}
    target = directory / name
    temporary = directory / f".{name}.tmp"
    temporary.write_text(json.dumps(document, indent=2))
    temporary.rename(target)


def sleeper(replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "image": {"name": "busybox"},
        "command": {"entrypoint": ["sleep"], "args": ["3600"]},
        "network_mode": "host",
        "stop_grace_period": "1s",
        "scale": {"mode": "fixed", "replicas": replicas},
        **extra,
    }


def shell(script: str, rtype: str = "service", **extra: Any) -> dict[str, Any]:
    return {
        "rtype": rtype,
        "image": {"name": "busybox"},
        "command": {"entrypoint": ["sh"], "args": ["-c", script]},
        "network_mode": "host",
        "stop_grace_period": "1s",
        **extra,
    }


def running(daemon: Daemon, prefix: str = f"{DEP}/") -> dict[str, tuple[str, str]]:
    """Running replicas → (runtime id, start time)."""
    return {
        key: (w["runtime_id"], w.get("started_at") or "")
        for key, w in observed_workloads(daemon).items()
        if key.startswith(prefix) and w["status"] == "running"
    }


@pytest.mark.slow
def test_a_directory_change_converges_a_broken_one_keeps_the_last_good(
    daemon_host: Daemon,
) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(specs, {"a": sleeper(1)})
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    daemon_host.start()
    first = wait_for(lambda: len(running(daemon_host)) == 1 and running(daemon_host), "a/1")

    write_specs(specs, {"a": sleeper(2)})
    both = wait_for(lambda: len(running(daemon_host)) == 2 and running(daemon_host), "a/2")
    assert both[f"{DEP}/a/1"] == first[f"{DEP}/a/1"]  # scale-up touched only the new one

    (specs / "app.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: v1
            deployment: {DEP}
            services:
              a:
                image: {{name: busybox}}
                scale: {{mode: fixed, replicas: three}}
            """
        )
    )
    invalid = wait_for(
        lambda: daemon_host.events(kind="revision-invalid"), "the broken revision recorded"
    )
    assert "app.yaml:6:36" in invalid[0]["message"], invalid[0]["message"]
    status = daemon_host.status()
    assert "not valid" in status["problem"] and "app.yaml:6:36" in status["problem"]
    done = len(daemon_host.wait_reconciles(1))
    daemon_host.wait_reconciles(done + 2)  # two resyncs later: the last good still runs
    assert running(daemon_host) == both
    assert daemon_host.get("/readyz")[0] == 200

    write_specs(specs, {"a": sleeper(1)})
    wait_for(lambda: set(running(daemon_host)) == {f"{DEP}/a/1"}, "scale back to 1")
    assert daemon_host.status()["problem"] is None

    assert daemon_host.terminate() == 0
    assert "workloads left running" in daemon_host.events(kind="stopped")[0]["message"]
    alive = _recorded_pids(daemon_host.state)
    assert alive and all(_alive(pid) for pid in alive), "SIGTERM must leave workloads running"


def _recorded_pids(state: Path) -> list[int]:
    return [
        int(json.loads(p.read_text())["pid"])
        for p in state.glob(f"process/deployments/{DEP}/services/*/*/run.json")
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_kill_9_of_the_daemon_five_times_restarts_no_workload(daemon_host: Daemon) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(specs, {"many": sleeper(6), "few": sleeper(4)})
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    daemon_host.start()
    before = wait_for(lambda: len(running(daemon_host)) == 10 and running(daemon_host), "10 up")
    for round_ in range(5):
        daemon_host.kill9()
        done = len(daemon_host.reconciles())
        daemon_host.start()
        daemon_host.wait_reconciles(done + 1)
        assert running(daemon_host) == before, f"after kill -9 number {round_ + 1}"
    assert daemon_host.events(kind="crashed") == []
    recent = daemon_host.reconciles()[:5]
    assert all(r["outcome"] == "no-changes" for r in recent if r["finished"]), recent


def recorded_crash(daemon_host: Daemon, target: str) -> Any:
    """The daemon's journal record of ``target``'s crashes (None: none)."""
    journal = Journal.in_state_dir(daemon_host.state)
    try:
        return journal.crash(target)
    finally:
        journal.close()


@pytest.mark.slow
def test_a_crash_loop_backs_off_on_schedule_and_its_counters_survive_kill_9(
    daemon_host: Daemon,
) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(specs, {"crasher": shell("exit 3")})
    daemon_host.configure(
        f'path = "{specs}"\nresync = 30',
        backoff="initial = 0.4\nfactor = 2\ncap = 1.6\njitter = 0\nreset_after = 600",
    )
    daemon_host.start()
    target = f"{DEP}/crasher/1"

    def crash() -> Any:
        return recorded_crash(daemon_host, target)

    seen: list[tuple[int, int, float]] = []  # (streak, restarts, next_at - crashed_at)

    def five_streaks_seen() -> bool:
        current = crash()
        if current is not None and current.next_at is not None:
            row = (current.streak, current.restarts, round(current.next_at - current.crashed_at, 3))
            if row not in seen:
                seen.append(row)
        return len({s for s, _, _ in seen}) >= 5

    wait_for(five_streaks_seen, lambda: f"five crash streaks; seen {seen}", 60)
    streaks = sorted({s: d for s, _, d in seen}.items())
    assert streaks[:5] == [(1, 0.4), (2, 0.8), (3, 1.6), (4, 1.6), (5, 1.6)], seen
    # each restart came no sooner than its backoff: from the journal's own times
    # (a restart of a replica that exits at once ends "failed": it did not stay running)
    restarts = [e for e in daemon_host.events(target=target) if e["message"].startswith("restart:")]
    crashes = [e for e in daemon_host.events(target=target) if e["kind"] == "crashed"]
    assert len(restarts) >= 3 and len(crashes) >= 4
    status = daemon_host.status()["crash_loops"][target]
    assert status.startswith("crash-looping: "), status

    before = crash()
    daemon_host.kill9()
    daemon_host.start()
    wait_for(lambda: crash().restarts > before.restarts, "a restart by the new daemon")
    after = crash()
    assert after.restarts > before.restarts and after.streak >= before.streak
    if before.next_at is not None:  # the new daemon kept the old one's schedule
        assert after.restarted_at >= before.next_at - 0.05
    # the crash loop goes on where it was: its streak grows, it does not start over
    wait_for(lambda: crash().streak > after.streak, "the next crash counted")
    # plan and status show it too
    shown = daemon_host.zlayer("status", "--runtime", "process")
    assert "crash-looping" in shown.stdout, shown.stdout + shown.stderr
    assert "health: the running daemon's checks" in shown.stdout, shown.stdout
    planned = daemon_host.zlayer("plan", str(specs), "--runtime", "process")
    assert "crash-looping" in planned.stdout, planned.stdout + planned.stderr


def test_a_crash_loop_past_give_up_after_is_failed_until_retry(daemon_host: Daemon) -> None:
    """``[backoff] give_up_after = 2``: the third crash in a row is not restarted; the
    replica is failed in the journal, ``status``, ``plan`` and ``/metrics``; ``daemon
    retry`` starts it again, with a new streak."""
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(specs, {"crasher": shell("exit 3")})
    daemon_host.configure(
        f'path = "{specs}"\nresync = 30',
        backoff="initial = 0.2\nfactor = 1\njitter = 0\ngive_up_after = 2",
    )
    daemon_host.start()
    target = f"{DEP}/crasher/1"

    def crash() -> Any:
        return recorded_crash(daemon_host, target)

    wait_for(lambda: crash() is not None and crash().held == "failed", "the daemon to give up")
    given_up = crash()
    assert given_up.restarts == 2, given_up
    gave_up = [e for e in daemon_host.events(target=target) if "failed: gave up" in e["message"]]
    assert len(gave_up) == 1, daemon_host.events(target=target)
    assert "zlayer_failed_replicas 1" in daemon_host.metrics()
    shown = daemon_host.zlayer("status", "--runtime", "process")
    assert f"{target}: failed: gave up after 2 restarts" in shown.stdout, shown.stdout
    planned = daemon_host.zlayer("plan", str(specs), "--runtime", "process")
    assert "failed: gave up after 2 restarts" in planned.stdout, planned.stdout
    assert crash().restarts == 2  # nothing restarts it meanwhile

    retried = daemon_host.zlayer("daemon", "retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    wait_for(lambda: crash().restarts > 2, "a restart after retry")
    wait_for(lambda: crash().held == "failed", "the daemon to give up again, two restarts on")
    assert crash().restarts == 4


def test_the_daemon_removes_a_replica_that_exits_under_delete_on_exit(
    daemon_host: Daemon,
) -> None:
    """``lifecycle.delete_on_exit`` under the daemon: the replica's exit wakes a
    reconcile that removes it; no crash is counted and no later reconcile (the
    directory changing again) creates it, until its config changes."""
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    trigger = daemon_host.root / "exit-now"
    script = f"while [ ! -e {trigger} ]; do sleep 0.1; done; exit 3"
    once = {"scale": {"mode": "fixed", "replicas": 1}, "lifecycle": {"delete_on_exit": True}}
    write_specs(specs, {"once": shell(script, **once), "stays": sleeper()})
    daemon_host.configure(f'path = "{specs}"\nresync = 300', backoff="initial = 0.2\njitter = 0")
    daemon_host.start()
    target = f"{DEP}/once/1"
    wait_for(lambda: target in running(daemon_host), "once/1 to run")
    trigger.touch()
    wait_for(lambda: target not in observed_workloads(daemon_host), "once/1 to be removed")
    removed = [
        e
        for e in daemon_host.events(target=target)
        if e["kind"] == "succeeded" and "remove" in e["message"]
    ]
    assert removed, daemon_host.events(target=target)
    assert recorded_crash(daemon_host, target) is None  # removed, not a crash

    before = len([r for r in daemon_host.reconciles() if r["finished"]])
    write_specs(specs, {"once": shell(script, **once), "stays": sleeper(), "x": sleeper()})
    daemon_host.wait_reconciles(before + 1)
    wait_for(lambda: f"{DEP}/x/1" in running(daemon_host), "the new service x")
    assert target not in observed_workloads(daemon_host)  # still removed

    trigger.unlink()
    changed = shell(script, **once, env={"ROUND": "2"})
    write_specs(specs, {"once": changed, "stays": sleeper(), "x": sleeper()})
    wait_for(lambda: target in running(daemon_host), "once/1 created again, its config changed")


def test_the_daemon_follows_restart_policy(daemon_host: Daemon) -> None:
    """Under the daemon, ``restart_policy: always`` restarts a replica that keeps
    exiting 0, through the backoff, as ``exited`` events (no crash); ``max_attempts:
    1`` gives up on a failing one after one restart, though ``give_up_after`` is 0."""
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    once = {"scale": {"mode": "fixed", "replicas": 1}}
    write_specs(
        specs,
        {
            "again": shell("sleep 0.2; exit 0", **once, restart_policy={"kind": "always"}),
            "capped": shell(
                "exit 3", **once, restart_policy={"kind": "on_failure", "max_attempts": 1}
            ),
        },
    )
    daemon_host.configure(f'path = "{specs}"\nresync = 30', backoff="initial = 0.2\njitter = 0")
    daemon_host.start()
    again, capped = f"{DEP}/again/1", f"{DEP}/capped/1"

    def restarts(target: str) -> int:
        crash = recorded_crash(daemon_host, target)
        return 0 if crash is None else crash.restarts

    wait_for(lambda: restarts(again) >= 2, lambda: f"two restarts of again: {restarts(again)}")
    kinds = {e["kind"] for e in daemon_host.events(target=again)}
    assert "exited" in kinds and "crashed" not in kinds, kinds
    wait_for(
        lambda: (
            (crash := recorded_crash(daemon_host, capped)) is not None and crash.held == "failed"
        ),
        "the daemon to give up on capped",
    )
    assert restarts(capped) == 1
    gave_up = [e["message"] for e in daemon_host.events(target=capped) if "gave up" in e["message"]]
    assert gave_up and "(restart_policy.max_attempts)" in gave_up[0], gave_up


def test_an_unhealthy_replica_is_restarted_as_a_crash(daemon_host: Daemon) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    health = {
        "start_grace": "0s", "interval": "0.3s", "timeout": "0.3s", "retries": 2,
        "check": {"type": "tcp", "port": 1},  # nothing listens on port 1
    }  # fmt: skip
    write_specs(specs, {"sick": sleeper(1, health=health)})
    daemon_host.configure(f'path = "{specs}"\nresync = 30', backoff="initial = 0.2\njitter = 0")
    daemon_host.start(wait_ready=False)
    target = f"{DEP}/sick/1"
    wait_for(lambda: daemon_host.events(target=target, kind="unhealthy"), "unhealthy")
    crashed = wait_for(lambda: daemon_host.events(target=target, kind="crashed"), "a crash")
    assert "health check failed 2 times in a row" in crashed[-1]["message"]
    wait_for(
        lambda: any(e["kind"] == "succeeded" and "restart" in e["message"]
                    for e in daemon_host.events(target=target)),
        "the restart",
    )  # fmt: skip


@pytest.mark.slow
def test_cron_runs_never_overlap_and_jobs_run_through_the_daemon(daemon_host: Daemon) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(
        specs,
        {
            "tick": shell("echo tick; sleep 2.2", rtype="cron", schedule="* * * * * *"),
            "once": shell("echo hello from the job; exit 0", rtype="job"),
        },
    )
    daemon_host.configure(f'path = "{specs}"\nresync = 30')
    daemon_host.start()

    wait_for(
        lambda: len([r for r in daemon_host.runs("tick") if r.status == "succeeded"]) >= 2,
        "two runs",
        40,
    )
    done = sorted(
        (r for r in daemon_host.runs("tick") if r.status == "succeeded"), key=lambda r: r.started
    )
    for earlier, later in itertools.pairwise(done):
        assert later.started >= earlier.finished, "cron runs overlapped"
    skipped = [r for r in daemon_host.runs("tick") if r.status == "skipped"]
    assert skipped and "still running" in skipped[0].note
    assert "tick" in done[0].log_tail

    started = daemon_host.zlayer("job", "run", f"{DEP}/once")
    assert started.returncode == 0, started.stderr
    assert "through the daemon" in started.stdout
    run_id = started.stdout.split()[1]
    wait_for(
        lambda: "succeeded" in daemon_host.zlayer("job", "ls").stdout.split(run_id)[-1][:200],
        "the job to succeed",
    )
    logs = daemon_host.zlayer("job", "logs", run_id)
    assert "hello from the job" in logs.stdout, logs

    # without a daemon the same command runs the job itself and exits with its status
    assert daemon_host.terminate() == 0
    direct = daemon_host.zlayer(
        "job", "run", f"{DEP}/once", str(specs), "--runtime", "process",
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert "hello from the job" in direct.stdout


@pytest.mark.slow
def test_once_history_events_and_retry_without_a_daemon(daemon_host: Daemon) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(specs, {"a": sleeper(1)})
    daemon_host.configure(f'path = "{specs}"')
    once = daemon_host.once()
    assert once.returncode == 0, once.stderr
    history = daemon_host.zlayer("history")
    assert history.returncode == 0 and "applied" in history.stdout and "once" in history.stdout
    events = daemon_host.zlayer("events", "--format", "json")
    kinds = {e["kind"] for e in json.loads(events.stdout)}
    assert "applied" in kinds
    again = daemon_host.once()
    assert again.returncode == 0
    assert daemon_host.reconciles()[0]["outcome"] == "no-changes"
    retry = daemon_host.zlayer("daemon", "retry")
    assert retry.returncode == 0 and "No daemon runs" in retry.stdout


@pytest.mark.slow
def test_bad_input_is_refused_before_anything_runs(tmp_path: Path, daemon_host: Daemon) -> None:
    daemon_host.configure("")
    nothing = daemon_host.once()
    assert nothing.returncode == 1 and "nothing to follow" in nothing.stderr
    missing = daemon_host.once("--dir", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr
    both = daemon_host.once("--dir", str(tmp_path), "--repo", str(tmp_path))
    assert both.returncode == 1 and "not both" in both.stderr
    daemon_host.config.write_text('[daemon]\nresync = "soon"\n')
    bad = daemon_host.once("--dir", str(tmp_path))
    assert bad.returncode == 1 and "daemon.resync must be a duration (like 30s or 5m)" in bad.stderr
    assert not (daemon_host.state / "journal.db").exists()


def test_sighup_reloads_the_config_and_metrics_count_workloads(daemon_host: Daemon) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    write_specs(specs, {"a": sleeper(2)})
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    daemon_host.start()
    wait_for(lambda: len(running(daemon_host)) == 2, "a/1 and a/2")

    metrics = daemon_host.metrics
    text = wait_for(lambda: 'zlayer_workloads{state="running"} 2' in metrics() and metrics(),
                    "the workloads in /metrics")  # fmt: skip
    assert 'zlayer_reconciles_total{outcome="applied"} 1' in text
    assert "zlayer_applied_revision_age_seconds" in text

    daemon_host.configure(f'path = "{specs}"\nresync = 1', backoff="initial = 7")
    assert daemon_host.proc is not None
    daemon_host.proc.send_signal(signal.SIGHUP)
    reloaded = wait_for(lambda: daemon_host.events(kind="reloaded"), "the reload")
    assert str(daemon_host.config) in reloaded[0]["message"]
    assert daemon_host.proc.poll() is None and daemon_host.get("/readyz")[0] == 200
    daemon_host.config.write_text("[daemon]\nresync = -1\n")
    daemon_host.proc.send_signal(signal.SIGHUP)
    failed = wait_for(lambda: daemon_host.events(kind="reload-failed"), "a refused reload")
    assert "daemon.resync" in failed[0]["message"]
    assert daemon_host.proc.poll() is None  # a bad config file does not stop the daemon

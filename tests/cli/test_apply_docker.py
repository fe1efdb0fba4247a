"""``zlayer apply`` end to end on a real Docker engine (the private one from tests/with-docker).

Every test runs the CLI as a subprocess, as users do, on a deployment of its own
(``deployment_name``) whose containers, network and volumes are removed afterwards.
Workloads the test process connects to use host networking on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.docker_support import (  # noqa: F401
    deployment_name,
    docker_url,
    registry,
    remove_deployment,
    test_image,
)
from tests.support import heavy_in, modules_loaded_by, stop_proxy, wait_for

pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Host:
    """One test's view of the engine: spec files in a directory, a state directory,
    and the zlayer CLI run against the private engine."""

    def __init__(self, tmp: Path, url: str, image: str, deployment: str) -> None:
        self.specs = tmp / "specs"
        self.specs.mkdir()
        self.state = tmp / "state"
        self.url = url
        self.image = image
        self.deployment = deployment
        self.env = {
            **os.environ,
            "DOCKER_HOST": url,
            "ZLAYER_STATE_DIR": str(self.state),
            "ZLAYER_PUBLISH_ADDRESS": "127.0.0.1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def write(self, services: dict[str, Any], name: str = "app.yaml") -> None:
        """One spec file holding ``services`` (written as JSON, which is YAML)."""
        spec = {"version": "v1", "deployment": self.deployment, "services": services}
        text = json.dumps(spec, indent=1).replace('"IMAGE"', json.dumps(self.image))
        (self.specs / name).write_text(text)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", *args]

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def apply(self, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
        """``apply --auto-approve --format json``: (exit code, events, stderr)."""
        run = self.run("apply", str(self.specs), "--auto-approve", "--format", "json", *extra)
        events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        return run.returncode, events, run.stderr

    def plan(self) -> dict[str, Any]:
        run = self.run("plan", str(self.specs), "--runtime", "docker", "--format", "json")
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    def containers(self) -> dict[str, dict[str, Any]]:
        """Name → inspect data of every container of this deployment."""
        ids = docker(
            self.url, "ps", "-aq", "--filter", f"label=zlayer.deployment={self.deployment}"
        )
        if not ids.split():
            return {}
        data = json.loads(docker(self.url, "inspect", *ids.split()))
        return {c["Name"].lstrip("/"): c for c in data}


def docker(url: str, *args: str) -> str:
    run = subprocess.run(
        ["docker", *args],
        env={**os.environ, "DOCKER_HOST": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.fixture
def host(tmp_path: Path, docker_url: str, test_image: str, deployment_name: str) -> Iterator[Host]:  # noqa: F811
    found = Host(tmp_path, docker_url, test_image, deployment_name)
    yield found
    stop_proxy(found.state)  # the managed HAProxy, when a test's spec had a public endpoint


def outcomes(events: list[dict[str, Any]]) -> dict[str, str]:
    """Action id → its last terminal status."""
    final = {}
    for e in events:
        if e["event"] == "action" and e["kind"] in (
            "succeeded",
            "failed",
            "skipped",
            "rolled_back",
        ):
            final[e["action"]] = e["kind"]
    return final


def index_of(events: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool]) -> int:
    for i, e in enumerate(events):
        if match(e):
            return i
    raise AssertionError("no such event")


def sleeper(name: str, script: str = "exec sleep 3600", **extra: Any) -> dict[str, Any]:
    """A service running ``sh -c script`` with an always-passing health check."""
    service = {
        "image": {"name": "IMAGE", "pull_policy": "never"},
        "command": {"entrypoint": ["sh"], "args": ["-c", script]},
        "stop_grace_period": "1s",
        "health": {"start_grace": "1s", "check": {"type": "command", "command": "true"}},
    }
    return {name: {**service, **extra}}


def http_server(
    name: str, port: int, serve_port: int | None = None, **extra: Any
) -> dict[str, Any]:
    """A busybox httpd on the host network answering on 127.0.0.1:port."""
    listen = f"127.0.0.1:{serve_port or port}"
    service = {
        "image": {"name": "IMAGE", "pull_policy": "never"},
        "network_mode": "host",
        "stop_grace_period": "1s",
        "command": {"entrypoint": ["httpd"], "args": ["-f", "-p", listen, "-h", "/srv"]},
        "health": {
            "start_grace": "1s",
            "interval": "1s",
            "timeout": "1s",
            "retries": 3,
            "check": {"type": "http", "url": f"http://localhost:{port}/index.html"},
        },
    }
    return {name: {**service, **extra}}


def healthy(service: str, timeout: str = "60s", condition: str = "healthy") -> list[Any]:
    return [{"service": service, "condition": condition, "timeout": timeout}]


def test_apply_creates_in_dependency_order_gated_on_health_then_is_a_no_op(host: Host) -> None:
    port = free_port()
    # api only runs if db answers when api starts: it exits 7 otherwise.
    script = f"wget -q -O /dev/null http://127.0.0.1:{port}/index.html || exit 7; exec sleep 3600"
    host.write(
        http_server("db", port) | sleeper("api", script, network_mode="host", depends=healthy("db"))
    )
    code, events, err = host.apply()
    assert code == 0, (events, err)
    dep = host.deployment
    db_ok = index_of(
        events, lambda e: e.get("action") == f"create:{dep}/db/1" and e["kind"] == "succeeded"
    )
    api_start = index_of(
        events, lambda e: e.get("action") == f"create:{dep}/api/1" and e["kind"] == "started"
    )
    api_wait = index_of(
        events, lambda e: e.get("action") == f"create:{dep}/api/1" and e["kind"] == "waiting"
    )
    assert db_ok < api_start and api_wait < api_start
    time.sleep(1)
    running = host.containers()
    assert {n: c["State"]["Status"] for n, c in running.items()} == {
        f"{dep}-db-1": "running",
        f"{dep}-api-1": "running",
    }
    labels = running[f"{dep}-api-1"]["Config"]["Labels"]
    assert labels["zlayer.deployment"] == dep and labels["zlayer.replica"] == "1"
    assert running[f"{dep}-api-1"]["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
    # A second apply changes nothing and says so.
    ids = {n: c["Id"] for n, c in running.items()}
    code, events, err = host.apply()
    assert code == 0, err
    assert events[0]["plan"]["actions"] == [] and len(events) == 1
    assert {n: c["Id"] for n, c in host.containers().items()} == ids


def test_a_failed_dependency_skips_its_dependents_and_independent_branches_go_on(
    host: Host,
) -> None:
    # An image that is not there, under pull_policy never: the create fails for sure.
    host.write(
        sleeper("broken", image={"name": "zlayer-test/missing:none", "pull_policy": "never"})
        | sleeper("needs-broken", depends=healthy("broken", "5s", "started"))
        | sleeper("alone")
    )
    code, events, _ = host.apply()
    assert code == 1
    dep = host.deployment
    final = outcomes(events)
    assert final[f"create:{dep}/broken/1"] == "failed"
    assert final[f"create:{dep}/needs-broken/1"] == "skipped"
    assert final[f"create:{dep}/alone/1"] == "succeeded"
    skipped = [e for e in events if e.get("action") == f"create:{dep}/needs-broken/1"]
    assert f"create:{dep}/broken/1 failed" in skipped[-1]["message"]
    assert "never" in outcomes_message(events, f"create:{dep}/broken/1")
    assert f"{dep}-needs-broken-1" not in host.containers()


def test_independent_services_start_in_parallel(host: Host) -> None:
    # Each create holds its slot for a second in an init step; both must overlap.
    step = {"steps": [{"id": "pause", "uses": "init.run", "with": {"command": "sleep 1"}}]}
    host.write(sleeper("left", init=step) | sleeper("right", init=step))
    code, events, err = host.apply("--concurrency", "2")
    assert code == 0, err
    dep = host.deployment
    starts = [
        index_of(
            events,
            lambda e, s=s: e.get("action") == f"create:{dep}/{s}/1" and e["kind"] == "started",
        )
        for s in ("left", "right")
    ]
    ends = [
        index_of(
            events,
            lambda e, s=s: e.get("action") == f"create:{dep}/{s}/1" and e["kind"] == "succeeded",
        )
        for s in ("left", "right")
    ]
    assert max(starts) < min(ends)


@pytest.mark.slow
def test_scale_up_and_down_keeps_the_lowest_replicas(host: Host) -> None:
    def write(n: int) -> None:
        host.write(sleeper("web", scale={"mode": "fixed", "replicas": n}))

    dep = host.deployment
    write(2)
    assert host.apply()[0] == 0
    first = {n: c["Id"] for n, c in host.containers().items()}
    assert sorted(first) == [f"{dep}-web-1", f"{dep}-web-2"]
    write(3)
    assert host.apply()[0] == 0
    now = {n: c["Id"] for n, c in host.containers().items()}
    assert sorted(now) == [f"{dep}-web-1", f"{dep}-web-2", f"{dep}-web-3"]
    assert all(now[n] == first[n] for n in first)
    write(1)
    code, events, stderr = host.apply()
    assert code == 0, f"{stderr}\n{events}"
    assert {n: c["Id"] for n, c in host.containers().items()} == {
        f"{dep}-web-1": first[f"{dep}-web-1"]
    }


@pytest.mark.slow
def test_replace_that_fails_health_is_rolled_back(host: Host) -> None:
    port = free_port()
    host.write(http_server("web", port, env={"VERSION": "1"}))
    assert host.apply()[0] == 0
    dep = host.deployment
    before = host.containers()[f"{dep}-web-1"]["Config"]["Labels"]["zlayer.fingerprint"]
    # Version 2 serves on another port than its health check asks.
    host.write(http_server("web", port, serve_port=free_port(), env={"VERSION": "2"}))
    code, events, _ = host.apply()
    assert code == 1
    assert outcomes(events)[f"replace:{dep}/web/1"] == "rolled_back"
    message = [e for e in events if e.get("action") == f"replace:{dep}/web/1"][-1]["message"]
    assert "rolled back" in message and f"{dep}/web/1" in message
    after = host.containers()[f"{dep}-web-1"]
    assert after["Config"]["Labels"]["zlayer.fingerprint"] == before
    assert "VERSION=1" in after["Config"]["Env"]
    time.sleep(1)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # version 1 serves again


@pytest.mark.slow
def test_rollout_stops_at_the_first_unhealthy_replica_and_the_rest_stay(host: Host) -> None:
    three = {"mode": "fixed", "replicas": 3}
    host.write(sleeper("work", scale=three, env={"V": "1"}))
    assert host.apply()[0] == 0
    dep = host.deployment
    ids = {n: c["Id"] for n, c in host.containers().items()}
    host.write(sleeper("work", "exit 0", scale=three, env={"V": "2"}))
    code, events, _ = host.apply()
    assert code == 1
    final = outcomes(events)
    assert final[f"replace:{dep}/work/1"] == "rolled_back"
    assert final[f"replace:{dep}/work/2"] == "skipped"
    assert final[f"replace:{dep}/work/3"] == "skipped"
    now = host.containers()
    assert now[f"{dep}-work-2"]["Id"] == ids[f"{dep}-work-2"]
    assert now[f"{dep}-work-3"]["Id"] == ids[f"{dep}-work-3"]
    assert "V=1" in now[f"{dep}-work-1"]["Config"]["Env"]
    assert now[f"{dep}-work-1"]["State"]["Status"] == "running"


@pytest.mark.slow
def test_init_steps_run_before_the_replica_starts(host: Host, tmp_path: Path) -> None:
    port = free_port()
    marker = tmp_path / "init-ran"
    host.write(
        sleeper(
            "app",
            init={
                "steps": [
                    {
                        "id": "wait",
                        "uses": "init.wait_tcp",
                        "with": {"host": "localhost", "port": port},
                        "timeout": "2s",
                    },
                    {"id": "mark", "uses": "init.run", "with": {"command": f"touch {marker}"}},
                ]
            },
        )
    )
    code, events, _ = host.apply()
    assert code == 1 and not marker.exists()
    assert "init step wait failed" in outcomes_message(events, f"create:{host.deployment}/app/1")
    assert host.containers() == {}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        code, events, err = host.apply()
    assert code == 0, (events, err)
    assert marker.exists()
    assert list(host.containers()) == [f"{host.deployment}-app-1"]


def outcomes_message(events: list[dict[str, Any]], action: str) -> str:
    return str([e for e in events if e.get("action") == action][-1]["message"])


@pytest.mark.slow
def test_prune_removes_what_left_the_specs_and_a_crashed_replica_is_restarted(host: Host) -> None:
    dep = host.deployment
    host.write(sleeper("keep") | sleeper("gone"))
    assert host.apply()[0] == 0
    docker(host.url, "kill", f"{dep}-keep-1")
    host.write(sleeper("keep"))
    plan = host.plan()
    reasons = {a["id"]: a["reason"] for a in plan["actions"]}
    assert sorted(reasons) == [f"prune:{dep}/gone/1", f"restart:{dep}/keep/1"]
    assert "exited with status 137" in reasons[f"restart:{dep}/keep/1"]
    code, events, err = host.apply()
    assert code == 0, (events, err)
    containers = host.containers()
    assert list(containers) == [f"{dep}-keep-1"]
    assert containers[f"{dep}-keep-1"]["State"]["Status"] == "running"
    assert host.plan()["actions"] == []


def test_a_container_that_exits_is_removed_not_restarted_under_delete_on_exit(
    host: Host, tmp_path: Path
) -> None:
    """``lifecycle.delete_on_exit`` on the engine: the killed replica is removed (gone
    from ``docker ps -a``), its sibling of another service restarted; it stays removed
    in the plan, ``status`` and a snapshot, until its config changes."""
    dep = host.deployment
    once = {"scale": {"mode": "fixed", "replicas": 2}, "lifecycle": {"delete_on_exit": True}}
    host.write(sleeper("once", **once) | sleeper("kept"))
    assert host.apply()[0] == 0
    docker(host.url, "kill", f"{dep}-once-1")
    docker(host.url, "kill", f"{dep}-kept-1")
    reasons = {a["id"]: a["reason"] for a in host.plan()["actions"]}
    assert reasons == {
        f"remove:{dep}/once/1": "exited with status 137; removed, not restarted "
        "(lifecycle.delete_on_exit)",
        f"restart:{dep}/kept/1": "exited with status 137",
    }
    code, events, err = host.apply()
    assert code == 0, (events, err)
    containers = host.containers()
    assert sorted(containers) == [f"{dep}-kept-1", f"{dep}-once-2"]
    assert {c["State"]["Status"] for c in containers.values()} == {"running"}

    kept = f"{dep}/once/1: exited with status 137 and was removed at "
    plan = host.plan()
    assert plan["actions"] == []
    assert any(f"{n['subject']}: {n['message']}".startswith(kept) for n in plan["notes"]), plan
    status = host.run("status", "--runtime", "docker", "--format", "json")
    removed = json.loads(status.stdout)["removed_on_exit"]
    assert [(r["service"], r["replica"], r["exit_code"]) for r in removed] == [("once", 1, 137)]
    snapshot = tmp_path / "host.json"
    assert host.run("observe", "--runtime", "docker", "--out", str(snapshot)).returncode == 0
    offline = host.run("plan", str(host.specs), "--observed", str(snapshot), "--detailed-exitcode")
    assert offline.returncode == 0 and kept in " ".join(offline.stdout.split()), offline.stdout

    host.write(sleeper("once", **once, env={"ROUND": "2"}) | sleeper("kept"))
    reasons = {a["id"]: a["reason"] for a in host.plan()["actions"]}
    assert reasons[f"create:{dep}/once/1"] == (
        "exited with status 137 and was removed (lifecycle.delete_on_exit); "
        "its config changed: env.ROUND added: 2"
    ), reasons
    code, events, err = host.apply()
    assert code == 0, (events, err)
    assert sorted(host.containers()) == [f"{dep}-kept-1", f"{dep}-once-1", f"{dep}-once-2"]
    assert host.plan()["actions"] == []


def test_restart_policy_always_restarts_a_completion_and_no_keeps_a_failure(
    host: Host,
) -> None:
    """``restart_policy`` on the engine (whose own restart policy stays ``no``): the
    container that exited 0 under ``always`` is started again by apply; the one that
    exited 3 under ``no`` is left exited, with a note saying why."""
    dep = host.deployment
    host.write(
        sleeper("again", "sleep 1; exit 0", restart_policy={"kind": "always"})
        | sleeper("never", "sleep 1; exit 3", restart_policy={"kind": "no"})
    )
    assert host.apply()[0] in (0, 1)  # may see them exit

    def exited() -> dict[str, tuple[int, str]]:
        found = host.containers()
        return {
            name: (c["State"]["ExitCode"], c["State"]["StartedAt"])
            for name, c in found.items()
            if c["State"]["Status"] == "exited"
        }

    before = wait_for(lambda: len(exited()) == 2 and exited(), "both containers to exit", 60)
    assert {name: code for name, (code, _) in before.items()} == {
        f"{dep}-again-1": 0,
        f"{dep}-never-1": 3,
    }
    plan = host.plan()
    reasons = {a["id"]: a["reason"] for a in plan["actions"]}
    assert reasons == {
        f"restart:{dep}/again/1": "completed (exited with status 0); restart_policy: always"
    }
    notes = [f"{n['subject']}: {n['message']}" for n in plan["notes"]]
    assert f"{dep}/never/1: exited with status 3; not restarted (restart_policy: no)" in notes
    _, events, err = host.apply()
    assert outcomes(events).get(f"restart:{dep}/again/1") == "succeeded", (events, err)
    after = host.containers()
    assert after[f"{dep}-again-1"]["State"]["StartedAt"] != before[f"{dep}-again-1"][1]
    assert after[f"{dep}-never-1"]["State"]["StartedAt"] == before[f"{dep}-never-1"][1]
    assert after[f"{dep}-again-1"]["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")


@pytest.mark.slow
def test_a_stale_saved_plan_is_refused_and_a_fresh_one_applied(host: Host, tmp_path: Path) -> None:
    dep = host.deployment
    saved = tmp_path / "plan.json"
    host.write(sleeper("one"))
    run = host.run("plan", str(host.specs), "--runtime", "docker", "--out", str(saved))
    assert run.returncode == 0, run.stderr
    host.write(sleeper("one") | sleeper("two"))
    run = host.run("apply", str(saved), str(host.specs))
    assert run.returncode == 1
    assert "stale" in run.stderr and "the specs changed" in run.stderr
    assert f"now also needed: create:{dep}/two/1" in run.stderr
    assert host.containers() == {}
    # Once `one` runs, a plan to add `two` is saved; then the host moves under it.
    host.write(sleeper("one"))
    assert host.apply()[0] == 0
    host.write(sleeper("one") | sleeper("two"))
    run = host.run("plan", str(host.specs), "--runtime", "docker", "--out", str(saved))
    assert run.returncode == 0, run.stderr
    docker(host.url, "kill", f"{dep}-one-1")
    run = host.run("apply", str(saved), str(host.specs))
    assert run.returncode == 1 and "the runtime changed" in run.stderr, run.stderr
    assert f"now also needed: restart:{dep}/one/1" in run.stderr
    assert f"{dep}-two-1" not in host.containers()
    # Back as it was when the plan was made: the saved plan applies, without asking.
    docker(host.url, "start", f"{dep}-one-1")
    run = host.run("apply", str(saved), str(host.specs))
    assert run.returncode == 0, run.stderr
    assert sorted(host.containers()) == [f"{dep}-one-1", f"{dep}-two-1"]


def test_a_second_apply_waits_for_the_lock_then_exits_3_naming_the_holder(host: Host) -> None:
    host.write(sleeper("one"))
    ready = host.state / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time\n"
            "from reconciler.lock import ApplyLock\n"
            f"with ApplyLock(pathlib.Path({str(host.state)!r})):\n"
            f"    pathlib.Path({str(ready)!r}).touch()\n"
            "    time.sleep(60)\n",
        ],
        cwd=REPO,
    )
    try:

        def locked() -> bool:
            assert holder.poll() is None, "the lock holder exited early"
            return ready.exists()

        wait_for(locked, "the lock holder to take the lock", 30)
        run = host.run("apply", str(host.specs), "--auto-approve", "--lock-timeout", "0.5")
        assert run.returncode == 3
        assert f"pid {holder.pid}" in run.stderr
        assert host.containers() == {}
    finally:
        holder.kill()
        holder.wait()
    run = host.run("apply", str(host.specs), "--auto-approve")
    assert run.returncode == 0, run.stderr


def test_apply_without_a_terminal_or_auto_approve_is_refused(host: Host) -> None:
    host.write(sleeper("one"))
    run = host.run("apply", str(host.specs))
    assert run.returncode == 1
    assert "--auto-approve" in run.stderr
    assert host.containers() == {}


@pytest.mark.slow
def test_kill_9_at_random_moments_then_apply_converges(host: Host) -> None:
    dep = host.deployment

    def services(version: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(6):
            after = {"depends": healthy(f"s{i - 1}", "30s", "started")} if i % 3 else {}
            out |= sleeper(f"s{i}", f"exec sleep {3600 + version}", **after)
        return out

    rng = random.Random(20261122)
    points = [rng.uniform(0.3, 3.0) for _ in range(5)]
    for version, delay in enumerate(points):
        # Each round changes the config, so every round has replaces to interrupt.
        host.write(services(version))
        process = subprocess.Popen(
            host.command("apply", str(host.specs), "--auto-approve", "--format", "json"),
            cwd=REPO,
            env=host.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        code, events, err = host.apply()
        assert code == 0, (delay, events, err)
        names = sorted(host.containers())
        assert names == sorted(f"{dep}-s{i}-1" for i in range(6)), (delay, names)
        assert host.plan()["actions"] == [], delay


@pytest.mark.slow
def test_status_logs_and_destroy(host: Host) -> None:
    dep = host.deployment
    host.write(
        sleeper("db", "echo db says hello; exec sleep 3600")
        | sleeper(
            "api", depends=healthy("db", "30s", "started"), scale={"mode": "fixed", "replicas": 2}
        )
    )
    assert host.apply()[0] == 0
    run = host.run("status", "--deployment", dep)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert rows[0][:4] == ["DEPLOYMENT", "SERVICE", "REPLICA", "STATE"]
    assert run.stdout.splitlines()[-1].startswith("health: the runtime's own")
    assert sorted((r[1], r[2], r[3]) for r in rows[1:-1]) == [
        ("api", "1", "running"),
        ("api", "2", "running"),
        ("db", "1", "running"),
    ]
    run = host.run("logs", f"{dep}/db")
    assert run.returncode == 0 and run.stdout == "db says hello\n", run.stderr
    run = host.run("logs", "nosuch")
    assert run.returncode == 1 and "nosuch: no such workload" in run.stderr
    run = host.run("destroy", dep, "--auto-approve", "--format", "json")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert set(outcomes(events)) == {
        f"remove:{dep}/api/1",
        f"remove:{dep}/api/2",
        f"remove:{dep}/db/1",
    }
    db_started = index_of(
        events, lambda e: e.get("action") == f"remove:{dep}/db/1" and e["kind"] == "started"
    )
    for replica in (1, 2):
        api_done = index_of(
            events,
            lambda e, r=replica: (
                e.get("action") == f"remove:{dep}/api/{r}" and e["kind"] == "succeeded"
            ),
        )
        assert api_done < db_started  # dependents go first
    assert host.containers() == {}
    networks = docker(host.url, "network", "ls", "--filter", f"label=zlayer.deployment={dep}", "-q")
    assert networks.strip() == ""


@pytest.mark.slow
def test_the_demo_specs_apply_on_docker(tmp_path: Path, docker_url: str) -> None:  # noqa: F811
    """The bundled demo specs on a Docker host: import busybox, apply, status, destroy.
    web's public endpoint is served on 127.0.0.1:8080 here, by the managed HAProxy."""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 8080)) != 0, "port 8080 is taken on this host"
    env = {**os.environ, "DOCKER_HOST": docker_url}
    try:
        subprocess.run(
            ["contrib/docker/import-busybox"], cwd=REPO, env=env, check=True, timeout=120
        )
        host = Host(tmp_path, docker_url, "busybox:1.36", "demo")
        demo = ("specs/demo.yaml", "specs/observability.yaml")
        run = host.run("apply", *demo, "--auto-approve")
        assert run.returncode == 0, run.stdout + run.stderr
        # web's public route and dashboard's internal one are two of them
        assert "Apply complete: 8 succeeded" in run.stdout, run.stdout
        assert "demo/web/1 in rotation on :8080" in run.stdout, run.stdout
        assert "observability/dashboard/1 in rotation on :9090" in run.stdout, run.stdout
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as web:
            web.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"200 OK" in web.recv(1024)
        status = host.run("status")
        assert status.returncode == 0
        assert sum(" running " in line for line in status.stdout.splitlines()) == 4
        assert host.run("apply", *demo, "--auto-approve").stdout.count("No changes.") == 1
        for deployment in ("demo", "observability"):
            run = host.run("destroy", deployment, "--auto-approve")
            assert run.returncode == 0, run.stderr
            if deployment == "observability":  # the last routed endpoint
                assert "proxy stopped: no routed endpoint left" in run.stdout, run.stdout
        assert "No workloads" in host.run("status").stdout
    finally:
        stop_proxy(tmp_path / "state")
        for deployment in ("demo", "observability"):
            remove_deployment(docker_url, deployment)


@pytest.mark.slow
def test_the_readme_main_job_runs_hello_on_docker(tmp_path: Path, docker_url: str) -> None:  # noqa: F811
    """The README's main job where a Docker engine answers: the auto runtime picks
    docker, hello runs on the host's Python imported as an image, worker reaches web
    by name, web's public endpoint is served on 127.0.0.1:8080 by the managed HAProxy,
    with no warning; then destroy."""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 8080)) != 0, "port 8080 is taken on this host"
    env = {**os.environ, "DOCKER_HOST": docker_url}
    try:
        subprocess.run(["contrib/docker/import-python"], cwd=REPO, env=env, check=True, timeout=300)
        host = Host(tmp_path, docker_url, "zlayer-example/python:3", "hello")
        run = host.run("apply", "specs/hello.yaml", "--auto-approve")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Runtime: docker (auto: a Docker engine answered" in run.stderr
        assert "Apply complete: 4 succeeded" in run.stdout  # 3 workloads and web's route
        assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
        assert "hello/web/1 in rotation on :8080" in run.stdout, run.stdout
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as web:
            web.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"200 OK" in web.recv(1024)

        def worker_logs() -> str:
            return host.run("logs", "worker").stdout

        wait_for(
            lambda: "web answered 200" in worker_logs(),
            lambda: f"the worker to say 'web answered 200'; its logs:\n{worker_logs()}",
            30,
            interval=0.5,
        )
        status = host.run("status")
        assert sum(" running " in line for line in status.stdout.splitlines()) == 2
        destroyed = host.run("destroy", "hello", "--auto-approve")
        assert destroyed.returncode == 0, destroyed.stderr
        assert "proxy stopped: no routed endpoint left" in destroyed.stdout
        assert "No workloads" in host.run("status").stdout
    finally:
        stop_proxy(tmp_path / "state")
        remove_deployment(docker_url, "hello")


def test_a_converged_apply_loads_neither_aiodocker_nor_pydantic(host: Host) -> None:
    """A converged apply only reads (the engine's info and one container list), through
    the standard library; aiodocker comes with the first call that changes something,
    and pydantic with a spec that must be compiled or a config that must be checked.
    The cold apply through the same probe shows that the probe sees both."""
    host.write(sleeper("web"))
    argv = ("apply", str(host.specs), "--auto-approve", "--format", "json")
    assert host.env["ZLAYER_STATE_DIR"] and host.env["ZLAYER_PUBLISH_ADDRESS"]
    cold, cold_modules = modules_loaded_by(argv, host.env)
    assert cold.returncode == 0, cold.stderr
    assert {"aiodocker", "pydantic"} <= {m.split(".")[0] for m in cold_modules}
    again, modules = modules_loaded_by(argv, host.env)
    assert again.returncode == 0, again.stderr
    plan = json.loads(again.stdout.splitlines()[0])
    assert plan["event"] == "plan" and plan["plan"]["actions"] == []
    assert [m for m in heavy_in(modules) if m.split(".")[0] != "rich"] == []
    assert list(host.containers()) == [f"{host.deployment}-web-1"]


@pytest.mark.slow
def test_an_image_that_moved_in_its_registry_is_replaced_under_pull_policy_always(
    host: Host,
    registry: str,  # noqa: F811
) -> None:
    """A tag pushed again to a real registry (on loopback): ``plan`` shows the replica
    as a replace with the old and new digests, ``apply`` runs the new image, and then
    nothing is left to do. ``if_not_present`` never asks the registry."""
    ref = f"{registry}/zl/{host.deployment}:1"

    def push_new(change: str) -> str:
        """Build a new image under ``ref`` (one file more) and push it; its id."""
        name = f"{host.deployment}-build"
        label = f"zlayer.deployment={host.deployment}"  # removed with the deployment
        docker(host.url, "run", "--name", name, "--label", label, host.image, "touch", change)
        docker(host.url, "commit", name, ref)
        docker(host.url, "rm", name)
        docker(host.url, "push", ref)
        return docker(host.url, "image", "inspect", ref, "--format", "{{.Id}}").strip()

    def digest() -> str:
        found = docker(host.url, "image", "inspect", ref, "--format", "{{json .RepoDigests}}")
        return str(json.loads(found)[0]).rpartition("@")[2]

    def write(policy: str) -> None:
        service = sleeper("app")["app"]
        host.write({"app": {**service, "image": {"name": ref, "pull_policy": policy}}})

    def plan() -> subprocess.CompletedProcess[str]:
        return host.run("plan", str(host.specs), "--runtime", "docker", "--detailed-exitcode")

    push_new("/first")
    first = digest()
    write("always")
    code, events, stderr = host.apply()
    assert code == 0, f"{stderr}\n{events}"
    unchanged = plan()
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    moved = push_new("/second")
    second = digest()
    assert second != first
    drift = plan()
    assert drift.returncode == 2, drift.stdout + drift.stderr
    reason = f"image {ref} moved in its registry: {first[:19]} → {second[:19]}"
    assert f"~ replace    {host.deployment}/app/1  {reason}" in drift.stdout, drift.stdout
    code, events, stderr = host.apply()
    assert code == 0, f"{stderr}\n{events}"
    (container,) = host.containers().values()
    assert container["Image"] == moved
    assert plan().returncode == 0

    write("if_not_present")  # never asks: a moved tag is no change
    push_new("/third")
    quiet = plan()
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr


def test_platform_is_the_one_pulled_from_the_registry(
    host: Host,
    registry: str,  # noqa: F811
) -> None:
    """``platform`` reaches the engine (pull and create): the engine's own platform is
    pulled from the registry and runs; another one the image does not have is refused
    by the engine, so that service fails with the engine's reason — and the plan
    warned."""
    ref = f"{registry}/zl/{host.deployment}:1"
    name = f"{host.deployment}-build"
    label = f"zlayer.deployment={host.deployment}"  # removed with the deployment
    docker(host.url, "run", "--name", name, "--label", label, host.image, "true")
    docker(host.url, "commit", name, ref)
    docker(host.url, "rm", name)
    docker(host.url, "push", ref)
    docker(host.url, "image", "rm", ref)  # so that apply must pull it
    arch = docker(host.url, "version", "--format", "{{.Server.Arch}}").strip()
    other = "arm64" if arch == "amd64" else "amd64"  # the two ZLayer knows

    def service(platform_arch: str) -> dict[str, Any]:
        base = sleeper("x")["x"]
        image = {"name": ref, "pull_policy": "if_not_present"}
        return {**base, "image": image, "platform": {"os": "linux", "arch": platform_arch}}

    host.write({"native": service(arch)})
    code, events, err = host.apply()
    assert code == 0, (events, err)
    (container,) = host.containers().values()
    assert container["State"]["Status"] == "running"
    docker(host.url, "rm", "-f", container["Id"])
    docker(host.url, "image", "rm", ref)

    host.write({"foreign": service(other)})
    planned = host.run("plan", str(host.specs), "--runtime", "docker")
    assert f"platform linux/{other} differs from the engine's linux/{arch}" in planned.stdout, (
        planned.stdout + planned.stderr
    )
    code, events, err = host.apply()
    assert code == 1, (events, err)
    failed = [e for e in events if e.get("kind") == "failed"]
    (message,) = [e["message"] for e in failed]
    assert f"does not match the specified platform: wanted linux/{other}" in message, message
    assert host.containers() == {}


def test_zlayer_scale_sets_a_manual_count_that_apply_then_keeps(host: Host) -> None:
    """``zlayer scale`` on a ``scale: manual`` service: the count is applied and kept —
    a container removed behind zlayer's back is made again by the next plan, with
    the reason; a fixed service is refused, changing nothing."""
    dep = host.deployment
    host.write(sleeper("web", scale={"mode": "manual"}) | sleeper("fixed"))
    assert host.apply()[0] == 0
    assert sorted(host.containers()) == [f"{dep}-fixed-1"]  # manual: none yet
    run = host.run("scale", f"{dep}/web", "2", str(host.specs), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(host.containers()) == [f"{dep}-fixed-1", f"{dep}-web-1", f"{dep}-web-2"]
    assert host.plan()["actions"] == []

    docker(host.url, "rm", "-f", f"{dep}-web-2")
    reasons = {a["id"]: a["reason"] for a in host.plan()["actions"]}
    assert reasons == {f"create:{dep}/web/2": "replicas 1 → 2 (zlayer scale)"}
    assert host.apply()[0] == 0
    assert f"{dep}-web-2" in host.containers()

    refused = host.run("scale", "fixed", "5", str(host.specs), "--auto-approve")
    assert refused.returncode == 1
    assert "scale.mode is fixed; only a scale: manual service" in refused.stderr, refused.stderr
    assert sorted(host.containers()) == [f"{dep}-fixed-1", f"{dep}-web-1", f"{dep}-web-2"]
    down = host.run("scale", "web", "1", str(host.specs), "--auto-approve")
    assert down.returncode == 0, down.stdout + down.stderr
    assert sorted(host.containers()) == [f"{dep}-fixed-1", f"{dep}-web-1"]

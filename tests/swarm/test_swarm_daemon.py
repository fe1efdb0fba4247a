"""The daemon on the swarm runtime, against a real three-node swarm: a directory change
converges the Swarm services, kill -9 of the daemon changes nothing, a job runs as a
replicated-job service with its exit status and output, and SIGTERM leaves the
services running."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import Daemon
from tests.docker_support import engine_request
from tests.support import wait_for
from tests.swarm_support import IMAGE, PROXY_IMAGE, Swarm, service_tasks

pytest_plugins = ["tests.swarm_support"]


def write_specs(directory: Path, deployment: str, replicas: int, job: bool = False) -> None:
    services: dict[str, Any] = {
        "web": {
            "image": {"name": IMAGE},
            "command": {"entrypoint": ["sh", "-c", "exec sleep 3600"]},
            "stop_grace_period": "1s",
            "scale": {"mode": "fixed", "replicas": replicas},
        }
    }
    if job:
        services["job-hello"] = {
            "rtype": "job",
            "image": {"name": IMAGE},
            "command": {"entrypoint": ["sh", "-c", "echo hi from the swarm; exit 4"]},
        }
    write_text(directory, deployment, services)


def write_text(directory: Path, deployment: str, services: dict[str, Any]) -> None:
    """The spec of ``services``, written so the daemon never reads half of it."""
    text = json.dumps({"version": "v1", "deployment": deployment, "services": services})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.yaml.tmp").write_text(text)
    (directory / "app.yaml.tmp").rename(directory / "app.yaml")


def swarm_daemon(tmp_path: Path, swarm: Swarm) -> Daemon:
    """A daemon on the swarm runtime against ``swarm``'s manager, its proxies on the
    imported HAProxy."""
    env = {**os.environ, "NO_COLOR": "1", "DOCKER_HOST": swarm.url}
    env["ZLAYER_SWARM_PROXY_IMAGE"] = PROXY_IMAGE
    env.pop("ZLAYER_STATE_DIR", None)
    return Daemon(tmp_path, "swarm", env)


def spec_version(swarm: Swarm, name: str) -> tuple[int, int] | None:
    """The service's (replicas, version index), None while it does not exist."""
    status, service = engine_request(swarm.url, "GET", f"/services/{name}")
    if status != 200:
        return None
    return service["Spec"]["Mode"]["Replicated"]["Replicas"], service["Version"]["Index"]


@pytest.mark.slow
def test_the_daemon_keeps_swarm_services_converged(
    tmp_path: Path, swarm: Swarm, swarm_deployment: str
) -> None:
    daemon = swarm_daemon(tmp_path, swarm)
    name = f"{swarm_deployment}_web"
    try:
        specs = tmp_path / "specs"
        write_specs(specs, swarm_deployment, 1)
        daemon.configure(f'path = "{specs}"\nresync = 1')
        daemon.start()
        wait_for(lambda: len(service_tasks(swarm, name)) == 1, "web's one task running", 90)
        write_specs(specs, swarm_deployment, 3, job=True)
        wait_for(lambda: len(service_tasks(swarm, name)) == 3, "web scaled to 3", 90)
        settled = spec_version(swarm, name)
        assert settled is not None and settled[0] == 3

        # kill -9 and a new daemon: it adopts the service by its labels, changes nothing.
        daemon.kill9()
        done = len(daemon.reconciles())
        daemon.start()
        daemon.wait_reconciles(done + 2)
        assert spec_version(swarm, name) == settled, "a converged service was updated"

        ran = daemon.zlayer("job", "run", f"{swarm_deployment}/job-hello")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        run_id = ran.stdout.split()[1]
        logs = wait_for(
            lambda: "exit status 4" in (out := daemon.zlayer("job", "logs", run_id)).stderr and out,
            "the job's end",
            90,
        )
        assert "hi from the swarm" in logs.stdout, logs.stdout

        assert daemon.terminate() == 0
        assert len(service_tasks(swarm, name)) == 3, "SIGTERM must leave the service running"
    finally:
        daemon.close()
        print(daemon.output()[-4000:])


def checked_web(version: str, check: str) -> dict[str, Any]:
    return {
        "image": {"name": IMAGE},
        "command": {"entrypoint": ["sh", "-c", "exec sleep 3600"]},
        "env": {"V": version},
        "stop_grace_period": "1s",
        "scale": {"mode": "fixed", "replicas": 2},
        "health": {
            "check": {"type": "command", "command": check},
            "interval": "1s", "start_grace": "1s", "retries": 1,
        },
    }  # fmt: skip


@pytest.mark.slow
def test_the_daemon_runs_cron_on_the_swarm_and_keeps_the_last_good_revision_when_rolled_back(
    tmp_path: Path, swarm: Swarm, swarm_deployment: str
) -> None:
    daemon = swarm_daemon(tmp_path, swarm)
    name = f"{swarm_deployment}_web"
    tick = {
        "rtype": "cron",
        "schedule": "*/2 * * * * *",
        "image": {"name": IMAGE},
        "command": {"entrypoint": ["sh", "-c", "echo tick on the swarm"]},
    }
    try:
        specs = tmp_path / "specs"
        write_text(specs, swarm_deployment, {"web": checked_web("1", "true"), "tick": tick})
        daemon.configure(f'path = "{specs}"\nresync = 1')
        daemon.start()

        # Cron: each tick a replicated-job service on a node, its output in the journal.
        def succeeded() -> list[Any]:
            return [r for r in daemon.runs("tick") if r.status == "succeeded"]

        wait_for(lambda: len(succeeded()) >= 2,
                 lambda: f"two cron runs on the swarm: {daemon.runs('tick')}", 120)  # fmt: skip
        done = succeeded()
        assert all("tick on the swarm" in r.log_tail for r in done), done
        wait_for(lambda: len(service_tasks(swarm, name)) == 2, "web's two tasks running", 90)

        # A revision whose health check fails: Swarm rolls the update back, the daemon
        # marks the revision bad, keeps the last good, and does not try it again.
        last = max(r["id"] for r in daemon.reconciles())
        write_text(specs, swarm_deployment, {"web": checked_web("2", "false"), "tick": tick})
        wait_for(
            lambda: any(r["outcome"] == "rolled-back" and r["id"] > last
                        for r in daemon.reconciles()),
            lambda: f"the rolled-back reconcile: {daemon.reconciles()[:3]}", 120,
        )  # fmt: skip
        bad = [e for e in daemon.events() if e["kind"] == "revision-bad"]
        assert bad and "rolled back" in bad[-1]["message"], bad
        _, service = engine_request(swarm.url, "GET", f"/services/{name}")
        assert "V=1" in service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
        settled = spec_version(swarm, name)
        daemon.wait_reconciles(len(daemon.reconciles()) + 2)
        assert spec_version(swarm, name) == settled, "the bad revision was tried again"
        assert len(service_tasks(swarm, name)) == 2
    finally:
        daemon.close()
        print(daemon.output()[-4000:])

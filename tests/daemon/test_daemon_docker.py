"""The daemon on the docker runtime (the private test engine): a directory change
converges the containers, kill -9 of the daemon restarts none of them, a crashed
container is restarted with its backoff, a job runs, SIGTERM leaves containers
running — checked against the engine's own container list and start times."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_support import Daemon
from tests.docker_support import engine_request
from tests.support import wait_for

pytest_plugins = ["tests.docker_support", "tests.daemon_support"]


def _specs(directory: Path, deployment: str, image: str, services: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    body = {
        name: {
            "image": {"name": image, "pull_policy": "never"},
            "command": {"entrypoint": ["sh"], "args": ["-c", script]},
            "stop_grace_period": "1s",
            **(
                {"rtype": "job"}
                if name.startswith("job")
                else {"scale": {"mode": "fixed", "replicas": n}}
            ),
        }
        for name, (script, n) in services.items()
    }
    text = json.dumps({"version": "v1", "deployment": deployment, "services": body})
    (directory / "app.yaml.tmp").write_text(text)
    (directory / "app.yaml.tmp").rename(directory / "app.yaml")


def _containers(url: str, deployment: str) -> dict[str, tuple[str, str, str]]:
    """Replica containers of ``deployment`` → (id, state, started at), from the engine."""
    label = json.dumps({"label": [f"zlayer.deployment={deployment}"]})
    _, listed = engine_request(url, "GET", "/containers/json", {"all": "1", "filters": label})
    out = {}
    for item in listed:
        labels = item["Labels"]
        if not labels.get("zlayer.replica") or "zlayer.run" in labels:
            continue
        status, detail = engine_request(url, "GET", f"/containers/{item['Id']}/json")
        if status == 404:
            continue  # removed between the list and the inspect
        key = f"{labels['zlayer.service']}/{labels['zlayer.replica']}"
        out[key] = (item["Id"], detail["State"]["Status"], detail["State"]["StartedAt"])
    return out


@pytest.mark.slow
def test_the_daemon_keeps_docker_containers_converged(
    tmp_path: Path, docker_url: str, test_image: str, deployment_name: str
) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "docker", env)
    try:
        specs = tmp_path / "specs"
        sleep = ("sleep 3600", 1)
        _specs(specs, deployment_name, test_image, {"web": sleep})
        daemon.configure(
            f'path = "{specs}"\nresync = 1',
            backoff="initial = 0.3\njitter = 0",
        )
        daemon.start()

        def up(count: int) -> Any:
            found = _containers(docker_url, deployment_name)
            return (
                len(found) == count and all(s == "running" for _, s, _ in found.values()) and found
            )

        first = wait_for(lambda: up(1), "web/1 running")
        _specs(
            specs, deployment_name, test_image,
            {"web": ("sleep 3600", 3), "job-hello": ("echo hi from docker; exit 4", 0)},
        )  # fmt: skip
        three = wait_for(lambda: up(3), "web scaled to 3")
        assert three["web/1"] == first["web/1"]

        for _ in range(2):
            daemon.kill9()
            done = len(daemon.reconciles())
            daemon.start()
            daemon.wait_reconciles(done + 1)
            assert _containers(docker_url, deployment_name) == three

        # a container killed behind the daemon's back is restarted (after its backoff)
        victim = three["web/2"][0]
        engine_request(docker_url, "POST", f"/containers/{victim}/kill", {"signal": "KILL"})
        wait_for(
            lambda: daemon.events(target=f"{deployment_name}/web/2", kind="crashed"), "the crash"
        )
        again = wait_for(lambda: up(3), "web/2 running again")
        assert again["web/2"][0] == victim and again["web/2"][2] != three["web/2"][2]

        ran = daemon.zlayer("job", "run", f"{deployment_name}/job-hello")
        assert ran.returncode == 0, ran.stderr
        run_id = ran.stdout.split()[1]
        logs = wait_for(
            lambda: "exit status 4" in (out := daemon.zlayer("job", "logs", run_id)).stderr and out,
            "the job's end",
        )
        assert "hi from docker" in logs.stdout

        assert daemon.terminate() == 0
        assert up(3), "SIGTERM must leave the containers running"
    finally:
        daemon.close()
        print(daemon.output()[-4000:])
        if (tmp_path / "state" / "journal.db").exists():
            for row in daemon.reconciles()[-6:]:
                print(
                    row["trigger"], row["revision"], row["outcome"], row["summary"], row["outcomes"]
                )


def test_the_daemon_autoscales_docker_containers_by_their_cpu(
    tmp_path: Path, docker_url: str, test_image: str, deployment_name: str
) -> None:
    """``scale: adaptive`` with a cpu target, measured by the engine's one-shot stats:
    containers that burn a core for 15 s are scaled up, then back to ``min`` once
    they idle and the cooldown has passed; never above ``max``."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "docker", env)
    try:
        specs = tmp_path / "specs"
        specs.mkdir()
        burn = "timeout 15 sh -c 'while :; do :; done'; exec sleep 3600"
        service = {
            "image": {"name": test_image, "pull_policy": "never"},
            "command": {"entrypoint": ["sh"], "args": ["-c", burn]},
            "stop_grace_period": "1s",
            "scale": {"mode": "adaptive", "min": 1, "max": 3, "cooldown": "3s",
                      "targets": {"cpu": 40}},
        }  # fmt: skip
        document = {"version": "v1", "deployment": deployment_name, "services": {"burn": service}}
        (specs / "app.yaml").write_text(json.dumps(document))
        daemon.configure(f'path = "{specs}"\nresync = 300', autoscale='interval = "1s"')
        daemon.start()
        seen: set[int] = set()

        def running() -> int:
            found = _containers(docker_url, deployment_name)
            count = sum(state == "running" for _, state, _ in found.values())
            seen.add(count)
            return count

        wait_for(lambda: running() >= 2, lambda: f"a scale-up; seen {seen}", 60)
        events = daemon.events(target=f"{deployment_name}/burn", kind="scaled")
        assert events and "vs target 40% per replica" in events[-1]["message"], events
        wait_for(lambda: running() == 1, lambda: f"back to min; seen {seen}", 120)
        assert max(seen) <= 3, seen
        gone = [e["message"] for e in daemon.events(target=f"{deployment_name}/burn")]
        assert any(" → 1 replicas" in m for m in gone), gone
    finally:
        daemon.close()

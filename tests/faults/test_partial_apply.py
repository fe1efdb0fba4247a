"""Fault matrix, row 11: an apply cut off by its engine mid-plan. A forwarding socket in
front of the test engine lets three container starts through and then goes away (every
connection closed, the socket removed), as an engine that stops would; the apply fails
and its outcomes say which actions happened; with the engine back, the next plan holds
exactly the rest, and applying it leaves each replica once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.docker.reader import socket_path
from tests.docker_support import engine_request
from tests.fault_support import EngineProxy

pytestmark = [pytest.mark.faults, pytest.mark.docker]
pytest_plugins = ["tests.docker_support"]

STARTS = 3


def spec(deployment: str, image: str) -> str:
    services = {
        name: {
            "image": {"name": image, "pull_policy": "never"},
            "command": {"entrypoint": ["sleep"], "args": ["600"]},
            "stop_grace_period": "1s",
            "scale": {"mode": "fixed", "replicas": 2},
        }
        for name in ("a", "b", "c")
    }
    return json.dumps({"version": "v1", "deployment": deployment, "services": services})


def zlayer(url: str, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": url, "ZLAYER_STATE_DIR": str(state), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def planned(run: subprocess.CompletedProcess[str]) -> set[str]:
    document: dict[str, Any] = json.loads(run.stdout)
    return {a["id"] for a in document["actions"] if "(network)" not in a["id"]}


def test_an_apply_cut_off_mid_plan_leaves_exactly_the_rest_to_the_next_plan(
    docker_url: str, test_image: str, deployment_name: str, tmp_path: Path
) -> None:
    engine = socket_path(docker_url)
    assert engine is not None
    specs = tmp_path / "app.yaml"
    specs.write_text(spec(deployment_name, test_image))
    state = tmp_path / "state"
    proxy = EngineProxy(engine, tmp_path / "engine.sock", STARTS)
    whole = zlayer(proxy.url, state, "plan", str(specs), "--runtime", "docker", "--format", "json")
    assert whole.returncode == 0, whole.stderr
    everything = planned(whole)
    assert len(everything) == 6, everything

    cut = zlayer(proxy.url, state, "apply", str(specs), "--runtime", "docker",
                 "--auto-approve", "--format", "json", "--concurrency", "1")  # fmt: skip
    assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stdout + cut.stderr
    assert proxy.cut.is_set(), "the engine was cut off"
    events = [json.loads(line) for line in cut.stdout.splitlines() if line.startswith("{")]
    actions = [e for e in events if e.get("event") == "action" and "(network)" not in e["action"]]
    done = {e["action"] for e in actions if e["kind"] == "succeeded"}
    failed = [e for e in actions if e["kind"] == "failed"]
    assert len(done) == STARTS, done
    said = failed[0]["message"] if failed else ""
    assert "engine" in said and ("no answer" in said or "Cannot connect" in said), failed

    back = EngineProxy(engine, tmp_path / "engine2.sock", None)
    try:
        rest = zlayer(back.url, state, "plan", str(specs), "--runtime", "docker",
                      "--format", "json")  # fmt: skip
        assert rest.returncode == 0, rest.stderr
        left = planned(rest)
        targets = {a.split(":", 1)[1] for a in everything}
        assert not {a.split(":", 1)[1] for a in done} & {a.split(":", 1)[1] for a in left}
        assert {a.split(":", 1)[1] for a in done} | {a.split(":", 1)[1] for a in left} == targets
        again = zlayer(back.url, state, "apply", str(specs), "--runtime", "docker",
                       "--auto-approve")  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        label = json.dumps({"label": [f"zlayer.deployment={deployment_name}"]})
        _, found = engine_request(docker_url, "GET", "/containers/json",
                                  {"all": "1", "filters": label})  # fmt: skip
        replicas = sorted((c["Labels"]["zlayer.service"], c["Labels"]["zlayer.replica"])
                          for c in found)  # fmt: skip
        assert replicas == [(s, r) for s in "abc" for r in "12"], replicas
        assert all(c["State"] == "running" for c in found), found
    finally:
        back.close()

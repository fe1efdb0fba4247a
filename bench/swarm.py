"""Benchmark: zlayer's swarm runtime beside ``docker stack deploy``, on one real cluster.

Run (root: it builds a three-node swarm of private engines in network namespaces with
``tests/swarm_support.py`` and removes it at the end):
    .venv/bin/python bench/swarm.py [--services N]

Both deploy the same N services (busybox ``httpd``, one replica each, on an overlay
network), each from nothing, on the same cluster, one after the other:

1. cold: ``zlayer apply`` (returns once every task runs) beside ``docker stack deploy``
   of the equivalent compose file followed by waiting for every task to run (the CLI
   returns before anything runs, so the wait is what makes the two comparable); target
   zlayer ≤ 1.0× of the stack;
2. converged: ``zlayer apply`` again (nothing to change: no mutating call) beside a
   repeated ``docker stack deploy`` of the same file; target ≤ 0.5×. Both CLIs pay
   their start (a Python interpreter and its imports: about 0.5 s here, more than the
   whole Go CLI run), so the same comparison is also made for the daemon's converged
   pass: observe the swarm and plan, in a process already running (what every resync
   of ``zlayer daemon`` does), beside the repeated stack deploy.

A benchmark, not a test: targets are reported (PASS/MISS) and the exit status is 0
however they turn out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.swarm_support import (  # noqa: E402
    IMAGE,
    Swarm,
    build_swarm,
    destroy_swarm,
    remove_swarm_deployment,
    service_tasks,
)

HTTPD = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w"


def spec(deployment: str, count: int) -> str:
    lines = [f"version: v1\ndeployment: {deployment}\nservices:"]
    for i in range(count):
        lines.append(
            f"  s{i}:\n    image: {{name: {json.dumps(IMAGE)}}}\n"
            f"    command: {{entrypoint: [sh, -c, {json.dumps(HTTPD)}]}}\n"
            "    scale: {mode: fixed, replicas: 1}\n"
            "    health: {check: {type: command, command: 'true'}, interval: 1s, start_grace: 1s}"
        )
    return "\n".join(lines) + "\n"


def compose(count: int) -> str:
    services = {
        f"s{i}": {
            "image": IMAGE,
            "entrypoint": ["sh", "-c", HTTPD],
            "deploy": {"replicas": 1, "endpoint_mode": "dnsrr"},
            "healthcheck": {"test": ["CMD-SHELL", "true"], "interval": "1s", "start_period": "1s"},
            "networks": ["net"],
        }
        for i in range(count)
    }
    return json.dumps(
        {
            "version": "3.8",
            "services": services,
            "networks": {"net": {"driver": "overlay", "attachable": True}},
        }
    )


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed: {done.stdout}{done.stderr}")
    return elapsed


def wait_running(swarm: Swarm, names: list[str]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if all(service_tasks(swarm, name) for name in names):
            return
        time.sleep(0.1)
    raise SystemExit("the stack's tasks did not all run within 600s")


async def converged_pass(swarm: Swarm, path: Path) -> tuple[float, int]:
    """The fastest of five observe-and-plan passes in this process (the daemon's resync),
    and how many actions the last plan had (0: converged, nothing sent)."""
    from reconciler.desired import CompileInputs, compile_specs
    from reconciler.drivers.swarm import SwarmDriver
    from reconciler.plan.planner import plan_changes
    from reconciler.spec.load import load_text

    loaded, problems = load_text(path.read_text(), str(path))
    assert loaded is not None, problems
    desired, _ = compile_specs([loaded], "bench", CompileInputs(secret_key=b"k"))
    assert desired is not None
    best, actions = float("inf"), -1
    async with SwarmDriver(swarm.url) as driver:
        for _ in range(5):
            started = time.perf_counter()
            observed = await driver.observe(list(desired.deployments))
            plan = plan_changes(desired, observed)
            best = min(best, time.perf_counter() - started)
            actions = len(plan.actions)
    return best, actions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=20)
    args = parser.parse_args()
    count = args.services
    swarm = build_swarm()
    try:
        with tempfile.TemporaryDirectory(prefix="zlbench-swarm-") as tmp:
            work = Path(tmp)
            env = {
                **os.environ, "DOCKER_HOST": swarm.url, "ZLAYER_STATE_DIR": str(work / "state"),
                "NO_COLOR": "1",
            }  # fmt: skip
            (work / "app.yaml").write_text(spec("zlbench-swarm", count))
            (work / "stack.json").write_text(compose(count))
            apply = [sys.executable, "-m", "reconciler", "apply", str(work / "app.yaml"),
                     "--runtime", "swarm", "--auto-approve"]  # fmt: skip
            stack = ["docker", "stack", "deploy", "--resolve-image", "never",
                     "-c", str(work / "stack.json"), "zlstack"]  # fmt: skip
            cold_zlayer = timed(apply, env)
            started = time.perf_counter()
            timed(stack, env)
            wait_running(swarm, [f"zlstack_s{i}" for i in range(count)])
            cold_stack = time.perf_counter() - started
            warm_zlayer = min(timed(apply, env) for _ in range(3))
            warm_stack = min(timed(stack, env) for _ in range(3))
            daemon_pass, changes = asyncio.run(converged_pass(swarm, work / "app.yaml"))
            if changes:
                raise SystemExit(f"the converged plan is not empty: {changes} actions")
            remove_swarm_deployment(swarm, "zlbench-swarm")
            subprocess.run(["docker", "stack", "rm", "zlstack"], env=env, capture_output=True)
    finally:
        destroy_swarm(swarm)
    rows = [
        ("cold", cold_zlayer, cold_stack, 1.0),
        ("converged", warm_zlayer, warm_stack, 0.5),
        ("daemon", daemon_pass, warm_stack, 0.5),
    ]
    print(f"{count} services on a 3-node swarm (docker stack deploy beside zlayer apply)")
    for name, ours, theirs, target in rows:
        ratio = ours / theirs
        verdict = "PASS" if ratio <= target else "MISS"
        print(
            f"{name:10} zlayer {ours:6.2f}s  stack {theirs:6.2f}s  ratio {ratio:4.2f}× "
            f"(target ≤ {target}×) {verdict}"
        )


if __name__ == "__main__":
    main()

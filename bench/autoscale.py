"""Benchmark: what adaptive scaling costs and how fast it reacts, in one run.

Run (root, for the process runtime's cgroups):
    tests/with-docker .venv/bin/python bench/autoscale.py [--replicas N] [--rounds R]

1. Sampling cost, side by side with what an operator would run instead:
   a. the process runtime: N replicas (``sleep``), one autoscaler sample of them (one
      cgroup read per replica) — zlayer's CPU time per sample, and that as a
      percentage of one core at the default 15 s interval (target <= 1 %);
   b. Docker: N containers, zlayer's one-shot stats of all of them, beside
      ``docker stats --no-stream`` of the same containers — wall time of each and the
      ratio a/b.
2. Reaction: the daemon on the process runtime, ``[autoscale] interval = 2s``, a
   service whose replica starts burning a core: from the burn's start to the second
   replica running, printed beside the interval (as a multiple of it).

A benchmark, not a test: targets are reported (PASS/MISS) and the exit status is 0
however they turn out. Everything it creates carries the deployment
``zlbench-scale`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler.autoscale import ScalePolicy  # noqa: E402
from reconciler.daemon.autoscale import Autoscaler  # noqa: E402
from reconciler.daemon.journal import Journal  # noqa: E402
from reconciler.desired import CompileInputs, compile_specs  # noqa: E402
from reconciler.spec.load import load_text  # noqa: E402

DEPLOYMENT = "zlbench-scale"


def zlayer(state: Path, *args: str, runtime: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZLAYER_STATE_DIR": str(state), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args, "--runtime", runtime],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def spec(replicas: int, image: str, command: str, cpu_target: int = 90) -> str:
    scale = (
        f"{{mode: adaptive, min: {replicas}, max: {replicas + 5}, targets: {{cpu: {cpu_target}}}}}"
    )
    return (
        f"version: v1\ndeployment: {DEPLOYMENT}\nservices:\n  s:\n"
        f"    image: {{name: {json.dumps(image)}, pull_policy: never}}\n"
        f"    command: {{entrypoint: [sh, -c, {json.dumps(command)}]}}\n"
        f"    stop_grace_period: 1s\n    network_mode: host\n    scale: {scale}\n"
    )


async def sample_cost(runtime: str, state: Path, text: str, rounds: int) -> list[float]:
    """CPU seconds of this process per autoscaler sample of the deployment."""
    from reconciler.runtimes import open_runtime
    from reconciler.settings import Settings

    loaded, problems = load_text(text, "bench.yaml")
    assert loaded is not None, problems
    desired, _ = compile_specs([loaded], "bench", CompileInputs(secret_key=b"k"))
    assert desired is not None
    journal = Journal(state / "bench-journal.db")
    scaler = Autoscaler(journal, time.time, interval=15)
    costs = []
    async with open_runtime(runtime, Settings(state_dir=state)) as driver:
        observed = await driver.observe([DEPLOYMENT])
        for _ in range(rounds):
            before = time.process_time()
            await scaler.sample(driver, desired, observed)
            costs.append(time.process_time() - before)
    journal.close()
    return costs


def wall(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the process runtime's cgroups)")
    assert ScalePolicy  # the decision itself is pure and negligible next to the reads
    with tempfile.TemporaryDirectory(prefix="zlbench-scale-") as tmp:
        root = Path(tmp)
        specs = root / "specs.yaml"
        # 1a. the process runtime
        state = root / "process"
        specs.write_text(spec(args.replicas, "busybox", "exec sleep 3600"))
        made = zlayer(state, "apply", str(specs), "--auto-approve", runtime="process")
        if made.returncode != 0:
            raise SystemExit(made.stdout + made.stderr)
        try:
            costs = asyncio.run(sample_cost("process", state, specs.read_text(), args.rounds))
        finally:
            zlayer(state, "destroy", DEPLOYMENT, "--auto-approve", runtime="process")
        per = statistics.median(costs)
        share = 100 * per / 15
        verdict = "PASS" if share <= 1 else "MISS"
        print(f"1a. process runtime, {args.replicas} replicas: {per * 1000:.1f} ms CPU per "
              f"sample = {share:.3f}% of one core at 15 s (target <= 1%) {verdict}")  # fmt: skip

        # 1b. Docker, beside docker stats --no-stream
        image = os.environ.get("ZLAYER_TEST_IMAGE")
        if not image:
            print("1b. skipped: no Docker engine (run through tests/with-docker)")
        else:
            state = root / "docker"
            specs.write_text(spec(args.replicas, image, "exec sleep 3600"))
            made = zlayer(state, "apply", str(specs), "--auto-approve", runtime="docker")
            try:
                if made.returncode != 0:
                    raise SystemExit(made.stdout + made.stderr)
                names = [f"{DEPLOYMENT}-s-{i}" for i in range(1, args.replicas + 1)]
                ours = [
                    wall(lambda: asyncio.run(
                        sample_cost("docker", state, specs.read_text(), 1)))
                    for _ in range(args.rounds)
                ]  # fmt: skip
                theirs = [
                    wall(lambda: subprocess.run(
                        ["docker", "stats", "--no-stream", *names],
                        capture_output=True, check=True, timeout=300))
                    for _ in range(args.rounds)
                ]  # fmt: skip
                a, b = statistics.median(ours), statistics.median(theirs)
                print(f"1b. docker, {args.replicas} containers: zlayer one-shot stats "
                      f"{a:.2f} s, docker stats --no-stream {b:.2f} s, "
                      f"ratio {a / b:.2f}")  # fmt: skip
            finally:
                zlayer(state, "destroy", DEPLOYMENT, "--auto-approve", runtime="docker")

        # 2. reaction time under the daemon
        print(reaction(root))
    return 0


def reaction(root: Path) -> str:
    state, specs_dir = root / "daemon", root / "daemon-specs"
    specs_dir.mkdir()
    go = root / "burn-now"
    burn = (
        f"while [ ! -e {go} ]; do sleep 0.1; done; "
        "timeout 120 sh -c 'while :; do :; done'; exec sleep 3600"
    )
    (specs_dir / "app.yaml").write_text(spec(1, "busybox", burn, cpu_target=40))
    config = root / "config.toml"
    config.write_text(
        f'state_dir = "{state}"\n[daemon]\npath = "{specs_dir}"\nresync = 300\n'
        f'socket = "{root / "api.sock"}"\n[autoscale]\ninterval = "2s"\n'
    )
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "daemon", "--config", str(config),
         "--runtime", "process"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while running(state) < 1:
            if time.monotonic() > deadline:
                return "2. the first replica never ran"
            time.sleep(0.2)
        go.touch()
        started = time.monotonic()
        while running(state) < 2:
            if time.monotonic() > started + 120:
                return "2. no scale-up within 120 s"
            time.sleep(0.1)
        took = time.monotonic() - started
        return (
            f"2. load above target → second replica running: {took:.1f} s with a 2 s "
            f"interval ({took / 2:.1f} intervals)"
        )
    finally:
        daemon.terminate()
        daemon.wait(30)
        zlayer(state, "destroy", DEPLOYMENT, "--auto-approve", runtime="process")


def running(state: Path) -> int:
    found = zlayer(state, "observe", runtime="process")
    if found.returncode != 0:
        return 0
    return sum(w["status"] == "running" for w in json.loads(found.stdout)["workloads"])


if __name__ == "__main__":
    raise SystemExit(main())

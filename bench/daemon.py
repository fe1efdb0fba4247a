"""Benchmark: the daemon, side by side with what it replaces, in one run.

Run: tests/with-docker /tmp/dev/bin/python bench/daemon.py [--rounds N] [--idle-seconds S]

1. Commit-to-running on the Docker engine (the private one ``tests/with-docker``
   starts): a local git repository (a bare "remote" and a clone that pushes) holds a
   ZLayer spec and the equivalent ``docker-compose.yml`` of one service. Each round
   changes that service's env in both files, commits and pushes, and times from the
   push to the container running with the new env:
     a. ``zlayer daemon`` polling the remote every 1 s;
     b. ``zlayer daemon`` told by a signed webhook sent right after the push;
     c. the baseline, run from the same moment: ``git pull && docker-compose up -d
        SERVICE`` in a checkout.
   Each round starts once the daemon has settled (applied the last commit, no
   reconcile running). Medians of ``--rounds``; ratios a/c and b/c (target <= 1.5).
2. Idle: the daemon on the process runtime with 20 workloads (``sleep``), left alone
   for ``--idle-seconds`` (default 300): its CPU time over that window as a percentage
   of one core (target <= 0.5%) and its RSS at the end (target <= 100 MB).
3. Crash to restart call: on the process runtime, a replica killed with SIGKILL at a
   known moment; from the kill to the daemon's decision to restart it (the journal's
   ``restarted_at``), minus the backoff it scheduled (1 s, no jitter; target <= 1 s).
   ``--rounds`` kills, one replica each.

A benchmark, not a test: targets are reported (PASS/MISS) and the exit status is 0
however they turn out; it is 1 only when something does not work at all. Everything
it creates carries the deployment ``zlbench-daemon`` or the compose project
``zlbench-daemon-compose`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler.daemon.client import call  # noqa: E402
from reconciler.daemon.journal import Journal  # noqa: E402
from reconciler.errors import NoDaemon  # noqa: E402

DEPLOYMENT = "zlbench-daemon"
PROJECT = "zlbench-daemon-compose"
SECRET = b"bench-secret"


def sh(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": "/dev/null",
}


def git(cwd: Path, *args: str) -> str:
    return sh("git", *args, cwd=cwd, env=GIT_ENV)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"waited {timeout:g}s in vain for {what}")
        time.sleep(0.02)


class Engine:
    def __init__(self) -> None:
        url = os.environ.get("DOCKER_HOST", "")
        if not url.startswith("unix://"):
            raise SystemExit("run under tests/with-docker (DOCKER_HOST=unix://…)")
        self.path = url.removeprefix("unix://")

    def get(self, path: str) -> Any:
        conn = http.client.HTTPConnection("localhost", timeout=30)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(self.path)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return json.loads(response.read() or b"null")
        finally:
            conn.close()

    def running_env(self, label: str, service_label: str) -> set[str]:
        """VERSION values of running containers carrying ``label`` and ``service_label``."""
        filters = json.dumps({"label": [label, service_label], "status": ["running"]})
        out = set()
        for item in self.get(f"/containers/json?filters={urllib.parse.quote(filters)}"):
            info = self.get(f"/containers/{item['Id']}/json")
            for entry in info["Config"]["Env"] or []:
                if entry.startswith("VERSION="):
                    out.add(entry.removeprefix("VERSION="))
        return out


def spec_text(image: str, version: int) -> str:
    return json.dumps(
        {
            "version": "v1",
            "deployment": DEPLOYMENT,
            "services": {
                "svc": {
                    "image": {"name": image, "pull_policy": "never"},
                    "command": {"entrypoint": ["sleep"], "args": ["3600"]},
                    "env": {"VERSION": str(version)},
                    "stop_grace_period": "1s",
                    "network_mode": "host",
                }
            },
        },
        indent=2,
    )


def compose_text(image: str, version: int) -> str:
    return (
        "services:\n  svc:\n"
        f"    image: {image}\n    command: ['sleep', '3600']\n"
        f"    environment: {{VERSION: '{version}'}}\n    network_mode: host\n"
        "    stop_grace_period: 1s\n"
    )


class Daemon:
    def __init__(self, root: Path, runtime: str, daemon: str, backoff: str = "") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state = root / "state"
        self.socket = root / "api.sock"
        config = root / "config.toml"
        text = f'state_dir = "{self.state}"\n[daemon]\nsocket = "{self.socket}"\n{daemon}\n'
        if backoff:
            text += f"[backoff]\n{backoff}\n"
        config.write_text(text)
        self.log = (root / "daemon.log").open("ab")
        env = {k: v for k, v in os.environ.items() if k not in ("ZLAYER_STATE_DIR",)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "daemon", "--config", str(config),
             "--runtime", runtime],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ready(self, timeout: float = 120) -> None:
        def answered() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited; see {self.root / 'daemon.log'}")
            try:
                return call(self.socket, "GET", "/readyz")[0] == 200
            except NoDaemon:
                return False

        wait_for(answered, "the daemon to be ready", timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
        self.log.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def webhook(port: int, delivery: str) -> None:
    body = b'{"ref": "refs/heads/main"}'
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/webhook", body=body, headers={
            "X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery,
            "X-GitHub-Event": "push", "Content-Type": "application/json"})  # fmt: skip
        status = conn.getresponse().status
    finally:
        conn.close()
    if status != 202:
        raise SystemExit(f"webhook answered {status}")


def settled(daemon: Daemon, work: Path) -> None:
    """Until the daemon has applied the last commit and no reconcile runs: each round
    starts from a settled host, as compose's does (a replace holds its reconcile for
    the new replica's ``start_grace`` before the next change is taken)."""
    head = git(work, "rev-parse", "HEAD")

    def idle() -> bool:
        status = call(daemon.socket, "GET", "/v1/status")[1]
        return not status["reconciling"] and status["applied"]["revision"] == head

    wait_for(idle, "the daemon to settle", 120)


def commit_to_running(work: Path, tmp: Path, image: str, rounds: int) -> dict[str, list[float]]:
    engine = Engine()
    remote = tmp / "remote.git"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp, "clone", "-q", str(remote), str(work))
    git(work, "checkout", "-q", "-b", "main")
    version = 0

    def push(message: str) -> float:
        (work / "zlayer").mkdir(exist_ok=True)
        (work / "zlayer" / "app.yaml").write_text(spec_text(image, version))
        (work / "docker-compose.yml").write_text(compose_text(image, version))
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"version {version}")
        git(work, "push", "-q", "origin", "main")
        return time.monotonic()

    push("initial")
    checkout = tmp / "compose-checkout"
    git(tmp, "clone", "-q", str(remote), str(checkout))
    compose = ["docker-compose", "-p", PROJECT, "-f", str(checkout / "docker-compose.yml")]
    sh(*compose, "up", "-d", "svc")
    port = free_port()
    (tmp / "secret").write_bytes(SECRET)
    common = f'repo = "{remote}"\nbranch = "main"\nsubdir = "zlayer"\nresync = 30\n'
    polling = Daemon(tmp / "polling", "docker", common + "interval = 1")
    polling.ready()
    zl_label = f"zlayer.deployment={DEPLOYMENT}"
    compose_label = f"com.docker.compose.project={PROJECT}"
    results: dict[str, list[float]] = {"polling": [], "webhook": [], "baseline": []}
    try:
        for _ in range(rounds):
            settled(polling, work)
            version += 1
            wanted = {str(version)}
            started = push("bump")
            sh("git", "-C", str(checkout), "pull", "-q", "--ff-only", env=GIT_ENV)
            sh(*compose, "up", "-d", "svc")
            wait_for(lambda w=wanted: engine.running_env(
                compose_label, "com.docker.compose.service=svc") == w, "compose")  # fmt: skip
            results["baseline"].append(time.monotonic() - started)
            wait_for(lambda w=wanted: engine.running_env(zl_label, "zlayer.service=svc") == w,
                     "the polling daemon", 60)  # fmt: skip
            results["polling"].append(time.monotonic() - started)
    finally:
        polling.stop()
    hooked = Daemon(
        tmp / "webhook", "docker",
        common + f'interval = 3600\nlisten = "127.0.0.1:{port}"\n'
        f'webhook_secret_file = "{tmp / "secret"}"',
    )  # fmt: skip
    hooked.ready()
    try:
        for n in range(rounds):
            settled(hooked, work)
            version += 1
            wanted = {str(version)}
            started = push("bump")
            webhook(port, f"bench-{n}")
            wait_for(lambda w=wanted: engine.running_env(zl_label, "zlayer.service=svc") == w,
                     "the webhook daemon", 60)  # fmt: skip
            results["webhook"].append(time.monotonic() - started)
    finally:
        hooked.stop()
        sh(*compose, "down", "-t", "1")
        sh(sys.executable, "-m", "reconciler", "destroy", DEPLOYMENT, "--auto-approve",
           "--runtime", "docker", "--state-dir", str(tmp / "webhook" / "state"))  # fmt: skip
    return results


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_specs(directory: Path, replicas: int, *, crash: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    spec = {
        "version": "v1",
        "deployment": DEPLOYMENT,
        "services": {
            "idle": {
                "image": {"name": "busybox"},
                "command": {"entrypoint": ["sleep"], "args": ["3600"]},
                "network_mode": "host",
                "stop_grace_period": "1s",
                "scale": {"mode": "fixed", "replicas": replicas},
            }
        },
    }
    (directory / "app.yaml").write_text(json.dumps(spec))


def kill_recorded(state: Path) -> None:
    for run_file in state.glob("process/deployments/*/services/*/*/run.json"):
        run = json.loads(run_file.read_text())
        for key in ("pid", "monitor_pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(run[key]), signal.SIGKILL)


def idle(tmp: Path, seconds: float) -> tuple[float, float]:
    specs = tmp / "idle-specs"
    process_specs(specs, 20)
    daemon = Daemon(tmp / "idle", "process", f'path = "{specs}"')
    try:
        daemon.ready()
        time.sleep(5)  # settle
        before, t0 = cpu_seconds(daemon.proc.pid), time.monotonic()
        time.sleep(seconds)
        used, elapsed = cpu_seconds(daemon.proc.pid) - before, time.monotonic() - t0
        return 100 * used / elapsed, rss_mb(daemon.proc.pid)
    finally:
        daemon.stop()
        kill_recorded(daemon.state)


def crash_to_restart(tmp: Path, rounds: int) -> list[float]:
    specs = tmp / "crash-specs"
    process_specs(specs, rounds)
    daemon = Daemon(tmp / "crash", "process", f'path = "{specs}"\nresync = 30',
                    backoff="initial = 1\njitter = 0")  # fmt: skip
    overheads = []
    try:
        daemon.ready()
        for replica in range(1, rounds + 1):
            where = daemon.state / f"process/deployments/{DEPLOYMENT}/services/idle/{replica}"
            run = json.loads((where / "run.json").read_text())
            killed = time.time()
            os.killpg(int(run["pid"]), signal.SIGKILL)
            target = f"{DEPLOYMENT}/idle/{replica}"

            def restarted(target: str = target) -> Any:
                journal = Journal.in_state_dir(daemon.state)
                try:
                    crash = journal.crash(target)
                finally:
                    journal.close()
                return crash if crash and crash.restarted_at else None

            crash = wait_for(restarted, f"the restart of {target}", 60)
            scheduled = 1.0 * 2 ** (crash.streak - 1)  # initial 1 s, no jitter
            overheads.append(crash.restarted_at - killed - scheduled)
            time.sleep(0.5)
    finally:
        daemon.stop()
        kill_recorded(daemon.state)
    return overheads


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=300)
    args = parser.parse_args()
    image = os.environ.get("ZLAYER_TEST_IMAGE")
    if not image:
        raise SystemExit("run under tests/with-docker (ZLAYER_TEST_IMAGE)")
    with tempfile.TemporaryDirectory(prefix="zlbench-daemon.") as name:
        tmp = Path(name)
        results = commit_to_running(tmp / "work", tmp, image, args.rounds)
        base = statistics.median(results["baseline"])
        print(f"1. commit-to-running, median of {args.rounds} (seconds):")
        print(f"   baseline git pull && docker-compose up -d: {base:.2f}")
        for kind in ("polling", "webhook"):
            value = statistics.median(results[kind])
            ratio = value / base
            print(f"   zlayer daemon ({kind}): {value:.2f}  ratio {ratio:.2f} "
                  f"(target <= 1.5) {verdict(ratio <= 1.5)}")  # fmt: skip
        print(f"   all: {json.dumps({k: [round(v, 2) for v in vs] for k, vs in results.items()})}")
        cpu, rss = idle(tmp, args.idle_seconds)
        print(f"2. idle {args.idle_seconds:g}s with 20 workloads: CPU {cpu:.3f}% of one core "
              f"(target <= 0.5) {verdict(cpu <= 0.5)}; RSS {rss:.1f} MB "
              f"(target <= 100) {verdict(rss <= 100)}")  # fmt: skip
        overheads = crash_to_restart(tmp, args.rounds)
        worst = max(overheads)
        print(f"3. crash to restart call beyond the backoff: "
              f"{', '.join(f'{o:.3f}' for o in overheads)} s; worst {worst:.3f} "
              f"(target <= 1) {verdict(worst <= 1)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

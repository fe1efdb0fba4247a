"""Benchmark: failed requests during consecutive deploys under load, zlayer beside
docker-compose, on one real Docker engine.

Run: tests/with-docker .venv/bin/python bench/deploys.py [--deploys N]

``tests/with-docker`` starts a private dockerd and sets ``DOCKER_HOST``; the image is
the host's own Python (``contrib/docker/import-python``, which with-docker runs). Needs
HAProxy and Debian's ``docker-compose``; it refuses to run without them. Everything
listens on 127.0.0.1.

The same web service both ways: one replica of a tiny Python HTTP server on port
9000, an http health check, published on the host. A steady request loop (one GET
at a time, a new connection each, every 20 ms; ``tests/load_support.Load``) runs
while the service is deployed N times (default 10), each deploy changing one
environment variable, so each recreates the replica:

  a. ``zlayer apply SPEC --auto-approve`` (the docker runtime, the endpoint public
     through the managed HAProxy: a start-first replace behind the proxy);
  b. ``docker-compose -p PROJECT up -d`` on the equivalent compose file (the port
     published by the engine; compose stops the old container, then starts the new).

Reported: requests sent, failed requests (a refused or reset connection, a status
other than 200, a timeout) per contender, and the time each deploy took. Target:
zlayer 0 failed requests.

A benchmark, not a test: the target is reported (PASS/MISS) and the exit status is 0
however it turns out; 1 only when a deploy fails. Everything it creates carries the
label ``zlayer.deployment=zlbench-deploys`` or ``com.docker.compose.project=
zlbench-deploys-compose`` and is removed by those labels at the end, also on failure;
the managed HAProxy it started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler.routing.proxy import executable  # noqa: E402
from tests.load_support import Load  # noqa: E402

DEPLOYMENT = "zlbench-deploys"
PROJECT = "zlbench-deploys-compose"
IMAGE = "zlayer-example/python:3"
SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = ('web ' + os.environ.get('VERSION', '')).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 9000), H).serve_forever()\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def python_in_image() -> str:
    """The interpreter inside the imported image (contrib/docker/import-python)."""
    return "/usr/bin/python3"


def zlayer_spec(port: int, version: int) -> str:
    return (
        f"version: v1\ndeployment: {DEPLOYMENT}\nservices:\n"
        f"  web:\n"
        f"    image: {{name: '{IMAGE}', pull_policy: never}}\n"
        f"    command:\n"
        f"      entrypoint: [{json.dumps(python_in_image())}, '-c']\n"
        f"      args: [{json.dumps(SERVER)}]\n"
        f"    env: {{VERSION: '{version}'}}\n"
        f"    endpoints:\n"
        f"      - {{name: http, protocol: http, port: {port}, target_port: 9000,"
        f" expose: public}}\n"
        f"    health:\n"
        f"      start_grace: 0s\n"
        f"      interval: 1s\n"
        f"      check: {{type: http, url: 'http://localhost:9000/', expect_status: 200}}\n"
    )


def compose_file(port: int, version: int) -> str:
    return json.dumps(
        {
            "version": "3.8",
            "services": {
                "web": {
                    "image": IMAGE,
                    "entrypoint": [python_in_image(), "-c", SERVER],
                    "environment": {"VERSION": str(version)},
                    "ports": [f"127.0.0.1:{port}:9000"],
                }
            },
        }
    )


def run(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Run ``command``; its wall time. Raises on a non-zero exit (a failed deploy)."""
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def under_load(port: int, deploy: object, deploys: int) -> tuple[Load, list[float]]:
    """Deploy ``deploys`` times (``deploy(i)``, i from 1) while a request loop runs."""
    assert callable(deploy)
    times = []
    with Load(port) as load:
        for version in range(1, deploys + 1):
            times.append(deploy(version))
            load.more(10)
    return load, times


def remove_everything(env: dict[str, str]) -> None:
    for label in (f"zlayer.deployment={DEPLOYMENT}", f"com.docker.compose.project={PROJECT}"):
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={label}"],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout.split()  # fmt: skip
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=env, capture_output=True, timeout=120)
        networks = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", f"label={label}"],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout.split()  # fmt: skip
        if networks:
            subprocess.run(
                ["docker", "network", "rm", *networks], env=env, capture_output=True, timeout=60
            )


def report(name: str, load: Load, times: list[float]) -> None:
    median = sorted(times)[len(times) // 2]
    print(
        f"{name:<16} requests {load.answered:>5}  failed {len(load.failures):>4}  "
        f"deploy median {median:.2f}s  max {max(times):.2f}s"
    )
    for failure in load.failures[:5]:
        print(f"    {failure}")
    if len(load.failures) > 5:
        print(f"    … and {len(load.failures) - 5} more")


def main(deploys: int) -> int:
    if "DOCKER_HOST" not in os.environ:
        print("needs a Docker engine: run it through tests/with-docker", file=sys.stderr)
        return 1
    compose = shutil.which("docker-compose")
    if executable() is None or compose is None:
        print("needs HAProxy and docker-compose: apt-get install haproxy docker-compose",
              file=sys.stderr)  # fmt: skip
        return 1
    root = Path(tempfile.mkdtemp(prefix="zlayer-bench-deploys-"))
    state = root / "state"
    env = {
        **os.environ,
        "ZLAYER_STATE_DIR": str(state),
        "ZLAYER_RUNTIME": "docker",
        "ZLAYER_PUBLISH_ADDRESS": "127.0.0.1",
        "NO_COLOR": "1",
    }
    spec = root / "web.yaml"
    compose_yml = root / "docker-compose.yml"
    zlayer_port, compose_port = free_port(), free_port()
    try:
        zlayer = [sys.executable, "-m", "reconciler", "apply", str(spec), "--auto-approve"]
        spec.write_text(zlayer_spec(zlayer_port, 0))
        run(zlayer, env, REPO)

        def zlayer_deploy(version: int) -> float:
            spec.write_text(zlayer_spec(zlayer_port, version))
            return run(zlayer, env, REPO)

        up = [compose, "-p", PROJECT, "-f", str(compose_yml), "up", "-d"]
        compose_yml.write_text(compose_file(compose_port, 0))
        run(up, env, root)
        # compose does not wait for the server to listen: the loop starts once it does
        wait = time.monotonic() + 60
        while time.monotonic() < wait:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", compose_port)) == 0:
                    break
            time.sleep(0.1)

        def compose_deploy(version: int) -> float:
            compose_yml.write_text(compose_file(compose_port, version))
            return run(up, env, root)

        print(f"{deploys} deploys each (one env change, one replica), a request every 20 ms:")
        z_load, z_times = under_load(zlayer_port, zlayer_deploy, deploys)
        c_load, c_times = under_load(compose_port, compose_deploy, deploys)
        report("zlayer apply", z_load, z_times)
        report("docker-compose", c_load, c_times)
        verdict = "PASS" if not z_load.failures else "MISS"
        print(f"zlayer failed requests: {len(z_load.failures)} (target 0) {verdict}; "
              f"docker-compose: {len(c_load.failures)}")  # fmt: skip
        return 0
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        pidfile = state / "proxy" / "haproxy.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        remove_everything(env)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=10)
    sys.exit(main(parser.parse_args().deploys))

"""Benchmark: traffic through zlayer's managed route beside traffic straight to a replica.

Run: .venv/bin/python bench/proxy.py [--seconds S] [--connections C]

Needs HAProxy and wrk (Debian: ``apt-get install haproxy wrk``); it refuses to run
without them. Everything listens on 127.0.0.1. A *replica* here is a tiny HAProxy
of its own that answers every request with a fixed 200 body naming it (``r1``,
``r2`` …): a backend far faster than any real service, so what is measured is the
route's own cost, not the backend's. The route is zlayer's: the managed HAProxy
configured by zlayer's control plane (``reconciler.routing.control.sync_routes``),
exactly as ``zlayer apply`` configures it.

  1. Throughput and latency, the same load generator (``wrk``, one thread, C
     connections, S seconds) against the route and straight against one replica's
     port, one after the other in this run: with 1 and with 3 replicas in rotation.
     Ratio routed/direct requests per second at 1 replica (target >= 0.8); p50 and
     p99 latency of each.
  1b. The same at 1 replica with a replica that is a service: Python's http.server
     (keep-alive, Nagle off, backlog 128), which does a service's work per request.
  2. Route change: a fourth replica is added to the rotation of the running route
     (added draining, readied once HAProxy's check passed, through the runtime API),
     while a client keeps requesting; the time from the control plane marking it
     ready to the first response it serves (target <= 100 ms), and whether HAProxy
     reloaded for it (its worker pid; target: no reload).

Failed requests during deploys, beside ``docker-compose up -d``, are measured by
``bench/deploys.py``.

A benchmark, not a test: targets are reported (PASS/MISS) and the exit status is 0
however they turn out; 1 only when something fails to run. Every process it starts
is stopped by its pid at the end, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.policy import HealthPolicy
from reconciler.route_table import Member, RouteTable, route_table
from reconciler.routing.control import bring_in, proxy_for, sync_routes
from reconciler.routing.proxy import Proxy, executable
from tests.unit.test_routes import public, service

HEADER = """global
    pidfile {pidfile}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""

REPLICA = (
    HEADER
    + """frontend replica
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "{name}"
"""
)


BARE = (
    HEADER
    + """frontend bare
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""
)
"""The same route written by hand, as the HAProxy documentation would: the best a
proxy on this machine does, to tell the route's own cost from HAProxy's."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replicas:
    """Static HAProxy replicas, each stopped by its pid at the end."""

    def __init__(self, root: Path, haproxy: str) -> None:
        self.root = root
        self.haproxy = haproxy
        self.pids: list[int] = []

    def start(self, name: str, template: str = REPLICA, **fields: str) -> int:
        port = free_port()
        pidfile = self.root / f"{name}.pid"
        config = self.root / f"{name}.cfg"
        config.write_text(template.format(pidfile=pidfile, port=port, name=name, **fields))
        subprocess.run([self.haproxy, "-D", "-f", str(config)], check=True, timeout=30)
        self.pids.append(int(pidfile.read_text().split()[0]))
        return port

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wrk(port: int, seconds: int, connections: int) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency in milliseconds."""
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]

    def percentile(which: str) -> float:
        value, unit = re.search(rf"\s{which}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    if "Non-2xx" in out or "Socket errors" in out:
        print(f"    (wrk reported errors)\n{out}")
    return rate, percentile("50"), percentile("99")


def body(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        return str(answer.read().decode())


async def main(seconds: int, connections: int) -> int:
    haproxy = executable()
    if haproxy is None or shutil.which("wrk") is None:
        print("needs HAProxy and wrk: apt-get install haproxy wrk", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="zlayer-bench-proxy-"))
    replicas = Replicas(root, haproxy)
    proxy = proxy_for(root / "state")
    try:
        return await _run(proxy, replicas, seconds, connections)
    finally:
        pid = proxy.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        replicas.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _run(proxy: Proxy, replicas: Replicas, seconds: int, connections: int) -> int:
    port = free_port()
    check = HealthPolicy("tcp", interval=0.2, retries=2)
    table = route_table([service("web", public(port), health=check)])
    ports = [replicas.start(f"r{i}") for i in (1, 2, 3, 4)]
    members = [Member(i, "127.0.0.1", p) for i, p in enumerate(ports, start=1)]
    backend = "demo.web.web"

    print(f"1. throughput: wrk -t1 -c{connections} -d{seconds}s: direct, bare HAProxy, zlayer")
    ratio_one = bare_one = 0.0
    for count in (1, 3):
        await sync_routes(proxy, table, {backend: members[:count]}, bind_address="127.0.0.1")
        assert {body(port) for _ in range(12)} == {f"r{i}" for i in range(1, count + 1)}
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{p}" for i, p in enumerate(ports[:count], 1)
        )
        bare_port = replicas.start(f"bare{count}", BARE, servers=servers)
        direct = wrk(ports[0], seconds, connections)
        bare = wrk(bare_port, seconds, connections)
        routed = wrk(port, seconds, connections)
        ratio = routed[0] / direct[0]
        if count == 1:
            ratio_one, bare_one = ratio, routed[0] / bare[0]
        for name, (rate, p50, p99) in (("direct", direct), ("bare", bare), ("zlayer", routed)):
            print(f"   {count} replica(s): {name:6} {rate:9.0f} req/s  p50 {p50:.2f} ms  "
                  f"p99 {p99:.2f} ms   /direct {rate / direct[0]:.2f}")  # fmt: skip
    verdict = "PASS" if ratio_one >= 0.8 else "MISS"
    print(f"   zlayer/direct at 1 replica: {ratio_one:.2f} (target >= 0.8) {verdict}")
    print(f"   zlayer/bare HAProxy at 1 replica: {bare_one:.2f} (the route's own cost)")

    await _service_replica(proxy, replicas, table, backend, port, members[:3], seconds, connections)

    print("2. route change: a fourth replica into the running route")
    worker = await _worker(proxy)
    live = (await proxy.servers())[backend]
    fourth = members[3]
    stop = asyncio.Event()
    first_seen: list[float] = []

    async def client() -> None:
        while not stop.is_set():
            name = await asyncio.to_thread(body, port)
            if name == "r4" and not first_seen:
                first_seen.append(time.monotonic())
                return
            await asyncio.sleep(0.002)

    requests = asyncio.create_task(client())
    problem = await bring_in(proxy, table.backend(backend), fourth, live.get(fourth.server), 30)
    ready_at = time.monotonic()
    if problem is not None:
        print(f"   the replica did not get in: {problem}")
        return 1
    await asyncio.wait_for(requests, timeout=30)
    stop.set()
    delay = (first_seen[0] - ready_at) * 1000 if first_seen else float("inf")
    reloaded = await _worker(proxy) != worker
    print(f"   ready → first response from it: {max(delay, 0.0):.1f} ms (target <= 100 ms) "
          f"{'PASS' if delay <= 100 else 'MISS'}")  # fmt: skip
    print(f"   HAProxy reloaded for it: {'yes' if reloaded else 'no'} (target: no) "
          f"{'MISS' if reloaded else 'PASS'}")  # fmt: skip
    return 0


SERVICE = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    disable_nagle_algorithm = True\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '2')\n"
    "        self.end_headers(); self.wfile.write(b'py')\n"
    "    def log_message(self, *a): pass\n"
    "class S(http.server.ThreadingHTTPServer):\n"
    "    request_queue_size = 128\n"
    "S(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
"""A replica that does a service's work per request (Python's http.server, keep-alive,
as the tests' replicas are), where the static HAProxy replica above does none."""


async def _service_replica(
    proxy: Proxy,
    replicas: Replicas,
    table: RouteTable,
    backend: str,
    port: int,
    restore: list[Member],
    seconds: int,
    connections: int,
) -> None:
    """1b. The same comparison at 1 replica with a replica that is a real service."""
    service_port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(service_port)], stderr=subprocess.DEVNULL
    )
    replicas.pids.append(server.pid)
    try:
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", service_port)) == 0:
                    break
            await asyncio.sleep(0.05)
        member = Member(1, "127.0.0.1", service_port)
        await sync_routes(proxy, table, {backend: [member]}, bind_address="127.0.0.1")
        for _ in range(200):  # in rotation once HAProxy's check passed
            if body(port) == "py":
                break
            await asyncio.sleep(0.05)
        print("1b. throughput with a replica that is a service (Python http.server)")
        direct = wrk(service_port, seconds, connections)
        routed = wrk(port, seconds, connections)
        for name, (rate, p50, p99) in (("direct", direct), ("zlayer", routed)):
            print(f"   1 replica: {name:6} {rate:9.0f} req/s  p50 {p50:.2f} ms  "
                  f"p99 {p99:.2f} ms   /direct {rate / direct[0]:.2f}")  # fmt: skip
        ratio = routed[0] / direct[0]
        verdict = "PASS" if ratio >= 0.8 else "MISS"
        print(f"   zlayer/direct at 1 service replica: {ratio:.2f} (target >= 0.8) {verdict}")
    finally:
        # Back to the three static replicas for the route change below.
        await sync_routes(proxy, table, {backend: restore}, bind_address="127.0.0.1")
        for _ in range(200):
            if {body(port) for _ in range(12)} == {f"r{m.replica}" for m in restore}:
                break
            await asyncio.sleep(0.05)
        server.kill()
        server.wait()


async def _worker(proxy: Proxy) -> str:
    for line in (await proxy.command("show info")).splitlines():
        if line.startswith("Pid:"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.seconds, args.connections)))

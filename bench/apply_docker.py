"""Benchmark: ``zlayer apply`` on a real Docker engine, beside docker-compose and a bare loop.

Run: tests/with-docker /tmp/dev/bin/python bench/apply_docker.py
         [--sizes 20,50] [--rounds N] [--concurrency-sweep]

``tests/with-docker`` starts a private dockerd, imports ``ZLAYER_TEST_IMAGE`` and sets
``DOCKER_HOST``; this script refuses to run without both. Every contender is a fresh
process, timed from spawn to exit (so interpreter start and imports count, as they do
for a user), one at a time (the host has 2 cores), each cold run from an engine with
nothing of this benchmark on it. N trivial services, each one replica of
``ZLAYER_TEST_IMAGE`` (pull_policy never) running ``sleep 3600``, with a command health
check ``true`` (zlayer runs it on the host, so compose gets no HEALTHCHECK either):

  1. cold apply of N services (N from ``--sizes``), median of ``--rounds``:
     a. ``zlayer apply SPECDIR --auto-approve`` (its default ``--concurrency``);
     b. ``docker-compose -p PROJECT -f compose.yml up -d`` on the equivalent file;
     c. a bare aiodocker loop (a child process importing only aiodocker) that creates
        the deployment's network, then creates and starts the very containers zlayer
        creates (bodies from zlayer's own ``create_body``: same names, labels,
        network) under a semaphore of 1, 2, 4, 8, 16 and unbounded; the best median
        is the engine's own limit.
     Ratios zlayer/compose (target <= 0.9) and zlayer/bare-best (target <= 1.15).
  2. converged re-apply (no-op): ``zlayer apply`` again vs ``docker-compose up -d``
     again, median of ``--rounds`` (target ratio <= 0.5); then one more zlayer no-op
     with DOCKER_HOST pointed at a counting proxy (an asyncio unix-socket proxy in this
     process that counts requests by method and path): the number of mutating calls
     (POST, PUT, DELETE; target 0), each listed. One extra cold apply per contender
     through the same proxy shows every engine call it makes (information).
  3. change one service of 50: one service's env changes, ``zlayer apply``; only that
     service's container may get a new ID (PASS/FAIL, number of changed IDs).
  4. ``--concurrency-sweep``: cold apply of 50 with ``zlayer apply --concurrency K``,
     K in 1, 2, 4, 8, 0 (0: unbounded), medians, to choose the default from data.

zlayer runs from bytecode written first, as pip install leaves it (bench/_bytecode.py),
as Debian's docker-compose does.

A benchmark, not a test: targets are reported (PASS/MISS) and exit status is 0 however
they turn out; it is 1 only when a contender fails: a non-zero exit, not exactly the N
containers running afterwards, a no-op that changes container IDs, or a change of one
service that replaces any other container (a wrong result, not a slow one).

Everything it creates carries the label ``zlayer.deployment=zlbench`` or
``zlayer.deployment=zlbench-bare`` or ``com.docker.compose.project=zlbench-compose`` and
is removed by those labels between runs and at the end, also on failure, Ctrl-C and
SIGTERM; nothing else on the engine is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _bytecode import compile_bytecode

ZLAYER = "zlbench"  # zlayer's deployment
BARE = "zlbench-bare"  # the bare loop's deployment (same labels as zlayer's)
PROJECT = "zlbench-compose"  # docker-compose's project
DEPLOYMENT_LABEL = "zlayer.deployment"
COMPOSE_LABEL = "com.docker.compose.project"
BARE_CONCURRENCY = (1, 2, 4, 8, 16, 0)  # 0: unbounded
SWEEP = (1, 2, 4, 8, 0)
FIXED_SIZE = 50  # the change-one check and the sweep
TARGET_VS_COMPOSE = 0.9
TARGET_VS_BARE = 1.15
TARGET_NOOP = 0.5
MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
COMPOSE = "/usr/bin/docker-compose"
ENGINE_TIMEOUT = 120.0  # seconds, per engine call of the bench's own
CLEAN_TIMEOUT = 600.0
RUN_TIMEOUT = 900.0  # a contender's run


class BenchError(Exception):
    """The benchmark cannot go on (exit status 1)."""


class ContenderFailed(BenchError):
    """A contender exited non-zero or left the engine not as asked."""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- specs --------------------------------------------------------------------------------


def service_name(i: int) -> str:
    return f"svc-{i:03d}"


def spec_yaml(deployment: str, n: int, image: str, changed: int | None = None) -> str:
    lines = ["version: v1", f"deployment: {deployment}", "services:"]
    for i in range(n):
        extra = ', BENCH_CHANGED: "1"' if i == changed else ""
        lines.append(
            f"""  {service_name(i)}:
    image: {{name: "{image}", pull_policy: never}}
    command: {{args: ["sleep", "3600"]}}
    env: {{BENCH_INDEX: "{i}"{extra}}}
    scale: {{mode: fixed, replicas: 1}}
    health: {{start_grace: 0s, check: {{type: command, command: "true"}}}}"""
        )
    return "\n".join(lines) + "\n"


def compose_yaml(n: int, image: str) -> str:
    lines = ['version: "2.4"', "services:"]
    for i in range(n):
        lines.append(
            f"""  {service_name(i)}:
    image: "{image}"
    command: ["sleep", "3600"]
    environment: {{BENCH_INDEX: "{i}"}}"""
        )
    return "\n".join(lines) + "\n"


def bare_plan(spec: Path) -> dict[str, Any]:
    """The network and container bodies zlayer would send for the deployment in
    ``spec``, built by zlayer's own translation (imported here, never in the child)."""
    from reconciler.desired import CompileInputs, compile_specs, content_revision
    from reconciler.drivers.docker.config import create_body
    from reconciler.drivers.docker.labels import DEPLOYMENT, container_name, network_name
    from reconciler.spec.load import SourceFile, load_sources

    files = [SourceFile(str(spec), spec.read_bytes())]
    loaded = load_sources(files)
    if loaded.problems:
        raise BenchError(f"the generated spec is not valid: {loaded.problems[:3]}")
    desired, problems = compile_specs(loaded.specs, content_revision(files), CompileInputs())
    if desired is None:
        raise BenchError(f"the generated spec does not compile: {problems[:3]}")
    containers = []
    deployment = ""
    for service in sorted(desired.services.values(), key=lambda s: s.name):
        deployment = service.deployment
        target = service.workload_id(1)
        body = create_body(service, 1, desired.revision)
        containers.append([container_name(target), body])
    network = {
        "Name": network_name(deployment),
        "Driver": "bridge",
        "CheckDuplicate": True,
        "Labels": {DEPLOYMENT: deployment},
    }
    return {"network": network, "containers": containers}


# --- the bare contender (runs in a child process) -------------------------------------------


async def bare_apply(plan: dict[str, Any], concurrency: int) -> float:
    import aiodocker

    started = time.perf_counter()
    docker = aiodocker.Docker()
    try:
        await docker.networks.create(plan["network"])
        slots = asyncio.Semaphore(concurrency) if concurrency else None

        async def one(name: str, body: dict[str, Any]) -> None:
            container = await docker.containers.create(body, name=name)
            await container.start()

        async def limited(name: str, body: dict[str, Any]) -> None:
            if slots is None:
                await one(name, body)
                return
            async with slots:
                await one(name, body)

        async with asyncio.TaskGroup() as group:
            for name, body in plan["containers"]:
                group.create_task(limited(name, body))
    finally:
        await docker.close()
    return time.perf_counter() - started


def bare_child(plan_file: Path, concurrency: int) -> None:
    plan = json.loads(plan_file.read_text())
    seconds = asyncio.run(bare_apply(plan, concurrency))
    print(json.dumps({"seconds": seconds}))


# --- the engine (cleanup, listing) ----------------------------------------------------------


def our_filters() -> list[dict[str, list[str]]]:
    """Docker ANDs label filters: one list call per label."""
    return [
        {"label": [f"{DEPLOYMENT_LABEL}={ZLAYER}"]},
        {"label": [f"{DEPLOYMENT_LABEL}={BARE}"]},
        {"label": [f"{COMPOSE_LABEL}={PROJECT}"]},
    ]


async def _clean(url: str) -> list[str]:
    """Remove every container, network and volume of the benchmark (by label), and
    check that none is left, trying again while the engine is still letting go."""
    import aiodocker
    import aiohttp
    from aiodocker.networks import DockerNetwork
    from aiodocker.volumes import DockerVolume

    docker = aiodocker.Docker(url=url, timeout=aiohttp.ClientTimeout(total=ENGINE_TIMEOUT))
    removed: list[str] = []
    errors: list[str] = []

    async def attempt(what: str, call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
            removed.append(what)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                errors.append(f"{what}: {exc.status} {exc.message}")

    async def remove_network(info: dict[str, Any], names: set[str]) -> None:
        network = DockerNetwork(docker, info["Id"])  # type: ignore[no-untyped-call]
        try:
            await network.delete()
        except aiodocker.DockerError as exc:
            if "active endpoints" not in str(exc.message):
                raise
            # A stale endpoint of a container already gone: force it off by name.
            for name in sorted(names | set((await network.show()).get("Containers") or {})):
                with contextlib.suppress(aiodocker.DockerError):
                    await network.disconnect({"Container": name, "Force": True})
            await network.delete()
            removed.append(f"(forced off stale endpoints of network {info['Name']})")

    names: set[str] = set()

    async def ours() -> tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
        found: tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]] = ([], [], [])
        for filters in our_filters():
            found[0].extend(await docker.containers.list(all=True, filters=json.dumps(filters)))
            found[1].extend(await docker.networks.list(filters=filters))
            volumes = await docker.volumes.list(filters=filters)  # type: ignore[no-untyped-call]
            found[2].extend(volumes.get("Volumes") or ())
        return found

    try:
        for tries in range(1, 11):
            left_containers, networks, volumes = await ours()
            if not (left_containers or networks or volumes):
                return removed
            if tries == 10:
                left = [c._container["Names"][0] for c in left_containers]
                left += [n["Name"] for n in networks] + [v["Name"] for v in volumes]
                raise BenchError(f"cleanup: still there after 10 tries: {left}; {errors[-3:]}")
            errors.clear()
            names.update(c._container["Names"][0].lstrip("/") for c in left_containers)
            # One at a time: Debian's dockerd 20.10 deadlocks in libnetwork (or leaks an
            # endpoint) when several containers of one network exit at once.
            for c in left_containers:
                remove = partial(c.delete, force=True, v=True)
                await attempt(f"container {c._container['Names'][0]}", remove)
            for info in networks:
                await attempt(f"network {info['Name']}", partial(remove_network, info, names))
            for info in volumes:
                volume = DockerVolume(docker, info["Name"])  # type: ignore[no-untyped-call]
                await attempt(f"volume {info['Name']}", volume.delete)
            if errors:
                await asyncio.sleep(0.2 * tries)
    finally:
        await docker.close()
    return removed


async def _containers(url: str, label: str) -> dict[str, tuple[str, str]]:
    import aiodocker

    docker = aiodocker.Docker(url=url)
    try:
        listed = await docker.containers.list(all=True, filters=json.dumps({"label": [label]}))
    finally:
        await docker.close()
    return {
        c._container["Names"][0].lstrip("/"): (c._container["Id"], c._container["State"])
        for c in listed
    }


def clean(url: str) -> list[str]:
    async def bounded() -> list[str]:
        try:
            async with asyncio.timeout(CLEAN_TIMEOUT):
                return await _clean(url)
        except TimeoutError:
            raise BenchError(
                f"cleanup: the engine did not finish within {CLEAN_TIMEOUT:g} s (hung?)"
            ) from None

    return asyncio.run(bounded())


def containers(url: str, label: str) -> dict[str, tuple[str, str]]:
    """name -> (id, state) of the containers carrying ``label``."""
    return asyncio.run(_containers(url, label))


def expect_running(url: str, label: str, names: set[str] | None, n: int, who: str) -> None:
    found = containers(url, label)
    running = {name for name, (_, state) in found.items() if state == "running"}
    if len(running) != n or len(found) != n or (names is not None and running != names):
        raise ContenderFailed(
            f"{who}: expected {n} running containers, found {len(running)} running of "
            f"{len(found)}: {sorted(found)[:5]}..."
        )


# --- the counting proxy ------------------------------------------------------------------------

_VERSION = re.compile(r"^/v[0-9.]+(?=/)")
_COLLECTION_CALLS = {
    "containers": {"json", "create", "prune"},
    "networks": {"create", "prune"},
    "images": {"json", "create", "search", "load", "get", "prune"},
    "volumes": {"create", "prune"},
    "exec": set(),
}
_OBJECT_CALLS = {
    "json", "start", "stop", "restart", "kill", "wait", "attach", "logs", "top", "changes",
    "export", "stats", "resize", "pause", "unpause", "rename", "update", "archive", "exec",
    "connect", "disconnect", "push", "tag", "history",
}  # fmt: skip


def normalize(target: str) -> str:
    """``/v1.43/containers/zlbench-svc-001-1/start?x=y`` -> ``/containers/{id}/start``."""
    path = _VERSION.sub("", target.split("?", 1)[0])
    parts = path.split("/")  # ['', collection, ...]
    if len(parts) < 3 or parts[1] not in _COLLECTION_CALLS:
        return path
    collection, rest = parts[1], parts[2:]
    if len(rest) == 1 and rest[0] in _COLLECTION_CALLS[collection]:
        return path
    if len(rest) > 1 and rest[-1] in _OBJECT_CALLS:
        return f"/{collection}/{{id}}/{rest[-1]}"
    return f"/{collection}/{{id}}"


class CountingProxy:
    """A unix socket that forwards HTTP to the engine and records every request's
    method and target, in a thread of its own (the bench itself is synchronous)."""

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.calls: list[tuple[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def take(self) -> list[tuple[str, str]]:
        calls, self.calls = self.calls, []
        return calls

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream.startswith("unix://"):
            return await asyncio.open_unix_connection(self.upstream.removeprefix("unix://"))
        host, _, port = self.upstream.split("://", 1)[-1].partition(":")
        return await asyncio.open_connection(host, int(port or 2375))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, one engine connection; ends when the client hangs
        up (its answers have all been read by then: clients do not half-close)."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        back: asyncio.Task[None] | None = None
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await self._connect()
            back = asyncio.create_task(_pipe(up_reader, writer))
            await self._requests(reader, up_writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._connections.discard(task)
            if back is not None:
                back.cancel()
                await asyncio.gather(back, return_exceptions=True)
            for w in (up_writer, writer):
                if w is not None:
                    w.close()

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        """Forward request by request, recording each; after an upgrade (attach, exec)
        the rest of the stream is forwarded as it is."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client hung up
            up.write(head)
            lines = head.decode("latin-1").split("\r\n")
            method, target, *_ = [*lines[0].split(" "), "", ""]
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            self.calls.append((method, target))
            if "upgrade" in headers or "upgrade" in headers.get("connection", "").lower():
                await _pipe(reader, up)
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    up.write(size_line)
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                            up.write(trailer)
                        up.write(b"\r\n")
                        break
                    up.write(await reader.readexactly(size + 2))
            else:
                left = int(headers.get("content-length", "0") or 0)
                while left:
                    chunk = await reader.read(min(left, 1 << 16))
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", left)
                    up.write(chunk)
                    left -= len(chunk)
            await up.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


def call_table(calls: list[tuple[str, str]]) -> list[str]:
    counts = Counter((m, normalize(t)) for m, t in calls)
    return [
        f"      {n:4d}  {m:<6} {p}"
        for (m, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


# --- running contenders -------------------------------------------------------------------------


@dataclass
class Bench:
    url: str  # the engine (DOCKER_HOST)
    image: str
    root: Path
    compose: str | None
    proxy: CountingProxy | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def spec_dir(self, deployment: str, n: int) -> Path:
        return self.root / f"{deployment}-{n}"

    def write_spec(self, deployment: str, n: int, changed: int | None = None) -> Path:
        directory = self.spec_dir(deployment, n)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "bench.yaml").write_text(spec_yaml(deployment, n, self.image, changed))
        return directory

    def compose_file(self, n: int) -> Path:
        path = self.root / f"compose-{n}.yml"
        path.write_text(compose_yaml(n, self.image))
        return path

    def run(self, who: str, argv: list[str], url: str | None = None) -> tuple[float, str]:
        env = dict(os.environ, DOCKER_HOST=url or self.url)
        env["ZLAYER_STATE_DIR"] = str(self.state_dir)
        started = time.perf_counter()
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise ContenderFailed(f"{who}: no answer within {RUN_TIMEOUT:g} s") from None
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
            raise ContenderFailed(f"{who}: {' '.join(argv)} exited {done.returncode}:\n{tail}")
        return seconds, done.stdout

    def clean(self) -> None:
        clean(self.url)

    # -- contenders --

    def zlayer(self, n: int, *extra: str, url: str | None = None) -> tuple[float, float | None]:
        """``zlayer apply``: (wall seconds, the executor's own seconds or None)."""
        argv = [sys.executable, "-m", "reconciler", "apply", str(self.spec_dir(ZLAYER, n))]
        seconds, out = self.run("zlayer apply", [*argv, "--auto-approve", *extra], url)
        found = re.search(r"Apply complete: .* in ([0-9.]+)s", out)
        return seconds, float(found.group(1)) if found else None

    def zlayer_cold(
        self, n: int, *extra: str, url: str | None = None
    ) -> tuple[float, float | None]:
        result = self.zlayer(n, *extra, url=url)
        names = {f"{ZLAYER}-{service_name(i)}-1" for i in range(n)}
        expect_running(self.url, f"{DEPLOYMENT_LABEL}={ZLAYER}", names, n, "zlayer apply")
        return result

    def compose_up(self, n: int, url: str | None = None) -> float:
        assert self.compose is not None
        argv = [self.compose, "-p", PROJECT, "-f", str(self.root / f"compose-{n}.yml")]
        seconds, _ = self.run("docker-compose", [*argv, "up", "-d"], url)
        return seconds

    def compose_cold(self, n: int, url: str | None = None) -> float:
        seconds = self.compose_up(n, url)
        expect_running(self.url, f"{COMPOSE_LABEL}={PROJECT}", None, n, "docker-compose")
        return seconds

    def bare_cold(self, n: int, concurrency: int, url: str | None = None) -> tuple[float, float]:
        """(wall seconds of the child, its own seconds from first call to last answer)."""
        plan = self.root / f"bare-{n}.json"
        argv = [sys.executable, __file__, "--bare-child", str(plan), str(concurrency)]
        seconds, out = self.run(f"bare loop (semaphore {concurrency or 'none'})", argv, url)
        names = {f"{BARE}-{service_name(i)}-1" for i in range(n)}
        expect_running(self.url, f"{DEPLOYMENT_LABEL}={BARE}", names, n, "bare loop")
        return seconds, float(json.loads(out)["seconds"])


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt_row(label: str, n: int | str, values: list[float], note: str = "") -> str:
    return (
        f"  {label:<38} {n!s:>4} {med(values):8.2f} {min(values):7.2f} {max(values):7.2f}"
        f"  {len(values):>4}  {note}"
    )


HEADER = f"  {'contender':<38} {'N':>4} {'median':>8} {'min':>7} {'max':>7}  runs"


def ratio_line(label: str, value: float, target: float) -> str:
    return f"  {label:<38} {value:6.2f}x  (target <= {target:.2f})  {verdict(value <= target)}"


# --- sections ------------------------------------------------------------------------------------


def cold_section(
    bench: Bench, sizes: list[int], rounds: int, default_k: int
) -> tuple[int, dict[int, int]]:
    """Cold apply of each size: zlayer, compose and the bare loop at every semaphore,
    interleaved round by round. Returns the number of targets missed and the bare
    loop's best semaphore by size."""
    misses = 0
    best_by_size: dict[int, int] = {}
    print(f"\n1. COLD APPLY (wall s, spawn to exit; median of {rounds}; from an empty engine)")
    for n in sizes:
        bench.write_spec(ZLAYER, n)
        plan = bare_plan(bench.write_spec(BARE, n) / "bench.yaml")
        (bench.root / f"bare-{n}.json").write_text(json.dumps(plan))
        bench.compose_file(n)
        zl: list[float] = []
        zl_exec: list[float] = []
        comp: list[float] = []
        bare: dict[int, list[float]] = {k: [] for k in BARE_CONCURRENCY}
        bare_own: dict[int, list[float]] = {k: [] for k in BARE_CONCURRENCY}
        for _ in range(rounds):
            bench.clean()
            seconds, own = bench.zlayer_cold(n)
            zl.append(seconds)
            if own is not None:
                zl_exec.append(own)
            bench.clean()
            if bench.compose:
                comp.append(bench.compose_cold(n))
                bench.clean()
            for k in BARE_CONCURRENCY:
                wall, inner = bench.bare_cold(n, k)
                bare[k].append(wall)
                bare_own[k].append(inner)
                bench.clean()
        print(HEADER)
        exec_note = f"(executor alone: median {med(zl_exec):.2f} s)" if zl_exec else ""
        print(fmt_row(f"zlayer apply (--concurrency {default_k})", n, zl, exec_note))
        if comp:
            print(fmt_row("docker-compose up -d", n, comp))
        else:
            print(f"  {'docker-compose up -d':<38} {n:>4}  skipped: docker-compose is missing")
        for k in BARE_CONCURRENCY:
            note = f"(in-process: median {med(bare_own[k]):.2f} s)"
            print(fmt_row(f"bare aiodocker, semaphore {k or 'none'}", n, bare[k], note))
        best = min(BARE_CONCURRENCY, key=lambda k: med(bare[k]))
        print(fmt_row(f"bare aiodocker, best (semaphore {best or 'none'})", n, bare[best]))
        if comp:
            value = med(zl) / med(comp)
            misses += value > TARGET_VS_COMPOSE
            print(ratio_line(f"zlayer / docker-compose, N={n}", value, TARGET_VS_COMPOSE))
        value = med(zl) / med(bare[best])
        misses += value > TARGET_VS_BARE
        print(ratio_line(f"zlayer / bare best, N={n}", value, TARGET_VS_BARE))
        print(
            f"  per container: zlayer {med(zl) / n * 1000:.0f} ms, "
            + (f"compose {med(comp) / n * 1000:.0f} ms, " if comp else "")
            + f"bare best {med(bare[best]) / n * 1000:.0f} ms"
        )
        best_by_size[n] = best
    return misses, best_by_size


def noop_section(bench: Bench, sizes: list[int], rounds: int) -> int:
    misses = 0
    print(f"\n2. CONVERGED RE-APPLY, NO-OP (wall seconds; median of {rounds})")
    for n in sizes:
        bench.clean()
        bench.zlayer_cold(n)
        before = containers(bench.url, f"{DEPLOYMENT_LABEL}={ZLAYER}")
        zl = [bench.zlayer(n)[0] for _ in range(rounds)]
        if containers(bench.url, f"{DEPLOYMENT_LABEL}={ZLAYER}") != before:
            raise ContenderFailed("zlayer apply: the no-op changed the containers")
        counted: list[tuple[str, str]] = []
        proxied = None
        if bench.proxy is not None:
            bench.proxy.take()
            proxied = bench.zlayer(n, url=bench.proxy.url)[0]
            counted = bench.proxy.take()
        bench.clean()
        comp: list[float] = []
        if bench.compose:
            bench.compose_cold(n)
            before = containers(bench.url, f"{COMPOSE_LABEL}={PROJECT}")
            comp = [bench.compose_up(n) for _ in range(rounds)]
            if containers(bench.url, f"{COMPOSE_LABEL}={PROJECT}") != before:
                print("  note: docker-compose's no-op changed its containers")
            bench.clean()
        print(HEADER)
        print(fmt_row("zlayer apply (no-op)", n, zl))
        if comp:
            print(fmt_row("docker-compose up -d (no-op)", n, comp))
            value = med(zl) / med(comp)
            misses += value > TARGET_NOOP
            print(ratio_line(f"zlayer / docker-compose no-op, N={n}", value, TARGET_NOOP))
        else:
            print(f"  {'docker-compose up -d (no-op)':<38} {n:>4}  skipped: missing")
        if bench.proxy is not None and proxied is not None:
            mutating = [(m, t) for m, t in counted if m in MUTATING]
            misses += bool(mutating)
            print(
                f"  zlayer no-op through the counting proxy ({proxied:.2f} s): "
                f"{len(counted)} engine calls, {len(mutating)} mutating "
                f"(target 0)  {verdict(not mutating)}"
            )
            print(*call_table(counted), sep="\n")
            for method, target in mutating:
                print(f"      MUTATING: {method} {target}")
    return misses


def calls_section(bench: Bench, proxy: CountingProxy, n: int, best_k: int) -> None:
    """One untimed cold apply per contender through the counting proxy: every call."""
    print(f"\n   ENGINE CALLS OF ONE COLD APPLY, N={n} (through the counting proxy; information)")
    runs: list[tuple[str, Callable[[], object]]] = [
        ("zlayer apply", lambda: bench.zlayer_cold(n, url=proxy.url)),
        (f"bare aiodocker (semaphore {best_k or 'none'})",
         lambda: bench.bare_cold(n, best_k, url=proxy.url)),
    ]  # fmt: skip
    if bench.compose:
        runs.insert(1, ("docker-compose up -d", lambda: bench.compose_cold(n, url=proxy.url)))
    for label, action in runs:
        bench.clean()
        proxy.take()
        action()
        calls = proxy.take()
        mutating = sum(m in MUTATING for m, _ in calls)
        print(
            f"  {label}: {len(calls)} calls ({len(calls) / n:.1f} per container), "
            f"{mutating} mutating"
        )
        print(*call_table(calls), sep="\n")
    bench.clean()


def change_section(bench: Bench) -> bool:
    n = FIXED_SIZE
    changed = n // 2
    print(f"\n3. CHANGE ONE SERVICE OF {n} (env of {service_name(changed)} edited, zlayer apply)")
    bench.clean()
    bench.write_spec(ZLAYER, n)
    bench.zlayer_cold(n)
    label = f"{DEPLOYMENT_LABEL}={ZLAYER}"
    before = containers(bench.url, label)
    bench.write_spec(ZLAYER, n, changed=changed)
    try:
        seconds, own = bench.zlayer(n)
    finally:
        bench.write_spec(ZLAYER, n)
    after = containers(bench.url, label)
    expect_running(bench.url, label, set(before), n, "zlayer apply (change one)")
    names = set(before) | set(after)
    moved = sorted(x for x in names if before.get(x, ("",))[0] != after.get(x, ("",))[0])
    expected = [f"{ZLAYER}-{service_name(changed)}-1"]
    ok = moved == expected
    own_note = f" (executor {own:.2f} s)" if own is not None else ""
    print(
        f"  zlayer apply with one service changed: {seconds:.2f} s{own_note}; information: "
        "it includes the old replica's graceful stop (`sleep` as PID 1 ignores SIGTERM, "
        "so Docker waits the default 10 s before SIGKILL)"
    )
    print(
        f"  container IDs changed: {len(moved)} of {n} (expected 1: {expected[0]})  "
        f"{'PASS' if ok else 'FAIL'}"
    )
    if not ok:
        print(f"  changed: {moved}")
    bench.clean()
    return ok


def sweep_section(bench: Bench, rounds: int, default_k: int) -> None:
    n = FIXED_SIZE
    print(f"\n4. CONCURRENCY SWEEP: cold zlayer apply of {n}, --concurrency K (median of {rounds})")
    bench.write_spec(ZLAYER, n)
    times: dict[int, list[float]] = {k: [] for k in SWEEP}
    own: dict[int, list[float]] = {k: [] for k in SWEEP}
    for _ in range(rounds):
        for k in SWEEP:
            bench.clean()
            seconds, inner = bench.zlayer(n, "--concurrency", str(k))
            expect_running(bench.url, f"{DEPLOYMENT_LABEL}={ZLAYER}", None, n, "zlayer apply")
            times[k].append(seconds)
            if inner is not None:
                own[k].append(inner)
    bench.clean()
    print(HEADER)
    for k in SWEEP:
        mark = "  <- the default" if k == default_k else ""
        note = f"(executor: median {med(own[k]):.2f} s){mark}" if own[k] else mark
        print(fmt_row(f"zlayer apply --concurrency {k}", n, times[k], note))
    best = min(SWEEP, key=lambda k: med(times[k]))
    print(f"  fastest median: --concurrency {best} ({med(times[best]):.2f} s)")


# --- main ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1 or max(sizes) > 999:
        raise argparse.ArgumentTypeError("sizes are 1..999, comma-separated")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[20, 50], help="default 20,50")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument(
        "--concurrency-sweep", action="store_true", help="also sweep zlayer's --concurrency"
    )
    parser.add_argument("--bare-child", nargs=2, metavar=("PLAN", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        bare_child(Path(args.bare_child[0]), int(args.bare_child[1]))
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    url, image = os.environ.get("DOCKER_HOST"), os.environ.get("ZLAYER_TEST_IMAGE")
    if not url or not image or os.environ.get("ZLAYER_TEST_NO_ENGINE"):
        why = os.environ.get("ZLAYER_TEST_NO_ENGINE", "DOCKER_HOST or ZLAYER_TEST_IMAGE unset")
        print(f"no engine: {why}; run through tests/with-docker", file=sys.stderr)
        return 1

    compose = COMPOSE if os.access(COMPOSE, os.X_OK) else shutil.which("docker-compose")
    root = Path(tempfile.mkdtemp(prefix="zlayer-apply-bench-"))
    bench = Bench(url=url, image=image, root=root, compose=compose)
    code = 1
    try:
        with sigterm_as_interrupt():
            try:
                code = run(args, bench)
            except BenchError as exc:
                print(f"\nFAILED: {exc}", file=sys.stderr)
            except KeyboardInterrupt:
                print("\ninterrupted", file=sys.stderr)
                code = 130
            finally:
                if code != 0:
                    time.sleep(1.0)  # what a killed contender had in flight lands first
                try:
                    removed = clean(url)
                    if code != 0:
                        print(f"cleanup: removed {len(removed)} objects", file=sys.stderr)
                except BenchError as exc:
                    print(f"FAILED: {exc}", file=sys.stderr)
                    code = code or 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return code


def run(args: argparse.Namespace, bench: Bench) -> int:
    from reconciler.executor import DEFAULT_CONCURRENCY

    started = time.perf_counter()
    bench.state_dir.mkdir()
    leftovers = clean(bench.url)
    if leftovers:
        print(f"removed {len(leftovers)} leftovers of an earlier run: {leftovers[:3]}")
    print(f"engine {bench.url}, image {bench.image}; zlayer: {sys.executable} -m reconciler")
    compile_bytecode()
    if bench.compose:
        version = subprocess.run(
            [bench.compose, "version", "--short"], capture_output=True, text=True, check=False
        ).stdout.strip()
        print(f"docker-compose {version} at {bench.compose}")
    else:
        print("docker-compose is missing (apt-get install -y docker-compose): columns skipped")
    print(
        f"sizes {args.sizes}, rounds {args.rounds}, zlayer default --concurrency "
        f"{DEFAULT_CONCURRENCY}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; contenders run one at a time"
    )
    with CountingProxy(bench.url, bench.root / "proxy.sock") as proxy:
        bench.proxy = proxy
        misses, best = cold_section(bench, args.sizes, args.rounds, DEFAULT_CONCURRENCY)
        misses += noop_section(bench, args.sizes, args.rounds)
        calls_section(bench, proxy, max(args.sizes), best[max(args.sizes)])
        changed_ok = change_section(bench)
        if args.concurrency_sweep:
            sweep_section(bench, args.rounds, DEFAULT_CONCURRENCY)
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s, load average now "
        f"{os.getloadavg()[0]:.2f}; {misses} timing/no-op target(s) missed; "
        f"change-one {'PASS' if changed_ok else 'FAIL'}"
    )
    return 0 if changed_ok else 1


if __name__ == "__main__":
    sys.exit(main())

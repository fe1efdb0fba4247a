"""A real three-node Docker Swarm on this one machine, for tests.

Why it is built this way (each point was measured on the CI box):

- **One dockerd per network namespace.** Each node's engine runs under
  ``nsenter --net=/run/netns/<node>`` and ``unshare --mount --uts --propagation private``
  (not ``ip netns exec``: that remounts ``/sys`` and hides the cgroup hierarchy dockerd
  needs). Its swarm ports (2377, 7946, 4789), iptables rules, ``docker0`` and
  ``docker_gwbridge`` all live in its own namespace; the host's firewall and links are
  never touched (so ``docker0`` is kept: it clashes with nothing there, and a test may
  run a standalone container on a node). The UTS namespace gives each node its own
  host name (``zl-node-<i>``), which is the swarm node's name.
- **Everything of a node is its own**: ``--data-root``, ``--exec-root``, ``--pidfile``,
  unix socket, containerd namespaces, ``--cgroup-parent`` and a daemon.json whose
  ``deprecated-key-path`` gives it its own engine key (otherwise all three read
  ``/etc/docker/key.json`` and share one engine ID). All of it lies in one temporary
  directory, ``/tmp/zl-swarm-<suffix>``, on the host's file system: the private mount
  namespace only keeps dockerd's own mounts (layers, sandboxes) from the host, so the
  socket files are visible to the tests.
- **A hub namespace holds the bridge** with a veth to each node (and one to a client
  namespace), so node-to-node traffic (overlay VXLAN, gossip, raft) never crosses the
  host's namespace, whose iptables FORWARD policy is DROP once any dockerd ran there.
  The nodes have no default route: nothing they send can leave the namespaces made here.
- **DNS fails fast**: inside each node's mount namespace ``/etc/resolv.conf`` is a file
  naming ``127.0.0.1`` (nothing listens) with ``timeout:1 attempts:1``; and the engines
  run with ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1``, so a task never tries to pull its
  image (there is no registry). The test image is imported into every node from
  busybox-static (``contrib/docker/import-busybox``); services name it as it is
  (``zlayer-test/busybox:latest``) and are created through the API, which never asks a
  registry for a digest (the CLI's ``--no-resolve-image``).
- **The kernel has no IPVS**: the ingress routing mesh and service VIPs do not work
  here. Overlay networks, ``tasks.<service>`` DNS, ``endpoint_mode: dnsrr`` and ports
  published in host mode do. A test reaches a node's address from the client namespace
  (:func:`fetch`, :func:`in_client`), never from the host.
- **A node stops and starts like a machine**: :func:`stop_node` stops its dockerd by
  its pid (SIGTERM; its containers stop with it) and clears its exec root (its /run,
  whose mounts died with its mount namespace); :func:`start_node` waits until the
  manager has seen it Down, then starts it on the same data root, and it rejoins as
  itself. Measured: Down 2-4 s after the stop (heartbeat 2 s), Ready as soon as the
  engine answers again.

Everything made is named ``zlsw-<suffix>-…`` (namespaces, containerd namespaces) or
``zl-swarm-<suffix>…`` (the directory, cgroups), ``<suffix>`` random per cluster, so
parallel runs do not clash. Teardown (also when the build fails) stops each dockerd by
its pid (TERM, then KILL), kills what is left in the cluster's namespaces and cgroups,
unmounts leftovers under the directory, deletes the namespaces (and with them every
veth and the bridge), removes the cgroups and the directory. The next build sweeps what
a killed run left behind (its owner process, recorded in the directory, is gone).

Fixtures (use them with ``pytest_plugins = ["tests.swarm_support"]``):

- ``swarm_cluster`` (session): builds the cluster once, tears it down at the end.
- ``swarm`` (function): the cluster, checked healthy first: any stopped engine is
  started again and every node must be Ready and active with its labels, so a test
  that stopped a node (:func:`stop_node`) cannot break the next one.
- ``swarm_deployment`` (function): a fresh name (``zs-<hex>``); the services,
  networks, secrets and configs labelled ``zlayer.deployment=<name>`` (and containers,
  networks and volumes so labelled on each node) are removed when the test ends.

They call ``needs_root``, so their tests are marked ``root`` (tests/conftest.py);
without root, or without dockerd, nsenter, unshare, ip or the docker CLI, they skip
saying why, and fail under ``CI=true``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.docker_support import engine_request, remove_deployment
from tests.support import needs_root, unavailable, wait_for

__all__ = [
    "CLIENT_ADDRESS",
    "IMAGE",
    "LABEL",
    "EngineFailed",
    "FetchFailed",
    "Node",
    "Swarm",
    "build_swarm",
    "destroy_swarm",
    "docker",
    "engine_post",
    "fetch",
    "heal",
    "in_client",
    "node_status",
    "remove_swarm_deployment",
    "service_tasks",
    "start_node",
    "stop_node",
    "swarm",
    "swarm_cluster",
    "swarm_deployment",
    "swarm_nodes",
    "sweep_leftovers",
    "try_fetch",
    "wait_healthy",
    "wait_node_status",
]

REPO = Path(__file__).resolve().parent.parent
BASE = Path("/tmp")
"""Where the clusters' directories go: on the host's file system, not remounted."""
RUN_NETNS = Path("/run/netns")

DIRECTORY_PREFIX = "zl-swarm-"
"""``/tmp/zl-swarm-<suffix>``; also the cgroup parents ``zl-swarm-<suffix>-n<i>``."""
NETNS_PREFIX = "zlsw-"
"""``zlsw-<suffix>-hub``, ``-n<i>``, ``-cl``; also the containerd namespaces."""

SUBNET = "10.219.0"
"""The /24 of the hub bridge: node i is .(10+i), the client namespace .2."""
CLIENT_ADDRESS = f"{SUBNET}.2"
NODES = 3
ZONES = ("a", "b", "c")
IMAGE = "zlayer-test/busybox:latest"
"""The test image, imported into every node (busybox-static: sh, httpd, nslookup, wget)."""
PROXY_IMAGE = "zlayer-test/haproxy:latest"
"""The host's HAProxy, imported into every node: the deployments' proxy (``[swarm]
proxy_image``, :func:`zlayer_env`)."""
LABEL = "zlayer.deployment"
"""The label :func:`remove_swarm_deployment` removes by (the Docker tests' label too)."""

HEARTBEAT_SECONDS = 2
"""The dispatcher heartbeat (set at ``swarm init``). Measured here: with the default 5 s
the manager saw a stopped worker Down 11 s after its dockerd exited (15 s after a
SIGKILL); with 2 s, 2-4 s (7 s). That keeps node-loss tests short, and a node must
still miss several 2 s beats in a row to be taken for Down, which even the busy
two-core box does not."""
SHUTDOWN_SECONDS = 1
"""daemon.json ``shutdown-timeout``: how long a stopping dockerd waits for its swarm
agent before it forces its exit (each container still gets its own stop grace period:
dockerd waits for the longest plus 5 s). A worker's SIGTERM took 4 s with 3, 2 s with 1."""

_SUFFIX = re.compile(r"^[0-9a-f]{6}$")


# --- the Engine API with a body ----------------------------------------------------------------


def engine_post(
    url: str,
    path: str,
    body: Any = None,
    params: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, Any]:
    """``(status, body)`` of one POST with a JSON body to the engine at ``unix://`` ``url``
    (:func:`tests.docker_support.engine_request`); JSON answers are decoded."""
    return engine_request(url, "POST", path, params, timeout, body={} if body is None else body)


def _answers(url: str) -> bool:
    try:
        status, _ = engine_request(url, "GET", "/_ping", timeout=2)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


# --- processes, cgroups and namespaces of one cluster ------------------------------------------


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks after boot), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _netns_names(suffix: str) -> list[str]:
    try:
        names = os.listdir(RUN_NETNS)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{NETNS_PREFIX}{suffix}-"))


def _netns_ids(names: Sequence[str]) -> set[tuple[int, int]]:
    ids = set()
    for name in names:
        try:
            st = os.stat(RUN_NETNS / name)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _cgroup_mounts() -> list[Path]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(fields[0].split()[4]))
    return mounts


def _cgroup_dirs(prefix: str, depth: int = 4) -> list[Path]:
    """Every cgroup directory (and those below it) whose name starts with ``prefix``, in
    every hierarchy, deepest first. A relative ``--cgroup-parent`` lands below the
    engine's own cgroup, which differs by hierarchy (a sandbox may confine memory only),
    hence a bounded walk rather than one computed path."""
    found: list[Path] = []
    for mount in _cgroup_mounts():
        for top, dirs, _ in os.walk(mount):
            level = len(Path(top).relative_to(mount).parts)
            inside = any(part.startswith(prefix) for part in Path(top).relative_to(mount).parts)
            if inside:
                found.append(Path(top))
            elif level >= depth:
                dirs.clear()
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _strays(netns_ids: set[tuple[int, int]], cgroup_dirs: Sequence[Path]) -> set[int]:
    """The processes in the cluster's network namespaces (containerd, shims, docker-proxy)
    or in its cgroups (the containers): all started by its engines."""
    pids: set[int] = set()
    for directory in cgroup_dirs:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    if netns_ids:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in netns_ids:
                pids.add(int(entry))
    pids.discard(os.getpid())
    return pids


def _kill_strays(netns_ids: set[tuple[int, int]], cgroup_prefix: str, timeout: float) -> None:
    def gone() -> bool:
        left = _strays(netns_ids, _cgroup_dirs(cgroup_prefix))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not left

    wait_for(gone, f"the processes of {cgroup_prefix}* to end", timeout, interval=0.1)


def _mounts_under(directory: Path) -> list[str]:
    """Mount points below ``directory`` in the host's mount namespace (deepest first)."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point == str(directory) or point.startswith(f"{directory}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _run(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _ip(*argv: str) -> None:
    run = _run(["ip", *argv])
    if run.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {run.stderr.strip()}")


# --- one node's engine -------------------------------------------------------------------------


class EngineFailed(RuntimeError):
    """A node's dockerd exited or did not answer; the message ends with its log."""


class _Engine:
    """The one mutable part of a node: its dockerd process, which :func:`stop_node` and
    :func:`start_node` replace. Started as a child of the test process (its pid is the
    dockerd's: nsenter, unshare and sh each exec the next) in a session of its own, so
    an interrupt reaches the fixture's teardown, not the engines."""

    def __init__(self, suffix: str, index: int, directory: Path) -> None:
        self.index = index
        self.hostname = f"zl-node-{index}"
        self.netns = f"{NETNS_PREFIX}{suffix}-n{index}"
        self.address = f"{SUBNET}.{10 + index}"
        self.directory = directory / f"n{index}"
        self.cgroup_parent = f"{DIRECTORY_PREFIX}{suffix}-n{index}"
        self.containerd_namespace = f"{NETNS_PREFIX}{suffix}-n{index}"
        self.process: subprocess.Popen[bytes] | None = None
        self.manager: _Engine | None = None
        """The manager's engine, for a worker (set once the swarm is formed)."""
        self.directory.mkdir()
        config = {
            "deprecated-key-path": str(self.directory / "key.json"),
            "shutdown-timeout": SHUTDOWN_SECONDS,
        }
        (self.directory / "daemon.json").write_text(json.dumps(config, indent=2) + "\n")

    @property
    def socket(self) -> str:
        return f"unix://{self.directory / 'docker.sock'}"

    @property
    def log(self) -> Path:
        return self.directory / "dockerd.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self, resolv_conf: Path) -> list[str]:
        d = self.directory
        setup = 'hostname "$1" && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
        return [
            *("nsenter", f"--net={RUN_NETNS / self.netns}", "--"),
            *("unshare", "--mount", "--uts", "--propagation", "private", "--"),
            *("sh", "-c", setup, "sh", self.hostname, str(resolv_conf)),
            "dockerd",
            *("--config-file", str(d / "daemon.json")),
            *("--data-root", str(d / "data"), "--exec-root", str(d / "exec")),
            *("--pidfile", str(d / "dockerd.pid"), "--host", self.socket),
            *("--containerd-namespace", self.containerd_namespace),
            *("--containerd-plugins-namespace", f"{self.containerd_namespace}-plugins"),
            *("--cgroup-parent", self.cgroup_parent),
        ]

    def start(self, timeout: float = 60) -> None:
        """Start dockerd (on its data root as it is: a node rejoins as itself) and wait
        until it answers."""
        if self.running:
            return
        resolv_conf = self.directory.parent / "resolv.conf"
        env = {**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
        with self.log.open("ab") as log:
            log.write(f"\n=== started {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv(resolv_conf),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

        def up() -> bool:
            if not self.running:
                raise EngineFailed(f"dockerd of {self.hostname} exited:\n{self.log_tail()}")
            return _answers(self.socket)

        wait_for(up, lambda: f"dockerd of {self.hostname} to answer:\n{self.log_tail()}", timeout)

    def terminate(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.terminate()

    def reap(self, timeout: float) -> None:
        """Wait for dockerd to exit after :meth:`terminate`, SIGKILL it after ``timeout``,
        then kill whatever of its engine is left (containerd, shims, containers), so a
        restart finds none of it."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        ids = _netns_ids([self.netns])
        _kill_strays(ids, self.cgroup_parent, 30)
        (self.directory / "dockerd.pid").unlink(missing_ok=True)  # stale after a SIGKILL
        # The exec root is the engine's /run: its mounts (the sandboxes' network
        # namespaces under exec/netns) died with the private mount namespace, leaving
        # plain files a restarted engine would take for namespaces ("failed to set into
        # network namespace": the node's overlay networks stalled for 30 s). Clear it as
        # a reboot clears /run; the swarm state is in the data root.
        shutil.rmtree(self.directory / "exec", ignore_errors=True)

    def stop(self, timeout: float = 30) -> None:
        self.terminate()
        self.reap(timeout)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- the cluster -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One swarm node. ``name`` is its host name and swarm node name; ``socket`` the
    ``unix://`` URL of its engine (for the host); ``address`` its address on the hub,
    reachable from the client namespace only."""

    index: int
    name: str
    netns: str
    address: str
    socket: str
    node_id: str
    engine_id: str
    labels: dict[str, str] = field(hash=False)
    _engine: _Engine = field(repr=False, compare=False, hash=False)

    @property
    def pid(self) -> int | None:
        """The pid of its dockerd, ``None`` while stopped (it changes on a restart)."""
        engine = self._engine
        return engine.process.pid if engine.running and engine.process else None

    @property
    def running(self) -> bool:
        return self._engine.running

    @property
    def log(self) -> Path:
        """Its dockerd's log (all its runs)."""
        return self._engine.log


@dataclass(frozen=True)
class Swarm:
    """The cluster: node 1 is the only manager (and Leader), the others are workers."""

    suffix: str
    directory: Path
    hub_netns: str
    client_netns: str
    nodes: tuple[Node, ...]
    build_seconds: float = field(compare=False)

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[Node, ...]:
        return self.nodes[1:]

    @property
    def url(self) -> str:
        """The manager's engine: where services, networks and secrets are made."""
        return self.manager.socket

    def node(self, node_id: str) -> Node:
        """The node with swarm node ID ``node_id``."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)


def _labels(index: int) -> dict[str, str]:
    return {"zone": ZONES[index - 1], "name": f"node-{index}"}


def _new_directory() -> tuple[str, Path]:
    while True:
        suffix = secrets.token_hex(3)
        directory = BASE / f"{DIRECTORY_PREFIX}{suffix}"
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        start = _start_time(os.getpid())
        (directory / "owner").write_text(f"{os.getpid()} {start}\n")
        return suffix, directory


def _make_network(suffix: str, count: int) -> tuple[str, str]:
    """The hub namespace with its bridge, a veth from it into each node namespace and
    the client namespace. Every link is made in a namespace of the cluster (``ip -n``),
    none ever appears in the host's; deleting the namespaces deletes them all."""
    hub, client = f"{NETNS_PREFIX}{suffix}-hub", f"{NETNS_PREFIX}{suffix}-cl"
    _ip("netns", "add", hub)
    _ip("-n", hub, "link", "set", "lo", "up")
    _ip("-n", hub, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
    _ip("-n", hub, "link", "set", "br0", "up")
    ends = [
        (f"{NETNS_PREFIX}{suffix}-n{i}", f"n{i}", f"{SUBNET}.{10 + i}") for i in range(1, 1 + count)
    ]
    for netns, port, address in [*ends, (client, "cl", CLIENT_ADDRESS)]:
        _ip("netns", "add", netns)
        _ip("-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", hub, "link", "set", port, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
    return hub, client


def _import_image(engines: Sequence[_Engine]) -> None:
    """``contrib/docker/import-busybox`` and ``import-haproxy`` (the deployments'
    proxy, :data:`PROXY_IMAGE`) into every node, in parallel: there is no registry."""
    images = [("import-busybox", IMAGE), ("import-haproxy", PROXY_IMAGE)]
    runs = [
        (
            engine,
            subprocess.Popen(
                [str(REPO / "contrib" / "docker" / script), tag],
                env={**os.environ, "DOCKER_HOST": engine.socket},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for engine in engines
        for script, tag in images
    ]
    failures = []
    for engine, run in runs:
        output, _ = run.communicate(timeout=180)
        if run.returncode != 0:
            failures.append(f"{engine.hostname}: {output.strip()}")
    if failures:
        raise RuntimeError("importing the images failed: " + "; ".join(failures))


def _form_swarm(engines: Sequence[_Engine]) -> None:
    manager, workers = engines[0], engines[1:]
    spec = {"Dispatcher": {"HeartbeatPeriod": HEARTBEAT_SECONDS * 1_000_000_000}}
    init = {"ListenAddr": f"{manager.address}:2377", "AdvertiseAddr": manager.address}
    status, body = engine_post(manager.socket, "/swarm/init", {**init, "Spec": spec})
    if status != 200:
        raise RuntimeError(f"swarm init on {manager.hostname}: {status} {body}")
    _, info = engine_request(manager.socket, "GET", "/swarm")
    token = info["JoinTokens"]["Worker"]

    def join(engine: _Engine) -> None:
        request = {
            "ListenAddr": f"{engine.address}:2377",
            "AdvertiseAddr": engine.address,
            "RemoteAddrs": [f"{manager.address}:2377"],
            "JoinToken": token,
        }
        status, body = engine_post(engine.socket, "/swarm/join", request)
        if status != 200:
            raise RuntimeError(f"swarm join of {engine.hostname}: {status} {body}")

    with ThreadPoolExecutor(len(workers) or 1) as pool:
        list(pool.map(join, workers))


def _update_node(url: str, node_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to a node's spec; retried while the node's version moves under it
    (its status updates bump it)."""

    def attempt() -> bool:
        status, node = engine_request(url, "GET", f"/nodes/{node_id}")
        if status != 200:
            raise RuntimeError(f"node {node_id}: {status} {node}")
        spec = node["Spec"]
        change(spec)
        version = {"version": str(node["Version"]["Index"])}
        status, body = engine_post(url, f"/nodes/{node_id}/update", spec, version)
        if status == 200:
            return True
        if "out of sequence" in str(body):
            return False
        raise RuntimeError(f"node update {node_id}: {status} {body}")

    wait_for(attempt, f"an update of node {node_id} to apply", 30)


def build_swarm(count: int = NODES) -> Swarm:
    """Build a cluster of ``count`` nodes (node 1 the manager), each Ready with its
    labels and the test image; on any failure everything made is removed again."""
    started = time.monotonic()
    sweep_leftovers()
    suffix, directory = _new_directory()
    engines: list[_Engine] = []
    try:
        (directory / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        )
        hub, client = _make_network(suffix, count)
        engines = [_Engine(suffix, i, directory) for i in range(1, count + 1)]
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda e: e.start(), engines))
        _import_image(engines)
        _form_swarm(engines)
        for engine in engines[1:]:
            engine.manager = engines[0]
        nodes = []
        for engine in engines:
            _, info = engine_request(engine.socket, "GET", "/info")
            node_id = info["Swarm"]["NodeID"]
            labels = _labels(engine.index)

            def label(spec: dict[str, Any], wanted: dict[str, str] = labels) -> None:
                spec["Labels"] = wanted

            _update_node(engines[0].socket, node_id, label)
            nodes.append(
                Node(
                    index=engine.index,
                    name=engine.hostname,
                    netns=engine.netns,
                    address=engine.address,
                    socket=engine.socket,
                    node_id=node_id,
                    engine_id=info["ID"],
                    labels=labels,
                    _engine=engine,
                )
            )
        swarm = Swarm(suffix, directory, hub, client, tuple(nodes), 0.0)
        wait_healthy(swarm, 60)
        return dataclasses.replace(swarm, build_seconds=round(time.monotonic() - started, 2))
    except BaseException:
        _destroy(suffix, directory, engines)
        raise


@dataclass(frozen=True)
class Engine:
    """One private Docker engine of its own (no swarm), in a network namespace, for the
    fault tests that stop and start it (:meth:`stop`, :meth:`start`, by pid)."""

    suffix: str
    directory: Path
    _engine: _Engine

    @property
    def socket(self) -> str:
        return self._engine.socket

    @property
    def running(self) -> bool:
        return self._engine.running

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to dockerd (its pid), SIGKILL after ``timeout``; what the engine ran
        (containerd, shims, containers) is gone afterwards, as after a host's restart."""
        self._engine.stop(timeout)

    def start(self, timeout: float = 60) -> None:
        self._engine.start(timeout)

    def log_tail(self, lines: int = 25) -> str:
        return self._engine.log_tail(lines)


def build_engine() -> Engine:
    """A standalone engine with the test images; removed again on any failure."""
    sweep_leftovers()
    suffix, directory = _new_directory()
    engines: list[_Engine] = []
    try:
        (directory / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
        )
        _make_network(suffix, 1)
        engines = [_Engine(suffix, 1, directory)]
        engines[0].start()
        _import_image(engines)
        return Engine(suffix, directory, engines[0])
    except BaseException:
        _destroy(suffix, directory, engines)
        raise


def destroy_engine(engine: Engine) -> None:
    _destroy(engine.suffix, engine.directory, [engine._engine])


def _destroy(suffix: str, directory: Path | None, engines: Sequence[_Engine] = ()) -> None:
    """Remove everything of cluster ``suffix``: engines, stray processes, mounts,
    namespaces (with their links), cgroups, the directory. Tries every step, then raises
    naming what failed."""
    problems: list[str] = []
    for engine in engines:
        engine.terminate()  # all at once: they stop in parallel
    deadline = time.monotonic() + 30
    for engine in engines:
        if engine.process is None:
            continue
        try:
            engine.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait(30)
    if directory is not None:  # a leftover's engines, by the pids their pid files name
        for pidfile in directory.glob("n*/dockerd.pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
                if str(directory).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
    names = _netns_names(suffix)
    cgroup_prefix = f"{DIRECTORY_PREFIX}{suffix}-"
    try:
        _kill_strays(_netns_ids(names), cgroup_prefix, 30)
    except AssertionError as exc:
        problems.append(str(exc))
    if directory is not None:
        for point in _mounts_under(directory):
            if _run(["umount", "-l", point]).returncode != 0:
                problems.append(f"umount {point}")
    for name in names:
        run = _run(["ip", "netns", "delete", name])
        if run.returncode != 0:
            problems.append(f"ip netns delete {name}: {run.stderr.strip()}")
    for cgroup in _cgroup_dirs(cgroup_prefix):
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"rmdir {cgroup}: {exc}")
    if directory is not None:

        def removed() -> bool:
            shutil.rmtree(directory, ignore_errors=True)  # containerd may still be writing
            return not directory.exists()

        try:
            wait_for(removed, f"{directory} to be removed", 10, interval=0.25)
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        raise RuntimeError(f"swarm {suffix} not fully removed: " + "; ".join(problems))


def destroy_swarm(swarm: Swarm) -> float:
    """Tear ``swarm`` down completely; the seconds it took."""
    started = time.monotonic()
    _destroy(swarm.suffix, swarm.directory, [node._engine for node in swarm.nodes])
    return round(time.monotonic() - started, 2)


def _owner_alive(directory: Path) -> bool:
    try:
        pid, start = (directory / "owner").read_text().split()
    except (OSError, ValueError):
        # Being created right now, or broken: spare it while young.
        try:
            return time.time() - directory.stat().st_mtime < 60
        except OSError:
            return True
    return _start_time(int(pid)) == start


def sweep_leftovers() -> list[str]:
    """Remove the clusters of runs that died without their teardown (their owner process
    is gone), and namespaces of clusters whose directory is gone; the suffixes swept.
    Another live run's cluster is left alone."""
    swept = []
    for directory in BASE.glob(f"{DIRECTORY_PREFIX}*"):
        suffix = directory.name.removeprefix(DIRECTORY_PREFIX)
        if _SUFFIX.match(suffix) and directory.is_dir() and not _owner_alive(directory):
            _destroy(suffix, directory)
            swept.append(suffix)
    suffixes = set()
    for name in os.listdir(RUN_NETNS) if RUN_NETNS.is_dir() else ():
        parts = name.split("-")
        if name.startswith(NETNS_PREFIX) and len(parts) == 3 and _SUFFIX.match(parts[1]):
            suffixes.add(parts[1])
    for suffix in sorted(suffixes):
        if not (BASE / f"{DIRECTORY_PREFIX}{suffix}").exists():
            _destroy(suffix, None)
            swept.append(suffix)
    return swept


# --- looking at and changing the cluster -------------------------------------------------------


def swarm_nodes(swarm: Swarm) -> dict[str, dict[str, Any]]:
    """The manager's view of the nodes, by node ID (empty while the manager is down)."""
    try:
        status, nodes = engine_request(swarm.url, "GET", "/nodes", timeout=10)
    except (OSError, http.client.HTTPException):
        return {}
    return {n["ID"]: n for n in nodes} if status == 200 else {}


def node_status(swarm: Swarm, node: Node) -> str:
    """The manager's ``Status.State`` of ``node``: ``ready``, ``down``, ``unknown``,
    ``disconnected``; ``""`` when the manager does not answer."""
    found = swarm_nodes(swarm).get(node.node_id)
    return str(found["Status"]["State"]) if found else ""


def wait_node_status(swarm: Swarm, node: Node, status: str, timeout: float = 60) -> float:
    """Wait until the manager reports ``node`` as ``status``; the seconds waited."""
    started = time.monotonic()
    wait_for(
        lambda: node_status(swarm, node) == status,
        lambda: f"{node.name} {status} (it is {node_status(swarm, node)!r})",
        timeout,
        interval=0.2,
    )
    return time.monotonic() - started


def stop_node(node: Node, timeout: float = 30) -> int:
    """Stop the node's dockerd by its pid (SIGTERM: it stops its containers and exits;
    SIGKILL after ``timeout``), then kill what is left of its engine; the pid stopped.
    Stopping the manager leaves the cluster without a control plane until it is started
    again (the ``swarm`` fixture does that before the next test)."""
    pid = node.pid
    if pid is None:
        raise RuntimeError(f"{node.name} is not running")
    node._engine.stop(timeout)
    return pid


def start_node(node: Node, timeout: float = 60) -> int:
    """Start the node's dockerd again on the same data root, so it rejoins the swarm as
    itself (same node ID, engine ID, labels); returns once the engine answers (the
    manager sees it Ready a moment later: :func:`wait_node_status`). Its new pid.

    A worker is started only once the manager has seen it Down (a few seconds after
    :func:`stop_node`): started sooner, the new engine joined its overlay networks while
    its peers still knew the old one, and libnetwork's bulk sync with a peer timed out
    after 30 s, stalling the node's networks (measured; none when it waits)."""
    if node.running:
        return node.pid or 0
    manager = node._engine.manager
    if manager is not None and manager.running:
        wait_for(
            lambda: _state_on(manager.socket, node.node_id) not in ("ready", ""),
            f"the manager to see {node.name} Down before it starts again",
            timeout,
            interval=0.2,
        )
    node._engine.start(timeout)
    assert node.pid is not None
    return node.pid


def _state_on(manager_socket: str, node_id: str) -> str:
    try:
        status, found = engine_request(manager_socket, "GET", f"/nodes/{node_id}", timeout=10)
    except (OSError, http.client.HTTPException):
        return ""
    return str(found["Status"]["State"]) if status == 200 else ""


def _unhealthy(swarm: Swarm) -> list[str]:
    seen = swarm_nodes(swarm)
    if not seen:
        return ["the manager does not answer"]
    problems = []
    for node in swarm.nodes:
        found = seen.get(node.node_id)
        if found is None:
            problems.append(f"{node.name} unknown to the manager")
            continue
        if found["Status"]["State"] != "ready":
            problems.append(f"{node.name} {found['Status']['State']}")
        if found["Spec"].get("Availability") != "active":
            problems.append(f"{node.name} {found['Spec'].get('Availability')}")
        if (found["Spec"].get("Labels") or {}) != node.labels:
            problems.append(f"{node.name} labels {found['Spec'].get('Labels')}")
    return problems


def wait_healthy(swarm: Swarm, timeout: float = 90) -> None:
    """Wait until every node is Ready, active and labelled as built."""
    problems: list[str] = []

    def healthy() -> bool:
        problems[:] = _unhealthy(swarm)
        return not problems

    wait_for(healthy, lambda: f"a healthy swarm ({'; '.join(problems)})", timeout, interval=0.2)


def heal(swarm: Swarm, timeout: float = 90) -> list[str]:
    """Bring the cluster back as built: start every stopped engine (the manager first),
    make every node active with its labels again, wait until all are Ready; what it
    fixed."""
    fixed = []
    for node in swarm.nodes:
        if not node.running:
            start_node(node)
            fixed.append(f"started {node.name}")
    wait_for(lambda: swarm_nodes(swarm), "the manager to answer", timeout)
    for node in swarm.nodes:
        found = swarm_nodes(swarm).get(node.node_id)
        spec = found["Spec"] if found else {}
        if spec.get("Availability") != "active" or (spec.get("Labels") or {}) != node.labels:

            def restore(s: dict[str, Any], n: Node = node) -> None:
                s.update(Availability="active", Labels=dict(n.labels))

            _update_node(swarm.url, node.node_id, restore)
            fixed.append(f"restored {node.name}")
    wait_healthy(swarm, timeout)
    return fixed


def service_tasks(
    swarm: Swarm, service: str, state: str | None = "running"
) -> list[dict[str, Any]]:
    """The tasks of ``service`` (name or ID) in ``state`` (its current state, not the
    desired one; ``None``: all)."""
    filters = json.dumps({"service": [service]})
    status, tasks = engine_request(swarm.url, "GET", "/tasks", {"filters": filters})
    if status != 200:
        return []
    return [t for t in tasks if state is None or t["Status"]["State"] == state]


def docker(
    node: Node, *argv: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docker CLI against ``node``'s engine (``docker exec`` into a task, say)."""
    run = _run(["docker", "-H", node.socket, *argv], timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"docker {' '.join(argv)} on {node.name}: {run.stderr.strip()}")
    return run


def in_client(swarm: Swarm, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the client namespace (``CLIENT_ADDRESS`` on the hub bridge), the
    one place the tests reach the nodes' addresses from."""
    netns = f"--net={RUN_NETNS / swarm.client_netns}"
    return _run(["nsenter", netns, "--", *argv], timeout)


_FETCH = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as response:
    sys.stdout.write(response.read().decode())
"""


class FetchFailed(OSError):
    """An HTTP GET from the client namespace failed; the message has its error."""


def fetch(swarm: Swarm, url: str, timeout: float = 5) -> str:
    """The body of an HTTP GET of ``url`` from the client namespace (Python's urllib,
    no proxy); :class:`FetchFailed` when it fails."""
    run = in_client(swarm, sys.executable, "-c", _FETCH, url, str(timeout), timeout=timeout + 30)
    if run.returncode != 0:
        last = run.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise FetchFailed(f"GET {url}: {last[0]}")
    return run.stdout


_FETCH_ALL = """
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
out = {}
for url in json.loads(sys.argv[1]):
    bodies = out.setdefault(url, [])
    for _ in range(int(sys.argv[2])):
        try:
            with opener.open(url, timeout=float(sys.argv[3])) as response:
                bodies.append(response.read().decode().strip())
        except OSError as error:
            bodies.append(f"error: {error}")
print(json.dumps(out))
"""


def fetch_all(
    swarm: Swarm, urls: Sequence[str], count: int, timeout: float = 5
) -> dict[str, list[str]]:
    """``count`` GETs of each of ``urls`` from the client namespace, in one process:
    each URL's bodies (stripped; ``error: …`` for a request that failed)."""
    argv = [sys.executable, "-c", _FETCH_ALL, json.dumps(list(urls)), str(count), str(timeout)]
    run = in_client(swarm, *argv, timeout=len(urls) * count * timeout + 30)
    if run.returncode != 0:
        raise FetchFailed(f"GET {urls}: {run.stderr.strip()[-300:]}")
    found: dict[str, list[str]] = json.loads(run.stdout)
    return found


def try_fetch(swarm: Swarm, url: str, timeout: float = 5) -> str | None:
    """:func:`fetch`, ``None`` when it fails (for :func:`tests.support.wait_for`)."""
    try:
        return fetch(swarm, url, timeout)
    except FetchFailed:
        return None


def remove_swarm_deployment(swarm: Swarm, deployment: str, timeout: float = 60) -> list[str]:
    """Remove every service, network, secret and config labelled
    ``zlayer.deployment=<deployment>`` from the swarm, and the containers, networks and
    volumes so labelled on each running node; what it removed.

    The services' containers are force-removed on their nodes right after the services:
    left to the agents, their removal takes about 7 s (the agents learn of it seconds
    later, then wait out each task's stop grace period), the cleanup's whole cost. Then
    the networks go on the manager (retried while the store still counts a task on
    one), and the wait is until no running node lists a labelled network any more."""
    url = swarm.url
    label = json.dumps({"label": [f"{LABEL}={deployment}"]})
    removed: list[str] = []
    status, services = engine_request(url, "GET", "/services", {"filters": label})
    if status != 200:
        raise RuntimeError(f"the manager lists no services: {status} {services}")
    for service in services:
        engine_request(url, "DELETE", f"/services/{service['ID']}")
        removed.append(f"service {service['Spec']['Name']}")
    running = [node for node in swarm.nodes if node.running]
    for node in running:
        for service in services:
            filters = json.dumps({"label": [f"com.docker.swarm.service.id={service['ID']}"]})
            query = {"all": "1", "filters": filters}
            _, containers = engine_request(node.socket, "GET", "/containers/json", query)
            for container in containers:
                engine_request(
                    node.socket, "DELETE", f"/containers/{container['Id']}", {"force": "1"}, 60
                )
                removed.append(f"{node.name}: container {container['Names'][0].lstrip('/')}")
    for node in running:  # standalone containers (on attachable networks), volumes
        removed.extend(f"{node.name}: {w}" for w in remove_deployment(node.socket, deployment))
    for kind in ("secrets", "configs"):
        _, found = engine_request(url, "GET", f"/{kind}", {"filters": label})
        for item in found:
            engine_request(url, "DELETE", f"/{kind}/{item['ID']}")
            removed.append(f"{kind[:-1]} {item['Spec']['Name']}")
    _, networks = engine_request(url, "GET", "/networks", {"filters": label})
    for network in networks:

        def deleted(network_id: str = network["Id"]) -> bool:
            status, _ = engine_request(url, "DELETE", f"/networks/{network_id}")
            return status in (200, 204, 404)

        wait_for(deleted, f"network {network['Name']} to be removed", timeout, interval=0.2)
        removed.append(f"network {network['Name']}")

    def left_on_nodes() -> list[str]:
        left: list[str] = []
        for node in running:
            _, found = engine_request(node.socket, "GET", "/networks", {"filters": label})
            left.extend(f"{node.name}: {n['Name']}" for n in found)
        return left

    wait_for(
        lambda: not left_on_nodes(),
        lambda: f"the networks of {deployment} to leave the nodes: {left_on_nodes()}",
        timeout,
        interval=0.2,
    )
    return removed


# --- fixtures ------------------------------------------------------------------------------------


def _missing_tools() -> list[str]:
    return [
        t
        for t in ("dockerd", "docker", "nsenter", "unshare", "ip", "haproxy")
        if not shutil.which(t)
    ]


@pytest.fixture(scope="session")
def swarm_cluster() -> Iterator[Swarm]:
    """The session's three-node swarm, built once (a few seconds) and removed at the end."""
    needs_root("a Docker Swarm in network namespaces")
    missing = _missing_tools()
    if missing:
        unavailable(
            f"NO SWARM: {', '.join(missing)} not installed (docker.io, util-linux, iproute2)"
        )
    probe = f"{NETNS_PREFIX}probe{secrets.token_hex(2)}"
    run = _run(["ip", "netns", "add", probe])
    if run.returncode != 0:
        unavailable(f"NO SWARM: cannot make a network namespace: {run.stderr.strip()}")
    _run(["ip", "netns", "delete", probe])
    try:
        cluster = build_swarm()
    except EngineFailed as exc:
        unavailable(f"NO SWARM: a node's dockerd did not start: {exc}")
    print(f"swarm {cluster.suffix} built in {cluster.build_seconds}s")
    try:
        yield cluster
    finally:
        print(f"swarm {cluster.suffix} removed in {destroy_swarm(cluster)}s")


@pytest.fixture
def private_engine() -> Iterator[Engine]:
    """A private Docker engine of the test's own, to stop and start (a few seconds to
    build), removed with everything it ran afterwards."""
    needs_root("a private Docker engine in a network namespace")
    missing = _missing_tools()
    if missing:
        unavailable(f"NO ENGINE: {', '.join(missing)} not installed (docker.io, iproute2)")
    try:
        engine = build_engine()
    except EngineFailed as exc:
        unavailable(f"NO ENGINE: dockerd did not start: {exc}")
    try:
        yield engine
    finally:
        destroy_engine(engine)


@pytest.fixture
def swarm(swarm_cluster: Swarm) -> Swarm:
    """The session's swarm, healthy: stopped engines started again, every node Ready,
    active and labelled as built (so a test that stopped a node does not break the next)."""
    needs_root("a Docker Swarm in network namespaces")
    fixed = heal(swarm_cluster)
    if fixed:
        print(f"swarm healed before the test: {', '.join(fixed)}")
    return swarm_cluster


@pytest.fixture
def swarm_deployment(swarm: Swarm) -> Iterator[str]:
    """A fresh deployment name (``zs-<8 hex>``) for labelling (``zlayer.deployment``) what
    a test makes in the swarm; all of it is removed after the test, pass or fail."""
    name = f"zs-{secrets.token_hex(4)}"
    yield name
    heal(swarm)  # a node the test stopped must be back to remove its containers
    remove_swarm_deployment(swarm, name)

"""Bridges, veth pairs and network namespaces (reconciler.drivers.process.netns) against the kernel.

Most tests need root on Linux. Without it they skip, loudly, naming the reason, except
under ``CI=true`` where they fail.

**The stage.** Except for one smoke test on the real host, each test runs in a fresh
network namespace of its own that stands in for the host (fixture ``stage``: the test's
thread joins it with ``setns`` and returns when the test ends). The code under test does
exactly what it does on the host (netlink sockets and forks follow the calling thread's
namespace; ``/run/netns`` and ``/etc/netns`` are the real ones), but the results no longer
depend on the host's firewall: on a host where Docker has run, ``br_netfilter`` hands
bridged frames to iptables and the FORWARD policy DROP silently drops replica-to-replica
traffic (see ``firewall.bridge_filtering``). It also keeps the host's links untouched.

Every test uses its own deployment name; a finalizer removes its namespaces, links and
``/etc/netns`` directories (through pyroute2 and the file system, not only through the code
under test), pass or fail. Traffic goes only to addresses inside the test's namespaces.
Results are checked with pyroute2 and the file system directly, not only through
``netns.inventory()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pyroute2 import IPRoute, NetlinkError  # type: ignore[import-untyped]
from pyroute2 import netns as pyroute2_netns

from reconciler.drivers.process import addresses, firewall, names, netns
from reconciler.errors import PermanentDriverError
from tests.support import needs_root, unavailable

PORT = 8080
CLONE_NEWNET = 0x40000000
RUN_NETNS = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")

# 10.213.200.0/21: /24s 200..206 for the staged tests (each in its own namespace, so
# reuse is harmless), 207 for the one test on the real host.
_SUBNETS = list(IPv4Network("10.213.200.0/21").subnets(new_prefix=24))
_STAGED_SUBNETS = itertools.cycle(_SUBNETS[:-1])
_HOST_SUBNET = _SUBNETS[-1]

_libc = ctypes.CDLL(None, use_errno=True)


# --- running something inside a namespace ------------------------------------------------------

# A client or server entered into a namespace with setns(2); with a hosts file, it also
# unshares its mount namespace and binds that file over /etc/hosts, as the process
# driver does for workloads. Standard library only. Prints "ready" (server) or one JSON
# line (client).
HELPER = textwrap.dedent(
    """
    import ctypes, errno, json, os, socket, sys

    CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
    MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc, what):
        if rc != 0:
            code = ctypes.get_errno()
            raise SystemExit(f"{what}: {os.strerror(code)}")

    ns, mode, host, port, hosts = sys.argv[1:6]
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    check(libc.setns(fd, CLONE_NEWNET), "setns")
    os.close(fd)
    if hosts:
        check(libc.unshare(CLONE_NEWNS), "unshare")
        check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        check(libc.mount(hosts.encode(), b"/etc/hosts", None, MS_BIND, None), "bind hosts")
    if mode == "serve":
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, int(port)))
        server.listen(8)
        server.settimeout(60)
        print("ready", flush=True)
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                break
            with conn:
                conn.sendall(f"hello from {ns}".encode())
    else:
        try:
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
            address = infos[0][4]
            with socket.create_connection(address, timeout=3) as conn:
                data = conn.recv(100).decode()
            print(json.dumps({"ok": True, "address": address[0], "data": data}))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "timeout" if exc.errno is None else "?")
            print(json.dumps({"ok": False, "errno": name, "error": str(exc)}))
    """
)


def _helper(ns: str, mode: str, host: str, hosts_file: Path | None = None) -> list[str]:
    return [sys.executable, "-c", HELPER, ns, mode, host, str(PORT), str(hosts_file or "")]


@contextlib.contextmanager
def serving(ns: str) -> Iterator[None]:
    """A TCP server on port PORT of every address in namespace ``ns``; it answers each
    connection with ``hello from <ns>``."""
    proc = subprocess.Popen(
        _helper(ns, "serve", "0.0.0.0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"the server in {ns} did not start: {line!r} {err}")
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def connect_from(ns: str, host: str, hosts_file: Path | None = None) -> dict[str, Any]:
    """Connect from inside namespace ``ns`` to ``host``:PORT (a name is resolved through
    ``hosts_file`` bound over /etc/hosts); the helper's JSON report."""
    done = subprocess.run(
        _helper(ns, "connect", host, hosts_file),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, f"helper in {ns} failed: {done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def connect_from_host(address: IPv4Address) -> str:
    with socket.create_connection((str(address), PORT), timeout=3) as conn:
        return conn.recv(100).decode()


# --- looking with pyroute2 directly ----------------------------------------------------------


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    alias: str | None
    kind: str | None
    master: int | None
    up: bool


def links(ns: str | None = None) -> list[Link]:
    """The links of the calling thread's namespace, or of namespace ``ns``."""
    found = []
    with contextlib.ExitStack() as stack:
        ipr = stack.enter_context(IPRoute() if ns is None else IPRoute(netns=ns, flags=0))
        for msg in ipr.get_links():
            found.append(
                Link(
                    index=msg["index"],
                    name=msg.get("ifname"),
                    alias=msg.get("ifalias") or None,
                    kind=msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                    master=msg.get("master") or None,
                    up=bool(msg["flags"] & 1),
                )
            )
    return found


def link_named(name: str) -> Link | None:
    return next((link for link in links() if link.name == name), None)


def mac_of(name: str) -> str:
    with IPRoute() as ipr:
        (msg,) = ipr.link("get", ifname=name)
        return str(msg.get("address"))


def ipv4_of(index: int, ns: str | None = None) -> list[str]:
    with contextlib.ExitStack() as stack:
        ipr = stack.enter_context(IPRoute() if ns is None else IPRoute(netns=ns, flags=0))
        return sorted(
            f"{msg.get('address')}/{msg['prefixlen']}"
            for msg in ipr.get_addr(family=socket.AF_INET, index=index)
        )


def default_gateway(ns: str) -> str | None:
    with IPRoute(netns=ns, flags=0) as ipr:
        for msg in ipr.get_routes(family=socket.AF_INET, table=254):
            if msg["dst_len"] == 0:
                gateway = msg.get("gateway")
                return str(gateway) if gateway else None
    return None


# --- fixtures ----------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    unavailable(f"THE NETWORK NAMESPACE TESTS NEED ROOT ON LINUX: {reason}")


@pytest.fixture(scope="session")
def _etc_netns_existed() -> Iterator[bool]:
    """Remove /etc/netns at the end when the tests created it and left it empty."""
    existed = ETC_NETNS.exists()
    yield existed
    if not existed:
        with contextlib.suppress(FileNotFoundError, OSError):
            ETC_NETNS.rmdir()


@pytest.fixture
def root(_etc_netns_existed: bool) -> None:
    """Skips (fails under CI=true) unless bridges and namespaces can be made here."""
    if not sys.platform.startswith("linux"):
        _unavailable(f"not Linux ({sys.platform})")
    needs_root("making bridges and network namespaces")
    reason = netns.available()
    if reason is not None:
        _unavailable(reason)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@pytest.fixture
def stage(root: None) -> Iterator[str]:
    """The test's thread in a fresh network namespace standing in for the host."""
    name = f"zltest-host-{uuid4().hex[:8]}"  # not "zlayer-": a reconciler must not see it
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pyroute2_netns.create(name)
        try:
            fd = os.open(RUN_NETNS / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            try:
                yield name
            finally:
                _setns(original)
        finally:
            pyroute2_netns.remove(name)
    finally:
        os.close(original)


@dataclass
class Deployment:
    """A deployment of the test: its name, its subnet and the sandboxes made for it."""

    name: str
    subnet: IPv4Network
    made: list[tuple[str, int]] = field(default_factory=list)
    addresses: dict[tuple[str, int], IPv4Address] = field(default_factory=dict)

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def bridge(self) -> str:
        return names.bridge_name(self.name)

    def address(self, service: str, replica: int = 1) -> IPv4Address:
        key = (service, replica)
        if key not in self.addresses:
            self.addresses[key] = self.subnet.network_address + 2 + len(self.addresses)
        return self.addresses[key]

    def sandbox(self, service: str, replica: int = 1, *, bridged: bool = True) -> str:
        self.made.append((service, replica))
        return netns.create_sandbox(
            self.name,
            service,
            replica,
            address=self.address(service, replica) if bridged else None,
            subnet=self.subnet if bridged else None,
        )

    def veth(self, service: str, replica: int = 1) -> str:
        return names.veth_name(self.name, service, replica)


def purge(deployment: str) -> None:
    """Remove whatever of ``deployment`` exists, without the code under test."""
    alias = names.ALIAS_PREFIX + deployment
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            own_alias = msg.get("ifalias") or ""
            if own_alias == alias or own_alias.startswith(alias + "/"):
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=msg["index"])
        with contextlib.suppress(NetlinkError):
            ipr.link("del", ifname=names.bridge_name(deployment))
    prefix = f"zlayer-{deployment}-"
    for entry in RUN_NETNS.glob(prefix + "*"):
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(entry.name)
    for entry in ETC_NETNS.glob(prefix + "*"):
        shutil.rmtree(entry, ignore_errors=True)


def leftovers(deployment: str) -> list[str]:
    """What of ``deployment`` exists, found with pyroute2 and the file system."""
    alias = names.ALIAS_PREFIX + deployment
    prefix = f"zlayer-{deployment}-"
    found = [
        f"link {link.name} ({link.alias})"
        for link in links()
        if (link.alias is not None and (link.alias == alias or link.alias.startswith(alias + "/")))
        or link.name == names.bridge_name(deployment)
    ]
    found += [str(p) for p in RUN_NETNS.glob(prefix + "*")]
    found += [str(p) for p in ETC_NETNS.glob(prefix + "*")]
    return found


def _deployment(subnet: IPv4Network) -> Iterator[Deployment]:
    dep = Deployment(name=f"t{uuid4().hex[:8]}", subnet=subnet)
    try:
        yield dep
    finally:
        try:
            for service, replica in dep.made:
                netns.remove_sandbox(dep.name, service, replica)
            netns.remove_bridge(dep.name)
        finally:
            purge(dep.name)


@pytest.fixture
def deployment(stage: str) -> Iterator[Deployment]:
    """A deployment on the stage; everything of it is removed at the end."""
    yield from _deployment(next(_STAGED_SUBNETS))


@pytest.fixture
def host_deployment(root: None) -> Iterator[Deployment]:
    """A deployment on the real host; everything of it is removed at the end."""
    yield from _deployment(_HOST_SUBNET)


# --- names and arguments (no root needed) ------------------------------------------------------


def test_names_fit_ifnamsiz_and_are_stable() -> None:
    digest = hashlib.sha256(b"demo").hexdigest()
    assert names.bridge_name("demo") == "zl-" + digest[:10]
    veth_digest = hashlib.sha256(b"demo/web/1").hexdigest()
    assert names.veth_name("demo", "web", 1) == "zv" + veth_digest[:12]
    long = "d" * 63
    for name in (names.bridge_name(long), names.veth_name(long, "s" * 63, 10_000)):
        assert len(name) <= 15
    assert names.bridge_name("demo") == names.bridge_name("demo")
    assert names.bridge_name("demo") != names.bridge_name("demo2")
    assert names.veth_name("demo", "web", 1) != names.veth_name("demo", "web", 2)
    assert names.netns_name("demo", "web", 3) == "zlayer-demo-web-3"
    assert names.hosts_path("zlayer-demo-web-3") == Path("/etc/netns/zlayer-demo-web-3/hosts")
    with pytest.raises(ValueError):
        names.hosts_path("../etc")


def test_create_sandbox_rejects_inconsistent_addresses() -> None:
    subnet = IPv4Network("10.213.200.0/24")
    for address, net in (
        (IPv4Address("10.213.201.5"), subnet),  # outside
        (IPv4Address("10.213.200.1"), subnet),  # the bridge's
        (IPv4Address("10.213.200.255"), subnet),  # broadcast
        (IPv4Address("10.213.200.5"), None),  # no subnet
    ):
        with pytest.raises(ValueError):
            netns.create_sandbox("demo", "web", 1, address=address, subnet=net)


def test_bridge_filtering_reads_the_br_netfilter_flag() -> None:
    try:
        flag = firewall.BRIDGE_NF_CALL_IPTABLES.read_text().strip()
    except OSError:
        flag = "0"
    warning = firewall.bridge_filtering()
    assert (warning is not None) == (flag != "0")


# --- on the stage ------------------------------------------------------------------------------


def test_available_as_root(root: None) -> None:
    assert netns.available() is None


def test_ensure_bridge_creates_an_up_aliased_bridge_and_is_idempotent(
    deployment: Deployment,
) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    netns.ensure_bridge(deployment.name, deployment.subnet)

    alias = f"zlayer:{deployment.name}"
    mine = [link for link in links() if link.alias == alias]
    assert len(mine) == 1
    (bridge,) = mine
    assert bridge.name == deployment.bridge
    assert bridge.kind == "bridge"
    assert bridge.up
    assert ipv4_of(bridge.index) == [f"{deployment.gateway}/24"]

    # an address changed behind our back is put right
    with IPRoute() as ipr:
        ipr.addr("del", index=bridge.index, address=str(deployment.gateway), prefixlen=24)
        ipr.addr("add", index=bridge.index, address="10.213.99.1", prefixlen=24)
        ipr.link("set", index=bridge.index, state="down")
    netns.ensure_bridge(deployment.name, deployment.subnet)
    assert ipv4_of(bridge.index) == [f"{deployment.gateway}/24"]
    assert link_named(deployment.bridge) == bridge  # same link, up again

    seen = netns.inventory().bridges[deployment.name]
    assert seen == netns.Bridge(
        deployment=deployment.name,
        name=deployment.bridge,
        up=True,
        addresses=(f"{deployment.gateway}/24",),
    )


def test_replicas_reach_each_other_and_the_host_reaches_them(deployment: Deployment) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    a = deployment.sandbox("a")
    b = deployment.sandbox("b")
    assert a == f"zlayer-{deployment.name}-a-1"
    assert (RUN_NETNS / a).exists()
    assert (RUN_NETNS / b).exists()

    bridge = link_named(deployment.bridge)
    assert bridge is not None
    for service in ("a", "b"):
        port = link_named(deployment.veth(service))
        assert port is not None
        assert port.alias == f"zlayer:{deployment.name}/{service}/1"
        assert port.master == bridge.index
        assert port.up
    inside = {link.name: link for link in links(a)}
    assert set(inside) == {"lo", "eth0"}
    assert inside["lo"].up
    assert inside["eth0"].up
    assert ipv4_of(inside["eth0"].index, a) == [f"{deployment.address('a')}/24"]
    assert default_gateway(a) == str(deployment.gateway)

    with serving(a):
        report = connect_from(b, str(deployment.address("a")))
        assert report == {
            "ok": True,
            "address": str(deployment.address("a")),
            "data": f"hello from {a}",
        }
        assert connect_from_host(deployment.address("a")) == f"hello from {a}"

    seen = netns.inventory()
    assert seen.ports[f"{deployment.name}/a/1"] == netns.Port(
        alias_target=f"{deployment.name}/a/1",
        name=deployment.veth("a"),
        master=deployment.bridge,
        up=True,
    )
    assert {a, b} <= seen.namespaces


def test_names_resolve_through_the_hosts_file(deployment: Deployment) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    a = deployment.sandbox("a")
    b = deployment.sandbox("b")
    path = addresses.write_hosts_file(b, [(str(deployment.address("a")), ["svc-a", "svc-a.demo"])])
    assert path == ETC_NETNS / b / "hosts"

    with serving(a):
        report = connect_from(b, "svc-a", hosts_file=path)
    assert report == {
        "ok": True,
        "address": str(deployment.address("a")),
        "data": f"hello from {a}",
    }


def test_network_mode_none_has_only_loopback(deployment: Deployment) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    ns = deployment.sandbox("lonely", bridged=False)

    inside = links(ns)
    assert [(link.name, link.up) for link in inside] == [("lo", True)]
    assert link_named(deployment.veth("lonely")) is None
    report = connect_from(ns, str(deployment.gateway))
    assert report["ok"] is False
    assert report["errno"] == "ENETUNREACH", report


def test_write_hosts_rewrites_in_place(deployment: Deployment) -> None:
    ns = names.netns_name(deployment.name, "x", 1)
    deployment.made.append(("x", 1))  # so the finalizer removes /etc/netns/<ns>
    path = addresses.write_hosts_file(
        ns, [("10.213.200.2", ["svc-a"]), ("10.213.200.3", ["b1", "b2"])]
    )
    assert path.read_text() == (
        "127.0.0.1 localhost\n"
        "::1 localhost ip6-localhost ip6-loopback\n"
        "10.213.200.2 svc-a\n"
        "10.213.200.3 b1 b2\n"
    )
    before = os.stat(path)
    new = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n10.213.200.9 svc-a\n"

    # ``held`` pins the inode like a workload's bind mount does (and keeps its number
    # from being reused): it must see the new content. A shorter text is padded with a
    # comment line to the old length (never an empty file for a reader meanwhile).
    with open(path) as held:
        assert addresses.write_hosts_file(ns, [("10.213.200.9", ["svc-a"])]) == path
        after = os.stat(path)
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        seen = held.read()
    assert seen.startswith(new) and set(seen[len(new) :]) <= {"#", "\n"}, seen
    assert path.read_text() == seen
    with pytest.raises(ValueError):
        addresses.write_hosts_file(ns, [("not-an-address", ["x"])])
    with pytest.raises(ValueError):
        addresses.write_hosts_file(ns, [("10.213.200.2", ["two words"])])


def test_a_bridge_deleted_behind_our_back_is_recreated_with_its_ports(
    deployment: Deployment,
) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    a = deployment.sandbox("a")
    b = deployment.sandbox("b")
    mac = mac_of(deployment.bridge)
    with IPRoute() as ipr:
        ipr.link("del", ifname=deployment.bridge)

    seen = netns.inventory()
    assert deployment.name not in seen.bridges
    assert seen.ports[f"{deployment.name}/a/1"].master is None
    assert seen.ports[f"{deployment.name}/b/1"].master is None

    netns.ensure_bridge(deployment.name, deployment.subnet)
    bridge = link_named(deployment.bridge)
    assert bridge is not None
    assert bridge.up
    assert mac_of(deployment.bridge) == mac  # so the replicas' ARP entries stay right
    for service in ("a", "b"):
        port = link_named(deployment.veth(service))
        assert port is not None
        assert (port.master, port.up) == (bridge.index, True)
    with serving(a):
        assert connect_from(b, str(deployment.address("a")))["ok"] is True
        assert connect_from_host(deployment.address("a")) == f"hello from {a}"


def test_concurrent_calls_from_worker_threads(deployment: Deployment) -> None:
    """The process driver calls in through ``asyncio.to_thread``: several at once."""
    services = [f"s{i}" for i in range(6)]
    for service in services:
        deployment.address(service)  # allocate before the threads race
    with ThreadPoolExecutor(max_workers=6) as pool:  # threads inherit the stage
        list(pool.map(lambda _: netns.ensure_bridge(deployment.name, deployment.subnet), range(3)))
        made = list(pool.map(deployment.sandbox, services))
    bridge = link_named(deployment.bridge)
    assert bridge is not None
    ports = [link for link in links() if link.master == bridge.index]
    assert sorted(link.name for link in ports) == sorted(map(deployment.veth, services))
    with serving(made[0]):
        assert connect_from(made[-1], str(deployment.address(services[0])))["ok"] is True
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda s: netns.remove_sandbox(deployment.name, s, 1), services))
    netns.remove_bridge(deployment.name)
    assert leftovers(deployment.name) == []


def test_removal_leaves_nothing(deployment: Deployment) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    a = deployment.sandbox("a")
    deployment.sandbox("b")
    deployment.sandbox("c", bridged=False)
    addresses.write_hosts_file(a, [(str(deployment.address("b")), ["svc-b"])])
    assert len(leftovers(deployment.name)) == 1 + 2 + 3 + 1  # bridge, veths, netns, hosts dir

    # a process still in namespace a keeps the namespace (and so its veth pair) alive
    with serving(a):
        for service in ("a", "b", "c"):
            netns.remove_sandbox(deployment.name, service, 1)
        netns.remove_bridge(deployment.name)
        assert leftovers(deployment.name) == []

    for service in ("a", "b", "c"):
        netns.remove_sandbox(deployment.name, service, 1)  # idempotent
    netns.remove_bridge(deployment.name)
    assert leftovers(deployment.name) == []
    seen = netns.inventory()
    assert deployment.name not in seen.bridges
    assert not [key for key in seen.ports if key.startswith(deployment.name + "/")]
    assert not [ns for ns in seen.namespaces if ns.startswith(f"zlayer-{deployment.name}-")]


def test_create_sandbox_without_its_bridge_fails_and_leaves_nothing(
    deployment: Deployment,
) -> None:
    with pytest.raises(PermanentDriverError, match=deployment.bridge) as caught:
        deployment.sandbox("a")
    assert f"{deployment.name}/a/1" in str(caught.value)
    assert leftovers(deployment.name) == []


def test_create_sandbox_failing_midway_removes_what_it_made(deployment: Deployment) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    squatter = deployment.veth("a")
    with IPRoute() as ipr:  # not zlayer's (alias), so neither removed nor reused
        ipr.link("add", ifname=squatter, kind="bridge")
        ipr.link("set", ifname=squatter, ifalias="someone-else")
    try:
        with pytest.raises(PermanentDriverError, match=f"cannot create veth {squatter}"):
            deployment.sandbox("a")
        assert not (RUN_NETNS / names.netns_name(deployment.name, "a", 1)).exists()
        squatting = link_named(squatter)
        assert squatting is not None
        assert (squatting.alias, squatting.kind) == ("someone-else", "bridge")
    finally:
        with IPRoute() as ipr:
            ipr.link("del", ifname=squatter)


def test_create_sandbox_replaces_a_stale_namespace(deployment: Deployment) -> None:
    netns.ensure_bridge(deployment.name, deployment.subnet)
    a = deployment.sandbox("a")
    addresses.write_hosts_file(a, [("10.213.200.2", ["old"])])
    old = os.stat(RUN_NETNS / a)

    assert deployment.sandbox("a") == a
    assert os.stat(RUN_NETNS / a).st_ino != old.st_ino  # a new namespace
    assert not (ETC_NETNS / a).exists()  # a clean slate: the stale hosts file went too
    ports = [link for link in links() if link.alias == f"zlayer:{deployment.name}/a/1"]
    assert len(ports) == 1
    assert {link.name for link in links(a)} == {"lo", "eth0"}
    with serving(a):
        assert connect_from_host(deployment.address("a")) == f"hello from {a}"


# --- on the real host ----------------------------------------------------------------------------


def test_on_the_real_host_the_host_reaches_a_replica(host_deployment: Deployment) -> None:
    """Smoke test outside the stage. Replica-to-replica traffic is not tried here: it
    depends on the host's firewall (``firewall.bridge_filtering``)."""
    dep = host_deployment
    assert not [
        link.name
        for link in links()
        for address in ipv4_of(link.index)
        if IPv4Interface(address).network.overlaps(dep.subnet)
    ], f"{dep.subnet} is in use on this host"
    netns.ensure_bridge(dep.name, dep.subnet)
    a = dep.sandbox("a")
    with serving(a):
        assert connect_from_host(dep.address("a")) == f"hello from {a}"
    netns.remove_sandbox(dep.name, "a", 1)
    netns.remove_bridge(dep.name)
    assert leftovers(dep.name) == []

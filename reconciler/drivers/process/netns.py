"""Bridges, veth pairs and network namespaces for the process runtime (pyroute2).

Layout, when zlayer runs as root::

    host                                  namespace zlayer-<deployment>-<service>-<replica>
    ─────────────────────────────────     ─────────────────────────────────────────────────
    bridge zl-<hash>  10.213.N.1/24  ◄──  veth zv<hash>  ═══  eth0  10.213.N.k/24
      (one per deployment)                  (host side,         lo    127.0.0.1
                                             port of the bridge) default route via 10.213.N.1

Names come from :mod:`.names`:

* one Linux bridge per deployment, named :func:`~.names.bridge_name`, holding the first host
  address of the deployment's subnet, so the host reaches every replica directly;
* one network namespace per replica, named :func:`~.names.netns_name` and bound under
  ``/run/netns`` like ``ip netns add`` does, with ``lo`` up;
* in ``bridge`` mode a veth pair per replica: the host side (:func:`~.names.veth_name`) is a
  port of the bridge, the other side is ``eth0`` inside the namespace with the
  replica's address and a default route via the bridge; with network mode ``none``
  the namespace has only ``lo``;
* the replica's hosts file lives at ``/etc/netns/<namespace>/hosts`` (iproute2's
  convention, so ``ip netns exec`` sees it too); workloads get it bind-mounted over
  their ``/etc/hosts`` and :func:`.addresses.write_hosts_file` rewrites it in place.

Every link zlayer creates carries an interface alias (``ifalias``) starting with
:data:`~.names.ALIAS_PREFIX`: ``zlayer:<deployment>`` on a bridge,
``zlayer:<deployment>/<service>/<replica>`` on a veth. Observation
(:func:`inventory`), cleanup and drift repair find the network by these aliases and
by the ``zlayer-`` prefix of namespace names, never from zlayer's own records, so
whatever a crash or a human left behind is seen and can be removed.

The host reaches every replica (its own traffic: INPUT/OUTPUT). Traffic *between*
replicas is bridged, and where ``br_netfilter`` is loaded with
``net.bridge.bridge-nf-call-iptables=1`` (Docker does that, with a FORWARD policy of
DROP) it passes iptables' FORWARD chain too. Then, as Docker does for its own
bridges, :func:`ensure_bridge` inserts one rule accepting traffic in and out of the
deployment's bridge (``-i zl-X -o zl-X``, commented ``zlayer:<deployment>``) and
:func:`remove_bridge` deletes it (:mod:`.firewall`); nothing else in the firewall is
touched.

Subnets and addresses are allocated by the caller. The functions here are
synchronous (the process driver runs them with ``asyncio.to_thread``), idempotent,
and open one netlink socket per call. Failures raise
:class:`~reconciler.errors.PermanentDriverError` naming what failed, chained with
``from``; invalid arguments raise :class:`ValueError`.

This is the only module that imports pyroute2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import IPRoute, NetlinkError  # type: ignore[import-untyped]
from pyroute2 import netns as pyroute2_netns

from reconciler.drivers.process.firewall import bridge_filtering, forward_rule
from reconciler.drivers.process.names import (
    ALIAS_PREFIX,
    NETNS_ETC_DIR,
    NETNS_PREFIX,
    NETNS_RUN_DIR,
    bridge_mac,
    bridge_name,
    check_ns_name,
    netns_name,
    veth_name,
)
from reconciler.errors import PermanentDriverError

INNER_IFNAME = "eth0"
"""Name of the replica's side of the veth pair, inside its namespace."""

_IFF_UP = 0x1
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21


def _gateway(subnet: IPv4Network) -> IPv4Interface:
    """The bridge's address: the first host of ``subnet``, with its prefix length."""
    if subnet.prefixlen > 30:
        raise ValueError(f"subnet {subnet} is too small for a bridge and replicas")
    return IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


# --- observation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bridge:
    """A deployment's bridge as the kernel reports it."""

    deployment: str
    name: str
    up: bool
    addresses: tuple[str, ...]
    """IPv4 addresses with prefix length, e.g. ``10.213.1.1/24``."""


@dataclass(frozen=True)
class Port:
    """The host side of a replica's veth pair."""

    alias_target: str
    """``<deployment>/<service>/<replica>``, from the link's alias."""
    name: str
    master: str | None
    """Name of the bridge the port is attached to, or None."""
    up: bool


@dataclass(frozen=True)
class Inventory:
    """zlayer's network on this host, found by aliases and name prefixes."""

    bridges: Mapping[str, Bridge]
    """By deployment."""
    ports: Mapping[str, Port]
    """By ``<deployment>/<service>/<replica>``."""
    namespaces: frozenset[str]
    """Names of the network namespaces under ``/run/netns`` starting with ``zlayer-``."""


# --- pyroute2, typed -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    index: int
    name: str
    alias: str | None
    kind: str | None
    master: int | None
    up: bool


def _to_link(msg: Any) -> _Link:
    alias = msg.get("ifalias")
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    master = msg.get("master")
    return _Link(
        index=int(msg["index"]),
        name=str(msg.get("ifname")),
        alias=str(alias) if alias else None,
        kind=str(kind) if kind else None,
        master=int(master) if master else None,
        up=bool(int(msg["flags"]) & _IFF_UP),
    )


def _links(ipr: Any) -> list[_Link]:
    return [_to_link(msg) for msg in ipr.get_links()]


def _lookup(ipr: Any, name: str) -> _Link | None:
    try:
        (msg,) = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return _to_link(msg)


def _ipv4_addresses(ipr: Any, index: int | None = None) -> dict[int, list[IPv4Interface]]:
    """IPv4 addresses by link index (of one link when ``index`` is given)."""
    found: dict[int, list[IPv4Interface]] = {}
    query: dict[str, Any] = {"family": socket.AF_INET}
    if index is not None:
        query["index"] = index
    for msg in ipr.get_addr(**query):
        address = msg.get("address")
        if address:
            found.setdefault(int(msg["index"]), []).append(
                IPv4Interface(f"{address}/{int(msg['prefixlen'])}")
            )
    return found


def _ignoring(ipr_call: Any, *args: Any, ignore: tuple[int, ...], **kwargs: Any) -> None:
    """Run a netlink request, treating the errno values in ``ignore`` as success."""
    try:
        ipr_call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in ignore:
            raise


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Translate netlink and OS errors into ``PermanentDriverError("cannot <what>: …")``."""
    try:
        yield
    except PermanentDriverError:
        raise
    except NetlinkError as exc:
        reason = os.strerror(exc.code) if isinstance(exc.code, int) and exc.code > 0 else exc
        raise PermanentDriverError(f"cannot {what}: {reason}") from exc
    except OSError as exc:
        raise PermanentDriverError(f"cannot {what}: {exc.strerror or exc}") from exc


def _remove_namespace(name: str) -> None:
    """Unbind ``/run/netns/<name>`` (iproute2's ``ip netns delete``). The namespace
    itself ends when no process is left in it; its veth pair goes with it."""
    if not os.path.lexists(NETNS_RUN_DIR / name):
        return
    with contextlib.suppress(FileNotFoundError):
        pyroute2_netns.remove(name)


# --- bridges ---------------------------------------------------------------------------------


def ensure_bridge(deployment: str, subnet: IPv4Network) -> None:
    """Make the deployment's bridge exist, up, aliased ``zlayer:<deployment>``, with the
    first host address of ``subnet`` (and no other IPv4 address).

    Drift repair: every host-side veth aliased ``zlayer:<deployment>/…`` that is not a
    port of this bridge (a bridge deleted and recreated loses its ports) is attached
    again, and every such port is set up.
    """
    name = bridge_name(deployment)
    alias = ALIAS_PREFIX + deployment
    gateway = _gateway(subnet)
    with _failing(f"set up bridge {name} for deployment {deployment}"), IPRoute() as ipr:
        link = _lookup(ipr, name)
        if link is None:
            _ignoring(
                ipr.link,
                "add",
                ifname=name,
                kind="bridge",
                address=bridge_mac(deployment),
                ignore=(errno.EEXIST,),
            )
            link = _lookup(ipr, name)
            if link is None:
                raise PermanentDriverError(
                    f"cannot set up bridge {name} for deployment {deployment}: "
                    "it vanished right after it was created"
                )
        if link.kind != "bridge" or link.alias not in (None, alias):
            raise PermanentDriverError(
                f"cannot set up bridge {name} for deployment {deployment}: a {link.kind or 'link'} "
                f"of that name exists and is not zlayer's (alias {link.alias!r})"
            )
        if link.alias != alias or not link.up:
            ipr.link("set", index=link.index, ifalias=alias, state="up")
        present = _ipv4_addresses(ipr, link.index).get(link.index, [])
        for extra in present:
            if extra != gateway:
                _ignoring(
                    ipr.addr,
                    "del",
                    index=link.index,
                    address=str(extra.ip),
                    prefixlen=extra.network.prefixlen,
                    ignore=(errno.EADDRNOTAVAIL,),
                )
        if gateway not in present:
            _ignoring(
                ipr.addr,
                "add",
                index=link.index,
                address=str(gateway.ip),
                prefixlen=gateway.network.prefixlen,
                ignore=(errno.EEXIST,),
            )
        ports = alias + "/"
        for port in _links(ipr):
            ours = port.alias is not None and port.alias.startswith(ports)
            if ours and (port.master != link.index or not port.up):
                ipr.link("set", index=port.index, master=link.index, state="up")
    if bridge_filtering() is not None:
        forward_rule(deployment, add=True)


def remove_bridge(deployment: str) -> None:
    """Delete the deployment's bridge and its FORWARD rule; no error when they are not
    there (the rule goes even when the bridge was deleted behind zlayer's back). Its
    ports (the replicas' veths) stay, detached; :func:`remove_sandbox` removes those."""
    name = bridge_name(deployment)
    with _failing(f"remove bridge {name} of deployment {deployment}"), IPRoute() as ipr:
        link = _lookup(ipr, name)
        if link is None:
            forward_rule(deployment, add=False)
            return
        if link.alias not in (None, ALIAS_PREFIX + deployment):
            raise PermanentDriverError(
                f"cannot remove bridge {name} of deployment {deployment}: "
                f"the link of that name is not zlayer's (alias {link.alias!r})"
            )
        _ignoring(ipr.link, "del", index=link.index, ignore=(errno.ENODEV,))
    forward_rule(deployment, add=False)


# --- sandboxes -------------------------------------------------------------------------------


def create_sandbox(
    deployment: str,
    service: str,
    replica: int,
    *,
    address: IPv4Address | None,
    subnet: IPv4Network | None,
) -> str:
    """Create the replica's network namespace and return its name.

    A namespace of that name left from before is stale: it is removed first, with its
    veth and its hosts directory, so every call starts from a clean slate. ``lo`` is
    brought up. With ``address`` (network mode ``bridge``, ``subnet`` required) a veth
    pair joins the namespace to the deployment's bridge, which must exist
    (:func:`ensure_bridge`): the host side is aliased
    ``zlayer:<deployment>/<service>/<replica>``, attached and up; inside, ``eth0`` gets
    ``address`` with the subnet's prefix length and a default route via the bridge.
    Without ``address`` (network mode ``none``) the namespace has only ``lo``.

    On failure whatever this call created is removed again before the error is raised.
    """
    subject = f"{deployment}/{service}/{replica}"
    ns = netns_name(deployment, service, replica)
    check_ns_name(ns)
    veth = veth_name(deployment, service, replica)
    bridge = bridge_name(deployment)
    inner: IPv4Interface | None = None
    gateway: IPv4Interface | None = None
    if address is not None:
        if subnet is None:
            raise ValueError(f"{subject}: an address needs its subnet")
        gateway = _gateway(subnet)
        inner = IPv4Interface(f"{address}/{subnet.prefixlen}")
        if address not in subnet or address in (
            subnet.network_address,
            subnet.broadcast_address,
            gateway.ip,
        ):
            raise ValueError(f"{subject}: {address} is not a replica address in {subnet}")

    with _failing(f"open a netlink socket for {subject}"), IPRoute() as ipr:
        with _failing(f"remove the stale network namespace {ns} of {subject}"):
            _remove_sandbox(ipr, deployment, service, replica)
        bridge_index: int | None = None
        if inner is not None:
            with _failing(f"create veth {veth} for {subject}"):
                found = _lookup(ipr, bridge)
            if found is None or found.kind != "bridge":
                raise PermanentDriverError(
                    f"cannot create veth {veth} for {subject}: bridge {bridge} is missing"
                )
            bridge_index = found.index
        try:
            with _failing(f"create network namespace {ns} for {subject}"):
                pyroute2_netns.create(ns)
            if inner is not None and gateway is not None:
                with _failing(f"create veth {veth} for {subject}"):
                    ipr.link(
                        "add",
                        ifname=veth,
                        kind="veth",
                        peer={"ifname": INNER_IFNAME, "net_ns_fd": ns},
                    )
                    (host_side,) = ipr.link_lookup(ifname=veth)
                    ipr.link("set", index=host_side, ifalias=ALIAS_PREFIX + subject, state="up")
                with _failing(f"attach veth {veth} of {subject} to bridge {bridge}"):
                    ipr.link("set", index=host_side, master=bridge_index)
            with (
                _failing(f"configure network namespace {ns} of {subject}"),
                IPRoute(netns=ns, flags=0) as nsr,
            ):
                (lo,) = nsr.link_lookup(ifname="lo")
                nsr.link("set", index=lo, state="up")
                if inner is not None and gateway is not None:
                    (eth,) = nsr.link_lookup(ifname=INNER_IFNAME)
                    nsr.addr(
                        "add",
                        index=eth,
                        address=str(inner.ip),
                        prefixlen=inner.network.prefixlen,
                    )
                    nsr.link("set", index=eth, state="up")
                    nsr.route("add", dst="default", gateway=str(gateway.ip))
            if inner is not None and bridge_index is not None:
                # The host may still map this address to the veth of the replica
                # that had it before (a replace): packets would go to a MAC that is
                # gone until that entry times out. Forget it; the next packet asks.
                with _failing(f"forget the old neighbour entry of {inner.ip} on {bridge}"):
                    _ignoring(
                        ipr.neigh,
                        "del",
                        dst=str(inner.ip),
                        ifindex=bridge_index,
                        ignore=(errno.ENOENT, errno.ESRCH),
                    )
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_sandbox(ipr, deployment, service, replica)
            raise
    return ns


def remove_sandbox(deployment: str, service: str, replica: int) -> None:
    """Remove the replica's namespace, its host-side veth if it survived (a process
    still in the namespace keeps the pair alive) and ``/etc/netns/<namespace>``.
    Nothing happens for what is not there."""
    subject = f"{deployment}/{service}/{replica}"
    with (
        _failing(f"remove the network namespace of {subject}"),
        IPRoute() as ipr,
    ):
        _remove_sandbox(ipr, deployment, service, replica)


def _remove_sandbox(ipr: Any, deployment: str, service: str, replica: int) -> None:
    subject = f"{deployment}/{service}/{replica}"
    ns = netns_name(deployment, service, replica)
    veth = veth_name(deployment, service, replica)
    link = _lookup(ipr, veth)
    if link is not None and link.alias in (None, ALIAS_PREFIX + subject):
        _ignoring(ipr.link, "del", index=link.index, ignore=(errno.ENODEV,))
    _remove_namespace(ns)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(NETNS_ETC_DIR / ns)


# --- inventory and availability --------------------------------------------------------------


def inventory() -> Inventory:
    """zlayer's bridges, ports and namespaces on this host, from one link dump, one
    IPv4 address dump and the listing of ``/run/netns``."""
    with _failing("list the network links"), IPRoute() as ipr:
        links = _links(ipr)
        addresses = _ipv4_addresses(ipr)
    by_index = {link.index: link for link in links}
    bridges: dict[str, Bridge] = {}
    ports: dict[str, Port] = {}
    for link in links:
        if not link.alias or not link.alias.startswith(ALIAS_PREFIX):
            continue
        target = link.alias[len(ALIAS_PREFIX) :]
        if "/" in target:
            master = by_index.get(link.master) if link.master is not None else None
            ports[target] = Port(
                alias_target=target,
                name=link.name,
                master=master.name if master is not None else None,
                up=link.up,
            )
        elif link.kind == "bridge":
            bridges[target] = Bridge(
                deployment=target,
                name=link.name,
                up=link.up,
                addresses=tuple(str(a) for a in addresses.get(link.index, [])),
            )
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise PermanentDriverError(f"cannot list {NETNS_RUN_DIR}: {exc.strerror}") from exc
    return Inventory(
        bridges=bridges,
        ports=ports,
        namespaces=frozenset(n for n in names if n.startswith(NETNS_PREFIX)),
    )


def _effective_capabilities() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        return None
    return None


def available() -> str | None:
    """None when bridges and namespaces can be made here, else a short reason why not
    (shown in the plan): not Linux, not root, missing capabilities, no ``/run/netns``,
    or netlink not answering."""
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if os.geteuid() != 0:
        return "not running as root"
    caps = _effective_capabilities()
    if caps is not None:
        missing = [
            name
            for name, bit in (("CAP_NET_ADMIN", _CAP_NET_ADMIN), ("CAP_SYS_ADMIN", _CAP_SYS_ADMIN))
            if not caps & (1 << bit)
        ]
        if missing:
            return "missing capability " + " and ".join(missing)
    try:
        NETNS_RUN_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {NETNS_RUN_DIR}: {exc.strerror}"
    if not os.access(NETNS_RUN_DIR, os.W_OK):
        return f"{NETNS_RUN_DIR} is not writable"
    try:
        with IPRoute() as ipr:
            ipr.link("get", index=1)
    except (OSError, NetlinkError) as exc:
        return f"netlink does not work: {exc}"
    return None

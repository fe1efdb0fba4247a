"""The names of what the process runtime makes on the host: bridges, veths, network
namespaces and their hosts files (pure; see :mod:`.netns` for the layout).

Names are derived from the deployment, service and replica alone, so they are the
same on every run and findable without any record; interface names stay within
the kernel's 15 characters by hashing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ALIAS_PREFIX = "zlayer:"
"""Start of the interface alias of every link zlayer creates."""
NETNS_PREFIX = "zlayer-"
"""Start of the name of every network namespace zlayer creates."""
NETNS_RUN_DIR = Path("/run/netns")
"""Where network namespaces are bound by name (iproute2's ``ip netns``)."""
NETNS_ETC_DIR = Path("/etc/netns")
"""Per-namespace files that ``ip netns exec`` bind-mounts over ``/etc``."""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bridge_name(deployment: str) -> str:
    """``zl-`` and 10 hex digits of the deployment's hash: stable, within IFNAMSIZ (15)."""
    return "zl-" + digest(deployment)[:10]


def veth_name(deployment: str, service: str, replica: int) -> str:
    """Host side of a replica's veth pair: ``zv`` and 12 hex digits (14 characters)."""
    return "zv" + digest(f"{deployment}/{service}/{replica}")[:12]


def netns_name(deployment: str, service: str, replica: int) -> str:
    """``zlayer-<deployment>-<service>-<replica>``, the replica's network namespace."""
    return f"{NETNS_PREFIX}{deployment}-{service}-{replica}"


def hosts_path(netns: str) -> Path:
    """``/etc/netns/<netns>/hosts``, where ``ip netns exec`` looks for the namespace's
    hosts file."""
    check_ns_name(netns)
    return NETNS_ETC_DIR / netns / "hosts"


def bridge_mac(deployment: str) -> str:
    """A stable, locally administered unicast MAC for the bridge: a bridge recreated
    after drift keeps its address, so the replicas' ARP caches stay right (a bridge
    without one takes the lowest MAC of its ports, which changes as ports come and go)."""
    raw = bytes.fromhex(digest("bridge-mac:" + deployment)[:12])
    first = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in (first, *raw[1:]))


def check_ns_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise ValueError(f"not a usable network namespace name: {name!r}")

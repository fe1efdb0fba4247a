"""Addresses and names on a deployment's network: its /24 from the pool, each
replica's address in it, and the hosts files that map service names to them.

Allocation reads the records (:mod:`.store`): a subnet is taken by a deployment's
``network.json``, an address by a replica's or run's ``record.json``. Callers hold
the deployment's lock, so two launches never take the same address.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from reconciler.desired import routed_endpoints
from reconciler.drivers import hosts
from reconciler.drivers.process.names import bridge_name, hosts_path
from reconciler.drivers.process.records import Record, Subnet
from reconciler.drivers.process.store import Store
from reconciler.errors import PermanentDriverError


def allocate_subnet(store: Store, pool: ipaddress.IPv4Network, deployment: str) -> Subnet:
    """The lowest /24 of ``pool`` that no other deployment holds, recorded."""
    used = {subnet.subnet for _, subnet in store.subnets()}
    for candidate in pool.subnets(new_prefix=24):
        if str(candidate) not in used:
            break
    else:
        raise PermanentDriverError(
            f"{deployment}/(network): network pool {pool} has no free /24 left"
        )
    gateway = next(candidate.hosts())
    subnet = Subnet(
        deployment=deployment,
        subnet=str(candidate),
        address=f"{gateway}/{candidate.prefixlen}",
        bridge=bridge_name(deployment),
    )
    store.write_subnet(subnet)
    return subnet


def allocate_address(store: Store, deployment: str) -> str:
    """The lowest free address of the deployment's subnet (its bridge holds the first)."""
    subnet = store.subnet(deployment)
    if subnet is None:
        raise PermanentDriverError(
            f"{deployment}: its network does not exist (apply creates it first)"
        )
    network = ipaddress.IPv4Network(subnet.subnet)
    used = {subnet.address.partition("/")[0]}
    for _, record in _deployment_records(store, deployment):
        if record.network.address:
            used.add(record.network.address)
    for address in network.hosts():
        if str(address) not in used:
            return str(address)
    raise PermanentDriverError(f"{deployment}: network {network} has no free address left")


def _deployment_records(store: Store, deployment: str) -> list[tuple[Path, Record]]:
    dirs = [*store.workload_dirs([deployment]), *store.run_dirs([deployment])]
    return list(store.listed(iter(dirs)))


def write_hosts(store: Store, deployment: str, proxy: str | None = None) -> None:
    """Every replica's and run's hosts file maps each service of the deployment (and
    each replica as ``<service>-<n>``) to the replicas' addresses; with ``proxy`` (the
    managed proxy's address on the deployment's network), a service with internal
    endpoints the proxy serves maps to it instead, so its name reaches a ready replica
    at the endpoint's ``port``. Call with the deployment's lock held: the files are
    rewritten in place, and two writers would interleave."""
    found = [record for _, record in _deployment_records(store, deployment)]
    names: dict[str, list[str]] = collections.defaultdict(list)
    proxied = {
        r.service for r in found if proxy and r.replica is not None and not r.run
        and routed_endpoints(r.config, "internal")
    }  # fmt: skip
    for service in sorted(proxied):
        assert proxy is not None
        names[proxy].append(service)
    for record in found:
        address = record.network.address
        if address and record.replica is not None and not record.run:
            direct = [] if record.service in proxied else [record.service]
            names[address] += [*direct, f"{record.service}-{record.replica}"]
    entries = sorted(names.items(), key=lambda item: ipaddress.IPv4Address(item[0]))
    for record in found:
        namespace = record.network.netns
        if namespace:
            own: Sequence[tuple[str, Sequence[str]]] = entries if record.network.address else []
            if not own:  # network_mode none: its own name, on loopback
                own = [("127.0.1.1", [f"{record.service}-{record.replica}"])]
            write_hosts_file(namespace, own)


def write_hosts_file(netns: str, entries: Sequence[tuple[str, Sequence[str]]]) -> Path:
    """Write the namespace's hosts file (:func:`.names.hosts_path`) in place
    (:func:`reconciler.drivers.hosts.rewrite`) and return its path."""
    return hosts.rewrite(hosts_path(netns), entries)

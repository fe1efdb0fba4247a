"""The process runtime: replicas as supervised host processes, no container engine.

Each replica runs under a monitor of ours (:mod:`.monitor`, the way engines use a
shim) that outlives the command that started it, keeps the workload's output in
size-capped log files (:mod:`.logs`) and records its exit status. When zlayer runs
as root, every replica gets its own network namespace on a bridge per deployment
(:mod:`.netns`, addresses and hosts files: :mod:`.addresses`) and, where the host
allows, cgroups for its resource limits (:mod:`.cgroups`); otherwise replicas share
the host's network and the plan says so (:mod:`.config`).

Everything zlayer knows is in records under ``<state dir>/process/`` (where:
:mod:`.store`; what: :mod:`.records`), one directory per replica, written
atomically. A run of a job is launched like a replica (:meth:`ProcessDriver._launch_new`
serves both), in a directory of its own that observe never reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from reconciler import installed
from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits, Usage
from reconciler.drivers.process import addresses, cgroups, host, launch, records, status
from reconciler.drivers.process import config as pc
from reconciler.drivers.process.logs import log_lines
from reconciler.drivers.process.names import hosts_path, netns_name
from reconciler.drivers.process.records import Attachment, Record
from reconciler.drivers.process.store import Store
from reconciler.errors import Conflict, NotFound, PermanentDriverError
from reconciler.observed import (
    Network,
    ObservedState,
    RunId,
    RunState,
    Status,
    Workload,
    WorkloadId,
)
from reconciler.settings import DEFAULT_POOL

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3
EXIT_POLL = 1.0
"""Seconds between looks for replicas and runs that ended (:meth:`ProcessDriver.exits`)."""

log = logging.getLogger(__name__)


class ProcessDriver:
    name = "process"

    def __init__(
        self,
        state_dir: Path,
        *,
        pool: str = DEFAULT_POOL,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_keep: int = LOG_KEEP,
        start_timeout: float = 30.0,
        isolation: bool | None = None,
    ) -> None:
        """``pool``: where each deployment's /24 comes from. ``isolation``: give replicas
        network namespaces (None: when the host allows it, that is as root)."""
        self.store = Store(Path(state_dir) / "process" / "deployments")
        try:
            self.pool = ipaddress.IPv4Network(pool)
        except ValueError as exc:
            raise PermanentDriverError(f"network pool {pool!r}: {exc}") from exc
        if self.pool.prefixlen > 24:
            raise PermanentDriverError(
                f"network pool {pool}: needs room for a /24 (/{24} or wider)"
            )
        self.log = {"max_bytes": log_max_bytes, "keep": log_keep}
        self.start_timeout = start_timeout
        self._isolation = isolation
        self.facts = pc.HostFacts(root=os.geteuid() == 0, isolation=pc.UNCHECKED, cgroups=None)
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._cgroups: cgroups.Layout | None = None

    async def __aenter__(self) -> Self:
        self._cgroups, problem = cgroups.detect()
        self.facts = pc.HostFacts(
            root=os.geteuid() == 0,
            isolation=await self._isolation_problem(),
            cgroups=problem,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def _isolation_problem(self) -> str | None:
        if self._isolation is False:
            return "network isolation is turned off"
        if os.geteuid() != 0 and self._isolation is None:
            return "not running as root"  # no need to load the netlink library
        from reconciler.drivers.process import netns

        return await asyncio.to_thread(netns.available)

    @property
    def isolated(self) -> bool:
        return self.facts.isolation is None

    @property
    def routable(self) -> bool:
        """Replicas in network namespaces have addresses the proxy reaches; on the host
        network they listen on the public port themselves."""
        return self.isolated

    @property
    def internal_routable(self) -> bool:
        """The deployment's bridge has the host's own address on the network (its
        gateway): the proxy listens there, and the hosts files send names to it."""
        return self.isolated and installed.haproxy() is not None

    async def proxy_address(self, deployment: str) -> str | None:
        if not self.internal_routable:
            return None
        subnet = await asyncio.to_thread(self.store.subnet, deployment)
        return subnet.address.partition("/")[0] if subnet is not None else None

    async def image_drift(
        self, services: Collection[DesiredService], observed: ObservedState
    ) -> ObservedState:
        return observed  # no registry behind its images

    def limits(self, service: DesiredService) -> Limits:
        return pc.service_limits(service, self.facts)

    async def usage(self, targets: Collection[WorkloadId]) -> dict[WorkloadId, Usage]:
        """From each replica's cgroup (as root, where the host has cgroups)."""
        layout = self._cgroups

        def read() -> dict[WorkloadId, Usage]:
            found = {}
            for t in targets:
                if t.replica is None:
                    continue
                measured = cgroups.usage(layout, cgroups.group_name(*t[:2], t.replica))
                if measured is not None:
                    found[t] = Usage(*measured)
            return found

        return await asyncio.to_thread(read)

    async def _inventory(self) -> Any:
        from reconciler.drivers.process import netns

        return await asyncio.to_thread(netns.inventory)

    # --- observe -----------------------------------------------------------------------

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        inventory = await self._inventory() if self.isolated else None
        workloads: list[Workload] = []
        configs: dict[str, dict[str, Any]] = {}
        for where, record in self.store.listed(self.store.workload_dirs(deployments)):
            workload = _workload(where, record, inventory)
            workloads.append(workload)
            configs[workload.fingerprint] = dict(record.config)
        networks: list[Network] = []
        if inventory is not None:
            networks = self._networks(deployments, inventory)
        return ObservedState(
            runtime=self.name,
            workloads=tuple(workloads),
            configs=configs,
            networks_managed=self.isolated,
            networks=tuple(networks),
        )

    async def status(self, target: WorkloadId) -> Workload | None:
        where = self.store.replica_dir(target)
        record = records.read_record(where)
        if record is None:
            return None
        inventory = None
        if self.isolated and record.network.netns:
            inventory = await self._inventory()
        return _workload(where, record, inventory)

    def _networks(self, deployments: Collection[str] | None, inventory: Any) -> list[Network]:
        """The networks this state directory records, checked against the host. The
        record is written before the bridge is made, so a crash never leaves a bridge
        of ours unrecorded; a bridge without a record here belongs to another state
        directory (another zlayer on this host, or a test) and is left alone."""
        found: list[Network] = []
        for name, subnet in self.store.subnets():
            if deployments is not None and name not in deployments:
                continue
            bridge = inventory.bridges.get(name)
            problem = None
            if bridge is None:
                problem = f"bridge {subnet.bridge} is missing"
            elif not bridge.up:
                problem = f"bridge {bridge.name} is down"
            elif subnet.address not in bridge.addresses:
                problem = f"bridge {bridge.name} lost its address {subnet.address}"
            found.append(
                Network(deployment=name, name=subnet.bridge, subnet=subnet.subnet, problem=problem)
            )
        return found

    # --- actions -----------------------------------------------------------------------

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        where = self.store.replica_dir(target)
        if (where / records.RECORD).exists():
            try:
                records.read_record(where)
            except PermanentDriverError as damaged:
                await self._recover_damaged(target, where, damaged)
            else:
                raise Conflict(f"{target}: already exists")
        await self._launch_new(service, target, where, revision)

    async def _recover_damaged(
        self, target: WorkloadId, where: Path, damaged: PermanentDriverError
    ) -> None:
        """A replica whose record cannot be read (observation skipped it, so the plan
        creates it): the record is moved aside, kept for inspection, and what it
        described is taken down as far as its own files tell (the workload its monitor
        recorded, the replica's cgroups and network namespace), so that creating it
        again never leaves a second one running."""
        stamp = host.now_iso().replace(":", "").replace("-", "")
        aside = where / f"{records.RECORD}.damaged-{stamp}"
        (where / records.RECORD).rename(aside)
        started = records.read_started(where)
        stand_in = Record(
            deployment=target.deployment, service=target.service, replica=target.replica,
            fingerprint="", config={}, launch=started.launch if started else None,
            # remove_sandbox is told the replica, not the name: any netns stands for its own
            network=Attachment(netns="(its own)") if self.facts.root else Attachment(),
        )  # fmt: skip
        await self._take_down(target, where, stand_in)
        log.warning(
            "%s; moved aside to %s, its workload stopped, created again", damaged, aside.name
        )

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        with contextlib.suppress(NotFound):
            await self.remove(target)
        await self._launch_new(service, target, self.store.replica_dir(target), revision)

    async def start(self, target: WorkloadId) -> None:
        where, record = self.store.record(target)
        if target.replica is None:
            raise PermanentDriverError(f"{target}: a definition is not started")
        if status.state(where, record).status == "running":
            return
        await self._launch(target, where, record)

    async def restart(self, target: WorkloadId) -> None:
        where, record = self.store.record(target)
        await launch.stop(where, record)
        await self._launch(target, where, record)

    async def stop(self, target: WorkloadId) -> None:
        where, record = self.store.record(target)
        await launch.stop(where, record)

    async def remove(self, target: WorkloadId) -> None:
        where, record = self.store.record(target)
        if target.replica is not None:
            await self._take_down(target, where, record)
        self.store.remove_dir(where)
        if record.network.address:
            await self._write_hosts(target.deployment)

    async def register(self, service: DesiredService, revision: str) -> None:
        target = service.workload_id(None)
        where = self.store.replica_dir(target)
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        records.write_record(where, _new_record(service, None, revision, Attachment()))

    async def unregister(self, target: WorkloadId) -> None:
        await self.remove(target)

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        _, record = self.store.record(target)
        return record.network.address or "127.0.0.1", port

    # --- networks ----------------------------------------------------------------------

    async def create_network(self, deployment: str) -> None:
        from reconciler.drivers.process import netns

        async with self._locks[deployment]:
            subnet = self.store.subnet(deployment) or addresses.allocate_subnet(
                self.store, self.pool, deployment
            )
            try:
                await asyncio.to_thread(
                    netns.ensure_bridge, deployment, ipaddress.IPv4Network(subnet.subnet)
                )
            except OSError as exc:
                raise PermanentDriverError(
                    f"{deployment}/(network): cannot create bridge {subnet.bridge}: {exc}"
                ) from exc

    async def remove_network(self, deployment: str) -> None:
        from reconciler.drivers.process import netns

        async with self._locks[deployment]:
            await asyncio.to_thread(netns.remove_bridge, deployment)
            self.store.remove_subnet(deployment)

    async def _write_hosts(self, deployment: str) -> None:
        """Rewrite the deployment's hosts files, under its lock (two writers would
        interleave: the files are rewritten in place)."""
        proxy = await self.proxy_address(deployment)
        async with self._locks[deployment]:
            await asyncio.to_thread(addresses.write_hosts, self.store, deployment, proxy)

    # --- launching and stopping ----------------------------------------------------------

    async def _launch_new(
        self,
        service: DesiredService,
        target: WorkloadId,
        where: Path,
        revision: str,
        run: str | None = None,
    ) -> None:
        """The one way a replica or a run of a job comes to be: its launch and record
        written, then launched. ``target`` names its namespace, veth and cgroup (for a
        run, with its slot as the replica); a half-made one is removed again."""
        subject = target if run is None else RunId(target.deployment, target.service, run)
        mode = pc.network_plan(service, self.facts)
        launch_file = launch.launch_record(service, subject)
        if mode == "bridge" and self.store.subnet(target.deployment) is None:
            await self.create_network(target.deployment)  # the plan normally did
        async with self._locks[target.deployment]:
            network = Attachment(mode=mode)
            if mode == "bridge":
                address = addresses.allocate_address(self.store, target.deployment)
                network = network._replace(address=address)
            if mode != "host":
                namespace = netns_name(target.deployment, target.service, target.replica or 0)
                network = network._replace(netns=namespace)
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            # launch.json first: record.json is what observe sees, so an apply killed
            # between the two leaves nothing observed, and the next create starts over.
            records.write_launch(where, launch_file)
            replica = target.replica if run is None else None
            record = _new_record(service, replica, revision, network)
            if run is not None:
                record = record._replace(run=run, slot=target.replica)
            records.write_record(where, record)
        try:
            await self._launch(target, where, record)
        except PermanentDriverError:
            if isinstance(subject, RunId):  # leave nothing half made behind
                await self.remove_job(subject)
            else:
                await self.remove(target)
            raise

    async def _launch(self, target: WorkloadId, where: Path, record: Record) -> None:
        """A new launch of what ``record`` describes: a fresh sandbox and cgroups, a new
        launch id in the record, the monitor started and its word awaited."""
        launch_file = records.read_launch(where)
        if launch_file is None:
            raise PermanentDriverError(f"{target}: its launch record is missing; replace it")
        network = record.network
        if network.netns:
            network = await self._sandbox(target, network)
        joined: list[str] = []
        resources = record.config.get("resources", {})
        if self._cgroups is not None:
            name = cgroups.group_name(target.deployment, target.service, target.replica or 0)
            joined = cgroups.create(self._cgroups, name, resources)
        launch_id = uuid.uuid4().hex
        records.write_record(where, record._replace(network=network, launch=launch_id))
        spec = launch.monitor_spec(
            launch_file,
            launch_id,
            where,
            network,
            hostname=f"{target.service}-{target.replica}" if network.netns else None,
            cgroup=joined,
            log=self.log,
        )
        await launch.start_monitor(target, spec)
        await launch.wait_started(target, where, launch_id, self.start_timeout)

    async def _sandbox(self, target: WorkloadId, network: Attachment) -> Attachment:
        """The replica's namespace, veth and hosts file, made afresh for every launch:
        nothing runs in them now, and whatever is there may be half made (an apply
        killed midway), deleted behind our back, or gone with a reboot."""
        from reconciler.drivers.process import netns

        address = network.address
        subnet = self.store.subnet(target.deployment) if address else None
        await asyncio.to_thread(
            netns.create_sandbox,
            target.deployment,
            target.service,
            target.replica or 0,
            address=ipaddress.IPv4Address(address) if address else None,
            subnet=ipaddress.IPv4Network(subnet.subnet) if subnet else None,
        )
        await self._write_hosts(target.deployment)
        return network._replace(hosts=str(hosts_path(str(network.netns))))

    async def _take_down(self, target: WorkloadId, where: Path, record: Record) -> None:
        """Stop a replica or run and remove its cgroups and network namespace."""
        await launch.stop(where, record)
        replica = target.replica or 0
        cgroups.remove(
            self._cgroups, cgroups.group_name(target.deployment, target.service, replica)
        )
        if record.network.netns:
            from reconciler.drivers.process import netns

            await asyncio.to_thread(
                netns.remove_sandbox, target.deployment, target.service, replica
            )

    # --- runs of jobs ------------------------------------------------------------------

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        """A run is launched like a replica (same monitor, files, network and limits),
        in its own directory under ``runs/``, which observe never reads."""
        rid = RunId(service.deployment, service.name, run)
        where = self.store.run_dir(rid)
        if (where / records.RECORD).exists():
            records.read_record(where)  # one that cannot be read is reported as such
            raise Conflict(f"{rid}: already exists")
        target = WorkloadId(rid.deployment, rid.service, launch.run_slot(run))
        await self._launch_new(service, target, where, revision, run=run)

    async def job_status(self, run: RunId) -> RunState | None:
        where = self.store.run_dir(run)
        record = records.read_record(where)
        return None if record is None else status.run_state(run, where, record)

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        found = []
        for where, record in self.store.listed(self.store.run_dirs(deployments)):
            rid = RunId(record.deployment, record.service, str(record.run))
            found.append(status.run_state(rid, where, record))
        return found

    async def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        where = self.store.run_dir(run)
        record = records.read_record(where)
        if record is None:
            raise NotFound(f"{run}: no such run")
        async for line in log_lines(where, record, keep=self.log["keep"], follow=follow, tail=tail):
            yield line

    async def remove_job(self, run: RunId) -> None:
        where = self.store.run_dir(run)
        record = records.read_record(where)
        if record is None:
            self.store.remove_dir(where)
            return
        slot = record.slot or launch.run_slot(run.run)
        await self._take_down(WorkloadId(run.deployment, run.service, slot), where, record)
        self.store.remove_dir(where)

    async def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        """Replicas and runs whose monitor recorded an exit, found by looking at their
        ``exit.json`` every :data:`EXIT_POLL` seconds (a stat per workload)."""
        seen: dict[Path, float] = {}
        first = True
        while True:
            current: dict[Path, float] = {}
            for where in [*self.store.workload_dirs(), *self.store.run_dirs()]:
                try:
                    current[where] = (where / records.EXITED).stat().st_mtime
                except FileNotFoundError:
                    continue
            for where, mtime in current.items():
                if first or seen.get(where) == mtime:
                    continue
                for _, record in self.store.listed(iter([where])):
                    if status.current_exited(where, record) is None:
                        continue
                    if record.run:
                        yield RunId(record.deployment, record.service, record.run)
                    elif record.replica is not None:
                        yield WorkloadId(record.deployment, record.service, record.replica)
            seen, first = current, False
            await asyncio.sleep(EXIT_POLL)

    # --- logs --------------------------------------------------------------------------

    async def logs(
        self, target: WorkloadId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        where, record = self.store.record(target)
        async for line in log_lines(where, record, keep=self.log["keep"], follow=follow, tail=tail):
            yield line


def _new_record(
    service: DesiredService, replica: int | None, revision: str, network: Attachment
) -> Record:
    image = service.config.get("image")
    return Record(
        deployment=service.deployment,
        service=service.name,
        replica=replica,
        rtype=service.rtype,
        image=None if image is None else str(image),
        fingerprint=service.fingerprint,
        config=dict(service.config),
        revision=revision,
        depends=tuple(d.service for d in service.depends),
        network=network,
        created_at=host.now_iso(),
    )


def _workload(where: Path, record: Record, inventory: Any) -> Workload:
    code, started, problem, rebooted, oom = None, None, None, False, False
    state: Status = "registered"
    if record.replica is not None:
        state, code, started, rebooted, oom = status.state(where, record)
        if state == "running" and inventory is not None:
            problem = status.drift(record, inventory)
    return Workload(
        deployment=record.deployment,
        service=record.service,
        replica=record.replica,
        fingerprint=record.fingerprint,
        revision=record.revision,
        status=state,
        exit_code=code,
        started_at=started,
        depends=record.depends,
        runtime_id=str(where),
        problem=problem,
        stopped_by_reboot=rebooted,
        oom_killed=oom,
    )

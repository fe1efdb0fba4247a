"""The process runtime: replicas as supervised host processes, no container engine.

Each replica runs under a monitor of ours (:mod:`reconciler.drivers.process.monitor`, the
way engines use a shim) that outlives the command that started it, keeps the
workload's output in size-capped log files and records its exit status. When
zlayer runs as root, every replica gets its own network namespace on a bridge
per deployment (:mod:`reconciler.drivers.process.netns`); otherwise replicas share the
host's network and the plan says so.

Everything zlayer knows is in records under ``<state dir>/process/``, one
directory per replica, written atomically::

    deployments/<deployment>/network.json                 subnet and bridge
    deployments/<deployment>/services/<service>/<n>/
        record.json   identity, fingerprint, config (secrets as hashes), revision,
                      network, current launch id          (written by the driver)
        launch.json   what the monitor runs, env included (0600: holds secrets,
                      as a container engine keeps a container's env)
        run.json      monitor and workload pids with their start times (monitor)
        exit.json     exit code or signal, or why it could not start   (monitor)
        output.log    stdout and stderr, rotated to output.log.1 … (monitor)
    deployments/<deployment>/services/<service>/definition/record.json   job/cron
    deployments/<deployment>/runs/<service>/<run>/   a run of a job or cron service:
                      the same files as a replica (never observed as a workload)

A pid alone is never trusted: it must belong to a process with the recorded
start time (read from /proc), on the same boot, so a recycled pid is not ours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncGenerator, Collection, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits
from reconciler.drivers.process import cgroups
from reconciler.drivers.process import config as pc
from reconciler.drivers.process import host as proc
from reconciler.errors import Conflict, NotFound, PermanentDriverError
from reconciler.observed import Network, ObservedState, RunId, RunState, Workload, WorkloadId
from reconciler.settings import DEFAULT_POOL

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3
DEFINITION = "definition"
EXIT_POLL = 1.0
"""Seconds between looks for replicas and runs that ended (:meth:`ProcessDriver.exits`)."""


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
        self.root = Path(state_dir) / "process" / "deployments"
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
        self.facts = pc.HostFacts(root=os.geteuid() == 0, isolation="not checked", cgroups=None)
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

    def limits(self, service: DesiredService) -> Limits:
        return pc.service_limits(service, self.facts)

    # --- records -----------------------------------------------------------------------

    def _dir(self, target: WorkloadId) -> Path:
        leaf = DEFINITION if target.replica is None else str(target.replica)
        return self.root / target.deployment / "services" / target.service / leaf

    def _records(self, deployments: Collection[str] | None = None) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for deployment in sorted(self.root.iterdir()):
            if deployments is not None and deployment.name not in deployments:
                continue
            services = deployment / "services"
            if not services.is_dir():
                continue
            for service in sorted(services.iterdir()):
                for leaf in sorted(service.iterdir()) if service.is_dir() else ():
                    if (leaf / "record.json").is_file():
                        yield leaf

    def _record(self, target: WorkloadId) -> tuple[Path, dict[str, Any]]:
        where = self._dir(target)
        record = proc.read_json(where / "record.json")
        if record is None:
            raise NotFound(f"{target}: no such workload")
        return where, record

    # --- observe -----------------------------------------------------------------------

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        inventory = None
        if self.isolated:
            from reconciler.drivers.process import netns

            inventory = await asyncio.to_thread(netns.inventory)
        workloads: list[Workload] = []
        configs: dict[str, dict[str, Any]] = {}
        for where in self._records(deployments):
            record = proc.read_json(where / "record.json")
            if record is None:
                continue
            workload = self._workload(where, record, inventory)
            workloads.append(workload)
            if isinstance(record.get("config"), dict):
                configs[workload.fingerprint] = record["config"]
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
        where = self._dir(target)
        record = proc.read_json(where / "record.json")
        if record is None:
            return None
        inventory = None
        if self.isolated and record.get("network", {}).get("netns"):
            from reconciler.drivers.process import netns

            inventory = await asyncio.to_thread(netns.inventory)
        return self._workload(where, record, inventory)

    def _workload(self, where: Path, record: Mapping[str, Any], inventory: Any) -> Workload:
        replica = record.get("replica")
        status, code, started, problem = "registered", None, None, None
        if replica is not None:
            status, code, started = _state(where, record)
            if status == "running" and inventory is not None:
                problem = _drift(record, inventory)
        return Workload(
            deployment=record["deployment"],
            service=record["service"],
            replica=replica,
            fingerprint=record["fingerprint"],
            revision=record.get("revision"),
            status=status,
            exit_code=code,
            started_at=started,
            depends=tuple(record.get("depends", ())),
            runtime_id=str(where),
            problem=problem,
        )

    def _networks(self, deployments: Collection[str] | None, inventory: Any) -> list[Network]:
        """The networks this state directory records, checked against the host. The
        record is written before the bridge is made, so a crash never leaves a bridge
        of ours unrecorded; a bridge without a record here belongs to another state
        directory (another zlayer on this host, or a test) and is left alone."""
        found: dict[str, Network] = {}
        if self.root.is_dir():
            for deployment in sorted(self.root.iterdir()):
                record = proc.read_json(deployment / "network.json")
                if record is None:
                    continue
                name = deployment.name
                bridge = inventory.bridges.get(name)
                problem = None
                if bridge is None:
                    problem = f"bridge {record['bridge']} is missing"
                elif not bridge.up:
                    problem = f"bridge {bridge.name} is down"
                elif record["address"] not in bridge.addresses:
                    problem = f"bridge {bridge.name} lost its address {record['address']}"
                found[name] = Network(
                    deployment=name,
                    name=str(record["bridge"]),
                    subnet=str(record["subnet"]),
                    problem=problem,
                )
        return [n for d, n in sorted(found.items()) if deployments is None or d in deployments]

    # --- actions -----------------------------------------------------------------------

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        where = self._dir(target)
        if (where / "record.json").exists():
            raise Conflict(f"{target}: already exists")
        await self._launch_new(service, replica, revision)

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        with contextlib.suppress(NotFound):
            await self.remove(target)
        await self._launch_new(service, replica, revision)

    async def start(self, target: WorkloadId) -> None:
        where, record = self._record(target)
        if target.replica is None:
            raise PermanentDriverError(f"{target}: a definition is not started")
        status, _, _ = _state(where, record)
        if status == "running":
            return
        await self._launch(target, where, record)

    async def restart(self, target: WorkloadId) -> None:
        where, record = self._record(target)
        await self._stop(target, where, record)
        await self._launch(target, where, record)

    async def stop(self, target: WorkloadId) -> None:
        where, record = self._record(target)
        await self._stop(target, where, record)

    async def remove(self, target: WorkloadId) -> None:
        where, record = self._record(target)
        if target.replica is not None:
            await self._stop(target, where, record)
            name = cgroups.group_name(target.deployment, target.service, target.replica)
            cgroups.remove(self._cgroups, name)
        network = record.get("network", {})
        if network.get("netns"):
            from reconciler.drivers.process import netns

            await asyncio.to_thread(
                netns.remove_sandbox, target.deployment, target.service, target.replica or 0
            )
        # record.json first: once it is gone nothing is observed, whatever a kill
        # leaves of the rest (which the next create of this replica starts over)
        (where / "record.json").unlink(missing_ok=True)
        shutil.rmtree(where, ignore_errors=True)
        _prune_empty(where.parent, self.root)
        if network.get("address"):
            await self._write_hosts(target.deployment)

    async def register(self, service: DesiredService, revision: str) -> None:
        target = service.workload_id(None)
        where = self._dir(target)
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc.atomic_write_json(where / "record.json", _record(service, None, revision, {}))

    async def unregister(self, target: WorkloadId) -> None:
        await self.remove(target)

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        _, record = self._record(target)
        return str(record.get("network", {}).get("address") or "127.0.0.1"), port

    # --- networks ----------------------------------------------------------------------

    async def create_network(self, deployment: str) -> None:
        from reconciler.drivers.process import netns

        async with self._locks[deployment]:
            record = self._network_record(deployment) or self._allocate_subnet(deployment)
            subnet = ipaddress.IPv4Network(record["subnet"])
            try:
                await asyncio.to_thread(netns.ensure_bridge, deployment, subnet)
            except OSError as exc:
                raise PermanentDriverError(
                    f"{deployment}/(network): cannot create bridge {record['bridge']}: {exc}"
                ) from exc

    async def remove_network(self, deployment: str) -> None:
        from reconciler.drivers.process import netns

        async with self._locks[deployment]:
            await asyncio.to_thread(netns.remove_bridge, deployment)
            (self.root / deployment / "network.json").unlink(missing_ok=True)
            _prune_empty(self.root / deployment, self.root)

    def _network_record(self, deployment: str) -> dict[str, Any] | None:
        return proc.read_json(self.root / deployment / "network.json")

    def _allocate_subnet(self, deployment: str) -> dict[str, Any]:
        """The lowest /24 of the pool that no other deployment holds, recorded."""
        from reconciler.drivers.process import netns

        used = set()
        if self.root.is_dir():
            for other in self.root.iterdir():
                record = proc.read_json(other / "network.json")
                if record is not None:
                    used.add(str(record["subnet"]))
        for subnet in self.pool.subnets(new_prefix=24):
            if str(subnet) not in used:
                break
        else:
            raise PermanentDriverError(
                f"{deployment}/(network): network pool {self.pool} has no free /24 left"
            )
        gateway = next(subnet.hosts())
        record = {
            "deployment": deployment,
            "subnet": str(subnet),
            "address": f"{gateway}/{subnet.prefixlen}",
            "bridge": netns.bridge_name(deployment),
        }
        (self.root / deployment).mkdir(parents=True, exist_ok=True, mode=0o700)
        proc.atomic_write_json(self.root / deployment / "network.json", record)
        return record

    def _allocate_address(self, deployment: str) -> str:
        record = self._network_record(deployment)
        if record is None:
            raise PermanentDriverError(
                f"{deployment}: its network does not exist (apply creates it first)"
            )
        subnet = ipaddress.IPv4Network(record["subnet"])
        used = {str(record["address"]).partition("/")[0]}
        for where in [*self._records([deployment]), *self._run_dirs([deployment])]:
            other = proc.read_json(where / "record.json") or {}
            if address := other.get("network", {}).get("address"):
                used.add(str(address))
        for host in subnet.hosts():
            if str(host) not in used:
                return str(host)
        raise PermanentDriverError(f"{deployment}: network {subnet} has no free address left")

    async def _write_hosts(self, deployment: str) -> None:
        """Every replica's hosts file maps each service of the deployment (and each
        replica as ``<service>-<n>``) to the replicas' addresses. Under the deployment's
        lock: the files are rewritten in place, and two writers would interleave."""
        async with self._locks[deployment]:
            await self._write_hosts_locked(deployment)

    async def _write_hosts_locked(self, deployment: str) -> None:
        from reconciler.drivers.process import netns

        dirs = [*self._records([deployment]), *self._run_dirs([deployment])]
        records = [proc.read_json(w / "record.json") or {} for w in dirs]
        names: dict[str, list[str]] = collections.defaultdict(list)
        for record in records:
            address = record.get("network", {}).get("address")
            if address and record.get("replica") is not None and not record.get("run"):
                names[address] += [record["service"], f"{record['service']}-{record['replica']}"]
        entries = sorted(names.items(), key=lambda item: ipaddress.IPv4Address(item[0]))
        for record in records:
            namespace = record.get("network", {}).get("netns")
            if namespace:
                own = entries if record["network"].get("address") else []
                if not own:  # network_mode none: its own name, on loopback
                    own = [("127.0.1.1", [f"{record['service']}-{record['replica']}"])]
                await asyncio.to_thread(netns.write_hosts, namespace, own)

    # --- launching and stopping ----------------------------------------------------------

    async def _launch_new(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        where = self._dir(target)
        mode = pc.network_plan(service, self.facts)
        launch_config = service.launch_config()
        command = pc.argv(launch_config)
        if command is None:
            raise PermanentDriverError(f"{target}: no command.entrypoint to run")
        user = pc.resolve_user(str(service.config["user"])) if "user" in service.config else None
        network: dict[str, Any] = {"mode": mode}
        if mode == "bridge" and self._network_record(target.deployment) is None:
            await self.create_network(target.deployment)  # the plan normally did
        launch = {
            "argv": command,
            "cwd": (launch_config.get("command") or {}).get("workdir"),
            "env": pc.workload_env(service.runtime_env(), user.home if user else _home()),
            "user": None
            if user is None
            else {"uid": user.uid, "gid": user.gid, "groups": list(user.groups)},
            "stop_signal": pc.stop_signal(service.config),
            "scrub": sorted(v.reveal() for v in service.secrets.values()),
        }
        async with self._locks[target.deployment]:
            if mode == "bridge":
                network["address"] = self._allocate_address(target.deployment)
            if mode != "host":
                from reconciler.drivers.process import netns

                network["netns"] = netns.netns_name(target.deployment, target.service, replica)
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            # launch.json first: record.json is what observe sees, so an apply killed
            # between the two leaves nothing observed, and the next create starts over.
            proc.atomic_write_json(where / "launch.json", launch, mode=0o600)
            record = _record(service, replica, revision, network)
            proc.atomic_write_json(where / "record.json", record)
        try:
            await self._launch(target, where, record)
        except PermanentDriverError:
            await self.remove(target)  # leave no half-made replica behind
            raise

    async def _launch(self, target: WorkloadId, where: Path, record: dict[str, Any]) -> None:
        launch = proc.read_json(where / "launch.json")
        if launch is None:
            raise PermanentDriverError(f"{target}: its launch record is missing; replace it")
        network = record.get("network", {})
        if network.get("netns"):
            await self._sandbox(target, network)
        joined: list[str] = []
        resources = record.get("config", {}).get("resources", {})
        if self._cgroups is not None and cgroups.wanted(resources):
            name = cgroups.group_name(target.deployment, target.service, target.replica or 0)
            joined = cgroups.create(self._cgroups, name, resources)
        launch_id = uuid.uuid4().hex
        record = {**record, "launch": launch_id}
        proc.atomic_write_json(where / "record.json", record)
        spec = {
            **launch,
            "launch": launch_id,
            "dir": str(where),
            "netns": network.get("netns"),
            "hosts": network.get("hosts"),
            "hostname": f"{target.service}-{target.replica}" if network.get("netns") else None,
            "cgroup": joined or None,
            "log": self.log,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler.drivers.process.monitor",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate(json.dumps(spec).encode())
        if process.returncode != 0:
            message = stderr.decode(errors="replace").strip()
            raise PermanentDriverError(f"{target}: the monitor refused to start: {message}")
        await self._started(target, where, launch_id)

    async def _sandbox(self, target: WorkloadId, network: dict[str, Any]) -> None:
        """The replica's namespace, veth and hosts file, made afresh for every launch:
        nothing runs in them now, and whatever is there may be half made (an apply
        killed midway), deleted behind our back, or gone with a reboot."""
        from reconciler.drivers.process import netns

        namespace = str(network["netns"])
        address = network.get("address")
        record = self._network_record(target.deployment) if address else None
        await asyncio.to_thread(
            netns.create_sandbox,
            target.deployment,
            target.service,
            target.replica or 0,
            address=ipaddress.IPv4Address(address) if address else None,
            subnet=ipaddress.IPv4Network(record["subnet"]) if record else None,
        )
        network["hosts"] = str(netns.hosts_path(namespace))
        await self._write_hosts(target.deployment)

    async def _started(self, target: WorkloadId, where: Path, launch_id: str) -> None:
        """Wait until the monitor says the workload runs, or why it could not start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            run = proc.read_json(where / "run.json")
            if run is not None and run.get("launch") == launch_id:
                return
            done = proc.read_json(where / "exit.json")
            if done is not None and done.get("launch") == launch_id:
                if done.get("error"):
                    raise PermanentDriverError(f"{target}: {done['error']}")
                return  # ran and ended already: status() says how
            await asyncio.sleep(0.01)
        trace = where / "monitor.err"
        detail = trace.read_text(errors="replace").strip() if trace.exists() else ""
        raise PermanentDriverError(
            f"{target}: the monitor did not report within {self.start_timeout:g}s"
            + (f": {detail.splitlines()[-1]}" if detail else "")
        )

    async def _stop(self, target: WorkloadId, where: Path, record: Mapping[str, Any]) -> None:
        """``stop_signal`` to the workload's process group, ``stop_grace_period`` to end,
        then SIGKILL; returns once the monitor has recorded the exit."""
        run = proc.read_json(where / "run.json")
        launch = record.get("launch")
        if run is None or run.get("launch") != launch or run.get("boot_id") != proc.boot_id():
            return
        pid, start = int(run["pid"]), int(run["start"])
        if not proc.alive(pid, start):
            await self._exited(where, launch, run)
            return
        config = record.get("config", {})
        _signal_group(pid, pc.stop_signal(config))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pc.stop_grace(config)
        while proc.alive(pid, start) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if proc.alive(pid, start):
            _signal_group(pid, signal.SIGKILL)
        await self._exited(where, launch, run)

    async def _exited(self, where: Path, launch: Any, run: Mapping[str, Any]) -> None:
        """Until exit.json of ``launch`` exists; written here if the monitor is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while loop.time() < deadline:
            done = proc.read_json(where / "exit.json")
            if done is not None and done.get("launch") == launch:
                return
            if not proc.alive(int(run["monitor_pid"]), int(run["monitor_start"])):
                break
            await asyncio.sleep(0.02)
        done = proc.read_json(where / "exit.json")
        if done is None or done.get("launch") != launch:
            proc.atomic_write_json(
                where / "exit.json",
                {
                    "launch": launch,
                    "exit_code": None,
                    "signal": None,
                    "error": "the monitor ended without recording an exit",
                    "finished_at": proc.now_iso(),
                },
            )

    # --- runs of jobs ------------------------------------------------------------------

    def _run_dir(self, run: RunId) -> Path:
        return self.root / run.deployment / "runs" / run.service / run.run

    def _run_dirs(self, deployments: Collection[str] | None = None) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for deployment in sorted(self.root.iterdir()):
            if deployments is not None and deployment.name not in deployments:
                continue
            for where in sorted(deployment.glob("runs/*/*")):
                if (where / "record.json").is_file():
                    yield where

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        """A run is launched like a replica (same monitor, files, network and limits),
        in its own directory under ``runs/``, which observe never reads."""
        rid = RunId(service.deployment, service.name, run)
        where = self._run_dir(rid)
        if (where / "record.json").exists():
            raise Conflict(f"{rid}: already exists")
        slot = _run_slot(run)
        target = WorkloadId(rid.deployment, rid.service, slot)
        mode = pc.network_plan(service, self.facts)
        launch_config = service.launch_config()
        command = pc.argv(launch_config)
        if command is None:
            raise PermanentDriverError(f"{rid}: no command.entrypoint to run")
        user = pc.resolve_user(str(service.config["user"])) if "user" in service.config else None
        network: dict[str, Any] = {"mode": mode}
        if mode == "bridge" and self._network_record(rid.deployment) is None:
            await self.create_network(rid.deployment)
        launch = {
            "argv": command,
            "cwd": (launch_config.get("command") or {}).get("workdir"),
            "env": pc.workload_env(service.runtime_env(), user.home if user else _home()),
            "user": None
            if user is None
            else {"uid": user.uid, "gid": user.gid, "groups": list(user.groups)},
            "stop_signal": pc.stop_signal(service.config),
            "scrub": sorted(v.reveal() for v in service.secrets.values()),
        }
        async with self._locks[rid.deployment]:
            if mode == "bridge":
                network["address"] = self._allocate_address(rid.deployment)
            if mode != "host":
                from reconciler.drivers.process import netns

                network["netns"] = netns.netns_name(rid.deployment, rid.service, slot)
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            proc.atomic_write_json(where / "launch.json", launch, mode=0o600)
            record = {**_record(service, None, revision, network), "run": run, "slot": slot}
            proc.atomic_write_json(where / "record.json", record)
        try:
            await self._launch(target, where, record)
        except PermanentDriverError:
            await self.remove_job(rid)
            raise

    async def job_status(self, run: RunId) -> RunState | None:
        where = self._run_dir(run)
        record = proc.read_json(where / "record.json")
        return None if record is None else _run_state(run, where, record)

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        found = []
        for where in self._run_dirs(deployments):
            record = proc.read_json(where / "record.json")
            if record is not None:
                rid = RunId(record["deployment"], record["service"], str(record["run"]))
                found.append(_run_state(rid, where, record))
        return found

    async def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        where = self._run_dir(run)
        record = proc.read_json(where / "record.json")
        if record is None:
            raise NotFound(f"{run}: no such run")
        async for line in self._log_lines(where, record, follow, tail):
            yield line

    async def remove_job(self, run: RunId) -> None:
        where = self._run_dir(run)
        record = proc.read_json(where / "record.json")
        if record is None:
            shutil.rmtree(where, ignore_errors=True)
            return
        slot = int(record.get("slot") or _run_slot(run.run))
        target = WorkloadId(run.deployment, run.service, slot)
        await self._stop(target, where, record)
        cgroups.remove(self._cgroups, cgroups.group_name(run.deployment, run.service, slot))
        if record.get("network", {}).get("netns"):
            from reconciler.drivers.process import netns

            await asyncio.to_thread(netns.remove_sandbox, run.deployment, run.service, slot)
        (where / "record.json").unlink(missing_ok=True)
        shutil.rmtree(where, ignore_errors=True)
        _prune_empty(where.parent, self.root)

    async def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        """Replicas and runs whose monitor recorded an exit, found by looking at their
        ``exit.json`` every :data:`EXIT_POLL` seconds (a stat per workload)."""
        seen: dict[Path, float] = {}
        first = True
        while True:
            current: dict[Path, float] = {}
            for where in [*self._records(), *self._run_dirs()]:
                try:
                    current[where] = (where / "exit.json").stat().st_mtime
                except FileNotFoundError:
                    continue
            for where, mtime in current.items():
                if first or seen.get(where) == mtime:
                    continue
                record = proc.read_json(where / "record.json") or {}
                done = proc.read_json(where / "exit.json") or {}
                if not record or done.get("launch") != record.get("launch"):
                    continue
                if record.get("run"):
                    yield RunId(record["deployment"], record["service"], str(record["run"]))
                elif record.get("replica") is not None:
                    yield WorkloadId(record["deployment"], record["service"], record["replica"])
            seen, first = current, False
            await asyncio.sleep(EXIT_POLL)

    # --- logs --------------------------------------------------------------------------

    async def logs(
        self, target: WorkloadId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        where, record = self._record(target)
        async for line in self._log_lines(where, record, follow, tail):
            yield line

    async def _log_lines(
        self, where: Path, record: Mapping[str, Any], follow: bool, tail: int | None
    ) -> AsyncGenerator[str, None]:
        log = where / "output.log"
        keep = int(self.log["keep"])
        lines: collections.deque[str] = collections.deque(maxlen=tail)
        if tail != 0:
            for n in range(keep, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    lines.extend(Path(f"{log}.{n}").read_text(errors="replace").splitlines())
        handle = _open(log)
        try:
            if handle is not None and tail != 0:
                lines.extend(handle.read().splitlines())
            elif handle is not None:
                handle.seek(0, os.SEEK_END)
            for line in lines:
                yield line
            if not follow:
                return
            pending = ""
            while True:
                chunk = handle.read() if handle is not None else ""
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split("\n")
                    for line in complete:
                        yield line
                    continue
                current = _open(log)
                if current is not None and (
                    handle is None
                    or os.fstat(current.fileno()).st_ino != os.fstat(handle.fileno()).st_ino
                ):
                    if handle is not None:
                        handle.close()
                    handle = current  # rotated: the rest is in the new file
                    continue
                if current is not None:
                    current.close()
                status, _, _ = _state(where, proc.read_json(where / "record.json") or record)
                if status != "running":
                    if pending:
                        yield pending
                    return
                await asyncio.sleep(0.1)
        finally:
            if handle is not None:
                handle.close()


def _run_slot(run: str) -> int:
    """A number standing in for a replica index in a run's namespace, veth and cgroup
    names: far above any replica count, the same for the same run."""
    return 100_000 + int(hashlib.sha256(run.encode()).hexdigest()[:8], 16) % 900_000


def _record(
    service: DesiredService, replica: int | None, revision: str, network: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "deployment": service.deployment,
        "service": service.name,
        "replica": replica,
        "rtype": service.rtype,
        "image": service.config.get("image"),
        "fingerprint": service.fingerprint,
        "config": dict(service.config),
        "revision": revision,
        "depends": [d.service for d in service.depends],
        "network": dict(network),
        "created_at": proc.now_iso(),
    }


def _state(where: Path, record: Mapping[str, Any]) -> tuple[str, int | None, str | None]:
    """(status, exit code, started at) of a replica from its monitor's files."""
    launch = record.get("launch")
    if launch is None:
        return "created", None, None
    run = proc.read_json(where / "run.json")
    if run is not None and (run.get("launch") != launch or run.get("boot_id") != proc.boot_id()):
        run = None  # an earlier launch's, or from before a reboot
    if run is not None and proc.alive(int(run["pid"]), int(run["start"])):
        return "running", None, run.get("started_at")
    started = run.get("started_at") if run else None
    done = proc.read_json(where / "exit.json")
    if done is not None and done.get("launch") == launch:
        code = done.get("exit_code")
        if code is None and done.get("signal"):
            code = 128 + int(done["signal"])  # the shell's and Docker's convention
        elif code is None:
            code = 127 if done.get("error") else None
        return "exited", code, started
    if run is not None and proc.alive(int(run["monitor_pid"]), int(run["monitor_start"])):
        return "exited", None, started  # ended a moment ago; the monitor records it
    return "dead", None, started  # the monitor is gone without a word (killed, rebooted)


def _run_state(run: RunId, where: Path, record: Mapping[str, Any]) -> RunState:
    status, code, started = _state(where, record)
    finished = None
    if status in ("exited", "dead"):
        done = proc.read_json(where / "exit.json") or {}
        finished = done.get("finished_at") if done.get("launch") == record.get("launch") else None
    return RunState(
        deployment=run.deployment,
        service=run.service,
        run=run.run,
        # exited without a code while the monitor lives: it is recording the exit now
        status="running"
        if status in ("running", "created") or (status == "exited" and code is None)
        else "exited",
        exit_code=code,
        started_at=started,
        finished_at=finished,
    )


def _drift(record: Mapping[str, Any], inventory: Any) -> str | None:
    network = record.get("network", {})
    namespace = network.get("netns")
    if namespace and namespace not in inventory.namespaces:
        return f"network namespace {namespace} is missing"
    if network.get("address"):
        key = f"{record['deployment']}/{record['service']}/{record['replica']}"
        if key not in inventory.ports:
            return f"its network interface on the bridge ({key}) is missing"
    return None


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise PermanentDriverError(f"cannot signal process group {pid}: {exc}") from exc


def _open(path: Path) -> Any:
    try:
        return path.open(errors="replace")
    except FileNotFoundError:
        return None


def _home() -> str:
    return "/root" if os.geteuid() == 0 else os.path.expanduser("~")


def _prune_empty(start: Path, stop: Path) -> None:
    """Remove ``start`` and its parents up to (not including) ``stop`` while empty."""
    current = start
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent

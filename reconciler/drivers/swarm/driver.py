"""The swarm runtime: services on a Docker Swarm, through a manager node's Engine API.

Placement, restarts, overlay networking and rolling updates with automatic rollback
are the engine's; zlayer plans each service as a whole (:mod:`reconciler.plan.cluster`),
hands it over (:meth:`SwarmDriver.deploy`) and watches the engine's ``UpdateStatus``
until the update is done or rolled back. Observation reads the services' and tasks'
labels only (:mod:`.spec`), so any manager of the swarm can be asked, by any zlayer.

The replica-level calls of :class:`~reconciler.drivers.base.Driver` are refused: a
task is the engine's to start, restart and remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import aiodocker
from aiodocker.exceptions import DockerError

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits, Usage
from reconciler.drivers.swarm import spec as sw
from reconciler.errors import (
    Conflict,
    DriverError,
    EngineRolledBack,
    NotFound,
    PermanentDriverError,
    RuntimeUnreachable,
    TemporaryDriverError,
)
from reconciler.fingerprint import canonical_json
from reconciler.observed import (
    ClusterService,
    Health,
    Network,
    ObservedState,
    RunId,
    RunState,
    Status,
    Workload,
    WorkloadId,
)
from reconciler.route_table import Backend, Discovery, RoutedService, render, routes_of, table_of

log = logging.getLogger(__name__)

_TASK_STATUS: dict[str, Status] = {
    "new": "created",
    "pending": "created",
    "assigned": "created",
    "accepted": "created",
    "preparing": "created",
    "ready": "created",
    "starting": "created",
    "running": "running",
    "complete": "exited",
    "failed": "exited",
    "rejected": "dead",
    "shutdown": "exited",
    "orphaned": "dead",
}
_UPDATE_STATES = frozenset(
    {"updating", "completed", "paused", "rollback_started", "rollback_paused", "rollback_completed"}
)
DEPLOY_TIMEOUT = 600.0
"""How long :meth:`SwarmDriver.deploy` watches an update before it gives up waiting."""
REMOVE_TIMEOUT = 120.0
"""How long a removal waits for the engine to let go of what it removes."""


def _error(error: DockerError, subject: str, action: str) -> DriverError:
    message = str(error.message).strip()
    text = f"{subject}: {action} failed: {message}"
    if error.status == 404:
        return NotFound(text)
    if error.status == 409 or "out of sequence" in message:
        return Conflict(f"{text} (changed since it was observed: planned again next time)")
    if error.status >= 500 and "not a swarm manager" not in message:
        return TemporaryDriverError(text, delay=2.0)
    return PermanentDriverError(text)


def _labels(item: Mapping[str, Any]) -> dict[str, str]:
    """A service's or secret's labels (in its spec)."""
    return dict(item.get("Spec", {}).get("Labels") or {})


def _labels_of(network: Mapping[str, Any]) -> dict[str, str]:
    """A network's labels (at its top level)."""
    return dict(network.get("Labels") or {})


class SwarmDriver:
    """A :class:`~reconciler.drivers.base.ClusterDriver` for the swarm whose manager
    answers at ``url`` (``DOCKER_HOST`` by default)."""

    name = "swarm"
    routable = False
    internal_routable = False

    def __init__(
        self,
        url: str | None = None,
        *,
        poll: float = 0.5,
        proxy_image: str = "",
        endpoint_mode: str = "auto",
    ) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.poll = poll
        self.endpoint_mode = (
            endpoint_mode if endpoint_mode in sw.ENDPOINT_MODES else _detected(self.url)
        )
        """How service names resolve on the overlay: ``vip`` where the kernel has
        IPVS (``auto`` looks on this host when the engine is on it), else ``dnsrr``."""
        self.proxy_image = proxy_image
        """HAProxy's image for each deployment's proxy; empty: no proxy, a public
        endpoint is a port published by its own tasks on their nodes only."""
        self._proxy_locks: dict[str, asyncio.Lock] = {}
        self._docker: aiodocker.Docker | None = None

    async def __aenter__(self) -> Self:
        self._docker = aiodocker.Docker(url=self.url)
        try:
            info = await self._query("info", subject="swarm", action="connect")
            swarm = info.get("Swarm") or {}
            if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
                state = swarm.get("LocalNodeState") or "inactive"
                raise PermanentDriverError(
                    f"swarm: the engine at {self.url} is not a swarm manager (swarm {state}); "
                    "point DOCKER_HOST at a manager node, or `docker swarm init` one"
                )
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            await docker.close()

    # --- engine calls ---------------------------------------------------------------

    async def _query(
        self,
        path: str,
        *,
        subject: str,
        action: str,
        method: str = "GET",
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        docker = self._docker
        if docker is None:
            raise PermanentDriverError(f"{subject}: the swarm driver is not open")
        data = None if body is None else json.dumps(body)
        try:
            return await docker._query_json(path, method=method, params=params, data=data)
        except DockerError as error:
            raise _error(error, subject, action) from error
        except (TimeoutError, OSError) as error:
            raise RuntimeUnreachable(
                f"{subject}: {action} failed: no answer from {self.url} ({error})", delay=5.0
            ) from error

    async def _list(self, kind: str, filters: Mapping[str, list[str]], subject: str) -> list[Any]:
        found = await self._query(
            kind, subject=subject, action=f"list {kind}", params={"filters": json.dumps(filters)}
        )
        return list(found or [])

    # --- observing ------------------------------------------------------------------

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        wanted = None if deployments is None else set(deployments)
        label = [sw.DEPLOYMENT]
        if wanted is not None and len(wanted) == 1:
            label = [f"{sw.DEPLOYMENT}={next(iter(wanted))}"]
        services, tasks, nodes, networks, definitions = await asyncio.gather(
            self._list("services", {"label": label}, "swarm"),
            self._list("tasks", {"label": label}, "swarm"),
            self._list("nodes", {}, "swarm"),
            self._list("networks", {"label": label}, "swarm"),
            self._list("configs", {"label": label}, "swarm"),
        )
        services = [s for s in services if sw.RUN not in _labels(s)]  # runs are not workloads
        hostnames = _hostnames(nodes)
        clustered: list[ClusterService] = []
        configs: dict[str, dict[str, Any]] = {}
        by_id: dict[str, ClusterService] = {}
        for service in services:
            labels = _labels(service)
            entry = self._cluster_service(service, labels, wanted)
            if entry is None:
                continue
            clustered.append(entry)
            by_id[str(service["ID"])] = entry
            with contextlib.suppress(ValueError):  # without it, a replace says less
                configs[entry.fingerprint] = json.loads(labels.get(sw.CONFIG, ""))
        depends = {
            (c.deployment, c.service): tuple(
                d for d in _labels(s).get(sw.DEPENDS, "").split(",") if d
            )
            for s in services
            if (c := by_id.get(str(s["ID"]))) is not None
        }
        workloads = _task_workloads(tasks, by_id, hostnames, depends)
        for definition in definitions:
            workload = _definition(definition, wanted)
            if workload is not None and all(w.id != workload.id for w in workloads):
                workloads.append(workload)
                with contextlib.suppress(ValueError):
                    configs[workload.fingerprint] = json.loads(_labels(definition)[sw.CONFIG])
        found_networks: dict[str, Network] = {}
        for network in networks:
            deployment = _labels_of(network).get(sw.DEPLOYMENT, "")
            if network.get("Name") != sw.network_name(deployment):
                continue  # labelled, but not a name zlayer gives
            if wanted is None or deployment in wanted:
                found_networks[deployment] = Network(deployment=deployment, name=network["Name"])
        return ObservedState(
            runtime=self.name,
            workloads=tuple(workloads),
            networks_managed=True,
            networks=tuple(found_networks[d] for d in sorted(found_networks)),
            services_managed=True,
            services=tuple(sorted(clustered, key=lambda c: c.id)),
            configs=configs,
        )

    @staticmethod
    def _cluster_service(
        service: Mapping[str, Any], labels: Mapping[str, str], wanted: set[str] | None
    ) -> ClusterService | None:
        deployment, name = labels.get(sw.DEPLOYMENT), labels.get(sw.SERVICE)
        if not deployment or not name or (wanted is not None and deployment not in wanted):
            return None
        mode = service.get("Spec", {}).get("Mode", {})
        replicas = mode.get("Replicated", {}).get("Replicas") if "Replicated" in mode else None
        update = service.get("UpdateStatus") or {}
        state = update.get("State")
        try:
            placement = json.loads(labels.get(sw.PLACEMENT, "{}"))
        except ValueError:
            placement = {"unreadable": labels.get(sw.PLACEMENT)}  # planned as a change
        return ClusterService(
            placement=placement if isinstance(placement, dict) else {},
            deployment=deployment,
            service=name,
            fingerprint=labels.get(sw.FINGERPRINT, ""),
            revision=labels.get(sw.REVISION) or None,
            replicas=None if replicas is None else int(replicas),
            version=int(service.get("Version", {}).get("Index", 0)),
            update_state=state if state in _UPDATE_STATES else None,
            update_message=update.get("Message") or None,
            runtime_id=str(service.get("ID")),
        )

    def limits(self, service: DesiredService) -> Limits:
        return sw.limits(service, self.proxied, self.endpoint_mode)

    @property
    def proxied(self) -> bool:
        """Public endpoints are served by each deployment's proxy, on every node."""
        return bool(self.proxy_image)

    async def image_drift(
        self, services: Collection[DesiredService], observed: ObservedState
    ) -> ObservedState:
        return observed  # each node pulls what it lacks; the engine knows no digests here

    async def usage(self, targets: Collection[WorkloadId]) -> dict[WorkloadId, Usage]:
        return {}  # a task's stats are on its node's engine, not the manager's

    # --- services ---------------------------------------------------------------------

    async def deploy(
        self, service: DesiredService, revision: str, replicas: int, version: int | None
    ) -> None:
        subject = f"{service.deployment}/{service.name}"
        secrets = await self._secrets(service, subject)
        body = sw.service_spec(
            service, revision, replicas, secrets=secrets, proxied=self.proxied,
            endpoint_mode=self.endpoint_mode,
        )  # fmt: skip
        name = sw.service_name(service.deployment, service.name)
        if version is None:
            await self._query(
                "services/create", method="POST", body=body, subject=subject, action="create"
            )
        else:
            await self._query(
                f"services/{name}/update", method="POST", body=body,
                params={"version": str(version)}, subject=subject, action="update",
            )  # fmt: skip
        await self._converge(service, name, replicas, subject)
        await self._prune_secrets(service, keep=set(secrets.values()))

    async def _converge(
        self, service: DesiredService, name: str, replicas: int, subject: str
    ) -> None:
        """Until the update is done and ``replicas`` tasks of this spec run; the engine's
        rollback is :class:`EngineRolledBack` with its message."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEPLOY_TIMEOUT
        why = ""
        while True:
            info = await self._query(f"services/{name}", subject=subject, action="inspect")
            update = info.get("UpdateStatus") or {}
            state = update.get("State")
            if state in ("rollback_started", "rollback_completed", "rollback_paused", "paused"):
                message = update.get("Message") or f"update {state}"
                if state != "rollback_started":
                    failed = await self._failed_task(name, service.fingerprint, subject)
                    if failed:
                        message += f" (a task of the update: {failed})"
                    raise EngineRolledBack(f"{subject}: rolled back by the engine: {message}")
            elif state in (None, "completed"):
                tasks = await self._list(
                    "tasks", {"service": [name], "desired-state": ["running"]}, subject
                )
                ready = [
                    t for t in tasks
                    if t.get("Status", {}).get("State") == "running"
                    and (t.get("Spec", {}).get("ContainerSpec", {}).get("Labels") or {})
                    .get(sw.FINGERPRINT) == service.fingerprint
                ]  # fmt: skip
                if len(ready) >= replicas:
                    return
                waiting = [
                    str(t["Status"].get("Err") or t["Status"].get("Message") or "")
                    for t in tasks
                    if t.get("Status", {}).get("State") != "running"
                ]
                why = next((w for w in waiting if w), why)
            if loop.time() >= deadline:
                raise PermanentDriverError(
                    f"{subject}: not converged within {DEPLOY_TIMEOUT:g}s (update "
                    f"{state or 'none'}{'; a task: ' + why if why else ''})"
                )
            await asyncio.sleep(self.poll)

    async def _failed_task(self, name: str, fingerprint: str, subject: str) -> str | None:
        """Why the newest failed task of the spec ``fingerprint`` failed (Swarm's own
        message for a rollback only says that it happened)."""
        tasks = await self._list("tasks", {"service": [name]}, subject)
        failed = [
            t for t in tasks
            if t.get("Status", {}).get("State") in ("failed", "rejected")
            and (t.get("Spec", {}).get("ContainerSpec", {}).get("Labels") or {})
            .get(sw.FINGERPRINT) == fingerprint
        ]  # fmt: skip
        if not failed:
            return None
        newest = max(failed, key=lambda t: str(t.get("UpdatedAt", "")))
        status = newest["Status"]
        return str(status.get("Err") or status.get("Message") or status.get("State"))

    async def _secrets(self, service: DesiredService, subject: str) -> dict[str, str]:
        """Each secret env value as a Swarm secret (made once; a value never changes in
        place): env key → secret ID."""
        keys = sw.secret_keys(service)
        if not keys:
            return {}
        existing = {
            str(s["Spec"]["Name"]): str(s["ID"])
            for s in await self._list(
                "secrets", {"label": [f"{sw.DEPLOYMENT}={service.deployment}"]}, subject
            )
        }
        values = service.runtime_env()
        out = {}
        for key in keys:
            name = sw.secret_name(service, key, service.config["env"][key])
            if name not in existing:
                made = await self._query(
                    "secrets/create", method="POST", subject=subject, action=f"secret {key}",
                    body={
                        "Name": name,
                        "Labels": {sw.DEPLOYMENT: service.deployment, sw.SERVICE: service.name,
                                   sw.SECRET_KEY: key},
                        "Data": _b64(values[key]),
                    },
                )  # fmt: skip
                existing[name] = str(made["ID"])
            out[key] = existing[name]
        return out

    async def _prune_secrets(self, service: DesiredService, keep: set[str]) -> None:
        """Secrets of the service no task uses any more (values replaced since)."""
        subject = f"{service.deployment}/{service.name}"
        found = await self._list("secrets", {"label": [f"{sw.SERVICE}={service.name}"]}, subject)
        for secret in found:
            labels = _labels(secret)
            if labels.get(sw.DEPLOYMENT) != service.deployment or str(secret["ID"]) in keep:
                continue
            try:
                await self._query(
                    f"secrets/{secret['ID']}", method="DELETE", subject=subject,
                    action="remove an old secret",
                )  # fmt: skip
            except PermanentDriverError as error:  # still in use by a task shutting down
                log.info("%s", error)

    async def remove(self, target: WorkloadId) -> None:
        if target.replica is not None:
            self._per_task("remove")
        if target.is_network:
            await self.remove_network(target.deployment)
            return
        subject = str(target)
        name = sw.service_name(target.deployment, target.service)
        info = await self._query(f"services/{name}", subject=subject, action="inspect")
        await self._query(f"services/{name}", method="DELETE", subject=subject, action="remove")
        await self._wait_gone(target.deployment, str(info["ID"]), subject)
        secrets = await self._list(
            "secrets", {"label": [f"{sw.SERVICE}={target.service}"]}, subject
        )
        for secret in secrets:
            if _labels(secret).get(sw.DEPLOYMENT) == target.deployment:
                await self._query(
                    f"secrets/{secret['ID']}", method="DELETE", subject=subject,
                    action="remove its secret",
                )  # fmt: skip

    async def _wait_gone(self, deployment: str, service_id: str, subject: str) -> None:
        """Until the removed service's tasks are gone from the swarm (its network and
        secrets are in use until then). The service is gone already, so its tasks are
        found by the deployment's label."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REMOVE_TIMEOUT
        label = {"label": [f"{sw.DEPLOYMENT}={deployment}"]}
        while loop.time() < deadline:
            tasks = await self._list("tasks", label, subject)
            if not any(t.get("ServiceID") == service_id for t in tasks):
                return
            await asyncio.sleep(self.poll)
        log.warning("%s: tasks still there %gs after its removal", subject, REMOVE_TIMEOUT)

    async def create_network(self, deployment: str) -> None:
        name = sw.network_name(deployment)
        found = await self._list("networks", {"name": [name]}, deployment)
        if any(n.get("Name") == name for n in found):
            return
        await self._query(
            "networks/create", method="POST", subject=deployment, action="create its network",
            body={
                "Name": name, "Driver": "overlay", "Attachable": True, "CheckDuplicate": True,
                "Labels": {sw.DEPLOYMENT: deployment},
            },
        )  # fmt: skip

    async def remove_network(self, deployment: str) -> None:
        """Remove the deployment's overlay network once no task uses it: the engine
        refuses while the tasks of a service just removed are still shutting down. The
        deployment's proxy, on that network, leaves first."""
        await self._remove_proxy(deployment)
        name = sw.network_name(deployment)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REMOVE_TIMEOUT
        while True:
            try:
                await self._query(
                    f"networks/{name}", method="DELETE", subject=deployment,
                    action="remove its network",
                )  # fmt: skip
                return
            except NotFound:
                return
            except PermanentDriverError as error:
                if "in use" not in str(error) or loop.time() >= deadline:
                    raise
            await asyncio.sleep(self.poll)

    async def status(self, target: WorkloadId) -> Workload | None:
        observed = await self.observe([target.deployment])
        return next((w for w in observed.workloads if w.id == target), None)

    async def proxy_address(self, deployment: str) -> str | None:
        return None

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        raise PermanentDriverError(
            f"{target}: a swarm task's address is on its node's overlay network, which "
            "this host does not reach; the engine runs its health check"
        )

    async def logs(
        self, target: WorkloadId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        """The service's output through the manager, every line prefixed with its task's
        slot and node (``2@zl-node-3 | …``); a replica's own lines are its slot's."""
        name = sw.service_name(target.deployment, target.service)
        async for line in self._service_logs(name, str(target), target.replica, follow, tail):
            yield line

    async def _service_logs(
        self, name: str, subject: str, slot: int | None, follow: bool, tail: int | None
    ) -> AsyncGenerator[str, None]:
        docker = self._docker
        if docker is None:
            raise PermanentDriverError(f"{subject}: the swarm driver is not open")
        tasks, nodes = await asyncio.gather(
            self._list("tasks", {"service": [name]}, subject), self._list("nodes", {}, subject)
        )
        slots = {str(t["ID"]): t.get("Slot") for t in tasks}
        hostnames = _hostnames(nodes)

        def shown(line: str) -> str | None:
            """``<slot>@<node> | message`` from the engine's ``details`` prefix (the
            task's and node's IDs); None for another slot's line."""
            details, _, message = line.rstrip("\n").partition(" ")
            attributes = dict(
                item.partition("=")[::2] for item in details.split(",") if "=" in item
            )
            task = attributes.get("com.docker.swarm.task.id", "")
            node = attributes.get("com.docker.swarm.node.id", "")
            own = slots.get(task)
            if slot is not None and own != slot:
                return None
            host = hostnames.get(node, node[:12] or "?")
            where = f"{own}@{host}" if own else host  # a job's task has no slot
            return f"{where} | {message}"

        try:
            found: Any = docker.services.logs(
                name, stdout=True, stderr=True, details=True, follow=follow,
                tail="all" if tail is None else str(tail),
            )  # fmt: skip
            if not follow:  # aiodocker returns the list's coroutine then
                for chunk in await found:
                    for line in str(chunk).splitlines():
                        if (text := shown(line)) is not None:
                            yield text
                return
            async for chunk in found:
                for line in str(chunk).splitlines():
                    if (text := shown(line)) is not None:
                        yield text
        except DockerError as error:
            raise _error(error, subject, "logs") from error

    # --- what the engine does itself -----------------------------------------------

    @staticmethod
    def _per_task(action: str) -> NoReturn:
        raise PermanentDriverError(
            f"the swarm runtime does not {action} single tasks: the engine places, "
            "restarts and removes them (zlayer changes the service as a whole)"
        )

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        self._per_task("create")

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        self._per_task("replace")

    async def start(self, target: WorkloadId) -> None:
        self._per_task("start")

    async def restart(self, target: WorkloadId) -> None:
        self._per_task("restart")

    async def stop(self, target: WorkloadId) -> None:
        self._per_task("stop")

    async def register(self, service: DesiredService, revision: str) -> None:
        """Record the job or cron definition as a Swarm config (labelled like a service,
        so observation finds it); the configs of its earlier definitions go."""
        subject = f"{service.deployment}/{service.name}"
        body = sw.definition_spec(service, revision)
        with contextlib.suppress(Conflict):  # this very definition is recorded already
            await self._query(
                "configs/create", method="POST", body=body, subject=subject, action="register"
            )
        await self._remove_definitions(service.workload_id(None), keep=str(body["Name"]))

    async def unregister(self, target: WorkloadId) -> None:
        if target.replica is not None:
            raise PermanentDriverError(f"{target}: unregister failed: not a definition")
        await self._remove_definitions(target, keep=None)

    async def _remove_definitions(self, target: WorkloadId, keep: str | None) -> None:
        found = await self._list(
            "configs", {"label": [f"{sw.SERVICE}={target.service}"]}, str(target)
        )
        for config in found:
            labels = _labels(config)
            name = config.get("Spec", {}).get("Name")
            if labels.get(sw.DEPLOYMENT) != target.deployment or name == keep:
                continue
            with contextlib.suppress(NotFound):
                await self._query(
                    f"configs/{config['ID']}", method="DELETE", subject=str(target),
                    action="remove an earlier definition",
                )  # fmt: skip

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        """One ``replicated-job`` service per run: Swarm places its one task on a node
        that fits, runs it to completion and keeps it (status, logs) until
        :meth:`remove_job`."""
        subject = str(RunId(service.deployment, service.name, run))
        secrets = await self._secrets(service, subject)
        body = sw.run_spec(service, run, revision, secrets=secrets)
        await self._query(
            "services/create", method="POST", body=body, subject=subject, action="run"
        )

    async def job_status(self, run: RunId) -> RunState | None:
        name = sw.run_service_name(run.deployment, run.service, run.run)
        try:
            info = await self._query(f"services/{name}", subject=str(run), action="inspect")
            tasks = await self._list("tasks", {"service": [name]}, str(run))
        except NotFound:
            return None
        return _run_state(run, info, tasks)

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        found = []
        for service in await self._list("services", {"label": [sw.RUN]}, "swarm"):
            labels = _labels(service)
            deployment = labels.get(sw.DEPLOYMENT, "")
            if deployments is not None and deployment not in deployments:
                continue
            run = RunId(deployment, labels.get(sw.SERVICE, ""), labels.get(sw.RUN, ""))
            state = await self.job_status(run)
            if state is not None:
                found.append(state)
        return sorted(found, key=lambda r: (r.deployment, r.service, r.run))

    async def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        name = sw.run_service_name(run.deployment, run.service, run.run)
        async for line in self._service_logs(name, str(run), None, follow, tail):
            yield line

    async def remove_job(self, run: RunId) -> None:
        name = sw.run_service_name(run.deployment, run.service, run.run)
        with contextlib.suppress(NotFound):
            await self._query(
                f"services/{name}", method="DELETE", subject=str(run), action="remove"
            )

    async def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        """No hints: the engine restarts its tasks itself, and the daemon's periodic
        observe sees what it did."""
        while True:
            await asyncio.sleep(3600)
            if False:  # pragma: no cover - makes this an async generator
                yield WorkloadId("", "", None)

    # --- the deployments' proxies -----------------------------------------------------

    async def _proxies(self, deployments: Collection[str] | None) -> list[Any]:
        found = await self._list("services", {"label": [sw.PROXY]}, "swarm")
        return [
            p
            for p in found
            if _labels(p).get(sw.DEPLOYMENT)
            and (deployments is None or _labels(p)[sw.DEPLOYMENT] in deployments)
            and p.get("Spec", {}).get("Name") == sw.proxy_name(_labels(p)[sw.DEPLOYMENT])
        ]

    async def observe_routes(
        self, observed: ObservedState, deployments: Collection[str] | None = None
    ) -> ObservedState:
        """``observed`` with the routes each deployment's proxy was made for (its
        labels) and whether every proxy has a task running. HAProxy finds the tasks
        in DNS itself, so a route lists no servers."""
        if not self.proxied:
            return observed
        wanted = None if deployments is None else set(deployments)
        proxies = await self._proxies(wanted)
        routed: list[RoutedService] = []
        running = True
        for proxy in proxies:
            with contextlib.suppress(ValueError, KeyError, TypeError):  # planned anew
                listed = json.loads(_labels(proxy).get(sw.ROUTES, "[]"))
                routed += [RoutedService.from_dict(entry) for entry in listed]
            tasks = await self._list(
                "tasks", {"service": [str(proxy["ID"])], "desired-state": ["running"]}, "swarm"
            )
            running = running and any(t.get("Status", {}).get("State") == "running" for t in tasks)
        return dataclasses.replace(
            observed,
            routes_managed=True,
            proxy_running=running,
            routes=tuple(routes_of(table_of(routed))),
        )

    async def sync_proxy(
        self, deployment: str, routed: Collection[RoutedService]
    ) -> tuple[str, tuple[str, ...]]:
        # The route actions of one deployment's services run at once: one sync at a time.
        async with self._proxy_locks.setdefault(deployment, asyncio.Lock()):
            return await self._sync_proxy(deployment, routed)

    async def _sync_proxy(
        self, deployment: str, routed: Collection[RoutedService]
    ) -> tuple[str, tuple[str, ...]]:
        subject = f"{deployment}/{sw.PROXY_SERVICE}"
        table = table_of(routed)
        if table.problems:
            raise PermanentDriverError(f"{deployment}: the routes conflict: " + "; ".join(
                table.problems))  # fmt: skip
        found = await self._proxies({deployment})
        current = found[0] if found else None
        if table.empty:
            if current is None:
                return "unchanged", ()
            await self._remove_proxy(deployment)
            return "stopped", (f"{deployment}: no public endpoint left, its proxy removed",)
        text = render(
            table, {}, bind_address="0.0.0.0", admin_socket=None, pidfile=None,
            discovery=Discovery(sw.NAMESERVER, _discovered),
        )  # fmt: skip
        digest = hashlib.sha256(text.encode()).hexdigest()
        listed = canonical_json(
            [dataclasses.asdict(_as_labelled(r)) for r in sorted(routed, key=_key)]
        )
        ports = [f.port for f in table.frontends]
        said = ", ".join(f":{p}" for p in sorted(set(ports)))
        labels = _labels(current) if current is not None else {}
        same = (labels.get(sw.PROXY), labels.get(sw.ROUTES)) == (digest, listed)
        if current is not None and same:
            return "unchanged", ()  # its tasks are the engine's to keep running
        await self.create_network(deployment)
        config = await self._proxy_config(deployment, digest, text, subject)
        body = sw.proxy_spec(deployment, self.proxy_image, config, digest, listed, ports)
        if current is None:
            made = await self._query(
                "services/create", method="POST", body=body, subject=subject, action="create"
            )
            service_id, outcome = str(made["ID"]), "started"
        else:
            version = str(current.get("Version", {}).get("Index", 0))
            await self._query(
                f"services/{current['ID']}/update", method="POST", body=body,
                params={"version": version}, subject=subject, action="update",
            )  # fmt: skip
            service_id, outcome = str(current["ID"]), "updated"
        await self._proxy_converged(service_id, subject)
        await self._prune_proxy_configs(deployment, keep=config[1])
        return outcome, (f"{deployment}: its proxy serves {said} on every node",)

    async def _proxy_config(
        self, deployment: str, digest: str, text: str, subject: str
    ) -> tuple[str, str]:
        name = sw.proxy_config_name(deployment, digest)
        for config in await self._list("configs", {"name": [name]}, subject):
            if config.get("Spec", {}).get("Name") == name:
                return str(config["ID"]), name
        made = await self._query(
            "configs/create", method="POST", body=sw.proxy_config_spec(deployment, digest, text),
            subject=subject, action="create its configuration",
        )  # fmt: skip
        return str(made["ID"]), name

    async def _proxy_converged(self, service_id: str, subject: str) -> None:
        """Until the proxy's update is done and a task of it runs on every node that
        should run one (the engine's count of a global service's tasks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEPLOY_TIMEOUT
        while True:
            listed = await self._query(
                "services", subject=subject, action="inspect",
                params={"filters": json.dumps({"id": [service_id]}), "status": "true"},
            )  # fmt: skip
            info = next((s for s in listed or () if s.get("ID") == service_id), None)
            if info is None:
                raise NotFound(f"{subject}: the proxy service is gone")
            update = info.get("UpdateStatus") or {}
            state = update.get("State")
            if state in ("rollback_started", "rollback_completed", "rollback_paused", "paused"):
                message = update.get("Message") or f"update {state}"
                raise EngineRolledBack(f"{subject}: the engine rolled the proxy back: {message}")
            status = info.get("ServiceStatus") or {}
            wanted, running = status.get("DesiredTasks", 0), status.get("RunningTasks", 0)
            if state in (None, "completed") and wanted and running >= wanted:
                return
            digest = _labels(info).get(sw.PROXY)
            if failure := await self._proxy_failure(service_id, digest, subject):
                raise PermanentDriverError(f"{subject}: {failure}")
            if loop.time() >= deadline:
                raise TemporaryDriverError(
                    f"{subject}: {running} of {wanted} proxy tasks running after "
                    f"{DEPLOY_TIMEOUT:g}s (update {state or 'none'})",
                    delay=5.0,
                )
            await asyncio.sleep(self.poll)

    async def _proxy_failure(self, service_id: str, digest: str | None, subject: str) -> str | None:
        """Why a task of the proxy's current configuration failed, if one did: the
        engine would try again for ever (an image no node has, a port in use)."""
        tasks = await self._list("tasks", {"service": [service_id]}, subject)
        for task in sorted(tasks, key=lambda t: str(t.get("CreatedAt", ""))):
            labels = task.get("Spec", {}).get("ContainerSpec", {}).get("Labels") or {}
            status = task.get("Status") or {}
            if labels.get(sw.PROXY) != digest or status.get("State") not in ("failed", "rejected"):
                continue
            why = status.get("Err") or status.get("Message")
            return f"a proxy task failed on node {task.get('NodeID', '?')}: {why}"
        return None

    async def _prune_proxy_configs(self, deployment: str, keep: str | None) -> None:
        """The configurations no proxy task uses any more (the engine refuses the
        others: they go next time)."""
        configs = await self._list("configs", {"label": [sw.PROXY]}, deployment)
        for config in configs:
            name = config.get("Spec", {}).get("Name")
            if _labels(config).get(sw.DEPLOYMENT) != deployment or name == keep:
                continue
            with contextlib.suppress(NotFound, PermanentDriverError):  # still in use
                await self._query(
                    f"configs/{config['ID']}", method="DELETE", subject=deployment,
                    action="remove an old proxy configuration",
                )  # fmt: skip

    async def _remove_proxy(self, deployment: str) -> None:
        subject = f"{deployment}/{sw.PROXY_SERVICE}"
        for proxy in await self._proxies({deployment}):
            with contextlib.suppress(NotFound):
                await self._query(
                    f"services/{proxy['ID']}", method="DELETE", subject=subject, action="remove"
                )
            await self._wait_gone(deployment, str(proxy["ID"]), subject)
        await self._prune_proxy_configs(deployment, keep=None)


IPVS_MARKERS = ("proc/net/ip_vs", "sys/module/ip_vs")
"""Present when the kernel has IPVS loaded (Docker loads it itself where it can)."""


def ipvs_available(root: Path = Path("/")) -> bool:
    """This host's kernel has IPVS (``root``: where ``/proc`` and ``/sys`` are), or
    its module is installed for the engine to load."""
    if any((root / marker).exists() for marker in IPVS_MARKERS):
        return True
    modules = root / "lib" / "modules" / os.uname().release
    return modules.is_dir() and any(modules.rglob("ip_vs.ko*"))


def _detected(url: str, root: Path = Path("/")) -> str:
    """``vip`` when the engine runs on this host (a unix socket) and the kernel has
    IPVS; ``dnsrr`` otherwise (a remote engine's kernel is not known here)."""
    return "vip" if url.startswith("unix://") and ipvs_available(root) else "dnsrr"


def _discovered(backend: Backend) -> tuple[str, int]:
    """Where the proxy finds a backend's servers: its service's running tasks."""
    return sw.discovery_name(backend.deployment, backend.service), sw.server_slots(backend.replicas)


def _as_labelled(routed: RoutedService) -> RoutedService:
    """``routed`` as the proxy's label records it, which observation reports as its
    routes: no replica count (no part of a route: a scale needs no new configuration,
    the tasks are found in DNS), and a health check URL without its query, which may
    carry a credential and which the routes show without it anyway."""
    health = dict(routed.health)
    url = str(health.get("url") or "")
    if "?" in url:
        health["url"] = url.split("?", 1)[0] + "?…"
    return dataclasses.replace(routed, replicas=None, health=health)


def _key(routed: RoutedService) -> tuple[str, str]:
    return routed.key


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _hostnames(nodes: list[Any]) -> dict[str, str]:
    """Node ID → its host name (the ID's start when the node reports none)."""
    return {
        str(n["ID"]): str(n.get("Description", {}).get("Hostname") or n["ID"][:12]) for n in nodes
    }


def _definition(config: Mapping[str, Any], wanted: set[str] | None) -> Workload | None:
    """The registered job or cron definition a Swarm config records."""
    labels = _labels(config)
    deployment, name = labels.get(sw.DEPLOYMENT), labels.get(sw.SERVICE)
    if not deployment or not name or sw.DEFINITION not in labels:
        return None
    if wanted is not None and deployment not in wanted:
        return None
    return Workload(
        deployment=deployment,
        service=name,
        fingerprint=labels.get(sw.FINGERPRINT, ""),
        revision=labels.get(sw.REVISION) or None,
        status="registered",
        runtime_id=str(config.get("ID")),
    )


def _run_state(run: RunId, info: Mapping[str, Any], tasks: list[Any]) -> RunState:
    """A run from its job service's newest task: running until it completes or fails
    (a task not placed yet counts as running: it is the engine's to start)."""
    newest = max(tasks, key=lambda t: str(t.get("UpdatedAt", "")), default=None)
    status = (newest or {}).get("Status") or {}
    state = str(status.get("State", "pending"))
    started = str(info.get("CreatedAt")) if info.get("CreatedAt") else None
    if state not in ("complete", "failed", "rejected", "shutdown", "orphaned"):
        return RunState(
            deployment=run.deployment, service=run.service, run=run.run, status="running",
            started_at=started,
        )  # fmt: skip
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    if state == "complete":
        code = 0
    return RunState(
        deployment=run.deployment, service=run.service, run=run.run, status="exited",
        exit_code=None if code is None else int(code), started_at=started,
        finished_at=str(status.get("Timestamp")) if status.get("Timestamp") else None,
    )  # fmt: skip


def _task_workloads(
    tasks: list[Any],
    services: Mapping[str, ClusterService],
    hostnames: Mapping[str, str],
    depends: Mapping[tuple[str, str], tuple[str, ...]],
) -> list[Workload]:
    """One replica per task slot of each service: the task the engine wants running
    (the newest of the slot when none is), with the fingerprint of the spec it was made
    from and the node it runs on."""
    slots: dict[WorkloadId, Any] = {}
    for task in tasks:
        owner = services.get(str(task.get("ServiceID")))
        slot = task.get("Slot")
        if owner is None or not slot:
            continue
        key = WorkloadId(owner.deployment, owner.service, int(slot))
        wanted = task.get("DesiredState") == "running"
        current = slots.get(key)
        if current is not None:
            current_wanted = current.get("DesiredState") == "running"
            newer = str(task.get("UpdatedAt", "")) > str(current.get("UpdatedAt", ""))
            if (current_wanted and not wanted) or (current_wanted == wanted and not newer):
                continue
        slots[key] = task
    out = []
    for key, task in sorted(slots.items()):
        owner = next(c for c in services.values() if c.id == key._replace(replica=None))
        beyond = owner.replicas is not None and (key.replica or 0) > owner.replicas
        if task.get("DesiredState") != "running" and beyond:
            continue  # a slot scaled away: its task is going, it is no replica any more
        status = task.get("Status") or {}
        state = _TASK_STATUS.get(str(status.get("State")), "created")
        container = status.get("ContainerStatus") or {}
        exit_code = container.get("ExitCode") if state in ("exited", "dead") else None
        container_spec = task.get("Spec", {}).get("ContainerSpec", {})
        labels = container_spec.get("Labels") or {}
        node = task.get("NodeID")
        health: Health = "none"
        if container_spec.get("Healthcheck"):
            # The engine's own check: a task is running only once it passed.
            health = "healthy" if state == "running" else "starting"
            if state != "running" and status.get("State") != "starting":
                health = "none"
        out.append(
            Workload(
                deployment=key.deployment,
                service=key.service,
                replica=key.replica,
                fingerprint=str(labels.get(sw.FINGERPRINT, "")),
                status=state,
                exit_code=None if exit_code is None else int(exit_code),
                started_at=str(status.get("Timestamp")) if state == "running" else None,
                runtime_id=str(task.get("ID")),
                node=hostnames.get(str(node), str(node)) if node else None,
                depends=depends.get((key.deployment, key.service), ()),
                health=health,
            )
        )
    return out

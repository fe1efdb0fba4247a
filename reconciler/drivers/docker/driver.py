"""The Docker runtime: replicas as containers on one Docker engine (aiodocker).

Every container carries zlayer's labels, so what the engine reports *is* the
observed state (names and labels: :mod:`.labels`; observation: :mod:`.observation`;
create bodies: :mod:`.config`; limits: :mod:`.limits`). Docker's restart policy is
always ``no``: zlayer supervises. Engine errors become the project's own
(:mod:`.engine`, :func:`.errors.engine_error`), chained with ``from``, with
messages that start with the workload: ``demo/web/1: create failed: …``.

Reads (``info``, the container list, inspects) go through :mod:`.reader` when the
engine is on a unix socket; the aiodocker client is made on the first call that
changes something or streams, so a converged apply never imports it. Only this
package imports aiodocker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from reconciler import installed
from reconciler.desired import DesiredService
from reconciler.drivers import hosts
from reconciler.drivers.base import Limits, Usage
from reconciler.drivers.docker import labels as names
from reconciler.drivers.docker import observation
from reconciler.drivers.docker.config import (
    create_body,
    extra_hosts,
    proxied_internal,
    run_body,
    takes_hosts_file,
)
from reconciler.drivers.docker.engine import (
    connect,
    events,
    log_lines,
    stream_errors,
    translated,
)
from reconciler.drivers.docker.limits import EngineFacts, service_limits
from reconciler.drivers.docker.reader import SocketReader, socket_path
from reconciler.drivers.docker.resources import Images, Networks, ensure_volume
from reconciler.errors import (
    Conflict,
    DriverError,
    NotFound,
    PermanentDriverError,
    TemporaryDriverError,
)
from reconciler.observed import ObservedState, RunId, RunState, Workload, WorkloadId

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.containers import DockerContainer

log = logging.getLogger(__name__)

_LOCAL = "127.0.0.1"

_Creating = tuple[DesiredService, bool, bool]
"""A container being created: its service, whether it is a replica, whether zlayer's
hosts file is mounted in it."""


class DockerDriver:
    """Replicas as containers on the Docker engine at ``url`` (``None``: ``DOCKER_HOST``
    or the default socket). Public endpoints go through the managed proxy, which
    listens on ``publish_address``: each replica publishes its target port on
    loopback for it. A public udp endpoint of a single-replica service is published
    on ``publish_address`` by the engine."""

    name = "docker"
    routable = True
    """The proxy reaches every replica at the port it publishes on loopback."""

    def __init__(
        self,
        url: str | None = None,
        *,
        publish_address: str = "0.0.0.0",
        state_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.publish_address = publish_address
        self.state_dir = state_dir
        """Where zlayer's hosts files for containers live (``docker-hosts/``); without
        one, containers keep the engine's ``/etc/hosts`` and internal endpoints reach
        the replicas directly."""
        self._local_socket = socket_path(url) if state_dir is not None else None
        self.booted_at = boot_time() if socket_path(url) is not None else None
        """When the engine's host booted (epoch seconds), where the engine is on this
        host: a stopped container started before it stopped with the host (``None``: an
        engine elsewhere, whose boot zlayer cannot tell)."""
        self._creating: collections.defaultdict[str, dict[str, _Creating]] = (
            collections.defaultdict(dict)
        )
        """Containers being created, by deployment (:meth:`_hosts_for`)."""
        self._hosts_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self.facts = EngineFacts()
        """What ``docker info`` said when the session opened (for :meth:`limits`)."""
        self._client: aiodocker.Docker | None = None
        self._reader: SocketReader | None = None
        self._open = False
        self._images = Images()
        self._networks = Networks()

    # --- session ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        path = socket_path(self.url)
        self._reader = SocketReader(path) if path is not None else None
        self._open = True
        try:
            info = await self._get("info", subject="docker", action="connect")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self.facts = EngineFacts.from_info(info)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        self._open = False
        if client is not None:
            await client.close()

    @property
    def docker(self) -> aiodocker.Docker:
        """The aiodocker client, made (and aiodocker imported) on first use."""
        if not self._open:
            raise RuntimeError("DockerDriver is used outside 'async with'")
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    async def _get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        subject: object,
        action: str,
    ) -> Any:
        """A read: through the socket reader when there is one, else aiodocker."""
        if self._reader is not None:
            return await self._reader.get(path, params, subject=subject, action=action)
        with translated(subject, action):
            return await self.docker._query_json(path, params=dict(params or {}))

    # --- names: zlayer's hosts files --------------------------------------------------

    @property
    def _hosts_dir(self) -> Path | None:
        """Containers get zlayer's hosts file where the engine is on this host (a unix
        socket: the file is a bind mount) and zlayer has a state directory."""
        if self.state_dir is None or self._local_socket is None:
            return None
        return self.state_dir / "docker-hosts"

    @property
    def internal_routable(self) -> bool:
        """The managed proxy serves internal endpoints on the deployment network's
        gateway (the host's own address there), where zlayer's hosts files send their
        service names; without HAProxy (or a local engine) a service's name is the
        engine's DNS alias of its containers and reaches them directly."""
        return self._hosts_dir is not None and installed.haproxy() is not None

    async def proxy_address(self, deployment: str) -> str | None:
        if not self.internal_routable:
            return None
        return await self._gateway(deployment)

    async def _gateway(self, deployment: str) -> str | None:
        """The host's address on the deployment's network; ``None`` without one. Asked
        each time: another zlayer process may have made the network again since."""
        network = names.network_name(deployment)
        try:
            info = await self._get(f"networks/{network}", subject=network, action="inspect")
        except NotFound:
            return None
        for pool in (info.get("IPAM") or {}).get("Config") or ():
            gateway = pool.get("Gateway")
            if gateway and ":" not in str(gateway):
                return str(gateway)
        return None

    def _hosts_file(self, deployment: str, container: str) -> Path | None:
        root = self._hosts_dir
        return None if root is None else root / deployment / container

    async def _write_hosts(self, deployment: str) -> None:
        """Rewrite every hosts file of the deployment's containers (in place), and drop
        those of containers that are gone. Containers being created
        (:meth:`_hosts_for`) count as there. A service whose internal endpoints the
        proxy serves maps to the network's gateway; the spec's ``extra_hosts`` come
        after. Call with the deployment's hosts lock held: two writers would
        interleave."""
        root = self._hosts_dir
        if root is None:
            return
        listed = await self._containers(
            json.dumps(names.deployment_filter([deployment])), "write hosts"
        )
        configs: dict[str, dict[str, Any]] = {}
        proxied: set[str] = set()
        for container in listed:
            labels = container.get("Labels") or {}
            if labels.get(names.DEPLOYMENT) != deployment:
                continue
            name = str((container.get("Names") or ["/"])[0]).lstrip("/")
            if labels.get(names.HOSTS) == names.MANAGED:
                configs[name] = observation.config_from_labels(labels) or {}
            replica = labels.get(names.REPLICA) and names.RUN not in labels
            if replica and labels.get(names.INTERNAL) == names.PUBLISH_PROXY:
                proxied.add(labels.get(names.SERVICE, ""))
        for name, (service, replica, mounted) in self._creating[deployment].items():
            if mounted:
                configs[name] = dict(service.config)
            if replica and proxied_internal(service, self.internal_routable):
                proxied.add(service.name)
        proxied.discard("")
        # The gateway is an inspect of the network: only asked for when a file needs it.
        needs_gateway = (proxied and self.internal_routable) or any(
            str(item).endswith(":host-gateway")
            for config in configs.values()
            for item in config.get("extra_hosts", ())
        )
        gateway = await self._gateway(deployment) if needs_gateway else None
        routed = sorted(proxied) if gateway is not None and self.internal_routable else []
        for name, config in configs.items():
            entries = [(gateway, routed)] if routed and gateway is not None else []
            entries += extra_hosts(config, gateway)
            try:
                await asyncio.to_thread(hosts.rewrite, root / deployment / name, entries)
            except ValueError as exc:
                raise PermanentDriverError(f"{deployment}/{name}: extra_hosts: {exc}") from exc
        where = root / deployment
        for path in where.iterdir() if where.is_dir() else ():
            if path.name not in configs:
                path.unlink(missing_ok=True)
        if not configs:
            with contextlib.suppress(OSError):
                where.rmdir()

    @contextlib.asynccontextmanager
    async def _hosts_for(
        self, deployment: str, name: str, service: DesiredService, replica: bool, mounted: bool
    ) -> AsyncIterator[None]:
        """Around the create of container ``name`` (a replica of ``service`` or not; with
        zlayer's hosts file ``mounted`` or not): its hosts file is written first (the
        engine mounts it), the deployment's others learn its name, and every rewrite
        until the engine lists it counts it as there. Creates do not wait for each
        other: only the writes are serialised."""
        if self._hosts_dir is None:
            yield
            return
        creating = self._creating[deployment]
        async with self._hosts_locks[deployment]:
            creating[name] = (service, replica, mounted)
            await self._write_hosts(deployment)
        try:
            yield
        finally:
            creating.pop(name, None)

    async def _rewrite_hosts(self, deployment: str) -> None:
        """After a container of the deployment is gone, and before one starts again
        (its file must be there to be mounted)."""
        if self._hosts_dir is not None:
            async with self._hosts_locks[deployment]:
                await self._write_hosts(deployment)

    # --- reading --------------------------------------------------------------------------

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        wanted = None if deployments is None else sorted(set(deployments))
        if wanted == []:
            return ObservedState(runtime=self.name)
        filters = json.dumps(names.deployment_filter(wanted))
        listed = await self._containers(filters, "observe")
        summaries = [  # the list entries, as listed; runs of jobs are not workloads
            c for c in listed if names.RUN not in (c.get("Labels") or {})
        ]
        if wanted is not None:
            summaries = [
                s for s in summaries if (s.get("Labels") or {}).get(names.DEPLOYMENT) in wanted
            ]
        # The list lacks exit codes, start times and restart counts: inspect only the
        # containers whose exit code the planner reads.
        stopped = [s for s in summaries if s.get("State") in ("exited", "dead")]
        details = await asyncio.gather(*(self._inspect_id(str(s["Id"])) for s in stopped))
        inspected = {str(s["Id"]): d for s, d in zip(stopped, details, strict=True)}

        found: dict[WorkloadId, tuple[Workload, bool]] = {}
        configs: dict[str, dict[str, Any]] = {}
        proxied = self.internal_routable
        for summary in summaries:
            sid = str(summary["Id"])
            if sid in inspected:
                info = inspected[sid]
                if info is None:
                    continue  # removed since the list
                workload = observation.workload_from_inspect(info, self.booted_at)
            else:
                workload = observation.workload_from_summary(summary)
            listed = summary.get("Names") or []
            if workload is None:
                log.warning("docker: container %s has malformed zlayer labels; ignored", listed)
                continue
            canonical = f"/{names.container_name(workload.id)}" in listed
            if workload.id in found and (found[workload.id][1] or not canonical):
                # Keep the container whose name is the workload's own.
                log.warning(
                    "docker: %s is claimed by more than one container; %s ignored",
                    workload.id,
                    listed,
                )
                continue
            labels = summary.get("Labels") or {}
            if workload.outdated is None and workload.replica is not None:
                outdated = observation.names_outdated(labels, proxied, self._hosts_dir is not None)
                workload = dataclasses.replace(workload, outdated=outdated)
            found[workload.id] = (workload, canonical)
            config = observation.config_from_labels(labels)
            if config is not None:
                configs[workload.fingerprint] = config
        workloads = sorted(
            (w for w, _ in found.values()), key=lambda w: (w.deployment, w.service, w.replica or 0)
        )
        used = {w.fingerprint for w in workloads}
        return ObservedState(
            runtime=self.name,
            workloads=tuple(workloads),
            configs={k: v for k, v in configs.items() if k in used},
        )

    def limits(self, service: DesiredService) -> Limits:
        return service_limits(service, self.facts, internal_routed=self.internal_routable)

    async def usage(self, targets: Collection[WorkloadId]) -> dict[WorkloadId, Usage]:
        """The engine's one-shot stats of each container (``stream=false``, ``one-shot``:
        one answer, no stream held open). Asked in parallel: once the engine's stats
        collector runs, Docker 20.10 answers even a one-shot read at its next tick
        (about a second later), a wait that costs neither side CPU."""
        found: dict[WorkloadId, Usage] = {}
        gate = asyncio.Semaphore(32)

        async def one(target: WorkloadId) -> None:
            name = names.container_name(target)
            params = {"stream": "false", "one-shot": "true"}
            async with gate:  # aiohttp, not the socket reader: its threads would queue
                try:
                    with translated(target, "stats"):
                        stats = await self.docker._query_json(
                            f"containers/{name}/stats", params=params
                        )
                except DriverError:
                    return  # gone meanwhile: nothing to measure
            measured = observation.usage(stats)
            if measured is not None:
                found[target] = Usage(*measured)

        await asyncio.gather(*(one(t) for t in targets if t.replica is not None))
        return found

    async def image_drift(
        self, services: Collection[DesiredService], observed: ObservedState
    ) -> ObservedState:
        """The registry's digest for each image reference (the engine's
        ``/distribution`` endpoint: the engine's own registry settings and credentials)
        against the digests the replica's image was pulled or pushed with."""
        pulled = {s.key: s for s in services if s.pull_policy in ("always", "newer")}
        mine = [
            w
            for w in observed.workloads
            if w.replica is not None
            and (service := pulled.get((w.deployment, w.service))) is not None
            and w.fingerprint == service.fingerprint
            and w.outdated is None
        ]
        if not mine:
            return observed
        remote: dict[str, str | None] = {}
        for ref in sorted({str(pulled[(w.deployment, w.service)].config["image"]) for w in mine}):
            remote[ref] = await self._registry_digest(ref)
        marked = {}
        for workload in mine:
            ref = str(pulled[(workload.deployment, workload.service)].config["image"])
            wanted = remote[ref]
            if wanted is None:
                continue
            have = await self._running_digests(workload)
            if have is None or wanted in have:
                continue
            was = ", ".join(sorted(d[:19] for d in have)) or "none (a local image)"
            marked[workload.id] = dataclasses.replace(
                workload,
                outdated=f"image {ref} moved in its registry: {was} → {wanted[:19]}",
            )
        if not marked:
            return observed
        workloads = tuple(marked.get(w.id, w) for w in observed.workloads)
        return dataclasses.replace(observed, workloads=workloads)

    async def _registry_digest(self, ref: str) -> str | None:
        """The digest the registry gives for ``ref`` now; None (logged) when it cannot
        be asked: the plan then keeps what runs."""
        try:
            info = await self._get(f"distribution/{ref}/json", subject=ref, action="ask")
        except DriverError as exc:
            log.warning("docker: cannot ask the registry about %s (%s); not compared", ref, exc)
            return None
        digest = (info.get("Descriptor") or {}).get("digest") if isinstance(info, dict) else None
        return str(digest) if digest else None

    async def _running_digests(self, workload: Workload) -> set[str] | None:
        """The registry digests of the image ``workload``'s container runs."""
        info = await self._inspect(workload.id, "inspect")
        image = (info or {}).get("Image")
        if not image:
            return None
        try:
            found = await self._get(f"images/{image}/json", subject=image, action="inspect")
        except DriverError:
            return None
        repo_digests = found.get("RepoDigests") if isinstance(found, dict) else None
        return {str(d).rpartition("@")[2] for d in repo_digests or ()}

    async def status(self, target: WorkloadId) -> Workload | None:
        info = await self._inspect(target, "status")
        if info is None:
            return None
        workload = observation.workload_from_inspect(info, self.booted_at)
        return workload if workload is not None and workload.id == target else None

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        info = await self._managed(target, "address")
        mode = str((info.get("HostConfig") or {}).get("NetworkMode", ""))
        if mode.startswith("container:"):
            # The same network namespace as that container: its address is this one's.
            info = await self._get(
                f"containers/{mode.split(':', 1)[1]}/json", subject=target, action="address"
            )
            mode = str((info.get("HostConfig") or {}).get("NetworkMode", ""))
        if mode == "host":
            return (_LOCAL, port)
        settings = info.get("NetworkSettings") or {}
        ports = settings.get("Ports") or {}
        for binding in ports.get(f"{port}/tcp") or ():
            if binding.get("HostPort"):
                ip = str(binding.get("HostIp") or "")
                return (_LOCAL if ip in ("", "0.0.0.0", "::") else ip, int(binding["HostPort"]))
        networks = settings.get("Networks") or {}
        preferred = networks.get(names.network_name(target.deployment)) or {}
        candidates = [preferred, *networks.values()]
        for network in candidates:
            if network.get("IPAddress"):
                return (str(network["IPAddress"]), port)
        state = str((info.get("State") or {}).get("Status", ""))
        if mode == "none":
            raise PermanentDriverError(
                f"{target}: address failed: network_mode none has no address to reach"
            )
        raise TemporaryDriverError(
            f"{target}: address failed: no address yet (the container is {state})", delay=1.0
        )

    async def logs(
        self, target: WorkloadId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        """Close the iterator (``contextlib.aclosing``) when stopping early while
        following: that ends the request to the engine."""
        info = await self._managed(target, "logs")
        tty = bool((info.get("Config") or {}).get("Tty"))
        async for line in log_lines(
            self.docker, names.container_name(target), target, tty=tty, follow=follow, tail=tail
        ):
            yield line

    # --- runs of jobs ---------------------------------------------------------------------

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        """A container from the service's config, labelled as run ``run``, started once;
        no restart policy, kept after it exits (for its status and logs) until
        :meth:`remove_job`."""
        rid = RunId(service.deployment, service.name, run)
        target = service.workload_id(None)
        await self._prepare(service, target, "run")
        name = names.run_container_name(rid)
        hosts_file = self._hosts_file(rid.deployment, name)
        if not takes_hosts_file(service.config):
            hosts_file = None
        try:
            body = run_body(
                service,
                run,
                revision,
                publish_address=self.publish_address,
                gpu=self.facts.gpu,
                hosts_file=None if hosts_file is None else str(hosts_file),
            )
        except ValueError as exc:
            raise PermanentDriverError(f"{rid}: run failed: {exc}") from exc
        try:
            async with (
                self._networks.in_use(self.docker, service, target),
                self._hosts_for(rid.deployment, name, service, False, hosts_file is not None),
            ):
                with translated(rid, "run", missing=PermanentDriverError):
                    container = await self._engine_create(service, body, name)
        except DriverError:
            await self._networks.release(self.docker, rid.deployment)
            raise
        try:
            with translated(rid, "start"):
                await container.start()
        except DriverError:
            await self.remove_job(rid)
            raise

    async def job_status(self, run: RunId) -> RunState | None:
        info = await self._inspect_id(names.run_container_name(run))
        return observation.run_from_inspect(info) if info is not None else None

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        filters = json.dumps({"label": [names.RUN]})
        found = []
        for container in await self._containers(filters, "list runs"):
            labels = container.get("Labels") or {}
            if deployments is not None and labels.get(names.DEPLOYMENT) not in deployments:
                continue
            info = await self._inspect_id(str(container["Id"]))
            state = observation.run_from_inspect(info) if info is not None else None
            if state is not None:
                found.append(state)
        return sorted(found, key=lambda r: (r.deployment, r.service, r.run))

    async def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        name = names.run_container_name(run)
        info = await self._inspect_id(name)
        if info is None or observation.run_from_inspect(info) is None:
            raise NotFound(f"{run}: logs failed: no container {name}")
        tty = bool((info.get("Config") or {}).get("Tty"))
        async for line in log_lines(self.docker, name, run, tty=tty, follow=follow, tail=tail):
            yield line

    async def remove_job(self, run: RunId) -> None:
        try:
            with translated(run, "remove"):
                await self.docker.containers.container(names.run_container_name(run)).delete(
                    v=True, force=True
                )
        except NotFound:
            return
        await self._rewrite_hosts(run.deployment)
        await self._networks.release(self.docker, run.deployment)

    async def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        """The engine's ``die`` events of zlayer's containers. A broken stream is opened
        again after a pause; what it missed meanwhile the next observe finds."""
        filters = json.dumps({"type": ["container"], "event": ["die"], "label": [names.DEPLOYMENT]})
        while True:
            try:
                async for event in events(self.docker, filters):
                    actor = event.get("Actor")
                    labels = (actor.get("Attributes") if isinstance(actor, dict) else None) or {}
                    exited = observation.exited(labels)
                    if exited is not None:
                        yield exited
            except stream_errors() as exc:
                log.warning("docker: event stream broken (%s); opening it again", exc)
            await asyncio.sleep(2.0)

    # --- actions ------------------------------------------------------------------------

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        await self._prepare(service, target, "create")
        try:
            async with self._networks.in_use(self.docker, service, target):
                container = await self._create_container(service, replica, revision)
        except DriverError:
            await self._networks.release(self.docker, target.deployment)
            raise
        await self._start_new(target, container)

    async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
        """Remove the old container, then create the new one under the same name: a
        crash in between leaves no replica, never two.

        A replica that is already gone (removed meanwhile, or by a replace whose new
        container failed to start) is simply created, so that rolling back to the
        earlier config always has something to do."""
        target = service.workload_id(replica)
        existing = await self._managed_or_none(target, "replace")
        await self._prepare(service, target, "replace")  # pull before the old one stops
        old = self._handle(target)
        if existing is not None:
            with translated(target, "replace"):
                await old.stop()
        try:
            async with self._networks.in_use(self.docker, service, target):
                if existing is not None:
                    try:
                        with translated(target, "replace"):
                            await old.delete(v=True, force=True)
                    except NotFound:
                        pass
                container = await self._create_container(service, replica, revision)
        except DriverError:
            await self._networks.release(self.docker, target.deployment)
            raise
        await self._start_new(target, container)

    async def start(self, target: WorkloadId) -> None:
        await self._managed(target, "start")
        await self._rewrite_hosts(target.deployment)
        with translated(target, "start"):
            await self._handle(target).start()

    async def restart(self, target: WorkloadId) -> None:
        await self._managed(target, "restart")
        await self._rewrite_hosts(target.deployment)
        with translated(target, "restart"):
            await self._handle(target).restart()

    async def stop(self, target: WorkloadId) -> None:
        """Graceful: ``stop_signal``, then ``stop_grace_period`` (default 10s) to exit."""
        await self._managed(target, "stop")
        with translated(target, "stop"):
            await self._handle(target).stop()

    async def remove(self, target: WorkloadId) -> None:
        """Stop gracefully, delete the container with its anonymous volumes (named
        volumes are data and stay), and the deployment's network with its last one."""
        await self._managed(target, "remove")
        container = self._handle(target)
        with translated(target, "remove"):
            await container.stop()
            await container.delete(v=True, force=True)
        await self._rewrite_hosts(target.deployment)
        await self._networks.release(self.docker, target.deployment)

    async def register(self, service: DesiredService, revision: str) -> None:
        """The definition of a job or cron service: a container created from its config
        and never started, replaced when the definition changes."""
        target = service.workload_id(None)
        await self._prepare(service, target, "register")
        try:
            async with self._networks.in_use(self.docker, service, target):
                if await self._managed_or_none(target, "register") is not None:
                    with translated(target, "register"):
                        await self._handle(target).delete(v=True, force=True)
                await self._create_container(service, None, revision)
        except DriverError:
            await self._networks.release(self.docker, target.deployment)
            raise

    async def unregister(self, target: WorkloadId) -> None:
        if target.replica is not None:
            raise PermanentDriverError(f"{target}: unregister failed: not a definition")
        await self.remove(target)

    # --- helpers ------------------------------------------------------------------------

    def _handle(self, target: WorkloadId) -> DockerContainer:
        """The container by name, without a call (the engine accepts names for ids)."""
        return self.docker.containers.container(names.container_name(target))

    async def _containers(self, filters: str, action: str) -> list[dict[str, Any]]:
        """The engine's list entries of every container (running or not) ``filters``
        (JSON) matches."""
        listed = await self._get(
            "containers/json", {"all": "1", "filters": filters}, subject="docker", action=action
        )
        return [c for c in listed if isinstance(c, dict)]

    async def _inspect_id(
        self, container_id: str, subject: object = None, action: str = "inspect"
    ) -> dict[str, Any] | None:
        """The container's inspect document, ``None`` when there is no such container."""
        try:
            info = await self._get(
                f"containers/{container_id}/json",
                subject=container_id if subject is None else subject,
                action=action,
            )
        except NotFound:
            return None
        return info if isinstance(info, dict) else None

    async def _inspect(self, target: WorkloadId, action: str) -> dict[str, Any] | None:
        return await self._inspect_id(names.container_name(target), target, action)

    async def _managed_or_none(self, target: WorkloadId, action: str) -> dict[str, Any] | None:
        """The container of ``target``; ``Conflict`` if a container has its name but is
        not that workload (someone else's)."""
        info = await self._inspect(target, action)
        if info is None:
            return None
        workload = observation.workload_from_inspect(info, self.booted_at)
        if workload is None or workload.id != target:
            name = names.container_name(target)
            raise Conflict(
                f"{target}: {action} failed: container {name} exists but is not "
                "this zlayer workload"
            )
        return info

    async def _managed(self, target: WorkloadId, action: str) -> dict[str, Any]:
        info = await self._managed_or_none(target, action)
        if info is None:
            name = names.container_name(target)
            raise NotFound(f"{target}: {action} failed: no container {name}")
        return info

    async def _prepare(self, service: DesiredService, target: WorkloadId, action: str) -> None:
        """What a container of ``service`` needs before it can be created: its image
        (by ``pull_policy``) and its named volumes."""
        await self._images.ensure(self.docker, service, target, action)
        for name in names.named_volume_names(service):
            await ensure_volume(self.docker, target, name)

    async def create_network(self, deployment: str) -> None:
        """Docker's networks follow their containers (made by the first create, gone
        with the last remove), so plans never carry them; this is for completeness."""
        await self._networks.create(self.docker, deployment)

    async def remove_network(self, deployment: str) -> None:
        await self._networks.release(self.docker, deployment)

    async def _create_container(
        self,
        service: DesiredService,
        replica: int | None,
        revision: str,
    ) -> DockerContainer:
        """Create (not start) the container. Call inside ``self._networks.in_use``."""
        target = service.workload_id(replica)
        name = names.container_name(target)
        # A definition is never started: it needs no hosts file.
        hosts_file = self._hosts_file(target.deployment, name) if replica is not None else None
        if not takes_hosts_file(service.config):
            hosts_file = None
        try:
            body = create_body(
                service,
                replica,
                revision,
                publish_address=self.publish_address,
                gpu=self.facts.gpu,
                hosts_file=None if hosts_file is None else str(hosts_file),
                proxied=self.internal_routable,
            )
        except ValueError as exc:
            raise PermanentDriverError(f"{target}: create failed: {exc}") from exc
        replica_made = replica is not None
        mounted = hosts_file is not None
        async with self._hosts_for(target.deployment, name, service, replica_made, mounted):
            with translated(target, "create", missing=PermanentDriverError):
                return await self._engine_create(service, body, name)

    async def _engine_create(
        self, service: DesiredService, body: dict[str, Any], name: str
    ) -> DockerContainer:
        """``containers/create``, with the spec's ``platform`` as its query parameter, so
        the engine runs that variant of the image or refuses (aiodocker's ``create``
        has no way to pass it)."""
        platform = service.config.get("platform")
        if not platform:
            return await self.docker.containers.create(body, name=name)
        from aiodocker.containers import DockerContainer

        params = {"name": name, "platform": f"{platform['os']}/{platform['arch']}"}
        data = json.dumps(body, sort_keys=True).encode()
        made = await self.docker._query_json(
            "containers/create", method="POST", data=data, params=params
        )
        return DockerContainer(self.docker, id=made["Id"])

    async def _start_new(self, target: WorkloadId, container: DockerContainer) -> None:
        """Start a container just created; if the engine refuses, remove it again so
        that no half-made replica stays behind, and say why."""
        try:
            with translated(target, "start"):
                await container.start()
        except DriverError:
            try:
                with translated(target, "remove after a failed start"):
                    await container.delete(v=True, force=True)
            except DriverError as cleanup:
                log.warning("%s", cleanup)
            await self._networks.release(self.docker, target.deployment)
            raise


def boot_time() -> float | None:
    """This host's boot, epoch seconds (``btime`` of /proc/stat); None without it."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None

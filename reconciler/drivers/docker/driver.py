"""The Docker runtime: replicas as containers on one Docker engine (aiodocker).

Every container carries zlayer's labels, so what the engine reports *is* the
observed state (names, labels and translations: :mod:`.config`). Docker's
restart policy is always ``no``: zlayer supervises. Engine errors become the
project's own (:func:`.config.engine_error`), chained with ``from``, with
messages that start with the workload: ``demo/web/1: create failed: …``.

This is the only module that imports aiodocker.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits
from reconciler.drivers.docker import config as dc
from reconciler.errors import (
    Conflict,
    DriverError,
    NotFound,
    PermanentDriverError,
    TemporaryDriverError,
)
from reconciler.observed import ObservedState, RunId, RunState, Workload, WorkloadId

log = logging.getLogger(__name__)

_TIMEOUT = aiohttp.ClientTimeout(total=120, connect=10)
"""Per request; Docker's long operations (pull, stop, logs) lift ``total``."""
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)
_PULL_TIMEOUT = 900.0
_LOCAL = "127.0.0.1"


@contextmanager
def _engine(
    subject: object, action: str, *, missing: type[PermanentDriverError] = NotFound
) -> Iterator[None]:
    """Translate what the engine (or the way to it) raises into the project's errors."""
    try:
        yield
    except DockerError as exc:
        raise dc.engine_error(
            exc.status, exc.message, str(subject), action, missing=missing
        ) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = str(exc) or type(exc).__name__
        message = f"{subject}: {action} failed: no answer from the engine ({reason})"
        raise TemporaryDriverError(message, delay=5.0) from exc


def _stopped(labels: dict[str, str]) -> WorkloadId | RunId | None:
    deployment, service = labels.get(dc.DEPLOYMENT), labels.get(dc.SERVICE)
    if not deployment or not service:
        return None
    if labels.get(dc.RUN):
        return RunId(deployment, service, labels[dc.RUN])
    replica = labels.get(dc.REPLICA)
    if replica and replica.isdigit():
        return WorkloadId(deployment, service, int(replica))
    return None


async def _frames(response: aiohttp.ClientResponse, *, tty: bool) -> AsyncIterator[bytes]:
    """The payloads of a log stream: raw for a tty, else Docker's multiplexed frames
    (an 8-byte header with the stream and the length, then the bytes)."""
    if tty:
        async for chunk in response.content.iter_any():
            yield chunk
        return
    while True:
        try:
            header = await response.content.readexactly(8)
            size = int.from_bytes(header[4:8], "big")
            if size:
                yield await response.content.readexactly(size)
        except asyncio.IncompleteReadError:
            return


class DockerDriver:
    """Replicas as containers on the Docker engine at ``url`` (``None``: ``DOCKER_HOST``
    or the default socket). Public endpoints of single-replica services are published
    on ``publish_address``."""

    name = "docker"

    def __init__(self, url: str | None = None, *, publish_address: str = "0.0.0.0") -> None:
        self.url = url
        self.publish_address = publish_address
        self.facts = dc.EngineFacts()
        """What ``docker info`` said when the session opened (for :meth:`limits`)."""
        self._client: aiodocker.Docker | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._networks_ready: set[str] = set()
        """Deployments whose network this session made sure of (skips an inspect)."""
        self._network_users: collections.Counter[str] = collections.Counter()
        """Creates in flight per deployment: the network must not go meanwhile."""
        self._images_present: set[str] = set()
        """Images this session found or pulled (skips an inspect per replica)."""

    # --- session ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            client = aiodocker.Docker(url=self.url, timeout=_TIMEOUT)
        except (ValueError, AssertionError) as exc:
            # aiodocker asserts (or, under -O, raises ValueError) when no address is known.
            reason = str(exc) or "DOCKER_HOST is not set and no Docker socket was found"
            raise PermanentDriverError(f"docker: no engine to connect to: {reason}") from exc
        try:
            with _engine("docker", "connect"):
                info = await client.system.info()
        except BaseException:
            await client.close()
            raise
        self.facts = dc.EngineFacts.from_info(info)
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def docker(self) -> aiodocker.Docker:
        if self._client is None:
            raise RuntimeError("DockerDriver is used outside 'async with'")
        return self._client

    # --- reading --------------------------------------------------------------------------

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        wanted = None if deployments is None else sorted(set(deployments))
        if wanted == []:
            return ObservedState(runtime=self.name)
        filters = json.dumps(dc.deployment_filter(wanted))
        with _engine("docker", "observe"):
            containers = await self.docker.containers.list(all=True, filters=filters)
        summaries = [  # the list entries, as listed; runs of jobs are not workloads
            c._container for c in containers if dc.RUN not in (c._container.get("Labels") or {})
        ]
        if wanted is not None:
            summaries = [
                s for s in summaries if (s.get("Labels") or {}).get(dc.DEPLOYMENT) in wanted
            ]
        # The list lacks exit codes, start times and restart counts: inspect only the
        # containers whose exit code the planner reads.
        stopped = [s for s in summaries if s.get("State") in ("exited", "dead")]
        details = await asyncio.gather(*(self._inspect_id(str(s["Id"])) for s in stopped))
        inspected = {str(s["Id"]): d for s, d in zip(stopped, details, strict=True)}

        found: dict[WorkloadId, tuple[Workload, bool]] = {}
        configs: dict[str, dict[str, Any]] = {}
        for summary in summaries:
            sid = str(summary["Id"])
            if sid in inspected:
                info = inspected[sid]
                if info is None:
                    continue  # removed since the list
                workload = dc.workload_from_inspect(info)
            else:
                workload = dc.workload_from_summary(summary)
            names = summary.get("Names") or []
            if workload is None:
                log.warning("docker: container %s has malformed zlayer labels; ignored", names)
                continue
            canonical = f"/{dc.container_name(workload.id)}" in names
            if workload.id in found and (found[workload.id][1] or not canonical):
                # Keep the container whose name is the workload's own.
                log.warning(
                    "docker: %s is claimed by more than one container; %s ignored",
                    workload.id,
                    names,
                )
                continue
            found[workload.id] = (workload, canonical)
            config = dc.config_from_labels(summary.get("Labels") or {})
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
        return dc.service_limits(service, self.facts)

    async def status(self, target: WorkloadId) -> Workload | None:
        info = await self._inspect(target, "status")
        if info is None:
            return None
        workload = dc.workload_from_inspect(info)
        return workload if workload is not None and workload.id == target else None

    async def address(self, target: WorkloadId, port: int) -> tuple[str, int]:
        info = await self._managed(target, "address")
        mode = str((info.get("HostConfig") or {}).get("NetworkMode", ""))
        if mode.startswith("container:"):
            # The same network namespace as that container: its address is this one's.
            with _engine(target, "address"):
                info = await self.docker.containers.container(mode.split(":", 1)[1]).show()
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
        preferred = networks.get(dc.network_name(target.deployment)) or {}
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
        async for line in self._log_lines(dc.container_name(target), target, tty, follow, tail):
            yield line

    async def _log_lines(
        self, name: str, subject: object, tty: bool, follow: bool, tail: int | None
    ) -> AsyncGenerator[str, None]:
        count = "all" if tail is None else str(tail)
        if not follow:
            with _engine(subject, "logs"):
                chunks = await self.docker.containers.container(name).log(
                    stdout=True, stderr=True, tail=count
                )
            for line in "".join(chunks).splitlines():
                yield line
            return
        params = {"stdout": "1", "stderr": "1", "follow": "1", "tail": count}
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        with _engine(subject, "logs"):
            # aiodocker's own follow stream leaves its response open when the reader
            # stops early, so the request is made here and released for certain.
            async with self.docker._query(
                f"containers/{name}/logs", params=params, timeout=_STREAM_TIMEOUT
            ) as response:
                try:
                    async for chunk in _frames(response, tty=tty):
                        pending += decoder.decode(chunk)
                        *lines, pending = pending.split("\n")
                        for line in lines:
                            yield line.removesuffix("\r")
                finally:
                    response.close()
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    # --- runs of jobs ---------------------------------------------------------------------

    async def run_job(self, service: DesiredService, run: str, revision: str) -> None:
        """A container from the service's config, labelled as run ``run``, started once;
        no restart policy, kept after it exits (for its status and logs) until
        :meth:`remove_job`."""
        rid = RunId(service.deployment, service.name, run)
        target = service.workload_id(None)
        await self._prepare(service, target, "run")
        try:
            body = dc.run_body(
                service, run, revision, publish_address=self.publish_address, gpu=self.facts.gpu
            )
        except ValueError as exc:
            raise PermanentDriverError(f"{rid}: run failed: {exc}") from exc
        try:
            async with self._network_in_use(service, target):
                with _engine(rid, "run", missing=PermanentDriverError):
                    container = await self.docker.containers.create(
                        body, name=dc.run_container_name(rid)
                    )
        except DriverError:
            await self._release_network(rid.deployment)
            raise
        try:
            with _engine(rid, "start"):
                await container.start()
        except DriverError:
            await self.remove_job(rid)
            raise

    async def job_status(self, run: RunId) -> RunState | None:
        info = await self._inspect_id(dc.run_container_name(run))
        return dc.run_from_inspect(info) if info is not None else None

    async def job_runs(self, deployments: Collection[str] | None = None) -> list[RunState]:
        filters = json.dumps({"label": [dc.RUN]})
        with _engine("docker", "list runs"):
            listed = await self.docker.containers.list(all=True, filters=filters)
        found = []
        for container in listed:
            labels = container._container.get("Labels") or {}
            if deployments is not None and labels.get(dc.DEPLOYMENT) not in deployments:
                continue
            info = await self._inspect_id(str(container._container["Id"]))
            state = dc.run_from_inspect(info) if info is not None else None
            if state is not None:
                found.append(state)
        return sorted(found, key=lambda r: (r.deployment, r.service, r.run))

    async def job_logs(
        self, run: RunId, *, follow: bool = False, tail: int | None = None
    ) -> AsyncGenerator[str, None]:
        name = dc.run_container_name(run)
        info = await self._inspect_id(name)
        if info is None or dc.run_from_inspect(info) is None:
            raise NotFound(f"{run}: logs failed: no container {name}")
        tty = bool((info.get("Config") or {}).get("Tty"))
        async for line in self._log_lines(name, run, tty, follow, tail):
            yield line

    async def remove_job(self, run: RunId) -> None:
        try:
            with _engine(run, "remove"):
                await self.docker.containers.container(dc.run_container_name(run)).delete(
                    v=True, force=True
                )
        except NotFound:
            return
        await self._release_network(run.deployment)

    async def exits(self) -> AsyncGenerator[WorkloadId | RunId, None]:
        """The engine's ``die`` events of zlayer's containers. A broken stream is opened
        again after a pause; what it missed meanwhile the next observe finds."""
        filters = json.dumps({"type": ["container"], "event": ["die"], "label": [dc.DEPLOYMENT]})
        while True:
            try:
                async with self.docker._query(
                    "events", params={"filters": filters}, timeout=_STREAM_TIMEOUT
                ) as response:
                    try:
                        async for raw in response.content:
                            try:
                                event = json.loads(raw)
                            except ValueError:
                                continue
                            labels = (event.get("Actor") or {}).get("Attributes") or {}
                            stopped = _stopped(labels)
                            if stopped is not None:
                                yield stopped
                    finally:
                        response.close()  # as for logs: released for certain
            except (DockerError, TimeoutError, aiohttp.ClientError) as exc:
                log.warning("docker: event stream broken (%s); opening it again", exc)
            await asyncio.sleep(2.0)

    # --- actions ------------------------------------------------------------------------

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        target = service.workload_id(replica)
        await self._prepare(service, target, "create")
        try:
            async with self._network_in_use(service, target):
                container = await self._create_container(service, replica, revision)
        except DriverError:
            await self._release_network(target.deployment)
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
            with _engine(target, "replace"):
                await old.stop()
        try:
            async with self._network_in_use(service, target):
                if existing is not None:
                    try:
                        with _engine(target, "replace"):
                            await old.delete(v=True, force=True)
                    except NotFound:
                        pass
                container = await self._create_container(service, replica, revision)
        except DriverError:
            await self._release_network(target.deployment)
            raise
        await self._start_new(target, container)

    async def start(self, target: WorkloadId) -> None:
        await self._managed(target, "start")
        with _engine(target, "start"):
            await self._handle(target).start()

    async def restart(self, target: WorkloadId) -> None:
        await self._managed(target, "restart")
        with _engine(target, "restart"):
            await self._handle(target).restart()

    async def stop(self, target: WorkloadId) -> None:
        """Graceful: ``stop_signal``, then ``stop_grace_period`` (default 10s) to exit."""
        await self._managed(target, "stop")
        with _engine(target, "stop"):
            await self._handle(target).stop()

    async def remove(self, target: WorkloadId) -> None:
        """Stop gracefully, delete the container with its anonymous volumes (named
        volumes are data and stay), and the deployment's network with its last one."""
        await self._managed(target, "remove")
        container = self._handle(target)
        with _engine(target, "remove"):
            await container.stop()
            await container.delete(v=True, force=True)
        await self._release_network(target.deployment)

    async def register(self, service: DesiredService, revision: str) -> None:
        """The definition of a job or cron service: a container created from its config
        and never started, replaced when the definition changes."""
        target = service.workload_id(None)
        await self._prepare(service, target, "register")
        try:
            async with self._network_in_use(service, target):
                if await self._managed_or_none(target, "register") is not None:
                    with _engine(target, "register"):
                        await self._handle(target).delete(v=True, force=True)
                await self._create_container(service, None, revision)
        except DriverError:
            await self._release_network(target.deployment)
            raise

    async def unregister(self, target: WorkloadId) -> None:
        if target.replica is not None:
            raise PermanentDriverError(f"{target}: unregister failed: not a definition")
        await self.remove(target)

    # --- helpers ------------------------------------------------------------------------

    def _handle(self, target: WorkloadId) -> DockerContainer:
        """The container by name, without a call (the engine accepts names for ids)."""
        return self.docker.containers.container(dc.container_name(target))

    def _lock(self, deployment: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment, asyncio.Lock())

    async def _inspect_id(self, container_id: str) -> dict[str, Any] | None:
        try:
            with _engine(container_id, "inspect"):
                return await self.docker.containers.container(container_id).show()
        except NotFound:
            return None

    async def _inspect(self, target: WorkloadId, action: str) -> dict[str, Any] | None:
        try:
            with _engine(target, action):
                return await self._handle(target).show()
        except NotFound:
            return None

    async def _managed_or_none(self, target: WorkloadId, action: str) -> dict[str, Any] | None:
        """The container of ``target``; ``Conflict`` if a container has its name but is
        not that workload (someone else's)."""
        info = await self._inspect(target, action)
        if info is None:
            return None
        workload = dc.workload_from_inspect(info)
        if workload is None or workload.id != target:
            name = dc.container_name(target)
            raise Conflict(
                f"{target}: {action} failed: container {name} exists but is not "
                "this zlayer workload"
            )
        return info

    async def _managed(self, target: WorkloadId, action: str) -> dict[str, Any]:
        info = await self._managed_or_none(target, action)
        if info is None:
            name = dc.container_name(target)
            raise NotFound(f"{target}: {action} failed: no container {name}")
        return info

    async def _prepare(self, service: DesiredService, target: WorkloadId, action: str) -> None:
        """What a container of ``service`` needs before it can be created: its image
        (by ``pull_policy``) and its named volumes."""
        await self._ensure_image(service, target, action)
        for name in dc.named_volume_names(service):
            await self._ensure_volume(target, name)

    async def _ensure_image(self, service: DesiredService, target: WorkloadId, action: str) -> None:
        image = str(service.config["image"])
        policy = service.pull_policy
        if policy == "always":
            await self._pull(service, target, action)
        elif policy == "newer":
            try:
                await self._pull(service, target, action)
            except DriverError as exc:
                if not await self._image_present(image, target):
                    raise
                log.warning("%s; using the local image %s (pull_policy newer)", exc, image)
        elif image in self._images_present:
            return
        elif not await self._image_present(image, target):
            if policy == "never":
                raise PermanentDriverError(
                    f"{target}: {action} failed: image {image} is not on this host and "
                    "pull_policy is never"
                )
            await self._pull(service, target, action)
        self._images_present.add(image)

    async def _image_present(self, image: str, target: WorkloadId) -> bool:
        try:
            with _engine(target, f"inspect image {image}"):
                await self.docker.images.inspect(image)
        except NotFound:
            return False
        return True

    async def _pull(self, service: DesiredService, target: WorkloadId, action: str) -> None:
        image = str(service.config["image"])
        platform = service.config.get("platform")
        wanted = f"{platform['os']}/{platform['arch']}" if platform else None
        with _engine(target, f"{action} (pull {image})", missing=PermanentDriverError):
            async with asyncio.timeout(_PULL_TIMEOUT):
                await self.docker.images.pull(image, platform=wanted)

    async def _ensure_volume(self, target: WorkloadId, spec_name: str) -> None:
        """Named volumes are created explicitly (labelled with the deployment), so the
        engine never makes an unlabelled one, and never deleted by zlayer."""
        volumes = self.docker.volumes
        name = dc.volume_name(target.deployment, spec_name)
        try:
            with _engine(target, f"inspect volume {name}"):
                await volumes.get(name)  # type: ignore[no-untyped-call]
            return
        except NotFound:
            pass
        body = {"Name": name, "Labels": dc.volume_labels(target.deployment, spec_name)}
        try:
            with _engine(target, f"create volume {name}"):
                await volumes.create(body)  # type: ignore[no-untyped-call]
        except Conflict:
            pass  # created meanwhile

    async def create_network(self, deployment: str) -> None:
        """Docker's networks follow their containers (made by the first create, gone
        with the last remove), so plans never carry them; this is for completeness."""
        async with self._lock(deployment):
            await self._ensure_network(deployment, WorkloadId.network(deployment))
            self._networks_ready.add(deployment)

    async def remove_network(self, deployment: str) -> None:
        await self._release_network(deployment)

    async def _ensure_network(self, deployment: str, target: WorkloadId) -> None:
        """The deployment's network (call with the deployment's lock held)."""
        name = dc.network_name(deployment)
        try:
            with _engine(target, f"inspect network {name}"):
                await self.docker.networks.get(name)
            return
        except NotFound:
            pass
        body = {
            "Name": name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": {dc.DEPLOYMENT: deployment},
        }
        try:
            with _engine(target, f"create network {name}"):
                await self.docker.networks.create(body)
        except Conflict:
            pass  # another zlayer made it meanwhile: the same network

    async def _release_network(self, deployment: str) -> None:
        """Remove the deployment's network once no container of it is left. Best
        effort: a network left behind harms nothing and goes with the next remove, so
        a failure here never fails the action that called it (it is logged)."""
        name = dc.network_name(deployment)
        filters = json.dumps({"label": [f"{dc.DEPLOYMENT}={deployment}"]})
        async with self._lock(deployment):
            self._networks_ready.discard(deployment)
            if self._network_users[deployment]:
                return  # a create is under way; the last remove takes the network
            try:
                with _engine(deployment, f"remove network {name}"):
                    if await self.docker.containers.list(all=True, filters=filters, limit=1):
                        return
                    network = await self.docker.networks.get(name)
                    await network.delete()
            except NotFound:
                pass
            except DriverError as exc:
                # For example still used by a container zlayer does not manage.
                log.warning("%s", exc)

    async def _create_container(
        self,
        service: DesiredService,
        replica: int | None,
        revision: str,
    ) -> DockerContainer:
        """Create (not start) the container. Call inside :meth:`_network_in_use`."""
        target = service.workload_id(replica)
        try:
            body = dc.create_body(
                service,
                replica,
                revision,
                publish_address=self.publish_address,
                gpu=self.facts.gpu,
            )
        except ValueError as exc:
            raise PermanentDriverError(f"{target}: create failed: {exc}") from exc
        with _engine(target, "create", missing=PermanentDriverError):
            return await self.docker.containers.create(body, name=dc.container_name(target))

    @contextlib.asynccontextmanager
    async def _network_in_use(
        self, service: DesiredService, target: WorkloadId
    ) -> AsyncIterator[None]:
        """The deployment's network exists (when the service uses it) and stays while
        the block runs: :meth:`_release_network` leaves it while a block is inside.
        Creates run in parallel; only the first of a session inspects the network."""
        deployment = target.deployment
        self._network_users[deployment] += 1
        try:
            wanted = service.config.get("network_mode", "default") == "default"
            if wanted and deployment not in self._networks_ready:
                async with self._lock(deployment):
                    if deployment not in self._networks_ready:
                        await self._ensure_network(deployment, target)
                        self._networks_ready.add(deployment)
            yield
        finally:
            self._network_users[deployment] -= 1

    async def _start_new(self, target: WorkloadId, container: DockerContainer) -> None:
        """Start a container just created; if the engine refuses, remove it again so
        that no half-made replica stays behind, and say why."""
        try:
            with _engine(target, "start"):
                await container.start()
        except DriverError:
            try:
                with _engine(target, "remove after a failed start"):
                    await container.delete(v=True, force=True)
            except DriverError as cleanup:
                log.warning("%s", cleanup)
            await self._release_network(target.deployment)
            raise

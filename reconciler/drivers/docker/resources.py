"""What a container needs before it can be created: its image, its named volumes
and its deployment's network, each made sure of once per session.

Docker's networks follow their containers: the first create of a deployment makes
its network, the last remove takes it (:class:`Networks`). Named volumes are data:
created explicitly, labelled with the deployment, never deleted by zlayer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from reconciler.desired import DesiredService
from reconciler.drivers.docker.engine import translated
from reconciler.drivers.docker.labels import DEPLOYMENT, network_name, volume_labels, volume_name
from reconciler.errors import Conflict, DriverError, NotFound, PermanentDriverError
from reconciler.observed import WorkloadId

if TYPE_CHECKING:
    import aiodocker

log = logging.getLogger(__name__)

PULL_TIMEOUT = 900.0


class Images:
    """Images by ``pull_policy``; remembers those this session found or pulled (which
    skips an inspect per replica)."""

    def __init__(self) -> None:
        self.present: set[str] = set()

    async def ensure(
        self, docker: aiodocker.Docker, service: DesiredService, target: WorkloadId, action: str
    ) -> None:
        image = str(service.config["image"])
        policy = service.pull_policy
        if policy == "always":
            await _pull(docker, service, target, action)
        elif policy == "newer":
            try:
                await _pull(docker, service, target, action)
            except DriverError as exc:
                if not await _image_present(docker, image, target):
                    raise
                log.warning("%s; using the local image %s (pull_policy newer)", exc, image)
        elif image in self.present:
            return
        elif not await _image_present(docker, image, target):
            if policy == "never":
                raise PermanentDriverError(
                    f"{target}: {action} failed: image {image} is not on this host and "
                    "pull_policy is never"
                )
            await _pull(docker, service, target, action)
        self.present.add(image)


async def _image_present(docker: aiodocker.Docker, image: str, target: WorkloadId) -> bool:
    try:
        with translated(target, f"inspect image {image}"):
            await docker.images.inspect(image)
    except NotFound:
        return False
    return True


async def _pull(
    docker: aiodocker.Docker, service: DesiredService, target: WorkloadId, action: str
) -> None:
    image = str(service.config["image"])
    platform = service.config.get("platform")
    wanted = f"{platform['os']}/{platform['arch']}" if platform else None
    with translated(target, f"{action} (pull {image})", missing=PermanentDriverError):
        async with asyncio.timeout(PULL_TIMEOUT):
            await docker.images.pull(image, platform=wanted)


async def ensure_volume(docker: aiodocker.Docker, target: WorkloadId, spec_name: str) -> None:
    """Named volumes are created explicitly (labelled with the deployment), so the
    engine never makes an unlabelled one, and never deleted by zlayer."""
    volumes = docker.volumes
    name = volume_name(target.deployment, spec_name)
    try:
        with translated(target, f"inspect volume {name}"):
            await volumes.get(name)  # type: ignore[no-untyped-call]
        return
    except NotFound:
        pass
    body = {"Name": name, "Labels": volume_labels(target.deployment, spec_name)}
    try:
        with translated(target, f"create volume {name}"):
            await volumes.create(body)  # type: ignore[no-untyped-call]
    except Conflict:
        pass  # created meanwhile


class Networks:
    """Each deployment's network, with what this session knows of it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._ready: set[str] = set()
        """Deployments whose network this session made sure of (skips an inspect)."""
        self._users: collections.Counter[str] = collections.Counter()
        """Creates in flight per deployment: the network must not go meanwhile."""

    def _lock(self, deployment: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment, asyncio.Lock())

    async def create(self, docker: aiodocker.Docker, deployment: str) -> None:
        async with self._lock(deployment):
            await self._ensure(docker, deployment, WorkloadId.network(deployment))
            self._ready.add(deployment)

    async def _ensure(self, docker: aiodocker.Docker, deployment: str, target: WorkloadId) -> None:
        """The deployment's network (call with the deployment's lock held)."""
        name = network_name(deployment)
        try:
            with translated(target, f"inspect network {name}"):
                await docker.networks.get(name)
            return
        except NotFound:
            pass
        body = {
            "Name": name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": {DEPLOYMENT: deployment},
        }
        try:
            with translated(target, f"create network {name}"):
                await docker.networks.create(body)
        except Conflict:
            pass  # another zlayer made it meanwhile: the same network

    async def release(self, docker: aiodocker.Docker, deployment: str) -> None:
        """Remove the deployment's network once no container of it is left. Best
        effort: a network left behind harms nothing and goes with the next remove, so
        a failure here never fails the action that called it (it is logged)."""
        name = network_name(deployment)
        filters = json.dumps({"label": [f"{DEPLOYMENT}={deployment}"]})
        async with self._lock(deployment):
            self._ready.discard(deployment)
            if self._users[deployment]:
                return  # a create is under way; the last remove takes the network
            try:
                with translated(deployment, f"remove network {name}"):
                    if await docker.containers.list(all=True, filters=filters, limit=1):
                        return
                    network = await docker.networks.get(name)
                    await network.delete()
            except NotFound:
                pass
            except DriverError as exc:
                # For example still used by a container zlayer does not manage.
                log.warning("%s", exc)

    @contextlib.asynccontextmanager
    async def in_use(
        self, docker: aiodocker.Docker, service: DesiredService, target: WorkloadId
    ) -> AsyncIterator[None]:
        """The deployment's network exists (when the service uses it) and stays while
        the block runs: :meth:`release` leaves it while a block is inside. Creates run
        in parallel; only the first of a session inspects the network."""
        deployment = target.deployment
        self._users[deployment] += 1
        try:
            wanted = service.config.get("network_mode", "default") == "default"
            if wanted and deployment not in self._ready:
                async with self._lock(deployment):
                    if deployment not in self._ready:
                        await self._ensure(docker, deployment, target)
                        self._ready.add(deployment)
            yield
        finally:
            self._users[deployment] -= 1

"""The runtime registry: which runtimes exist, how to open one, and which one
``auto`` means on this host (Docker when an engine answers: a swarm manager's as ``swarm``;
else host processes).

Everything here is cheap to import: a runtime's driver (and its library) is imported
only when that runtime is opened.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

from reconciler.drivers.base import Driver
from reconciler.drivers.fake import FakeDriver
from reconciler.settings import Settings, default_state_dir

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def _docker(settings: Settings) -> Driver:
    from reconciler.drivers.docker import DockerDriver  # aiodocker only when asked for

    return DockerDriver(
        publish_address=settings.publish_address,
        state_dir=settings.state_dir or default_state_dir(),
    )


def _swarm(settings: Settings) -> Driver:
    from reconciler.drivers.swarm import SwarmDriver  # aiodocker only when asked for

    return SwarmDriver(
        proxy_image=settings.swarm_proxy_image, endpoint_mode=settings.swarm_endpoint_mode
    )


def _process(settings: Settings) -> Driver:
    from reconciler.drivers.process import ProcessDriver

    state_dir = settings.state_dir or default_state_dir()
    return ProcessDriver(state_dir, pool=settings.network_pool)


RUNTIMES: dict[str, Callable[[Settings], Driver]] = {
    "docker": _docker,
    "process": _process,
    "swarm": _swarm,
    "fake": lambda _settings: FakeDriver(),
}
"""Runtime name → driver factory. ``docker`` talks to the engine at ``DOCKER_HOST``
(or the default socket); ``swarm`` the services of the swarm whose manager answers
there; ``process`` runs host processes with records in the state
directory; ``fake`` is the in-memory runtime, which starts empty. ``auto`` is not a
runtime but a choice between the first two (:func:`resolve_runtime`)."""


def open_runtime(name: str, settings: Settings | None = None) -> Driver:
    return RUNTIMES[name](settings or Settings())


def docker_problem(timeout: float = 2.0) -> str | None:
    """None when a Docker engine answers ``/_ping`` at ``DOCKER_HOST`` (or the default
    socket); else what went wrong. Plain sockets: deciding costs no aiodocker import."""
    answer = _engine_get("/_ping", timeout)
    return answer if isinstance(answer, str) else None


def swarm_manager(timeout: float = 2.0) -> bool:
    """The engine at ``DOCKER_HOST`` is a manager of an active swarm (its ``/info``)."""
    answer = _engine_get("/info", timeout)
    if isinstance(answer, str):
        return False
    try:
        swarm = json.loads(answer.split(b"\r\n\r\n", 1)[1]).get("Swarm") or {}
    except (ValueError, IndexError, AttributeError):
        return False
    return swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))


def _engine_get(path: str, timeout: float) -> bytes | str:
    """The engine's whole answer to ``GET path`` (HTTP/1.0), or what went wrong."""
    url = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        if url.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(url.removeprefix("unix://"))
            except OSError:
                sock.close()
                raise
        elif url.startswith("tcp://"):
            host, _, port = url.removeprefix("tcp://").rstrip("/").rpartition(":")
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        else:
            return f"DOCKER_HOST {url} is neither unix:// nor tcp://"
        with sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except (OSError, ValueError) as exc:
        return f"no Docker engine at {url} ({getattr(exc, 'strerror', None) or exc})"
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in f"{status} ":
        return f"the Docker engine at {url} answered {status!r}"
    return answer


def resolve_runtime(name: str | None, settings: Settings) -> tuple[str, str]:
    """(the runtime to use, why): ``name`` (from ``--runtime``) or the settings' choice;
    ``auto`` picks docker when an engine answers and the process runtime otherwise."""
    if name is None:
        name = settings.runtime
        origin = "ZLAYER_RUNTIME" if os.environ.get("ZLAYER_RUNTIME") else settings.source
        if name != "auto":
            return name, f"runtime {name} from {origin}"
    elif name != "auto":
        return name, f"--runtime {name}"
    problem = docker_problem()
    if problem is None:
        url = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        if swarm_manager():
            return "swarm", f"auto: the Docker engine at {url} is a swarm manager"
        return "docker", f"auto: a Docker engine answered at {url}"
    return "process", f"auto: {problem}"

"""Where observed state comes from: a runtime, a snapshot file, or specs at a git ref.

``plan`` never acts: it reaches runtimes only through the read-only
:class:`~reconciler.drivers.base.Observer` half of a driver.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.desired import (
    CompileInputs,
    DesiredService,
    DesiredState,
    as_running,
    compile_specs,
)
from reconciler.drivers.base import Driver
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import SnapshotError
from reconciler.observed import ObservedState, load_snapshot
from reconciler.probes import init_step_problem
from reconciler.settings import Settings, default_state_dir
from reconciler.spec.load import LoadedSpec, load_sources
from reconciler.spec.problems import Problem, format_path
from reconciler.spec.yamldoc import format_bytes

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def _docker(settings: Settings) -> Driver:
    from reconciler.drivers.docker import DockerDriver  # aiodocker only when asked for

    return DockerDriver(publish_address=settings.publish_address)


def _process(settings: Settings) -> Driver:
    from reconciler.drivers.process import ProcessDriver

    state_dir = settings.state_dir or default_state_dir()
    return ProcessDriver(state_dir, pool=settings.network_pool)


RUNTIMES: dict[str, Callable[[Settings], Driver]] = {
    "docker": _docker,
    "process": _process,
    "fake": lambda _settings: FakeDriver(),
}
"""Runtime name → driver factory. ``docker`` talks to the engine at ``DOCKER_HOST``
(or the default socket); ``process`` runs host processes with records in the state
directory; ``fake`` is the in-memory runtime, which starts empty. ``auto`` is not a
runtime but a choice between the first two (:func:`resolve_runtime`)."""


def open_runtime(name: str, settings: Settings | None = None) -> Driver:
    return RUNTIMES[name](settings or Settings())


def docker_problem(timeout: float = 2.0) -> str | None:
    """None when a Docker engine answers ``/_ping`` at ``DOCKER_HOST`` (or the default
    socket); else what went wrong. Plain sockets: deciding costs no aiodocker import."""
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
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except (OSError, ValueError) as exc:
        return f"no Docker engine at {url} ({getattr(exc, 'strerror', None) or exc})"
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in f"{status} ":
        return f"the Docker engine at {url} answered {status!r}"
    return None


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
        return "docker", f"auto: a Docker engine answered at {url}"
    return "process", f"auto: {problem}"


def observe_runtime(name: str, settings: Settings | None = None) -> ObservedState:
    import asyncio

    async def observe() -> ObservedState:
        async with open_runtime(name, settings) as driver:
            return await driver.observe()

    return asyncio.run(observe())


def check_runtime(driver: Driver, desired: DesiredState) -> tuple[DesiredState, list[str]]:
    """``desired`` checked against what the runtime can do: (the state with the
    runtime's warnings added to each service's own, every error). Errors mean the
    specs cannot be applied there, so nothing may be touched."""
    errors: list[str] = []
    services = {}
    for key, service in desired.services.items():
        found, warnings = _service_limits(driver, service)
        subject = f"{key[0]}/{key[1]}"
        where = f"{service.file}: {subject}" if service.file else subject
        errors += [f"{where}: {message}" for message in found]
        services[key] = dataclasses.replace(service, warnings=service.warnings + warnings)
    return dataclasses.replace(desired, services=services), errors


def _service_limits(driver: Driver, service: DesiredService) -> tuple[list[str], tuple[str, ...]]:
    """(errors, warnings) of ``service`` on ``driver``'s runtime, without the
    ``deployment/service:`` prefix the driver may give them."""
    limits = driver.limits(service)
    subject = f"{service.deployment}/{service.name}: "
    errors = [e.removeprefix(subject) for e in limits.errors]
    errors += [
        f"init step {step.id}: {problem}"
        for step in service.policy.init
        if (problem := init_step_problem(step))
    ]
    return errors, tuple(w.removeprefix(subject) for w in limits.warnings)


class _AnyEnv(dict[str, str]):
    """Every variable set (to an empty value): for checking specs without their host."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def runtime_problems(
    name: str, specs: Sequence[LoadedSpec], settings: Settings | None = None
) -> list[Problem]:
    """What runtime ``name`` cannot run in valid ``specs``, at the services' positions.
    Needs no engine: environment and secrets are stood in for, engine facts are the
    defaults (the engine's own are checked by ``plan --runtime`` and ``apply``)."""
    driver = open_runtime(name, settings)
    inputs = CompileInputs(env=_AnyEnv(), secret_key=b"validate", secret=lambda _name: "")
    problems: list[Problem] = []
    for loaded in specs:
        desired, found = compile_specs([loaded], "validate", inputs)
        problems += found
        for (_, service_name), service in (desired.services if desired else {}).items():
            path = ("services", service_name)
            messages, _ = _service_limits(driver, service)
            problems += [
                Problem(loaded.file, loaded.mark_for(path), format_path(path), message)
                for message in messages
            ]
    return problems


def limits_message(runtime: str, errors: list[str], verb: str) -> str:
    listing = "\n  ".join(errors)
    return (
        f"the specs ask for what the {runtime} runtime cannot do; nothing was {verb}:\n  {listing}"
    )


def observe_checked(
    name: str, desired: DesiredState, settings: Settings | None = None
) -> tuple[ObservedState, DesiredState, list[str]]:
    """Observe runtime ``name`` and check ``desired`` against it (see :func:`check_runtime`)."""
    import asyncio

    async def observe() -> tuple[ObservedState, DesiredState, list[str]]:
        async with open_runtime(name, settings) as driver:
            checked, errors = check_runtime(driver, desired)
            return await driver.observe(), checked, errors

    return asyncio.run(observe())


MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
"""Largest snapshot read (64 MiB; ``$ZLAYER_MAX_SNAPSHOT_MIB`` sets another limit).
A replica takes about 0.5 KiB of a snapshot, so this is over 100,000 replicas; a
larger file is refused before it is read (parsing 111 MB took 77 s and 1.6 GB)."""

SNAPSHOT_LIMIT_ENV = "ZLAYER_MAX_SNAPSHOT_MIB"


def snapshot_limit() -> int:
    """The snapshot size limit in bytes: ``$ZLAYER_MAX_SNAPSHOT_MIB`` MiB, else
    :data:`MAX_SNAPSHOT_BYTES`."""
    raw = os.environ.get(SNAPSHOT_LIMIT_ENV, "").strip()
    if not raw:
        return MAX_SNAPSHOT_BYTES
    if not raw.isdigit() or int(raw) == 0:
        raise SnapshotError(f"${SNAPSHOT_LIMIT_ENV} is {raw!r}; give a whole number of MiB")
    return int(raw) * 1024 * 1024


def read_snapshot(path: str | Path) -> ObservedState:
    """Read and check a snapshot file; raises :class:`SnapshotError` naming the file and
    what is wrong: unreadable, larger than :func:`snapshot_limit` (never read past it),
    not the documented format, or a recorded config of the wrong shape."""
    limit = snapshot_limit()
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            too_large = stat.S_ISREG(info.st_mode) and info.st_size > limit
            data = b"" if too_large else handle.read(limit + 1)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot: {exc.strerror or exc}") from exc
    if too_large or len(data) > limit:
        raise SnapshotError(
            f"{path}: snapshot is larger than {format_bytes(limit)}; refusing to read it "
            f"(${SNAPSHOT_LIMIT_ENV} sets another limit)"
        )
    state = load_snapshot(data, str(path))
    for fingerprint_, config in state.configs.items():
        problem = _config_problem(config)
        if problem is not None:
            raise SnapshotError(
                f"{path}: not a valid zlayer-observed snapshot: configs.{fingerprint_}.{problem}"
            )
    return state


def _config_problem(config: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a recorded config, as ``field: problem``; None
    when the fields the planner reads have the shapes compiling gives them."""
    for key in ("image", "rtype", "schedule", "network_mode"):
        if key in config and not isinstance(config[key], str):
            return f"{key}: must be a string"
    env = config.get("env", {})
    if not isinstance(env, dict):
        return "env: must be an object of names to values"
    for name, value in env.items():
        if not isinstance(value, str | dict):
            return f"env.{name}: must be a string or an object (a secret's placeholder)"
    return None


def is_null_ref(ref: str) -> bool:
    """``ref`` is git's all-zero object id (40 or 64 zeros): what GitHub gives as
    ``event.before`` on a new branch, meaning "nothing before"."""
    return len(ref) in (40, 64) and ref.strip("0") == ""


def observe_ref(
    paths: Sequence[str], ref: str, inputs: CompileInputs
) -> tuple[ObservedState | None, str, list[Problem]]:
    """The state of a host running exactly the specs at ``ref``: (state, commit id,
    problems of those specs). Specs that were invalid at ``ref`` give no state. The
    all-zero ref (:func:`is_null_ref`) is an empty state: everything plans as new."""
    if is_null_ref(ref):
        return ObservedState(runtime=f"git:{ref}"), ref, []
    from reconciler.sources.git import files_at_ref  # gitpython is slow to import

    collected, commit = files_at_ref(paths, ref)
    loaded = load_sources(collected.files)
    problems = [*collected.problems, *loaded.problems]
    if problems:
        return None, commit, problems
    desired, problems = compile_specs(loaded.specs, commit, inputs)
    if desired is None:
        return None, commit, problems
    return as_running(desired, runtime=f"git:{ref}"), commit, []

"""Where observed state comes from: a runtime, a snapshot file, or specs at a git ref.

``plan`` never acts: it reaches runtimes only through the read-only
:class:`~reconciler.drivers.base.Observer` half of a driver.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

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
from reconciler.spec.load import LoadedSpec, load_sources
from reconciler.spec.problems import Problem, format_path


def _docker() -> Driver:
    from reconciler.drivers.docker import DockerDriver  # aiodocker only when asked for

    publish = os.environ.get("ZLAYER_PUBLISH_ADDRESS", "0.0.0.0")
    return DockerDriver(publish_address=publish)


RUNTIMES: dict[str, Callable[[], Driver]] = {"docker": _docker, "fake": FakeDriver}
"""Runtime name → driver factory. ``fake`` is the in-memory runtime: it starts empty.
``docker`` talks to the engine at ``DOCKER_HOST`` (or the default socket) and
publishes public endpoints on ``ZLAYER_PUBLISH_ADDRESS`` (default 0.0.0.0)."""


def open_runtime(name: str) -> Driver:
    return RUNTIMES[name]()


def observe_runtime(name: str) -> ObservedState:
    import asyncio

    async def observe() -> ObservedState:
        async with open_runtime(name) as driver:
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


def runtime_problems(name: str, specs: Sequence[LoadedSpec]) -> list[Problem]:
    """What runtime ``name`` cannot run in valid ``specs``, at the services' positions.
    Needs no engine: environment and secrets are stood in for, engine facts are the
    defaults (the engine's own are checked by ``plan --runtime`` and ``apply``)."""
    driver = open_runtime(name)
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
    name: str, desired: DesiredState
) -> tuple[ObservedState, DesiredState, list[str]]:
    """Observe runtime ``name`` and check ``desired`` against it (see :func:`check_runtime`)."""
    import asyncio

    async def observe() -> tuple[ObservedState, DesiredState, list[str]]:
        async with open_runtime(name) as driver:
            checked, errors = check_runtime(driver, desired)
            return await driver.observe(), checked, errors

    return asyncio.run(observe())


def read_snapshot(path: str | Path) -> ObservedState:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot: {exc.strerror or exc}") from exc
    return load_snapshot(data, str(path))


def observe_ref(
    paths: Sequence[str], ref: str, inputs: CompileInputs
) -> tuple[ObservedState | None, str, list[Problem]]:
    """The state of a host running exactly the specs at ``ref``: (state, commit id,
    problems of those specs). Specs that were invalid at ``ref`` give no state."""
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

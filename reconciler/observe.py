"""Where observed state comes from: a runtime, a snapshot file, or specs at a git ref.

``plan`` never acts: it reaches runtimes only through the read-only
:class:`~reconciler.drivers.base.Observer` half of a driver.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.desired import CompileInputs, as_running, compile_specs
from reconciler.drivers.base import Driver
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import SnapshotError
from reconciler.observed import ObservedState, load_snapshot
from reconciler.spec.load import load_sources
from reconciler.spec.problems import Problem


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

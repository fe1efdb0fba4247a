"""Where observed state comes from: a runtime, a snapshot file, or specs at a git ref.

``plan`` never acts: it reaches runtimes only through the read-only
:class:`~reconciler.drivers.base.Observer` half of a driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.desired import CompileInputs, as_running, compile_specs
from reconciler.drivers.base import Observer
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import SnapshotError
from reconciler.observed import ObservedState, load_snapshot
from reconciler.spec.load import load_sources
from reconciler.spec.problems import Problem

RUNTIMES: dict[str, Callable[[], Observer]] = {"fake": FakeDriver}
"""Runtime name → observer factory. ``fake`` is the in-memory runtime: it starts empty."""


def observe_runtime(name: str) -> ObservedState:
    import asyncio

    return asyncio.run(RUNTIMES[name]().observe())


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

"""Shared test helpers, the markers and the asyncio task leak check.

Markers (see pyproject.toml): ``docker`` is put on every test that uses a Docker
fixture (directly or through other fixtures, or the ``backend`` fixture's docker
parameter), ``root`` on every test that calls ``needs_root()`` itself or in one of
its fixtures; ``slow`` is written on the tests themselves. So
``pytest -m "not docker and not root and not slow"`` is the fast part alone.
"""

from __future__ import annotations

import asyncio
import inspect
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_asyncio import is_async_test

from reconciler.desired import DesiredState
from reconciler.observed import ObservedState
from reconciler.spec.load import LoadedSpec, load_text
from reconciler.spec.problems import Problem
from tests.support import MARKED

REPO = Path(__file__).resolve().parent.parent

HEADER = "version: v1\ndeployment: demo\n"


def spec_text(body: str) -> str:
    """A spec with the standard header and ``body`` (dedented) below it."""
    return HEADER + textwrap.dedent(body).lstrip("\n")


def service_text(fields: str = "", name: str = "web") -> str:
    """A spec with one service ``name`` whose extra ``fields`` are given dedented."""
    extra = textwrap.indent(textwrap.dedent(fields).strip("\n"), "    ")
    return (
        HEADER
        + f"services:\n  {name}:\n    image: {{name: nginx}}\n"
        + (extra + "\n" if extra else "")
    )


def load_ok(text: str) -> LoadedSpec:
    loaded, problems = load_text(text, "spec.yaml")
    assert problems == [], [p.render() for p in problems]
    assert loaded is not None
    return loaded


def load_bad(text: str, *, env: dict[str, str] | None = None) -> list[Problem]:
    loaded, problems = load_text(text, "spec.yaml", env=env)
    assert loaded is None
    assert problems
    return problems


def rendered(problems: list[Problem]) -> str:
    return "\n".join(p.render() for p in problems)


@pytest.fixture
def repo() -> Path:
    return REPO


def assert_runs_exactly(
    after: ObservedState, desired: DesiredState, before: ObservedState, prune: bool
) -> None:
    """The host now runs what the specs say, judged without the planner: every desired
    replica running (or restarting) with its fingerprint, every definition registered,
    and nothing else (except, with --no-prune, what was there for services that left
    the specs). ``manual`` scale keeps the replica indexes that were there; offline
    secrets make the fingerprint unknowable here, so only the status is compared. A
    replica that had completed (exit 0) with the config wanted stays so."""
    before_indexes: dict[tuple[str, str], list[int]] = {}
    completed = {}  # replicas left as they are: finished, or not restarted by policy
    for w in before.workloads:
        if w.replica is not None:
            before_indexes.setdefault((w.deployment, w.service), []).append(w.replica)
        service = desired.services.get((w.deployment, w.service))
        policy = service.policy if service is not None else None
        if policy is not None and w.completed and policy.restarts_completed:
            continue  # restart_policy always: restarted
        kept = policy is not None and policy.restart == "no" and w.status in ("exited", "dead")
        if w.completed or kept:
            completed[(w.deployment, w.service, w.replica)] = w.fingerprint
    expected: dict[tuple[str, str, int | None], tuple[str | None, str]] = {}
    for service in desired.services.values():
        fingerprint = None if service.offline_secrets else service.fingerprint
        if service.is_definition:
            expected[(*service.key, None)] = (fingerprint, "registered")
        indexes = (
            before_indexes.get(service.key, [])
            if service.replicas is None
            else range(1, service.replicas + 1)
        )
        scale = service.policy.scale
        if scale is not None and service.scaled is None:  # the count in range is kept
            indexes = range(1, scale.clamp(len(before_indexes.get(service.key, []))) + 1)
        for index in indexes:
            key = (*service.key, index)
            done = key in completed and fingerprint in (None, completed[key])
            expected[key] = (fingerprint, "exited" if done else "running")
    if not prune:
        for w in before.workloads:
            if (w.deployment, w.service) not in desired.services:
                expected[(w.deployment, w.service, w.replica)] = (w.fingerprint, w.status)
    got = {}
    for w in after.workloads:
        key = (w.deployment, w.service, w.replica)
        offline = key in expected and expected[key][0] is None
        status = "running" if w.status == "restarting" else w.status
        got[key] = (None if offline else w.fingerprint, status)
    assert got == expected


# --- markers -------------------------------------------------------------------------------------

DOCKER_FIXTURES = frozenset({"docker_url", "test_image", "deployment_name", "docker_driver"})
"""The fixtures of tests/docker_support.py that need the engine; any fixture built on
them is in a test's fixture closure too."""


def _calls_needs_root(function: Callable[..., Any]) -> bool:
    code = getattr(inspect.unwrap(function), "__code__", None)
    return code is not None and "needs_root" in (*code.co_names, *code.co_varnames)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        if DOCKER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.docker)
        fixtures = [defs[-1].func for defs in item._fixtureinfo.name2fixturedefs.values() if defs]
        if any(_calls_needs_root(f) for f in (item.function, *fixtures)):
            item.add_marker(pytest.mark.root)
        for marker, tests in MARKED.items():
            if item.get_closest_marker(marker) is not None:
                tests.add(item.nodeid)


# --- asyncio tasks left running ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest) -> None:
    """Tests running in an event loop get :func:`_asyncio_tasks_left`."""
    if is_async_test(request.node):
        request.getfixturevalue("_asyncio_tasks_left")


@pytest.fixture
async def _asyncio_tasks_left(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail the test when tasks it (or its fixtures) started are still pending once
    it and its fixtures are done, after a chance or two for them to finish; they are
    cancelled so the report names them and the loop closes cleanly. A test marked
    ``leaks_tasks(reason)`` (a known bug in the code under test) must leak instead, so
    the mark goes once the bug is fixed."""
    before = asyncio.all_tasks()
    yield
    for _ in range(2):
        await asyncio.sleep(0)  # let tasks that are about to end, end
    this = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t not in before and t is not this and not t.done()]
    known = request.node.get_closest_marker("leaks_tasks")
    if left:
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=10)
    if known is not None:
        if not left:
            pytest.fail(f"marked leaks_tasks but leaves no task: remove the mark ({known.args})")
        print(f"KNOWN TASK LEAK ({', '.join(known.args)}): {left}")
        return
    if left:
        names = "\n  ".join(repr(t) for t in left)
        pytest.fail(
            f"{len(left)} asyncio task(s) left running by the test:\n  {names}", pytrace=False
        )

"""Shared test helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from reconciler.desired import DesiredState
from reconciler.observed import ObservedState
from reconciler.spec.load import LoadedSpec, load_text
from reconciler.spec.problems import Problem

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
    secrets make the fingerprint unknowable here, so only the status is compared."""
    before_indexes: dict[tuple[str, str], list[int]] = {}
    for w in before.workloads:
        if w.replica is not None:
            before_indexes.setdefault((w.deployment, w.service), []).append(w.replica)
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
        for index in indexes:
            expected[(*service.key, index)] = (fingerprint, "running")
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

"""Shared test helpers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

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

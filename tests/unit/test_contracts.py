"""The import-linter contracts (pyproject.toml) hold on the tree and can fail: each
probe adds one forbidden import to a copy of the package, and the contract meant to
catch it must report it broken (and the untouched copy must pass)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

PROBES = [
    (
        "reconciler/daemon/loop.py",
        "import aiodocker",
        "Only the Docker and swarm drivers import aiodocker",
    ),
    ("reconciler/plan/planner.py", "import socket, time", "Pure core: no I/O"),
    ("reconciler/spec/models.py", "import os", "Pure core: no I/O"),
    ("reconciler/desired.py", "import asyncio", "Pure core: no I/O"),
    ("reconciler/executor.py", "import sqlite3", "Only the journal uses sqlite3"),
    ("reconciler/daemon/jobs.py", "import click", "Only the CLI renders"),
    ("reconciler/sources/files.py", "import git", "Only sources.git imports git"),
    (
        "reconciler/reconcile.py",
        "import subprocess",
        "Only the process runtime's firewall",
    ),
    ("reconciler/daemon/loop.py", "import watchfiles", "Only sources.watch imports watchfiles"),
    ("reconciler/desired.py", "import reconciler.executor", "Layers:"),
    (
        "reconciler/drivers/docker/__init__.py",
        "import reconciler.drivers.process",
        "Drivers are independent",
    ),
    (
        "reconciler/drivers/swarm/spec.py",
        "import reconciler.drivers.docker.labels",
        "Drivers are independent",
    ),
    ("reconciler/drivers/swarm/spec.py", "import aiodocker", "Only the Docker and swarm"),
]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail(f"lint-imports is not installed beside {sys.executable} (the lint extra)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(exe), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(
        REPO / "reconciler", root / "reconciler", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    done = lint_imports(copy_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " BROKEN" not in done.stdout and "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), PROBES)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    target = root / module
    assert target.exists(), f"probe target {module} is gone: move the probe with it"
    target.write_text(target.read_text() + f"\n{line}  # probe\n")
    done = lint_imports(root)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [row for row in done.stdout.splitlines() if row.endswith(" BROKEN")]
    assert any(row.startswith(contract) for row in broken), done.stdout

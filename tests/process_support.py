"""Fixtures and helpers for tests of the process runtime on this host.

Every test gets its own state directory and deployment name; afterwards every
workload recorded there is killed (by the process group its record names, after
checking the pid still is that process), and every namespace, veth and bridge of
the deployment is removed, pass or fail. The network parts need root: without
it, tests that need namespaces skip saying why, and fail under ``CI=true``
(``tests.support.needs_root``).

Use the fixtures from a test module with::

    pytest_plugins = ["tests.process_support"]

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.drivers.process import ProcessDriver
from reconciler.drivers.process import host as proc
from tests.support import stop_proxy

__all__ = [
    "kill_recorded",
    "process_deployment",
    "process_driver",
    "process_state",
]


def kill_recorded(state_dir: Path) -> list[int]:
    """SIGKILL every workload, job run and monitor recorded under ``state_dir`` that still is the
    recorded process; returns the pids killed."""
    killed: list[int] = []
    replicas = state_dir.glob("process/deployments/*/services/*/*/run.json")
    runs = state_dir.glob("process/deployments/*/runs/*/*/run.json")  # of jobs
    for run_file in [*replicas, *runs]:
        run = json.loads(run_file.read_text())
        for pid_key, start_key in (("pid", "start"), ("monitor_pid", "monitor_start")):
            pid, start = int(run[pid_key]), int(run[start_key])
            if proc.alive(pid, start):
                try:
                    if pid_key == "pid":
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
    proxy_pid = stop_proxy(state_dir)  # the managed HAProxy, by its pid
    if proxy_pid is not None:
        killed.append(proxy_pid)
    deadline = time.monotonic() + 10
    while any(_exists(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    return killed


def _exists(pid: int) -> bool:
    state = proc.process_state(pid)
    return state is not None and state != "Z"


def remove_networks(deployment: str) -> None:
    """Every namespace, veth and bridge of ``deployment``, found on the host (not
    from records)."""
    if os.geteuid() != 0:
        return
    from reconciler.drivers.process import netns

    found = netns.inventory()
    prefix = f"zlayer-{deployment}-"
    for name in found.namespaces:
        if name.startswith(prefix):
            service, _, replica = name.removeprefix(prefix).rpartition("-")
            netns.remove_sandbox(deployment, service, int(replica))
    netns.remove_bridge(deployment)


@pytest.fixture
def process_state(tmp_path: Path) -> Iterator[Path]:
    """A fresh state directory; whatever was started from it is killed afterwards."""
    state = tmp_path / "state"
    state.mkdir()
    try:
        yield state
    finally:
        kill_recorded(state)


@pytest.fixture
def process_deployment() -> Iterator[str]:
    """A fresh deployment name (``pt-<8 hex>``); its networks are removed afterwards."""
    name = f"pt-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        remove_networks(name)


@pytest.fixture
async def process_driver(process_state: Path) -> AsyncIterator[ProcessDriver]:
    """An open process driver on ``process_state`` with small logs, isolation when root."""
    async with ProcessDriver(process_state, log_max_bytes=64 * 1024, log_keep=2) as driver:
        yield driver

"""Resource limits for the process runtime, through the host's cgroups.

Applied: ``resources.memory`` (a hard limit), ``resources.cpu`` (a CFS quota of
that many CPUs per 100 ms period) and ``resources.pids_limit``. Each replica
that asks for any of them gets a group ``zlayer/<deployment>-<service>-<n>`` in
every hierarchy involved: the unified one under cgroup v2 (``memory.max``,
``cpu.max``, ``pids.max``), or the ``memory``, ``cpu`` and ``pids`` hierarchies
under cgroup v1 (``memory.limit_in_bytes``, ``cpu.cfs_quota_us``, ``pids.max``).
The monitor moves the workload into them before it execs, so every process the
workload starts is limited too. Needs root; where the host offers no writable
controller the driver says so in the plan instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import PermanentDriverError
from reconciler.units import memory_bytes

ROOT = Path("/sys/fs/cgroup")
GROUP = "zlayer"
PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "pids")
RESOURCE_CONTROLLER = {"memory": "memory", "cpu": "cpu", "pids_limit": "pids"}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each controller's hierarchy is: one directory for all under v2."""

    version: int
    roots: Mapping[str, Path]


def detect(root: Path = ROOT) -> tuple[Layout | None, str | None]:
    """(the layout, None) when zlayer can set limits here; else (None, why not)."""
    if os.geteuid() != 0:
        return None, "not running as root"
    controllers = root / "cgroup.controllers"
    if controllers.is_file():
        offered = set(controllers.read_text().split())
        missing = [c for c in CONTROLLERS if c not in offered]
        if missing:
            return None, f"cgroup v2 offers no {', '.join(missing)} controller"
        if not os.access(root, os.W_OK):
            return None, f"{root} is not writable"
        return Layout(2, dict.fromkeys(CONTROLLERS, root)), None
    needed = {"memory": "memory.limit_in_bytes", "cpu": "cpu.cfs_quota_us", "pids": "cgroup.procs"}
    roots: dict[str, Path] = {}
    for controller, probe in needed.items():  # (a v1 root has no pids.max, only children)
        where = root / controller
        if not (where / probe).is_file() or not os.access(where, os.W_OK):
            return None, f"no writable cgroup v1 {controller} hierarchy at {where}"
        roots[controller] = where
    for where in (root / "cpuacct", root / "cpu"):  # its own hierarchy, or with cpu
        if (where / "cpuacct.usage").is_file() and os.access(where, os.W_OK):
            roots["cpuacct"] = where
            break
    return Layout(1, roots), None


def wanted(resources: Mapping[str, Any]) -> dict[str, str]:
    """controller → the value its limit file takes, for the limits that are set."""
    out: dict[str, str] = {}
    if resources.get("memory"):
        out["memory"] = str(memory_bytes(str(resources["memory"])))
    if resources.get("cpu"):
        out["cpu"] = str(max(1000, round(float(resources["cpu"]) * PERIOD_US)))
    if resources.get("pids_limit") is not None and int(resources["pids_limit"]) > 0:
        out["pids"] = str(int(resources["pids_limit"]))
    return out


def group_name(deployment: str, service: str, replica: int) -> str:
    return f"{deployment}-{service}-{replica}"


def create(layout: Layout, name: str, resources: Mapping[str, Any]) -> list[str]:
    """Make the replica's groups with their limits; the directories the workload joins.

    Every replica gets a group, limited or not, so that its CPU and memory are
    accounted (:func:`usage`, for adaptive scaling): under v1 in the ``memory`` and
    ``cpuacct`` hierarchies as well as those of its limits."""
    limits = wanted(resources)
    try:
        if layout.version == 2:
            return [str(_create_v2(layout.roots["memory"], name, limits))]
        accounting = {"memory": "", **({"cpuacct": ""} if "cpuacct" in layout.roots else {})}
        return [
            str(_create_v1(layout, controller, name, value))
            for controller, value in {**accounting, **limits}.items()
        ]
    except OSError as exc:
        raise PermanentDriverError(f"cannot set resource limits in cgroup {name}: {exc}") from exc


def _create_v2(root: Path, name: str, limits: Mapping[str, str]) -> Path:
    parent = root / GROUP
    parent.mkdir(exist_ok=True)
    enable = " ".join(f"+{c}" for c in CONTROLLERS)
    for level in (root, parent):
        current = set((level / "cgroup.subtree_control").read_text().split())
        if not set(CONTROLLERS) <= current:
            (level / "cgroup.subtree_control").write_text(enable)
    group = parent / name
    group.mkdir(exist_ok=True)
    files = {"memory": "memory.max", "cpu": "cpu.max", "pids": "pids.max"}
    for controller, value in limits.items():
        text = f"{value} {PERIOD_US}" if controller == "cpu" else value
        (group / files[controller]).write_text(text)
    return group


def _create_v1(layout: Layout, controller: str, name: str, value: str) -> Path:
    group = layout.roots[controller] / GROUP / name
    group.mkdir(parents=True, exist_ok=True)
    if not value:
        pass  # accounting only
    elif controller == "memory":
        (group / "memory.limit_in_bytes").write_text(value)
    elif controller == "cpu":
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(value)
    else:
        (group / "pids.max").write_text(value)
    return group


def usage(layout: Layout | None, name: str) -> tuple[int, int] | None:
    """(CPU nanoseconds used, memory bytes in use without the inactive page cache) of
    the replica's group — what ``systemd-cgtop`` shows; None when it has none."""
    if layout is None:
        return None
    try:
        if layout.version == 2:
            group = layout.roots["memory"] / GROUP / name
            cpu = _keyed(group / "cpu.stat")["usage_usec"] * 1000
            memory = int((group / "memory.current").read_text())
            cache = _keyed(group / "memory.stat").get("inactive_file", 0)
        else:
            if "cpuacct" not in layout.roots:
                return None
            cpu = int((layout.roots["cpuacct"] / GROUP / name / "cpuacct.usage").read_text())
            group = layout.roots["memory"] / GROUP / name
            memory = int((group / "memory.usage_in_bytes").read_text())
            cache = _keyed(group / "memory.stat").get("total_inactive_file", 0)
    except (OSError, KeyError, ValueError):
        return None
    return cpu, memory - min(cache, memory)


def _keyed(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (``cpu.stat``, ``memory.stat``)."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def remove(layout: Layout | None, name: str) -> None:
    """Remove the replica's groups (their processes are gone; the kernel may need a
    moment to notice). Leftovers are harmless and go with the next remove."""
    if layout is None:
        return
    for root in set(layout.roots.values()):
        group = root / GROUP / name
        for _ in range(50):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                time.sleep(0.02)
        with contextlib.suppress(OSError):
            (root / GROUP).rmdir()  # only when no other replica has a group

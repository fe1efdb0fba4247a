"""What a replica's or run's files say about it now: running, exited (and how),
or dead, and whether its network is still there.

A pid alone is never trusted: it must belong to a process with the recorded start
time (read from /proc), on the same boot, so a recycled pid is not ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from reconciler.drivers.process import host, records
from reconciler.drivers.process.records import Exited, Record, Started
from reconciler.observed import RunId, RunState, Status


class State(NamedTuple):
    status: Status
    """``created`` (never launched), ``running``, ``exited`` or ``dead``."""
    exit_code: int | None
    started_at: str | None
    rebooted: bool = False
    """Dead because the host went down: its launch was on an earlier boot and it had
    not exited before."""
    oom_killed: bool = False
    """Exited because the kernel's OOM killer ended it."""


def current_started(where: Path, record: Record) -> Started | None:
    """run.json of ``record``'s current launch on this boot, else None."""
    started = records.read_started(where)
    if started is None or started.launch != record.launch or started.boot_id != host.boot_id():
        return None  # an earlier launch's, or from before a reboot
    return started


def current_exited(where: Path, record: Record) -> Exited | None:
    """exit.json of ``record``'s current launch, else None."""
    exited = records.read_exited(where)
    return exited if exited is not None and exited.launch == record.launch else None


def state(where: Path, record: Record) -> State:
    """The state of a replica or run from its monitor's files."""
    if record.launch is None:
        return State("created", None, None)
    started = current_started(where, record)
    if started is not None and started.workload_alive():
        return State("running", None, started.started_at)
    started_at = started.started_at if started else None
    exited = current_exited(where, record)
    if exited is not None:
        return State("exited", exited.code, started_at, oom_killed=exited.oom_killed)
    if started is not None and started.monitor_alive():
        return State("exited", None, started_at)  # ended a moment ago; the monitor records it
    earlier = records.read_started(where)
    if started is None and earlier is not None and earlier.launch == record.launch:
        return State("dead", None, None, rebooted=True)  # launched before this boot
    return State("dead", None, started_at)  # the monitor is gone without a word


def run_state(run: RunId, where: Path, record: Record) -> RunState:
    status, code, started, *_ = state(where, record)
    finished = None
    if status in ("exited", "dead"):
        exited = current_exited(where, record)
        finished = exited.finished_at if exited is not None else None
    return RunState(
        deployment=run.deployment,
        service=run.service,
        run=run.run,
        # exited without a code while the monitor lives: it is recording the exit now
        status="running"
        if status in ("running", "created") or (status == "exited" and code is None)
        else "exited",
        exit_code=code,
        started_at=started,
        finished_at=finished,
    )


def drift(record: Record, inventory: Any) -> str | None:
    """What of a running replica's network is gone (from :func:`.netns.inventory`)."""
    namespace = record.network.netns
    if namespace and namespace not in inventory.namespaces:
        return f"network namespace {namespace} is missing"
    if record.network.address:
        key = f"{record.deployment}/{record.service}/{record.replica}"
        if key not in inventory.ports:
            return f"its network interface on the bridge ({key}) is missing"
    return None

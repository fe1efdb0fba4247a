"""Launching and stopping a replica or run: what the monitor is told to run, the
monitor's start, and the stop that waits until the monitor has recorded the exit.

Replicas and runs of jobs are launched alike: :func:`launch_record` builds what the
monitor runs (launch.json) from the compiled service, :func:`start_monitor` hands
it over (``python -m reconciler.drivers.process.monitor``, the spec on stdin) and
:func:`wait_started` waits for the monitor's word.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from reconciler.desired import DesiredService
from reconciler.drivers.process import config as pc
from reconciler.drivers.process import host, records
from reconciler.drivers.process.records import Attachment, Exited, Launch, Record, User
from reconciler.drivers.process.status import current_exited, current_started
from reconciler.errors import PermanentDriverError

MONITOR = "reconciler.drivers.process.monitor"
"""The monitor's module, run with ``python -m``."""
POLL = 0.02
"""Seconds between looks at the monitor's files while waiting for it."""
MONITOR_GONE_WAIT = 10.0
"""How long a stop waits for the monitor to record the exit before writing it itself."""


def run_slot(run: str) -> int:
    """A number standing in for a replica index in a run's namespace, veth and cgroup
    names: far above any replica count, the same for the same run."""
    return 100_000 + int(hashlib.sha256(run.encode()).hexdigest()[:8], 16) % 900_000


def launch_record(service: DesiredService, subject: object) -> Launch:
    """What the monitor runs for ``service``: the command, its environment (clear
    values: the launch step), user, working directory and stop signal."""
    config = service.launch_config()
    command = pc.argv(config)
    if command is None:
        raise PermanentDriverError(f"{subject}: no command.entrypoint to run")
    user = pc.resolve_user(str(service.config["user"])) if "user" in service.config else None
    return Launch(
        argv=tuple(command),
        cwd=(config.get("command") or {}).get("workdir"),
        env=pc.workload_env(service.runtime_env(), user.home if user else _home()),
        user=None if user is None else User(user.uid, user.gid, user.groups),
        stop_signal=pc.stop_signal(service.config),
        scrub=tuple(sorted(v.reveal() for v in service.secrets.values())),
    )


def monitor_spec(
    launch: Launch,
    launch_id: str,
    where: Path,
    network: Attachment,
    *,
    hostname: str | None,
    cgroup: list[str],
    log: dict[str, int],
) -> dict[str, Any]:
    """The launch spec the monitor reads on stdin (checked by ``monitor.check``)."""
    return {
        **launch.to_json(),
        "launch": launch_id,
        "dir": str(where),
        "netns": network.netns,
        "hosts": network.hosts,
        "hostname": hostname,
        "cgroup": cgroup or None,
        "log": log,
    }


async def start_monitor(subject: object, spec: dict[str, Any]) -> None:
    """Start the monitor with ``spec``; returns once it has detached."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        MONITOR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate(json.dumps(spec).encode())
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        raise PermanentDriverError(f"{subject}: the monitor refused to start: {message}")


async def wait_started(subject: object, where: Path, launch_id: str, timeout: float) -> None:
    """Wait until the monitor says the workload runs, or why it could not start."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        started = records.read_started(where)
        if started is not None and started.launch == launch_id:
            return
        exited = records.read_exited(where)
        if exited is not None and exited.launch == launch_id:
            if exited.error:
                raise PermanentDriverError(f"{subject}: {exited.error}")
            return  # ran and ended already: status() says how
        await asyncio.sleep(0.01)
    trace = where / "monitor.err"
    detail = trace.read_text(errors="replace").strip() if trace.exists() else ""
    raise PermanentDriverError(
        f"{subject}: the monitor did not report within {timeout:g}s"
        + (f": {detail.splitlines()[-1]}" if detail else "")
    )


async def stop(where: Path, record: Record) -> None:
    """``stop_signal`` to the workload's process group, ``stop_grace_period`` to end,
    then SIGKILL; returns once the monitor has recorded the exit."""
    started = current_started(where, record)
    if started is None:
        return
    if not started.workload_alive():
        await _exited(where, record, started)
        return
    _signal_group(started.pid, pc.stop_signal(record.config))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + pc.stop_grace(record.config)
    while started.workload_alive() and loop.time() < deadline:
        await asyncio.sleep(POLL)
    if started.workload_alive():
        _signal_group(started.pid, signal.SIGKILL)
    await _exited(where, record, started)


async def _exited(where: Path, record: Record, started: records.Started) -> None:
    """Until exit.json of the record's launch exists; written here if the monitor is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MONITOR_GONE_WAIT
    while loop.time() < deadline:
        if current_exited(where, record) is not None:
            return
        if not started.monitor_alive():
            break
        await asyncio.sleep(POLL)
    if current_exited(where, record) is None:
        records.write_exited(
            where,
            Exited(
                launch=record.launch,
                error="the monitor ended without recording an exit",
                finished_at=host.now_iso(),
            ),
        )


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise PermanentDriverError(f"cannot signal process group {pid}: {exc}") from exc


def _home() -> str:
    return "/root" if os.geteuid() == 0 else os.path.expanduser("~")

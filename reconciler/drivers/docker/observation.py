"""A container as the engine lists or inspects it, as zlayer observes it (pure).

A container of zlayer's becomes a :class:`~reconciler.observed.Workload` (a run of a
job a :class:`~reconciler.observed.RunState`); one without zlayer's labels, or with
malformed ones, becomes ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, get_args

from reconciler.desired import routed_endpoints
from reconciler.drivers.docker.labels import (
    CONFIG,
    DEPENDS,
    DEPLOYMENT,
    FINGERPRINT,
    HOSTS,
    INTERNAL,
    MANAGED,
    PUBLISH,
    PUBLISH_PROXY,
    REPLICA,
    REVISION,
    RUN,
    SERVICE,
)
from reconciler.observed import Health, RunId, RunState, Status, Workload, WorkloadId

_HEALTH_IN_STATUS_RE = re.compile(r"\((healthy|unhealthy|health: starting)\)")
_NEVER = "0001-01-01T00:00:00Z"
_STATUSES = frozenset(get_args(Status))
_HEALTHS = frozenset(get_args(Health))


# --- observed state -------------------------------------------------------------------------------


def workload_from_summary(summary: Mapping[str, Any]) -> Workload | None:
    """A container as ``containers/json`` lists it (no exit code, start time or restart
    count there: the caller inspects exited containers). ``None`` if not zlayer's."""
    state = str(summary.get("State", ""))
    health_match = _HEALTH_IN_STATUS_RE.search(str(summary.get("Status", "")))
    health = "none"
    if health_match:
        health = health_match[1].removeprefix("health: ")
    return _workload(summary.get("Labels") or {}, state, None, None, 0, health, summary.get("Id"))


def workload_from_inspect(
    info: Mapping[str, Any], booted_at: float | None = None
) -> Workload | None:
    """A container as ``containers/<id>/json`` shows it. ``None`` if not zlayer's.
    With ``booted_at`` (the engine's host's boot, epoch seconds), a stopped container
    started before it was stopped by that host's going down: it ran until then, or it
    was marked dead when the engine came back after a crash (FinishedAt is then the
    engine's restart, after the boot, so it cannot tell)."""
    state = info.get("State") or {}
    status = str(state.get("Status", ""))
    exit_code = state.get("ExitCode") if status in ("exited", "dead") else None
    started = state.get("StartedAt")
    health = str((state.get("Health") or {}).get("Status") or "none")
    workload = _workload(
        (info.get("Config") or {}).get("Labels") or {},
        status,
        exit_code,
        None if not started or started == _NEVER else str(started),
        int(info.get("RestartCount") or 0),
        health,
        info.get("Id"),
    )
    if workload is not None and exit_code is not None and state.get("OOMKilled"):
        workload = dataclasses.replace(workload, oom_killed=True)
    began = _epoch(started)
    if workload is None or booted_at is None or began is None or exit_code is None:
        return workload
    if began < booted_at:
        return dataclasses.replace(workload, stopped_by_reboot=True)
    return workload


def _epoch(stamp: Any) -> float | None:
    """Epoch seconds of the engine's RFC 3339 time (nanoseconds cut to micro); None
    for the engine's "never" (year 1) and what does not parse."""
    text = str(stamp or "")
    if not text or text.startswith("0001-"):
        return None
    head, dot, rest = text.partition(".")
    zone = rest.lstrip("0123456789") if dot else ""
    digits = rest[: len(rest) - len(zone)][:6] if dot else ""
    try:
        moment = datetime.fromisoformat(f"{head}.{digits or '0'}{zone}".replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo else None


def _workload(
    labels: Mapping[str, str],
    state: str,
    exit_code: Any,
    started_at: str | None,
    restart_count: int,
    health: str,
    runtime_id: Any,
) -> Workload | None:
    deployment, service = labels.get(DEPLOYMENT), labels.get(SERVICE)
    fingerprint, replica_text = labels.get(FINGERPRINT), labels.get(REPLICA)
    if not deployment or not service or not fingerprint or replica_text is None:
        return None
    if replica_text == "":
        replica, status = None, "registered"
    elif replica_text.isdigit() and int(replica_text) >= 1:
        # "removing" is on its way to gone: the nearest status is dead.
        replica, status = int(replica_text), "dead" if state == "removing" else state
        if status not in _STATUSES:
            return None
    else:
        return None
    depends = tuple(d for d in labels.get(DEPENDS, "").split(",") if d)
    return Workload(
        deployment=deployment,
        service=service,
        replica=replica,
        fingerprint=fingerprint,
        revision=labels.get(REVISION) or None,
        status=status,  # type: ignore[arg-type]  # checked against _STATUSES above
        exit_code=exit_code if isinstance(exit_code, int) and replica else None,
        started_at=started_at,
        restart_count=restart_count,
        health=health if health in _HEALTHS else "none",  # type: ignore[arg-type]
        depends=depends,
        runtime_id=str(runtime_id) if runtime_id else None,
        outdated=_outdated(labels) if replica is not None else None,
    )


def _outdated(labels: Mapping[str, str]) -> str | None:
    """Why a replica is not what the driver makes now, or ``None``."""
    if labels.get(PUBLISH) == PUBLISH_PROXY:
        return None
    config = config_from_labels(labels)
    if config is None or not routed_endpoints(config):
        return None
    return (
        "its public endpoints move to the managed proxy (this container was made by an "
        "older zlayer and publishes its port itself)"
    )


def names_outdated(labels: Mapping[str, str], proxied: bool, hosts: bool) -> str | None:
    """Why a replica's names are not what the driver makes now (``proxied``: the
    managed proxy serves internal endpoints on this engine; ``hosts``: containers get
    zlayer's hosts file), or ``None``."""
    config = config_from_labels(labels)
    if config is None or str(config.get("network_mode", "default")) != "default":
        return None
    internal = bool(routed_endpoints(config, "internal"))
    made_proxied = labels.get(INTERNAL) == PUBLISH_PROXY
    if proxied and internal and not made_proxied:
        return (
            "its internal endpoints move to the managed proxy (this container was made "
            "without it: its service's name reaches it directly)"
        )
    if made_proxied and not proxied:
        return (
            "the managed proxy does not serve internal endpoints here (HAProxy is not "
            "installed): its service's name goes back to the container"
        )
    if hosts and proxied and labels.get(HOSTS) != MANAGED:
        return (
            "its /etc/hosts is the engine's, where the names of internal endpoints the "
            "managed proxy serves cannot be kept (this container was made by an older zlayer)"
        )
    return None


def config_from_labels(labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The canonical config a container was created from, or ``None`` if unreadable."""
    try:
        config = json.loads(labels.get(CONFIG, ""))
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def run_from_inspect(info: Mapping[str, Any]) -> RunState | None:
    labels = (info.get("Config") or {}).get("Labels") or {}
    if RUN not in labels or DEPLOYMENT not in labels or SERVICE not in labels:
        return None
    state = info.get("State") or {}
    running = state.get("Status") in ("created", "running", "restarting", "paused")
    finished = str(state.get("FinishedAt") or "")
    return RunState(
        deployment=labels[DEPLOYMENT],
        service=labels[SERVICE],
        run=labels[RUN],
        status="running" if running else "exited",
        exit_code=None if running else int(state.get("ExitCode", 0)),
        started_at=str(state.get("StartedAt") or "") or None,
        finished_at=None if running or finished.startswith("0001-") else finished or None,
    )


def exited(labels: Mapping[str, str]) -> WorkloadId | RunId | None:
    """The replica or run of a ``die`` event's container labels; None if not zlayer's."""
    deployment, service = labels.get(DEPLOYMENT), labels.get(SERVICE)
    if not deployment or not service:
        return None
    if labels.get(RUN):
        return RunId(deployment, service, labels[RUN])
    replica = labels.get(REPLICA)
    if replica and replica.isdigit():
        return WorkloadId(deployment, service, int(replica))
    return None


def usage(stats: Any) -> tuple[int, int] | None:
    """(CPU nanoseconds used, memory bytes in use) from the engine's stats of a running
    container; None for a stopped one (the engine gives zeros) or a malformed answer.
    Memory leaves out the inactive page cache, as ``docker stats`` does (cgroup v2
    ``inactive_file``, v1 ``total_inactive_file``)."""
    try:
        cpu = int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
        memory = stats.get("memory_stats") or {}
        used = int(memory.get("usage") or 0)
        detail = memory.get("stats") or {}
        cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
        used -= min(int(cache or 0), used)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not stats.get("pids_stats") and cpu == 0 and used == 0:
        return None
    return cpu, used

"""What the process runtime makes of a compiled service: the command line, the
environment, the user, the stop behaviour, and every field it cannot honour.

Pure apart from user and group lookups (``pwd``/``grp``, local files), so that
``validate --runtime process`` and ``plan`` can check specs without running anything.
"""

from __future__ import annotations

import dataclasses
import grp
import pwd
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits, endpoint_field_warnings
from reconciler.durations import parse_duration

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_GRACE = 10.0
LABEL_PREFIX = "zlayer."

APPLIED = frozenset(
    {
        "image", "command", "env", "user", "stop_signal", "stop_grace_period", "network_mode",
        "labels", "endpoints", "resources", "rtype", "schedule",
    }
)  # fmt: skip
"""Config keys the runtime applies (``image`` is recorded, never pulled; ``resources``
where cgroups allow). Every other key gets a warning: nothing is dropped silently."""

_UNROUTED_WHY = (
    "the proxy serves public http, https, websocket and tcp endpoints of replicas in "
    "their deployment's network; a udp endpoint, or a replica on the host's network, "
    "listens on the host itself"
)

CGROUP_RESOURCES = frozenset({"cpu", "memory", "pids_limit"})
"""The resource limits the runtime sets through cgroups; other ``resources`` keys warn."""


UNCHECKED = "not checked"
""":attr:`HostFacts.isolation` of a driver not opened on a host yet."""


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What ``limits`` may know about the host, read once when the driver opens."""

    root: bool
    isolation: str | None
    """``None`` when replicas get network namespaces; else why not ("not running as root")."""
    cgroups: str | None
    """``None`` when resource limits can be applied through cgroups; else why not."""


@dataclass(frozen=True, slots=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def argv(config: Mapping[str, Any]) -> list[str] | None:
    """``command.entrypoint`` + ``command.args``; None without an entrypoint (the image's
    own command is unknown to a runtime that does not read images)."""
    command = config.get("command") or {}
    entrypoint = command.get("entrypoint")
    if not entrypoint:
        return None
    return [str(a) for a in (*entrypoint, *(command.get("args") or ()))]


def workload_env(env: Mapping[str, str], home: str) -> dict[str, str]:
    """The spec's env over a minimal base (PATH, HOME, LANG) — never the caller's own
    environment, so a replica runs the same from a shell, the daemon or a test."""
    return {"PATH": BASE_PATH, "HOME": home, "LANG": "C.UTF-8", **env}


def stop_signal(config: Mapping[str, Any]) -> int:
    """``stop_signal`` as a number (``SIGTERM``, ``TERM``, ``15``); SIGTERM by default."""
    text = str(config.get("stop_signal") or "SIGTERM").strip().upper()
    if text.isdigit():
        number = int(text)
        if number <= 0 or number >= signal.NSIG:
            raise ValueError(f"stop_signal {text} is not a signal number")
        return number
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"stop_signal {config.get('stop_signal')!r} is not a signal") from None


def stop_grace(config: Mapping[str, Any]) -> float:
    value = config.get("stop_grace_period")
    return DEFAULT_STOP_GRACE if value is None else parse_duration(str(value)) / 1e9


def resolve_user(spec: str) -> User:
    """``user`` as ``name|uid[:group|gid]``; raises ValueError naming what is unknown."""
    name, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        uid, gid, home, login = entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_name
    except KeyError:
        if not name.isdigit():
            raise ValueError(f"user {name!r} does not exist on this host") from None
        uid, gid, home, login = int(name), int(name), "/", ""
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"group {group!r} does not exist on this host") from None
    groups: tuple[int, ...] = (gid,)
    if login:
        groups += tuple(g.gr_gid for g in grp.getgrall() if login in g.gr_mem and g.gr_gid != gid)
    return User(uid, gid, groups, home)


def network_plan(service: DesiredService, facts: HostFacts) -> str:
    """How a replica is networked: ``bridge`` (own namespace on the deployment's
    bridge), ``none`` (own namespace, loopback only) or ``host``."""
    if facts.isolation is not None:
        return "host"
    if service.network_mode == "none":
        return "none"
    return "bridge" if service.wants_network else "host"


def service_limits(service: DesiredService, facts: HostFacts) -> Limits:
    """Every field of ``service`` the process runtime cannot honour: ``errors`` stop an
    apply before anything is touched, ``warnings`` go into the plan."""
    config = service.config
    subject = f"{service.deployment}/{service.name}"
    errors: list[str] = []
    warnings: list[str] = []
    if argv(config) is None:
        errors.append(
            f"{subject}: no command.entrypoint: the process runtime runs command.entrypoint "
            "and command.args on the host and cannot read an image's own command"
        )
    for step in service.policy.init:
        if step.uses in ("init.s3_pull", "init.s3_push"):
            errors.append(
                f"{subject}: init step {step.id!r} uses {step.uses}, which the process "
                "runtime cannot run (no S3 support)"
            )
    if service.offline_secrets:
        errors.append(
            f"{subject}: env has secrets known by name only (compiled without the secrets); "
            "a process cannot be started from them"
        )
    for check in (stop_signal, stop_grace):
        try:
            check(config)
        except ValueError as exc:
            errors.append(f"{subject}: {exc}")
    if "user" in config:
        if not facts.root:
            errors.append(f"{subject}: user {config['user']} needs zlayer to run as root")
        else:
            try:
                resolve_user(str(config["user"]))
            except ValueError as exc:
                errors.append(f"{subject}: {exc}")
    for key in config.get("labels", {}):
        if str(key).startswith(LABEL_PREFIX):
            errors.append(f"{subject}: label {key!r} uses the prefix 'zlayer.', kept for zlayer")
    if service.pull_policy in ("always", "newer"):  # never/if_not_present: as here
        warnings.append(
            f"{subject}: image.pull_policy {service.pull_policy} is not applied: the process "
            "runtime runs host commands and pulls no image"
        )
    _network_limits(subject, service, facts, errors, warnings)
    warnings += endpoint_field_warnings(subject, config, _UNROUTED_WHY)
    _resource_limits(subject, config, facts, warnings)
    for key in sorted(set(config) - APPLIED):
        warnings.append(f"{subject}: {key} is not applied by the process runtime")
    return Limits(tuple(errors), tuple(warnings))


def _network_limits(
    subject: str,
    service: DesiredService,
    facts: HostFacts,
    errors: list[str],
    warnings: list[str],
) -> None:
    mode = service.network_mode
    if mode.startswith("container:"):
        errors.append(f"{subject}: network_mode {mode} needs a container engine")
        return
    if facts.isolation == UNCHECKED:
        # Not opened on a host (``validate --runtime``): judged as where zlayer runs as
        # root, as its systemd unit does; ``plan --runtime`` checks the host itself.
        facts = dataclasses.replace(facts, isolation=None)
    planned = network_plan(service, facts)
    if planned == "host" and mode != "host":
        warnings.append(
            f"{subject}: runs on the host network, not network_mode {mode}: "
            f"{facts.isolation} (network namespaces need root)"
        )
    if mode.startswith("bridge:") and planned == "bridge":
        warnings.append(
            f"{subject}: network_mode {mode}: named networks are not implemented; the replicas "
            "join their deployment's network"
        )
    if planned != "host":
        return  # public endpoints are served by the managed proxy (reconciler.routing)
    for endpoint in service.config.get("endpoints", ()):
        if endpoint.get("expose", "internal") != "public":
            continue
        dropped = [key for key in ("host", "path") if endpoint.get(key)]
        if dropped:
            warnings.append(
                f"{subject}: endpoint {endpoint.get('name')}: {' and '.join(dropped)} not "
                f"applied: replicas on the host network serve their port themselves (the "
                f"managed proxy needs network namespaces: {facts.isolation})"
            )


def _resource_limits(
    subject: str, config: Mapping[str, Any], facts: HostFacts, warnings: list[str]
) -> None:
    resources = config.get("resources", {})
    applied = sorted(k for k in resources if k in CGROUP_RESOURCES)
    if applied and facts.cgroups is not None:
        listed = ", ".join(f"resources.{k}" for k in applied)
        warnings.append(f"{subject}: {listed} not enforced: {facts.cgroups}")
    for key in sorted(set(resources) - CGROUP_RESOURCES):
        warnings.append(f"{subject}: resources.{key} is not applied by the process runtime")

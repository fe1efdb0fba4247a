"""Rules that span fields of a parsed spec.

Some are ZLayer's own (unknown dependency, duplicate endpoint, cron schedule
presence, wasm limits); the rest are zlayer's, because breaking them would
only fail later on a host: dependency cycles and self-dependencies, service
names that cannot become container or host names, replica counts no host runs,
env keys and values a process cannot receive, secret names that are no file in
the secrets directory, unknown init actions, and ``$E:`` references to
variables the environment does not set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from reconciler.errors import ScheduleError
from reconciler.graph import find_cycle
from reconciler.schedule import parse_cron
from reconciler.spec.blocks import (
    BUILTIN_INIT_ACTIONS,
    AdaptiveScale,
    FixedScale,
    WasmCapabilities,
)
from reconciler.spec.models import WASM_SERVICE_TYPES, ServiceSpec
from reconciler.spec.problems import Path
from reconciler.spec.refs import ENV_REF_RE, SECRET_REF_RE, parse_secret_ref
from reconciler.spec.refs import SECRET_NAME_RE as SECRET_NAME_RE  # re-exported
from reconciler.spec.refs import export_hint as export_hint  # re-exported

Finding = tuple[Path, str, str | None]
"""(path in the document, message, hint)"""

CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
ENV_KEY_RE = re.compile(r"[^=\s\x00-\x1f\x7f-\x9f]+")
"""What a process can receive as an env key: not empty, no ``=`` (the separator in
``KEY=VALUE``), no whitespace, no NUL or other control characters. ZLayer itself
checks nothing; ``1`` or ``a.b`` are accepted, as execve and Docker accept them."""

MAX_REPLICAS = 1000
"""Most replicas of one service (``fixed.replicas``, ``adaptive.min`` and ``max``).
Each replica is a process or container on one host; 1000 is far above what one host
runs, and far below what makes planning run out of memory (``100000000``)."""

HOST_NAME_MAX = 64
"""Linux's limit for a host name (``sethostname``), in bytes."""
MAX_SERVICE_NAME = HOST_NAME_MAX - len(f"-{MAX_REPLICAS}")
"""Longest service name (59 bytes): the process runtime names each replica's host
``<service>-<replica>``, which must fit :data:`HOST_NAME_MAX` at replica
:data:`MAX_REPLICAS`. Its other names (network namespace
``zlayer-<deployment>-<service>-<replica>``, cgroup, state directory) fit then too."""


# Capabilities each wasm service type may enable (ZLayer's per-type defaults).
_WASM_ALLOWED: dict[str, frozenset[str]] = {
    "wasm_http": frozenset({"config", "keyvalue", "logging", "http_client"}),
    "wasm_router": frozenset({"config", "keyvalue", "logging", "http_client"}),
    "wasm_plugin": frozenset(
        {"config", "keyvalue", "logging", "secrets", "metrics", "http_client", "cli", "filesystem"}
    ),
    "wasm_transformer": frozenset({"logging", "cli"}),
    "wasm_authenticator": frozenset({"config", "logging", "secrets", "http_client"}),
    "wasm_rate_limiter": frozenset({"config", "keyvalue", "logging", "metrics", "cli"}),
    "wasm_middleware": frozenset({"config", "logging", "http_client"}),
}


@dataclass(frozen=True, slots=True)
class Scope:
    """What the rules know of the deployment around a service."""

    deployment: str
    service_names: frozenset[str]


def check_services(
    deployment: str,
    services: Mapping[str, ServiceSpec],
    *,
    service_names: Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Every cross-field problem of a deployment's services, in document order.

    ``service_names``: every service the file declares, when some of them failed
    to validate and are missing from ``services`` (so depends on them still resolve).
    ``env``: when given, ``$E:NAME`` values must name a variable set in it.
    """
    scope = Scope(deployment, frozenset(services if service_names is None else service_names))
    findings: list[Finding] = []
    for name, service in services.items():
        base: Path = ("services", name)
        for check in _SERVICE_CHECKS:
            findings.extend(check(scope, name, service, base))
        if env is not None:
            findings.extend(_env_refs(service, base, env))
    findings.extend(_cycles(services))
    return findings


ServiceCheck = Callable[[Scope, str, ServiceSpec, Path], Iterator[Finding]]


def _name(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    if not CONTAINER_NAME_RE.fullmatch(name):
        yield (
            base,
            f"service name {name!r} cannot become a container name ({scope.deployment}-{name}-1)",
            "use ASCII letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    elif len(name) > MAX_SERVICE_NAME:
        yield (
            base,
            f"service name is {len(name)} characters long; at most {MAX_SERVICE_NAME} fit "
            f"a replica's host name ({name[:12]}…-{MAX_REPLICAS}, at most {HOST_NAME_MAX} bytes)",
            "choose a shorter name",
        )


def _replicas(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    scale = service.scale
    counts: list[tuple[str, int]] = []
    if isinstance(scale, FixedScale):
        counts = [("replicas", scale.replicas)]
    elif isinstance(scale, AdaptiveScale):
        counts = [("min", scale.min), ("max", scale.max)]
    for key, count in counts:
        if count > MAX_REPLICAS:
            yield (
                (*base, "scale", key),
                f"scale.{key} is {count}; a service runs at most {MAX_REPLICAS} replicas",
                None,
            )


def _env(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    yield from env_findings(service.env, (*base, "env"))
    for i, group in enumerate(service.replica_groups or ()):
        yield from env_findings(group.env, (*base, "replica_groups", i, "env"))


def env_findings(env: Mapping[str, str], base: Path) -> Iterator[Finding]:
    """Env keys and values a process cannot receive, and secret references that name
    no file of the secrets directory."""
    for key, value in env.items():
        path = (*base, key)
        if not ENV_KEY_RE.fullmatch(key):
            yield (
                path,
                f"env key {key!r} cannot be passed to a process",
                "env keys are not empty and hold no '=', whitespace or control characters",
            )
        if "\0" in value:
            yield path, f"the value of env {key} holds a NUL byte, which no process receives", None
        elif SECRET_REF_RE.fullmatch(value):
            try:
                parse_secret_ref(value)
            except ValueError as exc:
                yield (
                    path,
                    f"secret reference {value!r}: {exc}",
                    "ZLayer's forms: $S:NAME, $S:NAME/FIELD, $S:@SERVICE/NAME[/FIELD], "
                    "$S::ENV/NAME[/FIELD], $S:PROJECT:ENV/NAME[/FIELD], "
                    "$secret://ENV/NAME[/FIELD]",
                )


def _depends(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    for i, dep in enumerate(service.depends):
        path = (*base, "depends", i, "service")
        if dep.service == name:
            yield path, f"service {name!r} depends on itself", None
        elif dep.service not in scope.service_names:
            known = ", ".join(sorted(scope.service_names)) or "none"
            yield path, f"depends on unknown service {dep.service!r} (services: {known})", None


def _endpoints(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    seen: set[str] = set()
    for i, endpoint in enumerate(service.endpoints):
        if endpoint.name in seen:
            path = (*base, "endpoints", i, "name")
            yield path, f"duplicate endpoint name {endpoint.name!r}", None
        seen.add(endpoint.name)


def _schedule(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    path = (*base, "schedule")
    if service.rtype == "cron" and service.schedule is None:
        yield base, "rtype cron needs a schedule", 'add for example schedule: "0 0 * * * *"'
    elif service.schedule is not None and service.rtype != "cron":
        yield path, f"schedule is only for rtype cron (this service is {service.rtype})", None
    elif service.schedule is not None:
        try:
            parse_cron(service.schedule)
        except ScheduleError as exc:
            yield path, exc.message, exc.hint


def _init_steps(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    for i, step in enumerate(service.init.steps):
        if step.uses not in BUILTIN_INIT_ACTIONS:
            path = (*base, "init", "steps", i, "uses")
            yield (
                path,
                f"unknown init action {step.uses!r}",
                "built-in actions: " + ", ".join(BUILTIN_INIT_ACTIONS),
            )


def _wasm(scope: Scope, name: str, service: ServiceSpec, base: Path) -> Iterator[Finding]:
    wasm = service.wasm
    if wasm is None:
        return
    path = (*base, "wasm")
    if service.service_type not in WASM_SERVICE_TYPES:
        yield path, f"wasm settings need a wasm service_type (this is {service.service_type})", None
        return
    if wasm.min_instances > wasm.max_instances:
        yield (
            path,
            f"min_instances ({wasm.min_instances}) must not exceed "
            f"max_instances ({wasm.max_instances})",
            None,
        )
    if wasm.capabilities is not None:
        allowed = _WASM_ALLOWED[service.service_type]
        for cap in WasmCapabilities.model_fields:
            if getattr(wasm.capabilities, cap) and cap not in allowed:
                yield (
                    (*path, "capabilities", cap),
                    f"capability {cap} is not available to {service.service_type} services",
                    None,
                )
    has_http = any(e.protocol in ("http", "https") for e in service.endpoints)
    if service.service_type == "wasm_http" and service.endpoints and not has_http:
        yield (*base, "endpoints"), "a wasm_http service needs an http or https endpoint", None
    for i, preopen in enumerate(wasm.preopens):
        for side in ("source", "target"):
            if not getattr(preopen, side):
                yield (*path, "preopens", i, side), f"preopen {side} must not be empty", None


def _env_refs(service: ServiceSpec, base: Path, env: Mapping[str, str]) -> Iterator[Finding]:
    for key, value in service.env.items():
        match = ENV_REF_RE.fullmatch(value)
        if match and match["name"] not in env:
            yield (
                (*base, "env", key),
                f"$E:{match['name']} is not set in the environment",
                export_hint(match["name"], "before running") + ", or drop --check-env",
            )


def _cycles(services: Mapping[str, ServiceSpec]) -> Iterator[Finding]:
    edges = {
        name: [d.service for d in svc.depends if d.service != name]
        for name, svc in services.items()
    }
    cycle = find_cycle(edges)
    if cycle is not None:
        yield (
            ("services", cycle[0], "depends"),
            "dependency cycle: " + " -> ".join(cycle),
            "services must start in some order; remove one of these depends",
        )


_SERVICE_CHECKS: tuple[ServiceCheck, ...] = (
    _name,
    _replicas,
    _env,
    _depends,
    _endpoints,
    _schedule,
    _init_steps,
    _wasm,
)

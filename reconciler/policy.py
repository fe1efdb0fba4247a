"""How zlayer itself treats a service's replicas: health checks, init steps, errors (pure).

These come from the spec's ``health``, ``init``, ``errors`` and ``lifecycle`` blocks and steer
the executor; they are not part of a replica's config, so editing them never
replaces a running replica. Omitted values take ZLayer's agent defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from reconciler.autoscale import DEFAULT_COOLDOWN, ScalePolicy
from reconciler.durations import parse_duration

if TYPE_CHECKING:
    from reconciler.spec.blocks import HealthSpec
    from reconciler.spec.models import ServiceSpec

# The spec models are imported where a policy is built from a spec: the executor and
# the probes use these values without loading them.

DEFAULT_START_GRACE = 5.0
DEFAULT_INTERVAL = 10.0
DEFAULT_CHECK_TIMEOUT = 5.0
DEFAULT_STEP_TIMEOUT = 300.0
SUPPORTED_INIT_ACTIONS = frozenset({"init.wait_tcp", "init.wait_http", "init.run"})


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """A health check run by zlayer from the host against one replica.

    ``kind`` ``tcp`` connects to ``port`` (0 resolved to the first endpoint's
    target port; ``None`` when the service has no endpoint to probe, and the
    replica counts as healthy once it runs); ``http`` GETs ``url`` with a
    ``localhost``/``127.0.0.1`` host replaced by the replica's address;
    ``command`` runs ``sh -c`` on the host.
    """

    kind: Literal["tcp", "http", "command"]
    port: int | None = None
    url: str = ""
    expect_status: int = 200
    command: str = ""
    start_grace: float = DEFAULT_START_GRACE
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_CHECK_TIMEOUT
    retries: int = 3


@dataclass(frozen=True, slots=True)
class InitStep:
    """One ``init.steps`` entry: run on the host, in order, before a replica starts."""

    id: str
    uses: str
    with_: Mapping[str, Any] = field(default_factory=dict)
    retry: int = 0
    timeout: float = DEFAULT_STEP_TIMEOUT
    on_failure: str = "fail"


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    health: HealthPolicy
    init: tuple[InitStep, ...] = ()
    on_init_failure: str = "fail"
    on_panic: str = "restart"
    delete_on_exit: bool = False
    """``lifecycle.delete_on_exit``: a replica that exits is removed, not restarted."""
    restart: str = "on_failure"
    """``restart_policy.kind``: which exits are restarted — ``on_failure`` (zlayer's rule
    when the spec sets none: failures, not completions), ``always`` and
    ``unless_stopped`` (completions too), ``no`` (none)."""
    max_attempts: int | None = None
    """``restart_policy.max_attempts``: restarts in a row before the daemon gives up
    (this service's ``[backoff] give_up_after``)."""
    restart_delay: float | None = None
    """``restart_policy.delay`` in seconds: the daemon waits at least this long before
    each restart (its backoff may wait longer)."""
    scale: ScalePolicy | None = None
    """``scale: adaptive`` with a range and a target zlayer measures: the daemon's
    autoscaler owns the count within ``[min, max]``; else None (a fixed count)."""

    @property
    def restarts_completed(self) -> bool:
        return self.restart in ("always", "unless_stopped")


DEFAULT_POLICY = ServicePolicy(HealthPolicy("tcp"))
"""For services built without a spec (tests): no probe, no init steps."""


def _seconds(value: Any, default: float) -> float:
    return default if value is None else float(value.seconds)


def health_policy(spec: HealthSpec, endpoint_ports: tuple[int, ...]) -> HealthPolicy:
    from reconciler.spec.blocks import CommandCheck, HttpCheck, TcpCheck

    common: dict[str, Any] = {
        "start_grace": _seconds(spec.start_grace, DEFAULT_START_GRACE),
        "interval": _seconds(spec.interval, DEFAULT_INTERVAL),
        "timeout": _seconds(spec.timeout, DEFAULT_CHECK_TIMEOUT),
        "retries": spec.retries,
    }
    check = spec.check
    if isinstance(check, TcpCheck):
        port: int | None = check.port
        if port == 0:
            port = endpoint_ports[0] if endpoint_ports else None
        return HealthPolicy("tcp", port=port, **common)
    if isinstance(check, HttpCheck):
        return HealthPolicy("http", url=check.url, expect_status=check.expect_status, **common)
    assert isinstance(check, CommandCheck)
    return HealthPolicy("command", command=check.command, **common)


def with_timeout(value: Any) -> float | None:
    """Seconds from a ``with.timeout`` value (a number of seconds or a duration like
    ``30s``), ``None`` when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        try:
            return parse_duration(value) / 1e9
        except ValueError:
            return None
    return None


def service_policy(service: ServiceSpec) -> ServicePolicy:
    ports = tuple(e.target_port or e.port for e in service.endpoints)
    steps = []
    for step in service.init.steps:
        params = dict(step.with_)
        timeout = _seconds(step.timeout, DEFAULT_STEP_TIMEOUT)
        if "timeout" in params:
            # ``with: {timeout: 30s}`` (as ZLayer's actions take it) sets the step's
            # timeout; a value that is not a duration stays for the check to report.
            parsed = with_timeout(params["timeout"])
            if parsed is not None:
                timeout = parsed
                del params["timeout"]
        steps.append(
            InitStep(
                id=step.id,
                uses=step.uses,
                with_=params,
                retry=step.retry or 0,
                timeout=timeout,
                on_failure=step.on_failure,
            )
        )
    return ServicePolicy(
        health=health_policy(service.health, ports),
        init=tuple(steps),
        on_init_failure=service.errors.on_init_failure.action,
        on_panic=service.errors.on_panic.action,
        delete_on_exit=service.lifecycle.delete_on_exit,
        **_restart(service),
        scale=scale_policy(service),
    )


def scale_targets(service: ServiceSpec) -> dict[str, float]:
    """The ``scale.targets`` zlayer measures: ``cpu``, ``rps`` (compiling refuses it on
    a service without a routed endpoint), and ``memory`` when the replica has a
    ``resources.memory`` to be a percentage of."""
    from reconciler.spec.blocks import AdaptiveScale

    scale = service.scale
    if not isinstance(scale, AdaptiveScale):
        return {}
    found = {"cpu": scale.targets.cpu, "rps": scale.targets.rps}
    if service.resources.memory:
        found["memory"] = scale.targets.memory
    return {k: float(v) for k, v in found.items() if v is not None}


def scale_policy(service: ServiceSpec) -> ScalePolicy | None:
    from reconciler.spec.blocks import AdaptiveScale

    scale = service.scale
    if service.rtype != "service" or not isinstance(scale, AdaptiveScale):
        return None
    targets = scale_targets(service)
    if scale.max <= scale.min or not targets:
        return None
    cooldown = scale.cooldown.seconds if scale.cooldown is not None else DEFAULT_COOLDOWN
    return ScalePolicy(scale.min, scale.max, float(cooldown), targets)


def _restart(service: ServiceSpec) -> dict[str, Any]:
    policy = service.restart_policy
    if policy is None:
        return {}
    delay = with_timeout(policy.delay) if policy.delay is not None else None
    return {
        "restart": policy.kind,
        "max_attempts": policy.max_attempts,
        "restart_delay": delay,
    }

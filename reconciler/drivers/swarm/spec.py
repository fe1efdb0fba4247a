"""The Swarm service a compiled service becomes: the Engine API ``ServiceSpec`` (pure).

Names and labels follow the Docker runtime's (:mod:`reconciler.drivers.docker.labels`
documents the scheme), so that observing a swarm needs no state of zlayer's own:

* service ``<deployment>_<service>`` (``docker stack``'s convention), labelled
  ``zlayer.deployment``, ``zlayer.service``, ``zlayer.fingerprint``, ``zlayer.config``
  (canonical config JSON, sensitive values as keyed hashes only), ``zlayer.revision``
  and ``zlayer.depends``; its containers carry the deployment, service and fingerprint
  too, so every task says which spec it was made from;
* one attachable overlay network ``zlayer-<deployment>`` per deployment, on which a
  service's name resolves to its tasks (``endpoint_mode: dnsrr``, :data:`ENDPOINT_MODE`)
  or, where the kernel has IPVS, to one virtual IP (``vip``);
* sensitive env values as Swarm secrets ``<deployment>_<service>_<KEY>_<hash>``, never
  in the spec: the engine mounts each as a file :data:`SECRETS_PREFIX` ``<KEY>``, and the
  container's command is wrapped by ``/bin/sh`` exporting them before it ``exec``s
  the service's own entrypoint (so the process sees them in its environment, and
  ``docker service inspect`` shows only the secrets' names).

What a swarm cannot do with a service is :func:`limits`' business; this module only
maps what it accepts. Config values arrive with their defaults left out (see
:mod:`reconciler.desired`), so every read names its default.
"""

from __future__ import annotations

import base64
import hashlib
import math
import shlex
from collections.abc import Mapping
from typing import Any

from reconciler.desired import DesiredService, routed_endpoints
from reconciler.drivers.base import Limits
from reconciler.durations import parse_duration
from reconciler.fingerprint import canonical_json
from reconciler.plan.cluster import update_order
from reconciler.policy import HealthPolicy
from reconciler.units import memory_bytes

DEPLOYMENT = "zlayer.deployment"
SERVICE = "zlayer.service"
FINGERPRINT = "zlayer.fingerprint"
CONFIG = "zlayer.config"
REVISION = "zlayer.revision"
DEPENDS = "zlayer.depends"
PLACEMENT = "zlayer.placement"
"""On a service: canonical JSON of the spec's placement fields it was made with (they
are not part of the config: a one-host runtime places nothing)."""
RUN = "zlayer.run"
"""On the replicated-job service of one run of a job or cron service: the run's name."""
DEFINITION = "zlayer.definition"
"""On the Swarm config that records a job or cron definition: its ``rtype``."""
SECRET_KEY = "zlayer.secret"
"""On a Swarm secret: the env key it carries."""

SECRETS_PREFIX = "/run/secrets/zlayer."
"""Where a secret env value is mounted: ``/run/secrets/zlayer.<KEY>`` (Swarm names a
secret's file, flat, under ``/run/secrets``); readable inside the task only."""
ENDPOINT_MODE = "dnsrr"
"""Service names resolve to the tasks' own addresses: a VIP needs IPVS in the kernel,
which many hosts (and the test machines) lack, and the deployment's proxy is the place
for balancing public traffic anyway. Where IPVS exists a service may get ``vip``
instead (:func:`service_spec`'s ``endpoint_mode``); the proxy and the job runs always
use this one."""
ENDPOINT_MODES = ("dnsrr", "vip")

HANDLED = frozenset(
    {
        "image", "command", "env", "resources", "labels", "health", "endpoints", "scale",
        "depends", "rtype", "storage", "user", "hostname", "tty", "stop_signal",
        "stop_grace_period", "read_only_root_fs", "cap_add", "capabilities", "cap_drop",
        "restart_policy", "node_selector", "node_mode", "affinity", "platform",
        "network_mode", "lifecycle", "errors", "init", "schedule",
    }
)  # fmt: skip
"""Top-level config keys this runtime maps (or refuses in :func:`limits`); any other key
a spec sets is a warning there: never dropped without a word."""

_RESTART = {"on_failure": "on-failure", "always": "any", "unless_stopped": "any", "no": "none"}


def service_name(deployment: str, service: str) -> str:
    return f"{deployment}_{service}"


def run_service_name(deployment: str, service: str, run: str) -> str:
    return f"{deployment}_{service}_run_{run}"


def definition_name(service: DesiredService) -> str:
    """A Swarm config cannot change: a new definition is a new config."""
    return f"{service.deployment}_{service.name}_def_{service.fingerprint[-12:]}"


def network_name(deployment: str) -> str:
    return f"zlayer-{deployment}"


def secret_name(service: DesiredService, key: str, placeholder: Any) -> str:
    """Swarm secrets cannot change: a new value is a new secret (named by a hash of the
    value's keyed hash, never of the value), and the service moves to it by an update."""
    digest = hashlib.sha256(canonical_json(placeholder).encode()).hexdigest()[:12]
    return f"{service.deployment}_{service.name}_{key}_{digest}"


def secret_keys(service: DesiredService) -> list[str]:
    """The env keys whose values are secrets (sent as Swarm secrets)."""
    return sorted(str(p[1]) for p in service.secrets if len(p) == 2 and p[0] == "env")


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _health(policy: HealthPolicy) -> dict[str, Any] | None:
    """The engine's own check, run inside the task's container (Swarm counts a task as
    running only once it passes). ``None`` when the service has nothing to probe."""
    if policy.kind == "command":
        test = policy.command
    elif policy.kind == "http" and policy.url:
        test = f"wget -q -O /dev/null {shlex.quote(policy.url)}"
    elif policy.kind == "tcp" and policy.port:
        test = f"nc -z 127.0.0.1 {policy.port}"
    else:
        return None
    return {
        "Test": ["CMD-SHELL", test],
        "Interval": _ns(policy.interval),
        "Timeout": _ns(policy.timeout),
        "Retries": policy.retries,
        "StartPeriod": _ns(policy.start_grace),
    }


def _command(service: DesiredService, secrets: list[str]) -> dict[str, Any]:
    command = service.config.get("command", {})
    out: dict[str, Any] = {}
    entrypoint = command.get("entrypoint")
    args = command.get("args")
    if secrets:
        # limits() insists on an entrypoint: the image's own is not known here.
        prefix = SECRETS_PREFIX
        export = (
            f'for f in {prefix}*; do [ -f "$f" ] && export "${{f#{prefix}}}=$(cat "$f")"; '
            'done; exec "$@"'
        )
        out["Command"] = ["/bin/sh", "-c", export, "sh", *entrypoint]
        if args is not None:
            out["Args"] = list(args)
        return out
    if entrypoint is not None:
        out["Command"] = list(entrypoint)
    if args is not None:
        out["Args"] = list(args)
    return out


def _mounts(config: Mapping[str, Any], deployment: str) -> list[dict[str, Any]]:
    mounts = []
    for storage in config.get("storage", ()):
        kind = storage.get("type")
        readonly = bool(storage.get("readonly", False))
        if kind == "bind":
            mounts.append(
                {"Type": "bind", "Source": storage["source"], "Target": storage["target"],
                 "ReadOnly": readonly}
            )  # fmt: skip
        elif kind == "named":
            mounts.append(
                {"Type": "volume", "Source": f"{deployment}-{storage['name']}",
                 "Target": storage["target"], "ReadOnly": readonly,
                 "VolumeOptions": {"Labels": {DEPLOYMENT: deployment}}}
            )  # fmt: skip
        elif kind == "anonymous":
            mounts.append({"Type": "volume", "Target": storage["target"]})
        elif kind == "tmpfs":
            options: dict[str, Any] = {}
            if storage.get("size"):
                options["SizeBytes"] = memory_bytes(str(storage["size"]))
            if storage.get("mode") is not None:
                options["Mode"] = int(str(storage["mode"]), 8)
            mounts.append({"Type": "tmpfs", "Target": storage["target"], "TmpfsOptions": options})
    return mounts


def _placement(config: Mapping[str, Any], placed: Mapping[str, Any]) -> dict[str, Any]:
    selector = placed.get("node_selector") or {}
    constraints = [f"node.labels.{k}=={v}" for k, v in sorted(selector.get("labels", {}).items())]
    preferences = [
        {"Spread": {"SpreadDescriptor": f"node.labels.{k}"}}
        for k in sorted(selector.get("prefer_labels", {}))
    ]
    placement: dict[str, Any] = {}
    if constraints:
        placement["Constraints"] = constraints
    if preferences:
        placement["Preferences"] = preferences
    if placed.get("node_mode") in ("dedicated", "exclusive"):
        placement["MaxReplicas"] = 1
    platform = config.get("platform")
    if platform:
        placement["Platforms"] = [
            {"OS": platform.get("os", "linux"), "Architecture": platform.get("arch", "")}
        ]
    return placement


def _resources(config: Mapping[str, Any]) -> dict[str, Any]:
    resources = config.get("resources", {})
    limits: dict[str, Any] = {}
    if "cpu" in resources:
        limits["NanoCPUs"] = round(float(resources["cpu"]) * 1e9)
    if "memory" in resources:
        limits["MemoryBytes"] = memory_bytes(str(resources["memory"]))
    if "pids_limit" in resources:
        limits["Pids"] = int(resources["pids_limit"])
    # What the limits are is also what the scheduler reserves: a node without the room
    # gets no task, as one host would refuse to overcommit.
    reservations = {k: v for k, v in limits.items() if k != "Pids"}
    out: dict[str, Any] = {}
    if limits:
        out["Limits"] = limits
    if reservations:
        out["Reservations"] = reservations
    return out


def _restart(service: DesiredService) -> dict[str, Any]:
    policy = service.policy
    condition = _RESTART.get(policy.restart, "on-failure")
    if policy.on_panic in ("shutdown", "isolate"):
        condition = "none"  # a failed task stays as it is, as on one host
    out: dict[str, Any] = {"Condition": condition}
    if policy.restart_delay is not None:
        out["Delay"] = _ns(policy.restart_delay)
    if policy.max_attempts is not None:
        out["MaxAttempts"] = policy.max_attempts
    return out


def _ports(config: Mapping[str, Any], proxied: bool) -> list[dict[str, Any]]:
    """Public endpoints as ports published on every node that runs a task (``host``
    mode: the ingress routing mesh needs IPVS), but those the deployment's proxy
    serves (``proxied``: on every node, :func:`proxy_spec`)."""
    ports = []
    served = routed_endpoints(config) if proxied else []
    for endpoint in config.get("endpoints", ()):
        if endpoint.get("expose", "internal") != "public" or endpoint in served:
            continue
        port = int(endpoint["port"])
        ports.append(
            {
                "Protocol": "udp" if endpoint.get("protocol") == "udp" else "tcp",
                "TargetPort": int(endpoint.get("target_port") or port),
                "PublishedPort": port,
                "PublishMode": "host",
            }
        )
    return ports


def monitor_seconds(policy: HealthPolicy) -> float:
    """How long Swarm watches each updated task before it counts as a success: its
    start grace and one check interval (at least 5 s)."""
    return max(5.0, policy.start_grace + policy.interval)


def service_spec(
    service: DesiredService,
    revision: str,
    replicas: int,
    *,
    secrets: Mapping[str, str] | None = None,
    proxied: bool = False,
    endpoint_mode: str = ENDPOINT_MODE,
) -> dict[str, Any]:
    """The ``ServiceSpec`` for ``service`` with ``replicas`` tasks. ``secrets``: env key
    → the Swarm secret ID carrying its value (made by the driver first). ``proxied``:
    the deployment's proxy serves its public endpoints, so it publishes no port of
    theirs itself. ``endpoint_mode``: how its name resolves on the overlay
    (:data:`ENDPOINT_MODES`)."""
    config = service.config
    deployment = service.deployment
    keys = secret_keys(service)
    own_labels = {str(k): str(v) for k, v in service.launch_config().get("labels", {}).items()}
    identity = {DEPLOYMENT: deployment, SERVICE: service.name, FINGERPRINT: service.fingerprint}
    env = service.launch_config().get("env", {})
    container: dict[str, Any] = {
        "Image": str(config["image"]),
        "Labels": {**own_labels, **identity},
        "Env": [f"{k}={v}" for k, v in sorted(env.items()) if k not in keys],
        **_command(service, keys),
    }
    optional = {
        "User": config.get("user"),
        "Hostname": config.get("hostname"),
        "Dir": config.get("command", {}).get("workdir"),
        "StopSignal": config.get("stop_signal"),
    }
    container.update({k: v for k, v in optional.items() if v is not None})
    if config.get("tty"):
        container["TTY"] = True
    if config.get("read_only_root_fs"):
        container["ReadOnly"] = True
    if config.get("stop_grace_period") is not None:
        grace = math.ceil(parse_duration(str(config["stop_grace_period"])) / 1e9)
        container["StopGracePeriod"] = _ns(grace)
    caps_add = [*config.get("cap_add", ()), *config.get("capabilities", ())]
    if caps_add:
        container["CapabilityAdd"] = sorted(set(caps_add))
    if config.get("cap_drop"):
        container["CapabilityDrop"] = list(config["cap_drop"])
    health = _health(service.policy.health)
    if health is not None:
        container["Healthcheck"] = health
    mounts = _mounts(config, deployment)
    if mounts:
        container["Mounts"] = mounts
    if keys:
        ids = secrets or {}
        container["Secrets"] = [
            {
                "SecretID": ids.get(key, ""),
                "SecretName": secret_name(service, key, config["env"][key]),
                "File": {"Name": f"zlayer.{key}", "UID": "0", "GID": "0", "Mode": 0o444},
            }
            for key in keys
        ]
    order = update_order(service, proxied)
    monitor = _ns(monitor_seconds(service.policy.health))
    spec: dict[str, Any] = {
        "Name": service_name(deployment, service.name),
        "Labels": {
            **own_labels,
            **identity,
            CONFIG: canonical_json(config),
            PLACEMENT: canonical_json(dict(service.placement)),
            REVISION: revision,
            DEPENDS: ",".join(d.service for d in service.depends),
        },
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": _resources(config),
            "RestartPolicy": _restart(service),
            "Placement": _placement(config, service.placement),
            "Networks": [{"Target": network_name(deployment), "Aliases": [service.name]}],
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "UpdateConfig": {
            "Parallelism": 1,
            "Order": order,
            "FailureAction": "rollback",
            "Monitor": monitor,
            "MaxFailureRatio": 0,
        },
        "RollbackConfig": {
            "Parallelism": 1,
            "Order": order,
            "FailureAction": "pause",
            "Monitor": monitor,
        },
        "EndpointSpec": {"Mode": endpoint_mode, "Ports": _ports(config, proxied)},
    }
    return spec


def limits(
    service: DesiredService, proxied: bool = False, endpoint_mode: str = ENDPOINT_MODE
) -> Limits:
    """What the swarm runtime refuses (errors) or does not apply (warnings), per field,
    and what it chose (notes: how the service's name resolves); ``proxied``: public
    endpoints are served by the deployment's proxy."""
    subject = f"{service.deployment}/{service.name}"
    config = service.config
    errors: list[str] = []
    warnings: list[str] = []
    mode = service.network_mode
    if service.name == PROXY_SERVICE:
        errors.append(f"{subject}: the name {PROXY_SERVICE} is the deployment's proxy's")
    if not service.wants_network:
        errors.append(f"{subject}: network_mode {mode} is not available to Swarm services")
    keys = secret_keys(service)
    if keys and config.get("command", {}).get("entrypoint") is None:
        errors.append(
            f"{subject}: env {', '.join(keys)} hold secrets, which reach a Swarm task as "
            "files its command exports: set command.entrypoint (the image's own is not "
            "known to zlayer)"
        )
    for storage in config.get("storage", ()):
        if storage.get("type") == "s3":
            errors.append(f"{subject}: storage type s3 is not available on the swarm runtime")
        elif storage.get("type") == "named":
            warnings.append(
                f"{subject}: storage {storage.get('name')}: a named volume is per node; "
                "a task rescheduled to another node starts with an empty one"
            )
    if service.policy.init:
        errors.append(f"{subject}: init steps are not run on the swarm runtime")
    policy = service.policy.health
    if policy.kind == "tcp" and policy.port:
        warnings.append(f"{subject}: health tcp runs `nc -z` inside the task: the image needs nc")
    elif policy.kind == "http":
        warnings.append(
            f"{subject}: health http runs `wget` inside the task: the image needs wget, "
            f"and any 2xx/3xx answer passes (expect_status {policy.expect_status} not checked)"
        )
    elif policy.kind == "command":
        warnings.append(f"{subject}: health command runs inside the task, not on the host")
    served = routed_endpoints(config) if proxied else []
    for endpoint in config.get("endpoints", ()):
        name = endpoint.get("name")
        if endpoint in served and endpoint.get("protocol") == "https":
            errors.append(
                f"{subject}: endpoint {name}: https is not served by the swarm's proxy yet "
                "(its certificate would have to reach every node): use tcp to pass TLS "
                "through to the tasks"
            )
        for key in ("host", "path", "stream", "tunnel", "target_role"):
            if key in endpoint and (endpoint not in served or key not in ("host", "path")):
                routing = key in ("host", "path") and not proxied
                why = (
                    "no proxy on this swarm: [swarm] proxy_image is empty"
                    if routing
                    else ("not routed by zlayer")
                )
                warnings.append(
                    f"{subject}: endpoint {name}: {key} not applied on the swarm runtime ({why})"
                )
    if not proxied:
        warnings += [
            f"{subject}: endpoint {e.get('name')}: served only on the nodes that run a task "
            "of it (a host-mode port; no proxy on this swarm: [swarm] proxy_image is empty)"
            for e in routed_endpoints(config)
        ]
    placed = service.placement
    if placed.get("affinity") not in (None, "spread"):
        warnings.append(f"{subject}: affinity {placed.get('affinity')} not applied (Swarm spreads)")
    if placed.get("node_mode") == "exclusive":
        warnings.append(
            f"{subject}: node_mode exclusive applied as one task per node (other services "
            "may share the node)"
        )
    if service.policy.scale is not None:
        warnings.append(
            f"{subject}: adaptive scaling is not run on the swarm runtime: it keeps "
            "the range's minimum"
        )
    if service.policy.delete_on_exit:
        warnings.append(f"{subject}: lifecycle.delete_on_exit not applied (Swarm keeps tasks)")
    for key in sorted(set(config) - HANDLED):
        warnings.append(f"{subject}: {key} not applied on the swarm runtime")
    return Limits(tuple(errors), tuple(warnings), _resolution(service, endpoint_mode))


def _resolution(service: DesiredService, endpoint_mode: str) -> tuple[str, ...]:
    """How the name of a service with internal endpoints resolves on the overlay."""
    internal = [
        str(e.get("name"))
        for e in service.config.get("endpoints", ())
        if e.get("expose", "internal") == "internal"
    ]
    if not internal:
        return ()
    if endpoint_mode == "vip":
        how = "one virtual IP, balanced over its tasks by IPVS (endpoint_mode vip)"
    else:
        how = "each task's own address (endpoint_mode dnsrr: no IPVS for a virtual IP)"
    return (f"internal endpoints {', '.join(internal)}: {service.name} resolves to {how}",)


def run_spec(
    service: DesiredService, run: str, revision: str, *, secrets: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``replicated-job`` service of run ``run`` of a job or cron service: one task
    to completion, never restarted, no ports (a run serves nothing), kept after it
    ends (for its status and logs) until the run is removed."""
    spec = service_spec(service, revision, 0, secrets=secrets)
    spec["Name"] = run_service_name(service.deployment, service.name, run)
    spec["Labels"][RUN] = run
    spec["TaskTemplate"]["ContainerSpec"]["Labels"][RUN] = run
    spec["TaskTemplate"]["RestartPolicy"] = {"Condition": "none"}
    spec["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    spec["EndpointSpec"] = {"Mode": ENDPOINT_MODE}
    for key in ("UpdateConfig", "RollbackConfig"):
        spec.pop(key)
    return spec


def definition_spec(service: DesiredService, revision: str) -> dict[str, Any]:
    """The Swarm config that records a job or cron definition: its labels are what
    observation reads (its data, the redacted config, is for people)."""
    config = canonical_json(service.config)
    return {
        "Name": definition_name(service),
        "Labels": {
            DEPLOYMENT: service.deployment,
            SERVICE: service.name,
            FINGERPRINT: service.fingerprint,
            CONFIG: config,
            REVISION: revision,
            DEFINITION: service.rtype,
        },
        "Data": base64.b64encode(config.encode()).decode(),
    }


# --- the deployment's proxy ------------------------------------------------------------

PROXY = "zlayer.proxy"
"""On a deployment's proxy service and its Swarm configs: the digest of the HAProxy
configuration it runs (the service has no ``zlayer.service`` label: it is no service
of the specs, and observation of services leaves it out)."""
ROUTES = "zlayer.routes"
"""On the proxy service: the routed services (JSON) its configuration was made from,
the routes observation reports."""
PROXY_SERVICE = "zlayer-proxy"
"""The proxy's service name in its deployment (a spec service may not take it)."""
PROXY_CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
"""Where the configuration is mounted: where HAProxy's official image looks."""
NAMESERVER = "127.0.0.11:53"
"""The engine's DNS inside every task: ``tasks.<service>`` lists the running tasks."""


def proxy_name(deployment: str) -> str:
    return service_name(deployment, PROXY_SERVICE)


def proxy_config_name(deployment: str, digest: str) -> str:
    """A Swarm config is immutable: each configuration is a config of its own."""
    return f"zlayer-proxy.{deployment}.{digest[:16]}"


def discovery_name(deployment: str, service: str) -> str:
    return f"tasks.{service_name(deployment, service)}"


def server_slots(replicas: int | None) -> int:
    """How many servers a backend may find in DNS: room for twice the replicas (an
    update rolling start-first runs one more), at least 10, so a scale within that
    needs no new configuration."""
    return max(10, 2 * (replicas or 0))


def proxy_spec(
    deployment: str,
    image: str,
    config: tuple[str, str],
    digest: str,
    routes: str,
    ports: list[int],
) -> dict[str, Any]:
    """The ``ServiceSpec`` of ``deployment``'s proxy: HAProxy in ``image`` as a global
    service (one task per node) on the deployment's network, publishing ``ports`` on
    every node (``host`` mode), with ``config`` (Swarm config ID, name) as its
    configuration. It rolls ``stop-first`` (a node's port is held by one task), one
    node at a time."""
    config_id, config_name = config
    monitor = _ns(5)
    labels = {DEPLOYMENT: deployment, PROXY: digest}
    return {
        "Name": proxy_name(deployment),
        "Labels": {**labels, ROUTES: routes},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Labels": labels,
                "Command": ["haproxy", "-W", "-db", "-f", PROXY_CONFIG_PATH],
                "User": "root",  # to bind ports below 1024 (the official image's is not)
                "StopGracePeriod": _ns(5),
                "Configs": [
                    {
                        "ConfigID": config_id,
                        "ConfigName": config_name,
                        "File": {"Name": PROXY_CONFIG_PATH, "UID": "0", "GID": "0", "Mode": 0o444},
                    }
                ],
            },
            "RestartPolicy": {"Condition": "any", "Delay": _ns(1)},
            "Networks": [{"Target": network_name(deployment)}],
        },
        "Mode": {"Global": {}},
        "UpdateConfig": {
            "Parallelism": 1, "Order": "stop-first", "FailureAction": "rollback",
            "Monitor": monitor,
        },
        "RollbackConfig": {"Parallelism": 1, "Order": "stop-first", "Monitor": monitor},
        "EndpointSpec": {
            "Mode": ENDPOINT_MODE,
            "Ports": [
                {"Protocol": "tcp", "TargetPort": p, "PublishedPort": p, "PublishMode": "host"}
                for p in sorted(set(ports))
            ],
        },
    }  # fmt: skip


def proxy_config_spec(deployment: str, digest: str, text: str) -> dict[str, Any]:
    return {
        "Name": proxy_config_name(deployment, digest),
        "Labels": {DEPLOYMENT: deployment, PROXY: digest},
        "Data": base64.b64encode(text.encode()).decode(),
    }

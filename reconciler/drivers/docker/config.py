"""The Docker driver's translations, without an engine (pure).

A compiled service config becomes a Docker Engine API ``containers/create``
body; a container as the engine lists or inspects it becomes a
:class:`~reconciler.observed.Workload`; a service's fields that Docker cannot
honour become :class:`~reconciler.drivers.base.Limits`. Only
:mod:`reconciler.drivers.docker.driver` talks to the engine.

Names and labels (the runtime is the source of truth; see ARCHITECTURE.md):

* container ``<deployment>-<service>-<n>`` for replica ``n``; a job or cron
  definition is a created, never started container ``<deployment>-<service>``;
* network ``zlayer-<deployment>``, one per deployment, with the service name as
  each replica's alias;
* named volume ``<deployment>-<name>`` (labels ``zlayer.deployment`` and
  ``zlayer.volume``); it is data and outlives every container;
* labels on every container: ``zlayer.deployment``, ``zlayer.service``,
  ``zlayer.replica`` (empty for definitions), ``zlayer.fingerprint``,
  ``zlayer.config`` (canonical config JSON: secrets only as keyed hashes),
  ``zlayer.revision`` and ``zlayer.depends`` (comma-joined service names), over
  the spec's own ``labels``.

Config values arrive with their defaults left out (see
:mod:`reconciler.desired`), so every read here names its default.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from reconciler.desired import DesiredService
from reconciler.drivers.base import Limits
from reconciler.errors import (
    Conflict,
    DriverError,
    NotFound,
    PermanentDriverError,
    TemporaryDriverError,
)
from reconciler.fingerprint import canonical_json
from reconciler.observed import Health, RunId, RunState, Status, Workload, WorkloadId
from reconciler.spec.scalars import parse_duration

LABEL_PREFIX = "zlayer."
DEPLOYMENT = "zlayer.deployment"
SERVICE = "zlayer.service"
REPLICA = "zlayer.replica"
FINGERPRINT = "zlayer.fingerprint"
CONFIG = "zlayer.config"
REVISION = "zlayer.revision"
DEPENDS = "zlayer.depends"
VOLUME = "zlayer.volume"
"""On named volumes: the volume's name in the spec."""

VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]+")
_SIZE_RE = re.compile(r"\+?([0-9]+)\s*([KMGT]i?|[kmgt]|[KMGT]?B|b)?")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "B": 1,
    "k": 1024,
    "K": 1024,
    "Ki": 1024,
    "KB": 1024,
    "m": 1024**2,
    "M": 1024**2,
    "Mi": 1024**2,
    "MB": 1024**2,
    "g": 1024**3,
    "G": 1024**3,
    "Gi": 1024**3,
    "GB": 1024**3,
    "t": 1024**4,
    "T": 1024**4,
    "Ti": 1024**4,
    "TB": 1024**4,
}
_HEALTH_IN_STATUS_RE = re.compile(r"\((healthy|unhealthy|health: starting)\)")
_NEVER = "0001-01-01T00:00:00Z"
_STATUSES = frozenset(get_args(Status))
_HEALTHS = frozenset(get_args(Health))
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_GPU_FIELDS_APPLIED = frozenset({"count", "vendor"})
KNOWN_KEYS = frozenset(
    {
        # applied to the container
        "image", "command", "env", "resources", "endpoints", "port_mappings", "expose",
        "storage", "devices", "capabilities", "cap_drop", "privileged", "hostname", "dns",
        "extra_hosts", "labels", "user", "stop_signal", "stop_grace_period", "sysctls",
        "ulimits", "security_opt", "pid_mode", "ipc_mode", "network_mode", "extra_groups",
        "read_only_root_fs", "init_container", "tty", "stdin_open", "userns_mode",
        "cgroup_parent", "logs", "platform",
        # zlayer's own (the definition's kind and cron schedule)
        "rtype", "schedule",
        # not applied: ``service_limits`` warns
        "network", "overlay", "restart_policy", "service_type", "wasm", "isolation",
        "localhost_reachability",
    }
)  # fmt: skip
"""Every config key the driver applies or warns about; any other key is warned about
as unknown, so a field added to the spec is never dropped silently."""
KNOWN_RESOURCES = frozenset(
    {
        "cpu", "memory", "gpu", "pids_limit", "cpuset", "cpu_shares", "memory_swap",
        "memory_reservation", "memory_swappiness", "oom_score_adj", "oom_kill_disable",
        "blkio_weight",
    }
)  # fmt: skip
_PROXY_ENDPOINT_FIELDS = ("path", "host", "stream", "tunnel", "target_role")


# --- names and labels -------------------------------------------------------------------------


def container_name(target: WorkloadId) -> str:
    """``<deployment>-<service>-<n>``, or ``<deployment>-<service>`` for a definition."""
    base = f"{target.deployment}-{target.service}"
    return base if target.replica is None else f"{base}-{target.replica}"


RUN = "zlayer.run"


def run_container_name(run: RunId) -> str:
    """``<deployment>-<service>-run-<run>``: a run of a job or cron service."""
    return f"{run.deployment}-{run.service}-run-{run.run}"


def run_body(service: DesiredService, run: str, revision: str, **options: Any) -> dict[str, Any]:
    """The create body of a run: the definition's, marked as run ``run``."""
    body = create_body(service, None, revision, **options)
    body["Labels"] = {**body["Labels"], RUN: run}
    return body


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


def network_name(deployment: str) -> str:
    return f"zlayer-{deployment}"


def volume_name(deployment: str, name: str) -> str:
    return f"{deployment}-{name}"


def deployment_filter(deployments: list[str] | None) -> dict[str, list[str]]:
    """The ``label`` filter of the one list call ``observe`` makes. Docker ANDs label
    filters, so only a single deployment can be selected by the engine."""
    if deployments is not None and len(deployments) == 1:
        return {"label": [f"{DEPLOYMENT}={deployments[0]}"]}
    return {"label": [DEPLOYMENT]}


def container_labels(service: DesiredService, replica: int | None, revision: str) -> dict[str, str]:
    # The spec's own labels as written (the launch step); zlayer's copy of the
    # config in CONFIG holds only placeholders for sensitive values.
    labels = {str(k): str(v) for k, v in service.launch_config().get("labels", {}).items()}
    labels.update(
        {
            DEPLOYMENT: service.deployment,
            SERVICE: service.name,
            REPLICA: "" if replica is None else str(replica),
            FINGERPRINT: service.fingerprint,
            CONFIG: canonical_json(service.config),
            REVISION: revision,
            DEPENDS: ",".join(d.service for d in service.depends),
        }
    )
    return labels


def volume_labels(deployment: str, name: str) -> dict[str, str]:
    return {DEPLOYMENT: deployment, VOLUME: name}


def named_volume_names(service: DesiredService) -> list[str]:
    """The names (as in the spec) of ``service``'s named volumes, in spec order."""
    return [str(s["name"]) for s in service.config.get("storage", ()) if s.get("type") == "named"]


# --- values -----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``64Mi``, ``1Gi``, ``512m``, ``1048576``; ``ValueError`` if not
    a size (binary units throughout, as Docker reads ``m``/``g``)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (use for example 64Mi or 1Gi)")
    return int(match[1]) * _SIZE_UNITS[match[2] or ""]


def parse_swap(text: str) -> int:
    """``memory_swap``: a size, or ``-1`` for unlimited swap."""
    return -1 if text.strip() == "-1" else parse_size(text)


def tmpfs_mode(mode: int) -> str:
    """A tmpfs ``mode`` is written like chmod's octal digits (``1777``); checked here."""
    text = str(mode)
    if not re.fullmatch(r"[0-7]{1,4}", text):
        raise ValueError(f"tmpfs mode {mode} is not octal permission digits (such as 1777)")
    return text


def stop_timeout(config: Mapping[str, Any]) -> int | None:
    """Seconds Docker waits after ``stop_signal`` before killing (``None``: Docker's 10s)."""
    value = config.get("stop_grace_period")
    if value is None:
        return None
    return math.ceil(parse_duration(str(value)) / 1e9)


# --- facts about the engine ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """What ``limits`` may know about the engine, read once from ``docker info``."""

    os: str = "linux"
    arch: str = ""
    ncpu: int = 0
    gpu: bool = False
    """A GPU runtime (``nvidia``) is configured."""
    unsupported: frozenset[str] = frozenset()
    """Resource limits the engine's kernel cannot apply (``docker info`` booleans)."""

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> EngineFacts:
        runtimes = info.get("Runtimes") or {}
        kernel = {
            "memory": "MemoryLimit",
            "memory_swap": "SwapLimit",
            "cpu": "CpuCfsQuota",
            "cpu_shares": "CPUShares",
            "cpuset": "CPUSet",
            "pids_limit": "PidsLimit",
            "oom_kill_disable": "OomKillDisable",
        }
        return cls(
            os=str(info.get("OSType") or "linux"),
            arch=_ARCH.get(str(info.get("Architecture") or ""), str(info.get("Architecture"))),
            ncpu=int(info.get("NCPU") or 0),
            gpu=any("nvidia" in str(name) for name in runtimes),
            unsupported=frozenset(k for k, key in kernel.items() if info.get(key) is False),
        )


# --- limits -------------------------------------------------------------------------------------


def service_limits(service: DesiredService, facts: EngineFacts) -> Limits:
    """Every field of ``service`` the Docker driver cannot honour: ``errors`` would fail
    on the host (so nothing is touched), ``warnings`` are applied partly or not at all."""
    config = service.config
    errors: list[str] = []
    warnings: list[str] = []
    subject = f"{service.deployment}/{service.name}"

    for step in service.policy.init:
        if step.uses in ("init.s3_pull", "init.s3_push"):
            errors.append(
                f"{subject}: init step {step.id!r} uses {step.uses}, which the docker "
                "runtime cannot run (no S3 support)"
            )
    if service.offline_secrets:
        errors.append(
            f"{subject}: env has secrets known by name only (compiled without the "
            "secrets); a container cannot be created from them"
        )
    for key in config.get("labels", {}):
        if str(key).startswith(LABEL_PREFIX):
            errors.append(f"{subject}: label {key!r} uses the prefix 'zlayer.', kept for zlayer")

    for key in sorted(set(config) - KNOWN_KEYS):
        warnings.append(f"{subject}: {key} is not known to the docker runtime; not applied")
    for key in sorted(set(config.get("resources", {})) - KNOWN_RESOURCES):
        warnings.append(
            f"{subject}: resources.{key} is not known to the docker runtime; not applied"
        )
    _resource_limits(subject, config, facts, errors, warnings)
    _storage_limits(subject, service, errors, warnings)
    _network_limits(subject, service, errors, warnings)

    if "restart_policy" in config:
        warnings.append(
            f"{subject}: restart_policy is ignored: zlayer supervises restarts "
            "(Docker's restart policy stays 'no')"
        )
    service_type = config.get("service_type", "standard")
    if service_type != "standard":
        warnings.append(
            f"{subject}: service_type {service_type} needs a WASM runtime; the docker "
            "runtime runs the image as an ordinary container"
        )
    if "wasm" in config:
        warnings.append(f"{subject}: wasm settings are not used by the docker runtime")
    isolation = config.get("isolation", "auto")
    if isolation != "auto" and facts.os != "windows":
        warnings.append(
            f"{subject}: isolation {isolation} exists only on Windows engines; not applied"
        )
    reach = config.get("localhost_reachability", "auto")
    if reach != "auto":
        warnings.append(
            f"{subject}: localhost_reachability {reach} is not applied by the docker runtime"
        )
    platform = config.get("platform")
    if platform:
        wanted = f"{platform.get('os')}/{platform.get('arch')}"
        have = f"{facts.os}/{facts.arch}"
        if facts.arch and wanted != have:
            warnings.append(
                f"{subject}: platform {wanted} differs from the engine's {have}; the image "
                f"is pulled for {wanted} and runs only if the engine can emulate it"
            )
    logs = config.get("logs")
    if logs is not None:
        if logs.get("destination", "disk") != "disk":
            warnings.append(
                f"{subject}: logs.destination {logs['destination']} is not supported; "
                "logs stay on disk (json-file)"
            )
        if "retention_secs" in logs:
            warnings.append(
                f"{subject}: logs.retention_secs is not applied (Docker rotates logs by size)"
            )
    return Limits(tuple(errors), tuple(warnings))


def _resource_limits(
    subject: str,
    config: Mapping[str, Any],
    facts: EngineFacts,
    errors: list[str],
    warnings: list[str],
) -> None:
    resources = config.get("resources", {})
    for key in sorted(set(resources) & facts.unsupported):
        warnings.append(
            f"{subject}: resources.{key}: the engine's kernel cannot apply this limit; "
            "Docker ignores it"
        )
    cpu = resources.get("cpu")
    if cpu is not None and facts.ncpu and cpu > facts.ncpu:
        errors.append(f"{subject}: resources.cpu {cpu:g} exceeds the engine's {facts.ncpu} CPUs")
    for key, parse in (
        ("memory", parse_size),
        ("memory_reservation", parse_size),
        ("memory_swap", parse_swap),
    ):
        if key in resources:
            try:
                parse(str(resources[key]))
            except ValueError as exc:
                errors.append(f"{subject}: resources.{key}: {exc}")
    gpu = resources.get("gpu")
    if gpu is not None:
        if not facts.gpu:
            warnings.append(
                f"{subject}: resources.gpu: the engine has no GPU runtime (nvidia); "
                "the service runs without a GPU"
            )
        elif gpu.get("vendor", "nvidia") != "nvidia":
            warnings.append(
                f"{subject}: resources.gpu.vendor {gpu['vendor']}: only nvidia GPUs can be "
                "requested from Docker; the service runs without a GPU"
            )
        for key in sorted(set(gpu) - _GPU_FIELDS_APPLIED):
            warnings.append(f"{subject}: resources.gpu.{key} is not applied by the docker runtime")


def _storage_limits(
    subject: str, service: DesiredService, errors: list[str], warnings: list[str]
) -> None:
    for storage in service.config.get("storage", ()):
        kind, target = storage.get("type"), storage.get("target")
        where = f"{subject}: storage {kind} at {target}"
        if kind == "s3":
            warnings.append(
                f"{where}: the docker runtime has no S3 mounts; "
                f"bucket {storage.get('bucket')} is not mounted"
            )
        elif kind == "bind" and not str(storage.get("source", "")).startswith("/"):
            errors.append(f"{where}: source {storage.get('source')!r} must be an absolute path")
        elif kind == "named":
            name = str(storage.get("name"))
            if not VOLUME_NAME_RE.fullmatch(name):
                errors.append(
                    f"{where}: volume name {name!r} cannot become a Docker volume name "
                    "(letters, digits, '_', '.' and '-')"
                )
            if "size" in storage:
                warnings.append(
                    f"{where}: size is not enforced (Docker's local volume driver has no quota)"
                )
        elif kind == "tmpfs":
            try:
                if "size" in storage:
                    parse_size(str(storage["size"]))
                if "mode" in storage:
                    tmpfs_mode(int(storage["mode"]))
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
        if storage.get("tier", "local") != "local":
            warnings.append(
                f"{where}: tier {storage['tier']} has no Docker equivalent; stored as a local "
                "volume"
            )


def _network_limits(
    subject: str, service: DesiredService, errors: list[str], warnings: list[str]
) -> None:
    config = service.config
    mode = str(config.get("network_mode", "default"))
    if "network" in config:
        warnings.append(
            f"{subject}: network (overlays, join policy) is not implemented by the docker "
            "runtime; replicas join the deployment's bridge network "
            f"{network_name(service.deployment)}"
        )
    if "overlay" in config:
        warnings.append(f"{subject}: overlay is not implemented by the docker runtime")
    ports = bool(config.get("port_mappings")) or any(
        e.get("expose", "internal") == "public" for e in config.get("endpoints", ())
    )
    if mode.startswith("container:"):
        clash = [k for k in ("hostname", "dns", "extra_hosts", "port_mappings") if k in config]
        if clash:
            errors.append(
                f"{subject}: network_mode {mode} shares another container's network, so "
                f"{', '.join(clash)} cannot be set"
            )
    elif mode in ("host", "none") and ports:
        warnings.append(
            f"{subject}: network_mode {mode}: ports are not published"
            + (" (the service listens on the host directly)" if mode == "host" else "")
        )
    for endpoint in config.get("endpoints", ()):
        name = endpoint.get("name")
        if endpoint.get("expose", "internal") == "public" and service.replicas != 1:
            count = "a varying number of" if service.replicas is None else service.replicas
            warnings.append(
                f"{subject}: endpoint {name} is public but the service has {count} replicas: "
                "not published until a proxy exists"
            )
        for key in _PROXY_ENDPOINT_FIELDS:
            if key in endpoint:
                warnings.append(
                    f"{subject}: endpoint {name}: {key} needs a proxy; not applied by the "
                    "docker runtime"
                )
    fixed_ports = [m for m in config.get("port_mappings", ()) if m.get("host_port")]
    if fixed_ports and (service.replicas is None or service.replicas > 1):
        errors.append(
            f"{subject}: port_mappings with a host_port ({fixed_ports[0]['host_port']}) can "
            "bind only one replica, but the service may have more"
        )


# --- create body ----------------------------------------------------------------------------


def create_body(
    service: DesiredService,
    replica: int | None,
    revision: str,
    *,
    publish_address: str = "0.0.0.0",
    gpu: bool = False,
) -> dict[str, Any]:
    """The ``containers/create`` body for replica ``replica`` (``None``: the definition).

    Raises :class:`ValueError` for values ``limits`` reports as errors.
    """
    config = service.launch_config()
    command = config.get("command", {})
    body: dict[str, Any] = {
        "Image": config["image"],
        "Labels": container_labels(service, replica, revision),
        "Env": [f"{k}={v}" for k, v in service.runtime_env().items()],
        "Tty": bool(config.get("tty", False)),
        "OpenStdin": bool(config.get("stdin_open", False)),
    }
    if command.get("entrypoint") is not None:
        body["Entrypoint"] = list(command["entrypoint"])
    if command.get("args") is not None:
        body["Cmd"] = list(command["args"])
    optional = {
        "WorkingDir": command.get("workdir"),
        "User": config.get("user"),
        "Hostname": config.get("hostname"),
        "StopSignal": config.get("stop_signal"),
        "StopTimeout": stop_timeout(config),
    }
    body.update({k: v for k, v in optional.items() if v is not None})

    host: dict[str, Any] = {"RestartPolicy": {"Name": "no"}}
    host.update(_resources(config.get("resources", {}), gpu=gpu))
    _storage(service, body, host)
    _network(service, replica, body, host, publish_address)
    passthrough = {
        "Privileged": "privileged",
        "ReadonlyRootfs": "read_only_root_fs",
        "CapAdd": "capabilities",
        "CapDrop": "cap_drop",
        "Sysctls": "sysctls",
        "SecurityOpt": "security_opt",
        "PidMode": "pid_mode",
        "IpcMode": "ipc_mode",
        "UsernsMode": "userns_mode",
        "CgroupParent": "cgroup_parent",
        "GroupAdd": "extra_groups",
        "Init": "init_container",
    }
    for key, field in passthrough.items():
        if field in config:
            value = config[field]
            host[key] = list(value) if isinstance(value, list | tuple) else value
    if "devices" in config:
        host["Devices"] = [_device(d) for d in config["devices"]]
    if "ulimits" in config:
        host["Ulimits"] = [
            {"Name": name, **_ulimit(limit)} for name, limit in config["ulimits"].items()
        ]
    logs = config.get("logs")
    if logs is not None:
        size = logs.get("max_size_bytes", 100 * 1024 * 1024)
        host["LogConfig"] = {"Type": "json-file", "Config": {"max-size": str(size)}}
    body["HostConfig"] = host
    return body


def _resources(resources: Mapping[str, Any], *, gpu: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cpu" in resources:
        out["NanoCpus"] = round(float(resources["cpu"]) * 1e9)
    if "memory" in resources:
        out["Memory"] = parse_size(str(resources["memory"]))
    if "memory_swap" in resources:
        out["MemorySwap"] = parse_swap(str(resources["memory_swap"]))
    if "memory_reservation" in resources:
        out["MemoryReservation"] = parse_size(str(resources["memory_reservation"]))
    direct = {
        "pids_limit": "PidsLimit",
        "cpuset": "CpusetCpus",
        "cpu_shares": "CpuShares",
        "memory_swappiness": "MemorySwappiness",
        "oom_score_adj": "OomScoreAdj",
        "oom_kill_disable": "OomKillDisable",
        "blkio_weight": "BlkioWeight",
    }
    out.update({key: resources[field] for field, key in direct.items() if field in resources})
    spec = resources.get("gpu")
    if gpu and spec is not None and spec.get("vendor", "nvidia") == "nvidia":
        out["DeviceRequests"] = [
            {"Driver": "nvidia", "Count": int(spec.get("count", 1)), "Capabilities": [["gpu"]]}
        ]
    return out


def _storage(service: DesiredService, body: dict[str, Any], host: dict[str, Any]) -> None:
    mounts: list[dict[str, Any]] = []
    volumes: dict[str, Any] = {}
    tmpfs: dict[str, str] = {}
    for storage in service.config.get("storage", ()):
        kind, target = storage["type"], str(storage["target"])
        readonly = bool(storage.get("readonly", False))
        if kind == "bind":
            mounts.append(
                {
                    "Type": "bind",
                    "Source": storage["source"],
                    "Target": target,
                    "ReadOnly": readonly,
                }
            )
        elif kind == "named":
            source = volume_name(service.deployment, str(storage["name"]))
            mounts.append(
                {"Type": "volume", "Source": source, "Target": target, "ReadOnly": readonly}
            )
        elif kind == "anonymous":
            # Config.Volumes: an anonymous volume that ``docker rm -v`` removes with the
            # container on every engine version.
            volumes[target] = {}
        elif kind == "tmpfs":
            options = []
            if "size" in storage:
                options.append(f"size={parse_size(str(storage['size']))}")
            if "mode" in storage:
                options.append(f"mode={tmpfs_mode(int(storage['mode']))}")
            tmpfs[target] = ",".join(options)
        # s3: not mountable here; ``limits`` warns.
    if mounts:
        host["Mounts"] = mounts
    if volumes:
        body["Volumes"] = volumes
    if tmpfs:
        host["Tmpfs"] = tmpfs


def _network(
    service: DesiredService,
    replica: int | None,
    body: dict[str, Any],
    host: dict[str, Any],
    publish_address: str,
) -> None:
    config = service.config
    mode = str(config.get("network_mode", "default"))
    if mode == "default":
        network = network_name(service.deployment)
        host["NetworkMode"] = network
        aliases = [service.name]
        if replica is not None:
            aliases.append(f"{service.name}-{replica}")
        body["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": aliases}}}
    else:
        # bridge:<name> joins the existing network <name>; host, none, bridge and
        # container:<id> are Docker's own modes.
        host["NetworkMode"] = mode.removeprefix("bridge:") or "bridge"
    for key, field in (("Dns", "dns"), ("ExtraHosts", "extra_hosts")):
        if field in config:
            host[key] = list(config[field])
    if mode in ("host", "none") or mode.startswith("container:"):
        return  # Docker refuses or ignores ports there; ``limits`` warns.
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for endpoint in config.get("endpoints", ()):
        protocol = "udp" if endpoint.get("protocol") == "udp" else "tcp"
        port = f"{endpoint.get('target_port') or endpoint['port']}/{protocol}"
        exposed[port] = {}
        if endpoint.get("expose", "internal") == "public" and service.replicas == 1:
            bindings.setdefault(port, []).append(
                {"HostIp": publish_address, "HostPort": str(endpoint["port"])}
            )
    for mapping in config.get("port_mappings", ()):
        port = f"{mapping['container_port']}/{mapping.get('protocol', 'tcp')}"
        exposed[port] = {}
        host_port = mapping.get("host_port")
        bindings.setdefault(port, []).append(
            {
                "HostIp": str(mapping.get("host_ip", "0.0.0.0")),
                "HostPort": "" if host_port is None else str(host_port),
            }
        )
    for port in config.get("expose", ()):
        exposed[port if "/" in str(port) else f"{port}/tcp"] = {}
    if exposed:
        body["ExposedPorts"] = exposed
    if bindings:
        host["PortBindings"] = bindings


def _device(device: Mapping[str, Any]) -> dict[str, str]:
    permissions = "".join(
        flag
        for flag, key, default in (("r", "read", True), ("w", "write", True), ("m", "mknod", False))
        if device.get(key, default)
    )
    path = str(device["path"])
    return {"PathOnHost": path, "PathInContainer": path, "CgroupPermissions": permissions}


def _ulimit(limit: Mapping[str, Any]) -> dict[str, int]:
    soft = limit.get("soft", limit.get("hard"))
    hard = limit.get("hard", soft)
    return {"Soft": int(soft or 0), "Hard": int(hard or 0)}


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


def workload_from_inspect(info: Mapping[str, Any]) -> Workload | None:
    """A container as ``containers/<id>/json`` shows it. ``None`` if not zlayer's."""
    state = info.get("State") or {}
    status = str(state.get("Status", ""))
    exit_code = state.get("ExitCode") if status in ("exited", "dead") else None
    started = state.get("StartedAt")
    health = str((state.get("Health") or {}).get("Status") or "none")
    return _workload(
        (info.get("Config") or {}).get("Labels") or {},
        status,
        exit_code,
        None if not started or started == _NEVER else str(started),
        int(info.get("RestartCount") or 0),
        health,
        info.get("Id"),
    )


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
    return Workload.model_validate(
        {
            "deployment": deployment,
            "service": service,
            "replica": replica,
            "fingerprint": fingerprint,
            "revision": labels.get(REVISION) or None,
            "status": status,
            "exit_code": exit_code if isinstance(exit_code, int) and replica else None,
            "started_at": started_at,
            "restart_count": restart_count,
            "health": health if health in _HEALTHS else "none",
            "depends": depends,
            "runtime_id": str(runtime_id) if runtime_id else None,
        }
    )


def config_from_labels(labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The canonical config a container was created from, or ``None`` if unreadable."""
    try:
        config = json.loads(labels.get(CONFIG, ""))
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


# --- errors ---------------------------------------------------------------------------------


_TEMPORARY_WORDS = ("toomanyrequests", "timeout", "timed out", "connection", "temporar", "EOF")


def engine_error(
    status: int,
    message: str,
    subject: str,
    action: str,
    *,
    missing: type[PermanentDriverError] = NotFound,
) -> DriverError:
    """The project's error for an engine answer: 404 → ``missing`` (``NotFound``
    unless the action reads 404 otherwise), 409 → ``Conflict``, 5xx and no answer →
    ``TemporaryDriverError``, other 4xx → ``PermanentDriverError``. ``status`` 0 is
    an error inside a progress stream (a pull), judged by its words."""
    text = f"{subject}: {action} failed: {message.strip()}"
    if status == 404:
        return missing(text)
    if status == 409:
        return Conflict(text)
    if status == 900:  # aiodocker: the engine did not answer
        return TemporaryDriverError(text, delay=5.0)
    if status >= 500:
        return TemporaryDriverError(text, delay=2.0)
    if status == 0 and any(w.lower() in message.lower() for w in _TEMPORARY_WORDS):
        return TemporaryDriverError(text, delay=5.0)
    return PermanentDriverError(text)

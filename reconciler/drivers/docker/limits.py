"""What of a service the Docker runtime cannot honour, and what the engine can (pure).

:func:`service_limits` turns every such field into :class:`~reconciler.drivers.base.Limits`:
errors stop an apply before anything is touched, warnings go into the plan, and a
config key the runtime does not know is warned about, never dropped silently.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.desired import DesiredService, routed_endpoints
from reconciler.drivers.base import Limits, endpoint_field_warnings
from reconciler.drivers.docker.config import parse_size, parse_swap, tmpfs_mode
from reconciler.drivers.docker.labels import LABEL_PREFIX, network_name

VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]+")
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
        "network", "overlay", "service_type", "wasm", "isolation",
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
_UNROUTED_WHY = (
    "the proxy serves public http, https, websocket and tcp endpoints of services on "
    "their deployment's network; udp is published for one replica, and a replica on "
    "the host's network listens there itself"
)


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


def service_limits(
    service: DesiredService, facts: EngineFacts, *, internal_routed: bool = False
) -> Limits:
    """Every field of ``service`` the Docker driver cannot honour: ``errors`` would fail
    on the host (so nothing is touched), ``warnings`` are applied partly or not at all.
    ``internal_routed``: the managed proxy serves internal endpoints on this engine."""
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
    _network_limits(subject, service, errors, warnings, internal_routed)

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
    subject: str,
    service: DesiredService,
    errors: list[str],
    warnings: list[str],
    internal_routed: bool,
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
    for item in config.get("extra_hosts", ()):
        name, _, address = str(item).partition(":")
        try:
            if address != "host-gateway":
                ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            address = ""
        if not name or not address or any(c.isspace() or c == "#" for c in name):
            errors.append(
                f"{subject}: extra_hosts entry {str(item)!r} is not NAME:ADDRESS (an IP "
                "address, or host-gateway)"
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
    routed = {id(e) for e in routed_endpoints(config)}
    internal = {id(e) for e in routed_endpoints(config, "internal")}
    warnings += endpoint_field_warnings(subject, config, _UNROUTED_WHY)
    for endpoint in config.get("endpoints", ()):
        name = endpoint.get("name")
        public = endpoint.get("expose", "internal") == "public"
        if public and id(endpoint) not in routed and service.replicas != 1:
            count = "a varying number of" if service.replicas is None else service.replicas
            warnings.append(
                f"{subject}: endpoint {name} is public but the service has {count} replicas: "
                f"not published ({_UNROUTED_WHY})"
            )
        port, target = endpoint.get("port"), endpoint.get("target_port")
        proxied = internal_routed and id(endpoint) in internal
        if not public and target is not None and port != target and not proxied:
            warnings.append(
                f"{subject}: endpoint {name} is internal with port {port} ≠ target_port "
                f"{target}: the service's name reaches its containers directly, at "
                f"{target} (the managed proxy serves internal endpoints where HAProxy is "
                "installed, on an engine on this host)"
            )
    fixed_ports = [m for m in config.get("port_mappings", ()) if m.get("host_port")]
    if fixed_ports and (service.replicas is None or service.replicas > 1):
        errors.append(
            f"{subject}: port_mappings with a host_port ({fixed_ports[0]['host_port']}) can "
            "bind only one replica, but the service may have more"
        )

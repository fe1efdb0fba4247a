"""The container a compiled service becomes: the Docker Engine API
``containers/create`` body (pure).

Names and labels are :mod:`.labels`; what Docker cannot honour is :mod:`.limits`
(which checks the same values this module parses, so a create never fails on one);
only :mod:`.driver` talks to the engine.

Config values arrive with their defaults left out (see
:mod:`reconciler.desired`), so every read here names its default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from reconciler.desired import DesiredService, routed_endpoints
from reconciler.drivers.docker.labels import RUN, container_labels, network_name, volume_name
from reconciler.durations import parse_duration

LOOPBACK = "127.0.0.1"

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


# --- create body ----------------------------------------------------------------------------


def create_body(
    service: DesiredService,
    replica: int | None,
    revision: str,
    *,
    publish_address: str = "0.0.0.0",
    gpu: bool = False,
    hosts_file: str | None = None,
    proxied: bool = False,
) -> dict[str, Any]:
    """The ``containers/create`` body for replica ``replica`` (``None``: the definition).

    ``hosts_file``: zlayer's file to mount as ``/etc/hosts`` (on the deployment's
    network only), which then also holds the spec's ``extra_hosts``. ``proxied``: the
    managed proxy serves internal endpoints (:func:`proxied_internal`).

    Raises :class:`ValueError` for values ``limits`` reports as errors.
    """
    config = service.launch_config()
    internal = replica is not None and proxied_internal(service, proxied)
    hosts = hosts_file is not None and takes_hosts_file(service.config)
    command = config.get("command", {})
    body: dict[str, Any] = {
        "Image": config["image"],
        "Labels": container_labels(service, replica, revision, internal=internal, hosts=hosts),
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
    _network(service, replica, body, host, publish_address, internal)
    if hosts:
        host.setdefault("Mounts", []).append(
            {"Type": "bind", "Source": hosts_file, "Target": "/etc/hosts", "ReadOnly": True}
        )
        host.pop("ExtraHosts", None)  # they are in the file
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


def run_body(service: DesiredService, run: str, revision: str, **options: Any) -> dict[str, Any]:
    """The create body of a run: the definition's, marked as run ``run``."""
    body = create_body(service, None, revision, **options)
    body["Labels"] = {**body["Labels"], RUN: run}
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


def takes_hosts_file(config: Mapping[str, Any]) -> bool:
    """A container on its deployment's network gets zlayer's hosts file."""
    return str(config.get("network_mode", "default")) == "default"


def proxied_internal(service: DesiredService, proxied: bool) -> bool:
    """The managed proxy serves the service's internal endpoints (``proxied``: it does
    so on this engine): its name resolves to the proxy, through zlayer's hosts files."""
    return (
        proxied
        and takes_hosts_file(service.config)
        and bool(routed_endpoints(service.config, "internal"))
    )


def extra_hosts(config: Mapping[str, Any], gateway: str | None) -> list[tuple[str, list[str]]]:
    """The spec's ``extra_hosts`` (``name:address``) as hosts file entries; Docker's
    ``host-gateway`` is the host's address on the deployment's network."""
    out: list[tuple[str, list[str]]] = []
    for item in config.get("extra_hosts", ()):
        name, _, address = str(item).partition(":")
        if not name:
            continue
        if address == "host-gateway":
            if gateway is None:
                continue
            address = gateway
        out.append((address.strip("[]"), [name]))
    return out


def _network(
    service: DesiredService,
    replica: int | None,
    body: dict[str, Any],
    host: dict[str, Any],
    publish_address: str,
    internal: bool,
) -> None:
    config = service.config
    mode = str(config.get("network_mode", "default"))
    if mode == "default":
        network = network_name(service.deployment)
        host["NetworkMode"] = network
        # A name the proxy serves is in zlayer's hosts files, not an alias of the replicas.
        aliases = [] if internal else [service.name]
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
    # A definition (no replica) is never started, so it publishes nothing.
    routed = {id(e) for e in routed_endpoints(config)} if replica is not None else set()
    if internal:
        routed |= {id(e) for e in routed_endpoints(config, "internal")}
    for endpoint in config.get("endpoints", ()):
        protocol = "udp" if endpoint.get("protocol") == "udp" else "tcp"
        port = f"{endpoint.get('target_port') or endpoint['port']}/{protocol}"
        exposed[port] = {}
        if id(endpoint) in routed:
            # The managed proxy listens on the public port and reaches each replica
            # here: a port of the engine's choice, on loopback only.
            if {"HostIp": LOOPBACK, "HostPort": ""} not in bindings.get(port, []):
                bindings.setdefault(port, []).append({"HostIp": LOOPBACK, "HostPort": ""})
        elif endpoint.get("expose", "internal") == "public" and service.replicas == 1:
            # udp: HAProxy does not balance it, the engine publishes the one replica.
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

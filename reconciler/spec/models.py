"""The ZLayer v1 deployment spec: :class:`DeploymentSpec` and :class:`ServiceSpec`.

Models are frozen pydantic models; values come from
:mod:`reconciler.spec.yamldoc` so every field follows ZLayer's YAML reading
rules (see :mod:`reconciler.spec.scalars`). Rules that span fields live in
:mod:`reconciler.spec.rules`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, model_validator
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from reconciler.spec.blocks import (
    Affinity,
    Closed,
    CommandSpec,
    DependsSpec,
    DeviceSpec,
    EndpointSpec,
    ErrorsSpec,
    HealthSpec,
    ImageSpec,
    InitSpec,
    LifecycleSpec,
    LogsConfig,
    NodeSelector,
    Open,
    PortMapping,
    ReplicaGroup,
    ResourcesSpec,
    RestartPolicy,
    ScaleSpec,
    ServiceNetworkSpec,
    ServiceOverlay,
    StorageSpec,
    TargetPlatform,
    UlimitSpec,
    WasmConfig,
    default_health,
    default_scale,
)
from reconciler.spec.scalars import (
    ANY_SCALAR_SCHEMA,
    U16,
    Bool,
    OptBool,
    OptDuration,
    OptStr,
    Str,
    source_text,
    source_text_or_none,
)
from reconciler.spec.yamldoc import Plain, Tagged

_E = BeforeValidator(source_text)

ServiceType = Annotated[
    Literal[
        "standard",
        "wasm_http",
        "wasm_plugin",
        "wasm_transformer",
        "wasm_authenticator",
        "wasm_rate_limiter",
        "wasm_middleware",
        "wasm_router",
        "job",
    ],
    _E,
]
WASM_SERVICE_TYPES = frozenset(
    {
        "wasm_http",
        "wasm_plugin",
        "wasm_transformer",
        "wasm_authenticator",
        "wasm_rate_limiter",
        "wasm_middleware",
        "wasm_router",
    }
)

_NETWORK_MODE_RE = re.compile(r"default|host|none|bridge(:.*)?|container:.+", re.DOTALL)


def _network_mode(value: Any) -> Any:
    if isinstance(value, Tagged):
        value = _tagged_network_mode(value)
    text = source_text(value)
    if isinstance(text, str) and not _NETWORK_MODE_RE.fullmatch(text):
        if text == "container:":
            message = 'network_mode "container:<id>" needs a non-empty id'
        else:
            message = f"unknown network_mode '{text}' (use host, none, bridge, bridge:<name>, "
            message += "container:<id> or default)"
        raise PydanticCustomError("network_mode", message)
    if isinstance(text, str) and text == "bridge:":
        return "bridge"
    return text


def _tagged_network_mode(value: Tagged) -> Any:
    """serde's tag form: ``!bridge {name: x}``, ``!container {id: x}``, ``!host``."""
    kind, inner = value.tag.lstrip("!"), value.value
    if isinstance(inner, dict):
        detail = {"bridge": "name", "container": "id"}.get(kind)
        if detail is None or set(inner) - {detail}:
            raise PydanticCustomError(
                "network_mode", "unknown network_mode form !{kind}", {"kind": kind}
            )
        name = source_text_or_none(inner.get(detail))
        return kind if name is None else f"{kind}:{name}"
    return source_text(value)


NetworkMode = Annotated[
    str,
    BeforeValidator(_network_mode),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {"name": ANY_SCALAR_SCHEMA, "id": ANY_SCALAR_SCHEMA},
                    "additionalProperties": False,
                    "description": "the value of a tagged form: !bridge {name: N}, "
                    "!container {id: ID}",
                },
            ]
        }
    ),
]


def _paired_alias(data: Any, name: str, alias: str) -> None:
    if isinstance(data, dict) and name in data and alias in data:
        raise PydanticCustomError(
            "duplicate_field",
            "{name} and {alias} are the same key; give only one",
            {"name": name, "alias": alias},
        )


class ServiceSpec(Closed):
    """One entry of ``services``; only ``image`` is required."""

    deployment: OptStr = None
    rtype: Annotated[Literal["service", "job", "cron"], _E] = "service"
    schedule: OptStr = None
    image: ImageSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    env: dict[str, Str] = Field(default_factory=dict)
    command: CommandSpec = Field(default_factory=CommandSpec)
    network: ServiceNetworkSpec = Field(default_factory=ServiceNetworkSpec)
    endpoints: tuple[EndpointSpec, ...] = ()
    scale: ScaleSpec = Field(default_factory=default_scale)
    replica_groups: tuple[ReplicaGroup, ...] | None = None
    depends: tuple[DependsSpec, ...] = ()
    health: HealthSpec = Field(default_factory=default_health)
    init: InitSpec = Field(default_factory=InitSpec)
    errors: ErrorsSpec = Field(default_factory=ErrorsSpec)
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)
    isolation: Annotated[Literal["auto", "process", "hyperv"] | None, _E] = None
    devices: tuple[DeviceSpec, ...] = ()
    storage: tuple[StorageSpec, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    capabilities: tuple[Str, ...] = Field(
        default=(), validation_alias=AliasChoices("capabilities", "cap_add")
    )
    cap_drop: tuple[Str, ...] = ()
    privileged: Bool = False
    node_mode: Annotated[Literal["shared", "dedicated", "exclusive"], _E] = "shared"
    node_selector: NodeSelector | None = None
    affinity: Affinity | None = None
    platform: TargetPlatform | None = None
    service_type: ServiceType = "standard"
    wasm: WasmConfig | None = Field(
        default=None, validation_alias=AliasChoices("wasm", "wasm_http")
    )
    logs: LogsConfig | None = None
    host_network: OptBool = Field(default=None, exclude=True)
    hostname: OptStr = None
    dns: tuple[Str, ...] = ()
    extra_hosts: tuple[Str, ...] = ()
    restart_policy: RestartPolicy | None = None
    labels: dict[str, Str] = Field(default_factory=dict)
    user: OptStr = None
    stop_signal: OptStr = None
    stop_grace_period: OptDuration = None
    sysctls: dict[str, Str] = Field(default_factory=dict)
    ulimits: dict[str, UlimitSpec] = Field(default_factory=dict)
    security_opt: tuple[Str, ...] = ()
    pid_mode: OptStr = None
    ipc_mode: OptStr = None
    network_mode: NetworkMode = "default"
    extra_groups: tuple[Str, ...] = ()
    read_only_root_fs: Bool = False
    init_container: OptBool = None
    tty: Bool = False
    stdin_open: Bool = False
    userns_mode: OptStr = None
    cgroup_parent: OptStr = None
    expose: tuple[Str, ...] = ()
    overlay: ServiceOverlay | None = None
    localhost_reachability: Annotated[Literal["auto", "always", "never"], _E] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _compat(cls, data: Any) -> Any:
        _paired_alias(data, "capabilities", "cap_add")
        _paired_alias(data, "wasm", "wasm_http")
        if isinstance(data, dict):
            host = data.get("host_network")
            mode = source_text(data.get("network_mode", "default"))
            if isinstance(host, Plain) and host.value is True and mode == "default":
                # ZLayer: ``host_network: true`` is ``network_mode: host`` unless a mode is set.
                data = {**data, "network_mode": "host"}
        return data


class ExternalSpec(Closed):
    backends: Annotated[tuple[Str, ...], Field(min_length=1)]
    endpoints: tuple[EndpointSpec, ...] = ()
    health: HealthSpec | None = None


class TunnelDefinition(Closed):
    from_: Str = Field(alias="from")
    to: Str
    local_port: Annotated[U16, Field(ge=1)]
    remote_port: Annotated[U16, Field(ge=1)]
    protocol: Annotated[Literal["tcp", "udp"], _E] = "tcp"
    expose: Annotated[Literal["public", "internal"], _E] = "internal"


class ApiSpec(Open):
    enabled: Bool = True
    bind: Str = "0.0.0.0:3669"
    jwt_secret: OptStr = None
    swagger: Bool = True


def _version(value: Any) -> Any:
    text = source_text(value)
    if isinstance(text, str) and text != "v1":
        raise PydanticCustomError("version", "version must be v1, found '{text}'", {"text": text})
    return text


_DEPLOYMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{2,62}")


def _deployment_name(value: Any) -> Any:
    text = source_text(value)
    if isinstance(text, str) and not _DEPLOYMENT_RE.fullmatch(text):
        raise PydanticCustomError(
            "deployment_name",
            "deployment name '{text}' must be 3-63 ASCII letters, digits or '-', "
            "starting with a letter or digit",
            {"text": text},
        )
    return text


class DeploymentSpec(Closed):
    """One spec file: a deployment and its services."""

    version: Annotated[str, BeforeValidator(_version), WithJsonSchema({"const": "v1"})]
    deployment: Annotated[
        str,
        BeforeValidator(_deployment_name),
        WithJsonSchema({**ANY_SCALAR_SCHEMA, "pattern": f"^{_DEPLOYMENT_RE.pattern}$"}),
    ]
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    externals: dict[str, ExternalSpec] = Field(default_factory=dict)
    tunnels: dict[str, TunnelDefinition] = Field(default_factory=dict)
    api: ApiSpec = Field(default_factory=ApiSpec)

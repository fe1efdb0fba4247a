"""The building blocks of a service spec (everything below ``services.<name>``).

Field names, defaults and which objects refuse unknown keys follow the
reference parser (ZLayer 0.12.10); see ``docs/COMPATIBILITY.md`` for the few
places zlayer is deliberately stricter.

One module on purpose (a little over 600 lines): ZLayer's blocks are one
vocabulary, each a short pydantic model, and they reference one another (a health
check inside an init step inside a service); split by line count they would only
import each other in a circle. Their size is many small classes, not long ones.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from reconciler.spec.scalars import (
    U16,
    U32,
    U64,
    Bool,
    BufStr,
    Duration,
    ImageName,
    OptBool,
    OptBufStr,
    OptCpu,
    OptDuration,
    OptI32,
    OptI64,
    OptMemory,
    OptStr,
    OptU8,
    OptU16,
    OptU32,
    Str,
    is_null,
    source_text,
)
from reconciler.spec.yamldoc import Plain, Tagged

_E = BeforeValidator(source_text)


class SpecModel(BaseModel):
    """Base of every spec object: frozen, and read the way serde_yaml reads YAML.

    * an application tag on a mapping or list is ignored (``web: !service {...}``);
    * ``null`` is absent for optional fields; an *empty* value (``services:`` with
      nothing after it, not ``null``) is an empty map or list for collection and
      object fields.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _serde_yaml_reading(cls, data: Any) -> Any:
        if type(data) is Tagged:
            data = data.value
        if type(data) is dict and any(map(_needs_reading, data.values())):
            data = {k: _read(cls, k, v) for k, v in data.items()}
        return data


def _needs_reading(value: Any) -> bool:
    return type(value) is Tagged or (type(value) is Plain and value.value is None)


def _read(cls: type[BaseModel], key: str, value: Any) -> Any:
    optional, empty, container = field_kinds(cls)
    if isinstance(value, Tagged) and key in container:
        return value.value
    if is_null(value):
        if key in optional:
            return None
        if key in empty and isinstance(value, Plain) and value.text == "":
            return empty[key]
    return value


@cache
def field_kinds(cls: type[BaseModel]) -> tuple[frozenset[str], dict[str, Any], frozenset[str]]:
    """Keys of ``cls`` that are optional, that read an empty value as {} or [], and that
    hold a plain map or list (which ignores a tag)."""
    optional: set[str] = set()
    empty: dict[str, Any] = {}
    container: set[str] = set()
    for name, info in cls.model_fields.items():
        keys = {name} | ({info.alias} if info.alias else set())
        if isinstance(info.validation_alias, AliasChoices):
            keys |= {str(c) for c in info.validation_alias.choices}
        origin = get_origin(info.annotation)
        is_model = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        if type(None) in get_args(info.annotation):
            optional |= keys
        elif origin in (tuple, dict) or is_model:
            empty.update({k: [] if origin is tuple else {} for k in keys})
        if origin in (tuple, dict):
            container |= keys
    return frozenset(optional), empty, frozenset(container)


class Closed(SpecModel):
    """An object that refuses unknown keys (most of the spec)."""

    model_config = ConfigDict(extra="forbid")


class Open(SpecModel):
    """An object whose unknown keys are ignored, as ZLayer ignores them."""

    model_config = ConfigDict(extra="ignore")


# --- image, command, resources ---------------------------------------------------------------

PullPolicy = Annotated[Literal["always", "newer", "if_not_present", "never"], _E]
SourcePolicy = Annotated[Literal["local_first", "s3_first", "remote_only", "local_only"], _E]


class ImageSpec(Closed):
    name: ImageName
    pull_policy: PullPolicy = "if_not_present"
    source_policy: SourcePolicy | None = None


class CommandSpec(Closed):
    entrypoint: tuple[Str, ...] | None = None
    args: tuple[Str, ...] | None = None
    workdir: OptStr = None


class DistributedConfig(Closed):
    backend: Str = "nccl"
    master_port: U16 = 29500


class GpuSpec(Closed):
    count: U32 = 1
    vendor: Str = "nvidia"
    mode: OptStr = None
    model: OptStr = None
    scheduling: Annotated[Literal["best-effort", "gang", "spread"] | None, _E] = None
    distributed: DistributedConfig | None = None
    sharing: Annotated[Literal["exclusive", "mps", "time-slice"] | None, _E] = None
    mps_pipe_dir: OptStr = None
    mps_log_dir: OptStr = None
    time_slice_index: OptU32 = None
    time_slicing_config_path: OptStr = None


class ResourcesSpec(Closed):
    cpu: OptCpu = None
    memory: OptMemory = None
    gpu: GpuSpec | None = None
    pids_limit: OptI64 = None
    cpuset: OptStr = None
    cpu_shares: OptU32 = None
    memory_swap: OptStr = None
    memory_reservation: OptStr = None
    memory_swappiness: OptU8 = None
    oom_score_adj: OptI32 = None
    oom_kill_disable: OptBool = None
    blkio_weight: OptU16 = None


# --- network, endpoints ----------------------------------------------------------------------


class OverlaySettings(Closed):
    enabled: Bool = True
    encrypted: Bool = True
    isolated: Bool = False


def _off() -> OverlaySettings:
    # ZLayer quirk kept on purpose: an ``overlays`` block that leaves out ``service`` or
    # ``global`` gets that side's all-false Default, not the field defaults above.
    return OverlaySettings(enabled=False, encrypted=False, isolated=False)


class OverlayConfig(Closed):
    service: OverlaySettings = Field(default_factory=_off)
    global_: OverlaySettings = Field(default_factory=_off, alias="global")


class JoinPolicy(Closed):
    mode: Annotated[Literal["open", "token", "closed"], _E] = "token"
    scope: Annotated[Literal["service", "global"], _E] = "service"


def _default_overlays() -> OverlayConfig:
    return OverlayConfig(
        service=OverlaySettings(enabled=True, encrypted=True, isolated=True),
        global_=OverlaySettings(enabled=True, encrypted=True, isolated=False),
    )


class ServiceNetworkSpec(Closed):
    overlays: OverlayConfig = Field(default_factory=_default_overlays)
    join: JoinPolicy = Field(default_factory=JoinPolicy)


Protocol = Annotated[Literal["http", "https", "tcp", "udp", "websocket"], _E]
Expose = Annotated[Literal["public", "internal"], _E]


class TcpConnectCheck(Open):
    type: Literal["tcp_connect"]


class UdpProbeCheck(Open):
    type: Literal["udp_probe"]
    request: BufStr
    expect: OptBufStr = None


class StreamEndpointConfig(Closed):
    tls: Bool = False
    proxy_protocol: Bool = False
    session_timeout: OptStr = None
    health_check: Annotated[TcpConnectCheck | UdpProbeCheck | None, Field(discriminator="type")] = (
        None
    )


def _check_ttl(value: Any) -> Any:
    if not isinstance(value, Plain) or value.value is not None:
        Duration.validate(value)
    return value


class TunnelAccessConfig(Closed):
    enabled: Bool = False
    max_ttl: Annotated[OptStr, BeforeValidator(_check_ttl)] = None
    audit: Bool = False


class EndpointTunnelConfig(Closed):
    enabled: Bool = False
    from_: OptStr = Field(default=None, alias="from")
    to: OptStr = None
    remote_port: U16 = 0
    expose: Expose | None = None
    access: TunnelAccessConfig | None = None


class EndpointSpec(Closed):
    name: Annotated[Str, Field(min_length=1)]
    protocol: Protocol
    port: Annotated[U16, Field(ge=1)]
    target_port: OptU16 = None
    path: OptStr = None
    host: OptStr = None
    expose: Expose = "internal"
    stream: StreamEndpointConfig | None = None
    target_role: OptStr = None
    tunnel: EndpointTunnelConfig | None = None

    @property
    def effective_target_port(self) -> int:
        return self.port if self.target_port is None else self.target_port


# --- scale, depends, health ------------------------------------------------------------------


class ScaleTargets(Closed):
    cpu: OptU8 = None
    memory: OptU8 = None
    rps: OptU32 = None


class AdaptiveScale(Closed):
    mode: Literal["adaptive"]
    min: U32
    max: U32
    cooldown: OptDuration = None
    targets: ScaleTargets = Field(default_factory=ScaleTargets)

    @model_validator(mode="after")
    def _min_le_max(self) -> AdaptiveScale:
        if self.min > self.max:
            raise PydanticCustomError(
                "scale_range",
                "min ({min}) must not exceed max ({max})",
                {"min": self.min, "max": self.max},
            )
        return self


class FixedScale(Closed):
    mode: Literal["fixed"]
    replicas: U32


class ManualScale(Open):
    mode: Literal["manual"]


def default_scale() -> AdaptiveScale:
    return AdaptiveScale(mode="adaptive", min=1, max=10, cooldown=Duration(30 * 10**9))


def no_tag(value: Any) -> Any:
    """serde refuses a tagged mapping for an internally tagged enum (``!fixed {...}``)."""
    if isinstance(value, Tagged):
        raise PydanticCustomError(
            "unexpected_tag",
            "a YAML tag ({tag}) is not allowed here; the block's own key picks its kind",
            {"tag": value.tag},
        )
    return value


ScaleSpec = Annotated[
    AdaptiveScale | FixedScale | ManualScale, Field(discriminator="mode"), BeforeValidator(no_tag)
]

Condition = Annotated[Literal["started", "healthy", "ready"], _E]


class DependsSpec(Closed):
    service: Str
    condition: Condition = "healthy"
    timeout: OptDuration = Duration(300 * 10**9)
    on_timeout: Annotated[Literal["fail", "warn", "continue"], _E] = "fail"


class TcpCheck(Open):
    type: Literal["tcp"]
    port: U16


class HttpCheck(Open):
    type: Literal["http"]
    url: BufStr
    expect_status: U16 = 200


class CommandCheck(Open):
    type: Literal["command"]
    command: Str


HealthCheck = Annotated[
    TcpCheck | HttpCheck | CommandCheck, Field(discriminator="type"), BeforeValidator(no_tag)
]


class HealthSpec(Closed):
    start_grace: OptDuration = None
    interval: OptDuration = None
    timeout: OptDuration = None
    retries: U32 = 3
    check: HealthCheck


def default_health() -> HealthSpec:
    return HealthSpec(start_grace=Duration(5 * 10**9), check=TcpCheck(type="tcp", port=0))


# --- init, errors, lifecycle -----------------------------------------------------------------

BUILTIN_INIT_ACTIONS = (
    "init.wait_tcp",
    "init.wait_http",
    "init.run",
    "init.s3_pull",
    "init.s3_push",
)


def _json_value(value: Any) -> Any:
    """Free-form ``with:`` parameters become plain JSON-like values."""
    if isinstance(value, Plain):
        return value.value
    if isinstance(value, Tagged):
        return _json_value(value.value)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


FailureAction = Annotated[Literal["fail", "warn", "continue"], _E]


class InitStepSpec(Closed):
    model_config = ConfigDict(title="InitStep")  # its name in the JSON Schema (zlayer schema)

    id: Str
    uses: Str
    with_: Annotated[dict[str, Any], BeforeValidator(_json_value)] = Field(
        default_factory=dict, alias="with"
    )
    retry: OptU32 = None
    timeout: OptDuration = None
    on_failure: FailureAction = "fail"


class InitSpec(Closed):
    steps: tuple[InitStepSpec, ...] = ()


class InitFailurePolicy(Closed):
    action: Annotated[Literal["fail", "restart", "backoff"], _E] = "fail"


class PanicPolicy(Closed):
    action: Annotated[Literal["restart", "shutdown", "isolate"], _E] = "restart"


class ErrorsSpec(Closed):
    on_init_failure: InitFailurePolicy = Field(default_factory=InitFailurePolicy)
    on_panic: PanicPolicy = Field(default_factory=PanicPolicy)


class LifecycleSpec(Closed):
    delete_on_exit: Bool = False


# --- storage, devices, docker-style extras ---------------------------------------------------

Tier = Annotated[Literal["local", "cached", "network"], _E]


class BindStorage(Closed):
    type: Literal["bind"]
    source: BufStr
    target: BufStr
    readonly: Bool = False


class NamedStorage(Closed):
    type: Literal["named"]
    name: BufStr
    target: BufStr
    readonly: Bool = False
    tier: Tier = "local"
    size: OptBufStr = None


class AnonymousStorage(Closed):
    type: Literal["anonymous"]
    target: BufStr
    tier: Tier = "local"


class TmpfsStorage(Closed):
    type: Literal["tmpfs"]
    target: BufStr
    size: OptBufStr = None
    mode: OptU32 = None


class S3Storage(Closed):
    type: Literal["s3"]
    bucket: BufStr
    prefix: OptBufStr = None
    target: BufStr
    readonly: Bool = False
    endpoint: OptBufStr = None
    credentials: OptBufStr = None


StorageSpec = Annotated[
    BindStorage | NamedStorage | AnonymousStorage | TmpfsStorage | S3Storage,
    Field(discriminator="type"),
    BeforeValidator(no_tag),
]


class DeviceSpec(Closed):
    path: Str
    read: Bool = True
    write: Bool = True
    mknod: Bool = False


class PortMapping(Open):
    host_port: OptU16 = None
    container_port: U16
    protocol: Annotated[Literal["tcp", "udp"], _E] = "tcp"
    host_ip: Str = "0.0.0.0"


class RestartPolicy(Closed):
    kind: Annotated[Literal["no", "always", "unless_stopped", "on_failure"], _E]
    max_attempts: OptU32 = None
    delay: OptStr = None


class UlimitSpec(Closed):
    soft: OptI64 = None
    hard: OptI64 = None

    @model_validator(mode="after")
    def _fill(self) -> UlimitSpec:
        # ZLayer: a missing side takes the other side's value; both missing is 0/0.
        soft = self.soft if self.soft is not None else self.hard
        hard = self.hard if self.hard is not None else self.soft
        object.__setattr__(self, "soft", soft or 0)
        object.__setattr__(self, "hard", hard or 0)
        return self


class NodeSelector(Closed):
    labels: dict[str, Str] = Field(default_factory=dict)
    prefer_labels: dict[str, Str] = Field(default_factory=dict)


class TargetPlatform(Open):
    os: Annotated[Literal["linux", "windows", "macos"], _E]
    arch: Annotated[Literal["amd64", "arm64"], _E]
    os_version: OptStr = Field(default=None, alias="osVersion")


class PinAffinity(Closed):
    pin: Str


def _affinity(value: Any) -> Any:
    """``spread`` / ``pack`` as words, ``!pin "id=2"`` as a tagged scalar."""
    if isinstance(value, Tagged):
        if value.tag == "!pin":
            return {"pin": value.value}
        if value.tag in ("!spread", "!pack") and value.value in ("", None):
            return value.tag[1:]
        raise PydanticCustomError(
            "affinity", "unknown affinity tag {tag} (use spread, pack or !pin)", {"tag": value.tag}
        )
    if isinstance(value, dict):
        raise PydanticCustomError(
            "affinity", 'affinity is spread, pack or a tagged !pin "<selector>"'
        )
    return source_text(value)


Affinity = Annotated[
    Literal["spread", "pack"] | PinAffinity,
    BeforeValidator(_affinity),
    WithJsonSchema(
        {"type": "string", "description": 'spread, pack, or a node selector tagged !pin "id=2"'}
    ),
]

_ROLE_RE = re.compile(r"[a-z]([a-z0-9-]{0,28}[a-z0-9])?")


def _role(value: Any) -> Any:
    text = source_text(value)
    if isinstance(text, str) and not _ROLE_RE.fullmatch(text):
        raise PydanticCustomError(
            "role",
            "role '{text}' must be 1-30 lowercase letters, digits or '-', "
            "starting with a letter and not ending with '-'",
            {"text": text},
        )
    return text


class ReplicaGroup(Closed):
    role: Annotated[str, Strict(), BeforeValidator(_role)]
    count: Annotated[U32, Field(ge=1)]
    image: ImageSpec | None = None
    env: dict[str, Str] = Field(default_factory=dict)
    command: CommandSpec | None = None
    resources: ResourcesSpec | None = None
    affinity: Affinity = "spread"


class LogsConfig(Open):
    destination: Str = "disk"
    max_size_bytes: U64 = 100 * 1024 * 1024
    retention_secs: U64 = 7 * 24 * 60 * 60


class ServiceOverlay(Open):
    mode: Annotated[Literal["auto", "shared", "dedicated"], _E] = "auto"
    parent: OptStr = None


# --- wasm ------------------------------------------------------------------------------------


class WasmCapabilities(Closed):
    config: Bool = True
    keyvalue: Bool = True
    logging: Bool = True
    secrets: Bool = False
    metrics: Bool = True
    http_client: Bool = False
    cli: Bool = False
    filesystem: Bool = False
    sockets: Bool = False


class WasmPreopen(Closed):
    source: Str
    target: Str
    readonly: Bool = False


class WasmConfig(Closed):
    min_instances: U32 = 0
    max_instances: U32 = 10
    idle_timeout: Duration = Duration(300 * 10**9)
    request_timeout: Duration = Duration(30 * 10**9)
    max_memory: OptMemory = None
    max_fuel: U64 = 0
    epoch_interval: OptDuration = None
    capabilities: WasmCapabilities | None = None
    allow_http_outgoing: Bool = True
    allowed_hosts: tuple[Str, ...] = ()
    allow_tcp: Bool = False
    allow_udp: Bool = False
    preopens: tuple[WasmPreopen, ...] = ()
    kv_enabled: Bool = True
    kv_namespace: OptStr = None
    kv_max_value_size: U64 = 1_048_576
    secrets: tuple[Str, ...] = ()
    precompile: Bool = True

"""The config file's model (pydantic): every key checked, every error naming its
key and saying where the value came from. Loaded by :func:`.load_settings` only
when the file or the environment sets something.

The ``[daemon]`` section's model is made from :class:`.DaemonSettings` itself (its
fields, types and defaults), with the checks of :data:`_DAEMON_CHECKS`, so the two
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)
from pydantic_core import ErrorDetails

from reconciler.backoff import BackoffPolicy
from reconciler.durations import parse_duration
from reconciler.errors import ConfigError, ZlayerError
from reconciler.settings import (
    DEFAULT_POOL,
    DEFAULT_PROXY_IMAGE,
    ENV_OVERRIDES,
    RUNTIME_CHOICES,
    DaemonSettings,
    Settings,
)


def _runtime(name: str) -> str:
    if name not in RUNTIME_CHOICES:
        raise ValueError(f"is not one of {', '.join(RUNTIME_CHOICES)}")
    return name


def _network_pool(pool: str) -> str:
    try:
        network = ipaddress.IPv4Network(pool)
    except ValueError as exc:
        raise ValueError(f"{pool!r}: {exc}") from exc
    if network.prefixlen > 24:
        raise ValueError(f"{pool} is smaller than a /24")
    return str(network)


def _source(kind: str) -> str:
    if kind not in ("dir", "git"):
        raise ValueError(f"{kind!r} is not dir or git")
    return kind


def _more_than_zero(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


_Runtime = Annotated[str, AfterValidator(_runtime)]
_NetworkPool = Annotated[str, AfterValidator(_network_pool)]
_Number = Annotated[float, Field(ge=0)]
_Count = Annotated[int, Field(ge=0)]
"""A number of at least 0 (an int is taken as a float, a bool is not a number)."""


def _duration(value: object) -> object:
    """A duration as ZLayer writes it (``500ms``, ``30s``, ``5m``, ``1h``) becomes its
    seconds; a number is seconds already (and is checked as one)."""
    if not isinstance(value, str):
        return value
    try:
        return parse_duration(value) / 1e9
    except ValueError as exc:
        raise ValueError(
            f"must be a duration (like 30s or 5m) or a number of seconds, not {value!r} ({exc})"
        ) from exc


_Duration = Annotated[_Number, BeforeValidator(_duration)]
"""Seconds, at least 0: a number, or a duration string."""
_Seconds = Annotated[_Duration, AfterValidator(_more_than_zero)]
"""Seconds, more than 0 (a negative number is "not a number of at least 0")."""
_Path = Annotated[Path, Field(strict=False)]
"""A path, written as a string (a Path given in code is kept)."""


class _Strict(BaseModel):
    """Frozen, no unknown keys, no coercion: a string where a string is wanted."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


_DAEMON_CHECKS: dict[str, Any] = {
    "source": Annotated[str, AfterValidator(_source)] | None,
    "interval": _Seconds,
    "resync": _Seconds,
    "trusted_keys": _Path | None,
    "socket": _Path | None,
    "token_file": _Path | None,
    "webhook_secret_file": _Path | None,
    "journal_retention": _Number,
}
"""The ``[daemon]`` keys checked beyond their type in :class:`.DaemonSettings`."""

_hints = get_type_hints(DaemonSettings)
_daemon_fields: dict[str, Any] = {
    f.name: (_DAEMON_CHECKS.get(f.name, _hints[f.name]), f.default)
    for f in dataclasses.fields(DaemonSettings)
}
_Daemon = create_model("_Daemon", __base__=_Strict, __doc__="``[daemon]``.", **_daemon_fields)


class _Process(_Strict):
    """``[process]``."""

    network_pool: _NetworkPool = DEFAULT_POOL


class _Docker(_Strict):
    """``[docker]``."""

    publish_address: str = "0.0.0.0"


class _Swarm(_Strict):
    """``[swarm]``."""

    proxy_image: str = DEFAULT_PROXY_IMAGE
    endpoint_mode: Literal["auto", "vip", "dnsrr"] = "auto"


class _Backoff(_Strict):
    """``[backoff]``: checked further by :class:`BackoffPolicy`."""

    initial: _Duration = 1.0
    factor: _Number = 2.0
    cap: _Duration = 300.0
    reset_after: _Duration = 600.0
    jitter: _Number = 0.1
    give_up_after: _Count = 0


class _Autoscale(_Strict):
    """``[autoscale]``."""

    interval: _Duration = 15.0


class _ConfigFile(_Strict):
    """The config file as written (the env overrides merged in)."""

    runtime: _Runtime = "auto"
    state_dir: _Path | None = None
    process: _Process = Field(default_factory=_Process)
    docker: _Docker = Field(default_factory=_Docker)
    swarm: _Swarm = Field(default_factory=_Swarm)
    daemon: _Daemon = Field(default_factory=_Daemon)
    backoff: _Backoff = Field(default_factory=_Backoff)
    autoscale: _Autoscale = Field(default_factory=_Autoscale)


def checked(data: dict[str, Any], where: str, overridden: set[tuple[str, ...]]) -> Settings:
    """The settings ``data`` (the file's tables, the environment merged in) sets,
    or :class:`ConfigError` naming the first key that is wrong."""
    try:
        config = _ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0], where, overridden)) from exc
    try:
        backoff = BackoffPolicy(**config.backoff.model_dump())
    except ZlayerError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if config.autoscale.interval < 0.1:
        raise ConfigError(f"{where}: autoscale.interval must be at least 100ms")
    return Settings(
        runtime=config.runtime,
        state_dir=config.state_dir,
        network_pool=config.process.network_pool,
        publish_address=config.docker.publish_address,
        swarm_proxy_image=config.swarm.proxy_image,
        swarm_endpoint_mode=config.swarm.endpoint_mode,
        source=where,
        daemon=DaemonSettings(**config.daemon.model_dump()),
        backoff=backoff,
        autoscale_interval=config.autoscale.interval,
    )


_REASONS = {
    "string_type": "must be a string",
    "path_type": "must be a string",
    "bool_type": "must be true or false",
    "float_type": "must be a number of at least 0",
    "int_type": "must be a whole number of at least 0",
    "greater_than_equal": "must be a number of at least 0",
}


def _message(error: ErrorDetails, where: str, overridden: set[tuple[str, ...]]) -> str:
    """One of pydantic's errors as zlayer says it: the file, the dotted key, what is wrong."""
    loc = tuple(str(part) for part in error["loc"])
    key, kind, value = ".".join(loc), error["type"], error["input"]
    if kind == "extra_forbidden":
        known = ", ".join(sorted(_model_at(loc[:-1]).model_fields))
        return f"{where}: unknown key {key if len(loc) > 1 else repr(key)} (known: {known})"
    if kind == "model_type":
        return f"{where}: {key} must be a table ([{key}])"
    if kind in _REASONS:
        return f"{where}: {key} {_REASONS[kind]}, not {value!r}"
    if kind != "value_error":
        return f"{where}: {key}: {error['msg']}"
    reason = error.get("ctx", {}).get("error")
    if loc == ("runtime",):  # says where the name came from: the file or $ZLAYER_RUNTIME
        origin = ENV_OVERRIDES[loc] if loc in overridden else where
        return f"runtime {value!r} (from {origin}) {reason}"
    return f"{where}: {key} {reason}"


def _model_at(loc: tuple[str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = _ConfigFile
    for name in loc:
        model = model.model_fields[name].annotation  # type: ignore[assignment]
    return model

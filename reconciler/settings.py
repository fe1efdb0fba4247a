"""zlayer's own settings: the config file, overridden by environment variables,
overridden by command-line options.

The file is TOML: ``--config FILE``, else ``$ZLAYER_CONFIG``, else
``/etc/zlayer/config.toml`` when it exists. Every key is optional::

    runtime = "auto"                  # auto | docker | process   ($ZLAYER_RUNTIME)
    state_dir = "/var/lib/zlayer"     #                           ($ZLAYER_STATE_DIR)

    [process]
    network_pool = "10.213.0.0/16"    # one /24 per deployment is taken from it

    [docker]
    publish_address = "0.0.0.0"       # public endpoints ($ZLAYER_PUBLISH_ADDRESS)

    [daemon]                          # zlayer daemon; its options override these
    source = "dir"                    # dir | git
    path = "/etc/zlayer/specs"        # dir: the spec directory (or file)
    repo = "https://git.example/ops.git"  # git: anything git clone takes
    branch = "main"                   # git: the branch to follow (or ref = "v1.2")
    subdir = "hosts/web1"             # git: where the specs are in the repository
    interval = 60                     # git: seconds between fetches (±10% jitter)
    resync = 30                       # seconds between full reconciles
    allow_rewrite = false             # git: follow force-pushes
    verify_signatures = false         # git: apply only commits signed by trusted_keys
    trusted_keys = "/etc/zlayer/trusted-keys"
    socket = "/run/zlayer/zlayer.sock"
    listen = "127.0.0.1:9464"         # optional loopback TCP for the API
    token_file = "/etc/zlayer/token"  # bearer token for every call over TCP but the probes
    webhook_secret_file = "/etc/zlayer/webhook-secret"
    journal_retention = 14            # days of reconciles, events and runs kept

    [backoff]                         # crash restarts (seconds)
    initial = 1
    factor = 2
    cap = 300
    reset_after = 600
    jitter = 0.1
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from reconciler.backoff import BackoffPolicy
from reconciler.errors import ConfigError, ZlayerError

DEFAULT_CONFIG = Path("/etc/zlayer/config.toml")
RUNTIME_CHOICES = ("auto", "docker", "process")
DEFAULT_POOL = "10.213.0.0/16"


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
"""A number of at least 0 (an int is taken as a float, a bool is not a number)."""
_Seconds = Annotated[_Number, AfterValidator(_more_than_zero)]
"""Seconds, more than 0 (a negative number is "not a number of at least 0")."""
_Path = Annotated[Path, Field(strict=False)]
"""A path, written as a string (a Path given in code is kept)."""


class _Strict(BaseModel):
    """Frozen, no unknown keys, no coercion: a string where a string is wanted."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class DaemonSettings(_Strict):
    """``[daemon]``: what ``zlayer daemon`` follows and how it answers."""

    source: Annotated[str, AfterValidator(_source)] | None = None
    """``dir`` or ``git``; None: taken from which of ``path`` / ``repo`` is set."""
    path: str | None = None
    repo: str | None = None
    branch: str | None = None
    ref: str | None = None
    subdir: str = ""
    interval: _Seconds = 60.0
    """Seconds between fetches of a git source (±10% jitter)."""
    resync: _Seconds = 30.0
    """Seconds between full reconciles when nothing else triggers one."""
    allow_rewrite: bool = False
    verify_signatures: bool = False
    trusted_keys: _Path | None = None
    socket: _Path | None = None
    """The API's unix socket; None: ``STATE_DIR/zlayer.sock``."""
    listen: str | None = None
    """``HOST:PORT`` on loopback for the API over TCP; None: unix socket only."""
    token_file: _Path | None = None
    webhook_secret_file: _Path | None = None
    journal_retention: _Number = 14.0
    """Days of reconciles, events and job runs the journal keeps."""


class Settings(_Strict):
    """The settings in effect (:func:`load_settings`)."""

    runtime: _Runtime = "auto"
    """Which runtime commands use unless ``--runtime`` says otherwise."""
    state_dir: _Path | None = None
    """Where zlayer keeps its state; None: the default for the user (see cli.state)."""
    network_pool: _NetworkPool = DEFAULT_POOL
    """The process runtime's address pool; each deployment gets the lowest free /24."""
    publish_address: str = "0.0.0.0"
    """The host address the docker runtime publishes public endpoints on."""
    source: str = "defaults"
    """Where the settings came from, for messages."""
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    backoff: BackoffPolicy = Field(default_factory=BackoffPolicy)


class _Process(_Strict):
    """``[process]``."""

    network_pool: _NetworkPool = DEFAULT_POOL


class _Docker(_Strict):
    """``[docker]``."""

    publish_address: str = "0.0.0.0"


class _Backoff(_Strict):
    """``[backoff]``: checked further by :class:`BackoffPolicy`."""

    initial: _Number = 1.0
    factor: _Number = 2.0
    cap: _Number = 300.0
    reset_after: _Number = 600.0
    jitter: _Number = 0.1


class _ConfigFile(_Strict):
    """The config file as written (the env overrides merged in)."""

    runtime: _Runtime = "auto"
    state_dir: _Path | None = None
    process: _Process = Field(default_factory=_Process)
    docker: _Docker = Field(default_factory=_Docker)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    backoff: _Backoff = Field(default_factory=_Backoff)


ENV_OVERRIDES: dict[tuple[str, ...], str] = {
    ("runtime",): "ZLAYER_RUNTIME",
    ("state_dir",): "ZLAYER_STATE_DIR",
    ("docker", "publish_address"): "ZLAYER_PUBLISH_ADDRESS",
}
"""The keys an environment variable overrides (when it is set and not empty)."""
_DEFAULT_WHEN_EMPTY: tuple[tuple[str, ...], ...] = (
    ("runtime",),
    ("state_dir",),
    ("process", "network_pool"),
    ("docker", "publish_address"),
)
"""The keys an empty string leaves at their default."""


def default_state_dir() -> Path:
    """``$ZLAYER_STATE_DIR``; else ``/var/lib/zlayer`` for root and
    ``$XDG_STATE_HOME/zlayer`` (``~/.local/state/zlayer``) for everyone else."""
    if configured := os.environ.get("ZLAYER_STATE_DIR"):
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/zlayer")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "zlayer"


def config_path() -> Path | None:
    if configured := os.environ.get("ZLAYER_CONFIG"):
        return Path(configured)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_settings(path: Path | None = None) -> Settings:
    """The settings in effect: the file (``path`` or :func:`config_path`), then env."""
    path = path or config_path()
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    where = str(path) if path else "defaults"
    overridden = _with_env(data)
    try:
        config = _ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0], where, overridden)) from exc
    try:
        backoff = BackoffPolicy(**config.backoff.model_dump())
    except ZlayerError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return Settings(
        runtime=config.runtime,
        state_dir=config.state_dir,
        network_pool=config.process.network_pool,
        publish_address=config.docker.publish_address,
        source=where,
        daemon=config.daemon,
        backoff=backoff,
    )


def _with_env(data: dict[str, Any]) -> set[tuple[str, ...]]:
    """Drop the empty strings that mean "the default", then put the environment's
    overrides into ``data``; the keys overridden."""
    for keys in _DEFAULT_WHEN_EMPTY:
        table = _table(data, keys[:-1])
        if table is not None and table.get(keys[-1]) == "":
            del table[keys[-1]]
    overridden: set[tuple[str, ...]] = set()
    for keys, variable in ENV_OVERRIDES.items():
        value = os.environ.get(variable)
        table = _table(data, keys[:-1], create=True) if value else None
        if table is not None:
            table[keys[-1]] = value
            overridden.add(keys)
    return overridden


def _table(data: dict[str, Any], names: tuple[str, ...], create: bool = False) -> Any:
    """``data[names[0]][names[1]]…``, None where one of them is not a table."""
    table: Any = data
    for name in names:
        if create:
            table.setdefault(name, {})
        table = table.get(name)
        if not isinstance(table, dict):
            return None
    return table


_REASONS = {
    "string_type": "must be a string",
    "path_type": "must be a string",
    "bool_type": "must be true or false",
    "float_type": "must be a number of at least 0",
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

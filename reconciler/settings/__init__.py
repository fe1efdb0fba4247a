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

    [swarm]
    proxy_image = "haproxy:lts"       # each deployment's proxy ($ZLAYER_SWARM_PROXY_IMAGE);
                                      # "": none, public ports only where tasks run
    endpoint_mode = "auto"            # auto | vip | dnsrr: how service names resolve

    [daemon]                          # zlayer daemon; its options override these
    source = "dir"                    # dir | git
    path = "/etc/zlayer/specs"        # dir: the spec directory (or file)
    repo = "https://git.example/ops.git"  # git: anything git clone takes
    branch = "main"                   # git: the branch to follow (or ref = "v1.2")
    subdir = "hosts/web1"             # git: where the specs are in the repository
    interval = "1m"                   # git: between fetches (±10% jitter); or seconds
    resync = "30s"                    # between full reconciles (a duration or seconds)
    allow_rewrite = false             # git: follow force-pushes
    verify_signatures = false         # git: apply only commits signed by trusted_keys
    trusted_keys = "/etc/zlayer/trusted-keys"
    socket = "/run/zlayer/zlayer.sock"
    listen = "127.0.0.1:9464"         # optional loopback TCP for the API
    token_file = "/etc/zlayer/token"  # bearer token for every call over TCP but the probes
    webhook_secret_file = "/etc/zlayer/webhook-secret"
    journal_retention = 14            # days of reconciles, events and runs kept

    [backoff]                         # crash restarts (durations or seconds)
    initial = 1
    factor = 2
    cap = 300
    reset_after = 600
    give_up_after = 0                 # restarts in a row, then failed (0: never)
    jitter = 0.1

    [autoscale]                       # adaptive services (scale: adaptive, targets)
    interval = "15s"                  # between samples of their CPU and memory

The settings in effect are plain frozen dataclasses (:class:`Settings`); the file
and the environment are checked by a pydantic model (:mod:`.model`) whose errors
name the key. That model is loaded only when there is something to check: with no
config file and no override, as on most hosts, a command does not import pydantic
for its settings.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.backoff import BackoffPolicy
from reconciler.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/zlayer/config.toml")
DEFAULT_PROXY_IMAGE = "haproxy:lts"
"""HAProxy's official image: what a swarm's nodes pull for each deployment's proxy."""
RUNTIME_CHOICES = ("auto", "docker", "process", "swarm")
DEFAULT_POOL = "10.213.0.0/16"


@dataclass(frozen=True, kw_only=True)
class DaemonSettings:
    """``[daemon]``: what ``zlayer daemon`` follows and how it answers. Each key's
    check is in :mod:`.model`."""

    source: str | None = None
    """``dir`` or ``git``; None: taken from which of ``path`` / ``repo`` is set."""
    path: str | None = None
    repo: str | None = None
    branch: str | None = None
    ref: str | None = None
    subdir: str = ""
    interval: float = 60.0
    """Seconds between fetches of a git source (±10% jitter)."""
    resync: float = 30.0
    """Seconds between full reconciles when nothing else triggers one."""
    allow_rewrite: bool = False
    verify_signatures: bool = False
    trusted_keys: Path | None = None
    socket: Path | None = None
    """The API's unix socket; None: ``STATE_DIR/zlayer.sock``."""
    listen: str | None = None
    """``HOST:PORT`` on loopback for the API over TCP; None: unix socket only."""
    token_file: Path | None = None
    webhook_secret_file: Path | None = None
    journal_retention: float = 14.0
    """Days of reconciles, events and job runs the journal keeps."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The settings in effect (:func:`load_settings`)."""

    runtime: str = "auto"
    """Which runtime commands use unless ``--runtime`` says otherwise."""
    state_dir: Path | None = None
    """Where zlayer keeps its state; None: the default for the user (see cli.state)."""
    network_pool: str = DEFAULT_POOL
    """The process runtime's address pool; each deployment gets the lowest free /24."""
    publish_address: str = "0.0.0.0"
    swarm_proxy_image: str = DEFAULT_PROXY_IMAGE
    """``[swarm] proxy_image``: HAProxy's image for each deployment's proxy on a swarm
    (the official image's name by default); empty: no proxy."""
    swarm_endpoint_mode: str = "auto"
    """``[swarm] endpoint_mode``: ``vip``, ``dnsrr``, or ``auto`` (``vip`` where this
    host's kernel has IPVS and the engine is on this host)."""
    """The host address the docker runtime publishes public endpoints on."""
    source: str = "defaults"
    """Where the settings came from, for messages."""
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    autoscale_interval: float = 15.0
    """``[autoscale] interval``: seconds between the daemon's samples of adaptive
    services' CPU and memory."""


ENV_OVERRIDES: dict[tuple[str, ...], str] = {
    ("runtime",): "ZLAYER_RUNTIME",
    ("state_dir",): "ZLAYER_STATE_DIR",
    ("docker", "publish_address"): "ZLAYER_PUBLISH_ADDRESS",
    ("swarm", "proxy_image"): "ZLAYER_SWARM_PROXY_IMAGE",
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
    from_file = bool(data)
    overridden = _with_env(data)
    if not from_file:
        plain = _from_env_alone(data, where)
        if plain is not None:
            return plain
    from reconciler.settings.model import checked  # pydantic, only when there is data

    return checked(data, where, overridden)


def _from_env_alone(data: dict[str, Any], where: str) -> Settings | None:
    """The settings when nothing but the environment sets anything and what it sets
    needs no check (every value is a string; a runtime must be one of the choices);
    ``None`` sends ``data`` to the model, which says what is wrong."""
    runtime = data.get("runtime", "auto")
    if runtime not in RUNTIME_CHOICES:
        return None
    state_dir = data.get("state_dir")
    docker = data.get("docker") or {}
    return Settings(
        runtime=runtime,
        state_dir=Path(state_dir) if state_dir else None,
        publish_address=docker.get("publish_address", "0.0.0.0"),
        swarm_proxy_image=(data.get("swarm") or {}).get("proxy_image", DEFAULT_PROXY_IMAGE),
        source=where,
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

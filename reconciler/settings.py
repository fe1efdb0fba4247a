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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.backoff import BackoffPolicy
from reconciler.errors import ConfigError, ZlayerError

DEFAULT_CONFIG = Path("/etc/zlayer/config.toml")
RUNTIME_CHOICES = ("auto", "docker", "process")
DEFAULT_POOL = "10.213.0.0/16"


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """``[daemon]``: what ``zlayer daemon`` follows and how it answers."""

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


DAEMON_KEYS = {
    "source": str, "path": str, "repo": str, "branch": str, "ref": str, "subdir": str,
    "interval": float, "resync": float, "allow_rewrite": bool, "verify_signatures": bool,
    "trusted_keys": Path, "socket": Path, "listen": str, "token_file": Path,
    "webhook_secret_file": Path, "journal_retention": float,
}  # fmt: skip
BACKOFF_KEYS = {"initial", "factor", "cap", "reset_after", "jitter"}


@dataclass(frozen=True, slots=True)
class Settings:
    runtime: str = "auto"
    """Which runtime commands use unless ``--runtime`` says otherwise."""
    state_dir: Path | None = None
    """Where zlayer keeps its state; None: the default for the user (see cli.state)."""
    network_pool: str = DEFAULT_POOL
    """The process runtime's address pool; each deployment gets the lowest free /24."""
    publish_address: str = "0.0.0.0"
    """The host address the docker runtime publishes public endpoints on."""
    source: str = "defaults"
    """Where the settings came from, for messages."""
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)


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
    known = {"runtime", "state_dir", "process", "docker", "daemon", "backoff"}
    for key in sorted(set(data) - known):
        raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    process = _table(data, "process", {"network_pool"}, where)
    docker = _table(data, "docker", {"publish_address"}, where)
    runtime = os.environ.get("ZLAYER_RUNTIME") or _string(data, "runtime", where) or "auto"
    if runtime not in RUNTIME_CHOICES:
        origin = "ZLAYER_RUNTIME" if os.environ.get("ZLAYER_RUNTIME") else where
        raise ConfigError(
            f"runtime {runtime!r} (from {origin}) is not one of {', '.join(RUNTIME_CHOICES)}"
        )
    state = os.environ.get("ZLAYER_STATE_DIR") or _string(data, "state_dir", where)
    pool = _string(process, "network_pool", f"{where} [process]") or DEFAULT_POOL
    try:
        network = ipaddress.IPv4Network(pool)
    except ValueError as exc:
        raise ConfigError(f"{where}: process.network_pool {pool!r}: {exc}") from exc
    if network.prefixlen > 24:
        raise ConfigError(f"{where}: process.network_pool {pool} is smaller than a /24")
    publish = (
        os.environ.get("ZLAYER_PUBLISH_ADDRESS")
        or _string(docker, "publish_address", f"{where} [docker]")
        or "0.0.0.0"
    )
    return Settings(
        runtime=runtime,
        state_dir=Path(state) if state else None,
        network_pool=str(network),
        publish_address=publish,
        source=where,
        daemon=_daemon(_table(data, "daemon", set(DAEMON_KEYS), where), where),
        backoff=_backoff(_table(data, "backoff", BACKOFF_KEYS, where), where),
    )


def _daemon(table: dict[str, Any], where: str) -> DaemonSettings:
    values: dict[str, Any] = {}
    for key, kind in DAEMON_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if kind is float:
            values[key] = _number(value, f"daemon.{key}", where)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: daemon.{key} must be true or false, not {value!r}")
            values[key] = value
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: daemon.{key} must be a string, not {value!r}")
            values[key] = Path(value) if kind is Path else value
    if values.get("source") not in (None, "dir", "git"):
        raise ConfigError(f"{where}: daemon.source {values['source']!r} is not dir or git")
    for key in ("interval", "resync"):
        if key in values and values[key] <= 0:
            raise ConfigError(f"{where}: daemon.{key} must be more than 0 seconds")
    return DaemonSettings(**values)


def _backoff(table: dict[str, Any], where: str) -> BackoffPolicy:
    values = {key: _number(value, f"backoff.{key}", where) for key, value in table.items()}
    try:
        return BackoffPolicy(**values)
    except ZlayerError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where}: {key} must be a number of at least 0, not {value!r}")
    return float(value)


def _table(data: dict[str, Any], name: str, keys: set[str], where: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {name} must be a table ([{name}])")
    for key in sorted(set(table) - keys):
        raise ConfigError(f"{where}: unknown key {name}.{key} (known: {', '.join(sorted(keys))})")
    return table


def _string(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
    return value

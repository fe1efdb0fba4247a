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
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ZlayerError

DEFAULT_CONFIG = Path("/etc/zlayer/config.toml")
RUNTIME_CHOICES = ("auto", "docker", "process")
DEFAULT_POOL = "10.213.0.0/16"


class ConfigError(ZlayerError):
    """The config file cannot be read or holds a wrong value."""


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
    known = {"runtime", "state_dir", "process", "docker"}
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
    )


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

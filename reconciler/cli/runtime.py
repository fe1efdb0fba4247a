"""Choosing the runtime a command acts on (``--runtime``, ``$ZLAYER_RUNTIME``, the
config file, ``auto``) and telling the user which one it is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from reconciler.errors import ConfigError
from reconciler.runtimes import resolve_runtime
from reconciler.settings import RUNTIME_CHOICES, Settings, load_settings

RUNTIME_OPTION = click.option(
    "--runtime",
    type=click.Choice(RUNTIME_CHOICES),
    default=None,
    help="docker (DOCKER_HOST or the default socket), swarm (the swarm whose manager "
    "answers there), process (host processes), or auto: swarm when the engine is a swarm "
    "manager, docker when it answers, else process [default: $ZLAYER_RUNTIME, the config "
    "file's runtime, else auto].",
)
STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="zlayer's state directory (lock, secret key, process records) [default: "
    "$ZLAYER_STATE_DIR, the config file's state_dir, /var/lib/zlayer as root, else "
    "~/.local/state/zlayer].",
)


def settings_for(state_dir: Path | None = None) -> Settings:
    """The settings in effect, ``--state-dir`` over them; a bad config file is a usage error."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if state_dir is not None:
        settings = dataclasses.replace(settings, state_dir=state_dir)
    return settings


def pick_runtime(option: str | None, settings: Settings) -> str:
    """The runtime to use; says on stderr which one and why (stdout stays the command's)."""
    name, why = resolve_runtime(option, settings)
    click.echo(f"Runtime: {name} ({why})", err=True)
    return name

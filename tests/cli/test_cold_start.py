"""Cold start: what ``zlayer --version`` and ``zlayer --help`` load (structure, not timing),
and the command listing written without importing the commands."""

from __future__ import annotations

import click
import pytest

from reconciler import __version__
from reconciler.cli.main import COMMANDS, SUMMARIES, cli
from tests.support import heavy_in, modules_loaded_by


def loaded_by(*argv: str) -> tuple[str, list[str]]:
    """(stdout, every module loaded) of ``zlayer ARGV`` run in a fresh interpreter."""
    run, modules = modules_loaded_by(argv)
    return run.stdout, modules


def test_version_loads_no_heavy_library_and_no_command() -> None:
    out, modules = loaded_by("--version")
    assert out == f"zlayer {__version__}\n"
    assert heavy_in(modules) == []
    ours = [m for m in modules if m.startswith("reconciler")]
    assert ours == ["reconciler", "reconciler.cli", "reconciler.cli.escape", "reconciler.cli.main"]


def test_help_lists_every_command_without_importing_one() -> None:
    out, modules = loaded_by("--help")
    for name in COMMANDS:
        assert f"\n  {name} " in out, name
    assert heavy_in(modules) == []
    assert not set(COMMANDS.values()) & set(modules)


def test_the_probe_sees_what_a_command_loads() -> None:
    """The structural checks above could pass with a probe that saw nothing."""
    _, modules = loaded_by("validate", "--help")
    assert "reconciler.cli.validate" in modules
    assert "rich" in heavy_in(modules)


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_the_listing_is_clicks_own(width: int) -> None:
    """The listing from SUMMARIES is the one click writes after importing every command."""
    ctx = click.Context(cli, terminal_width=width, max_content_width=width)
    lazy, eager = ctx.make_formatter(), ctx.make_formatter()
    cli.format_commands(ctx, lazy)
    click.Group.format_commands(cli, ctx, eager)
    assert lazy.getvalue() == eager.getvalue()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_summary_is_its_commands_short_help(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert command.get_short_help_str(1000) == SUMMARIES[name]
    for limit in (20, 45, 70):
        summary = click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)
        assert summary == command.get_short_help_str(limit)
    assert set(SUMMARIES) == set(COMMANDS)

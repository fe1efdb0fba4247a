"""``zlayer validate``: check spec files and report every problem with file:line:col."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
from rich.console import Console

from reconciler.cli.render import problems_github, problems_json, problems_text
from reconciler.sources.files import DEFAULT_SPECS, collect
from reconciler.spec.load import LoadResult, SourceFile, load_sources
from reconciler.spec.problems import Problem


def load_paths(
    paths: tuple[str, ...], *, check_env: bool = False
) -> tuple[LoadResult, tuple[SourceFile, ...]]:
    """Collect and load the given paths (default: specs/); returns the result and the
    files read."""
    collected = collect(paths or (DEFAULT_SPECS,))
    result = load_sources(collected.files, env=dict(os.environ) if check_env else None)
    problems = collected.problems + result.problems
    return LoadResult(result.specs, problems), collected.files


def files_checked(files: Sequence[SourceFile], problems: Sequence[Problem]) -> int:
    """How many files a summary speaks of: those read, and those that could not be
    (a missing path is one file with a problem, not "1 problem in 0 files")."""
    return len({f.name for f in files} | {p.file for p in problems})


@click.command(
    epilog="""Examples:

\b
    zlayer validate                      # everything under specs/
    zlayer validate deploy/web.yaml --check-env
    zlayer validate specs/ --format github   # annotations in a GitHub Actions job
""",
)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="Output for people, for tools, or GitHub workflow annotations.",
)
@click.option(
    "--check-env",
    is_flag=True,
    help="Also fail when a $E:NAME value names a variable unset in this environment.",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "docker", "process", "swarm"]),
    help="Also fail on what this runtime cannot run (S3 init steps, reserved labels, "
    "no command.entrypoint for process, …).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="With --runtime: also fail on its warnings (fields applied in part or not at all).",
)
def validate(
    paths: tuple[str, ...], fmt: str, check_env: bool, runtime: str | None, strict: bool
) -> int:
    """Validate ZLayer specs (files, or directories searched for *.yaml / *.yml).

    Reports every problem in every file as PATH:LINE:COL: WHERE: MESSAGE and exits 1
    when there is any; exits 0 when all specs are valid. With --runtime it also
    reports, as warnings, what that runtime applies only in part or not at all (the
    plan's warnings); --strict makes them fail too. Changes nothing.
    """
    result, files = load_paths(paths, check_env=check_env)
    warnings: Sequence[Problem] = ()
    if runtime is not None and not result.problems:
        from reconciler.cli.runtime import pick_runtime, settings_for
        from reconciler.reconcile import runtime_problems

        settings = settings_for()
        runtime = pick_runtime(runtime, settings)
        problems, warnings = runtime_problems(runtime, result.specs, settings)
        result = LoadResult(result.specs, tuple(problems))
    if fmt == "json":
        deployments = [s.spec.deployment for s in result.specs]
        click.echo(
            problems_json(result.problems, [s.file for s in result.specs], deployments, warnings)
        )
    elif fmt == "github":
        if result.problems or warnings:
            click.echo(problems_github(result.problems, warnings))
    else:
        checked = files_checked(files, result.problems)
        problems_text(Console(file=sys.stdout), result.problems, checked, warnings)
    return 1 if result.problems or (strict and warnings) else 0

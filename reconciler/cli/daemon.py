"""``zlayer daemon`` (and ``daemon retry``), ``zlayer job``, ``zlayer history``,
``zlayer events``: the unattended loop and what it recorded.

Everything is checked before the daemon touches the host: the config file, the
source's options (a git source's branch/ref, trusted keys), the API's listen
address, the runtime.

What the journal, the daemon or the runtime says is printed through
:mod:`reconciler.cli.escape` (controls visible, no rich markup); the output of a
job run is the job's own and is passed through as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from reconciler.cli.escape import markup, visible, visible_line
from reconciler.cli.runtime import RUNTIME_OPTION, STATE_DIR_OPTION, pick_runtime, settings_for
from reconciler.daemon.client import call
from reconciler.daemon.journal import Journal
from reconciler.daemon.loop import Daemon
from reconciler.durations import parse_duration
from reconciler.errors import JournalDamaged, NoDaemon, ZlayerError
from reconciler.settings import DaemonSettings, Settings
from reconciler.sources.base import Source
from reconciler.sources.directory import DirSource
from reconciler.sources.git import GitOptions
from reconciler.sources.tracked_git import GitSource
from reconciler.statedir import default_state_dir

if TYPE_CHECKING:
    _ParamType = click.ParamType[float]
else:
    _ParamType = click.ParamType  # generic only in newer click (pyproject: click>=8.1)


class _Duration(_ParamType):
    """A duration as ZLayer writes it (``500ms``, ``30s``, ``5m``, ``1h``) or a number
    of seconds, as seconds; at least 0.1 s."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text)
            except ValueError:
                try:
                    seconds = parse_duration(text) / 1e9
                except ValueError as exc:
                    self.fail(f"{text!r} is not a duration (like 30s or 5m): {exc}", param, ctx)
        if not seconds >= 0.1:
            self.fail(f"{value!r} is shorter than 0.1s", param, ctx)
        return seconds


_DURATION = _Duration()


def _state_dir(settings: Settings) -> Path:
    return settings.state_dir or default_state_dir()


def _socket(settings: Settings) -> Path:
    return settings.daemon.socket or _state_dir(settings) / "zlayer.sock"


def _journal(settings: Settings) -> Journal:
    state = _state_dir(settings)
    if not Journal.exists(state):
        raise click.ClickException(
            visible(
                f"no journal in {state}: no daemon (or `zlayer job run`) has run with this"
                " state directory"
            )
        )
    return opened(state)


def opened(state: Path) -> Journal:
    """The journal in ``state``; a damaged one is the command's error (the daemon, its
    owner, moves it aside when it starts)."""
    try:
        return Journal.in_state_dir(state)
    except JournalDamaged as exc:
        raise click.ClickException(visible(str(exc))) from exc


@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
    zlayer daemon --dir /etc/zlayer/specs
    zlayer daemon --repo https://git.example/ops.git --branch main --path hosts/web1
    zlayer daemon --config /etc/zlayer/config.toml        # as systemd runs it
    zlayer daemon --dir specs/ --once                      # one full cycle, then exit
    zlayer daemon retry
""",
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config file [default: $ZLAYER_CONFIG, else /etc/zlayer/config.toml].",
)
@click.option(
    "--dir",
    "dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Follow this spec directory (or file). Repeatable.",
)
@click.option("--repo", help="Follow this git repository (anything git clone takes).")
@click.option("--branch", help="The branch to follow [default: the remote's HEAD].")
@click.option("--ref", help="A fixed tag or commit to follow instead of a branch.")
@click.option("--path", "subdir", help="The specs' directory inside the repository.")
@click.option(
    "--interval",
    type=_DURATION,
    help="Time between git fetches: a duration (30s, 5m) or seconds.",
)
@click.option(
    "--resync",
    type=_DURATION,
    help="Time between full reconciles: a duration (30s, 5m) or seconds.",
)
@click.option("--allow-rewrite", is_flag=True, default=None, help="Follow force-pushes.")
@click.option(
    "--verify-signatures",
    is_flag=True,
    default=None,
    help="Apply only commits signed by a key in --trusted-keys.",
)
@click.option("--trusted-keys", type=click.Path(file_okay=False, path_type=Path))
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="API unix socket.")
@click.option("--listen", help="Also serve the API on this loopback HOST:PORT.")
@click.option("--once", is_flag=True, help="Run one full cycle and exit (0: converged).")
@RUNTIME_OPTION
@STATE_DIR_OPTION
@click.pass_context
def daemon(ctx: click.Context, /, config: Path | None, once: bool, runtime: str | None,
           state_dir: Path | None, **options: Any) -> int:  # fmt: skip
    """Keep this host converged on a spec directory or a git repository, unattended.

    Reconciles on every change of the source, on webhooks, every --resync seconds
    and when a workload exits; restarts crashed replicas with exponential backoff;
    runs cron services; keeps a journal (history, events, job runs); serves
    health, metrics and its API on a unix socket. SIGTERM stops it (workloads keep
    running), SIGHUP reloads the config file.
    """
    if ctx.invoked_subcommand is not None:
        if config is not None:
            os.environ["ZLAYER_CONFIG"] = str(config)
        return 0
    if config is not None:
        os.environ["ZLAYER_CONFIG"] = str(config)
    settings = settings_for(state_dir)
    daemon_settings = _merged(settings.daemon, options)
    settings = dataclasses.replace(settings, daemon=daemon_settings)
    state = _state_dir(settings)
    try:
        source = _source(daemon_settings, state)
    except ZlayerError as exc:
        raise click.ClickException(visible(str(exc))) from exc
    name = pick_runtime(runtime, settings)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    try:
        runner = Daemon(settings, name, source, state_dir=state, once=once)
        code = asyncio.run(runner.run())
    except (ZlayerError, ValueError) as exc:
        raise click.ClickException(visible(str(exc))) from exc
    return code


def _merged(base: DaemonSettings, options: dict[str, Any]) -> DaemonSettings:
    """The config file's [daemon] with the command line's options over it."""
    changes: dict[str, Any] = {}
    if options["dirs"]:
        changes.update(source="dir", path=os.pathsep.join(str(d) for d in options["dirs"]))
    if options["repo"]:
        changes.update(source="git", repo=options["repo"])
    for key in ("branch", "ref", "subdir", "interval", "resync", "trusted_keys", "listen"):
        if options[key] is not None:
            changes[key] = options[key]
    for key in ("allow_rewrite", "verify_signatures"):
        if options[key]:
            changes[key] = True
    if options["socket_path"] is not None:
        changes["socket"] = options["socket_path"]
    if options["dirs"] and options["repo"]:
        raise click.UsageError("--dir and --repo: follow one source, not both")
    return dataclasses.replace(base, **changes)


def _source(settings: DaemonSettings, state: Path) -> Source:
    kind = settings.source or ("git" if settings.repo else "dir" if settings.path else None)
    if kind == "git":
        if not settings.repo:
            raise ZlayerError("a git source needs a repository: --repo URL (or daemon.repo)")
        options = GitOptions(
            url=settings.repo,
            branch=settings.branch,
            ref=settings.ref,
            path=settings.subdir,
            allow_rewrite=settings.allow_rewrite,
            verify_signatures=settings.verify_signatures,
            trusted_keys=settings.trusted_keys,
        )
        return GitSource(options, state / "source" / "git", interval=settings.interval)
    if kind == "dir":
        if not settings.path:
            raise ZlayerError("a directory source needs a path: --dir PATH (or daemon.path)")
        paths = [Path(p) for p in settings.path.split(os.pathsep)]
        for path in paths:
            if not path.exists():
                raise ZlayerError(f"--dir {path}: no such file or directory")
        return DirSource(paths)
    raise ZlayerError(
        "nothing to follow: give --dir PATH or --repo URL (or daemon.path / daemon.repo in"
        " the config file)"
    )


@daemon.command("retry")
@STATE_DIR_OPTION
def retry(state_dir: Path | None) -> int:
    """Forget revisions marked bad and replicas held by on_panic; reconcile again.

    Through the running daemon when one answers on its socket; otherwise the
    journal is changed directly and the next daemon start picks it up.
    """
    settings = settings_for(state_dir)
    try:
        status, body = call(_socket(settings), "POST", "/v1/retry")
    except NoDaemon:
        journal = _journal(settings)
        cleared, released = journal.clear_marks("bad"), journal.release_held()
        journal.close()
        click.echo(f"No daemon runs: {cleared} bad revision mark(s) cleared, {len(released)} "
                   "held replica(s) released in the journal.")  # fmt: skip
        return 0
    if status >= 300:
        raise click.ClickException(visible(f"the daemon answered {status}: {_error(body)}"))
    click.echo(
        visible(
            f"{body.get('cleared_bad_revisions', 0)} bad revision mark(s) cleared, "
            f"{len(body.get('released', []))} held replica(s) released; reconciling."
        )
    )
    return 0


def _error(body: dict[str, Any]) -> str:
    return str(body.get("error", body))


# --- zlayer job --------------------------------------------------------------------------


@click.group(epilog="Examples:\n\n\b\n    zlayer job run demo/report\n    zlayer job ls\n")
def job() -> None:
    """Run jobs and see their runs (rtype: job and cron)."""


@job.command("run")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
@click.argument("paths", nargs=-1, type=click.Path())
@RUNTIME_OPTION
@STATE_DIR_OPTION
def job_run(
    target: str, paths: tuple[str, ...], runtime: str | None, state_dir: Path | None
) -> int:
    """Run a job now: through the daemon when one runs, else directly from the specs
    at PATHS (default: specs/), waiting for it to end.

    Exit status (direct): the job's own exit status (1 when it could not start).
    """
    deployment, slash, service = target.partition("/")
    if not slash or not deployment or not service:
        raise click.UsageError(f"{target}: give DEPLOYMENT/SERVICE")
    settings = settings_for(state_dir)
    try:
        status, body = call(_socket(settings), "POST", f"/v1/jobs/{deployment}/{service}/run")
    except NoDaemon:
        return _run_directly(settings, runtime, deployment, service, paths)
    if status >= 300:
        raise click.ClickException(visible(f"the daemon answered {status}: {_error(body)}"))
    click.echo(visible(f"Run {body['run']} of {target}: {body['status']} (through the daemon)."))
    click.echo(visible(f"See it with: zlayer job logs {body['run']}"))
    return 0 if body["status"] != "failed" else 1


def _run_directly(
    settings: Settings, runtime: str | None, deployment: str, service: str, paths: tuple[str, ...]
) -> int:
    from reconciler import reconcile
    from reconciler.cli.plan import compile_paths
    from reconciler.daemon.jobs import Runs
    from reconciler.runtimes import open_runtime

    state = _state_dir(settings)
    settings = dataclasses.replace(settings, state_dir=state)
    inputs = reconcile.compile_inputs(state, None, "apply")
    desired = compile_paths(paths, inputs, "run", state)
    found = desired.services.get((deployment, service))
    if found is None:
        raise click.ClickException(visible(f"{deployment}/{service}: no such service in the specs"))
    if found.rtype not in ("job", "cron"):
        raise click.ClickException(visible(f"{deployment}/{service} is a {found.rtype}, not a job"))
    name = pick_runtime(runtime, settings)

    async def go() -> int:
        journal = opened(state)
        try:
            async with open_runtime(name, settings) as driver:
                runs = Runs(driver, journal, inputs)
                run, started = await runs.start(desired, found, "zlayer job run")
                click.echo(visible(f"Run {run} of {deployment}/{service}: {started}."), err=True)
                while runs.active:
                    await asyncio.sleep(0.3)
                    await runs.poll()
                record = journal.run(run)
        finally:
            journal.close()
        assert record is not None
        if record.log_tail:
            click.echo(record.log_tail)
        click.echo(_run_line(record), err=True)
        if record.status == "succeeded":
            return 0
        return record.exit_code if record.exit_code not in (None, 0) else 1

    try:
        return asyncio.run(go())
    except ZlayerError as exc:
        raise click.ClickException(visible(str(exc))) from exc


def _run_line(record: Any) -> str:
    code = "" if record.exit_code is None else f" (exit status {record.exit_code})"
    note = f": {record.note}" if record.note else ""
    return visible_line(f"Run {record.id} {record.status}{code}{note}")


@job.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@STATE_DIR_OPTION
def job_ls(limit: int, fmt: str, state_dir: Path | None) -> int:
    """Recent runs of jobs and cron services, newest first."""
    journal = _journal(settings_for(state_dir))
    rows = journal.runs(limit=limit)
    journal.close()
    if fmt == "json":
        click.echo(json.dumps([r.as_json() for r in rows], indent=2))
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("RUN", "SERVICE", "STATUS", "EXIT", "STARTED", "TRIGGER", "NOTE"):
        table.add_column(column)
    for r in rows:
        item = r.as_json()
        cells = (
            r.id, f"{r.deployment}/{r.service}", r.status,
            "-" if r.exit_code is None else str(r.exit_code), item["started"] or "-",
            r.trigger, r.note,
        )  # fmt: skip
        table.add_row(*_cells(cells))
    _console().print(table if rows else "No runs recorded.")
    return 0


@job.command("logs")
@click.argument("run")
@RUNTIME_OPTION
@STATE_DIR_OPTION
def job_logs(run: str, runtime: str | None, state_dir: Path | None) -> int:
    """The output of a run: the recorded tail once it ended, live while it runs."""
    settings = settings_for(state_dir)
    journal = _journal(settings)
    record = journal.run(run)
    journal.close()
    if record is None:
        raise click.ClickException(visible(f"no run {run} in the journal (see `zlayer job ls`)"))
    if record.status != "running":
        if record.log_tail:
            click.echo(record.log_tail)
        click.echo(_run_line(record), err=True)
        return 0
    from reconciler.observed import RunId
    from reconciler.runtimes import open_runtime

    name = pick_runtime(runtime, settings)
    state = _state_dir(settings)

    async def follow() -> None:
        async with open_runtime(name, dataclasses.replace(settings, state_dir=state)) as driver:
            async for line in driver.job_logs(RunId(record.deployment, record.service, run)):
                click.echo(line)

    asyncio.run(follow())
    return 0


def _console() -> Console:
    """For tables of journal values: no emoji codes, no highlighting; not on a terminal
    (a pipe, a CI log), rows never wrap, so no part of a value starts a line."""
    console = Console(highlight=False, soft_wrap=True, emoji=False)
    if not console.is_terminal:
        console.width = 100_000
    return console


def _cells(cells: tuple[str, ...]) -> list[str]:
    """A table row's values as rich markup: controls visible, brackets literal; the
    first starts the line, so it cannot be a workflow command either."""
    return [markup(cell, line_start=i == 0) for i, cell in enumerate(cells)]


# --- zlayer history / events ----------------------------------------------------------


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at else "-"


@click.command(epilog="Example:\n\n    zlayer history --limit 5")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@STATE_DIR_OPTION
def history(limit: int, fmt: str, state_dir: Path | None) -> int:
    """The daemon's recent reconciles: when, why, which revision, what came of it (UTC)."""
    journal = _journal(settings_for(state_dir))
    rows = journal.reconciles(limit)
    journal.close()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("#", "STARTED", "TOOK", "REVISION", "OUTCOME", "TRIGGER", "SUMMARY"):
        table.add_column(column)
    for r in rows:
        took = "-" if r["duration"] is None else f"{r['duration']:.2f}s"
        cells = (
            str(r["id"]), _when(r["started"]), took, (r["revision"] or "-")[:19],
            r["outcome"], r["trigger"][:60], r["summary"][:120],
        )  # fmt: skip
        table.add_row(*_cells(cells))
    _console().print(table if rows else "No reconciles recorded.")
    return 0


@click.command(epilog="Example:\n\n    zlayer events --target demo/web")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--target", help="Only this DEPLOYMENT/SERVICE[/REPLICA] (or source, daemon).")
@click.option("--kind", help="Only this kind (crashed, unhealthy, run-failed, …).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@STATE_DIR_OPTION
def events(
    limit: int, target: str | None, kind: str | None, fmt: str, state_dir: Path | None
) -> int:
    """What the daemon saw and did to workloads: exits, restarts, health changes, runs (UTC)."""
    journal = _journal(settings_for(state_dir))
    rows = journal.events(limit, target=target, kind=kind)
    journal.close()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return 0
    for row in reversed(rows):
        click.echo(
            visible_line(f"{_when(row['at'])}  {row['target']}  {row['kind']}: {row['message']}")
        )
    if not rows:
        click.echo("No events recorded.")
    return 0

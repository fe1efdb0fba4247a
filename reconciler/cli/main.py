"""Entry point: ``zlayer`` and its command group.

Exit codes: 0 ok, 1 error (invalid specs, bad arguments), 2 changes present
(``plan --detailed-exitcode``), 3 lock held by another apply, 130 interrupted.
Click's own usage errors would exit 2, which pipelines read as "changes";
they exit 1 here instead.
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import sys

import click

from reconciler import __version__
from reconciler.cli.escape import visible

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_LOCKED = 3

COMMANDS = {
    "validate": "reconciler.cli.validate",
    "spec": "reconciler.cli.spec",
    "schema": "reconciler.cli.spec",
    "plan": "reconciler.cli.plan",
    "observe": "reconciler.cli.plan",
    "apply": "reconciler.cli.apply",
    "destroy": "reconciler.cli.apply",
    "scale": "reconciler.cli.apply",
    "status": "reconciler.cli.status",
    "logs": "reconciler.cli.status",
    "daemon": "reconciler.cli.daemon",
    "job": "reconciler.cli.daemon",
    "history": "reconciler.cli.daemon",
    "events": "reconciler.cli.daemon",
}
"""Command → its module, imported only when the command runs (or for its --help):
``zlayer plan`` need not load the executor, nor ``validate`` the Docker client."""

SUMMARIES = {
    "validate": "Validate ZLayer specs (files, or directories searched for *.yaml / *.yml).",
    "spec": "Work with spec files.",
    "schema": "Print the JSON Schema of a ZLayer v1 spec file, for editors and linters.",
    "plan": "Show what applying the specs would change, and why.",
    "observe": "Write what a runtime reports as a snapshot (JSON, format zlayer-observed).",
    "apply": "Make the host match the specs: plan, confirm, then act in dependency order.",
    "destroy": "Stop and remove every workload of DEPLOYMENT, dependents first.",
    "scale": "Set how many replicas a scale: manual service runs, and apply it.",
    "status": "Every workload zlayer manages (state, health, restarts, age, image) and its routes.",
    "logs": "Output of SERVICE's replicas (SERVICE or DEPLOYMENT/SERVICE), each line "
    "prefixed with its replica when there are several.",
    "daemon": "Keep this host converged on a spec directory or a git repository, unattended.",
    "job": "Run jobs and see their runs (rtype: job and cron).",
    "history": "The daemon's recent reconciles: when, why, which revision, what came of it (UTC).",
    "events": "What the daemon saw and did to workloads: exits, restarts, health changes, "
    "runs (UTC).",
}
"""Each command's short help (its docstring's first sentence), so that ``zlayer --help``
lists the commands without importing one; a test keeps them equal to the docstrings."""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, written from :data:`SUMMARIES` (shortened by click's rule)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(n, click.Command(n, help=SUMMARIES[n]).get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example:\n\n    zlayer validate specs/",
)
@click.version_option(__version__, "--version", prog_name="zlayer", message="%(prog)s %(version)s")
def cli() -> None:
    """zlayer keeps a container host converged on ZLayer deployment specs.

    Validate specs, plan (see exactly what would change on the host, and why),
    then apply.
    """


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map click's usage errors to exit status 1.

    Output never ends in a traceback: characters the terminal's encoding cannot
    show are written as ``\\u2192`` escapes (``PYTHONIOENCODING=ascii``, a C
    locale), and an output that cannot be written (a full disk, ``> /dev/full``,
    a closed pipe) is one line on stderr and exit status 1.
    """
    _tolerant_streams()
    try:
        code = cli.main(args=argv, prog_name="zlayer", standalone_mode=False)
        sys.stdout.flush()
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        if type(exc) is click.ClickException:
            # Our messages quote specs, snapshots and runtime answers: one line, no controls.
            exc = click.ClickException(visible(exc.message))
        exc.show()
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRORS:
            raise
        _output_failed(exc)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


_OUTPUT_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EPIPE, errno.EBADF}
)
"""Errors writing standard output or error: no file name, one of these."""


def _tolerant_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _output_failed(exc: OSError) -> None:
    """Say once that the output could not be written, then point stdout at /dev/null so
    that the interpreter's final flush cannot fail again (with a traceback of its own)."""
    if exc.errno != errno.EPIPE:  # a closed pipe (``| head``) is the reader's choice
        try:
            sys.stderr.write(f"Error: cannot write the output: {exc.strerror or exc}\n")
            sys.stderr.flush()
        except OSError:
            pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass

"""Entry point: ``zlayer`` and its command group.

Exit codes: 0 ok, 1 error (invalid specs, bad arguments), 2 changes present
(``plan --detailed-exitcode``), 3 lock held by another apply, 130 interrupted.
Click's own usage errors would exit 2, which pipelines read as "changes";
they exit 1 here instead.
"""

from __future__ import annotations

import sys

import click

from reconciler import __version__
from reconciler.cli.apply import EXIT_LOCKED, apply, destroy
from reconciler.cli.plan import observe, plan
from reconciler.cli.spec import schema, spec
from reconciler.cli.status import logs, status
from reconciler.cli.validate import validate

EXIT_OK = 0
EXIT_ERROR = 1
__all__ = ["EXIT_ERROR", "EXIT_LOCKED", "EXIT_OK", "cli", "main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example:\n\n    zlayer validate specs/",
)
@click.version_option(__version__, "--version", prog_name="zlayer", message="%(prog)s %(version)s")
def cli() -> None:
    """zlayer keeps a container host converged on ZLayer deployment specs.

    Validate specs, plan (see exactly what would change on the host, and why),
    then apply.
    """


cli.add_command(validate)
cli.add_command(spec)
cli.add_command(schema)
cli.add_command(plan)
cli.add_command(observe)
cli.add_command(apply)
cli.add_command(destroy)
cli.add_command(status)
cli.add_command(logs)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map click's usage errors to exit status 1."""
    try:
        code = cli.main(args=argv, prog_name="zlayer", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else EXIT_OK)

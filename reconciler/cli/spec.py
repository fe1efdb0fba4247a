"""``zlayer spec dump`` and ``zlayer schema``."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from reconciler.cli.render import problems_text
from reconciler.cli.validate import files_checked, load_paths
from reconciler.spec.dump import dump_json, dump_yaml
from reconciler.spec.schema import spec_schema


@click.group(epilog="Example:\n\n    zlayer spec dump specs/demo.yaml --format json")
def spec() -> None:
    """Work with spec files."""


@spec.command(
    epilog="""Examples:

\b
    zlayer spec dump specs/demo.yaml
    zlayer spec dump specs/ --format json | jq .services
""",
)
@click.argument("path", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="YAML documents separated by ---, or one JSON object per line per deployment.",
)
def dump(path: str, fmt: str) -> int:
    """Print the normalized spec(s) at PATH with every default filled in.

    Invalid specs print their problems instead and exit 1.
    """
    result, files = load_paths((path,))
    if result.problems:
        problems_text(
            Console(file=sys.stderr), result.problems, files_checked(files, result.problems)
        )
        return 1
    for i, loaded in enumerate(result.specs):
        if fmt == "json":
            click.echo(json.dumps(json.loads(dump_json(loaded.spec))))
        else:
            if i:
                click.echo("---")
            click.echo(dump_yaml(loaded.spec), nl=False)
    return 0


@click.command(epilog="Example:\n\n    zlayer schema > zlayer-spec.schema.json")
def schema() -> int:
    """Print the JSON Schema of a ZLayer v1 spec file, for editors and linters."""
    click.echo(json.dumps(spec_schema(), indent=2))
    return 0

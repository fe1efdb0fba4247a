"""Problem renderers: text for people, JSON for tools, GitHub workflow annotations."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from rich.console import Console

from reconciler.cli.escape import markup, workflow_data, workflow_property
from reconciler.errors import InvalidSpecs
from reconciler.spec.problems import Problem


def problems_text(
    console: Console,
    problems: Sequence[Problem],
    checked: int,
    warnings: Sequence[Problem] = (),
) -> None:
    for problem in problems:
        console.print(
            markup(problem.render(), line_start=True), soft_wrap=True, highlight=False, emoji=False
        )
    for warning in warnings:
        console.print(
            markup(f"warning: {warning.render()}", line_start=True),
            soft_wrap=True,
            highlight=False,
            emoji=False,
        )
    files = "file" if checked == 1 else "files"
    warned = ""
    if warnings:
        warned = f", {len(warnings)} warning" + "s" * (len(warnings) != 1)
    if problems:
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        console.print(
            f"[bold red]✗[/] {count} {noun} in {checked} {files}{warned}", highlight=False
        )
    else:
        console.print(f"[bold green]✓[/] {checked} {files} valid{warned}", highlight=False)


def fail_with(problems: Sequence[Problem], files: int, heading: str) -> None:
    """Print ``heading`` and every problem on stderr, then exit 1."""
    console = Console(file=sys.stderr)
    console.print(heading, highlight=False, soft_wrap=True)
    problems_text(console, problems, max(files, len({p.file for p in problems})))
    raise SystemExit(1)


def fail_invalid(exc: InvalidSpecs) -> None:
    """:func:`fail_with` for specs a command cannot go on without."""
    problems = [p for p in exc.problems if isinstance(p, Problem)]
    fail_with(problems, exc.files, exc.heading)


def problems_json(
    problems: Sequence[Problem],
    files: Sequence[str],
    deployments: Sequence[str],
    warnings: Sequence[Problem] = (),
) -> str:
    return json.dumps(
        {
            "ok": not problems,
            "files": list(files),
            "deployments": list(deployments),
            "problems": [p.to_dict() for p in problems],
            "warnings": [w.to_dict() for w in warnings],
        },
        indent=2,
    )


def problems_github(problems: Sequence[Problem], warnings: Sequence[Problem] = ()) -> str:
    """``::error file=…,line=…,col=…::message`` lines (``::warning`` for ``warnings``)
    that annotate a pull request; the file and the message escaped by the
    workflow-command rules, so nothing in them can end the command or start another."""
    lines = []
    for level, p in [*(("error", p) for p in problems), *(("warning", w) for w in warnings)]:
        props = [f"file={workflow_property(p.file)}"]
        if p.mark is not None:
            props += [f"line={p.mark.line}", f"col={p.mark.col}"]
        message = f"{p.where}: {p.message}" if p.where else p.message
        if p.hint:
            message += f" (hint: {p.hint})"
        lines.append(f"::{level} {','.join(props)}::{workflow_data(message)}")
    return "\n".join(lines)

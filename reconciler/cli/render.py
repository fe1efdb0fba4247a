"""Problem renderers: text for people, JSON for tools, GitHub workflow annotations."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from reconciler.spec.problems import Problem


def problems_text(console: Console, problems: Sequence[Problem], checked: int) -> None:
    for problem in problems:
        console.print(escape(problem.render()), soft_wrap=True, highlight=False)
    files = "file" if checked == 1 else "files"
    if problems:
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        console.print(f"[bold red]✗[/] {count} {noun} in {checked} {files}", highlight=False)
    else:
        console.print(f"[bold green]✓[/] {checked} {files} valid", highlight=False)


def problems_json(
    problems: Sequence[Problem], files: Sequence[str], deployments: Sequence[str]
) -> str:
    return json.dumps(
        {
            "ok": not problems,
            "files": list(files),
            "deployments": list(deployments),
            "problems": [p.to_dict() for p in problems],
        },
        indent=2,
    )


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def problems_github(problems: Sequence[Problem]) -> str:
    """``::error file=…,line=…,col=…::message`` lines that annotate a pull request."""
    lines = []
    for p in problems:
        props = [f"file={_escape_property(p.file)}"]
        if p.mark is not None:
            props += [f"line={p.mark.line}", f"col={p.mark.col}"]
        message = f"{p.where}: {p.message}" if p.where else p.message
        if p.hint:
            message += f" (hint: {p.hint})"
        lines.append(f"::error {','.join(props)}::{_escape_data(message)}")
    return "\n".join(lines)

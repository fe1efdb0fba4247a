"""Apply progress: one line per event for people (rich), one JSON object per line for tools.

Actions and messages come from the specs and the runtime: in text they go through
:func:`reconciler.cli.escape.markup` (controls visible, no rich markup)."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console

from reconciler.cli.escape import markup
from reconciler.executor import Event, Report

STYLES = {
    "started": ("…", "dim"),
    "waiting": ("⧗", "dim"),
    "retrying": ("↻", "yellow"),
    "warning": ("!", "yellow"),
    "succeeded": ("✓", "green"),
    "failed": ("✗", "red"),
    "skipped": ("-", "yellow"),
    "rolled_back": ("↺", "red"),
}


class EventPrinter:
    """Prints each event as it comes: ``  3.2s ✓ create:demo/web/1  demo/web/1 running``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: Event) -> None:
        mark, style = STYLES[event.kind]
        self.console.print(
            f"[dim]{event.elapsed:6.1f}s[/] [{style}]{mark} {markup(event.action)}[/]"
            f"  {markup(event.message)}",
            emoji=False,
        )


def event_json(event: Event) -> str:
    return json.dumps({"event": "action", **asdict(event)})


def render_report(console: Console, report: Report) -> None:
    counts = report.counts()
    parts = [f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if n]
    style = "green" if report.ok else "red"
    verdict = "Apply complete" if report.ok else "Apply incomplete"
    console.print(
        f"\n[bold {style}]{verdict}:[/] {', '.join(parts)} in {report.elapsed:.1f}s", emoji=False
    )
    for outcome in report.outcomes:
        if outcome.status != "succeeded":
            console.print(
                f"  [{style}]{markup(outcome.action, line_start=True)}[/]: "
                f"{markup(outcome.status)}: {markup(outcome.message)}",
                emoji=False,
            )
        for warning in outcome.warnings:
            console.print(
                f"  [yellow]{markup(outcome.action, line_start=True)}[/]: warning: "
                f"{markup(warning)}",
                emoji=False,
            )

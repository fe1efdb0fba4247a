"""Apply progress: one line per event for people (rich), one JSON object per line for tools."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console
from rich.markup import escape

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
            f"[dim]{event.elapsed:6.1f}s[/] [{style}]{mark} {escape(event.action)}[/]"
            f"  {escape(event.message)}"
        )


def event_json(event: Event) -> str:
    return json.dumps({"event": "action", **asdict(event)})


def render_report(console: Console, report: Report) -> None:
    counts = report.counts()
    parts = [f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if n]
    style = "green" if report.ok else "red"
    verdict = "Apply complete" if report.ok else "Apply incomplete"
    console.print(f"\n[bold {style}]{verdict}:[/] {', '.join(parts)} in {report.elapsed:.1f}s")
    for outcome in report.outcomes:
        if outcome.status != "succeeded":
            console.print(
                f"  [{style}]{outcome.action}[/]: {outcome.status}: {escape(outcome.message)}"
            )
        for warning in outcome.warnings:
            console.print(f"  [yellow]{outcome.action}[/]: warning: {escape(warning)}")

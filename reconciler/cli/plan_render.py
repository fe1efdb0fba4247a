"""Plan renderings: text for terminals and logs (rich), Markdown for pull requests.

Both are deterministic renderings of the plan value: the same plan gives the
same bytes (no timestamps, no terminal-size dependence; lines never wrap).
Everything that comes from the specs or the host goes through
:mod:`reconciler.cli.escape`: in text, controls are shown as escapes and rich
markup is not interpreted; in Markdown, nothing from a value is HTML, Markdown
structure, a mention or a reference.
"""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console

from reconciler.cli.escape import markup, md_code, md_text
from reconciler.fingerprint import short
from reconciler.plan.diff import describe
from reconciler.plan.model import Action, Condition, Note, Plan

MARKERS = {
    "create": ("+", "green"),
    "register": ("+", "green"),
    "replace": ("~", "yellow"),
    "scale": ("~", "yellow"),
    "restart": ("↻", "cyan"),
    "start": ("↻", "cyan"),
    "stop": ("-", "red"),
    "remove": ("-", "red"),
    "unregister": ("-", "red"),
    "prune": ("-", "red"),
    "route": ("+", "green"),
    "reroute": ("~", "yellow"),
    "unroute": ("-", "red"),
}
_ALWAYS = ("create", "replace", "remove")
MAX_WAITS_SHOWN = 4


def summary_line(plan: Plan) -> str:
    """``Plan: 3 to create, 1 to replace, 0 to remove`` plus every other kind present."""
    counts = plan.summary()
    parts = [f"{n} to {kind}" for kind, n in counts.items() if n or kind in _ALWAYS]
    return "Plan: " + ", ".join(parts)


def _groups(plan: Plan) -> Iterator[tuple[str, str, list[Action]]]:
    """(deployment, service, actions) in order of first appearance in the plan."""
    grouped: dict[tuple[str, str], list[Action]] = {}
    for action in plan.actions:
        grouped.setdefault((action.target.deployment, action.target.service), []).append(action)
    for (deployment, service), actions in grouped.items():
        yield deployment, service, actions


def condition_text(condition: Condition) -> str:
    limit = "no timeout" if condition.timeout is None else f"timeout {condition.timeout:g}s"
    return f"{condition.service} {condition.condition} ({limit}, on timeout {condition.on_timeout})"


def _waits_text(action: Action) -> str:
    shown = ", ".join(action.waits_for[:MAX_WAITS_SHOWN])
    more = len(action.waits_for) - MAX_WAITS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def render_text(console: Console, plan: Plan, observed_from: str) -> None:
    def say(text: str) -> None:  # values in text: always markup(value)
        console.print(text, soft_wrap=True, highlight=False, emoji=False)

    say(
        f"Plan for specs revision [bold]{short(plan.spec_revision)}[/] against "
        f"{markup(observed_from)} (observed {short(plan.observed_fingerprint)})"
    )
    for note in plan.notes:
        say(f"[blue]note:[/] {markup(note.subject)}: {markup(note.message)}")
    for warning in plan.warnings:
        say(f"[magenta]warning:[/] {markup(warning.subject)}: {markup(warning.message)}")
    if plan.empty:
        say(
            f"[bold green]No changes.[/] The runtime matches specs revision "
            f"{short(plan.spec_revision)}."
        )
        return
    deployment_shown = None
    for deployment, service, actions in _groups(plan):
        if deployment != deployment_shown:
            say(f"\n[bold]{markup(deployment, line_start=True)}[/]")
            deployment_shown = deployment
        say(f"  [bold]{markup(service, line_start=True)}[/]")
        for action in actions:
            marker, colour = MARKERS[action.kind]
            say(
                f"    [{colour}]{marker} {action.kind:<10}[/] {markup(action.subject)}  "
                f"{markup(action.reason)}"
            )
            if len(action.changes) > 1:  # a single change is the reason already
                for change in action.changes:
                    say(f"        {markup(describe(change))}")
            for condition in action.conditions:
                say(f"        [dim]after:[/] {markup(condition_text(condition))}")
            if action.waits_for:
                say(f"        [dim]waits for:[/] {markup(_waits_text(action))}")
    say(f"\n[bold]{summary_line(plan)}.[/]")


def render_markdown(plan: Plan, observed_from: str) -> str:
    """A pull-request comment: headline, summary table, details folded away."""
    lines = [
        f"### zlayer plan: {summary_line(plan).removeprefix('Plan: ')}",
        "",
        f"Specs revision {md_code(short(plan.spec_revision))} against "
        f"{md_text(observed_from)} (observed {md_code(short(plan.observed_fingerprint))}).",
        "",
    ]
    lines += _markdown_notes("Note", plan.notes) + _markdown_notes("Warning", plan.warnings)
    if plan.empty:
        lines.append(f"**No changes.** The runtime matches specs revision "
                     f"{md_code(short(plan.spec_revision))}.")  # fmt: skip
        return "\n".join(lines) + "\n"
    lines += ["| | Action | Target | Reason |", "|---|---|---|---|"]
    for action in plan.actions:
        marker = MARKERS[action.kind][0]
        lines.append(
            f"| {marker} | {action.kind} | {md_code(action.subject, table=True)} "
            f"| {md_text(action.reason)} |"
        )
    lines += ["", "<details><summary>Details</summary>", ""]
    for action in plan.actions:
        target = md_code(action.subject)
        lines.append(f"- **{action.kind}** {target}: {md_text(action.reason)}")
        lines += [f"  - {md_code(describe(c))}" for c in action.changes]
        lines += [f"  - after {md_text(condition_text(c))}" for c in action.conditions]
        if action.waits_for:
            lines.append(f"  - waits for {md_text(_waits_text(action))}")
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _markdown_notes(label: str, notes: tuple[Note, ...]) -> list[str]:
    if not notes:
        return []
    return [f"> **{label}:** {md_text(n.subject)}: {md_text(n.message)}" for n in notes] + [""]

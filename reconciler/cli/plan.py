"""``zlayer plan`` and ``zlayer observe``: what would change, and what runs now."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from reconciler import reconcile
from reconciler.cli.escape import visible
from reconciler.cli.plan_render import render_markdown, render_text
from reconciler.cli.render import fail_invalid, fail_with
from reconciler.cli.runtime import STATE_DIR_OPTION, pick_runtime, settings_for
from reconciler.desired import CompileInputs, DesiredState
from reconciler.errors import InvalidSpecs, JournalDamaged, ZlayerError
from reconciler.observed import ObservedState
from reconciler.plan.serialize import plan_to_json
from reconciler.runtimes import RUNTIMES
from reconciler.snapshots import read_snapshot
from reconciler.spec.load import gc_paused
from reconciler.statedir import default_state_dir

EXIT_CHANGES = 2


@dataclass(frozen=True)
class Observed:
    state: ObservedState
    description: str


def _crash_loops(state_dir: Path) -> dict[str, str]:
    """The daemon's crash backoff on this host (target → what it will do), if it ran here."""
    from reconciler.daemon.journal import Journal

    if not Journal.exists(state_dir):
        return {}
    try:
        journal = Journal.in_state_dir(state_dir)
    except JournalDamaged as exc:
        click.echo(visible(f"warning: {exc}; crash backoff not shown"), err=True)
        return {}
    try:
        return journal.crash_loops(time.time())
    finally:
        journal.close()


def compile_paths(
    paths: tuple[str, ...], inputs: CompileInputs, verb: str, state_dir: Path | None
) -> DesiredState:
    """The desired state of the specs under ``paths`` (through the compile cache in
    ``state_dir``); exits 1 listing every problem."""
    try:
        return reconcile.compile_paths(paths, inputs, cache=state_dir).required(verb)
    except InvalidSpecs as exc:
        fail_invalid(exc)
        raise AssertionError("unreachable") from exc


def _observe(
    paths: tuple[str, ...],
    snapshot: str | None,
    ref: str | None,
    inputs: CompileInputs,
) -> Observed:
    if snapshot is not None:
        state = read_snapshot(snapshot)
        return Observed(state, f"snapshot {snapshot} of a {state.runtime} runtime")
    if ref is not None:
        found, commit, problems = reconcile.observe_ref(paths, ref, inputs)
        if found is None:
            fail_with(
                problems, len({p.file for p in problems}), f"The specs at {ref} are not valid."
            )
            raise AssertionError("unreachable")
        if reconcile.is_null_ref(ref):
            return Observed(found, "nothing (all-zero ref: new branch)")
        return Observed(found, f"git ref {ref} at {commit[:12]}")
    raise AssertionError("checked by _check_sources")


def _check_sources(snapshot: str | None, ref: str | None, runtime: str | None) -> None:
    given = [("--observed", snapshot), ("--against-ref", ref), ("--runtime", runtime)]
    chosen = [option for option, value in given if value]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} exclude each other; give one")
    if not chosen:
        raise click.UsageError(
            "say what to plan against: --observed SNAPSHOT, --against-ref REF or --runtime fake"
        )


@click.command(
    epilog="""Examples:

\b
    zlayer plan specs/ --observed observed.json
    zlayer plan --against-ref origin/main --format markdown
    zlayer plan --observed observed.json --target web --detailed-exitcode
    zlayer plan --observed observed.json --out plan.json
""",
)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--observed",
    "snapshot",
    metavar="SNAPSHOT",
    help="Plan against a snapshot written by `zlayer observe --out` (no runtime access).",
)
@click.option(
    "--against-ref",
    "ref",
    metavar="REF",
    help="Plan against the same spec paths at git REF, as if REF were running.",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", *sorted(RUNTIMES)]),
    help="Observe this runtime (read-only); auto: swarm when the engine is a swarm manager, "
    "docker when it answers, else process.",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="SERVICE",
    help="Plan only SERVICE (or DEPLOYMENT/SERVICE) and what it depends on. Repeatable.",
)
@click.option(
    "--no-prune",
    is_flag=True,
    help="Keep workloads whose service left the specs (the plan lists them).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="Text for people, JSON for tools, Markdown for PR comments.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Also save the plan as JSON, for `apply` to check it is not stale.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when the plan has changes, 0 when it has none.",
)
@STATE_DIR_OPTION
@click.option(
    "--secrets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="One file per secret for $S:NAME [default: STATE_DIR/secrets]. Without it, "
    "--observed and --against-ref plan offline: secrets are assumed unchanged.",
)
def plan(
    paths: tuple[str, ...],
    snapshot: str | None,
    ref: str | None,
    runtime: str | None,
    targets: tuple[str, ...],
    no_prune: bool,
    fmt: str,
    out: str | None,
    detailed_exitcode: bool,
    state_dir: Path | None,
    secrets_dir: Path | None,
) -> int:
    """Show what applying the specs would change, and why. Changes nothing.

    Compiles the specs (default: specs/), observes the runtime, a snapshot or a git
    ref, and prints the minimal ordered plan with a reason for every action. Exit
    status: 0 success, 1 error, 2 changes present (only with --detailed-exitcode).
    """
    _check_sources(snapshot, ref, runtime)
    settings = settings_for(state_dir)
    state_dir = settings.state_dir or default_state_dir()
    if runtime is not None:
        runtime = pick_runtime(runtime, settings)
    against: reconcile.Against = "snapshot" if snapshot else "ref" if ref else "host"
    inputs = reconcile.compile_inputs(state_dir, secrets_dir, against)
    # Planning builds many acyclic objects at once and exits; the cyclic GC would
    # only rescan them (a third of the time for 10,000 services).
    try:
        with gc_paused():
            desired = compile_paths(paths, inputs, "planned", state_dir)
            if runtime is not None:
                state, desired = reconcile.observe_checked(runtime, desired, settings)
                observed = Observed(state, f"the {runtime} runtime")
            else:
                observed = _observe(paths, snapshot, ref, inputs)
                if snapshot is not None:  # the snapshot says which runtime it is of
                    runtime_of = observed.state.runtime
                    desired = reconcile.with_runtime_warnings(runtime_of, desired, settings)
            result = reconcile.plan_for(
                desired,
                observed.state,
                prune=not no_prune,
                targets=targets,
                crash_loops=_crash_loops(state_dir) if runtime is not None else None,
                hold_panics=True,
            )
    except ZlayerError as exc:
        raise click.ClickException(str(exc)) from exc
    document = plan_to_json(result, observed.description)
    if out is not None:
        try:
            Path(out).write_text(document, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write: {exc.strerror}") from exc
    if fmt == "json":
        click.echo(document, nl=False)
    elif fmt == "markdown":
        click.echo(render_markdown(result, observed.description), nl=False)
    else:
        render_text(Console(file=sys.stdout), result, observed.description)
    return EXIT_CHANGES if detailed_exitcode and not result.empty else 0


@click.command(
    epilog="""Example:

\b
    zlayer observe --runtime fake --out observed.json
""",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", *sorted(RUNTIMES)]),
    required=True,
    help="The runtime to observe (read-only).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write the snapshot here instead of standard output.",
)
@STATE_DIR_OPTION
def observe(runtime: str, out: str | None, state_dir: Path | None) -> int:
    """Write what a runtime reports as a snapshot (JSON, format zlayer-observed).

    `zlayer plan --observed FILE` plans against it with no access to the runtime.
    """
    settings = settings_for(state_dir)
    runtime = pick_runtime(runtime, settings)
    try:
        text = reconcile.observe_runtime(runtime, settings).to_json() + "\n"
    except ZlayerError as exc:
        raise click.ClickException(str(exc)) from exc
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"--out {out}: cannot write: {exc.strerror}") from exc
    return 0

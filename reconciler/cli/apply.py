"""``zlayer apply`` and ``zlayer destroy``: make the host match the specs (or remove a
deployment), after showing the plan and getting a yes.

Order of work, so bad input changes nothing: take the host's apply lock, compile
and check every spec against what the runtime can do, observe, plan, show the
plan, confirm, and only then act. A saved plan (``zlayer plan --out``) is applied
only if the specs and the runtime are exactly as they were when it was made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from reconciler import reconcile
from reconciler.cli.apply_render import EventPrinter, event_json, render_report
from reconciler.cli.escape import markup
from reconciler.cli.plan import compile_paths
from reconciler.cli.plan_render import render_text
from reconciler.cli.runtime import RUNTIME_OPTION, STATE_DIR_OPTION, pick_runtime, settings_for
from reconciler.desired import CompileInputs, DesiredService, DesiredState
from reconciler.errors import LockHeld, ZlayerError
from reconciler.executor import DEFAULT_CONCURRENCY, Event
from reconciler.lock import ApplyLock
from reconciler.observed import ObservedState
from reconciler.plan.model import Plan
from reconciler.plan.serialize import PLAN_FORMAT, plan_to_json
from reconciler.removals import Removals
from reconciler.routing.control import RouteSync
from reconciler.routing.host import HostRoutes
from reconciler.runtimes import open_runtime
from reconciler.scale_counts import REASON as SCALE_REASON
from reconciler.scale_counts import ScaleCounts, is_manual
from reconciler.settings import Settings as RuntimeSettings
from reconciler.statedir import default_state_dir

EXIT_LOCKED = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Options:
    runtime: str
    settings: RuntimeSettings
    state_dir: Path
    secrets_dir: Path | None
    auto_approve: bool
    fmt: str
    lock_timeout: float
    concurrency: int | None


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        RUNTIME_OPTION,
        click.option("--auto-approve", is_flag=True, help="Do not ask before acting."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="text: the plan, then live progress. json: one JSON event per line.",
        ),
        click.option(
            "--lock-timeout",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Seconds to wait for another apply on this host to finish (then exit 3).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(min=0),
            default=DEFAULT_CONCURRENCY,
            show_default=True,
            help="Runtime calls in flight at once (0: no limit).",
        ),
        STATE_DIR_OPTION,
        click.option(
            "--secrets-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="One file per secret for $S:NAME [default: STATE_DIR/secrets].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(**kw: Any) -> Options:
    settings = settings_for(kw["state_dir"])
    state_dir = settings.state_dir or default_state_dir()
    settings = dataclasses.replace(settings, state_dir=state_dir)
    return Options(
        runtime=pick_runtime(kw["runtime"], settings),
        settings=settings,
        state_dir=state_dir,
        secrets_dir=kw["secrets_dir"],
        auto_approve=kw["auto_approve"],
        fmt=kw["fmt"],
        lock_timeout=kw["lock_timeout"],
        concurrency=kw["concurrency"] or None,
    )


@click.command(
    epilog="""Examples:

\b
    zlayer apply specs/
    zlayer apply specs/ --auto-approve --format json
    zlayer plan specs/ --runtime docker --out plan.json && zlayer apply plan.json specs/
""",
)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="SERVICE",
    help="Apply only SERVICE (or DEPLOYMENT/SERVICE) and what it depends on. Repeatable.",
)
@click.option("--no-prune", is_flag=True, help="Keep workloads whose service left the specs.")
@common_options
def apply(paths: tuple[str, ...], targets: tuple[str, ...], no_prune: bool, **kw: Any) -> int:
    """Make the host match the specs: plan, confirm, then act in dependency order.

    PATHS are spec files or directories (default: specs/). If the first is a plan
    saved by `zlayer plan --out`, that plan is applied, without asking, only when the
    specs and the runtime are unchanged since it was made. Exit status: 0 every
    action succeeded (or nothing to do), 1 an error or a failed action, 3 another
    apply holds the host's lock, 130 interrupted.
    """
    opts = _options(**kw)
    saved = _saved_plan(paths[0]) if paths else None
    spec_paths = paths[1:] if saved is not None else paths
    prune = saved["prune"] if saved is not None else not no_prune
    chosen = tuple(saved["targets"]) if saved is not None else targets

    def make_plan(desired: DesiredState, observed: ObservedState) -> Plan:
        result = reconcile.plan_for(
            desired, observed, prune=prune, targets=chosen, hold_panics=True
        )
        if saved is not None:
            _check_fresh(saved, paths[0], result)
        return result

    return _run(opts, spec_paths, make_plan, confirm=saved is None)


@click.command(
    epilog="""Examples:

\b
    zlayer scale demo/worker 4
    zlayer scale worker 0 specs/ --auto-approve
""",
)
@click.argument("target", metavar="SERVICE")
@click.argument("replicas", type=click.IntRange(min=0))
@click.argument("paths", nargs=-1, type=click.Path())
@common_options
def scale(target: str, replicas: int, paths: tuple[str, ...], **kw: Any) -> int:
    """Set how many replicas a scale: manual service runs, and apply it.

    SERVICE is SERVICE or DEPLOYMENT/SERVICE of the specs in PATHS (default:
    specs/). The count is kept in the state directory once applied: apply, plan
    and the daemon keep it (a lost replica is made again) until the next `zlayer
    scale`. A fixed or adaptive service's count is its spec's (or the autoscaler's).
    Same confirmation, lock and exit status as apply.
    """
    opts = _options(**kw)
    chosen: list[str] = []

    def prepare(desired: DesiredState) -> DesiredState:
        service = _manual_service(desired, target)
        chosen.append(f"{service.deployment}/{service.name}")
        services = dict(desired.services)
        services[service.key] = dataclasses.replace(service, replicas=replicas, scaled=SCALE_REASON)
        return dataclasses.replace(desired, services=services)

    def make_plan(desired: DesiredState, observed: ObservedState) -> Plan:
        return reconcile.plan_for(desired, observed, targets=tuple(chosen), hold_panics=True)

    def after(done: reconcile.Pass) -> None:
        if done.report is not None or done.plan.empty:  # approved: kept from now on
            ScaleCounts(opts.state_dir).set(chosen[0], replicas)

    return _run(opts, paths, make_plan, confirm=True, prepare=prepare, after=after)


def _manual_service(desired: DesiredState, target: str) -> DesiredService:
    deployment, _, name = target.rpartition("/")
    found = [
        s
        for s in desired.services.values()
        if s.name == name and (not deployment or s.deployment == deployment)
    ]
    if not found:
        raise click.ClickException(f"{target}: no such service in the specs")
    if len(found) > 1:
        listed = ", ".join(sorted(f"{s.deployment}/{s.name}" for s in found))
        raise click.ClickException(f"{target} is in more than one deployment: {listed}")
    (service,) = found
    if service.is_definition:
        raise click.ClickException(f"{target}: a {service.rtype} has no replicas to scale")
    if not is_manual(service) and service.scaled != SCALE_REASON:
        mode = "adaptive (its count is the autoscaler's)" if service.policy.scale else "fixed"
        raise click.ClickException(
            f"{target}: scale.mode is {mode}; only a scale: manual service is scaled by "
            "zlayer scale (change its spec instead)"
        )
    return service


@click.command(
    epilog="""Example:

\b
    zlayer destroy demo
""",
)
@click.argument("deployment")
@common_options
def destroy(deployment: str, **kw: Any) -> int:
    """Stop and remove every workload of DEPLOYMENT, dependents first.

    Named volumes are kept (they hold data). Same confirmation, lock and exit
    status as apply.
    """
    opts = _options(**kw)

    def make_plan(_desired: DesiredState, observed: ObservedState) -> Plan:
        return reconcile.destroy_plan(observed, deployment)

    return _run(opts, None, make_plan, confirm=True, scope=deployment)


def _run(
    opts: Options,
    spec_paths: tuple[str, ...] | None,
    make_plan: Callable[[DesiredState, ObservedState], Plan],
    *,
    confirm: bool,
    scope: str | None = None,
    prepare: Callable[[DesiredState], DesiredState] | None = None,
    after: Callable[[reconcile.Pass], None] | None = None,
) -> int:
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
    if confirm and not opts.auto_approve and not sys.stdin.isatty():
        raise click.UsageError(
            "apply asks for confirmation: run it in a terminal or pass --auto-approve"
        )
    desired: DesiredState | None = None
    try:
        with ApplyLock(opts.state_dir, opts.lock_timeout) as lock:
            inputs = reconcile.compile_inputs(opts.state_dir, opts.secrets_dir, "apply")
            desired = (
                compile_paths(spec_paths, inputs, "applied", opts.state_dir)
                if spec_paths is not None
                else DesiredState("destroy", {})
            )
            desired = ScaleCounts(opts.state_dir).applied(desired)
            if prepare is not None:
                desired = prepare(desired)
            return asyncio.run(
                _act(opts, desired, inputs, lock, make_plan, confirm, scope, out, err, after)
            )
    except LockHeld as exc:
        err.print(f"Error: {markup(str(exc))}")
        raise SystemExit(EXIT_LOCKED) from exc
    except KeyboardInterrupt:
        err.print("Interrupted. What was done stays done; run apply again to converge from there.")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except ZlayerError as exc:
        scrub = desired.scrubber() if desired is not None else str
        raise click.ClickException(scrub(str(exc))) from exc


async def _act(
    opts: Options,
    desired: DesiredState,
    inputs: CompileInputs,
    lock: ApplyLock,
    make_plan: Callable[[DesiredState, ObservedState], Plan],
    confirm: bool,
    scope: str | None,
    out: Console,
    err: Console,
    after: Callable[[reconcile.Pass], None] | None = None,
) -> int:
    description = f"the {opts.runtime} runtime"

    async def review(plan: Plan) -> bool:
        """Show the plan; ask before acting unless told not to."""
        if opts.fmt == "json":
            document = json.loads(plan_to_json(plan, description))
            click.echo(json.dumps({"event": "plan", "plan": document}, sort_keys=False))
        else:
            render_text(out, plan, description)
        if plan.empty or not confirm or opts.auto_approve:
            return True
        question = f"Apply these {len(plan.actions)} actions to {description}?"
        if click.confirm(question, default=False, err=True):
            return True
        err.print("Nothing was changed.")
        return False

    printer = EventPrinter(out) if opts.fmt == "text" else None

    def on_event(event: Event) -> None:
        if printer is not None:
            printer(event)
        else:
            click.echo(event_json(event))

    async with open_runtime(opts.runtime, opts.settings) as driver:
        done = await reconcile.run_pass(
            driver,
            reconcile.checked(driver, desired, "applied"),
            inputs,
            lock,
            make_plan=make_plan,
            review=review,
            scope=scope,
            concurrency=opts.concurrency,
            on_event=on_event,
            routes=HostRoutes.of(opts.state_dir, opts.settings.publish_address),
            removals=Removals(opts.state_dir),
        )
    if after is not None:
        after(done)
    _print_routes(done.routes, opts.fmt, out)
    report = done.report
    if report is None:
        return 0 if done.plan.empty else 1
    if opts.fmt == "json":
        summary = {
            "event": "summary",
            "ok": report.ok,
            **report.counts(),
            "elapsed": report.elapsed,
        }
        click.echo(json.dumps(summary))
    else:
        render_report(out, report)
    return 0 if report.ok else 1


def _print_routes(routes: RouteSync | None, fmt: str, out: Console) -> None:
    """What syncing the managed proxy changed (nothing when nothing changed)."""
    if routes is None or not (routes.changes or routes.warnings):
        return
    if fmt == "json":
        document = {"event": "routes", "proxy": routes.proxy, "changes": list(routes.changes)}
        click.echo(json.dumps({**document, "warnings": list(routes.warnings)}))
        return
    for change in routes.changes:
        out.print(f"route: {markup(change)}", highlight=False)
    for warning in routes.warnings:
        out.print(f"[yellow]route warning:[/] {markup(warning)}", highlight=False)


def _saved_plan(path: str) -> dict[str, Any] | None:
    """The plan saved at ``path``, or ``None`` when ``path`` is not a plan file."""
    file = Path(path)
    if file.suffix != ".json" or not file.is_file():
        return None
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: cannot read the saved plan: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        raise click.ClickException(f"{path}: not a plan saved by `zlayer plan --out`")
    return document


def _check_fresh(saved: dict[str, Any], path: str, now: Plan) -> None:
    """Refuse a saved plan whose inputs moved, saying what moved."""
    moved = []
    if saved.get("runtime") != now.runtime:
        moved.append(f"it was made for the {saved.get('runtime')} runtime, not {now.runtime}")
    if saved.get("spec_revision") != now.spec_revision:
        moved.append(
            f"the specs changed: revision {str(saved.get('spec_revision'))[:19]} "
            f"is now {now.spec_revision[:19]}"
        )
    elif saved.get("desired_fingerprint") != now.desired_fingerprint:
        moved.append("the compiled specs changed (environment or secrets)")
    if saved.get("observed_fingerprint") != now.observed_fingerprint:
        moved.append("the runtime changed since the plan was made")
    if not moved:
        return
    before = {a["id"] for a in saved.get("actions", [])}
    after = {a.id for a in now.actions}
    moved += [f"no longer planned: {a}" for a in sorted(before - after)]
    moved += [f"now also needed: {a}" for a in sorted(after - before)]
    listing = "\n  ".join(moved)
    raise click.ClickException(
        f"{path} is stale; nothing was applied:\n  {listing}\n"
        "Run `zlayer plan --out` again, review it, and apply that."
    )

"""``zlayer status`` and ``zlayer logs``: what runs now, and what it says (read-only).

What the runtime reports is shown through :mod:`reconciler.cli.escape` (controls
visible, one row per workload); the log lines themselves are the workload's own
output and are passed through as they are, like ``docker logs`` does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from reconciler.cli.escape import visible, visible_line
from reconciler.cli.runtime import RUNTIME_OPTION, STATE_DIR_OPTION, pick_runtime, settings_for
from reconciler.daemon.journal import Crash, Journal
from reconciler.desired import DesiredState
from reconciler.drivers.base import Driver, ProxyingCluster
from reconciler.errors import JournalDamaged, NoDaemon, ProxyError, ZlayerError
from reconciler.observed import ClusterService, ObservedState, Workload, WorkloadId
from reconciler.plan.planner import route_text
from reconciler.removals import Removals
from reconciler.routing.host import HostRoutes, RouteStat
from reconciler.runtimes import open_runtime
from reconciler.settings import Settings
from reconciler.statedir import default_state_dir


def _age(started_at: str | None, now: datetime) -> str:
    if not started_at:
        return "-"
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = int((now - started).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _image(state: ObservedState, workload: Workload) -> str:
    config = state.configs.get(workload.fingerprint) or {}
    return str(config.get("image", "?"))


@click.command(epilog="Example:\n\n    zlayer status --deployment demo --probe specs/")
@click.option(
    "--deployment", "deployments", multiple=True, help="Only this deployment. Repeatable."
)
@click.option(
    "--probe",
    "probe_specs",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="SPECS",
    help="Run the health checks of these specs once now, for the HEALTH column "
    "(without it: the running daemon's verdicts, else the runtime's own). Repeatable.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one document with every workload, its health and where that came from.",
)
@RUNTIME_OPTION
@STATE_DIR_OPTION
def status(
    deployments: tuple[str, ...],
    probe_specs: tuple[Path, ...],
    fmt: str,
    runtime: str | None,
    state_dir: Path | None,
) -> int:
    """Every workload zlayer manages (state, health, restarts, age, image) and its routes.

    HEALTH is zlayer's verdict, not the runtime's: with --probe, the specs' health
    checks run once now; else the running daemon's checks, when a daemon answers;
    else the runtime's own (Docker's HEALTHCHECK, none on the process runtime)."""
    settings = settings_for(state_dir)
    runtime = pick_runtime(runtime, settings)

    state_dir = settings.state_dir or default_state_dir()
    routes = HostRoutes.of(state_dir, settings.publish_address)
    desired = _probe_desired(probe_specs) if probe_specs else None

    async def observe() -> tuple[ObservedState, list[Workload], list[RouteStat], Verdicts]:
        async with open_runtime(runtime, settings) as driver:
            state = await driver.observe(deployments or None)
            state = Removals(state_dir).merged(state, deployments or None)
            if isinstance(driver, ProxyingCluster) and driver.proxied:
                state = await driver.observe_routes(state, deployments or None)
            if state.services_managed:  # a cluster's list of tasks is complete already
                workloads = list(state.workloads)
            else:
                # The list call leaves out start times and restart counts; ask per replica.
                detailed = await asyncio.gather(*(driver.status(w.id) for w in state.workloads))
                workloads = [d or w for d, w in zip(detailed, state.workloads, strict=True)]
            verdicts = await _probed(driver, desired, workloads) if desired else None
        try:
            served = await routes.stats(deployments or None)
        except ProxyError:
            served = []  # HAProxy went away meanwhile: no route to show
        return state, workloads, served, verdicts

    try:
        state, workloads, served, probed = asyncio.run(observe())
    except ZlayerError as exc:
        raise click.ClickException(visible(str(exc))) from exc
    source, verdicts = ("probe", probed) if probed is not None else _daemon_verdicts(settings)
    now = datetime.now(UTC)
    crashes = _crash_loops(settings)
    scaled = _autoscaled(settings)
    if fmt == "json":
        document = _document(runtime, state, workloads, served, crashes, source, verdicts, now)
        document["autoscaled"] = scaled
        click.echo(json.dumps(document, indent=2, ensure_ascii=True))
        return 0
    if not workloads:
        click.echo(f"No workloads managed by zlayer on the {runtime} runtime.")
        _print_removed(state)
        return 0
    placed = any(w.node for w in workloads)  # a cluster: say where each task runs
    rows: list[tuple[str, ...]] = [
        ("DEPLOYMENT", "SERVICE", "REPLICA", "STATE", "HEALTH", "RESTARTS", "AGE", "IMAGE")
        + (("NODE",) if placed else ())
    ]
    for w in workloads:
        row: tuple[str, ...] = (
            w.deployment,
            w.service,
            str(w.replica) if w.replica is not None else "-",
            w.state,
            _health(w, verdicts)[0],
            str(_restarts(w, crashes)),
            _age(w.started_at, now) if w.status == "running" else "-",
            _image(state, w),
        ) + ((w.node or "-",) if placed else ())
        rows.append(tuple(visible(cell) for cell in row))
    _table(rows)
    for line in _cluster_lines(state, workloads) + _cluster_routes(state):
        click.echo(visible_line(line))
    shown = {str(w.id) for w in workloads}
    for target, crash in sorted(crashes.items()):
        if target in shown and (crash.streak or crash.held):
            click.echo(visible_line(f"{target}: {crash.describe(now.timestamp())}"))
    for w in workloads:
        verdict, problem = _health(w, verdicts)
        if problem and verdict == "unhealthy":
            click.echo(visible_line(f"{w.id}: {problem}"))
    click.echo(visible_line(f"health: {HEALTH_SOURCES[source]}"))
    for name, count in sorted(scaled.items()):
        if not deployments or name.split("/", 1)[0] in deployments:
            line = f"{name}: autoscaled to {count.get('replicas')} replicas ({count.get('reason')})"
            click.echo(visible_line(line))
    _print_removed(state)
    if served:
        click.echo("")
        _table(_route_rows(served))
    return 0


def _running(service: ClusterService, workloads: list[Workload]) -> int:
    return sum(
        1 for w in workloads
        if (w.deployment, w.service) == (service.deployment, service.service)
        and w.status == "running"
    )  # fmt: skip


def _cluster_lines(state: ObservedState, workloads: list[Workload]) -> list[str]:
    """For a cluster: each service whose tasks are not all running, or whose last
    update the engine rolled back, in one line each."""
    out = []
    for c in sorted(state.services, key=lambda c: c.id):
        running = _running(c, workloads)
        if c.replicas is not None and running < c.replicas:
            out.append(f"{c.id}: {running} of {c.replicas} tasks running")
        if c.update_state in ("rollback_completed", "rollback_paused", "paused"):
            message = c.update_message or "no message from the engine"
            out.append(f"{c.id}: last update {c.update_state.replace('_', ' ')}: {message}")
        elif c.update_state in ("updating", "rollback_started"):
            out.append(f"{c.id}: {c.update_state.replace('_', ' ')}")
    return out


def _cluster_routes(state: ObservedState) -> list[str]:
    """For a cluster whose deployments have proxies of their own: what each serves,
    and whether they run."""
    if not (state.services_managed and state.routes_managed):
        return []
    out = [
        f"{r.deployment}: {route_text(r)} → {r.service}, on every node (its proxy)"
        for r in sorted(state.routes, key=lambda r: (r.deployment, r.port, r.service))
    ]
    if state.routes and not state.proxy_running:
        out.append("a deployment's proxy has no task running: its ports do not answer")
    return out


Verdicts = dict[str, tuple[str, str]] | None
"""Replica → (verdict, problem) by zlayer's checks; None when zlayer has none."""

HEALTH_SOURCES = {
    "probe": "the specs' checks, run once now (--probe)",
    "daemon": "the running daemon's checks",
    "runtime": "the runtime's own (no daemon answers; --probe SPECS runs the checks now)",
}


def _health(workload: Workload, verdicts: Verdicts) -> tuple[str, str]:
    if verdicts is not None and str(workload.id) in verdicts:
        return verdicts[str(workload.id)]
    return workload.health, ""


def _restarts(workload: Workload, crashes: dict[str, Crash]) -> int:
    crash = crashes.get(str(workload.id))
    return max(workload.restart_count, crash.restarts) if crash else workload.restart_count


def _probe_desired(paths: tuple[Path, ...]) -> DesiredState:
    """The specs whose health checks ``--probe`` runs (no secrets needed: a check
    holds none, and the replicas already run with theirs)."""
    from reconciler.reconcile import compile_paths, standin_inputs

    compiled = compile_paths([str(p) for p in paths], standin_inputs())
    if compiled.desired is None:
        listing = "\n".join(p.render() for p in compiled.problems)
        raise click.ClickException(visible(f"--probe: the specs cannot be compiled:\n{listing}"))
    return compiled.desired


async def _probed(driver: Driver, desired: DesiredState, workloads: list[Workload]) -> Verdicts:
    """One run of each running replica's health check (those the specs check)."""
    from reconciler import probes
    from reconciler.daemon.health import checks_something
    from reconciler.executor import probe_env, resolver

    async def one(workload: Workload) -> tuple[str, tuple[str, str]] | None:
        service = desired.services.get((workload.deployment, workload.service))
        if service is None or workload.replica is None or workload.status != "running":
            return None
        policy = service.policy.health
        if not checks_something(policy):
            return None
        try:
            env = await probe_env(driver, workload.id, policy)
            problem = await probes.health_probe(policy, resolver(driver, desired, workload.id), env)
        except ZlayerError as exc:
            problem = str(exc)
        verdict = ("unhealthy", problem) if problem else ("healthy", "")
        return str(workload.id), verdict

    found = await asyncio.gather(*(one(w) for w in workloads))
    scrub = desired.scrubber()  # a check's URL or command may hold a secret literal
    return {t: (v, scrub(p)) for t, (v, p) in (item for item in found if item is not None)}


def _daemon_verdicts(settings: Settings) -> tuple[str, Verdicts]:
    """The running daemon's health verdicts, when one answers on its socket."""
    from reconciler.daemon.client import call

    socket = settings.daemon.socket or (settings.state_dir or default_state_dir()) / "zlayer.sock"
    try:
        code, body = call(socket, "GET", "/v1/status", timeout=5.0)
    except NoDaemon:
        return "runtime", None
    health = body.get("health") if code == 200 else None
    if not isinstance(health, dict):
        return "runtime", None
    return "daemon", {str(t): (str(v), "") for t, v in health.items()}


def _document(
    runtime: str,
    state: ObservedState,
    workloads: list[Workload],
    served: list[RouteStat],
    crashes: dict[str, Crash],
    source: str,
    verdicts: Verdicts,
    now: datetime,
) -> dict[str, Any]:
    """``status --format json``."""
    out = []
    for w in workloads:
        verdict, problem = _health(w, verdicts)
        crash = crashes.get(str(w.id))
        out.append(
            {
                "deployment": w.deployment,
                "service": w.service,
                "replica": w.replica,
                "state": w.state,
                "status": w.status,
                "exit_code": w.exit_code,
                "health": verdict,
                "health_problem": problem or None,
                "runtime_health": w.health,
                "restarts": _restarts(w, crashes),
                "crash_loop": crash.describe(now.timestamp())
                if crash and (crash.streak or crash.held)
                else None,
                "started_at": w.started_at,
                "image": _image(state, w),
                "node": w.node,
            }
        )
    return {
        "runtime": runtime,
        "health_source": source,
        "workloads": out,
        "services": [
            {**dataclasses.asdict(c), "running": _running(c, workloads)}
            for c in sorted(state.services, key=lambda c: c.id)
        ],
        "routes": [dataclasses.asdict(r) for r in served],
        "removed_on_exit": [dataclasses.asdict(r) for r in state.removed_on_exit],
    }


def _print_removed(state: ObservedState) -> None:
    for r in sorted(state.removed_on_exit, key=lambda r: r.id):
        line = f"{r.id}: {r.exited}; removed at {r.removed_at} (lifecycle.delete_on_exit)"
        click.echo(visible_line(line))


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            visible_line(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            ).rstrip()
        )


def _route_rows(served: list[RouteStat]) -> list[tuple[str, ...]]:
    """The managed proxy's servers: one row per replica in each route, HAProxy's counts."""
    rows: list[tuple[str, ...]] = [
        ("ROUTE", "PORT", "REPLICA", "PROXY", "CHECK", "ACTIVE", "REQUESTS", "ERRORS", "AVG")
    ]
    for r in served:
        row = (
            f"{r.deployment}/{r.service}/{r.endpoint}",
            f":{r.port}",
            "-" if r.replica is None else str(r.replica),
            r.status,
            r.check or "-",
            str(r.sessions),
            str(r.requests),
            str(r.errors),
            f"{r.response_ms}ms",
        )
        rows.append(tuple(visible(cell) for cell in row))
    return rows


def _crash_loops(settings: Settings) -> dict[str, Crash]:
    """The daemon's crash records of this host (its journal), if a daemon ever ran."""
    crashes: dict[str, Crash] = _from_journal(settings, lambda journal: journal.crashes(), {})
    return crashes


def _autoscaled(settings: Settings) -> dict[str, Any]:
    """The daemon's autoscaler's counts (service → replicas, reason, at)."""
    from reconciler.daemon.autoscale import STATE_KEY

    found = _from_journal(settings, lambda journal: journal.get(STATE_KEY), {})
    return found if isinstance(found, dict) else {}


_WARNED: set[Path] = set()
"""State directories whose damaged journal this process has warned about."""


def _from_journal(settings: Settings, read: Callable[[Journal], Any], none: Any) -> Any:
    state_dir = settings.state_dir or default_state_dir()
    if not Journal.exists(state_dir):
        return none
    try:
        journal = Journal.in_state_dir(state_dir)
    except JournalDamaged as exc:
        if state_dir not in _WARNED:  # once, however many times status reads it
            _WARNED.add(state_dir)
            click.echo(visible_line(f"warning: {exc}"), err=True)  # the runtime's view shows
        return none
    try:
        return read(journal)
    finally:
        journal.close()


@click.command(
    epilog="Examples:\n\n\b\n    zlayer logs web\n    zlayer logs demo/web --replica 2 -f"
)
@click.argument("service")
@click.option("--replica", type=click.IntRange(min=1), help="Only this replica.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines of each replica.")
@RUNTIME_OPTION
@STATE_DIR_OPTION
def logs(
    service: str,
    replica: int | None,
    follow: bool,
    tail: int | None,
    runtime: str | None,
    state_dir: Path | None,
) -> int:
    """Output of SERVICE's replicas (SERVICE or DEPLOYMENT/SERVICE), each line
    prefixed with its replica when there are several."""
    settings = settings_for(state_dir)
    chosen = pick_runtime(runtime, settings)
    try:
        return asyncio.run(_logs(service, replica, follow, tail, chosen, settings))
    except KeyboardInterrupt:
        return 0
    except ZlayerError as exc:
        raise click.ClickException(visible(str(exc))) from exc


async def _logs(
    service: str,
    replica: int | None,
    follow: bool,
    tail: int | None,
    runtime: str,
    settings: Settings,
) -> int:
    async with open_runtime(runtime, settings) as driver:
        targets = _targets(await driver.observe(), service, replica)
        prefix = len(targets) > 1
        await asyncio.gather(*(_print_logs(driver, t, follow, tail, prefix) for t in targets))
    return 0


def _targets(state: ObservedState, service: str, replica: int | None) -> list[WorkloadId]:
    deployment, _, name = service.rpartition("/")
    found = [
        w.id
        for w in state.workloads
        if w.service == name
        and (not deployment or w.deployment == deployment)
        and (replica is None or w.replica == replica)
    ]
    deployments = {t.deployment for t in found}
    if len(deployments) > 1:
        listed = ", ".join(f"{d}/{name}" for d in sorted(deployments))
        raise click.ClickException(
            visible(f"{service} is in several deployments; say which: {listed}")
        )
    if not found:
        which = f" replica {replica}" if replica else ""
        raise click.ClickException(
            visible(f"{service}{which}: no such workload on the {state.runtime} runtime")
        )
    return found


async def _print_logs(
    driver: Driver, target: WorkloadId, follow: bool, tail: int | None, prefix: bool
) -> None:
    label = (
        visible_line(f"{target.service}/{target.replica} | ") if prefix and target.replica else ""
    )
    async with contextlib.aclosing(driver.logs(target, follow=follow, tail=tail)) as lines:
        async for line in lines:
            sys.stdout.write(f"{label}{line}\n")
            sys.stdout.flush()

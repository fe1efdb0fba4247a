"""The one reconcile pipeline: spec files → desired state → observed state → plan →
execution, for every command and the daemon alike.

::

    compile_inputs ─► compile_paths / compile_files ─► Compiled.required() ─► DesiredState
                                                                                  │
    open_runtime ─► checked (what the runtime can do) ─► run_pass ◄───────────────┘
                                                           │ observe → make_plan → review
                                                           │ → execute (under the lock)
                                                           ▼
                                                          Pass (observed, plan, report)

``zlayer plan``, ``apply``, ``destroy``, ``observe``, ``validate --runtime``, ``job run``
and the daemon call these functions; nothing else compiles specs, calls the planner
or runs the executor. What differs between them is passed in: where the specs come
from, what is observed (a runtime, a snapshot, a git ref), how the plan is made
(``plan_for``, ``destroy_plan``, or the daemon's supervised plan), and what happens
between planning and acting (the CLI shows the plan and asks; the daemon stops
replicas its crash policy gives up on). Rendering belongs to the CLI, triggers and
revision choice to the daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_bytes
from typing import Literal

from reconciler.compile_cache import Entry
from reconciler.desired import (
    CompileInputs,
    DesiredService,
    DesiredState,
    as_running,
    compile_specs,
    content_revision,
    routed_endpoints,
)
from reconciler.drivers.base import Driver, ProxyingCluster
from reconciler.errors import InvalidSpecs, UnsupportedSpecs, ZlayerError
from reconciler.executor import DEFAULT_CONCURRENCY, Event, ExecutorSettings, Report, execute
from reconciler.lock import ApplyLock
from reconciler.observed import ObservedState, RemovedOnExit, RouteServer, WorkloadId
from reconciler.plan.model import Note, Plan
from reconciler.plan.planner import plan_changes
from reconciler.probes import init_step_problem
from reconciler.removals import Record, Removals
from reconciler.route_table import planned_addresses, route_table, routes_of
from reconciler.routing.control import RouteSync
from reconciler.routing.host import HostRoutes, drain_grace, routing_warnings
from reconciler.routing.swarm import ClusterRoutes
from reconciler.runtimes import open_runtime
from reconciler.scale_counts import ScaleCounts
from reconciler.settings import Settings, default_state_dir
from reconciler.sources.files import DEFAULT_SPECS, Collected, collect
from reconciler.spec.load import LoadedSpec, iter_sources
from reconciler.spec.positions import warning_path
from reconciler.spec.problems import Problem, ProblemSink, format_path
from reconciler.spec.yamldoc import Document, parse_document
from reconciler.statedir import SecretsDir, ensure_secret_key, read_secret_key

Against = Literal["host", "apply", "snapshot", "ref"]

# --- compiling -----------------------------------------------------------------------


def compile_inputs(state_dir: Path, secrets_dir: Path | None, against: Against) -> CompileInputs:
    """What compiling needs besides the spec files, by what the result is for.

    ``apply`` (apply, the daemon, job runs) creates the host's secret key when it is
    missing; ``host`` (plan against a runtime) only reads it. Against a ``snapshot``
    without ``secrets_dir``, plan offline: no host key, so sensitive values are taken
    as recorded. Against a git ``ref`` both sides compile here, so without
    ``secrets_dir`` one throwaway key makes their sensitive values comparable (a
    changed password shows as changed) while ``$S:`` references stay names.
    """
    env = dict(os.environ)
    if against == "ref" and secrets_dir is None:
        return CompileInputs(env=env, secret_key=token_bytes(32), secret=None)
    if against == "snapshot" and secrets_dir is None:
        return CompileInputs(env=env, secret_key=None, secret=None)
    key = ensure_secret_key(state_dir) if against == "apply" else read_secret_key(state_dir)
    return CompileInputs(
        env=env, secret_key=key, secret=SecretsDir(secrets_dir or state_dir / "secrets")
    )


@dataclass(frozen=True, slots=True)
class Compiled:
    """The result of compiling spec files: the desired state, or every problem found."""

    desired: DesiredState | None
    problems: tuple[Problem, ...]
    files: int
    """How many spec files were read."""
    invalid: bool = False
    """The problems are the files' own (syntax, fields, rules), found before compiling."""
    cached: bool = False
    """The desired state came from the compile cache (no YAML read, no model built)."""

    @property
    def load_problems(self) -> tuple[Problem, ...]:
        """The files' own problems: the specs are not valid."""
        return self.problems if self.invalid else ()

    @property
    def compile_problems(self) -> tuple[Problem, ...]:
        """Problems found compiling valid files (an unset ``$E:`` variable, a missing
        secret): the specs cannot be compiled."""
        return () if self.invalid else self.problems

    def required(self, verb: str) -> DesiredState:
        """The desired state; raises :class:`InvalidSpecs` saying nothing was ``verb``."""
        if self.desired is not None and not self.invalid:
            return self.desired
        what = "are not valid" if self.invalid else "cannot be compiled"
        raise InvalidSpecs(f"The specs {what}; nothing was {verb}.", self.problems, self.files)


def compile_files(
    collected: Collected,
    inputs: CompileInputs,
    revision: str | None = None,
    *,
    cache: Path | None = None,
) -> Compiled:
    """Load, validate and compile spec files (``revision``: the source's, else one
    derived from the files' content); every problem with its file:line:col.

    With ``cache`` (a state directory), an unchanged spec set compiled before under
    the same inputs comes from :mod:`reconciler.compile_cache` instead, and a fresh
    result without problems is stored there."""
    revision = revision if revision is not None else content_revision(collected.files)
    entry = Entry.locate(collected, inputs, cache)
    if entry is not None:
        hit = entry.read(inputs, revision)
        if hit is not None:
            return Compiled(hit, (), len(collected.files), cached=True)
    problems = list(collected.problems)

    def loaded() -> Iterator[LoadedSpec]:
        for spec, found in iter_sources(collected.files):
            problems.extend(found)
            if spec is not None:
                yield spec

    desired, found = compile_specs(loaded(), revision, inputs)
    files = len(collected.files)
    if problems:
        return Compiled(None, tuple(problems), files, invalid=True)
    if entry is not None and desired is not None:
        entry.write(desired)
    return Compiled(desired, tuple(found), files)


def compile_paths(
    paths: Sequence[str], inputs: CompileInputs, *, cache: Path | None = None
) -> Compiled:
    """:func:`compile_files` of the spec files under ``paths`` (default: specs/)."""
    return compile_files(collect(paths or (DEFAULT_SPECS,)), inputs, cache=cache)


# --- what the runtime can do ---------------------------------------------------------


def check_runtime(driver: Driver, desired: DesiredState) -> tuple[DesiredState, list[str]]:
    """``desired`` checked against what the runtime can do: (the state with the
    runtime's warnings added to each service's own, every error). Errors mean the
    specs cannot be applied there, so nothing may be touched."""
    errors: list[str] = []
    services = {}
    for key, service in desired.services.items():
        found, warnings = _service_limits(driver, service)
        warnings += routing_warnings(service, driver.routable)
        subject = f"{key[0]}/{key[1]}"
        where = f"{service.file}: {subject}" if service.file else subject
        errors += [f"{where}: {message}" for message in found]
        services[key] = dataclasses.replace(
            service,
            warnings=service.warnings + warnings,
            notes=service.notes + driver.limits(service).notes,
        )
    if driver.routable or _proxied(driver):
        table = route_table(desired.services.values(), planned_addresses(driver.internal_routable))
        errors += list(table.problems)
    if _proxied(driver):
        errors += shared_ports(desired)
    return dataclasses.replace(desired, services=services), errors


def _proxied(driver: Driver) -> bool:
    return isinstance(driver, ProxyingCluster) and driver.proxied


def shared_ports(desired: DesiredState) -> list[str]:
    """Public ports two deployments ask for, on a cluster where each deployment's
    proxy publishes its ports on every node (one host can share a port among
    deployments by host and path; two proxies cannot)."""
    users: dict[int, set[str]] = {}
    for service in desired.services.values():
        for endpoint in routed_endpoints(service.config):
            users.setdefault(int(endpoint["port"]), set()).add(service.deployment)
    return [
        f"port {port}: deployments {', '.join(sorted(names))} all route it, and each "
        "deployment's proxy owns its ports on every node of the swarm"
        for port, names in sorted(users.items())
        if len(names) > 1
    ]


Routes = HostRoutes | ClusterRoutes
"""What keeps a runtime's routes: the host's managed proxy, or a cluster's own."""


def routing_for(driver: Driver, routes: Routes | None) -> Routes | None:
    """Who keeps ``driver``'s routes: a cluster with proxies of its own keeps them
    (``routes`` is the host's proxy, which has nothing to do there), else the host's
    managed proxy where the runtime routes through it."""
    if isinstance(routes, ClusterRoutes):
        return routes
    if isinstance(driver, ProxyingCluster) and _proxied(driver):
        return ClusterRoutes(driver)
    if routes is None or not driver.routable:
        return None
    return routes


def with_runtime_warnings(
    name: str, desired: DesiredState, settings: Settings | None = None
) -> DesiredState:
    """``desired`` with the warnings runtime ``name`` gives (no engine, no host: for a
    plan against a snapshot of that runtime, in a pull request). Its errors are
    ``validate --runtime``'s and ``apply``'s to give: a check without the secrets
    cannot tell them all."""
    if name not in ("docker", "process"):
        return desired
    return check_runtime(open_runtime(name, settings), desired)[0]


def checked(driver: Driver, desired: DesiredState, verb: str) -> DesiredState:
    """:func:`check_runtime`, raising :class:`UnsupportedSpecs` on any error."""
    result, errors = check_runtime(driver, desired)
    if errors:
        raise UnsupportedSpecs(limits_message(driver.name, errors, verb))
    return result


def limits_message(runtime: str, errors: list[str], verb: str) -> str:
    listing = "\n  ".join(errors)
    return (
        f"the specs ask for what the {runtime} runtime cannot do; nothing was {verb}:\n  {listing}"
    )


def _service_limits(driver: Driver, service: DesiredService) -> tuple[list[str], tuple[str, ...]]:
    """(errors, warnings) of ``service`` on ``driver``'s runtime, without the
    ``deployment/service:`` prefix the driver may give them."""
    limits = driver.limits(service)
    subject = f"{service.deployment}/{service.name}: "
    errors = [e.removeprefix(subject) for e in limits.errors]
    errors += [
        f"init step {step.id}: {problem}"
        for step in service.policy.init
        if (problem := init_step_problem(step))
    ]
    return errors, tuple(w.removeprefix(subject) for w in limits.warnings)


def standin_inputs() -> CompileInputs:
    """Compile inputs for checking specs away from their values: every variable and
    secret set, to an empty value (``validate --runtime``, ``status --probe``)."""
    return CompileInputs(env=_AnyEnv(), secret_key=b"validate", secret=lambda _name: "")


class _AnyEnv(dict[str, str]):
    """Every variable set (to an empty value): for checking specs without their host."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return ""


def runtime_problems(
    name: str, specs: Sequence[LoadedSpec], settings: Settings | None = None
) -> tuple[list[Problem], list[Problem]]:
    """What runtime ``name`` cannot run in valid ``specs`` (errors, at the services'
    positions), and what it runs only in part or not at all (warnings, as the plan
    gives them, each at the field it is about). Needs no engine: environment and
    secrets are stood in for, engine facts are the defaults (the engine's own are
    checked by ``plan --runtime`` and ``apply``)."""
    driver = open_runtime(name, settings)
    inputs = standin_inputs()
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for loaded in specs:
        desired, found = compile_specs([loaded], "validate", inputs)
        problems += found
        if desired is None:
            continue
        located = Located(loaded)
        warnings += [
            located.problem(warning_path((), message, {}), message)
            for _, message in desired.warnings
        ]
        for (_, service_name), service in desired.services.items():
            base = ("services", service_name)
            messages, warned = _service_limits(driver, service)
            problems += [located.problem(base, message) for message in messages]
            steps = [step.id for step in service.policy.init]
            warnings += [
                located.problem(warning_path(base, message, service.config, steps), message)
                for message in (
                    *service.warnings,
                    *warned,
                    *routing_warnings(service, driver.routable),
                )
            ]
    return problems, warnings


class Located:
    """Problems at positions of one spec file, its document parsed once."""

    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self._document: Document | None = None

    def problem(self, path: tuple[str | int, ...], message: str) -> Problem:
        """``message`` at ``path``, or at its nearest ancestor the file holds."""
        if self._document is None:
            self._document = parse_document(self.loaded.text, ProblemSink(self.loaded.file))
        document = self._document or self.loaded.document
        while path and path not in document.marks:
            path = path[:-1]
        return Problem(self.loaded.file, document.mark_for(path), format_path(path), message)


# --- observing -----------------------------------------------------------------------


def host_routes(settings: Settings | None) -> HostRoutes:
    """The managed proxy of the host ``settings`` describe."""
    settings = settings or Settings()
    return HostRoutes.of(settings.state_dir or default_state_dir(), settings.publish_address)


def removals(settings: Settings | None) -> Removals:
    """The records of replicas removed on exit on the host ``settings`` describe."""
    settings = settings or Settings()
    return Removals(settings.state_dir or default_state_dir())


async def observe_host(
    driver: Driver,
    routes: Routes | None,
    deployments: Sequence[str] | None = None,
    desired: DesiredState | None = None,
    removals: Removals | None = None,
) -> ObservedState:
    """What ``driver``'s runtime runs (of ``deployments``, else everything), with the
    managed proxy's routes where the runtime's public endpoints go through it. With
    ``desired``, replicas whose image moved in its registry (``pull_policy`` always or
    newer) are marked outdated, so the plan replaces them. With ``removals``, the
    replicas removed on exit (``lifecycle.delete_on_exit``) are listed too."""
    observed = await driver.observe(list(deployments) if deployments else None)
    if desired is not None:
        observed = await driver.image_drift(list(desired.services.values()), observed)
    if removals is not None:
        observed = removals.merged(observed, deployments)
    keeper = routing_for(driver, routes)
    if keeper is None:
        return observed
    return await keeper.observe(observed, deployments, driver.internal_routable)


def observe_runtime(name: str, settings: Settings | None = None) -> ObservedState:
    """What runtime ``name`` runs now, and the host's routes (read-only)."""

    async def observe() -> ObservedState:
        async with open_runtime(name, settings) as driver:
            return await observe_host(driver, host_routes(settings), removals=removals(settings))

    return asyncio.run(observe())


def observe_checked(
    name: str, desired: DesiredState, settings: Settings | None = None
) -> tuple[ObservedState, DesiredState]:
    """Observe runtime ``name`` and check ``desired`` against it (see :func:`checked`)."""

    async def observe() -> tuple[ObservedState, DesiredState]:
        async with open_runtime(name, settings) as driver:
            counted = ScaleCounts((settings or Settings()).state_dir or default_state_dir())
            result = checked(driver, counted.applied(desired), "planned")
            routes, removed = host_routes(settings), removals(settings)
            state = await observe_host(driver, routes, desired=result, removals=removed)
            return state, result

    return asyncio.run(observe())


def is_null_ref(ref: str) -> bool:
    """``ref`` is git's all-zero object id (40 or 64 zeros): what GitHub gives as
    ``event.before`` on a new branch, meaning "nothing before"."""
    return len(ref) in (40, 64) and ref.strip("0") == ""


def observe_ref(
    paths: Sequence[str], ref: str, inputs: CompileInputs
) -> tuple[ObservedState | None, str, list[Problem]]:
    """The state of a host running exactly the specs at ``ref``: (state, commit id,
    problems of those specs). Specs that were invalid at ``ref`` give no state. The
    all-zero ref (:func:`is_null_ref`) is an empty state: everything plans as new."""
    if is_null_ref(ref):
        return ObservedState(runtime=f"git:{ref}", routes_managed=True), ref, []
    from reconciler.sources.git import files_at_ref  # gitpython is slow to import

    collected, commit = files_at_ref(paths or (DEFAULT_SPECS,), ref)
    compiled = compile_files(collected, inputs, commit)
    if compiled.desired is None or compiled.invalid:
        return None, commit, list(compiled.problems)
    return (
        with_routes(as_running(compiled.desired, runtime=f"git:{ref}"), compiled.desired),
        commit,
        [],
    )


def with_routes(observed: ObservedState, desired: DesiredState) -> ObservedState:
    """``observed`` (a host running ``desired`` exactly) with ``desired``'s routes served
    by the managed proxy, every running replica in rotation."""
    running: dict[tuple[str, str], list[int]] = {}
    for workload in observed.workloads:
        if workload.replica is not None:
            running.setdefault((workload.deployment, workload.service), []).append(workload.replica)
    table = route_table(desired.services.values())
    servers = {
        backend.name: [
            RouteServer(replica=replica, address="specs", status="UP")
            for replica in running.get((backend.deployment, backend.service), [])
        ]
        for backend in table.backends
    }
    return dataclasses.replace(
        observed, routes_managed=True, proxy_running=True, routes=tuple(routes_of(table, servers))
    )


# --- planning ------------------------------------------------------------------------


def plan_for(
    desired: DesiredState,
    observed: ObservedState,
    *,
    prune: bool = True,
    targets: Sequence[str] = (),
    unhealthy: Mapping[WorkloadId, str] | None = None,
    crash_loops: Mapping[str, str] | None = None,
    hold_panics: bool = False,
) -> Plan:
    """The plan that makes ``observed`` match ``desired``. Running replicas in
    ``unhealthy`` carry their failing check as a problem (the planner restarts them);
    restarts of targets in ``crash_loops`` get a note saying what the daemon's
    backoff will do (target → description). ``hold_panics`` (``plan`` and ``apply``;
    the daemon holds them itself, with its journal): a replica that exited or fails
    its check is not restarted when its ``errors.on_panic`` is ``shutdown`` or
    ``isolate``; a note says so."""
    if unhealthy:
        observed = _with_problems(observed, unhealthy)
    plan = plan_changes(desired, observed, prune=prune, targets=tuple(targets))
    if hold_panics:
        held = {
            a.id: f"{a.reason}; not restarted (errors.on_panic: {on_panic})"
            for a in plan.actions
            if a.kind == "restart"
            and (service := desired.services.get((a.target.deployment, a.target.service)))
            and (on_panic := service.policy.on_panic) in ("shutdown", "isolate")
        }
        plan = hold_actions(plan, held)
    if crash_loops:
        notes = [
            Note(str(a.target), crash_loops[str(a.target)])
            for a in plan.actions
            if a.kind == "restart" and str(a.target) in crash_loops
        ]
        if notes:
            plan = dataclasses.replace(plan, notes=(*plan.notes, *notes))
    return plan


def hold_actions(plan: Plan, held: Mapping[str, str]) -> Plan:
    """``plan`` without the actions in ``held`` (action id → why) and what waits for
    them (a dependent comes up after what it depends on, in the run that starts both);
    each left out with a note."""
    if not held:
        return plan
    dropped = dict(held)
    notes = [Note(a.split(":", 1)[1], why) for a, why in dropped.items()]
    changed = True
    while changed:
        changed = False
        for action in plan.actions:
            if action.id in dropped:
                continue
            blocking = [w for w in action.waits_for if w in dropped]
            if blocking:
                waited = blocking[0].split(":", 1)[1]
                dropped[action.id] = f"waits for {waited}"
                notes.append(Note(action.subject, f"{action.kind} waits for {waited}"))
                changed = True
    actions = tuple(a for a in plan.actions if a.id not in dropped)
    return dataclasses.replace(plan, actions=actions, notes=(*plan.notes, *notes))


def destroy_plan(observed: ObservedState, deployment: str) -> Plan:
    """Remove every workload of ``deployment``, dependents first (``zlayer destroy``)."""
    nothing = DesiredState(revision="destroy", services={}, deployments=frozenset())
    result = plan_changes(nothing, observed, prune=True)
    ids = {a.id: a.id if a.endpoint else f"remove:{a.target}" for a in result.actions}
    actions = tuple(
        dataclasses.replace(
            a,
            id=ids[a.id],
            kind="unroute" if a.endpoint else "remove",
            reason=f"destroy {deployment}",
            waits_for=tuple(ids[w] for w in a.waits_for),
        )
        for a in result.actions
        if a.target.deployment == deployment
    )
    return dataclasses.replace(result, actions=actions, notes=(), warnings=())


def _with_problems(observed: ObservedState, unhealthy: Mapping[WorkloadId, str]) -> ObservedState:
    workloads = tuple(
        dataclasses.replace(w, problem=unhealthy[w.id])
        if w.id in unhealthy and w.status == "running"
        else w
        for w in observed.workloads
    )
    return dataclasses.replace(observed, workloads=workloads)


# --- one pass: observe, plan, review, execute ----------------------------------------


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass of :func:`run_pass` saw and did."""

    observed: ObservedState
    plan: Plan
    report: Report | None
    """None when nothing was executed: the plan was empty or its review declined it."""
    after: ObservedState | None = None
    """The runtime observed again after executing (when asked for)."""
    routes: RouteSync | None = None
    """What the last sync of the managed proxy did, after the plan (None: nothing on the
    host is routed)."""
    route_syncs: tuple[RouteSync, ...] = ()
    """Every sync of the pass: the plan's route actions' and the last one."""


async def run_pass(
    driver: Driver,
    desired: DesiredState,
    inputs: CompileInputs,
    lock: ApplyLock,
    *,
    make_plan: Callable[[DesiredState, ObservedState], Plan],
    review: Callable[[Plan], Awaitable[bool]] | None = None,
    scope: str | None = None,
    concurrency: int | None = DEFAULT_CONCURRENCY,
    on_event: Callable[[Event], None] = lambda _event: None,
    observe_after: bool = False,
    routes: Routes | None = None,
    removals: Removals | None = None,
) -> Pass:
    """Observe (``scope``: one deployment, else all), plan, let ``review`` see the plan
    (False: do nothing), and execute it through ``driver``, with the host's apply
    ``lock`` held so no other apply or daemon acts on the host meanwhile. With
    ``routes`` (on a runtime whose public endpoints the proxy serves), the managed
    proxy is synced with what runs afterwards, also when the plan was empty, so a
    dead proxy or a missing server is repaired. With ``removals``, the replicas the plan
    removes on exit are recorded before it runs (see :mod:`reconciler.removals`)."""
    if not lock.held:
        raise ZlayerError(f"{lock.path}: a plan is executed only with the apply lock held")
    routes = routing_for(driver, routes)
    if isinstance(routes, HostRoutes) and isinstance(inputs.secret, SecretsDir):
        routes.secrets = inputs.secret.path  # the certificates of https endpoints
    observed = await observe_host(driver, routes, [scope] if scope else None, desired, removals)
    plan = make_plan(desired, observed)
    proceed = True if review is None else await review(plan)
    if not proceed:
        return Pass(observed, plan, None)
    if removals is not None:
        # Recorded first: a pass cut short after the remove must not create it again.
        _record_removals(removals, desired, observed, plan, scope)
    # A deployment the plan prunes is synced too, so its routes leave with it.
    pruned = {a.target.deployment for a in plan.actions if a.kind == "prune"}
    deployments = [scope] if scope else sorted(set(desired.deployments) | pruned)
    if plan.empty:
        synced = await _sync_routes(routes, driver, desired, observed, deployments)
        return Pass(observed, plan, None, routes=synced, route_syncs=(synced,) if synced else ())
    first = len(routes.synced) if routes is not None else 0
    routing = routes if isinstance(routes, HostRoutes) else None  # replica by replica
    report = await execute(
        plan,
        driver,
        desired,
        observed,
        inputs=inputs,
        settings=ExecutorSettings(
            concurrency=concurrency,
            before_stop=(
                (lambda target: routing.drain(target, drain_grace(desired, target)))
                if routing
                else None
            ),
            admit=functools.partial(routing.admit, driver, desired) if routing else None,
            route=functools.partial(routes.route, driver, desired) if routes else None,
            in_rotation=functools.partial(routing.in_rotation, driver, desired)
            if routing
            else None,
        ),
        on_event=on_event,
    )
    wants_after = observe_after or routes is not None
    after = await driver.observe([scope] if scope else None) if wants_after else None
    synced = None
    if after is not None:
        synced = await _sync_routes(routes, driver, desired, after, deployments)
    every = tuple(routes.synced[first:]) if routes is not None else ()
    return Pass(observed, plan, report, after if observe_after else None, synced, every)


def _record_removals(
    removals: Removals,
    desired: DesiredState,
    observed: ObservedState,
    plan: Plan,
    scope: str | None,
) -> None:
    """Record the replicas ``plan`` removes because they exited (``delete_on_exit``),
    and forget the records that no longer hold anything back."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    exited = {w.id: w for w in observed.workloads if w.status in ("exited", "dead")}
    present = {w.id for w in observed.workloads}
    add = []
    for action in plan.actions:
        workload = exited.get(action.target) if action.kind == "remove" else None
        service = desired.services.get((action.target.deployment, action.target.service))
        if workload is None or service is None or workload.replica is None:
            continue
        if not service.policy.delete_on_exit or workload.stopped_by_reboot:
            continue
        if service.replicas is not None and workload.replica > service.replicas:
            continue  # scaled away, not removed on exit
        removed = RemovedOnExit(
            deployment=workload.deployment,
            service=workload.service,
            replica=workload.replica,
            fingerprint=workload.fingerprint,
            exit_code=workload.exit_code,
            removed_at=now,
        )
        add.append(Record(observed.runtime, removed, observed.configs.get(workload.fingerprint)))

    def keep(record: RemovedOnExit) -> bool:
        if scope is not None and record.deployment != scope:
            return True  # not observed by this pass
        if record.id in present:
            return False  # it exists again
        service = desired.services.get((record.deployment, record.service))
        if service is None:
            return not plan.prune or bool(plan.targets)  # left the specs: kept unless pruned
        if not service.policy.delete_on_exit:
            return False
        return service.replicas is None or record.replica <= service.replicas

    removals.update(observed.runtime, add, keep)


async def _sync_routes(
    routes: Routes | None,
    driver: Driver,
    desired: DesiredState,
    observed: ObservedState,
    deployments: Sequence[str],
) -> RouteSync | None:
    keeper = routing_for(driver, routes)
    if keeper is None:
        return None
    return await keeper.sync(driver, desired, observed, deployments)

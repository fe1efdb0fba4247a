"""The planner: desired state + observed state → a minimal, ordered :class:`Plan` (pure).

Minimal: a replica is touched only when its fingerprint differs, it is not
running, or the count says so; scale-down removes the highest indexes. Ordered:
startup actions wait for the startup actions of the services they depend on and
carry the ``depends`` conditions; teardown runs the other way round (dependents
first); replaces of one service roll one replica at a time; nothing else is
serialized. No I/O and no clock: the same inputs give the same plan.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from graphlib import TopologicalSorter
from typing import Any

from reconciler.desired import (
    ONE_HOST_PLACEMENT,
    DesiredService,
    DesiredState,
    config_fingerprint,
)
from reconciler.errors import PlanError
from reconciler.observed import (
    NETWORK,
    Network,
    ObservedState,
    RemovedOnExit,
    Route,
    Workload,
    WorkloadId,
)
from reconciler.plan.cluster import plan_cluster_removed, plan_cluster_service
from reconciler.plan.diff import describe, explain
from reconciler.plan.model import (
    KINDS,
    ROUTE_KINDS,
    STARTUP_KINDS,
    Action,
    ActionKind,
    Change,
    ChangeKind,
    Condition,
    Note,
    Plan,
)
from reconciler.redact import adopt_recorded, unhashed_paths
from reconciler.route_table import planned_addresses, route_table, routes_of
from reconciler.spec.problems import format_path

ServiceKey = tuple[str, str]
MAX_REASON_CHANGES = 3


def plan_changes(
    desired: DesiredState,
    observed: ObservedState,
    *,
    prune: bool = True,
    targets: Sequence[str] = (),
) -> Plan:
    """Everything that must happen for the runtime to match ``desired``.

    ``targets`` (``SERVICE`` or ``DEPLOYMENT/SERVICE``) limits the plan to those
    services and what they depend on; raises :class:`PlanError` for a target
    that names nothing in the specs or the runtime.
    """
    by_service: dict[ServiceKey, list[Workload]] = defaultdict(list)
    for workload in observed.workloads:
        by_service[(workload.deployment, workload.service)].append(workload)
    clustered = {(c.deployment, c.service): c for c in observed.services}
    removed: dict[ServiceKey, dict[int, RemovedOnExit]] = defaultdict(dict)
    for record in observed.removed_on_exit:
        removed[(record.deployment, record.service)][record.replica] = record
    selected = _select(desired, by_service, targets)
    notes: list[Note] = []
    warnings: list[Note] = []
    actions: list[Action] = []
    for key, service in desired.services.items():
        if selected is not None and key not in selected:
            continue
        found = by_service.get(key, [])
        if observed.services_managed and not service.is_definition:
            current = clustered.get(key)
            actions += plan_cluster_service(
                service, current, observed.configs, notes,
                effective=_effective, changes_of=_changes, reason_of=_reason,
                proxied=observed.routes_managed,
            )  # fmt: skip
        else:
            actions += _plan_service(service, found, removed.get(key, {}), observed.configs, notes)
        warnings += [
            Note(f"{key[0]}/{key[1]}", w)
            for w in service.warnings
            if not (observed.services_managed and w.endswith(ONE_HOST_PLACEMENT))
        ]
        notes += [Note(f"{key[0]}/{key[1]}", n) for n in service.notes]
    warnings += [
        Note(deployment, message)
        for deployment, message in desired.warnings
        if selected is None or any(key[0] == deployment for key in selected)
    ]
    for key, found in sorted(by_service.items()):
        if key in desired.services or (selected is not None and key not in selected):
            continue
        if key in clustered:
            continue  # its tasks go with the service, below
        actions += _plan_removed(key, found, prune, key[0] in desired.deployments, notes)
    for key, cluster in sorted(clustered.items()):
        if key in desired.services or (selected is not None and key not in selected):
            continue
        reason = _removed_reason(key[0] in desired.deployments)
        if prune:
            actions.append(plan_cluster_removed(cluster, reason))
        else:
            notes.append(Note(str(cluster.id), f"{reason}; kept by --no-prune"))
    if observed.networks_managed:
        actions += _plan_networks(desired, observed.networks, prune, selected, notes)
    if observed.routes_managed:
        actions += _plan_routes(desired, observed, by_service, prune, selected, notes)
    if selected is not None:
        notes.insert(0, _target_note(targets, selected))
    ordered = _order(_with_waits(actions, desired, by_service))
    return Plan(
        actions=ordered,
        spec_revision=desired.revision,
        desired_fingerprint=desired.fingerprint(),
        observed_fingerprint=observed.fingerprint(),
        runtime=observed.runtime,
        prune=prune,
        targets=tuple(targets),
        notes=tuple(notes),
        warnings=tuple(warnings),
    )


def _action(
    kind: ActionKind,
    target: WorkloadId,
    reason: str,
    changes: tuple[Change, ...] = (),
    conditions: tuple[Condition, ...] = (),
) -> Action:
    return Action(f"{kind}:{target}", kind, target, reason, changes, (), conditions)


Configs = Mapping[str, Mapping[str, Any]]
"""Recorded canonical configs by fingerprint (:attr:`ObservedState.configs`)."""


def _plan_service(
    service: DesiredService,
    found: list[Workload],
    removed: Mapping[int, RemovedOnExit],
    configs: Configs,
    notes: list[Note],
) -> list[Action]:
    replicas = sorted((w for w in found if w.replica is not None), key=lambda w: w.replica or 0)
    definitions = [w for w in found if w.replica is None]
    subject = f"{service.deployment}/{service.name}"
    if service.offline_secrets and found:
        listed = ", ".join(sorted(format_path(p) for p in unhashed_paths(service.config)))
        notes.append(
            Note(
                subject,
                f"sensitive values cannot be compared here (no host key or secrets); "
                f"{listed} assumed unchanged",
            )
        )
    if service.is_definition:
        return _plan_definition(service, definitions, replicas, configs)
    out = [
        _action("unregister", w.id, f"{_rtype(configs.get(w.fingerprint))} → service")
        for w in definitions
    ]
    return out + _plan_replicas(service, replicas, removed, configs, notes)


def _rtype(recorded: Mapping[str, Any] | None) -> str:
    """How a definition's recorded config names its kind (``rtype job``), if it does."""
    rtype = (recorded or {}).get("rtype")
    return f"rtype {rtype}" if rtype else "rtype job or cron (not recorded)"


def _plan_definition(
    service: DesiredService, definitions: list[Workload], replicas: list[Workload], configs: Configs
) -> list[Action]:
    out = [
        _action(
            "remove",
            w.id,
            f"rtype service → {service.rtype}: no long-running replicas",
        )
        for w in reversed(replicas)
    ]
    target = service.workload_id(None)
    current = definitions[0] if definitions else None
    if current is None:
        reason = f"new {service.rtype}"
        if service.rtype == "cron":
            reason += f" (schedule {service.config.get('schedule')})"
        out.append(_action("register", target, reason))
        return out
    recorded = configs.get(current.fingerprint)
    config, digest = _effective(service, recorded)
    if digest != current.fingerprint:
        changes = _changes(service, recorded, config)
        out.append(_action("register", target, _reason(changes), changes or ()))
    return out


def _plan_replicas(
    service: DesiredService,
    replicas: list[Workload],
    removed: Mapping[int, RemovedOnExit],
    configs: Configs,
    notes: list[Note],
) -> list[Action]:
    by_index = {w.replica or 0: w for w in replicas}
    want = service.replicas
    if want is None:
        indexes = list(by_index)
        notes.append(
            Note(
                f"{service.deployment}/{service.name}",
                f"scale mode manual: the observed replica count ({len(indexes)}) is kept",
            )
        )
    else:
        want = _owned_count(service, len(by_index), notes)
        indexes = list(range(1, want + 1))
    conditions = tuple(
        Condition(d.service, d.condition, d.timeout, d.on_timeout) for d in service.depends
    )
    out: list[Action] = []
    have = len(replicas)
    highest = max(by_index, default=0)
    if not service.policy.delete_on_exit:
        removed = {}  # no longer set: what it removed is created again
    for index in sorted(set(removed) - set(indexes)):
        if want is None:  # manual scale: not counted, and not created again
            notes.append(_removed_note(removed[index]))
    for index in indexes:
        current = by_index.get(index)
        if current is None and index in removed:
            action = _recreate(service, removed[index], configs, conditions)
            if action is None:
                notes.append(_removed_note(removed[index]))
            else:
                out.append(action)
            continue
        if current is None:
            out.append(
                _action(
                    "create",
                    service.workload_id(index),
                    _scaled(service, _create_reason(index, have, highest, want)),
                    (),
                    conditions,
                )
            )
            continue
        action = _existing(service, current, configs.get(current.fingerprint), conditions)
        if action is not None:
            out.append(action)
        elif current.completed:
            notes.append(Note(str(current.id), "completed (exited with status 0); not restarted"))
        elif current.status in ("exited", "dead") and service.policy.restart == "no":
            why = f"{_exited(current)}; not restarted (restart_policy: no)"
            notes.append(Note(str(current.id), why))
    if want is not None:
        for workload in reversed(replicas):
            if (workload.replica or 0) > want:
                reason = (
                    f"replicas {have} → {want}"
                    if have > want
                    else (f"replica {workload.replica} is beyond replicas {want}")
                )
                out.append(_action("remove", workload.id, _scaled(service, reason)))
    return out


def _owned_count(service: DesiredService, have: int, notes: list[Note]) -> int:
    """The count to plan for: as compiled, as the daemon's autoscaler set it, or for an
    adaptive service planned without it, the count running when inside its range."""
    scale = service.policy.scale
    if scale is None or service.scaled is not None or service.replicas is None:
        return service.replicas or 0
    want = scale.clamp(have)
    kept = "kept" if want == have else f"→ {want}"
    notes.append(
        Note(
            f"{service.deployment}/{service.name}",
            f"adaptive {scale.min}–{scale.max}: {have} running, {kept} (inside the range the "
            "count is the daemon's autoscaler's)",
        )
    )
    return want


def _scaled(service: DesiredService, reason: str) -> str:
    return reason if service.scaled is None else f"{reason} ({service.scaled})"


def _removed_note(record: RemovedOnExit) -> Note:
    return Note(
        str(record.id),
        f"{record.exited} and was removed at {record.removed_at} (lifecycle.delete_on_exit); "
        "created again when its config changes",
    )


def _recreate(
    service: DesiredService,
    record: RemovedOnExit,
    configs: Configs,
    conditions: tuple[Condition, ...],
) -> Action | None:
    """A create for a replica removed on exit whose service's config changed since;
    None while the config is the one it exited with."""
    recorded = configs.get(record.fingerprint)
    config, digest = _effective(service, recorded)
    if digest == record.fingerprint:
        return None
    changes = _changes(service, recorded, config)
    removed = f"{record.exited} and was removed (lifecycle.delete_on_exit)"
    reason = f"{removed}; its config changed: {_reason(changes)}"
    return _action("create", record.id, reason, changes or (), conditions)


def _create_reason(index: int, have: int, highest: int, want: int | None) -> str:
    """Scale-up adds indexes above the highest one running; a lower index that is
    not there went missing (removed or lost behind zlayer's back)."""
    if have == 0:
        return f"new service, replicas 0 → {want}"
    if index > highest:
        return f"replicas {have} → {want}"
    return f"replica {index} is missing (replicas {want})"


def _existing(
    service: DesiredService,
    current: Workload,
    recorded: Mapping[str, Any] | None,
    conditions: tuple[Condition, ...],
) -> Action | None:
    config, digest = _effective(service, recorded)
    if digest != current.fingerprint:
        changes = _changes(service, recorded, config)
        return _action("replace", current.id, _reason(changes), changes or (), conditions)
    if current.outdated is not None:
        return _action("replace", current.id, current.outdated, (), conditions)
    if current.stopped_by_reboot and current.status in ("exited", "dead"):
        return _action("restart", current.id, "stopped by a reboot of the host", (), conditions)
    policy = service.policy
    if policy.delete_on_exit and current.status in ("exited", "dead"):
        why = f"{_exited(current)}; removed, not restarted (lifecycle.delete_on_exit)"
        return _action("remove", current.id, why)
    if current.completed:
        if policy.restarts_completed:
            why = f"completed (exited with status 0); restart_policy: {policy.restart}"
            return _action("restart", current.id, why, (), conditions)
        return None  # finished: kept as it is (a changed config above still replaces it)
    if current.status in ("exited", "dead"):
        if policy.restart == "no":
            return None  # a note says so
        return _action("restart", current.id, _exited(current), (), conditions)
    if current.status in ("created", "paused"):
        reason = "created but never started" if current.status == "created" else "paused"
        return _action("start", current.id, reason, (), conditions)
    if current.problem is not None:
        return _action("restart", current.id, current.problem, (), conditions)
    return None


def _exited(workload: Workload) -> str:
    return workload.ended


def _effective(
    service: DesiredService, recorded: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any], str]:
    """The config and fingerprint to compare with the ``recorded`` config. Planning
    offline, the hashes of sensitive values are unknown here; the ones the runtime
    recorded for the same secret, variable or literal are taken as they are (and a
    note says so)."""
    if not service.offline_secrets or recorded is None:
        return service.config, service.fingerprint
    config = adopt_recorded(service.config, recorded)
    return config, config_fingerprint(config)


def _changes(
    service: DesiredService, recorded: Mapping[str, Any] | None, config: Mapping[str, Any]
) -> tuple[Change, ...] | None:
    """The explained changes; None when the runtime recorded no config to compare."""
    if recorded is None:
        return None
    return explain(recorded, config, service.marked)


def _reason(changes: tuple[Change, ...] | None) -> str:
    if changes is None:
        return "configuration changed (the runtime recorded no configuration to compare)"
    if not changes:
        return "fingerprint changed with no field changed (recorded by another fingerprint scheme)"
    words = [describe(c) for c in changes[:MAX_REASON_CHANGES]]
    more = len(changes) - MAX_REASON_CHANGES
    return "; ".join(words) + (f"; and {more} more" if more > 0 else "")


def _plan_removed(
    key: ServiceKey, found: list[Workload], prune: bool, deployment_kept: bool, notes: list[Note]
) -> list[Action]:
    reason = _removed_reason(deployment_kept)
    if not prune:
        count = len(found)
        noun = "workload" if count == 1 else "workloads"
        notes.append(Note(f"{key[0]}/{key[1]}", f"{reason}; kept by --no-prune ({count} {noun})"))
        return []
    ordered = sorted(found, key=lambda w: -(w.replica or 0))
    return [_action("prune", w.id, reason) for w in ordered]


def _removed_reason(deployment_kept: bool) -> str:
    return "service removed from specs" if deployment_kept else "deployment removed from specs"


def _plan_networks(
    desired: DesiredState,
    observed: Sequence[Network],
    prune: bool,
    selected: set[ServiceKey] | None,
    notes: list[Note],
) -> list[Action]:
    """One network per deployment that has a service joining it, on runtimes that
    manage networks: created when missing or broken, removed when no longer needed."""
    wanted = {key[0] for key, s in desired.services.items() if s.wants_network}
    found = {n.deployment: n for n in observed}
    if selected is not None:
        scope = {key[0] for key in selected}
        wanted &= scope
        found = {d: n for d, n in found.items() if d in scope}
    out: list[Action] = []
    for deployment in sorted(wanted):
        target = WorkloadId.network(deployment)
        network = found.get(deployment)
        if network is None:
            out.append(_action("create", target, "new deployment network"))
        elif network.problem is not None:
            out.append(_action("create", target, f"{network.problem}; creating it again"))
    for deployment, network in sorted(found.items()):
        if deployment in wanted:
            continue
        target = WorkloadId.network(deployment)
        if deployment in desired.deployments:
            reason = "no service of the deployment joins its network any more"
            out.append(_action("remove", target, f"{reason} ({network.name})"))
        elif prune:
            out.append(_action("prune", target, f"deployment removed from specs ({network.name})"))
        else:
            notes.append(Note(str(target), "deployment removed from specs; kept by --no-prune"))
    return out


ROUTE_FIELDS = ("expose", "protocol", "port", "host", "path", "target_port", "check")
"""What a route is, as the plan compares it (its servers are compared by replica; an
internal route's address is the runtime's business)."""


def _route_action(
    kind: ActionKind, route: Route, reason: str, changes: tuple[Change, ...] = ()
) -> Action:
    return Action(
        f"{kind}:{route.id}:{route.endpoint}",
        kind,
        route.id,
        reason,
        changes,
        endpoint=route.endpoint,
    )


def route_text(route: Route) -> str:
    """``http :8080 host api.example.test path /v1``; ``http api:80 (internal)``."""
    if route.expose == "internal":
        return f"{route.protocol} {route.service}:{route.port} (internal)"
    parts = [f"{route.protocol} :{route.port}"]
    if route.host:
        parts.append(f"host {route.host}")
    if route.path:
        parts.append(f"path {route.path}")
    return " ".join(parts)


def _plan_routes(
    desired: DesiredState,
    observed: ObservedState,
    by_service: Mapping[ServiceKey, list[Workload]],
    prune: bool,
    selected: set[ServiceKey] | None,
    notes: list[Note],
) -> list[Action]:
    """The managed proxy's routes, one per routed endpoint (on a host whose public
    endpoints it serves): new, changed (a field of the routing, the proxy not running,
    a running replica without a server, a server left of one that does not run), or
    gone with its endpoint, service or deployment."""
    table = route_table(desired.services.values(), planned_addresses(observed.routes_internal))
    wanted = {(r.deployment, r.service, r.endpoint): r for r in routes_of(table)}
    found = {(r.deployment, r.service, r.endpoint): r for r in observed.routes}
    out: list[Action] = []
    for key, route in sorted(wanted.items()):
        if selected is not None and key[:2] not in selected:
            continue
        service = desired.services[key[:2]]
        have = found.get(key)
        if have is None:
            count = service.replicas
            replicas = "its replicas" if count is None else f"{count} replica" + "s" * (count != 1)
            out.append(
                _route_action("route", route, f"new route: {route_text(route)} → {replicas}")
            )
            continue
        changes = tuple(
            Change(name, _change_kind(before, after), before, after)
            for name in ROUTE_FIELDS
            if (before := getattr(have, name)) != (after := getattr(route, name))
        )
        if changes:
            reason = "; ".join(describe(c) for c in changes[:MAX_REASON_CHANGES])
            more = len(changes) - MAX_REASON_CHANGES
            reason += f" (and {more} more)" if more > 0 else ""
            out.append(_route_action("reroute", route, reason, changes))
        elif not observed.proxy_running:
            out.append(_route_action("reroute", route, "the managed proxy is not running"))
        elif observed.services_managed:
            continue  # the cluster's proxy finds the tasks in DNS: no server is zlayer's
        elif drift := _server_drift(have, by_service.get(key[:2], [])):
            out.append(_route_action("reroute", route, drift))
    for key, route in sorted(found.items()):
        if key in wanted or (selected is not None and key[:2] not in selected):
            continue
        if key[:2] in desired.services:
            reason = "endpoint no longer routed by the specs"
        elif key[0] in desired.deployments:
            reason = "service removed from specs"
        elif prune:
            reason = "deployment removed from specs"
        else:
            notes.append(Note(f"{route.id}:{route.endpoint}", "deployment removed from specs; "
                              "route kept by --no-prune"))  # fmt: skip
            continue
        out.append(_route_action("unroute", route, f"{reason} ({route_text(route)})"))
    return out


def _change_kind(before: Any, after: Any) -> ChangeKind:
    return "added" if before is None else "removed" if after is None else "changed"


def _server_drift(route: Route, replicas: Sequence[Workload]) -> str | None:
    """Why ``route``'s servers are not the service's running replicas, if they are not.
    A running replica that fails its check may have a server or not (HAProxy keeps it
    out of rotation itself; an isolated one stays in maintenance)."""
    running = {w.replica for w in replicas if w.replica is not None and w.status == "running"}
    serving = {w.replica for w in replicas if w.replica in running and w.health != "unhealthy"}
    servers = {s.replica for s in route.servers}
    problems = []
    if missing := sorted(serving - servers):
        listed = ", ".join(f"{route.service}/{r}" for r in missing)
        problems.append(f"{listed} {'runs' if len(missing) == 1 else 'run'} without a server")
    if left := sorted(servers - running):
        listed = ", ".join(f"{route.service}/{r}" for r in left)
        problems.append(f"a server is left for {listed}, which does not run")
    return "; ".join(problems) or None


def _select(
    desired: DesiredState, observed: Mapping[ServiceKey, list[Workload]], targets: Sequence[str]
) -> set[ServiceKey] | None:
    if not targets:
        return None
    known = set(desired.services) | set(observed)
    chosen: set[ServiceKey] = set()
    for target in targets:
        deployment, slash, name = target.rpartition("/")
        matches = {k for k in known if k[1] == name and (not slash or k[0] == deployment)}
        if not matches:
            raise PlanError(
                f"--target {target}: no such service in the specs or the runtime; "
                f"known: {_listing(known)}"
            )
        chosen |= matches
    pending = list(chosen)
    while pending:
        service = desired.services.get(pending.pop())
        if service is None:
            continue
        for dep in service.depends:
            key = (service.deployment, dep.service)
            if key not in chosen:
                chosen.add(key)
                pending.append(key)
    return chosen


def _listing(known: Iterable[ServiceKey], most: int = 20) -> str:
    """``demo/db, demo/web`` (sorted; the first ``most``, then how many more)."""
    names = sorted(f"{d}/{s}" for d, s in known if s != NETWORK)
    if not names:
        return "none"
    more = f", and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _target_note(targets: Sequence[str], selected: set[ServiceKey]) -> Note:
    listed = ", ".join(f"{d}/{s}" for d, s in sorted(selected))
    return Note(
        "targets",
        f"planned only --target {' '.join(targets)} and what it depends on ({listed}); "
        "other services are not planned",
    )


def _with_waits(
    actions: list[Action], desired: DesiredState, observed: Mapping[ServiceKey, list[Workload]]
) -> list[Action]:
    startup: dict[ServiceKey, list[str]] = defaultdict(list)
    teardown: dict[ServiceKey, list[str]] = defaultdict(list)
    networks: dict[str, str] = {}
    by_deployment: dict[str, list[str]] = defaultdict(list)
    for action in actions:
        key = (action.target.deployment, action.target.service)
        if action.target.is_network:
            if action.kind in STARTUP_KINDS:
                networks[key[0]] = action.id
            continue
        by_deployment[key[0]].append(action.id)
        if action.kind == "register":
            continue
        (startup if action.kind in STARTUP_KINDS else teardown)[key].append(action.id)
    routes = {a.id for a in actions if a.kind in ROUTE_KINDS}
    dependents = _dependents(desired, observed)
    out: list[Action] = []
    previous_replace: dict[ServiceKey, str] = {}
    for action in actions:
        key = (action.target.deployment, action.target.service)
        waits: list[str] = []
        if action.target.is_network:
            if action.kind not in STARTUP_KINDS:
                # the network goes last: after everything else of its deployment
                waits += by_deployment.get(key[0], [])
        elif action.kind == "register":
            pass
        elif action.kind in ("route", "reroute"):
            # in rotation once the service's replicas run
            waits += [w for w in startup.get(key, []) if w not in routes]
        elif action.kind in STARTUP_KINDS:
            if key[0] in networks:
                waits.append(networks[key[0]])
            service = desired.services[key]
            for dep in service.depends:
                waits += startup.get((key[0], dep.service), [])
            if action.kind == "replace":
                if key in previous_replace:
                    waits.append(previous_replace[key])
                previous_replace[key] = action.id
        else:
            for dependent in dependents.get(key, ()):
                waits += teardown.get(dependent, [])
            if action.kind != "unroute":
                # out of the proxy before its replicas stop
                waits += [w for w in teardown.get(key, []) if w in routes]
        out.append(dataclasses.replace(action, waits_for=tuple(waits)))
    return out


def _dependents(
    desired: DesiredState, observed: Mapping[ServiceKey, list[Workload]]
) -> dict[ServiceKey, set[ServiceKey]]:
    """service → the services that depend on it, from the specs and from what the
    runtime recorded (a dependency just dropped from the specs still orders teardown)."""
    out: dict[ServiceKey, set[ServiceKey]] = defaultdict(set)
    for key, service in desired.services.items():
        for dep in service.depends:
            out[(key[0], dep.service)].add(key)
    for key, workloads in observed.items():
        for name in {n for w in workloads for n in w.depends}:
            out[(key[0], name)].add(key)
    return out


def _order(actions: Iterable[Action]) -> tuple[Action, ...]:
    """A valid order (every action after those it waits for), and among the valid
    ones the same every time: by deployment, teardown before startup, service, kind."""
    by_id = {a.id: a for a in actions}
    sorter = TopologicalSorter({a.id: a.waits_for for a in by_id.values()})
    sorter.prepare()
    rank = {kind: i for i, kind in enumerate(KINDS)}

    def key(action: Action) -> tuple[Any, ...]:
        t = action.target
        if action.kind in STARTUP_KINDS:
            return (t.deployment, 1, t.service, rank[action.kind], t.replica or 0)
        # teardown: highest replica indexes first
        return (t.deployment, 0, t.service, rank[action.kind], -(t.replica or 0))

    heap: list[tuple[tuple[Any, ...], str]] = []
    out: list[Action] = []
    while sorter.is_active():
        for ready in sorter.get_ready():
            heapq.heappush(heap, (key(by_id[ready]), ready))
        _, chosen = heapq.heappop(heap)
        out.append(by_id[chosen])
        sorter.done(chosen)
    return tuple(out)

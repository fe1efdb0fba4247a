"""Planning services a clustered engine runs as one object each (Docker Swarm; pure).

On such a runtime (:attr:`ObservedState.services_managed`) a service is created,
updated, scaled and removed as a whole: the engine places its tasks, restarts them
and rolls an update through them, so the plan never touches a replica one by one. A
replica count that differs is a ``scale``; a config that differs is a ``replace``,
which the engine rolls (``start-first`` where the service's ports allow two tasks at
once, :func:`update_order`). Tasks appear in the observed workloads only to be shown
and to gate dependents (``depends``), exactly as replicas do on one host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.desired import DesiredService, routed_endpoints
from reconciler.fingerprint import canonical_json
from reconciler.observed import ClusterService
from reconciler.plan.model import Action, ActionKind, Change, ChangeKind, Condition, Note

Effective = Callable[[DesiredService, Mapping[str, Any] | None], tuple[Mapping[str, Any], str]]
Explain = Callable[
    [DesiredService, Mapping[str, Any] | None, Mapping[str, Any]], tuple[Change, ...] | None
]


def update_order(service: DesiredService, proxied: bool = False) -> str:
    """``start-first`` (the new task runs before the old one stops) unless two tasks of
    the service cannot share a node: a port published on the node itself (host mode)
    would collide, and ``node_mode`` dedicated or exclusive allows one task per node
    (a start-first update would then wait forever for a node to put the new one on).
    Those roll ``stop-first``. ``proxied``: the cluster's proxy serves the routed
    public endpoints, so only the others (udp) publish a port of the task's own."""
    if service.placement.get("node_mode") in ("dedicated", "exclusive"):
        return "stop-first"
    served = routed_endpoints(service.config) if proxied else []
    for endpoint in service.config.get("endpoints", ()):
        # ZLayer's default exposure: internal
        if endpoint.get("expose", "internal") == "public" and endpoint not in served:
            return "stop-first"
    return "start-first"


def wanted_replicas(service: DesiredService, current: ClusterService | None) -> int:
    """The count to plan for: as compiled, or for ``scale: manual``, the engine's."""
    if service.replicas is not None:
        return service.replicas
    return current.replicas or 0 if current is not None else 0


def plan_cluster_service(
    service: DesiredService,
    current: ClusterService | None,
    configs: Mapping[str, Mapping[str, Any]],
    notes: list[Note],
    *,
    effective: Effective,
    changes_of: Explain,
    reason_of: Callable[[tuple[Change, ...] | None], str],
    proxied: bool = False,
) -> list[Action]:
    """The one action (or none) that makes the engine's service match ``service``.

    ``effective``, ``changes_of`` and ``reason_of`` are the planner's own comparisons
    (offline secrets, explained changes), passed in so both paths say the same.
    ``proxied``: the cluster's proxy serves public endpoints (:func:`update_order`)."""
    order = update_order(service, proxied)
    target = service.workload_id(None)
    conditions = tuple(
        Condition(d.service, d.condition, d.timeout, d.on_timeout) for d in service.depends
    )
    want = wanted_replicas(service, current)
    if service.replicas is None:
        notes.append(
            Note(str(target), f"scale mode manual: the engine's replica count ({want}) is kept")
        )
    if current is None:
        reason = f"new service, replicas 0 → {want} (rolling updates {order})"
        return [_action("create", target, reason, (), conditions)]
    recorded = configs.get(current.fingerprint)
    config, digest = effective(service, recorded)
    count = None
    if current.replicas is not None and current.replicas != want:
        count = Change("replicas", "changed", current.replicas, want)
    moved = placement_changes(current.placement, service.placement)
    if digest != current.fingerprint or moved:
        changes = changes_of(service, recorded, config) if digest != current.fingerprint else ()
        listed = (changes or ()) + moved + ((count,) if count else ())
        said = [reason_of(changes)] if digest != current.fingerprint else []
        said += [f"{c.path}: {_shown(c.before)} → {_shown(c.after)}" for c in moved]
        reason = f"{'; '.join(said)} (rolling, {order})"
        if count is not None:
            reason += f"; replicas {current.replicas} → {want}"
        if rolled_back(current):
            reason += f"; the engine rolled its last update back: {rolled_back(current)}"
        return [_action("replace", target, reason, listed, conditions)]
    if count is not None:
        return [_action("scale", target, f"replicas {current.replicas} → {want}", (count,))]
    if rolled_back(current):
        why = f"the engine rolled its last update back: {rolled_back(current)}"
        notes.append(Note(str(target), why))
    return []


def rolled_back(current: ClusterService) -> str | None:
    """The engine's message when it rolled the service's last update back."""
    if current.update_state not in ("rollback_completed", "rollback_paused"):
        return None
    return current.update_message or "no message from the engine"


def placement_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[Change, ...]:
    """The placement fields (top-level keys) that differ, as plan changes."""
    out = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            kind: ChangeKind = (
                "added" if key not in before else "removed" if key not in after else "changed"
            )
            out.append(Change(key, kind, before.get(key), after.get(key)))
    return tuple(out)


def _shown(value: Any) -> str:
    return "(none)" if value is None else canonical_json(value)


def plan_cluster_removed(current: ClusterService, reason: str) -> Action:
    return _action("prune", current.id, reason)


def _action(
    kind: ActionKind,
    target: Any,
    reason: str,
    changes: tuple[Change, ...] = (),
    conditions: tuple[Condition, ...] = (),
) -> Action:
    return Action(f"{kind}:{target}", kind, target, reason, changes, (), conditions)

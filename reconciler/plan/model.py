"""The plan: an immutable, ordered list of actions, each with its reason (pure values)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.observed import WorkloadId

ActionKind = Literal[
    "create",
    "start",
    "stop",
    "remove",
    "replace",
    "restart",
    "scale",
    "register",
    "unregister",
    "prune",
    "route",
    "reroute",
    "unroute",
]
KINDS: tuple[ActionKind, ...] = (
    "create",
    "replace",
    "scale",
    "restart",
    "start",
    "register",
    "route",
    "reroute",
    "stop",
    "remove",
    "unregister",
    "unroute",
    "prune",
)
STARTUP_KINDS = frozenset(
    {"create", "replace", "scale", "restart", "start", "register", "route", "reroute"}
)
"""Kinds that bring something up; they run in dependency order. The rest tear down,
dependents first. ``scale`` changes the replica count of a service a clustered engine
runs as a whole (:mod:`reconciler.plan.cluster`), up or down."""
ROUTE_KINDS = frozenset({"route", "reroute", "unroute"})
"""Kinds about one routed endpoint of a service in the managed proxy (the action's
``endpoint``): a new route, a changed or repaired one, one that goes."""

ChangeKind = Literal["changed", "added", "removed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: ``path`` like ``env.LOG_LEVEL`` or ``command.args[1]``.

    ``sensitive`` changes carry no values at all (``before``/``after`` are None).
    """

    path: str
    kind: ChangeKind
    before: Any = None
    after: Any = None
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class Condition:
    """From ``depends``: before this action, ``service`` must be ``condition``
    (started / healthy / ready) within ``timeout`` seconds, else ``on_timeout``."""

    service: str
    condition: str
    timeout: float | None
    on_timeout: str


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    kind: ActionKind
    target: WorkloadId
    reason: str
    changes: tuple[Change, ...] = ()
    waits_for: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    endpoint: str | None = None
    """For a route action (:data:`ROUTE_KINDS`): the endpoint's name; ``target`` is its
    service (``replica`` None)."""

    @property
    def subject(self) -> str:
        """What the action is about: ``demo/web/1``, or ``demo/web:http`` for a route."""
        return str(self.target) if self.endpoint is None else f"{self.target}:{self.endpoint}"


@dataclass(frozen=True, slots=True)
class Note:
    """Something the plan deliberately does not do, or cannot check, and why."""

    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    """``actions`` are in a valid order: every action comes after those it waits for.

    ``spec_revision``, ``desired_fingerprint`` and ``observed_fingerprint`` identify
    exactly what the plan was computed from, so ``apply`` can refuse a stale one.
    """

    actions: tuple[Action, ...]
    spec_revision: str
    desired_fingerprint: str
    observed_fingerprint: str
    runtime: str
    prune: bool = True
    targets: tuple[str, ...] = ()
    notes: tuple[Note, ...] = ()
    warnings: tuple[Note, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def summary(self) -> dict[str, int]:
        """Action count per kind, every kind present (zeros included), in KINDS order."""
        counts = Counter(a.kind for a in self.actions)
        return {kind: counts.get(kind, 0) for kind in KINDS}

    def action(self, action_id: str) -> Action:
        for action in self.actions:
            if action.id == action_id:
                return action
        raise KeyError(action_id)

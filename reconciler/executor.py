"""Carrying out a plan: a dependency graph of driver calls under a concurrency limit.

Each action starts as soon as every action it waits for has succeeded and its
``depends`` conditions hold; the dependents of a failure are skipped with that
reason while independent branches go on. Replaces are health-gated: a new
replica that misses its health deadline stops its service's rollout, and every
replica that rollout already replaced goes back to the config the runtime
recorded for it. Progress is a stream of :class:`Event` values; the result is a
:class:`Report` of one :class:`Outcome` per action.

One module on purpose (a little over 500 lines): the graph walk, the waits on
conditions, init steps and the health-gated replace with its rollback share one
executor's state — the semaphore, the outcomes so far, the event stream and the
rollout per service — and read best side by side. Only
:mod:`reconciler.reconcile` runs it for real work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, NoReturn

from reconciler import probes
from reconciler.desired import (
    CompileInputs,
    DesiredService,
    DesiredState,
    restore_service,
    routed_endpoints,
)
from reconciler.drivers.base import ClusterDriver, Driver
from reconciler.errors import DriverError, EngineRolledBack, TemporaryDriverError, ZlayerError
from reconciler.observed import ObservedState, Workload, WorkloadId
from reconciler.plan.cluster import wanted_replicas
from reconciler.plan.model import ROUTE_KINDS, STARTUP_KINDS, Action, Condition, Plan
from reconciler.policy import HealthPolicy, InitStep

DEFAULT_CONCURRENCY = 4
"""Measured on a 2-core host (``bench/apply_docker.py --concurrency-sweep``, cold apply
of 50 containers, two runs): 1 → 14.9-15.6 s, 2 → 9.7-10.7 s, 4 → 7.5-8.9 s,
8 → 8.4-9.6 s, unbounded → 8.8-9.4 s. The engine serialises most of the work, so
beyond 4 calls in flight there is only more contention."""

EventKind = Literal[
    "started", "waiting", "retrying", "warning", "succeeded", "failed", "skipped", "rolled_back"
]
Status = Literal["succeeded", "failed", "skipped", "rolled_back"]
Prober = Callable[[HealthPolicy, probes.Resolve, Mapping[str, str]], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Event:
    """One step of progress: ``action`` is an action id, ``elapsed`` seconds since
    the run began."""

    action: str
    kind: EventKind
    message: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class Outcome:
    action: str
    status: Status
    message: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    outcomes: tuple[Outcome, ...]
    elapsed: float

    @property
    def ok(self) -> bool:
        return all(o.status == "succeeded" for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "failed": 0, "skipped": 0, "rolled_back": 0}
        for outcome in self.outcomes:
            out[outcome.status] += 1
        return out


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    concurrency: int | None = DEFAULT_CONCURRENCY
    """Driver calls in flight at once; ``None`` for no limit."""
    attempts: int = 3
    """Tries of a driver call that fails temporarily, each after the delay it asks for."""
    poll: float = 0.5
    """Longest pause between probes while something waits on health."""
    init_backoff: tuple[float, ...] = (1.0, 2.0, 4.0)
    """``errors.on_init_failure: backoff``: pauses before each further try (ZLayer's)."""
    before_stop: Callable[[WorkloadId], Awaitable[None]] | None = None
    """Called before a running replica is stopped, restarted, replaced or removed: the
    managed proxy drains it (no new connections; in-flight ones may finish)."""
    admit: Callable[[WorkloadId], Awaitable[None]] | None = None
    """Called when a replica of a service with routed endpoints passed its health gate
    during a replace: the managed proxy puts it in rotation, returning once HAProxy's
    own check passed. With it, such a replace is start-first (a surge replica)."""
    route: Callable[[Action, list[str]], Awaitable[str]] | None = None
    """Does a route action (:data:`ROUTE_KINDS`): the managed proxy serves the
    endpoint as the specs say, with the service's running replicas in rotation; what
    it did, in words (warnings added to the list). Without it a route action fails."""
    in_rotation: Callable[[tuple[str, str]], Awaitable[str | None]] | None = None
    """For ``depends: condition: ready``: why the service (deployment, service) is not
    in rotation in every route it has, or None when it is (or has no route)."""


class Failed(Exception):
    """An action could not be done; the message says why (internal to the executor)."""


@dataclass
class _Rollout:
    """Replicas of one service this run replaced, with what they ran before."""

    done: list[tuple[WorkloadId, DesiredService | None]] = field(default_factory=list)
    action_ids: list[str] = field(default_factory=list)
    left: int = 0
    """Replace actions of the service not finished yet."""
    surge: WorkloadId | None = None
    """The surge replica serving the new config while the service's replicas are
    replaced one by one (start-first replace of a routed service)."""
    surge_action: Action | None = None
    """The replace that started it."""


class Executor:
    def __init__(
        self,
        driver: Driver,
        desired: DesiredState,
        observed: ObservedState,
        *,
        inputs: CompileInputs,
        settings: ExecutorSettings | None = None,
        on_event: Callable[[Event], None] = lambda _event: None,
        prober: Prober = probes.health_probe,
    ) -> None:
        self.driver = driver
        self.desired = desired
        self.observed = {w.id: w for w in observed.workloads}
        self.configs = observed.configs
        self.clustered = observed.services_managed
        self.services = {c.id: c for c in observed.services}
        self.inputs = inputs
        self.settings = settings or ExecutorSettings()
        self.on_event = on_event
        self.prober = prober
        self._scrub = desired.scrubber()
        """Every message leaves through it: a driver's or a check's error may quote a
        clear value (an argument, an env entry)."""
        self._finished: dict[str, asyncio.Event] = {}
        self._results: dict[str, Outcome] = {}
        self._rollouts: dict[tuple[str, str], _Rollout] = {}
        self._t0 = 0.0

    async def run(self, plan: Plan) -> Report:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        limit = self.settings.concurrency
        slots = asyncio.Semaphore(limit) if limit else None
        self._finished = {a.id: asyncio.Event() for a in plan.actions}
        for action in plan.actions:
            if action.kind == "replace" and action.target.replica is not None:
                key = (action.target.deployment, action.target.service)
                self._rollouts.setdefault(key, _Rollout()).left += 1
        async with asyncio.TaskGroup() as group:
            for action in plan.actions:
                group.create_task(self._run(action, slots))
        for rollout in self._rollouts.values():
            if rollout.surge is not None and rollout.surge_action is not None:
                # Its later replaces were skipped (something they wait for failed).
                left: list[str] = []
                await self._retire_surge(rollout.surge_action, rollout, left)
                for warning in left:
                    self._emit(rollout.surge_action.id, "warning", warning)
        return Report(
            tuple(self._results[a.id] for a in plan.actions), round(loop.time() - self._t0, 3)
        )

    # --- one action ---------------------------------------------------------------------

    async def _run(self, action: Action, slots: asyncio.Semaphore | None) -> None:
        warnings: list[str] = []
        try:
            for prior in action.waits_for:
                await self._finished[prior].wait()
                result = self._results[prior]
                if result.status != "succeeded":
                    self._finish(action, "skipped", f"{prior} {_done(result)}")
                    return
            for condition in action.conditions:
                warning = await self._condition(action, condition)
                if warning:
                    warnings.append(warning)
            if slots is None or self._hands_over(action):
                message = await self._perform(action, warnings)
            else:
                async with slots:
                    message = await self._perform(action, warnings)
        except Failed as failure:
            status: Status = "rolled_back" if isinstance(failure, RolledBack) else "failed"
            self._finish(action, status, str(failure), warnings)
        except DriverError as error:
            self._finish(action, "failed", str(error), warnings)
        except Exception as error:  # a bug must not take the other branches down
            self._finish(action, "failed", f"internal error: {error!r}", warnings)
        else:
            self._finish(action, "succeeded", message, warnings)

    def _finish(
        self, action: Action, status: Status, message: str, warnings: list[str] | None = None
    ) -> None:
        message = self._scrub(message)
        kept = tuple(self._scrub(w) for w in warnings or ())
        self._results[action.id] = Outcome(action.id, status, message, kept)
        self._emit(action.id, status, message)
        self._finished[action.id].set()

    def _emit(self, action: str, kind: EventKind, message: str) -> None:
        elapsed = asyncio.get_running_loop().time() - self._t0
        self.on_event(Event(action, kind, self._scrub(message), round(elapsed, 3)))

    async def _before_stop(self, target: WorkloadId, warnings: list[str]) -> None:
        """Let :attr:`ExecutorSettings.before_stop` drain ``target``; a failure is a
        warning, never a reason to keep a replica the plan stops."""
        hook = self.settings.before_stop
        if hook is None or target.replica is None:
            return
        try:
            await hook(target)
        except ZlayerError as error:
            warnings.append(f"{target}: not drained first: {error}")

    async def _perform(self, action: Action, warnings: list[str]) -> str:
        self._emit(action.id, "started", action.reason)
        target = action.target
        if action.kind in ROUTE_KINDS:
            if self.settings.route is None:
                raise Failed(f"{action.subject}: this host has no managed proxy to route it")
            try:
                return await self.settings.route(action, warnings)
            except ZlayerError as error:
                raise Failed(f"{action.subject}: {error}") from error
        if target.is_network:
            await self._call(action, lambda: perform(self.driver, action, self.desired))
            return f"{target} {'ready' if action.kind in STARTUP_KINDS else 'removed'}"
        if action.kind in ("create", "replace", "scale") and self._clustered(target):
            return await self._deploy(action)
        if action.kind in ("create", "replace", "start", "restart"):
            if action.kind == "replace":
                return await self._replace(action, warnings)
            await self.init_steps(action, self._service(target), warnings)
        if action.kind in ("stop", "remove", "prune", "restart"):
            await self._before_stop(target, warnings)
        await self._call(action, lambda: perform(self.driver, action, self.desired))
        if action.kind in ("create", "start", "restart"):
            status = await self.driver.status(target)
            if status is None or status.status != "running":
                raise Failed(f"{_state(target, status)} right after it was started")
            return f"{target} running"
        return f"{target} {_PAST[action.kind]}"

    async def _call(self, action: Action, call: Callable[[], Awaitable[None]]) -> None:
        """A driver call, tried again after temporary failures."""
        attempts = max(1, self.settings.attempts)
        for attempt in range(1, attempts + 1):
            try:
                await call()
                return
            except TemporaryDriverError as error:
                if attempt == attempts:
                    raise
                self._emit(action.id, "retrying", f"{error}; retrying in {error.delay:g}s")
                await asyncio.sleep(error.delay)

    def _service(self, target: WorkloadId) -> DesiredService:
        return self.desired.services[(target.deployment, target.service)]

    def _hands_over(self, action: Action) -> bool:
        """The action gives a service to a clustered engine, which does the work on its
        nodes: it takes no slot of the concurrency limit (meant for this host's engine),
        or 20 services would start four at a time, each waiting for its tasks."""
        return action.kind in ("create", "replace", "scale") and self._clustered(action.target)

    def _clustered(self, target: WorkloadId) -> bool:
        """A service a clustered engine runs as a whole (not a definition)."""
        if not self.clustered or target.replica is not None:
            return False
        service = self.desired.services.get((target.deployment, target.service))
        return service is not None and not service.is_definition

    async def _deploy(self, action: Action) -> str:
        """Hand the service to the clustered engine, which rolls it; its own rollback is
        this action's ``rolled_back`` outcome, with the engine's message."""
        driver = self.driver
        if not isinstance(driver, ClusterDriver):
            raise Failed(f"{action.subject}: the {driver.name} runtime runs no cluster services")
        target = action.target
        service = self._service(target)
        current = self.services.get(target)
        replicas = wanted_replicas(service, current)
        version = None if current is None else current.version
        try:
            await self._call(
                action, lambda: driver.deploy(service, self.desired.revision, replicas, version)
            )
        except EngineRolledBack as error:
            raise RolledBack(str(error)) from error
        noun = "replica" if replicas == 1 else "replicas"
        return f"{target} {_PAST.get(action.kind, 'updated')}: {replicas} {noun} running"

    # --- conditions and health ----------------------------------------------------------

    async def _condition(self, action: Action, condition: Condition) -> str | None:
        """Wait until ``condition`` holds; a warning to keep, or raises :class:`Failed`."""
        key = (action.target.deployment, condition.service)
        timeout = 300.0 if condition.timeout is None else condition.timeout
        wanted = "running" if condition.condition == "started" else condition.condition
        self._emit(action.id, "waiting", f"for {condition.service} to be {wanted}")
        problem = await self._service_state(key, condition.condition, timeout)
        if problem is None:
            return None
        message = f"{condition.service} not {wanted} within {timeout:g}s: {problem}"
        if condition.on_timeout == "fail":
            raise Failed(message)
        if condition.on_timeout == "warn":
            self._emit(action.id, "warning", f"{message}; going on (on_timeout: warn)")
            return message
        return None

    async def _service_state(
        self, key: tuple[str, str], condition: str, timeout: float
    ) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        service = self.desired.services.get(key)
        observed = await self.driver.observe([key[0]])
        replicas = [
            w.id for w in observed.workloads if (w.deployment, w.service) == key and w.replica
        ]
        if not replicas:
            return f"{key[0]}/{key[1]} has no replicas"
        policy = service.policy.health if service else HealthPolicy("tcp")
        for replica in sorted(replicas):
            remaining = max(0.0, deadline - loop.time())
            if condition == "started" or self.clustered:
                # A clustered engine runs the health check itself and counts a task as
                # running only once it passes; zlayer cannot reach the task's address.
                problem = await self._wait_running(replica, remaining)
            else:
                problem = await self._wait_healthy(replica, policy, remaining)
            if problem:
                return problem
        if condition == "ready" and self.settings.in_rotation is not None:
            return await self._wait_in_rotation(key, max(0.0, deadline - loop.time()))
        return None

    async def _wait_in_rotation(self, key: tuple[str, str], timeout: float) -> str | None:
        """Until the managed proxy has a replica of ``key`` in rotation in every route
        of it (``ready``: traffic reaches it), within ``timeout``; why not, if not."""
        check = self.settings.in_rotation
        assert check is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            problem = await check(key)
            if problem is None or loop.time() >= deadline:
                return problem
            await asyncio.sleep(min(self.settings.poll, max(0.0, deadline - loop.time())))

    async def _wait_running(
        self, target: WorkloadId, timeout: float, hold: float = 0.0
    ) -> str | None:
        """Until ``target`` runs (within ``timeout``); with ``hold``, it must then
        keep running that long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.driver.status(target)
            if status is not None and status.status == "running":
                break
            if loop.time() >= deadline:
                return _state(target, status)
            await asyncio.sleep(min(self.settings.poll, max(0.0, deadline - loop.time())))
        until = loop.time() + hold
        while loop.time() < until:
            await asyncio.sleep(min(self.settings.poll, until - loop.time()))
            status = await self.driver.status(target)
            if status is None or status.status != "running":
                return _state(target, status)
        return None

    async def _wait_healthy(
        self, target: WorkloadId, policy: HealthPolicy, timeout: float
    ) -> str | None:
        """Probe until the check passes (``None``), the replica stops running, or
        ``timeout`` runs out (the last failure then says why)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        resolve = self._resolver(target)
        env = await self._probe_env(target, policy)
        while True:
            status = await self.driver.status(target)
            if status is None or status.status != "running":
                return _state(target, status)
            problem = await self.prober(policy, resolve, env)
            if problem is None:
                return None
            if loop.time() >= deadline:
                return problem
            pause = min(policy.interval, self.settings.poll, max(0.0, deadline - loop.time()))
            await asyncio.sleep(pause)

    def _resolver(self, target: WorkloadId, *, before_start: bool = False) -> probes.Resolve:
        return resolver(self.driver, self.desired, target, before_start=before_start)

    async def _probe_env(self, target: WorkloadId, policy: HealthPolicy) -> dict[str, str]:
        return await probe_env(self.driver, target, policy)

    # --- init steps -------------------------------------------------------------------

    async def init_steps(
        self, action: Action, service: DesiredService, warnings: list[str]
    ) -> None:
        steps = service.policy.init
        if not steps:
            return
        pauses = {"fail": (), "restart": (0.0,), "backoff": self.settings.init_backoff}
        retries = pauses.get(service.policy.on_init_failure, ())
        env = {"ZLAYER_DEPLOYMENT": service.deployment, "ZLAYER_SERVICE": service.name}
        resolve = self._resolver(action.target, before_start=True)
        for attempt in range(len(retries) + 1):
            problem = await self._init_once(action, steps, resolve, env, warnings)
            if problem is None:
                return
            if attempt == len(retries):
                raise Failed(problem)
            pause = retries[attempt]
            policy = service.policy.on_init_failure
            self._emit(action.id, "retrying", f"{problem}; init again in {pause:g}s ({policy})")
            await asyncio.sleep(pause)

    async def _init_once(
        self,
        action: Action,
        steps: tuple[InitStep, ...],
        resolve: probes.Resolve,
        env: Mapping[str, str],
        warnings: list[str],
    ) -> str | None:
        for step in steps:
            self._emit(action.id, "waiting", f"init step {step.id} ({step.uses})")
            problem: str | None = None
            for _ in range(1 + step.retry):
                problem = await probes.run_init_step(step, resolve, env)
                if problem is None:
                    break
            if problem is None or step.on_failure == "continue":
                continue
            message = f"init step {step.id} failed: {problem}"
            if step.on_failure == "fail":
                return message
            warnings.append(message)
            self._emit(action.id, "warning", f"{message}; going on (on_failure: warn)")
        return None

    # --- rolling replace --------------------------------------------------------------

    async def _replace(self, action: Action, warnings: list[str]) -> str:
        target = action.target
        service = self._service(target)
        rollout = self._rollouts.setdefault(service.key, _Rollout())
        try:
            return await self._replace_one(action, service, rollout, warnings)
        finally:
            rollout.left -= 1
            failed = action.id not in rollout.action_ids or not rollout.done
            if rollout.surge is not None and (rollout.left <= 0 or failed):
                await self._retire_surge(action, rollout, warnings)

    async def _replace_one(
        self, action: Action, service: DesiredService, rollout: _Rollout, warnings: list[str]
    ) -> str:
        target = action.target
        try:
            await self.init_steps(action, service, warnings)
        except Failed as failure:
            # This replica still runs its old config; the ones before it go back too.
            if rollout.done:
                await self._roll_back(action, rollout, str(failure))
            raise
        if self._start_first(service) and rollout.surge is None and not rollout.done:
            await self._start_surge(action, service, rollout, warnings)
        previous = self._previous(target, service, warnings)
        rollout.done.append((target, previous))
        rollout.action_ids.append(action.id)
        await self._before_stop(target, warnings)
        try:
            await self._call(action, lambda: perform(self.driver, action, self.desired))
        except DriverError as error:
            await self._roll_back(action, rollout, str(error))
        problem = await self._health_gate(action, target, service.policy.health)
        if problem is not None:
            await self._roll_back(action, rollout, f"{target} not healthy: {problem}")
        if rollout.surge is not None:
            await self._admit(action, target, warnings)
        return f"{target} replaced and healthy"

    async def _health_gate(
        self, action: Action, target: WorkloadId, policy: HealthPolicy
    ) -> str | None:
        """Wait for a replica just started to pass its health check; ``None`` when it
        did, else why not."""
        # As ZLayer's agent: the first check comes after start_grace; `retries` failed
        # checks `interval` apart mark the replica unhealthy. A replica that exits
        # during the grace period fails at once.
        deadline = policy.retries * policy.interval + policy.timeout
        self._emit(
            action.id,
            "waiting",
            f"for {target} to be healthy ({policy.start_grace:g}s grace, then up to {deadline:g}s)",
        )
        try:
            problem = await self._wait_running(target, 0.0, hold=policy.start_grace)
            if problem is None:
                problem = await self._wait_healthy(target, policy, deadline)
        except DriverError as error:
            problem = str(error)
        return problem

    # --- start-first replace of a routed service ----------------------------------------

    def _start_first(self, service: DesiredService) -> bool:
        """A service the managed proxy routes is replaced start-first: a surge replica
        with the new config serves before the first old replica leaves rotation, so a
        one-replica service never stops answering."""
        # A fixed host port (``port_mappings[].host_port``) binds one replica only: a
        # surge could not start next to the old one, so such a service stays stop-first.
        fixed = any(m.get("host_port") for m in service.config.get("port_mappings", ()))
        internal = self.driver.internal_routable and routed_endpoints(service.config, "internal")
        return (
            self.settings.admit is not None
            and self.driver.routable
            and bool(routed_endpoints(service.config) or internal)
            and not fixed
        )

    def _surge_index(self, service: DesiredService) -> int:
        """Above every replica the service has or will have in this plan."""
        have = [
            w.replica
            for w in self.observed.values()
            if (w.deployment, w.service) == service.key and w.replica is not None
        ]
        return max([service.replicas or 0, *have]) + 1

    async def _start_surge(
        self, action: Action, service: DesiredService, rollout: _Rollout, warnings: list[str]
    ) -> None:
        """Start the surge replica with the new config and put it in rotation; if it
        does not get healthy, nothing else is touched (the old replicas never left
        rotation) and the replace is rolled back."""
        index = self._surge_index(service)
        surge = service.workload_id(index)
        rollout.surge, rollout.surge_action = surge, action
        self._emit(
            action.id, "waiting", f"for surge replica {surge}: the new config next to the old"
        )
        try:
            await self._call(
                action, lambda: self.driver.create(service, index, self.desired.revision)
            )
        except DriverError as error:
            raise RolledBack(
                f"surge replica {surge} did not start: {error}; {action.target} kept its config"
            ) from None
        problem = await self._health_gate(action, surge, service.policy.health)
        if problem is not None:
            raise RolledBack(
                f"surge replica {surge} not healthy: {problem}; {action.target} kept its "
                "config and stayed in rotation"
            )
        await self._admit(action, surge, warnings)

    async def _admit(self, action: Action, target: WorkloadId, warnings: list[str] | None) -> None:
        """Let :attr:`ExecutorSettings.admit` put ``target`` in rotation; a failure is a
        warning (``None``: an event), the sync after the plan tries again."""
        hook = self.settings.admit
        if hook is None:
            return
        self._emit(action.id, "waiting", f"for {target} to be in rotation")
        try:
            await hook(target)
        except ZlayerError as error:
            message = f"{target}: not in rotation during the replace: {error}"
            if warnings is None:
                self._emit(action.id, "warning", message)
            else:
                warnings.append(message)

    async def _retire_surge(self, action: Action, rollout: _Rollout, warnings: list[str]) -> None:
        """Drain the surge replica and remove it; the service is back to its count."""
        surge, rollout.surge = rollout.surge, None
        if surge is None:
            return
        await self._before_stop(surge, warnings)
        try:
            await self._call(action, lambda: self.driver.remove(surge))
        except DriverError as error:
            warnings.append(f"surge replica {surge} not removed: {error}; the next plan removes it")
            return
        self._emit(action.id, "waiting", f"surge replica {surge} drained and removed")

    def _previous(
        self, target: WorkloadId, service: DesiredService, warnings: list[str]
    ) -> DesiredService | None:
        """What ``target`` runs now, rebuilt from the config the runtime recorded."""
        workload = self.observed.get(target)
        config = self.configs.get(workload.fingerprint) if workload else None
        if workload is None or config is None:
            warnings.append(f"{target}: no recorded config; it cannot be rolled back")
            return None
        try:
            restored = restore_service(service, config, workload.fingerprint, self.inputs)
        except ValueError as exc:
            warnings.append(f"{target}: cannot be rolled back: {exc}")
            return None
        return replace(restored, pull_policy="if_not_present")

    async def _roll_back(self, action: Action, rollout: _Rollout, why: str) -> NoReturn:
        restored: list[str] = []
        problems: list[str] = []
        for target, previous in reversed(rollout.done):
            if previous is None or target.replica is None:
                problems.append(f"{target} kept the new config (no earlier config to restore)")
                continue
            try:
                await self.driver.replace(previous, target.replica, self._revision(target))
                restored.append(str(target))
            except DriverError as error:
                problems.append(f"{target}: rollback failed: {error}")
                continue
            if rollout.surge is not None:  # back in rotation before the surge leaves
                await self._admit(action, target, None)
        for earlier in rollout.action_ids:
            if earlier == action.id:
                continue
            old = self._results[earlier]
            self._results[earlier] = replace(
                old, status="rolled_back", message=f"rolled back: {why}"
            )
            self._emit(earlier, "rolled_back", f"rolled back: {why}")
        rollout.done.clear()
        rollout.action_ids.clear()
        summary = f"{why}; rolled back {', '.join(restored) or 'nothing'}"
        if problems:
            raise Failed(f"{summary}; {'; '.join(problems)}")
        raise RolledBack(summary)

    def _revision(self, target: WorkloadId) -> str:
        workload = self.observed.get(target)
        return (workload.revision if workload else None) or self.desired.revision


class RolledBack(Failed):
    """A rollout failed its health gate and was rolled back."""


_PAST = {
    "create": "created",
    "scale": "scaled",
    "replace": "updated",
    "stop": "stopped",
    "remove": "removed",
    "prune": "removed",
    "register": "registered",
    "unregister": "unregistered",
}


def _state(target: WorkloadId, status: Workload | None) -> str:
    """``demo/web/1 is exited (exit code 3)``."""
    if status is None:
        return f"{target} is gone"
    code = f" (exit code {status.exit_code})" if status.exit_code else ""
    return f"{target} is {status.status}{code}"


def _done(outcome: Outcome) -> str:
    return {
        "failed": "failed",
        "skipped": "was skipped",
        "rolled_back": "was rolled back",
        "succeeded": "succeeded",
    }[outcome.status]


def resolver(
    driver: Driver, desired: DesiredState, target: WorkloadId, *, before_start: bool = False
) -> probes.Resolve:
    """How health checks and init steps of ``target`` reach a host name: ``localhost``
    is the replica itself, a service of its deployment is that service's first replica."""

    async def resolve(host: str, port: int) -> tuple[str, int]:
        if host in probes.LOCAL_HOSTS:
            if before_start or target.replica is None:
                # Init steps run on the host before the replica starts: there is
                # no replica to reach yet (or only the one about to be replaced).
                return host, port
            return await driver.address(target, port)
        peer = desired.services.get((target.deployment, host))
        if peer is not None and not peer.is_definition:
            return await driver.address(WorkloadId(target.deployment, host, 1), port)
        return host, port

    return resolve


async def probe_env(driver: Driver, target: WorkloadId, policy: HealthPolicy) -> dict[str, str]:
    """The environment of a command health check of ``target``."""
    env = {
        "ZLAYER_DEPLOYMENT": target.deployment,
        "ZLAYER_SERVICE": target.service,
        "ZLAYER_REPLICA": str(target.replica or ""),
    }
    if policy.kind == "command":
        host, _ = await driver.address(target, policy.port or 0)
        env["ZLAYER_REPLICA_ADDRESS"] = host
    return env


async def perform(driver: Driver, action: Action, desired: DesiredState) -> None:
    """Do what ``action`` says, one driver call. Creates and replaces take the
    compiled service from ``desired``; everything else needs only the identity."""
    target = action.target
    if action.kind in ROUTE_KINDS:
        raise ValueError(f"{action.id}: a route action is the proxy's (ExecutorSettings.route)")
    if target.is_network:
        if action.kind in STARTUP_KINDS:
            await driver.create_network(target.deployment)
        else:
            await driver.remove_network(target.deployment)
        return
    if action.kind in ("create", "replace", "register"):
        service = desired.services[(target.deployment, target.service)]
        if action.kind == "register":
            await driver.register(service, desired.revision)
        elif target.replica is None:
            raise ValueError(f"{action.id}: a {action.kind} needs a replica index")
        elif action.kind == "create":
            await driver.create(service, target.replica, desired.revision)
        else:
            await driver.replace(service, target.replica, desired.revision)
        return
    calls = {
        "start": driver.start,
        "restart": driver.restart,
        "stop": driver.stop,
        "remove": driver.remove,
        "prune": driver.remove,
        "unregister": driver.unregister,
    }
    await calls[action.kind](target)


async def execute(
    plan: Plan,
    driver: Driver,
    desired: DesiredState,
    observed: ObservedState,
    *,
    inputs: CompileInputs,
    settings: ExecutorSettings | None = None,
    on_event: Callable[[Event], None] = lambda _event: None,
) -> Report:
    """Run ``plan`` (computed from ``desired`` and ``observed``) through ``driver``."""
    executor = Executor(
        driver, desired, observed, inputs=inputs, settings=settings, on_event=on_event
    )
    return await executor.run(plan)

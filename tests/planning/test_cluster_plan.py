"""Services a clustered engine (Docker Swarm) runs as one object each: planned as a
whole (create, replace, scale, prune), never replica by replica; its tasks only
gate dependents. Pure planning against hand-made observed states."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection

from reconciler.desired import CompileInputs, DesiredService, DesiredState, compile_specs
from reconciler.drivers.fake import FakeDriver
from reconciler.drivers.swarm import SwarmDriver
from reconciler.errors import EngineRolledBack
from reconciler.executor import ExecutorSettings, execute
from reconciler.fingerprint import canonical_json
from reconciler.observed import ClusterService, ObservedState, Workload
from reconciler.plan.planner import plan_changes
from reconciler.reconcile import check_runtime
from reconciler.route_table import route_table, routes_of
from tests.conftest import load_ok, spec_text
from tests.planning.test_executor import INPUTS, desired_from

TIERS = """
services:
  db:
    image: {name: postgres}
    scale: {mode: fixed, replicas: 1}
  api:
    image: {name: api}
    scale: {mode: fixed, replicas: 3}
    depends: [{service: db}]
"""


def running(desired: DesiredState, name: str, **changed: object) -> ClusterService:
    """The engine's service for ``name`` as the specs say, with ``changed`` fields."""
    service = desired.services[("demo", name)]
    fields: dict[str, object] = {
        "deployment": "demo",
        "service": name,
        "fingerprint": service.fingerprint,
        "replicas": service.replicas,
        "version": 7,
    }
    fields.update(changed)
    return ClusterService(**fields)  # type: ignore[arg-type]


def cluster(*services: ClusterService, desired: DesiredState | None = None) -> ObservedState:
    configs = {}
    tasks = []
    for c in services:
        if desired is not None and ("demo", c.service) in desired.services:
            configs[c.fingerprint] = dict(desired.services[("demo", c.service)].config)
        for slot in range(1, (c.replicas or 0) + 1):
            tasks.append(
                Workload(
                    deployment="demo", service=c.service, replica=slot,
                    fingerprint=c.fingerprint, status="running", node=f"node-{slot}",
                )
            )  # fmt: skip
    return ObservedState(
        runtime="swarm", services_managed=True, services=services, workloads=tuple(tasks),
        configs=configs,
    )  # fmt: skip


def test_a_new_deployment_is_one_create_per_service_in_dependency_order() -> None:
    plan = plan_changes(desired_from(TIERS), cluster())
    assert [a.id for a in plan.actions] == ["create:demo/db", "create:demo/api"]
    api = plan.action("create:demo/api")
    assert api.reason == "new service, replicas 0 → 3 (rolling updates start-first)"
    assert api.waits_for == ("create:demo/db",)
    assert [c.service for c in api.conditions] == ["db"]


def test_a_converged_cluster_plans_nothing_whatever_its_tasks_do() -> None:
    desired = desired_from(TIERS)
    observed = cluster(running(desired, "db"), running(desired, "api"))
    crashed = [
        Workload(
            deployment="demo", service="api", replica=2, fingerprint="old", status="exited",
            exit_code=1,
        )
    ]  # fmt: skip
    # A task that failed or runs an older spec is the engine's to restart or roll.
    tasks = [w for w in observed.workloads if (w.service, w.replica) != ("api", 2)] + crashed
    observed = ObservedState(**{**observed.__dict__, "workloads": tuple(tasks)})
    assert plan_changes(desired, observed).empty


def test_a_count_scaled_by_hand_is_planned_back_as_one_scale() -> None:
    desired = desired_from(TIERS)
    plan = plan_changes(
        desired, cluster(running(desired, "db"), running(desired, "api", replicas=5))
    )
    assert [(a.id, a.reason) for a in plan.actions] == [("scale:demo/api", "replicas 5 → 3")]
    assert plan.summary()["scale"] == 1


def test_a_changed_config_is_one_rolling_replace_that_says_what_changed() -> None:
    desired = desired_from(TIERS)
    old = desired_from(TIERS.replace("image: {name: api}", "image: {name: api-old}"))
    stale = running(old, "api")
    observed = cluster(running(desired, "db"), stale, desired=old)
    plan = plan_changes(desired, observed)
    action = plan.action("replace:demo/api")
    assert [a.id for a in plan.actions] == ["replace:demo/api"]
    assert "api-old" in action.reason and "(rolling, start-first)" in action.reason, action.reason
    assert [c.path for c in action.changes] == ["image"]


def test_a_service_with_a_public_port_rolls_stop_first() -> None:
    text = TIERS + "    endpoints: [{name: http, protocol: http, port: 8080, expose: public}]\n"
    desired = desired_from(text)
    old = desired_from(text.replace("image: {name: api}", "image: {name: api-old}"))
    plan = plan_changes(desired, cluster(running(desired, "db"), running(old, "api"), desired=old))
    assert plan.action("replace:demo/api").reason.endswith("(rolling, stop-first)")


def test_behind_the_clusters_proxy_a_public_port_rolls_start_first_and_is_a_route() -> None:
    text = TIERS + "    endpoints: [{name: http, protocol: http, port: 8080, expose: public}]\n"
    desired = desired_from(text)
    old = desired_from(text.replace("image: {name: api}", "image: {name: api-old}"))
    observed = cluster(running(desired, "db"), running(old, "api"), desired=old)
    proxied = dataclasses.replace(observed, routes_managed=True, proxy_running=True)
    plan = plan_changes(desired, proxied)
    assert plan.action("replace:demo/api").reason.endswith("(rolling, start-first)")
    route = plan.action("route:demo/api:http")
    assert route.reason == "new route: http :8080 → 3 replicas"
    # Routed and converged: the proxy finds the tasks in DNS, so no server is missing.
    table = route_table(desired.services.values())
    served = dataclasses.replace(
        cluster(running(desired, "db"), running(desired, "api"), desired=desired),
        routes_managed=True, proxy_running=True, routes=tuple(routes_of(table)),
    )  # fmt: skip
    assert plan_changes(desired, served).empty
    stopped = dataclasses.replace(served, proxy_running=False)
    assert [a.reason for a in plan_changes(desired, stopped).actions] == [
        "the managed proxy is not running"
    ]


def test_two_deployments_cannot_share_a_public_port_behind_the_swarms_proxies() -> None:
    routed = "    endpoints: [{name: h, protocol: http, port: 80, expose: public, host: %s}]\n"
    one = spec_text(TIERS + routed % "a.test")
    other = spec_text(TIERS + routed % "b.test").replace("deployment: demo", "deployment: shop")
    assert "deployment: shop" in other
    both, problems = compile_specs([load_ok(one), load_ok(other)], "r1", INPUTS)
    assert both is not None, problems
    _, errors = check_runtime(SwarmDriver(proxy_image="haproxy:test"), both)
    assert errors == [
        "port 80: deployments demo, shop all route it, and each deployment's proxy owns "
        "its ports on every node of the swarm"
    ]
    _, alone = check_runtime(SwarmDriver(proxy_image=""), both)
    assert alone == []  # without proxies each task publishes its own port on its node


def test_a_service_that_left_the_specs_is_pruned_as_a_whole() -> None:
    desired = desired_from(TIERS)
    extra = ClusterService(deployment="demo", service="old", fingerprint="f", replicas=2, version=3)
    plan = plan_changes(desired, cluster(running(desired, "db"), running(desired, "api"), extra))
    assert [(a.id, a.reason) for a in plan.actions] == [
        ("prune:demo/old", "service removed from specs")
    ]
    kept = plan_changes(
        desired, cluster(running(desired, "db"), running(desired, "api"), extra), prune=False
    )
    assert kept.empty and any("kept by --no-prune" in n.message for n in kept.notes)


def test_an_engine_rollback_is_a_note_not_a_fight() -> None:
    desired = desired_from(TIERS)
    rolled = running(
        desired, "api", update_state="rollback_completed",
        update_message="update rolled back due to failure or early termination of task x",
    )  # fmt: skip
    plan = plan_changes(desired, cluster(running(desired, "db"), rolled))
    assert plan.empty
    assert any("rolled its last update back: update rolled back" in n.message for n in plan.notes)


def test_cluster_services_are_in_the_snapshot_and_its_fingerprint() -> None:
    desired = desired_from(TIERS)
    one = cluster(running(desired, "db"))
    two = cluster(running(desired, "db", replicas=2))
    assert one.fingerprint() != two.fingerprint()
    from reconciler.observed import load_snapshot

    again = load_snapshot(one.to_json())
    assert again.services == one.services and again.services_managed
    assert canonical_json(again.workloads[0].node) == '"node-1"'


def test_a_placement_change_alone_is_a_rolling_replace() -> None:
    """Placement is not part of the config (one host places nothing), but on a cluster
    moving a service to other nodes is a change the engine rolls."""
    text = TIERS.replace("replicas: 1}\n", "replicas: 1}\n    node_selector: {labels: {zone: b}}\n")
    desired = desired_from(text)
    before = running(desired, "db", placement={"node_selector": {"labels": {"zone": "a"}}})
    plan = plan_changes(desired, cluster(before, running(desired, "api"), desired=desired))
    action = plan.action("replace:demo/db")
    assert action.reason == (
        'node_selector: {"labels":{"zone":"a"}} → {"labels":{"zone":"b"}} (rolling, start-first)'
    )
    assert [(c.path, c.kind) for c in action.changes] == [("node_selector", "changed")]
    same = running(desired, "db", placement={"node_selector": {"labels": {"zone": "b"}}})
    assert plan_changes(desired, cluster(same, running(desired, "api"), desired=desired)).empty


class ClusterFake(FakeDriver):
    """The in-memory runtime as a clustered engine: ``deploy`` records the services it is
    given and how many run at once; ``rolls_back`` names services whose update the
    "engine" rolls back."""

    def __init__(self, rolls_back: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.rolls_back = rolls_back
        self.deployed: dict[str, tuple[int, int | None]] = {}
        self.running = self.most = 0

    async def observe(self, deployments: Collection[str] | None = None) -> ObservedState:
        state = await super().observe(deployments)
        return dataclasses.replace(state, services_managed=True)

    async def deploy(
        self, service: DesiredService, revision: str, replicas: int, version: int | None
    ) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.05)  # the engine placing and starting tasks
            if service.name in self.rolls_back:
                raise EngineRolledBack(f"demo/{service.name}: rolled back by the engine: boom")
            self.deployed[service.name] = (replicas, version)
        finally:
            self.running -= 1


async def test_services_handed_to_the_engine_take_no_slot_and_a_rollback_is_its_outcome() -> None:
    body = "services:\n" + "".join(
        f"  s{i}:\n    image: {{name: nginx}}\n    scale: {{mode: fixed, replicas: 2}}\n"
        for i in range(8)
    )
    desired = desired_from(body)
    old = desired_from(body.replace("name: nginx", "name: nginx-old"))
    observed = cluster(*(running(old, f"s{i}") for i in range(8)), desired=old)
    plan = plan_changes(desired, observed)
    assert [a.kind for a in plan.actions] == ["replace"] * 8
    driver = ClusterFake(rolls_back=frozenset({"s3"}))
    report = await execute(
        plan, driver, desired, observed, inputs=CompileInputs(),
        settings=ExecutorSettings(concurrency=2, poll=0.01),
    )  # fmt: skip
    outcomes = {o.action: (o.status, o.message) for o in report.outcomes}
    assert outcomes["replace:demo/s3"] == (
        "rolled_back", "demo/s3: rolled back by the engine: boom"
    )  # fmt: skip
    assert outcomes["replace:demo/s0"] == ("succeeded", "demo/s0 updated: 2 replicas running")
    assert driver.deployed["s0"] == (2, 7)  # the count and the version index observed
    assert driver.most == 8, driver.most  # all at once, whatever the concurrency limit

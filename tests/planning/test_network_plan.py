"""Deployment networks as plan resources (runtimes that manage them, like the process
runtime as root): planned, ordered around the workloads, carried out, and absent
from plans on runtimes that do not manage networks."""

from __future__ import annotations

import dataclasses

from reconciler.desired import DesiredState, as_running
from reconciler.drivers.fake import FakeDriver
from reconciler.observed import Network, ObservedState, WorkloadId
from reconciler.plan.planner import plan_changes
from tests.planning.test_executor import apply, desired_from

TWO = """
services:
  web:
    image: {name: nginx}
  worker:
    image: {name: nginx}
    depends: [{service: web}]
"""
HOST_ONLY = """
services:
  web:
    image: {name: nginx}
    network_mode: host
"""


def managed(*networks: Network) -> ObservedState:
    return ObservedState(runtime="fake", networks_managed=True, networks=networks)


def net(deployment: str = "demo", problem: str | None = None) -> Network:
    return Network(deployment=deployment, name=f"br-{deployment}", problem=problem)


def test_a_new_deployment_creates_its_network_before_any_replica() -> None:
    plan = plan_changes(desired_from(TWO), managed())
    first = plan.actions[0]
    assert (first.id, first.reason) == ("create:demo/(network)", "new deployment network")


def test_every_startup_action_waits_for_the_network() -> None:
    plan = plan_changes(desired_from(TWO), managed())
    web = plan.action("create:demo/web/1")
    assert web.waits_for == ("create:demo/(network)",)


def test_networks_never_appear_where_the_runtime_does_not_manage_them() -> None:
    plan = plan_changes(desired_from(TWO), ObservedState(runtime="fake"))
    assert not [a for a in plan.actions if a.target.is_network]


def test_a_ready_network_needs_nothing_and_a_broken_one_is_created_again() -> None:
    desired = desired_from(TWO)
    assert not [a for a in plan_changes(desired, managed(net())).actions if a.target.is_network]
    broken = plan_changes(desired, managed(net(problem="bridge br-demo is missing")))
    action = broken.action("create:demo/(network)")
    assert action.reason == "bridge br-demo is missing; creating it again"


def test_host_network_services_need_no_network_and_an_unused_one_is_removed() -> None:
    plan = plan_changes(desired_from(HOST_ONLY), managed())
    assert [a.id for a in plan.actions] == ["create:demo/web/1"]
    plan = plan_changes(desired_from(HOST_ONLY), managed(net()))
    remove = plan.action("remove:demo/(network)")
    assert "no service of the deployment joins its network" in remove.reason


def test_a_pruned_deployment_removes_its_network_after_its_workloads() -> None:
    desired = desired_from(TWO)
    observed = dataclasses.replace(managed(net()), workloads=as_running(desired).workloads)
    gone = DesiredState(revision="r2", services={}, deployments=frozenset())
    plan = plan_changes(gone, observed)
    network = plan.action("prune:demo/(network)")
    assert plan.actions[-1] == network
    assert set(network.waits_for) == {"prune:demo/web/1", "prune:demo/worker/1"}
    kept = plan_changes(gone, observed, prune=False)
    assert kept.empty
    assert any(n.subject == "demo/(network)" for n in kept.notes)


def test_a_replica_whose_sandbox_drifted_is_restarted_with_the_reason() -> None:
    desired = desired_from(TWO)
    workloads = list(as_running(desired).workloads)
    workloads[0] = dataclasses.replace(workloads[0], problem="network namespace x is missing")
    observed = dataclasses.replace(managed(net()), workloads=tuple(workloads))
    plan = plan_changes(desired, observed)
    (action,) = plan.actions
    assert (action.kind, action.reason) == ("restart", "network namespace x is missing")
    healthy = dataclasses.replace(managed(net()), workloads=as_running(desired).workloads)
    assert observed.fingerprint() != healthy.fingerprint()


async def test_the_executor_creates_the_network_first_and_removes_it_last() -> None:
    driver = FakeDriver(networks_managed=True)
    run = await apply(driver, desired_from(TWO))
    assert driver.calls[0] == ("create", "demo/(network)")
    assert run.status("create:demo/(network)") == "succeeded"
    assert "demo" in driver.networks
    run = await apply(driver, DesiredState(revision="r2", services={}, deployments=frozenset()))
    assert driver.calls[-1] == ("remove", "demo/(network)")
    assert driver.networks == {}
    assert WorkloadId.network("demo") == WorkloadId("demo", "(network)", None)

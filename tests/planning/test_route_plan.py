"""Routes as plan resources (hosts whose public endpoints go through the managed proxy):
new, changed and repaired routes, routes that go with their endpoint, service or
deployment, their place in the order, and their absence where nothing is routed."""

from __future__ import annotations

import dataclasses

from reconciler.desired import DesiredState, as_running
from reconciler.observed import ObservedState, Route, RouteServer, Workload
from reconciler.plan.planner import plan_changes
from reconciler.reconcile import destroy_plan, with_routes
from tests.planning.test_executor import desired_from

WEB = """
services:
  web:
    image: {{name: nginx}}
    scale: {{mode: fixed, replicas: 3}}
    endpoints:
      - name: http
        protocol: http
        port: 8080
        target_port: 80
        expose: public
{extra}
  worker:
    image: {{name: nginx}}
    depends: [{{service: web, condition: {condition}}}]
"""


def spec(extra: str = "", condition: str = "ready") -> DesiredState:
    return desired_from(WEB.format(extra=extra, condition=condition))


def served(desired: DesiredState) -> ObservedState:
    """A host running ``desired`` exactly, its routes served."""
    return with_routes(as_running(desired), desired)


def route_of(observed: ObservedState) -> Route:
    (route,) = observed.routes
    return route


def test_a_new_public_endpoint_is_a_new_route_after_the_replicas_it_serves() -> None:
    desired = spec()
    plan = plan_changes(desired, ObservedState(runtime="process", routes_managed=True))
    route = plan.action("route:demo/web:http")
    assert route.reason == "new route: http :8080 → 3 replicas"
    assert route.endpoint == "http" and route.target.replica is None
    assert set(route.waits_for) == {f"create:demo/web/{i}" for i in (1, 2, 3)}
    # ready: the dependent starts once traffic reaches web, after the route.
    assert "route:demo/web:http" in plan.action("create:demo/worker/1").waits_for
    assert plan.summary()["route"] == 1


def test_a_host_serving_the_specs_plans_nothing() -> None:
    desired = spec(extra="        host: api.example.test\n        path: /v1")
    assert plan_changes(desired, served(desired)).empty


def test_a_changed_routing_field_is_a_reroute_naming_each_change() -> None:
    observed = served(spec())
    desired = spec(extra="        host: api.example.test")
    plan = plan_changes(desired, observed)
    # host and path are the proxy's alone: the replicas are not replaced for them.
    (action,) = plan.actions
    assert (action.id, action.kind) == ("reroute:demo/web:http", "reroute")
    assert action.reason == "host added: api.example.test"
    (change,) = action.changes
    assert (change.path, change.kind, change.before, change.after) == (
        "host",
        "added",
        None,
        "api.example.test",
    )


def test_a_changed_check_is_a_reroute() -> None:
    before = spec(extra="    health: {check: {type: tcp, port: 80}, interval: 5s}")
    observed = served(before)
    after = spec(extra="    health: {check: {type: http, url: 'http://localhost:80/h?token=x'}}")
    action = plan_changes(after, observed).action("reroute:demo/web:http")
    assert action.kind == "reroute"
    assert action.changes[0].path == "check"
    assert action.changes[0].after.startswith("http GET /h?… :80 expects 200")
    assert "token" not in action.reason


def test_a_proxy_that_does_not_run_is_a_reroute_of_every_route() -> None:
    desired = spec()
    observed = dataclasses.replace(served(desired), proxy_running=False)
    (action,) = plan_changes(desired, observed).actions
    assert action.reason == "the managed proxy is not running"


def test_servers_that_are_not_the_running_replicas_are_drift() -> None:
    desired = spec()
    observed = served(desired)
    route = route_of(observed)
    missing = dataclasses.replace(route, servers=route.servers[:1])
    plan = plan_changes(desired, dataclasses.replace(observed, routes=(missing,)))
    (action,) = plan.actions
    assert action.reason == "web/2, web/3 run without a server"
    extra = RouteServer(replica=4, address="10.0.0.9:80", status="UP")
    left = dataclasses.replace(route, servers=(*route.servers, extra))
    (action,) = plan_changes(desired, dataclasses.replace(observed, routes=(left,))).actions
    assert action.reason == "a server is left for web/4, which does not run"


def test_a_failing_replica_keeps_its_server_but_an_unhealthy_one_does_not() -> None:
    desired = spec()
    observed = served(desired)
    # HAProxy marks a server DOWN by itself: no drift while the replica runs.
    route = route_of(observed)
    down = dataclasses.replace(
        route,
        servers=tuple(dataclasses.replace(s, status="DOWN") for s in route.servers),
    )
    assert plan_changes(desired, dataclasses.replace(observed, routes=(down,))).empty
    # An exited replica is restarted, and its server is drift the route repairs after.
    workloads = tuple(
        dataclasses.replace(w, status="exited", exit_code=1, health="none")
        if (w.service, w.replica) == ("web", 2)
        else w
        for w in observed.workloads
    )
    plan = plan_changes(desired, dataclasses.replace(observed, workloads=workloads))
    reroute = plan.action("reroute:demo/web:http")
    assert reroute.reason == "a server is left for web/2, which does not run"
    assert "restart:demo/web/2" in reroute.waits_for


def test_an_endpoint_that_leaves_the_specs_is_unrouted() -> None:
    observed = served(spec())
    desired = desired_from(
        "services:\n  web:\n    image: {name: nginx}\n    scale: {mode: fixed, replicas: 3}\n"
        "  worker:\n    image: {name: nginx}\n"
    )
    plan = plan_changes(desired, observed)
    action = plan.action("unroute:demo/web:http")
    assert action.reason == "endpoint no longer routed by the specs (http :8080)"


def test_a_pruned_deployment_leaves_the_proxy_before_its_replicas_stop() -> None:
    observed = served(spec())
    gone = DesiredState(revision="r2", services={}, deployments=frozenset())
    plan = plan_changes(gone, observed)
    unroute = plan.action("unroute:demo/web:http")
    assert unroute.reason == "deployment removed from specs (http :8080)"
    for replica in (1, 2, 3):
        assert unroute.id in plan.action(f"prune:demo/web/{replica}").waits_for
    kept = plan_changes(gone, observed, prune=False)
    assert kept.empty
    assert any(n.subject == "demo/web:http" and "--no-prune" in n.message for n in kept.notes)


def test_destroy_unroutes_first() -> None:
    plan = destroy_plan(served(spec()), "demo")
    unroute = plan.action("unroute:demo/web:http")
    assert unroute.kind == "unroute"
    assert unroute.id in plan.action("remove:demo/web/1").waits_for


def test_routes_never_appear_where_nothing_is_routed() -> None:
    desired = spec()
    assert not [a for a in plan_changes(desired, ObservedState(runtime="fake")).actions
                if a.endpoint]  # fmt: skip
    # Host networking is not routed: no route, and no route planned for it.
    host = spec(extra="    network_mode: host")
    plan = plan_changes(host, ObservedState(runtime="process", routes_managed=True))
    assert not [a for a in plan.actions if a.endpoint]


def test_a_target_limits_the_routes_planned() -> None:
    desired = spec()
    empty = ObservedState(runtime="process", routes_managed=True)
    plan = plan_changes(desired, empty, targets=("worker",))
    assert "route:demo/web:http" in [a.id for a in plan.actions]  # worker depends on web
    other = desired_from(
        "services:\n  api:\n    image: {name: nginx}\n    endpoints:\n"
        "      - {name: http, protocol: http, port: 9000, expose: public}\n"
        "  solo:\n    image: {name: nginx}\n"
    )
    plan = plan_changes(other, empty, targets=("solo",))
    assert not [a for a in plan.actions if a.endpoint]


def test_the_observed_fingerprint_sees_routes_but_not_counters() -> None:
    desired = spec()
    observed = served(desired)
    route = route_of(observed)
    busier = dataclasses.replace(
        route, servers=tuple(dataclasses.replace(s, requests=99) for s in route.servers)
    )
    assert dataclasses.replace(observed, routes=(busier,)).fingerprint() == observed.fingerprint()
    fewer = dataclasses.replace(route, servers=route.servers[:1])
    assert dataclasses.replace(observed, routes=(fewer,)).fingerprint() != observed.fingerprint()
    stopped = dataclasses.replace(observed, proxy_running=False)
    assert stopped.fingerprint() != observed.fingerprint()


def test_a_snapshot_keeps_routes_and_their_counters() -> None:
    from reconciler.observed import load_snapshot

    observed = served(spec())
    route = route_of(observed)
    counted = dataclasses.replace(
        route, servers=tuple(dataclasses.replace(s, requests=7, errors=1) for s in route.servers)
    )
    state = dataclasses.replace(observed, routes=(counted,))
    again = load_snapshot(state.to_json())
    assert again.routes == (counted,)
    assert again.routes_managed and again.proxy_running
    assert [s.requests for s in again.routes[0].servers] == [7, 7, 7]


def test_dependents_start_after_the_route_and_ready_is_a_condition_of_its_own() -> None:
    empty = ObservedState(runtime="process", routes_managed=True)
    plan = plan_changes(spec(condition="healthy"), empty)
    # healthy: after web's startup actions, which include its route (it is one of them).
    assert "route:demo/web:http" in plan.action("create:demo/worker/1").waits_for
    conditions = plan.action("create:demo/worker/1").conditions
    assert [c.condition for c in conditions] == ["healthy"]
    ready = plan_changes(spec(), empty).action("create:demo/worker/1").conditions
    assert [c.condition for c in ready] == ["ready"]


def test_workloads_of_a_snapshot_without_routes_plan_no_routes() -> None:
    # Snapshots written before routes were planned: routes_managed is false.
    workload = Workload(deployment="demo", service="web", replica=1, fingerprint="x",
                        status="running")  # fmt: skip
    plan = plan_changes(spec(), ObservedState(runtime="process", workloads=(workload,)))
    assert not [a for a in plan.actions if a.endpoint]


def test_a_target_port_change_replaces_the_replicas_and_then_reroutes() -> None:
    observed = served(spec())
    desired = desired_from(
        WEB.format(extra="", condition="ready").replace("target_port: 80", "target_port: 81")
    )
    plan = plan_changes(desired, observed)
    reroute = plan.action("reroute:demo/web:http")
    assert reroute.reason == "target_port 80 → 81; check tcp :80 every 10s → tcp :81 every 10s"
    assert set(reroute.waits_for) == {f"replace:demo/web/{i}" for i in (1, 2, 3)}

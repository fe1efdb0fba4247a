"""Planner properties over generated specs and hosts (hypothesis).

For any running state and any specs: the plan is in a valid order, every action
has a reason, services whose replicas all run with the right fingerprint are not
touched, and applying the plan to the fake driver converges (planning again
gives nothing to do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import CompileInputs, DesiredState, as_running, compile_specs
from reconciler.drivers.fake import FakeDriver
from reconciler.executor import perform
from reconciler.observed import ObservedState, Workload
from reconciler.plan.model import STARTUP_KINDS, Plan
from reconciler.plan.planner import plan_changes
from reconciler.spec.load import SourceFile, load_sources
from tests.conftest import assert_runs_exactly

NAMES = ["s0", "s1", "s2", "s3", "s4"]


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=5))
    chosen.sort()
    services: dict[str, Any] = {}
    for i, name in enumerate(chosen):
        service: dict[str, Any] = {"image": {"name": draw(st.sampled_from(["a:1", "a:2"]))}}
        env = draw(st.dictionaries(st.sampled_from(["A", "B", "TOKEN"]), st.sampled_from("xy")))
        if env:
            service["env"] = env
        rtype = draw(st.sampled_from(["service", "service", "service", "job", "cron"]))
        if rtype == "service":
            service["scale"] = {"mode": "fixed", "replicas": draw(st.integers(0, 3))}
        else:
            service["rtype"] = rtype
            if rtype == "cron":
                service["schedule"] = draw(st.sampled_from(["0 0 * * * *", "0 30 * * * *"]))
        earlier = chosen[:i]
        if earlier:
            deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2))
            service["depends"] = [{"service": d} for d in deps]
        services[name] = service
    return {"version": "v1", "deployment": "prop", "services": services}


def compile_data(data: dict[str, Any]) -> DesiredState:
    loaded = load_sources([SourceFile("p.yaml", json.dumps(data).encode())])
    assert loaded.ok, [p.render() for p in loaded.problems]
    desired, problems = compile_specs(loaded.specs, "rev", CompileInputs())
    assert desired is not None, problems
    return desired


@st.composite
def hosts(draw: st.DrawFn) -> ObservedState:
    base = as_running(compile_data(draw(specs())))
    workloads: list[Workload] = []
    for workload in base.workloads:
        if workload.replica is None:
            workloads.append(workload)
            continue
        fate = draw(st.sampled_from(["ok", "ok", "gone", "exited", "created", "paused", "dead"]))
        if fate == "gone":
            continue
        if fate != "ok":
            code = 137 if fate == "exited" else None
            workload = dataclasses.replace(workload, status=fate, exit_code=code)
        workloads.append(workload)
    return ObservedState(runtime="fake", workloads=tuple(workloads))


async def converge(plan: Plan, desired: DesiredState, observed: ObservedState) -> ObservedState:
    async with FakeDriver(observed) as driver:
        for action in plan.actions:
            await perform(driver, action, desired)
        return await driver.observe()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wanted=specs(), observed=hosts(), prune=st.booleans())
def test_plans_are_ordered_explained_minimal_and_converge(
    wanted: dict[str, Any], observed: ObservedState, prune: bool
) -> None:
    desired = compile_data(wanted)
    plan = plan_changes(desired, observed, prune=prune)

    seen: set[str] = set()
    for action in plan.actions:
        assert action.reason
        assert set(action.waits_for) <= seen
        seen.add(action.id)
        if action.kind in STARTUP_KINDS and action.kind != "register":
            service = desired.services[(action.target.deployment, action.target.service)]
            assert [c.service for c in action.conditions] == [d.service for d in service.depends]
    assert len(seen) == len(plan.actions)

    touched = {(a.target.deployment, a.target.service) for a in plan.actions}
    for key, service in desired.services.items():
        mine = [w for w in observed.workloads if (w.deployment, w.service) == key]
        settled = [
            w
            for w in mine
            if w.fingerprint == service.fingerprint and w.status in ("running", "registered")
        ]
        expected = 1 if service.is_definition else service.replicas
        indexes = sorted(w.replica or 0 for w in settled)
        exact = [0] if service.is_definition else list(range(1, (expected or 0) + 1))
        if len(settled) == len(mine) and indexes == exact:
            assert key not in touched, f"{key} is settled but planned"

    after = asyncio.run(converge(plan, desired, observed))
    assert_runs_exactly(after, desired, observed, prune)
    again = plan_changes(desired, after, prune=prune)
    assert again.actions == ()

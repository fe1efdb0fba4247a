"""Planner cases as data: specs + observed state → the exact expected plan.

Each ``tests/plan_cases/*.yaml`` names the specs a host runs now (``running``),
edits to what the runtime reports (``observed``), the specs to plan (``specs``)
and the expected actions with their reasons, in plan order. Every case is then
applied to the fake driver and planned again: the second plan must be empty.
The format is described in ``tests/plan_cases/README.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.desired import CompileInputs, DesiredState, as_running, compile_specs
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import PlanError
from reconciler.executor import perform
from reconciler.observed import ObservedState, Workload
from reconciler.plan.diff import describe
from reconciler.plan.model import Plan
from reconciler.plan.planner import plan_changes
from reconciler.spec.load import SourceFile, load_sources
from tests.conftest import assert_runs_exactly

CASES = sorted((Path(__file__).parent / "plan_cases").glob("*.yaml"))
SECRET_KEY = b"plan-cases-key"


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    return data


def _inputs(case: dict[str, Any], secrets_key: str) -> CompileInputs:
    secrets = case.get(secrets_key, case.get("secrets", {}))
    if secrets == "offline":
        return CompileInputs(env=case.get("env", {}), secret_key=None)
    return CompileInputs(env=case.get("env", {}), secret_key=SECRET_KEY, secret=(secrets or {}).get)


def _compile(files: dict[str, str], inputs: CompileInputs, revision: str) -> DesiredState:
    loaded = load_sources(SourceFile(name, text.encode()) for name, text in files.items())
    assert loaded.ok, [p.render() for p in loaded.problems]
    desired, problems = compile_specs(loaded.specs, revision, inputs)
    assert desired is not None, [p.render() for p in problems]
    return desired


def _observed(case: dict[str, Any]) -> ObservedState:
    running = case.get("running")
    workloads: dict[tuple[str, str, int | None], dict[str, Any]] = {}
    base = ObservedState(runtime="fake")
    if running:
        base = as_running(_compile(running, _inputs(case, "running_secrets"), "rev-running"))
        for w in base.workloads:
            workloads[(w.deployment, w.service, w.replica)] = dataclasses.asdict(w)
    for edit in case.get("observed", []):
        edit = dict(edit)
        key = (edit["deployment"], edit["service"], edit.get("replica"))
        if edit.pop("remove", False):
            del workloads[key]
            continue
        workloads[key] = {**workloads.get(key, {}), **edit}
    configs = {**base.configs, **case.get("observed_configs", {})}
    return ObservedState(
        runtime="fake",
        workloads=tuple(Workload(**w) for w in workloads.values()),
        configs=configs,
    )


def _plan(case: dict[str, Any], desired: DesiredState, observed: ObservedState) -> Plan:
    options = case.get("options", {})
    return plan_changes(
        desired,
        observed,
        prune=options.get("prune", True),
        targets=tuple(options.get("targets", ())),
    )


def _check_expectations(plan: Plan, expect: dict[str, Any]) -> None:
    got = [f"{a.id}: {a.reason}" for a in plan.actions]
    assert got == expect.get("actions", []), "\n".join(got)
    for action_id, waits in expect.get("waits_for", {}).items():
        assert sorted(plan.action(action_id).waits_for) == sorted(waits), action_id
    for action_id, conditions in expect.get("conditions", {}).items():
        found = [
            f"{c.service} {c.condition} {c.timeout:g}s {c.on_timeout}"
            for c in plan.action(action_id).conditions
            if c.timeout is not None
        ]
        assert found == conditions, action_id
    for action_id, changes in expect.get("changes", {}).items():
        assert [describe(c) for c in plan.action(action_id).changes] == changes, action_id
    for key in ("notes", "warnings"):
        texts = [f"{n.subject}: {n.message}" for n in getattr(plan, key)]
        for wanted in expect.get(key, []):
            assert any(wanted in t for t in texts), f"{wanted!r} not in {texts}"
        if expect.get(key) == []:
            assert texts == []
    _check_order(plan)


def _check_order(plan: Plan) -> None:
    seen: set[str] = set()
    for action in plan.actions:
        assert set(action.waits_for) <= seen, f"{action.id} comes before what it waits for"
        seen.add(action.id)


async def _apply(plan: Plan, desired: DesiredState, observed: ObservedState) -> ObservedState:
    driver = FakeDriver(observed)
    async with driver:
        for action in plan.actions:
            await perform(driver, action, desired)
        return await driver.observe()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_case(path: Path) -> None:
    case = _read(path)
    expect = case["expect"]
    observed = _observed(case)
    if "error" in expect:
        with pytest.raises(PlanError, match=expect["error"]):
            _plan(case, _compile(case["specs"], _inputs(case, "secrets"), "rev-specs"), observed)
        return
    desired = _compile(case["specs"], _inputs(case, "secrets"), "rev-specs")
    plan = _plan(case, desired, observed)
    _check_expectations(plan, expect)

    after = asyncio.run(_apply(plan, desired, observed))
    options = case.get("options", {})
    if not options.get("targets"):
        assert_runs_exactly(after, desired, observed, options.get("prune", True))
    again = _plan(case, desired, after)
    assert [a.id for a in again.actions] == [], "applying the plan did not converge"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40

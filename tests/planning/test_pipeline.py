"""The one reconcile pipeline (reconciler.reconcile) on the in-memory runtime: compiling
with every problem, a pass that observes, plans, lets its review decide and executes
only with the apply lock held; and that no other module plans or executes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from reconciler import reconcile
from reconciler.desired import CompileInputs, DesiredService
from reconciler.drivers.base import Limits
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import InvalidSpecs, UnsupportedSpecs, ZlayerError
from reconciler.lock import ApplyLock
from reconciler.plan.model import Plan
from reconciler.sources.files import collect
from tests.conftest import REPO, spec_text

INPUTS = CompileInputs(secret_key=b"k")
SPEC = spec_text(
    """
    services:
      db:
        image: {name: postgres}
      web:
        image: {name: nginx}
        depends: [{service: db}]
    """
)


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / "specs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path.parent


def test_compile_paths_gives_the_desired_state(tmp_path: Path) -> None:
    compiled = reconcile.compile_paths([str(write(tmp_path, SPEC))], INPUTS)
    desired = compiled.required("planned")
    assert sorted(desired.services) == [("demo", "db"), ("demo", "web")]
    assert compiled.files == 1 and not compiled.invalid


def test_invalid_files_raise_every_problem_with_its_position(tmp_path: Path) -> None:
    specs = write(
        tmp_path, SPEC.replace("image: {name: nginx}", "image: {name: nginx}\n    scale: 7x")
    )
    write(tmp_path, "version: v1\ndeployment: other\nservices: {a: {imagex: 1}}\n", "b.yaml")
    compiled = reconcile.compile_paths([str(specs)], INPUTS)
    assert compiled.invalid and compiled.desired is None
    with pytest.raises(InvalidSpecs) as caught:
        compiled.required("applied")
    assert caught.value.heading == "The specs are not valid; nothing was applied."
    assert caught.value.files == 2
    files = {p.file for p in caught.value.problems}
    assert files == {str(specs / "demo.yaml"), str(specs / "b.yaml")}
    assert re.search(r"demo\.yaml:\d+:\d+: services\.web\.scale", str(caught.value))


def test_compile_files_keeps_the_sources_revision(tmp_path: Path) -> None:
    collected = collect([write(tmp_path, SPEC)])
    assert reconcile.compile_files(collected, INPUTS, "abc123").required("x").revision == "abc123"
    derived = reconcile.compile_files(collected, INPUTS).required("x").revision
    assert (
        derived != "abc123"
        and derived
        == reconcile.compile_paths([str(tmp_path / "specs")], INPUTS).required("x").revision
    )


def test_checked_refuses_what_the_runtime_cannot_do() -> None:
    class Limited(FakeDriver):
        def limits(self, service: DesiredService) -> Limits:
            return Limits(errors=(f"{service.deployment}/{service.name}: no such thing",))

    desired = reconcile.compile_paths([str(REPO / "specs" / "demo.yaml")], INPUTS).required("x")
    with pytest.raises(UnsupportedSpecs, match="cannot do; nothing was applied") as caught:
        reconcile.checked(Limited(), desired, "applied")
    assert "no such thing" in str(caught.value)

    class Warns(FakeDriver):
        def limits(self, service: DesiredService) -> Limits:
            return Limits(warnings=(f"{service.deployment}/{service.name}: not honoured",))

    result = reconcile.checked(Warns(), desired, "applied")
    assert result.services.keys() == desired.services.keys()
    for key, service in result.services.items():
        assert service.warnings == (*desired.services[key].warnings, "not honoured")


async def test_a_pass_executes_only_under_the_lock(tmp_path: Path) -> None:
    desired = reconcile.compile_paths([str(write(tmp_path, SPEC))], INPUTS).required("x")
    driver = FakeDriver()
    lock = ApplyLock(tmp_path / "state")
    with pytest.raises(ZlayerError, match="only with the apply lock held"):
        await reconcile.run_pass(driver, desired, INPUTS, lock, make_plan=reconcile.plan_for)
    assert (await driver.observe()).workloads == ()
    with lock:
        done = await reconcile.run_pass(
            driver, desired, INPUTS, lock, make_plan=reconcile.plan_for, observe_after=True
        )
    assert done.report is not None and done.report.ok
    assert [a.id for a in done.plan.actions] == ["create:demo/db/1", "create:demo/web/1"]
    assert done.after is not None
    assert {str(w.id) for w in done.after.workloads} == {"demo/db/1", "demo/web/1"}
    with lock:
        again = await reconcile.run_pass(
            driver, desired, INPUTS, lock, make_plan=reconcile.plan_for
        )
    assert again.plan.empty and again.report is None


async def test_a_declined_review_changes_nothing(tmp_path: Path) -> None:
    desired = reconcile.compile_paths([str(write(tmp_path, SPEC))], INPUTS).required("x")
    driver = FakeDriver()
    seen: list[Plan] = []

    async def decline(plan: Plan) -> bool:
        seen.append(plan)
        return False

    with ApplyLock(tmp_path / "state") as lock:
        done = await reconcile.run_pass(
            driver, desired, INPUTS, lock, make_plan=reconcile.plan_for, review=decline
        )
    assert done.report is None and len(seen) == 1 and len(seen[0].actions) == 2
    assert (await driver.observe()).workloads == ()


async def test_destroy_plan_removes_one_deployment_dependents_first(tmp_path: Path) -> None:
    other = SPEC.replace("deployment: demo", "deployment: keep")
    desired = reconcile.compile_paths(
        [str(write(tmp_path, SPEC)), str(write(tmp_path, other, "keep.yaml"))], INPUTS
    ).required("x")
    driver = FakeDriver()
    with ApplyLock(tmp_path / "state") as lock:
        await reconcile.run_pass(driver, desired, INPUTS, lock, make_plan=reconcile.plan_for)
        plan = reconcile.destroy_plan(await driver.observe(), "demo")
    assert {a.kind for a in plan.actions} == {"remove"}
    assert {str(a.target) for a in plan.actions} == {"demo/db/1", "demo/web/1"}
    (db,) = [a for a in plan.actions if str(a.target) == "demo/db/1"]
    assert db.waits_for == ("remove:demo/web/1",)


def test_crash_loops_are_noted_on_their_restarts(tmp_path: Path) -> None:
    from reconciler.desired import as_running

    desired = reconcile.compile_paths([str(write(tmp_path, SPEC))], INPUTS).required("x")
    running = as_running(desired, runtime="fake")
    dead = dataclasses.replace(
        running,
        workloads=tuple(
            dataclasses.replace(w, status="exited", exit_code=1) if str(w.id) == "demo/web/1" else w
            for w in running.workloads
        ),
    )
    plan = reconcile.plan_for(desired, dead, crash_loops={"demo/web/1": "crash-looping: 3"})
    assert [(a.kind, str(a.target)) for a in plan.actions] == [("restart", "demo/web/1")]
    replica_notes = [(n.subject, n.message) for n in plan.notes if n.subject.count("/") == 2]
    assert replica_notes == [("demo/web/1", "crash-looping: 3")]
    assert [n for n in reconcile.plan_for(desired, dead).notes if n.subject.count("/") == 2] == []


@pytest.mark.parametrize(
    ("on_panic", "restarted"), [("restart", True), ("shutdown", False), ("isolate", False)]
)
def test_plan_and_apply_hold_a_crashed_replica_by_its_on_panic(
    tmp_path: Path, on_panic: str, restarted: bool
) -> None:
    """``hold_panics`` (plan and apply): an exited replica is restarted only under
    ``restart``; otherwise a note says why not. Without it (the daemon, which holds
    restarts itself with its journal) the restart is planned."""
    from reconciler.desired import as_running

    text = (
        "version: v1\ndeployment: demo\nservices:\n"
        f"  web:\n    image: {{name: x}}\n    errors: {{on_panic: {{action: {on_panic}}}}}\n"
    )
    desired = reconcile.compile_paths([str(write(tmp_path, text))], INPUTS).required("x")
    running = as_running(desired, runtime="fake")
    dead = dataclasses.replace(
        running,
        workloads=tuple(
            dataclasses.replace(w, status="exited", exit_code=3) for w in running.workloads
        ),
    )
    held = reconcile.plan_for(desired, dead, hold_panics=True)
    kinds = [(a.kind, str(a.target)) for a in held.actions]
    assert kinds == ([("restart", "demo/web/1")] if restarted else []), kinds
    notes = [(n.subject, n.message) for n in held.notes if n.subject.count("/") == 2]
    why = f"exited with status 3; not restarted (errors.on_panic: {on_panic})"
    assert notes == ([] if restarted else [("demo/web/1", why)]), notes
    daemon = reconcile.plan_for(desired, dead)
    assert [(a.kind, str(a.target)) for a in daemon.actions] == [("restart", "demo/web/1")]


def test_no_other_module_plans_or_executes() -> None:
    """The planner and the executor are called for real work in reconcile.py alone."""
    calls = re.compile(r"\b(plan_changes|execute)\(")
    offenders = []
    for path in sorted((REPO / "reconciler").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in (
            "reconciler/reconcile.py",
            "reconciler/plan/planner.py",
            "reconciler/executor.py",
        ):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if calls.search(code) and "_db.execute(" not in code and "def " not in code:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == []

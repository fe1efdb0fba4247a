"""``lifecycle.delete_on_exit`` through the one pipeline, on the in-memory runtime: a
replica that exits is removed, not restarted, and stays removed (the record in the
state directory) until its service's config changes. The real runtimes are tested
in tests/cli (process) and tests/cli/test_apply_docker.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from reconciler import reconcile
from reconciler.desired import CompileInputs, DesiredState, as_running
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import StateError
from reconciler.lock import ApplyLock
from reconciler.observed import ObservedState, RemovedOnExit, WorkloadId, load_snapshot
from reconciler.plan.model import Plan
from reconciler.removals import FILE, Record, Removals

INPUTS = CompileInputs(secret_key=b"k")
WEB = WorkloadId("demo", "web", 1)


def spec(env: str = "1", *, delete: bool = True, replicas: int = 2, other: bool = True) -> str:
    text = (
        "version: v1\ndeployment: demo\nservices:\n"
        "  web:\n    image: {name: app}\n"
        f"    env: {{V: '{env}'}}\n"
        f"    scale: {{mode: fixed, replicas: {replicas}}}\n"
        f"    lifecycle: {{delete_on_exit: {'true' if delete else 'false'}}}\n"
    )
    if other:
        text += "  api:\n    image: {name: app}\n    scale: {mode: fixed, replicas: 1}\n"
    return text


def compiled(tmp_path: Path, text: str) -> DesiredState:
    path = tmp_path / "specs" / "demo.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return reconcile.compile_paths([str(path.parent)], INPUTS).required("x")


class Host:
    """The fake runtime, and passes through the pipeline with a state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.driver = FakeDriver()
        self.removals = Removals(self.state)

    async def apply(self, text: str, **options: object) -> Plan:
        desired = compiled(self.tmp, text)

        def make_plan(d: DesiredState, o: ObservedState) -> Plan:
            return reconcile.plan_for(d, o, hold_panics=True, **options)  # type: ignore[arg-type]

        with ApplyLock(self.state) as lock:
            done = await reconcile.run_pass(
                self.driver, desired, INPUTS, lock, make_plan=make_plan, removals=self.removals
            )
        assert done.report is None or done.report.ok, done.report
        return done.plan

    async def running(self) -> list[str]:
        return sorted(str(w.id) for w in (await self.driver.observe()).workloads)

    def records(self) -> list[tuple[str, int | None]]:
        return sorted((str(r.removed.id), r.removed.exit_code) for r in self.removals.load())


def actions(plan: Plan) -> list[str]:
    return [f"{a.id}: {a.reason}" for a in plan.actions]


def replica_notes(plan: Plan) -> list[str]:
    return [f"{n.subject}: {n.message}" for n in plan.notes if n.subject.count("/") == 2]


async def test_an_exited_replica_is_removed_and_stays_removed_until_its_config_changes(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    await host.apply(spec())
    assert await host.running() == ["demo/api/1", "demo/web/1", "demo/web/2"]
    host.driver.crash(WEB, 3)
    host.driver.crash(WorkloadId("demo", "api", 1), 3)  # no delete_on_exit: restarted
    plan = await host.apply(spec())
    assert sorted(actions(plan)) == [
        "remove:demo/web/1: exited with status 3; removed, not restarted "
        "(lifecycle.delete_on_exit)",
        "restart:demo/api/1: exited with status 3",
    ]
    assert await host.running() == ["demo/api/1", "demo/web/2"]
    assert host.records() == [("demo/web/1", 3)]

    again = await host.apply(spec())
    assert again.empty, actions(again)
    (note,) = replica_notes(again)
    assert note.startswith("demo/web/1: exited with status 3 and was removed at "), note
    assert note.endswith("(lifecycle.delete_on_exit); created again when its config changes")

    host.driver.crash(WorkloadId("demo", "web", 2), 0)  # completed: removed too
    assert [a.id for a in (await host.apply(spec())).actions] == ["remove:demo/web/2"]
    assert host.records() == [("demo/web/1", 3), ("demo/web/2", 0)]
    assert await host.running() == ["demo/api/1"]

    changed = await host.apply(spec(env="2"))
    assert actions(changed) == [
        "create:demo/web/1: exited with status 3 and was removed (lifecycle.delete_on_exit); "
        "its config changed: env.V 1 → 2",
        "create:demo/web/2: exited with status 0 and was removed (lifecycle.delete_on_exit); "
        "its config changed: env.V 1 → 2",
    ]
    assert await host.running() == ["demo/api/1", "demo/web/1", "demo/web/2"]
    settled = await host.apply(spec(env="2"))
    assert settled.empty and replica_notes(settled) == []
    assert host.records() == [] and not (host.state / FILE).exists()  # nothing kept


async def test_a_record_is_forgotten_once_nothing_holds_it_back(tmp_path: Path) -> None:
    host = Host(tmp_path)
    await host.apply(spec(other=False))
    host.driver.crash(WEB, 3)
    host.driver.crash(WorkloadId("demo", "web", 2), 3)
    await host.apply(spec(other=False))
    assert host.records() == [("demo/web/1", 3), ("demo/web/2", 3)]

    # Scaled down below it: replica 2's record goes, replica 1's stays.
    down = await host.apply(spec(other=False, replicas=1))
    assert down.empty and host.records() == [("demo/web/1", 3)]
    # delete_on_exit turned off: the replica is created again, the record goes.
    off = await host.apply(spec(other=False, replicas=1, delete=False))
    assert [a.id for a in off.actions] == ["create:demo/web/1"]
    assert host.records() == [] and await host.running() == ["demo/web/1"]


async def test_a_service_that_left_the_specs_loses_its_record_only_when_pruned(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    await host.apply(spec(replicas=1))
    host.driver.crash(WEB, 3)
    await host.apply(spec(replicas=1))
    only_api = "version: v1\ndeployment: demo\nservices:\n  api:\n    image: {name: app}\n"
    await host.apply(only_api, prune=False)
    assert host.records() == [("demo/web/1", 3)]  # kept by --no-prune, like a workload
    await host.apply(only_api)
    assert host.records() == []
    back = await host.apply(spec(replicas=1))  # back in the specs: a new service
    assert [a.id for a in back.actions] == ["create:demo/web/1"]


async def test_other_runtimes_records_are_left_as_they_are(tmp_path: Path) -> None:
    host = Host(tmp_path)
    theirs = Record(
        "docker",
        RemovedOnExit(
            deployment="demo",
            service="web",
            replica=1,
            fingerprint="sha256:other",
            exit_code=1,
            removed_at="2026-01-01T00:00:00Z",
        ),
    )
    host.removals.update("docker", [theirs], lambda _r: True)
    plan = await host.apply(spec(replicas=1))  # the fake runtime has none of its own
    assert [a.id for a in plan.actions] == ["create:demo/api/1", "create:demo/web/1"]
    assert host.removals.load() == [theirs]


async def test_a_replica_stopped_by_a_reboot_is_started_not_removed(tmp_path: Path) -> None:
    desired = compiled(tmp_path, spec(replicas=1, other=False))
    running = as_running(desired, runtime="fake")
    rebooted = dataclasses.replace(
        running,
        workloads=tuple(
            dataclasses.replace(w, status="exited", exit_code=137, stopped_by_reboot=True)
            for w in running.workloads
        ),
    )
    plan = reconcile.plan_for(desired, rebooted, hold_panics=True)
    assert actions(plan) == ["restart:demo/web/1: stopped by a reboot of the host"]


async def test_a_damaged_record_file_is_an_error_that_names_it_and_nothing_runs(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    host.state.mkdir()
    (host.state / FILE).write_text('{"format": "zlayer-removed-on-exit", "records": 3}')
    with pytest.raises(StateError, match=rf"{FILE}: damaged \(format_version is not 1\)"):
        await host.apply(spec())
    assert await host.running() == []
    (host.state / FILE).write_text(
        json.dumps({"format": "zlayer-removed-on-exit", "format_version": 1, "records": [{}]})
    )
    with pytest.raises(StateError, match="move it aside"):
        await host.apply(spec())
    assert await host.running() == []


def test_a_snapshot_keeps_the_replicas_removed_on_exit(tmp_path: Path) -> None:
    """``zlayer observe`` writes them and ``plan --observed`` reads them back, so a
    pull-request check plans exactly what the host would."""
    desired = compiled(tmp_path, spec(replicas=1, other=False))
    (service,) = desired.services.values()
    removed = RemovedOnExit(
        deployment="demo",
        service="web",
        replica=1,
        fingerprint=service.fingerprint,
        exit_code=3,
        removed_at="2026-12-04T10:00:00Z",
    )
    state = ObservedState(runtime="docker", removed_on_exit=(removed,))
    loaded = load_snapshot(state.to_json())
    assert loaded == state
    plan = reconcile.plan_for(desired, loaded)
    assert plan.empty and replica_notes(plan) == [
        "demo/web/1: exited with status 3 and was removed at 2026-12-04T10:00:00Z "
        "(lifecycle.delete_on_exit); created again when its config changes"
    ]
    assert state.fingerprint() != ObservedState(runtime="docker").fingerprint()
    present = as_running(desired, runtime="docker")
    with pytest.raises(ValueError, match="listed twice"):
        dataclasses.replace(present, removed_on_exit=(removed,))

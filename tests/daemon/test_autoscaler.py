"""The daemon's autoscaler on the in-memory runtime, on a clock the test moves: loads
from two readings, decisions recorded in the journal, and the counts it owns."""

from __future__ import annotations

import asyncio
from pathlib import Path

from reconciler.daemon.autoscale import STATE_KEY, Autoscaler
from reconciler.daemon.journal import Journal
from reconciler.desired import CompileInputs, DesiredState, as_running, compile_specs
from reconciler.drivers.base import Usage
from reconciler.drivers.fake import FakeDriver
from reconciler.observed import WorkloadId
from tests.conftest import load_ok, spec_text

SPEC = spec_text(
    """
    services:
      web:
        image: {name: app}
        resources: {cpu: 0.5, memory: 100Mi}
        scale: {mode: adaptive, min: 1, max: 6, cooldown: 20s, targets: {cpu: 50, memory: 90}}
    """
)
MI = 1024**2


class Clock:
    now = 1_000.0

    def __call__(self) -> float:
        return self.now


def desired() -> DesiredState:
    state, problems = compile_specs([load_ok(SPEC)], "r1", CompileInputs(secret_key=b"k"))
    assert state is not None, problems
    return state


def test_cpu_is_a_share_of_resources_cpu_and_a_decision_is_journaled(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    clock = Clock()
    scaler = Autoscaler(journal, clock, interval=5)
    specs = desired()
    observed = as_running(specs, runtime="fake")
    driver = FakeDriver(observed)
    web = WorkloadId("demo", "web", 1)

    async def sample(cpu_seconds: float, memory_mi: int) -> list[str]:
        driver.usage_of[web] = Usage(int(cpu_seconds * 1e9), memory_mi * MI)
        async with driver:
            return await scaler.sample(driver, specs, await driver.observe())

    assert asyncio.run(sample(0, 10)) == []  # one reading: no CPU load yet
    clock.now += 10
    # 4.5 CPU-seconds in 10 s is 45 % of a core, 90 % of its 0.5: ceil(1 × 90 / 50) = 2
    (change,) = asyncio.run(sample(4.5, 10))
    assert change == "web: 1 → 2 replicas, cpu 90% vs target 50% per replica"
    assert scaler.values[("demo", "web")] == {"cpu": 90.0, "memory": 10.0}
    (event,) = journal.events(5, target="demo/web", kind="scaled")
    assert event["message"] == change
    assert journal.get(STATE_KEY)["demo/web"]["replicas"] == 2

    owned = scaler.owned(specs).services[("demo", "web")]
    assert owned.replicas == 2 and owned.scaled == "autoscaler: cpu 90% vs target 50% per replica"
    again = Autoscaler(journal, clock, interval=5)  # a restarted daemon
    assert again.owned(specs).services[("demo", "web")].replicas == 2
    journal.close()


def test_a_service_no_longer_adaptive_is_forgotten(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.put(STATE_KEY, {"demo/web": {"replicas": 5, "reason": "x", "at": 1}})
    scaler = Autoscaler(journal, Clock(), interval=5)
    fixed_text = SPEC.replace(
        "scale: {mode: adaptive, min: 1, max: 6, cooldown: 20s, targets: {cpu: 50, memory: 90}}",
        "scale: {mode: fixed, replicas: 2}",
    )
    fixed, _ = compile_specs([load_ok(fixed_text)], "r2", CompileInputs(secret_key=b"k"))
    assert fixed is not None
    assert scaler.owned(fixed).services[("demo", "web")].replicas == 2  # the specs' count
    driver = FakeDriver(as_running(fixed, runtime="fake"))

    async def sample() -> list[str]:
        async with driver:
            return await scaler.sample(driver, fixed, await driver.observe())

    assert asyncio.run(sample()) == []
    assert journal.get(STATE_KEY) == {}
    journal.close()

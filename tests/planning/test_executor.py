"""The plan executor against the in-memory driver: ordering, concurrency, failures,
retries, ``depends`` conditions, init steps and the health-gated rolling replace."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from reconciler import probes
from reconciler.desired import (
    CompileInputs,
    DesiredService,
    DesiredState,
    as_running,
    compile_specs,
)
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import PermanentDriverError, ProxyError, TemporaryDriverError
from reconciler.executor import (
    Event,
    Executor,
    ExecutorSettings,
    Outcome,
    Prober,
    Report,
    execute,
)
from reconciler.observed import WorkloadId
from reconciler.plan.model import Action, Plan
from reconciler.plan.planner import plan_changes
from reconciler.policy import HealthPolicy
from tests.conftest import load_ok, spec_text

INPUTS = CompileInputs(secret_key=b"k")
FAST = ExecutorSettings(poll=0.02, init_backoff=(0.01, 0.01, 0.01))


def wid(service: str, replica: int | None = 1) -> WorkloadId:
    return WorkloadId("demo", service, replica)


def desired_from(body: str, revision: str = "r1") -> DesiredState:
    desired, problems = compile_specs([load_ok(spec_text(body))], revision, INPUTS)
    assert desired is not None, [p.render() for p in problems]
    return desired


async def healthy(
    _policy: HealthPolicy, _resolve: probes.Resolve, _env: Mapping[str, str]
) -> str | None:
    return None


@dataclass
class Run:
    plan: Plan
    report: Report
    events: list[Event]

    def outcome(self, action: str) -> Outcome:
        (found,) = [o for o in self.report.outcomes if o.action == action]
        return found

    def status(self, action: str) -> str:
        return self.outcome(action).status

    def kinds(self, action: str) -> list[str]:
        return [e.kind for e in self.events if e.action == action]


async def apply(
    driver: FakeDriver,
    desired: DesiredState,
    *,
    settings: ExecutorSettings = FAST,
    prober: Prober = healthy,
    on_event: Callable[[Event], None] | None = None,
) -> Run:
    observed = await driver.observe()
    plan = plan_changes(desired, observed)
    events: list[Event] = []

    def record(event: Event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    executor = Executor(
        driver, desired, observed, inputs=INPUTS, settings=settings, on_event=record, prober=prober
    )
    report = await executor.run(plan)
    assert [o.action for o in report.outcomes] == [a.id for a in plan.actions]
    return Run(plan, report, events)


class SlowDriver(FakeDriver):
    """Creates take a while; counts how many are in flight at once."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay
        self.in_flight = 0
        self.most = 0

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            await super().create(service, replica, revision)
        finally:
            self.in_flight -= 1


# --- ordering and concurrency ---------------------------------------------------------


async def test_dependent_create_starts_after_dependency_finished_and_condition_held() -> None:
    desired = desired_from(
        """
        services:
          db:
            image: {name: postgres}
          web:
            image: {name: nginx}
            depends: [{service: db, condition: healthy, timeout: 10s}]
        """
    )
    log: list[tuple[str, str]] = []
    probed: list[str] = []

    async def prober(
        _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
    ) -> str | None:
        probed.append(env["ZLAYER_SERVICE"])
        log.append(("probe", str(len(probed))))
        return None if len(probed) >= 3 else "not yet"

    run = await apply(
        SlowDriver(),
        desired,
        prober=prober,
        on_event=lambda e: log.append((e.action, e.kind)),
    )
    assert run.report.ok
    assert run.plan.action("create:demo/web/1").waits_for == ("create:demo/db/1",)
    assert set(probed) == {"db"}
    order = log.index
    assert order(("create:demo/db/1", "succeeded")) < order(("create:demo/web/1", "waiting"))
    assert order(("create:demo/web/1", "waiting")) < order(("probe", "3"))
    assert order(("probe", "3")) < order(("create:demo/web/1", "started"))


THREE_BY_TWO = """
    services:
      a:
        image: {name: nginx}
        scale: {mode: fixed, replicas: 2}
      b:
        image: {name: nginx}
        scale: {mode: fixed, replicas: 2}
      c:
        image: {name: nginx}
        scale: {mode: fixed, replicas: 2}
    """


@pytest.mark.parametrize(("limit", "most"), [(2, 2), (1, 1), (None, 6)])
async def test_concurrency_limit_caps_driver_calls_in_flight(limit: int | None, most: int) -> None:
    driver = SlowDriver()
    run = await apply(
        driver, desired_from(THREE_BY_TWO), settings=ExecutorSettings(concurrency=limit)
    )
    assert run.report.ok
    assert len(run.plan.actions) == 6
    assert driver.most == most


# --- failures and retries -------------------------------------------------------------


async def test_failure_skips_only_its_dependents() -> None:
    desired = desired_from(
        """
        services:
          cache:
            image: {name: redis}
          db:
            image: {name: postgres}
          web:
            image: {name: nginx}
            depends: [{service: db, condition: started}]
          worker:
            image: {name: nginx}
            depends: [{service: web, condition: started}]
        """
    )
    driver = FakeDriver()
    driver.fail_next("create", wid("db"), PermanentDriverError("image postgres not found"))
    run = await apply(driver, desired)
    assert not run.report.ok
    assert run.status("create:demo/db/1") == "failed"
    assert "image postgres not found" in run.outcome("create:demo/db/1").message
    assert run.status("create:demo/web/1") == "skipped"
    assert "create:demo/db/1 failed" in run.outcome("create:demo/web/1").message
    assert run.status("create:demo/worker/1") == "skipped"
    assert "create:demo/web/1 was skipped" in run.outcome("create:demo/worker/1").message
    assert run.status("create:demo/cache/1") == "succeeded"
    assert run.report.counts() == {"succeeded": 1, "failed": 1, "skipped": 2, "rolled_back": 0}
    assert driver.calls == [("create", "demo/cache/1")]


async def test_temporary_error_once_is_retried() -> None:
    desired = desired_from("services:\n  web:\n    image: {name: nginx}\n")
    driver = FakeDriver()
    driver.fail_next("create", wid("web"), TemporaryDriverError("engine busy", delay=0.01))
    run = await apply(driver, desired)
    assert run.report.ok
    assert run.kinds("create:demo/web/1") == ["started", "retrying", "succeeded"]
    (retrying,) = [e for e in run.events if e.kind == "retrying"]
    assert "engine busy" in retrying.message
    assert driver.calls == [("create", "demo/web/1")]
    assert driver.workloads[wid("web")].status == "running"


class BusyDriver(FakeDriver):
    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        self.tries += 1
        raise TemporaryDriverError("engine busy", delay=0.01)


@pytest.mark.parametrize("attempts", [1, 3])
async def test_temporary_error_fails_after_the_last_attempt(attempts: int) -> None:
    desired = desired_from("services:\n  web:\n    image: {name: nginx}\n")
    driver = BusyDriver()
    run = await apply(driver, desired, settings=ExecutorSettings(attempts=attempts))
    assert driver.tries == attempts
    outcome = run.outcome("create:demo/web/1")
    assert (outcome.status, outcome.message) == ("failed", "engine busy")
    assert run.kinds("create:demo/web/1").count("retrying") == attempts - 1
    assert driver.workloads == {}


class ExitingDriver(FakeDriver):
    """Creates a replica that exits with status 3 at once."""

    async def create(self, service: DesiredService, replica: int, revision: str) -> None:
        await super().create(service, replica, revision)
        self.crash(service.workload_id(replica), 3)


async def test_create_of_a_replica_that_is_not_running_fails() -> None:
    desired = desired_from("services:\n  web:\n    image: {name: nginx}\n")
    run = await apply(ExitingDriver(), desired)
    outcome = run.outcome("create:demo/web/1")
    assert outcome.status == "failed"
    assert "exited" in outcome.message
    assert "exit code 3" in outcome.message


# --- depends conditions ---------------------------------------------------------------

CONDITION = """
    services:
      db:
        image: {{name: postgres}}
      web:
        image: {{name: nginx}}
        depends: [{{service: db, condition: healthy, timeout: 300ms, on_timeout: {on_timeout}}}]
      front:
        image: {{name: nginx}}
        depends: [{{service: web, condition: started}}]
    """


async def never_healthy(
    _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
) -> str | None:
    assert env["ZLAYER_SERVICE"] == "db"
    return "connection refused"


async def test_condition_timeout_fail_fails_the_dependent_and_skips_its_dependents() -> None:
    driver = FakeDriver()
    run = await apply(
        driver, desired_from(CONDITION.format(on_timeout="fail")), prober=never_healthy
    )
    assert run.status("create:demo/db/1") == "succeeded"
    web = run.outcome("create:demo/web/1")
    assert web.status == "failed"
    assert "db not healthy within 0.3s" in web.message
    assert "connection refused" in web.message
    assert run.status("create:demo/front/1") == "skipped"
    assert "create:demo/web/1 failed" in run.outcome("create:demo/front/1").message
    assert ("create", "demo/web/1") not in driver.calls
    assert "started" not in run.kinds("create:demo/web/1")


async def test_condition_timeout_warn_goes_on_with_a_warning() -> None:
    driver = FakeDriver()
    run = await apply(
        driver, desired_from(CONDITION.format(on_timeout="warn")), prober=never_healthy
    )
    assert run.report.ok
    web = run.outcome("create:demo/web/1")
    (warning,) = web.warnings
    assert "db not healthy within 0.3s" in warning
    assert "warning" in run.kinds("create:demo/web/1")
    assert run.outcome("create:demo/front/1").warnings == ()
    assert ("create", "demo/web/1") in driver.calls


async def test_condition_timeout_continue_goes_on_without_a_warning() -> None:
    driver = FakeDriver()
    run = await apply(
        driver, desired_from(CONDITION.format(on_timeout="continue")), prober=never_healthy
    )
    assert run.report.ok
    assert run.outcome("create:demo/web/1").warnings == ()
    assert "warning" not in run.kinds("create:demo/web/1")
    assert ("create", "demo/web/1") in driver.calls


# --- rolling replace ------------------------------------------------------------------

ROLLING = """
    services:
      web:
        image: {{name: nginx}}
        scale: {{mode: fixed, replicas: 3}}
        env: {{VERSION: "{version}"}}
        health:
          start_grace: 0s
          interval: 20ms
          timeout: 100ms
          retries: 1
          check: {{type: tcp, port: 80}}
    """


async def rolled_out() -> tuple[FakeDriver, DesiredState, DesiredState]:
    """A driver running three replicas of config A, and the desired states A and B."""
    a = desired_from(ROLLING.format(version="a"), revision="rA")
    b = desired_from(ROLLING.format(version="b"), revision="rB")
    driver = FakeDriver(as_running(a))
    return driver, a, b


def fingerprint_of(driver: FakeDriver, env: Mapping[str, str]) -> str:
    return driver.workloads[wid("web", int(env["ZLAYER_REPLICA"]))].fingerprint


def on_config(driver: FakeDriver, state: DesiredState) -> list[int]:
    """Replica indexes of web whose config is ``state``'s (with its revision)."""
    fp = state.services[("demo", "web")].fingerprint
    return sorted(w.replica or 0 for w in driver.workloads.values() if w.fingerprint == fp)


async def test_unhealthy_new_config_rolls_back_the_first_replace_and_skips_the_rest() -> None:
    driver, a, b = await rolled_out()
    fp_b = b.services[("demo", "web")].fingerprint

    async def prober(
        _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
    ) -> str | None:
        return "connection refused" if fingerprint_of(driver, env) == fp_b else None

    run = await apply(driver, b, prober=prober)
    assert [a.kind for a in run.plan.actions] == ["replace"] * 3
    first = run.outcome("replace:demo/web/1")
    assert first.status == "rolled_back"
    assert "not healthy" in first.message
    assert "rolled back demo/web/1" in first.message
    assert run.status("replace:demo/web/2") == "skipped"
    assert "replace:demo/web/1 was rolled back" in run.outcome("replace:demo/web/2").message
    assert run.status("replace:demo/web/3") == "skipped"
    assert on_config(driver, a) == [1, 2, 3]
    assert all(w.revision == "rA" for w in driver.workloads.values())
    assert driver.calls == [("replace", "demo/web/1"), ("replace", "demo/web/1")]


async def test_unhealthy_second_replica_rolls_back_the_first_too() -> None:
    driver, a, b = await rolled_out()

    async def prober(
        _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
    ) -> str | None:
        return "connection refused" if env["ZLAYER_REPLICA"] == "2" else None

    run = await apply(driver, b, prober=prober)
    assert run.status("replace:demo/web/1") == "rolled_back"
    assert run.outcome("replace:demo/web/1").message.startswith("rolled back: demo/web/2")
    second = run.outcome("replace:demo/web/2")
    assert second.status == "rolled_back"
    assert "rolled back demo/web/2, demo/web/1" in second.message
    assert run.status("replace:demo/web/3") == "skipped"
    assert on_config(driver, a) == [1, 2, 3]
    assert ("replace", "demo/web/3") not in driver.calls
    assert driver.calls == [
        ("replace", "demo/web/1"),
        ("replace", "demo/web/2"),
        ("replace", "demo/web/2"),
        ("replace", "demo/web/1"),
    ]
    assert not run.report.ok


async def test_failed_replace_call_rolls_back_earlier_replicas() -> None:
    driver, a, b = await rolled_out()
    driver.fail_next("replace", wid("web", 2), PermanentDriverError("disk full"))
    run = await apply(driver, b)
    assert run.status("replace:demo/web/1") == "rolled_back"
    second = run.outcome("replace:demo/web/2")
    assert second.status == "rolled_back"
    assert "disk full" in second.message
    assert run.status("replace:demo/web/3") == "skipped"
    assert on_config(driver, a) == [1, 2, 3]
    assert ("replace", "demo/web/3") not in driver.calls


async def test_healthy_rollout_replaces_every_replica_in_order() -> None:
    driver, _, b = await rolled_out()
    run = await apply(driver, b)
    assert run.report.ok
    assert on_config(driver, b) == [1, 2, 3]
    assert driver.calls == [("replace", f"demo/web/{i}") for i in (1, 2, 3)]
    assert all(w.revision == "rB" for w in driver.workloads.values())


async def test_init_failure_mid_rollout_rolls_back_the_replicas_already_replaced(
    tmp_path: Path,
) -> None:
    """Replacing replica 1 leaves a marker that replica 2's init step refuses: replica
    2 keeps its old container, replica 1 goes back to it, replica 3 is not touched."""
    marker = tmp_path / "replaced-once"
    gate = f'{{id: gate, uses: init.run, with: {{command: "test ! -e {marker}"}}}}'
    init = f"\n        init: {{steps: [{gate}]}}\n"
    a = desired_from(ROLLING.format(version="a").rstrip() + init, revision="rA")
    b = desired_from(ROLLING.format(version="b").rstrip() + init, revision="rB")

    class MarkingDriver(FakeDriver):
        async def replace(self, service: DesiredService, replica: int, revision: str) -> None:
            await super().replace(service, replica, revision)
            marker.touch()

    driver = MarkingDriver(as_running(a))
    run = await apply(driver, b)
    second = run.outcome("replace:demo/web/2")
    assert second.status == "rolled_back"
    assert "init step gate failed" in second.message and "rolled back demo/web/1" in second.message
    assert run.status("replace:demo/web/1") == "rolled_back"
    assert run.status("replace:demo/web/3") == "skipped"
    assert on_config(driver, a) == [1, 2, 3]
    assert driver.calls == [("replace", "demo/web/1"), ("replace", "demo/web/1")]


async def test_an_unexpected_error_fails_its_action_only() -> None:
    desired = desired_from(
        """
        services:
          odd: {image: {name: nginx}}
          fine: {image: {name: nginx}}
        """
    )

    class BuggyDriver(FakeDriver):
        async def create(self, service: DesiredService, replica: int, revision: str) -> None:
            if service.name == "odd":
                raise KeyError("bug")
            await super().create(service, replica, revision)

    run = await apply(BuggyDriver(), desired)
    assert run.status("create:demo/odd/1") == "failed"
    assert run.outcome("create:demo/odd/1").message == "internal error: KeyError('bug')"
    assert run.status("create:demo/fine/1") == "succeeded"


# --- init steps -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_tcp(port: int, extra: str = "") -> str:
    return f"""
        services:
          web:
            image: {{name: nginx}}
            init:
              steps:
                - {{id: w, uses: init.wait_tcp, with: {{host: localhost, port: {port}}},
                   timeout: 500ms{extra}}}
        """


async def test_init_wait_tcp_fails_when_nothing_listens() -> None:
    driver = FakeDriver()
    run = await apply(driver, desired_from(wait_tcp(free_port())))
    outcome = run.outcome("create:demo/web/1")
    assert outcome.status == "failed"
    assert "init step w failed: not ready within 0.5s" in outcome.message
    assert driver.calls == []


async def test_init_wait_tcp_succeeds_when_a_server_listens() -> None:
    connected = asyncio.Event()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        driver = FakeDriver()
        run = await apply(driver, desired_from(wait_tcp(port)))
    finally:
        server.close()
        await server.wait_closed()
    assert run.report.ok, run.report
    assert connected.is_set()
    assert driver.calls == [("create", "demo/web/1")]
    kinds = run.kinds("create:demo/web/1")
    assert kinds == ["started", "waiting", "succeeded"]


async def test_init_step_on_failure_warn_goes_on_with_a_warning() -> None:
    driver = FakeDriver()
    run = await apply(driver, desired_from(wait_tcp(free_port(), ", on_failure: warn")))
    outcome = run.outcome("create:demo/web/1")
    assert outcome.status == "succeeded"
    (warning,) = outcome.warnings
    assert warning.startswith("init step w failed: not ready within 0.5s")
    assert "warning" in run.kinds("create:demo/web/1")
    assert driver.calls == [("create", "demo/web/1")]


async def test_init_wait_tcp_on_a_peer_waits_for_its_replica_to_exist() -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = f"""
        services:
          db:
            image: {{name: postgres}}
          web:
            image: {{name: nginx}}
            init:
              steps:
                - {{id: w, uses: init.wait_tcp, with: {{host: db, port: {port}}}, timeout: 10s}}
        """
    try:
        driver = SlowDriver(delay=0.3)  # db/1 does not exist when web's init starts
        run = await apply(driver, desired_from(body))
    finally:
        server.close()
        await server.wait_closed()
    assert run.report.ok, run.report
    assert driver.calls == [("create", "demo/db/1"), ("create", "demo/web/1")]


async def test_init_step_on_a_peer_without_replicas_follows_on_failure() -> None:
    body = """
        services:
          db:
            image: {name: postgres}
            scale: {mode: fixed, replicas: 0}
          web:
            image: {name: nginx}
            init:
              steps:
                - {id: w, uses: init.wait_tcp, with: {host: db, port: 5432}, timeout: 300ms,
                   on_failure: continue}
        """
    driver = FakeDriver()
    run = await apply(driver, desired_from(body))
    assert run.report.ok, run.report
    assert run.outcome("create:demo/web/1").warnings == ()
    assert driver.calls == [("create", "demo/web/1")]
    failing = await apply(FakeDriver(), desired_from(body.replace("continue", "fail")))
    message = failing.outcome("create:demo/web/1").message
    assert message == "init step w failed: not ready within 0.3s: demo/db/1: no such workload"


def init_run(command: str, policy: str) -> str:
    return f"""
        services:
          web:
            image: {{name: nginx}}
            init:
              steps:
                - id: r
                  uses: init.run
                  with: {{command: "{command}"}}
                  timeout: 10s
            errors: {{on_init_failure: {{action: {policy}}}}}
        """


@pytest.mark.parametrize(("policy", "tries"), [("fail", 1), ("restart", 2), ("backoff", 4)])
async def test_on_init_failure_tries_init_again(tmp_path: Path, policy: str, tries: int) -> None:
    counter = tmp_path / "tries"
    driver = FakeDriver()
    run = await apply(driver, desired_from(init_run(f"echo x >> {counter}; exit 1", policy)))
    assert counter.read_text().count("x") == tries
    outcome = run.outcome("create:demo/web/1")
    assert outcome.status == "failed"
    assert "init step r failed" in outcome.message
    assert "exit status 1" in outcome.message
    assert run.kinds("create:demo/web/1").count("retrying") == tries - 1
    assert driver.calls == []


async def test_init_backoff_succeeds_once_init_passes(tmp_path: Path) -> None:
    counter = tmp_path / "tries"
    command = f"echo x >> {counter}; grep -c x {counter} | grep -qx 3"
    driver = FakeDriver()
    run = await apply(driver, desired_from(init_run(command, "backoff")))
    assert run.report.ok
    assert counter.read_text().count("x") == 3
    assert run.kinds("create:demo/web/1").count("retrying") == 2
    assert driver.calls == [("create", "demo/web/1")]


# --- events and convergence -----------------------------------------------------------

TERMINAL = {"succeeded", "failed", "skipped", "rolled_back"}

APP = """
    services:
      cache:
        image: {name: redis}
      db:
        image: {name: postgres}
        scale: {mode: fixed, replicas: 2}
      web:
        image: {name: nginx}
        depends: [{service: db, condition: started}]
        health: {start_grace: 0s, check: {type: tcp, port: 0}}
    """


async def test_every_action_starts_once_and_ends_once() -> None:
    run = await apply(FakeDriver(), desired_from(APP))
    assert run.report.ok
    assert len(run.plan.actions) == 4
    for action in run.plan.actions:
        kinds = run.kinds(action.id)
        assert kinds.count("started") == 1, (action.id, kinds)
        assert [k for k in kinds if k in TERMINAL] == ["succeeded"], (action.id, kinds)
        assert kinds[-1] == "succeeded"
    assert all(e.elapsed >= 0 for e in run.events)


async def test_one_terminal_event_per_action_besides_rollbacks_of_earlier_replaces() -> None:
    driver, _, b = await rolled_out()

    async def prober(
        _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
    ) -> str | None:
        return "refused" if env["ZLAYER_REPLICA"] == "2" else None

    run = await apply(driver, b, prober=prober)

    def terminal(action: str) -> list[str]:
        return [k for k in run.kinds(action) if k in TERMINAL]

    assert terminal("replace:demo/web/1") == ["succeeded", "rolled_back"]
    assert terminal("replace:demo/web/2") == ["rolled_back"]
    assert terminal("replace:demo/web/3") == ["skipped"]
    assert "started" not in run.kinds("replace:demo/web/3")
    assert run.kinds("replace:demo/web/2")[0] == "started"


async def test_a_second_plan_after_a_successful_run_is_empty() -> None:
    driver = FakeDriver()
    desired = desired_from(APP)
    observed = await driver.observe()
    report = await execute(
        plan_changes(desired, observed), driver, desired, observed, inputs=INPUTS
    )
    assert report.ok
    assert report.counts()["succeeded"] == 4
    assert plan_changes(desired, await driver.observe()).empty

    changed = desired_from(APP.replace("name: nginx", 'name: "nginx:2"'), revision="r2")
    observed = await driver.observe()
    plan = plan_changes(changed, observed)
    assert [a.id for a in plan.actions] == ["replace:demo/web/1"]
    report = await execute(plan, driver, changed, observed, inputs=INPUTS)
    assert report.ok
    assert plan_changes(changed, await driver.observe()).empty


# --- draining before a stop ----------------------------------------------------------


async def test_every_replica_is_drained_before_the_driver_stops_it() -> None:
    """``before_stop`` runs for each replaced replica, and only then does the driver
    act on it (the proxy drains it there)."""
    driver, _, b = await rolled_out()
    order: list[tuple[str, str]] = []

    async def drain(target: WorkloadId) -> None:
        order.append(("drain", str(target)))
        assert ("replace", str(target)) not in driver.calls

    run = await apply(driver, b, settings=replace(FAST, before_stop=drain))
    assert run.report.ok
    assert order == [("drain", f"demo/web/{i}") for i in (1, 2, 3)]


async def test_a_failed_drain_is_a_warning_and_the_replica_still_stops() -> None:
    driver, _, _ = await rolled_out()
    fewer = desired_from(ROLLING.format(version="a").replace("replicas: 3", "replicas: 1"), "rA")

    async def drain(target: WorkloadId) -> None:
        raise ProxyError("HAProxy's runtime API does not answer")

    run = await apply(driver, fewer, settings=replace(FAST, before_stop=drain))
    assert run.report.ok
    removed = run.outcome("remove:demo/web/3")
    assert removed.status == "succeeded"
    assert any("not drained first" in w for w in removed.warnings), removed
    assert wid("web", 3) not in driver.workloads and wid("web", 1) in driver.workloads


# --- start-first replace of a routed service ---------------------------------------------

ROUTED = ROLLING + "    endpoints: [{{name: http, protocol: http, port: 80, expose: public}}]\n"


class RoutableFake(FakeDriver):
    routable = True


def routed_rollout() -> tuple[RoutableFake, DesiredState, DesiredState]:
    a = desired_from(ROUTED.format(version="a"), revision="rA")
    b = desired_from(ROUTED.format(version="b"), revision="rB")
    return RoutableFake(as_running(a)), a, b


def proxy_hooks(driver: FakeDriver, order: list[tuple[str, str]]) -> ExecutorSettings:
    """A managed proxy as the executor sees it: what it drained and admitted, in order
    with the driver's calls."""

    async def drain(target: WorkloadId) -> None:
        order.append(("drain", str(target)))

    async def admit(target: WorkloadId) -> None:
        assert driver.workloads[target].status == "running"
        order.append(("admit", str(target)))

    return replace(FAST, before_stop=drain, admit=admit)


async def test_a_routed_service_is_replaced_start_first_through_a_surge_replica() -> None:
    """The surge (web/4, new config) is in rotation before web/1 is drained; each
    replaced replica is back in rotation before the next is drained; the surge leaves
    last. At every step some replica serves."""
    driver, _, b = routed_rollout()
    order: list[tuple[str, str]] = []
    settings = proxy_hooks(driver, order)
    original = driver._record

    def record(kind: str, target: WorkloadId) -> None:
        order.append((kind, str(target)))
        original(kind, target)

    driver._record = record  # type: ignore[method-assign]
    run = await apply(driver, b, settings=settings)
    assert run.report.ok, run.report
    steps = [f"{kind} {target.removeprefix('demo/web/')}" for kind, target in order]
    assert steps == [
        "create 4", "admit 4",
        "drain 1", "replace 1", "admit 1",
        "drain 2", "replace 2", "admit 2",
        "drain 3", "replace 3", "admit 3",
        "drain 4", "remove 4",
    ]  # fmt: skip
    assert on_config(driver, b) == [1, 2, 3]
    assert wid("web", 4) not in driver.workloads
    assert any("surge replica demo/web/4" in e.message for e in run.events)


async def test_a_surge_that_never_gets_healthy_leaves_every_replica_untouched() -> None:
    driver, a, b = routed_rollout()
    fp_b = b.services[("demo", "web")].fingerprint

    async def prober(
        _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
    ) -> str | None:
        return "connection refused" if fingerprint_of(driver, env) == fp_b else None

    order: list[tuple[str, str]] = []
    run = await apply(driver, b, settings=proxy_hooks(driver, order), prober=prober)
    first = run.outcome("replace:demo/web/1")
    assert first.status == "rolled_back"
    assert "surge replica demo/web/4 not healthy" in first.message
    assert "demo/web/1 kept its config and stayed in rotation" in first.message
    assert driver.calls == [("create", "demo/web/4"), ("remove", "demo/web/4")]
    assert order == [("drain", "demo/web/4")]
    assert on_config(driver, a) == [1, 2, 3]
    assert run.status("replace:demo/web/2") == "skipped"


async def test_a_rollback_puts_the_restored_replicas_back_before_the_surge_leaves() -> None:
    driver, a, b = routed_rollout()

    async def prober(
        _policy: HealthPolicy, _resolve: probes.Resolve, env: Mapping[str, str]
    ) -> str | None:
        return "connection refused" if env["ZLAYER_REPLICA"] == "2" else None

    order: list[tuple[str, str]] = []
    run = await apply(driver, b, settings=proxy_hooks(driver, order), prober=prober)
    assert run.status("replace:demo/web/2") == "rolled_back"
    assert on_config(driver, a) == [1, 2, 3]
    assert wid("web", 4) not in driver.workloads
    restored = [step for step in order if step[1] in ("demo/web/1", "demo/web/2")]
    assert restored[-2:] == [("admit", "demo/web/2"), ("admit", "demo/web/1")]
    assert order[-1] == ("drain", "demo/web/4")


async def test_without_a_proxy_a_routed_service_keeps_the_stop_first_replace() -> None:
    driver, _, b = routed_rollout()
    run = await apply(driver, b)
    assert run.report.ok
    assert [c for c in driver.calls if c[0] == "create"] == []


async def test_a_routed_service_with_a_fixed_host_port_keeps_the_stop_first_replace() -> None:
    """Its surge could not bind the host port the old replica holds."""
    fixed = ROUTED + "        port_mappings: [{{container_port: 80, host_port: 8081}}]\n"
    a = desired_from(fixed.format(version="a").replace("replicas: 3", "replicas: 1"), "rA")
    b = desired_from(fixed.format(version="b").replace("replicas: 3", "replicas: 1"), "rB")
    driver = RoutableFake(as_running(a))
    order: list[tuple[str, str]] = []
    run = await apply(driver, b, settings=proxy_hooks(driver, order))
    assert run.report.ok
    assert driver.calls == [("replace", "demo/web/1")]
    assert order == [("drain", "demo/web/1")]


async def test_a_surge_whose_later_replaces_are_skipped_is_removed_at_the_end() -> None:
    """web/2 and web/3 wait for something that fails: they are skipped, and the surge
    the replace of web/1 started does not outlive the run."""
    driver, _, b = routed_rollout()
    observed = await driver.observe()
    plan = plan_changes(b, observed)
    broken = Action("create:demo/extra/1", "create", wid("extra"), "a step that fails")
    driver.fail_next("create", wid("extra"), PermanentDriverError("no such image"))
    actions = [
        replace(a, waits_for=(*a.waits_for, broken.id)) if a.target.replica == 2 else a
        for a in plan.actions
    ]
    plan = replace(plan, actions=(broken, *actions))
    b_with_extra = replace(
        b, services={**b.services, ("demo", "extra"): b.services[("demo", "web")]}
    )
    order: list[tuple[str, str]] = []
    executor = Executor(
        driver, b_with_extra, observed, inputs=INPUTS, settings=proxy_hooks(driver, order),
        prober=healthy,
    )  # fmt: skip
    report = await executor.run(plan)
    statuses = {o.action: o.status for o in report.outcomes}
    assert statuses["replace:demo/web/1"] == "succeeded"
    assert statuses["replace:demo/web/2"] == statuses["replace:demo/web/3"] == "skipped"
    assert wid("web", 4) not in driver.workloads
    assert order[-1] == ("drain", "demo/web/4")


# --- route actions and the ready condition -----------------------------------------------

READY = """
services:
  web:
    image: {name: nginx}
    endpoints: [{name: http, protocol: http, port: 80, expose: public}]
  worker:
    image: {name: nginx}
    depends: [{service: web, condition: ready, timeout: 2s, on_timeout: fail}]
"""


async def run_routed(settings: ExecutorSettings) -> Run:
    desired = desired_from(READY)
    driver = RoutableFake()
    observed = replace(await driver.observe(), routes_managed=True)
    plan = plan_changes(desired, observed)
    events: list[Event] = []
    executor = Executor(
        driver, desired, observed, inputs=INPUTS, settings=settings, on_event=events.append,
        prober=healthy,
    )  # fmt: skip
    return Run(plan, await executor.run(plan), events)


async def test_a_route_action_is_done_by_the_proxy_and_ready_waits_for_rotation() -> None:
    order: list[str] = []
    in_rotation = False

    async def route(action: Action, warnings: list[str]) -> str:
        nonlocal in_rotation
        order.append(action.id)
        warnings.append("a warning of the sync")
        in_rotation = True
        return "demo/web/1 in rotation on :80"

    async def rotation(key: tuple[str, str]) -> str | None:
        order.append(f"checked {key[1]}")
        return None if in_rotation else "no replica in rotation on :80 (http)"

    run = await run_routed(replace(FAST, route=route, in_rotation=rotation))
    assert run.report.ok, run.report
    outcome = run.outcome("route:demo/web:http")
    assert outcome.message == "demo/web/1 in rotation on :80"
    assert outcome.warnings == ("a warning of the sync",)
    assert order == ["route:demo/web:http", "checked web"]


async def test_ready_fails_its_dependent_while_nothing_is_in_rotation() -> None:
    async def route(action: Action, warnings: list[str]) -> str:
        return "proxy started"

    checks = 0

    async def rotation(key: tuple[str, str]) -> str | None:
        nonlocal checks
        checks += 1
        return "no replica in rotation on :80 (http)"

    run = await run_routed(replace(FAST, route=route, in_rotation=rotation))
    assert run.status("route:demo/web:http") == "succeeded"
    failed = run.outcome("create:demo/worker/1")
    assert failed.status == "failed"
    assert failed.message == "web not ready within 2s: no replica in rotation on :80 (http)"
    assert checks > 1  # polled until the timeout, not asked once


async def test_a_route_action_fails_without_a_proxy_and_its_dependents_are_skipped() -> None:
    run = await run_routed(FAST)
    outcome = run.outcome("route:demo/web:http")
    assert outcome.status == "failed"
    assert "no managed proxy" in outcome.message
    assert run.status("create:demo/worker/1") == "skipped"


async def test_a_proxy_error_fails_the_route_action_with_its_message() -> None:
    async def route(action: Action, warnings: list[str]) -> str:
        raise ProxyError("HAProxy refused the configuration: bind :80 in use")

    run = await run_routed(replace(FAST, route=route))
    outcome = run.outcome("route:demo/web:http")
    assert outcome.status == "failed"
    assert outcome.message == ("demo/web:http: HAProxy refused the configuration: bind :80 in use")

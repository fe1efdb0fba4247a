"""Compiling specs into desired state, the observed-state model, and change explanations."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re

import pytest

from reconciler.desired import (
    CompileInputs,
    DesiredService,
    SecretValue,
    as_running,
    compile_specs,
    content_revision,
    restore_service,
)
from reconciler.drivers.fake import FakeDriver
from reconciler.errors import Conflict, NotFound, SnapshotError
from reconciler.observed import ObservedState, Workload, WorkloadId, load_snapshot
from reconciler.plan.diff import describe, explain
from reconciler.spec.load import SourceFile
from tests.conftest import load_ok, service_text

KEY = b"unit-test-key"


def compiled(fields: str, inputs: CompileInputs | None = None, name: str = "web") -> DesiredService:
    loaded = load_ok(service_text(fields, name=name))
    desired, problems = compile_specs([loaded], "rev", inputs or CompileInputs(secret_key=KEY))
    assert desired is not None, [p.render() for p in problems]
    return desired.services[("demo", name)]


def test_config_leaves_out_defaults_and_supervision_fields() -> None:
    service = compiled(
        """
        env: {A: "1"}
        scale: {mode: fixed, replicas: 3}
        depends: []
        health: {retries: 5, check: {type: tcp, port: 80}}
        errors: {on_panic: {action: shutdown}}
        """
    )
    assert dict(service.config) == {"image": "nginx", "env": {"A": "1"}}
    assert service.replicas == 3
    assert service.fingerprint.startswith("sha256:")


def test_health_change_keeps_the_fingerprint_and_image_change_does_not() -> None:
    base = compiled("health: {check: {type: tcp, port: 80}}")
    health = compiled("health: {check: {type: tcp, port: 81}}")
    assert base.fingerprint == health.fingerprint
    other = compiled("").fingerprint
    assert other == base.fingerprint
    loaded = load_ok(service_text().replace("nginx", '"nginx:2"'))
    desired, _ = compile_specs([loaded], "rev", CompileInputs())
    assert desired is not None
    assert desired.services[("demo", "web")].fingerprint != base.fingerprint


def test_restart_policy_steers_supervision_and_is_no_config() -> None:
    base = compiled("")
    policy = compiled("restart_policy: {kind: always, max_attempts: 4, delay: 1m}")
    assert policy.fingerprint == base.fingerprint and "restart_policy" not in policy.config
    assert (policy.policy.restart, policy.policy.max_attempts) == ("always", 4)
    assert policy.policy.restart_delay == 60.0 and policy.policy.restarts_completed
    assert (base.policy.restart, base.policy.max_attempts) == ("on_failure", None)
    assert base.warnings == policy.warnings == ()
    odd = compiled("restart_policy: {kind: unless_stopped, delay: soon}")
    assert odd.policy.restart_delay is None
    assert odd.warnings == (
        "restart_policy.delay 'soon' is not a duration (30s, 1m); not applied",
        "restart_policy unless_stopped restarts like always: zlayer cannot tell a replica "
        "stopped by hand from one that exited",
    )


def test_replica_counts_by_scale_mode_and_rtype() -> None:
    assert compiled("").replicas == 1  # omitted scale: adaptive, min 1
    assert compiled("scale: {mode: adaptive, min: 2, max: 5}").replicas == 2
    assert compiled("scale: {mode: manual}").replicas is None
    assert compiled("scale: {mode: fixed, replicas: 0}").replicas == 0
    job = compiled("rtype: job")
    assert (job.replicas, job.is_definition) == (0, True)


def test_secrets_are_keyed_hashes_in_config_and_masked_everywhere() -> None:
    inputs = CompileInputs(secret_key=KEY, secret={"db": "hunter2"}.get)
    service = compiled('env: {DB_PASSWORD: "$S:db", URL: "$secret://db", PLAIN: x}', inputs)
    env = service.config["env"]
    assert env["DB_PASSWORD"]["secret"] == "db"
    assert env["DB_PASSWORD"]["hmac"].startswith("hmac-sha256:")
    assert env["URL"] == env["DB_PASSWORD"]
    assert "hunter2" not in repr(service)
    assert "hunter2" not in str(service.config)
    assert repr(service.secrets[("env", "URL")]) == "SecretValue(***)"
    assert service.runtime_env() == {"DB_PASSWORD": "hunter2", "URL": "hunter2", "PLAIN": "x"}
    assert service.sensitive == {"DB_PASSWORD", "URL"}


def test_a_changed_secret_changes_the_fingerprint_and_another_key_too() -> None:
    def fp(value: str, key: bytes = KEY) -> str:
        inputs = CompileInputs(secret_key=key, secret={"db": value}.get)
        return compiled('env: {P: "$S:db"}', inputs).fingerprint

    assert fp("a") == fp("a")
    assert fp("a") != fp("b")
    assert fp("a") != fp("a", key=b"another")


def test_restore_service_rebuilds_an_earlier_config_only_with_the_same_secrets() -> None:
    old_inputs = CompileInputs(secret_key=KEY, secret={"db": "one"}.get)
    old = compiled('env: {P: "$S:db", LEVEL: debug}', old_inputs)
    new = compiled('env: {P: "$S:db", LEVEL: info}', old_inputs)
    back = restore_service(new, old.config, old.fingerprint, old_inputs)
    assert back.fingerprint == old.fingerprint
    assert back.runtime_env() == {"P": "one", "LEVEL": "debug"}
    assert back.policy == new.policy and back.depends == new.depends
    rotated = CompileInputs(secret_key=KEY, secret={"db": "two"}.get)
    with pytest.raises(ValueError, match=r"env\.P: secret db has changed since that config ran"):
        restore_service(new, old.config, old.fingerprint, rotated)
    gone = CompileInputs(secret_key=KEY, secret=lambda _name: None)
    with pytest.raises(ValueError, match=r"env\.P: secret db is not available any more"):
        restore_service(new, old.config, old.fingerprint, gone)


def test_secret_looking_keys_are_sensitive_without_being_secrets() -> None:
    service = compiled("env: {API_TOKEN: t, aws_secret_access_key: s, LOG_LEVEL: info}")
    assert service.sensitive == {"API_TOKEN", "aws_secret_access_key"}


@pytest.mark.parametrize(
    ("env", "inputs", "message"),
    [
        ('{A: "$E:NOPE_UNSET"}', CompileInputs(secret_key=KEY), r"\$E:NOPE_UNSET is not set"),
        ('{A: "$S:missing"}', CompileInputs(secret_key=KEY), "secret missing is not set"),
    ],
)
def test_unresolvable_references_are_problems_with_positions(
    env: str, inputs: CompileInputs, message: str
) -> None:
    loaded = load_ok(service_text(f"env: {env}"))
    desired, problems = compile_specs([loaded], "rev", inputs)
    assert desired is None
    (problem,) = problems
    assert problem.where == "services.web.env.A"
    assert problem.mark is not None and problem.mark.line == 6
    assert "deployment demo, service web, env A" in problem.message
    assert re.search(message, problem.message)


def test_offline_compile_records_secret_names_only() -> None:
    service = compiled('env: {P: "$S:db"}', CompileInputs(secret_key=None))
    assert service.config["env"] == {"P": {"secret": "db"}}
    assert service.offline_secrets
    assert service.sensitive == {"P"}


def test_content_revision_ignores_names_and_order_but_not_content() -> None:
    a, b = SourceFile("a.yaml", b"x"), SourceFile("b.yaml", b"y")
    assert content_revision([a, b]) == content_revision([SourceFile("z.yaml", b"y"), a])
    assert content_revision([a, b]) != content_revision([a, SourceFile("b.yaml", b"y2")])


def test_as_running_and_snapshot_round_trip() -> None:
    loaded = load_ok(service_text("scale: {mode: fixed, replicas: 2}"))
    desired, _ = compile_specs([loaded], "rev", CompileInputs())
    assert desired is not None
    state = as_running(desired)
    assert [str(w.id) for w in state.workloads] == ["demo/web/1", "demo/web/2"]
    again = load_snapshot(state.to_json())
    assert again == state
    assert again.fingerprint() == state.fingerprint()


def _workload(**changes: object) -> Workload:
    base: dict[str, object] = {
        "deployment": "d",
        "service": "s",
        "replica": 1,
        "fingerprint": "f",
        "status": "running",
    }
    return Workload(**{**base, **changes})  # type: ignore[arg-type]


def test_observed_fingerprint_ignores_health_and_start_time_but_not_status() -> None:
    base = ObservedState(runtime="x", workloads=(_workload(),))
    healthier = ObservedState(
        runtime="x", workloads=(_workload(health="unhealthy", started_at="2026-01-01"),)
    )
    crashed = ObservedState(runtime="x", workloads=(_workload(status="exited", exit_code=1),))
    assert base.fingerprint() == healthier.fingerprint()
    assert base.fingerprint() != crashed.fingerprint()


def test_snapshot_refuses_duplicates_and_unknown_fields() -> None:
    with pytest.raises(SnapshotError, match="listed twice"):
        one = dataclasses.asdict(_workload())
        load_snapshot(json.dumps({"runtime": "x", "workloads": [one, one]}))
    with pytest.raises(SnapshotError, match="surprise: unknown field"):
        load_snapshot('{"runtime": "x", "surprise": 1}')


def test_explain_keeps_order_and_collapses_sensitive_values() -> None:
    before = {"command": {"args": ["a", "b"]}, "env": {"T": "x", "S": {"secret": "s", "hmac": "1"}}}
    after = {"command": {"args": ["b", "a"]}, "env": {"T": "y", "S": {"secret": "s", "hmac": "2"}}}
    changes = explain(before, after, frozenset({"T"}))
    assert [describe(c) for c in changes] == [
        "command.args[0] a → b",
        "command.args[1] b → a",
        "env.S changed (sensitive)",
        "env.T changed (sensitive)",
    ]
    assert all(c.before is None and c.after is None for c in changes if c.sensitive)


def test_explain_reports_added_and_removed_fields() -> None:
    changes = explain({"user": "1", "tty": True}, {"user": "1", "privileged": True})
    assert [describe(c) for c in changes] == ["privileged added: true", "tty removed (was true)"]


def test_fake_driver_follows_runtime_rules() -> None:
    loaded = load_ok(service_text())
    desired, _ = compile_specs([loaded], "rev", CompileInputs())
    assert desired is not None
    service = desired.services[("demo", "web")]

    async def scenario() -> None:
        async with FakeDriver() as driver:
            await driver.create(service, 1, "rev")
            with pytest.raises(Conflict):
                await driver.create(service, 1, "rev")
            with pytest.raises(NotFound):
                await driver.remove(WorkloadId("demo", "web", 2))
            driver.crash(WorkloadId("demo", "web", 1), 137)
            (crashed,) = (await driver.observe()).workloads
            assert (crashed.status, crashed.exit_code) == ("exited", 137)
            await driver.restart(WorkloadId("demo", "web", 1))
            (restarted,) = (await driver.observe()).workloads
            assert (restarted.status, restarted.restart_count) == ("running", 1)
            assert (await driver.observe(["other"])).workloads == ()

    asyncio.run(scenario())


def test_secret_value_str_is_masked() -> None:
    assert str(SecretValue("x")) == "SecretValue(***)"


def test_an_rps_target_needs_a_routed_endpoint_and_memory_one_a_limit() -> None:
    scale = "scale: {mode: adaptive, min: 1, max: 4, targets: {rps: 20, memory: 80}}"
    loaded = load_ok(service_text(scale))
    desired, problems = compile_specs([loaded], "rev", CompileInputs(secret_key=KEY))
    assert desired is None
    (problem,) = problems
    assert problem.where == "services.web.scale.targets.rps"
    assert problem.mark is not None and (problem.mark.line, problem.mark.col) == (6, 60)
    assert "needs an endpoint the managed proxy routes" in problem.message
    routed = compiled(
        scale + "\nendpoints: [{name: http, protocol: http, port: 8080, expose: public}]"
    )
    assert routed.policy.scale is not None
    assert dict(routed.policy.scale.targets or {}) == {"rps": 20.0}  # memory: no limit
    assert any("scale.targets.memory is a percentage of resources.memory" in w
               for w in routed.warnings)  # fmt: skip
    limited = compiled(
        scale
        + "\nresources: {memory: 256Mi}"
        + "\nendpoints: [{name: http, protocol: http, port: 8080, expose: public}]"
    )
    assert limited.policy.scale is not None
    assert dict(limited.policy.scale.targets or {}) == {"rps": 20.0, "memory": 80.0}

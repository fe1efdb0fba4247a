"""Rules beyond single fields: ZLayer's own and zlayer's stricter ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from reconciler.sources.files import collect
from reconciler.spec.load import SourceFile, load_sources, load_text
from reconciler.spec.refs import parse_secret_ref
from reconciler.spec.rules import (
    HOST_NAME_MAX,
    MAX_REPLICAS,
    MAX_SERVICE_NAME,
    SECRET_NAME_RE,
    export_hint,
)
from tests.conftest import load_bad, load_ok, rendered, service_text, spec_text


def test_dependency_cycle_is_named() -> None:
    text = spec_text(
        """
        services:
          a: {image: {name: x}, depends: [{service: b}]}
          b: {image: {name: x}, depends: [{service: c}]}
          c: {image: {name: x}, depends: [{service: a}]}
        """
    )
    out = rendered(load_bad(text))
    assert "dependency cycle: a -> b -> c -> a" in out


def test_self_dependency() -> None:
    text = service_text("depends: [{service: web}]")
    assert "services.web.depends[0].service: service 'web' depends on itself" in rendered(
        load_bad(text)
    )


def test_unknown_dependency_lists_known_services() -> None:
    text = service_text("depends: [{service: db}]")
    assert "depends on unknown service 'db' (services: web)" in rendered(load_bad(text))


def test_dependency_on_a_service_that_failed_validation_is_not_called_unknown() -> None:
    text = spec_text(
        """
        services:
          db: {image: {name: BAD}}
          web: {image: {name: x}, depends: [{service: db}], init: {steps: [{id: a, uses: nope}]}}
        """
    )
    out = rendered(load_bad(text))
    assert "invalid image reference 'BAD'" in out
    assert "unknown service" not in out
    assert "unknown init action 'nope'" in out  # rules still ran on the valid service


@pytest.mark.parametrize("name", ["my/app", "my app", "ca:che", "-web", "wéb"])
def test_service_names_that_cannot_be_container_names(name: str) -> None:
    text = spec_text(f"services:\n  '{name}': {{image: {{name: x}}}}\n")
    assert "cannot become a container name" in rendered(load_bad(text))


@pytest.mark.parametrize("name", ["web", "web_1", "api.v2", "a", "W-2"])
def test_container_name_friendly_service_names(name: str) -> None:
    load_ok(spec_text(f"services:\n  '{name}': {{image: {{name: x}}}}\n"))


def test_unknown_init_action_lists_builtins() -> None:
    text = service_text("init: {steps: [{id: w, uses: init.wait_tpc}]}")
    out = rendered(load_bad(text))
    assert "unknown init action 'init.wait_tpc'" in out and "init.wait_tcp" in out


def test_duplicate_endpoint_names() -> None:
    text = service_text(
        "endpoints: [{name: h, protocol: http, port: 80}, {name: h, protocol: tcp, port: 81}]"
    )
    assert "endpoints[1].name: duplicate endpoint name 'h'" in rendered(load_bad(text))


def test_cron_schedule_rules() -> None:
    assert "needs a schedule" in rendered(load_bad(service_text("rtype: cron")))
    assert "only for rtype cron" in rendered(
        load_bad(service_text("rtype: job\nschedule: '@daily'"))
    )
    out = rendered(load_bad(service_text("rtype: cron\nschedule: '*/5 * * * *'")))
    assert 'hint: did you mean "0 */5 * * * *"' in out
    load_ok(service_text("rtype: cron\nschedule: '0 */5 * * * MON-FRI'"))


def test_check_env_reports_unset_variables() -> None:
    text = service_text("env: {TOKEN: '$E:API_TOKEN', PLAIN: 'x$E:NOT_A_REF'}")
    load_ok(text)  # without --check-env references are not looked up
    problems = load_bad(text, env={})
    assert len(problems) == 1
    assert (
        "services.web.env.TOKEN: $E:API_TOKEN is not set in the environment" in problems[0].render()
    )
    assert load_ok(text).spec.services["web"].env["TOKEN"] == "$E:API_TOKEN"
    assert load_text(text, "f", env={"API_TOKEN": "x"})[1] == []


def test_wasm_rules() -> None:
    assert "wasm settings need a wasm service_type" in rendered(load_bad(service_text("wasm: {}")))
    text = service_text("service_type: wasm_transformer\nwasm: {capabilities: {http_client: true}}")
    assert "capability http_client is not available" in rendered(load_bad(text))
    load_ok(service_text("service_type: wasm_http\nwasm: {min_instances: 1}"))


def test_two_files_declaring_one_deployment_name_both() -> None:
    text = spec_text("services: {}")
    result = load_sources(
        [SourceFile("a.yaml", text.encode()), SourceFile("b.yaml", text.encode())]
    )
    assert [p.render() for p in result.problems] == [
        "b.yaml:2:13: deployment: deployment 'demo' is also declared in a.yaml; "
        "each deployment lives in exactly one file"
    ]


def test_every_file_is_reported_in_one_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.yaml").write_text(service_text("privileged: 1"))
    (tmp_path / "b.yml").write_text("version: v2\ndeployment: other\n")
    (tmp_path / "notes.txt").write_text("not a spec")
    collected = collect([tmp_path])
    result = load_sources(collected.files)
    files = sorted({p.file for p in result.problems})
    assert files == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")]


# --- limits a host needs (validate refuses what apply would) ---------------------------------


@pytest.mark.parametrize(
    ("scale", "where"),
    [
        (f"{{mode: fixed, replicas: {MAX_REPLICAS + 1}}}", "scale.replicas"),
        (f"{{mode: adaptive, min: {MAX_REPLICAS + 1}, max: {MAX_REPLICAS + 1}}}", "scale.min"),
        (f"{{mode: adaptive, min: 1, max: {MAX_REPLICAS + 1}}}", "scale.max"),
    ],
)
def test_replica_counts_are_capped_with_a_position(scale: str, where: str) -> None:
    (problem, *_) = load_bad(service_text(f"scale: {scale}"))
    assert problem.where == f"services.web.{where}"
    assert problem.mark is not None and problem.mark.line == 6
    assert f"a service runs at most {MAX_REPLICAS} replicas" in problem.message


def test_the_replica_cap_itself_is_allowed() -> None:
    load_ok(service_text(f"scale: {{mode: fixed, replicas: {MAX_REPLICAS}}}"))
    load_ok(service_text(f"scale: {{mode: adaptive, min: 0, max: {MAX_REPLICAS}}}"))


def test_service_names_must_fit_a_host_name() -> None:
    load_ok(spec_text(f"services:\n  {'a' * MAX_SERVICE_NAME}: {{image: {{name: x}}}}\n"))
    long = "a" * (MAX_SERVICE_NAME + 1)
    (problem,) = load_bad(spec_text(f"services:\n  {long}: {{image: {{name: x}}}}\n"))
    assert problem.mark is not None and problem.mark.line == 4
    assert f"service name is {MAX_SERVICE_NAME + 1} characters long" in problem.message
    assert MAX_SERVICE_NAME + len(f"-{MAX_REPLICAS}") == HOST_NAME_MAX == 64


@pytest.mark.parametrize(
    "key", ["C=D", "", "BAD KEY", "TAB\tKEY", "NL\nKEY", "BELL\x07", "NBSP\u00a0X", "DEL\x7f"]
)
def test_env_keys_a_process_cannot_receive(key: str) -> None:
    text = service_text(f"env: {{{json.dumps(key)}: x}}")
    (problem,) = load_bad(text)
    assert problem.where == f"services.web.env.{key}"
    assert problem.mark is not None and problem.mark.line == 6
    assert f"env key {key!r} cannot be passed to a process" in problem.message


@pytest.mark.parametrize("key", ["PATH", "1", "a.b", "my-var", "lower_case", "ÜBER"])
def test_env_keys_zlayer_and_processes_accept(key: str) -> None:
    assert key in load_ok(service_text(f"env: {{{json.dumps(key)}: x}}")).spec.services["web"].env


def test_replica_group_env_is_checked_too() -> None:
    text = service_text("replica_groups: [{role: primary, count: 1, env: {'A B': x}}]")
    (problem,) = load_bad(text)
    assert problem.where == "services.web.replica_groups[0].env.A B"


def test_a_nul_byte_in_an_env_value_is_refused() -> None:
    (problem,) = load_bad(service_text('env: {A: "x\\0y"}'))
    assert problem.where == "services.web.env.A"
    assert "holds a NUL byte" in problem.message


@pytest.mark.parametrize(
    "value",
    [
        "$S:../../etc/passwd",
        "$S:",
        "$S:a b",
        "$S:.hidden",
        "$S:" + "a" * 256,
        "$S:@api",  # no name
        "$S:@../db",
        "$S:db/a/b",  # a field holds no '/'
        "$S::prod",  # no name
        "$S:a:b:c/x",
        "$secret://",
        "$secret://prod/",
        "$secret://prod/.k",
    ],
)
def test_secret_references_that_name_no_file_of_the_secrets_directory(value: str) -> None:
    (problem,) = load_bad(service_text(f"env: {{A: {json.dumps(value)}}}"))
    assert problem.where == "services.web.env.A"
    assert problem.mark is not None and (problem.mark.line, problem.mark.col) == (6, 14)
    assert "is not valid" in problem.message or " is $S:" in problem.message, problem.message
    assert problem.hint is not None and "$S:@SERVICE/NAME" in problem.hint


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("$S:db-password", "db-password"),
        ("$secret://db.key", "db.key"),  # zlayer's older spelling of $S:NAME
        ("$S:" + "a" * 255, "a" * 255),
        ("$S:database/password", "database#password"),
        ("$S:@api/db-password", "services/demo/api/db-password"),
        ("$S:@api/database/password", "services/demo/api/database#password"),
        ("$S::prod/api-key", "env/prod/api-key"),
        ("$S::prod/database/host", "env/prod/database#host"),
        ("$S:shop:prod/api-key", "projects/shop/env/prod/api-key"),
        ("$secret://prod/API_KEY", "env/prod/API_KEY"),
        ("$secret://prod/database/port", "env/prod/database#port"),
    ],
)
def test_zlayer_secret_reference_forms_and_the_file_each_reads(value: str, key: str) -> None:
    load_ok(service_text(f"env: {{A: {json.dumps(value)}}}"))
    assert parse_secret_ref(value).key("demo") == key
    file = key.partition("#")[0]
    assert all(SECRET_NAME_RE.fullmatch(part) for part in file.split("/"))


@pytest.mark.parametrize("name", ["API_TOKEN", "_x", "MY-VAR", "A B", "$(touch pwned)", "it's"])
def test_export_hints_are_valid_shell_that_sets_exactly_the_name(name: str, tmp_path: Path) -> None:
    hint = export_hint(name, "before running")
    command = hint.removesuffix(" before running").split("run zlayer as: ", 1)[-1]
    command = command.replace("zlayer …", "env")
    # the line, run by a shell with `env` for zlayer, sets the variable and nothing else
    script = command if command.startswith("env ") else f"{command}; env"
    done = subprocess.run(
        ["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30, env={}
    )
    assert done.returncode == 0, (hint, done.stderr)
    assert f"{name}=value" in done.stdout.splitlines()
    assert list(tmp_path.iterdir()) == []  # nothing in the name ran

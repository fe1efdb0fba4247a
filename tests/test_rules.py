"""Rules beyond single fields: ZLayer's own and zlayer's stricter ones."""

from __future__ import annotations

import pytest

from reconciler.sources.files import collect
from reconciler.spec.load import SourceFile, load_sources, load_text

from .conftest import load_bad, load_ok, rendered, service_text, spec_text


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

"""The ``zlayer`` command line, run as users run it (a real subprocess) and in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler import __version__
from reconciler.cli.main import cli
from reconciler.spec.load import load_text
from tests.conftest import REPO, service_text

BAD = service_text(
    """
    scale: {mode: adaptive, min: 5, max: 2}
    privileged: 'yes'
    """
)


def zlayer(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``zlayer`` as users do; ``env`` adds variables, ``unset`` removes them."""
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
    )


def test_validate_defaults_to_specs_and_passes_on_the_bundled_examples() -> None:
    run = zlayer("validate")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid" in run.stdout


def test_validate_reports_every_problem_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(BAD)
    (tmp_path / "other.yaml").write_text("version: v1\ndeployment: x\n")
    run = zlayer("validate", str(tmp_path))
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert (
        f"{tmp_path / 'other.yaml'}:2:13: deployment: deployment name 'x' must be 3-63" in lines[0]
    )
    assert lines[1] == (
        f"{tmp_path / 'web.yaml'}:6:12: services.web.scale: min (5) must not exceed max (2)"
    )
    assert lines[2].startswith(f"{tmp_path / 'web.yaml'}:7:17: services.web.privileged:")
    assert "3 problems in 2 files" in lines[3]


def test_validate_json_and_github_formats(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(BAD)
    run = zlayer("validate", str(tmp_path), "--format", "json")
    report = json.loads(run.stdout)
    assert run.returncode == 1 and report["ok"] is False
    assert report["problems"][0] == {
        "file": str(tmp_path / "web.yaml"),
        "line": 6,
        "col": 12,
        "path": "services.web.scale",
        "message": "min (5) must not exceed max (2)",
        "hint": None,
    }
    run = zlayer("validate", str(tmp_path), "--format", "github")
    first = run.stdout.splitlines()[0]
    assert first == (
        f"::error file={tmp_path / 'web.yaml'},line=6,col=12::"
        "services.web.scale: min (5) must not exceed max (2)"
    )


def test_github_format_escapes_properties_and_newlines(tmp_path: Path) -> None:
    weird = tmp_path / "a,b:c.yaml"
    weird.write_text("version: v1\ndeployment: x\n")
    run = zlayer("validate", str(weird), "--format", "github")
    assert "file=" + str(weird).replace(",", "%2C").replace(":", "%3A") + ",line=2" in run.stdout


def test_ok_json_lists_deployments() -> None:
    report = json.loads(zlayer("validate", "--format", "json").stdout)
    assert report["ok"] is True and report["problems"] == []
    assert sorted(report["deployments"]) == ["demo", "hello", "observability"]


def test_spec_dump_yaml_round_trips_to_the_same_spec() -> None:
    for path in sorted((REPO / "specs").glob("*.yaml")):
        run = zlayer("spec", "dump", str(path))
        assert run.returncode == 0, run.stderr
        original, _ = load_text(path.read_text(), str(path))
        again, problems = load_text(run.stdout, "dumped.yaml")
        assert problems == [] and original is not None and again is not None
        assert again.spec == original.spec


def test_spec_dump_fills_defaults_and_json_is_one_object_per_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service_text())
    run = zlayer("spec", "dump", str(tmp_path), "--format", "json")
    objects = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(objects) == 1
    web = objects[0]["services"]["web"]
    assert web["scale"] == {
        "mode": "adaptive",
        "min": 1,
        "max": 10,
        "cooldown": "30s",
        "targets": {"cpu": None, "memory": None, "rps": None},
    }
    assert web["health"]["check"] == {"type": "tcp", "port": 0}


def test_spec_dump_of_an_invalid_spec_prints_problems_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BAD)
    run = zlayer("spec", "dump", str(tmp_path / "a.yaml"))
    assert run.returncode == 1 and run.stdout == ""
    assert "min (5) must not exceed max (2)" in run.stderr


def test_schema_is_json_schema_that_accepts_the_examples() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    schema = json.loads(zlayer("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((REPO / "specs").glob("*.yaml")):
        run = zlayer("spec", "dump", str(path), "--format", "json")
        assert list(validator.iter_errors(json.loads(run.stdout))) == []
    assert list(validator.iter_errors({"version": "v1"}))  # deployment is required


def test_version_and_help_with_examples() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.strip() == f"zlayer {__version__}"
    for command in (["validate"], ["spec", "dump"], ["schema"], ["spec"], []):
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output, command


def test_usage_errors_exit_1_not_2() -> None:
    run = zlayer("validate", "--format", "xml")
    assert run.returncode == 1
    assert "'xml' is not one of" in run.stderr


def test_validate_for_a_runtime_reports_what_it_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(
        "version: v1\ndeployment: shop\nservices:\n"
        "  web:\n"
        "    image: {name: nginx}\n"
        '    env: {PW: "$S:db-pass", HOME_URL: "$E:SURELY_UNSET_VARIABLE"}\n'
        "    labels: {zlayer.owner: me}\n"
        "    init:\n"
        "      steps:\n"
        "        - {id: fetch, uses: init.s3_pull, with: {bucket: b}}\n"
        "  fine:\n"
        "    image: {name: nginx}\n"
    )
    plain = zlayer("validate", str(tmp_path))
    assert plain.returncode == 0, plain.stdout
    run = zlayer("validate", str(tmp_path), "--runtime", "docker", "--format", "json")
    assert run.returncode == 1
    problems = json.loads(run.stdout)["problems"]
    assert [(p["path"], p["line"]) for p in problems] == [("services.web", 5)] * 2
    messages = " | ".join(p["message"] for p in problems)
    assert "init step 'fetch' uses init.s3_pull" in messages
    assert "label 'zlayer.owner'" in messages


@pytest.mark.parametrize("uses", ["init.s3_pull", "init.s3_push"])
def test_s3_init_steps_are_refused_on_the_process_runtime_before_anything_runs(
    tmp_path: Path, uses: str
) -> None:
    """No runtime of zlayer can run an S3 step: the process runtime says so at validate
    time, at the service's position, as Docker does."""
    (tmp_path / "shop.yaml").write_text(
        "version: v1\ndeployment: shop\nservices:\n"
        "  web:\n"
        "    image: {name: nginx}\n"
        "    command: {entrypoint: [sleep, '60']}\n"
        "    init:\n"
        "      steps:\n"
        f"        - {{id: fetch, uses: {uses}, with: {{bucket: b}}}}\n"
    )
    run = zlayer("validate", str(tmp_path), "--runtime", "process", "--format", "json")
    assert run.returncode == 1, run.stdout
    problems = json.loads(run.stdout)["problems"]
    assert [(p["path"], p["line"]) for p in problems] == [("services.web", 5)], problems
    assert problems[0]["message"].endswith(
        f"init step 'fetch' uses {uses}, which the process runtime cannot run (no S3 support)"
    ), problems


def test_validate_for_a_runtime_warns_at_the_position_and_strict_fails(tmp_path: Path) -> None:
    """The plan's warnings in ``validate --runtime``, at the field's position, in
    every format; ``--strict`` turns them into a failure."""
    (tmp_path / "app.yaml").write_text(
        "version: v1\ndeployment: app\nservices:\n"
        "  web:\n"
        "    image: {name: nginx}\n"
        "    command: {entrypoint: [sleep, '60']}\n"
        "    cap_drop: [ALL]\n"
    )
    why = "cap_drop is not applied by the process runtime"
    text = zlayer("validate", str(tmp_path), "--runtime", "process")
    assert text.returncode == 0, text.stdout
    assert f"warning: {tmp_path / 'app.yaml'}:7:15: services.web.cap_drop: {why}" in text.stdout
    assert "1 file valid, 1 warning" in text.stdout
    strict = zlayer("validate", str(tmp_path), "--runtime", "process", "--strict")
    assert strict.returncode == 1, strict.stdout
    document = json.loads(
        zlayer("validate", str(tmp_path), "--runtime", "process", "--format", "json").stdout
    )
    assert document["ok"] and document["problems"] == []
    assert [(w["path"], w["line"], w["message"]) for w in document["warnings"]] == [
        ("services.web.cap_drop", 7, why)
    ]
    github = zlayer("validate", str(tmp_path), "--runtime", "process", "--format", "github")
    assert (
        github.stdout.startswith("::warning file=")
        and f"services.web.cap_drop: {why}" in github.stdout
    )
    plain = zlayer("validate", str(tmp_path))  # no runtime: nothing to warn about
    assert plain.returncode == 0 and "warning" not in plain.stdout, plain.stdout

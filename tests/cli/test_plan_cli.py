"""``zlayer plan`` and ``zlayer observe`` as users run them: real subprocesses, real files,
real git repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from reconciler import observed_json
from reconciler.desired import CompileInputs, as_running, compile_specs
from reconciler.observed import load_snapshot
from reconciler.spec.load import SourceFile, load_sources
from tests.cli.test_cli import zlayer
from tests.conftest import REPO

PLAN_SCHEMA = json.loads((REPO / "docs/schemas/plan-v1.schema.json").read_text())

APP = """\
version: v1
deployment: shop
services:
  db:
    image: {{name: "postgres:16"}}
    env:
      POSTGRES_PASSWORD: $S:db-password
      API_TOKEN: {token}
    scale: {{mode: fixed, replicas: 1}}
  web:
    image: {{name: "{web_image}"}}
    env: {{LOG_LEVEL: info}}
    scale: {{mode: fixed, replicas: {replicas}}}
    depends:
      - service: db
        condition: healthy
        timeout: 60s
"""


def app(web_image: str = "shop:1.2", replicas: int = 2, token: str = "tok-visible-1") -> str:
    return APP.format(web_image=web_image, replicas=replicas, token=token)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A working directory with specs/, a state dir holding the secret key and secrets,
    and a snapshot of a host running the specs with secret value ``old-secret``."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/shop.yaml").write_text(app())
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    (state / "secret.key").write_bytes(b"k" * 32)
    (state / "secrets/db-password").write_text("old-secret\n")
    loaded = load_sources([SourceFile("shop.yaml", app().encode())])
    inputs = CompileInputs(secret_key=b"k" * 32, secret={"db-password": "old-secret"}.get)
    desired, problems = compile_specs(loaded.specs, "rev0", inputs)
    assert desired is not None, problems
    (tmp_path / "observed.json").write_text(as_running(desired, runtime="docker").to_json())
    return tmp_path


def plan_args(*extra: str) -> list[str]:
    return ["plan", "specs", "--observed", "observed.json", "--state-dir", "state", *extra]


def test_no_changes_names_the_revision_and_exits_zero_even_with_detailed_exitcode(
    host: Path,
) -> None:
    run = zlayer(*plan_args("--secrets-dir", "state/secrets", "--detailed-exitcode"), cwd=host)
    assert run.returncode == 0, run.stderr
    assert "No changes. The runtime matches specs revision" in run.stdout
    data = json.loads(zlayer(*plan_args("--format", "json"), cwd=host).stdout)
    assert data["actions"] == []
    assert data["changes_present"] is False
    assert data["spec_revision"].startswith("sha256:")
    assert data["spec_revision"][7:19] in run.stdout


def test_changes_in_all_three_formats_with_exit_code_2(host: Path) -> None:
    (host / "specs/shop.yaml").write_text(app(web_image="shop:1.3", replicas=3))
    text = zlayer(*plan_args("--detailed-exitcode"), cwd=host)
    assert text.returncode == 2, text.stderr
    assert "~ replace    shop/web/1  image shop:1.2 → shop:1.3" in text.stdout
    assert "+ create     shop/web/3  replicas 2 → 3" in text.stdout
    assert "after: db healthy (timeout 60s, on timeout fail)" in text.stdout
    assert "Plan: 1 to create, 2 to replace, 0 to remove." in text.stdout
    assert "\x1b[" not in text.stdout

    data = json.loads(zlayer(*plan_args("--format", "json"), cwd=host).stdout)
    jsonschema.validate(data, PLAN_SCHEMA)
    assert [a["id"] for a in data["actions"]] == [
        "create:shop/web/3",
        "replace:shop/web/1",
        "replace:shop/web/2",
    ]
    assert data["actions"][2]["waits_for"] == ["replace:shop/web/1"]
    assert data["summary"]["total"] == 3

    markdown = zlayer(*plan_args("--format", "markdown"), cwd=host).stdout
    assert markdown.startswith("### zlayer plan: 1 to create, 2 to replace, 0 to remove\n")
    assert "| ~ | replace | `shop/web/1` | image shop:1.2 → shop:1.3 |" in markdown
    assert "<details><summary>Details</summary>" in markdown


def test_output_is_byte_identical_across_runs_and_out_matches_json(host: Path) -> None:
    (host / "specs/shop.yaml").write_text(app(web_image="shop:1.3"))
    first = zlayer(*plan_args("--format", "json", "--out", "saved.json"), cwd=host)
    second = zlayer(*plan_args("--format", "json"), cwd=host)
    assert first.stdout == second.stdout
    assert (host / "saved.json").read_text() == first.stdout
    texts = {zlayer(*plan_args(), cwd=host).stdout for _ in range(2)}
    assert len(texts) == 1


def test_secret_values_never_appear_but_their_change_does(host: Path) -> None:
    (host / "state/secrets/db-password").write_text("new-secret\n")
    (host / "specs/shop.yaml").write_text(app(token="tok-visible-2"))
    outputs = []
    for fmt in ("text", "json", "markdown"):
        run = zlayer(
            *plan_args("--secrets-dir", "state/secrets", "--format", fmt, "--out", "p.json"),
            cwd=host,
        )
        assert run.returncode == 0, run.stderr
        outputs += [run.stdout, run.stderr, (host / "p.json").read_text()]
    everything = "\n".join(outputs)
    for value in ("old-secret", "new-secret", "tok-visible-1", "tok-visible-2"):
        assert value not in everything
    assert "env.POSTGRES_PASSWORD changed (sensitive)" in outputs[0]
    assert "env.API_TOKEN changed (sensitive)" in outputs[0]


def test_offline_plan_assumes_secrets_unchanged_and_says_so(host: Path) -> None:
    (host / "state/secrets/db-password").write_text("new-secret\n")
    run = zlayer(*plan_args(), cwd=host)
    assert run.returncode == 0, run.stderr
    assert "No changes." in run.stdout
    note = (
        "shop/db: sensitive values cannot be compared here (no host key or secrets); "
        "env.API_TOKEN, env.POSTGRES_PASSWORD assumed unchanged"
    )
    assert note in run.stdout.replace("\n", " ")


def test_unset_env_reference_is_an_error_naming_where(host: Path) -> None:
    (host / "specs/shop.yaml").write_text(
        app().replace("LOG_LEVEL: info", 'LOG_LEVEL: "$E:ZL_LVL"')
    )
    run = zlayer(*plan_args("--format", "json"), cwd=host, env={"ZL_LVL": "debug"})
    assert run.returncode == 0, run.stderr
    change = json.loads(run.stdout)["actions"][0]["changes"]
    # $E: values are sensitive by construction: the change shows, the values never
    assert change == [{"path": "env.LOG_LEVEL", "kind": "changed", "sensitive": True}]
    assert "debug" not in run.stdout
    run = zlayer(*plan_args(), cwd=host, unset=("ZL_LVL",))
    assert run.returncode == 1
    assert "specs/shop.yaml:12:22: services.web.env.LOG_LEVEL:" in run.stderr
    assert "deployment shop, service web, env LOG_LEVEL: $E:ZL_LVL is not set" in run.stderr
    assert run.stdout == ""


def test_missing_secret_is_an_error(host: Path) -> None:
    (host / "state/secrets/db-password").unlink()
    run = zlayer(*plan_args("--secrets-dir", "state/secrets"), cwd=host)
    assert run.returncode == 1
    assert "services.db.env.POSTGRES_PASSWORD" in run.stderr
    assert "secret db-password is not set" in run.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid zlayer-observed snapshot"),
        ('{"runtime": "x", "format_version": 2}', "format_version"),
        (
            '{"runtime": "x", "workloads": [{"deployment": "a", "service": "b", "replica": 1,'
            ' "fingerprint": "f", "status": "registered"}]}',
            "does not fit a replica",
        ),
    ],
)
def test_bad_snapshot_is_a_clear_error(host: Path, content: str, message: str) -> None:
    (host / "observed.json").write_text(content)
    run = zlayer(*plan_args(), cwd=host)
    assert run.returncode == 1
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_unwritable_out_and_unreadable_secret_are_clear_errors(host: Path) -> None:
    run = zlayer(*plan_args("--out", "no/such/dir/plan.json"), cwd=host)
    assert run.returncode == 1
    assert "--out no/such/dir/plan.json: cannot write: No such file or directory" in run.stderr
    (host / "state/secrets/db-password").unlink()
    (host / "state/secrets/db-password").mkdir()
    run = zlayer(*plan_args("--secrets-dir", "state/secrets"), cwd=host)
    assert run.returncode == 1
    assert "secret db-password: cannot read" in run.stderr
    assert "Traceback" not in run.stderr


def test_missing_snapshot_and_conflicting_sources_are_errors(host: Path) -> None:
    run = zlayer("plan", "specs", "--observed", "nope.json", cwd=host)
    assert run.returncode == 1
    assert "nope.json: cannot read snapshot" in run.stderr
    run = zlayer("plan", "specs", "--observed", "observed.json", "--runtime", "fake", cwd=host)
    assert run.returncode == 1
    assert "exclude each other" in run.stderr
    run = zlayer("plan", "specs", cwd=host)
    assert run.returncode == 1
    assert "--observed SNAPSHOT, --against-ref REF or --runtime" in run.stderr


def test_target_limits_the_plan_and_unknown_target_fails(host: Path) -> None:
    (host / "specs/shop.yaml").write_text(app(web_image="shop:1.3").replace("postgres:16", "pg:17"))
    data = json.loads(zlayer(*plan_args("--target", "db", "--format", "json"), cwd=host).stdout)
    assert [a["id"] for a in data["actions"]] == ["replace:shop/db/1"]
    assert data["targets"] == ["db"]
    assert data["notes"][0]["subject"] == "targets"
    run = zlayer(*plan_args("--target", "nope"), cwd=host)
    assert run.returncode == 1
    assert "--target nope: no such service" in run.stderr


def test_plan_writes_nothing_to_the_state_directory(host: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh-state"
    run = zlayer("plan", "specs", "--runtime", "fake", "--state-dir", str(fresh), cwd=host)
    assert run.returncode == 1  # the secret is not in the (missing) secrets directory
    assert "secret db-password is not set" in run.stderr
    assert not fresh.exists()


def test_observe_writes_a_snapshot_that_plan_reads(tmp_path: Path) -> None:
    run = zlayer("observe", "--runtime", "fake", "--out", "o.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    state = load_snapshot((tmp_path / "o.json").read_text())
    assert state.runtime == "fake"
    assert state.workloads == ()
    plan = zlayer("plan", str(REPO / "specs"), "--observed", "o.json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "+ create     demo/web/1  new service, replicas 0 → 1" in plan.stdout


def test_observed_schema_document_matches_the_model() -> None:
    committed = json.loads((REPO / "docs/schemas/observed-v1.schema.json").read_text())
    assert committed == observed_json.schema()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=30
    ).stdout


def init_repo(root: Path, specs_dir: str) -> None:
    """A git repository on branch main whose one commit holds ``specs_dir/shop.yaml``."""
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.invalid")
    git(root, "config", "user.name", "t")
    (root / specs_dir).mkdir()
    (root / specs_dir / "shop.yaml").write_text(app().replace("$S:db-password", "plain"))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "base")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    init_repo(tmp_path, "deploy")
    return tmp_path


def test_against_ref_plans_the_working_tree_against_the_ref(repo: Path) -> None:
    changed = app(web_image="shop:2.0", replicas=3).replace("$S:db-password", "plain")
    (repo / "deploy/shop.yaml").write_text(changed)
    (repo / "deploy/new.yaml").write_text(
        "version: v1\ndeployment: extra\nservices:\n  one:\n    image: {name: x}\n"
    )
    status_before = git(repo, "status", "--porcelain")
    head_before = git(repo, "rev-parse", "HEAD")
    run = zlayer("plan", "deploy", "--against-ref", "main", "--format", "json", cwd=repo)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [a["id"] for a in data["actions"]] == [
        "create:extra/one/1",
        "create:shop/web/3",
        "replace:shop/web/1",
        "replace:shop/web/2",
    ]
    assert data["runtime"] == "git:main"
    assert head_before.strip()[:12] in data["observed_from"]
    assert git(repo, "status", "--porcelain") == status_before
    assert git(repo, "rev-parse", "HEAD") == head_before


def test_against_ref_where_the_specs_did_not_exist_plans_everything(repo: Path) -> None:
    (repo / "later").mkdir()
    (repo / "later/a.yaml").write_text(
        "version: v1\ndeployment: later\nservices:\n  one:\n    image: {name: x}\n"
    )
    run = zlayer("plan", "later", "--against-ref", "HEAD", "--format", "json", cwd=repo)
    assert run.returncode == 0, run.stderr
    assert [a["id"] for a in json.loads(run.stdout)["actions"]] == ["create:later/one/1"]


def test_against_ref_errors(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = zlayer("plan", "deploy", "--against-ref", "no-such-branch", cwd=repo)
    assert run.returncode == 1
    assert "--against-ref no-such-branch: no such commit, branch or tag" in run.stderr
    elsewhere = tmp_path_factory.mktemp("norepo")
    (elsewhere / "a.yaml").write_text((repo / "deploy/shop.yaml").read_text())
    run = zlayer("plan", "a.yaml", "--against-ref", "HEAD", cwd=elsewhere)
    assert run.returncode == 1
    assert "is not inside a git repository" in run.stderr


def test_against_ref_with_invalid_specs_at_the_ref_reports_them(repo: Path) -> None:
    (repo / "deploy/shop.yaml").write_text("version: v2\n")
    git(repo, "commit", "-q", "-am", "broken")
    (repo / "deploy/shop.yaml").write_text(app().replace("$S:db-password", "plain"))
    run = zlayer("plan", "deploy", "--against-ref", "HEAD", cwd=repo)
    assert run.returncode == 1
    assert "The specs at HEAD are not valid." in run.stderr
    assert "deploy/shop.yaml:1:" in run.stderr


def test_the_bundled_example_snapshot_gives_the_documented_plan() -> None:
    """The manual's no-engine command (docs/getting-started.md): the demo specs planned against
    contrib/snapshots/demo-host.json (a host running an older demo: busybox 1.35,
    LOG_LEVEL debug, a crashed worker, another cron schedule and a service since removed)."""
    run = zlayer(
        "plan", "specs/demo.yaml", "specs/observability.yaml",
        "--observed", "contrib/snapshots/demo-host.json", "--format", "json",
        cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    jsonschema.validate(data, PLAN_SCHEMA)
    assert [(a["id"], a["reason"]) for a in data["actions"]] == [
        ("prune:demo/legacy-cache/1", "service removed from specs"),
        ("register:demo/nightly-report", "schedule 0 0 2 * * * → 0 30 2 * * *"),
        (
            "replace:demo/web/1",
            "env.LOG_LEVEL debug → info; image busybox:1.35 → busybox:1.36",
        ),
        ("restart:demo/worker/1", "exited with status 137"),
    ]
    assert data["actions"][-1]["waits_for"] == ["replace:demo/web/1"]
    text = zlayer(
        "plan", "specs/demo.yaml", "specs/observability.yaml",
        "--observed", "contrib/snapshots/demo-host.json", cwd=REPO,
    )  # fmt: skip
    assert text.stdout.rstrip().endswith(
        "Plan: 0 to create, 1 to replace, 1 to restart, 1 to register, 0 to remove, 1 to prune."
    )


def test_the_example_pull_request_workflow_runs_real_commands(tmp_path: Path) -> None:
    """The example workflow validates with annotations,
    and its plan step works in a real repository against the base branch."""
    from ruamel.yaml import YAML

    workflow = YAML(typ="safe").load((REPO / "contrib/github/zlayer-plan.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["plan"]["steps"]}
    assert "--format github" in steps["Validate"]["run"]
    script = steps["Plan"]["run"].replace("${{ github.base_ref }}", "main")
    init_repo(tmp_path, "specs")
    git(tmp_path, "update-ref", "refs/remotes/origin/main", "HEAD")
    (tmp_path / "specs/shop.yaml").write_text(app(replicas=3).replace("$S:db-password", "plain"))
    bin_dir = Path(sys.executable).parent
    output = tmp_path / "github-output"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SPECS": "specs/",
        "SNAPSHOT": "host/observed.json",
        "GITHUB_OUTPUT": str(output),
    }
    run = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert output.read_text() == "changes=true\n"
    markdown = (tmp_path / "plan.md").read_text()
    assert "| + | create | `shop/web/3` | replicas 2 → 3 |" in markdown
    assert json.loads((tmp_path / "plan.json").read_text())["summary"]["create"] == 1


CACHE_PROBE = """
import json, sys
from reconciler.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
loaded = sorted(m for m in sys.modules if m == "ruamel.yaml" or m == "reconciler.spec.models")
print("LOADED " + json.dumps(loaded), file=sys.stderr)
"""


def test_a_second_plan_comes_from_the_compile_cache(tmp_path: Path) -> None:
    """The pipeline compiles through the cache in an existing state directory: the
    second plan of unchanged specs reads no YAML and builds no spec model, and says
    exactly what the first said."""
    state = tmp_path / "state"
    state.mkdir()
    args = [
        "plan", "specs", "--observed", "contrib/snapshots/demo-host.json",
        "--state-dir", str(state), "--format", "json",
    ]  # fmt: skip

    def run() -> tuple[str, list[str]]:
        done = subprocess.run(
            [sys.executable, "-c", CACHE_PROBE, *args],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        line = [x for x in done.stderr.splitlines() if x.startswith("LOADED ")][-1]
        return done.stdout, json.loads(line.removeprefix("LOADED "))

    first, first_loaded = run()
    assert first_loaded == ["reconciler.spec.models", "ruamel.yaml"]
    assert list((state / "compile-cache").iterdir()), "no cache entry was written"
    second, second_loaded = run()
    assert second_loaded == []
    assert json.loads(second) == json.loads(first) and json.loads(first)["actions"]


@pytest.mark.parametrize(
    ("runtime", "warned"), [("process", True), ("docker", False), ("fake", False)]
)
def test_a_plan_against_a_snapshot_warns_as_the_snapshots_runtime(
    tmp_path: Path, runtime: str, warned: bool
) -> None:
    """The snapshot records its runtime: ``plan --observed`` (in a pull request, with
    no host) gives that runtime's warnings, as ``plan --runtime`` would."""
    spec = tmp_path / "app.yaml"
    spec.write_text(
        "version: v1\ndeployment: app\nservices:\n"
        "  web:\n"
        "    image: {name: nginx}\n"
        "    command: {entrypoint: [sleep, '60']}\n"
        "    cap_drop: [ALL]\n"
    )
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(
        json.dumps(
            {"format": "zlayer-observed", "format_version": 1, "runtime": runtime, "workloads": []}
        )
    )
    run = zlayer("plan", str(spec), "--observed", str(snapshot), "--format", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    warnings = [w["message"] for w in json.loads(run.stdout)["warnings"]]
    expected = ["cap_drop is not applied by the process runtime"] if warned else []
    assert warnings == expected, warnings

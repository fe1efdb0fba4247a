"""Canary values never leave: every way a spec can hold a sensitive value, changed in
every shape, through every output zlayer has.

Each canary is a unique string that no output may contain. The suite checks what a
reviewer, an operator or a local user can read: plans (text, JSON, Markdown, the
``--out`` file), apply's output, status, snapshots, the process runtime's records,
the daemon's journal and its API, and error messages. Where a test could pass by
doing nothing (no plan, no launch), it also checks that the change *is* reported
(``changed (sensitive)``) and that the workload *did* get the clear value.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from reconciler.cli.plan_render import render_markdown, render_text
from reconciler.desired import CompileInputs, DesiredState, as_running, compile_specs
from reconciler.fingerprint import canonical_json
from reconciler.observed import ObservedState, Workload
from reconciler.plan.planner import plan_changes
from reconciler.plan.serialize import plan_to_json
from reconciler.redact import SENSITIVE_NAME_RE, has_embedded_secret, has_userinfo, scrub_text
from reconciler.spec.load import SourceFile, load_sources
from tests.daemon_support import git
from tests.support import needs_root, wait_for, wait_for_async

pytest_plugins = ["tests.docker_support"]

KEY = b"canary-test-key"
ENV_VAR = "ZL_CANARY_FROM_ENV"


def canary(tag: str) -> str:
    return f"cnry{tag}Q7"


@dataclass(frozen=True)
class Form:
    """One way a spec holds a sensitive value ``{v}``: env entries, labels or args."""

    name: str
    env: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    args: list[str] | None = None
    secret: bool = False
    from_env: bool = False


FORMS = [
    Form("literal-password", env={"DB_PASSWORD": "{v}"}),
    Form("database-url", env={"DATABASE_URL": "postgres://app:{v}@db.internal/app"}),
    Form("slack-webhook", env={"SLACK_WEBHOOK_URL": "https://hooks.example.invalid/T1/{v}"}),
    Form("sentry-dsn", env={"SENTRY_DSN": "https://{v}@o1.example.invalid/2"}),
    Form("short-names", env={"DATABASE_PW": "{v}", "AWS_CREDS": "{v}", "GH_PAT": "{v}"}),
    Form("jwt", env={"JWT": "{v}"}),
    Form("userinfo-any-name", env={"UPSTREAM": "https://bot:{v}@git.example.invalid/x"}),
    Form("env-reference", env={"LOG_SINK": f"$E:{ENV_VAR}"}, from_env=True),
    Form("secret-reference", env={"ANYTHING": "$S:canary"}, secret=True),
    Form("secret-url-form", env={"ANYTHING_ELSE": "$secret://canary"}, secret=True),
    Form("secret-field", env={"DB": "$S:database/password"}, secret=True),
    Form("secret-of-a-service", env={"SVC": "$S:@web/canary/field"}, secret=True),
    Form("secret-of-an-environment", env={"ENV_ONE": "$S::prod/canary"}, secret=True),
    Form("secret-of-a-project", env={"PROJ": "$S:shop:prod/canary/f"}, secret=True),
    Form("secret-url-environment", env={"URL_ENV": "$secret://prod/canary/f"}, secret=True),
    Form("marked", env={"FAVOURITE": "{v}"}, labels={"zlayer.sensitive": "FAVOURITE"}),
    Form("label", labels={"api_token": "{v}"}),
    Form("args-equals", args=["--password={v}"]),
    Form("args-separate", args=["--auth-token", "{v}"]),
    Form("args-assignment", args=["DB_PASSWORD={v}"]),
    Form("inside-a-script", args=["-c", "mysql --password={v} -e 'select 1'"]),
    Form("inside-a-value", env={"JAVA_OPTS": "-Xmx1g -Ddb.password={v}"}),
    Form("query-token", env={"HOOK": "https://hooks.example.invalid/x?token={v}"}),
]


def _fill(value: str, v: str) -> str:
    return value.replace("{v}", v)


def service_yaml(env: dict[str, str], labels: dict[str, str], args: list[str]) -> str:
    """One service ``web`` (JSON is YAML), on the host network so it runs anywhere."""
    service: dict[str, Any] = {
        "image": {"name": "busybox"},
        "scale": {"mode": "fixed", "replicas": 1},
    }
    if env:
        service["env"] = env
    if labels:
        service["labels"] = labels
    if args:
        service["command"] = {"entrypoint": ["/bin/sh"], "args": args}
    return json.dumps({"version": "v1", "deployment": "cnry", "services": {"web": service}})


def compile_text(text: str, v: str) -> DesiredState:
    loaded = load_sources([SourceFile("app.yaml", text.encode())])
    assert loaded.ok, [p.render() for p in loaded.problems]
    # every reference form reads v (a field is taken out of its file by SecretsDir)
    inputs = CompileInputs(env={ENV_VAR: v}, secret_key=KEY, secret=lambda _key: v)
    desired, problems = compile_specs(loaded.specs, "rev", inputs)
    assert desired is not None, [p.render() for p in problems]
    return desired


def shapes(form: Form, old: str, new: str) -> dict[str, tuple[str, str]]:
    """Before/after spec texts for each shape of change of ``form``'s value."""
    env = {k: _fill(x, old) for k, x in (form.env or {}).items()}
    env_new = {k: _fill(x, new) for k, x in (form.env or {}).items()}
    labels = {k: _fill(x, old) for k, x in (form.labels or {}).items()}
    labels_new = {k: _fill(x, new) for k, x in (form.labels or {}).items()}
    args = [_fill(a, old) for a in form.args or []]
    args_new = [_fill(a, new) for a in form.args or []]
    plain_env = {"LOG_LEVEL": "debug"}
    out = {
        "added": (
            service_yaml(plain_env, {}, ["-c", "true"]),
            service_yaml({**plain_env, **env_new}, labels_new, args_new or ["-c", "true"]),
        ),
        "removed": (
            service_yaml({**plain_env, **env}, labels, args or ["-c", "true"]),
            service_yaml(plain_env, {}, ["-c", "true"]),
        ),
        "changed": (
            service_yaml(env, labels, args),
            service_yaml(env_new, labels_new, args_new),
        ),
        "whole-map-replaced": (
            service_yaml(plain_env, {"team": "a"}, ["-c", "true"]),
            service_yaml(env_new, labels_new, args_new),
        ),
    }
    if form.env and not form.labels:
        renamed = {f"{k}_2" if k != "JWT" else "JWT_2": x for k, x in env_new.items()}
        out["renamed"] = (service_yaml(env, {}, []), service_yaml(renamed, {}, []))
    return out


def plan_outputs(desired: DesiredState, observed: ObservedState) -> tuple[str, Any]:
    plan = plan_changes(desired, observed)
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    render_text(console, plan, "canary host")
    text = console.export_text()
    console.file.close()
    outputs = "\n".join(
        [plan_to_json(plan, "canary host"), render_markdown(plan, "canary host"), text]
    )
    return outputs, plan


@pytest.mark.parametrize("form", FORMS, ids=[f.name for f in FORMS])
def test_no_shape_of_change_shows_a_value(form: Form) -> None:
    old, new = canary(f"{form.name}-old"), canary(f"{form.name}-new")
    for shape, (before_text, after_text) in shapes(form, old, new).items():
        if form.from_env or form.secret:
            # references: the value comes from outside, one per compile
            before, after = compile_text(before_text, old), compile_text(after_text, new)
        else:
            before, after = compile_text(before_text, "-"), compile_text(after_text, "-")
        running = as_running(before)
        outputs, plan = plan_outputs(after, running)
        stored = "\n".join(
            [running.to_json(), *(canonical_json(s.config) for s in after.services.values())]
        )
        for value in (old, new):
            assert value not in outputs, f"{shape}: {value} in a plan"
            assert value not in stored, f"{shape}: {value} in a config or snapshot"
        changes = [c for a in plan.actions for c in a.changes]
        assert any(c.sensitive for c in changes), f"{shape}: no sensitive change reported"
        assert "(sensitive)" in outputs
        if shape != "removed":  # the launch step still gets the clear value
            (service,) = after.services.values()
            assert new in canonical_json(service.launch_config())


def test_a_recorded_config_in_plain_text_is_redacted_in_every_shape() -> None:
    """A snapshot (or an older version's label) holding sensitive values in plain
    text, some not even strings: no plan, snapshot or API view shows them."""
    old, new = canary("legacy-old"), canary("legacy-new")
    after = compile_text(service_yaml({"DB_PASSWORD": new, "LOG_LEVEL": "x"}, {}, []), "-")
    recorded = {
        "image": "busybox",
        "env": {"DB_PASSWORD": old, "API_TOKEN": {"nested": old}, "NUMBER_KEY": 7},
        "labels": {"auth": old},
        "command": {"args": ["--password", old, f"https://u:{old}@h/"]},
    }
    workload = Workload(
        deployment="cnry", service="web", replica=1, fingerprint="sha256:legacy", status="running"
    )
    observed = ObservedState(
        runtime="docker", workloads=(workload,), configs={"sha256:legacy": recorded}
    )
    outputs, plan = plan_outputs(after, observed)
    assert old not in outputs and new not in outputs
    assert old not in observed.to_json()
    assert old not in str(observed.configs)
    described = {(c.path, c.kind, c.sensitive) for c in plan.actions[0].changes}
    assert ("env.DB_PASSWORD", "changed", True) in described
    assert ("env.API_TOKEN", "removed", True) in described
    assert ("labels.auth", "removed", True) in described
    assert all(c.before is None and c.after is None for c in plan.actions[0].changes if c.sensitive)


def test_every_name_the_audit_found_is_sensitive() -> None:
    for name in ("DATABASE_PW", "AWS_CREDS", "GH_PAT", "JWT", "SENTRY_DSN", "SLACK_WEBHOOK_URL"):
        assert SENSITIVE_NAME_RE.search(name), name
    for name in ("PATH", "LOG_LEVEL", "HOSTNAME", "SPINNER", "PATTERN"):
        assert not SENSITIVE_NAME_RE.search(name), name
    assert has_userinfo("postgres://app:pw@db/app")
    assert not has_userinfo("https://example.invalid/path@v2")
    # a shell reference or a plain setting inside a script is no secret
    assert not has_embedded_secret('mysql --password="$DB_PASSWORD" --user=app')
    assert not has_embedded_secret("exec env LOG_LEVEL=debug app --port=8080")


def test_scrub_text_cuts_every_value_longest_first() -> None:
    assert scrub_text("a hunter2hunter2 b hunter2", ["hunter2", "hunter2hunter2"]) == (
        "a *** b ***"
    )
    assert scrub_text("abc", ["ab"]) == "abc"  # too short to cut from free text


# --- the command line, for real --------------------------------------------------------


def zlayer(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plan_against_a_ref_reproduction_from_the_audit(tmp_path: Path) -> None:
    """The audit's reproduction: a commit with LOG_LEVEL only, then a working tree
    whose env shares no key with it (a literal password and a ``$E:`` token)."""
    literal, token = canary("ref-literal"), canary("ref-token")
    specs = tmp_path / "specs"
    specs.mkdir()
    git(tmp_path, "init", "-q", "-b", "main")
    (specs / "app.yaml").write_text(service_yaml({"LOG_LEVEL": "debug"}, {}, []))
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    (specs / "app.yaml").write_text(
        service_yaml({"DB_PASSWORD": literal, "API_TOKEN": "$E:API_TOKEN"}, {}, [])
    )
    seen = []
    for fmt in ("text", "json", "markdown"):
        run = zlayer(
            tmp_path, "plan", "specs", "--against-ref", "HEAD", "--format", fmt,
            "--out", "plan.json", env={"API_TOKEN": token},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        seen += [run.stdout, run.stderr, (tmp_path / "plan.json").read_text()]
    everything = "\n".join(seen)
    assert literal not in everything and token not in everything
    changes = json.loads(seen[3])["actions"][0]["changes"]
    assert {"path": "env.DB_PASSWORD", "kind": "added", "sensitive": True} in changes
    assert {"path": "env.API_TOKEN", "kind": "added", "sensitive": True} in changes
    assert {"path": "env.LOG_LEVEL", "kind": "removed", "before": "debug"} in changes


def test_a_changed_literal_password_shows_against_a_ref(tmp_path: Path) -> None:
    """Against a ref both sides compile here: a password changed in the pull request
    is reported as changed (without its values), not assumed unchanged."""
    one, two = canary("ref-one"), canary("ref-two")
    specs = tmp_path / "specs"
    specs.mkdir()
    git(tmp_path, "init", "-q", "-b", "main")
    (specs / "app.yaml").write_text(service_yaml({"DB_PASSWORD": one}, {}, []))
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    (specs / "app.yaml").write_text(service_yaml({"DB_PASSWORD": two}, {}, []))
    run = zlayer(tmp_path, "plan", "specs", "--against-ref", "HEAD", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert one not in run.stdout and two not in run.stdout
    (action,) = json.loads(run.stdout)["actions"]
    assert action["changes"] == [{"path": "env.DB_PASSWORD", "kind": "changed", "sensitive": True}]
    same = zlayer(tmp_path, "plan", "specs", "--against-ref", "HEAD", "--format", "json")
    git(tmp_path, "commit", "-q", "-am", "two")
    after = zlayer(tmp_path, "plan", "specs", "--against-ref", "HEAD", "--format", "json")
    assert json.loads(same.stdout)["changes_present"]
    assert not json.loads(after.stdout)["changes_present"]


# --- a real host: the process runtime ----------------------------------------------------


@pytest.fixture
def process_host(tmp_path: Path) -> Iterator[dict[str, str]]:
    from tests.process_support import kill_recorded

    needs_root("the process runtime's records and launches")
    state = tmp_path / "state"
    env = {
        "ZLAYER_STATE_DIR": str(state),
        "ZLAYER_RUNTIME": "process",
        "ZLAYER_CONFIG": str(tmp_path / "none.toml"),
    }
    (tmp_path / "none.toml").write_text("")
    try:
        yield env
    finally:
        kill_recorded(state)


def host_spec(seen: Path, values: dict[str, str]) -> str:
    """A replica that writes what it got (env and an argument) to ``seen``, then waits."""
    script = (
        f'printf "%s|%s|%s|%s" "$DB_PASSWORD" "$LOG_SINK" "$URL" "$1" > {seen}; exec sleep 3600'
    )
    service = {
        "image": {"name": "busybox"},
        "network_mode": "host",
        "stop_grace_period": "1s",
        "scale": {"mode": "fixed", "replicas": 1},
        "env": {
            "DB_PASSWORD": values["password"],
            "LOG_SINK": f"$E:{ENV_VAR}",
            "URL": f"https://bot:{values['url']}@git.example.invalid/x",
        },
        "labels": {"api_token": values["label"]},
        "command": {
            "entrypoint": ["/bin/sh"],
            "args": ["-c", script, "sh", f"--password={values['arg']}"],
        },
    }
    return json.dumps({"version": "v1", "deployment": "cnryhost", "services": {"web": service}})


def _files_text(state: Path) -> str:
    """Everything zlayer stored, but the launch files (0600, the launch step itself)."""
    parts = []
    for path in sorted(state.rglob("*")):
        if path.is_file() and path.name != "launch.json":
            parts.append(path.read_bytes().decode(errors="replace"))
    return "\n".join(parts)


@pytest.mark.slow
def test_apply_records_snapshots_and_status_on_the_process_runtime(
    tmp_path: Path, process_host: dict[str, str]
) -> None:
    state = Path(process_host["ZLAYER_STATE_DIR"])
    specs, seen = tmp_path / "specs", tmp_path / "seen.txt"
    specs.mkdir()
    for round_ in ("one", "two"):
        values = {
            k: canary(f"host-{round_}-{k}") for k in ("password", "url", "label", "arg", "env")
        }
        env = {**process_host, ENV_VAR: values["env"]}
        (specs / "app.yaml").write_text(host_spec(seen, values))
        planned = zlayer(
            tmp_path, "plan", "specs", "--runtime", "process", "--format", "json", env=env
        )
        assert planned.returncode == 0, planned.stderr
        if round_ == "two":
            (action,) = json.loads(planned.stdout)["actions"]
            assert action["kind"] == "replace"
            assert all(c.get("sensitive") for c in action["changes"]), action
        seen.unlink(missing_ok=True)
        applied = zlayer(tmp_path, "apply", "specs", "--auto-approve", env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        outputs = [planned.stdout, planned.stderr, applied.stdout, applied.stderr]
        for fmt in ("text", "markdown", "json"):
            outputs.append(
                zlayer(
                    tmp_path, "plan", "specs", "--runtime", "process", "--format", fmt, env=env
                ).stdout
            )
        outputs.append(zlayer(tmp_path, "status", env=env).stdout)
        snapshot = zlayer(tmp_path, "observe", "--runtime", "process", env=env)
        assert snapshot.returncode == 0, snapshot.stderr
        outputs += [snapshot.stdout, _files_text(state)]
        everything = "\n".join(outputs)
        for name, value in values.items():
            assert value not in everything, f"{round_}: {name} leaked"
        # the launch got every clear value
        got = wait_for(lambda: seen.exists() and seen.read_text(), "the replica to write")
        assert got == "|".join(
            [values["password"], values["env"], f"https://bot:{values['url']}@git.example.invalid/x",
             f"--password={values['arg']}"]
        )  # fmt: skip
        assert "No changes" in outputs[4]

    # The replica exits under delete_on_exit: the record that keeps it removed holds
    # its config (redacted like the runtime's) in the state directory and snapshots.
    from tests.process_support import kill_recorded

    document = json.loads(host_spec(seen, values))
    document["services"]["web"]["lifecycle"] = {"delete_on_exit": True}
    (specs / "app.yaml").write_text(json.dumps(document))
    assert kill_recorded(state)
    removed = zlayer(tmp_path, "apply", "specs", "--auto-approve", env=env)
    assert "remove:cnryhost/web/1" in removed.stdout, removed.stdout + removed.stderr
    record = (state / "removed-on-exit.json").read_text()
    assert "DB_PASSWORD" in record  # the config is there, its values are not
    outputs = [removed.stdout, removed.stderr, _files_text(state)]
    outputs.append(zlayer(tmp_path, "status", "--format", "json", env=env).stdout)
    outputs.append(zlayer(tmp_path, "observe", "--runtime", "process", env=env).stdout)
    outputs.append(
        zlayer(
            tmp_path, "plan", "specs", "--runtime", "process", "--format", "json", env=env
        ).stdout
    )
    everything = "\n".join(outputs)
    assert "removed_on_exit" in everything
    for name, value in values.items():
        assert value not in everything, f"removed on exit: {name} leaked"


def test_an_error_quoting_a_clear_value_is_scrubbed(
    tmp_path: Path, process_host: dict[str, str]
) -> None:
    """A start failure whose message quotes the command (here a path with userinfo)."""
    value = canary("error-path")
    service = {
        "image": {"name": "busybox"},
        "network_mode": "host",
        "scale": {"mode": "fixed", "replicas": 1},
        "command": {"entrypoint": [f"/nonexistent/https://u:{value}@h/x"]},
    }
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "app.yaml").write_text(
        json.dumps({"version": "v1", "deployment": "cnryerr", "services": {"web": service}})
    )
    applied = zlayer(
        tmp_path, "apply", "specs", "--auto-approve", "--format", "json", env=process_host
    )
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert value not in applied.stdout + applied.stderr
    assert "***" in applied.stdout, applied.stdout
    # the monitor's record of the failed start, and status reading it
    assert value not in _files_text(Path(process_host["ZLAYER_STATE_DIR"]))
    status = zlayer(tmp_path, "status", env=process_host)
    assert value not in status.stdout + status.stderr


# --- the daemon: journal and API -------------------------------------------------------


def test_the_daemon_journal_and_api_hold_no_value(tmp_path: Path) -> None:
    from tests.daemon_support import Daemon
    from tests.process_support import kill_recorded

    needs_root("the daemon on the process runtime")
    values = {k: canary(f"daemon-{k}") for k in ("password", "url", "label", "arg", "env")}
    seen = tmp_path / "seen.txt"
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "app.yaml").write_text(host_spec(seen, values))
    env = {**os.environ, "NO_COLOR": "1", ENV_VAR: values["env"]}
    env.pop("ZLAYER_RUNTIME", None)
    env.pop("ZLAYER_STATE_DIR", None)
    daemon = Daemon(tmp_path, "process", env)
    daemon.configure()
    try:
        daemon.start("--dir", str(specs))
        daemon.wait_reconciles(1)
        answers = [
            json.dumps(daemon.get(path)[1])
            for path in ("/v1/status", "/v1/observed", "/v1/plan", "/v1/jobs")
        ]
        history = daemon.zlayer("history", "--format", "json").stdout
        events = daemon.zlayer("events", "--format", "json").stdout
    finally:
        daemon.close()
        kill_recorded(daemon.state)
    with sqlite3.connect(daemon.state / "journal.db") as db:
        tables = ("reconciles", "events", "runs", "revisions", "crashes")
        rows = "\n".join(str(r) for t in tables for r in db.execute(f"SELECT * FROM {t}"))
    everything = "\n".join([*answers, history, events, rows, daemon.output()])
    for name, value in values.items():
        assert value not in everything, f"{name} leaked"
    assert seen.read_text().startswith(values["password"])


# --- a real host: Docker ------------------------------------------------------------------


async def test_docker_labels_and_observed_configs_hold_no_value(
    docker_url: str, test_image: str, deployment_name: str
) -> None:
    """The engine's create call is the launch step: the container's Env has the clear
    values. Every ``zlayer.*`` label (readable by anyone who can inspect it) and every
    observed config holds placeholders only."""
    from reconciler.drivers.docker import DockerDriver
    from tests.docker_support import engine_request

    values = {k: canary(f"docker-{k}") for k in ("password", "url", "arg", "secret")}
    text = json.dumps(
        {
            "version": "v1",
            "deployment": deployment_name,
            "services": {
                "web": {
                    "image": {"name": test_image, "pull_policy": "never"},
                    "scale": {"mode": "fixed", "replicas": 1},
                    "env": {
                        "DB_PASSWORD": values["password"],
                        "URL": f"https://bot:{values['url']}@git.example.invalid/x",
                        "TOKEN": "$S:token",
                    },
                    "command": {
                        "entrypoint": ["sh", "-c", 'echo "$DB_PASSWORD $TOKEN $1"', "sh"],
                        "args": [f"--password={values['arg']}"],
                    },
                }
            },
        }
    )
    loaded = load_sources([SourceFile("app.yaml", text.encode())])
    assert loaded.ok, [p.render() for p in loaded.problems]
    inputs = CompileInputs(secret_key=KEY, secret={"token": values["secret"]}.get)
    desired, problems = compile_specs(loaded.specs, "rev", inputs)
    assert desired is not None, problems
    (service,) = desired.services.values()
    async with DockerDriver() as driver:
        await driver.create(service, 1, "rev")
        observed = await driver.observe([deployment_name])
        target = service.workload_id(1)

        async def output() -> list[str]:
            return [line async for line in driver.logs(target)]

        out = await wait_for_async(output, "the replica's output", 20, interval=0.1)
    label = json.dumps({"label": [f"zlayer.deployment={deployment_name}"]})
    _, (summary,) = engine_request(
        docker_url, "GET", "/containers/json", {"all": "1", "filters": label}
    )
    _, inspected = engine_request(docker_url, "GET", f"/containers/{summary['Id']}/json")
    zlayer_labels = {
        k: v for k, v in inspected["Config"]["Labels"].items() if k.startswith("zlayer.")
    }
    stored = json.dumps([zlayer_labels, observed.configs, observed.to_json()])
    for name, value in values.items():
        assert value not in stored, f"{name} leaked into labels or observed configs"
    assert f"DB_PASSWORD={values['password']}" in inspected["Config"]["Env"]
    assert out == [f"{values['password']} {values['secret']} --password={values['arg']}"]


def test_free_text_is_scrubbed_of_config_values_and_their_secret_parts() -> None:
    """Messages quote pieces: a probe's URL with the replica's address in place of
    localhost, an init step's command line, the password of a DATABASE_URL."""
    url_pw, step_token, db_pw = canary("probe-pw"), canary("step-token"), canary("db-pw")
    text = json.dumps(
        {
            "version": "v1",
            "deployment": "cnry",
            "services": {
                "web": {
                    "image": {"name": "busybox"},
                    "env": {"DATABASE_URL": f"postgres://app:{db_pw}@db/app"},
                    "health": {
                        "check": {"type": "http", "url": f"http://u:{url_pw}@localhost:8080/"}
                    },
                    "init": {
                        "steps": [
                            {
                                "id": "w",
                                "uses": "init.run",
                                "with": {"command": f"curl --token={step_token} http://x/"},
                            }
                        ]
                    },
                }
            },
        }
    )
    scrub = compile_text(text, "-").scrubber()
    message = (
        f"GET http://u:{url_pw}@10.1.2.3:8080/ failed; curl --token={step_token} exited 1; "
        f"password authentication failed for app:{db_pw}"
    )
    scrubbed = scrub(message)
    for value in (url_pw, step_token, db_pw):
        assert value not in scrubbed
    assert scrubbed.startswith("GET http://***@10.1.2.3:8080/ failed")

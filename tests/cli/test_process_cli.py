"""The README's main job on a host with no Docker engine: ``zlayer apply
specs/hello.yaml`` picks the process runtime, hello runs (as root, in network
namespaces), ``status``/``logs`` show it, a re-apply changes nothing, and
``destroy`` leaves nothing behind — checked on the host, not in zlayer's records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.drivers.process import firewall
from reconciler.drivers.process import host as proc
from tests.conftest import REPO
from tests.process_support import kill_recorded, remove_networks
from tests.support import needs_root, wait_for

pytest_plugins = ["tests.process_support"]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a host without an engine, with its own state directory;
    the processes and networks of every deployment a test made there are removed
    afterwards, pass or fail."""
    needs_root("the README main job (network namespaces)")
    state = tmp_path / "state"
    env = {
        **os.environ,
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
        "ZLAYER_STATE_DIR": str(state),
        "ZLAYER_PUBLISH_ADDRESS": "127.0.0.1",  # the proxy listens on loopback only
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.pop("ZLAYER_RUNTIME", None)
    try:
        yield env
    finally:
        made = {p.name for p in (state / "process" / "deployments").glob("*")}
        kill_recorded(state)
        for deployment in sorted(made | {"hello"}):  # also when a test failed midway
            remove_networks(deployment)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user reaches (pytest's own are root's alone), removed after."""
    path = Path(tempfile.mkdtemp(prefix="zlayer-test-open-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def zlayer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_readme_main_job_runs_hello_as_processes(host: dict[str, str]) -> None:
    from reconciler.drivers.process import netns

    run = zlayer(host, "apply", "specs/hello.yaml", "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Runtime: process (auto: no Docker engine at" in run.stderr
    assert "Apply complete: 5 succeeded" in run.stdout
    assert "+ create     hello/(network)  new deployment network" in run.stdout
    # The route is a resource of the plan.
    assert "+ route      hello/web:http  new route: http :8080 → 1 replica" in run.stdout

    record = proc.read_json(
        Path(host["ZLAYER_STATE_DIR"]) / "process/deployments/hello/services/web/1/record.json"
    )
    assert record is not None
    address = record["network"]["address"]
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as answer:
        assert answer.status == 200
    # From the host, through the managed proxy, with no warning in the plan.
    assert "hello/web/1 in rotation on :8080" in run.stdout, run.stdout
    assert "warning" not in run.stdout.lower(), run.stdout
    with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=5) as answer:
        assert answer.status == 200

    def worker_logs() -> str:
        return zlayer(host, "logs", "worker").stdout

    wait_for(
        lambda: "web answered 200" in worker_logs(),
        lambda: f"the worker to say 'web answered 200'; its logs:\n{worker_logs()}",
        30,
        interval=0.5,
    )
    status = zlayer(host, "status").stdout.splitlines()
    assert sum(" running " in line for line in status) == 2
    assert any(line.split()[:4] == ["hello", "report", "-", "registered"] for line in status)

    again = zlayer(host, "apply", "specs/hello.yaml", "--auto-approve")
    assert "No changes." in again.stdout, again.stdout

    gone = zlayer(host, "destroy", "hello", "--auto-approve")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "proxy stopped: no routed endpoint left" in gone.stdout, gone.stdout
    assert not (Path(host["ZLAYER_STATE_DIR"]) / "proxy/routes/hello.json").exists()
    assert "No workloads" in zlayer(host, "status").stdout
    found = netns.inventory()
    assert "hello" not in found.bridges
    assert not [p for p in found.ports if p.startswith("hello/")]
    assert not [n for n in found.namespaces if n.startswith("zlayer-hello-")]
    assert not list(Path("/etc/netns").glob("zlayer-hello-*"))
    assert not [rule for rule in firewall.forward_rules() if "zlayer:hello" in rule]
    assert not list(Path(host["ZLAYER_STATE_DIR"]).glob("process/deployments/hello/**/*.json"))


@pytest.mark.slow
def test_apply_follows_on_panic_shutdown_and_leaves_a_crashed_replica_stopped(
    host: dict[str, str], tmp_path: Path
) -> None:
    """``errors.on_panic: shutdown`` without the daemon: the replica that exited is not
    restarted by ``plan`` or ``apply``, which say why; the daemon does the same."""
    trigger = tmp_path / "crash-now"
    spec = tmp_path / "panics.yaml"
    spec.write_text(
        "version: v1\ndeployment: panics\nservices:\n"
        "  held:\n"
        "    image: {name: busybox}\n"
        "    command:\n"
        f"      entrypoint: [sh, -c, 'while [ ! -e {trigger} ]; do sleep 0.1; done; exit 3']\n"
        "    errors: {on_panic: {action: shutdown}}\n"
    )
    first = zlayer(host, "apply", str(spec), "--runtime", "process", "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    trigger.touch()

    def exited() -> bool:
        status = zlayer(host, "status", "--runtime", "process").stdout
        rows = [line.split() for line in status.splitlines()]
        return ["panics", "held", "1", "exited", "(3)"] in [row[:5] for row in rows]

    wait_for(exited, "held/1 to exit", 60)
    why = "exited with status 3; not restarted (errors.on_panic: shutdown)"
    plan = zlayer(host, "plan", str(spec), "--runtime", "process", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr  # nothing to do, by policy
    assert why in plan.stdout, plan.stdout
    again = zlayer(host, "apply", str(spec), "--runtime", "process", "--auto-approve")
    assert again.returncode == 0 and "No changes." in again.stdout, again.stdout
    assert why in again.stdout, again.stdout
    assert exited()  # still stopped


@pytest.mark.slow
def test_every_zlayer_secret_reference_form_reaches_the_process(
    host: dict[str, str], tmp_path: Path
) -> None:
    """ZLayer's ``$S:`` and ``$secret://`` forms, each read from its file of the
    secrets directory (a field out of a JSON object), reach the running process; a
    missing field is an error at its position and nothing runs."""
    secrets = tmp_path / "secrets"
    files = {
        "plain": "p-1",
        "database": '{"password": "db-2", "port": 5432, "tls": true}',
        "services/refs/app/token": "svc-3",
        "env/prod/api-key": "env-4",
        "env/prod/conn": '{"host": "h-5"}',
        "projects/shop/env/prod/key": "proj-6",
    }
    for name, value in files.items():
        (secrets / name).parent.mkdir(parents=True, exist_ok=True)
        (secrets / name).write_text(value + "\n")
    refs = {
        "PLAIN": "$S:plain",
        "FIELD": "$S:database/password",
        "PORT": "$S:database/port",
        "TLS": "$S:database/tls",
        "SERVICE": "$S:@app/token",
        "ENVIRONMENT": "$S::prod/api-key",
        "URL_FORM": "$secret://prod/conn/host",
        "PROJECT": "$S:shop:prod/key",
    }
    out = tmp_path / "env.out"
    names = " ".join(f"{k}=${k}" for k in refs)
    env_lines = "".join(f"      {k}: {json.dumps(v)}\n" for k, v in refs.items())
    spec = tmp_path / "refs.yaml"
    spec.write_text(
        "version: v1\ndeployment: refs\nservices:\n"
        "  app:\n"
        "    image: {name: busybox}\n"
        f"    command: {{entrypoint: [sh, -c, 'echo \"{names}\" > {out}; exec sleep 600']}}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        f"    env:\n{env_lines}"
    )
    args = ("--runtime", "process", "--secrets-dir", str(secrets))
    valid = zlayer(host, "validate", str(spec))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    run = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    wait_for(out.exists, f"the process to write {out}", 60)
    wait_for(lambda: out.read_text().endswith("\n"), f"{out} to be written", 30)
    assert out.read_text().split() == [
        "PLAIN=p-1",
        "FIELD=db-2",
        "PORT=5432",
        "TLS=true",
        "SERVICE=svc-3",
        "ENVIRONMENT=env-4",
        "URL_FORM=h-5",
        "PROJECT=proj-6",
    ]
    for value in ("p-1", "db-2", "svc-3", "env-4", "h-5", "proj-6"):
        assert value not in run.stdout + run.stderr

    spec.write_text(spec.read_text().replace("$S:database/password", "$S:database/pw"))
    missing = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert f"{spec}:10:" in missing.stderr and "services.app.env.FIELD" in missing.stderr
    assert "secret database has no field 'pw'" in missing.stderr, missing.stderr
    status = zlayer(host, "status", "--runtime", "process").stdout
    assert [r.split()[:4] for r in status.splitlines() if r.startswith("refs ")] == [
        ["refs", "app", "1", "running"]
    ]  # the refused apply touched nothing


@pytest.mark.slow
def test_workdir_user_and_stop_signal_reach_the_process(
    host: dict[str, str], tmp_path: Path, open_dir: Path
) -> None:
    """``command.workdir``, ``user`` and ``stop_signal`` set in a spec: the process
    starts in that directory as that user, and ``destroy`` stops it with that signal."""
    work = open_dir
    out = work / "out"
    script = (
        f"pwd > {out}; id -u >> {out}; trap 'echo got-INT >> {out}; exit 0' INT; "
        "while :; do sleep 0.1; done"
    )
    spec = tmp_path / "who.yaml"
    spec.write_text(
        "version: v1\ndeployment: who\nservices:\n"
        "  app:\n"
        "    image: {name: busybox}\n"
        f"    command: {{entrypoint: [sh, -c, {json.dumps(script)}], workdir: {work}}}\n"
        "    user: '65534'\n"
        "    stop_signal: SIGINT\n"
        "    scale: {mode: fixed, replicas: 1}\n"
    )
    run = zlayer(host, "apply", str(spec), "--runtime", "process", "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    wait_for(lambda: out.exists() and len(out.read_text().split()) >= 2, "the output", 60)
    assert out.read_text().split()[:2] == [str(work), "65534"]
    gone = zlayer(host, "destroy", "who", "--runtime", "process", "--auto-approve")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert out.read_text().split() == [str(work), "65534", "got-INT"]


@pytest.mark.slow
def test_a_replica_that_exits_0_completed_and_is_not_restarted(
    host: dict[str, str], tmp_path: Path
) -> None:
    """ZLayer's semantics: exit status 0 is ``completed`` — shown so by ``status``, a
    note in ``plan`` and ``apply``, and not restarted; exit status 3 is a crash that
    ``apply`` restarts."""
    spec = tmp_path / "done.yaml"
    spec.write_text(
        "version: v1\ndeployment: done\nservices:\n"
        "  finishes:\n"
        "    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'exit 0']}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, check: {type: command, command: 'true'}}\n"
        "  fails:\n"
        "    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, 'sleep 1; exit 3']}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    health: {start_grace: 0s, check: {type: command, command: 'true'}}\n"
    )
    args = ("--runtime", "process")
    first = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert first.returncode in (0, 1), first.stdout + first.stderr  # may see fails exit

    def rows() -> dict[str, list[str]]:
        status = zlayer(host, "status", *args).stdout
        return {r.split()[1]: r.split() for r in status.splitlines() if r.startswith("done ")}

    wait_for(
        lambda: (
            rows().get("finishes", [""] * 4)[3] == "completed"
            and rows().get("fails", [""] * 4)[3:5] == ["exited", "(3)"]
        ),
        lambda: f"finishes completed and fails exited (3); status: {rows()}",
        60,
    )
    plan = zlayer(host, "plan", str(spec), *args)
    assert "done/finishes/1: completed (exited with status 0); not restarted" in " ".join(
        plan.stdout.split()
    ), plan.stdout
    assert "restart    done/fails/1  exited with status 3" in plan.stdout, plan.stdout
    again = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert "restart:done/fails/1" in again.stdout, again.stdout
    acted = [line for line in again.stdout.splitlines() if "finishes" in line]
    assert acted == ["note: done/finishes/1: completed (exited with status 0); not restarted"], (
        again.stdout
    )
    assert rows()["finishes"][3] == "completed"  # still, after the apply


@pytest.mark.slow
def test_status_shows_zlayer_health_verdict_and_speaks_json(
    host: dict[str, str], tmp_path: Path
) -> None:
    """``status`` shows the runtime's health ("none" on the process runtime) until
    asked for zlayer's: ``--probe SPECS`` runs the specs' checks once, per replica,
    in text and in ``--format json``."""

    def spec_text(good: str, bad: str) -> str:
        return "version: v1\ndeployment: probed\nservices:\n" + "".join(
            f"  {name}:\n"
            "    image: {name: busybox}\n"
            "    command: {entrypoint: [sleep, '600']}\n"
            "    scale: {mode: fixed, replicas: 1}\n"
            f"    health: {{start_grace: 0s, check: {{type: command, command: '{check}'}}}}\n"
            for name, check in (("good", good), ("bad", bad))
        )

    spec = tmp_path / "health.yaml"
    spec.write_text(spec_text("true", "true"))
    args = ("--runtime", "process")
    run = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    plain = zlayer(host, "status", *args)
    assert "health: the runtime's own" in plain.stdout, plain.stdout
    rows = [r.split() for r in plain.stdout.splitlines() if r.startswith("probed ")]
    assert {r[4] for r in rows} == {"none"}  # the process runtime has no checks
    # the same services, bad's check now failing (checks are no part of the config)
    canary = "zl-probe-canary-7d1f"  # a secret-looking literal in the check: never shown
    spec.write_text(spec_text("true", f"PASSWORD={canary} exit 7"))
    probed = zlayer(host, "status", *args, "--probe", str(spec))
    assert probed.returncode == 0, probed.stdout + probed.stderr
    health = {r.split()[1]: r.split()[4] for r in probed.stdout.splitlines()
              if r.startswith("probed ")}  # fmt: skip
    assert health == {"good": "healthy", "bad": "unhealthy"}, probed.stdout
    (why,) = [line for line in probed.stdout.splitlines() if line.startswith("probed/bad/1:")]
    assert why.endswith(": exit status 7") and canary not in probed.stdout, probed.stdout
    assert "health: the specs' checks, run once now (--probe)" in probed.stdout
    document = json.loads(
        zlayer(host, "status", *args, "--probe", str(spec), "--format", "json").stdout
    )
    assert document["health_source"] == "probe"
    by_service = {w["service"]: w for w in document["workloads"]}
    assert by_service["good"]["health"] == "healthy"
    assert by_service["bad"]["health"] == "unhealthy"
    assert "exit status 7" in by_service["bad"]["health_problem"]
    assert canary not in json.dumps(document)
    assert by_service["bad"]["runtime_health"] == "none"
    assert by_service["good"]["state"] == "running"


@pytest.mark.slow
def test_a_replica_stopped_by_a_reboot_is_started_again_without_a_crash(
    host: dict[str, str], tmp_path: Path
) -> None:
    """What a reboot leaves: the replica's processes gone, its record from another
    boot. It is ``stopped by reboot`` — restarted by the plan with that reason, no
    crash — even though its workload would have exited 0 on the way down."""
    spec = tmp_path / "boot.yaml"
    spec.write_text(
        "version: v1\ndeployment: boot\nservices:\n"
        "  app:\n"
        "    image: {name: busybox}\n"
        "    command: {entrypoint: [sh, -c, \"trap 'exit 0' TERM; sleep 600 & wait\"]}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
    )
    args = ("--runtime", "process")
    state = Path(host["ZLAYER_STATE_DIR"])
    run = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    (started,) = state.glob("process/deployments/boot/services/app/1/run.json")
    # the host goes down: every process with it, and the boot id changes
    assert kill_recorded(state)
    recorded = json.loads(started.read_text())
    started.write_text(json.dumps({**recorded, "boot_id": "an-earlier-boot"}))
    status = zlayer(host, "status", *args).stdout
    rows = [r for r in status.splitlines() if r.startswith("boot ")]
    assert len(rows) == 1 and "stopped by reboot" in rows[0], status
    plan = zlayer(host, "plan", str(spec), *args)
    assert "↻ restart    boot/app/1  stopped by a reboot of the host" in plan.stdout, plan.stdout
    again = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert again.returncode == 0, again.stdout + again.stderr
    rows = [r.split() for r in zlayer(host, "status", *args).stdout.splitlines()
            if r.startswith("boot ")]  # fmt: skip
    assert [r[3] for r in rows] == ["running"], rows


@pytest.mark.slow
def test_a_replica_that_exits_is_removed_not_restarted_under_delete_on_exit(
    host: dict[str, str], tmp_path: Path
) -> None:
    """``lifecycle.delete_on_exit`` on real processes: the replica that exits (3) is
    removed by the next apply — its record and network namespace gone from the host —
    and stays removed, in ``status``, ``plan``, and a snapshot planned offline, until
    its config changes; then it is created again with the reason."""
    trigger = tmp_path / "exit-now"
    spec = tmp_path / "once.yaml"

    def write(value: str) -> None:
        spec.write_text(
            "version: v1\ndeployment: once\nservices:\n"
            "  job:\n"
            "    image: {name: busybox}\n"
            "    command:\n"
            f"      entrypoint: [sh, -c, 'while [ ! -e {trigger} ]; do sleep 0.1; done; exit 3']\n"
            f"    env: {{ROUND: '{value}'}}\n"
            "    scale: {mode: fixed, replicas: 1}\n"
            "    lifecycle: {delete_on_exit: true}\n"
        )

    write("1")
    args = ("--runtime", "process")
    state = Path(host["ZLAYER_STATE_DIR"])
    replica_dir = state / "process" / "deployments" / "once" / "services" / "job" / "1"
    first = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    assert replica_dir.is_dir()
    trigger.touch()

    def rows() -> list[list[str]]:
        status = zlayer(host, "status", *args).stdout
        return [r.split() for r in status.splitlines() if r.startswith("once ")]

    wait_for(lambda: [r[3:5] for r in rows()] == [["exited", "(3)"]], lambda: str(rows()), 60)
    why = "exited with status 3; removed, not restarted (lifecycle.delete_on_exit)"
    plan = zlayer(host, "plan", str(spec), *args, "--detailed-exitcode")
    assert plan.returncode == 2 and why in plan.stdout, plan.stdout + plan.stderr
    removed = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert removed.returncode == 0 and "remove:once/job/1" in removed.stdout, removed.stdout
    assert not replica_dir.exists()  # gone from the host, not just from the listing
    from reconciler.drivers.process import netns

    assert "zlayer-once-job-1" not in netns.inventory().namespaces

    status = zlayer(host, "status", *args).stdout
    assert "once/job/1: exited with status 3; removed at " in status, status
    kept = "once/job/1: exited with status 3 and was removed at "
    for run in (
        zlayer(host, "plan", str(spec), *args, "--detailed-exitcode"),
        zlayer(host, "apply", str(spec), *args, "--auto-approve"),
    ):
        assert run.returncode == 0 and kept in " ".join(run.stdout.split()), run.stdout
    assert not replica_dir.exists()  # the apply made nothing
    snapshot = tmp_path / "host.json"
    assert zlayer(host, "observe", *args, "--out", str(snapshot)).returncode == 0
    offline = zlayer(host, "plan", str(spec), "--observed", str(snapshot), "--detailed-exitcode")
    assert offline.returncode == 0 and kept in " ".join(offline.stdout.split()), offline.stdout

    trigger.unlink()
    write("2")
    plan = zlayer(host, "plan", str(spec), *args)
    assert "its config changed: env.ROUND 1 → 2" in " ".join(plan.stdout.split()), plan.stdout
    again = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r[3] for r in rows()] == ["running"], rows()
    assert "removed at" not in zlayer(host, "status", *args).stdout


@pytest.mark.slow
def test_restart_policy_always_restarts_a_completion_and_no_keeps_a_failure(
    host: dict[str, str], tmp_path: Path
) -> None:
    """``restart_policy`` on real processes: under ``always`` a replica that exited 0
    is started again by apply (it runs a second time); under ``no`` one that exited
    3 stays exited, and ``plan`` and ``apply`` say why."""
    runs = {name: tmp_path / f"{name}.runs" for name in ("again", "never")}
    spec = tmp_path / "policy.yaml"
    spec.write_text(
        "version: v1\ndeployment: policy\nservices:\n"
        "  again:\n"
        "    image: {name: busybox}\n"
        f"    command: {{entrypoint: [sh, -c, 'echo run >> {runs['again']}; exit 0']}}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    restart_policy: {kind: always}\n"
        "  never:\n"
        "    image: {name: busybox}\n"
        f"    command: {{entrypoint: [sh, -c, 'echo run >> {runs['never']}; exit 3']}}\n"
        "    scale: {mode: fixed, replicas: 1}\n"
        "    restart_policy: {kind: 'no'}\n"
    )
    args = ("--runtime", "process")
    first = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert first.returncode in (0, 1), first.stdout + first.stderr  # may see them exit

    def states() -> dict[str, list[str]]:
        status = zlayer(host, "status", *args).stdout
        return {
            r.split()[1]: r.split()[3:5] for r in status.splitlines() if r.startswith("policy ")
        }

    def ran(name: str) -> int:
        return len(runs[name].read_text().splitlines()) if runs[name].exists() else 0

    def both_exited() -> bool:
        found = states()
        return found.get("again", [""])[0] == "completed" and found.get("never") == [
            "exited",
            "(3)",
        ]

    wait_for(both_exited, lambda: f"again completed, never exited (3): {states()}", 60)
    assert (ran("again"), ran("never")) == (1, 1)
    plan = " ".join(zlayer(host, "plan", str(spec), *args).stdout.split())
    assert "restart policy/again/1 completed (exited with status 0); restart_policy: always" in plan
    held = "policy/never/1: exited with status 3; not restarted (restart_policy: no)"
    assert held in plan, plan
    again = zlayer(host, "apply", str(spec), *args, "--auto-approve")
    assert "restart:policy/again/1" in again.stdout, again.stdout + again.stderr
    assert held in " ".join(again.stdout.split()), again.stdout
    wait_for(lambda: ran("again") == 2, lambda: f"a second run of again: {ran('again')}", 60)
    assert ran("never") == 1  # not started again

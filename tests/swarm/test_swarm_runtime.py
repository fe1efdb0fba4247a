"""The swarm runtime against a real three-node swarm (``tests.swarm_support``): zlayer's
CLI plans and applies services as a whole, the engine places and rolls them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from reconciler.drivers.swarm.driver import ipvs_available
from tests.docker_support import engine_request
from tests.support import wait_for
from tests.swarm_support import (
    PROXY_IMAGE,
    Swarm,
    docker,
    engine_post,
    fetch,
    fetch_all,
    remove_swarm_deployment,
    service_tasks,
    stop_node,
    wait_node_status,
)

pytest_plugins = ["tests.swarm_support"]

IMAGE = "zlayer-test/busybox:latest"
HTTPD = 'mkdir -p /w && echo "$SVC $(hostname) $V" > /w/index.html && exec httpd -f -p 8080 -h /w'


SERVE_TOKEN = 'mkdir -p /w && echo "$TOKEN" > /w/index.html && exec httpd -f -p 8080 -h /w'


def zlayer(
    swarm: Swarm, tmp: Path, *args: str, proxy: bool = True
) -> subprocess.CompletedProcess[str]:
    """``zlayer ARGS`` against the swarm; ``proxy``: each deployment's proxy runs
    the imported HAProxy, else (a config file saying ``proxy_image = ""``) none."""
    env = {
        **os.environ, "DOCKER_HOST": swarm.url, "ZLAYER_STATE_DIR": str(tmp / "state"),
        "ZLAYER_RUNTIME": "swarm", "NO_COLOR": "1", "ZLAYER_SWARM_PROXY_IMAGE": PROXY_IMAGE,
    }  # fmt: skip
    if not proxy:
        config = tmp / "no-proxy.toml"
        config.write_text('[swarm]\nproxy_image = ""\n')
        env["ZLAYER_CONFIG"] = str(config)
        del env["ZLAYER_SWARM_PROXY_IMAGE"]
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def three_tier(deployment: str, *, api_env: str = "a", api_health: str = "true") -> str:
    return f"""\
version: v1
deployment: {deployment}
services:
  db:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{HTTPD}']}}
    env: {{SVC: db, V: "1"}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 1}}
    node_selector: {{labels: {{zone: b}}}}
    health: {{check: {{type: command, command: "true"}}, interval: 1s, start_grace: 1s}}
  api:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{HTTPD}']}}
    env: {{SVC: api, V: "{api_env}"}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 3}}
    node_mode: dedicated
    depends: [{{service: db, condition: healthy}}]
    health:
      check: {{type: command, command: "{api_health}"}}
      interval: 1s
      start_grace: 1s
      retries: 1
  web:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{HTTPD}']}}
    env: {{SVC: web, V: "1"}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 3}}
    node_mode: dedicated
    depends: [{{service: api, condition: started}}]
    endpoints: [{{name: http, protocol: http, port: 8080, expose: public}}]
    health: {{check: {{type: command, command: "true"}}, interval: 1s, start_grace: 1s}}
"""


def one_service(deployment: str, *, replicas: int, extra: str = "") -> str:
    """A spec with one httpd service ``api`` (engine health check, quick stop), with
    ``extra`` lines (indented as its fields) before its health check."""
    return f"""\
version: v1
deployment: {deployment}
services:
  api:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{HTTPD}']}}
    env: {{SVC: api, V: "1"}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: {replicas}}}
{extra}    health: {{check: {{type: command, command: "true"}}, interval: 1s, start_grace: 1s}}
"""


def moment(stamp: str) -> datetime:
    """An engine timestamp (RFC 3339, nanoseconds of varying length) as a datetime."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


def spec_file(tmp: Path, text: str) -> Path:
    path = tmp / "specs" / "app.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def nodes_of(swarm: Swarm, deployment: str, service: str) -> list[str]:
    """The node names of the running tasks of ``deployment_service``."""
    tasks = service_tasks(swarm, f"{deployment}_{service}")
    return sorted(
        swarm.node(t["NodeID"]).name for t in tasks
        # A task on a node that went down still says running: the engine wants it gone.
        if t["Status"]["State"] == "running" and t["DesiredState"] == "running"
    )  # fmt: skip


@pytest.mark.slow
def test_a_three_tier_deployment_applies_in_order_and_spreads(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    # Without a proxy (proxy_image ""): web's tasks publish its port on their nodes.
    path = spec_file(tmp_path, three_tier(swarm_deployment))
    plan = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path), proxy=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "endpoint http: served only on the nodes that run a task of it" in plan.stdout
    assert "route " not in plan.stdout, plan.stdout
    for line in (
        f"create     {swarm_deployment}/db  new service, replicas 0 → 1 (rolling updates "
        "start-first)",
        f"{swarm_deployment}/web  new service, replicas 0 → 3 (rolling updates stop-first)",
    ):
        assert line in plan.stdout, plan.stdout
    run = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve", proxy=False)
    assert run.returncode == 0, run.stdout + run.stderr
    _, web = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_web")
    assert [p["PublishMode"] for p in web["Spec"]["EndpointSpec"]["Ports"]] == ["host"]
    status, _ = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_zlayer-proxy")
    assert status == 404
    # db is pinned to the node labelled zone=b; api and web run one task per node.
    zone_b = next(n.name for n in swarm.nodes if n.labels["zone"] == "b")
    assert nodes_of(swarm, swarm_deployment, "db") == [zone_b]
    names = sorted(n.name for n in swarm.nodes)
    assert nodes_of(swarm, swarm_deployment, "api") == names
    # web's public port answers on every node's address, from a task of that node.
    for node in swarm.nodes:
        answer = fetch(swarm, f"http://{node.address}:8080/")
        assert answer.startswith("web "), answer
    # Dependency order: db's task ran before api's, api's before web's.
    first = {
        s: min(t["CreatedAt"] for t in service_tasks(swarm, f"{swarm_deployment}_{s}"))
        for s in ("db", "api", "web")
    }
    assert first["db"] < first["api"] < first["web"], first
    again = zlayer(
        swarm, tmp_path, "plan", "--runtime", "swarm", str(path), "--detailed-exitcode",
        proxy=False,
    )  # fmt: skip
    assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_drift_is_planned_back_and_a_failing_update_is_rolled_back(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, three_tier(swarm_deployment))
    run = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    # Scaled by hand: one scale action puts it back.
    name = f"{swarm_deployment}_db"
    _, service = engine_request(swarm.url, "GET", f"/services/{name}")
    spec = service["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 2
    version = {"version": str(service["Version"]["Index"])}
    status, answer = engine_post(swarm.url, f"/services/{name}/update", spec, version)
    assert status == 200, answer
    plan = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path))
    assert f"scale      {swarm_deployment}/db  replicas 2 → 1" in plan.stdout, plan.stdout
    fixed = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    _, service = engine_request(swarm.url, "GET", f"/services/{name}")
    assert service["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    # An update whose health check fails: Swarm rolls it back, and zlayer says so.
    bad = spec_file(tmp_path, three_tier(swarm_deployment, api_env="b", api_health="false"))
    failed = zlayer(swarm, tmp_path, "apply", str(bad), "--auto-approve")
    assert failed.returncode != 0, failed.stdout + failed.stderr
    said = f"{swarm_deployment}/api: rolled back by the engine: rollback completed (a task of "
    assert said in failed.stdout and "unhealthy container" in failed.stdout, failed.stdout
    _, api = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_api")
    env = api["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert "V=a" in env, env  # the previous spec, restored by the engine
    again = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(bad))
    assert "the engine rolled its last update back" in again.stdout, again.stdout


@pytest.mark.slow
def test_a_secret_reaches_the_process_and_never_the_service_spec(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    canary = "zl-canary-7f3a9c"
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(canary)
    text = f"""\
version: v1
deployment: {swarm_deployment}
services:
  app:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{SERVE_TOKEN}']}}
    env: {{TOKEN: "$S:token"}}
    scale: {{mode: fixed, replicas: 1}}
    endpoints: [{{name: http, protocol: http, port: 8080, expose: public}}]
    health: {{check: {{type: command, command: "true"}}, interval: 1s, start_grace: 1s}}
"""
    path = spec_file(tmp_path, text)
    env_dir = ["--secrets-dir", str(tmp_path / "secrets")]
    run = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve", *env_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    assert canary not in run.stdout + run.stderr
    _, service = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_app")
    assert canary not in json.dumps(service)
    # Nor in the proxy serving it: its service, labels, and configuration.
    _, proxy = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_zlayer-proxy")
    assert proxy["Spec"]["Mode"] == {"Global": {}} and canary not in json.dumps(proxy)
    (mounted,) = proxy["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]
    _, config = engine_request(swarm.url, "GET", f"/configs/{mounted['ConfigID']}")
    assert "backend " in base64.b64decode(config["Spec"]["Data"]).decode()
    assert canary not in base64.b64decode(config["Spec"]["Data"]).decode()
    node = swarm.node(service_tasks(swarm, f"{swarm_deployment}_app")[0]["NodeID"])
    assert wait_for(
        lambda: fetch(swarm, f"http://{node.address}:8080/").strip() == canary,
        "the secret in the process's environment", 60,
    )  # fmt: skip
    for command in (["observe", "--runtime", "swarm"], ["status", "--format", "json"]):
        shown = zlayer(swarm, tmp_path, *command)
        assert shown.returncode == 0, shown.stderr
        assert canary not in shown.stdout + shown.stderr
    # destroy takes the service, its secret, the proxy with its configuration, and the
    # deployment's network.
    gone = zlayer(swarm, tmp_path, "destroy", swarm_deployment, "--auto-approve")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    label = json.dumps({"label": [f"zlayer.deployment={swarm_deployment}"]})
    for kind in ("services", "secrets", "networks", "configs"):
        _, left = engine_request(swarm.url, "GET", f"/{kind}", {"filters": label})
        assert left == [], (kind, left)


@pytest.mark.slow
def test_a_service_that_leaves_the_specs_is_removed_with_its_network(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, three_tier(swarm_deployment))
    assert zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve").returncode == 0
    empty = spec_file(tmp_path, f"version: v1\ndeployment: {swarm_deployment}\nservices: {{}}\n")
    other = tmp_path / "specs" / "other.yaml"
    other.write_text("version: v1\ndeployment: zs-other\nservices: {}\n")
    run = zlayer(swarm, tmp_path, "apply", str(empty.parent), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    label = json.dumps({"label": [f"zlayer.deployment={swarm_deployment}"]})
    _, services = engine_request(swarm.url, "GET", "/services", {"filters": label})
    assert services == [], services
    _, networks = engine_request(swarm.url, "GET", "/networks", {"filters": label})
    assert networks == [], networks  # removed when the apply ended, not later


@pytest.mark.slow
def test_a_stopped_worker_is_the_engines_to_fail_over_and_the_plan_stays_converged(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    """Swarm moves the tasks of a node that went down; zlayer shows where they run now
    and plans nothing: rescheduling is not drift."""
    text = one_service(swarm_deployment, replicas=3)
    path = spec_file(tmp_path, text)
    run = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    name = f"{swarm_deployment}_api"
    worker = next(
        swarm.node(t["NodeID"]) for t in service_tasks(swarm, name)
        if swarm.node(t["NodeID"]) in swarm.workers
    )  # fmt: skip
    stop_node(worker)
    wait_node_status(swarm, worker, "down")

    def moved() -> bool:
        nodes = nodes_of(swarm, swarm_deployment, "api")
        return len(nodes) == 3 and worker.name not in nodes

    wait_for(moved, f"api's tasks to leave {worker.name}", 90)
    status = zlayer(swarm, tmp_path, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    running = [w for w in document["workloads"] if w["state"] == "running"]
    assert len(running) == 3 and worker.name not in {w["node"] for w in running}, running
    plan = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path), "--detailed-exitcode")
    assert plan.returncode == 0 and "No changes." in plan.stdout, plan.stdout + plan.stderr


@pytest.mark.slow
def test_an_image_change_rolls_start_first(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    """A service whose tasks can share a node (no port on the node itself) is updated
    start-first: in every slot the new task ran before the old one was told to stop."""
    second = "zlayer-test/busybox:second"
    for node in swarm.nodes:
        docker(node, "tag", IMAGE, second)
    try:
        text = one_service(
            swarm_deployment,
            replicas=2,
            extra="    endpoints: [{name: http, protocol: http, port: 8080, expose: internal}]\n",
        )
        path = spec_file(tmp_path, text)
        assert zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve").returncode == 0
        path.write_text(text.replace(f'name: "{IMAGE}"', f'name: "{second}"'))
        plan = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path))
        assert "(rolling, start-first)" in plan.stdout, plan.stdout
        run = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
        assert run.returncode == 0, run.stdout + run.stderr
        tasks = service_tasks(swarm, f"{swarm_deployment}_api", state=None)
        for slot in (1, 2):
            mine = [t for t in tasks if t["Slot"] == slot]
            new = [t for t in mine if t["Spec"]["ContainerSpec"]["Image"] == second]
            old = [t for t in mine if t["Spec"]["ContainerSpec"]["Image"] == IMAGE]
            assert len(new) == 1 and len(old) == 1, mine
            started = new[0]["Status"]["Timestamp"]  # when it reached its state: running
            assert new[0]["Status"]["State"] == "running", new[0]["Status"]
            assert old[0]["DesiredState"] == "shutdown"
            # start-first: the old task was told to stop only after the new one ran.
            assert moment(old[0]["UpdatedAt"]) >= moment(started), (old[0]["UpdatedAt"], started)
    finally:
        remove_swarm_deployment(swarm, swarm_deployment)
        for node in swarm.nodes:
            docker(node, "rmi", second, check=False)


def routed_pair(deployment: str, *, web_replicas: int) -> str:
    """``web`` (pinned to the node labelled zone=a) on :8080, and ``api`` (one task) on
    the same port under ``/api/``: two services behind the deployment's proxy."""
    api = (
        'mkdir -p /w/api && echo "api $(hostname)" > /w/api/index.html '
        "&& exec httpd -f -p 8080 -h /w"
    )
    return f"""\
version: v1
deployment: {deployment}
services:
  web:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{HTTPD}']}}
    env: {{SVC: web, V: "1"}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: {web_replicas}}}
    node_selector: {{labels: {{zone: a}}}}
    endpoints:
      - {{name: http, protocol: http, port: 8080, expose: public}}
      - {{name: peer, protocol: tcp, port: 8080, expose: internal}}
    health: {{check: {{type: command, command: "true"}}, interval: 1s, start_grace: 1s}}
  api:
    image: {{name: "{IMAGE}"}}
    command: {{entrypoint: [sh, -c, '{api}']}}
    stop_grace_period: 1s
    scale: {{mode: fixed, replicas: 1}}
    endpoints: [{{name: http, protocol: http, port: 8080, path: /api/, expose: public}}]
    health: {{check: {{type: command, command: "true"}}, interval: 1s, start_grace: 1s}}
"""


def task_hostnames(swarm: Swarm, service: str) -> set[str]:
    """The hostnames of ``service``'s running tasks (a container's is its short ID)."""
    return {
        t["Status"]["ContainerStatus"]["ContainerID"][:12]
        for t in service_tasks(swarm, service)
        if t["DesiredState"] == "running"
    }


def served_by(swarm: Swarm, path: str, count: int) -> dict[str, set[str]]:
    """Each node's name → the hostnames that answered ``count`` GETs of ``path`` on
    its address (an error as ``error: …``)."""
    urls = {node.name: f"http://{node.address}:8080{path}" for node in swarm.nodes}
    bodies = fetch_all(swarm, list(urls.values()), count, timeout=3)
    return {
        name: {b.split()[1] if not b.startswith("error") and len(b.split()) > 1 else b
               for b in bodies[url]}
        for name, url in urls.items()
    }  # fmt: skip


@pytest.mark.slow
def test_a_public_endpoint_answers_on_every_node_from_every_replica(
    swarm: Swarm, swarm_deployment: str, tmp_path: Path
) -> None:
    path = spec_file(tmp_path, routed_pair(swarm_deployment, web_replicas=2))
    plan = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "new route: http :8080 → 2 replicas" in plan.stdout, plan.stdout
    assert "new route: http :8080 path /api/ → 1 replica" in plan.stdout, plan.stdout
    # The plan says how web's name resolves inside the swarm (no IPVS here: dnsrr).
    mode = "vip" if ipvs_available() else "dnsrr"
    assert f"(endpoint_mode {mode}" in plan.stdout and "web resolves to" in plan.stdout
    # Behind the proxy the tasks publish no port of their own: they roll start-first.
    assert "replicas 0 → 2 (rolling updates start-first)" in plan.stdout, plan.stdout
    run = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    web = f"{swarm_deployment}_web"
    zone_a = next(n.name for n in swarm.nodes if n.labels["zone"] == "a")
    assert nodes_of(swarm, swarm_deployment, "web") == [zone_a, zone_a]
    _, proxy = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_zlayer-proxy")
    assert "Global" in proxy["Spec"]["Mode"], proxy["Spec"]["Mode"]
    _, task_spec = engine_request(swarm.url, "GET", f"/services/{web}")
    assert task_spec["Spec"]["EndpointSpec"].get("Ports") in (None, []), task_spec["Spec"]

    # Every node answers, also the two without a web task, from both web replicas;
    # /api/ goes to api from every node.
    replicas = task_hostnames(swarm, web)
    assert len(replicas) == 2, replicas
    everywhere = {node.name: replicas for node in swarm.nodes}
    assert wait_for(
        lambda: served_by(swarm, "/", 8) == everywhere,
        lambda: f"both web replicas on every node: {served_by(swarm, '/', 8)}",
        90,
    )
    api = task_hostnames(swarm, f"{swarm_deployment}_api")
    assert served_by(swarm, "/api/", 2) == {node.name: api for node in swarm.nodes}

    again = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path), "--detailed-exitcode")
    assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr
    status = zlayer(swarm, tmp_path, "status")
    assert status.returncode == 0, status.stderr
    for line in (
        f"{swarm_deployment}: http :8080 → web, on every node (its proxy)",
        f"{swarm_deployment}: http :8080 path /api/ → api, on every node (its proxy)",
    ):
        assert line in status.stdout, status.stdout
    assert "has no task running" not in status.stdout

    # A third replica: a scale of web, the proxy left as it is (it finds the new task in
    # DNS), and the new replica served from every node.
    version = proxy["Version"]["Index"]
    spec_file(tmp_path, routed_pair(swarm_deployment, web_replicas=3))
    scaled = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert "replicas 2 → 3" in scaled.stdout and "route" not in scaled.stdout, scaled.stdout
    _, proxy = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_zlayer-proxy")
    assert proxy["Version"]["Index"] == version
    replicas = task_hostnames(swarm, web)
    assert len(replicas) == 3, replicas
    everywhere = {node.name: replicas for node in swarm.nodes}
    assert wait_for(
        lambda: served_by(swarm, "/", 12) == everywhere,
        lambda: f"three web replicas on every node: {served_by(swarm, '/', 12)}",
        90,
    )

    # The endpoints leave the specs: the proxy goes, and the plan says so first.
    private = routed_pair(swarm_deployment, web_replicas=3).replace(", expose: public", "")
    spec_file(tmp_path, private)
    planned = zlayer(swarm, tmp_path, "plan", "--runtime", "swarm", str(path))
    assert planned.stdout.count("endpoint no longer routed by the specs") == 2, planned.stdout
    done = zlayer(swarm, tmp_path, "apply", str(path), "--auto-approve")
    assert done.returncode == 0, done.stdout + done.stderr
    status, _ = engine_request(swarm.url, "GET", f"/services/{swarm_deployment}_zlayer-proxy")
    assert status == 404

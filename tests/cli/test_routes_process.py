"""Public endpoints on the process runtime, through the managed HAProxy: real
replicas in network namespaces (root), real HAProxy, requests from the host on
loopback. Every replica answers with its own address, so a test sees who served."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.drivers.process import host as proc
from reconciler.routing.proxy import executable
from tests.cli.test_process_cli import zlayer
from tests.load_support import Load, killed_under_load
from tests.process_support import kill_recorded, remove_networks
from tests.routing.test_proxy import free_port, get
from tests.support import needs_root, stop_proxy, unavailable

SERVER = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = ('%s %s %s' % (NAME, self.connection.getsockname()[0], self.path)).encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', PORT), H).serve_forever()\n"
)


def web(
    name: str,
    port: int,
    replicas: int,
    target: int = 9000,
    extra: str = "",
    python: str = sys.executable,
    env: str = "{}",
) -> str:
    """A service whose replicas answer ``<name> <their address> <path>``."""
    code = SERVER.replace("NAME", repr(name)).replace("PORT", str(target))
    return textwrap.dedent(
        f"""\
          {name}:
            image: {{name: "zlayer-example/python:3"}}
            command:
              entrypoint: ["{python}", "-c"]
              args: [{json.dumps(code)}]
            env: {env}
            scale: {{mode: fixed, replicas: {replicas}}}
            endpoints:
              - {{name: http, protocol: http, port: {port}, target_port: {target},
                  expose: public{extra}}}
            health:
              start_grace: 0s
              interval: 1s
              check: {{type: http, url: "http://localhost:{target}/", expect_status: 200}}
        """
    )


@pytest.fixture
def host(tmp_path: Path) -> Iterator[dict[str, str]]:
    needs_root("the process runtime's network namespaces")
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    state = tmp_path / "state"
    env = {
        **os.environ,
        "ZLAYER_STATE_DIR": str(state),
        "ZLAYER_RUNTIME": "process",
        "ZLAYER_PUBLISH_ADDRESS": "127.0.0.1",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    try:
        yield env
    finally:
        kill_recorded(state)
        remove_networks("routed")


def spec(tmp_path: Path, *services: str) -> Path:
    path = tmp_path / "routed.yaml"
    body = "".join(textwrap.indent(s, "  ") for s in services)
    path.write_text(f"version: v1\ndeployment: routed\nservices:\n{body}")
    return path


@pytest.mark.slow
def test_three_replicas_serve_through_the_public_port(host: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    path = spec(tmp_path, web("web", port, 3))
    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "not reachable" not in run.stdout + run.stderr
    for replica in (1, 2, 3):
        assert f"routed/web/{replica} in rotation on :{port}" in run.stdout, run.stdout
    served = Counter(get(port)[1].split()[1] for _ in range(30))
    assert len(served) == 3, served  # three replica addresses
    status = zlayer(host, "status")
    routes = [line.split() for line in status.stdout.splitlines() if line.startswith("routed/")]
    assert [row[:4] for row in routes] == [["routed/web/http", f":{port}", str(r), "UP"]
                                           for r in (1, 2, 3)], status.stdout  # fmt: skip
    assert sum(int(row[6]) for row in routes) >= 30  # requests, by HAProxy's count
    again = zlayer(host, "apply", str(path), "--auto-approve")
    assert "No changes." in again.stdout and "route:" not in again.stdout, again.stdout

    # Scale down: the replica that leaves leaves the rotation too.
    path.write_text(path.read_text().replace("replicas: 3", "replicas: 1"))
    down = zlayer(host, "apply", str(path), "--auto-approve")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "route: routed/web/2 out of rotation" in down.stdout, down.stdout
    assert len({get(port)[1].split()[1] for _ in range(10)}) == 1


@pytest.mark.slow
def test_hosts_and_paths_route_between_services_on_one_port(
    host: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    path = spec(
        tmp_path,
        web("shop", port, 1, 9001, ", host: shop.example.test"),
        web("api", port, 1, 9002, ", path: /api"),
    )
    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert get(port, "/", "shop.example.test")[1].startswith("shop ")
    assert get(port, "/api/items")[1].startswith("api ")
    assert get(port, "/elsewhere") == (404, "no route")


def test_routes_that_conflict_are_refused_before_anything_runs(
    host: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    path = spec(tmp_path, web("one", port, 1, 9001), web("two", port, 1, 9002))
    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 1
    assert "routed/one (http) and routed/two (http) both route any host any path" in run.stderr
    assert not (Path(host["ZLAYER_STATE_DIR"]) / "process/deployments/routed").exists()


def change_under_load(
    host: dict[str, str], path: Path, port: int, old: str, new: str
) -> tuple[subprocess.CompletedProcess[str], Load]:
    """Apply ``path``, replace ``old`` by ``new`` in it, and apply again while a steady
    request loop runs against ``port``: the second apply and the loop."""
    first = zlayer(host, "apply", str(path), "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    path.write_text(path.read_text().replace(old, new))
    with Load(port) as load:
        run = zlayer(host, "apply", str(path), "--auto-approve")
        load.more()
    return run, load


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 3])
def test_an_env_change_rolls_out_with_no_failed_request(
    host: dict[str, str], tmp_path: Path, replicas: int
) -> None:
    """Start-first: a surge replica with the new config serves before the first old
    replica is drained, each replaced one is back in rotation before the next goes,
    and the surge leaves last. A steady request loop sees no failure."""
    port = free_port()
    path = spec(tmp_path, web("web", port, replicas))
    run, load = change_under_load(host, path, port, "env: {}", 'env: {VERSION: "2"}')
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"surge replica routed/web/{replicas + 1}" in run.stdout, run.stdout
    assert load.failures == [], (load.failures, run.stdout)
    assert load.answered > 50
    status = zlayer(host, "status")
    assert f"routed/web/{replicas + 1}" not in status.stdout, status.stdout
    again = zlayer(host, "plan", str(path), "--runtime", "process", "--detailed-exitcode")
    assert "No changes." in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_a_new_config_that_never_gets_healthy_rolls_back_with_no_failed_request(
    host: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    path = spec(tmp_path, web("web", port, 1))
    # The new config's server listens on another port: its health check never passes.
    run, load = change_under_load(host, path, port, "'0.0.0.0', 9000", "'0.0.0.0', 9001")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "surge replica routed/web/2 not healthy" in run.stdout, run.stdout
    assert "routed/web/1 kept its config and stayed in rotation" in run.stdout
    assert load.failures == [], (load.failures, run.stdout)
    assert get(port)[1].startswith("web ")
    assert "routed/web/2" not in zlayer(host, "status").stdout


def idle(name: str, depends: str) -> str:
    """A service that only runs, started after ``depends`` is in the proxy's rotation."""
    return textwrap.dedent(
        f"""\
          {name}:
            image: {{name: "zlayer-example/python:3"}}
            command:
              entrypoint: ["{sys.executable}", "-c"]
              args: ["import time; time.sleep(3600)"]
            depends: [{{service: {depends}, condition: ready, timeout: 60s}}]
        """
    )


@pytest.mark.slow
def test_routes_are_planned_observed_and_repaired_like_workloads(
    host: dict[str, str], tmp_path: Path
) -> None:
    """The route is a resource of the plan (new, then converged); the dependent with
    ``condition: ready`` starts only once web is in rotation; the snapshot records the
    route with HAProxy's counters; a dead proxy is drift the next plan names and the
    next apply repairs."""
    port = free_port()
    path = spec(tmp_path, web("web", port, 2), idle("client", "web"))
    planned = zlayer(
        host, "plan", str(path), "--runtime", "process", "--detailed-exitcode", "--format", "json"
    )
    assert planned.returncode == 2, planned.stdout + planned.stderr
    (route,) = [a for a in json.loads(planned.stdout)["actions"] if a["target"]["endpoint"]]
    assert (route["id"], route["kind"]) == ("route:routed/web:http", "route")
    assert route["reason"] == f"new route: http :{port} → 2 replicas"
    assert "route:routed/web:http" in next(
        a["waits_for"] for a in json.loads(planned.stdout)["actions"] if a["id"].startswith(
            "create:routed/client")
    )  # fmt: skip

    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    routed = next(i for i, line in enumerate(lines) if "✓ route:routed/web:http" in line)
    started = next(i for i, line in enumerate(lines) if "… create:routed/client/1" in line)
    assert routed < started, run.stdout
    assert f"+ route      routed/web:http  new route: http :{port} → 2 replicas" in run.stdout
    for replica in (1, 2):
        assert f"routed/web/{replica} in rotation on :{port}" in lines[routed], lines[routed]

    converged = zlayer(host, "plan", str(path), "--runtime", "process", "--detailed-exitcode")
    assert converged.returncode == 0 and "No changes." in converged.stdout, converged.stdout

    for _ in range(6):
        assert get(port)[0] == 200
    snapshot = tmp_path / "snapshot.json"
    observed = zlayer(host, "observe", "--runtime", "process", "--out", str(snapshot))
    assert observed.returncode == 0, observed.stderr
    document = json.loads(snapshot.read_text())
    assert document["routes_managed"] and document["proxy_running"]
    (recorded,) = document["routes"]
    assert (recorded["service"], recorded["port"], recorded["target_port"]) == ("web", port, 9000)
    assert [s["replica"] for s in recorded["servers"]] == [1, 2]
    assert sum(s["requests"] for s in recorded["servers"]) >= 6  # HAProxy's own count
    offline = zlayer(host, "plan", str(path), "--observed", str(snapshot), "--detailed-exitcode")
    assert offline.returncode == 0 and "No changes." in offline.stdout, offline.stdout

    assert stop_proxy(Path(host["ZLAYER_STATE_DIR"])) is not None
    drift = zlayer(host, "plan", str(path), "--runtime", "process", "--detailed-exitcode")
    assert drift.returncode == 2, drift.stdout + drift.stderr
    assert "~ reroute    routed/web:http  the managed proxy is not running" in drift.stdout
    repaired = zlayer(host, "apply", str(path), "--auto-approve")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "proxy started" in repaired.stdout, repaired.stdout
    assert get(port)[0] == 200
    assert (
        "No changes."
        in zlayer(host, "plan", str(path), "--runtime", "process", "--detailed-exitcode").stdout
    )


def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1: (certificate, private key)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.slow
def test_https_is_terminated_with_the_certificate_from_the_secrets_directory(
    host: dict[str, str], tmp_path: Path
) -> None:
    """Without its certificate an https endpoint is refused at its position and
    nothing runs; with it, HAProxy terminates TLS and the replica gets plain HTTP."""
    port = free_port()
    path = spec(tmp_path, web("web", port, 1).replace("protocol: http", "protocol: https"))
    refused = zlayer(host, "apply", str(path), "--auto-approve")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{path}:" in refused.stderr and "endpoints[0].protocol" in refused.stderr
    assert "tls.routed.web.http.pem is not in the secrets directory" in refused.stderr
    assert not (Path(host["ZLAYER_STATE_DIR"]) / "process/deployments/routed").exists()

    cert, key = certificate(tmp_path)
    secrets = Path(host["ZLAYER_STATE_DIR"]) / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    bundle = secrets / "tls.routed.web.http.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    bundle.chmod(0o600)
    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"routed/web/1 in rotation on :{port}" in run.stdout, run.stdout
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/tls", context=context,
                                timeout=10) as answer:  # fmt: skip
        assert answer.status == 200
        assert answer.read().decode().split()[::2] == ["web", "/tls"]
    with pytest.raises(OSError):  # plain HTTP is not served there (closed, or refused)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).close()
    assert "No changes." in zlayer(host, "apply", str(path), "--auto-approve").stdout


def inside(netns: str, url: str) -> str:
    """GET ``url`` from inside the network namespace ``netns`` (its hosts file
    resolving names as the replicas' do); the body, or the error."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print('status', e.code)\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code, url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()


@pytest.mark.slow
def test_an_internal_endpoint_is_balanced_by_name_at_its_port(
    host: dict[str, str], tmp_path: Path
) -> None:
    """``expose: internal`` with ``port`` 80 ≠ ``target_port`` 9000: inside the
    deployment, ``http://api/`` (port 80) reaches every ready replica through the
    proxy on the deployment's own address; ``api-1`` still reaches the replica itself;
    the route is in the plan, and the dependent waited for it (``ready``)."""
    api = (
        web("api", 9000, 2, 9000)
        .replace("expose: public", "expose: internal")
        .replace("port: 9000, target_port: 9000", "port: 80, target_port: 9000")
    )
    path = spec(tmp_path, api, idle("client", "api"))
    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "+ route      routed/api:http  new route: http api:80 (internal) → 2 replicas" in (
        run.stdout
    ), run.stdout
    client = "zlayer-routed-client-1"
    served = Counter(inside(client, "http://api/").split(" ")[1] for _ in range(12))
    assert len(served) == 2, served  # both replicas, by their own addresses
    direct = inside(client, "http://api-1:9000/direct")
    assert direct.startswith("api ") and direct.endswith(" /direct"), direct
    assert inside(client, "http://api-1/").count("api") == 0  # nothing listens on :80 there
    converged = zlayer(host, "plan", str(path), "--runtime", "process", "--detailed-exitcode")
    assert converged.returncode == 0 and "No changes." in converged.stdout, converged.stdout


LOOP = (
    "import os, sys, time, urllib.request\n"
    "ok = failed = 0\n"
    "while not os.path.exists(sys.argv[2]):\n"
    "    try:\n"
    "        urllib.request.urlopen(sys.argv[1], timeout=10).read(); ok += 1\n"
    "    except Exception as error:\n"
    "        failed += 1; print('failed', repr(error), flush=True)\n"
    "    time.sleep(0.02)\n"
    "print('ok', ok, 'failed', failed, flush=True)\n"
)


@pytest.mark.slow
def test_an_internal_endpoint_is_replaced_with_no_failed_request(
    host: dict[str, str], tmp_path: Path
) -> None:
    """A request loop inside the deployment (from the client's namespace, by name)
    while an env change replaces api's only replica: start-first behind the proxy."""
    api = (
        web("api", 9000, 1, 9000, env="{V: a}")
        .replace("expose: public", "expose: internal")
        .replace("port: 9000, target_port: 9000", "port: 80, target_port: 9000")
    )
    path = spec(tmp_path, api, idle("client", "api"))
    first = zlayer(host, "apply", str(path), "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    stop = tmp_path / "stop"
    loop = subprocess.Popen(
        ["ip", "netns", "exec", "zlayer-routed-client-1", sys.executable, "-c", LOOP,
         "http://api/", str(stop)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        path.write_text(path.read_text().replace("{V: a}", "{V: b}"))
        run = zlayer(host, "apply", str(path), "--auto-approve")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "surge replica routed/api/2" in run.stdout, run.stdout
    finally:
        stop.touch()
        output, _ = loop.communicate(timeout=60)
    last = output.strip().splitlines()[-1].split()
    assert last[0] == "ok" and int(last[1]) > 10, output
    assert last[3] == "0", output


def rotation(host: dict[str, str], service: str) -> dict[int, str]:
    """Each replica's server state in ``service``'s route, from ``zlayer status``."""
    rows = [line.split() for line in zlayer(host, "status").stdout.splitlines()]
    return {
        int(row[2]): row[3]
        for row in rows
        if len(row) > 3 and row[0] == f"routed/{service}/http" and row[2].isdigit()
    }


@pytest.mark.slow
def test_a_replica_killed_under_load_leaves_rotation(host: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL of one of three replicas while requests flow: HAProxy's own check takes
    it out of rotation (no zlayer process runs meanwhile), and from then on every
    request is served by the two others."""
    port = free_port()
    path = spec(tmp_path, web("web", port, 3))
    run = zlayer(host, "apply", str(path), "--auto-approve")
    assert run.returncode == 0, run.stdout + run.stderr
    assert rotation(host, "web") == {1: "UP", 2: "UP", 3: "UP"}
    state = Path(host["ZLAYER_STATE_DIR"])
    record = json.loads((state / "process/deployments/routed/services/web/2/run.json").read_text())
    pid = int(record["pid"])
    assert proc.alive(pid, int(record["start"]))  # still the recorded process
    load = killed_under_load(
        port,
        lambda: os.killpg(pid, signal.SIGKILL),
        lambda: rotation(host, "web").get(2) not in ("UP", None),
    )
    assert load.failures == [], load.failures
    served = Counter(get(port)[1].split()[1] for _ in range(20))
    assert len(served) == 2, served

"""Choosing a runtime: the config file, the environment, ``--runtime``, and ``auto``
asking a real (tiny) Engine API server on a unix socket whether it answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.drivers.process.config import HostFacts, service_limits
from reconciler.errors import ConfigError
from reconciler.runtimes import docker_problem, resolve_runtime
from reconciler.settings import Settings, load_settings
from tests.conftest import REPO
from tests.docker_support import compile_services


def zlayer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZLAYER_RUNTIME", "ZLAYER_CONFIG", "ZLAYER_STATE_DIR", "ZLAYER_PUBLISH_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


SWARM: dict[str, object] = {}
"""What the stand-in engine's ``/info`` says of its swarm (set by a test)."""


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[Path]:
    """A unix socket answering ``/_ping`` with ``HTTP/1.0 200 OK`` / ``OK``, as Docker
    does, and ``/info`` with a swarm section (:data:`SWARM`, inactive unless a test
    sets it)."""
    SWARM.clear()
    SWARM["LocalNodeState"] = "inactive"
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()
    asked: list[bytes] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                request = conn.recv(4096)
                asked.append(request)
                body = json.dumps({"Swarm": SWARM}).encode() if b" /info " in request else b"OK"
                head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                conn.sendall(head + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert all(request.startswith((b"GET /_ping ", b"GET /info ")) for request in asked)


def test_auto_picks_docker_when_an_engine_answers(
    engine_socket: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine_socket}")
    assert docker_problem() is None
    name, why = resolve_runtime(None, Settings())
    assert (name, why) == ("docker", f"auto: a Docker engine answered at unix://{engine_socket}")


def test_auto_picks_swarm_when_the_engine_is_a_swarm_manager(
    engine_socket: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine_socket}")
    SWARM.update(LocalNodeState="active", ControlAvailable=False)  # a worker: not talked to
    assert resolve_runtime("auto", Settings())[0] == "docker"
    SWARM.update(ControlAvailable=True)
    name, why = resolve_runtime("auto", Settings())
    assert (name, why) == (
        "swarm",
        f"auto: the Docker engine at unix://{engine_socket} is a swarm manager",
    )


def test_auto_picks_process_when_no_engine_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    name, why = resolve_runtime("auto", Settings())
    assert name == "process"
    assert why.startswith(f"auto: no Docker engine at unix://{tmp_path}/none.sock")


def test_an_explicit_runtime_wins_and_says_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('runtime = "process"\n')
    settings = load_settings(config)
    assert resolve_runtime(None, settings) == ("process", f"runtime process from {config}")
    assert resolve_runtime("docker", settings) == ("docker", "--runtime docker")
    monkeypatch.setenv("ZLAYER_RUNTIME", "docker")
    again = load_settings(config)
    assert resolve_runtime(None, again) == ("docker", "runtime docker from ZLAYER_RUNTIME")


def test_the_config_file_sets_state_dir_pool_and_publish_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'state_dir = "/srv/zl"\n[process]\nnetwork_pool = "10.99.0.0/20"\n'
        '[docker]\npublish_address = "127.0.0.1"\n'
    )
    settings = load_settings(config)
    assert (settings.state_dir, settings.network_pool, settings.publish_address) == (
        Path("/srv/zl"),
        "10.99.0.0/20",
        "127.0.0.1",
    )
    monkeypatch.setenv("ZLAYER_STATE_DIR", "/elsewhere")
    assert load_settings(config).state_dir == Path("/elsewhere")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('runtime = "podman"\n', "runtime 'podman' (from "),
        ('runtme = "docker"\n', "unknown key 'runtme'"),
        ("[process]\nnetwork_pool = 'nope'\n", "process.network_pool 'nope'"),
        ("[process]\nnetwork_pool = '10.1.2.0/25'\n", "smaller than a /24"),
        ("[process]\npool = '10.1.0.0/16'\n", "unknown key process.pool"),
        ("runtime = 3\n", "runtime must be a string"),
        ("runtime = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_the_key(
    tmp_path: Path, text: str, message: str, clean_env: None
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_settings(config)


def test_a_bad_config_file_stops_a_command_before_it_acts(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('runtime = "podman"\n')
    env = {**os.environ, "ZLAYER_CONFIG": str(config), "ZLAYER_STATE_DIR": str(tmp_path / "s")}
    run = zlayer("apply", "specs/hello.yaml", "--auto-approve", env=env)
    assert run.returncode == 1
    choices = "auto, docker, process, swarm"
    assert f"runtime 'podman' (from {config}) is not one of {choices}" in run.stderr
    assert not (tmp_path / "s").exists()


# --- what the process runtime can run --------------------------------------------------------


def limits_of(text: str, *, root: bool = True, isolation: str | None = None) -> tuple:  # type: ignore[type-arg]
    service = compile_services("demo", text)["app"]
    facts = HostFacts(root=root, isolation=isolation, cgroups="no cgroups here")
    found = service_limits(service, facts)
    return found.errors, found.warnings


def test_a_service_without_an_entrypoint_cannot_run_as_a_process() -> None:
    errors, _ = limits_of("app: {image: {name: nginx}}")
    assert errors == (
        "demo/app: no command.entrypoint: the process runtime runs command.entrypoint and "
        "command.args on the host and cannot read an image's own command",
    )


def test_user_switching_needs_root_and_an_existing_user() -> None:
    text = "app: {image: {name: x}, command: {entrypoint: [true]}, user: USER}"
    assert limits_of(text.replace("USER", "nobody"), root=True)[0] == ()
    assert limits_of(text.replace("USER", "nobody"), root=False)[0] == (
        "demo/app: user nobody needs zlayer to run as root",
    )
    assert limits_of(text.replace("USER", "no-such-user-zl"), root=True)[0] == (
        "demo/app: user 'no-such-user-zl' does not exist on this host",
    )


def test_what_the_process_runtime_cannot_honour_is_a_warning() -> None:
    text = """
app:
  image: {name: x}
  command: {entrypoint: [sleep, "60"]}
  resources: {memory: 64Mi, cpuset: "0"}
  privileged: true
  endpoints: [{name: http, protocol: http, port: 80, expose: public}]
"""
    errors, warnings = limits_of(text)
    assert errors == ()
    assert warnings == (
        "demo/app: resources.memory not enforced: no cgroups here",
        "demo/app: resources.cpuset is not applied by the process runtime",
        "demo/app: privileged is not applied by the process runtime",
    )


def test_on_the_host_network_host_and_path_routing_is_a_warning() -> None:
    """Isolated replicas get the managed proxy (no warning from the runtime); on the
    host network a replica serves its port itself, so host and path cannot apply."""
    text = """
app:
  image: {name: x}
  command: {entrypoint: [sleep, "60"]}
  endpoints: [{name: http, protocol: http, port: 80, expose: public, host: a.test, path: /x}]
"""
    assert limits_of(text) == ((), ())
    _, warnings = limits_of(text, isolation="not running as root")
    assert any(
        "endpoint http: host and path not applied: replicas on the host network" in w
        and "not running as root" in w
        for w in warnings
    ), warnings
    _, host = limits_of(text, isolation="not running as root")
    assert host[0] == (
        "demo/app: runs on the host network, not network_mode default: not running as root "
        "(network namespaces need root)"
    )


def test_another_containers_network_cannot_be_joined_by_a_process() -> None:
    text = "app: {image: {name: x}, command: {entrypoint: [true]}, network_mode: 'container:db'}"
    assert limits_of(text)[0] == ("demo/app: network_mode container:db needs a container engine",)


def test_validate_runtime_process_points_at_the_service(tmp_path: Path) -> None:
    spec = tmp_path / "app.yaml"
    spec.write_text("version: v1\ndeployment: demo\nservices:\n  app:\n    image: {name: x}\n")
    run = zlayer("validate", str(spec), "--runtime", "process")
    assert run.returncode == 1
    assert f"{spec}:5:5: services.app: no command.entrypoint" in run.stdout
    assert "Runtime: process (--runtime process)" in run.stderr

"""Fixtures and helpers for tests against a real Docker engine.

Run such tests through ``tests/with-docker``, which starts a private dockerd,
imports the test image and sets ``DOCKER_HOST`` and ``ZLAYER_TEST_IMAGE``::

    tests/with-docker /tmp/dev/bin/python -m pytest tests/drivers/test_docker_driver.py

Without an engine the tests skip, loudly, naming the reason, except under
``CI=true`` where they fail. They refuse any engine but a private one started
by ``tests/with-docker`` unless ``ZLAYER_TEST_DOCKER=external`` says otherwise.
Each test gets its own deployment name; everything labelled with it
(containers, networks, volumes) is removed when the test ends, pass or fail.

Use the fixtures from a test module with::

    pytest_plugins = ["tests.docker_support"]

The engine calls here (ping and cleanup) use the Engine API over the socket
with the standard library, so they work in sync and async tests alike and
need neither the docker CLI nor aiodocker.

PYTEST_DONT_REWRITE: test modules may also import helpers from here before
pytest loads it as a plugin; its asserts carry their own messages.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import textwrap
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

from reconciler.desired import CompileInputs, DesiredService, DesiredState, compile_specs
from reconciler.drivers.docker import DockerDriver
from reconciler.spec.load import load_text
from reconciler.unixhttp import UnixHTTPConnection
from tests.support import require_marker, unavailable, wait_for

__all__ = [
    "SECRET_KEY",
    "compile_services",
    "compile_spec",
    "deployment_name",
    "docker_driver",
    "docker_url",
    "engine_request",
    "registry",
    "remove_deployment",
    "test_image",
]

SECRET_KEY = b"test"
PRIVATE_ENGINE_MARK = "zlayer-dockerd."
"""Part of the socket path of every engine ``tests/with-docker`` starts."""


# --- a minimal synchronous Engine API client ---------------------------------------------------


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    if url.startswith("unix://"):
        return UnixHTTPConnection(url.removeprefix("unix://"), timeout)
    if url.startswith(("tcp://", "http://")):
        parsed = urllib.parse.urlsplit(url)
        return http.client.HTTPConnection(
            parsed.hostname or "localhost", parsed.port or 2375, timeout=timeout
        )
    raise ValueError(f"unsupported DOCKER_HOST for the tests: {url}")


def engine_request(
    url: str,
    method: str,
    path: str,
    params: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    body: Any = None,
) -> tuple[int, Any]:
    """``(status, body)`` of one Engine API call (``body``, when given, sent as JSON);
    JSON answers are decoded."""
    query = "?" + urllib.parse.urlencode(params) if params else ""
    conn = _connection(url, timeout)
    try:
        if body is None:
            conn.request(method, path + query, headers={"Host": "docker"})
        else:
            headers = {"Host": "docker", "Content-Type": "application/json"}
            conn.request(method, path + query, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        data = response.read()
        if "json" in response.getheader("Content-Type", "") and data:
            return response.status, json.loads(data)
        return response.status, data.decode(errors="replace")
    finally:
        conn.close()


def remove_deployment(url: str, deployment: str) -> list[str]:
    """Remove every container, network and volume labelled ``zlayer.deployment=<name>``;
    returns what it removed (``kind name``)."""
    label = json.dumps({"label": [f"zlayer.deployment={deployment}"]})
    removed: list[str] = []
    _, containers = engine_request(url, "GET", "/containers/json", {"all": "1", "filters": label})
    for container in containers:
        engine_request(
            url, "DELETE", f"/containers/{container['Id']}", {"force": "1", "v": "1"}, timeout=60
        )
        removed.append(f"container {container['Names'][0].lstrip('/')}")
    _, networks = engine_request(url, "GET", "/networks", {"filters": label})
    for network in networks:
        engine_request(url, "DELETE", f"/networks/{network['Id']}")
        removed.append(f"network {network['Name']}")
    _, volumes = engine_request(url, "GET", "/volumes", {"filters": label})
    for volume in volumes.get("Volumes") or ():
        engine_request(url, "DELETE", f"/volumes/{volume['Name']}", {"force": "1"})
        removed.append(f"volume {volume['Name']}")
    return removed


# --- fixtures ------------------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    unavailable(f"NO DOCKER ENGINE FOR THE DOCKER TESTS: {reason}")


def _engine_problem(url: str | None) -> str | None:
    if not url:
        why = os.environ.get("ZLAYER_TEST_NO_ENGINE")
        return (why or "DOCKER_HOST is not set") + "; run the tests through tests/with-docker"
    if PRIVATE_ENGINE_MARK not in url and os.environ.get("ZLAYER_TEST_DOCKER") != "external":
        return (
            f"DOCKER_HOST={url} is not a private engine started by tests/with-docker; "
            "set ZLAYER_TEST_DOCKER=external to run the tests against it anyway"
        )
    try:
        status, body = engine_request(url, "GET", "/_ping", timeout=10)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"the engine at {url} does not answer: {exc}"
    if status != 200:
        return f"the engine at {url} answered /_ping with {status}: {body}"
    return None


@pytest.fixture(scope="session")
def docker_url() -> str:
    """``DOCKER_HOST`` of the private engine; skips (fails under ``CI=true``) without one."""
    url = os.environ.get("DOCKER_HOST")
    problem = _engine_problem(url)
    if problem is not None:
        _unavailable(problem)
    assert url is not None
    return url


@pytest.fixture(scope="session")
def test_image(docker_url: str) -> str:
    """The local test image (busybox-static: sh, sleep, httpd, nc, wget; /srv/index.html)."""
    image = os.environ.get("ZLAYER_TEST_IMAGE")
    if not image:
        _unavailable("ZLAYER_TEST_IMAGE is not set; run the tests through tests/with-docker")
    assert image is not None
    status, _ = engine_request(docker_url, "GET", f"/images/{image}/json")
    if status != 200:
        _unavailable(f"the test image {image} is not on the engine at {docker_url}")
    return image


@pytest.fixture
def deployment_name(docker_url: str) -> Iterator[str]:
    """A fresh deployment name (``zt-<8 hex>``); whatever carries it is removed after
    the test, whether it passed or not."""
    require_marker("docker", "the deployment_name fixture")
    name = f"zt-{secrets.token_hex(4)}"
    yield name
    remove_deployment(docker_url, name)


@pytest.fixture
async def docker_driver(docker_url: str) -> AsyncIterator[DockerDriver]:
    """An open driver on the private engine that publishes on 127.0.0.1 only."""
    require_marker("docker", "the docker_driver fixture")
    async with DockerDriver(docker_url, publish_address="127.0.0.1") as driver:
        yield driver


# --- compiling specs -----------------------------------------------------------------------------


def compile_spec(text: str, *, secrets: Mapping[str, str] | None = None) -> DesiredState:
    """Compile one spec file's text (as ``zlayer apply`` would, secret key ``b"test"``)."""
    loaded, problems = load_text(text, "spec.yaml")
    assert problems == [], [p.render() for p in problems]
    assert loaded is not None
    known = dict(secrets or {})
    inputs = CompileInputs(secret_key=SECRET_KEY, secret=known.get)
    state, problems = compile_specs([loaded], "rev-1", inputs)
    assert problems == [], [p.render() for p in problems]
    assert state is not None
    return state


def compile_services(
    deployment: str, services: str, *, secrets: Mapping[str, str] | None = None
) -> dict[str, DesiredService]:
    """The compiled services of ``deployment`` given the YAML under ``services:``
    (dedented), by service name."""
    body = textwrap.indent(textwrap.dedent(services).strip("\n"), "  ")
    text = f"version: v1\ndeployment: {deployment}\nservices:\n{body}\n"
    state = compile_spec(text, secrets=secrets)
    return {service.name: service for service in state.services.values()}


@pytest.fixture
def registry(docker_url: str, tmp_path: Path) -> Iterator[str]:
    """A private registry on loopback (Debian's ``docker-registry``): its address,
    ``127.0.0.1:PORT`` (the engine allows plain HTTP there). Started for the test,
    stopped by its pid, its storage removed with the test's directory."""
    binary = shutil.which("docker-registry")
    if binary is None:
        unavailable("docker-registry is not installed (apt-get install docker-registry)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    root = tmp_path / "registry"
    root.mkdir()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f'http: {{addr: "127.0.0.1:{port}"}}\n'
    )
    log = (root / "log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(answers, lambda: f"the registry on :{port}; {(root / 'log').read_text()}", 30)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()

"""Adaptive scaling under the daemon, on real replicas: CPU measured from the process
runtime's cgroups (and, in test_daemon_docker.py, from the engine's stats), decisions
in the journal, counts reached through the plan, kept across a kill -9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.daemon.test_daemon import DEP, write_specs
from tests.daemon_support import Daemon, observed_workloads
from tests.support import needs_root, stop_proxy, wait_for

pytest_plugins = ["tests.daemon_support"]


def burner(stop: Path, **scale: Any) -> dict[str, Any]:
    """A replica that keeps one core busy (for at most 5 minutes) until ``stop`` exists,
    then idles."""
    burn = f"timeout 300 sh -c 'while [ ! -e {stop} ]; do :; done'; exec sleep 3600"
    return {
        "image": {"name": "busybox"},
        "command": {"entrypoint": ["sh", "-c", burn]},
        "network_mode": "host",
        "stop_grace_period": "1s",
        "scale": {"mode": "adaptive", "min": 1, "max": 3, "cooldown": "3s", **scale},
    }


def replicas(daemon: Daemon) -> list[str]:
    return sorted(
        k for k, w in observed_workloads(daemon).items()
        if k.startswith(f"{DEP}/burn/") and w["status"] == "running"
    )  # fmt: skip


def scaled(daemon: Daemon) -> list[str]:
    return [e["message"] for e in reversed(daemon.events(target=f"{DEP}/burn", kind="scaled"))]


def test_a_cpu_burn_scales_up_and_back_down_after_the_cooldown(daemon_host: Daemon) -> None:
    needs_root("the process runtime's cgroups")
    specs, stop = daemon_host.root / "specs", daemon_host.root / "stop-burning"
    write_specs(specs, {"burn": burner(stop, targets={"cpu": 40})})
    daemon_host.configure(f'path = "{specs}"\nresync = 300', autoscale='interval = "1s"')
    daemon_host.start()
    try:
        seen: set[int] = set()

        def grew() -> bool:
            seen.add(len(replicas(daemon_host)))
            return max(seen) >= 2

        wait_for(grew, lambda: f"a scale-up; replicas seen {seen}, events {scaled(daemon_host)}")
        first = scaled(daemon_host)[0]
        assert first.startswith("burn: 1 → "), first
        assert "replicas, cpu " in first and "vs target 40% per replica" in first, first
        metrics = daemon_host.metrics()
        assert f'zlayer_autoscale_target{{service="{DEP}/burn",metric="cpu"}} 40' in metrics

        stop.touch()

        def shrank() -> bool:
            seen.add(len(replicas(daemon_host)))
            return replicas(daemon_host) == [f"{DEP}/burn/1"]

        wait_for(shrank, lambda: f"back to min; seen {seen}, events {scaled(daemon_host)}", 120)
        assert max(seen) <= 3 and min(seen) >= 1, seen  # never outside [min, max]
        last = scaled(daemon_host)[-1]
        assert " → 1 replicas, cpu " in last and "per replica for 3s" in last, last
        state = daemon_host.zlayer("status", "--runtime", "process").stdout
        assert f"{DEP}/burn: autoscaled to 1 replicas" in state, state
    finally:
        stop.touch()


def test_a_kill_9_after_a_scale_up_keeps_the_decided_count(
    daemon_host: Daemon,
) -> None:
    """A decided count is the journal's: a daemon killed after scaling up comes back
    to that count, creating no replica twice; the decision history stays."""
    needs_root("the process runtime's cgroups")
    specs, stop = daemon_host.root / "specs", daemon_host.root / "stop-burning"
    write_specs(specs, {"burn": burner(stop, targets={"cpu": 40}, cooldown="10m")})
    daemon_host.configure(f'path = "{specs}"\nresync = 300', autoscale='interval = "1s"')
    daemon_host.start()
    try:
        wait_for(lambda: len(replicas(daemon_host)) >= 2, "a scale-up")
        stop.touch()  # idle now, but the 10-minute cooldown holds the count
        daemon_host.kill9()
        before = {k: w["runtime_id"] for k, w in observed_workloads_offline(daemon_host).items()}
        count = len(before)
        decisions = scaled(daemon_host)
        finished = len([r for r in daemon_host.reconciles() if r["finished"]])
        daemon_host.start()
        daemon_host.wait_reconciles(finished + 1)
        after = {k: w["runtime_id"] for k, w in observed_workloads(daemon_host).items()}
        assert after == before, (before, after)  # the same replicas, none made again
        assert len(replicas(daemon_host)) == count
        assert scaled(daemon_host)[: len(decisions)] == decisions
        first = next(r for r in daemon_host.reconciles() if r["finished"])  # newest first
        assert first["outcome"] == "no-changes", first
        state = daemon_host.zlayer("status", "--runtime", "process").stdout
        assert f"{DEP}/burn: autoscaled to {count} replicas" in state, state
    finally:
        stop.touch()


def observed_workloads_offline(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """The runtime's workloads without a daemon (``zlayer observe``)."""
    import json

    run = daemon.zlayer("observe", "--runtime", "process")
    assert run.returncode == 0, run.stderr
    return {
        f"{w['deployment']}/{w['service']}/{w['replica']}": w
        for w in json.loads(run.stdout)["workloads"]
        if w["replica"] is not None
    }


def test_requests_through_the_proxy_scale_up_and_a_scale_down_drains_without_a_failure(
    daemon_host: Daemon,
) -> None:
    """``targets: {rps: 5}``, counted by the managed HAProxy: a fast request loop
    scales the service up; a slow one then lets it scale back down after the cooldown,
    while every one of its requests is answered (the leaving replicas drain first)."""
    import textwrap
    import threading
    import time

    from reconciler.routing.proxy import executable
    from tests.cli.test_routes_process import web
    from tests.routing.test_proxy import free_port, get
    from tests.support import unavailable

    needs_root("the process runtime's network namespaces")
    if executable() is None:
        unavailable("HAProxy is not installed (apt-get install haproxy)")
    port = free_port()
    specs = daemon_host.root / "specs"
    specs.mkdir()
    service = web("web", port, 1).replace(
        "scale: {mode: fixed, replicas: 1}",
        "scale: {mode: adaptive, min: 1, max: 3, cooldown: 3s, targets: {rps: 5}}",
    )
    body = textwrap.indent(service, "  ")
    (specs / "app.yaml").write_text(f"version: v1\ndeployment: {DEP}\nservices:\n{body}")
    daemon_host.configure(f'path = "{specs}"\nresync = 300', autoscale='interval = "1s"')
    with daemon_host.config.open("a") as config:
        config.write('\n[docker]\npublish_address = "127.0.0.1"\n')
    pause = [0.0]  # seconds between requests: 0 is as fast as it answers
    failures: list[str] = []
    sent = [0]
    done = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 240  # bounded, whatever happens
        while not done.is_set() and time.monotonic() < deadline:
            try:
                status, _ = get(port)
                if status != 200:
                    failures.append(f"status {status}")
            except OSError as exc:
                failures.append(str(exc))
            sent[0] += 1
            done.wait(pause[0])

    def running() -> int:
        return sum(
            k.startswith(f"{DEP}/web/") and w["status"] == "running"
            for k, w in observed_workloads(daemon_host).items()
        )

    loop = threading.Thread(target=load, daemon=True)
    try:
        daemon_host.start()
        wait_for(lambda: get(port)[0] == 200, "web through the proxy", 90)
        loop.start()
        wait_for(lambda: running() >= 2, lambda: f"a scale-up; {scaled_web(daemon_host)}", 90)
        first = scaled_web(daemon_host)[0]
        assert "replicas, rps " in first and "vs target 5/s per replica" in first, first
        wait_for(lambda: running() == 3 or len(scaled_web(daemon_host)) > 1, "the scale-up", 60)
        pause[0] = 0.5  # about 2 requests a second: below target for every count
        failures.clear()
        before = sent[0]
        wait_for(lambda: running() == 1, lambda: f"back to min; {scaled_web(daemon_host)}", 120)
        assert sent[0] > before
        assert failures == [], failures  # the leaving replicas drained first
    finally:
        done.set()
        loop.join(30)
        stop_proxy(daemon_host.state)


def scaled_web(daemon: Daemon) -> list[str]:
    return [e["message"] for e in reversed(daemon.events(target=f"{DEP}/web", kind="scaled"))]


def test_memory_in_use_against_resources_memory_scales_up(daemon_host: Daemon) -> None:
    """``targets: {memory: 40}`` with ``resources.memory: 100Mi``: a replica holding
    60 MiB (its pages touched) is 60 % of its limit, so the service scales up."""
    import sys

    needs_root("the process runtime's cgroups")
    specs = daemon_host.root / "specs"
    hold = (
        "import time; b = bytearray(60 * 1024 * 1024); "
        "b[::4096] = b'x' * len(b[::4096]); time.sleep(3600)"
    )
    service = {
        "image": {"name": "busybox"},
        "command": {"entrypoint": [sys.executable, "-c", hold]},
        "network_mode": "host",
        "stop_grace_period": "1s",
        "resources": {"memory": "100Mi"},
        "scale": {"mode": "adaptive", "min": 1, "max": 2, "targets": {"memory": 40}},
    }
    write_specs(specs, {"hold": service})
    daemon_host.configure(f'path = "{specs}"\nresync = 300', autoscale='interval = "1s"')
    daemon_host.start()

    def count() -> int:
        return sum(
            k.startswith(f"{DEP}/hold/") and w["status"] == "running"
            for k, w in observed_workloads(daemon_host).items()
        )

    wait_for(lambda: count() == 2, "a scale-up by memory", 90)
    (event,) = daemon_host.events(target=f"{DEP}/hold", kind="scaled")
    assert event["message"].startswith("hold: 1 → 2 replicas, memory "), event
    assert "vs target 40% per replica" in event["message"], event

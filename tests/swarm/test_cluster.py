"""The three-node swarm of tests/swarm_support.py works as a cluster.

These tests prove the test cluster itself, before any driver is tested on it: three
engines that are distinct nodes of one swarm (one Leader), an overlay network that
spans them (a replicated service's tasks on three nodes find each other through
``tasks.<service>`` DNS), ports published in host mode reachable on each node's address
(from the client namespace), and a node whose engine stops going Down and coming back
Ready as itself. They run as root (the fixtures call ``needs_root``); run them with::

    CI=true .venv/bin/python -m pytest tests/swarm -q
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import pytest

from tests.docker_support import engine_request
from tests.support import wait_for
from tests.swarm_support import (
    IMAGE,
    LABEL,
    Swarm,
    docker,
    engine_post,
    node_status,
    service_tasks,
    start_node,
    stop_node,
    swarm_nodes,
    try_fetch,
    wait_node_status,
)

pytest_plugins = ["tests.swarm_support"]

SECOND = 1_000_000_000
"""Nanoseconds, the unit of the Engine API's durations."""


def test_three_distinct_nodes_one_leader(swarm: Swarm) -> None:
    """Every node is Ready at its own address with its own host name, engine ID and
    labels; node 1 is the only manager and the Leader."""
    seen = swarm_nodes(swarm)
    assert sorted(seen) == sorted(node.node_id for node in swarm.nodes)
    infos = {}
    for node in swarm.nodes:
        found = seen[node.node_id]
        assert found["Status"]["State"] == "ready", found["Status"]
        assert found["Status"]["Addr"] == node.address
        assert found["Description"]["Hostname"] == node.name
        assert found["Spec"]["Availability"] == "active"
        assert found["Spec"]["Labels"] == node.labels
        status, info = engine_request(node.socket, "GET", "/info")
        assert status == 200
        assert info["Name"] == node.name
        assert info["ID"] == node.engine_id
        assert info["Swarm"]["NodeID"] == node.node_id
        assert info["Swarm"]["LocalNodeState"] == "active"
        assert IMAGE in {t for i in _images(node.socket) for t in i.get("RepoTags") or ()}
        infos[node.name] = info
    assert len({i["ID"] for i in infos.values()}) == 3, "engines share an engine ID"
    assert len({i["Name"] for i in infos.values()}) == 3
    assert [n.labels["zone"] for n in swarm.nodes] == ["a", "b", "c"]
    assert [n.labels["name"] for n in swarm.nodes] == ["node-1", "node-2", "node-3"]

    manager = seen[swarm.manager.node_id]
    assert manager["Spec"]["Role"] == "manager"
    assert manager["ManagerStatus"]["Leader"] is True
    assert manager["ManagerStatus"]["Reachability"] == "reachable"
    assert infos[swarm.manager.name]["Swarm"]["ControlAvailable"] is True
    for worker in swarm.workers:
        assert seen[worker.node_id]["Spec"]["Role"] == "worker"
        assert "ManagerStatus" not in seen[worker.node_id]
        assert infos[worker.name]["Swarm"]["ControlAvailable"] is False


def _images(url: str) -> list[dict[str, Any]]:
    status, images = engine_request(url, "GET", "/images/json")
    assert status == 200
    return list(images)


def test_spread_service_on_an_overlay(swarm: Swarm, swarm_deployment: str) -> None:
    """Three dnsrr replicas, at most one per node, on an attachable overlay, port 8080
    published in host mode: one task on each node; each node's address answers with the
    host name of the task on that node; ``tasks.<service>`` resolves, inside a task on
    the overlay, to exactly the three tasks' overlay addresses."""
    labels = {LABEL: swarm_deployment}
    network = f"{swarm_deployment}-net"
    status, body = engine_post(
        swarm.url,
        "/networks/create",
        {"Name": network, "Driver": "overlay", "Attachable": True, "Labels": labels},
    )
    assert status == 201, body
    service = f"{swarm_deployment}-web"
    serve = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w"
    spec = {
        "Name": service,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": IMAGE,
                "Command": ["sh", "-c", serve],
                "StopGracePeriod": 1 * SECOND,  # httpd as pid 1 ignores SIGTERM
            },
            "Placement": {"MaxReplicas": 1},
            "Networks": [{"Target": network}],
        },
        "Mode": {"Replicated": {"Replicas": 3}},
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 8080,
                    "PublishedPort": 8080,
                    "PublishMode": "host",
                }
            ],
        },
    }
    status, body = engine_post(swarm.url, "/services/create", spec)
    assert status == 201, body

    def three_running() -> list[dict[str, Any]]:
        found = service_tasks(swarm, service)
        return found if len(found) == 3 else []

    tasks = wait_for(
        three_running,
        lambda: f"3 running tasks of {service}: {_task_states(swarm, service)}",
        90,
        interval=0.2,
    )
    by_node = {task["NodeID"]: task for task in tasks}
    assert sorted(by_node) == sorted(n.node_id for n in swarm.nodes), "not one task per node"

    for node in swarm.nodes:
        container = by_node[node.node_id]["Status"]["ContainerStatus"]["ContainerID"]
        url = f"http://{node.address}:8080/"
        answer = wait_for(
            partial(try_fetch, swarm, url), f"an answer on {node.address}:8080", 30, interval=0.2
        )
        assert answer is not None
        assert answer.strip() == container[:12], f"{node.name} answered for another task"

    expected = {_overlay_address(task, network) for task in tasks}
    assert len(expected) == 3
    worker = swarm.workers[0]
    container = by_node[worker.node_id]["Status"]["ContainerStatus"]["ContainerID"]
    resolved: set[str] = set()

    def resolves() -> bool:
        run = docker(worker, "exec", container, "nslookup", f"tasks.{service}", check=False)
        resolved.clear()
        resolved.update(_answers(run.stdout))
        return resolved == expected

    wait_for(resolves, lambda: f"tasks.{service} to give {expected} (gave {resolved})", 30)


def _task_states(swarm: Swarm, service: str) -> str:
    tasks = service_tasks(swarm, service, state=None)
    return json.dumps([(t["Status"]["State"], t["Status"].get("Err")) for t in tasks])


def _overlay_address(task: dict[str, Any], network: str) -> str:
    for attachment in task["NetworksAttachments"]:
        if attachment["Network"]["Spec"]["Name"] == network:
            return str(attachment["Addresses"][0].split("/")[0])
    raise AssertionError(f"task {task['ID']} is not on {network}")


def _answers(nslookup: str) -> set[str]:
    """The IPv4 addresses of busybox nslookup's answer (after the server's lines)."""
    answer = nslookup.split("Name:", 1)[1] if "Name:" in nslookup else ""
    return set(re.findall(r"^Address:?\s+(\d+\.\d+\.\d+\.\d+)\s*$", answer, re.MULTILINE))


@pytest.mark.slow
def test_stopped_worker_goes_down_and_rejoins(swarm: Swarm) -> None:
    """A worker whose dockerd is stopped (by its pid) is seen Down by the manager while
    the others stay Ready; started again on its data root it is Ready again, the same
    node with the same engine ID."""
    worker = swarm.workers[-1]
    old_pid = stop_node(worker)
    assert worker.pid is None
    with pytest.raises(FileNotFoundError):
        open(f"/proc/{old_pid}/cmdline").close()  # the dockerd is gone
    waited = wait_node_status(swarm, worker, "down", 60)
    print(f"{worker.name} Down {waited:.1f}s after its engine stopped")
    assert all(node_status(swarm, n) == "ready" for n in swarm.nodes if n != worker)

    new_pid = start_node(worker)
    assert new_pid != old_pid
    waited = wait_node_status(swarm, worker, "ready", 60)
    print(f"{worker.name} Ready {waited:.1f}s after its engine answered again")
    status, info = engine_request(worker.socket, "GET", "/info")
    assert status == 200
    assert info["ID"] == worker.engine_id
    assert info["Swarm"]["NodeID"] == worker.node_id
    assert sorted(swarm_nodes(swarm)) == sorted(n.node_id for n in swarm.nodes)

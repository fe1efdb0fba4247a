"""The Swarm ``ServiceSpec`` a compiled service becomes, and what the swarm runtime
refuses or warns about (pure: no engine; the real swarm is tests/swarm)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from reconciler.drivers.swarm import SwarmDriver
from reconciler.drivers.swarm import spec as sw
from reconciler.drivers.swarm.driver import _as_labelled, _detected, ipvs_available
from reconciler.route_table import routed_service, routes_of, table_of
from tests.docker_support import compile_services

WEB = """
web:
  image: {name: "nginx:1.27"}
  command: {entrypoint: [/srv/run], args: [--port, "8080"]}
  env: {MODE: prod, TOKEN: "$S:token"}
  scale: {mode: fixed, replicas: 3}
  resources: {cpu: 0.5, memory: 256Mi}
  node_selector: {labels: {zone: b}, prefer_labels: {rack: r1}}
  endpoints:
    - {name: http, protocol: http, port: 80, target_port: 8080, expose: public}
    - {name: admin, protocol: tcp, port: 9000, expose: internal}
  health: {check: {type: command, command: "test -f /ok"}, interval: 2s, start_grace: 3s}
"""
CANARY = "s3cr3t-canary-value"


def web(text: str = WEB) -> sw.DesiredService:
    return compile_services("demo", text, secrets={"token": CANARY})["web"]


def test_the_spec_carries_identity_labels_and_the_service_itself() -> None:
    service = web()
    spec = sw.service_spec(service, "rev-9", 3, secrets={"TOKEN": "sid-1"})
    assert spec["Name"] == "demo_web"
    labels = spec["Labels"]
    assert (labels[sw.DEPLOYMENT], labels[sw.SERVICE], labels[sw.REVISION]) == (
        "demo", "web", "rev-9"
    )  # fmt: skip
    assert labels[sw.FINGERPRINT] == service.fingerprint
    assert json.loads(labels[sw.PLACEMENT]) == {
        "node_selector": {"labels": {"zone": "b"}, "prefer_labels": {"rack": "r1"}}
    }
    task = spec["TaskTemplate"]
    container = task["ContainerSpec"]
    assert container["Image"] == "nginx:1.27"
    assert container["Labels"][sw.FINGERPRINT] == service.fingerprint  # each task says
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    assert task["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 2**20}
    assert task["Placement"]["Constraints"] == ["node.labels.zone==b"]
    assert task["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.labels.rack"}}
    ]
    assert task["Networks"] == [{"Target": "zlayer-demo", "Aliases": ["web"]}]
    assert container["Healthcheck"]["Test"] == ["CMD-SHELL", "test -f /ok"]
    assert container["Healthcheck"]["Interval"] == 2_000_000_000
    # Only the public endpoint is published, on the nodes themselves (no IPVS needed).
    assert spec["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 80, "PublishMode": "host"}
        ],
    }
    assert spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["UpdateConfig"]["Order"] == "stop-first"  # a host port cannot be shared


def test_a_secret_is_never_in_the_spec_and_reaches_the_process_through_a_file() -> None:
    service = web()
    spec = sw.service_spec(service, "rev-1", 3, secrets={"TOKEN": "sid-1"})
    assert CANARY not in json.dumps(spec)
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Env"] == ["MODE=prod"]
    (secret,) = container["Secrets"]
    assert secret["SecretID"] == "sid-1"
    assert secret["File"]["Name"] == "zlayer.TOKEN"
    assert secret["SecretName"] == sw.secret_name(service, "TOKEN", service.config["env"]["TOKEN"])
    # The wrapper exports /run/secrets/zlayer.* and execs the spec's own command.
    assert container["Command"][:2] == ["/bin/sh", "-c"]
    assert container["Command"][3:] == ["sh", "/srv/run"]
    assert container["Args"] == ["--port", "8080"]
    assert sw.SECRETS_PREFIX in container["Command"][2]


def test_a_new_secret_value_is_a_new_secret_name() -> None:
    one = compile_services("demo", WEB, secrets={"token": "a"})["web"]
    two = compile_services("demo", WEB, secrets={"token": "b"})["web"]
    names = {sw.secret_name(s, "TOKEN", s.config["env"]["TOKEN"]) for s in (one, two)}
    assert len(names) == 2 and all(n != "a" and n != "b" for n in names)


def test_what_the_swarm_cannot_do_is_an_error_or_a_warning() -> None:
    text = WEB.replace('  command: {entrypoint: [/srv/run], args: [--port, "8080"]}\n', "")
    text += "  network_mode: host\n  ulimits: {nofile: {soft: 10, hard: 10}}\n"
    limits = sw.limits(web(text))
    assert any("set command.entrypoint" in e for e in limits.errors), limits.errors
    assert any("network_mode host" in e for e in limits.errors), limits.errors
    assert "demo/web: ulimits not applied on the swarm runtime" in limits.warnings
    assert not sw.limits(web()).errors


def test_a_run_is_a_replicated_job_that_is_never_restarted() -> None:
    job = compile_services("demo", 'report:\n  rtype: job\n  image: {name: "busybox"}\n')["report"]
    spec = sw.run_spec(job, "r7", "rev-1")
    assert spec["Name"] == "demo_report_run_r7"
    assert spec["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert spec["TaskTemplate"]["RestartPolicy"] == {"Condition": "none"}
    assert spec["Labels"][sw.RUN] == "r7" and "UpdateConfig" not in spec
    definition = sw.definition_spec(job, "rev-1")
    assert definition["Labels"][sw.DEFINITION] == "job"
    assert definition["Name"].startswith("demo_report_def_")


def test_tasks_become_replicas_by_slot_wanting_the_running_one() -> None:
    """The engine's task list as replicas: per slot the task it wants running (a task on
    a node that went down still says running, but is wanted gone); a slot scaled away
    is no replica any more; a failed slot within the count shows as exited."""
    from reconciler.drivers.swarm.driver import _task_workloads
    from reconciler.observed import ClusterService

    api = ClusterService(deployment="demo", service="api", fingerprint="f", replicas=2)

    def task(slot: int, desired: str, state: str, node: str, at: str, code: int = 0) -> dict:
        return {
            "ID": f"t{slot}{node}", "ServiceID": "s1", "Slot": slot, "NodeID": node,
            "DesiredState": desired, "UpdatedAt": at,
            "Status": {"State": state, "ContainerStatus": {"ExitCode": code}},
            "Spec": {"ContainerSpec": {"Labels": {sw.FINGERPRINT: "f"}}},
        }  # fmt: skip

    tasks = [
        task(1, "shutdown", "running", "n-down", "2026-01-01T00:00:01Z"),  # its node is gone
        task(1, "running", "running", "n2", "2026-01-01T00:00:00Z"),
        task(2, "shutdown", "failed", "n3", "2026-01-01T00:00:02Z", code=3),
        task(3, "shutdown", "shutdown", "n3", "2026-01-01T00:00:03Z"),  # scaled 3 → 2
    ]
    found = _task_workloads(tasks, {"s1": api}, {"n2": "node-2", "n3": "node-3"}, {})
    assert [(w.replica, w.status, w.exit_code, w.node) for w in found] == [
        (1, "running", None, "node-2"),
        (2, "exited", 3, "node-3"),
    ]


def test_behind_the_proxy_a_task_publishes_only_what_the_proxy_cannot_serve() -> None:
    admin = "    - {name: admin, protocol: tcp, port: 9000, expose: internal}\n"
    udp = "    - {name: dns, protocol: udp, port: 53, expose: public}\n"
    text = WEB.replace(admin, admin + udp)
    service = web(text)
    alone = sw.service_spec(service, "r", 3, proxied=False)
    assert [p["PublishedPort"] for p in alone["EndpointSpec"]["Ports"]] == [80, 53]
    assert alone["UpdateConfig"]["Order"] == "stop-first"
    proxied = sw.service_spec(service, "r", 3, proxied=True)
    assert proxied["EndpointSpec"]["Ports"] == [
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 53, "PublishMode": "host"}
    ]
    assert proxied["UpdateConfig"]["Order"] == "stop-first"  # udp still holds a node port
    only_http = sw.service_spec(web(), "r", 3, proxied=True)
    assert only_http["EndpointSpec"]["Ports"] == []
    assert only_http["UpdateConfig"]["Order"] == "start-first"


def test_what_the_proxy_serves_is_no_warning_and_https_is_refused() -> None:
    routed = WEB.replace("expose: public}", "expose: public, host: a.example.test}")
    without = sw.limits(web(routed), proxied=False)
    assert any("host not applied" in w and "proxy_image is empty" in w for w in without.warnings)
    assert any("served only on the nodes that run a task" in w for w in without.warnings)
    behind = sw.limits(web(routed), proxied=True)
    assert not [w for w in behind.warnings if "endpoint http" in w], behind.warnings
    https = WEB.replace("protocol: http, port: 80", "protocol: https, port: 443")
    pem = {"token": CANARY, "tls.demo.web.http.pem": "certificate and key"}
    tls = compile_services("demo", https, secrets=pem)["web"]
    assert any("https is not served" in e for e in sw.limits(tls, proxied=True).errors)
    named = compile_services("demo", WEB.replace("web:", "zlayer-proxy:", 1),
                             secrets={"token": CANARY})["zlayer-proxy"]  # fmt: skip
    assert any("is the deployment's proxy's" in e for e in sw.limits(named).errors)


def test_the_proxy_is_a_global_service_publishing_its_ports_on_every_node() -> None:
    spec = sw.proxy_spec("demo", "haproxy:lts", ("cid", "cname"), "d" * 64, "[]", [80, 8080, 80])
    assert spec["Name"] == "demo_zlayer-proxy"
    assert spec["Mode"] == {"Global": {}}
    assert spec["Labels"] == {sw.DEPLOYMENT: "demo", sw.PROXY: "d" * 64, sw.ROUTES: "[]"}
    assert sw.SERVICE not in spec["Labels"]  # no service of the specs: never pruned as one
    assert [(p["PublishedPort"], p["PublishMode"]) for p in spec["EndpointSpec"]["Ports"]] == [
        (80, "host"), (8080, "host")
    ]  # fmt: skip
    assert spec["UpdateConfig"]["Order"] == "stop-first"
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Configs"][0]["File"]["Name"] == sw.PROXY_CONFIG_PATH
    assert container["Configs"][0]["ConfigID"] == "cid"
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "zlayer-demo"}]


def test_how_a_name_resolves_is_a_note_and_the_services_endpoint_mode(tmp_path: Path) -> None:
    service = web()
    assert sw.limits(service).notes == (
        "internal endpoints admin: web resolves to each task's own address "
        "(endpoint_mode dnsrr: no IPVS for a virtual IP)",
    )
    assert "virtual IP, balanced over its tasks by IPVS" in sw.limits(service, True, "vip").notes[0]
    assert sw.service_spec(service, "r", 3, endpoint_mode="vip")["EndpointSpec"]["Mode"] == "vip"
    public_only = WEB.replace(
        "    - {name: admin, protocol: tcp, port: 9000, expose: internal}\n", ""
    )
    assert sw.limits(web(public_only)).notes == ()


def test_ipvs_is_detected_on_this_host_only(tmp_path: Path) -> None:
    assert not ipvs_available(tmp_path)
    assert _detected("unix:///run/docker.sock", tmp_path) == "dnsrr"
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "ip_vs").write_text("IP Virtual Server version 1.2.1\n")
    assert ipvs_available(tmp_path)
    assert _detected("unix:///run/docker.sock", tmp_path) == "vip"
    assert _detected("tcp://10.0.0.1:2376", tmp_path) == "dnsrr"  # another host's kernel
    assert SwarmDriver("tcp://10.0.0.1:2376", endpoint_mode="vip").endpoint_mode == "vip"
    assert SwarmDriver("tcp://10.0.0.1:2376").endpoint_mode == "dnsrr"


def test_the_proxys_label_records_no_health_query_and_no_replica_count() -> None:
    text = WEB.replace(
        'health: {check: {type: command, command: "test -f /ok"}, interval: 2s, start_grace: 3s}',
        'health: {check: {type: http, url: "http://localhost:8080/ok?token=t0ps3cret"}}',
    )
    routed = routed_service(web(text))
    assert "t0ps3cret" in json.dumps(dataclasses.asdict(routed))
    labelled = _as_labelled(routed)
    assert "t0ps3cret" not in json.dumps(dataclasses.asdict(labelled))
    assert labelled.replicas is None and labelled.health["url"] == "http://localhost:8080/ok?…"
    # What the routes show is the same either way: no reroute for it.
    assert routes_of(table_of([labelled]))[0].check == routes_of(table_of([routed]))[0].check

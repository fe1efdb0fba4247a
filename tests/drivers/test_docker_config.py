"""The Docker driver's pure translations: config → create body, containers → workloads,
limits, engine errors. No engine needed (the driver itself: test_docker_driver.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import pytest

from reconciler.desired import _NOT_CONFIG, CompileInputs, DesiredService, compile_specs
from reconciler.drivers.base import Limits
from reconciler.drivers.docker.config import (
    create_body,
    extra_hosts,
    parse_size,
    parse_swap,
    stop_timeout,
    tmpfs_mode,
)
from reconciler.drivers.docker.errors import engine_error
from reconciler.drivers.docker.labels import (
    container_labels,
    container_name,
    deployment_filter,
    network_name,
    volume_name,
)
from reconciler.drivers.docker.limits import (
    KNOWN_KEYS,
    KNOWN_RESOURCES,
    EngineFacts,
    service_limits,
)
from reconciler.drivers.docker.observation import (
    _NEVER,
    config_from_labels,
    names_outdated,
    workload_from_inspect,
    workload_from_summary,
)
from reconciler.errors import (
    Conflict,
    NotFound,
    PermanentDriverError,
    RuntimeUnreachable,
    TemporaryDriverError,
)
from reconciler.fingerprint import canonical_json
from reconciler.observed import WorkloadId
from reconciler.spec.blocks import ResourcesSpec
from reconciler.spec.load import load_text
from reconciler.spec.models import ServiceSpec
from tests.docker_support import compile_services

FULL = """
web:
  image: {name: "busybox:1.36"}
  command: {entrypoint: [sh], args: ["-c", "x"], workdir: /tmp}
  env: {A: "1", TOKEN: "$S:token"}
  resources:
    cpu: 0.5
    memory: 64Mi
    pids_limit: 100
    cpuset: "0"
    cpu_shares: 512
    memory_swap: 128Mi
    memory_reservation: 32Mi
    memory_swappiness: 10
    oom_score_adj: 5
    oom_kill_disable: true
    blkio_weight: 300
  storage:
    - {type: bind, source: /srv/in, target: /h, readonly: true}
    - {type: named, name: data, target: /data}
    - {type: anonymous, target: /anon}
    - {type: tmpfs, target: /t, size: 10Mi, mode: 1777}
  endpoints:
    - {name: http, protocol: http, port: 80, target_port: 8080, expose: public}
    - {name: dns, protocol: udp, port: 53}
  port_mappings: [{container_port: 9000, host_port: 19000, protocol: udp}, {container_port: 9100}]
  expose: ["7000", "7001/udp"]
  capabilities: [NET_ADMIN]
  cap_drop: [ALL]
  privileged: false
  devices: [{path: /dev/null}, {path: /dev/zero, write: false, mknod: true}]
  sysctls: {net.core.somaxconn: "1024"}
  ulimits: {nofile: {soft: 1024, hard: 2048}, core: {hard: 0}}
  labels: {team: platform}
  stop_signal: SIGINT
  stop_grace_period: 2500ms
  user: "65534"
  hostname: h
  dns: [1.1.1.1]
  extra_hosts: ["x:1.2.3.4"]
  security_opt: ["no-new-privileges"]
  read_only_root_fs: true
  tty: true
  stdin_open: true
  pid_mode: host
  extra_groups: [video]
  init_container: true
  logs: {max_size_bytes: 1048576}
  scale: {mode: fixed, replicas: 1}
  depends: [{service: db, condition: started}]
db:
  image: {name: "busybox:1.36"}
"""


def _full() -> DesiredService:
    return compile_services("demo", FULL, secrets={"token": "s3cr3t"})["web"]


def _one(fields: str, *, replicas: int = 1, deployment: str = "demo") -> DesiredService:
    indented = "\n".join("  " + line for line in fields.strip("\n").splitlines())
    text = (
        f"web:\n  image: {{name: busybox}}\n  scale: {{mode: fixed, replicas: {replicas}}}\n"
        + indented
    )
    return compile_services(deployment, text)["web"]


def test_create_body_maps_every_docker_field() -> None:
    service = _full()
    body = create_body(service, 1, "rev-9", publish_address="192.0.2.10")
    host = body.pop("HostConfig")
    labels = body.pop("Labels")
    assert body == {
        "Image": "busybox:1.36",
        "Entrypoint": ["sh"],
        "Cmd": ["-c", "x"],
        "WorkingDir": "/tmp",
        "Env": ["A=1", "TOKEN=s3cr3t"],
        "Tty": True,
        "OpenStdin": True,
        "User": "65534",
        "Hostname": "h",
        "StopSignal": "SIGINT",
        "StopTimeout": 3,
        "Volumes": {"/anon": {}},
        "ExposedPorts": {
            "8080/tcp": {},
            "53/udp": {},
            "9000/udp": {},
            "9100/tcp": {},
            "7000/tcp": {},
            "7001/udp": {},
        },
        "NetworkingConfig": {"EndpointsConfig": {"zlayer-demo": {"Aliases": ["web", "web-1"]}}},
    }
    assert host == {
        "RestartPolicy": {"Name": "no"},
        "NanoCpus": 500_000_000,
        "Memory": 64 * 1024**2,
        "MemorySwap": 128 * 1024**2,
        "MemoryReservation": 32 * 1024**2,
        "PidsLimit": 100,
        "CpusetCpus": "0",
        "CpuShares": 512,
        "MemorySwappiness": 10,
        "OomScoreAdj": 5,
        "OomKillDisable": True,
        "BlkioWeight": 300,
        "Mounts": [
            {"Type": "bind", "Source": "/srv/in", "Target": "/h", "ReadOnly": True},
            {"Type": "volume", "Source": "demo-data", "Target": "/data", "ReadOnly": False},
        ],
        "Tmpfs": {"/t": "size=10485760,mode=1777"},
        "NetworkMode": "zlayer-demo",
        "Dns": ["1.1.1.1"],
        "ExtraHosts": ["x:1.2.3.4"],
        "PortBindings": {
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}],  # for the proxy
            "9000/udp": [{"HostIp": "0.0.0.0", "HostPort": "19000"}],
            "9100/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}],
        },
        "CapAdd": ["NET_ADMIN"],
        "CapDrop": ["ALL"],
        "Sysctls": {"net.core.somaxconn": "1024"},
        "SecurityOpt": ["no-new-privileges"],
        "ReadonlyRootfs": True,
        "PidMode": "host",
        "GroupAdd": ["video"],
        "Init": True,
        "Devices": [
            {"PathOnHost": "/dev/null", "PathInContainer": "/dev/null", "CgroupPermissions": "rw"},
            {"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zero", "CgroupPermissions": "rm"},
        ],
        "Ulimits": [
            {"Name": "nofile", "Soft": 1024, "Hard": 2048},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1048576"}},
    }
    assert labels == {
        "team": "platform",
        "zlayer.deployment": "demo",
        "zlayer.service": "web",
        "zlayer.replica": "1",
        "zlayer.fingerprint": service.fingerprint,
        "zlayer.config": canonical_json(service.config),
        "zlayer.revision": "rev-9",
        "zlayer.depends": "db",
        "zlayer.publish": "proxy",
    }


def test_labels_carry_the_config_with_secrets_as_hashes_only() -> None:
    service = _full()
    labels = container_labels(service, 1, "r")
    assert "s3cr3t" not in canonical_json(labels)
    config = config_from_labels(labels)
    assert config == dict(service.config)
    assert config["env"]["TOKEN"]["hmac"].startswith("hmac-sha256:")


def test_image_defaults_stay_when_the_spec_has_no_command() -> None:
    body = create_body(_one(""), 1, "r")
    assert "Entrypoint" not in body
    assert "Cmd" not in body
    assert "StopTimeout" not in body
    assert body["HostConfig"] == {"RestartPolicy": {"Name": "no"}, "NetworkMode": "zlayer-demo"}


def test_definition_has_no_replica_label_and_publishes_nothing() -> None:
    text = """
    job:
      rtype: job
      image: {name: busybox}
      endpoints: [{name: http, protocol: http, port: 80, expose: public}]
    """
    service = compile_services("demo", text)["job"]
    body = create_body(service, None, "r")
    assert body["Labels"]["zlayer.replica"] == ""
    assert "PortBindings" not in body["HostConfig"]
    assert body["NetworkingConfig"]["EndpointsConfig"]["zlayer-demo"] == {"Aliases": ["job"]}
    assert container_name(service.workload_id(None)) == "demo-job"


def test_routed_endpoints_are_published_on_loopback_for_the_proxy_at_any_scale() -> None:
    fields = (
        "endpoints: [{name: http, protocol: http, port: 80, target_port: 8080, expose: public,"
        " host: a.example.test, path: /api}]"
    )
    for replicas in (1, 3):
        service = _one(fields, replicas=replicas)
        body = create_body(service, 2, "r", publish_address="0.0.0.0")
        assert body["HostConfig"]["PortBindings"] == {
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
        }
        assert body["Labels"]["zlayer.publish"] == "proxy"
        warnings = service_limits(service, EngineFacts()).warnings
        assert not any("endpoint http" in w for w in warnings), warnings


def test_a_public_udp_endpoint_is_published_for_a_single_replica_only() -> None:
    fields = "endpoints: [{name: dns, protocol: udp, port: 53, expose: public}]"
    single = create_body(_one(fields), 1, "r", publish_address="0.0.0.0")
    assert single["HostConfig"]["PortBindings"] == {
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "53"}]
    }
    assert "zlayer.publish" not in single["Labels"]
    pair = _one(fields, replicas=2)
    assert "PortBindings" not in create_body(pair, 1, "r")["HostConfig"]
    warnings = service_limits(pair, EngineFacts()).warnings
    assert any("endpoint dns is public but the service has 2 replicas: not published" in w
               for w in warnings), warnings  # fmt: skip


def test_on_the_host_network_a_public_endpoint_is_not_routed() -> None:
    fields = (
        "network_mode: host\n"
        "endpoints: [{name: w, protocol: http, port: 80, expose: public, path: /api}]"
    )
    service = _one(fields)
    body = create_body(service, 1, "r")
    assert "PortBindings" not in body["HostConfig"]
    assert "zlayer.publish" not in body["Labels"]
    warnings = service_limits(service, EngineFacts()).warnings
    assert any("endpoint w: path not applied: the managed proxy does not serve it" in w
               for w in warnings), warnings  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("host", "host"), ("none", "none"), ("bridge", "bridge"), ("bridge:shared", "shared")],
)
def test_network_modes(mode: str, expected: str) -> None:
    fields = f"network_mode: {mode}\nendpoints: [{{name: h, protocol: tcp, port: 80}}]"
    body = create_body(_one(fields), 1, "r")
    assert body["HostConfig"]["NetworkMode"] == expected
    assert "NetworkingConfig" not in body
    if mode in ("host", "none"):
        assert "ExposedPorts" not in body
    else:
        assert body["ExposedPorts"] == {"80/tcp": {}}


def test_container_network_mode_and_host_network() -> None:
    body = create_body(_one("network_mode: container:other"), 1, "r")
    assert body["HostConfig"]["NetworkMode"] == "container:other"
    assert create_body(_one("host_network: true"), 1, "r")["HostConfig"]["NetworkMode"] == "host"


def test_gpu_request_only_with_a_gpu_runtime() -> None:
    service = _one("resources: {gpu: {count: 2}}")
    assert "DeviceRequests" not in create_body(service, 1, "r")["HostConfig"]
    body = create_body(service, 1, "r", gpu=True)
    assert body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}
    ]
    assert service_limits(service, EngineFacts(gpu=True)).warnings == ()
    warnings = service_limits(service, EngineFacts()).warnings
    assert warnings == (
        "demo/web: resources.gpu: the engine has no GPU runtime (nvidia); "
        "the service runs without a GPU",
    )


def test_limits_of_a_plain_service_are_empty() -> None:
    assert service_limits(_full(), EngineFacts(arch="amd64", ncpu=8)) == Limits()


def _warnings(fields: str, **kw: Any) -> str:
    return "\n".join(service_limits(_one(fields, **kw), EngineFacts()).warnings)


def _errors(fields: str, **kw: Any) -> str:
    facts = EngineFacts(ncpu=2)
    return "\n".join(service_limits(_one(fields, **kw), facts).errors)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("storage: [{type: s3, bucket: b, target: /s3}]", "no S3 mounts; bucket b is not mounted"),
        ("network: {join: {mode: open}}", "network (overlays, join policy) is not implemented"),
        ("service_type: wasm_http", "service_type wasm_http needs a WASM runtime"),
        ("storage: [{type: named, name: d, target: /d, size: 1Gi}]", "size is not enforced"),
        ("storage: [{type: anonymous, target: /d, tier: cached}]", "tier cached has no Docker"),
        ("isolation: hyperv", "isolation hyperv exists only on Windows"),
        ("localhost_reachability: never", "localhost_reachability never is not applied"),
        ("logs: {retention_secs: 60}", "logs.retention_secs is not applied"),
        ("network_mode: host\nport_mappings: [{container_port: 1}]", "ports are not published"),
        ("endpoints: [{name: w, protocol: http, port: 80, stream: {}}]", "stream not applied"),
        ("overlay: {mode: shared}", "overlay is not implemented"),
        ("resources: {gpu: {count: 1, sharing: mps}}", "resources.gpu.sharing is not applied"),
    ],
)
def test_limits_warn_about_what_docker_cannot_honour(fields: str, expected: str) -> None:
    assert expected in _warnings(fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            "init: {steps: [{id: fetch, uses: init.s3_pull, with: {bucket: b}}]}",
            "init step 'fetch' uses init.s3_pull, which the docker runtime cannot run",
        ),
        ("labels: {zlayer.service: x}", "label 'zlayer.service' uses the prefix 'zlayer.'"),
        ("storage: [{type: bind, source: rel/dir, target: /d}]", "must be an absolute path"),
        ("storage: [{type: named, name: 'a b', target: /d}]", "cannot become a Docker volume"),
        ("storage: [{type: tmpfs, target: /t, mode: 1999}]", "not octal permission digits"),
        ("storage: [{type: tmpfs, target: /t, size: lots}]", "'lots' is not a size"),
        ("resources: {memory_swap: lots}", "resources.memory_swap: 'lots' is not a size"),
        ("resources: {cpu: 4}", "resources.cpu 4 exceeds the engine's 2 CPUs"),
        ("network_mode: 'container:x'\nhostname: h", "hostname cannot be set"),
        ("extra_hosts: ['db:10.0.0.300']", "extra_hosts entry 'db:10.0.0.300' is not NAME:ADD"),
        ("extra_hosts: ['no-address']", "extra_hosts entry 'no-address' is not NAME:ADDRESS"),
        ("extra_hosts: [':10.0.0.1']", "extra_hosts entry ':10.0.0.1' is not NAME:ADDRESS"),
    ],
)
def test_limits_refuse_what_would_fail_on_the_host(fields: str, expected: str) -> None:
    assert expected in _errors(fields)


def test_good_extra_hosts_pass() -> None:
    assert _errors("extra_hosts: ['db:10.0.0.5', 'gw:host-gateway', 'v6:fd00::1']") == ""


def test_fixed_host_ports_refused_for_several_replicas() -> None:
    fields = "port_mappings: [{container_port: 80, host_port: 8080}]"
    assert "can bind only one replica" in _errors(fields, replicas=2)
    assert _errors(fields, replicas=1) == ""


def test_offline_secrets_cannot_be_created() -> None:
    text = "version: v1\ndeployment: demo\nservices:\n  web:\n    image: {name: busybox}\n"
    text += '    env: {TOKEN: "$S:token"}\n'
    loaded, _ = load_text(text, "spec.yaml")
    assert loaded is not None
    state, _ = compile_specs([loaded], "r", CompileInputs())
    assert state is not None
    service = state.services[("demo", "web")]
    assert "known by name only" in "\n".join(service_limits(service, EngineFacts()).errors)
    with pytest.raises(ValueError, match="known by name only"):
        create_body(service, 1, "r")


def test_engine_facts_from_docker_info() -> None:
    info = {
        "OSType": "linux",
        "Architecture": "aarch64",
        "NCPU": 4,
        "Runtimes": {"runc": {}, "nvidia": {}},
        "SwapLimit": False,
        "MemoryLimit": True,
    }
    facts = EngineFacts.from_info(info)
    assert facts == EngineFacts(
        os="linux", arch="arm64", ncpu=4, gpu=True, unsupported=frozenset({"memory_swap"})
    )
    warnings = service_limits(_one("resources: {memory_swap: 1Gi}"), facts).warnings
    assert warnings == (
        "demo/web: resources.memory_swap: the engine's kernel cannot apply this limit; "
        "Docker ignores it",
    )
    platform = _one("platform: {os: linux, arch: amd64}")
    assert "differs from the engine's linux/arm64" in service_limits(platform, facts).warnings[0]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64Mi", 64 * 1024**2),
        ("1Gi", 1024**3),
        ("512m", 512 * 1024**2),
        ("1048576", 1048576),
        ("2k", 2048),
        ("3GB", 3 * 1024**3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_sizes_modes_and_durations_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_size("1.5Gi")
    assert parse_swap("-1") == -1
    assert tmpfs_mode(755) == "755"
    with pytest.raises(ValueError):
        tmpfs_mode(1023 * 10)
    assert stop_timeout({"stop_grace_period": "1m30s"}) == 90
    assert stop_timeout({}) is None


def _labels(replica: str = "1", **extra: str) -> dict[str, str]:
    return {
        "zlayer.deployment": "demo",
        "zlayer.service": "web",
        "zlayer.replica": replica,
        "zlayer.fingerprint": "sha256:abc",
        "zlayer.revision": "rev-1",
        "zlayer.depends": "db,cache",
        **extra,
    }


def test_workload_from_a_list_entry() -> None:
    summary = {
        "Id": "c0ffee",
        "Names": ["/demo-web-1"],
        "State": "running",
        "Status": "Up 3 minutes (healthy)",
        "Labels": _labels(),
    }
    workload = workload_from_summary(summary)
    assert workload is not None
    assert dataclasses.asdict(workload) == {
        "deployment": "demo",
        "service": "web",
        "replica": 1,
        "fingerprint": "sha256:abc",
        "revision": "rev-1",
        "status": "running",
        "exit_code": None,
        "started_at": None,
        "restart_count": 0,
        "health": "healthy",
        "depends": ("db", "cache"),
        "runtime_id": "c0ffee",
        "node": None,
        "problem": None,
        "outdated": None,
        "stopped_by_reboot": False,
        "oom_killed": False,
    }
    starting = workload_from_summary({**summary, "Status": "Up 1 second (health: starting)"})
    assert starting is not None
    assert starting.health == "starting"
    definition = workload_from_summary({**summary, "State": "created", "Labels": _labels("")})
    assert definition is not None
    assert (definition.replica, definition.status) == (None, "registered")
    removing = workload_from_summary({**summary, "State": "removing"})
    assert removing is not None
    assert removing.status == "dead"


def test_a_replica_publishing_its_public_port_itself_is_outdated() -> None:
    """Made by a zlayer from before the managed proxy: the plan replaces it."""
    routed = _one("endpoints: [{name: http, protocol: http, port: 80, expose: public}]")

    def outdated(labels: dict[str, str]) -> str | None:
        workload = workload_from_summary({"Id": "a", "State": "running", "Labels": labels})
        assert workload is not None
        return workload.outdated

    now = container_labels(routed, 1, "r")
    assert outdated(now) is None
    why = outdated({k: v for k, v in now.items() if k != "zlayer.publish"})
    assert why is not None and "public endpoints move to the managed proxy" in why
    plain = container_labels(_one("endpoints: [{name: h, protocol: http, port: 80}]"), 1, "r")
    assert outdated(plain) is None


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"zlayer.deployment": "demo"},
        _labels("0"),
        _labels("x"),
        {k: v for k, v in _labels().items() if k != "zlayer.fingerprint"},
    ],
)
def test_containers_without_zlayer_identity_are_not_workloads(labels: dict[str, str]) -> None:
    assert workload_from_summary({"Id": "x", "State": "running", "Labels": labels}) is None


def test_workload_from_inspect_has_exit_code_start_time_and_restarts() -> None:
    info = {
        "Id": "c0ffee",
        "RestartCount": 2,
        "Config": {"Labels": _labels()},
        "State": {
            "Status": "exited",
            "ExitCode": 137,
            "StartedAt": "2024-01-01T00:00:00Z",
            "Health": {"Status": "unhealthy"},
        },
    }
    workload = workload_from_inspect(info)
    assert workload is not None
    assert (workload.status, workload.exit_code, workload.restart_count, workload.health) == (
        "exited",
        137,
        2,
        "unhealthy",
    )
    assert workload.started_at == "2024-01-01T00:00:00Z"
    created = {**info, "State": {"Status": "created", "ExitCode": 0, "StartedAt": _NEVER}}
    workload = workload_from_inspect(created)
    assert workload is not None
    assert (workload.status, workload.exit_code, workload.started_at) == ("created", None, None)


def test_names() -> None:
    assert container_name(WorkloadId("demo", "web", 2)) == "demo-web-2"
    assert network_name("demo") == "zlayer-demo"
    assert volume_name("demo", "data") == "demo-data"
    assert deployment_filter(["a"]) == {"label": ["zlayer.deployment=a"]}
    assert deployment_filter(["a", "b"]) == {"label": ["zlayer.deployment"]}
    assert deployment_filter(None) == {"label": ["zlayer.deployment"]}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, NotFound),
        (409, Conflict),
        (500, TemporaryDriverError),
        (503, TemporaryDriverError),
        (900, RuntimeUnreachable),  # a TemporaryDriverError that says the engine is gone
        (400, PermanentDriverError),
        (403, PermanentDriverError),
    ],
)
def test_engine_errors(status: int, kind: type[Exception]) -> None:
    error = engine_error(status, "engine says no\n", "demo/web/1", "create")
    assert type(error) is kind
    assert str(error) == "demo/web/1: create failed: engine says no"


def test_engine_error_details() -> None:
    missing_image = engine_error(
        404, "No such image", "d/w/1", "create", missing=PermanentDriverError
    )
    assert type(missing_image) is PermanentDriverError
    busy = engine_error(500, "busy", "d/w/1", "start")
    assert isinstance(busy, TemporaryDriverError)
    assert busy.delay > 0
    assert isinstance(
        engine_error(0, "toomanyrequests: slow down", "x", "pull"), TemporaryDriverError
    )
    assert type(engine_error(0, "manifest unknown", "x", "pull")) is PermanentDriverError


def test_every_spec_field_is_applied_or_warned_about() -> None:
    """A field added to the spec model must be handled here, or it is warned about."""
    fields = {
        name for name, info in ServiceSpec.model_fields.items() if not info.exclude
    } - _NOT_CONFIG
    assert fields <= KNOWN_KEYS
    assert set(ResourcesSpec.model_fields) <= KNOWN_RESOURCES
    service = _one("")
    odd = replace(service, config={**service.config, "quantum": 1, "resources": {"flux": 2}})
    assert service_limits(odd, EngineFacts()).warnings == (
        "demo/web: quantum is not known to the docker runtime; not applied",
        "demo/web: resources.flux is not known to the docker runtime; not applied",
    )


def test_an_internal_port_other_than_its_target_port_is_a_warning_on_docker() -> None:
    from reconciler.drivers.docker.limits import service_limits

    service = compile_services(
        "demo",
        "api:\n  image: {name: nginx}\n  endpoints:\n"
        "    - {name: http, protocol: http, port: 80, target_port: 9000, expose: internal}\n",
    )["api"]
    limits = service_limits(service, EngineFacts())
    assert any("internal with port 80 ≠ target_port 9000" in w for w in limits.warnings)
    # Where the managed proxy serves internal endpoints, the name reaches port 80.
    assert not service_limits(service, EngineFacts(), internal_routed=True).warnings
    same = compile_services(
        "demo",
        "api:\n  image: {name: nginx}\n  endpoints:\n"
        "    - {name: http, protocol: http, port: 9000, expose: internal}\n",
    )["api"]
    assert not [w for w in service_limits(same, EngineFacts()).warnings if "internal" in w]


INTERNAL = (
    "endpoints: [{name: http, protocol: http, port: 80, target_port: 9000, expose: internal}]"
)


def test_a_proxied_internal_endpoint_leaves_the_name_to_zlayers_hosts_file() -> None:
    """The service's name is not an alias of its containers (it resolves to the proxy,
    through the hosts file mounted as /etc/hosts); its target port is published on
    loopback for the proxy; the spec's extra_hosts move into the file."""
    service = _one(INTERNAL + '\nextra_hosts: ["db.local:10.0.0.5"]', replicas=2)
    body = create_body(service, 2, "r", hosts_file="/state/h", proxied=True)
    host = body["HostConfig"]
    assert body["NetworkingConfig"]["EndpointsConfig"]["zlayer-demo"]["Aliases"] == ["web-2"]
    assert host["PortBindings"] == {"9000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert {"Type": "bind", "Source": "/state/h", "Target": "/etc/hosts", "ReadOnly": True} in (
        host["Mounts"]
    )
    assert "ExtraHosts" not in host
    assert (body["Labels"]["zlayer.internal"], body["Labels"]["zlayer.hosts"]) == (
        "proxy",
        "managed",
    )

    # Without the proxy: the engine's names and its /etc/hosts, as before.
    plain = create_body(service, 2, "r")
    assert plain["NetworkingConfig"]["EndpointsConfig"]["zlayer-demo"]["Aliases"] == [
        "web",
        "web-2",
    ]
    assert "PortBindings" not in plain["HostConfig"] and "Mounts" not in plain["HostConfig"]
    assert plain["HostConfig"]["ExtraHosts"] == ["db.local:10.0.0.5"]
    assert "zlayer.internal" not in plain["Labels"] and "zlayer.hosts" not in plain["Labels"]

    # Another network's container keeps the engine's /etc/hosts.
    other = _one(INTERNAL + "\nnetwork_mode: host")
    assert "Mounts" not in create_body(other, 1, "r", hosts_file="/h", proxied=True)["HostConfig"]


def test_extra_hosts_become_hosts_file_entries() -> None:
    config = {"extra_hosts": ["db.local:10.0.0.5", "gw:host-gateway", "v6:fd00::1"]}
    assert extra_hosts(config, "172.18.0.1") == [
        ("10.0.0.5", ["db.local"]),
        ("172.18.0.1", ["gw"]),
        ("fd00::1", ["v6"]),
    ]
    assert extra_hosts(config, None) == [("10.0.0.5", ["db.local"]), ("fd00::1", ["v6"])]


def test_a_container_made_without_zlayers_names_is_outdated_where_the_proxy_serves() -> None:
    """Older containers (no ``zlayer.hosts``, or the service's name as their alias) are
    replaced once where the proxy serves internal endpoints; a proxied one goes back to
    the engine's names where it does not (HAProxy removed)."""
    service = _one(INTERNAL)
    made = container_labels(service, 1, "r", internal=True, hosts=True)
    assert names_outdated(made, proxied=True, hosts=True) is None
    older = container_labels(service, 1, "r")
    why = names_outdated(older, proxied=True, hosts=True)
    assert why is not None and "internal endpoints move to the managed proxy" in why
    assert names_outdated(older, proxied=False, hosts=True) is None
    why = names_outdated(made, proxied=False, hosts=True)
    assert why is not None and "HAProxy is not installed" in why
    client = _one("command: {entrypoint: [sleep]}")
    why = names_outdated(container_labels(client, 1, "r"), proxied=True, hosts=True)
    assert why is not None and "/etc/hosts is the engine's" in why
    assert names_outdated(container_labels(client, 1, "r", hosts=True), True, True) is None
    assert names_outdated(container_labels(client, 1, "r"), proxied=False, hosts=True) is None


def test_engine_options_pass_through_to_the_host_config() -> None:
    service = _one(
        "privileged: true\nipc_mode: shareable\nuserns_mode: host\n"
        "cgroup_parent: /zlayer-test\nlogs: {destination: disk, max_size_bytes: 2048}"
    )
    host = create_body(service, 1, "rev")["HostConfig"]
    assert host["Privileged"] is True
    assert host["IpcMode"] == "shareable"
    assert host["UsernsMode"] == "host"
    assert host["CgroupParent"] == "/zlayer-test"
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "2048"}}

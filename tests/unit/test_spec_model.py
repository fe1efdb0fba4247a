"""The spec model: ZLayer's fields, defaults, reading rules and error messages."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.spec.blocks import AdaptiveScale, FixedScale, ManualScale, PinAffinity, TcpCheck
from reconciler.spec.load import load_bytes
from reconciler.spec.problems import ProblemSink
from reconciler.spec.scalars import Duration, format_duration, parse_duration
from reconciler.spec.schema import spec_schema
from reconciler.spec.yamldoc import Plain, Tagged, parse_document
from tests.conftest import REPO, load_bad, load_ok, rendered, service_text, spec_text


def web(fields: str = ""):  # type: ignore[no-untyped-def]
    return load_ok(service_text(fields)).spec.services["web"]


def test_string_fields_keep_the_scalars_source_text() -> None:
    svc = web("env: {A: 8080, B: 1.50, C: true, D: null, E: 0x1F, F: '007'}")
    assert svc.env == {"A": "8080", "B": "1.50", "C": "true", "D": "null", "E": "0x1F", "F": "007"}


def test_numeric_deployment_name_is_its_text() -> None:
    assert load_ok("version: v1\ndeployment: 12345\n").spec.deployment == "12345"


def test_omitted_blocks_take_zlayers_defaults() -> None:
    svc = web()
    assert svc.rtype == "service" and svc.image.pull_policy == "if_not_present"
    assert svc.scale == AdaptiveScale(mode="adaptive", min=1, max=10, cooldown=Duration(30 * 10**9))
    assert svc.health.start_grace == Duration(5 * 10**9) and svc.health.retries == 3
    assert svc.health.check == TcpCheck(type="tcp", port=0)
    assert svc.errors.on_panic.action == "restart"
    assert svc.errors.on_init_failure.action == "fail"
    assert svc.network.overlays.service.isolated is True
    assert svc.network_mode == "default" and svc.localhost_reachability == "auto"


def test_explicit_adaptive_scale_has_no_cooldown_default() -> None:
    svc = web("scale: {mode: adaptive, min: 1, max: 2}")
    assert isinstance(svc.scale, AdaptiveScale) and svc.scale.cooldown is None


def test_scale_variants() -> None:
    assert web("scale: {mode: fixed, replicas: 0}").scale == FixedScale(mode="fixed", replicas=0)
    assert isinstance(web("scale: {mode: manual, anything: 1}").scale, ManualScale)


def test_depends_defaults() -> None:
    text = spec_text(
        """
        services:
          db: {image: {name: postgres}}
          web:
            image: {name: nginx}
            depends: [{service: db}]
        """
    )
    dep = load_ok(text).spec.services["web"].depends[0]
    assert (dep.condition, dep.timeout, dep.on_timeout) == (
        "healthy",
        Duration(300 * 10**9),
        "fail",
    )


def test_overlays_quirk_matches_zlayer() -> None:
    # A side left out of ``overlays`` gets ZLayer's all-false Default; ``{}`` the field defaults.
    svc = web("network: {overlays: {service: {}}}")
    assert svc.network.overlays.service.enabled is True
    assert svc.network.overlays.global_.enabled is False


def test_host_network_means_host_mode_unless_a_mode_is_set() -> None:
    assert web("host_network: true").network_mode == "host"
    assert web("host_network: true\nnetwork_mode: none").network_mode == "none"
    assert web("network_mode: 'bridge:'").network_mode == "bridge"


def test_cap_add_is_capabilities() -> None:
    assert web("cap_add: [NET_ADMIN]").capabilities == ("NET_ADMIN",)
    problems = load_bad(service_text("cap_add: [A]\ncapabilities: [B]"))
    assert "same key" in rendered(problems)


def test_pin_affinity_tag() -> None:
    assert web("affinity: !pin 'id=2'").affinity == PinAffinity(pin="id=2")
    assert web("affinity: pack").affinity == "pack"
    assert "affinity" in rendered(load_bad(service_text("affinity: {pin: x}")))


def test_ulimit_missing_side_takes_the_other() -> None:
    limits = web("ulimits: {nofile: {soft: 10}, nproc: {hard: 7}, core: {}}").ulimits
    assert (limits["nofile"].soft, limits["nofile"].hard) == (10, 10)
    assert (limits["nproc"].soft, limits["nproc"].hard) == (7, 7)
    assert (limits["core"].soft, limits["core"].hard) == (0, 0)


def test_optional_blocks_accept_null() -> None:
    svc = web("hostname: null\nplatform: null\nlogs: ~")
    assert svc.hostname is None and svc.platform is None and svc.logs is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            "scale: {mode: adaptive, min: 5, max: 2}",
            "spec.yaml:6:12: services.web.scale: min (5) must not exceed max (2)",
        ),
        (
            "endpoints: [{name: h, protocol: http, port: '80'}]",
            "port: expected an integer, got the string '80'",
        ),
        (
            "endpoints: [{name: h, protocol: http, port: 0}]",
            "port: 0 is out of range (must be at least 1)",
        ),
        (
            "endpoints: [{name: h, protocol: http, port: 65536}]",
            "65536 is out of range (must be at most 65535)",
        ),
        ("endpoints: [{name: h, protocol: ftp, port: 21}]", "'ftp' is not one of"),
        ("endpoints: [{name: '', protocol: tcp, port: 21}]", "name: must not be empty"),
        ("scale: {mode: fixed, replicas: 1.5}", "replicas: expected an integer, got 1.5"),
        ("scale: {mode: fixed, replicas: -1}", "replicas: -1 is out of range"),
        ("scale: {mode: elastic}", "mode 'elastic' is not one of"),
        ("scale: {min: 1, max: 2}", "missing required key 'mode'"),
        ("resources: {cpu: '500m'}", "cpu: expected a number, got the string '500m'"),
        ("resources: {cpu: 0}", "CPU must be a finite number greater than 0"),
        ("resources: {cpu: -1}", "CPU must be a finite number greater than 0"),
        ("resources: {memory: 512M}", "invalid memory '512M'"),
        ("resources: {memory: 0Mi}", "invalid memory '0Mi'"),
        ("resources: {memory: 1.5Gi}", "invalid memory '1.5Gi'"),
        ("stop_grace_period: 30", "invalid duration '30': time unit needed"),
        ("stop_grace_period: 5 parsecs", "unknown time unit 'parsecs'"),
        ("privileged: 'true'", "privileged: expected true or false, got the string 'true'"),
        ("privileged: yes", "expected true or false, got the string 'yes'"),
        ("command: [sh, -c]", "command: expected a mapping, got a list"),
        ("env: [A=1]", "env: expected a mapping, got a list"),
        ("depends: [db]", "depends[0]: expected a mapping"),
        ("health: {check: {type: exec, command: x}}", "type 'exec' is not one of"),
        ("health: {retries: 2}", "missing required key 'check'"),
        ("x-team: core", "spec.yaml:6:5: services.web: unknown key 'x-team'"),
        ("replicas: 2", "unknown key 'replicas' (hint: did you mean 'replicas'?)"),
        ("network_mode: overlay", "unknown network_mode 'overlay'"),
        ("network_mode: 'container:'", "needs a non-empty id"),
        ("storage: [{type: nfs, target: /x}]", "type 'nfs' is not one of"),
        ("volumes: []", "unknown key 'volumes'"),
    ],
)
def test_invalid_fields_are_reported_where_they_are(fields: str, expected: str) -> None:
    assert expected in rendered(load_bad(service_text(fields)))


def test_image_shorthand_is_rejected() -> None:
    text = spec_text("services:\n  web:\n    image: nginx\n")
    assert "services.web.image: expected a mapping, got the string 'nginx'" in rendered(
        load_bad(text)
    )


@pytest.mark.parametrize(
    "name",
    [
        "nginx",
        "nginx:1.25",
        "library/nginx",
        "ghcr.io/org/app:v1.2.3",
        "localhost:5000/app",
        "registry.example.com:8443/a/b/c:tag_1",
        "app@sha256:" + "a" * 64,
        "a-b__c.d:latest",
    ],
)
def test_valid_image_references(name: str) -> None:
    assert (
        load_ok(service_text().replace("{name: nginx}", f"{{name: '{name}'}}"))
        .spec.services["web"]
        .image.name
        == name
    )


@pytest.mark.parametrize(
    "name", ["Nginx", "nginx:" + "t" * 129, "app@sha256:abc", "-nginx", "nginx:", "a//b", ""]
)
def test_invalid_image_references(name: str) -> None:
    text = service_text().replace("{name: nginx}", f"{{name: '{name}'}}")
    assert "invalid image reference" in rendered(load_bad(text))


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("30s", 30 * 10**9),
        ("1m30s", 90 * 10**9),
        ("1m 30s", 90 * 10**9),
        ("500ms", 5 * 10**8),
        ("1.5s", 15 * 10**8),
        ("2d", 2 * 86400 * 10**9),
        ("5min", 300 * 10**9),
        ("30 s", 30 * 10**9),
        ("1h1h", 7200 * 10**9),
        ("1µs", 1000),
        ("0s", 0),
        ("1M", 2_630_016 * 10**9),
    ],
)
def test_humantime_durations(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize(
    "text", ["30", "", "1.5.5s", ".5s", "5.s", "-1s", "1S", "1m30", "1e3s", "1.5ns", "1,5s"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_formatting_round_trips() -> None:
    for nanos in (0, 1, 1500 * 10**6, 90 * 10**9, 86400 * 10**9 + 1):
        assert parse_duration(format_duration(nanos)) == nanos


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("version: v2\ndeployment: demo\n", "version: version must be v1, found 'v2'"),
        ("version: v1\ndeployment: ab\n", "deployment name 'ab' must be 3-63"),
        ("version: v1\ndeployment: -abc\n", "deployment name '-abc'"),
        ("version: v1\ndeployment: my_app\n", "deployment name 'my_app'"),
        ("version: v1\ndeployment: " + "a" * 64 + "\n", "must be 3-63"),
        ("version: v1\n", "missing required key 'deployment'"),
        ("- a\n- b\n", "a spec is a mapping"),
    ],
)
def test_top_level_rules(header: str, expected: str) -> None:
    assert expected in rendered(load_bad(header))


def test_every_problem_in_a_file_is_reported_in_one_run() -> None:
    text = service_text(
        """
        scale: {mode: adaptive, min: 5, max: 2}
        privileged: 'yes'
        bogus: 1
        """
    )
    problems = load_bad(text)
    assert len(problems) == 3
    assert [p.mark.line for p in problems if p.mark] == sorted(
        p.mark.line for p in problems if p.mark
    )


def test_tunnels_externals_api() -> None:
    text = spec_text(
        """
        services: {}
        externals:
          legacy: {backends: ["10.0.0.5:8080"], endpoints: [{name: h, protocol: http, port: 80}]}
        tunnels:
          db: {from: a, to: b, local_port: 5432, remote_port: 5432}
        api: {bind: "127.0.0.1:3669", extra: ignored}
        """
    )
    spec = load_ok(text).spec
    assert spec.tunnels["db"].protocol == "tcp" and spec.api.bind == "127.0.0.1:3669"
    assert "remote_port: 0 is out of range" in rendered(
        load_bad(text.replace("remote_port: 5432", "remote_port: 0"))
    )
    assert "backends: needs at least 1" in rendered(
        load_bad(text.replace('["10.0.0.5:8080"]', "[]"))
    )


# --- the JSON Schema (zlayer schema) ---------------------------------------------------------


def _as_an_editor_reads_it(value: Any) -> Any:
    """A document's values as a YAML 1.2 reader hands them to a JSON Schema validator:
    tags dropped (a tag alone names the value), scalars resolved, ``017`` a number."""
    if isinstance(value, Tagged):
        inner = value.value
        if inner == "" or (isinstance(inner, Plain) and inner.value is None):
            return value.tag.lstrip("!")
        return _as_an_editor_reads_it(inner)
    if isinstance(value, Plain):
        return int(value.text) if isinstance(value.value, str) else value.value
    if isinstance(value, dict):
        return {k: _as_an_editor_reads_it(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_an_editor_reads_it(v) for v in value]
    return value


SPEC_FILES = sorted((REPO / "tests" / "compat" / "corpus").glob("*.yaml")) + sorted(
    (REPO / "specs").glob("*.yaml")
)


def test_the_schema_accepts_every_file_the_loader_accepts() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    accepted = refused = 0
    for path in SPEC_FILES:
        loaded, _ = load_bytes(path.read_bytes(), path.name)
        document = parse_document(path.read_text(), ProblemSink(path.name))
        if document is None:
            continue
        data = _as_an_editor_reads_it(document.data)
        errors = [e.message for e in validator.iter_errors(data)]
        if loaded is not None:
            accepted += 1
            assert errors == [], f"{path.name}: {errors}"
        elif errors:
            refused += 1
    assert accepted >= 100  # the corpus and the bundled specs, not a handful
    assert refused >= 40  # and the schema still refuses much of what the loader refuses


def test_the_schema_takes_any_scalar_for_string_fields_and_knows_the_aliases() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    validator = jsonschema.Draft202012Validator(spec_schema())
    service = {"image": {"name": "x"}, "env": {"PORT": 8080, "ON": True}, "cap_add": ["NET"]}
    assert list(validator.iter_errors({"version": "v1", "deployment": "demo"})) == []
    ok = {"version": "v1", "deployment": 12345, "services": {"web": service}}
    assert list(validator.iter_errors(ok)) == []
    assert list(validator.iter_errors({**ok, "version": "v2"}))
    assert list(validator.iter_errors({**ok, "deployment": "-bad"}))
    assert list(validator.iter_errors({**ok, "services": {"web": {**service, "replics": 2}}}))


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_refs(v) for v in value))
    return set()


def test_the_schema_names_a_definition_by_its_title_not_its_class() -> None:
    schema = spec_schema()
    definitions = schema["$defs"]
    # blocks.InitStepSpec (renamed from InitStep) keeps the schema's name for it
    assert "InitStep" in definitions and "InitStepSpec" not in definitions
    assert definitions["InitStep"]["title"] == "InitStep"
    assert {f"#/$defs/{name}" for name in definitions} >= _refs(schema) >= {"#/$defs/InitStep"}
    # and is loosened as the loader reads it, as every block is: an empty ``with:`` is null
    assert {"type": "null"} in definitions["InitStep"]["properties"]["with"]["anyOf"]

"""The route table and HAProxy's configuration (pure)."""

from __future__ import annotations

from typing import Any

from reconciler.desired import DesiredService
from reconciler.observed import WorkloadId
from reconciler.policy import HealthPolicy, ServicePolicy
from reconciler.route_table import (
    NO_ROUTE,
    Discovery,
    Member,
    backend_name,
    render,
    replica_of,
    route_table,
    routed_service,
)
from reconciler.routing.host import DRAIN_GRACE, drain_grace
from tests.docker_support import compile_spec


def service(
    name: str,
    *endpoints: dict[str, Any],
    health: HealthPolicy | None = None,
    deployment: str = "demo",
    rtype: str = "service",
) -> DesiredService:
    return DesiredService(
        deployment=deployment,
        name=name,
        rtype=rtype,
        config={"endpoints": list(endpoints)},
        fingerprint=f"fp-{name}",
        replicas=2,
        depends=(),
        pull_policy="never",
        file=f"{name}.yaml",
        policy=ServicePolicy(health or HealthPolicy("tcp")),
    )


def public(port: int, protocol: str = "http", **extra: Any) -> dict[str, Any]:
    return {"name": "web", "protocol": protocol, "port": port, "expose": "public", **extra}


def test_only_public_routable_endpoints_of_services_become_routes() -> None:
    table = route_table(
        [
            service("a", public(8080), {"name": "in", "protocol": "http", "port": 9000}),
            service("b", public(5353, "udp")),
            service("c", public(8081), rtype="job"),
        ]
    )
    assert [f.port for f in table.frontends] == [8080]
    assert [b.name for b in table.backends] == ["demo.a.web"]
    assert table.problems == ()


def test_target_port_defaults_to_port_and_checks_follow_the_health_policy() -> None:
    http = HealthPolicy("http", url="http://localhost:9000/ready", expect_status=204, retries=4)
    table = route_table(
        [
            service("a", public(80, target_port=9000), health=http),
            service("b", public(81, "tcp")),
            service("c", public(82), health=HealthPolicy("command", command="true")),
        ]
    )
    a, b, c = table.backends
    assert (a.target_port, a.check.kind, a.check.path, a.check.port) == (
        9000,
        "http",
        "/ready",
        9000,
    )
    assert (a.check.expect_status, a.check.fall, a.mode) == (204, 4, "http")
    assert (b.target_port, b.check.kind, b.check.port, b.mode) == (81, "tcp", 81, "tcp")
    assert c.check.kind == "none"


def test_rules_are_most_specific_first() -> None:
    table = route_table(
        [
            service("any", public(80)),
            service("api", public(80, path="/api")),
            service("apiv2", public(80, path="/api/v2")),
            service("shop", public(80, host="Shop.Example.Test")),
            service("wild", public(80, host="*.example.test")),
        ]
    )
    (frontend,) = table.frontends
    order = [(r.host, r.path) for r in frontend.rules]
    assert order == [
        ("shop.example.test", None),
        ("*.example.test", None),
        (None, "/api/v2"),
        (None, "/api"),
        (None, None),
    ]
    assert table.problems == ()


def test_conflicts_name_both_services() -> None:
    tcp = route_table([service("a", public(80)), service("b", public(80, "tcp"))])
    assert len(tcp.problems) == 1 and "demo/a" in tcp.problems[0] and "demo/b" in tcp.problems[0]
    same = route_table([service("a", public(80, path="/x")), service("b", public(80, path="/x"))])
    assert same.problems and "both route any host path /x" in same.problems[0]
    fine = route_table([service("a", public(80, path="/x")), service("b", public(80, path="/y"))])
    assert fine.problems == ()


def test_render_with_discovery_finds_servers_in_dns_and_lists_none() -> None:
    table = route_table([service("api", public(80, path="/api"))])
    seen = []

    def names(backend: Any) -> tuple[str, int]:
        seen.append(backend.name)
        return f"tasks.{backend.deployment}_{backend.service}", 12

    member = Member(1, "10.0.0.5", 8080)
    text = render(
        table, {"demo.api.web": [member]}, bind_address="0.0.0.0", admin_socket=None,
        pidfile=None, discovery=Discovery("127.0.0.11:53", names),
    )  # fmt: skip
    assert seen == ["demo.api.web"]
    assert "resolvers cluster\n    nameserver dns 127.0.0.11:53\n" in text
    assert "server-template task 1-12 tasks.demo_api:80 check" in text
    assert "resolvers cluster resolve-prefer ipv4 init-addr none" in text
    assert "10.0.0.5" not in text  # no listed server beside the template
    assert "stats socket" not in text and "pidfile" not in text
    assert "bind *:80" in text


def test_backend_names_are_haproxy_names_and_never_collide() -> None:
    assert backend_name("demo", "web", "http") == "demo.web.http"
    odd = backend_name("demo", "web", "my port")
    other = backend_name("demo", "web", "my/port")
    assert " " not in odd and "/" not in other and odd != other


def test_render_lists_members_and_falls_back_to_404_without_a_catch_all() -> None:
    table = route_table([service("api", public(80, path="/api"))])
    member = Member(2, "10.0.0.5", 8080)
    text = render(
        table, {"demo.api.web": [member]}, bind_address="127.0.0.1", admin_socket="/s", pidfile="/p"
    )
    assert f"server {member.server} 10.0.0.5:8080 check" in text
    assert replica_of(member.server) == 2
    assert f"default_backend {NO_ROUTE}" in text and "return status 404" in text
    assert "bind 127.0.0.1:80" in text
    everything = route_table([service("any", public(80))])
    assert NO_ROUTE not in render(
        everything, {}, bind_address="0.0.0.0", admin_socket="/s", pidfile="/p"
    )


def test_a_replaced_replica_gets_a_server_of_its_own() -> None:
    old, new = Member(1, "10.0.0.5", 80), Member(1, "10.0.0.9", 80)
    assert old.server != new.server and replica_of(old.server) == replica_of(new.server) == 1
    assert Member(1, "fd00::5", 80).endpoint == "[fd00::5]:80"


def test_a_drained_replica_gets_its_services_stop_grace_period() -> None:
    desired = compile_spec(
        """
        version: v1
        deployment: demo
        services:
          slow:
            image: {name: x}
            stop_grace_period: 1m30s
          quick:
            image: {name: x}
        """
    )
    assert drain_grace(desired, WorkloadId("demo", "slow", 1)) == 90.0
    assert drain_grace(desired, WorkloadId("demo", "quick", 1)) == DRAIN_GRACE
    assert drain_grace(desired, WorkloadId("demo", "gone", 1)) == DRAIN_GRACE


def test_a_command_checks_command_line_is_not_recorded_with_the_routes() -> None:
    desired = compile_spec(
        """
        version: v1
        deployment: demo
        services:
          web:
            image: {name: x}
            endpoints: [{name: http, protocol: http, port: 80, expose: public}]
            health:
              check: {type: command, command: "probe --password=hunter2-canary"}
        """
    )
    routed = routed_service(desired.services[("demo", "web")])
    assert "hunter2-canary" not in repr(routed)
    assert routed.health["kind"] == "command"
    assert route_table([desired.services[("demo", "web")]]).backends[0].check.kind == "none"


def test_https_terminates_tls_with_each_backends_certificate() -> None:
    table = route_table(
        [
            service("shop", public(443, "https", host="shop.example.test")),
            service("blog", public(443, "https", host="blog.example.test")),
        ]
    )
    (frontend,) = table.frontends
    assert frontend.tls and not table.problems
    certificates = {
        "demo.shop.web": ("/s/tls.demo.shop.web.pem", "aaaa"),
        "demo.blog.web": ("/s/tls.demo.blog.web.pem", "bbbb"),
    }
    text = render(table, {}, bind_address="127.0.0.1", admin_socket="a", pidfile="p",
                  certificates=certificates)  # fmt: skip
    binds = [line.strip() for line in text.splitlines() if line.strip().startswith("bind ")]
    assert binds == [
        "bind 127.0.0.1:443 ssl crt /s/tls.demo.blog.web.pem crt /s/tls.demo.shop.web.pem"
    ]
    assert "http-request set-header X-Forwarded-Proto https" in text
    # A renewed certificate changes the configuration, so HAProxy reloads to load it.
    renewed = {**certificates, "demo.shop.web": ("/s/tls.demo.shop.web.pem", "cccc")}
    again = render(table, {}, bind_address="127.0.0.1", admin_socket="a", pidfile="p",
                   certificates=renewed)  # fmt: skip
    assert again != text


def test_https_and_plain_http_cannot_share_a_port() -> None:
    table = route_table(
        [service("a", public(8443, "https", host="a.test")), service("b", public(8443))]
    )
    assert table.problems == (
        "port 8443: https and plain http cannot share a port, and demo/a (web, https), "
        "demo/b (web, http) ask for it",
    )


def test_an_https_endpoint_without_its_certificate_is_refused_where_it_is_written() -> None:
    from reconciler.desired import CompileInputs, compile_specs
    from tests.conftest import load_ok, spec_text

    body = (
        "services:\n  web:\n    image: {name: nginx}\n    endpoints:\n"
        "      - {name: secure, protocol: https, port: 8443, expose: public}\n"
    )
    present: set[str] = set()
    inputs = CompileInputs(
        env={}, secret_key=b"k", secret=lambda n: "pem" if n in present else None
    )
    desired, problems = compile_specs([load_ok(spec_text(body))], "r", inputs)
    assert desired is None
    (problem,) = problems
    assert problem.where == "services.web.endpoints[0].protocol"
    assert problem.mark is not None  # file:line:col
    assert "tls.demo.web.secure.pem is not in the secrets directory" in problem.message
    present.add("tls.demo.web.secure.pem")
    assert compile_specs([load_ok(spec_text(body))], "r", inputs)[0] is not None
    # Without the secrets (a pull request's check) it is not asked for.
    offline = CompileInputs(env={}, secret_key=None, secret=None)
    assert compile_specs([load_ok(spec_text(body))], "r", offline)[0] is not None

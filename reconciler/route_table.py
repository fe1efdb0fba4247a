"""Routes: the public endpoints of the desired state, as the proxy serves them (pure).

A *route* takes connections on a host port and balances them over the ready
replicas of one service at the endpoint's ``target_port``. Endpoints with
``protocol`` http, https or websocket are layer 7: several services may share one
port, told apart by ``host`` (exact, or ``*.example.test`` for any subdomain) and
``path`` (a prefix; the longest matching path wins, a rule with a host before one
without). ``tcp`` endpoints are layer 4 and own their port alone. ``udp`` is not
proxied (HAProxy does not balance UDP): the runtime publishes it for one replica.

:func:`route_table` compiles the table and every conflict it finds; :func:`render`
turns it into HAProxy's configuration. Both are pure, so the same table serves
``plan`` (what would change) and the control plane (:mod:`reconciler.routing.proxy`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.desired import LAYER7, DesiredService, routed_endpoints
from reconciler.observed import Route, RouteServer
from reconciler.policy import HealthPolicy

Mode = Literal["http", "tcp"]
NO_ROUTE = "zlayer_no_route"
"""The backend of requests no rule matches: a 404 saying so."""


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """How HAProxy itself checks a replica, so that rotation does not depend on a
    zlayer process staying alive. ``kind`` ``none``: HAProxy does not check (a
    command check, which only zlayer can run, or no check at all)."""

    kind: Literal["tcp", "http", "none"]
    port: int | None = None
    path: str = "/"
    expect_status: int = 200
    interval: float = 10.0
    timeout: float = 5.0
    fall: int = 3


@dataclass(frozen=True, slots=True)
class Backend:
    """The replicas of one service behind one endpoint."""

    name: str
    """HAProxy's name for it (see :func:`backend_name`)."""
    deployment: str
    service: str
    endpoint: str
    protocol: str
    mode: Mode
    target_port: int
    check: ServerCheck
    replicas: int | None
    """How many replicas the service asks for (``None``: manual scale)."""
    address: str | None = None
    """For an internal endpoint: the deployment's proxy address it is served on (its
    service's name resolves there); ``None`` for a public one."""

    @property
    def subject(self) -> str:
        return f"{self.deployment}/{self.service}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Send what matches ``host`` and ``path`` (``None``: any) to ``backend``."""

    host: str | None
    path: str | None
    backend: str


@dataclass(frozen=True, slots=True)
class Frontend:
    """One listening port and its rules, most specific first."""

    port: int
    mode: Mode
    rules: tuple[Rule, ...]
    tls: bool = False
    """``https``: HAProxy terminates TLS on this port (each rule's backend brings its
    certificate)."""
    address: str | None = None
    """Internal endpoints: the deployment's proxy address; ``None``: the public one."""

    @property
    def name(self) -> str:
        if self.address is None:
            return f"port_{self.port}"
        return f"internal_{re.sub(r'[^A-Za-z0-9]', '_', self.address)}_{self.port}"


@dataclass(frozen=True, slots=True)
class RouteTable:
    frontends: tuple[Frontend, ...] = ()
    backends: tuple[Backend, ...] = ()
    problems: tuple[str, ...] = ()
    """Conflicts (two services on one port that cannot share it): each names both."""

    @property
    def empty(self) -> bool:
        return not self.frontends

    def backend(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def frontend_of(self, backend: str) -> Frontend:
        for frontend in self.frontends:
            if any(rule.backend == backend for rule in frontend.rules):
                return frontend
        raise KeyError(backend)


_NAME_OK = re.compile(r"[A-Za-z0-9_.:-]+")


def backend_name(deployment: str, service: str, endpoint: str) -> str:
    """``deployment.service.endpoint`` in the characters HAProxy allows in names; a
    name that had to be changed gets a short hash of the original, so two endpoints
    never share a backend."""
    plain = f"{deployment}.{service}.{endpoint}"
    if _NAME_OK.fullmatch(plain):
        return plain
    cleaned = re.sub(r"[^A-Za-z0-9_.:-]", "_", plain)
    return f"{cleaned}~{hashlib.sha256(plain.encode()).hexdigest()[:8]}".replace("~", "-")


def server_name(replica: int, address: str) -> str:
    """``r<replica>-<hash of its address>``: a replaced replica (a new address) gets a
    new server next to the old one, which drains while the new one takes over."""
    return f"r{replica}-{hashlib.sha256(address.encode()).hexdigest()[:6]}"


def replica_of(server: str) -> int | None:
    head = server.split("-", 1)[0]
    return int(head[1:]) if head.startswith("r") and head[1:].isdigit() else None


@dataclass(frozen=True, slots=True)
class RoutedService:
    """What routing needs of a service, as plain data (recorded per deployment, see
    :mod:`reconciler.routing.host`): its routed endpoints as in its config, and its
    health check."""

    deployment: str
    service: str
    replicas: int | None
    endpoints: tuple[dict[str, Any], ...]
    health: dict[str, Any]
    internal: tuple[dict[str, Any], ...] = ()
    """Its internal endpoints, served on ``address`` (none without one)."""
    address: str | None = None
    """The deployment's proxy address, where its service names resolve."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutedService:
        return cls(
            deployment=str(data["deployment"]),
            service=str(data["service"]),
            replicas=data["replicas"],
            endpoints=tuple(dict(e) for e in data["endpoints"]),
            health=dict(data["health"]),
            internal=tuple(dict(e) for e in data.get("internal", ())),
            address=data.get("address"),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.deployment, self.service)


def routed_service(service: DesiredService, address: str | None = None) -> RoutedService:
    """``service`` as routing needs it; with ``address`` (the deployment's proxy
    address, on runtimes that route internal endpoints), its internal endpoints too."""
    internal = routed_endpoints(service.config, "internal") if address else []
    return RoutedService(
        deployment=service.deployment,
        service=service.name,
        replicas=service.replicas,
        endpoints=tuple(dict(e) for e in routed_endpoints(service.config)),
        internal=tuple(dict(e) for e in internal),
        address=address if internal else None,
        # A command check is zlayer's own (HAProxy does not run it): its command line,
        # which may carry a credential, is not recorded.
        health=dataclasses.asdict(dataclasses.replace(service.policy.health, command="")),
    )


def _check(health: HealthPolicy, target_port: int) -> ServerCheck:
    common: dict[str, Any] = {
        "interval": max(health.interval, 0.1),
        "timeout": max(health.timeout, 0.1),
        "fall": max(health.retries, 1),
    }
    if health.kind == "http" and health.url:
        path = _url_path(health.url)
        port = _url_port(health.url)
        return ServerCheck(
            "http", port=port, path=path, expect_status=health.expect_status, **common
        )
    if health.kind == "tcp" and health.port is not None:
        return ServerCheck("tcp", port=health.port, **common)
    if health.kind == "tcp":
        return ServerCheck("tcp", port=target_port, **common)
    return ServerCheck("none", **common)


def _url_path(url: str) -> str:
    rest = url.split("://", 1)[-1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def _url_port(url: str) -> int | None:
    scheme, _, rest = url.partition("://")
    hostport = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if hostport.startswith("["):
        tail = hostport.partition("]")[2]
        port = tail[1:] if tail.startswith(":") else ""
    else:
        port = hostport.rpartition(":")[2] if ":" in hostport else ""
    if port.isdigit():
        return int(port)
    return 443 if scheme == "https" else 80


def _rule_order(rule: Rule) -> tuple[int, int, int, str, str]:
    """Most specific first: an exact host, then a wildcard host, then any host; within
    those, the longest path first."""
    host = rule.host or ""
    host_rank = 2 if not host else (1 if host.startswith("*.") else 0)
    path = rule.path or ""
    return (host_rank, -len(path), 0 if path else 1, host, path)


def planned_addresses(internal: bool) -> Callable[[str], str | None]:
    """Stand-in proxy addresses for planning and checking the routes of specs (the
    real one is the runtime's, known once the deployment's network exists): each
    deployment's own when the runtime routes internal endpoints, else none."""
    return lambda deployment: f"the {deployment} network" if internal else None


def route_table(
    services: Iterable[DesiredService], address: Callable[[str], str | None] = lambda _d: None
) -> RouteTable:
    """The routes of ``services`` (every deployment), with the conflicts among them;
    ``address``: each deployment's proxy address for its internal endpoints (none:
    only the public ones are routed)."""
    return table_of(
        routed_service(s, address(s.deployment)) for s in services if not s.is_definition
    )


def table_of(services: Iterable[RoutedService]) -> RouteTable:
    """The route table of ``services``, with the conflicts among them."""
    backends: list[Backend] = []
    by_port: dict[tuple[str, int], list[tuple[Rule, Backend]]] = {}
    for service in sorted(services, key=lambda s: s.key):
        health = HealthPolicy(**service.health)
        listed: list[tuple[dict[str, Any], str | None]] = [(e, None) for e in service.endpoints]
        listed += [(e, service.address) for e in service.internal if service.address]
        for endpoint, address in listed:
            port = int(endpoint["port"])
            target = int(endpoint.get("target_port") or port)
            protocol = str(endpoint["protocol"])
            # Inside the deployment TLS is the replica's own: an internal https
            # endpoint is passed through at layer 4.
            layer7 = protocol in LAYER7 and not (address and protocol == "https")
            name = backend_name(service.deployment, service.service, str(endpoint["name"]))
            backend = Backend(
                name=name,
                deployment=service.deployment,
                service=service.service,
                endpoint=str(endpoint["name"]),
                protocol=protocol,
                mode="http" if layer7 else "tcp",
                target_port=target,
                check=_check(health, target),
                replicas=service.replicas,
                address=address,
            )
            backends.append(backend)
            if address:  # the service's own name tells it apart on the deployment's address
                rule = Rule(service.service.lower() if layer7 else None, None, name)
            else:
                host = endpoint.get("host") or None
                path = endpoint.get("path") or None
                rule = Rule(host.lower() if host else None, path, name)
            by_port.setdefault((address or "", port), []).append((rule, backend))
    frontends: list[Frontend] = []
    problems: list[str] = []
    for address, port in sorted(by_port):
        entries = by_port[(address, port)]
        label = f"port {port}" if not address else f"internal port {port} ({address})"
        problems += _conflicts(label, entries)
        mode: Mode = "tcp" if any(b.mode == "tcp" for _, b in entries) else "http"
        rules = tuple(sorted((rule for rule, _ in entries), key=_rule_order))
        tls = not address and any(b.protocol == "https" for _, b in entries)
        frontends.append(Frontend(port, mode, rules, tls, address or None))
    return RouteTable(tuple(frontends), tuple(backends), tuple(problems))


def check_text(check: ServerCheck) -> str:
    """How HAProxy checks a backend's replicas, in words (``http GET /health expects 200
    every 2s``); ``none`` when it does not."""
    if check.kind == "none":
        return "none"
    port = f" :{check.port}" if check.port is not None else ""
    if check.kind == "http":
        # Not the query: it may carry a credential (and a change of it replaces the
        # replicas anyway).
        path = check.path.split("?", 1)[0] + ("?…" if "?" in check.path else "")
        what = f"http GET {path}{port} expects {check.expect_status}"
    else:
        what = f"tcp{port}"
    return f"{what} every {check.interval:g}s"


def routes_of(table: RouteTable, servers: Mapping[str, Iterable[RouteServer]] = {}) -> list[Route]:
    """Each backend of ``table`` as a :class:`Route`, with ``servers`` (backend name →
    its servers) as its servers: what the plan compares and the snapshot records."""
    rules = {
        rule.backend: (frontend, rule) for frontend in table.frontends for rule in frontend.rules
    }
    out = []
    for backend in table.backends:
        frontend, rule = rules[backend.name]
        out.append(
            Route(
                deployment=backend.deployment,
                service=backend.service,
                endpoint=backend.endpoint,
                protocol=backend.protocol,
                port=frontend.port,
                target_port=backend.target_port,
                host=rule.host if frontend.address is None else None,
                path=rule.path,
                check=check_text(backend.check),
                expose="public" if frontend.address is None else "internal",
                address=frontend.address,
                servers=tuple(sorted(servers.get(backend.name, ()), key=lambda s: s.replica)),
            )
        )
    return out


def _conflicts(port: str, entries: list[tuple[Rule, Backend]]) -> list[str]:
    if len(entries) < 2:
        return []
    names = ", ".join(f"{b.subject} ({b.endpoint}, {b.protocol})" for _, b in entries)
    if any(b.mode == "tcp" for _, b in entries):
        return [f"{port}: a tcp endpoint owns its port alone, and {names} all ask for it"]
    if len({b.protocol == "https" for _, b in entries}) > 1:
        return [f"{port}: https and plain http cannot share a port, and {names} ask for it"]
    seen: dict[tuple[str | None, str | None], Backend] = {}
    problems = []
    for rule, backend in entries:
        key = (rule.host, rule.path)
        if key in seen:
            first = seen[key]
            match = " ".join(
                part
                for part in (
                    f"host {rule.host}" if rule.host else "any host",
                    f"path {rule.path}" if rule.path else "any path",
                )
            )
            problems.append(
                f"{port}: {first.subject} ({first.endpoint}) and {backend.subject} "
                f"({backend.endpoint}) both route {match}; give them different hosts or paths"
            )
        else:
            seen[key] = backend
    return problems


# --- HAProxy's configuration ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Discovery:
    """Servers found in DNS rather than listed: a proxy inside a cluster, where a
    name (``names``: a backend's DNS name and how many servers it may have at most)
    resolves to the addresses of the service's running tasks, asked of
    ``nameserver`` (``HOST:PORT``) every couple of seconds. Scaling the service
    then needs no new configuration."""

    nameserver: str
    names: Callable[[Backend], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Member:
    """A replica in a backend: where HAProxy reaches it."""

    replica: int
    address: str
    port: int

    @property
    def endpoint(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )

    @property
    def server(self) -> str:
        return server_name(self.replica, self.endpoint)


def _ms(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


def server_options(backend: Backend, state: str = "ready") -> str:
    """The server line's options (for the configuration and for ``add server``)."""
    check = backend.check
    parts: list[str] = []
    if check.kind != "none":
        parts += ["check", "inter", _ms(check.interval), "fall", str(check.fall), "rise", "1"]
        if check.port is not None and check.port != backend.target_port:
            parts += ["port", str(check.port)]
    # Idle connections to the replica are kept and reused (HAProxy's defaults for a
    # server in the configuration, which a server added at run time does not get:
    # without them every request opens a new connection, a third of the throughput).
    parts += ["pool-max-conn", "-1", "pool-purge-delay", "5s"]
    if state == "maint":
        parts.append("disabled")
    return " ".join(parts)


def _acl_host(host: str) -> str:
    if host.startswith("*."):
        return f"hdr(host),field(1,:),lower -m end {host[1:]}"
    return f"hdr(host),field(1,:),lower -m str {host}"


def render(
    table: RouteTable,
    members: Mapping[str, Iterable[Member]],
    *,
    bind_address: str,
    admin_socket: str | None,
    pidfile: str | None,
    certificates: Mapping[str, tuple[str, str]] | None = None,
    discovery: Discovery | None = None,
) -> str:
    """HAProxy's configuration for ``table``, with ``members`` (backend name →
    replicas) as its servers, so that a reload keeps the rotation as it was.
    ``certificates``: each https backend's certificate file and a digest of its
    content (written as a comment, so a renewed certificate changes the
    configuration and HAProxy reloads to load it). With ``discovery`` the servers are
    not listed but found in DNS (a proxy inside a cluster, :class:`Discovery`)."""
    certificates = certificates or {}
    bind = "*" if bind_address in ("0.0.0.0", "") else bind_address
    bind = f"[{bind}]" if ":" in bind else bind
    lines = [
        "# Written by zlayer: do not edit; the next apply rewrites it.",
        "global",
        "    master-worker",
    ]
    if pidfile is not None:
        lines.append(f"    pidfile {pidfile}")
    if admin_socket is not None:
        lines.append(f"    stats socket {admin_socket} mode 600 level admin expose-fd listeners")
    lines += [
        "    stats timeout 30s",
        "",
        "defaults",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout tunnel 1h",
        "    timeout http-keep-alive 5s",
        "    retries 3",
        "    option redispatch",
        "    default-server init-addr none",
    ]
    if discovery is not None:
        lines += [
            "",
            "resolvers cluster",
            f"    nameserver dns {discovery.nameserver}",
            "    accepted_payload_size 8192",
            "    resolve_retries 3",
            "    timeout resolve 1s",
            "    timeout retry 1s",
            "    hold valid 2s",
            "    hold obsolete 2s",
            "    hold nx 2s",
            "    hold refused 2s",
            "    hold timeout 2s",
            "    hold other 2s",
        ]
    for frontend in table.frontends:
        lines += ["", f"frontend {frontend.name}", f"    mode {frontend.mode}"]
        if frontend.address is not None:
            lines.append(f"    bind {frontend.address}:{frontend.port}")
        elif frontend.tls:
            files = [certificates[r.backend] for r in frontend.rules if r.backend in certificates]
            lines += [f"    # certificate {path} {digest}" for path, digest in files]
            crts = " ".join(f"crt {path}" for path, _ in files)
            lines.append(f"    bind {bind}:{frontend.port} ssl {crts}")
            lines.append("    http-request set-header X-Forwarded-Proto https")
        else:
            lines.append(f"    bind {bind}:{frontend.port}")
        if frontend.mode == "http":
            lines.append("    option forwardfor")
            for index, rule in enumerate(frontend.rules):
                conditions = []
                if rule.host:
                    lines.append(f"    acl h{index} {_acl_host(rule.host)}")
                    conditions.append(f"h{index}")
                if rule.path:
                    lines.append(f"    acl p{index} path -m beg {rule.path}")
                    conditions.append(f"p{index}")
                if conditions:
                    lines.append(f"    use_backend {rule.backend} if {' '.join(conditions)}")
                else:
                    lines.append(f"    default_backend {rule.backend}")
            if all(rule.host or rule.path for rule in frontend.rules):
                lines.append(f"    default_backend {NO_ROUTE}")
        else:
            lines.append(f"    default_backend {frontend.rules[0].backend}")
    if any(f.mode == "http" and all(r.host or r.path for r in f.rules) for f in table.frontends):
        lines += ["", f"backend {NO_ROUTE}", "    mode http"]
        lines.append('    http-request return status 404 content-type text/plain string "no route"')
    for backend in table.backends:
        lines += [
            "",
            f"backend {backend.name}",
            f"    mode {backend.mode}",
            "    balance roundrobin",
        ]
        if backend.check.kind == "http":
            lines.append(f"    option httpchk GET {backend.check.path}")
            lines.append(f"    http-check expect status {backend.check.expect_status}")
        if backend.check.kind != "none":
            lines.append(f"    timeout check {_ms(backend.check.timeout)}")
        if discovery is not None:
            name, slots = discovery.names(backend)
            options = server_options(backend)
            lines.append(
                f"    server-template task 1-{slots} {name}:{backend.target_port} {options} "
                "resolvers cluster resolve-prefer ipv4 init-addr none"
            )
            continue
        for member in sorted(members.get(backend.name, ()), key=lambda m: m.replica):
            options = server_options(backend)
            lines.append(f"    server {member.server} {member.endpoint} {options}".rstrip())
    return "\n".join(lines) + "\n"

"""Desired state: validated specs compiled into services, replicas and fingerprints (pure).

A service's *config* is the canonical, driver-independent description of what
each of its replicas runs (image, command, env, resources, endpoints, storage,
network and the Docker-style extras), as JSON data with defaults left out so a
field added to the spec model later does not change existing fingerprints.
Fields that only steer zlayer itself — ``scale``, ``depends``, ``health``,
``init``, ``errors``, ``lifecycle``, ``restart_policy`` and placement — are not part of it: editing
them never replaces a running replica; they take effect at the next apply.

No sensitive value enters the config: secret and ``$E:`` references and
secret-looking literals become placeholders with a keyed hash
(:mod:`reconciler.redact`); their clear values stay in :class:`SecretValue`
objects that print as ``***`` and reach only the launch step
(:meth:`DesiredService.launch_config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.fingerprint import fingerprint, keyed_hash
from reconciler.observed import ObservedState, Workload, WorkloadId
from reconciler.policy import (
    DEFAULT_POLICY,
    ServicePolicy,
    scale_targets,
    service_policy,
    with_timeout,
)
from reconciler.redact import (
    MARK_LABEL,
    MASK,
    Scrubber,
    has_unhashed,
    hidden,
    is_placeholder,
    is_sensitive_text,
    marked_names,
    placeholders,
    redact_config,
    reveal,
    secret_parts,
)
from reconciler.redact import (
    Path as ConfigPath,
)
from reconciler.spec.problems import Path, Problem, format_path
from reconciler.spec.refs import (
    ENV_REF_RE,
    SECRET_REF_RE,
    SecretRef,
    export_hint,
    parse_secret_ref,
)

if TYPE_CHECKING:
    from reconciler.spec.load import LoadedSpec, SourceFile
    from reconciler.spec.models import DeploymentSpec, ServiceSpec

# The spec models are imported where a spec is compiled (compile_service), so the
# values defined here can be used (and rebuilt from the compile cache) without them.

PLACEMENT = ("node_mode", "node_selector", "affinity")
_NOT_CONFIG = frozenset(
    {
        "deployment",
        "image",
        "scale",
        "depends",
        "health",
        "init",
        "errors",
        "lifecycle",
        "restart_policy",
        "node_mode",
        "node_selector",
        "affinity",
        "replica_groups",
    }
)


LAYER7 = frozenset({"http", "https", "websocket"})
ROUTED = LAYER7 | {"tcp"}
"""The endpoint protocols the managed proxy serves (HAProxy does not balance udp)."""


def routed_endpoints(config: Mapping[str, Any], expose: str = "public") -> list[Mapping[str, Any]]:
    """The endpoints of a service's config the managed proxy serves: public (or, with
    ``expose="internal"``, internal), not udp, of a service with a network of its own
    (on the host's network, or on another container's, a replica listens on the host
    itself and serves its port alone)."""
    mode = str(config.get("network_mode", "default"))
    if mode in ("host", "none") or mode.startswith("container:"):
        return []
    return [
        e
        for e in config.get("endpoints", ())
        if e.get("expose", "internal") == expose and e.get("protocol") in ROUTED
    ]


ROUTING_ONLY = ("host", "path")
"""Endpoint fields only the managed proxy reads: changing them reroutes (a ``reroute``
of the plan), it does not replace the replicas."""


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """The fingerprint of a service's config, which decides whether its replicas are
    replaced: the whole config but the endpoints' routing-only fields."""
    endpoints = config.get("endpoints")
    if not endpoints or not any(k in e for e in endpoints for k in ROUTING_ONLY):
        return fingerprint(config)
    stripped = [{k: v for k, v in e.items() if k not in ROUTING_ONLY} for e in endpoints]
    return fingerprint({**config, "endpoints": stripped})


def certificate_name(deployment: str, service: str, endpoint: str) -> str:
    """The secrets directory's file holding an ``https`` endpoint's certificate (chain
    first, then the private key, or the key in the same name plus ``.key``): the PEM
    file HAProxy terminates TLS with."""
    return f"tls.{deployment}.{service}.{endpoint}.pem"


def _certificate_findings(
    deployment: str, name: str, config: Mapping[str, Any], inputs: CompileInputs
) -> list[Finding]:
    """An ``https`` endpoint the proxy serves needs its certificate in the secrets
    directory (checked when the secrets are here: on the host, not in a pull request)."""
    if inputs.secret is None:
        return []
    found: list[Finding] = []
    https = [e for e in routed_endpoints(config) if e.get("protocol") == "https"]
    for index, endpoint in enumerate(config.get("endpoints", ())):
        if not any(endpoint is e for e in https):
            continue
        file = certificate_name(deployment, name, str(endpoint.get("name")))
        if inputs.secret(file) is None:
            found.append(
                (
                    ("services", name, "endpoints", index, "protocol"),
                    f"deployment {deployment}, service {name}, endpoint {endpoint.get('name')}: "
                    f"https needs a certificate, and {file} is not in the secrets directory",
                    f"put the certificate chain and its private key (PEM) there as {file}",
                )
            )
    return found


def _rps_findings(name: str, service: ServiceSpec, config: Mapping[str, Any]) -> list[Finding]:
    """Requests per second are counted by the managed proxy: an ``rps`` target needs
    an endpoint it routes."""
    from reconciler.spec.blocks import AdaptiveScale

    scale = service.scale
    if not isinstance(scale, AdaptiveScale) or scale.targets.rps is None:
        return []
    if routed_endpoints(config) or routed_endpoints(config, "internal"):
        return []
    return [
        (
            ("services", name, "scale", "targets", "rps"),
            f"service {name}: scale.targets.rps needs an endpoint the managed proxy routes "
            "(http, https, websocket or tcp, not on network_mode host), where its requests "
            "are counted",
            "add such an endpoint, or scale by cpu or memory",
        )
    ]


@dataclass(frozen=True, slots=True)
class SecretValue:
    """A resolved secret. Only :meth:`reveal` gives its text; printing shows ``***``."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"SecretValue({MASK})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class CompileInputs:
    """What compiling needs from outside: the environment for ``$E:`` and the secrets.

    ``secret_key`` is the host's key for keyed hashes; ``None`` plans *offline*
    (for a host whose key is not here, such as a pull-request check against a
    snapshot): sensitive values are then recorded without their hash and the
    planner assumes them unchanged. ``secret`` resolves ``$S:`` names; ``None``
    means the secrets are not here: references are recorded by name only.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    secret_key: bytes | None = None
    secret: Callable[[str], str | None] | None = lambda _name: None


@dataclass(frozen=True, slots=True)
class Dependency:
    service: str
    condition: str
    timeout: float | None
    on_timeout: str


@dataclass(frozen=True, slots=True)
class DesiredService:
    """One service of one deployment, compiled.

    ``replicas``: how many long-running replicas (indexes 1..n); ``None`` for
    ``scale.mode: manual`` (the observed count stays); 0 for jobs and cron, which
    are registered *definitions* instead.
    """

    deployment: str
    name: str
    rtype: str
    config: Mapping[str, Any]
    fingerprint: str
    replicas: int | None
    depends: tuple[Dependency, ...]
    pull_policy: str
    file: str
    secrets: Mapping[ConfigPath, SecretValue] = field(default_factory=dict)
    """Clear values by their path in ``config`` (``("env", "DB_PASSWORD")``)."""
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    """What zlayer chose where the spec leaves it open (shown as plan notes)."""
    policy: ServicePolicy = DEFAULT_POLICY
    """Health check, init steps and error handling: how zlayer treats the replicas."""
    scaled: str | None = None
    """Who set ``replicas`` when not the specs: ``autoscaler: <why>`` (an adaptive
    service, under the daemon) or ``zlayer scale`` (a manual one); None: as compiled
    (plan and apply keep an adaptive count inside its range)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.deployment, self.name)

    @property
    def is_definition(self) -> bool:
        return self.rtype != "service"

    marked: frozenset[str] = frozenset()
    """``env``/``labels`` keys the author marked sensitive (label ``zlayer.sensitive``)."""
    placement: Mapping[str, Any] = field(default_factory=dict)
    """``node_mode``, ``node_selector`` and ``affinity`` as set in the spec: not part of
    ``config`` (a one-host runtime places nothing, so they never replace a replica);
    a clustered runtime (Docker Swarm) maps them to its placement."""
    _offline: bool | None = field(default=None, init=False, repr=False, compare=False)
    """:attr:`offline_secrets`, once asked (the planner asks for every replica)."""

    @property
    def sensitive(self) -> frozenset[str]:
        """Env keys whose values no output shows (placeholders in ``config``)."""
        env = self.config.get("env", {})
        return frozenset(k for k, v in env.items() if is_placeholder(v))

    @property
    def offline_secrets(self) -> bool:
        """Compiled offline: some sensitive value is known without its hash, so no
        runtime can be given it."""
        if self._offline is None:
            object.__setattr__(self, "_offline", has_unhashed(self.config))
        return bool(self._offline)

    def launch_config(self) -> dict[str, Any]:
        """The config with clear values, for the launch step only (never stored)."""
        return reveal(self.config, {p: v.reveal() for p, v in self.secrets.items()})

    def workload_id(self, replica: int | None) -> WorkloadId:
        return WorkloadId(self.deployment, self.name, replica)

    @property
    def network_mode(self) -> str:
        return str(self.config.get("network_mode", "default"))

    @property
    def wants_network(self) -> bool:
        """Joins its deployment's network (``network_mode`` default or bridge), where
        a runtime keeps one: not ``host``, ``none`` or another container's."""
        mode = self.network_mode
        return mode in ("default", "bridge") or mode.startswith("bridge:")

    def runtime_env(self) -> dict[str, str]:
        """The env a runtime passes to the workload, secrets revealed."""
        env: dict[str, str] = {}
        for key, value in self.launch_config().get("env", {}).items():
            if not isinstance(value, str):
                raise ValueError(f"env {key}: the secret is known by name only (compiled offline)")
            env[key] = value
        return env


@dataclass(frozen=True, slots=True)
class DesiredState:
    revision: str
    services: Mapping[tuple[str, str], DesiredService]
    deployments: frozenset[str] = frozenset()
    """Every deployment in the specs, those without services included."""
    warnings: tuple[tuple[str, str], ...] = ()
    """``(deployment, message)``: what a deployment's own fields ask for that zlayer
    does not do (``externals``, ``tunnels``, ``api``); services carry their own."""

    def scrubber(self) -> Scrubber:
        """Cuts every clear value of these specs out of free text: the config's, and
        health checks or init steps that hold a sensitive string (a probe's error
        quotes its URL)."""
        values: set[str] = set()
        for service in self.services.values():
            clear = [v.reveal() for v in service.secrets.values()]
            policy = service.policy
            texts = [policy.health.url, policy.health.command]
            texts += [str(v) for step in policy.init for v in step.with_.values()]
            clear += [t for t in texts if t and is_sensitive_text(t)]
            values.update(clear)
            values.update(part for text in clear for part in secret_parts(text))
        return Scrubber(frozenset(values))

    def fingerprint(self) -> str:
        """One hash of everything desired, for refusing stale plans."""
        return fingerprint(
            [[*key, s.fingerprint, s.replicas] for key, s in sorted(self.services.items())]
        )


def content_revision(files: Iterable[SourceFile]) -> str:
    """The revision of a set of spec files: a hash of their contents, names aside
    (renaming or moving a file changes nothing that runs)."""
    digests = sorted(hashlib.sha256(f.data).hexdigest() for f in files)
    return "sha256:" + hashlib.sha256("\n".join(digests).encode()).hexdigest()


def compile_specs(
    specs: Iterable[LoadedSpec], revision: str, inputs: CompileInputs
) -> tuple[DesiredState | None, list[Problem]]:
    """Compile every service of every spec; returns every problem found (unset
    ``$E:`` variables, missing secrets) with its file:line:col, and no state then.

    ``specs`` is consumed once, so it can be a generator that loads file by file."""
    services: dict[tuple[str, str], DesiredService] = {}
    problems: list[Problem] = []
    deployments: set[str] = set()
    warnings: list[tuple[str, str]] = []
    for loaded in specs:
        deployment = loaded.spec.deployment
        deployments.add(deployment)
        warnings += [(deployment, w) for w in deployment_warnings(loaded.spec)]
        for name, service in loaded.spec.services.items():
            compiled, found = compile_service(deployment, name, service, inputs, loaded.file)
            problems.extend(
                Problem(loaded.file, loaded.mark_for(path), format_path(path), message, hint)
                for path, message, hint in found
            )
            if compiled is not None:
                services[(deployment, name)] = compiled
    if problems:
        return None, problems
    state = DesiredState(
        revision, dict(sorted(services.items())), frozenset(deployments), tuple(warnings)
    )
    return state, []


def deployment_warnings(spec: DeploymentSpec) -> list[str]:
    """What the deployment's own fields ask for and no zlayer runtime does."""
    out = []
    if spec.externals:
        out.append(
            "externals is not applied: the managed proxy routes only the replicas of the "
            f"specs' services ({', '.join(sorted(spec.externals))} not routed)"
        )
    if spec.tunnels:
        out.append(
            "tunnels is not applied: zlayer has no tunnel agent (ZLayer's overlay tunnels); "
            f"{', '.join(sorted(spec.tunnels))} not opened"
        )
    if "api" in spec.model_fields_set and spec.api.enabled:
        out.append(
            "api is not applied: it configures ZLayer's own API server; zlayer's daemon "
            "serves its own API (zlayer daemon: socket, listen)"
        )
    return out


Finding = tuple[Path, str, str | None]


def compile_service(
    deployment: str, name: str, service: ServiceSpec, inputs: CompileInputs, file: str = ""
) -> tuple[DesiredService | None, list[Finding]]:
    base: Path = ("services", name)
    env, secrets, findings = _resolve_env(deployment, name, service, inputs, base)
    if findings:
        return None, findings
    dumped = service.model_dump(
        mode="json", exclude_defaults=True, by_alias=True, exclude=set(_NOT_CONFIG)
    )
    dumped["image"] = service.image.name
    if env:
        dumped["env"] = env
    marked = marked_names(dumped)
    labels = {k: v for k, v in dumped.get("labels", {}).items() if k != MARK_LABEL}
    dumped.pop("labels", None)
    if labels:
        dumped["labels"] = labels
    findings = _certificate_findings(deployment, name, dumped, inputs) + _rps_findings(
        name, service, dumped
    )
    if findings:
        return None, findings
    redaction = redact_config(dumped, inputs.secret_key, marked)
    config = redaction.config
    secrets.update({path: SecretValue(value) for path, value in redaction.clear.items()})
    return DesiredService(
        deployment=deployment,
        name=name,
        rtype=service.rtype,
        config=config,
        fingerprint=config_fingerprint(config),
        replicas=_replica_count(service),
        depends=tuple(
            Dependency(
                d.service,
                d.condition,
                None if d.timeout is None else d.timeout.seconds,
                d.on_timeout,
            )
            for d in service.depends
        ),
        pull_policy=service.image.pull_policy,
        file=file,
        secrets=secrets,
        warnings=_warnings(service),
        notes=_notes(service),
        policy=service_policy(service),
        marked=marked,
        placement=service.model_dump(
            mode="json", exclude_defaults=True, by_alias=True, include=set(PLACEMENT)
        ),
    ), []


def _replica_count(service: ServiceSpec) -> int | None:
    from reconciler.spec.blocks import AdaptiveScale, FixedScale

    if service.rtype != "service":
        return 0
    scale = service.scale
    if isinstance(scale, FixedScale):
        return scale.replicas
    if isinstance(scale, AdaptiveScale):
        return scale.min
    return None


def _notes(service: ServiceSpec) -> tuple[str, ...]:
    from reconciler.spec.blocks import AdaptiveScale

    scale = service.scale
    if service.rtype != "service" or not isinstance(scale, AdaptiveScale):
        return ()
    if "scale" not in service.model_fields_set:  # the model's default is ZLayer's
        return (
            f"scale omitted: ZLayer's default is adaptive (min {scale.min}, max {scale.max}) "
            f"with no targets, so it runs scale.min ({scale.min})",
        )
    if scale.max > scale.min and not scale_targets(service):
        return (f"adaptive scale without scale.targets runs scale.min ({scale.min})",)
    return ()


ONE_HOST_PLACEMENT = "zlayer places every replica on this host"
"""The end of the warnings about placement fields (``node_mode``, ``node_selector``,
``affinity``): true of every one-host runtime; a clustered one (Docker Swarm) applies
them, so its plans leave these warnings out (:attr:`ObservedState.services_managed`)."""


def _warnings(service: ServiceSpec) -> tuple[str, ...]:
    from reconciler.spec.blocks import AdaptiveScale

    out = []
    placement: list[str] = [
        key for key in ("node_selector", "affinity") if key in service.model_fields_set
    ]
    if service.node_mode != "shared":  # shared: the one host's other workloads share it
        placement.insert(0, "node_mode")
    out += [f"{key} is not applied: {ONE_HOST_PLACEMENT}" for key in placement]
    if service.image.source_policy is not None:
        out.append("image.source_policy is not applied: the image is pulled by pull_policy alone")
    if "deployment" in service.model_fields_set:
        out.append("deployment is not applied: a service belongs to its file's deployment")
    adaptive = service.scale if isinstance(service.scale, AdaptiveScale) else None
    targets = adaptive.targets if adaptive is not None else None
    if adaptive is not None and targets is not None and scale_targets(service):
        if adaptive.max <= adaptive.min:
            out.append(f"scale.targets change nothing: scale.min equals scale.max ({adaptive.min})")
        if targets.memory is not None and not service.resources.memory:
            out.append(
                "scale.targets.memory is a percentage of resources.memory, which is not set; "
                "not applied"
            )
    if service.replica_groups:
        out.append("replica_groups are not supported yet: every replica runs the service's config")
    restart = service.restart_policy
    if restart is not None and restart.delay is not None and with_timeout(restart.delay) is None:
        out.append(
            f"restart_policy.delay {restart.delay!r} is not a duration (30s, 1m); not applied"
        )
    if restart is not None and restart.kind == "unless_stopped":
        out.append(
            "restart_policy unless_stopped restarts like always: zlayer cannot tell a replica "
            "stopped by hand from one that exited"
        )
    return tuple(out)


def _resolve_env(
    deployment: str, name: str, service: ServiceSpec, inputs: CompileInputs, base: Path
) -> tuple[dict[str, Any], dict[ConfigPath, SecretValue], list[Finding]]:
    env: dict[str, Any] = {}
    secrets: dict[ConfigPath, SecretValue] = {}
    findings: list[Finding] = []
    for key, value in service.env.items():
        path = (*base, "env", key)
        if match := ENV_REF_RE.fullmatch(value):
            var = match["name"]
            if var not in inputs.env:
                findings.append(
                    (
                        path,
                        f"deployment {deployment}, service {name}, env {key}: "
                        f"$E:{var} is not set in the environment",
                        export_hint(var, "before planning"),
                    )
                )
                continue
            secrets[("env", key)] = SecretValue(inputs.env[var])
            env[key] = hidden(f"$E:{var}", inputs.env[var], inputs.secret_key)
        elif SECRET_REF_RE.fullmatch(value):
            try:
                ref = parse_secret_ref(value)
            except ValueError as exc:
                findings.append(
                    (path, f"deployment {deployment}, service {name}, env {key}: {exc}", None)
                )
                continue
            secret = ref.key(deployment)
            if inputs.secret is None or inputs.secret_key is None:
                env[key] = {"secret": secret}
                continue
            resolved = inputs.secret(secret)
            if resolved is None:
                findings.append((path, *_missing_secret(deployment, name, key, ref, inputs)))
                continue
            secrets[("env", key)] = SecretValue(resolved)
            env[key] = {"secret": secret, "hmac": keyed_hash(inputs.secret_key, resolved)}
        else:
            env[key] = value
    return env, secrets, findings


def _missing_secret(
    deployment: str, name: str, key: str, ref: SecretRef, inputs: CompileInputs
) -> tuple[str, str]:
    """The message and hint for a reference whose file (or field) is not there."""
    assert inputs.secret is not None
    where = f"deployment {deployment}, service {name}, env {key}"
    file = ref.file(deployment)
    if ref.field is not None and inputs.secret(file) is not None:
        return (
            f"{where}: secret {file} has no field {ref.field!r}",
            f"the file {file} in the secrets directory is a JSON object; add the field there",
        )
    return (
        f"{where}: secret {file} is not set",
        f"put it in the secrets directory as the file {file}"
        + (f" (a JSON object with the field {ref.field!r})" if ref.field is not None else ""),
    )


def restore_service(
    service: DesiredService, config: Mapping[str, Any], fingerprint_: str, inputs: CompileInputs
) -> DesiredService:
    """``service`` as it was with an earlier ``config`` (as recorded by the runtime), for
    rolling back. Every sensitive value is found again — secrets by name, ``$E:``
    values from the environment, literals among the current specs' values — and
    checked against the recorded hash; raises :class:`ValueError` when one is gone
    or no longer matches, since the earlier replica cannot then be recreated exactly."""
    known = [v.reveal() for v in service.secrets.values()]
    secrets: dict[ConfigPath, SecretValue] = {}
    for path, value in placeholders(config):
        where = format_path(path)
        name = value.get("secret")
        if name is not None:
            resolved = inputs.secret(name) if inputs.secret is not None else None
            if resolved is None or inputs.secret_key is None:
                raise ValueError(f"{where}: secret {name} is not available any more")
            if keyed_hash(inputs.secret_key, resolved) != value.get("hmac"):
                raise ValueError(f"{where}: secret {name} has changed since that config ran")
            secrets[path] = SecretValue(resolved)
            continue
        kind = value.get("sensitive", "")
        candidates = (
            [inputs.env[kind[3:]]] if kind.startswith("$E:") and kind[3:] in inputs.env else []
        )
        found = next(
            (
                c
                for c in [*candidates, *known]
                if inputs.secret_key is not None
                and keyed_hash(inputs.secret_key, c) == value.get("hmac")
            ),
            None,
        )
        if found is None:
            raise ValueError(
                f"{where}: the sensitive value that config ran with is not known any more"
            )
        secrets[path] = SecretValue(found)
    return dataclasses.replace(
        service, config=dict(config), fingerprint=fingerprint_, secrets=secrets
    )


def as_running(desired: DesiredState, runtime: str = "specs") -> ObservedState:
    """The observed state of a host that runs ``desired`` exactly and healthily: what
    ``plan --against-ref`` compares the working tree with."""
    workloads = []
    configs = {}
    for service in desired.services.values():
        configs[service.fingerprint] = dict(service.config)
        depends = tuple(d.service for d in service.depends)
        common: dict[str, Any] = {
            "deployment": service.deployment,
            "service": service.name,
            "fingerprint": service.fingerprint,
            "revision": desired.revision,
            "depends": depends,
        }
        if service.is_definition:
            workloads.append(Workload(status="registered", **common))
            continue
        for index in range(1, (service.replicas or 0) + 1):
            workloads.append(Workload(replica=index, status="running", health="healthy", **common))
    return ObservedState(runtime=runtime, workloads=tuple(workloads), configs=configs)

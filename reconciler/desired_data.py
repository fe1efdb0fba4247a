"""A :class:`~reconciler.desired.DesiredState` as JSON data, and back (pure).

For the compile cache (:mod:`reconciler.compile_cache`): everything of the state
but its revision, each clear value by where it comes from. ``$E:`` and ``$S:``
values are never in the data: :func:`encode_state` records the variable's or the
secret's name, and :func:`decode_state` resolves it again from the compile inputs
and checks its keyed hash against the one in the config, so a value that changed
(or is unset now) refuses the data instead of giving a state compiled from another
value. Sensitive literals (and the health checks and init steps that may hold
them) are in the data as they are: the cache seals it.

:func:`decode_state` trusts no part of its input: anything not of the exact shape
:func:`encode_state` writes raises :class:`Foreign`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.autoscale import ScalePolicy
from reconciler.desired import (
    CompileInputs,
    Dependency,
    DesiredService,
    DesiredState,
    SecretValue,
)
from reconciler.fingerprint import keyed_hash
from reconciler.policy import HealthPolicy, InitStep, ServicePolicy
from reconciler.redact import Path as ConfigPath


class Foreign(ValueError):
    """The data is not a state this compile may use (another shape, or a reference
    whose value moved)."""


def encode_state(desired: DesiredState) -> dict[str, Any]:
    """The cacheable part of ``desired`` as JSON data (revision aside: it is the caller's)."""
    return {
        "deployments": sorted(desired.deployments),
        "services": [_encode_service(s) for s in desired.services.values()],
        "warnings": [list(w) for w in desired.warnings],
    }


def _encode_service(service: DesiredService) -> dict[str, Any]:
    policy = service.policy
    health = policy.health
    return {
        "deployment": service.deployment,
        "name": service.name,
        "rtype": service.rtype,
        "config": service.config,
        "fingerprint": service.fingerprint,
        "replicas": service.replicas,
        "depends": [[d.service, d.condition, d.timeout, d.on_timeout] for d in service.depends],
        "pull_policy": service.pull_policy,
        "file": service.file,
        "secrets": [_encode_secret(service.config, p, v) for p, v in service.secrets.items()],
        "warnings": list(service.warnings),
        "notes": list(service.notes),
        "health": [getattr(health, name) for name in _HEALTH_FIELDS],
        "init": [[getattr(step, name) for name in _STEP_FIELDS] for step in policy.init],
        "on_init_failure": policy.on_init_failure,
        "on_panic": policy.on_panic,
        "delete_on_exit": policy.delete_on_exit,
        "restart": [policy.restart, policy.max_attempts, policy.restart_delay],
        "scale": None
        if (scale := policy.scale) is None
        else [scale.min, scale.max, scale.cooldown, dict(scale.targets or {})],
        "marked": sorted(service.marked),
        "placement": dict(service.placement),
    }


def _encode_secret(config: Mapping[str, Any], path: ConfigPath, value: SecretValue) -> list[Any]:
    """``[path, "env", VAR]``, ``[path, "secret", NAME]`` (resolved again when read) or
    ``[path, "literal", text]`` (a value written in the spec, kept in the sealed body)."""
    placeholder = _at(config, path)
    if not isinstance(placeholder, dict):
        raise Foreign(f"no placeholder at {path}")
    if "secret" in placeholder:
        return [list(path), "secret", placeholder["secret"]]
    kind = placeholder.get("sensitive")
    if isinstance(kind, str) and kind.startswith("$E:"):
        return [list(path), "env", kind[3:]]
    if kind == "literal":
        return [list(path), "literal", value.reveal()]
    raise Foreign(f"unknown placeholder at {path}")


def _at(config: Any, path: ConfigPath) -> Any:
    node = config
    for part in path:
        node = node[part]
    return node


_HEALTH_FIELDS = (
    "kind",
    "port",
    "url",
    "expect_status",
    "command",
    "start_grace",
    "interval",
    "timeout",
    "retries",
)
_STEP_FIELDS = ("id", "uses", "with_", "retry", "timeout", "on_failure")

_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))
_HEALTH_TYPES = (_STR, _OPT_INT, _STR, _INT, _STR, _NUM, _NUM, _NUM, _INT)
_STEP_TYPES = (_STR, _STR, (dict,), _INT, _NUM, _STR)
_HEALTH_KINDS = frozenset({"tcp", "http", "command"})


def decode_state(data: Any, inputs: CompileInputs, revision: str) -> DesiredState:
    """The state :func:`encode_state` gave ``data`` for, its ``$E:`` and ``$S:`` values
    resolved from ``inputs``. Raises ``Foreign`` (a ValueError) for data of another
    shape and for a reference whose value is unset or not the one compiled."""
    top = _dict(data, {"deployments", "services", "warnings"})
    services: dict[tuple[str, str], DesiredService] = {}
    for raw in _list(top["services"]):
        service = _decode_service(raw, inputs)
        services[service.key] = service
    deployments = frozenset(_str(d) for d in _list(top["deployments"]))
    warnings = tuple(
        (str(d), str(m)) for d, m in (_typed(w, (_STR, _STR)) for w in _list(top["warnings"]))
    )
    return DesiredState(revision, services, deployments, warnings)


_SERVICE_KEYS = frozenset(
    {
        "deployment",
        "name",
        "rtype",
        "config",
        "fingerprint",
        "replicas",
        "depends",
        "pull_policy",
        "file",
        "secrets",
        "warnings",
        "notes",
        "health",
        "init",
        "on_init_failure",
        "on_panic",
        "delete_on_exit",
        "restart",
        "scale",
        "marked",
        "placement",
    }
)


def _decode_service(raw: Any, inputs: CompileInputs) -> DesiredService:
    data = _dict(raw, _SERVICE_KEYS)
    config = _dict(data["config"])
    health = _typed(data["health"], _HEALTH_TYPES)
    if health[0] not in _HEALTH_KINDS:
        raise Foreign("health kind")
    replicas = data["replicas"]
    if type(replicas) not in _OPT_INT:
        raise Foreign("replicas")
    return DesiredService(
        deployment=_str(data["deployment"]),
        name=_str(data["name"]),
        rtype=_str(data["rtype"]),
        config=config,
        fingerprint=_str(data["fingerprint"]),
        replicas=replicas,
        depends=tuple(
            Dependency(*_typed(d, (_STR, _STR, _OPT_NUM, _STR))) for d in _list(data["depends"])
        ),
        pull_policy=_str(data["pull_policy"]),
        file=_str(data["file"]),
        secrets=dict(_decode_secret(s, config, inputs) for s in _list(data["secrets"])),
        warnings=tuple(_str(w) for w in _list(data["warnings"])),
        notes=tuple(_str(n) for n in _list(data["notes"])),
        policy=ServicePolicy(
            health=HealthPolicy(**dict(zip(_HEALTH_FIELDS, health, strict=True))),
            init=tuple(
                InitStep(**dict(zip(_STEP_FIELDS, _typed(s, _STEP_TYPES), strict=True)))
                for s in _list(data["init"])
            ),
            on_init_failure=_str(data["on_init_failure"]),
            on_panic=_str(data["on_panic"]),
            delete_on_exit=_bool(data["delete_on_exit"]),
            **_restart(data["restart"]),
            scale=_scale(data["scale"]),
        ),
        marked=frozenset(_str(m) for m in _list(data["marked"])),
        placement=_dict(data["placement"]),
    )


def _decode_secret(
    raw: Any, config: Mapping[str, Any], inputs: CompileInputs
) -> tuple[ConfigPath, SecretValue]:
    where, kind, text = _typed(raw, ((list,), _STR, _STR))
    path: ConfigPath = tuple(p if type(p) in (str, int) else _bad("path") for p in where)
    placeholder = _at(config, path)
    if not isinstance(placeholder, dict):
        raise Foreign("placeholder")
    if kind == "literal":
        return path, SecretValue(text)
    if kind == "env":
        value = inputs.env.get(text)
    elif kind == "secret" and inputs.secret is not None:
        value = inputs.secret(text)
    else:
        raise Foreign("secret kind")
    if value is None:
        raise Foreign("a reference is unset now: compile to report it")
    key = inputs.secret_key
    if key is not None and keyed_hash(key, value) != placeholder.get("hmac"):
        raise Foreign("a referenced value changed")
    return path, SecretValue(value)


def _bad(what: str) -> Any:
    raise Foreign(what)


def _dict(value: Any, keys: frozenset[str] | set[str] | None = None) -> dict[str, Any]:
    if type(value) is not dict or (keys is not None and value.keys() != keys):
        raise Foreign("mapping")
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise Foreign("list")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise Foreign("string")
    return value


def _restart(value: Any) -> dict[str, Any]:
    kind, attempts, delay = _typed(value, (_STR, _OPT_INT, _OPT_NUM))
    return {"restart": kind, "max_attempts": attempts, "restart_delay": delay}


def _scale(value: Any) -> ScalePolicy | None:
    if value is None:
        return None
    low, high, cooldown, targets = _typed(value, ((int,), (int,), (int, float), (dict,)))
    if not all(type(k) is str and type(v) in (int, float) for k, v in targets.items()):
        raise Foreign("scale targets")
    return ScalePolicy(low, high, float(cooldown), dict(targets))


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise Foreign("boolean")
    return value


def _typed(value: Any, types: tuple[tuple[type, ...], ...]) -> list[Any]:
    """``value``, a list with one item of each of ``types`` (bool is no int here)."""
    items = _list(value)
    if len(items) != len(types) or any(
        type(item) not in kinds for item, kinds in zip(items, types, strict=True)
    ):
        raise Foreign("items")
    return items

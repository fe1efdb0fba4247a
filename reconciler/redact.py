"""What is sensitive, and how a sensitive value is kept and shown (pure).

zlayer stores and shows a value only when it can tell the value is harmless.
Everything else becomes a *placeholder*, a small mapping in place of the value:

* ``{"secret": KEY, "hmac": H}`` — a ``$S:`` / ``$secret://`` reference, KEY the file
  (and ``#FIELD``) it reads in the secrets directory (:class:`reconciler.spec.refs.SecretRef`);
* ``{"sensitive": "$E:VAR", "hmac": H}`` — a ``$E:VAR`` reference (the variable's
  value may be anything, so it is treated as a secret by construction);
* ``{"sensitive": "literal", "hmac": H}`` — a literal that looks secret: the value
  of an ``env`` or ``labels`` key matching :data:`SENSITIVE_NAME_RE` or marked by
  the spec's author (label ``zlayer.sensitive``), an argument ``--password=…`` /
  ``--password …`` / ``PASSWORD=…``, and any string holding URL userinfo
  (``scheme://user:pass@host``) or such an assignment inside it (a script's
  ``mysql --password=pw``) anywhere in the config.

``H`` is a keyed hash (:func:`reconciler.fingerprint.keyed_hash`) under the host's
key, so a changed value still changes the fingerprint while the hash reveals
nothing; planning *offline* (no host key) leaves ``hmac`` out and the planner
takes the recorded placeholder as unchanged (:func:`adopt_recorded`).

Every config that leaves memory — runtime labels and records, snapshots, API
answers, plans — is a redacted one; only the launch step (the engine's create
call, the process runtime's 0600 launch file) sees clear values, through
``DesiredService.launch_config``. Free text (error messages, event and journal
messages) goes through :func:`scrub_text`, which cuts out every clear value the
current specs hold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.fingerprint import canonical_json, keyed_hash

SENSITIVE_NAME_RE = re.compile(
    r"PASS|PWD|TOKEN|SECRET|KEY|CRED|PRIVATE|AUTH|CERT|SALT|COOKIE|SESSION|DSN|WEBHOOK"
    r"|SIGNATURE|CONN_?STR|(?<![A-Z])(?:PW|PAT|JWT|PIN|OTP|SIG)(?![A-Z])",
    re.IGNORECASE,
)
"""Names (env keys, label keys, ``--flags``) whose values are sensitive even as
literals. Matched anywhere in the name, case-insensitively; the short ones (PW,
PAT, JWT, PIN, OTP, SIG) only as a whole word (``GH_PAT`` yes, ``PATH`` no)."""

URL_USERINFO_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@]+@")
"""A URL carrying userinfo (``postgres://user:pw@db``, ``https://key@sentry``)."""

EMBEDDED_RE = re.compile(
    r"(?:^|(?<=[\s;&|(=?]))-{0,2}(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=(?=[^\s'\";&|)$])"
)
"""An assignment inside a longer string: ``sh -c "mysql --password=pw"``,
``JAVA_OPTS=-Ddb.password=pw``, ``export API_TOKEN=t``. Sensitive when the name
is; a value that is a shell reference (``--password=$DB_PASSWORD``) or quoted is
not a value here."""

MARK_LABEL = "zlayer.sensitive"
"""The service label by which a spec's author marks more ``env``/``labels`` keys
as sensitive: a comma-separated list of exact key names."""

MASK = "***"
"""What :func:`scrub_text` puts in place of a clear value."""

MIN_SCRUB_LENGTH = 4
"""Clear values shorter than this are not cut out of free text: doing so would
mangle every message (a one-letter secret is no secret), while placeholders keep
them out of every structured output all the same."""

_FLAG_RE = re.compile(r"-{1,2}(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:=(?P<value>.*))?", re.DOTALL)
_ASSIGN_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)", re.DOTALL)

Path = tuple[str | int, ...]


def is_sensitive_name(name: str, marked: Iterable[str] = ()) -> bool:
    return name in marked or SENSITIVE_NAME_RE.search(name) is not None


def has_userinfo(text: str) -> bool:
    # Userinfo ends in "@": most strings have none, and need no regular expression.
    return "@" in text and URL_USERINFO_RE.search(text) is not None


def has_embedded_secret(text: str, marked: Iterable[str] = ()) -> bool:
    # An assignment has its "=": a string without one holds none.
    return "=" in text and any(
        is_sensitive_name(m["name"], marked) for m in EMBEDDED_RE.finditer(text)
    )


def is_sensitive_text(text: str) -> bool:
    """A string that is sensitive whatever it is called: URL userinfo or a sensitive
    assignment inside it."""
    return has_userinfo(text) or has_embedded_secret(text)


def secret_parts(text: str, marked: Iterable[str] = ()) -> list[str]:
    """The pieces of ``text`` that are secret on their own: URL userinfo and the
    values of sensitive assignments inside it. A message may quote only those (a
    probe's URL with another host), so free text is scrubbed of them too."""
    parts = [m.group()[m.group().index("://") + 3 : -1] for m in URL_USERINFO_RE.finditer(text)]
    for match in EMBEDDED_RE.finditer(text):
        if is_sensitive_name(match["name"], marked):
            value = re.match(r"[^\s'\";&|)]+", text[match.end() :])
            if value:
                parts.append(value.group())
    return parts


def hidden(kind: str, value: str, key: bytes | None) -> dict[str, str]:
    """The placeholder of a clear ``value``; without a key (offline) no hash."""
    out = {"sensitive": kind}
    if key is not None:
        out["hmac"] = keyed_hash(key, value)
    return out


def is_placeholder(value: Any) -> bool:
    if not isinstance(value, dict) or not value or len(value) > 2:
        return False
    keys = set(value)
    return keys in ({"secret"}, {"secret", "hmac"}, {"sensitive"}, {"sensitive", "hmac"}) and all(
        isinstance(v, str) for v in value.values()
    )


def marked_names(config: Mapping[str, Any]) -> frozenset[str]:
    """The keys the author marked sensitive with the ``zlayer.sensitive`` label."""
    labels = config.get("labels")
    raw = labels.get(MARK_LABEL) if isinstance(labels, dict) else None
    if not isinstance(raw, str):
        return frozenset()
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


@dataclass
class Redaction:
    """A config with every sensitive literal replaced, and the clear values by path."""

    config: dict[str, Any]
    clear: dict[Path, str] = field(default_factory=dict)


def redact_config(
    config: Mapping[str, Any], key: bytes | None, marked: Iterable[str] = ()
) -> Redaction:
    """Replace every sensitive *literal* of ``config`` (JSON data) by a placeholder.

    Placeholders already there (secret and ``$E:`` references) are kept. Total on
    any shape: recorded configs from snapshots or older versions are redacted with
    the same function, whatever they hold."""
    marks = frozenset(marked) | marked_names(config)
    out = Redaction({})
    for name, value in config.items():
        path: Path = (name,)
        if name in ("env", "labels") and isinstance(value, dict):
            out.config[name] = {
                k: _by_name(out, (*path, k), str(k), v, key, marks) for k, v in value.items()
            }
        elif name == "command" and isinstance(value, dict):
            out.config[name] = {
                k: _args(out, (*path, k), v, key, marks)
                if k in ("args", "entrypoint")
                else _walk(out, (*path, k), v, key)
                for k, v in value.items()
            }
        else:
            out.config[name] = _walk(out, path, value, key)
    return out


def _by_name(
    out: Redaction, path: Path, name: str, value: Any, key: bytes | None, marks: frozenset[str]
) -> Any:
    if is_placeholder(value):
        return value
    if is_sensitive_name(name, marks):
        return _hide(out, path, value, key)
    return _walk(out, path, value, key)


def _args(out: Redaction, path: Path, value: Any, key: bytes | None, marks: frozenset[str]) -> Any:
    if not isinstance(value, list):
        return _walk(out, path, value, key)
    result: list[Any] = []
    hide_next = False
    for index, arg in enumerate(value):
        here = (*path, index)
        if not isinstance(arg, str):
            result.append(_walk(out, here, arg, key))
            hide_next = False
            continue
        if hide_next and not arg.startswith("-"):
            result.append(_hide(out, here, arg, key))
            hide_next = False
            continue
        hide_next = False
        flag = _FLAG_RE.fullmatch(arg)
        assign = _ASSIGN_RE.fullmatch(arg)
        if flag and is_sensitive_name(flag["name"], marks):
            if flag["value"] is None:
                result.append(arg)
                hide_next = True
            else:
                result.append(_hide(out, here, arg, key))
        elif assign and is_sensitive_name(assign["name"], marks):
            result.append(_hide(out, here, arg, key))
        else:
            result.append(_walk(out, here, arg, key))
    return result


def _walk(out: Redaction, path: Path, value: Any, key: bytes | None) -> Any:
    if isinstance(value, str):
        return _hide(out, path, value, key) if is_sensitive_text(value) else value
    if is_placeholder(value):
        return value
    if isinstance(value, dict):
        return {k: _walk(out, (*path, k), v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(out, (*path, i), v, key) for i, v in enumerate(value)]
    return value


def _hide(out: Redaction, path: Path, value: Any, key: bytes | None) -> dict[str, str]:
    text = value if isinstance(value, str) else canonical_json(value)
    out.clear[path] = text
    return hidden("literal", text, key)


def reveal(config: Mapping[str, Any], clear: Mapping[Path, str]) -> dict[str, Any]:
    """``config`` with the clear values put back (for the launch step only)."""
    result: dict[str, Any] = _copy(config)
    for path, value in clear.items():
        node: Any = result
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def placeholders(config: Any, path: Path = ()) -> list[tuple[Path, dict[str, str]]]:
    """Every placeholder of ``config`` with its path."""
    if is_placeholder(config):
        return [(path, config)]
    if isinstance(config, dict):
        return [f for k, v in config.items() for f in placeholders(v, (*path, k))]
    if isinstance(config, list):
        return [f for i, v in enumerate(config) for f in placeholders(v, (*path, i))]
    return []


def unhashed_paths(config: Any) -> list[Path]:
    """Where ``config`` holds placeholders without a hash (compiled offline)."""
    return [path for path, value in placeholders(config) if "hmac" not in value]


def has_unhashed(config: Any) -> bool:
    """``unhashed_paths(config)`` is not empty (without listing them: the planner asks
    for every replica)."""
    if isinstance(config, dict):
        if is_placeholder(config):
            return "hmac" not in config
        return any(has_unhashed(v) for v in config.values())
    if isinstance(config, list):
        return any(has_unhashed(v) for v in config)
    return False


def adopt_recorded(desired: Any, recorded: Any) -> Any:
    """``desired`` with each hash-less placeholder replaced by the ``recorded`` one at
    the same place when both name the same thing (same secret, same ``$E:``
    variable, both literals): offline, what cannot be compared is taken as it was."""
    if is_placeholder(desired):
        if "hmac" in desired or not is_placeholder(recorded):
            return desired
        same = {k: v for k, v in recorded.items() if k != "hmac"} == desired
        return recorded if same else desired
    if isinstance(desired, dict) and isinstance(recorded, dict):
        return {k: adopt_recorded(v, recorded.get(k)) for k, v in desired.items()}
    if isinstance(desired, list) and isinstance(recorded, list) and len(desired) == len(recorded):
        return [adopt_recorded(d, r) for d, r in zip(desired, recorded, strict=True)]
    return desired


def scrub_text(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each clear value (longest first) replaced by
    ``***``. The one function every free-text output passes through."""
    for value in sorted({v for v in values if len(v) >= MIN_SCRUB_LENGTH}, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def scrub_data(value: Any, scrub: Callable[[str], str]) -> Any:
    """Every string in JSON data (keys included) through ``scrub``."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): scrub_data(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(v, scrub) for v in value]
    return value


@dataclass(frozen=True)
class Scrubber:
    """:func:`scrub_text` bound to a set of clear values (those of a desired state)."""

    values: frozenset[str] = frozenset()

    def __call__(self, text: str) -> str:
        return scrub_text(text, self.values) if self.values else text

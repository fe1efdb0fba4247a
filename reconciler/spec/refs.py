"""The syntax of ``$E:`` and ``$S:`` references in spec values (pure, no spec models).

Apart from :mod:`reconciler.spec.rules` so that compiling and reading secrets can
use them without loading the spec models.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

ENV_REF_RE = re.compile(r"\$E:(?P<name>.*)", re.DOTALL)
SECRET_REF_RE = re.compile(r"\$(?:S:|secret://)(?P<name>.*)", re.DOTALL)
"""``$S:NAME`` and ``$secret://NAME``: the value of the secret NAME."""
SECRET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
"""A secret is the file NAME in the secrets directory: one path component, no
``..``, no hidden file, at most 255 bytes (a file name's limit)."""
SHELL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FIELD_RE = re.compile(r"[^/\x00-\x1f\x7f]{1,255}")
"""A field of a JSON secret: no ``/`` (the separator) and no control character."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A parsed ``$S:`` / ``$secret://`` reference, in ZLayer's forms:

    ========================================  ==================================
    reference                                 file in the secrets directory
    ========================================  ==================================
    ``$S:name`` / ``$secret://name``          ``name``
    ``$S:name/field``                         ``name``, JSON field ``field``
    ``$S:@service/name[/field]``              ``services/<deployment>/<service>/name``
    ``$S::env/name[/field]``                  ``env/<env>/name``
    ``$secret://env/name[/field]``            ``env/<env>/name``
    ``$S:project:env/name[/field]``           ``projects/<project>/env/<env>/name``
    ========================================  ==================================

    ``$secret://name`` without a ``/`` is zlayer's older spelling of ``$S:name``
    (ZLayer's own ``$secret://`` always names an environment)."""

    name: str
    service: str | None = None
    project: str | None = None
    environment: str | None = None
    field: str | None = None

    def file(self, deployment: str) -> str:
        """The file's path in the secrets directory, ``/``-separated."""
        if self.service is not None:
            return f"services/{deployment}/{self.service}/{self.name}"
        if self.environment is not None:
            where = f"env/{self.environment}/{self.name}"
            return where if self.project is None else f"projects/{self.project}/{where}"
        return self.name

    def key(self, deployment: str) -> str:
        """What a compiled config records for it (``{"secret": KEY}``) and what
        :class:`reconciler.statedir.SecretsDir` reads: ``FILE`` or ``FILE#FIELD``.
        A plain ``$S:name`` keeps the key ``name`` it always had."""
        file = self.file(deployment)
        return file if self.field is None else f"{file}#{self.field}"


def parse_secret_ref(value: str) -> SecretRef:
    """The reference a whole env value ``value`` (``$S:…`` or ``$secret://…``) is;
    :class:`ValueError` saying what is wrong when it is none of ZLayer's forms or a
    part of it cannot be a file name."""
    if value.startswith("$secret://"):
        rest = value.removeprefix("$secret://")
        if "/" not in rest:
            return SecretRef(_part(rest, "secret name"))
        environment, _, tail = rest.partition("/")
        return _with_field(tail, environment=_part(environment, "environment"))
    rest = value.removeprefix("$S:")
    if rest.startswith("@"):
        service, slash, tail = rest[1:].partition("/")
        if not slash:
            raise ValueError("a service secret is $S:@SERVICE/NAME[/FIELD]")
        return _with_field(tail, service=_part(service, "service name"))
    scope, slash, tail = rest.partition("/")
    if ":" in scope:
        if not slash:
            raise ValueError("an environment secret is $S::ENV/NAME or $S:PROJECT:ENV/NAME")
        project, _, environment = scope.partition(":")
        return _with_field(
            tail,
            project=_part(project, "project") if project else None,
            environment=_part(environment, "environment"),
        )
    name = _part(scope, "secret name")
    if not slash:
        return SecretRef(name)
    return SecretRef(name, field=_field(tail))


def _with_field(
    tail: str,
    *,
    service: str | None = None,
    project: str | None = None,
    environment: str | None = None,
) -> SecretRef:
    name, slash, field = tail.partition("/")
    return SecretRef(
        _part(name, "secret name"),
        service=service,
        project=project,
        environment=environment,
        field=_field(field) if slash else None,
    )


def _part(text: str, what: str) -> str:
    if not SECRET_NAME_RE.fullmatch(text):
        raise ValueError(
            f"{what} {text!r} is not valid: it names a file or directory of the secrets "
            "directory (1-255 ASCII letters, digits, '_', '.' or '-', starting with a "
            "letter or digit)"
        )
    return text


def _field(text: str) -> str:
    if not FIELD_RE.fullmatch(text):
        raise ValueError(
            f"field {text!r} is not valid: a field of a JSON secret is 1-255 "
            "characters, no '/' and no control character"
        )
    return text


def export_hint(name: str, when: str) -> str:
    """How to set the environment variable ``name``, as shell that is valid and safe to
    paste whatever the name holds: ``export NAME=value`` ``when`` for a name ``export``
    can set, else ``env 'NA-ME=value'`` in front of the command (quoted)."""
    if SHELL_NAME_RE.fullmatch(name):
        return f"export {name}=value {when}"
    setting = shlex.quote(f"{name}=value")
    return f"export cannot set this name; run zlayer as: env {setting} zlayer …"

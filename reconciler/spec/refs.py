"""The syntax of ``$E:`` and ``$S:`` references in spec values (pure, no spec models).

Apart from :mod:`reconciler.spec.rules` so that compiling and reading secrets can
use them without loading the spec models.
"""

from __future__ import annotations

import re
import shlex

ENV_REF_RE = re.compile(r"\$E:(?P<name>.*)", re.DOTALL)
SECRET_REF_RE = re.compile(r"\$(?:S:|secret://)(?P<name>.*)", re.DOTALL)
"""``$S:NAME`` and ``$secret://NAME``: the value of the secret NAME."""
SECRET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
"""A secret is the file NAME in the secrets directory: one path component, no
``..``, no hidden file, at most 255 bytes (a file name's limit)."""
SHELL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def export_hint(name: str, when: str) -> str:
    """How to set the environment variable ``name``, as shell that is valid and safe to
    paste whatever the name holds: ``export NAME=value`` ``when`` for a name ``export``
    can set, else ``env 'NA-ME=value'`` in front of the command (quoted)."""
    if SHELL_NAME_RE.fullmatch(name):
        return f"export {name}=value {when}"
    setting = shlex.quote(f"{name}=value")
    return f"export cannot set this name; run zlayer as: env {setting} zlayer …"

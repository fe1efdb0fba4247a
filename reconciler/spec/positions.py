"""Where in a spec file a warning about a service belongs (pure).

Warnings are plain sentences that begin with what they are about — a field
(``resources.gpu.model is not applied …``), an endpoint (``endpoint http: host not
applied …``), an init step (``init step 'fetch' uses …``) or a storage entry
(``storage bind at /data …``). :func:`warning_path` reads that beginning back into
the spec path, so ``validate --runtime`` and the ``github`` format show each warning
at the field it is about rather than at its service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.spec.problems import Path

_FIELD = re.compile(r"[a-z_]+(?:\.[a-z_]+)*")
_ENDPOINT = re.compile(r"endpoint (?P<name>[^\s:]+)(?:: (?P<key>[a-z_]+) not applied)?")
_STEP = re.compile(r"init step '(?P<id>[^']*)'")
_STORAGE = re.compile(r"storage \S+ at (?P<target>\S+?):?(?:\s|$)")


def warning_path(
    base: Path, message: str, config: Mapping[str, Any], steps: Sequence[str] = ()
) -> Path:
    """The spec path ``message`` (a warning about the service at ``base``, whose
    compiled config is ``config`` and init step ids ``steps``) is about; ``base``
    when it names nothing more precise."""
    if match := _ENDPOINT.match(message):
        names = [str(e.get("name")) for e in config.get("endpoints", ())]
        if match["name"] in names:
            where = (*base, "endpoints", names.index(match["name"]))
            return (*where, match["key"]) if match["key"] else where
        return base
    if match := _STEP.match(message):
        return (*base, "init", "steps", steps.index(match["id"])) if match["id"] in steps else base
    if match := _STORAGE.match(message):
        targets = [str(s.get("target")) for s in config.get("storage", ())]
        return (
            (*base, "storage", targets.index(match["target"]))
            if match["target"] in targets
            else base
        )
    if message.startswith("adaptive scale"):
        return (*base, "scale")
    if match := _FIELD.match(message):
        return (*base, *match.group().split("."))
    return base

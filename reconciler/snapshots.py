"""Snapshots: what a runtime reported, saved by ``zlayer observe --out``, read back
for ``zlayer plan --observed`` with no access to the runtime (the format itself is
:mod:`reconciler.observed`'s; this module reads files and bounds their size)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import SnapshotError
from reconciler.observed import ObservedState, load_snapshot
from reconciler.spec.yamldoc import format_bytes

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
"""Largest snapshot read (64 MiB; ``$ZLAYER_MAX_SNAPSHOT_MIB`` sets another limit).
A replica takes about 0.5 KiB of a snapshot, so this is over 100,000 replicas; a
larger file is refused before it is read (parsing 111 MB took 77 s and 1.6 GB)."""

SNAPSHOT_LIMIT_ENV = "ZLAYER_MAX_SNAPSHOT_MIB"


def snapshot_limit() -> int:
    """The snapshot size limit in bytes: ``$ZLAYER_MAX_SNAPSHOT_MIB`` MiB, else
    :data:`MAX_SNAPSHOT_BYTES`."""
    raw = os.environ.get(SNAPSHOT_LIMIT_ENV, "").strip()
    if not raw:
        return MAX_SNAPSHOT_BYTES
    if not raw.isdigit() or int(raw) == 0:
        raise SnapshotError(f"${SNAPSHOT_LIMIT_ENV} is {raw!r}; give a whole number of MiB")
    return int(raw) * 1024 * 1024


def read_snapshot(path: str | Path) -> ObservedState:
    """Read and check a snapshot file; raises :class:`SnapshotError` naming the file and
    what is wrong: unreadable, larger than :func:`snapshot_limit` (never read past it),
    not the documented format, or a recorded config of the wrong shape."""
    limit = snapshot_limit()
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            too_large = stat.S_ISREG(info.st_mode) and info.st_size > limit
            data = b"" if too_large else handle.read(limit + 1)
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read snapshot: {exc.strerror or exc}") from exc
    if too_large or len(data) > limit:
        raise SnapshotError(
            f"{path}: snapshot is larger than {format_bytes(limit)}; refusing to read it "
            f"(${SNAPSHOT_LIMIT_ENV} sets another limit)"
        )
    state = load_snapshot(data, str(path))
    for fingerprint_, config in state.configs.items():
        problem = _config_problem(config)
        if problem is not None:
            raise SnapshotError(
                f"{path}: not a valid zlayer-observed snapshot: configs.{fingerprint_}.{problem}"
            )
    return state


def _config_problem(config: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a recorded config, as ``field: problem``; None
    when the fields the planner reads have the shapes compiling gives them."""
    for key in ("image", "rtype", "schedule", "network_mode"):
        if key in config and not isinstance(config[key], str):
            return f"{key}: must be a string"
    env = config.get("env", {})
    if not isinstance(env, dict):
        return "env: must be an object of names to values"
    for name, value in env.items():
        if not isinstance(value, str | dict):
            return f"env.{name}: must be a string or an object (a secret's placeholder)"
    return None

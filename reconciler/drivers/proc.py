"""Small host facts and file helpers shared by the process driver and its monitor
(standard library only: the monitor imports this for every replica it starts)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def atomic_write_json(path: Path, data: Mapping[str, Any], mode: int = 0o644) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a part:
    a temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    text = json.dumps(data, sort_keys=True, indent=1) + "\n"
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with _quiet():
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or not a JSON object.
    Atomic writes cannot leave a torn file, but a hand-edited or corrupt one must
    not break observing everything else."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces
    and parentheses: split at the last ')'); field 3 (state) comes first."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    _, _, rest = raw.rpartition(b")")
    return rest.decode("ascii", "replace").split()


def start_time(pid: int) -> int | None:
    """When ``pid`` started (field 22 of /proc/<pid>/stat: clock ticks since boot);
    None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, D, Z, …); None when there is none."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int, start: int) -> bool:
    """``pid`` is the process that started at ``start`` and has not ended (a zombie has
    ended): a recycled pid is never mistaken for it."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) <= 19:
        return False
    return fields[0] != "Z" and int(fields[19]) == start


def boot_id() -> str:
    """This boot's id: pids and start times of another boot mean nothing."""
    return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()


def now_iso() -> str:
    """UTC now, ISO 8601 with milliseconds and ``Z``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"

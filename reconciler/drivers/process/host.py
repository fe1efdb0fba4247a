"""Small host facts and file helpers shared by the process driver and its monitor.

Standard library only, and cheap to import: the monitor imports this for every
replica it starts (hence no ``tempfile``, whose imports cost more than the rest).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# The process runtime's records are written with it (re-exported).
from reconciler.files import atomic_write_json as atomic_write_json


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or is not a JSON object.

    Atomic writes cannot leave a torn file, but a hand-edited or corrupt one must not
    make observing everything else fail: it reads as absent, like a missing record."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, state (field 3) first;
    None when there is no such process. The name may hold spaces and parentheses
    (a program is free to call itself ``a) (b``): it ends at the LAST ')'."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    _, paren, rest = raw.rpartition(b")")
    fields = rest.decode("ascii", "replace").split()
    return fields if paren and len(fields) > 19 else None


def start_time(pid: int) -> int | None:
    """When ``pid`` started (field 22 of /proc/<pid>/stat: clock ticks since boot);
    None when there is no such process. A zombie still has its start time."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, D, T, Z, …); None when there is none."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def is_zombie(pid: int) -> bool:
    """``pid`` has ended but its parent has not collected its exit status yet."""
    return process_state(pid) == "Z"


def alive(pid: int, start: int) -> bool:
    """``pid`` is the process that started at ``start`` and has not ended (a zombie
    has ended): a recycled pid is never mistaken for it."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == start


def boot_id() -> str:
    """This boot's id: pids and start times recorded in another boot mean nothing."""
    return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()


def now_iso() -> str:
    """UTC now, ISO 8601 with milliseconds and ``Z`` (``2026-11-22T10:00:00.123Z``)."""
    now = time.time()
    whole = int(now)
    millis = int((now - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"

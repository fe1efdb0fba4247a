"""Files that readers see whole or not at all, across a crash (standard library only)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def atomic_write_json(path: Path, data: Mapping[str, Any], mode: int = 0o644) -> None:
    """Write ``data`` (sorted keys, indent 1) so that readers see the old file or the
    new one, never a part of it, even across a crash: a temp file in the same
    directory, fsync, chmod ``mode``, rename over ``path``, fsync the directory."""
    text = json.dumps(data, sort_keys=True, indent=1) + "\n"
    temp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, mode)  # not the umask's say
            view = memoryview(text.encode("utf-8"))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)

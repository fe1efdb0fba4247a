"""A replica's or run's output, as the monitor keeps it: ``output.log``, rotated to
``output.log.1`` … ``output.log.<keep>``; read oldest first, and followed across
rotations until the workload ends."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import IO

from reconciler.drivers.process import records
from reconciler.drivers.process.records import Record
from reconciler.drivers.process.status import state
from reconciler.errors import PermanentDriverError

LOG = "output.log"
FOLLOW_POLL = 0.1
"""Seconds between looks for more output while following."""


async def log_lines(
    where: Path, record: Record, *, keep: int, follow: bool, tail: int | None
) -> AsyncGenerator[str, None]:
    """The last ``tail`` lines (all for None), and with ``follow`` every line written
    from then on, until the workload is no longer running."""
    log = where / LOG
    lines: collections.deque[str] = collections.deque(maxlen=tail)
    if tail != 0:
        for n in range(keep, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                lines.extend(Path(f"{log}.{n}").read_text(errors="replace").splitlines())
    handle = _open(log)
    try:
        if handle is not None and tail != 0:
            lines.extend(handle.read().splitlines())
        elif handle is not None:
            handle.seek(0, os.SEEK_END)
        for line in lines:
            yield line
        if not follow:
            return
        pending = ""
        while True:
            chunk = handle.read() if handle is not None else ""
            if chunk:
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    yield line
                continue
            current = _open(log)
            if current is not None and (
                handle is None
                or os.fstat(current.fileno()).st_ino != os.fstat(handle.fileno()).st_ino
            ):
                if handle is not None:
                    handle.close()
                handle = current  # rotated: the rest is in the new file
                continue
            if current is not None:
                current.close()
            if state(where, _current(where, record)).status != "running":
                if pending:
                    yield pending
                return
            await asyncio.sleep(FOLLOW_POLL)
    finally:
        if handle is not None:
            handle.close()


def _current(where: Path, record: Record) -> Record:
    """The record as it is now (a restart changes its launch), else as it was."""
    try:
        return records.read_record(where) or record
    except PermanentDriverError:
        return record


def _open(path: Path) -> IO[str] | None:
    try:
        return path.open(errors="replace")
    except FileNotFoundError:
        return None

"""Watching spec files change (watchfiles; the only module importing it).

Editors save through temporary files (vim's ``.x.swp`` and its ``4913`` probe,
emacs's ``.#x`` and ``x~``, atomic ``.x.tmp`` renames): those are not specs and
never trigger anything. Changes are debounced, so a burst of writes comes as one
batch; a file given by itself is watched through its directory, so an editor that
replaces it by a rename is still seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from watchfiles import Change, awatch

from reconciler.errors import SourceError
from reconciler.sources.files import SPEC_SUFFIXES

_TEMP_SUFFIXES = ("~", ".swp", ".swx", ".swo", ".tmp", ".bak", ".orig")


def is_spec_change(path: str) -> bool:
    """A change that can matter: a ``*.yaml``/``*.yml`` file that is not an editor's
    temporary file and is not under a dot-directory."""
    parts = Path(path).parts
    name = parts[-1] if parts else ""
    if not name or name == "4913" or name.endswith(_TEMP_SUFFIXES):
        return False
    if any(part.startswith(".") and part not in (".", "..") for part in parts):
        return False
    return name.endswith(SPEC_SUFFIXES)


async def watch_specs(
    paths: Sequence[Path], stop: asyncio.Event, *, debounce_ms: int = 300
) -> AsyncIterator[set[str]]:
    """Each debounced batch of changed spec paths under ``paths``, until ``stop``."""
    files: set[str] = set()
    roots: list[Path] = []
    for path in paths:
        if not path.exists():
            raise SourceError(f"{path}: no such file or directory to watch")
        if path.is_dir():
            roots.append(path)
        else:
            files.add(str(path.resolve()))
            roots.append(path.resolve().parent)

    def relevant(_change: Change, changed: str) -> bool:
        if not is_spec_change(changed):
            return False
        return str(Path(changed).resolve()) in files or _under_dir(changed, paths)

    async for batch in awatch(
        *roots,
        watch_filter=relevant,
        debounce=debounce_ms,
        stop_event=stop,
        rust_timeout=2000,
        yield_on_timeout=False,
        recursive=True,
    ):
        yield {changed for _, changed in batch}


def _under_dir(changed: str, paths: Sequence[Path]) -> bool:
    target = Path(changed).resolve()
    return any(p.is_dir() and target.is_relative_to(p.resolve()) for p in paths)

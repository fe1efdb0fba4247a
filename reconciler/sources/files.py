"""Read spec files from paths given on the command line.

Everything that can go wrong with the file system becomes a
:class:`~reconciler.spec.problems.Problem` (missing paths, unreadable files,
symlink loops, FIFOs that would block a read, oversized files) so one run
reports all of it; nothing here raises for bad input.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler.spec.load import MAX_FILE_BYTES, SourceFile, too_large
from reconciler.spec.problems import Problem

SPEC_SUFFIXES = (".yaml", ".yml")
DEFAULT_SPECS = "specs"
"""Where specs are read from when a command is given no paths."""


@dataclass(frozen=True, slots=True)
class Collected:
    files: tuple[SourceFile, ...]
    problems: tuple[Problem, ...]


def collect(paths: Iterable[str | Path]) -> Collected:
    """Every spec file named by ``paths``: files as given, directories searched below
    for ``*.yaml``/``*.yml`` (sorted, each file once)."""
    files: list[SourceFile] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for given in paths:
        for name, problem in _expand(Path(given)):
            if problem is not None:
                problems.append(Problem(name, None, "", problem))
                continue
            real = os.path.realpath(name)
            if real in seen:
                continue
            seen.add(real)
            data, problem = _read(Path(name))
            if problem is not None:
                problems.append(Problem(name, None, "", problem))
            else:
                files.append(SourceFile(name, data))
    return Collected(tuple(files), tuple(problems))


def _expand(path: Path) -> Iterator[tuple[str, str | None]]:
    try:
        info = path.stat()
    except FileNotFoundError:
        yield str(path), "no such file or directory"
        return
    except OSError as exc:
        yield str(path), f"cannot read: {exc.strerror or exc}"
        return
    if not stat.S_ISDIR(info.st_mode):
        yield str(path), None
        return
    found = sorted(_walk(path))
    if not found:
        yield str(path), "no *.yaml or *.yml files in this directory"
    yield from found


def _walk(root: Path) -> Iterator[tuple[str, str | None]]:
    visited: set[tuple[int, int]] = set()
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=errors.append):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in visited:
            dirnames.clear()
            yield dirpath, "directory is reached again through a symlink loop; skipped"
            continue
        visited.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.endswith(SPEC_SUFFIXES) and not filename.startswith("."):
                yield os.path.join(dirpath, filename), None
    for exc in errors:
        yield str(exc.filename), f"cannot read directory: {exc.strerror or exc}"


def _read(path: Path) -> tuple[bytes, str | None]:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return b"", "not a regular file"
        if info.st_size > MAX_FILE_BYTES:
            return b"", too_large(MAX_FILE_BYTES)
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return b"", f"cannot read: {exc.strerror or exc}"
    return data, None

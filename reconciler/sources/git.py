"""Spec files as they are at a git ref (the only module importing gitpython).

Read-only: blobs are read straight from the object database, so neither the
working tree nor the index nor HEAD moves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import git

from reconciler.errors import SourceError
from reconciler.sources.files import SPEC_SUFFIXES, Collected
from reconciler.spec.load import MAX_FILE_BYTES, SourceFile
from reconciler.spec.problems import Problem

_SYMLINK_MODE = 0o120000


def files_at_ref(paths: Iterable[str | Path], ref: str) -> tuple[Collected, str]:
    """The spec files under ``paths`` (files or directories of the working tree, as
    given on the command line) as they are at ``ref``; and that commit's id.

    A path that does not exist at ``ref`` contributes no files (the specs there
    are new). Raises :class:`SourceError` when there is no repository or no such ref.
    """
    given = [Path(p) for p in paths]
    repo = _repo(given[0] if given else Path.cwd())
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError) as exc:
        raise SourceError(f"--against-ref {ref}: no such commit, branch or tag") from exc
    root = Path(repo.working_tree_dir or ".").resolve()
    files: list[SourceFile] = []
    problems: list[Problem] = []
    for path in given:
        inside = _relative(path, root)
        for name, blob in _blobs(commit.tree, inside):
            shown = os.path.join(str(path), name) if name else str(path)
            if blob.size > MAX_FILE_BYTES:
                problems.append(Problem(shown, None, "", f"at {ref}: file is larger than 1 MiB"))
                continue
            files.append(SourceFile(shown, blob.data_stream.read()))
    return Collected(tuple(files), tuple(problems)), commit.hexsha


def _repo(start: Path) -> git.Repo:
    try:
        return git.Repo(start if start.is_dir() else start.parent, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise SourceError(f"--against-ref: {start} is not inside a git repository") from exc


def _relative(path: Path, root: Path) -> str:
    absolute = path.resolve()
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        raise SourceError(f"--against-ref: {path} is outside the repository at {root}") from None


def _blobs(tree: git.Tree, inside: str) -> Iterator[tuple[str, git.Blob]]:
    """(name relative to ``inside``, blob) for the spec files at ``inside`` in ``tree``."""
    try:
        item = tree / inside if inside not in ("", ".") else tree
    except KeyError:
        return
    if isinstance(item, git.Blob):
        if item.mode != _SYMLINK_MODE:
            yield "", item
        return
    found = []
    for entry in item.traverse():
        if not isinstance(entry, git.Blob) or entry.mode == _SYMLINK_MODE:
            continue
        relative = Path(entry.path).relative_to(item.path) if item.path else Path(entry.path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if relative.name.endswith(SPEC_SUFFIXES):
            found.append((relative.as_posix(), entry))
    yield from sorted(found, key=lambda pair: pair[0])

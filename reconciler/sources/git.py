"""Spec files from git (the only module importing gitpython).

:func:`files_at_ref` reads the specs at a ref of the repository the user is in
(``plan --against-ref``); :class:`GitTracker` follows a remote for the daemon, in
a bare clone of its own. Both read blobs straight from the object database, so
no working tree, index or HEAD ever moves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import git

from reconciler.errors import SourceError, SourceUnreachable
from reconciler.sources.files import SPEC_SUFFIXES, Collected
from reconciler.spec.load import MAX_FILE_BYTES, SourceFile, too_large
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
        commit.tree  # noqa: B018 - a shallow clone knows a parent's id, not its contents
    except (git.BadName, git.BadObject, ValueError, git.GitCommandError) as exc:
        raise SourceError(_missing_ref(repo, ref)) from exc
    root = Path(repo.working_tree_dir or ".").resolve()
    files: list[SourceFile] = []
    problems: list[Problem] = []
    for path in given:
        inside = _relative(path, root)
        for name, blob in _blobs(commit.tree, inside):
            shown = os.path.join(str(path), name) if name else str(path)
            if blob.size > MAX_FILE_BYTES:
                problems.append(Problem(shown, None, "", f"at {ref}: {too_large(MAX_FILE_BYTES)}"))
                continue
            files.append(SourceFile(shown, blob.data_stream.read()))
    return Collected(tuple(files), tuple(problems)), commit.hexsha


def _missing_ref(repo: git.Repo, ref: str) -> str:
    """Why ``ref`` cannot be read, with a hint for the two common cases in CI: an empty
    repository, and a shallow clone that stops before ``ref``."""
    if not repo.head.is_valid() and not repo.refs:
        return (
            f"--against-ref {ref}: the repository has no commits yet "
            "(hint: commit the specs first; to plan everything as new, pass the all-zero "
            "ref 0000000000000000000000000000000000000000)"
        )
    if os.path.exists(os.path.join(repo.git_dir, "shallow")):
        return (
            f"--against-ref {ref}: no such commit, branch or tag in this shallow clone, "
            "whose history is cut off "
            "(hint: fetch the ref or more history, e.g. git fetch --unshallow, or "
            "actions/checkout with fetch-depth: 0)"
        )
    return f"--against-ref {ref}: no such commit, branch or tag"


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


# --- following a remote (the daemon) ---------------------------------------------------------

log = logging.getLogger("reconciler.sources.git")

NETWORK_TIMEOUT = 60
KEY_SUFFIXES = (".asc", ".gpg", ".pub", ".key")
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}


@dataclass(frozen=True, slots=True)
class GitOptions:
    url: str
    branch: str | None = None
    """Follow ``refs/heads/<branch>`` of the remote (default: the remote's HEAD)."""
    ref: str | None = None
    """Or a fixed tag or commit id."""
    path: str = ""
    """The specs' directory inside the repository (``""``: all of it)."""
    allow_rewrite: bool = False
    verify_signatures: bool = False
    trusted_keys: Path | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    id: str
    summary: str
    author: str
    committed_at: str


class GitTracker:
    """A bare clone of ``options.url`` in ``workdir`` (plus a GnuPG home for the trusted
    keys). Blocking: the daemon calls it from a thread."""

    def __init__(self, options: GitOptions, workdir: Path) -> None:
        if options.branch and options.ref:
            raise SourceError("give a branch or a ref to follow, not both")
        if options.verify_signatures:
            keys = options.trusted_keys
            if keys is None:
                raise SourceError("--verify-signatures needs --trusted-keys DIR")
            if not keys.is_dir():
                raise SourceError(f"--trusted-keys {keys}: no such directory")
            if not _key_files(keys):
                raise SourceError(
                    f"--trusted-keys {keys}: no public keys (*{', *'.join(KEY_SUFFIXES)}) in it"
                )
        self.options = options
        self.workdir = workdir
        self.clone_dir = workdir / "repo.git"
        self.gnupg = workdir / "gnupg"
        self._keys_digest: str | None = None
        self._lock = threading.RLock()
        """One git operation at a time: the daemon fetches from one thread while a
        reconcile reads from another, and a re-clone must not pull the clone away."""

    # --- the clone ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**_GIT_ENV, "GNUPGHOME": str(self.gnupg)}

    def _open(self) -> git.Repo | None:
        """The clone, or None when it is missing or unusable (then it is removed)."""
        if not self.clone_dir.exists():
            return None
        try:
            repo = git.Repo(self.clone_dir)
            repo.git.update_environment(**self._env())
            urls = list(repo.remote("origin").urls)
            if urls != [self.options.url]:
                raise ValueError(f"its remote is {urls}, not {self.options.url}")
            if repo.refs and not _exists(repo, "HEAD"):
                # The remote's HEAD may name a branch nobody pushed (a `git init --bare`
                # whose team pushes main): that is the remote's state, not a broken
                # clone. Only a HEAD that is neither a commit nor a branch name is.
                repo.git.symbolic_ref("--quiet", "HEAD")
            repo.git.fsck("--connectivity-only", "--no-dangling", "--no-progress")
        except (git.GitError, ValueError, OSError) as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.warning(
                "the local clone %s is unusable (%s); cloning again", self.clone_dir, reason
            )
            shutil.rmtree(self.clone_dir, ignore_errors=True)
            return None
        return repo

    def _clone(self) -> git.Repo:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(self.clone_dir, ignore_errors=True)
        try:
            repo = git.Repo.clone_from(
                self.options.url,
                self.clone_dir,
                bare=True,
                env=self._env(),
                # never share object files with a local remote: a broken clone must
                # not break the repository it came from (nor the other way round)
                multi_options=["--no-hardlinks"],
                kill_after_timeout=NETWORK_TIMEOUT,
            )
        except git.GitCommandError as exc:
            shutil.rmtree(self.clone_dir, ignore_errors=True)
            raise SourceUnreachable(f"cannot clone {self.options.url}: {_reason(exc)}") from exc
        repo.git.update_environment(**self._env())
        return repo

    def fetch(self) -> Commit:
        """Fetch (cloning first, or again when the clone is broken) and return the
        commit the tracked branch or ref points at now."""
        with self._lock:
            return self._fetch()

    def _fetch(self) -> Commit:
        repo = self._open()
        if repo is None:
            repo = self._clone()
        try:
            repo.git.fetch(
                "--prune", "--force", "--quiet", "origin",
                "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
                kill_after_timeout=NETWORK_TIMEOUT,
            )  # fmt: skip
        except git.GitCommandError as exc:
            raise SourceUnreachable(f"cannot fetch {self.options.url}: {_reason(exc)}") from exc
        return self._commit(repo, self._tracked(repo))

    def _tracked(self, repo: git.Repo) -> str:
        options = self.options
        if options.branch:
            name = f"refs/heads/{options.branch}"
            if not _exists(repo, name):
                empty = "" if repo.refs else " (an empty repository: no commits yet)"
                raise SourceError(f"branch {options.branch} does not exist in {options.url}{empty}")
            return name
        if options.ref:
            for name in (f"refs/tags/{options.ref}", f"refs/heads/{options.ref}", options.ref):
                if _exists(repo, name):
                    return name
            raise SourceError(f"ref {options.ref} does not exist in {options.url}")
        if not _exists(repo, "HEAD"):
            if not repo.refs:
                raise SourceError(
                    f"{options.url} has no commits yet (an empty repository); push the specs to it"
                )
            head = _head_branch(repo)
            branches = ", ".join(sorted(h.name for h in repo.heads)) or "none"
            raise SourceError(
                f"the HEAD of {options.url} names branch {head}, which does not exist "
                f"(its branches: {branches}); follow one with --branch"
            )
        return "HEAD"

    @staticmethod
    def _commit(repo: git.Repo, name: str) -> Commit:
        commit = repo.commit(name)
        return Commit(
            id=commit.hexsha,
            summary=str(commit.summary),
            author=str(commit.author),
            committed_at=commit.committed_datetime.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    def _repo(self) -> git.Repo:
        repo = self._open()
        if repo is None:
            raise SourceError(f"no clone of {self.options.url} yet; fetch first")
        return repo

    # --- may it be applied? -------------------------------------------------------------------

    def refusal(self, commit: str, applied: str | None) -> str | None:
        """Why ``commit`` must not be applied after ``applied``, or None."""
        with self._lock:
            return self._refusal(commit, applied)

    def _refusal(self, commit: str, applied: str | None) -> str | None:
        repo = self._repo()
        if applied and applied != commit and not self.options.allow_rewrite:
            try:
                descends = bool(repo.is_ancestor(repo.commit(applied), repo.commit(commit)))
            except (git.GitError, ValueError):
                descends = False  # the applied commit is gone from the remote's history
            if not descends:
                return (
                    f"commit {commit[:12]} does not descend from the applied revision "
                    f"{applied[:12]} (force-push or rewritten history); pass --allow-rewrite "
                    "to follow it"
                )
        if self.options.verify_signatures:
            return self._signature_problem(commit)
        return None

    def _signature_problem(self, commit: str) -> str | None:
        self._import_keys()
        done = subprocess.run(
            ["git", "verify-commit", "--raw", commit],
            cwd=self.clone_dir,
            env={**os.environ, **self._env()},
            capture_output=True,
            text=True,
            timeout=NETWORK_TIMEOUT,
        )
        status = [
            line.split()[1:] for line in done.stderr.splitlines() if line.startswith("[GNUPG:] ")
        ]
        kinds = {words[0]: words[1:] for words in status if words}
        short = commit[:12]
        if not kinds:
            return f"commit {short} is not signed; only signed commits are applied"
        if "BADSIG" in kinds:
            return f"commit {short} has a bad signature"
        for revoked in ("EXPKEYSIG", "REVKEYSIG"):
            if revoked in kinds:
                return f"commit {short} is signed by an expired or revoked key"
        if "GOODSIG" in kinds and "VALIDSIG" in kinds and done.returncode == 0:
            return None
        key = (kinds.get("ERRSIG") or kinds.get("NO_PUBKEY") or ["?"])[0]
        return (
            f"commit {short} is signed by key {key}, which is not in the trusted keys "
            f"({self.options.trusted_keys})"
        )

    def _import_keys(self) -> None:
        """The GnuPG home holds exactly the trusted keys; rebuilt when they change."""
        keys = self.options.trusted_keys
        assert keys is not None
        files = _key_files(keys)
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        if digest.hexdigest() == self._keys_digest and self.gnupg.is_dir():
            return
        shutil.rmtree(self.gnupg, ignore_errors=True)
        self.gnupg.mkdir(parents=True, mode=0o700)
        done = subprocess.run(
            ["gpg", "--batch", "--quiet", "--import", *map(str, files)],
            env={**os.environ, "GNUPGHOME": str(self.gnupg)},
            capture_output=True,
            text=True,
            timeout=NETWORK_TIMEOUT,
        )
        if done.returncode != 0:
            raise SourceError(
                f"--trusted-keys {keys}: gpg cannot import them: {done.stderr.strip()}"
            )
        self._keys_digest = digest.hexdigest()

    # --- the specs ------------------------------------------------------------------------------

    def files(self, commit: str) -> Collected:
        """The spec files under ``options.path`` at ``commit``, named by their path in the
        repository (``hosts/web1/app.yaml``), so errors point at the right file."""
        with self._lock:
            return self._files(commit)

    def _files(self, commit: str) -> Collected:
        repo = self._repo()
        tree = repo.commit(commit).tree
        inside = self.options.path.strip("/")
        if inside:
            try:
                tree / inside
            except KeyError:
                problem = Problem(inside, None, "", f"no such directory at commit {commit[:12]}")
                return Collected((), (problem,))
        files: list[SourceFile] = []
        problems: list[Problem] = []
        for name, blob in _blobs(tree, inside):
            shown = "/".join(p for p in (inside, name) if p)
            if blob.size > MAX_FILE_BYTES:
                problems.append(Problem(shown, None, "", too_large(MAX_FILE_BYTES)))
                continue
            files.append(SourceFile(shown, blob.data_stream.read()))
        return Collected(tuple(files), tuple(problems))


def _key_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(KEY_SUFFIXES))


def _head_branch(repo: git.Repo) -> str:
    """The branch the clone's HEAD names (the remote's default branch)."""
    try:
        return str(repo.git.symbolic_ref("--quiet", "--short", "HEAD"))
    except git.GitCommandError:
        return "HEAD"


def _exists(repo: git.Repo, name: str) -> bool:
    try:
        repo.git.rev_parse("--verify", "--quiet", f"{name}^{{commit}}")
    except git.GitCommandError:
        return False
    return True


def _reason(exc: git.GitCommandError) -> str:
    """git's own one-line reason (``fatal: …``), without the command around it."""
    lines = [line.strip() for line in str(exc.stderr or "").splitlines() if line.strip()]
    fatal = [line for line in lines if line.lstrip("'").startswith(("fatal:", "error:"))]
    chosen = (fatal or lines or [""])[-1].strip("'").removeprefix("stderr: ").strip()
    return chosen or f"git exited with status {exc.status}"

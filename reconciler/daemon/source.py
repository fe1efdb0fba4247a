"""Where the daemon's specs come from: a directory it watches, or a git repository it
fetches. Both hand the loop a :class:`Candidate` (a revision and its spec files);
deciding whether to apply it is the loop's business.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reconciler.daemon.waits import wait_event
from reconciler.desired import content_revision
from reconciler.errors import SourceError, SourceUnreachable
from reconciler.sources.files import Collected, collect
from reconciler.sources.git import Commit, GitOptions, GitTracker
from reconciler.sources.watch import watch_specs

log = logging.getLogger("reconciler.daemon")

RETRY_FIRST = 2.0
"""Seconds before the first retry of an unreachable remote; doubling up to the interval."""


@dataclass(frozen=True, slots=True)
class Candidate:
    revision: str
    files: Collected
    description: str = ""
    refused: str | None = None
    """Why this revision must not be applied (a rewrite, a bad signature)."""


class Source(Protocol):
    kind: str
    identity: str

    async def load(self, applied: str | None) -> Candidate | None: ...

    async def follow(self, changed: Callable[[str], None], stop: asyncio.Event) -> None: ...

    def request_fetch(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class DirSource:
    kind = "dir"

    def __init__(self, paths: Sequence[Path], *, debounce_ms: int = 300) -> None:
        self.paths = list(paths)
        self.identity = "dir:" + ",".join(str(p.resolve()) for p in self.paths)
        self.debounce_ms = debounce_ms
        self._changed: Callable[[str], None] | None = None

    async def load(self, applied: str | None) -> Candidate:
        collected = await asyncio.to_thread(collect, self.paths)
        return Candidate(content_revision(collected.files), collected)

    async def follow(self, changed: Callable[[str], None], stop: asyncio.Event) -> None:
        self._changed = changed
        async for batch in watch_specs(self.paths, stop, debounce_ms=self.debounce_ms):
            names = ", ".join(sorted(batch)[:3]) + (" …" if len(batch) > 3 else "")
            changed(f"specs changed: {names}")

    def request_fetch(self) -> None:
        if self._changed is not None:
            self._changed("webhook")

    def status(self) -> dict[str, Any]:
        return {"kind": "dir", "paths": [str(p) for p in self.paths]}


class GitSource:
    kind = "git"

    def __init__(
        self,
        options: GitOptions,
        workdir: Path,
        *,
        interval: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.options = options
        self.tracker = GitTracker(options, workdir)
        self.identity = (
            f"git:{options.url}#{options.branch or options.ref or 'HEAD'}:{options.path}"
        )
        self.interval = interval
        self.rng = rng
        self.head: Commit | None = None
        self.error: str | None = None
        self.fetched_at: float | None = None
        self.failures = 0
        self._now = asyncio.Event()

    def request_fetch(self) -> None:
        self._now.set()

    async def fetch(self) -> Commit | None:
        """Fetch once; the tracked commit, or None (the reason in :attr:`error`)."""
        try:
            commit = await asyncio.to_thread(self.tracker.fetch)
        except SourceUnreachable as exc:
            self.failures += 1
            if self.error != str(exc):
                log.warning("git source unreachable: %s (keeping the last good revision)", exc)
            self.error = str(exc)
            return None
        except SourceError as exc:
            self.failures += 1
            self.error = str(exc)
            return None
        self.failures, self.error, self.fetched_at = 0, None, time.time()
        return commit

    async def follow(self, changed: Callable[[str], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            before = self.head.id if self.head else None
            commit = await self.fetch()
            if commit is not None:
                self.head = commit
                if commit.id != before:
                    changed(f"commit {commit.id[:12]} {commit.summary}".strip())
            if self.failures:
                # unreachable: retry sooner than the interval, doubling, never later
                pause = min(self.interval, RETRY_FIRST * 2 ** (self.failures - 1))
            else:
                pause = self.interval * (0.9 + 0.2 * self.rng())
            self._now.clear()
            await wait_event(self._now, pause)

    async def load(self, applied: str | None) -> Candidate | None:
        if self.head is None:
            commit = await self.fetch()
            if commit is None:
                return None
            self.head = commit
        head = self.head
        refused = await asyncio.to_thread(self.tracker.refusal, head.id, applied)
        files = await asyncio.to_thread(self.tracker.files, head.id)
        return Candidate(head.id, files, head.summary, refused)

    def status(self) -> dict[str, Any]:
        return {
            "kind": "git",
            "repo": self.options.url,
            "branch": self.options.branch,
            "ref": self.options.ref,
            "path": self.options.path,
            "head": self.head.id if self.head else None,
            "head_summary": self.head.summary if self.head else None,
            "last_fetch": self.fetched_at,
            "unreachable": self.error,
            "failures": self.failures,
        }

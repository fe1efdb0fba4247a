"""A git repository, fetched on a timer (sooner after a webhook), that hands the daemon
its tracked commit; unreachable remotes are retried sooner, doubling up to the interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import SourceError, SourceUnreachable
from reconciler.sources.base import Candidate
from reconciler.sources.git import Commit, GitOptions, GitTracker
from reconciler.waits import wait_event

log = logging.getLogger("reconciler.daemon")

RETRY_FIRST = 2.0
"""Seconds before the first retry of an unreachable remote; doubling up to the interval."""


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

"""A directory of spec files, watched: every settled change is a trigger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reconciler.desired import content_revision
from reconciler.sources.base import Candidate
from reconciler.sources.files import collect
from reconciler.sources.watch import watch_specs


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

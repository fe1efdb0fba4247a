"""The daemon's spec sources: what each hands the loop (a :class:`Candidate`, a revision
and its spec files) and the protocol both implement. Deciding whether to apply a
candidate is the daemon's business (:mod:`reconciler.daemon.revisions`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.sources.files import Collected


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

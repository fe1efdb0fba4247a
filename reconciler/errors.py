"""The project's one exception tree.

::

    ZlayerError
    ├── SpecError              a spec could not be loaded or is invalid (carries Problems)
    ├── ScheduleError          a cron expression is not valid in ZLayer's dialect
    └── UsageError             a command was called wrongly (bad path, bad option value)

Library errors are translated into this tree where they enter the project and
chained with ``from`` so the original stays visible in tracebacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Renderable(Protocol):
    """What an error needs of a problem (``reconciler.spec.problems.Problem``)."""

    def render(self) -> str: ...


class ZlayerError(Exception):
    """Base of every error zlayer raises on purpose."""


class SpecError(ZlayerError):
    """One or more specs are invalid; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[Renderable]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0].render() if self.problems else "invalid spec"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class ScheduleError(ZlayerError, ValueError):
    """A cron schedule is not valid; ``hint`` may suggest the corrected form."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class UsageError(ZlayerError):
    """A command was given arguments it cannot work with."""

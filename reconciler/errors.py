"""The project's one exception tree.

::

    ZlayerError
    └── ScheduleError          a cron expression is not valid in ZLayer's dialect

Invalid specs are not exceptions: loading returns every ``Problem`` found
(``reconciler.spec.problems``) so one run can report them all.

Library errors are translated into this tree where they enter the project and
chained with ``from`` so the original stays visible in tracebacks.
"""

from __future__ import annotations


class ZlayerError(Exception):
    """Base of every error zlayer raises on purpose."""


class ScheduleError(ZlayerError, ValueError):
    """A cron schedule is not valid; ``hint`` may suggest the corrected form."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

"""The project's one exception tree.

::

    ZlayerError
    ├── ScheduleError          a cron expression is not valid in ZLayer's dialect
    ├── SnapshotError          an observed-state snapshot cannot be read
    ├── PlanError              a plan cannot be made as asked (unknown --target, …)
    ├── SourceError            specs cannot be read from a source (git ref, …)
    └── DriverError            a runtime refused or failed an action
        ├── TemporaryDriverError   worth retrying after ``delay`` seconds
        └── PermanentDriverError   retrying will not help
            ├── NotFound           the workload is not there
            └── Conflict           something with that identity already exists

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


class SnapshotError(ZlayerError):
    """An observed-state snapshot is missing, unreadable or not in the documented format."""


class PlanError(ZlayerError):
    """The plan asked for cannot be made (a ``--target`` that matches nothing, …)."""


class SourceError(ZlayerError):
    """Specs cannot be read from a source: an unknown git ref, a path outside the repo."""


class SourceUnreachable(SourceError):
    """The source's remote cannot be reached now (network, host down, repository gone);
    the daemon keeps the last good revision and retries with backoff."""


class DriverError(ZlayerError):
    """A runtime failed an action or an observation."""


class TemporaryDriverError(DriverError):
    """A failure that may pass (engine busy, timeout); retry after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        self.delay = delay
        super().__init__(message)


class PermanentDriverError(DriverError):
    """A failure that retrying will not fix (bad config, missing image under ``never``)."""


class NotFound(PermanentDriverError):
    """The workload an action names does not exist in the runtime."""


class Conflict(PermanentDriverError):
    """A workload with the identity an action would create already exists."""

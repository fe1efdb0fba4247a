"""The project's one exception tree: every error zlayer raises on purpose.

::

    ZlayerError
    ├── ConfigError            the config file cannot be read or holds a wrong value
    ├── InvalidSpecs           spec files are not valid or cannot be compiled (``problems``)
    ├── UnsupportedSpecs       valid specs ask for what the chosen runtime cannot do
    ├── ScheduleError          a cron expression is not valid in ZLayer's dialect
    ├── SnapshotError          an observed-state snapshot cannot be read
    ├── PlanError              a plan cannot be made as asked (unknown --target, …)
    ├── LockHeld               another apply (or the daemon) holds the host's apply lock
    ├── NoDaemon               no daemon answers on its socket
    ├── ProxyError             the managed HAProxy is missing, refuses a change or does not answer
    ├── SourceError            specs cannot be read from a source (git ref, …)
    │   └── SourceUnreachable  the source's remote cannot be reached now
    └── DriverError            a runtime refused or failed an action
        ├── TemporaryDriverError   worth retrying after ``delay`` seconds
        └── PermanentDriverError   retrying will not help
            ├── NotFound           the workload is not there
            ├── Conflict           something with that identity already exists, or
            │                      changed since it was observed
            └── EngineRolledBack   a clustered engine rolled an update back itself

Loading specs does not raise on the first problem: it returns every ``Problem``
found (``reconciler.spec.problems``) so one run can report them all; a command that
cannot go on without valid specs raises :class:`InvalidSpecs` carrying them.

Library errors are translated into this tree where they enter the project and
chained with ``from`` so the original stays visible in tracebacks. Five internal
exceptions never leave their layer and are not part of the tree: the YAML reader's
``YamlFatal`` (a document that cannot be read at all, turned into a ``Problem``), the
executor's ``Failed`` and ``RolledBack`` (an action's failure, turned into its
outcome), the compile cache's ``Foreign`` (an entry it must not use, so it compiles
afresh) and the process monitor's ``_Failed`` (a launch that failed, recorded for
the driver to report).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class ZlayerError(Exception):
    """Base of every error zlayer raises on purpose."""


class ConfigError(ZlayerError):
    """The config file cannot be read or holds a wrong value."""


class ProxyError(ZlayerError):
    """The managed HAProxy is missing, refuses a change or does not answer."""


class _Problem(Protocol):
    """What :class:`InvalidSpecs` carries (``reconciler.spec.problems.Problem``)."""

    @property
    def file(self) -> str: ...

    def render(self) -> str: ...


class InvalidSpecs(ZlayerError):
    """Spec files are not valid (``invalid``) or valid but cannot be compiled; carries
    every problem, each with its file:line:col, and how many files were read."""

    def __init__(self, heading: str, problems: Sequence[_Problem], files: int) -> None:
        self.heading = heading
        self.problems = tuple(problems)
        self.files = files
        listing = "\n".join(p.render() for p in self.problems[:50])
        super().__init__(f"{heading}\n{listing}" if listing else heading)


class UnsupportedSpecs(ZlayerError):
    """Valid specs ask for what the chosen runtime cannot do; nothing was touched."""


class LockHeld(ZlayerError):
    """Another process holds the host's apply lock."""

    def __init__(self, path: Path, holder: str, waited: float) -> None:
        self.path = path
        self.holder = holder
        who = f"pid {holder}" if holder else "another process"
        after = f" after waiting {waited:g}s" if waited else ""
        super().__init__(f"{path}: {who} is applying to this host; gave up{after}")


class NoDaemon(ZlayerError):
    """No daemon answers on the socket."""


class ScheduleError(ZlayerError, ValueError):
    """A cron schedule is not valid; ``hint`` may suggest the corrected form."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class SnapshotError(ZlayerError):
    """An observed-state snapshot is missing, unreadable or not in the documented format."""


class StateError(ZlayerError):
    """A file zlayer keeps in its state directory cannot be read, or is damaged."""


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


class RuntimeUnreachable(TemporaryDriverError):
    """The runtime's engine does not answer at all (its socket is gone, the connection
    refused or timed out): the daemon says ``runtime unreachable`` and tries again."""


class PermanentDriverError(DriverError):
    """A failure that retrying will not fix (bad config, missing image under ``never``)."""


class NotFound(PermanentDriverError):
    """The workload an action names does not exist in the runtime."""


class Conflict(PermanentDriverError):
    """A workload with the identity an action would create already exists, or one an
    update names changed since it was observed (a clustered engine's version index):
    the next reconcile observes it again and plans afresh."""


class EngineRolledBack(PermanentDriverError):
    """A clustered engine (Docker Swarm) found an update failing and rolled the service
    back to its previous spec itself; the message is the engine's."""


class JournalDamaged(ZlayerError):
    """The daemon's journal file is not a database SQLite can read (its owner, the
    daemon, moves it aside; a reader says so)."""

"""Replicas removed on exit (``lifecycle.delete_on_exit``), remembered.

What runs is the runtime's to say (labels, records). A replica that zlayer removed
because it exited leaves nothing in the runtime that says "not again", so these
records say it: one per replica, with the fingerprint (and the redacted config) it
exited with. The plan does not create a recorded replica again while its service's
config is that one; a changed config creates it (and says what changed). A record
goes once a replica with its identity exists again, its service leaves the specs
(when the apply prunes), the service no longer sets ``delete_on_exit``, or the
service's count no longer reaches it.

One JSON file per host, ``removed-on-exit.json`` in the state directory, holding
every runtime's records, each with its runtime's name. Only apply and the daemon
write it, with the apply lock held, atomically; anything that observes reads it.
Its configs come from the runtime's labels and records, redacted like them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.files import atomic_write_json
from reconciler.observed import ObservedState, RemovedOnExit

FILE = "removed-on-exit.json"
FORMAT = "zlayer-removed-on-exit"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Record:
    runtime: str
    removed: RemovedOnExit
    config: dict[str, Any] | None = None
    """The config it ran, redacted (None when the runtime recorded none)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            **dataclasses.asdict(self.removed),
            "config": self.config,
        }

    @staticmethod
    def from_json(item: Any) -> Record:
        if not isinstance(item, dict):
            raise ValueError("a record is not an object")
        fields = dict(item)
        runtime, config = fields.pop("runtime", None), fields.pop("config", None)
        if not isinstance(runtime, str) or not (config is None or isinstance(config, dict)):
            raise ValueError("a record's runtime or config is not valid")
        try:
            return Record(runtime, RemovedOnExit(**fields), config)
        except TypeError as exc:  # a missing or unknown field
            raise ValueError(str(exc)) from None


class Removals:
    """The records of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE

    def load(self) -> list[Record]:
        """Every runtime's records; none when the file does not exist. Raises
        :class:`StateError` for a file that cannot be read or is not one of these."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            if data.get("format_version") != VERSION:
                raise ValueError(f"format_version is not {VERSION}")
            items = data.get("records")
            if not isinstance(items, list):
                raise ValueError("records is not a list")
            return [Record.from_json(item) for item in items]
        except (ValueError, RecursionError) as exc:
            raise StateError(
                f"{self.path}: damaged ({exc}); move it aside to start over (the replicas "
                "it keeps removed are then created again)"
            ) from exc

    def merged(
        self, observed: ObservedState, deployments: Collection[str] | None = None
    ) -> ObservedState:
        """``observed`` with its runtime's records (of ``deployments``, else all) of
        replicas that are not there; their configs join the recorded ones."""
        present = {w.id for w in observed.workloads}
        found = [
            r
            for r in self.load()
            if r.runtime == observed.runtime
            and (deployments is None or r.removed.deployment in deployments)
            and r.removed.id not in present
        ]
        if not found:
            return observed
        configs = dict(observed.configs)
        for record in found:
            if record.config is not None:
                configs.setdefault(record.removed.fingerprint, record.config)
        removed = tuple(r.removed for r in found)
        return dataclasses.replace(observed, removed_on_exit=removed, configs=configs)

    def update(
        self, runtime: str, add: Sequence[Record], keep: Callable[[RemovedOnExit], bool]
    ) -> None:
        """Keep the records of ``runtime`` that ``keep`` accepts (other runtimes' stay as
        they are), then add ``add`` (replacing a record of the same replica). Nothing
        is written when nothing changes; a file that was never needed is not made."""
        records = self.load()
        kept = [r for r in records if r.runtime != runtime or keep(r.removed)]
        replaced = {(r.runtime, r.removed.id) for r in add}
        after = [r for r in kept if (r.runtime, r.removed.id) not in replaced] + list(add)
        if after == records:
            return
        if not after:
            self.path.unlink(missing_ok=True)
            return
        ordered = sorted(after, key=lambda r: (r.runtime, r.removed.id))
        document = {
            "format": FORMAT,
            "format_version": VERSION,
            "records": [r.to_json() for r in ordered],
        }
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_json(self.path, document, mode=0o600)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

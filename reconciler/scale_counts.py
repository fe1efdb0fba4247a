"""The counts ``zlayer scale`` set for ``scale: manual`` services, kept on the host.

A manual service keeps the count its runtime has, so a replica lost behind zlayer's
back would shrink it for good; the count its operator chose is kept here instead
(``scale.json`` in the state directory, written atomically under the apply lock)
and planned by apply, plan and the daemon alike until the next ``zlayer scale``,
or until the service is no longer manual.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from reconciler.desired import DesiredService, DesiredState
from reconciler.errors import StateError
from reconciler.files import atomic_write_json

FILE = "scale.json"
REASON = "zlayer scale"


class ScaleCounts:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE

    def load(self) -> dict[str, int]:
        """``deployment/service`` → count; none when no count was ever set."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise StateError(f"{self.path}: damaged ({exc}); move it aside") from exc
        counts = data.get("counts") if isinstance(data, dict) else None
        if not isinstance(counts, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in counts.items()
        ):
            raise StateError(f"{self.path}: damaged (counts is not a map of counts); move it aside")
        return counts

    def set(self, service: str, count: int) -> None:
        counts = {**self.load(), service: count}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write_json(self.path, {"counts": counts}, mode=0o600)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc

    def applied(self, desired: DesiredState) -> DesiredState:
        """``desired`` with each manual service's recorded count."""
        counts = self.load()
        services = dict(desired.services)
        for key, service in desired.services.items():
            count = counts.get(f"{key[0]}/{key[1]}")
            if count is not None and is_manual(service):
                services[key] = dataclasses.replace(service, replicas=count, scaled=REASON)
        if services == dict(desired.services):
            return desired
        return dataclasses.replace(desired, services=services)


def is_manual(service: DesiredService) -> bool:
    """``scale: manual``: a service whose count is the runtime's (or zlayer scale's)."""
    return not service.is_definition and service.replicas is None

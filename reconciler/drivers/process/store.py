"""Where the process runtime's records are: the layout of ``<state dir>/process/``.

::

    deployments/<deployment>/network.json                  subnet and bridge
    deployments/<deployment>/services/<service>/<n>/        replica n
    deployments/<deployment>/services/<service>/definition/ a job or cron service
    deployments/<deployment>/runs/<service>/<run>/          a run of a job or cron
                                   service: the same files as a replica (never
                                   observed as a workload)

What is in each directory is :mod:`.records`. Listings skip a record that cannot be
read, with a warning naming its file, so that one corrupt record does not stop
zlayer from seeing everything else; reading a given workload's record reports it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

from reconciler.drivers.process import records
from reconciler.drivers.process.records import Record, Subnet
from reconciler.errors import NotFound, PermanentDriverError
from reconciler.observed import RunId, WorkloadId

log = logging.getLogger(__name__)

DEFINITION = "definition"


class Store:
    """The records under ``root`` (``<state dir>/process/deployments``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- where ---------------------------------------------------------------------------

    def replica_dir(self, target: WorkloadId) -> Path:
        leaf = DEFINITION if target.replica is None else str(target.replica)
        return self.root / target.deployment / "services" / target.service / leaf

    def run_dir(self, run: RunId) -> Path:
        return self.root / run.deployment / "runs" / run.service / run.run

    def subnet_path(self, deployment: str) -> Path:
        return self.root / deployment / records.SUBNET

    def _deployments(self, deployments: Collection[str] | None) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for deployment in sorted(self.root.iterdir()):
            if deployments is None or deployment.name in deployments:
                yield deployment

    def workload_dirs(self, deployments: Collection[str] | None = None) -> Iterator[Path]:
        """The directories of replicas and definitions that have a record."""
        for deployment in self._deployments(deployments):
            services = deployment / "services"
            if not services.is_dir():
                continue
            for service in sorted(services.iterdir()):
                for leaf in sorted(service.iterdir()) if service.is_dir() else ():
                    if (leaf / records.RECORD).is_file():
                        yield leaf

    def run_dirs(self, deployments: Collection[str] | None = None) -> Iterator[Path]:
        """The directories of runs of jobs that have a record."""
        for deployment in self._deployments(deployments):
            for where in sorted(deployment.glob("runs/*/*")):
                if (where / records.RECORD).is_file():
                    yield where

    # --- reading -------------------------------------------------------------------------

    def record(self, target: WorkloadId) -> tuple[Path, Record]:
        """The directory and record of ``target``; ``NotFound`` when it has none."""
        where = self.replica_dir(target)
        record = records.read_record(where)
        if record is None:
            raise NotFound(f"{target}: no such workload")
        return where, record

    def listed(self, dirs: Iterator[Path]) -> Iterator[tuple[Path, Record]]:
        """The records in ``dirs``, skipping (with a warning) those that cannot be read
        or are gone meanwhile."""
        for where in dirs:
            try:
                record = records.read_record(where)
            except PermanentDriverError as exc:
                log.warning("%s; ignored", exc)
                continue
            if record is not None:
                yield where, record

    def subnet(self, deployment: str) -> Subnet | None:
        return records.read_subnet(self.subnet_path(deployment))

    def subnets(self) -> Iterator[tuple[str, Subnet]]:
        """(deployment, its recorded network) for every deployment that has one,
        skipping (with a warning) unreadable ones."""
        for deployment in self._deployments(None):
            try:
                subnet = records.read_subnet(deployment / records.SUBNET)
            except PermanentDriverError as exc:
                log.warning("%s; ignored", exc)
                continue
            if subnet is not None:
                yield deployment.name, subnet

    # --- writing -------------------------------------------------------------------------

    def write_subnet(self, subnet: Subnet) -> None:
        (self.root / subnet.deployment).mkdir(parents=True, exist_ok=True, mode=0o700)
        records.write_subnet(self.subnet_path(subnet.deployment), subnet)

    def remove_subnet(self, deployment: str) -> None:
        self.subnet_path(deployment).unlink(missing_ok=True)
        self.prune(self.root / deployment)

    def remove_dir(self, where: Path) -> None:
        """A replica's or run's directory: record.json first, so that once it is gone
        nothing is observed, whatever a kill leaves of the rest (which the next create
        of it starts over)."""
        (where / records.RECORD).unlink(missing_ok=True)
        shutil.rmtree(where, ignore_errors=True)
        self.prune(where.parent)

    def prune(self, start: Path) -> None:
        """Remove ``start`` and its parents up to (not including) the root while empty."""
        current = start
        while current != self.root and self.root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

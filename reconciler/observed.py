"""Observed state: what a runtime reports about the workloads zlayer manages (pure).

This is also the *snapshot* format that ``zlayer observe --out`` writes and
``zlayer plan --observed`` reads, so a pull-request check can plan for a host
it cannot reach. The format is versioned (``format_version``) and documented in
docs/plan.md ("Snapshot format", schema docs/schemas/observed-v1.schema.json);
readers refuse versions they do not know.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from reconciler.errors import SnapshotError
from reconciler.fingerprint import fingerprint
from reconciler.redact import redact_config

SNAPSHOT_FORMAT: Literal["zlayer-observed"] = "zlayer-observed"
SNAPSHOT_VERSION: Literal[1] = 1

Status = Literal["created", "running", "paused", "restarting", "exited", "dead", "registered"]
Health = Literal["none", "starting", "healthy", "unhealthy"]


NETWORK = "(network)"
"""The ``service`` part of a deployment network's identity: a deployment's network
is planned like a workload, ``WorkloadId(deployment, NETWORK, None)``. The
parentheses keep it apart from service names, which cannot contain them."""


class WorkloadId(NamedTuple):
    """``deployment/service/replica``; ``replica`` is None for a job or cron definition
    (and for a deployment network, whose ``service`` is :data:`NETWORK`)."""

    deployment: str
    service: str
    replica: int | None

    def __str__(self) -> str:
        base = f"{self.deployment}/{self.service}"
        return base if self.replica is None else f"{base}/{self.replica}"

    @property
    def is_network(self) -> bool:
        return self.service == NETWORK

    @staticmethod
    def network(deployment: str) -> WorkloadId:
        return WorkloadId(deployment, NETWORK, None)


class RunId(NamedTuple):
    """One run of a job or cron service: ``deployment/service#run``."""

    deployment: str
    service: str
    run: str

    def __str__(self) -> str:
        return f"{self.deployment}/{self.service}#{self.run}"


RunStatus = Literal["running", "exited"]


class RunState(BaseModel):
    """A run-to-completion instance of a job or cron service, as the runtime reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: str
    service: str
    run: str
    status: RunStatus
    exit_code: int | None = None
    """``None`` while running, and when the runtime lost the exit status."""
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def id(self) -> RunId:
        return RunId(self.deployment, self.service, self.run)


class Workload(BaseModel):
    """One managed replica (``replica`` ≥ 1) or registered job/cron definition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: str
    service: str
    replica: Annotated[int, Field(ge=1)] | None = None
    fingerprint: str
    revision: str | None = None
    status: Status
    exit_code: int | None = None
    started_at: str | None = None
    restart_count: Annotated[int, Field(ge=0)] = 0
    health: Health = "none"
    depends: tuple[str, ...] = ()
    runtime_id: str | None = None
    problem: str | None = None
    """Drift the runtime noticed in a replica that still runs (its network namespace
    deleted behind zlayer's back, …): the plan restarts it, giving this as the reason."""

    @model_validator(mode="after")
    def _status_fits_kind(self) -> Workload:
        if (self.replica is None) != (self.status == "registered"):
            kind = "a definition (no replica)" if self.replica is None else "a replica"
            raise ValueError(f"status {self.status!r} does not fit {kind}")
        return self

    @property
    def id(self) -> WorkloadId:
        return WorkloadId(self.deployment, self.service, self.replica)


class Network(BaseModel):
    """A deployment's network, as a runtime that manages networks reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: str
    name: str
    """The runtime's name for it (the process runtime: the bridge's interface name)."""
    subnet: str | None = None
    problem: str | None = None
    """Why it is not usable as it is (its bridge deleted behind zlayer's back, …):
    the plan creates it again, giving this as the reason."""


class ObservedState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["zlayer-observed"] = SNAPSHOT_FORMAT
    format_version: Literal[1] = SNAPSHOT_VERSION
    runtime: str
    workloads: tuple[Workload, ...] = ()
    networks_managed: bool = False
    """The runtime keeps one network per deployment as a resource of its own, which
    the plan creates and removes (the process runtime as root). Otherwise networks
    are the driver's business and never appear in a plan."""
    networks: tuple[Network, ...] = ()
    configs: dict[str, dict[str, Any]] = {}
    """The canonical config behind each fingerprint, recorded once however many
    replicas share it (sensitive values as placeholders). A fingerprint without an
    entry can still be compared, but a replace can then only say that it changed.

    Every config is redacted on the way in, whatever recorded it: a label or record
    written by an older version, or a hand-made snapshot, may still hold a
    sensitive value in plain text, and no snapshot, API answer or plan shows it."""

    @field_validator("configs", mode="after")
    @classmethod
    def _redacted(cls, configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {digest: redact_config(c, None).config for digest, c in configs.items()}

    @model_validator(mode="after")
    def _unique(self) -> ObservedState:
        seen: set[WorkloadId] = set()
        for workload in self.workloads:
            if workload.id in seen:
                raise ValueError(f"workload {workload.id} is listed twice")
            seen.add(workload.id)
        deployments = [n.deployment for n in self.networks]
        if len(set(deployments)) != len(deployments):
            raise ValueError("a deployment's network is listed twice")
        return self

    def fingerprint(self) -> str:
        """A hash of what the planner reads: identities, fingerprints, statuses and exit
        codes (not health or start times, which change without changing any plan)."""
        rows = sorted(
            (w.deployment, w.service, w.replica or 0, w.fingerprint, w.status, w.exit_code)
            + ((w.problem,) if w.problem is not None else ())
            for w in self.workloads
        )
        if not self.networks_managed:
            return fingerprint(rows)
        networks = sorted((n.deployment, n.name, n.subnet, n.problem) for n in self.networks)
        return fingerprint([rows, networks])

    def to_json(self) -> str:
        """Deterministic snapshot text: workloads sorted by identity."""
        ordered = sorted(self.workloads, key=lambda w: (w.deployment, w.service, w.replica or 0))
        networks = sorted(self.networks, key=lambda n: n.deployment)
        configs = dict(sorted(self.configs.items()))
        update = {"workloads": tuple(ordered), "networks": tuple(networks), "configs": configs}
        copy = self.model_copy(update=update)
        return copy.model_dump_json(indent=1)


def load_snapshot(text: str | bytes, name: str = "snapshot") -> ObservedState:
    """Parse a snapshot, or raise :class:`SnapshotError` saying exactly what is wrong."""
    try:
        return ObservedState.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[:5]
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in first
        )
        more = exc.error_count() - len(first)
        if more > 0:
            details += f"; and {more} more"
        raise SnapshotError(f"{name}: not a valid zlayer-observed snapshot: {details}") from exc

"""Names and labels of what zlayer makes on a Docker engine (pure).

The runtime is the source of truth (see ARCHITECTURE.md), so these names and labels
are how zlayer finds its own again:

* container ``<deployment>-<service>-<n>`` for replica ``n``; a job or cron
  definition is a created, never started container ``<deployment>-<service>``;
  a run of a job is ``<deployment>-<service>-run-<run>``, labelled ``zlayer.run``;
* network ``zlayer-<deployment>``, one per deployment, with the service name as
  each replica's alias;
* named volume ``<deployment>-<name>`` (labels ``zlayer.deployment`` and
  ``zlayer.volume``); it is data and outlives every container;
* labels on every container: ``zlayer.deployment``, ``zlayer.service``,
  ``zlayer.replica`` (empty for definitions), ``zlayer.fingerprint``,
  ``zlayer.config`` (canonical config JSON: secrets only as keyed hashes),
  ``zlayer.revision`` and ``zlayer.depends`` (comma-joined service names), over
  the spec's own ``labels``;
* ``zlayer.publish=proxy`` on a replica with public endpoints the managed proxy
  serves: their target ports are published on loopback, for the proxy only. A
  replica without it was made before that (it publishes its public port itself)
  and is replaced.
"""

from __future__ import annotations

from reconciler.desired import DesiredService, routed_endpoints
from reconciler.fingerprint import canonical_json
from reconciler.observed import RunId, WorkloadId

LABEL_PREFIX = "zlayer."
DEPLOYMENT = "zlayer.deployment"
SERVICE = "zlayer.service"
REPLICA = "zlayer.replica"
FINGERPRINT = "zlayer.fingerprint"
CONFIG = "zlayer.config"
REVISION = "zlayer.revision"
DEPENDS = "zlayer.depends"
PUBLISH = "zlayer.publish"
PUBLISH_PROXY = "proxy"
INTERNAL = "zlayer.internal"
"""``proxy`` on a replica whose internal endpoints the managed proxy serves: its
service's name is not its alias (the name resolves to the proxy), and it publishes
their target ports on loopback for the proxy."""
HOSTS = "zlayer.hosts"
"""``managed`` on a container whose ``/etc/hosts`` is zlayer's file (see
:mod:`reconciler.drivers.hosts`), not the engine's."""
MANAGED = "managed"
VOLUME = "zlayer.volume"
"""On named volumes: the volume's name in the spec."""

RUN = "zlayer.run"
"""On the container of a run of a job or cron service: the run's name."""


def container_name(target: WorkloadId) -> str:
    """``<deployment>-<service>-<n>``, or ``<deployment>-<service>`` for a definition."""
    base = f"{target.deployment}-{target.service}"
    return base if target.replica is None else f"{base}-{target.replica}"


def run_container_name(run: RunId) -> str:
    """``<deployment>-<service>-run-<run>``: a run of a job or cron service."""
    return f"{run.deployment}-{run.service}-run-{run.run}"


def network_name(deployment: str) -> str:
    return f"zlayer-{deployment}"


def volume_name(deployment: str, name: str) -> str:
    return f"{deployment}-{name}"


def deployment_filter(deployments: list[str] | None) -> dict[str, list[str]]:
    """The ``label`` filter of the one list call ``observe`` makes. Docker ANDs label
    filters, so only a single deployment can be selected by the engine."""
    if deployments is not None and len(deployments) == 1:
        return {"label": [f"{DEPLOYMENT}={deployments[0]}"]}
    return {"label": [DEPLOYMENT]}


def container_labels(
    service: DesiredService,
    replica: int | None,
    revision: str,
    *,
    internal: bool = False,
    hosts: bool = False,
) -> dict[str, str]:
    # The spec's own labels as written (the launch step); zlayer's copy of the
    # config in CONFIG holds only placeholders for sensitive values.
    labels = {str(k): str(v) for k, v in service.launch_config().get("labels", {}).items()}
    labels.update(
        {
            DEPLOYMENT: service.deployment,
            SERVICE: service.name,
            REPLICA: "" if replica is None else str(replica),
            FINGERPRINT: service.fingerprint,
            CONFIG: canonical_json(service.config),
            REVISION: revision,
            DEPENDS: ",".join(d.service for d in service.depends),
        }
    )
    if replica is not None and routed_endpoints(service.config):
        labels[PUBLISH] = PUBLISH_PROXY
    if internal:
        labels[INTERNAL] = PUBLISH_PROXY
    if hosts:
        labels[HOSTS] = MANAGED
    return labels


def volume_labels(deployment: str, name: str) -> dict[str, str]:
    return {DEPLOYMENT: deployment, VOLUME: name}


def named_volume_names(service: DesiredService) -> list[str]:
    """The names (as in the spec) of ``service``'s named volumes, in spec order."""
    return [str(s["name"]) for s in service.config.get("storage", ()) if s.get("type") == "named"]

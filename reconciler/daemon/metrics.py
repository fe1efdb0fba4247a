"""The daemon's metrics in the Prometheus text exposition format (0.0.4), pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.routing.host import RouteStat


@dataclass(frozen=True, slots=True)
class Metrics:
    reconciles: Mapping[str, int] = field(default_factory=dict)
    """Finished reconciles by outcome (applied, no-changes, failed, rolled-back, …)."""
    reconcile_duration_sum: float = 0.0
    reconcile_duration_count: int = 0
    reconcile_errors: int = 0
    workloads: Mapping[str, int] = field(default_factory=dict)
    """Workloads by state (running, exited, …) as last observed."""
    restarts: int = 0
    """Restarts of crashed replicas by the daemon (from the journal: never goes down)."""
    failed: int = 0
    """Replicas given up on (``[backoff] give_up_after``), until released."""
    applied_revision: str | None = None
    applied_at: float | None = None
    job_runs: Mapping[str, int] = field(default_factory=dict)
    webhooks_accepted: int = 0
    webhooks_rejected: int = 0
    started_at: float = 0.0
    routes: tuple[RouteStat, ...] = ()
    """The managed proxy's servers, as HAProxy counts them now."""
    scaling: tuple[Scaling, ...] = ()
    """Adaptive services, as the autoscaler last sampled them."""
    runtime_up: bool = True
    """The runtime's engine answered the last reconcile (no ``runtime-unreachable``)."""


@dataclass(frozen=True, slots=True)
class Scaling:
    service: str
    """``deployment/service``."""
    current: int
    desired: int
    values: Mapping[str, float]
    """Metric → the per-replica value last measured."""
    targets: Mapping[str, float]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_number(value)}" for labels, value in samples]
    return lines


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _by(label: str, counts: Mapping[str, int]) -> list[tuple[str, float]]:
    return [(f'{{{label}="{_label(k)}"}}', v) for k, v in sorted(counts.items())]


def render_metrics(metrics: Metrics, now: float) -> str:
    lines: list[str] = []
    lines += _family(
        "zlayer_reconciles_total", "counter", "Reconciles finished, by outcome.",
        _by("outcome", metrics.reconciles),
    )  # fmt: skip
    lines += [
        "# HELP zlayer_reconcile_duration_seconds Time reconciles took.",
        "# TYPE zlayer_reconcile_duration_seconds summary",
        f"zlayer_reconcile_duration_seconds_sum {_number(metrics.reconcile_duration_sum)}",
        f"zlayer_reconcile_duration_seconds_count {metrics.reconcile_duration_count}",
    ]
    lines += _family(
        "zlayer_reconcile_errors_total", "counter",
        "Reconciles that ended in an error (not a failed action).",
        [("", metrics.reconcile_errors)],
    )  # fmt: skip
    lines += _family(
        "zlayer_workloads", "gauge", "Managed workloads by state, as last observed.",
        _by("state", metrics.workloads),
    )  # fmt: skip
    lines += _family(
        "zlayer_restarts_total", "counter", "Restarts of crashed replicas by the daemon.",
        [("", metrics.restarts)],
    )  # fmt: skip
    lines += _family(
        "zlayer_failed_replicas", "gauge",
        "Replicas not restarted any more: their crash loop went past give_up_after.",
        [("", metrics.failed)],
    )  # fmt: skip
    lines += _family(
        "zlayer_job_runs_total", "counter", "Job and cron runs, by result.",
        _by("result", metrics.job_runs),
    )  # fmt: skip
    lines += _family(
        "zlayer_webhooks_total", "counter", "Webhook deliveries, by result.",
        [('{result="accepted"}', metrics.webhooks_accepted),
         ('{result="rejected"}', metrics.webhooks_rejected)],
    )  # fmt: skip
    if metrics.applied_at is not None and metrics.applied_revision is not None:
        lines += _family(
            "zlayer_applied_revision_age_seconds", "gauge",
            "Seconds since the running revision was applied.",
            [(f'{{revision="{_label(metrics.applied_revision)}"}}',
              round(max(0.0, now - metrics.applied_at), 3))],
        )  # fmt: skip
    lines += _family(
        "zlayer_runtime_up", "gauge",
        "1 while the runtime's engine answers; 0 while it is unreachable.",
        [("", int(metrics.runtime_up))],
    )  # fmt: skip
    lines += _family(
        "zlayer_daemon_start_time_seconds", "gauge", "When the daemon started (unix time).",
        [("", round(metrics.started_at, 3))],
    )  # fmt: skip
    if metrics.routes:
        lines += _route_families(metrics.routes)
    if metrics.scaling:
        lines += _scaling_families(metrics.scaling)
    return "\n".join(lines) + "\n"


def _scaling_families(scaling: Iterable[Scaling]) -> list[str]:
    ordered = sorted(scaling, key=lambda s: s.service)
    lines = _family(
        "zlayer_autoscale_replicas", "gauge",
        "Replicas of an adaptive service: current, and desired by the autoscaler.",
        [(f'{{service="{_label(s.service)}",kind="{kind}"}}', count)
         for s in ordered for kind, count in (("current", s.current), ("desired", s.desired))],
    )  # fmt: skip
    lines += _family(
        "zlayer_autoscale_metric", "gauge",
        "An adaptive service's load per replica (cpu, memory: percent) as last sampled.",
        [(f'{{service="{_label(s.service)}",metric="{m}"}}', round(v, 3))
         for s in ordered for m, v in sorted(s.values.items())],
    )  # fmt: skip
    lines += _family(
        "zlayer_autoscale_target", "gauge", "An adaptive service's target per replica.",
        [(f'{{service="{_label(s.service)}",metric="{m}"}}', v)
         for s in ordered for m, v in sorted(s.targets.items())],
    )  # fmt: skip
    return lines


def _route_families(routes: Iterable[RouteStat]) -> list[str]:
    """One sample per replica's server in each route, labelled by route and replica."""
    labelled = [
        (
            f'{{deployment="{_label(r.deployment)}",service="{_label(r.service)}",'
            f'endpoint="{_label(r.endpoint)}",port="{r.port}",'
            f'replica="{"" if r.replica is None else r.replica}"}}',
            r,
        )
        for r in routes
    ]
    lines: list[str] = []
    for name, kind, help_text, value in (
        ("zlayer_route_in_rotation", "gauge", "1 when the proxy sends the replica new "
         "connections.", lambda r: 1 if r.in_rotation else 0),
        ("zlayer_route_active_connections", "gauge", "Connections the replica carries now.",
         lambda r: r.sessions),
        ("zlayer_route_requests_total", "counter", "Requests (tcp: connections) the proxy "
         "sent the replica.", lambda r: r.requests),
        ("zlayer_route_errors_total", "counter", "Refused connections, broken responses "
         "and 5xx answers of the replica.", lambda r: r.errors),
        ("zlayer_route_response_seconds", "gauge", "Average response time of the replica's "
         "last 1024 requests.", lambda r: r.response_ms / 1000),
    ):  # fmt: skip
        lines += _family(name, kind, help_text, [(labels, value(r)) for labels, r in labelled])
    return lines

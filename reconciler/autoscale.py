"""Adaptive scaling decisions (pure): samples of a service's load → its replica count.

Target tracking, as Kubernetes' HPA and ECS do it, made calm for one host:

- per metric, ``wanted = ceil(replicas × observed / target)``, where ``observed`` is
  the per-replica load (CPU and memory as a percentage of the replica's share, or of
  one core; requests per second divided by the replicas); the largest wins, clamped
  to ``[min, max]``;
- inside the tolerance band (±10 % of the target) a metric wants what runs now, so
  noise around the target never scales;
- up at once (the latest sample says so); down only when every sample of the
  stabilisation window (``cooldown``) wanted fewer, and then to the most any of them
  wanted, so a dip or a noisy metric never flaps;
- no target set: ``min``.

No clock, no I/O: the daemon's sampler feeds :func:`decide` and acts on the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TOLERANCE = 0.1
"""A metric within ±10 % of its target wants no change."""

DEFAULT_COOLDOWN = 30.0
"""ZLayer's default stabilisation window, in seconds."""

UNITS = {"cpu": "%", "memory": "%", "rps": "/s"}


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """``scale: {mode: adaptive, …}`` as zlayer applies it."""

    min: int
    max: int
    cooldown: float = DEFAULT_COOLDOWN
    targets: Mapping[str, float] | None = None
    """Metric (``cpu``, ``memory``, ``rps``) → target per replica; None or empty: none."""

    def clamp(self, replicas: int) -> int:
        return max(self.min, min(self.max, replicas))


@dataclass(frozen=True, slots=True)
class Sample:
    """The service's load at ``at``: metric → per-replica value (CPU and memory in
    percent, requests per second per replica), over ``replicas`` running replicas."""

    at: float
    replicas: int
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Decision:
    current: int
    desired: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def wanted(policy: ScalePolicy, replicas: int, values: Mapping[str, float]) -> tuple[int, str]:
    """What one sample asks for, clamped, and which metric decides (its text)."""
    best, why = policy.clamp(replicas), ""
    for metric, target in sorted((policy.targets or {}).items()):
        if metric not in values or target <= 0:
            continue
        value = values[metric]
        ratio = value / target
        inside = abs(ratio - 1) <= TOLERANCE + 1e-9  # the band includes its edges
        count = replicas if inside else math.ceil(replicas * ratio)
        count = policy.clamp(max(count, 0))
        text = (
            f"{metric} {_number(value)}{UNITS[metric]} vs target {_number(target)}{UNITS[metric]}"
        )
        if not why or count > best:
            best, why = count, text
    return best, why


def decide(policy: ScalePolicy, current: int, window: Sequence[Sample], now: float) -> Decision:
    """The count for a service running ``current`` replicas, given its recent samples
    (oldest first) and the time now."""
    if not policy.targets:
        return Decision(current, policy.min, "no scale.targets: scale.min")
    if current < policy.min or current > policy.max:
        clamped = policy.clamp(current)
        return Decision(current, clamped, f"outside [{policy.min}, {policy.max}]")
    if not window:
        return Decision(current, current, "no sample yet")
    latest = window[-1]
    up, why = wanted(policy, current, latest.values)
    if not why:
        return Decision(current, current, "no metric of its targets is measured yet")
    if up > current:
        return Decision(current, up, f"{why} per replica")
    if up == current:
        return Decision(current, current, f"{why} per replica: within target")
    since = now - policy.cooldown
    if window[0].at > since:
        return Decision(current, current, f"{why} per replica: below target, cooldown not over")
    recent = [s for s in window if s.at >= since] or [latest]
    counts = [wanted(policy, current, s.values)[0] for s in recent]
    most = max(counts)
    if most >= current:
        return Decision(current, current, f"{why} per replica: not below target for the cooldown")
    return Decision(current, most, f"{why} per replica for {_number(policy.cooldown)}s")


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"

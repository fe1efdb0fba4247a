"""The pure scaling decision: target tracking with a tolerance band and a cooldown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.autoscale import Sample, ScalePolicy, decide, wanted

CPU = ScalePolicy(min=1, max=10, cooldown=30, targets={"cpu": 50})


def samples(values: list[float], start: float = 0, step: float = 15) -> list[Sample]:
    return [Sample(start + i * step, 0, {"cpu": v}) for i, v in enumerate(values)]


def test_up_at_once_by_the_largest_metric() -> None:
    both = ScalePolicy(min=1, max=10, targets={"cpu": 50, "rps": 15})
    result = decide(both, 2, [Sample(0, 2, {"cpu": 60, "rps": 30.5})], now=0)
    assert (result.desired, result.reason) == (5, "rps 30/s vs target 15/s per replica")
    assert decide(CPU, 2, samples([91]), now=0).desired == 4  # ceil(2 × 91 / 50)


def test_down_only_after_a_cooldown_of_samples_below_and_to_the_most_wanted() -> None:
    assert not decide(CPU, 4, samples([10]), now=0).changed  # the window is too short
    low = samples([10, 20, 30], start=0)  # 0 s, 15 s, 30 s: the whole cooldown
    result = decide(CPU, 4, low, now=30)
    assert result.desired == 3  # ceil(4 × 30 / 50): the most any sample wanted
    assert result.reason == "cpu 30% vs target 50% per replica for 30s"
    dip = samples([70, 10, 10], start=0)  # one sample at target in the window
    assert not decide(CPU, 4, dip, now=30).changed


def test_inside_the_band_nothing_moves_and_bounds_hold() -> None:
    assert not decide(CPU, 3, samples([54, 46, 55, 45], start=0), now=45).changed
    assert decide(CPU, 9, samples([500]), now=0).desired == 10
    assert decide(CPU, 12, [], now=0).desired == 10  # outside: clamped
    assert decide(ScalePolicy(min=2, max=5), 4, samples([90]), now=0).desired == 2  # no target


@given(
    replicas=st.integers(1, 20),
    low=st.floats(0, 1000, allow_nan=False),
    extra=st.floats(0, 1000, allow_nan=False),
)
def test_monotonic_in_load_and_within_bounds(replicas: int, low: float, extra: float) -> None:
    policy = ScalePolicy(min=1, max=20, targets={"cpu": 50})
    a, _ = wanted(policy, replicas, {"cpu": low})
    b, _ = wanted(policy, replicas, {"cpu": low + extra})
    assert 1 <= a <= b <= 20


@given(
    replicas=st.integers(1, 10),
    noise=st.lists(st.floats(-0.1, 0.1, allow_nan=False), min_size=10, max_size=10),
)
def test_a_metric_oscillating_inside_the_band_never_scales(
    replicas: int, noise: list[float]
) -> None:
    """Ten intervals of a metric within ±10 % of its target: no decision changes."""
    window = samples([50 * (1 + n) for n in noise])
    for end in range(1, len(window) + 1):
        assert not decide(CPU, replicas, window[:end], now=window[end - 1].at).changed

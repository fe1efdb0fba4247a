"""Benchmark: parse + validate one spec file with 1,000 services.

Run: python bench/validate_large.py [--services N] [--repeat R]

Prints, side by side in one run:
  * ``zlayer validate FILE`` wall time, end to end (a fresh CLI process),
  * zlayer's in-process parse + validate time (best of R),
  * the reference parser's in-process time on the same text (zlayer==0.12.10, if installed),
  * the ratio. Targets: in-process <= 8x the reference parser; CLI <= 1.5 s.

A benchmark, not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.spec.load import load_text


def generate(services: int) -> str:
    lines = ["version: v1", "deployment: bench", "services:"]
    for i in range(services):
        dep = f"\n      - service: svc-{i - 1}\n        condition: started" if i else " []"
        lines.append(
            f"""  svc-{i}:
    image:
      name: registry.local:5000/team/app-{i % 17}:1.{i % 9}.0
      pull_policy: if_not_present
    command:
      entrypoint: ["/bin/app"]
      args: ["--port", "{8000 + i % 1000}", "--name", "svc-{i}"]
    env:
      INDEX: {i}
      RATIO: 1.50
      DEBUG: false
      TOKEN: $S:token-{i % 5}
    resources: {{cpu: 0.25, memory: 128Mi}}
    endpoints:
      - name: http
        protocol: http
        port: {8000 + i % 1000}
        expose: internal
    scale: {{mode: fixed, replicas: {1 + i % 3}}}
    depends:{dep}
    health:
      start_grace: 2s
      interval: 10s
      check: {{type: http, url: "http://localhost:{8000 + i % 1000}/health", expect_status: 200}}
    labels: {{team: bench, tier: "{i % 4}"}}"""
        )
    return "\n".join(lines) + "\n"


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    text = generate(args.services)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(text)
        print(f"spec: {args.services} services, {len(text) / 1024:.0f} KiB")

        def ours() -> None:
            loaded, problems = load_text(text, str(path))
            assert loaded is not None, problems[:3]

        ours_s = best_of(args.repeat, ours)
        cli_s = best_of(
            3,
            lambda: subprocess.run(
                [sys.executable, "-m", "reconciler", "validate", str(path)],
                check=True,
                capture_output=True,
            ),
        )
        print(f"zlayer validate (CLI, end to end):  {cli_s * 1000:8.1f} ms   (target <= 1500 ms)")
        print(f"zlayer parse+validate (in-process): {ours_s * 1000:8.1f} ms")
        try:
            import zlayer as reference
        except ImportError:
            print("reference parser not installed (pip install -e '.[oracle]'): no ratio")
            return
        ref_s = best_of(args.repeat, lambda: reference.validate_spec(text))
        print(f"reference parser (in-process):      {ref_s * 1000:8.1f} ms")
        print(f"ratio zlayer / reference:           {ours_s / ref_s:8.2f}x  (target <= 8x)")


if __name__ == "__main__":
    main()

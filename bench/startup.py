"""Benchmark: how long ``zlayer --version`` and ``zlayer --help`` take, beside baselines.

Run: .venv/bin/python bench/startup.py [--runs N]

Every figure is a fresh process timed from spawn to exit, one at a time, best and
median of ``--runs`` (default 20), after one untimed run of each (so the files are in
the page cache, as on a host that runs zlayer). Contenders:

  * ``zlayer --version`` (target: median <= 0.1 s) and ``zlayer --help`` (information),
    both as ``python -m reconciler`` with this interpreter;
  * baselines: ``python -c pass`` (this interpreter, its site-packages included) and
    ``docker-compose --version`` when docker-compose is installed.

zlayer runs from bytecode written first, as pip install leaves it (bench/_bytecode.py).
Printed: each figure, then the ratios of zlayer's medians to each baseline's.
A benchmark, not a test: the target is reported (PASS/MISS), exit status is 0 however
it turns out, 1 only when a contender fails (a non-zero exit, or output that is not
its version or help).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from _bytecode import compile_bytecode

TARGET_VERSION_S = 0.1
COMPOSE = "docker-compose"


@dataclass(frozen=True)
class Contender:
    label: str
    argv: list[str]
    expect: str  # text its output must contain
    target_s: float | None = None


def timed(contender: Contender) -> float:
    start = time.perf_counter()
    done = subprocess.run(contender.argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or contender.expect not in done.stdout + done.stderr:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"FAILED: {' '.join(contender.argv)} exited {done.returncode}")
    return seconds


def contenders() -> list[Contender]:
    zlayer = [sys.executable, "-m", "reconciler"]
    found = [
        Contender("zlayer --version", [*zlayer, "--version"], "zlayer ", TARGET_VERSION_S),
        Contender("zlayer --help", [*zlayer, "--help"], "Commands:"),
        Contender("baseline: python -c pass", [sys.executable, "-c", "pass"], ""),
    ]
    compose = shutil.which(COMPOSE)
    if compose is not None:
        found.append(
            Contender("baseline: docker-compose --version", [compose, "--version"], "version")
        )
    return found


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per figure (default 20)")
    args = parser.parse_args()
    compile_bytecode()
    chosen = contenders()
    if shutil.which(COMPOSE) is None:
        print(f"({COMPOSE} is not installed: no docker-compose baseline)")
    print(f"{'contender':<36} {'best s':>7} {'median s':>8}  target")
    medians: dict[str, float] = {}
    misses = 0
    for contender in chosen:
        timed(contender)  # warm the page cache
        runs = [timed(contender) for _ in range(args.runs)]
        median = statistics.median(runs)
        medians[contender.label] = median
        note = "(info)"
        if contender.target_s is not None:
            ok = median <= contender.target_s
            misses += not ok
            note = f"median <= {contender.target_s:.2f} s  {verdict(ok)}"
        print(f"{contender.label:<36} {min(runs):7.3f} {median:8.3f}  {note}")
    print()
    ours = [c.label for c in chosen if c.label.startswith("zlayer")]
    bases = [c.label for c in chosen if c.label.startswith("baseline")]
    for label in ours:
        for base in bases:
            ratio = medians[label] / medians[base]
            name = base.removeprefix("baseline: ")
            print(f"{label} / {name}: {ratio:5.2f}x  ({medians[base]:.3f} s)")
    print(f"{misses} target(s) missed")


if __name__ == "__main__":
    main()

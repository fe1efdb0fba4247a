"""Benchmark: ``zlayer plan`` end to end for 1,000 and 10,000 services against a snapshot.

Run: .venv/bin/python bench/plan_large.py [--quick] [--keep DIR]

What it measures (each ``zlayer plan`` run is a fresh CLI process, so every time
includes interpreter start, imports, reading the specs and compiling them (or finding
them compiled in the compile cache), reading the snapshot, planning and printing the
plan). The runs share a state directory (``ZLAYER_STATE_DIR``, under the bench's
directory), so the compile cache works as on a host: the first plan of a spec set
compiles it and stores it ("cache cold", one run, measured with an emptied cache),
every later run of the same specs finds it:

  * 1,000 services x 2 replicas, nothing changed (JSON), best and median of 5;
  * 1,000 services x 2 replicas against a snapshot in which 1% of the services
    run an older image (JSON), best and median of 5: the plan must be exactly two
    ``replace`` actions per changed service, each explained by a deepdiff of the
    image; the same plan printed as text once;
  * 10,000 services x 2 replicas, nothing changed (JSON), best and median of 3:
    the plan must be empty;
  * the peak RSS of each plan process (``os.wait4`` on the child; ru_maxrss is KiB
    on Linux);
  * baselines: ``python -c pass`` and ``python -c "import reconciler.cli.main"``, to
    show how much of each time is interpreter start and imports;
  * the ratio t(10,000)/t(1,000), both cases with nothing changed, so it compares
    like with like (and the same ratio net of the import baseline, for information).

Targets: 1,000 unchanged services, median <= 0.5 s end to end (the line after the
table gives the ratio to it); 1,000 services with 1% changed, best <= 1.0 s; ratio
<= 11; peak RSS <= 200 MB at 10,000. Specs are written as one file (one deployment,
``bench-NNN``) per 100 services, since spec files are limited to 1 MiB; 1 service in
10 has a ``$S:`` secret, so the offline-secrets path (``--observed`` without
``--secrets-dir``) is exercised too. The snapshots are built in-process with ``as_running`` on the
compiled specs and written with ``ObservedState.to_json()``.

zlayer runs from bytecode written first, as pip install leaves it (bench/_bytecode.py).

A benchmark, not a test: the plan contents are checked (a wrong plan exits 1),
timings are only reported (PASS/MISS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from _bytecode import compile_bytecode

if TYPE_CHECKING:
    from reconciler.desired import DesiredState
    from reconciler.observed import ObservedState
    from reconciler.spec.load import SourceFile

# The measuring process never imports reconciler: on Linux a child's ru_maxrss starts
# at the high-water RSS of the process it was forked from, so this process must stay
# small (the specs and snapshots are generated in a child of their own, ``--generate``).

PER_FILE = 100
REPLICAS = 2
CHANGED_EVERY = 100  # 1% of the services run an older image in the "1% differ" snapshot
OLD_TAG = "0.9.0"
TARGET_1K_S = 1.0
TARGET_1K_UNCHANGED_MEDIAN_S = 0.5
TARGET_RATIO = 11.0
TARGET_RSS_MB = 200.0


# --- specs and snapshots -----------------------------------------------------------------


def image_of(i: int) -> str:
    return f"registry.local:5000/team/app-{i % 17}:1.{i % 9}.0"


def generate_file(deployment: str, first: int, count: int) -> str:
    """One deployment of ``count`` services; ``first`` is the global index of the first."""
    lines = ["version: v1", f"deployment: {deployment}", "services:"]
    for local in range(count):
        i = first + local
        port = 8000 + i % 1000
        if local % 4:  # three services in four depend on the one before them
            dep = f"\n      - service: svc-{local - 1:03d}\n        condition: started"
        else:
            dep = " []"
        secret = f"\n      TOKEN: $S:token-{i % 5}" if i % 10 == 3 else ""
        lines.append(
            f"""  svc-{local:03d}:
    image:
      name: {image_of(i)}
      pull_policy: if_not_present
    command:
      entrypoint: ["/bin/app"]
      args: ["--port", "{port}", "--name", "svc-{i}"]
    env:
      INDEX: {i}
      LOG_LEVEL: info
      RATIO: 1.50
      DEBUG: false{secret}
    resources: {{cpu: 0.25, memory: 128Mi}}
    endpoints:
      - name: http
        protocol: http
        port: {port}
        expose: internal
    scale: {{mode: fixed, replicas: {REPLICAS}}}
    depends:{dep}
    health:
      start_grace: 2s
      interval: 10s
      check: {{type: http, url: "http://localhost:{port}/health", expect_status: 200}}
    labels: {{team: bench, tier: "{i % 4}"}}"""
        )
    return "\n".join(lines) + "\n"


def write_specs(directory: Path, services: int) -> list[SourceFile]:
    from reconciler.spec.load import MAX_FILE_BYTES, SourceFile

    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for n, first in enumerate(range(0, services, PER_FILE)):
        data = generate_file(f"bench-{n:03d}", first, min(PER_FILE, services - first)).encode()
        assert len(data) <= MAX_FILE_BYTES, f"bench-{n:03d}.yaml is {len(data)} bytes"
        path = directory / f"bench-{n:03d}.yaml"
        path.write_bytes(data)
        files.append(SourceFile(str(path), data))
    return files


def compile_dir(files: list[SourceFile]) -> DesiredState:
    from reconciler.desired import CompileInputs, compile_specs, content_revision
    from reconciler.spec.load import load_sources

    result = load_sources(files)
    if result.problems:
        sys.exit(f"generated specs are not valid: {result.problems[:3]}")
    desired, problems = compile_specs(result.specs, content_revision(files), CompileInputs())
    if desired is None:
        sys.exit(f"generated specs do not compile: {problems[:3]}")
    return desired


def with_old_images(observed: ObservedState) -> tuple[ObservedState, int]:
    """The snapshot with 1 service in CHANGED_EVERY running an older image (config and
    fingerprint both changed, as a runtime would record them). Returns it and the number
    of services changed."""
    from reconciler.fingerprint import fingerprint
    from reconciler.observed import Workload

    changed: set[tuple[str, str]] = set()
    workloads: list[Workload] = []
    configs = dict(observed.configs)
    for w in observed.workloads:
        number = int(w.deployment.removeprefix("bench-")) * PER_FILE + int(w.service[4:])
        recorded = observed.configs.get(w.fingerprint)
        if number % CHANGED_EVERY != CHANGED_EVERY // 2 or recorded is None:
            workloads.append(w)
            continue
        config = dict(recorded)
        config["image"] = config["image"].rsplit(":", 1)[0] + ":" + OLD_TAG
        configs[fingerprint(config)] = config
        workloads.append(dataclasses.replace(w, fingerprint=fingerprint(config)))
        changed.add((w.deployment, w.service))
    update = {"workloads": tuple(workloads), "configs": configs}
    return dataclasses.replace(observed, **update), len(changed)


@dataclass(frozen=True)
class Case:
    name: str
    services: int
    specs: Path
    snapshot: Path
    fmt: str
    changed: int  # services whose replicas must be replaced
    runs: int
    target_s: float | None = None  # on the best run
    target_rss_mb: float | None = None
    target_median_s: float | None = None
    cold: bool = False  # every run starts with an empty compile cache


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float
    code: int
    stdout: bytes
    stderr: bytes


def run_child(argv: list[str]) -> Run:
    """Run ``argv`` to completion; wall time from spawn to reaping, the child's own peak
    RSS from ``wait4`` (stdout read fully through a pipe, stderr kept in a temp file)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return Run(seconds, usage.ru_maxrss / 1024, proc.returncode, out, err.read())


def measure(argv: list[str], runs: int, cold: bool = False) -> list[Run]:
    results = []
    for _ in range(runs):
        if cold:
            shutil.rmtree(Path(os.environ["ZLAYER_STATE_DIR"]) / "compile-cache", True)
        run = run_child(argv)
        if run.code != 0:
            sys.stderr.write(run.stderr.decode(errors="replace"))
            sys.exit(f"FAILED: {' '.join(argv)} exited {run.code}")
        results.append(run)
    return results


def check_plan(case: Case, run: Run) -> str:
    """Fail loudly unless the plan is exactly what the snapshot implies."""
    replaces = case.changed * REPLICAS
    if case.fmt == "text":
        text = run.stdout.decode()
        expected = f"{replaces} to replace" if replaces else "No changes."
        if expected not in text:
            sys.exit(f"FAILED: {case.name}: text plan does not say {expected!r}:\n{text[:2000]}")
        return f"{len(text.splitlines())} lines"
    plan = json.loads(run.stdout)
    kinds = Counter(a["kind"] for a in plan["actions"])
    want = Counter({"replace": replaces}) if replaces else Counter()
    if kinds != want or plan["summary"]["total"] != replaces:
        sys.exit(f"FAILED: {case.name}: actions {dict(kinds)}, expected {dict(want)}")
    if plan["changes_present"] != bool(replaces):
        sys.exit(f"FAILED: {case.name}: changes_present is {plan['changes_present']}")
    for action in plan["actions"]:
        paths = [c["path"] for c in action["changes"]]
        if paths != ["image"] or not action["changes"][0]["before"].endswith(":" + OLD_TAG):
            sys.exit(f"FAILED: {case.name}: {action['id']} explained as {action['changes']}")
    return f"{len(plan['actions'])} actions"


def plan_argv(case: Case) -> list[str]:
    return [
        sys.executable,
        *("-m", "reconciler", "plan", str(case.specs)),
        *("--observed", str(case.snapshot), "--format", case.fmt),
    ]


# --- report ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def generate(root: Path) -> None:
    """``--generate ROOT``: write the specs and snapshots under ROOT (run in a child)."""
    from reconciler.desired import as_running

    started = time.perf_counter()
    changed = 0
    for services in (1000, 10000):
        specs = root / f"specs-{services}"
        if specs.exists():
            shutil.rmtree(specs)
        same = as_running(compile_dir(write_specs(specs, services)))
        (root / f"observed-{services}-same.json").write_text(same.to_json() + "\n")
        if services == 1000:
            differ, changed = with_old_images(same)
            (root / "observed-1000-1pct.json").write_text(differ.to_json() + "\n")
    info = {"changed": changed, "seconds": time.perf_counter() - started}
    print(json.dumps(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (2 / 1 instead of 5 / 3)")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="generate into DIR and keep it")
    parser.add_argument("--generate", metavar="DIR", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate is not None:
        generate(args.generate)
        return
    small_runs, large_runs = (2, 1) if args.quick else (5, 3)
    compile_bytecode()

    root = args.keep or Path(tempfile.mkdtemp(prefix="zlayer-plan-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    # The children's state directory, where the compile cache lives (plan writes no
    # other file there); this process never reads it.
    (root / "state").mkdir(exist_ok=True)
    os.environ["ZLAYER_STATE_DIR"] = str(root / "state")
    try:
        started = time.perf_counter()
        made = run_child([sys.executable, __file__, "--generate", str(root)])
        if made.code != 0:
            sys.stderr.write(made.stderr.decode(errors="replace"))
            sys.exit(f"FAILED: generating the specs and snapshots exited {made.code}")
        info = json.loads(made.stdout)
        changed = int(info["changed"])
        dirs = {n: root / f"specs-{n}" for n in (1000, 10000)}
        names = ("1000-same", "1000-1pct", "10000-same")
        snapshots = {name: root / f"observed-{name}.json" for name in names}
        sizes = ", ".join(
            f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in snapshots.values()
        )
        print(f"generated in {info['seconds']:.1f} s under {root}: {sizes}")
        print(
            f"specs: {PER_FILE} services per file, {REPLICAS} replicas each; "
            f"1% case: {changed} services run image tag {OLD_TAG}"
        )

        cases = [
            Case("unchanged, cache cold", 1000, dirs[1000], snapshots["1000-same"], "json", 0,
                 1, cold=True),
            Case("unchanged", 1000, dirs[1000], snapshots["1000-same"], "json", 0, small_runs,
                 target_median_s=TARGET_1K_UNCHANGED_MEDIAN_S),
            Case("1% differ", 1000, dirs[1000], snapshots["1000-1pct"], "json", changed,
                 small_runs, target_s=TARGET_1K_S),
            Case("1% differ", 1000, dirs[1000], snapshots["1000-1pct"], "text", changed,
                 small_runs, target_s=TARGET_1K_S),
            Case("unchanged, cache cold", 10000, dirs[10000], snapshots["10000-same"], "json", 0,
                 1, cold=True),
            Case("unchanged", 10000, dirs[10000], snapshots["10000-same"], "json", 0, large_runs,
                 target_rss_mb=TARGET_RSS_MB),
        ]  # fmt: skip

        base = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("import reconciler.cli.main", [sys.executable, "-c", "import reconciler.cli.main"]),
        ]
        print()
        header = (
            f"{'case':<36} {'services':>8} {'best s':>7} {'median s':>8} {'RSS MB':>7}  "
            f"{'target':<15} {'result':<6} plan"
        )
        print(header)
        print("-" * len(header))
        baseline: dict[str, float] = {}
        for label, argv in base:
            runs = measure(argv, small_runs)
            best = min(r.seconds for r in runs)
            baseline[label] = best
            print(
                f"{'baseline: ' + label:<36} {'-':>8} {best:7.3f} "
                f"{statistics.median(r.seconds for r in runs):8.3f} "
                f"{max(r.rss_mb for r in runs):7.1f}  {'(info)':<15}"
            )
        bests: dict[tuple[str, int, str], float] = {}
        headline: list[tuple[Case, float]] = []
        misses = 0
        for case in cases:
            runs = measure(plan_argv(case), case.runs, case.cold)
            checked = [check_plan(case, run) for run in runs]
            what = checked[0]
            best = min(r.seconds for r in runs)
            median = statistics.median(r.seconds for r in runs)
            rss = max(r.rss_mb for r in runs)
            bests[(case.name, case.services, case.fmt)] = best
            if case.target_median_s is not None:
                target, ok = (
                    f"median <= {case.target_median_s:.1f} s",
                    median <= case.target_median_s,
                )
                headline.append((case, median))
            elif case.target_s is not None:
                target, ok = f"<= {case.target_s:.1f} s", best <= case.target_s
            elif case.target_rss_mb is not None:
                target, ok = f"RSS <= {case.target_rss_mb:.0f} MB", rss <= case.target_rss_mb
            else:
                target, ok = "(info)", True
            misses += not ok
            label = f"plan {case.name}, {case.fmt}" + ("" if case.runs > 1 else " (1 run)")
            print(
                f"{label:<36} {case.services:>8} {best:7.3f} "
                f"{median:8.3f} {rss:7.1f}  "
                f"{target:<15} {verdict(ok):<6} {what}"
            )

        small = bests[("unchanged", 1000, "json")]
        large = bests[("unchanged", 10000, "json")]
        ratio = large / small
        misses += ratio > TARGET_RATIO
        startup = baseline["import reconciler.cli.main"]
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print()
        print(
            f"ratio t(10,000)/t(1,000), unchanged, end to end: {ratio:6.2f}  "
            f"(target <= {TARGET_RATIO:.0f})  {verdict(ratio <= TARGET_RATIO)}"
        )
        if small > startup:
            print(
                f"ratio net of the import baseline ({startup:.3f} s):  "
                f"{(large - startup) / (small - startup):6.2f}  (info)"
            )
        print(f"imports are {startup / small:.0%} of the 1,000-service unchanged plan")
        for case, median in headline:
            ratio_to = median / (case.target_median_s or 1)
            print(
                f"plan {case.name} x {case.services}, median {median:.3f} s against the "
                f"target {case.target_median_s:.3f} s: {ratio_to:.2f}x of it"
            )
        print(
            f"RSS is the child's peak (floor: this process's own peak, {own:.0f} MB); "
            f"wall includes spawn and reading stdout"
        )
        print(f"total {time.perf_counter() - started:.0f} s; {misses} target(s) missed")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

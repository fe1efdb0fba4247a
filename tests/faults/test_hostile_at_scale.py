"""Fault matrix, row 12 at scale: a spec directory of 5,000 files, each with a mistake,
among them a 50 MB file, invalid UTF-8, a FIFO and a symlink loop; and a 100 MB
snapshot. Each is refused with its position (where it has one), in bounded memory
(the child's peak resident set, measured), and an apply touches nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.test_hostile_input import PEAK_RSS, zlayer

FILES = 5_000

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def hostile_tree(root: Path) -> Path:
    specs = root / "specs"
    specs.mkdir()
    for index in range(FILES):
        shard = specs / f"{index // 500:02d}"
        shard.mkdir(exist_ok=True)
        (shard / f"s{index:04d}.yaml").write_text(
            f"version: v1\ndeployment: dep{index}\nservices:\n  web:\n"
            "    image: {name: busybox}\n    scale: {mode: fixed, replicas: -1}\n"
        )
    with (specs / "huge.yaml").open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
    (specs / "latin1.yaml").write_bytes(b"version: v1\ndeployment: caf\xe9\n")
    os.mkfifo(specs / "pipe.yaml")
    (specs / "loop").mkdir()
    (specs / "loop" / "again").symlink_to("..", target_is_directory=True)
    return specs


def test_five_thousand_bad_files_are_each_refused_with_their_position(tmp_path: Path) -> None:
    specs = hostile_tree(tmp_path)
    run = zlayer("validate", str(specs), cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.output, run.output[-2000:]
    lines = run.output.splitlines()
    replicas = [line for line in lines if ":6:" in line and "replicas" in line]
    assert len(replicas) == FILES, (len(replicas), lines[:5])
    assert any("huge.yaml" in line and "larger than" in line for line in lines), lines[-20:]
    assert any("latin1.yaml" in line and "UTF-8" in line for line in lines), lines[-20:]
    assert any("pipe.yaml" in line and "not a regular file" in line for line in lines)
    assert any("symlink loop" in line for line in lines), lines[-20:]
    assert 0 < run.peak < 2 * PEAK_RSS, f"peak RSS {run.peak / 2**20:.0f} MiB"


def test_an_apply_of_them_touches_nothing(tmp_path: Path) -> None:
    specs = hostile_tree(tmp_path)
    state = tmp_path / "state"
    env = {"ZLAYER_STATE_DIR": str(state)}
    run = zlayer(
        "apply", str(specs), "--runtime", "process", "--auto-approve", cwd=tmp_path, env=env
    )
    assert run.returncode == 1 and "Traceback" not in run.output, run.output[-2000:]
    assert not (state / "process").exists(), sorted(p.name for p in state.rglob("*"))
    assert 0 < run.peak < 2 * PEAK_RSS, f"peak RSS {run.peak / 2**20:.0f} MiB"


def test_a_100_mb_snapshot_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "app.yaml").write_text(
        "version: v1\ndeployment: demo\nservices:\n  web:\n    image: {name: busybox}\n"
    )
    snapshot = tmp_path / "observed.json"
    with snapshot.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    run = zlayer("plan", str(tmp_path / "specs"), "--observed", str(snapshot), cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.output, run.output
    assert "observed.json" in run.output and "MiB" in run.output, run.output
    assert 0 < run.peak < PEAK_RSS, f"peak RSS {run.peak / 2**20:.0f} MiB"

"""Fault matrix, row 5: corrupt state. A garbage ``journal.db``, a garbage compile
cache and a garbage process record, left by a daemon that stopped: the next daemon
moves the journal aside (kept, named in its log and in an event), ignores the damaged
cache entries, moves the record aside and takes down what it described, and keeps
running: one replica of each service, counted from the processes themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.test_daemon import DEP, sleeper, write_specs
from tests.daemon_support import Daemon
from tests.support import needs_root, wait_for

pytest_plugins = ["tests.daemon_support"]


def replicas_running(daemon: Daemon) -> dict[str, list[int]]:
    """Each replica (its ``ZLAYER_REPLICA``) → the pids of live ``sleep 3600``
    processes of this test (its ``ZLAYER_FAULT_TAG``), from /proc rather than from
    zlayer's records: a duplicate shows as two pids."""
    marker = f"ZLAYER_FAULT_TAG={daemon.root.name}".encode()
    found: dict[str, list[int]] = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
            environ = (pid_dir / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if argv[:2] != [b"sleep", b"3600"] or marker not in environ:
            continue
        for line in environ:
            if line.startswith(b"ZLAYER_REPLICA="):
                found.setdefault(line.split(b"=", 1)[1].decode(), []).append(int(pid_dir.name))
    return found


@pytest.mark.faults
@pytest.mark.slow
def test_a_daemon_keeps_running_through_a_corrupt_journal_cache_and_record(
    daemon_host: Daemon,
) -> None:
    needs_root("the process runtime's replicas")
    specs = daemon_host.root / "specs"
    tag = {"ZLAYER_FAULT_TAG": daemon_host.root.name}
    write_specs(specs, {
        "a": sleeper(1, env={**tag, "ZLAYER_REPLICA": "a/1"}),
        "b": sleeper(1, env={**tag, "ZLAYER_REPLICA": "b/1"}),
    })  # fmt: skip
    daemon_host.configure(f'path = "{specs}"\nresync = 1')
    daemon_host.start()
    wait_for(lambda: replicas_running(daemon_host) and all(
        len(p) == 1 for p in replicas_running(daemon_host).values()) and len(
        replicas_running(daemon_host)) == 2, "a/1 and b/1 running", 60)  # fmt: skip
    assert daemon_host.terminate() == 0
    before = replicas_running(daemon_host)
    assert sorted(before) == ["a/1", "b/1"], "SIGTERM leaves the replicas running"

    state = daemon_host.state
    (state / "journal.db").write_bytes(b"this is not a database\0" * 64)
    for extra in ("journal.db-wal", "journal.db-shm"):
        (state / extra).unlink(missing_ok=True)
    entries = sorted((state / "compile-cache").glob("*"))
    assert entries, "the daemon cached its compile"
    for entry in entries:
        entry.write_bytes(os.urandom(512))
    record = state / "process/deployments" / DEP / "services/b/1/record.json"
    record.write_text('{"deployment": "dmn", "service": ')  # cut short

    daemon_host.start()
    # The journal: moved aside, kept, said in the log and as an event of the new one.
    aside = sorted(state.glob("journal.db.damaged-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))], aside
    assert b"this is not a database" in aside[0].read_bytes()
    assert aside[0].name in daemon_host.output()
    events = daemon_host.events()
    recovered = [e for e in events if e["kind"] == "journal-recovered"]
    assert recovered and aside[0].name in recovered[0]["message"], events

    # The damaged record: moved aside, its replica taken down and made again: one b/1.
    def settled() -> dict[str, list[int]]:
        now = replicas_running(daemon_host)
        return now if sorted(now) == ["a/1", "b/1"] and now["b/1"] != before["b/1"] and all(
            len(p) == 1 for p in now.values()) else {}  # fmt: skip

    after = wait_for(settled, lambda: f"b/1 made again, alone: {replicas_running(daemon_host)}",
                     60)  # fmt: skip
    assert after["a/1"] == before["a/1"], "a replica with a sound record is left as it is"
    kept = sorted(record.parent.glob("record.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text().startswith('{"deployment": "dmn"')
    assert json.loads(record.read_text())["service"] == "b"
    status: dict[str, Any] = daemon_host.status()
    assert status, "the daemon answers"
    daemon_host.wait_reconciles(len(daemon_host.reconciles()) + 1)
    assert replicas_running(daemon_host) == after  # and stays so


@pytest.mark.faults
def test_readers_of_a_damaged_journal_say_so_and_change_nothing(tmp_path: Path) -> None:
    damage = b"not a database\n" * 100
    (tmp_path / "journal.db").write_bytes(damage)
    env = {**os.environ, "ZLAYER_STATE_DIR": str(tmp_path), "NO_COLOR": "1"}

    def zlayer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    history = zlayer("history")
    assert history.returncode == 1 and "Traceback" not in history.stderr, history.stderr
    assert "the journal is damaged" in history.stderr, history.stderr
    status = zlayer("status", "--runtime", "process")
    assert status.returncode == 0, status.stderr  # the runtime's view still shows
    assert status.stderr.count("the journal is damaged") == 1, status.stderr
    assert (tmp_path / "journal.db").read_bytes() == damage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.db"]

"""The process runtime's monitor (reconciler.drivers.process.monitor) and its host helpers
(reconciler.drivers.process.host), with real processes.

Each test launches the monitor the way the driver does (``python -m
reconciler.drivers.process.monitor`` with the launch spec on stdin) and reads the files it
writes. The ``launcher`` fixture kills, pass or fail, everything a test started: each
workload's process group and each monitor, by the pids their run.json names (after
checking they still are those processes), and any extra process a test registers.
Tests that need root (switching user, namespaces) skip without it, saying why, except
under ``CI=true`` where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.process import host as proc
from reconciler.drivers.process.monitor import _Log
from tests.support import needs_root, unavailable, wait_for

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 20.0  # seconds for the monitor to report; generous for loaded CI machines
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_monitor(spec: Any) -> subprocess.CompletedProcess[str]:
    """The monitor command as the driver runs it, given ``spec`` on stdin."""
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return subprocess.run(
        [sys.executable, "-m", "reconciler.drivers.process.monitor"],
        input=text,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=REPO,
    )


def gone(pid: int) -> bool:
    return proc.process_state(pid) in (None, "Z")


class Record:
    """One launch: its record directory and the files the monitor writes there."""

    def __init__(self, directory: Path, launch: str) -> None:
        self.dir = directory
        self.launch = launch

    def read(self, name: str) -> dict[str, Any] | None:
        data = proc.read_json(self.dir / name)
        return data if data is not None and data.get("launch") == self.launch else None

    def run(self) -> dict[str, Any]:
        """run.json, once written (an exit.json with an error fails the test)."""

        def ready() -> bool:
            done = self.read("exit.json")
            assert done is None or done["error"] is None, done
            return self.read("run.json") is not None

        wait_for(ready, f"run.json in {self.dir}", DEADLINE)
        run = self.read("run.json")
        assert run is not None
        return run

    def exit(self) -> dict[str, Any]:
        wait_for(lambda: self.read("exit.json") is not None, f"exit.json in {self.dir}", DEADLINE)
        done = self.read("exit.json")
        assert done is not None
        return done

    def output(self) -> str:
        return (self.dir / "output.log").read_text()


class Launcher:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.records: list[Record] = []
        self.extra: list[tuple[int, int]] = []  # (pid, start) of other processes to kill

    def spec(self, argv: list[str], **fields: Any) -> dict[str, Any]:
        directory = self.root / f"r{len(self.records)}"
        directory.mkdir(mode=0o700)
        launch = secrets.token_hex(8)
        self.records.append(Record(directory, launch))
        spec: dict[str, Any] = {
            "launch": launch,
            "dir": str(directory),
            "argv": argv,
            "cwd": None,
            "env": {"PATH": PATH},
            "user": None,
            "netns": None,
            "hosts": None,
            "hostname": None,
            "cgroup": None,
            "log": {"max_bytes": 64 * 1024, "keep": 2},
            "stop_signal": int(signal.SIGTERM),
        }
        spec.update(fields)
        return spec

    def __call__(self, argv: list[str], **fields: Any) -> Record:
        """Launch ``argv``; returns once the monitor command has exited 0."""
        spec = self.spec(argv, **fields)
        result = run_monitor(spec)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        return self.records[-1]

    def track(self, pid: int) -> None:
        start = proc.start_time(pid)
        if start is not None:
            self.extra.append((pid, start))

    def cleanup(self) -> None:
        """Kill every workload group first (so monitors record and end on their own),
        then whatever monitor or extra process is still there."""
        monitors: list[tuple[int, int]] = []
        for record in self.records:
            run = proc.read_json(record.dir / "run.json")
            if run is None:
                continue
            _kill(int(run["pid"]), int(run["start"]), group=True)
            monitors.append((int(run["monitor_pid"]), int(run["monitor_start"])))
        for pid, start in self.extra:
            _kill(pid, start, group=True)
            _kill(pid, start, group=False)
        deadline = time.monotonic() + 5
        while any(proc.alive(*m) for m in monitors) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid, start in monitors:
            _kill(pid, start, group=False)
        everything = [*monitors, *self.extra]
        wait_for(lambda: not any(proc.alive(*p) for p in everything), "cleanup", 10)


def _kill(pid: int, start: int, *, group: bool) -> None:
    if proc.alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path / "records")
    launcher.root.mkdir()
    try:
        yield launcher
    finally:
        launcher.cleanup()


# --- running, exit status, output ------------------------------------------------------


def test_exit_code_and_both_streams_in_order(launch: Launcher) -> None:
    record = launch(["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"])
    done = record.exit()
    assert done["exit_code"] == 3
    assert done["signal"] is None
    assert done["error"] is None
    assert record.output() == "out\nerr\nout2\n"
    assert (record.dir / "output.log").stat().st_mode & 0o777 == 0o640
    run = record.read("run.json")
    assert run is not None
    assert run["boot_id"] == proc.boot_id()
    assert run["pid"] != run["monitor_pid"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", run["started_at"])
    assert run["started_at"] <= done["finished_at"]
    assert not list(record.dir.glob(".*"))  # no temp file of an atomic write is left


def test_env_is_exactly_the_given_one(launch: Launcher) -> None:
    assert "PYTEST_CURRENT_TEST" in os.environ  # would leak if the env were inherited
    record = launch(["env"], env={"PATH": PATH, "FOO": "bar baz"})
    assert record.exit()["exit_code"] == 0
    assert sorted(record.output().splitlines()) == ["FOO=bar baz", f"PATH={PATH}"]


def test_program_is_found_on_the_given_path(launch: Launcher, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "zlayer-test-hello"
    program.write_text("#!/bin/sh\necho hello from $0\n")
    program.chmod(0o755)
    record = launch(["zlayer-test-hello"], env={"PATH": f"{bin_dir}:{PATH}"})
    assert record.exit()["exit_code"] == 0
    assert record.output() == f"hello from {program}\n"


@pytest.mark.parametrize("given", ["work", None])
def test_working_directory(launch: Launcher, tmp_path: Path, given: str | None) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    record = launch(["pwd"], cwd=str(cwd) if given else None)
    assert record.exit()["exit_code"] == 0
    assert record.output() == (f"{cwd}\n" if given else "/\n")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"argv": ["zlayer-no-such-program", "x"]},
            "cannot start: exec 'zlayer-no-such-program': No such file or directory",
        ),
        (
            {"argv": ["true"], "cwd": "/nonexistent/zlayer-test"},
            "cannot start: change to directory /nonexistent/zlayer-test: No such file",
        ),
        (
            {"argv": ["true"], "netns": "zlayer-t-missing"},
            "cannot start: join network namespace zlayer-t-missing: No such file",
        ),
        (
            {"argv": ["true"], "cgroup": ["/nonexistent/zlayer-t"]},
            "cannot start: join cgroup /nonexistent/zlayer-t: No such file",
        ),
    ],
)
def test_cannot_start(launch: Launcher, fields: dict[str, Any], message: str) -> None:
    record = launch(**fields)
    done = record.exit()
    assert done["error"].startswith(message), done["error"]
    assert done["exit_code"] is None
    assert done["signal"] is None
    assert not (record.dir / "run.json").exists()
    assert not (record.dir / "monitor.err").exists()


# --- detaching and sessions ------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """Fields 3… of /proc/<pid>/stat (state, ppid, pgrp, session, …)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def test_monitor_is_detached_and_workload_has_its_own_session(launch: Launcher) -> None:
    spec = launch.spec(["sleep", "300"])
    record = launch.records[-1]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "reconciler.drivers.process.monitor"],
        stdin=subprocess.PIPE,
        cwd=REPO,
    )
    launcher.communicate(json.dumps(spec).encode(), timeout=DEADLINE)
    assert launcher.returncode == 0
    run = record.run()
    monitor, workload = run["monitor_pid"], run["pid"]
    assert proc.alive(monitor, run["monitor_start"])
    assert proc.alive(workload, run["start"])

    _, ppid, pgrp, session = _stat(monitor)[:4]
    assert int(ppid) not in (os.getpid(), launcher.pid)  # reparented: nobody's child of ours
    assert int(session) != os.getsid(0)  # a session of its own ...
    assert int(session) != monitor  # ... but not its leader: it can never get a terminal
    assert pgrp == session
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{monitor}/fd/{fd}") == "/dev/null"
    assert os.readlink(f"/proc/{monitor}/cwd") == "/"

    assert _stat(workload)[1] == str(monitor)  # the monitor's child
    assert os.getpgid(workload) == workload
    assert os.getsid(workload) == workload
    assert os.readlink(f"/proc/{workload}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{workload}/fd/1") == os.readlink(f"/proc/{workload}/fd/2")
    assert os.readlink(f"/proc/{workload}/fd/1").startswith("pipe:")
    # the monitor ignores SIGHUP, SIGINT and SIGPIPE; the workload inherits none of that
    ignored = {signal.SIGHUP, signal.SIGINT, signal.SIGPIPE}
    assert _ignored_signals(monitor) >= ignored
    assert _ignored_signals(workload) == set()
    assert re.search(r"^SigBlk:\s*0+$", Path(f"/proc/{workload}/status").read_text(), re.M)

    time.sleep(0.3)  # the launcher is long gone: both run on
    assert proc.alive(monitor, run["monitor_start"])
    assert proc.alive(workload, run["start"])
    assert record.read("exit.json") is None


def _ignored_signals(pid: int) -> set[signal.Signals]:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M)[1], 16)  # type: ignore[index]
    return {
        signal.Signals(n)
        for n in range(1, 65)
        if mask >> (n - 1) & 1 and n in signal.valid_signals()
    }


def test_killed_by_a_signal(launch: Launcher) -> None:
    record = launch(["sleep", "300"])
    run = record.run()
    os.killpg(run["pid"], signal.SIGKILL)
    done = record.exit()
    assert done["signal"] == signal.SIGKILL
    assert done["exit_code"] is None
    assert done["error"] is None
    wait_for(
        lambda: not proc.alive(run["monitor_pid"], run["monitor_start"]), "monitor end", DEADLINE
    )


def test_sigterm_to_monitor_forwards_the_stop_signal(launch: Launcher) -> None:
    """The monitor ignores SIGHUP and SIGINT; SIGTERM (a host shutdown) sends the
    workload's group its stop signal, and the monitor still records how it ended."""
    script = 'trap "echo stopping; exit 7" USR1; echo ready; while :; do sleep 0.05; done'
    record = launch(["sh", "-c", script], stop_signal=int(signal.SIGUSR1))
    run = record.run()
    wait_for(lambda: "ready" in record.output(), "the trap to be set", DEADLINE)
    os.kill(run["monitor_pid"], signal.SIGHUP)
    os.kill(run["monitor_pid"], signal.SIGINT)
    time.sleep(0.3)
    assert proc.alive(run["monitor_pid"], run["monitor_start"])
    assert proc.alive(run["pid"], run["start"])
    os.kill(run["monitor_pid"], signal.SIGTERM)
    done = record.exit()
    assert done["exit_code"] == 7
    output = record.output()  # sh may also report the sleep that USR1 ended
    assert output.startswith("ready\n")
    assert output.endswith("\nstopping\n")


def test_stragglers_in_the_group_are_killed(launch: Launcher, tmp_path: Path) -> None:
    record = launch(["sh", "-c", "sleep 300 & echo $! > child.pid; exit 0"], cwd=str(tmp_path))
    done = record.exit()
    assert done["exit_code"] == 0
    child = int((tmp_path / "child.pid").read_text())
    launch.track(child)  # killed afterwards should this fail
    wait_for(lambda: gone(child), f"straggler {child} to be killed", 5)


def test_output_held_open_outside_the_group_does_not_hang_the_monitor(
    launch: Launcher, tmp_path: Path
) -> None:
    """A process that left the workload's session keeps the output pipe open; the
    monitor still records the exit (after a short drain)."""
    script = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 300' & sleep 0.5; echo done"
    record = launch(["sh", "-c", script], cwd=str(tmp_path))
    wait_for(lambda: (tmp_path / "escaped.pid").exists(), "escaped.pid", DEADLINE)
    wait_for(lambda: (tmp_path / "escaped.pid").read_text().strip() != "", "escaped.pid", DEADLINE)
    escaped = int((tmp_path / "escaped.pid").read_text())
    launch.track(escaped)
    done = record.exit()
    assert done["exit_code"] == 0
    assert proc.process_state(escaped) not in (None, "Z")  # out of reach, as documented
    assert record.output() == "done\n"


def test_a_failing_monitor_leaves_a_trace_and_no_orphan(launch: Launcher, tmp_path: Path) -> None:
    """run.json cannot be written (a directory is in the way): monitor.err holds the
    traceback, exit.json says the monitor failed, and the workload does not run on
    unsupervised."""
    token = f"zlayer-test-{secrets.token_hex(6)}"
    spec = launch.spec(["sh", "-c", f"echo $$ > {tmp_path}/wl.pid; sleep 300; : {token}"])
    record = launch.records[-1]
    (record.dir / "run.json").mkdir()
    (record.dir / "run.json" / "in-the-way").touch()
    result = run_monitor(spec)
    assert result.returncode == 0, result.stderr
    try:
        done = record.exit()
        assert done["error"].startswith("the monitor failed: "), done
        assert done["exit_code"] is None
        trace = (record.dir / "monitor.err").read_text()
        assert "Traceback" in trace
        assert "run.json" in trace
        wait_for(lambda: not _with_token(token), "the workload to be killed", 5)
    finally:
        for pid in _with_token(token):  # the fixture cannot: no run.json names them
            launch.track(pid)


def _with_token(token: str) -> list[int]:
    """Live processes whose command line holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline and not gone(int(entry.name)):
                found.append(int(entry.name))
    return found


# --- log rotation ----------------------------------------------------------------------


def test_log_rotation_keeps_files_capped_at_line_ends(launch: Launcher) -> None:
    lines = [f"line {i:05d} " + "." * 40 for i in range(4000)]  # ~200 KiB
    script = 'i=0; while [ $i -lt 4000 ]; do printf "line %05d %s\\n" $i "$DOTS"; i=$((i+1)); done'
    record = launch(
        ["sh", "-c", script],
        env={"PATH": PATH, "DOTS": "." * 40},
        log={"max_bytes": 4096, "keep": 2},
    )
    assert record.exit()["exit_code"] == 0
    files = [record.dir / name for name in ("output.log.2", "output.log.1", "output.log")]
    for file in files:
        size = file.stat().st_size
        assert 0 < size <= 4096, (file, size)
        assert file.read_bytes().endswith(b"\n")  # rotated at a line's end
    assert not (record.dir / "output.log.3").exists()
    kept = "".join(file.read_text() for file in files)
    assert kept.splitlines() == lines[-len(kept.splitlines()) :]  # the newest, in order
    assert len(kept) > 2 * 4096  # three files' worth


def test_a_line_longer_than_a_file_is_split(launch: Launcher) -> None:
    record = launch(
        ["sh", "-c", 'printf "%s\\n" "$LONG"'],
        env={"PATH": PATH, "LONG": "x" * 10000},
        log={"max_bytes": 4096, "keep": 3},
    )
    assert record.exit()["exit_code"] == 0
    names = ["output.log.2", "output.log.1", "output.log"]
    sizes = [(record.dir / name).stat().st_size for name in names]
    assert sizes == [4096, 4096, 10001 - 2 * 4096]
    assert "".join((record.dir / name).read_text() for name in names) == "x" * 10000 + "\n"


def test_log_prefers_rotating_before_a_line_that_would_not_fit(tmp_path: Path) -> None:
    log = _Log(tmp_path, max_bytes=4096, keep=1)
    log.write(b"a" * 3000 + b"\nb")  # a partial line "b" ...
    log.write(b"b" * 1999 + b"\nc\n")  # ... completed here: would not fit
    log.close()
    assert (tmp_path / "output.log.1").read_bytes() == b"a" * 3000 + b"\nb"
    assert (tmp_path / "output.log").read_bytes() == b"b" * 1999 + b"\nc\n"
    # a relaunch appends, and the oldest is dropped at the next rotation
    log = _Log(tmp_path, max_bytes=4096, keep=1)
    log.write(b"d" * 2100 + b"\n")
    log.close()
    assert (tmp_path / "output.log.1").read_bytes() == b"b" * 1999 + b"\nc\n"
    assert (tmp_path / "output.log").read_bytes() == b"d" * 2100 + b"\n"
    assert not (tmp_path / "output.log.2").exists()


# --- user and namespaces (root) --------------------------------------------------------


def test_runs_as_the_given_user(launch: Launcher) -> None:
    needs_root("switching user")
    record = launch(
        ["sh", "-c", "id -u; id -g; id -G"],
        user={"uid": 65534, "gid": 65534, "groups": [65534]},
    )
    assert record.exit()["exit_code"] == 0
    assert record.output() == "65534\n65534\n65534\n"


@pytest.fixture
def namespace() -> Iterator[str]:
    needs_root("a network namespace")
    from pyroute2 import netns

    name = f"zlayer-t-{secrets.token_hex(4)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def test_network_namespace_and_hosts_file(launch: Launcher, namespace: str, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.9.9.9 db\n")
    host_hosts = Path("/etc/hosts").read_bytes()
    host_mounts = _mounts_on("/etc/hosts")
    record = launch(
        ["sh", "-c", "cat /etc/hosts; cat /proc/net/dev"], netns=namespace, hosts=str(hosts)
    )
    assert record.exit()["exit_code"] == 0
    output = record.output()
    assert "10.9.9.9 db\n" in output
    interfaces = {line.split(":")[0].strip() for line in output.splitlines() if ":" in line}
    assert interfaces == {"lo"}, output
    assert Path("/etc/hosts").read_bytes() == host_hosts
    assert _mounts_on("/etc/hosts") == host_mounts  # the bind mount stayed the workload's


def _mounts_on(point: str) -> list[str]:
    """This mount namespace's mounts at ``point`` (field 5 of /proc/self/mountinfo)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if line.split()[4] == point]


def test_own_host_name(launch: Launcher) -> None:
    needs_root("a UTS namespace")
    before = socket.gethostname()
    record = launch(["cat", "/proc/sys/kernel/hostname"], hostname="web-1")
    assert record.exit()["exit_code"] == 0
    assert record.output() == "web-1\n"
    assert socket.gethostname() == before


@pytest.fixture
def cgroup_dirs() -> Iterator[dict[str, Path]]:
    """A fresh cgroup in the cgroup2 hierarchy and in v1's pids one, those mounted,
    by their controller field in /proc/<pid>/cgroup ("" for cgroup2). Afterwards
    whatever is still in them is killed (only our workloads were put there) and
    they are removed."""
    needs_root("joining a cgroup")
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    roots: dict[str, str] = {}
    for _, point, kind, options, *_ in mounts:
        if kind == "cgroup2":
            roots.setdefault("", point)
        elif kind == "cgroup" and "pids" in options.split(","):
            roots.setdefault("pids", point)
    if not roots:
        unavailable("no cgroup2 or pids cgroup hierarchy is mounted")
    name = f"zlayer-t-{secrets.token_hex(4)}"
    made: dict[str, Path] = {}
    try:
        for controller, root in roots.items():
            (Path(root) / name).mkdir()
            made[controller] = Path(root) / name
        yield made
    finally:
        for group in made.values():
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for group in made.values():
            wait_for(lambda g=group: not (g / "cgroup.procs").read_text(), "empty cgroup", 10)
            group.rmdir()


def test_joins_the_cgroups(launch: Launcher, cgroup_dirs: dict[str, Path]) -> None:
    groups = [str(g) for g in cgroup_dirs.values()]
    record = launch(["cat", "/proc/self/cgroup"], cgroup=groups)
    assert record.exit()["exit_code"] == 0
    output = record.output()
    for controller, group in cgroup_dirs.items():
        assert re.search(rf"^\d+:{controller}:/{group.name}$", output, re.M), (group, output)


# --- proc helpers ----------------------------------------------------------------------


def test_start_time_and_alive(tmp_path: Path) -> None:
    odd = tmp_path / "a) (b"  # a command name with ") (" in it
    shutil.copy("/bin/sleep", odd)
    with subprocess.Popen([str(odd), "300"]) as child:
        try:
            wait_for(
                lambda: Path(f"/proc/{child.pid}/comm").read_text() == "a) (b\n", "exec", DEADLINE
            )
            start = proc.start_time(child.pid)
            assert start is not None
            assert start >= (proc.start_time(os.getpid()) or 0)
            assert proc.process_state(child.pid) in ("R", "S")
            assert proc.alive(child.pid, start)
            assert not proc.alive(child.pid, start + 1)  # a recycled pid is not ours
            child.kill()
            wait_for(lambda: proc.is_zombie(child.pid), "a zombie", DEADLINE)
            assert proc.start_time(child.pid) == start
            assert not proc.alive(child.pid, start)
        finally:
            child.kill()
            child.wait()
    assert proc.start_time(child.pid) is None
    assert proc.process_state(child.pid) is None
    assert not proc.alive(child.pid, start)


def test_json_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    assert proc.read_json(path) is None
    proc.atomic_write_json(path, {"b": 1, "a": [1, 2]}, mode=0o600)
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert path.stat().st_mode & 0o777 == 0o600
    assert proc.read_json(path) == {"a": [1, 2], "b": 1}
    with pytest.raises(TypeError):
        proc.atomic_write_json(path, {"x": object()})
    assert proc.read_json(path) == {"a": [1, 2], "b": 1}  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    for corrupt in ("[1, 2]", '{"a": ', "\xff"):
        path.write_text(corrupt, errors="surrogateescape")
        assert proc.read_json(path) is None
    assert re.fullmatch(r"[0-9a-f-]{36}", proc.boot_id())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", proc.now_iso())


# --- bad launch specs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"argv": None}, "argv must be"),
        ({"argv": []}, "argv must be"),
        ({"dir": "relative"}, "dir must be an absolute path"),
        ({"env": {"A": 1}}, "env must be"),
        ({"log": {"max_bytes": 100, "keep": 1}}, "log must be"),
        ({"user": {"uid": -1, "gid": 0, "groups": []}}, "user must be"),
        ({"netns": "../x"}, "netns must be"),
        ({"hostname": "x" * 65}, "hostname must be"),
        ({"cgroup": ["relative"]}, "cgroup must be"),
        ({"stop_signal": 0}, "stop_signal must be"),
    ],
)
def test_bad_launch_spec(launch: Launcher, change: dict[str, Any], message: str) -> None:
    spec = launch.spec(["true"])
    spec.update(change)
    if "argv" in change and change["argv"] is None:
        del spec["argv"]  # missing altogether
    result = run_monitor(spec)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("monitor: bad launch spec: ")
    time.sleep(0.2)
    assert list(launch.records[-1].dir.iterdir()) == []  # nothing ran, nothing written


def test_launch_spec_not_json() -> None:
    result = run_monitor("{not json")
    assert result.returncode == 2
    assert "not JSON" in result.stderr

"""The monitor: one small process per replica of the process runtime (a "shim").

Why it exists: the command that starts a replica (``zlayer apply``) must be able
to exit while the replica keeps running, yet someone has to hold the workload as
its child to learn its exit status, and to keep reading its output into log
files. The monitor is that someone. It detaches from whoever started it (double
fork, own session), runs the workload in a new session of its own (so a stop
signal to the process group reaches everything the workload started), writes
``run.json`` once the workload has been exec'ed and ``exit.json`` when it ends,
and copies its output to ``output.log`` with size-capped rotation.

Run as ``python -m reconciler.drivers.monitor`` with the launch spec, one JSON
object, on stdin (see :mod:`reconciler.drivers.process`). A bad spec exits 2
before anything is forked; otherwise the command exits 0 once the monitor runs.
Standard library only, and little of it: one of these starts for every replica.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from reconciler.drivers import proc

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
DRAIN_SECONDS = 2.0


def _check(spec: Any) -> str | None:
    """What is wrong with the launch spec, or None."""
    if not isinstance(spec, dict):
        return "the launch spec is not a JSON object"
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return "argv must be a non-empty list of strings"
    for key in ("launch", "dir"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            return f"{key} must be a non-empty string"
    if not Path(spec["dir"]).is_dir():
        return f"dir {spec['dir']} is not a directory"
    env = spec.get("env")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        return "env must be an object of strings"
    log = spec.get("log")
    if (
        not isinstance(log, dict)
        or int(log.get("max_bytes", 0)) < 1024
        or int(log.get("keep", 0)) < 1
    ):
        return "log needs max_bytes >= 1024 and keep >= 1"
    return None


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _enter(spec: dict[str, Any]) -> None:
    """In the workload's child, before exec: namespaces, cgroup, user, directory."""
    libc = _libc()
    if spec.get("hosts"):
        _call(libc.unshare(CLONE_NEWNS), "cannot make a mount namespace")
        _call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "cannot make / private")
        hosts = str(spec["hosts"]).encode()
        _call(libc.mount(hosts, b"/etc/hosts", None, MS_BIND, None), "cannot mount the hosts file")
    if spec.get("hostname"):
        # Its own name, which its hosts file maps: a lookup of the host's name would go
        # to a DNS server the namespace may not reach (Python's http.server does one).
        hostname = str(spec["hostname"]).encode()
        _call(libc.unshare(CLONE_NEWUTS), "cannot make a UTS namespace")
        _call(libc.sethostname(hostname, len(hostname)), "cannot set the host name")
    if spec.get("netns"):
        name = str(spec["netns"])
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot join network namespace {name}: {exc.strerror}"
            ) from exc
        try:
            _call(libc.setns(fd, CLONE_NEWNET), f"cannot join network namespace {name}")
        finally:
            os.close(fd)
    if spec.get("cgroup"):
        for directory in [spec["cgroup"]] if isinstance(spec["cgroup"], str) else spec["cgroup"]:
            Path(directory, "cgroup.procs").write_text(f"{os.getpid()}\n")
    user = spec.get("user")
    if user:
        os.setgroups([int(g) for g in user.get("groups", [])])
        os.setgid(int(user["gid"]))
        os.setuid(int(user["uid"]))
    cwd = spec.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot change to directory {cwd}: {exc.strerror}") from exc


def _child(spec: dict[str, Any], output: int, status: int) -> None:
    """The workload's side of the fork; never returns."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        _enter(spec)
        argv = spec["argv"]
        try:
            os.execvpe(argv[0], argv, spec["env"])
        except OSError as exc:
            raise OSError(exc.errno, f"exec {argv[0]!r}: {exc.strerror}") from exc
    except BaseException as exc:  # tell the monitor why, through the exec-status pipe
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        os.write(status, f"cannot start: {message}".encode()[:4000])
    finally:
        os._exit(127)


class _Log:
    """``output.log`` with rotation: no file grows past ``max_bytes``; the oldest of
    ``keep`` rotated files is dropped."""

    def __init__(self, directory: Path, max_bytes: int, keep: int) -> None:
        self.path = directory / "output.log"
        self.max_bytes = max_bytes
        self.keep = keep
        self.handle = self._open()

    def _open(self) -> Any:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        return os.fdopen(fd, "ab", buffering=0)

    def _rotate(self) -> None:
        self.handle.close()
        for n in range(self.keep - 1, 0, -1):
            older = Path(f"{self.path}.{n}")
            if older.exists():
                os.replace(older, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        self.handle = self._open()

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self.handle.tell()
            if len(data) <= room:
                self.handle.write(data)
                return
            cut = data.rfind(b"\n", 0, room) + 1  # at a line's end, when one fits
            if cut == 0 and self.handle.tell() == 0:
                cut = room  # one line longer than a whole file: split it
            if cut:
                self.handle.write(data[:cut])
                data = data[cut:]
            self._rotate()


def _supervise(spec: dict[str, Any]) -> None:
    directory = Path(spec["dir"])
    launch = spec["launch"]
    output_read, output_write = os.pipe()
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(output_read)
        os.close(status_read)
        _child(spec, output_write, status_write)
    os.close(output_write)
    os.close(status_write)
    failure = b""
    while chunk := os.read(status_read, 4096):
        failure += chunk
    os.close(status_read)
    if failure:
        os.waitpid(pid, 0)
        os.close(output_read)
        _record_exit(directory, launch, None, None, failure.decode(errors="replace"))
        return
    proc.atomic_write_json(
        directory / "run.json",
        {
            "launch": launch,
            "boot_id": proc.boot_id(),
            "monitor_pid": os.getpid(),
            "monitor_start": proc.start_time(os.getpid()),
            "pid": pid,
            "start": proc.start_time(pid),
            "started_at": proc.now_iso(),
        },
    )

    def forward(_signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.killpg(pid, int(spec.get("stop_signal") or signal.SIGTERM))

    signal.signal(signal.SIGTERM, forward)
    log = _Log(directory, int(spec["log"]["max_bytes"]), int(spec["log"]["keep"]))
    code: int | None = None
    signum: int | None = None
    ended = False
    drain_until = 0.0
    while True:
        timeout = 0.5 if not ended else max(0.0, drain_until - time.monotonic())
        try:
            ready, _, _ = select.select([output_read], [], [], timeout)
        except InterruptedError:
            ready = []
        if ready:
            chunk = os.read(output_read, 65536)
            if not chunk:
                break  # every writer closed: nothing more will come
            log.write(chunk)
        if not ended:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                ended = True
                code = os.waitstatus_to_exitcode(raw)
                if code < 0:
                    signum, code = -code, None
                # stragglers the workload left in its group go with it
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                drain_until = time.monotonic() + DRAIN_SECONDS
        elif time.monotonic() >= drain_until:
            break
    os.close(output_read)
    if not ended:  # it closed its output but ran on: wait for it all the same
        _, raw = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(raw)
        if code < 0:
            signum, code = -code, None
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    log.handle.close()
    _record_exit(directory, launch, code, signum, None)


def _record_exit(
    directory: Path, launch: str, code: int | None, signum: int | None, error: str | None
) -> None:
    proc.atomic_write_json(
        directory / "exit.json",
        {
            "launch": launch,
            "exit_code": code,
            "signal": signum,
            "error": error,
            "finished_at": proc.now_iso(),
        },
    )


def main() -> int:
    try:
        spec = json.loads(sys.stdin.buffer.read())
    except ValueError as exc:
        print(f"monitor: the launch spec is not JSON: {exc}", file=sys.stderr)
        return 2
    problem = _check(spec)
    if problem is not None:
        print(f"monitor: {problem}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first:
        _, raw = os.waitpid(first, 0)  # the intermediate ends right after the second fork
        return os.waitstatus_to_exitcode(raw)
    os.setsid()
    if os.fork():
        os._exit(0)
    # the monitor proper: not the launcher's child, in a session of its own
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        _supervise(spec)
    except BaseException:
        try:
            Path(spec["dir"], "monitor.err").write_text(traceback.format_exc())
        finally:
            os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

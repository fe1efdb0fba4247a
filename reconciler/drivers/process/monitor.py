"""The monitor: one small process per replica of the process runtime (a "shim").

Why it exists: the command that starts a replica (``zlayer apply``) must be able to
exit while the replica keeps running, yet only a process's parent learns its exit
status, and someone has to keep reading its output into log files. The monitor is
that parent. It detaches from whoever started it (double fork, a session of its
own, stdio on /dev/null, cwd /), so it outlives the CLI, and runs the workload as
its child in a new session, so that a stop signal to the workload's process group
reaches everything the workload started and nothing else.

Run as ``python -m reconciler.drivers.process.monitor`` with the launch spec, one JSON
object, on stdin (see :mod:`.launch`). A bad spec exits 2 with a
message on stderr before anything is forked; otherwise the command exits 0 once the
monitor proper runs, no longer its child. From then on the monitor reports only
through files in the record directory ``dir`` (their formats: :mod:`.records`):

``run.json``     once the workload has been exec'ed: launch, boot_id, monitor_pid,
                 monitor_start, pid, start (start times: /proc/<pid>/stat field 22,
                 so a recycled pid is never taken for ours), started_at
``exit.json``    when it has ended: launch, exit_code, signal, error, finished_at;
                 ``error`` says why it could not start (then there is no run.json)
                 or that the monitor itself failed (then the workload is killed:
                 nobody would collect its output or exit status any more)
``output.log``   its stdout and stderr (one pipe: their order is kept), rotated to
                 output.log.1 … output.log.<keep>, no file over ``max_bytes``
``monitor.err``  what went wrong in the monitor itself (a traceback), or that output
                 could not be written and was dropped; absent when all went well

Standard library only, and little of it: one of these starts for every replica.
That is also why it is one module although it is longer than most: the spec check,
the workload's side of the fork, the log and the supervision loop are one program,
and every further module would be one more file to find and load per replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from reconciler.drivers.process import host, records
from reconciler.drivers.process.records import Exited, Started
from reconciler.redact import scrub_text

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

# After the workload has ended and its process group is killed, how long output may
# still come from processes outside the group (ones that started a session of
# their own) that hold the pipe open, before the monitor stops reading.
DRAIN_SECONDS = 2.0
READ_SIZE = 65536


# --- the launch spec -------------------------------------------------------------------


def check(spec: Any) -> str | None:
    """What is wrong with the launch spec, or None."""
    if not isinstance(spec, dict):
        return "not a JSON object"
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    def absolute(key: str, optional: bool) -> None:
        value = spec.get(key)
        if value is None and optional:
            return
        need(isinstance(value, str) and value.startswith("/"), f"{key} must be an absolute path")

    need(_text(spec.get("launch")), "launch must be a non-empty string")
    absolute("dir", optional=False)
    if isinstance(spec.get("dir"), str) and not os.path.isdir(spec["dir"]):
        problems.append(f"dir {spec['dir']} is not a directory")
    argv = spec.get("argv")
    need(
        isinstance(argv, list)
        and argv != []
        and _text(argv[0])
        and all(_text(a, True) for a in argv),
        "argv must be a non-empty list of strings",
    )
    absolute("cwd", optional=True)
    env = spec.get("env")
    need(
        isinstance(env, dict) and all(_text(v, True) for v in env.values()),
        "env must be an object of strings",
    )
    user = spec.get("user")
    need(
        user is None
        or (
            isinstance(user, dict)
            and _id(user.get("uid"))
            and _id(user.get("gid"))
            and isinstance(user.get("groups", []), list)
            and all(_id(g) for g in user.get("groups", []))
        ),
        "user must be null or {uid, gid, groups} of non-negative integers",
    )
    netns = spec.get("netns")
    need(
        netns is None or (_text(netns) and "/" not in netns and netns not in (".", "..")),
        "netns must be null or the name of a namespace in /run/netns",
    )
    absolute("hosts", optional=True)
    hostname = spec.get("hostname")
    need(
        hostname is None or (_text(hostname) and len(hostname.encode()) <= 64),
        "hostname must be null or a name of at most 64 bytes",
    )
    cgroup = spec.get("cgroup")
    need(
        cgroup is None
        or _path(cgroup)
        or (isinstance(cgroup, list) and all(_path(c) for c in cgroup)),
        "cgroup must be null, or the absolute path of a cgroup directory or a list of them",
    )
    log = spec.get("log")
    need(
        isinstance(log, dict)
        and _int(log.get("max_bytes"))
        and log["max_bytes"] >= 1024
        and _int(log.get("keep"))
        and log["keep"] >= 1,
        "log must be {max_bytes >= 1024, keep >= 1}",
    )
    stop: Any = spec.get("stop_signal")
    need(_int(stop) and 0 < stop < signal.NSIG, "stop_signal must be a signal number")
    return "; ".join(problems) or None


def _text(value: Any, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or value != "")


def _path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(value: Any) -> bool:
    return _int(value) and value >= 0


# --- the workload's side of the fork ---------------------------------------------------


class _Failed(Exception):
    """A step before exec failed; the message says which and why."""


def _step(what: str, exc: OSError) -> _Failed:
    return _Failed(f"{what}: {exc.strerror or exc}")


def _child(spec: dict[str, Any], output: int, status: int) -> NoReturn:
    """Become the workload: never returns. Any failure up to and including exec is
    written to ``status`` (close-on-exec, so the monitor reads EOF once exec worked)."""
    try:
        # Ignored signals stay ignored across exec: the monitor's (SIGHUP, SIGINT),
        # Python's own (SIGPIPE, SIGXFSZ) and any its launcher had. Like a container,
        # the workload starts with every signal at its default.
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        os.setsid()  # pgid == sid == pid: killpg(pid) reaches all it starts
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)  # dup2 makes 0-2 inheritable; every other fd is close-on-exec
        os.dup2(output, 2)
        _enter(spec)
        argv = spec["argv"]
        try:
            os.execvpe(argv[0], argv, spec["env"])
        except OSError as exc:
            raise _step(f"exec {argv[0]!r}", exc) from None
    except BaseException as exc:
        message = str(exc) if isinstance(exc, _Failed) else f"{type(exc).__name__}: {exc}"
        # The record of a failed start is stored and shown: no clear value in it.
        message = scrub_text(message, spec.get("scrub", ()))
        with contextlib.suppress(BaseException):
            os.write(status, f"cannot start: {message}".encode(errors="replace")[:4000])
    finally:
        os._exit(127)


def _enter(spec: dict[str, Any]) -> None:
    """Before exec: mount, UTS and network namespaces, cgroups, user, working directory."""
    if spec.get("hosts") or spec.get("hostname") or spec.get("netns"):
        import ctypes  # only replicas with a namespace pay for it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare.argtypes = [ctypes.c_int]
        libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]

        def call(result: int, what: str) -> None:
            if result != 0:
                code = ctypes.get_errno()
                raise _step(what, OSError(code, os.strerror(code)))

    if spec.get("hosts"):
        # A private mount namespace, so the bind mount is the workload's alone and
        # nothing it mounts propagates back to the host.
        hosts = str(spec["hosts"])
        call(libc.unshare(CLONE_NEWNS), "make a mount namespace")
        call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        call(
            libc.mount(hosts.encode(), b"/etc/hosts", None, MS_BIND, None),
            f"bind-mount {hosts} over /etc/hosts",
        )
    if spec.get("hostname"):
        # Its own name, which its hosts file maps: a lookup of the host's name would go
        # to a DNS server the namespace may not reach (Python's http.server does one).
        hostname = str(spec["hostname"]).encode()
        call(libc.unshare(CLONE_NEWUTS), "make a UTS namespace")
        call(libc.sethostname(hostname, len(hostname)), f"set the host name {spec['hostname']}")
    if spec.get("netns"):
        name = str(spec["netns"])
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _step(f"join network namespace {name}", exc) from None
        try:
            call(libc.setns(fd, CLONE_NEWNET), f"join network namespace {name}")
        finally:
            os.close(fd)
    groups = spec.get("cgroup") or []
    for group in [groups] if isinstance(groups, str) else groups:  # one per v1 hierarchy
        try:
            fd = os.open(os.path.join(group, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise _step(f"join cgroup {group}", exc) from None
    user = spec.get("user")
    if user:
        try:
            os.setgroups(user.get("groups", []))
            os.setgid(user["gid"])
            os.setuid(user["uid"])
        except OSError as exc:
            raise _step(f"switch to uid {user['uid']} gid {user['gid']}", exc) from None
    cwd = spec.get("cwd") or "/"
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise _step(f"change to directory {cwd}", exc) from None


# --- output.log ------------------------------------------------------------------------


class _Log:
    """``output.log`` with rotation: no file grows past ``max_bytes``; when the next
    chunk would not fit, output.log becomes output.log.1 (.1 becomes .2 and so on,
    the oldest of ``keep`` dropped). Rotation happens at a line's end when one fits."""

    def __init__(self, directory: Path, max_bytes: int, keep: int) -> None:
        self.path = str(directory / "output.log")
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd = -1
        self.size = 0

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        os.fchmod(self.fd, 0o640)
        self.size = os.fstat(self.fd).st_size  # a relaunch appends to the last launch's

    def _rotate(self) -> None:
        self.close()
        for n in range(self.keep, 1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{n - 1}", f"{self.path}.{n}")
        os.replace(self.path, f"{self.path}.1")

    def write(self, data: bytes) -> None:
        while True:
            if self.fd < 0:
                self._open()  # lazily: a failed open or rotation is retried next time
            room = max(0, self.max_bytes - self.size)
            if len(data) <= room:
                break
            cut = data.rfind(b"\n", 0, room) + 1  # after the last whole line that fits
            if cut == 0 and self.size == 0:
                cut = room  # one line longer than a whole file: split it
            self._put(data[:cut])
            data = data[cut:]
            self._rotate()
        self._put(data)

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


# --- the monitor proper ----------------------------------------------------------------


class _Monitor:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.dir = Path(spec["dir"])
        self.launch: str = spec["launch"]
        self.stop_signal: int = spec["stop_signal"]
        self.pid: int | None = None  # the workload, once forked
        self.running = False  # exec'ed and not ended: stop signals may go to its group
        self.reaped = False  # its exit status is collected: its pid may be reused
        self.stop_requested = False
        self.finished = False  # exit.json is written
        self.log_broken = False
        self.oom_kills: int | None = None
        """The memory group's OOM kills before this launch (None: not counted)."""

    def run(self) -> None:
        output_read, output_write = os.pipe()  # close-on-exec, like all fds Python makes
        status_read, status_write = os.pipe()
        # SIGCHLD wakes select() through this pipe, even when it comes just before.
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)
        signal.signal(signal.SIGTERM, self._on_sigterm)

        self.oom_kills = _oom_kills(self.spec.get("cgroup"))  # the groups' count so far
        self.pid = pid = os.fork()
        if pid == 0:
            _child(self.spec, output_write, status_write)
        os.close(output_write)
        os.close(status_write)
        failure = b""
        while chunk := os.read(status_read, 4096):
            failure += chunk
        os.close(status_read)
        if failure:
            os.close(output_read)
            os.waitpid(pid, 0)
            self.reaped = True
            self._record_exit(None, None, failure.decode(errors="replace"))
            return

        log = _Log(self.dir, self.spec["log"]["max_bytes"], self.spec["log"]["keep"])
        self._write_log(log, b"")  # output.log exists once run.json does
        # Not reaped yet, so even a workload that has ended already has a start time.
        records.write_started(
            self.dir,
            Started(
                launch=self.launch,
                boot_id=host.boot_id(),
                monitor_pid=os.getpid(),
                monitor_start=_start_time(os.getpid()),
                pid=pid,
                start=_start_time(pid),
                started_at=host.now_iso(),
            ),
        )
        self.running = True
        if self.stop_requested:
            self._forward()

        output: int | None = output_read
        result: tuple[int | None, int | None] | None = None
        drain_until = 0.0
        while True:
            if result is None and (result := self._reap(pid)) is not None:
                drain_until = time.monotonic() + DRAIN_SECONDS
            if result is not None and (output is None or time.monotonic() >= drain_until):
                break
            watch = [wake_read] if output is None else [wake_read, output]
            timeout = None if result is None else max(0.0, drain_until - time.monotonic())
            ready, _, _ = select.select(watch, [], [], timeout)
            if wake_read in ready:
                _empty(wake_read)
            if output is not None and output in ready:
                chunk = os.read(output, READ_SIZE)
                if chunk:
                    self._write_log(log, chunk)
                else:  # every writer has closed it
                    os.close(output)
                    output = None
        if output is not None:
            os.close(output)
        log.close()
        self._record_exit(*result, None)

    def _reap(self, pid: int) -> tuple[int | None, int | None] | None:
        """(exit code, signal) once the workload has ended, else None."""
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
        self.running = False
        # Ended but not reaped: its pid, the id of its process group, cannot be reused
        # yet, so this reaches only what it left behind in the group (stragglers
        # that would otherwise run on unsupervised and hold the output pipe open).
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        self.reaped = True
        code = os.waitstatus_to_exitcode(status)
        return (code, None) if code >= 0 else (None, -code)

    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        """A host shutdown: stop the workload gracefully, and record how it ends."""
        self.stop_requested = True
        if self.running:
            self._forward()

    def _forward(self) -> None:
        if self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, self.stop_signal)

    def _write_log(self, log: _Log, data: bytes) -> None:
        """Output that cannot be written (a full disk) is dropped, noted once: losing
        log lines is better than losing the workload's supervision."""
        try:
            log.write(data)
        except OSError as exc:
            if not self.log_broken:
                self.log_broken = True
                _note(self.dir, f"{host.now_iso()} output.log: {exc}; output is dropped\n")

    def _record_exit(self, code: int | None, signum: int | None, error: str | None) -> None:
        # Killed (SIGKILL) while the memory group counted an OOM kill more than at the
        # launch: the kernel's OOM killer ended it, at its memory limit.
        after = _oom_kills(self.spec.get("cgroup")) if signum == signal.SIGKILL else None
        before = self.oom_kills
        records.write_exited(
            self.dir,
            Exited(
                launch=self.launch,
                exit_code=code,
                signal=signum,
                error=error,
                finished_at=host.now_iso(),
                oom_killed=after is not None and before is not None and after > before,
            ),
        )
        self.finished = True

    def failed(self) -> None:
        """The monitor itself failed: leave a trace, and (a workload nobody supervises
        any more being worse than none) end the workload and record why."""
        import traceback

        text = traceback.format_exc()
        _note(self.dir, f"{host.now_iso()} the monitor failed:\n{text}")
        if self.finished:
            return
        if self.pid and not self.reaped:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        lines = text.strip().splitlines()
        with contextlib.suppress(BaseException):
            self._record_exit(None, None, f"the monitor failed: {lines[-1] if lines else '?'}")


def _start_time(pid: int) -> int:
    """``pid``'s start time; it has one while not reaped (a zombie still does)."""
    start = host.start_time(pid)
    if start is None:
        raise RuntimeError(f"no start time for process {pid}")
    return start


def _ignore(_signum: int, _frame: object) -> None:
    """SIGCHLD's handler: the wakeup fd does the work."""


def _empty(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _note(directory: Path, text: str) -> None:
    """Append ``text`` to monitor.err, best effort."""
    with (
        contextlib.suppress(BaseException),
        open(directory / "monitor.err", "a", encoding="utf-8") as handle,
    ):
        handle.write(text)


def _detached(spec: dict[str, Any]) -> NoReturn:
    """The monitor proper (the grandchild): never returns."""
    monitor = _Monitor(spec)
    code = 1
    try:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        os.chdir("/")  # hold no directory busy
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # also lets the launcher's pipes reach EOF
            os.dup2(null, fd)
        os.close(null)
        monitor.run()
        code = 0
    except BaseException:
        monitor.failed()
    finally:
        os._exit(code)


def _oom_kills(groups: Any) -> int | None:
    """How many processes the kernel's OOM killer has ended in the replica's memory
    group so far (``oom_kill`` in cgroup v2's ``memory.events``, or in v1's
    ``memory.oom_control``); None without a memory group that counts them."""
    for group in groups if isinstance(groups, list) else [groups] if groups else []:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = Path(str(group), name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    return int(value)
    return None


def main() -> int:
    try:
        spec = json.loads(sys.stdin.buffer.read())
    except ValueError as exc:
        print(f"monitor: the launch spec is not JSON: {exc}", file=sys.stderr)
        return 2
    problem = check(spec)
    if problem is not None:
        print(f"monitor: bad launch spec: {problem}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first:
        # The intermediate ends right after forking the monitor, which is then no
        # child of ours (nor of whoever started us): it is reparented to init.
        _, status = os.waitpid(first, 0)
        return os.waitstatus_to_exitcode(status)
    try:
        os.setsid()  # no controlling terminal; the CLI's session ending does not reach us
        grandchild = os.fork()  # not a session leader: can never acquire a terminal
    except BaseException as exc:
        try:
            os.write(2, f"monitor: cannot detach: {exc}\n".encode())
        finally:
            os._exit(1)
    if grandchild:
        os._exit(0)
    _detached(spec)


if __name__ == "__main__":
    sys.exit(main())

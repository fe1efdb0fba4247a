"""The process runtime's record files, typed: the one place that reads and writes them.

Everything zlayer knows about a replica or run is in the files of its directory
(:mod:`.store` says where that directory is)::

    record.json   identity, fingerprint, config (secrets as hashes), revision,
                  network, current launch id                   (:class:`Record`, the driver)
    launch.json   what the monitor runs, env included (0600: holds secrets, as a
                  container engine keeps a container's env)    (:class:`Launch`, the driver)
    run.json      monitor and workload pids with their start times (:class:`Started`, monitor)
    exit.json     exit code or signal, or why it could not start  (:class:`Exited`, monitor)

and a deployment's ``network.json`` holds its subnet and bridge (:class:`Subnet`).

Each file is a JSON object written atomically (:func:`.host.atomic_write_json`), in
the format the first process runtime wrote, so records of a running host are read
by every later version. Unknown keys are ignored; optional keys a record does not
have are left out again when it is written.

zlayer's own records (record.json, network.json) that exist but cannot be read raise
:class:`~reconciler.errors.PermanentDriverError` naming the file and what is wrong:
a hand-edited or corrupt record is reported, never guessed at. The monitor's reports
(run.json, exit.json) that cannot be read count as not written yet, as a missing
report does.

Standard library only (and :mod:`reconciler.errors`): the monitor imports this. The
records are NamedTuples, whose definition costs a tenth of a dataclass's, and the
module evaluates its annotations (no ``from __future__ import annotations``): string
annotations would be compiled one by one when each class is made.
"""

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from reconciler.drivers.process import host
from reconciler.errors import PermanentDriverError

RECORD = "record.json"
LAUNCH = "launch.json"
STARTED = "run.json"
EXITED = "exit.json"
SUBNET = "network.json"

T = TypeVar("T")


# --- the records -----------------------------------------------------------------------


class Attachment(NamedTuple):
    """How a replica or run is networked (``record.json``'s ``network``)."""

    mode: str | None = None
    """``bridge``, ``none`` or ``host``; None for a definition (it never runs)."""
    address: str | None = None
    """Its address on the deployment's bridge (``bridge`` mode)."""
    netns: str | None = None
    """Its network namespace (``bridge`` and ``none``)."""
    hosts: str | None = None
    """Its hosts file, once a launch made its namespace."""

    def to_json(self) -> dict[str, Any]:
        data = {
            "mode": self.mode,
            "address": self.address,
            "netns": self.netns,
            "hosts": self.hosts,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any) -> "Attachment":
        fields = _object(data, "network")
        return cls(
            mode=_text(fields, "mode", "network.mode"),
            address=_text(fields, "address", "network.address"),
            netns=_text(fields, "netns", "network.netns"),
            hosts=_text(fields, "hosts", "network.hosts"),
        )


class Record(NamedTuple):
    """``record.json``: a replica (``replica`` set), a definition of a job or cron
    service (neither ``replica`` nor ``run``) or a run of one (``run`` and ``slot``)."""

    deployment: str
    service: str
    replica: int | None
    fingerprint: str
    config: Mapping[str, Any]
    """The compiled config, secrets as keyed hashes."""
    revision: str | None = None
    rtype: str | None = None
    image: str | None = None
    depends: tuple[str, ...] = ()
    network: Attachment = Attachment()
    created_at: str | None = None
    launch: str | None = None
    """The id of the current launch (the monitor's files name it); None before the first."""
    run: str | None = None
    slot: int | None = None
    """A run's stand-in for a replica index in namespace, veth and cgroup names."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "deployment": self.deployment,
            "service": self.service,
            "replica": self.replica,
            "rtype": self.rtype,
            "image": self.image,
            "fingerprint": self.fingerprint,
            "config": dict(self.config),
            "revision": self.revision,
            "depends": list(self.depends),
            "network": self.network.to_json(),
            "created_at": self.created_at,
        }
        optional = {"launch": self.launch, "run": self.run, "slot": self.slot}
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    @classmethod
    def from_json(cls, data: Any) -> "Record":
        fields = _object(data, "the record")
        depends = fields.get("depends", [])
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            raise ValueError("depends: expected a list of service names")
        config = fields.get("config", {})
        if not isinstance(config, dict):
            raise ValueError("config: expected an object")
        return cls(
            deployment=_required_text(fields, "deployment"),
            service=_required_text(fields, "service"),
            replica=_number(fields, "replica"),
            fingerprint=_required_text(fields, "fingerprint"),
            config=config,
            revision=_text(fields, "revision"),
            rtype=_text(fields, "rtype"),
            image=_text(fields, "image"),
            depends=tuple(depends),
            network=Attachment.from_json(fields.get("network", {})),
            created_at=_text(fields, "created_at"),
            launch=_text(fields, "launch"),
            run=_text(fields, "run"),
            slot=_number(fields, "slot"),
        )


class User(NamedTuple):
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class Launch(NamedTuple):
    """``launch.json``: what the monitor runs, clear values included (0600)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    stop_signal: int
    cwd: str | None = None
    user: User | None = None
    scrub: tuple[str, ...] = ()
    """The clear values of the service's secrets, kept out of what the monitor stores."""

    def to_json(self) -> dict[str, Any]:
        user = self.user
        return {
            "argv": list(self.argv),
            "cwd": self.cwd,
            "env": dict(self.env),
            "user": None
            if user is None
            else {"uid": user.uid, "gid": user.gid, "groups": list(user.groups)},
            "stop_signal": self.stop_signal,
            "scrub": list(self.scrub),
        }

    @classmethod
    def from_json(cls, data: Any) -> "Launch":
        fields = _object(data, "the launch record")
        argv, env, scrub = fields.get("argv"), fields.get("env"), fields.get("scrub", [])
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv: expected a non-empty list of strings")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError("env: expected an object of strings")
        if not isinstance(scrub, list) or not all(isinstance(v, str) for v in scrub):
            raise ValueError("scrub: expected a list of strings")
        user = fields.get("user")
        if user is not None:
            ids = _object(user, "user")
            groups = ids.get("groups", [])
            if not isinstance(groups, list) or not all(_is_int(g) for g in groups):
                raise ValueError("user.groups: expected a list of numbers")
            user = User(_required_number(ids, "uid"), _required_number(ids, "gid"), tuple(groups))
        return cls(
            argv=tuple(argv),
            env=env,
            stop_signal=_required_number(fields, "stop_signal"),
            cwd=_text(fields, "cwd"),
            user=user,
            scrub=tuple(scrub),
        )


class Started(NamedTuple):
    """``run.json``, written by the monitor once the workload has been exec'ed. Start
    times are /proc/<pid>/stat field 22, so a recycled pid is never taken for ours."""

    launch: str
    boot_id: str
    monitor_pid: int
    monitor_start: int
    pid: int
    start: int
    started_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self._asdict()  # every field, in the file's order

    @classmethod
    def from_json(cls, data: Any) -> "Started":
        fields = _object(data, "the run report")
        return cls(
            launch=_required_text(fields, "launch"),
            boot_id=_required_text(fields, "boot_id"),
            monitor_pid=_required_number(fields, "monitor_pid"),
            monitor_start=_required_number(fields, "monitor_start"),
            pid=_required_number(fields, "pid"),
            start=_required_number(fields, "start"),
            started_at=_text(fields, "started_at"),
        )

    def workload_alive(self) -> bool:
        return host.alive(self.pid, self.start)

    def monitor_alive(self) -> bool:
        return host.alive(self.monitor_pid, self.monitor_start)


class Exited(NamedTuple):
    """``exit.json``: how a launch ended, written by the monitor (or by the driver when
    the monitor is gone without a word). ``error`` says why it could not start, or
    that the monitor itself failed."""

    launch: str | None
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    finished_at: str | None = None
    oom_killed: bool = False
    """The kernel's OOM killer ended it (its memory group counted a kill)."""

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()  # every field, in the file's order
        if not self.oom_killed:  # only when it was: older files are written back as they were
            del data["oom_killed"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> "Exited":
        fields = _object(data, "the exit report")
        return cls(
            launch=_text(fields, "launch"),
            exit_code=_number(fields, "exit_code"),
            signal=_number(fields, "signal"),
            error=_text(fields, "error"),
            finished_at=_text(fields, "finished_at"),
            oom_killed=fields.get("oom_killed") is True,
        )

    @property
    def code(self) -> int | None:
        """The exit code as the shell and Docker report it: 128 + the signal's number
        when a signal ended it, 127 when it could not start."""
        if self.exit_code is None and self.signal:
            return 128 + self.signal
        if self.exit_code is None:
            return 127 if self.error else None
        return self.exit_code


class Subnet(NamedTuple):
    """``network.json``: a deployment's subnet and bridge, recorded before the bridge
    is made, so a crash never leaves a bridge of ours unrecorded."""

    deployment: str
    subnet: str
    address: str
    """The bridge's address with the prefix length (``10.213.0.1/24``)."""
    bridge: str

    def to_json(self) -> dict[str, Any]:
        return self._asdict()  # every field, in the file's order

    @classmethod
    def from_json(cls, data: Any) -> "Subnet":
        fields = _object(data, "the network record")
        return cls(
            deployment=_required_text(fields, "deployment"),
            subnet=_required_text(fields, "subnet"),
            address=_required_text(fields, "address"),
            bridge=_required_text(fields, "bridge"),
        )


# --- reading and writing ---------------------------------------------------------------


def read_record(where: Path) -> Record | None:
    """``record.json`` in ``where``; None when there is none."""
    data = _load(where / RECORD)
    return None if data is None else _parsed(Record.from_json, where / RECORD, data)


def write_record(where: Path, record: Record) -> None:
    host.atomic_write_json(where / RECORD, record.to_json())


def read_launch(where: Path) -> Launch | None:
    data = _load(where / LAUNCH)
    return None if data is None else _parsed(Launch.from_json, where / LAUNCH, data)


def write_launch(where: Path, launch: Launch) -> None:
    host.atomic_write_json(where / LAUNCH, launch.to_json(), mode=0o600)


def read_started(where: Path) -> Started | None:
    """The monitor's ``run.json``; None when it is missing or unreadable."""
    return _report(Started.from_json, where / STARTED)


def write_started(where: Path, started: Started) -> None:
    host.atomic_write_json(where / STARTED, started.to_json())


def read_exited(where: Path) -> Exited | None:
    """``exit.json``; None when it is missing or unreadable."""
    return _report(Exited.from_json, where / EXITED)


def write_exited(where: Path, exited: Exited) -> None:
    host.atomic_write_json(where / EXITED, exited.to_json())


def read_subnet(path: Path) -> Subnet | None:
    """A deployment's ``network.json`` at ``path``; None when there is none."""
    data = _load(path)
    return None if data is None else _parsed(Subnet.from_json, path, data)


def write_subnet(path: Path, subnet: Subnet) -> None:
    host.atomic_write_json(path, subnet.to_json())


def _load(path: Path) -> Any:
    """The JSON in ``path``; None when there is no such file; PermanentDriverError
    naming the file when it cannot be read or is not JSON."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PermanentDriverError(f"{path}: cannot read the record: {exc.strerror}") from exc
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PermanentDriverError(f"{path}: not a valid record: not JSON ({exc})") from exc


def _parsed(parse: Callable[[Any], T], path: Path, data: Any) -> T:
    try:
        return parse(data)
    except ValueError as exc:
        raise PermanentDriverError(f"{path}: not a valid record: {exc}") from exc


def _report(parse: Callable[[Any], T], path: Path) -> T | None:
    data = host.read_json(path)
    if data is None:
        return None
    try:
        return parse(data)
    except ValueError:
        return None


# --- field checks ----------------------------------------------------------------------


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a JSON object, found {type(data).__name__}")
    return data


def _text(fields: Mapping[str, Any], key: str, name: str | None = None) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name or key}: expected a string, found {json.dumps(value)[:40]}")
    return value


def _required_text(fields: Mapping[str, Any], key: str) -> str:
    value = _text(fields, key)
    if not value:
        raise ValueError(f"{key}: missing")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(fields: Mapping[str, Any], key: str) -> int | None:
    value = fields.get(key)
    if value is not None and not _is_int(value):
        raise ValueError(f"{key}: expected a whole number, found {json.dumps(value)[:40]}")
    return value


def _required_number(fields: Mapping[str, Any], key: str) -> int:
    value = _number(fields, key)
    if value is None:
        raise ValueError(f"{key}: missing")
    return value

"""The process runtime's typed records (reconciler.drivers.process.records and .store):
round trips, the files the first process runtime wrote, and corrupt records."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.process import records
from reconciler.drivers.process.records import (
    Attachment,
    Exited,
    Launch,
    Record,
    Started,
    Subnet,
    User,
)
from reconciler.drivers.process.store import Store
from reconciler.errors import NotFound, PermanentDriverError
from reconciler.observed import RunId, WorkloadId

# Files as the process runtime wrote them before its records were typed (keys and
# values copied from a state directory of that version).
REPLICA = {
    "config": {
        "command": {"entrypoint": ["sleep", "3600"]},
        "env": {"TOKEN": {"hmac": "hmac-sha256:ab12"}},
        "image": "python:3",
    },
    "created_at": "2026-11-22T10:00:00.123Z",
    "depends": ["db"],
    "deployment": "demo",
    "fingerprint": "sha256:0f1e",
    "image": "python:3",
    "launch": "5d41402abc4b2a76b9719d911017c592",
    "network": {
        "address": "10.213.0.2",
        "hosts": "/etc/netns/zlayer-demo-web-1/hosts",
        "mode": "bridge",
        "netns": "zlayer-demo-web-1",
    },
    "replica": 1,
    "revision": "rev-1",
    "rtype": "service",
    "service": "web",
}
NEVER_LAUNCHED = {k: v for k, v in REPLICA.items() if k != "launch"} | {"network": {"mode": "host"}}
DEFINITION = {
    "config": {"command": {"entrypoint": ["true"]}, "rtype": "job"},
    "created_at": "2026-11-22T10:00:00.123Z",
    "depends": [],
    "deployment": "demo",
    "fingerprint": "sha256:aa",
    "image": None,
    "network": {},
    "replica": None,
    "revision": "rev-1",
    "rtype": "job",
    "service": "migrate",
}
RUN = DEFINITION | {
    "launch": "7d793037a0760186574b0282f2f435e7",
    "network": {"mode": "none", "netns": "zlayer-demo-migrate-512345"},
    "run": "manual-1",
    "slot": 512345,
}
LAUNCH = {
    "argv": ["sleep", "3600"],
    "cwd": None,
    "env": {"HOME": "/root", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "TOKEN": "s3cr3t"},
    "scrub": ["s3cr3t"],
    "stop_signal": 15,
    "user": {"gid": 1000, "groups": [1000, 27], "uid": 1000},
}
STARTED = {
    "boot_id": "0b7c4b8e-0d0c-4a55-9d63-1f5a3c7e9b10",
    "launch": "5d41402abc4b2a76b9719d911017c592",
    "monitor_pid": 4100,
    "monitor_start": 881234,
    "pid": 4101,
    "start": 881236,
    "started_at": "2026-11-22T10:00:00.456Z",
}
EXITED = {
    "error": None,
    "exit_code": None,
    "finished_at": "2026-11-22T10:05:00.000Z",
    "launch": "5d41402abc4b2a76b9719d911017c592",
    "signal": 9,
}
SUBNET = {
    "address": "10.213.0.1/24",
    "bridge": "zl-2a97516c35",
    "deployment": "demo",
    "subnet": "10.213.0.0/24",
}


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")
    return path


@pytest.mark.parametrize(
    "data",
    [REPLICA, NEVER_LAUNCHED, DEFINITION, RUN],
    ids=["replica", "never-launched", "definition", "run"],
)
def test_a_record_of_the_untyped_version_reads_and_is_written_back_unchanged(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    written = _write(tmp_path / records.RECORD, data).read_text()
    record = records.read_record(tmp_path)
    assert record is not None
    assert record.to_json() == data
    records.write_record(tmp_path, record)
    assert (tmp_path / records.RECORD).read_text() == written


def test_the_fields_of_a_record_of_the_untyped_version() -> None:
    replica = Record.from_json(REPLICA)
    assert (replica.deployment, replica.service, replica.replica) == ("demo", "web", 1)
    assert replica.network == Attachment(
        mode="bridge",
        address="10.213.0.2",
        netns="zlayer-demo-web-1",
        hosts="/etc/netns/zlayer-demo-web-1/hosts",
    )
    assert replica.depends == ("db",)
    assert replica.launch == REPLICA["launch"]
    assert (replica.run, replica.slot) == (None, None)
    assert Record.from_json(NEVER_LAUNCHED).launch is None
    run = Record.from_json(RUN)
    assert (run.replica, run.run, run.slot) == (None, "manual-1", 512345)
    assert Record.from_json(DEFINITION).network == Attachment()


@pytest.mark.parametrize(
    ("kind", "data", "read", "write", "name"),
    [
        (Launch, LAUNCH, records.read_launch, records.write_launch, records.LAUNCH),
        (Started, STARTED, records.read_started, records.write_started, records.STARTED),
        (Exited, EXITED, records.read_exited, records.write_exited, records.EXITED),
    ],
    ids=["launch", "started", "exited"],
)
def test_the_other_files_of_the_untyped_version_read_and_are_written_back_unchanged(
    tmp_path: Path, kind: Any, data: dict[str, Any], read: Any, write: Any, name: str
) -> None:
    written = _write(tmp_path / name, data).read_text()
    value = read(tmp_path)
    assert isinstance(value, kind)
    assert value.to_json() == data
    (tmp_path / name).unlink()
    write(tmp_path, value)
    assert (tmp_path / name).read_text() == written


def test_network_json_of_the_untyped_version(tmp_path: Path) -> None:
    path = _write(tmp_path / "demo" / records.SUBNET, SUBNET)
    written = path.read_text()
    subnet = records.read_subnet(path)
    assert subnet == Subnet("demo", "10.213.0.0/24", "10.213.0.1/24", "zl-2a97516c35")
    records.write_subnet(path, subnet)
    assert path.read_text() == written


def test_round_trips(tmp_path: Path) -> None:
    record = Record(
        deployment="d",
        service="s",
        replica=3,
        fingerprint="sha256:1",
        config={"image": "x", "resources": {"memory": "64Mi"}},
        revision="r",
        rtype="service",
        image="x",
        depends=("a", "b"),
        network=Attachment(mode="none", netns="zlayer-d-s-3"),
        created_at="2026-01-01T00:00:00.000Z",
        launch="abc",
    )
    records.write_record(tmp_path, record)
    assert records.read_record(tmp_path) == record
    launch = Launch(
        argv=("a", "b c"),
        env={"K": "V"},
        stop_signal=2,
        cwd="/srv",
        user=User(5, 6, (6, 7)),
        scrub=("V",),
    )
    records.write_launch(tmp_path, launch)
    assert records.read_launch(tmp_path) == launch
    assert (tmp_path / records.LAUNCH).stat().st_mode & 0o777 == 0o600  # it holds secrets
    started = Started("abc", "boot", 1, 2, 3, 4, "2026-01-01T00:00:00.000Z")
    records.write_started(tmp_path, started)
    assert records.read_started(tmp_path) == started
    exited = Exited("abc", exit_code=3, finished_at="2026-01-01T00:00:01.000Z")
    records.write_exited(tmp_path, exited)
    assert records.read_exited(tmp_path) == exited


def test_missing_files_read_as_none(tmp_path: Path) -> None:
    assert records.read_record(tmp_path) is None
    assert records.read_launch(tmp_path) is None
    assert records.read_started(tmp_path) is None
    assert records.read_exited(tmp_path) is None
    assert records.read_subnet(tmp_path / records.SUBNET) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"deployment": ', "not JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        (
            json.dumps({k: v for k, v in REPLICA.items() if k != "fingerprint"}),
            "fingerprint: missing",
        ),
        (json.dumps(REPLICA | {"replica": "1"}), "replica: expected a whole number"),
        (json.dumps(REPLICA | {"replica": True}), "replica: expected a whole number"),
        (json.dumps(REPLICA | {"depends": "db"}), "depends: expected a list"),
        (json.dumps(REPLICA | {"network": {"netns": 7}}), "network.netns: expected a string"),
        (json.dumps(REPLICA | {"config": []}), "config: expected an object"),
    ],
)
def test_a_corrupt_record_is_an_error_naming_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / records.RECORD
    path.write_text(text)
    with pytest.raises(PermanentDriverError) as caught:
        records.read_record(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a valid record: "), message
    assert problem in message, message


def test_a_corrupt_network_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / records.SUBNET, {k: v for k, v in SUBNET.items() if k != "bridge"})
    with pytest.raises(
        PermanentDriverError, match=rf"^{path}: not a valid record: bridge: missing"
    ):
        records.read_subnet(path)


@pytest.mark.parametrize("text", ['{"launch": ', "[]", json.dumps({**STARTED, "pid": None})])
def test_an_unreadable_report_of_the_monitor_counts_as_not_written(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / records.STARTED).write_text(text)
    (tmp_path / records.EXITED).write_text(text.replace('"pid": null', '"signal": "x"'))
    assert records.read_started(tmp_path) is None
    assert records.read_exited(tmp_path) is None


def test_the_exit_code_as_the_shell_reports_it() -> None:
    assert Exited("l", exit_code=3).code == 3
    assert Exited("l", exit_code=0).code == 0
    assert Exited("l", signal=9).code == 137
    assert Exited("l", error="cannot start: exec 'x': No such file").code == 127
    assert Exited("l").code is None


def test_the_store_lists_around_a_corrupt_record_and_reports_it_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "deployments")
    good = store.replica_dir(WorkloadId("demo", "web", 1))
    bad = store.replica_dir(WorkloadId("demo", "web", 2))
    _write(good / records.RECORD, REPLICA)
    _write(bad / records.RECORD, {k: v for k, v in REPLICA.items() if k != "fingerprint"})
    run = store.run_dir(RunId("demo", "migrate", "manual-1"))
    _write(run / records.RECORD, RUN)
    with caplog.at_level(logging.WARNING):
        listed = list(store.listed(store.workload_dirs()))
    assert [(where, r.replica) for where, r in listed] == [(good, 1)]
    assert f"{bad / records.RECORD}: not a valid record: fingerprint: missing" in caplog.text
    assert [r.run for _, r in store.listed(store.run_dirs())] == ["manual-1"]
    with pytest.raises(PermanentDriverError, match=str(bad / records.RECORD)):
        store.record(WorkloadId("demo", "web", 2))
    with pytest.raises(NotFound, match="demo/web/3: no such workload"):
        store.record(WorkloadId("demo", "web", 3))
    assert store.record(WorkloadId("demo", "web", 1)) == (good, Record.from_json(REPLICA))


def test_the_store_layout(tmp_path: Path) -> None:
    root = tmp_path / "deployments"
    store = Store(root)
    assert store.replica_dir(WorkloadId("d", "s", 2)) == root / "d/services/s/2"
    assert store.replica_dir(WorkloadId("d", "s", None)) == root / "d/services/s/definition"
    assert store.run_dir(RunId("d", "s", "n1")) == root / "d/runs/s/n1"
    assert store.subnet_path("d") == root / "d/network.json"
    where = store.replica_dir(WorkloadId("d", "s", 2))
    _write(where / records.RECORD, REPLICA)
    (where / "output.log").write_text("x\n")
    store.remove_dir(where)
    assert not root.exists() or not any(root.iterdir())  # empty parents are pruned

"""The systemd side: the unit verifies with ``systemd-analyze verify`` and keeps the
settings the daemon depends on, the example config is a valid config, and the daemon
speaks the notify protocol (READY, STATUS, STOPPING) to a real datagram socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.daemon.notify import Notifier
from reconciler.settings import load_settings
from tests.conftest import REPO
from tests.daemon_support import Daemon
from tests.support import unavailable, wait_for

pytest_plugins = ["tests.daemon_support"]

UNIT = REPO / "contrib" / "systemd" / "zlayer.service"
EXAMPLE = REPO / "contrib" / "systemd" / "config.toml"


def _settings(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def test_the_unit_verifies_and_keeps_what_the_daemon_needs(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    text = UNIT.read_text()
    settings = _settings(text)
    assert settings["Type"] == "notify"
    assert settings["KillMode"] == "process", "stopping the daemon must not kill workloads"
    assert settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"] and settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "PrivateNetwork" not in settings and "RestrictNamespaces" not in settings
    assert "AF_NETLINK" in settings["RestrictAddressFamilies"]  # pyroute2 needs netlink
    executable = Path(sys.executable).parent / "zlayer"
    assert executable.exists(), f"{executable}: the installed zlayer script"
    unit = tmp_path / "zlayer.service"
    unit.write_text(text.replace("/usr/local/bin/zlayer", str(executable)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "zlayer.service" not in done.stderr, done.stderr  # no warnings about the unit


def test_the_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.daemon.source == "git" and settings.daemon.resync == 30
    assert settings.backoff.cap == 300 and settings.daemon.socket == Path("/run/zlayer/zlayer.sock")


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    return sock


def test_notifier_sends_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with _listen(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        notifier = Notifier()
        assert notifier.ready() and notifier.status("two\nlines") and notifier.watchdog()
        assert [sock.recv(4096) for _ in range(3)] == [b"READY=1", b"STATUS=two lines",
                                                         b"WATCHDOG=1"]  # fmt: skip
        assert notifier.watchdog_interval() == 2.0
        monkeypatch.setenv("WATCHDOG_PID", "1")
        assert Notifier().watchdog_interval() is None  # meant for another process
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert Notifier().ready() is False


def test_the_daemon_notifies_systemd(daemon_host: Daemon, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "empty.yaml").write_text("version: v1\ndeployment: nothing\nservices: {}\n")
    path = tmp_path / "notify.sock"
    with _listen(path) as sock:
        daemon_host.env = {**daemon_host.env, "NOTIFY_SOCKET": str(path)}
        daemon_host.configure(f'path = "{specs}"')
        daemon_host.start(wait_ready=False)
        messages = [sock.recv(4096).decode()]
        messages += [sock.recv(4096).decode()]
        assert messages[0] == "READY=1"
        assert messages[1].startswith("STATUS=revision sha256:"), messages
        assert daemon_host.terminate() == 0
        rest = wait_for(lambda: sock.recv(4096).decode(), "STOPPING=1")
        assert rest == "STOPPING=1"
    assert os.path.exists(daemon_host.state / "journal.db")

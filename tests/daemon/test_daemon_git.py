"""The daemon following a real git repository (a bare "remote" and a working clone
that pushes to it), on the process runtime: commits converge the host, a broken
commit leaves the last good revision running, a force-push and an unsigned commit
are refused, a remote that goes away and comes back; and webhooks over real HTTP,
where every abuse (unsigned, wrong HMAC, replayed, oversized) causes no fetch."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.test_daemon import DEP, running, sleeper
from tests.daemon_support import Daemon, git
from tests.support import needs_root, unavailable, wait_for

pytest_plugins = ["tests.daemon_support"]


class Repo:
    def __init__(self, root: Path, head: str = "main") -> None:
        """``head``: the branch the bare repository's HEAD names (``git init --bare``
        names master); the team pushes main."""
        self.remote = root / "remote.git"
        self.work = root / "work"
        git(root, "init", "-q", "--bare", "-b", head, str(self.remote))
        git(root, "clone", "-q", str(self.remote), str(self.work))
        git(self.work, "checkout", "-q", "-b", "main")

    def commit(self, services: dict[str, Any] | str, message: str, *flags: str) -> str:
        specs = self.work / "hosts" / "h1"
        specs.mkdir(parents=True, exist_ok=True)
        text = (
            services
            if isinstance(services, str)
            else json.dumps({"version": "v1", "deployment": DEP, "services": services}, indent=2)
        )
        (specs / "app.yaml").write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", *flags, "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *flags: str) -> None:
        git(self.work, "push", "-q", *flags, "origin", "main")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def applied(daemon: Daemon) -> str | None:
    return daemon.status()["applied"]["revision"]


@pytest.mark.slow
def test_commits_converge_broken_and_rewritten_ones_are_refused_remote_comes_back(
    daemon_host: Daemon, repo: Repo
) -> None:
    needs_root("the process runtime's replicas")
    first = repo.commit({"a": sleeper(1)}, "one replica")
    repo.push()
    daemon_host.configure(
        f'repo = "{repo.remote}"\nbranch = "main"\nsubdir = "hosts/h1"\ninterval = 0.5\nresync = 1'
    )
    daemon_host.start()
    wait_for(lambda: applied(daemon_host) == first, "the first commit applied")
    wait_for(lambda: len(running(daemon_host)) == 1, "a/1")

    second = repo.commit({"a": sleeper(2)}, "two replicas")
    repo.push()
    wait_for(lambda: applied(daemon_host) == second, "the second commit applied")
    two = wait_for(lambda: len(running(daemon_host)) == 2 and running(daemon_host), "a/2")

    broken = repo.commit("version: v1\ndeployment: dmn\nservices:\n  a:\n    scale: 7\n", "bad")
    repo.push()
    invalid = wait_for(lambda: daemon_host.events(kind="revision-invalid"), "refused as invalid")
    assert "hosts/h1/app.yaml:" in invalid[0]["message"]
    assert broken[:12] in daemon_host.status()["problem"]
    assert applied(daemon_host) == second and running(daemon_host) == two

    # history rewritten behind the daemon's back: refused, the last good keeps running
    git(repo.work, "reset", "-q", "--hard", first)
    rewritten = repo.commit({"a": sleeper(3)}, "rewritten history")
    repo.push("--force")
    refused = wait_for(lambda: daemon_host.events(kind="revision-refused"), "the rewrite refused")
    assert "does not descend" in refused[0]["message"] and rewritten[:12] in refused[0]["message"]
    assert "--allow-rewrite" in daemon_host.status()["problem"]
    assert running(daemon_host) == two

    # the remote goes away: last good keeps running, status says so; back: it goes on
    hidden = repo.remote.with_name("hidden.git")
    repo.remote.rename(hidden)
    wait_for(lambda: daemon_host.status()["source"]["unreachable"], "the source unreachable")
    assert running(daemon_host) == two
    hidden.rename(repo.remote)
    git(repo.work, "reset", "-q", "--hard", second)
    third = repo.commit({"a": sleeper(1)}, "back to one, on top of the applied history")
    repo.push("--force")
    wait_for(lambda: applied(daemon_host) == third, "a descendant applied after the outage")
    assert daemon_host.status()["source"]["unreachable"] is None
    wait_for(lambda: len(running(daemon_host)) == 1, "scaled back to 1")


@pytest.mark.slow
def test_a_branch_is_followed_when_the_remotes_head_names_one_nobody_pushed(
    daemon_host: Daemon, tmp_path: Path
) -> None:
    """``zlayer daemon --repo URL --branch main`` on a bare repository made by ``git init
    --bare`` (HEAD: master) to which main is pushed: applied, and so is the next push
    (times given as durations, ``--interval 500ms``)."""
    needs_root("the process runtime's replicas")
    (tmp_path / "bare-master").mkdir()
    repo = Repo(tmp_path / "bare-master", head="master")
    first = repo.commit({"a": sleeper(1)}, "one replica")
    repo.push()
    daemon_host.configure()
    daemon_host.start(
        "--repo", str(repo.remote), "--branch", "main", "--path", "hosts/h1",
        "--interval", "500ms", "--resync", "1s",
    )  # fmt: skip
    wait_for(lambda: applied(daemon_host) == first, "the first commit applied")
    second = repo.commit({"a": sleeper(2)}, "two replicas")
    repo.push()
    wait_for(lambda: applied(daemon_host) == second, "the second commit applied")
    wait_for(lambda: len(running(daemon_host)) == 2, "a/2")


@pytest.fixture
def gnupg(tmp_path: Path) -> Any:
    """A GnuPG home with a signing key, and a directory with its public key."""
    if shutil.which("gpg") is None:
        unavailable("gpg is not installed: signature verification cannot be tested")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
         "--quick-gen-key", "Signer <signer@example.invalid>", "ed25519", "sign", "never"],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    keys = tmp_path / "trusted"
    keys.mkdir()
    exported = subprocess.run(
        ["gpg", "--batch", "--armor", "--export", "signer@example.invalid"],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (keys / "signer.asc").write_bytes(exported.stdout)
    try:
        yield home, keys
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, timeout=30)


def test_with_verification_only_signed_commits_are_applied(
    daemon_host: Daemon, repo: Repo, gnupg: Any
) -> None:
    needs_root("the process runtime's replicas")
    home, keys = gnupg
    os.environ["GNUPGHOME"] = str(home)  # git commit -S in this process's children
    try:
        signed = repo.commit({"a": sleeper(1)}, "signed", "-Ssigner@example.invalid")
        repo.push()
        daemon_host.configure(
            f'repo = "{repo.remote}"\nbranch = "main"\nsubdir = "hosts/h1"\n'
            f'interval = 0.5\nverify_signatures = true\ntrusted_keys = "{keys}"'
        )
        daemon_host.start()
        wait_for(lambda: applied(daemon_host) == signed, "the signed commit applied")
        unsigned = repo.commit({"a": sleeper(2)}, "unsigned")
        repo.push()
        refused = wait_for(lambda: daemon_host.events(kind="revision-refused"), "refused")
        assert unsigned[:12] in refused[0]["message"] and "not signed" in refused[0]["message"]
        assert applied(daemon_host) == signed
        assert len(running(daemon_host)) == 1
    finally:
        os.environ.pop("GNUPGHOME", None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


CUT = -1
"""The status :func:`_post` gives when the server closed the connection while the body
was still being sent and its answer could not be read (it refused the body)."""


def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # It may answer (413) before the whole body is sent: that answer is read below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("POST", "/v1/webhook", body=body, headers=headers)
        try:
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        except (ConnectionResetError, http.client.RemoteDisconnected):
            return CUT, ""
    finally:
        connection.close()


@pytest.mark.slow
def test_webhooks_fetch_only_when_signed_and_new(daemon_host: Daemon, repo: Repo) -> None:
    needs_root("the process runtime's replicas")
    first = repo.commit({"a": sleeper(1)}, "one")
    repo.push()
    secret = b"s3cret-for-tests"
    (daemon_host.root / "webhook-secret").write_bytes(secret + b"\n")
    port = _free_port()
    daemon_host.configure(
        f'repo = "{repo.remote}"\nbranch = "main"\nsubdir = "hosts/h1"\n'
        f'interval = 3600\nresync = 3600\nlisten = "127.0.0.1:{port}"\n'
        f'webhook_secret_file = "{daemon_host.root / "webhook-secret"}"'
    )
    daemon_host.start()
    wait_for(lambda: applied(daemon_host) == first, "the first commit applied")

    body = json.dumps({"ref": "refs/heads/main"}).encode()
    good = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    base = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    fetched = daemon_host.status()["source"]["last_fetch"]
    status, _ = _post(port, body, {**base, "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": good})
    assert status == 202  # accepted; nothing new to fetch yet
    wait_for(lambda: daemon_host.events(kind="webhook"), "the first webhook recorded")
    # The event precedes the fetch it triggers: wait for that fetch to be done, or it
    # may find the commit pushed next and apply it before the abuses are checked.
    wait_for(
        lambda: (daemon_host.status()["source"]["last_fetch"] or 0) > (fetched or 0),
        "the fetch the first webhook triggered",
    )

    second = repo.commit({"a": sleeper(2)}, "two")
    repo.push()
    wrong = "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()
    abuses = [
        ({**base, "X-GitHub-Delivery": "d-2"}, body),  # unsigned
        ({**base, "X-GitHub-Delivery": "d-3", "X-Hub-Signature-256": wrong}, body),
        ({**base, "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": good}, body),  # replay
    ]
    answers = [_post(port, b, h)[0] for h, b in abuses]
    big = b"x" * (1024 * 1024 + 1)
    big_signature = "sha256=" + hmac.new(secret, big, hashlib.sha256).hexdigest()
    answers.append(
        _post(
            port, big, {**base, "X-GitHub-Delivery": "d-4", "X-Hub-Signature-256": big_signature}
        )[0]
    )
    # The oversized body: 413, or the connection cut before its answer could be read
    # (the server answers as soon as the length is known, while the body still streams).
    assert answers[0] == 401 and answers[1] == 401 and answers[3] in (413, CUT), answers
    assert answers[2] == 200, answers  # a repeated delivery is acknowledged, and ignored
    # A fetch is asked for only after its webhook event is journalled, which happens
    # before the answer: with every answer in, the events are final (no wait needed).
    assert len(daemon_host.events(kind="webhook")) == 1, "an abusive call caused a fetch"
    assert applied(daemon_host) == first

    status, _ = _post(port, body, {**base, "X-GitHub-Delivery": "d-5", "X-Hub-Signature-256": good})
    assert status == 202
    wait_for(lambda: applied(daemon_host) == second, "the pushed commit applied by webhook")
    messages = sorted(str(e["message"]) for e in daemon_host.events(kind="webhook"))
    assert messages == ["webhook d-1", "webhook d-5"], messages

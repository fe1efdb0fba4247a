"""Hostile input, run as users run zlayer (a real subprocess) with memory bounded.

Every case must end with one clear message (a position ``file:line:col`` where there
is one), the documented exit status and no traceback, within a small, measured peak
of memory. Each child runs under an address-space limit (so a runaway allocation
fails fast instead of swapping the machine) and reports its own peak resident set
size, which is asserted. Timeouts are generous guards only, never measurements.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.snapshots import MAX_SNAPSHOT_BYTES
from reconciler.spec.rules import MAX_REPLICAS, MAX_SERVICE_NAME
from reconciler.spec.yamldoc import MAX_EXPANDED_BYTES
from reconciler.statedir import MAX_SECRET_BYTES
from tests.conftest import REPO

ADDRESS_SPACE = 2 * 1024**3
"""The children's address-space limit: far above what any case needs, far below what
the unbounded cases used to take (3.9 GB)."""

PEAK_RSS = 150 * 1024 * 1024
"""Most resident memory a hostile case may take (zlayer itself needs about 45 MB)."""

# Runs zlayer's entry point after limiting the address space; at exit, writes the
# process's peak resident set size (bytes) to the file named by argv[1]. The peak is
# the kernel's high-water mark of this process's own memory (VmHWM), not getrusage's
# ru_maxrss: that one keeps the larger peak of the process before its exec, which
# for a child of pytest is pytest's own memory at the fork (150 MiB and more late in
# a full run, failing the bound for no fault of zlayer's).
_RUNNER = """
import atexit, resource, runpy, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
peak_file = sys.argv[1]
def report():
    with open("/proc/self/status") as status:
        peak = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
    with open(peak_file, "w") as handle:
        handle.write(str(peak))
atexit.register(report)
sys.argv = ["zlayer", *sys.argv[3:]]
runpy.run_module("reconciler", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak: int

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def zlayer(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
) -> Run:
    """Run ``zlayer ARGS`` bounded; ``stdout``: a file to write standard output to."""
    peak_file = cwd / ".peak"
    peak_file.unlink(missing_ok=True)
    command = [sys.executable, "-c", _RUNNER, str(peak_file), str(ADDRESS_SPACE), *args]
    environ = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    environ.update(env or {})
    if stdout is None:
        done = subprocess.run(
            command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120
        )
        out = done.stdout
    else:
        with stdout.open("w") as sink:
            done = subprocess.run(
                command, cwd=cwd, env=environ, stdout=sink, stderr=subprocess.PIPE, text=True,
                timeout=120,
            )  # fmt: skip
        out = ""
    peak = int(peak_file.read_text()) if peak_file.exists() else 0
    return Run(done.returncode, out, done.stderr, peak)


def refused(run: Run, *expected: str) -> None:
    """Exit status 1, every ``expected`` text in the output, no traceback, bounded memory."""
    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output, run.output
    for text in expected:
        assert text in run.output, f"{text!r} not in:\n{run.output}"
    assert 0 < run.peak < PEAK_RSS, f"peak RSS {run.peak / 2**20:.0f} MiB"


def spec(body: str, deployment: str = "demo") -> str:
    return f"version: v1\ndeployment: {deployment}\nservices:\n{body}"


WEB = "  web:\n    image: {name: busybox}\n"


# --- alias expansion, by bytes ---------------------------------------------------------------


def alias_bomb() -> str:
    """180 KB: a 100 KB string aliased 20,000 times (2 GB once expanded)."""
    aliases = ", *a" * 20_000
    return spec(WEB + f'    command:\n      args: [&a "{"x" * 100_000}"{aliases}]\n')


@pytest.mark.parametrize(
    "command",
    [
        ("validate", "bomb.yaml"),
        ("plan", "bomb.yaml", "--runtime", "fake"),
        ("spec", "dump", "bomb.yaml"),
    ],
    ids=lambda c: c[0],
)
def test_a_string_aliased_many_times_is_refused_at_the_alias(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    text = alias_bomb()
    assert 170_000 < len(text) < 190_000
    (tmp_path / "bomb.yaml").write_text(text)
    run = zlayer(*command, cwd=tmp_path)
    # the first alias whose 100 KB take the document past the limit
    crossing = (MAX_EXPANDED_BYTES - 100_000) // 100_000 + 1
    column = text.splitlines()[6].index("*a") + 1 + (crossing - 1) * len(", *a")
    refused(run, f"bomb.yaml:7:{column}:", "alias *a", "more than 4 MiB")


def test_aliases_below_the_byte_limit_still_load(tmp_path: Path) -> None:
    count = MAX_EXPANDED_BYTES // 100_000 - 2  # just under the limit with the string itself
    aliases = ", *a" * count
    (tmp_path / "ok.yaml").write_text(
        spec(WEB + f'    command:\n      args: [&a "{"x" * 100_000}"{aliases}]\n')
    )
    run = zlayer("validate", "ok.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert run.peak < PEAK_RSS


# --- sizes -----------------------------------------------------------------------------------


def test_a_huge_replica_count_is_refused_before_planning(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(
        spec(WEB + "    scale: {mode: fixed, replicas: 100000000}\n")
    )
    for command in (("validate",), ("plan", "--runtime", "fake")):
        run = zlayer(*command, "app.yaml", cwd=tmp_path)
        refused(
            run,
            "app.yaml:6:36: services.web.scale.replicas: scale.replicas is 100000000; "
            f"a service runs at most {MAX_REPLICAS} replicas",
        )
        assert "MemoryError" not in run.output


def test_adaptive_bounds_are_capped_too(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(
        spec(WEB + f"    scale: {{mode: adaptive, min: 1, max: {MAX_REPLICAS + 1}}}\n")
    )
    refused(zlayer("validate", "app.yaml", cwd=tmp_path), "app.yaml:6:42: services.web.scale.max")


def test_a_snapshot_over_the_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB))
    with (tmp_path / "huge.json").open("wb") as handle:  # sparse: 111 MB of nothing
        handle.truncate(111 * 1000 * 1000)
    run = zlayer("plan", "app.yaml", "--observed", "huge.json", cwd=tmp_path)
    refused(run, "huge.json: snapshot is larger than 64 MiB", "ZLAYER_MAX_SNAPSHOT_MIB")
    assert MAX_SNAPSHOT_BYTES == 64 * 1024 * 1024


def test_an_endless_snapshot_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB))
    run = zlayer(
        "plan", "app.yaml", "--observed", "/dev/zero", cwd=tmp_path,
        env={"ZLAYER_MAX_SNAPSHOT_MIB": "2"},
    )  # fmt: skip
    refused(run, "/dev/zero: snapshot is larger than 2 MiB")


def test_the_snapshot_limit_can_be_raised(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB))
    snapshot = {"format": "zlayer-observed", "format_version": 1, "runtime": "fake"}
    text = json.dumps(snapshot) + " " * (2 * 1024 * 1024)
    (tmp_path / "big.json").write_text(text)
    args = ("plan", "app.yaml", "--observed", "big.json")
    refused(zlayer(*args, cwd=tmp_path, env={"ZLAYER_MAX_SNAPSHOT_MIB": "1"}), "than 1 MiB")
    run = zlayer(*args, cwd=tmp_path, env={"ZLAYER_MAX_SNAPSHOT_MIB": "3"})
    assert run.returncode == 0, run.output
    refused(
        zlayer(*args, cwd=tmp_path, env={"ZLAYER_MAX_SNAPSHOT_MIB": "lots"}),
        "$ZLAYER_MAX_SNAPSHOT_MIB is 'lots'; give a whole number of MiB",
    )


# --- what validate passed and apply refused --------------------------------------------------

ENV_SPEC = spec(
    WEB
    + "    env:\n"
    + '      S1: "$S:../../etc/passwd"\n'
    + '      S2: "$S:"\n'
    + '      S3: "$S:a b"\n'
    + '      "C=D": x\n'
    + '      "": y\n'
    + '      "BAD KEY": z\n'
    + '      NUL: "a\\0b"\n'
    + f"  {'s' * 300}:\n    image: {{name: busybox}}\n"
)


def test_what_apply_refuses_is_refused_by_validate_with_positions(tmp_path: Path) -> None:
    (tmp_path / "env.yaml").write_text(ENV_SPEC)
    run = zlayer("validate", "env.yaml", cwd=tmp_path)
    refused(
        run,
        "env.yaml:7:11: services.web.env.S1: secret reference '$S:../../etc/passwd': "
        "secret name '..' is not valid",
        "env.yaml:8:11: services.web.env.S2: secret reference '$S:': secret name '' is not valid",
        "env.yaml:9:11: services.web.env.S3: secret reference '$S:a b': "
        "secret name 'a b' is not valid",
        "env.yaml:10:14: services.web.env.C=D: env key 'C=D' cannot be passed to a process",
        "env.yaml:11:11: services.web.env.: env key '' cannot be passed",
        "env.yaml:12:18: services.web.env.BAD KEY: env key 'BAD KEY' cannot be passed",
        "env.yaml:13:12: services.web.env.NUL: the value of env NUL holds a NUL byte",
        f"env.yaml:15:5: services.{'s' * 300}: service name is 300 characters long; "
        f"at most {MAX_SERVICE_NAME} fit",
        "✗ 8 problems in 1 file",
    )


def test_the_longest_service_name_fits_the_host_name(tmp_path: Path) -> None:
    name = "s" * MAX_SERVICE_NAME
    (tmp_path / "ok.yaml").write_text(
        spec(
            f"  {name}:\n    image: {{name: busybox}}\n    scale: {{mode: fixed, replicas: 1000}}\n"
        )
    )
    run = zlayer("validate", "ok.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.output
    assert len(f"{name}-{MAX_REPLICAS}".encode()) <= 64  # the process runtime's host name


# --- tracebacks ------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_the_all_zero_ref_plans_everything_as_new(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "app.yaml").write_text(spec(WEB + "    scale: {mode: fixed, replicas: 2}\n"))
    run = zlayer("plan", "app.yaml", "--against-ref", "0" * 40, "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.output
    document = json.loads(run.stdout)
    assert document["observed_from"] == "nothing (all-zero ref: new branch)"
    assert [a["kind"] for a in document["actions"]] == ["create", "create"]
    assert run.peak < PEAK_RSS


@needs_git
def test_shallow_clones_and_empty_repositories_get_their_own_hint(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "app.yaml").write_text(spec(WEB))
    refused(
        zlayer("plan", "app.yaml", "--against-ref", "HEAD", cwd=empty),
        "--against-ref HEAD: the repository has no commits yet",
        "all-zero ref",
    )
    source = tmp_path / "source"
    source.mkdir()
    git(source, "init", "-q")
    (source / "app.yaml").write_text(spec(WEB))
    git(source, "add", "app.yaml")
    git(source, "commit", "-q", "-m", "one")
    (source / "app.yaml").write_text(spec(WEB.replace("busybox", "nginx")))
    git(source, "commit", "-q", "-am", "two")
    git(tmp_path, "clone", "-q", "--depth", "1", source.as_uri(), "shallow")
    refused(
        zlayer("plan", "app.yaml", "--against-ref", "HEAD~1", cwd=tmp_path / "shallow"),
        "--against-ref HEAD~1: no such commit, branch or tag in this shallow clone",
        "git fetch --unshallow",
    )


MALFORMED_CONFIGS = [
    ({"image": "busybox", "env": ["A=1"]}, "configs.sha256:x.env: must be an object"),
    ({"image": "busybox", "env": {"A": 5}}, "configs.sha256:x.env.A: must be a string or an"),
    ({"image": ["busybox"]}, "configs.sha256:x.image: must be a string"),
]


@pytest.mark.parametrize(("config", "message"), MALFORMED_CONFIGS)
def test_a_snapshot_with_a_malformed_config_is_a_clear_error(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB + '    env: {P: "$S:db"}\n'))
    workload = {
        "deployment": "demo", "service": "web", "replica": 1,
        "fingerprint": "sha256:x", "status": "running",
    }  # fmt: skip
    snapshot = {
        "format": "zlayer-observed", "format_version": 1, "runtime": "fake",
        "workloads": [workload], "configs": {"sha256:x": config},
    }  # fmt: skip
    (tmp_path / "snap.json").write_text(json.dumps(snapshot))
    run = zlayer("plan", "app.yaml", "--observed", "snap.json", cwd=tmp_path)
    refused(run, "snap.json: not a valid zlayer-observed snapshot: " + message)


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")


@needs_dev_full
@pytest.mark.parametrize(
    "command",
    [
        ("plan", "app.yaml", "--runtime", "fake", "--out", "/dev/full"),
        ("observe", "--runtime", "fake", "--out", "/dev/full"),
    ],
    ids=["plan", "observe"],
)
def test_out_to_a_full_disk_is_a_clear_error(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB))
    run = zlayer(*command, cwd=tmp_path)
    refused(run, "--out /dev/full: cannot write: No space left on device")


@needs_dev_full
@pytest.mark.parametrize(
    "command",
    [
        ("validate", "app.yaml"),
        ("plan", "app.yaml", "--runtime", "fake"),
        ("plan", "app.yaml", "--runtime", "fake", "--format", "json"),
        ("spec", "dump", "app.yaml"),
        ("schema",),
    ],
    ids=lambda c: "-".join(c[:3]),
)
def test_standard_output_to_a_full_disk_is_a_clear_error(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB))
    run = zlayer(*command, cwd=tmp_path, stdout=Path("/dev/full"))
    refused(run, "Error: cannot write the output: No space left on device")


def test_an_ascii_only_terminal_gets_escapes_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB))
    ascii_only = {"PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    run = zlayer("validate", "app.yaml", cwd=tmp_path, env=ascii_only)
    assert run.returncode == 0, run.output
    assert run.stdout.strip() == "\\u2713 1 file valid"
    (tmp_path / "bad.yaml").write_text(spec(WEB + '    env: {"é=": x}\n'))
    run = zlayer("validate", "bad.yaml", cwd=tmp_path, env=ascii_only)
    refused(run, "env key '\\xe9=' cannot be passed", "\\u2717 1 problem in 1 file")
    run = zlayer("plan", "app.yaml", "--runtime", "fake", cwd=tmp_path, env=ascii_only)
    assert run.returncode == 0 and "Traceback" not in run.output, run.output


def secrets_case(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    (tmp_path / "app.yaml").write_text(spec(WEB + '    env: {P: "$S:db"}\n'))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    return secrets / "db", ("plan", "app.yaml", "--runtime", "fake", "--secrets-dir", "secrets")


def test_a_secret_that_is_a_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    secret, args = secrets_case(tmp_path)
    secret.symlink_to("/dev/zero")
    refused(zlayer(*args, cwd=tmp_path), "secret db: cannot read secrets/db: not a regular file")


def test_a_secret_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    secret, args = secrets_case(tmp_path)
    os.mkfifo(secret)
    assert stat.S_ISFIFO(secret.stat().st_mode)
    refused(zlayer(*args, cwd=tmp_path), "secret db: cannot read secrets/db: not a regular file")


def test_a_secret_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    secret, args = secrets_case(tmp_path)
    secret.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    refused(zlayer(*args, cwd=tmp_path), "secret db: cannot read secrets/db: larger than 64 KiB")
    secret.write_bytes(b"x" * MAX_SECRET_BYTES)
    run = zlayer(*args, cwd=tmp_path)
    assert run.returncode == 0, run.output


# --- clearer messages ------------------------------------------------------------------------


def test_a_tab_used_for_indentation_says_so(tmp_path: Path) -> None:
    (tmp_path / "tab.yaml").write_text(spec("\tweb:\n    image: {name: busybox}\n"))
    refused(
        zlayer("validate", "tab.yaml", cwd=tmp_path),
        "tab.yaml:4:1: invalid YAML: a tab character where YAML expects indentation",
        "hint: replace the tab with spaces",
    )


@pytest.mark.parametrize(
    ("codec", "named", "iconv"),
    [
        ("utf-16", "UTF-16", "UTF-16"),
        ("utf-16-le", "UTF-16", "UTF-16LE"),
        ("utf-32", "UTF-32", "UTF-32"),
    ],
)
def test_a_wide_encoding_is_named_with_a_hint_to_convert(
    tmp_path: Path, codec: str, named: str, iconv: str
) -> None:
    (tmp_path / "wide.yaml").write_bytes(spec(WEB).encode(codec))
    refused(
        zlayer("validate", "wide.yaml", cwd=tmp_path),
        f"wide.yaml: file is {named} encoded; specs are UTF-8",
        f"iconv -f {iconv} -t UTF-8 wide.yaml > wide.yaml.utf8",
    )


def test_binary_files_stay_binary(tmp_path: Path) -> None:
    (tmp_path / "blob.yaml").write_bytes(bytes(range(256)) * 8)
    refused(zlayer("validate", "blob.yaml", cwd=tmp_path), "binary file (contains NUL bytes)")


def test_a_missing_path_counts_as_a_file_in_the_summary(tmp_path: Path) -> None:
    run = zlayer("validate", "nope.yaml", cwd=tmp_path)
    refused(run, "nope.yaml: no such file or directory", "✗ 1 problem in 1 file")
    assert "0 files" not in run.output


def test_an_unknown_target_lists_the_known_services(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(spec(WEB + "  db:\n    image: {name: postgres}\n"))
    run = zlayer("plan", "app.yaml", "--runtime", "fake", "--target", "nope", cwd=tmp_path)
    refused(
        run, "--target nope: no such service in the specs or the runtime; known: demo/db, demo/web"
    )

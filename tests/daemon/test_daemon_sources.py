"""The daemon's sources on their own: the git tracker against real repositories
(fixed refs, subdirectories, a corrupted clone, option errors) and the directory
watcher against real file writes (editor temp files ignored, bursts debounced)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reconciler.errors import SourceError, SourceUnreachable
from reconciler.sources.git import GitOptions, GitTracker
from reconciler.sources.watch import is_spec_change, watch_specs
from tests.daemon_support import git


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    return bare, work


def _commit(work: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "HEAD")
    return git(work, "rev-parse", "HEAD")


def test_the_tracker_follows_a_branch_a_tag_and_a_subdirectory(
    tmp_path: Path, remote: tuple[Path, Path]
) -> None:
    bare, work = remote
    one = _commit(work, {"ops/a.yaml": "one\n", "other/b.yaml": "x\n", "ops/.hidden.yaml": ""}, "1")
    git(work, "tag", "v1")
    git(work, "push", "-q", "origin", "v1")
    two = _commit(work, {"ops/a.yaml": "two\n"}, "second commit")
    branch = GitTracker(GitOptions(str(bare), branch="main", path="ops"), tmp_path / "t1")
    head = branch.fetch()
    assert head.id == two and head.summary == "second commit"
    files = branch.files(head.id)
    assert [(f.name, f.data) for f in files.files] == [("ops/a.yaml", b"two\n")]
    tag = GitTracker(GitOptions(str(bare), ref="v1", path="ops"), tmp_path / "t2")
    assert tag.fetch().id == one
    default = GitTracker(GitOptions(str(bare)), tmp_path / "t3")
    assert default.fetch().id == two
    missing = branch.files(one).problems
    assert missing == ()
    gone = GitTracker(GitOptions(str(bare), path="nowhere"), tmp_path / "t4")
    problems = gone.files(gone.fetch().id).problems
    assert "no such directory at commit" in problems[0].message


def test_a_corrupted_clone_is_cloned_again(tmp_path: Path, remote: tuple[Path, Path]) -> None:
    bare, work = remote
    first = _commit(work, {"a.yaml": "1\n"}, "1")
    tracker = GitTracker(GitOptions(str(bare), branch="main"), tmp_path / "t")
    assert tracker.fetch().id == first
    objects = tracker.clone_dir / "objects"
    for packed in objects.rglob("*"):
        if packed.is_file():
            packed.unlink()
            packed.write_bytes(b"garbage")
    second = _commit(work, {"a.yaml": "2\n"}, "2")
    assert tracker.fetch().id == second
    assert [f.data for f in tracker.files(second).files] == [b"2\n"]


def test_unreachable_and_unknown_and_bad_options(tmp_path: Path, remote: tuple[Path, Path]) -> None:
    bare, work = remote
    _commit(work, {"a.yaml": "1\n"}, "1")
    with pytest.raises(SourceUnreachable, match="cannot clone"):
        GitTracker(GitOptions(str(tmp_path / "nope.git")), tmp_path / "t0").fetch()
    with pytest.raises(SourceError, match="branch nope does not exist"):
        GitTracker(GitOptions(str(bare), branch="nope"), tmp_path / "t1").fetch()
    with pytest.raises(SourceError, match="not both"):
        GitTracker(GitOptions(str(bare), branch="a", ref="b"), tmp_path / "t2")
    with pytest.raises(SourceError, match="needs --trusted-keys"):
        GitTracker(GitOptions(str(bare), verify_signatures=True), tmp_path / "t3")
    empty = tmp_path / "keys"
    empty.mkdir()
    with pytest.raises(SourceError, match="no public keys"):
        GitTracker(
            GitOptions(str(bare), verify_signatures=True, trusted_keys=empty), tmp_path / "t4"
        )


def test_editor_temp_files_are_not_spec_changes() -> None:
    assert is_spec_change("/s/web.yaml") and is_spec_change("/s/sub/db.yml")
    for name in (".web.yaml.swp", "web.yaml~", "4913", ".#web.yaml", "notes.txt",
                 "web.yaml.tmp", "/s/.git/x.yaml", ".web.yaml"):  # fmt: skip
        assert not is_spec_change(name), name


async def test_the_watcher_debounces_and_ignores_temp_files(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    stop = asyncio.Event()
    batches: asyncio.Queue[set[str]] = asyncio.Queue()

    async def consume() -> None:
        async for batch in watch_specs([specs], stop, debounce_ms=200):
            batches.put_nowait(batch)

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.5)  # the watch is set up
    for n in range(5):  # a burst: one batch
        (specs / "web.yaml").write_text(f"n: {n}\n")
        (specs / "db.yaml").write_text(f"n: {n}\n")
    first = await asyncio.wait_for(batches.get(), 10)
    assert first == {str(specs / "web.yaml"), str(specs / "db.yaml")}
    for name in (".web.yaml.swp", "web.yaml~", "4913", "notes.txt"):
        (specs / name).write_text("noise")
    await asyncio.sleep(1.5)
    assert batches.empty()
    (specs / "web.yaml").write_text("n: 9\n")
    assert await asyncio.wait_for(batches.get(), 10) == {str(specs / "web.yaml")}
    stop.set()
    await asyncio.wait_for(consumer, 5)  # the stop event ends the watch
    with pytest.raises(SourceError, match="no such file"):
        await watch_specs([tmp_path / "missing"], stop).__anext__()


def test_a_branch_is_followed_when_the_remotes_head_names_another_that_does_not_exist(
    tmp_path: Path,
) -> None:
    """``git init --bare`` (its HEAD names master) to which the team pushes main: the
    branch is followed from the first fetch on, fetch after fetch, from one clone;
    following the remote's HEAD says what is wrong."""
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "--initial-branch=master", str(bare))
    git(tmp_path, "init", "-q", "--initial-branch=main", str(work))
    git(work, "remote", "add", "origin", str(bare))
    first = _commit(work, {"ops/a.yaml": "one\n"}, "1")
    tracker = GitTracker(GitOptions(str(bare), branch="main", path="ops"), tmp_path / "t")
    assert tracker.fetch().id == first
    assert [f.data for f in tracker.files(first).files] == [b"one\n"]
    inode = (tracker.clone_dir / "config").stat().st_ino
    second = _commit(work, {"ops/a.yaml": "two\n"}, "2")
    assert tracker.fetch().id == second  # the same clone, not cloned again
    assert (tracker.clone_dir / "config").stat().st_ino == inode
    assert [f.data for f in tracker.files(second).files] == [b"two\n"]

    head = GitTracker(GitOptions(str(bare)), tmp_path / "h")
    with pytest.raises(
        SourceError,
        match=r"names branch master, which does not exist "
        r"\(its branches: main\); follow one with --branch",
    ):
        head.fetch()  # fmt: skip

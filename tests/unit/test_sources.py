"""Reading spec files from paths: order, and file-system trouble as problems."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.sources.files import collect
from reconciler.spec.load import MAX_FILE_BYTES


def test_directories_are_searched_sorted_and_recursively(tmp_path: Path) -> None:
    for rel in ["b.yaml", "a.yml", "sub/c.yaml", "sub/skip.txt", ".hidden.yaml", ".git/x.yaml"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x: 1\n")
    collected = collect([tmp_path])
    names = [Path(f.name).relative_to(tmp_path).as_posix() for f in collected.files]
    assert names == ["a.yml", "b.yaml", "sub/c.yaml"]
    assert collected.problems == ()


def test_a_file_named_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\n")
    collected = collect([tmp_path, tmp_path / "a.yaml"])
    assert len(collected.files) == 1


def test_missing_paths_and_empty_directories_are_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    collected = collect([tmp_path / "nope.yaml", tmp_path / "empty"])
    messages = [p.render() for p in collected.problems]
    assert messages == [
        f"{tmp_path / 'nope.yaml'}: no such file or directory",
        f"{tmp_path / 'empty'}: no *.yaml or *.yml files in this directory",
    ]


def test_symlink_loops_end_with_a_problem(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\n")
    (tmp_path / "loop").symlink_to(tmp_path)
    (tmp_path / "self.yaml").symlink_to(tmp_path / "self.yaml")
    collected = collect([tmp_path])
    assert [Path(f.name).name for f in collected.files] == ["a.yaml"]
    text = "\n".join(p.render() for p in collected.problems)
    assert "symlink loop" in text
    assert "self.yaml: cannot read" in text


def test_fifos_and_oversized_files_are_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")  # reading it would block forever
    (tmp_path / "big.yaml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    collected = collect([tmp_path])
    assert collected.files == ()
    text = "\n".join(p.render() for p in collected.problems)
    assert "pipe.yaml: not a regular file" in text
    assert "big.yaml: file is larger than 1 MiB" in text


def test_unreadable_directory_is_a_problem(tmp_path: Path) -> None:
    # Root reads through any mode bits, so make the entry a dangling directory symlink instead.
    (tmp_path / "a.yaml").write_text("x: 1\n")
    (tmp_path / "gone").symlink_to(tmp_path / "missing-dir")
    collected = collect([tmp_path, tmp_path / "gone"])
    assert [Path(f.name).name for f in collected.files] == ["a.yaml"]
    assert [p.render() for p in collected.problems] == [
        f"{tmp_path / 'gone'}: no such file or directory"
    ]

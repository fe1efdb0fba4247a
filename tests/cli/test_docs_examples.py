"""The manual's shell examples that need no runtime, run as written, and the README's
start page held to the CLI it describes.

An example that is run is a fenced ``console`` block in ``docs/**/*.md`` or README.md
(see docs/development.md, "Examples that are run"): each ``$ zlayer …`` line is a
command, run from the repository's root as ``python -m reconciler …`` (no shell); the
lines after it are output that must appear, in order, in what it prints; the exit
status is 0 unless ``<!-- docs-test: exit=N -->`` right before the block says otherwise.
Examples that need a runtime are ``sh`` blocks and are not run here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from reconciler.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

MARKER = re.compile(r"<!--\s*docs-test:(?P<args>.*?)-->")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


@dataclass(frozen=True)
class Example:
    where: str
    """``docs/plan.md:12``: the file and line of the command."""
    command: str
    shown: tuple[str, ...]
    """The output lines the block shows after the command."""
    exit_code: int


def parse_marker(args: str, where: str) -> int:
    match = re.fullmatch(r"\s*exit=(\d+)\s*", args)
    if match is None:
        raise ValueError(f"{where}: unknown docs-test marker {args.strip()!r} (want exit=N)")
    return int(match.group(1))


def blocks(text: str, where: str) -> list[tuple[int, str, list[str], int | None]]:
    """Top-level fenced blocks: (first line number, info string, lines, marked exit)."""
    found: list[tuple[int, str, list[str], int | None]] = []
    lines = text.splitlines()
    marked: tuple[int, int] | None = None  # (line index of the marker, exit)
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.fullmatch(line.strip())
        fence = FENCE.match(line)
        if marker is not None:
            if marked is not None:
                raise _stray(where, marked[0])
            marked = (i, parse_marker(marker.group("args"), f"{where}:{i + 1}"))
        elif fence is not None:
            opener = fence.group("fence")
            end = i + 1
            while end < len(lines) and not _closes(lines[end], opener):
                end += 1
            exit_code = None
            if marked is not None:
                if marked[0] != i - 1 or fence.group("info") != "console":
                    raise _stray(where, marked[0])
                exit_code = marked[1]
                marked = None
            found.append((i + 2, fence.group("info"), lines[i + 1 : end], exit_code))
            i = end
        elif marked is not None and line.strip():
            raise _stray(where, marked[0])
        i += 1
    if marked is not None:
        raise _stray(where, marked[0])
    return found


def _stray(where: str, index: int) -> ValueError:
    return ValueError(f"{where}:{index + 1}: docs-test marker not right before a console block")


def _closes(line: str, opener: str) -> bool:
    stripped = line.strip()
    return (
        len(stripped) >= len(opener)
        and set(stripped) == {opener[0]}
        and not line.startswith(" " * 4)
    )


def examples_in(path: Path) -> list[Example]:
    where = str(path.relative_to(REPO))
    examples: list[Example] = []
    for first, info, lines, exit_code in blocks(path.read_text(encoding="utf-8"), where):
        if info != "console":
            continue
        if not lines or not lines[0].startswith("$ "):
            raise ValueError(f"{where}:{first}: a console block starts with a '$ ' command")
        commands = [n for n, line in enumerate(lines) if line.startswith("$ ")]
        for k, n in enumerate(commands):
            end = commands[k + 1] if k + 1 < len(commands) else len(lines)
            examples.append(
                Example(
                    where=f"{where}:{first + n}",
                    command=lines[n][2:].strip(),
                    shown=tuple(line.rstrip() for line in lines[n + 1 : end] if line.strip()),
                    exit_code=0 if exit_code is None else exit_code,
                )
            )
    return examples


EXAMPLES = [example for path in DOC_FILES for example in examples_in(path)]


def argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words and words[0] == "zlayer", f"a run example runs zlayer, not {command!r}"
    return [sys.executable, "-m", "reconciler", *words[1:]]


def missing_lines(shown: tuple[str, ...], output: str) -> list[str]:
    """The shown lines that do not appear in ``output``, in order ([] when all do)."""
    printed = [line.rstrip() for line in output.splitlines()]
    at = 0
    for k, line in enumerate(shown):
        try:
            at = printed.index(line, at) + 1
        except ValueError:
            return list(shown[k:])
    return []


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.where} {e.command}" for e in EXAMPLES])
def test_documented_example_runs_as_shown(example: Example, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZLAYER_")}
    env.update(
        ZLAYER_STATE_DIR=str(tmp_path / "state"),
        ZLAYER_CONFIG=str(config),
        DOCKER_HOST=f"unix://{tmp_path / 'no-engine.sock'}",  # no runtime, deterministically
        PYTHONIOENCODING="utf-8",
        NO_COLOR="1",
    )
    run = subprocess.run(
        argv(example.command),
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert run.returncode == example.exit_code, (
        f"{example.where}: `{example.command}` exited {run.returncode}, "
        f"the manual says {example.exit_code}:\n{run.stdout}"
    )
    missing = missing_lines(example.shown, run.stdout)
    assert not missing, (
        f"{example.where}: `{example.command}` did not print, in this order:\n"
        + "\n".join(missing)
        + f"\n--- it printed:\n{run.stdout}"
    )


def test_the_manual_runs_an_example_of_each_runtime_free_command() -> None:
    run = {tuple(shlex.split(e.command)[1:3]) for e in EXAMPLES}
    firsts = {words[0] for words in run if words}
    assert {"validate", "plan", "schema", "observe", "spec", "--version"} <= firsts, firsts
    assert any(e.exit_code == 2 for e in EXAMPLES), "plan --detailed-exitcode's 2 is shown"
    assert len(EXAMPLES) >= 10


def test_the_output_check_fails_on_output_that_differs() -> None:
    printed = "a\nb  \nc\n"
    assert missing_lines(("a", "c"), printed) == []
    assert missing_lines(("b",), printed) == []
    assert missing_lines(("c", "a"), printed) == ["a"]
    assert missing_lines(("a", "x", "c"), printed) == ["x", "c"]


def test_markers_belong_to_console_blocks() -> None:
    assert blocks("<!-- docs-test: exit=2 -->\n```console\n$ zlayer x\n```\n", "t")[0][3] == 2
    for bad in (
        "<!-- docs-test: exit=2 -->\n```sh\nzlayer x\n```\n",
        "<!-- docs-test: exit=2 -->\ntext\n```console\n$ zlayer x\n```\n",
        "<!-- docs-test: exit=2 -->\n",
        "<!-- docs-test: status=2 -->\n```console\n$ zlayer x\n```\n",
    ):
        with pytest.raises(ValueError, match="docs-test marker"):
            blocks(bad, "t")


def test_a_block_inside_a_longer_fence_is_not_run() -> None:
    text = "````markdown\n```console\n$ zlayer nothing\n```\n````\n"
    assert [info for _, info, _, _ in blocks(text, "t")] == ["markdown"]


def command_paths(command: click.Command, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every command a user can run: leaves, and groups that run by themselves."""
    if not isinstance(command, click.Group):
        return {" ".join(prefix)}
    ctx = click.Context(command)
    paths = {" ".join(prefix)} if command.invoke_without_command and prefix else set()
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        assert sub is not None
        paths |= command_paths(sub, (*prefix, name))
    return paths


def readme_table_commands() -> set[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    found = set()
    for cell in re.findall(r"^\| `zlayer ([^`]*)`", section, flags=re.M):
        words = []
        for word in cell.split():
            if not re.fullmatch(r"[a-z][a-z-]*|--version", word):
                break
            words.append(word)
        found.add(" ".join(words))
    return found


def test_the_readme_command_table_lists_every_command_and_no_other() -> None:
    assert readme_table_commands() == command_paths(cli) | {"--version"}


def test_the_readme_quickstart_is_the_main_job_and_the_ci_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    commands = [
        "\n".join(lines)
        for _, info, lines, _ in blocks(quickstart, "README.md")
        if info in {"sh", "console"}
    ]
    assert len(commands) == 2, commands
    assert "zlayer apply specs/hello.yaml" in commands[0]
    assert commands[1] == "bash .ci/run"
    assert (REPO / ".ci" / "run").is_file()
    assert "mkdocs build --strict" in (REPO / ".ci" / "run").read_text()


def test_the_readme_links_resolve() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "the README links into the manual"
    assert [t for t in local if not (REPO / t).exists()] == []

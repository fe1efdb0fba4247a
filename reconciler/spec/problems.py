"""Problems: what is wrong with a spec, and exactly where.

A :class:`Problem` is a value, not an exception: loading collects every problem
in every file so one run reports them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PathPart = str | int
Path = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """``('services', 'web', 'endpoints', 0, 'port')`` → ``services.web.endpoints[0].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based position in a source file."""

    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one spec file.

    ``where`` is the dotted path inside the document (``services.web.scale``);
    empty for problems with the file as a whole.
    """

    file: str
    mark: Mark | None
    where: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        loc = self.file if self.mark is None else f"{self.file}:{self.mark.line}:{self.mark.col}"
        text = f"{loc}: {self.where}: {self.message}" if self.where else f"{loc}: {self.message}"
        return text if self.hint is None else f"{text} (hint: {self.hint})"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": None if self.mark is None else self.mark.line,
            "col": None if self.mark is None else self.mark.col,
            "path": self.where,
            "message": self.message,
            "hint": self.hint,
        }


class ProblemSink:
    """Collects problems for one file, attaching file name and positions."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, mark: Mark | None, where: str, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(self.file, mark, where, message, hint))

"""Every field of the ZLayer v1 model is honoured or said not to be, on each runtime.

Each row of :data:`tests.compat.fields.ROWS` is checked the way ``zlayer validate
--runtime docker|process`` checks it (the same function), and its outcome must be
the one ``field-verdicts.yaml`` records:

* ``warns`` — a warning at the field (or at a block above it, inside the service);
* ``refused`` — an error: nothing would be applied;
* a test (``tests/…py::test_name``) — no warning and no error, and that test, which
  must exist, proves the runtime applies the field.

Every field of the model must be covered by a row (its own, or one above it), so a
field added to the model without a verdict fails here. ``docs/fields.md`` is
generated from the same data (``python -m tests.compat.test_field_verdicts`` writes
it) and must match.
"""

from __future__ import annotations

import re
import sys
import typing
from functools import cache
from pathlib import Path

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from reconciler.reconcile import runtime_problems
from reconciler.spec.load import SourceFile, load_sources
from reconciler.spec.models import DeploymentSpec
from tests.compat.fields import ROWS
from tests.conftest import REPO

VERDICTS_FILE = Path(__file__).with_name("field-verdicts.yaml")
DOC = REPO / "docs" / "fields.md"
RUNTIMES = ("docker", "process")
TEST_REF = re.compile(r"(?P<file>tests/[\w/]+\.py)::(?P<name>test_\w+)")


@cache
def verdicts() -> dict[str, dict[str, str]]:
    data = YAML(typ="safe").load(VERDICTS_FILE.read_text())
    return {str(k): {str(r): str(v) for r, v in row.items()} for k, row in data.items()}


def spec_for(path: str, snippet: str) -> str:
    """A valid spec with one service ``web`` (a host command, so that both runtimes
    can run it) setting what ``snippet`` sets."""
    lines = ["version: v1", "deployment: fields", "services:", "  web:"]
    if not snippet.startswith("image:"):
        lines.append("    image: {name: 'busybox:1'}")
    if not snippet.startswith("command:"):
        lines.append("    command: {entrypoint: [sleep, '60']}")
    if snippet and path.startswith("services."):
        lines.append("    " + snippet)
    elif snippet:
        lines.append(snippet)
    return "\n".join(lines) + "\n"


def _field(where: str) -> str:
    """A problem's path as a row path: no list indexes, no service name."""
    return re.sub(r"\[\d+\]", "", where).replace("services.web", "services", 1)


def outcome(path: str, runtime: str) -> tuple[str, str]:
    """What ``validate --runtime RUNTIME`` says of the row: ``warns``, ``refused`` or
    ``ok``, with the message of the warning or error."""
    loaded = load_sources([SourceFile("fields.yaml", spec_for(path, ROWS[path]).encode())])
    assert loaded.ok, [p.render() for p in loaded.problems]
    errors, warnings = runtime_problems(runtime, loaded.specs)
    if errors:
        return "refused", errors[0].message
    for warning in warnings:
        where = _field(warning.where)
        if where.startswith(path) or (path.startswith(where) and where != "services"):
            return "warns", warning.message
    return "ok", ""


def model_paths() -> set[str]:
    """Every field path of the v1 model (list items and union members included)."""
    found: set[str] = set()

    def walk(model: type[BaseModel], prefix: str, seen: frozenset[type]) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}.{info.alias or name}" if prefix else (info.alias or name)
            found.add(path)
            for sub in _models(info.annotation):
                if sub not in seen:
                    walk(sub, path, seen | {sub})

    walk(DeploymentSpec, "", frozenset())
    return found


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def covered(path: str, paths: set[str]) -> bool:
    """A field has a verdict: its own row, a row above it that sets a block (a row
    for what every spec has covers only itself), or every field inside it has one."""
    if path in ROWS:
        return True
    above = path.rpartition(".")[0]
    while above:
        if ROWS.get(above):
            return True
        above = above.rpartition(".")[0]
    inside = {p for p in paths if p.startswith(path + ".") and "." not in p[len(path) + 1 :]}
    return bool(inside) and all(covered(p, paths) for p in inside)


def test_every_field_of_the_model_has_a_verdict() -> None:
    paths = model_paths()
    uncovered = sorted(p for p in paths if not covered(p, paths))
    assert not uncovered, f"fields without a row in tests/compat/fields.py: {uncovered}"
    assert set(verdicts()) == set(ROWS), set(verdicts()) ^ set(ROWS)
    unknown = sorted(r for r in ROWS if r not in paths)
    assert not unknown, f"rows that are no field of the model: {unknown}"


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("path", list(ROWS))
def test_the_runtime_does_what_the_verdict_says(path: str, runtime: str) -> None:
    wanted = verdicts()[path][runtime]
    got, _ = outcome(path, runtime)
    if wanted in ("warns", "refused"):
        assert got == wanted, f"{path} on {runtime}: expected {wanted}, validate says {got}"
        return
    assert got == "ok", f"{path} on {runtime}: recorded as honoured, but validate {got}"
    match = TEST_REF.fullmatch(wanted)
    assert match, f"{path} on {runtime}: {wanted!r} is neither a verdict nor a test"
    source = (REPO / match["file"]).read_text()
    assert re.search(rf"^(async )?def {match['name']}\(", source, re.M), (
        f"{path} on {runtime}: {wanted} names no test"
    )


def render() -> str:
    """``docs/fields.md``."""
    lines = [
        "# Fields and runtimes",
        "",
        "<!-- generated by `python -m tests.compat.test_field_verdicts`; do not edit -->",
        "",
        "What each field of a ZLayer v1 spec does on each runtime, checked by",
        "`tests/compat/test_field_verdicts.py` the way `zlayer validate --runtime`",
        "checks a spec. **honoured**: applied, and the named test proves it;",
        "**warning**: not applied (or only in part), and `validate --runtime`, `plan`",
        "and `apply` say so at the field's position (`--strict` fails on it);",
        "**refused**: the runtime cannot run it, so nothing is applied. A row covers",
        "the fields below it that have no row of their own.",
        "",
        "| field | set as | docker | process |",
        "|---|---|---|---|",
    ]
    for path, snippet in ROWS.items():
        shown = "; ".join(line.strip() for line in snippet.splitlines()) or "(every spec)"
        shown = shown.replace("|", "\\|")
        cells = [_cell(verdicts()[path][r], outcome(path, r)[1]) for r in RUNTIMES]
        lines.append(f"| `{path}` | `{shown}` | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _cell(verdict: str, message: str) -> str:
    said = message.replace("|", "\\|")
    if verdict == "warns":
        return f"warning: {said}"
    if verdict == "refused":
        return f"refused: {said}"
    match = TEST_REF.fullmatch(verdict)
    return f"honoured (`{match['name']}`)" if match else verdict


def test_the_manual_lists_these_verdicts() -> None:
    assert DOC.read_text() == render(), (
        "docs/fields.md is out of date: run python -m tests.compat.test_field_verdicts"
    )


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}", file=sys.stderr)

"""Differential test: zlayer and ZLayer's reference parser agree on every corpus file.

The reference parser (``zlayer==0.12.10``, the ``oracle`` extra) is the test
oracle. Where it cannot be installed the test skips with the reason; under
``CI=true`` it fails instead. Divergences are read from the one table in
docs/COMPATIBILITY.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from reconciler.spec.load import load_bytes
from tests.support import unavailable

REPO = Path(__file__).resolve().parents[2]
CORPUS = sorted((REPO / "tests" / "compat" / "corpus").glob("*.yaml"))
SPECS = sorted((REPO / "specs").glob("*.yaml"))
TABLE_ROW = re.compile(r"^\| `(?P<file>[^`]+\.yaml)` \| (?P<zl>\w+) \| (?P<ours>\w+) \|", re.M)


def _oracle() -> ModuleType:
    try:
        import zlayer  # the reference parser; only validate_spec is ever called
    except ImportError as exc:
        reason = (
            f"reference parser zlayer==0.12.10 not installed ({exc}); pip install -e '.[oracle]'"
        )
        unavailable(reason)
    return zlayer


def oracle_accepts(text: str) -> bool:
    try:
        _oracle().validate_spec(text)
    except ValueError:
        return False
    return True


def divergences() -> dict[str, tuple[str, str]]:
    table = (REPO / "docs" / "COMPATIBILITY.md").read_text()
    return {m["file"]: (m["zl"], m["ours"]) for m in TABLE_ROW.finditer(table)}


def ours_accepts(data: bytes, name: str) -> bool:
    loaded, problems = load_bytes(data, name)
    assert (loaded is None) == bool(problems)
    return loaded is not None


def test_corpus_is_large_and_mixed() -> None:
    kinds = [p.read_text().splitlines()[0] for p in CORPUS]
    assert len(CORPUS) >= 80
    assert sum(k == "# expect: accept" for k in kinds) >= 40
    assert sum(k == "# expect: reject" for k in kinds) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_same_verdict_as_the_reference_parser(path: Path) -> None:
    data = path.read_bytes()
    text = data.decode()
    header = text.splitlines()[0]
    oracle = oracle_accepts(text)
    ours = ours_accepts(data, path.name)
    listed = divergences().get(path.name)
    # The header documents the oracle's verdict; keep it honest.
    expected_oracle = header in ("# expect: accept",) or header.startswith(
        "# expect: reject-zlayer-only:"
    )
    assert oracle == expected_oracle, f"header says {header!r}, oracle says accept={oracle}"
    if listed is None:
        assert ours == oracle, f"unlisted divergence: ZLayer accept={oracle}, zlayer accept={ours}"
    else:
        assert listed == ("accepts", "rejects")
        assert (oracle, ours) == (True, False), "listed as a divergence but verdicts agree"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_bundled_specs_are_valid_for_both(path: Path) -> None:
    data = path.read_bytes()
    assert oracle_accepts(data.decode())
    assert ours_accepts(data, str(path))


def test_every_listed_divergence_is_in_the_corpus() -> None:
    names = {p.name for p in CORPUS}
    assert set(divergences()) <= names
    assert len(divergences()) >= 10

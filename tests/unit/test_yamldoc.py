"""The YAML layer: 1.2 core scalars, positions, and refusal of hostile input."""

from __future__ import annotations

import math

import pytest

from reconciler.spec.load import MAX_FILE_BYTES, load_bytes
from reconciler.spec.problems import Mark, ProblemSink
from reconciler.spec.yamldoc import (
    MAX_DEPTH,
    MAX_EXPANDED_BYTES,
    MAX_NODES,
    Plain,
    Tagged,
    format_bytes,
    parse_document,
    resolve_plain,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("null", None),
        ("~", None),
        ("", None),
        ("NULL", None),
        ("true", True),
        ("True", True),
        ("FALSE", False),
        ("8080", 8080),
        ("-3", -3),
        ("+5", 5),
        ("0o17", 15),
        ("0x1F", 31),
        ("1.50", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("-.inf", -math.inf),
    ],
)
def test_plain_scalars_resolve_by_yaml_1_2_core(text: str, value: object) -> None:
    resolved = resolve_plain(text)
    assert isinstance(resolved, Plain)
    assert resolved.value == value and type(resolved.value) is type(value)
    assert resolved.text == text


@pytest.mark.parametrize(
    "text", ["yes", "no", "on", "off", "y", "1_000", "0b101", "12:30", "1.2.3"]
)
def test_yaml_1_1_words_stay_strings(text: str) -> None:
    assert resolve_plain(text) == text


def parse(text: str) -> tuple[object, list[str]]:
    sink = ProblemSink("f.yaml")
    doc = parse_document(text, sink)
    return (None if doc is None else doc.data), [p.render() for p in sink.problems]


def test_positions_are_one_based_line_and_column() -> None:
    sink = ProblemSink("f.yaml")
    doc = parse_document("a:\n  b: [1, 'x']\n", sink)
    assert doc is not None
    assert doc.mark_for(("a", "b", 1)) == Mark(2, 10)
    assert doc.mark_for(("a", "b"), key=True) == Mark(2, 3)
    assert doc.mark_for(("a", "b", 1, "missing")) == Mark(2, 10)


def test_quoted_scalars_are_strings_and_nan_resolves() -> None:
    data, problems = parse("a: '8080'\nb: \"true\"\nc: .nan\n")
    assert problems == []
    assert isinstance(data, dict)
    assert data["a"] == "8080" and data["b"] == "true"
    assert math.isnan(data["c"].value)


def test_core_tags_are_ignored_like_serde_yaml_does() -> None:
    # serde_yaml decides by style: !!str on a plain 5 still reads as a number.
    data, _ = parse("a: !!str 5\nb: !!int '5'\n")
    assert data == {"a": Plain(5, "5"), "b": "5"}


def test_leading_zero_integers_and_signed_hex() -> None:
    assert resolve_plain("017") == Plain("017", "017")
    assert resolve_plain("-0x1F") == Plain(-31, "-0x1F")


def test_application_tags_are_kept() -> None:
    data, _ = parse("affinity: !pin 'id=2'\n")
    assert data == {"affinity": Tagged("!pin", "id=2")}


def test_duplicate_keys_are_reported_with_both_positions() -> None:
    _, problems = parse("env:\n  A: 1\n  A: 2\n")
    assert problems == ["f.yaml:3:3: env: duplicate key 'A' (first at line 2, column 3)"]


def test_merge_keys_are_refused() -> None:
    _, problems = parse("base: &b {x: 1}\nsvc:\n  <<: *b\n")
    assert problems == ["f.yaml:3:3: svc: merge keys (<<) are not supported; write the keys out"]


def test_aliases_share_values() -> None:
    data, problems = parse("a: &x [1, 2]\nb: *x\n")
    assert problems == [] and isinstance(data, dict)
    assert data["a"] is data["b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no YAML document"),
        ("# just a comment\n", "no YAML document"),
        ("a: 1\n---\nb: 2\n", "exactly one YAML document"),
        ("a: 1\n---\n# trailing\n", "exactly one YAML document"),
        ("a: [1\n", "invalid YAML"),
        ("a: *nothing\n", "unknown anchor"),
        ("[" * (MAX_DEPTH + 1), f"nesting deeper than {MAX_DEPTH}"),
        ("[" * 1_000_000, f"nesting deeper than {MAX_DEPTH}"),
    ],
)
def test_bad_documents_are_refused(text: str, message: str) -> None:
    data, problems = parse(text)
    assert data is None
    assert len(problems) == 1 and message in problems[0], problems


def test_alias_bomb_is_refused_without_expanding() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    data, problems = parse("\n".join(lines) + "\n")
    assert data is None
    assert f"more than {MAX_NODES} nodes" in problems[0]


def test_aliases_are_counted_by_the_bytes_they_expand_to() -> None:
    # 16 aliases of a 300 KB string: few nodes, 5.1 MB of text
    text = f'a: &s "{"é" * 150_000}"\nb: [{", ".join(["*s"] * 16)}]\n'
    sink = ProblemSink("bomb.yaml")
    assert parse_document(text, sink) is None
    (problem,) = sink.problems
    assert "more than 4 MiB of scalar text at alias *s" in problem.message
    # bytes, not characters ("é" is 2 bytes): the 13th alias crosses 4 MiB; counted in
    # characters, all 16 would pass
    assert problem.mark == Mark(2, 5 + 12 * 4)


def test_anchored_collections_count_the_bytes_inside_them() -> None:
    text = f'a: &m {{k: "{"x" * 1_000_000}"}}\nb: [*m, *m, *m, *m]\n'
    sink = ProblemSink("bomb.yaml")
    assert parse_document(text, sink) is None
    assert sink.problems[0].mark == Mark(2, 17)  # the fourth alias
    assert "alias *m" in sink.problems[0].message


def test_aliases_under_the_byte_limit_share_their_value() -> None:
    size = MAX_EXPANDED_BYTES // 4 - 100
    text = f'a: &s "{"x" * size}"\nb: [*s, *s, *s]\n'
    sink = ProblemSink("ok.yaml")
    doc = parse_document(text, sink)
    assert sink.problems == [] and doc is not None
    assert all(v is doc.data["a"] for v in doc.data["b"])


@pytest.mark.parametrize(
    ("size", "text"),
    [(300, "300 bytes"), (64 * 1024, "64 KiB"), (1024 * 1024, "1 MiB"), (3 << 29, "1.5 GiB")],
)
def test_sizes_are_said_one_way(size: int, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    ("text", "mark"),
    [
        ("a: 1\nb:\n\tc: 2\n", Mark(3, 1)),
        ("a:\n  - x\n  -\ty: 1\n", Mark(3, 4)),
    ],
)
def test_a_tab_used_for_indentation_says_so(text: str, mark: Mark) -> None:
    sink = ProblemSink("tab.yaml")
    assert parse_document(text, sink) is None
    (problem,) = sink.problems
    assert problem.mark == mark
    assert "a tab character where YAML expects indentation" in problem.message
    assert problem.hint == "replace the tab with spaces"


def test_a_tab_inside_a_value_is_no_problem() -> None:
    sink = ProblemSink("ok.yaml")
    doc = parse_document('a: "x\ty"\nb: c\td\n', sink)
    assert sink.problems == [] and doc is not None
    assert doc.data == {"a": "x\ty", "b": "c\td"}


@pytest.mark.parametrize(
    ("codec", "named", "iconv"),
    [
        ("utf-16", "UTF-16", "UTF-16"),
        ("utf-16-be", "UTF-16", "UTF-16BE"),
        ("utf-16-le", "UTF-16", "UTF-16LE"),
        ("utf-32", "UTF-32", "UTF-32"),
        ("utf-32-le", "UTF-32", "UTF-32LE"),
    ],
)
def test_wide_encodings_are_named_with_a_hint(codec: str, named: str, iconv: str) -> None:
    data = "version: v1\ndeployment: café\n".encode(codec)
    loaded, problems = load_bytes(data, "my spec.yaml")
    assert loaded is None
    (problem,) = problems
    assert problem.message == f"file is {named} encoded; specs are UTF-8"
    assert problem.hint is not None
    assert problem.hint.startswith(f"convert it: iconv -f {iconv} -t UTF-8 'my spec.yaml' > ")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"version: v1\n\x00\x01\x02", "binary file"),
        (b"version: v1\ndeployment: caf\xe9\n", "not valid UTF-8 (byte 0xe9)"),
        (b"a: \x07\n", "invalid character"),
        (b" " * (MAX_FILE_BYTES + 1), "file is larger than 1 MiB; not a spec"),
    ],
)
def test_hostile_bytes_get_a_clear_error(data: bytes, message: str) -> None:
    loaded, problems = load_bytes(data, "bad.yaml")
    assert loaded is None
    assert len(problems) == 1 and message in problems[0].render()


def test_invalid_utf8_points_at_the_byte() -> None:
    _, problems = load_bytes(b"version: v1\ndeployment: caf\xe9\n", "bad.yaml")
    assert problems[0].mark == Mark(2, 16)


def test_bom_is_accepted() -> None:
    loaded, problems = load_bytes("\ufeffversion: v1\ndeployment: demo\n".encode(), "bom.yaml")
    assert problems == [] and loaded is not None

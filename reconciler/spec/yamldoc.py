"""YAML → plain Python values that remember where every value came from.

ZLayer reads specs with serde_yaml: YAML 1.2 core schema, one document per
file, no merge keys, and string-typed fields receive the *source text* of a
scalar (``A: 8080`` gives ``"8080"``, ``B: 1.50`` gives ``"1.50"``). To match
that, plain scalars that resolve to something other than a string are kept as
:class:`Plain` (value + source text), and the spec models decide per field
which of the two they want.

Parsing runs on libyaml's C parser (``ruamel.yaml.clib``), but values are
built here from the *event stream* with an explicit stack instead of the
recursive composer. That keeps hostile input cheap and bounded: nesting depth
is checked as events arrive (libyaml is lazy, so a megabyte of ``[`` costs
nothing), and aliases are counted by the size of what they expand to, so an
alias bomb is refused without ever being expanded. Shared (aliased) values are
the same Python objects, never copies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import events as ev
from ruamel.yaml.cyaml import CParser  # type: ignore[attr-defined]
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from reconciler.spec.problems import Mark, Path, ProblemSink, format_path

MAX_DEPTH = 64
"""Deepest nesting accepted; real specs stay below 12 (serde_yaml stops at 128)."""

MAX_NODES = 250_000
"""Most nodes a document may expand to, aliases counted at their full size."""

CORE_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True, slots=True)
class Plain:
    """An unquoted scalar that YAML 1.2 core resolves to null, a bool, an int or a float.

    Decimal digits with a leading zero (``017``) are a Plain whose value is the text:
    serde_yaml refuses them as integers but reads them as floats (17.0).
    """

    value: bool | int | float | None
    text: str


@dataclass(frozen=True, slots=True)
class Tagged:
    """A node with an application tag such as ``!pin "id=2"``."""

    tag: str
    value: Any


@dataclass(slots=True)
class Document:
    """A parsed document: the values plus a position for every node."""

    data: Any
    marks: dict[Path, Mark] = field(default_factory=dict)
    key_marks: dict[Path, Mark] = field(default_factory=dict)

    def mark_for(self, path: Path, *, key: bool = False) -> Mark | None:
        """Position of ``path`` (of its key when ``key``), else of its nearest ancestor."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        for end in range(len(path), -1, -1):
            mark = self.marks.get(path[:end])
            if mark is not None:
                return mark
        return None


class YamlFatal(Exception):
    """Parsing cannot go on; the message is already user-facing."""

    def __init__(self, mark: Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


_INT_RE = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_LEADING_ZERO_RE = re.compile(r"[-+]?0[0-9]+")
_OCT_RE = re.compile(r"[-+]?0o[0-7]+")
_HEX_RE = re.compile(r"[-+]?0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF_RE = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN_RE = re.compile(r"\.(nan|NaN|NAN)")
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})


def resolve_plain(text: str) -> Plain | str:
    """Resolve an unquoted scalar by the YAML 1.2 core schema, as serde_yaml does.

    serde_yaml's deviations are kept: a sign is allowed on hex and octal
    (``-0x1F``), and decimal integers with a leading zero (``017``) are no integers.
    """
    if text in _NULLS:
        return Plain(None, text)
    if text in _TRUES:
        return Plain(True, text)
    if text in _FALSES:
        return Plain(False, text)
    first = text[0]
    if not (first.isdigit() or first in "+-."):
        return text
    if _INT_RE.fullmatch(text):
        return Plain(int(text), text)
    if _LEADING_ZERO_RE.fullmatch(text):
        return Plain(text, text)
    if _OCT_RE.fullmatch(text) or _HEX_RE.fullmatch(text):
        return Plain(int(text, 0), text)
    if _FLOAT_RE.fullmatch(text):
        return Plain(float(text), text)
    if _INF_RE.fullmatch(text):
        return Plain(-math.inf if text[0] == "-" else math.inf, text)
    if _NAN_RE.fullmatch(text):
        return Plain(math.nan, text)
    return text


def _mark(event: Any) -> Mark:
    m = event.start_mark
    return Mark(m.line + 1, m.column + 1)


def _scalar_value(event: ev.ScalarEvent) -> Any:
    """serde_yaml reads a scalar by its style, not its tag: ``!!str 5`` is still the
    number 5 for a number field and ``!!int "5"`` still a string. Application tags
    (``!pin``) are kept for the fields that give them meaning."""
    text: str = event.value
    tag: str | None = event.tag
    value = resolve_plain(text) if event.style in (None, "") else text
    if tag is None or tag == "!" or tag.startswith(CORE_TAG):
        return value
    return Tagged(tag, value)


@dataclass(slots=True)
class _Frame:
    value: dict[str, Any] | list[Any]
    path: Path
    mark: Mark
    anchor: str | None
    tag: str | None
    start: int
    key: str | None = None
    key_mark: Mark | None = None
    skip_value: bool = False


class _Builder:
    """Builds values from parser events; see the module docstring for why."""

    def __init__(self, sink: ProblemSink) -> None:
        self.sink = sink
        self.doc = Document(None)
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.expanded = 0
        self.done = False

    def count(self, n: int, mark: Mark) -> None:
        self.expanded += n
        if self.expanded > MAX_NODES:
            raise YamlFatal(
                mark,
                f"document expands to more than {MAX_NODES} nodes "
                "(aliases counted at full size); refusing to load it",
            )

    def attach(self, value: Any, mark: Mark) -> None:
        if not self.stack:
            self.doc.data = value
            self.doc.marks[()] = mark
            self.done = True
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            path = (*top.path, len(top.value))
            top.value.append(value)
            self.doc.marks[path] = mark
            return
        if top.key is None:
            self.take_key(top, value, mark)
            return
        path = (*top.path, top.key)
        if not top.skip_value:
            top.value[top.key] = value
            self.doc.marks[path] = mark
        top.key, top.key_mark, top.skip_value = None, None, False

    def take_key(self, top: _Frame, value: Any, mark: Mark) -> None:
        where = format_path(top.path)
        if isinstance(value, Plain):
            key = value.text
        elif isinstance(value, str):
            key = value
        else:
            raise YamlFatal(mark, "mapping keys must be plain scalars, not collections or tags")
        assert isinstance(top.value, dict)
        top.key, top.key_mark = key, mark
        if key == "<<":
            self.sink.add(mark, where, "merge keys (<<) are not supported; write the keys out")
            top.skip_value = True
        elif key in top.value:
            first = self.doc.key_marks.get((*top.path, key))
            at = f" (first at line {first.line}, column {first.col})" if first else ""
            self.sink.add(mark, where, f"duplicate key {key!r}{at}")
            top.skip_value = True
        else:
            self.doc.key_marks[(*top.path, key)] = mark

    def start(self, event: Any, container: dict[str, Any] | list[Any]) -> None:
        mark = _mark(event)
        if len(self.stack) >= MAX_DEPTH:
            raise YamlFatal(mark, f"nesting deeper than {MAX_DEPTH} levels; refusing to load it")
        self.count(1, mark)
        if self.stack:
            top = self.stack[-1]
            if isinstance(top.value, dict) and top.key is None:
                raise YamlFatal(mark, "mapping keys must be plain scalars, not collections")
            path = (*top.path, len(top.value) if isinstance(top.value, list) else top.key or "")
        else:
            path = ()
        tag = (
            event.tag
            if event.tag not in (None, "!") and not str(event.tag).startswith(CORE_TAG)
            else None
        )
        self.stack.append(_Frame(container, path, mark, event.anchor, tag, self.expanded - 1))

    def end(self) -> None:
        frame = self.stack.pop()
        value: Any = frame.value
        if frame.tag is not None:
            value = Tagged(frame.tag, value)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (value, self.expanded - frame.start)
        self.attach(value, frame.mark)

    def scalar(self, event: ev.ScalarEvent) -> None:
        mark = _mark(event)
        self.count(1, mark)
        value = _scalar_value(event)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1)
        self.attach(value, mark)

    def alias(self, event: ev.AliasEvent) -> None:
        mark = _mark(event)
        if event.anchor not in self.anchors:
            raise YamlFatal(mark, f"alias *{event.anchor} refers to an unknown anchor")
        value, size = self.anchors[event.anchor]
        self.count(size, mark)
        self.attach(value, mark)


def parse_document(text: str, sink: ProblemSink) -> Document | None:
    """Parse exactly one YAML document from ``text``.

    Recoverable problems (duplicate keys, merge keys) go to ``sink`` and
    parsing continues; fatal ones are added to ``sink`` and ``None`` is
    returned.
    """
    builder = _Builder(sink)
    parser = CParser(text)
    documents = 0
    try:
        while True:
            event = parser.get_event()
            if event is None or isinstance(event, ev.StreamEndEvent):
                break
            if isinstance(event, ev.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise YamlFatal(
                        _mark(event),
                        "a spec file holds exactly one YAML document; found a second one",
                    )
            elif isinstance(event, ev.ScalarEvent):
                builder.scalar(event)
            elif isinstance(event, ev.MappingStartEvent):
                builder.start(event, {})
            elif isinstance(event, ev.SequenceStartEvent):
                builder.start(event, [])
            elif isinstance(event, ev.MappingEndEvent | ev.SequenceEndEvent):
                builder.end()
            elif isinstance(event, ev.AliasEvent):
                builder.alias(event)
    except YamlFatal as exc:
        sink.add(exc.mark, "", exc.message)
        return None
    except ReaderError as exc:
        sink.add(_offset_mark(text, exc.position), "", f"invalid character: {exc.reason}")
        return None
    except MarkedYAMLError as exc:
        sink.add(_yaml_error_mark(exc), "", _yaml_error_message(exc))
        return None
    except YAMLError as exc:
        sink.add(None, "", f"invalid YAML: {exc}")
        return None
    if documents == 0 or not builder.done:
        sink.add(None, "", "the file holds no YAML document (empty or only comments)")
        return None
    return builder.doc


def _yaml_error_mark(exc: MarkedYAMLError) -> Mark | None:
    mark = exc.problem_mark or exc.context_mark
    return None if mark is None else Mark(mark.line + 1, mark.column + 1)


def _yaml_error_message(exc: MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    return "invalid YAML: " + ("; ".join(parts) if parts else str(exc))


def _offset_mark(text: str, position: int) -> Mark:
    head = text[:position]
    return Mark(head.count("\n") + 1, position - (head.rfind("\n") + 1) + 1)

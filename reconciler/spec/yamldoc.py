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
nothing), and aliases are counted by the size of what they expand to, in
nodes and in bytes of scalar text, so an alias bomb (many small values, or one
large string aliased many times) is refused at the alias that crosses a limit,
without ever being expanded. Shared (aliased) values are the same Python
objects, never copies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.spec.problems import Mark, Path, ProblemSink, format_path

if TYPE_CHECKING:
    from ruamel.yaml.error import MarkedYAMLError

# ruamel.yaml is imported by parse_document, when a file is parsed: a command that
# finds its compiled specs in the cache (reconciler.compile_cache) never loads it.

MAX_DEPTH = 64
"""Deepest nesting accepted; real specs stay below 12 (serde_yaml stops at 128)."""

MAX_NODES = 250_000
"""Most nodes a document may expand to, aliases counted at their full size."""

MAX_EXPANDED_BYTES = 4 * 1024 * 1024
"""Most bytes of scalar text (UTF-8, keys included) a document may expand to, aliases
counted at the size of what they refer to: 4 MiB. A file holds at most 1 MiB, so only
aliases can reach it; without this bound a 180 KB file aliasing a 100 KB string
20,000 times expands to 2 GB when anything walks or copies the values."""

CORE_TAG = "tag:yaml.org,2002:"


@dataclass(slots=True)  # not frozen: frozen dataclasses are slow to build, and loading makes many
class Plain:
    """An unquoted scalar that YAML 1.2 core resolves to null, a bool, an int or a float.

    Decimal digits with a leading zero (``017``) are a Plain whose value is the text:
    serde_yaml refuses them as integers but reads them as floats (17.0).
    """

    value: bool | int | float | str | None
    text: str


@dataclass(slots=True)
class Tagged:
    """A node with an application tag such as ``!pin "id=2"``."""

    tag: str
    value: Any


@dataclass(slots=True)
class Document:
    """A parsed document: the values plus a position for every node."""

    data: Any
    # libyaml's own mark objects (0-based), turned into Marks only when asked for.
    marks: dict[Path, Any] = field(default_factory=dict)
    key_marks: dict[Path, Any] = field(default_factory=dict)

    def mark_for(self, path: Path, *, key: bool = False) -> Mark | None:
        """Position of ``path`` (of its key when ``key``), else of its nearest ancestor."""
        if key and path in self.key_marks:
            return _to_mark(self.key_marks[path])
        for end in range(len(path), -1, -1):
            mark = self.marks.get(path[:end])
            if mark is not None:
                return _to_mark(mark)
        return None


def _to_mark(raw: Any) -> Mark:
    return Mark(raw.line + 1, raw.column + 1)


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
_WORDS: dict[str, bool | None] = {
    **dict.fromkeys(("", "~", "null", "Null", "NULL")),
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}


def resolve_plain(text: str) -> Plain | str:
    """Resolve an unquoted scalar by the YAML 1.2 core schema, as serde_yaml does.

    serde_yaml's deviations are kept: a sign is allowed on hex and octal
    (``-0x1F``), and decimal integers with a leading zero (``017``) are no integers.
    """
    if text in _WORDS:
        return Plain(_WORDS[text], text)
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


def format_bytes(size: int) -> str:
    """``1 MiB``, ``64 KiB``, ``1.5 MiB``, ``300 bytes``: one way to say sizes everywhere."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def _mark(event: Any) -> Mark:
    return _to_mark(event.start_mark)


@dataclass(slots=True)
class _Frame:
    value: dict[str, Any] | list[Any]
    path: Path
    mark: Any
    anchor: str | None
    tag: str | None
    start: int
    start_bytes: int
    key: str | None = None
    skip_value: bool = False


class _Builder:
    """Builds values from parser events; see the module docstring for why."""

    def __init__(self, sink: ProblemSink, positions: bool, mapping_start: type) -> None:
        self.sink = sink
        self.positions = positions
        self.mapping_start = mapping_start
        self.doc = Document(None)
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int, int]] = {}
        """anchor → (value, nodes, bytes of scalar text) of what it refers to"""
        self.expanded = 0
        self.bytes = 0
        self.documents = 0
        self.done = False

    def count(self, n: int, raw_mark: Any, size: int = 0, alias: str | None = None) -> None:
        self.expanded += n
        self.bytes += size
        if self.expanded > MAX_NODES:
            raise YamlFatal(
                _to_mark(raw_mark),
                f"document expands to more than {MAX_NODES} nodes "
                "(aliases counted at full size); refusing to load it",
            )
        if self.bytes > MAX_EXPANDED_BYTES:
            what = "scalar text" if alias is None else f"scalar text at alias *{alias}"
            raise YamlFatal(
                _to_mark(raw_mark),
                f"document expands to more than {format_bytes(MAX_EXPANDED_BYTES)} of {what} "
                f"(aliases counted at the size of what they refer to); refusing to load it",
            )

    def attach(self, value: Any, raw_mark: Any) -> None:
        stack = self.stack
        if not stack:
            self.doc.data = value
            self.doc.marks[()] = raw_mark
            self.done = True
            return
        top = stack[-1]
        container = top.value
        locate = self.positions or len(stack) == 1
        if type(container) is list:
            if locate:
                self.doc.marks[(*top.path, len(container))] = raw_mark
            container.append(value)
        elif top.key is None:
            self.take_key(top, value, raw_mark, locate)
        else:
            if not top.skip_value:
                container[top.key] = value  # type: ignore[call-overload]
                if locate:
                    self.doc.marks[(*top.path, top.key)] = raw_mark
            top.key, top.skip_value = None, False

    def take_key(self, top: _Frame, value: Any, raw_mark: Any, locate: bool) -> None:
        if type(value) is str:
            key = value
        elif type(value) is Plain:
            key = value.text
        else:
            raise YamlFatal(
                _to_mark(raw_mark), "mapping keys must be plain scalars, not collections or tags"
            )
        top.key = key
        if key == "<<":
            self.problem(raw_mark, top, "merge keys (<<) are not supported; write the keys out")
        elif key in top.value:
            first = self.doc.key_marks.get((*top.path, key))
            at = (
                ""
                if first is None
                else f" (first at line {first.line + 1}, column {first.column + 1})"
            )
            self.problem(raw_mark, top, f"duplicate key {key!r}{at}")
        elif locate:
            self.doc.key_marks[(*top.path, key)] = raw_mark

    def problem(self, raw_mark: Any, top: _Frame, message: str) -> None:
        self.sink.add(_to_mark(raw_mark), format_path(top.path), message)
        top.skip_value = True

    def start(self, event: Any) -> None:
        raw_mark = event.start_mark
        stack = self.stack
        if len(stack) >= MAX_DEPTH:
            raise YamlFatal(
                _to_mark(raw_mark), f"nesting deeper than {MAX_DEPTH} levels; refusing to load it"
            )
        self.count(1, raw_mark)
        path: Path = ()
        if stack:
            top = stack[-1]
            if type(top.value) is dict and top.key is None:
                raise YamlFatal(_to_mark(raw_mark), "mapping keys must be plain scalars")
            if self.positions:
                last = len(top.value) if type(top.value) is list else top.key
                path = (*top.path, last)  # type: ignore[arg-type]
        tag = event.tag
        if tag is not None and (tag == "!" or tag.startswith(CORE_TAG)):
            tag = None
        container: Any = {} if type(event) is self.mapping_start else []
        stack.append(
            _Frame(container, path, raw_mark, event.anchor, tag, self.expanded - 1, self.bytes)
        )

    def end(self, event: Any) -> None:
        frame = self.stack.pop()
        value: Any = frame.value
        if frame.tag is not None:
            value = Tagged(frame.tag, value)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (
                value,
                self.expanded - frame.start,
                self.bytes - frame.start_bytes,
            )
        self.attach(value, frame.mark)

    def scalar(self, event: Any) -> None:
        """serde_yaml reads a scalar by its style, not its tag: ``!!str 5`` is still the
        number 5 for a number field and ``!!int "5"`` still a string. Application tags
        (``!pin``) are kept for the fields that give them meaning."""
        raw_mark = event.start_mark
        text = event.value
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        self.expanded += 1
        self.bytes += size
        if self.expanded > MAX_NODES or self.bytes > MAX_EXPANDED_BYTES:
            self.count(0, raw_mark)
        tag = event.tag
        value: Any = resolve_plain(text) if not event.style else text
        if tag is not None and tag != "!" and not tag.startswith(CORE_TAG):
            value = Tagged(tag, value)
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, 1, size)
        self.attach(value, raw_mark)

    def alias(self, event: Any) -> None:
        raw_mark = event.start_mark
        if event.anchor not in self.anchors:
            raise YamlFatal(
                _to_mark(raw_mark), f"alias *{event.anchor} refers to an unknown anchor"
            )
        value, nodes, size = self.anchors[event.anchor]
        self.count(nodes, raw_mark, size, event.anchor)
        self.attach(value, raw_mark)

    def document_start(self, event: Any) -> None:
        self.documents += 1
        if self.documents > 1:
            raise YamlFatal(
                _mark(event), "a spec file holds exactly one YAML document; found a second one"
            )

    def ignore(self, event: Any) -> None:
        pass


def parse_document(text: str, sink: ProblemSink, *, positions: bool = True) -> Document | None:
    """Parse exactly one YAML document from ``text``.

    Recoverable problems (duplicate keys, merge keys) go to ``sink`` and
    parsing continues; fatal ones are added to ``sink`` and ``None`` is
    returned. ``positions=False`` records positions of top-level keys only,
    which is faster; callers parse again with positions when they need to
    report a problem (see :func:`reconciler.spec.load.load_text`).
    """
    from ruamel.yaml import events as ev
    from ruamel.yaml.cyaml import CParser  # type: ignore[attr-defined]
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    builder = _Builder(sink, positions, ev.MappingStartEvent)
    handlers = {
        ev.ScalarEvent: builder.scalar,
        ev.MappingStartEvent: builder.start,
        ev.SequenceStartEvent: builder.start,
        ev.MappingEndEvent: builder.end,
        ev.SequenceEndEvent: builder.end,
        ev.AliasEvent: builder.alias,
        ev.DocumentStartEvent: builder.document_start,
    }
    get_event = CParser(text).get_event
    ignore = builder.ignore
    try:
        while True:
            event = get_event()
            if event is None or type(event) is ev.StreamEndEvent:
                break
            handlers.get(type(event), ignore)(event)
    except YamlFatal as exc:
        sink.add(exc.mark, "", exc.message)
        return None
    except ReaderError as exc:
        sink.add(_offset_mark(text, exc.position), "", f"invalid character: {exc.reason}")
        return None
    except MarkedYAMLError as exc:
        mark = _yaml_error_mark(exc)
        if mark is not None and _tab_at(text, mark):
            sink.add(
                mark,
                "",
                "invalid YAML: a tab character where YAML expects indentation; "
                "YAML indents with spaces only",
                "replace the tab with spaces",
            )
        else:
            sink.add(mark, "", _yaml_error_message(exc))
        return None
    except YAMLError as exc:
        sink.add(None, "", f"invalid YAML: {exc}")
        return None
    if builder.documents == 0 or not builder.done:
        sink.add(None, "", "the file holds no YAML document (empty or only comments)")
        return None
    return builder.doc


def _yaml_error_mark(exc: MarkedYAMLError) -> Mark | None:
    mark = exc.problem_mark or exc.context_mark
    return None if mark is None else Mark(mark.line + 1, mark.column + 1)


def _tab_at(text: str, mark: Mark) -> bool:
    """The character at ``mark`` is a tab (libyaml only says it cannot start a token)."""
    start = 0
    for _ in range(mark.line - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return False
    return text[start + mark.col - 1 : start + mark.col] == "\t"


def _yaml_error_message(exc: MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    return "invalid YAML: " + ("; ".join(parts) if parts else str(exc))


def _offset_mark(text: str, position: int) -> Mark:
    head = text[:position]
    return Mark(head.count("\n") + 1, position - (head.rfind("\n") + 1) + 1)

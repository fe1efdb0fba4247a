"""Turn spec file contents into validated :class:`DeploymentSpec` values or Problems.

Pure: callers hand in bytes (see :mod:`reconciler.sources.files` for reading
paths); nothing here touches the file system, the clock or the network.
"""

from __future__ import annotations

import difflib
import gc
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from reconciler.spec.problems import Mark, Path, Problem, ProblemSink, format_path
from reconciler.spec.yamldoc import Document, Plain, Tagged, format_bytes, parse_document

if TYPE_CHECKING:
    from reconciler.spec.models import DeploymentSpec

# The spec models (pydantic) and the rules are imported by the functions that load a
# spec: importing this module costs nothing, so a command that finds its compiled
# specs in the cache (reconciler.compile_cache) never builds the models.

MAX_FILE_BYTES = 1024 * 1024
"""Largest spec file accepted (1 MiB); real specs are a few KiB."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One spec file's name (as shown to users) and raw contents."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    file: str
    spec: DeploymentSpec
    document: Document
    text: str

    def mark_for(self, path: Path) -> Mark | None:
        """Where ``path`` sits in the file. Valid specs are loaded with top-level
        positions only, so a later stage (compiling) that finds a problem deeper in
        the document parses the text once more."""
        if path in self.document.marks:
            return self.document.mark_for(path)
        located = parse_document(self.text, ProblemSink(self.file))
        return None if located is None else located.mark_for(path)


@dataclass(frozen=True, slots=True)
class LoadResult:
    specs: tuple[LoadedSpec, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def load_sources(
    files: Iterable[SourceFile], *, env: Mapping[str, str] | None = None
) -> LoadResult:
    """Load every file; report every problem of every file; then cross-file rules."""
    specs: list[LoadedSpec] = []
    problems: list[Problem] = []
    for loaded, found in iter_sources(files, env=env):
        problems.extend(found)
        if loaded is not None:
            specs.append(loaded)
    return LoadResult(tuple(specs), tuple(problems))


def iter_sources(
    files: Iterable[SourceFile], *, env: Mapping[str, str] | None = None
) -> Iterator[tuple[LoadedSpec | None, list[Problem]]]:
    """Load file after file, yielding each result with its problems (cross-file ones
    included), so a caller can compile and drop each spec before reading the next:
    10,000 services need a fifth of the memory that way."""
    first: dict[str, str] = {}
    for source in files:
        loaded, found = load_bytes(source.data, source.name, env=env)
        if loaded is not None:
            name = loaded.spec.deployment
            if name in first:
                found.append(
                    Problem(
                        loaded.file,
                        loaded.document.mark_for(("deployment",)),
                        "deployment",
                        f"deployment {name!r} is also declared in {first[name]}; "
                        "each deployment lives in exactly one file",
                    )
                )
            else:
                first[name] = loaded.file
        yield loaded, found


def load_bytes(
    data: bytes, name: str, *, env: Mapping[str, str] | None = None
) -> tuple[LoadedSpec | None, list[Problem]]:
    """Decode, parse and validate one file. Returns the spec only when it has no problems."""
    sink = ProblemSink(name)
    text = _decode(data, sink)
    if text is None:
        return None, sink.problems
    return load_text(text, name, env=env)


def load_text(
    text: str, name: str, *, env: Mapping[str, str] | None = None
) -> tuple[LoadedSpec | None, list[Problem]]:
    """Parse and validate one document.

    Valid specs are the common case, so the first pass skips recording where every
    value sits; only when something is wrong does a second pass locate it.
    """
    from pydantic import ValidationError

    from reconciler.spec.models import DeploymentSpec
    from reconciler.spec.rules import check_services

    with gc_paused():
        quick = ProblemSink(name)
        doc = parse_document(text, quick, positions=False)
        if doc is None or quick.problems or not isinstance(doc.data, dict):
            return _load_located(text, name, env)
        try:
            spec = DeploymentSpec.model_validate(doc.data)
        except ValidationError:
            return _load_located(text, name, env)
        if check_services(spec.deployment, spec.services, env=env):
            return _load_located(text, name, env)
        return LoadedSpec(name, spec, doc, text), []


@contextmanager
def gc_paused() -> Iterator[None]:
    """Loading allocates many small acyclic objects; the cyclic GC would only rescan
    them again and again (it doubles load time for large specs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_located(
    text: str, name: str, env: Mapping[str, str] | None
) -> tuple[LoadedSpec | None, list[Problem]]:
    """The slow path: parse with every position and report every problem."""
    from pydantic import ValidationError

    from reconciler.spec.models import DeploymentSpec
    from reconciler.spec.rules import check_services

    sink = ProblemSink(name)
    doc = parse_document(text, sink)
    if doc is None:
        return None, sink.problems
    if not isinstance(doc.data, dict):
        sink.add(doc.mark_for(()), "", "a spec is a mapping with version, deployment and services")
        return None, sink.problems
    try:
        spec = DeploymentSpec.model_validate(doc.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _add_validation_error(sink, doc, error, ())
        _check_valid_services(doc, sink, env)
        return None, sink.problems
    for path, message, hint in check_services(spec.deployment, spec.services, env=env):
        sink.add(doc.mark_for(path), format_path(path), message, hint)
    if sink.problems:
        return None, sink.problems
    return LoadedSpec(name, spec, doc, text), sink.problems


def _check_valid_services(doc: Document, sink: ProblemSink, env: Mapping[str, str] | None) -> None:
    """After a failed validation, still run the cross-field rules on every service that
    validated on its own, so one run reports every problem of the file."""
    from pydantic import ValidationError

    from reconciler.spec.models import ServiceSpec
    from reconciler.spec.rules import check_services
    from reconciler.spec.scalars import source_text

    services = doc.data.get("services")
    if not isinstance(services, dict):
        return
    valid = {}
    for name, data in services.items():
        try:
            valid[name] = ServiceSpec.model_validate(data)
        except ValidationError:
            continue
    deployment = str(source_text(doc.data.get("deployment", "")))
    findings = check_services(deployment, valid, service_names=services, env=env)
    for path, message, hint in findings:
        sink.add(doc.mark_for(path), format_path(path), message, hint)


def _decode(data: bytes, sink: ProblemSink) -> str | None:
    if len(data) > MAX_FILE_BYTES:
        sink.add(None, "", too_large(MAX_FILE_BYTES))
        return None
    if b"\0" in data:
        encoding = _wide_encoding(data)
        if encoding is not None:
            name, codec = encoding
            file = shlex.quote(sink.file)
            sink.add(
                None,
                "",
                f"file is {name} encoded; specs are UTF-8",
                f"convert it: iconv -f {codec} -t UTF-8 {file} > {file}.utf8 "
                f"&& mv {file}.utf8 {file}",
            )
        else:
            sink.add(None, "", "binary file (contains NUL bytes); not a spec")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[: exc.start].decode("utf-8", "replace")
        mark = Mark(
            head.count("\n") + 1, exc.start - len(head[: head.rfind("\n") + 1].encode()) + 1
        )
        sink.add(mark, "", f"not valid UTF-8 (byte 0x{data[exc.start]:02x})")
        return None
    return text.removeprefix("\ufeff")


def too_large(limit: int) -> str:
    """The one message for a spec file over the size limit."""
    return f"file is larger than {format_bytes(limit)}; not a spec"


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _wide_encoding(data: bytes) -> tuple[str, str] | None:
    """(``UTF-16`` or ``UTF-32``, the exact codec for iconv) when ``data`` is text in
    one of them (by its byte order mark, or as mostly ASCII text without one)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, name
    candidates = (
        ("UTF-32LE", "UTF-32"),
        ("UTF-32BE", "UTF-32"),
        ("UTF-16LE", "UTF-16"),
        ("UTF-16BE", "UTF-16"),
    )
    for codec, name in candidates:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if _mostly_text(text):
            return name, codec
    return None


def _mostly_text(text: str) -> bool:
    """Printable characters and line breaks, mostly ASCII (as YAML keys are): a spec
    written in a wide encoding, not binary data that happened to decode."""
    head = text[:4096].removeprefix("\ufeff")
    if not head or not all(c.isprintable() or c in "\t\r\n" for c in head):
        return False
    return sum(c.isascii() for c in head) * 2 > len(head)


# --- pydantic errors → problems --------------------------------------------------------------


def _data_path(data: Any, loc: Sequence[str | int]) -> Path:
    """Follow pydantic's ``loc`` through the data, skipping union/validator labels."""
    path: list[str | int] = []
    for part in loc:
        if isinstance(data, Tagged):
            data = data.value
        in_map = isinstance(data, dict) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_map or in_list:
            data = data[part]
            path.append(part)
    return tuple(path)


def _add_validation_error(sink: ProblemSink, doc: Document, error: Any, prefix: Path) -> None:
    loc = (*prefix, *error["loc"])
    path = _data_path(doc.data, loc)
    kind = error["type"]
    hint = None
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = path[:-1]
        close = difflib.get_close_matches(key, _known_keys(), n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        sink.add(doc.mark_for(path, key=True), format_path(parent), f"unknown key {key!r}", hint)
        return
    if kind == "missing":
        key = str(loc[-1])
        sink.add(doc.mark_for(path), format_path(path), f"missing required key {key!r}")
        return
    sink.add(doc.mark_for(path), format_path(path), _message(kind, error))


def _message(kind: str, error: Any) -> str:
    ctx = error.get("ctx") or {}
    got = describe(error.get("input"))
    expected = _TYPE_WORDS.get(kind)
    if expected is not None:
        return f"expected {expected}, got {got}"
    if kind == "literal_error":
        return f"{got} is not one of {ctx.get('expected')}"
    if kind == "union_tag_invalid":
        return f"{_tag_key(ctx)} {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"missing required key {_tag_key(ctx)!r}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"{got} is out of range ({_range_words(kind, ctx)})"
    if kind in ("too_short", "string_too_short"):
        if isinstance(error.get("input"), str):
            return "must not be empty"
        return f"needs at least {ctx.get('min_length')} item(s)"
    return str(error["msg"])


def _tag_key(ctx: Mapping[str, Any]) -> str:
    return str(ctx.get("discriminator", "")).strip("'")


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
}


def _range_words(kind: str, ctx: Mapping[str, Any]) -> str:
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    return f"must be at most {ctx.get('le')}"


def describe(value: Any) -> str:
    """A short, user-facing description of a YAML value for error messages."""
    if isinstance(value, Plain):
        return "null" if value.value is None else value.text
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) < 60 else "a long string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Tagged):
        return f"a value tagged {value.tag}"
    if isinstance(value, bool | int | float):
        return repr(value)
    return type(value).__name__


@cache
def _known_keys() -> tuple[str, ...]:
    from pydantic import BaseModel

    from reconciler.spec import blocks, models

    keys: set[str] = set()
    for module in (blocks, models):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel:
                for field_name, info in obj.model_fields.items():
                    keys.add(info.alias or field_name)
    return tuple(sorted(keys))

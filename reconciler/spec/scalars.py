"""Scalar field types of the spec, with ZLayer's (serde_yaml's) reading rules.

* String fields take any scalar's source text: ``8080`` → ``"8080"``.
* Number and bool fields take only unquoted scalars of the right kind:
  ``'8080'`` is a string and is refused for a port; ``5.0`` is refused for an
  integer.
* Optional fields read ``null``/``~``/empty as absent.

The loader hands these types :class:`~reconciler.spec.yamldoc.Plain` values
for unquoted non-string scalars; the ``BeforeValidator`` of each type picks
the view it needs.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
)
from pydantic.json_schema import JsonSchemaValue, WithJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from reconciler.durations import format_duration, parse_duration
from reconciler.spec.yamldoc import Plain, Tagged


def is_null(value: Any) -> bool:
    return isinstance(value, Plain) and value.value is None


def untag(value: Any) -> Any:
    """serde_yaml ignores an application tag on a value that is not an enum; so do we.

    An empty tagged value (``rtype: !job``) is serde's tag form of an enum variant:
    it reads as the tag's name.
    """
    if isinstance(value, Tagged):
        if value.value == "" or is_null(value.value):
            return value.tag.lstrip("!")
        return value.value
    return value


def source_text(value: Any) -> Any:
    """String view: an unquoted scalar's source text."""
    value = untag(value)
    return value.text if isinstance(value, Plain) else value


def source_text_or_none(value: Any) -> Any:
    """Optional-string view: ``null`` is absent, other scalars are their text."""
    value = untag(value)
    if isinstance(value, Plain):
        return None if value.value is None else value.text
    return value


def buffered_text(value: Any) -> Any:
    """String view inside serde's internally tagged enums (health checks, storage, scale).

    serde buffers those values, and a buffered number is no longer its source text:
    ``url: 8080`` is refused there while ``env: {A: 8080}`` is "8080" elsewhere.
    """
    value = untag(value)
    return None if is_null(value) else value


def scalar_value(value: Any) -> Any:
    """Number/bool view: the resolved value of an unquoted scalar."""
    value = untag(value)
    return value.value if isinstance(value, Plain) else value


def null_to_none(value: Any) -> Any:
    """Outer view for optional numbers: ``null`` is absent, the rest unchanged."""
    return None if is_null(value) else value


ANY_SCALAR_SCHEMA: JsonSchemaValue = {
    "type": ["string", "number", "boolean", "null"],
    "description": 'any scalar, read as its source text (8080 is "8080")',
}
"""JSON Schema of a direct string field: a YAML reader hands editors ``PORT: 8080`` as
the number 8080, which the loader reads as the text ``"8080"``."""

Str = Annotated[str, Strict(), BeforeValidator(source_text), WithJsonSchema(ANY_SCALAR_SCHEMA)]
OptStr = Annotated[
    str | None, Strict(), BeforeValidator(source_text_or_none), WithJsonSchema(ANY_SCALAR_SCHEMA)
]
BufStr = Annotated[str, Strict(), BeforeValidator(buffered_text)]
OptBufStr = Annotated[str | None, Strict(), BeforeValidator(buffered_text)]
Bool = Annotated[bool, Strict(), BeforeValidator(scalar_value)]


_NUM = BeforeValidator(scalar_value)
U8 = Annotated[int, Strict(), Field(ge=0, le=2**8 - 1), _NUM]
U16 = Annotated[int, Strict(), Field(ge=0, le=2**16 - 1), _NUM]
U32 = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1), _NUM]
U64 = Annotated[int, Strict(), Field(ge=0, le=2**64 - 1), _NUM]
I32 = Annotated[int, Strict(), Field(ge=-(2**31), le=2**31 - 1), _NUM]
I64 = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1), _NUM]
_NULL = BeforeValidator(null_to_none)
OptU8 = Annotated[U8 | None, _NULL]
OptU16 = Annotated[U16 | None, _NULL]
OptU32 = Annotated[U32 | None, _NULL]
OptI32 = Annotated[I32 | None, _NULL]
OptI64 = Annotated[I64 | None, _NULL]
OptBool = Annotated[Bool | None, _NULL]


_DECIMAL_RE = re.compile(r"[-+]?[0-9]+")


def _float_value(value: Any) -> Any:
    """serde_yaml reads a float from the scalar's text: ``2`` and ``1e3`` are numbers,
    ``0x1F`` is an integer it refuses for a float field."""
    value = untag(value)
    if isinstance(value, Plain) and type(value.value) in (int, str):
        return float(value.text) if _DECIMAL_RE.fullmatch(value.text) else value.text
    return scalar_value(value)


Float = Annotated[float, Strict(), BeforeValidator(_float_value)]


# --- durations (humantime 2.3, as ZLayer parses them) ---------------------------------------


class Duration(int):
    """A duration in nanoseconds; written and dumped in humantime form."""

    @property
    def seconds(self) -> float:
        return self / 1e9

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"

    def __str__(self) -> str:
        return format_duration(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_plain_validator_function(
            cls.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(format_duration),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: Any, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [{"type": "string"}, {"const": 0}],
            "description": "humantime duration, e.g. 30s, 1m30s, 500ms (or 0)",
        }

    @classmethod
    def validate(cls, value: Any) -> Duration:
        """Read a duration from YAML input; raises a pydantic error naming the problem."""
        if isinstance(value, Duration):
            return value
        text = source_text(value)
        if not isinstance(text, str):
            raise PydanticCustomError("duration_type", "expected a duration such as 30s or 1m30s")
        try:
            return cls(parse_duration(text))
        except ValueError as exc:
            raise PydanticCustomError(
                "duration",
                "invalid duration '{text}': {reason}",
                {"text": text, "reason": str(exc)},
            ) from None


OptDuration = Annotated[Duration | None, _NULL]


# --- memory, cpu ----------------------------------------------------------------------------

_MEMORY_RE = re.compile(r"\+?[0-9]+(Ki|Mi|Gi|Ti)")


def _check_memory(text: str) -> str:
    if not _MEMORY_RE.fullmatch(text) or int(text[:-2]) == 0 or int(text[:-2]) >= 2**64:
        raise PydanticCustomError(
            "memory",
            "invalid memory '{text}': use a positive whole number with Ki, Mi, Gi or Ti "
            "(for example 512Mi or 2Gi)",
            {"text": text},
        )
    return text


OptMemory = Annotated[
    str | None, Strict(), BeforeValidator(lambda v: _opt_memory(source_text_or_none(v)))
]


def _opt_memory(value: Any) -> Any:
    return _check_memory(value) if isinstance(value, str) else value


def _check_cpu(value: Any) -> Any:
    value = _float_value(null_to_none(value))
    if isinstance(value, float) and not (value > 0 and math.isfinite(value)):
        raise PydanticCustomError(
            "cpu", "CPU must be a finite number greater than 0, got {value}", {"value": value}
        )
    return value


OptCpu = Annotated[float | None, Strict(), BeforeValidator(_check_cpu)]


# --- image references (OCI distribution grammar, as oci-client parses them) -----------------

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
NAME_TOTAL_LENGTH_MAX = 255


def check_image_reference(text: str) -> str:
    """Validate an OCI image reference; the text is kept as written (never normalized)."""
    match = _REFERENCE_RE.fullmatch(text)
    reason = None
    if not text:
        reason = "it is empty"
    elif match is None:
        reason = "expected [host[:port]/]repository[:tag][@digest] with a lowercase repository"
    elif len(match["name"]) > NAME_TOTAL_LENGTH_MAX:
        reason = f"the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
    elif match["digest"] and match["digest"].startswith("sha256:") and len(match["digest"]) != 71:
        reason = "a sha256 digest has exactly 64 hex digits"
    if reason is not None:
        raise PydanticCustomError(
            "image_reference",
            "invalid image reference '{text}': {reason}",
            {"text": text, "reason": reason},
        )
    return text


ImageName = Annotated[
    str, Strict(), BeforeValidator(lambda v: check_image_reference(_strict_text(v)))
]


def _strict_text(value: Any) -> Any:
    value = source_text(value)
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "expected a string")
    return value

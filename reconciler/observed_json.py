"""Snapshots as JSON: the observed state (:mod:`.observed`) read with errors that say
where, written deterministically, and described by a JSON Schema (pydantic).

Kept apart from :mod:`.observed` so that observing, planning and applying never
import pydantic for it: only reading or writing a snapshot (``zlayer observe``,
``plan --observed``, the daemon's API) does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from reconciler.errors import SnapshotError
from reconciler.observed import ObservedState

_UNKNOWN = {"unexpected_keyword_argument": "unknown field", "extra_forbidden": "unknown field"}


@cache
def _adapter() -> TypeAdapter[ObservedState]:
    return TypeAdapter(ObservedState)


def load(text: str | bytes, name: str = "snapshot") -> ObservedState:
    """Parse a snapshot, or raise :class:`SnapshotError` saying exactly what is wrong."""
    try:
        return _adapter().validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[:5]
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {_UNKNOWN.get(e['type'], e['msg'])}"
            for e in first
        )
        more = exc.error_count() - len(first)
        if more > 0:
            details += f"; and {more} more"
        raise SnapshotError(f"{name}: not a valid zlayer-observed snapshot: {details}") from exc


def dump(state: ObservedState) -> str:
    """The snapshot's text, fields in declaration order, indented by one."""
    return _adapter().dump_json(state, indent=1).decode()


def document(state: ObservedState) -> dict[str, Any]:
    """The snapshot as JSON data (for the API)."""
    data = _adapter().dump_python(state, mode="json")
    assert isinstance(data, dict)
    return data


def schema() -> dict[str, Any]:
    """The snapshot's JSON Schema (docs/schemas/observed-v1.schema.json).

    The bounds the dataclasses check in ``__post_init__`` (where pydantic cannot see
    them) and the default of a ``default_factory`` are added here, so the schema says
    them too."""
    document = _adapter().json_schema()
    workload = document["$defs"]["Workload"]["properties"]
    workload["replica"]["anyOf"][0]["minimum"] = 1
    workload["restart_count"]["minimum"] = 0
    document["properties"]["configs"]["default"] = {}
    return document

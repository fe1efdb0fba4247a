"""Explain a configuration change field by field (pure; the only deepdiff import).

Fingerprints decide *whether* a replica changes; this module only says *what*
changed. DeepDiff runs with its defaults on purpose: ``ignore_order`` would hide
a reordered ``command.args`` and ``max_diffs`` can return an empty diff for
different inputs. deepdiff is imported on first use: plans without changes never
pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.fingerprint import canonical_json
from reconciler.plan.model import Change, ChangeKind
from reconciler.redact import is_placeholder, placeholders, redact_config
from reconciler.spec.problems import PathPart, format_path

_KINDS: dict[str, ChangeKind] = {
    "values_changed": "changed",
    "type_changes": "changed",
    "dictionary_item_added": "added",
    "iterable_item_added": "added",
    "dictionary_item_removed": "removed",
    "iterable_item_removed": "removed",
}


_COMPARE_KEY = b"zlayer-explain"
"""Hashes plain-text values left in a recorded config so that two of them compare;
they stay in this module (a sensitive change carries no value), so the key needs
no secrecy."""


def explain(
    before: Mapping[str, Any], after: Mapping[str, Any], marked: frozenset[str] = frozenset()
) -> tuple[Change, ...]:
    """Every changed field from ``before`` to ``after``, sorted by path.

    Both sides first go through :func:`reconciler.redact.redact_config` (a recorded
    config may still hold a sensitive value in plain text: a snapshot, an older
    version's label). A change at or inside a placeholder, or one whose values hold
    a placeholder whatever its shape (a key added, removed or renamed, a whole map
    replaced, a type changed), is reported per sensitive field with no values.
    """
    from deepdiff import DeepDiff

    before = _padded(redact_config(before, _COMPARE_KEY, marked).config, after)
    after = _padded(redact_config(after, _COMPARE_KEY, marked).config, before)
    diff = DeepDiff(before, after, view="tree", verbose_level=2)
    found: dict[tuple[Any, ...], Change] = {}
    for report, levels in diff.items():
        kind = _KINDS.get(report)
        if kind is None:  # set/attribute reports cannot occur in JSON data
            continue
        for level in levels:
            path: list[PathPart] = level.path(output_format="list")
            hidden_at = _placeholder_prefix(path, before, after)
            if hidden_at is not None:
                _add(found, _sensitive(hidden_at, before, after))
                continue
            t1 = None if kind == "added" else level.t1
            t2 = None if kind == "removed" else level.t2
            for change in _expand(path, kind, t1, t2):
                _add(found, change)
    return tuple(found[key] for key in sorted(found))


def _padded(config: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """``env`` and ``labels`` present on both sides: one change per key, never a map."""
    return {**{k: {} for k in ("env", "labels") if k in other and k not in config}, **config}


Keyed = tuple[tuple[tuple[int, Any], ...], Change]


def _add(found: dict[tuple[Any, ...], Change], keyed: Keyed) -> None:
    found[keyed[0]] = keyed[1]


def _at(
    path: Sequence[PathPart], kind: ChangeKind, t1: Any = None, t2: Any = None, hidden: bool = False
) -> Keyed:
    change = (
        Change(format_path(path), kind, sensitive=True)
        if hidden
        else Change(format_path(path), kind, t1, t2)
    )
    return _sort_key(list(path)), change


def _lookup(config: Any, path: Sequence[PathPart]) -> tuple[bool, Any]:
    node = config
    for part in path:
        in_map = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_map or in_list):
            return False, None
        node = node[part]
    return True, node


def _placeholder_prefix(path: list[PathPart], before: Any, after: Any) -> list[PathPart] | None:
    for end in range(1, len(path) + 1):
        prefix = path[:end]
        if any(is_placeholder(_lookup(side, prefix)[1]) for side in (before, after)):
            return prefix
    return None


def _sensitive(path: Sequence[PathPart], before: Any, after: Any) -> Keyed:
    had, _ = _lookup(before, path)
    has, _ = _lookup(after, path)
    kind: ChangeKind = "added" if not had else "removed" if not has else "changed"
    return _at(path, kind, hidden=True)


def _expand(path: list[PathPart], kind: ChangeKind, t1: Any, t2: Any) -> list[Keyed]:
    """One reported change as changes that never carry a sensitive value."""
    if not placeholders(t1) and not placeholders(t2):
        return [_at(path, kind, t1, t2)]
    if is_placeholder(t1) or is_placeholder(t2):
        return [_at(path, kind, hidden=True)]
    out: list[Keyed] = []
    if isinstance(t1, dict) or isinstance(t2, dict):
        if kind == "changed" and not (isinstance(t1, dict) and isinstance(t2, dict)):
            return [_at(path, kind, hidden=True)]
        old = t1 if isinstance(t1, dict) else {}
        new = t2 if isinstance(t2, dict) else {}
        for key in sorted({*old, *new}, key=str):
            if key not in old:
                out += _expand([*path, key], "added", None, new[key])
            elif key not in new:
                out += _expand([*path, key], "removed", old[key], None)
            elif old[key] != new[key]:
                out += _expand([*path, key], "changed", old[key], new[key])
        return out
    if isinstance(t1, list) and isinstance(t2, list) and len(t1) == len(t2):
        for index, (a, b) in enumerate(zip(t1, t2, strict=True)):
            if a != b:
                out += _expand([*path, index], "changed", a, b)
        return out
    return [_at(path, kind, hidden=True)]


def _sort_key(path: list[PathPart]) -> tuple[tuple[int, Any], ...]:
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in path)


def describe(change: Change) -> str:
    """One change in words: ``image app:1.2 → app:1.3``, ``env.TOKEN changed (sensitive)``."""
    if change.sensitive:
        return f"{change.path} {change.kind} (sensitive)"
    if change.kind == "added":
        return f"{change.path} added: {_short(change.after)}"
    if change.kind == "removed":
        return f"{change.path} removed (was {_short(change.before)})"
    return f"{change.path} {_short(change.before)} → {_short(change.after)}"


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

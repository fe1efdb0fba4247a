"""Explain a configuration change field by field (pure; the only deepdiff import).

Fingerprints decide *whether* a replica changes; this module only says *what*
changed. DeepDiff runs with its defaults on purpose: ``ignore_order`` would hide
a reordered ``command.args`` and ``max_diffs`` can return an empty diff for
different inputs. deepdiff is imported on first use: plans without changes never
pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.desired import SENSITIVE_KEY_RE
from reconciler.fingerprint import canonical_json
from reconciler.plan.model import Change, ChangeKind
from reconciler.spec.problems import PathPart, format_path

_KINDS: dict[str, ChangeKind] = {
    "values_changed": "changed",
    "type_changes": "changed",
    "dictionary_item_added": "added",
    "iterable_item_added": "added",
    "dictionary_item_removed": "removed",
    "iterable_item_removed": "removed",
}


def explain(
    before: Mapping[str, Any], after: Mapping[str, Any], sensitive: frozenset[str] = frozenset()
) -> tuple[Change, ...]:
    """Every changed field from ``before`` to ``after``, sorted by path.

    Anything under ``env.KEY`` for a key in ``sensitive``, a key that looks secret
    (on either side: a removed ``API_TOKEN`` is as sensitive as an added one), or
    whose value is a secret reference on either side, becomes one value-free
    change of ``env.KEY``.
    """
    from deepdiff import DeepDiff

    if "env" in before or "env" in after:
        # one change per key, never a whole map (whose values may be sensitive)
        before = {**before, "env": before.get("env", {})}
        after = {**after, "env": after.get("env", {})}
    diff = DeepDiff(dict(before), dict(after), view="tree", verbose_level=2)
    found: dict[tuple[Any, ...], Change] = {}
    for report, levels in diff.items():
        kind = _KINDS.get(report)
        if kind is None:  # set/attribute reports cannot occur in JSON data
            continue
        for level in levels:
            path: list[PathPart] = level.path(output_format="list")
            secret_key = _sensitive_env_key(path, before, after, sensitive)
            if secret_key is not None:
                path = ["env", secret_key]
                kind_here = _env_kind(before, after, secret_key)
                found[_sort_key(path)] = Change(format_path(path), kind_here, sensitive=True)
                continue
            found[_sort_key(path)] = Change(
                format_path(path),
                kind,
                None if kind == "added" else level.t1,
                None if kind == "removed" else level.t2,
            )
    return tuple(found[key] for key in sorted(found))


def _sensitive_env_key(
    path: list[PathPart],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    sensitive: frozenset[str],
) -> str | None:
    if len(path) < 2 or path[0] != "env" or not isinstance(path[1], str):
        return None
    key = path[1]
    values = (before.get("env", {}).get(key), after.get("env", {}).get(key))
    if key in sensitive or SENSITIVE_KEY_RE.search(key) or any(isinstance(v, dict) for v in values):
        return key
    return None


def _env_kind(before: Mapping[str, Any], after: Mapping[str, Any], key: str) -> ChangeKind:
    if key not in before.get("env", {}):
        return "added"
    if key not in after.get("env", {}):
        return "removed"
    return "changed"


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

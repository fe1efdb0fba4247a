"""The plan's JSON form (``format: zlayer-plan``, ``format_version`` 1), pure.

The same document is printed by ``plan --format json`` and saved by ``--out``;
it is deterministic (no timestamps, fixed key order) so plans can be compared
byte for byte. docs/plan.md ("Output formats") documents every field, and
docs/schemas/plan-v1.schema.json describes it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from reconciler.plan.model import Action, Change, Note, Plan

PLAN_FORMAT = "zlayer-plan"
PLAN_FORMAT_VERSION = 1


def plan_to_dict(plan: Plan, observed_from: str) -> dict[str, Any]:
    summary: dict[str, int] = plan.summary()
    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "spec_revision": plan.spec_revision,
        "desired_fingerprint": plan.desired_fingerprint,
        "observed_fingerprint": plan.observed_fingerprint,
        "runtime": plan.runtime,
        "observed_from": observed_from,
        "prune": plan.prune,
        "targets": list(plan.targets),
        "changes_present": not plan.empty,
        "summary": {**summary, "total": len(plan.actions)},
        "actions": [_action(a) for a in plan.actions],
        "notes": [_note(n) for n in plan.notes],
        "warnings": [_note(n) for n in plan.warnings],
    }


_INVISIBLE = re.compile(
    "[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)
"""Characters JSON may carry raw but a terminal or a reviewer's screen would act on
(DEL, C1 controls, line separators, bidi and zero-width controls)."""


def plan_to_json(plan: Plan, observed_from: str) -> str:
    """UTF-8 JSON; invisible and control characters are written as ``\\uXXXX`` escapes
    (they can only occur inside strings, so the document means the same)."""
    text = json.dumps(plan_to_dict(plan, observed_from), indent=2, ensure_ascii=False)
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _action(action: Action) -> dict[str, Any]:
    target = action.target
    return {
        "id": action.id,
        "kind": action.kind,
        "target": {
            "deployment": target.deployment,
            "service": target.service,
            "replica": target.replica,
            "endpoint": action.endpoint,
        },
        "reason": action.reason,
        "changes": [_change(c) for c in action.changes],
        "waits_for": list(action.waits_for),
        "conditions": [
            {
                "service": c.service,
                "condition": c.condition,
                "timeout_seconds": c.timeout,
                "on_timeout": c.on_timeout,
            }
            for c in action.conditions
        ],
    }


def _change(change: Change) -> dict[str, Any]:
    out: dict[str, Any] = {"path": change.path, "kind": change.kind}
    if change.sensitive:
        out["sensitive"] = True
        return out
    if change.kind != "added":
        out["before"] = change.before
    if change.kind != "removed":
        out["after"] = change.after
    return out


def _note(note: Note) -> dict[str, str]:
    return {"subject": note.subject, "message": note.message}

"""Normalized spec output: every default filled in, in YAML or JSON (pure)."""

from __future__ import annotations

import io
import json
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar

from reconciler.spec.models import DeploymentSpec


def normalized(spec: DeploymentSpec) -> dict[str, Any]:
    """The spec as plain JSON-compatible data, with the spelling users write."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    return data


def dump_json(spec: DeploymentSpec) -> str:
    return json.dumps(normalized(spec), indent=2, sort_keys=False)


def dump_yaml(spec: DeploymentSpec) -> str:
    """YAML that loads back to the same spec (``!pin`` affinities keep their tag)."""
    data = normalized(spec)
    for service in data["services"].values():
        service["affinity"] = _affinity(service["affinity"])
        for group in service.get("replica_groups") or ():
            group["affinity"] = _affinity(group["affinity"])
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.representer.add_representer(type(None), _represent_null)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _affinity(value: Any) -> Any:
    if isinstance(value, dict) and "pin" in value:
        return TaggedScalar(value["pin"], style='"', tag="!pin")
    return value


def _represent_null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")

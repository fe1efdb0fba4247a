"""The JSON Schema of a spec file (``zlayer schema``), for editors and linters.

It accepts every file the loader accepts, as an editor's YAML reader hands it over:
a direct string field takes any scalar (``PORT: 8080`` arrives as a number), an
empty collection (``env:`` with nothing after it) arrives as null, and the alias
keys (``cap_add``, ``wasm_http``) are properties of their own. Tags are invisible
to JSON Schema, so the tagged forms (``!pin "id=2"``, ``!bridge {name: x}``) are
accepted by the shape of their value. The schema is looser than the loader where
it must be (it cannot see tags, nor the difference between empty and ``null``);
``zlayer validate`` has the last word.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import AliasChoices, BaseModel
from pydantic.json_schema import GenerateJsonSchema

from reconciler.spec import blocks, models
from reconciler.spec.blocks import SpecModel, field_kinds
from reconciler.spec.models import DeploymentSpec

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a ZLayer v1 spec file."""
    document = DeploymentSpec.model_json_schema(by_alias=True, schema_generator=_TitledSchema)
    definitions = document.get("$defs", {})
    for model in _spec_models():
        target = document if model is DeploymentSpec else definitions.get(_schema_name(model))
        if target is not None and "properties" in target:
            _as_read(model, target["properties"])
    return {"$schema": SCHEMA_DIALECT, "title": "ZLayer v1 deployment spec", **document}


class _TitledSchema(GenerateJsonSchema):
    """Names a model's definition (``$defs``) by its title where its class sets one
    (``model_config["title"]``), so a class can be renamed without changing the schema."""

    def normalize_name(self, name: str) -> str:
        return super().normalize_name(_titled().get(name, name))


@cache
def _titled() -> dict[str, str]:
    """Class name → schema name, for the spec models whose title is not their name."""
    return {model.__name__: _schema_name(model) for model in _spec_models()}


def _schema_name(model: type[BaseModel]) -> str:
    return model.model_config.get("title") or model.__name__


def _spec_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for module in (blocks, models):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, SpecModel) and obj is not SpecModel:
                found.append(obj)
    return found


def _as_read(model: type[BaseModel], properties: dict[str, Any]) -> None:
    """Loosen ``model``'s properties to what the loader reads: empty collections as
    null, and every alias of a field as a property."""
    _, empty, _ = field_kinds(model)
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in properties:
            continue
        if key in empty:
            properties[key] = {"anyOf": [properties[key], {"type": "null"}]}
        if isinstance(info.validation_alias, AliasChoices):
            for choice in info.validation_alias.choices:
                properties.setdefault(str(choice), properties[key])

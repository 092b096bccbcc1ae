"""Walking the schema alongside a config tree: which model, annotation and keys apply at a path.

Used by ``--set`` (is this key valid here?), the error messages (what was
expected here?) and the reference (how to describe a type).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel

from ..layers import LayerSpec
from .yamltree import Path


def unwrap(ann):
    """The type inside ``Annotated[...]`` layers."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def union_members(ann) -> list:
    """The members of a (possibly Annotated, possibly nested) union, each with its own constraints."""
    inner = unwrap(ann)
    if typing.get_origin(inner) in (Union, types.UnionType):
        out = []
        for a in typing.get_args(inner):
            out.extend(union_members(a))
        return out
    return [ann]


def is_model(ann) -> bool:
    return inspect.isclass(ann) and issubclass(ann, BaseModel)


def type_tag(model: type[BaseModel]) -> str | None:
    """The default of a model's ``type`` field (``'conv2d'``): the tag that picks it in a union."""
    f = model.model_fields.get("type")
    return f.default if f is not None and isinstance(f.default, str) else None


def is_layer_union(ann) -> bool:
    members = [unwrap(m) for m in union_members(ann)]
    return bool(members) and all(is_model(m) and issubclass(m, LayerSpec) for m in members) and len(members) > 1


def _field_named(model: type[BaseModel], key: str):
    for name, f in model.model_fields.items():
        if name == key:
            return f
        alias = f.validation_alias
        choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
        if key in [c for c in choices if isinstance(c, str)]:
            return f
    return None


def field_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts: its field names and their aliases."""
    keys = []
    for name, f in model.model_fields.items():
        keys.append(name)
        alias = f.validation_alias
        keys.extend(c for c in getattr(alias, "choices", [alias] if isinstance(alias, str) else []) if isinstance(c, str))
    return list(dict.fromkeys(keys))


def model_for(ann, data) -> type[BaseModel] | None:
    """The pydantic model that validates ``data`` under ``ann`` (picking a union member by ``type``)."""
    members = [unwrap(m) for m in union_members(ann)]
    models = [m for m in members if is_model(m)]
    if not models:
        return None
    tag = data.get("type") if isinstance(data, dict) else data if isinstance(data, str) else None
    for m in models:
        if type_tag(m) is not None and type_tag(m) == tag:
            return m
    untagged = [m for m in models if type_tag(m) is None]
    return untagged[0] if len(untagged) == 1 and isinstance(data, dict) else None


def child_annotation(ann, data, key):
    """The annotation of ``data[key]`` when ``data`` is validated as ``ann`` (None if unknown)."""
    if ann is None or ann is Any:
        return Any
    model = model_for(ann, data)
    if model is not None and isinstance(key, str):
        f = _field_named(model, key)
        return None if f is None else Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    for m in union_members(ann):
        m = unwrap(m)
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (list, tuple) and isinstance(key, int) and args:
            return args[0]
        if origin is dict and isinstance(key, str) and args:
            return args[1]
    return None


def valid_keys(ann, data) -> list[str] | None:
    """The keys a mapping validated as ``ann`` may have (None when any key goes)."""
    model = model_for(ann, data)
    return field_keys(model) if model is not None else None


def annotation_at(root, data, path: Path):
    """The annotation of the value at ``path`` in ``data`` validated as ``root`` (None if unknown)."""
    ann = root
    for key in path:
        if ann is None:
            return None
        ann = child_annotation(ann, data, key)
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            data = None
    return ann


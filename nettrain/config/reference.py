"""Describing the schema to people: type descriptions and the layer reference.

``describe_type`` turns an annotation into the short text used in error
messages and the docs (``int > 0 | [int > 0, int > 0]``); ``layer_reference``
lists every registered layer type with its fields, read from the specs, for
``nettrain layers`` and the generated part of ``docs/config.md``.
"""

from __future__ import annotations

import inspect
import sys
import typing
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel

from ..layers import REGISTRY, LayerSpec
from ..layers.activations import ActivationLayer
from .walk import is_layer_union, is_model, type_tag, union_members, unwrap


def _constraints(metadata) -> str:
    parts = []
    for m in metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None and isinstance(m, (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt,
                                               annotated_types.Le, annotated_types.Interval)):
                parts.append(f"{sym} {v:g}" if isinstance(v, float) else f"{sym} {v}")
    return ", ".join(parts)


def describe_type(ann, metadata=()) -> str:
    """A short human description of a type annotation: ``int > 0 | [int > 0, int > 0]``."""
    metadata = list(metadata)
    while typing.get_origin(ann) is Annotated:
        ann, *more = typing.get_args(ann)
        metadata.extend(more)
    cons = _constraints(metadata)
    length = next((m for m in metadata if isinstance(m, annotated_types.Len)), None)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None) or ann is None:
        return "null"
    if ann is Any:
        return "any"
    if isinstance(ann, (str, typing.ForwardRef)):
        return "layer" if "LayerSpec" in str(ann) else str(getattr(ann, "__forward_arg__", ann))
    if len(union_members(ann)) > 1:
        members = [unwrap(m) for m in union_members(ann)]
        if is_layer_union(ann):
            return "layer"
        if all(is_model(m) and type_tag(m) for m in members):
            return "name or {type: " + " | ".join(type_tag(m) for m in members) + ", ...}"
        parts = []
        for m in union_members(ann):
            text = describe_type(m)
            if text not in parts:
                parts.append(text)
        if "null" in parts:  # Optional reads best with null last
            parts = [p for p in parts if p != "null"] + ["null"]
        return " | ".join(parts)
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a).lower() if isinstance(a, bool) else str(a) for a in args)
    if origin in (list, tuple) and args:
        item = describe_type(args[0])
        if length is not None and length.min_length == length.max_length and (length.max_length or 0) <= 4:
            return "[" + ", ".join([item] * length.max_length) + "]"
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            return "[" + ", ".join(describe_type(a) for a in args) + "]"
        span = ""
        if length is not None:
            span = f" ({length.min_length}..{length.max_length} items)" if length.max_length else f" (at least {length.min_length})"
        return f"list of {item}{span}"
    if origin is dict and args:
        return f"mapping of name -> {describe_type(args[1])}"
    if is_model(ann):
        if issubclass(ann, LayerSpec):
            return "layer"
        if type_tag(ann):
            return f"{{type: {type_tag(ann)}, ...}}"
        fields = ", ".join(f"{k}: {describe_type(f.annotation, f.metadata)}" for k, f in ann.model_fields.items())
        return "{" + fields + "}"
    base = {int: "int", float: "float", str: "text", bool: "true | false"}.get(ann, getattr(ann, "__name__", str(ann)))
    return f"{base} {cons}" if cons else base


def _default_text(f) -> str:
    if f.is_required():
        return "required"
    value = f.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = getattr(value, "type", None) or value.model_dump(mode="json")  # a loss/optimizer by its name
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return str(value)


def layer_reference() -> list[dict]:
    """Every layer type with its fields, their types and defaults, read from the schemas."""
    out = []
    for type_name in sorted(REGISTRY):
        cls = REGISTRY[type_name]
        doc = inspect.cleandoc(cls.__doc__ or "")
        if not doc:
            doc = (f"Element-wise {type_name} activation." if issubclass(cls, ActivationLayer)
                   else inspect.cleandoc(sys.modules[cls.__module__].__doc__ or ""))
        doc = doc.split("\n\n")[0].replace("\n", " ").replace("``", "`").rstrip(":")
        fields = [f for f in fields_reference(cls.Spec) if f["name"] not in ("type", "name")]
        out.append({"type": type_name, "doc": doc, "fields": fields})
    return out


def fields_reference(model: type[BaseModel]) -> list[dict]:
    """Each field of a schema: name, accepted values, default (``required`` if none), what it means."""
    return [
        {"name": k, "type": describe_type(f.annotation, f.metadata), "default": _default_text(f),
         "required": f.is_required(), "doc": f.description or ""}
        for k, f in model.model_fields.items()
    ]


COMMON_FIELDS_NOTE = (
    "Every layer also takes `name` (unique in the model; default `<type>_<k>`, e.g. `conv2d_3`) "
    "and `repeat: n` (n copies in a row)."
)


def fields_markdown(fields: list[dict], first: str = "field", second: str = "type") -> list[str]:
    """A markdown table of ``fields_reference`` rows; a ``meaning`` column when any field has one."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    with_doc = any(f["doc"] for f in fields)
    header = [first, second, "default"] + (["meaning"] if with_doc else [])
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for f in fields:
        cells = [f"`{f['name']}`", cell(f["type"]), cell(f["default"])] + ([cell(f["doc"])] if with_doc else [])
        out.append("| " + " | ".join(cells) + " |")
    return out


def layers_markdown(reference: list[dict] | None = None) -> str:
    """The layer section of docs/config.md (``nettrain layers --format markdown``)."""
    out = [COMMON_FIELDS_NOTE, ""]
    for layer in reference if reference is not None else layer_reference():
        out += [f"### `{layer['type']}`", ""]
        if layer["doc"]:
            out += [layer["doc"], ""]
        out += fields_markdown(layer["fields"]) if layer["fields"] else ["No fields."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"

"""The config file: its schema, the loader, ``--set`` overrides and the error messages.

A config is one YAML file with four sections::

    model:   {input_shape: [H, W, C], layers: [...], blocks: {...}}
    data:    DataSpec         (nettrain.data)
    train:   TrainSpec        (loss, optimizer, schedule, epochs, batch_size, ...)
    output:  OutputSpec       (run directory, which metric picks best.npz, plots)

:func:`load_config` reads it in five steps, each reporting *all* its problems at
once as ``file:line: dotted.path: what is wrong`` lines of one ConfigError:

1. parse the YAML, remembering the line of every key (:mod:`nettrain.yamltree`);
2. apply ``--set path=value`` overrides to the tree as written;
3. expand the sugar: ``repeat: n`` and uses of named ``model.blocks``;
4. check layer names are unique;
5. validate with pydantic, translating its errors back to the file's lines.

Block definitions (``model.blocks``) declare parameters with defaults and use
them as ``$name`` (the whole value, any type) or ``${name}`` inside text::

    blocks:
      basic:
        params: {filters: 16, strides: 1}
        layers:
          - type: residual
            shortcut: zero_pad
            body:
              - {type: conv2d, filters: $filters, kernel_size: 3, strides: $strides, padding: same}
    layers:
      - {block: basic, filters: 32, strides: 2, name: stage2}
      - {block: basic, filters: 32, repeat: 2}
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass, field as dc_field, replace
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal, Optional, Union

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    conlist,
    field_validator,
)

from .data import DataSpec
from .errors import ConfigError
from .layers import REGISTRY, AnyLayerSpec, LayerSpec
from .layers.activations import ActivationLayer
from .losses import LossSpec, SoftmaxCrossEntropySpec
from .optimizers import AdamSpec, OptimizerSpec
from .schedules import ConstantSpec, ScheduleSpec
from .yamltree import Node, Path, Where, copy_tree, format_path, from_plain, parse_yaml, to_plain

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_REPEAT = 1000
MAX_LAYERS = 10_000
LAYER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
METRIC_NAME = re.compile(r"^(accuracy|top[1-9][0-9]*_accuracy)$")


# ============================================================================ schema
class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlockSpec(StrictModel):
    """A named group of layers used by name from ``model.layers`` (see the module doc)."""

    params: dict[str, Any] = Field(default_factory=dict)
    layers: list[dict[str, Any]] = Field(min_length=1)


class ModelSpec(StrictModel):
    """``input_shape`` as the user writes it: ``[H, W, C]`` image, ``[T, F]`` sequence or ``[F]`` vector."""

    input_shape: conlist(PositiveInt, min_length=1, max_length=3)
    layers: list[AnyLayerSpec] = Field(min_length=1)
    blocks: dict[str, BlockSpec] = Field(default_factory=dict)

    @property
    def internal_input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for an image, (T, F) for a sequence, (F,) for a vector."""
        return user_to_internal_shape(self.input_shape)


class EarlyStoppingSpec(StrictModel):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    monitor: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    patience: NonNegativeInt = 5
    min_delta: NonNegativeFloat = 0.0


class TrainSpec(StrictModel):
    loss: LossSpec = Field(default_factory=SoftmaxCrossEntropySpec)
    optimizer: OptimizerSpec = Field(default_factory=AdamSpec)
    schedule: ScheduleSpec = Field(default_factory=ConstantSpec)
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    eval_batch_size: Optional[PositiveInt] = None
    seed: NonNegativeInt = 0
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])
    clip_grad_norm: Optional[PositiveFloat] = None
    early_stopping: Optional[EarlyStoppingSpec] = None
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log_every: PositiveInt = 50  # steps between progress-bar metric updates

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for m in metrics:
            if not METRIC_NAME.match(m):
                raise ValueError(f"unknown metric {m!r}; use accuracy or topK_accuracy (e.g. top5_accuracy)")
        return metrics


class OutputSpec(StrictModel):
    """``dir`` left out: ``<root>/<config name>-<timestamp>``; ``monitor``/``mode`` choose best.npz."""

    dir: Optional[str] = None
    root: str = "runs"
    monitor: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    plots: bool = True
    tensorboard: bool = False  # event files in RUN/tensorboard/ (nettrain.tensorboard_log)
    histograms_every: Optional[PositiveInt] = None  # epochs between weight/gradient histograms; None: never


class Config(StrictModel):
    """A validated config file; ``source_path``, ``source_text``, ``overrides`` and ``raw`` say where it came from."""

    name: Optional[str] = None
    description: Optional[str] = None
    model: ModelSpec
    data: Optional[DataSpec] = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    _source_path: Optional[FilePath] = PrivateAttr(None)
    _source_text: Optional[str] = PrivateAttr(None)
    _source_name: str = PrivateAttr("<config>")
    _overrides: tuple[str, ...] = PrivateAttr(())
    _raw: Optional[dict] = PrivateAttr(None)
    _tree: Optional[Node] = PrivateAttr(None)

    @property
    def source_path(self) -> FilePath | None:
        """The file the config was read from (None when built from text or a dict)."""
        return self._source_path

    @property
    def source_text(self) -> str | None:
        """The file's text as read, before overrides."""
        return self._source_text

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``--set path=value`` strings applied, in order."""
        return self._overrides

    @property
    def raw(self) -> dict:
        """The document as written with the overrides applied (blocks and repeat not yet expanded)."""
        return self._raw if self._raw is not None else self.resolved

    @property
    def resolved(self) -> dict:
        """Everything spelled out: sugar expanded, overrides applied, every default filled in.

        This is what a run saves as its ``config.yaml``; it validates back to an equal Config.
        """
        return self.model_dump(mode="json", exclude={"model": {"blocks"}})

    @property
    def run_name(self) -> str:
        """``name:`` if given, else the file's stem, else 'model'."""
        if self.name:
            return self.name
        return self._source_path.stem if self._source_path is not None else "model"

    def to_yaml(self) -> str:
        """The resolved config as YAML text with a header saying where it came from."""
        header = f"# resolved from {self._source_name}"
        for o in self._overrides:
            header += f"\n#   --set {o}"
        return header + "\n" + yaml.safe_dump(self.resolved, sort_keys=False, default_flow_style=None)

    def location(self, path: Path) -> str:
        """``file:line: dotted.path`` of a value in the expanded config (as written, with block notes)."""
        if self._tree is None:
            return format_path(path)
        node, rest = node_at(self._tree, path)
        return where_text(node.where, self._source_name, rest)


def user_to_internal_shape(shape) -> tuple[int, ...]:
    """``[H, W, C]`` -> ``(C, H, W)``; ``[T, F]`` and ``[F]`` unchanged."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3:
        h, w, c = shape
        return (c, h, w)
    return shape


# ============================================================================ describing types
def _unwrap(ann):
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def _union_members(ann) -> list:
    """The members of a (possibly Annotated, possibly nested) union, each with its own constraints."""
    inner = _unwrap(ann)
    if typing.get_origin(inner) in (Union, types.UnionType):
        out = []
        for a in typing.get_args(inner):
            out.extend(_union_members(a))
        return out
    return [ann]


def _is_model(ann) -> bool:
    return inspect.isclass(ann) and issubclass(ann, BaseModel)


def _type_tag(model: type[BaseModel]) -> str | None:
    f = model.model_fields.get("type")
    return f.default if f is not None and isinstance(f.default, str) else None


def _is_layer_union(ann) -> bool:
    members = [_unwrap(m) for m in _union_members(ann)]
    return bool(members) and all(_is_model(m) and issubclass(m, LayerSpec) for m in members) and len(members) > 1


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
    if len(_union_members(ann)) > 1:
        members = [_unwrap(m) for m in _union_members(ann)]
        if _is_layer_union(ann):
            return "layer"
        if all(_is_model(m) and _type_tag(m) for m in members):
            return "name or {type: " + " | ".join(_type_tag(m) for m in members) + ", ...}"
        parts = []
        for m in _union_members(ann):
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
    if _is_model(ann):
        if issubclass(ann, LayerSpec):
            return "layer"
        if _type_tag(ann):
            return f"{{type: {_type_tag(ann)}, ...}}"
        fields = ", ".join(f"{k}: {describe_type(f.annotation, f.metadata)}" for k, f in ann.model_fields.items())
        return "{" + fields + "}"
    base = {int: "int", float: "float", str: "text", bool: "true | false"}.get(ann, getattr(ann, "__name__", str(ann)))
    return f"{base} {cons}" if cons else base


# ============================================================================ walking the schema
def _field_named(model: type[BaseModel], key: str):
    for name, f in model.model_fields.items():
        if name == key:
            return f
        alias = f.validation_alias
        choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
        if key in [c for c in choices if isinstance(c, str)]:
            return f
    return None


def _field_keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        keys.append(name)
        alias = f.validation_alias
        keys.extend(c for c in getattr(alias, "choices", [alias] if isinstance(alias, str) else []) if isinstance(c, str))
    return list(dict.fromkeys(keys))


def model_for(ann, data) -> type[BaseModel] | None:
    """The pydantic model that validates ``data`` under ``ann`` (picking a union member by ``type``)."""
    members = [_unwrap(m) for m in _union_members(ann)]
    models = [m for m in members if _is_model(m)]
    if not models:
        return None
    tag = data.get("type") if isinstance(data, dict) else data if isinstance(data, str) else None
    for m in models:
        if _type_tag(m) is not None and _type_tag(m) == tag:
            return m
    untagged = [m for m in models if _type_tag(m) is None]
    return untagged[0] if len(untagged) == 1 and isinstance(data, dict) else None


def child_annotation(ann, data, key):
    """The annotation of ``data[key]`` when ``data`` is validated as ``ann`` (None if unknown)."""
    if ann is None or ann is Any:
        return Any
    model = model_for(ann, data)
    if model is not None and isinstance(key, str):
        f = _field_named(model, key)
        return None if f is None else Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    for m in _union_members(ann):
        m = _unwrap(m)
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (list, tuple) and isinstance(key, int) and args:
            return args[0]
        if origin is dict and isinstance(key, str) and args:
            return args[1]
    return None


def valid_keys(ann, data) -> list[str] | None:
    """The keys a mapping validated as ``ann`` may have (None when any key goes)."""
    model = model_for(ann, data)
    return _field_keys(model) if model is not None else None


def annotation_at(root, data, path: Path):
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


def suggest(word, choices, what: str = "") -> str:
    """``; did you mean 'x'?`` for a near miss, else a list of the valid choices."""
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if not choices:
        return ""
    label = f"valid {what}" if what else "valid choices"
    return f" ({label}: {', '.join(choices)})"


# ============================================================================ locations
def where_text(where: Where, source: str, rest: Path = ()) -> str:
    """``file:line: path (note)`` for a node, the origin (``--set ...``) replacing the line."""
    if where.origin:
        loc = f"{source}: {where.origin}"
    elif where.line is not None:
        loc = f"{source}:{where.line}"
    else:
        loc = source
    note = f" ({where.note})" if where.note else ""
    return f"{loc}: {format_path(where.path + tuple(rest))}{note}"


def node_at(tree: Node, path: Path) -> tuple[Node, Path]:
    """The deepest node along ``path`` and the part of the path below it that does not exist."""
    node = tree
    for i, key in enumerate(path):
        if node.is_map() and isinstance(key, str) and key in node.value:
            node = node.value[key]
        elif node.is_list() and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
        else:
            return node, tuple(path[i:])
    return node, ()


def _shown(value, limit: int = 60) -> str:
    """A value as it would be written in YAML, shortened to ``limit`` characters."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None or isinstance(value, bool):
        text = "null" if value is None else str(value).lower()
    elif isinstance(value, (dict, list)):
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        except yaml.YAMLError:
            text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ============================================================================ sugar: repeat and blocks
PARAM_REF = re.compile(r"^\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))$")  # $name or ${name}, the whole value
PARAM_IN_TEXT = re.compile(r"\$\{([A-Za-z_]\w*)\}")
USE_KEYS = ("block", "name", "repeat")


def _rename(layer: Node, new_name) -> None:
    """Apply ``new_name(old)`` to every explicit layer name in ``layer`` and the layers nested in it."""
    if not layer.is_map():
        return
    name = layer.get("name")
    if name is not None and isinstance(name.value, str):
        layer.value["name"] = Node(new_name(name.value), name.where)
    body = layer.get("body")
    if body is not None and body.is_list():
        for child in body.value:
            _rename(child, new_name)


class SugarExpander:
    """Expands ``repeat: n`` and block uses in ``model.layers`` (and residual bodies) into plain layers.

    Copies keep the :class:`Where` of the text they came from, so a validation
    error inside an expanded block points at the block's line.
    """

    def __init__(self, blocks: Node | None, source: str):
        self.blocks = blocks.value if blocks is not None and blocks.is_map() else {}
        self.source = source
        self.problems: list[str] = []
        self.reported: set = set()
        self.count = 0

    def problem(self, where: Where, message: str) -> None:
        self.problems.append(f"{where_text(where, self.source)}: {message}")

    def unknown_parameter(self, where: Where, name: str, values: dict) -> None:
        if (where.path, name) not in self.reported:  # once per place, however often the block is used
            self.reported.add((where.path, name))
            self.problem(replace(where, note=None), f"unknown parameter ${name}{suggest(name, values, 'parameters')}")

    def layers(self, node: Node, stack: tuple[str, ...] = ()) -> Node:
        if not node.is_list():
            return node
        out: list[Node] = []
        for item in node.value:
            out.extend(self.entry(item, stack))
            if self.count > MAX_LAYERS:
                self.problem(node.where, f"expands to more than {MAX_LAYERS:,} layers; lower the repeat counts")
                return Node(out, node.where)
        return Node(out, node.where)

    def repeat_count(self, item: Node) -> int:
        node = item.get("repeat")
        if node is None:
            return 1
        n = to_plain(node)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEAT:
            self.problem(node.where, f"repeat must be a whole number from 1 to {MAX_REPEAT}, got {_shown(n)}")
            return 1
        return n

    def entry(self, item: Node, stack: tuple[str, ...]) -> list[Node]:
        if not item.is_map():
            return [item]  # validation reports it
        repeat = self.repeat_count(item)
        if "block" in item.value:
            return self.block_use(item, repeat, stack)
        fields = Node({k: v for k, v in item.value.items() if k != "repeat"}, item.where)
        copies = []
        for k in range(1, repeat + 1):
            layer = copy_tree(fields)
            body = layer.get("body")
            if body is not None:
                layer.value["body"] = self.layers(body, stack)
            if repeat > 1:
                _rename(layer, lambda n, k=k: f"{n}_{k}")
            copies.append(layer)
        self.count += len(copies)
        return copies

    def block_use(self, use: Node, repeat: int, stack: tuple[str, ...]) -> list[Node]:
        ref = use.get("block")
        name = to_plain(ref)
        if not isinstance(name, str) or name not in self.blocks:
            hint = suggest(name, self.blocks, "blocks") if self.blocks else "; define it under model.blocks"
            self.problem(ref.where, f"unknown block {_shown(name)}{hint}")
            return []
        if name in stack:
            self.problem(ref.where, f"block '{name}' uses itself ({' -> '.join(stack + (name,))})")
            return []
        block = self.blocks[name]
        body_template = block.get("layers")
        if body_template is None or not body_template.is_list():
            return []  # validation of model.blocks reports it
        params_node = block.get("params")
        params = params_node.value if params_node is not None and params_node.is_map() else {}
        args = {k: v for k, v in use.value.items() if k not in USE_KEYS}
        for key, value in args.items():
            if key not in params:
                listed = suggest(key, params, "parameters") if params else f"; block '{name}' declares no params"
                self.problem(value.where, f"block '{name}' has no parameter '{key}'{listed}")
        values = {p: args.get(p, default) for p, default in params.items()}
        base = to_plain(use.get("name")) if "name" in use.value else None
        if base is not None and not isinstance(base, str):
            self.problem(use.get("name").where, f"name must be text, got {_shown(base)}")
            base = None
        at = f" at line {use.where.line}" if use.where.line else ""
        note = f"in block '{name}' used by {format_path(use.where.path)}{at}"
        out: list[Node] = []
        for k in range(1, repeat + 1):
            body = self.layers(self.substitute(body_template, values, note, name), stack + (name,))
            instance = f"{base}_{k}" if base and repeat > 1 else base
            if instance:
                for layer in body.value:
                    _rename(layer, lambda n: f"{instance}_{n}")
                first = body.value[0] if len(body.value) == 1 else None
                if first is not None and first.is_map() and "name" not in first.value:
                    first.value["name"] = Node(instance, use.get("name").where)
            elif repeat > 1:
                for layer in body.value:
                    _rename(layer, lambda n, k=k: f"{n}_{k}")
            out.extend(body.value)
        return out

    def substitute(self, node: Node, values: dict[str, Node], note: str, block: str) -> Node:
        """A copy of the block body with ``$param`` replaced by the node given for it."""
        where = node.where if node.where.note else Where(node.where.path, node.where.line, node.where.origin, note)
        if node.is_map():
            return Node({k: self.substitute(v, values, note, block) for k, v in node.value.items()}, where)
        if node.is_list():
            return Node([self.substitute(v, values, note, block) for v in node.value], where)
        if isinstance(node.value, str) and "$" in node.value:
            whole = PARAM_REF.match(node.value)
            if whole:
                name = whole.group(1) or whole.group(2)
                if name in values:
                    return copy_tree(values[name])
                self.unknown_parameter(where, name, values)
                return Node(node.value, where)

            def text_of(m: re.Match) -> str:
                if m.group(1) in values:
                    return str(to_plain(values[m.group(1)]))
                self.unknown_parameter(where, m.group(1), values)
                return m.group(0)

            return Node(PARAM_IN_TEXT.sub(text_of, node.value), where)
        return Node(node.value, where)


def expand_sugar(tree: Node, source: str) -> tuple[Node, list[str]]:
    """A copy of the tree with ``model.layers`` expanded; the problems found on the way."""
    model = tree.get("model")
    if model is None or not model.is_map() or model.get("layers") is None:
        return tree, []
    expander = SugarExpander(model.get("blocks"), source)
    layers = expander.layers(model.get("layers"))
    new_model = Node({**model.value, "layers": layers}, model.where)
    return Node({**tree.value, "model": new_model}, tree.where), expander.problems


def layer_name_problems(tree: Node, source: str) -> list[str]:
    """Explicit layer names must be unique over the whole model and usable in parameter paths."""
    model = tree.get("model")
    layers = model.get("layers") if model is not None else None
    if layers is None or not layers.is_list():
        return []
    problems, seen = [], {}

    def visit(items: list[Node]) -> None:
        for layer in items:
            if not layer.is_map():
                continue
            name = layer.get("name")
            if name is not None and isinstance(name.value, str):
                if not LAYER_NAME.match(name.value):
                    problems.append(f"{where_text(name.where, source)}: layer name {name.value!r} may hold only "
                                    "letters, digits, _ and - (it becomes part of parameter names)")
                elif name.value in seen:
                    first = seen[name.value]
                    problems.append(f"{where_text(name.where, source)}: duplicate layer name '{name.value}' "
                                    f"(also {where_text(first, source)}); layer names must be unique, "
                                    "give each block use its own name:")
                else:
                    seen[name.value] = name.where
            body = layer.get("body")
            if body is not None and body.is_list():
                visit(body.value)

    visit(layers.value)
    return problems


# ============================================================================ --set overrides
OVERRIDE_PATH = re.compile(r"^[A-Za-z_][\w\-]*(\[\d+\])*(\.[A-Za-z_][\w\-]*(\[\d+\])*)*$")
OVERRIDE_TOKEN = re.compile(r"[A-Za-z_][\w\-]*|\[\d+\]")


def parse_override(text: str, source: str) -> tuple[Path, Any]:
    """``model.layers[0].filters=32`` -> (('model', 'layers', 0, 'filters'), 32); the value read as YAML."""
    if "=" not in text:
        raise ConfigError(f"{source}: --set {text}: expected path=value, e.g. --set train.optimizer.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not OVERRIDE_PATH.match(key):
        raise ConfigError(f"{source}: --set {text}: '{key}' is not a path like train.optimizer.lr or model.layers[0].filters")
    path = tuple(int(t[1:-1]) if t.startswith("[") else t for t in OVERRIDE_TOKEN.findall(key))
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: --set {text}: the value is not valid YAML ({problem})") from None
    return path, value


def _override_keys(ann, node: Node, blocks: dict[str, Node]) -> list[str] | None:
    """Keys an override may add at ``node`` (None: any); layer entries also take repeat and block uses."""
    data = to_plain(node)
    if _is_layer_union(ann):
        if "block" in data:
            block = blocks.get(data["block"]) if isinstance(data["block"], str) else None
            params = block.get("params") if block is not None and block.is_map() else None
            return list(USE_KEYS) + (list(params.value) if params is not None and params.is_map() else [])
        keys = valid_keys(ann, data)
        return None if keys is None else keys + ["repeat"]
    return valid_keys(ann, data)


def apply_override(tree: Node, text: str, source: str) -> None:
    """Set one ``path=value`` in the tree as written; the path must exist or be a valid key there."""
    path, value = parse_override(text, source)
    origin = f"--set {text}"
    model = tree.get("model")
    blocks = model.get("blocks") if model is not None else None
    blocks = blocks.value if blocks is not None and blocks.is_map() else {}
    node, ann = tree, Config

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {origin}: {message}")

    for i, key in enumerate(path):
        here, last = path[:i], i == len(path) - 1
        new = from_plain(value, Where(path, origin=origin)) if last else None
        if isinstance(key, int):
            if not node.is_list():
                raise fail(f"{format_path(here)} is not a list, so [{key}] does not exist")
            if key >= len(node.value):
                raise fail(f"{format_path(here)} has {len(node.value)} entries; [{key}] is out of range")
            if last:
                node.value[key] = new
                return
        else:
            if isinstance(node.value, str) and model_for(ann, node.value) is not None:
                node.value = {"type": Node(node.value, node.where)}  # loss: mse -> {type: mse}
            if not node.is_map():
                raise fail(f"{format_path(here)} is {_shown(to_plain(node))}, not a mapping, so it has no '{key}'")
            if key not in node.value:
                keys = _override_keys(ann, node, blocks)
                if keys is not None and key not in keys:
                    what = "keys" if here else "sections"
                    raise fail(f"{format_path(here + (key,))} does not exist{suggest(key, keys, what)}")
                if last:
                    node.value[key] = new
                    return
                node.value[key] = Node({}, Where(here + (key,), origin=origin))
            elif last:
                node.value[key] = new
                return
        child = node.value[key]
        ann = Any if _is_layer_union(ann) and isinstance(to_plain(node), dict) and "block" in node.value \
            else child_annotation(ann, to_plain(node), key)
        node = child


# ============================================================================ pydantic errors -> lines
@dataclass
class _Located:
    error: dict
    nodes: list[Node]  # from the root down to the deepest node the error's location reaches
    path: Path  # data path of nodes[-1]
    rest: Path = ()  # location below the deepest node (a missing key)
    union_at: Path | None = None  # where a union member's tag appeared in the location
    order: int = 0
    tags: list = dc_field(default_factory=list)


def _locate(err: dict, tree: Node, order: int) -> _Located:
    loc = err["loc"]
    found = _Located(err, [tree], (), order=order)
    for i, el in enumerate(loc):
        node = found.nodes[-1]
        if found.rest:
            found.rest += (el,)
        elif node.is_map() and isinstance(el, str) and el in node.value:
            found.nodes.append(node.value[el])
            found.path += (el,)
        elif node.is_list() and isinstance(el, int) and 0 <= el < len(node.value):
            found.nodes.append(node.value[el])
            found.path += (el,)
        elif node.is_map() and el == node.scalar("type"):
            continue  # the discriminator tag pydantic puts in the location
        elif isinstance(el, str) and not (err["type"] == "missing" and i == len(loc) - 1):
            if found.union_at is None:
                found.union_at = found.path
            if found.path == found.union_at:
                found.tags.append(el)
        else:
            found.rest = (el,)
    return found


def _kind(path: Path) -> str:
    names = [p for p in path if isinstance(p, str)]
    return "layer" if not names or names[-1] in ("layers", "body") else names[-1]


def _expected(tree: Node, path: Path) -> str:
    ann = annotation_at(Config, to_plain(tree), path)
    return describe_type(ann) if ann not in (None, Any) else ""


def _message(found: _Located, tree: Node, merged: bool) -> tuple[Where, Path, str] | None:
    """(where, path below it, message) for one located pydantic error; None to drop it."""
    err, node = found.error, found.nodes[-1]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "union_tag_invalid":
        tags = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        type_node = node.get("type") or node
        return type_node.where, (), f"unknown {_kind(found.path)} type {_shown(ctx.get('tag'))}" + suggest(ctx.get("tag"), tags, "types")
    if kind == "union_tag_not_found":
        ann = annotation_at(Config, to_plain(tree), found.path)
        tags = [_type_tag(m) for m in (_unwrap(x) for x in _union_members(ann)) if _is_model(m) and _type_tag(m)]
        return node.where, (), "missing 'type'" + (f" (one of: {', '.join(sorted(tags))})" if tags else "")
    if kind == "missing":
        key = found.rest[-1] if found.rest else found.path[-1]
        expected = _expected(tree, found.path + (key,))
        expected = f" ({expected})" if expected and len(expected) <= 80 else ""
        return node.where, found.rest[:-1], f"missing required key '{key}'{expected}"
    if kind == "extra_forbidden":
        parent = found.nodes[-2] if len(found.nodes) > 1 else tree
        keys = valid_keys(annotation_at(Config, to_plain(tree), found.path[:-1]), to_plain(parent)) or []
        key = found.path[-1] if found.path else found.rest[-1]
        return node.where, found.rest, f"unknown key '{key}'" + suggest(key, [k for k in keys if k != "type"], "keys")
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        is_layer = _kind(found.path) == "layer" and found.path and isinstance(found.path[-1], int)
        like = " like {type: conv2d, filters: 8, ...}" if is_layer else ""
        return node.where, found.rest, f"expected a mapping{like}, got {_shown(err.get('input'))}"
    value = err.get("input")
    if isinstance(value, str) and node.where.note and (PARAM_REF.match(value) or PARAM_IN_TEXT.search(value)):
        return None  # an unknown $parameter inside a block, already reported by the expansion
    message = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if "input" in err and not isinstance(value, dict):
        message += f", got {_shown(value)}"
    if isinstance(value, str) and value.startswith("$"):
        message += " ($parameters work only inside model.blocks)"
    if merged or kind.endswith("_type") or kind.endswith("_parsing"):
        expected = _expected(tree, found.path)
        if expected and expected not in message and len(expected) <= 120:
            message += f" (expected {expected})"
    return node.where, found.rest, message


def validation_problems(error: ValidationError, tree: Node, source: str) -> list[str]:
    """One line per problem; the attempts of a union's members merged into one.

    A mistake inside a block used several times is reported once, at its first use.
    """
    located = [_locate(err, tree, i) for i, err in enumerate(error.errors())]
    # "unknown key 'kernal_size'; did you mean 'kernel_size'?" already says the key is missing
    misspelled = set()
    for f in located:
        if f.error["type"] == "extra_forbidden" and f.path and len(f.nodes) > 1:
            ann = annotation_at(Config, to_plain(tree), f.path[:-1])
            close = difflib.get_close_matches(str(f.path[-1]), valid_keys(ann, to_plain(f.nodes[-2])) or [], n=1, cutoff=0.6)
            misspelled.update((f.path[:-1], c) for c in close)
    located = [f for f in located if not (f.error["type"] == "missing" and f.rest and (f.path, f.rest[-1]) in misspelled)]
    keep: list[tuple[_Located, bool]] = []
    unions: dict[Path, list[_Located]] = {}
    for found in located:
        if found.union_at is None:
            keep.append((found, False))
        else:
            unions.setdefault(found.union_at, []).append(found)
    for at, group in unions.items():
        deeper = [f for f in group if len(f.path) > len(at)]
        if deeper:  # the member that matched the shape of the value says what is wrong inside it
            keep.extend((f, False) for f in deeper)
            continue
        literal = [f for f in group if f.error["type"] == "literal_error" and isinstance(f.error.get("input"), str)]
        keep.append(((literal or group)[0], len(group) > 1))
    keep.sort(key=lambda pair: pair[0].order)
    problems: dict[tuple, str] = {}
    for found, merged in keep:
        result = _message(found, tree, merged)
        if result is not None:
            where, rest, message = result
            key = (where.path, where.line, where.origin, rest, message)
            problems.setdefault(key, f"{where_text(where, source, rest)}: {message}")
    return list(problems.values())


# ============================================================================ loading
def config_from_tree(tree: Node, source: str, overrides=(), text: str | None = None,
                     path: FilePath | None = None) -> Config:
    """Overrides, sugar, name checks and validation of a parsed tree; one ConfigError with every problem."""
    for o in overrides:
        apply_override(tree, o, source)
    raw = to_plain(tree)
    expanded, problems = expand_sugar(tree, source)
    sugar_failed = bool(problems)
    problems += layer_name_problems(expanded, source)
    config = None
    try:
        config = Config.model_validate(to_plain(expanded))
    except ValidationError as e:
        found = validation_problems(e, expanded, source)
        if sugar_failed:  # a block that could not be expanded leaves model.layers short: not news
            found = [p for p in found if ": model.layers: " not in p]
        problems += found
        if not problems:  # every error was a repeat of one already reported; should not happen, but never pass
            problems = [f"{source}: {e.error_count()} validation error(s): {e.errors()[0]['msg']}"]
    if problems:
        problems = sorted(dict.fromkeys(problems), key=lambda p: _line_of(p, source))
        raise ConfigError(problems[0], problems)
    config._source_path = path
    config._source_text = text
    config._source_name = source
    config._overrides = tuple(overrides)
    config._raw = raw
    config._tree = expanded
    return config


def _line_of(problem: str, source: str) -> float:
    """The line a problem names (for sorting); problems without one go last."""
    m = re.match(re.escape(source) + r":(\d+)", problem)
    return int(m.group(1)) if m else float("inf")


def parse_config(text: str, source: str = "<config>", overrides=(), path: FilePath | None = None) -> Config:
    """Validate a config given as YAML text; ``source`` names it in error messages."""
    return config_from_tree(parse_yaml(text, source), source, overrides, text, path)


def config_from_dict(data: dict, overrides=(), source: str = "<config>") -> Config:
    """Validate a config given as a dict (blocks and repeat allowed, as in a file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping, got {type(data).__name__}")
    return config_from_tree(from_plain(data, Where(())), source, overrides)


def load_config(path, overrides=()) -> Config:
    """Read, override, expand and validate a YAML config file.

    Raises ConfigError listing every problem as ``file:line: path: message``.
    """
    source = str(path)
    p = FilePath(path)
    if not p.is_file():
        raise ConfigError(f"{source}: no such file" if not p.exists() else f"{source}: is a directory, not a config file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {size / 1e6:.1f} MB is too large for a config file (the limit is 10 MB)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}); is this a config file?") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read ({e.strerror})") from None
    return parse_config(text, source, overrides, p)


# ============================================================================ reference
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
    """Each field of a schema: name, accepted values, default (``required`` if none)."""
    return [
        {"name": k, "type": describe_type(f.annotation, f.metadata), "default": _default_text(f), "required": f.is_required()}
        for k, f in model.model_fields.items()
    ]

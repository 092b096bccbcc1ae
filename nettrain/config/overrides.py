"""``--set path=value`` overrides, applied to the config tree as written (before sugar is expanded).

The path must exist in the file or be a valid key at that place (a layer entry
also takes ``repeat`` and, for a block use, the block's parameters); the value
is read as YAML.  Values set this way remember the ``--set`` that gave them, so
a validation error names it instead of a line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import ConfigError
from .messages import suggest
from .schema import USE_KEYS, Config
from .walk import child_annotation, is_layer_union, model_for, valid_keys
from .yamltree import Node, Path, Where, format_path, from_plain, shown, to_plain

OVERRIDE_PATH = re.compile(r"^[A-Za-z_][\w\-]*(\[-?\d+\])*(\.[A-Za-z_][\w\-]*(\[-?\d+\])*)*$")
OVERRIDE_TOKEN = re.compile(r"[A-Za-z_][\w\-]*|\[-?\d+\]")
DOTTED_INDEX = re.compile(r"\.(-?\d+)(?=[.\[]|$)")  # model.layers.0.filters: a position written as a key


def parse_override(text: str, source: str) -> tuple[Path, Any]:
    """``model.layers[0].filters=32`` -> (('model', 'layers', 0, 'filters'), 32); the value read as YAML.

    Positions may be negative, counted from the end as in Python (``model.layers[-1]``).
    """
    if "=" not in text:
        raise ConfigError(f"{source}: --set {text}: expected path=value, e.g. --set train.optimizer.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not OVERRIDE_PATH.match(key):
        bracketed = DOTTED_INDEX.sub(r"[\1]", key)
        if OVERRIDE_PATH.match(bracketed):
            raise ConfigError(f"{source}: --set {text}: '{key}' is not a path; write list positions in brackets: "
                              f"{bracketed}")
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
    if is_layer_union(ann):
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

    reached: list = []  # the path so far, negative positions counted from the end
    for i, key in enumerate(path):
        here, last = tuple(reached), i == len(path) - 1
        if isinstance(key, int):
            if not node.is_list():
                raise fail(f"{format_path(here)} is not a list, so [{key}] does not exist")
            if not -len(node.value) <= key < len(node.value):
                raise fail(f"{format_path(here)} has {len(node.value)} entries; [{key}] is out of range")
            key %= len(node.value)
        reached.append(key)
        new = from_plain(value, Where(tuple(reached), origin=origin)) if last else None
        if isinstance(key, int):
            if last:
                node.value[key] = new
                return
        else:
            if isinstance(node.value, str) and model_for(ann, node.value) is not None:
                node.value = {"type": Node(node.value, node.where)}  # loss: mse -> {type: mse}
            if not node.is_map():
                raise fail(f"{format_path(here)} is {shown(to_plain(node))}, not a mapping, so it has no '{key}'")
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
        ann = Any if is_layer_union(ann) and isinstance(to_plain(node), dict) and "block" in node.value \
            else child_annotation(ann, to_plain(node), key)
        node = child


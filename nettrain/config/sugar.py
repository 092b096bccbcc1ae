"""Config sugar: ``repeat: n`` and named blocks in ``model.layers``, expanded into plain layers.

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

Expansion works on the YAML tree, so every copy keeps the line it came from.
Layer names are checked here too: unique over the model, usable in parameter paths.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .messages import suggest
from .schema import PARAM_IN_TEXT, PARAM_REF, USE_KEYS
from .yamltree import Node, Where, copy_tree, format_path, shown, to_plain, where_text

MAX_REPEAT = 1000
MAX_LAYERS = 10_000
LAYER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


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
            self.problem(node.where, f"repeat must be a whole number from 1 to {MAX_REPEAT}, got {shown(n)}")
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
            self.problem(ref.where, f"unknown block {shown(name)}{hint}")
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
            self.problem(use.get("name").where, f"name must be text, got {shown(base)}")
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


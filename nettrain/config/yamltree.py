"""YAML parsed into a tree that remembers where every value came from.

``yaml.safe_load`` returns plain dicts and lists and forgets line numbers; a
config error must say ``configs/x.yaml:12``. :func:`parse_yaml` composes the
document with PyYAML's ``SafeLoader`` (the same scalars, tags and merge keys
as ``safe_load``) and builds :class:`Node` objects that carry a :class:`Where`:
the path in the file as written and the 1-based line of the key or list item.

It refuses what ``safe_load`` would silently accept or choke on: duplicate
keys (both lines named), alias bombs (a budget on expanded nodes), cyclic
aliases, absurd nesting, non-text keys, an empty file and a non-mapping top.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import yaml

from ..errors import ConfigError

MAX_NODES = 200_000  # values after alias expansion; a real config has a few hundred
MAX_DEPTH = 64

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Where:
    """Where a value came from: its path in the source, the line, or the --set that gave it."""

    path: Path
    line: int | None = None
    origin: str | None = None  # "--set train.lr=0.1" for command-line overrides
    note: str | None = None  # "in block 'basic' used by model.layers[2] at line 30"


class Node:
    """A YAML value (dict of Nodes, list of Nodes, or a scalar) and where it came from."""

    __slots__ = ("value", "where")

    def __init__(self, value: Any, where: Where):
        self.value = value
        self.where = where

    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    def is_list(self) -> bool:
        return isinstance(self.value, list)

    def get(self, key: str) -> "Node | None":
        return self.value.get(key) if self.is_map() else None

    def scalar(self, key: str) -> Any:
        """The plain value under ``key`` of a mapping node, or None."""
        child = self.get(key)
        return None if child is None or child.is_map() or child.is_list() else child.value

    def __repr__(self) -> str:
        return f"Node({to_plain(self)!r} @ {self.where.line})"


def format_path(path: Path) -> str:
    """('model', 'layers', 3, 'filters') -> 'model.layers[3].filters'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def to_plain(node: Node) -> Any:
    """The tree as plain dicts, lists and scalars."""
    if node.is_map():
        return {k: to_plain(v) for k, v in node.value.items()}
    if node.is_list():
        return [to_plain(v) for v in node.value]
    return copy.deepcopy(node.value)


def from_plain(value: Any, where: Where) -> Node:
    """Wrap plain data (a dict given in Python, a --set value) as nodes that all share ``where``'s origin."""
    if isinstance(value, dict):
        return Node({str(k): from_plain(v, replace(where, path=where.path + (str(k),))) for k, v in value.items()}, where)
    if isinstance(value, (list, tuple)):
        return Node([from_plain(v, replace(where, path=where.path + (i,))) for i, v in enumerate(value)], where)
    return Node(value, where)


def copy_tree(node: Node, note: str | None = None) -> Node:
    """A deep copy; ``note`` (if given) is attached to every node that has none yet."""
    where = node.where if note is None or node.where.note else replace(node.where, note=note)
    if node.is_map():
        return Node({k: copy_tree(v, note) for k, v in node.value.items()}, where)
    if node.is_list():
        return Node([copy_tree(v, note) for v in node.value], where)
    return Node(node.value, where)


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


def shown(value, limit: int = 60) -> str:
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


# -- parsing --------------------------------------------------------------------
def yaml_error(source: str, error: yaml.YAMLError) -> str:
    """PyYAML's error as ``file:line:col: problem`` (lines and columns 1-based)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    text = f"{problem} ({context})" if context and getattr(error, "problem", None) else problem
    if "\t" in text or "'\\t'" in text:
        text += "; indent with spaces, YAML does not allow tabs"
    kind = "YAML error" if isinstance(error, yaml.constructor.ConstructorError) else "YAML syntax error"
    if mark is not None:
        return f"{source}:{mark.line + 1}:{mark.column + 1}: {kind}: {text}"
    position = getattr(error, "position", None)
    return f"{source}: YAML error{f' at character {position}' if position is not None else ''}: {text}"


class _TreeBuilder:
    """Turns composed PyYAML nodes into :class:`Node` trees, collecting every problem."""

    def __init__(self, loader: yaml.SafeLoader, source: str):
        self.loader = loader
        self.source = source
        self.problems: list[str] = []
        self.count = 0
        self.active: set[int] = set()

    def problem(self, line: int, message: str) -> None:
        self.problems.append(f"{self.source}:{line}: {message}")

    def build(self, ynode: yaml.Node, path: Path, line: int) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(
                f"{self.source}: the document expands to more than {MAX_NODES:,} values "
                "(an alias bomb?); write the config without nested aliases"
            )
        if len(path) > MAX_DEPTH:
            raise ConfigError(f"{self.source}:{line}: {format_path(path)}: nested more than {MAX_DEPTH} levels deep")
        if id(ynode) in self.active:
            raise ConfigError(f"{self.source}:{line}: {format_path(path)}: an alias refers to itself")
        where = Where(path, line)
        if isinstance(ynode, yaml.ScalarNode):
            return Node(self.loader.construct_object(ynode, deep=True), where)
        self.active.add(id(ynode))
        try:
            if isinstance(ynode, yaml.SequenceNode) and ynode.tag == "tag:yaml.org,2002:seq":
                return Node([self.build(item, path + (i,), item.start_mark.line + 1)
                             for i, item in enumerate(ynode.value)], where)
            if isinstance(ynode, yaml.MappingNode) and ynode.tag == "tag:yaml.org,2002:map":
                return Node(self.mapping(ynode, path), where)
            # !!set, !!omap, !!pairs and custom tags: let safe_load's constructor decide
            return Node(self.loader.construct_object(ynode, deep=True), where)
        finally:
            self.active.discard(id(ynode))

    def mapping(self, ynode: yaml.MappingNode, path: Path) -> dict[str, Node]:
        own = sum(1 for k, _ in ynode.value if k.tag != "tag:yaml.org,2002:merge")
        self.loader.flatten_mapping(ynode)  # resolves "<<" merge keys as safe_load does
        pairs = ynode.value
        merged = len(pairs) - own  # merged pairs come first; the mapping's own keys override them
        out: dict[str, Node] = {}
        first_line: dict[str, int] = {}
        for i, (knode, vnode) in enumerate(pairs):
            line = knode.start_mark.line + 1
            key = self.loader.construct_object(knode, deep=True) if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = "a list or mapping" if key is None and not isinstance(knode, yaml.ScalarNode) else repr(key)
                self.problem(line, f"{format_path(path)}: keys must be text, got {shown} (quote it)")
                continue
            if key in first_line and i >= merged and first_line[key] >= 0:
                self.problem(line, f"{format_path(path + (key,))}: duplicate key '{key}' (first given at line {first_line[key]})")
                continue
            first_line[key] = line if i >= merged else -1
            out[key] = self.build(vnode, path + (key,), line)
        return out


def parse_yaml(text: str, source: str) -> Node:
    """Parse one YAML document into a :class:`Node` tree whose top level is a mapping.

    Raises ConfigError with every problem found (``file:line[:col]: ...``).
    """
    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise ConfigError(f"{source}: the file is empty; a config needs at least a 'model:' section")
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader refuses control characters here
        root = loader.get_single_node()
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
            raise ConfigError(f"{source}: the file is empty; a config needs at least a 'model:' section")
        if not (isinstance(root, yaml.MappingNode) and root.tag == "tag:yaml.org,2002:map"):
            raise ConfigError(
                f"{source}:{root.start_mark.line + 1}: the top level must be a mapping "
                "(model:, data:, train:, output:), not a list or a single value"
            )
        builder = _TreeBuilder(loader, source)
        tree = builder.build(root, (), root.start_mark.line + 1)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error(source, e)) from None
    except RecursionError:
        raise ConfigError(f"{source}: the document is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if builder.problems:
        raise ConfigError(builder.problems[0], builder.problems)
    return tree

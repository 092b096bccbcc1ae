"""Error wording: did-you-mean suggestions and pydantic's errors as ``file:line: path: problem`` lines.

pydantic reports locations in the validated data (``('model', 'layers', 2,
'conv2d', 'filters')``, with union tags mixed in); :func:`validation_problems`
walks them back to the nodes of the tree as written, so each problem names the
file's line (or the ``--set`` that gave the value, or the block use it came from),
merges the attempts of a union's members into one message, and drops repeats.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field as dc_field
from typing import Any

from pydantic import ValidationError

from .reference import describe_type
from .schema import PARAM_IN_TEXT, PARAM_REF, Config
from .walk import annotation_at, is_model, type_tag, union_members, unwrap, valid_keys
from .yamltree import Node, Path, Where, shown, to_plain, where_text


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
        return type_node.where, (), f"unknown {_kind(found.path)} type {shown(ctx.get('tag'))}" + suggest(ctx.get("tag"), tags, "types")
    if kind == "union_tag_not_found":
        ann = annotation_at(Config, to_plain(tree), found.path)
        tags = [type_tag(m) for m in (unwrap(x) for x in union_members(ann)) if is_model(m) and type_tag(m)]
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
        return node.where, found.rest, f"expected a mapping{like}, got {shown(err.get('input'))}"
    value = err.get("input")
    if isinstance(value, str) and node.where.note and (PARAM_REF.match(value) or PARAM_IN_TEXT.search(value)):
        return None  # an unknown $parameter inside a block, already reported by the expansion
    message = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if "input" in err and not isinstance(value, dict):
        # pydantic's own "got ..." becomes the reason: "got 1.5 (a number with a fractional part)"
        message, said, why = message.partition(", got ")
        message += f", got {shown(value)}" + (f" ({why})" if said else "")
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


"""The YAML tree: the same values as ``yaml.safe_load``, plus the line and path of every value."""

from __future__ import annotations

import pytest
import yaml

from nettrain.config.yamltree import (
    MAX_DEPTH,
    MAX_NODES,
    Node,
    Where,
    copy_tree,
    format_path,
    from_plain,
    node_at,
    parse_yaml,
    shown,
    to_plain,
    where_text,
)
from nettrain.errors import ConfigError

TEXT = """\
# a comment
model:
  input_shape: [28, 28, 1]
  layers:
    - {type: conv2d, filters: 8}

    - type: dense
      units: 10
base: &base {lr: 0.1, momentum: 0.9}
train:
  <<: *base
  lr: 0.5
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_yaml(text, "f.yaml")
    return err.value.problems


def test_values_are_those_of_safe_load():
    assert to_plain(parse_yaml(TEXT, "f.yaml")) == yaml.safe_load(TEXT)


def test_every_key_and_list_item_knows_its_line_and_path():
    tree = parse_yaml(TEXT, "f.yaml")
    model = tree.get("model")
    assert (model.where.line, model.where.path) == (2, ("model",))
    layers = model.get("layers")
    assert [item.where.line for item in layers.value] == [5, 7]
    units = layers.value[1].get("units")
    assert (units.value, units.where.line, units.where.path) == (10, 8, ("model", "layers", 1, "units"))
    assert layers.value[0].get("filters").where.line == 5  # a flow mapping: the line of its key


def test_merge_keys_come_first_and_own_keys_win():
    train = parse_yaml(TEXT, "f.yaml").get("train")
    assert to_plain(train) == {"lr": 0.5, "momentum": 0.9}
    assert train.get("lr").where.line == 12


def test_format_path():
    assert format_path(("model", "layers", 3, "filters")) == "model.layers[3].filters"
    assert format_path(("model",)) == "model"
    assert format_path((0, "a")) == "[0].a"
    assert format_path(()) == "(top level)"


def test_where_text_names_the_line_the_set_or_the_block():
    path = ("train", "lr")
    assert where_text(Where(path, 12), "f.yaml") == "f.yaml:12: train.lr"
    assert where_text(Where(path, None, origin="--set train.lr=1"), "f.yaml") == "f.yaml: --set train.lr=1: train.lr"
    assert where_text(Where(path), "f.yaml", rest=("x",)) == "f.yaml: train.lr.x"
    note = "in block 'b' used by model.layers[2] at line 30"
    assert where_text(Where(path, 4, note=note), "f.yaml") == f"f.yaml:4: train.lr ({note})"


def test_node_at_returns_the_deepest_node_and_the_missing_rest():
    tree = parse_yaml(TEXT, "f.yaml")
    node, rest = node_at(tree, ("model", "layers", 1, "units"))
    assert (node.value, rest) == (10, ())
    node, rest = node_at(tree, ("model", "layers", 5, "units"))
    assert node.where.path == ("model", "layers") and rest == (5, "units")
    node, rest = node_at(tree, ("model", "layers", -1))
    assert node.where.path == ("model", "layers") and rest == (-1,)


def test_plain_data_round_trips_and_shares_the_origin():
    data = {"a": [1, {"b": None}], "c": "text"}
    tree = from_plain(data, Where((), origin="--set a=..."))
    assert to_plain(tree) == data
    inner = tree.get("a").value[1].get("b")
    assert inner.where.path == ("a", 1, "b") and inner.where.origin == "--set a=..."


def test_copies_are_deep_and_keep_an_existing_note():
    tree = parse_yaml("a: {b: [1, 2]}\n", "f.yaml")
    tree.get("a").value["b"] = Node(tree.get("a").get("b").value, Where(("a", "b"), 1, note="first"))
    copy = copy_tree(tree, note="second")
    copy.get("a").get("b").value.append(Node(3, Where(())))
    assert to_plain(tree) == {"a": {"b": [1, 2]}}
    assert copy.get("a").where.note == "second"
    assert copy.get("a").get("b").where.note == "first"


def test_node_accessors():
    tree = parse_yaml("a: {b: 1, c: [2]}\n", "f.yaml")
    a = tree.get("a")
    assert a.is_map() and not a.is_list() and a.scalar("b") == 1
    assert a.scalar("c") is None and a.scalar("nope") is None
    assert a.get("c").is_list() and a.get("c").get("x") is None
    assert "@ 1" in repr(a)


def test_shown_writes_values_as_yaml_and_shortens():
    assert shown("x") == "'x'" and shown(None) == "null" and shown(True) == "true" and shown(3) == "3"
    assert shown([1, {"a": 2}]) == "[1, {a: 2}]"
    long = shown(list(range(100)))
    assert len(long) == 60 and long.endswith("...")


def test_duplicate_keys_name_both_lines():
    assert problems("a: 1\nb: 2\na: 3\n") == ["f.yaml:3: a: duplicate key 'a' (first given at line 1)"]


def test_every_problem_of_a_file_is_reported():
    found = problems("a: 1\na: 2\nb: {c: 1, c: 2}\n? [1]\n: 3\n")
    assert found == [
        "f.yaml:2: a: duplicate key 'a' (first given at line 1)",
        "f.yaml:3: b.c: duplicate key 'c' (first given at line 3)",
        "f.yaml:4: (top level): keys must be text, got a list or mapping (quote it)",
    ]


@pytest.mark.parametrize("text, message", [
    ("", "f.yaml: the file is empty"),
    ("# only a comment\n", "f.yaml: the file is empty"),
    ("~\n", "f.yaml: the file is empty"),
    ("- 1\n", "f.yaml:1: the top level must be a mapping"),
    ("a: [1, 2\n", "f.yaml:2:1: YAML syntax error: expected ',' or ']'"),
    ("a:\n\tb: 1\n", "f.yaml:2:1: YAML syntax error: found character '\\t'"),
    ("a: !!python/object:os.system x\n", "f.yaml:1:4: YAML error: could not determine a constructor"),
    ("a: &x [*x]\n", "f.yaml:1: a[0]: an alias refers to itself"),
    ("1: x\n", "f.yaml:1: (top level): keys must be text, got 1 (quote it)"),
])
def test_errors_name_the_file_and_line(text, message):
    found = problems(text)
    assert len(found) == 1 and found[0].startswith(message), found


def test_tabs_get_a_hint():
    assert "indent with spaces, YAML does not allow tabs" in problems("a:\n\tb: 1\n")[0]


def test_alias_bombs_and_deep_nesting_are_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES:,} values"):
        parse_yaml("\n".join(lines) + "\n", "f.yaml")
    deep = "a: " + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "\n"
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_yaml(deep, "f.yaml")

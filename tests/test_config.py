"""The config loader: schema, YAML problems with lines, sugar (blocks, repeat), --set overrides, fuzzing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nettrain.config import (
    MAX_FILE_BYTES,
    Config,
    config_from_dict,
    load_config,
    parse_config,
    user_to_internal_shape,
)
from nettrain.errors import ConfigError, NettrainError
from nettrain.layers import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

SMALL = """\
name: small
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, padding: same, activation: relu}
    - {type: maxpool2d, pool_size: 2}
    - {type: flatten}
    - {type: dense, units: 10}
train:
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9}
  epochs: 2
"""


def problems_of(text: str, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml", overrides)
    return info.value.problems


def one_problem(text: str, overrides=()) -> str:
    problems = problems_of(text, overrides)
    assert len(problems) == 1, problems
    return problems[0]


# -- the shipped configs ---------------------------------------------------------------
def test_every_shipped_config_is_there():
    names = {p.name for p in CONFIGS}
    for expected in ("alexnet_100.yaml", "cifar_resnet.yaml", "resnet_bottleneck.yaml", "cifar_cnn.yaml",
                     "fashion_cnn.yaml", "fashion_lstm.yaml", "fashion_gru.yaml", "quickstart.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_has_a_header(path):
    config = load_config(path)
    assert config.source_path == path
    assert config.data is not None
    first_lines = path.read_text().splitlines()[:2]
    assert all(line.startswith("#") for line in first_lines), "each shipped config starts with a comment header"


def test_quickstart_uses_the_shipped_subset():
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    assert config.data.dataset == "fashion_mnist"
    assert config.data.path == "data/fashion-mnist-subset"
    assert config.data.validation_split == pytest.approx(0.1)


def test_recurrent_configs_read_rows_as_timesteps():
    for name, kind in (("fashion_lstm.yaml", "lstm"), ("fashion_gru.yaml", "gru")):
        config = load_config(ROOT / "configs" / name)
        assert config.model.internal_input_shape == (28, 28)
        assert config.model.layers[0].type == kind and config.model.layers[0].units == 128


# -- schema and defaults --------------------------------------------------------------------
def test_defaults_and_input_shape_conversion():
    config = parse_config(SMALL)
    assert config.model.internal_input_shape == (1, 8, 8)
    assert config.train.batch_size == 64 and config.train.seed == 0
    assert config.train.schedule.type == "constant"
    assert config.train.loss.type == "softmax_cross_entropy"
    assert config.train.metrics == ["accuracy"]
    assert config.train.on_nonfinite == "stop" and config.train.early_stopping is None
    assert config.output.dir is None and config.output.root == "runs"
    assert (config.output.monitor, config.output.mode, config.output.plots) == ("val_accuracy", "max", True)
    assert config.run_name == "small"


@pytest.mark.parametrize("written, internal", [([32, 24, 3], (3, 32, 24)), ([28, 14], (28, 14)), ([7], (7,))])
def test_user_shapes_become_internal(written, internal):
    assert user_to_internal_shape(written) == internal


def test_bare_strings_for_loss_optimizer_and_schedule():
    config = parse_config(SMALL.replace("optimizer: {type: sgd, lr: 0.1, momentum: 0.9}",
                                        "optimizer: adamw\n  loss: mse\n  schedule: cosine"))
    assert config.train.optimizer.type == "adamw"
    assert config.train.loss.type == "mse"
    assert config.train.schedule.type == "cosine"


def test_early_stopping_section():
    config = parse_config(SMALL + "  early_stopping: {patience: 3}\n")
    assert config.train.early_stopping.patience == 3
    assert config.train.early_stopping.monitor == "val_accuracy"


def test_resolved_config_round_trips_for_every_shipped_config():
    for path in CONFIGS:
        config = load_config(path)
        resolved = config.resolved
        assert "blocks" not in resolved["model"]
        assert Config.model_validate(resolved).resolved == resolved
        assert config_from_dict(resolved).resolved == resolved
        again = parse_config(config.to_yaml(), "again.yaml")
        assert again.resolved == resolved


def test_raw_keeps_the_sugar_and_source_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SMALL)
    config = load_config(path, ["train.epochs=5"])
    assert config.source_text == SMALL
    assert config.raw["train"]["epochs"] == 5
    assert config.resolved["train"]["epochs"] == 5
    assert config.overrides == ("train.epochs=5",)
    assert "--set train.epochs=5" in config.to_yaml()


# -- YAML-level problems ---------------------------------------------------------------------
def test_syntax_error_has_line_and_column():
    message = one_problem("model:\n  input_shape: [28, 28\n  layers: []\n")
    assert re.match(r"x\.yaml:\d+:\d+: YAML syntax error", message), message


def test_tabs_are_reported_with_line_and_column():
    message = one_problem("model:\n\tinput_shape: [1]\n")
    assert message.startswith("x.yaml:2:1: ")
    assert "tab" in message


def test_duplicate_keys_name_both_lines():
    message = one_problem("model:\n  input_shape: [4]\n  layers: [{type: dense, units: 2}]\n  input_shape: [5]\n")
    assert message.startswith("x.yaml:4: model.input_shape: duplicate key 'input_shape'")
    assert "line 2" in message


def test_duplicate_keys_everywhere_are_all_reported():
    text = "model:\n  input_shape: [4]\n  input_shape: [4]\n  layers: [{type: dense, units: 2, units: 3}]\ntrain: {epochs: 1, epochs: 2}\n"
    problems = problems_of(text)
    assert len(problems) == 3
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5"]


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_file(text):
    assert "empty" in one_problem(text)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text):
    assert "top level must be a mapping" in one_problem(text)


def test_alias_bomb_is_refused():
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i, name in enumerate("bcdefgh"):
        prev = "a" if i == 0 else "bcdefgh"[i - 1]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    assert "alias bomb" in one_problem("\n".join(lines) + "\n")


def test_recursive_alias_is_refused():
    assert "refers to itself" in one_problem("a: &a [*a]\n")
    assert "refers to itself" in one_problem("model: &m {layers: [*m]}\n")


def test_python_tags_are_refused_like_safe_load():
    message = one_problem("model: !!python/object/apply:os.system ['true']\n")
    assert message.startswith("x.yaml:1:")
    assert "constructor" in message


def test_merge_keys_work_and_own_keys_win():
    text = SMALL.replace("    - {type: dense, units: 10}", "    - {<<: {type: dense, units: 99}, units: 10}")
    assert parse_config(text).model.layers[-1].units == 10


def test_non_text_keys_are_reported():
    assert "keys must be text" in one_problem("model:\n  1: 2\n")


def test_file_too_large(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (MAX_FILE_BYTES + 10) + b"\n")
    with pytest.raises(ConfigError, match="too large"):
        load_config(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_binary_file_is_not_a_config(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


# -- validation problems, mapped to lines -----------------------------------------------------
def test_unknown_key_with_did_you_mean_and_line():
    text = SMALL.replace("kernel_size: 3, padding: same", "kernal_size: 3, padding: same")
    message = one_problem(text)
    assert message == "x.yaml:5: model.layers[0].kernal_size: unknown key 'kernal_size'; did you mean 'kernel_size'?"


def test_wrong_type_names_path_line_value_and_expectation():
    message = one_problem(SMALL.replace("kernel_size: 3, padding: same", "kernel_size: three, padding: same"))
    assert message.startswith("x.yaml:5: model.layers[0].kernel_size: Input should be a valid integer")
    assert "got 'three'" in message
    assert "(expected int > 0 | [int > 0, int > 0])" in message


def test_wrong_item_inside_a_pair_points_at_the_item():
    message = one_problem(SMALL.replace("{type: maxpool2d, pool_size: 2}", "{type: maxpool2d, pool_size: [2, x]}"))
    assert message.startswith("x.yaml:6: model.layers[1].pool_size[1]: ")
    assert "got 'x'" in message


def test_bad_value_says_the_bound():
    message = one_problem(SMALL.replace("epochs: 2", "epochs: 0"))
    assert message == "x.yaml:11: train.epochs: Input should be greater than 0, got 0"


def test_bad_literal_lists_the_choices():
    message = one_problem(SMALL.replace("padding: same", "padding: sam"))
    assert message.startswith("x.yaml:5: model.layers[0].padding: Input should be 'valid' or 'same', got 'sam'")


def test_unknown_layer_type_gets_one_clean_message_with_a_suggestion():
    message = one_problem(SMALL.replace("{type: flatten}", "{type: flaten}"))
    assert message == "x.yaml:7: model.layers[2].type: unknown layer type 'flaten'; did you mean 'flatten'?"


def test_unknown_layer_type_without_a_near_miss_lists_every_type():
    message = one_problem(SMALL.replace("{type: flatten}", "{type: transformer}"))
    assert "unknown layer type 'transformer'" in message
    for name in REGISTRY:
        assert name in message
    assert "Input tag" not in message  # no pydantic noise


def test_missing_type_lists_the_types():
    message = one_problem(SMALL.replace("{type: flatten}", "{units: 3}"))
    assert message.startswith("x.yaml:7: model.layers[2]: missing 'type' (one of: ")


def test_missing_required_field():
    message = one_problem(SMALL.replace("{type: dense, units: 10}", "{type: dense}"))
    assert message == "x.yaml:8: model.layers[3]: missing required key 'units' (int > 0)"


def test_a_misspelled_required_key_is_one_problem_not_two():
    message = one_problem(SMALL.replace("{type: dense, units: 10}", "{type: dense, unit: 10}"))
    assert "unknown key 'unit'; did you mean 'units'?" in message


def test_unknown_optimizer_type_and_section_key():
    problems = problems_of(SMALL.replace("type: sgd", "type: sgdd") + "  warmup: 3\n")
    assert problems == [
        "x.yaml:10: train.optimizer.type: unknown optimizer type 'sgdd'; did you mean 'sgd'?",
        "x.yaml:12: train.warmup: unknown key 'warmup'" + problems[1].split("unknown key 'warmup'")[1],
    ]
    assert "valid keys:" in problems[1] or "did you mean" in problems[1]


def test_layer_given_as_text():
    message = one_problem(SMALL.replace("{type: flatten}", "flatten"))
    assert message.startswith("x.yaml:7: model.layers[2]: expected a mapping")


def test_many_errors_are_reported_at_once_in_line_order():
    text = """\
model:
  input_shape: [28, 28, 1]
  layers:
    - {type: conv2d, filters: 8, kernel_size: three}
    - {type: conv2d, filters: 8, kernal_size: 3}
    - {type: conv, filters: 8}
    - {type: dropout, rate: 1.5}
    - {type: dense, units: 10}
train:
  optimizer: {type: adm}
  epochs: -1
output:
  plots: maybe
"""
    problems = problems_of(text)
    assert len(problems) == 7
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == [4, 5, 6, 7, 10, 11, 13]


def test_data_section_is_validated():
    message = one_problem(SMALL + "data: {dataset: fashion_mnst}\n")
    assert message.startswith("x.yaml:12: data.dataset: Input should be ")


def test_metrics_are_checked():
    assert "unknown metric" in one_problem(SMALL + "  metrics: [acc]\n")
    assert parse_config(SMALL + "  metrics: [accuracy, top3_accuracy]\n").train.metrics == ["accuracy", "top3_accuracy"]


# -- sugar: repeat and blocks -------------------------------------------------------------------
BLOCKS = """\
model:
  input_shape: [8, 8, 4]
  blocks:
    pair:
      params: {filters: 4, kernel: 3, tag: a}
      layers:
        - {type: conv2d, filters: $filters, kernel_size: "${kernel}", padding: same, name: "c${tag}"}
        - {type: relu}
  layers:
    - {block: pair, filters: 8, repeat: 2}
    - {block: pair, kernel: [1, 3], tag: b, name: second}
    - {type: dense, units: 5, repeat: 3, name: fc}
    - {type: batchnorm, repeat: 2}
"""


def test_blocks_substitute_parameters_with_their_types():
    layers = parse_config(BLOCKS).model.layers
    assert [l.type for l in layers] == ["conv2d", "relu"] * 3 + ["dense"] * 3 + ["batchnorm"] * 2
    assert [layers[0].filters, layers[2].filters, layers[4].filters] == [8, 8, 4]  # default for the third use
    assert layers[4].kernel_size == [1, 3]  # a list parameter stays a list
    assert layers[0].kernel_size == 3  # "${kernel}" alone is the value itself, not text


def test_names_of_repeated_and_named_block_uses():
    names = [l.name for l in parse_config(BLOCKS).model.layers]
    assert names[:6] == ["ca_1", None, "ca_2", None, "second_cb", None]
    assert names[6:9] == ["fc_1", "fc_2", "fc_3"]
    assert names[9:] == [None, None]


def test_a_block_with_one_layer_gives_it_the_use_name():
    text = BLOCKS.replace("        - {type: relu}\n", "").replace("name: \"c${tag}\"", "activation: relu")
    layers = parse_config(text).model.layers
    assert layers[2].name == "second"


def test_sugar_inside_residual_bodies_and_nested_blocks():
    text = """\
model:
  input_shape: [8, 8, 4]
  blocks:
    conv: {params: {f: 4}, layers: [{type: conv2d, filters: $f, kernel_size: 3, padding: same}]}
    res:
      params: {f: 4, n: 2}
      layers:
        - type: residual
          body: [{block: conv, f: $f, repeat: $n}]
  layers:
    - {block: res, n: 3}
"""
    layers = parse_config(text).model.layers
    assert len(layers) == 1 and layers[0].type == "residual"
    assert [b.type for b in layers[0].body] == ["conv2d"] * 3


def test_unknown_block_and_parameter_and_repeat_problems():
    text = """\
model:
  input_shape: [8, 8, 4]
  blocks:
    pair:
      params: {filters: 4}
      layers: [{type: conv2d, filters: $filter, kernel_size: 3}]
  layers:
    - {block: par}
    - {block: pair, filtres: 8}
    - {type: relu, repeat: 0}
    - {block: pair}
    - {block: pair}
"""
    problems = problems_of(text)
    assert problems[0] == "x.yaml:6: model.blocks.pair.layers[0].filters: unknown parameter $filter; did you mean 'filters'?"
    assert problems[1] == "x.yaml:8: model.layers[0].block: unknown block 'par'; did you mean 'pair'?"
    assert problems[2] == "x.yaml:9: model.layers[1].filtres: block 'pair' has no parameter 'filtres'; did you mean 'filters'?"
    assert problems[3].startswith("x.yaml:10: model.layers[2].repeat: repeat must be a whole number")
    assert len(problems) == 4  # the unknown parameter is reported once, not once per use


def test_an_error_inside_a_block_points_at_the_block_and_the_use():
    text = BLOCKS.replace("padding: same", "padding: sane")
    message = one_problem(text)
    assert message.startswith("x.yaml:7: model.blocks.pair.layers[0].padding (in block 'pair' used by model.layers[0] at line 10): ")
    assert "got 'sane'" in message


def test_a_block_parameter_of_the_wrong_type_points_at_the_use():
    message = one_problem(BLOCKS.replace("{block: pair, filters: 8, repeat: 2}", "{block: pair, filters: eight, repeat: 2}"))
    assert message.startswith("x.yaml:10: model.layers[0].filters: ")
    assert "got 'eight'" in message


def test_a_block_that_uses_itself():
    text = "model:\n  input_shape: [4]\n  blocks: {a: {layers: [{block: a}]}}\n  layers:\n    - {block: a}\n"
    message = one_problem(text)
    assert "block 'a' uses itself" in message


def test_duplicate_layer_names_are_reported_with_both_places():
    text = SMALL.replace("{type: maxpool2d, pool_size: 2}", "{type: maxpool2d, pool_size: 2, name: x}") \
                .replace("{type: flatten}", "{type: flatten, name: x}")
    message = one_problem(text)
    assert message.startswith("x.yaml:7: model.layers[2].name: duplicate layer name 'x' (also x.yaml:6: model.layers[1].name)")


def test_layer_names_cannot_hold_dots():
    assert "may hold only" in one_problem(SMALL.replace("{type: flatten}", "{type: flatten, name: a.b}"))


def test_a_dollar_outside_a_block_says_so():
    message = one_problem(SMALL.replace("units: 10", "units: $units"))
    assert "$parameters work only inside model.blocks" in message


# -- --set overrides --------------------------------------------------------------------------------
def test_overrides_set_values_parsed_as_yaml():
    config = parse_config(SMALL, "x.yaml", ["train.optimizer.lr=0.05", "model.layers[0].filters=32",
                                            "model.layers[0].kernel_size=[3, 5]", "train.clip_grad_norm=1.5",
                                            "train.early_stopping.patience=2"])
    assert config.train.optimizer.lr == pytest.approx(0.05)
    assert config.model.layers[0].filters == 32
    assert config.model.layers[0].kernel_size == [3, 5]
    assert config.train.clip_grad_norm == pytest.approx(1.5)
    assert config.train.early_stopping.patience == 2


def test_override_into_a_loss_given_by_name():
    config = parse_config(SMALL + "  loss: softmax_cross_entropy\n", "x.yaml", ["train.loss.label_smoothing=0.1"])
    assert config.train.loss.label_smoothing == pytest.approx(0.1)


def test_override_of_a_block_use_and_a_block_default():
    config = parse_config(BLOCKS, "x.yaml", ["model.layers[1].filters=6", "model.blocks.pair.params.filters=2"])
    assert config.model.layers[4].filters == 6
    assert config.model.layers[0].filters == 8


@pytest.mark.parametrize("override, expected", [
    ("train.optimzer.lr=0.1", "x.yaml: --set train.optimzer.lr=0.1: train.optimzer does not exist; did you mean 'optimizer'?"),
    ("model.layerz[0].filters=3", "x.yaml: --set model.layerz[0].filters=3: model.layerz does not exist; did you mean 'layers'?"),
    ("model.layers[9].filters=3", "x.yaml: --set model.layers[9].filters=3: model.layers has 4 entries; [9] is out of range"),
    ("model.layers[0].filterz=3", "x.yaml: --set model.layers[0].filterz=3: model.layers[0].filterz does not exist; did you mean 'filters'?"),
    ("train.epochs.x=1", "x.yaml: --set train.epochs.x=1: train.epochs is 2, not a mapping, so it has no 'x'"),
])
def test_bad_override_paths(override, expected):
    assert one_problem(SMALL, [override]) == expected


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs", "expected path=value"),
    ("a b=3", "is not a path"),
    ("train.epochs=[1", "not valid YAML"),
])
def test_malformed_overrides(override, fragment):
    assert fragment in one_problem(SMALL, [override])


def test_an_invalid_override_value_is_reported_at_the_override():
    message = one_problem(SMALL, ["model.layers[0].filters=abc"])
    assert message.startswith("x.yaml: --set model.layers[0].filters=abc: model.layers[0].filters: Input should be a valid integer")


def test_overrides_count_negative_indices_from_the_end():
    config = parse_config(SMALL, "x.yaml", ["model.layers[-1].units=3", "model.layers[-4].filters=6"])
    assert config.model.layers[3].units == 3 and config.model.layers[0].filters == 6
    assert one_problem(SMALL, ["model.layers[-5].filters=1"]) == (
        "x.yaml: --set model.layers[-5].filters=1: model.layers has 4 entries; [-5] is out of range")
    message = one_problem(SMALL, ["model.layers[-1].units=0"])  # reported at the layer it reached
    assert message.startswith("x.yaml: --set model.layers[-1].units=0: model.layers[3].units: Input should be greater than 0")


@pytest.mark.parametrize("override, fix", [
    ("model.layers.0.filters=3", "model.layers[0].filters"),
    ("model.layers.-1.units=3", "model.layers[-1].units"),
    ("model.layers.2=x", "model.layers[2]"),
])
def test_a_dotted_index_gets_the_bracket_form(override, fix):
    key = override.split("=")[0]
    assert one_problem(SMALL, [override]) == (
        f"x.yaml: --set {override}: '{key}' is not a path; write list positions in brackets: {fix}")


def test_fractional_epochs_say_got_once():
    assert one_problem(SMALL, ["train.epochs=1.5"]) == (
        "x.yaml: --set train.epochs=1.5: train.epochs: Input should be a valid integer, got 1.5 "
        "(a number with a fractional part)")


@pytest.mark.parametrize("spelling, dataset", [
    ("fashion_mnist", "fashion_mnist"), ("fashion-mnist", "fashion_mnist"), ("Fashion-MNIST", "fashion_mnist"),
    ("cifar-10", "cifar10"), ("mnist", "mnist"),
])
def test_data_set_names_as_data_download_spells_them(spelling, dataset):
    config = parse_config(SMALL + f"data: {{dataset: {spelling}, path: d}}\n")
    assert config.data.dataset == dataset
    assert f"dataset: {dataset}" in config.to_yaml()


# -- fuzzing: only ConfigError, never another exception ------------------------------------------------
FUZZ_BASE = (ROOT / "configs" / "cifar_resnet.yaml").read_text()
FUZZ_SMALL = """\
model:
  input_shape: [8, 8, 2]
  blocks:
    unit: {params: {f: 4, s: 1}, layers: [{type: conv2d, filters: $f, kernel_size: 3, strides: $s, padding: same}]}
  layers:
    - {block: unit, f: 4, repeat: 2}
    - type: residual
      shortcut: projection
      body: [{type: conv2d, filters: 6, kernel_size: 3, strides: 2, padding: 1}, {type: batchnorm}]
    - {type: maxpool2d, pool_size: 2, strides: 1}
    - {type: reshape, target_shape: [9, 6]}
    - {type: gru, units: 5, return_sequences: true}
    - {type: lstm, units: 4}
    - {type: dropout, rate: 0.5}
    - {type: dense, units: 3, activation: softmax}
train: {optimizer: {type: rmsprop, momentum: 0.5}, epochs: 1}
"""
FUZZ_BASES = [FUZZ_BASE, FUZZ_SMALL]
YAML_TOKENS = [":", "-", "[", "]", "{", "}", ",", "&a", "*a", "!!str", "\t", "'", '"', "#", "|", ">", "<<: *a",
               "$filters", "${strides}", "block: basic", "repeat: 3", "type: conv", "\n", "  ", "null", "1e400",
               "-1", "0", "99999999999999999999", "~", "? ", "---", "...", "%YAML 1.1", "!foo", "\x00", "é"]

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _mutate(text: str, edits) -> str:
    for position, length, token in edits:
        i = position % (len(text) + 1)
        text = text[:i] + token + text[i + length:]
    return text


def _is_small(value) -> bool:
    """Every number small enough that building the model stays cheap."""
    if isinstance(value, dict):
        return all(_is_small(v) for v in value.values())
    if isinstance(value, list):
        return all(_is_small(v) for v in value)
    return not isinstance(value, (int, float)) or isinstance(value, bool) or abs(value) <= 64


def _load_and_maybe_build(text: str, overrides=()):
    from nettrain.builder import build_model

    try:
        config = parse_config(text, "fuzz.yaml", overrides)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        assert all("Traceback" not in p for p in e.problems)
        return
    if _is_small(config.resolved["model"]):
        try:
            build_model(config)
        except NettrainError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FUZZ_BASES),
       st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 8), st.sampled_from(YAML_TOKENS)), min_size=1, max_size=4))
def test_fuzz_text_edits_raise_only_config_errors(base, edits):
    _load_and_maybe_build(_mutate(base, edits))


def _paths(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, f"{prefix}[{i}]")
    if prefix:
        yield prefix


FUZZ_PATHS = [(base, path) for base in FUZZ_BASES for path in sorted(set(_paths(yaml.safe_load(base))))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FUZZ_PATHS), yaml_values)
def test_fuzz_random_values_anywhere_raise_only_config_errors(base_and_path, value):
    base, path = base_and_path
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if dumped.endswith("\n..."):
        dumped = dumped[:-4]
    _load_and_maybe_build(base, [f"{path}={dumped}"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["model", "data", "train", "output", "name", "modle"]), yaml_values, max_size=4))
def test_fuzz_whole_documents_raise_only_config_errors(document):
    _load_and_maybe_build(yaml.safe_dump(document))

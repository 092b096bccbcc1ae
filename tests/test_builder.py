"""Building models from specs: exact counts, shapes, names, seeds, located shape errors, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nettrain import build_model, load_config
from nettrain.builder import Places, make_layers
from nettrain.config import ModelSpec, config_from_dict, parse_config
from nettrain.errors import ConfigError, ShapeError
from nettrain.layers import REGISTRY, Layer, format_shape
from nettrain.model import Model

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def model_of(layers, input_shape, **model_fields):
    return build_model(config_from_dict({"model": {"input_shape": input_shape, "layers": layers, **model_fields}}))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_builds_and_runs_forward(path):
    config = load_config(path)
    model = build_model(config)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    y = model.forward(x, training=False)
    assert y.shape == (2, *model.output_shape)
    assert np.isfinite(y).all()
    assert set(model.parameters()) == set(model.gradients())


def test_alexnet_100_matches_the_seed_exactly():
    model = build_model(load_config(ROOT / "configs" / "alexnet_100.yaml"))
    assert model.param_count() == 189_015
    assert model.buffer_count() == 0
    shapes = [format_shape(layer.out_shape) for layer in model.layers]
    assert shapes == ["25x25x12", "12x12x12", "12x12x24", "5x5x24", "600", "300", "3"]
    convs = [l for l in model.layers if l.type_name == "conv2d"]
    assert [c.params["kernel"].shape for c in convs] == [(12, 3, 4, 4), (24, 12, 5, 5)]


def test_cifar_resnet_is_resnet20():
    config = load_config(ROOT / "configs" / "cifar_resnet.yaml")
    model = build_model(config)
    assert model.param_count() == 269_722
    assert model.buffer_count() == 1_376
    residuals = [l for l in model.layers if l.type_name == "residual"]
    assert len(residuals) == 9
    assert all(r.spec.shortcut == "zero_pad" for r in residuals)
    convs = [l for _, l in model.named_layers() if l.type_name == "conv2d"]
    assert len(convs) == 19 and all("bias" not in c.params for c in convs)
    assert [format_shape(r.out_shape) for r in residuals[::3]] == ["32x32x16", "16x16x32", "8x8x64"]
    assert model.output_shape == (10,)


def test_resnet_bottleneck_has_projection_then_identity_blocks():
    model = build_model(load_config(ROOT / "configs" / "resnet_bottleneck.yaml"))
    residuals = [l for l in model.layers if l.type_name == "residual"]
    assert [r.spec.shortcut for r in residuals] == ["projection", "identity", "identity"] * 3
    first_of_stage2 = residuals[3]
    first_conv = first_of_stage2.body_layers[0]
    assert first_conv.kernel == (1, 1) and first_conv.stride == (2, 2)
    assert [format_shape(r.out_shape) for r in residuals[::3]] == ["32x32x64", "16x16x128", "8x8x256"]


def test_conv_macs_and_params_are_exact():
    model = model_of([{"type": "conv2d", "filters": 5, "kernel_size": [3, 2], "strides": [2, 1], "padding": 1}], [9, 7, 3])
    conv = model.layers[0]
    out_h, out_w = (9 + 2 - 3) // 2 + 1, (7 + 2 - 2) // 1 + 1
    assert conv.out_shape == (5, out_h, out_w)
    assert conv.macs() == out_h * out_w * 5 * 3 * 3 * 2
    assert model.param_count() == 5 * 3 * 3 * 2 + 5


def test_conv_without_bias_has_no_bias():
    model = model_of([{"type": "conv2d", "filters": 4, "kernel_size": 3, "use_bias": False}], [6, 6, 2])
    assert set(model.layers[0].params) == {"kernel"}
    assert model.param_count() == 4 * 2 * 3 * 3


@pytest.mark.parametrize("kind, gates", [("lstm", 4), ("gru", 3), ("simple_rnn", 1)])
def test_recurrent_macs_multiply_by_timesteps(kind, gates):
    t, f, units = 11, 5, 7
    model = model_of([{"type": kind, "units": units}], [t, f])
    layer = model.layers[0]
    assert layer.macs() == t * gates * units * (f + units)
    assert layer.out_shape == (units,)


def test_return_sequences_keeps_time():
    model = model_of([{"type": "lstm", "units": 6, "return_sequences": True}, {"type": "gru", "units": 3}], [10, 4])
    assert model.layers[0].out_shape == (10, 6)
    assert model.output_shape == (3,)


def test_auto_names_count_per_type_and_skip_explicit_names():
    model = model_of([
        {"type": "dense", "units": 4},
        {"type": "dense", "units": 4, "name": "dense_2"},
        {"type": "relu"},
        {"type": "dense", "units": 4},
        {"type": "residual", "body": [{"type": "dense", "units": 4}, {"type": "relu"}]},
    ], [4])
    names = [path for path, _ in model.named_layers()]
    assert names == ["dense_1", "dense_2", "relu_1", "dense_3", "residual_1", "residual_1.dense_4", "residual_1.relu_2"]
    assert "residual_1.dense_4.kernel" in model.parameters()


def test_duplicate_names_in_a_bare_model_spec_are_a_config_error():
    spec = ModelSpec.model_validate({"input_shape": [4], "layers": [
        {"type": "dense", "units": 2, "name": "fc"}, {"type": "dense", "units": 2, "name": "fc"}]})
    with pytest.raises(ConfigError, match="duplicate layer names 'fc'"):
        build_model(spec)


def test_seed_defaults_to_train_seed_and_decides_the_weights():
    text = "model:\n  input_shape: [6]\n  layers: [{type: dense, units: 3}]\ntrain: {seed: 7}\n"
    a = build_model(parse_config(text)).parameters()["dense_1.kernel"]
    b = build_model(parse_config(text), seed=7).parameters()["dense_1.kernel"]
    c = build_model(parse_config(text), seed=8).parameters()["dense_1.kernel"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_model_name_comes_from_the_config():
    assert build_model(load_config(ROOT / "configs" / "quickstart.yaml")).name == "quickstart"


# -- shape errors name the layer, its place and its input ----------------------------------------
SHAPE_BAD = """\
model:
  input_shape: [5, 5, 1]
  layers:
    - {type: conv2d, filters: 2, kernel_size: 3}
    - {type: conv2d, filters: 2, kernel_size: 7}
"""


def test_shape_error_names_index_name_type_line_and_input():
    with pytest.raises(ShapeError) as info:
        build_model(parse_config(SHAPE_BAD, "net.yaml"))
    message = str(info.value)
    assert message.startswith("net.yaml:5: model.layers[1]: layer 2 'conv2d_2' (conv2d) on input 3x3x2: ")
    assert "(3 + 2*0 - 7)/1 + 1" in message  # the arithmetic that failed


def test_shape_error_inside_a_residual_names_the_nested_layer():
    text = """\
model:
  input_shape: [8, 8, 4]
  layers:
    - {type: relu}
    - type: residual
      body:
        - {type: conv2d, filters: 4, kernel_size: 3, padding: same}
        - {type: conv2d, filters: 4, kernel_size: 9}
"""
    with pytest.raises(ShapeError) as info:
        build_model(parse_config(text, "net.yaml"))
    assert str(info.value).startswith("net.yaml:8: model.layers[1].body[1]: layer 2.2 'conv2d_2' (conv2d) on input 8x8x4: ")


def test_residual_mismatch_names_both_shapes_and_the_fitting_shortcut():
    text = """\
model:
  input_shape: [8, 8, 4]
  layers:
    - type: residual
      body: [{type: conv2d, filters: 8, kernel_size: 3, strides: 2, padding: same}]
"""
    with pytest.raises(ShapeError) as info:
        build_model(parse_config(text, "net.yaml"))
    message = str(info.value)
    assert message.startswith("net.yaml:4: model.layers[0]: layer 1 'residual_1' (residual) on input 8x8x4: ")
    assert "4x4x8" in message and "8x8x4" in message
    assert "shortcut: zero_pad" in message or "shortcut: projection" in message


def test_shape_error_in_a_block_points_at_the_block_and_its_use():
    text = """\
model:
  input_shape: [8, 8, 4]
  blocks:
    b: {params: {k: 3}, layers: [{type: conv2d, filters: 4, kernel_size: $k}]}
  layers:
    - {block: b}
    - {block: b, k: 7}
"""
    with pytest.raises(ShapeError) as info:
        build_model(parse_config(text, "net.yaml"))
    message = str(info.value)
    assert message.startswith("net.yaml:4: model.blocks.b.layers[0] (in block 'b' used by model.layers[1] at line 7): "
                              "layer 2 'conv2d_2' (conv2d) on input 6x6x4: ")


def test_an_error_in_a_layer_the_config_does_not_list_is_placed_at_its_owner():
    text = """\
model:
  input_shape: [8, 8, 4]
  layers:
    - type: residual
      shortcut: projection
      body: [{type: conv2d, filters: 8, kernel_size: 3, strides: 2, padding: same}]
"""
    config = parse_config(text, "net.yaml")
    places = Places()
    model = Model(make_layers(config.model.layers, config.location, places=places), config.model.internal_input_shape)
    model.build(0)
    shortcut_conv = model.layers[0].shortcut_layers[0]
    located = places.locate(shortcut_conv.shape_error("too big", (4, 8, 8)), model)
    assert str(located) == "net.yaml:4: model.layers[0]: layer 1 'residual_1' (residual) on input 8x8x4: too big"
    inner = model.layers[0].body_layers[0]
    assert str(places.locate(inner.shape_error("no", (4, 8, 8)), model)).startswith(
        "net.yaml:6: model.layers[0].body[0]: layer 1.1 'conv2d_1' (conv2d) on input 8x8x4: no")


def test_dense_on_an_image_says_what_to_add():
    with pytest.raises(ShapeError, match="flatten"):
        model_of([{"type": "dense", "units": 3}], [4, 4, 1])


# -- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_layer_specs_validate_back_to_the_same_specs(path):
    model = build_model(load_config(path))
    for _, layer in model.named_layers():
        if layer.type_name in REGISTRY and type(layer) is REGISTRY[layer.type_name]:
            again = type(layer).Spec.model_validate(layer.spec.model_dump(mode="json"))
            assert again.model_dump() == layer.spec.model_dump()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_saved_config_rebuilds_the_same_model(path):
    """A run folder's config.yaml (the resolved config) gives back the model, weights included."""
    config = load_config(path)
    model = build_model(config)
    assert [layer.spec for layer in model.layers] == list(config.model.layers)  # the model holds the config's specs
    again = build_model(parse_config(config.to_yaml(), "config.yaml"))
    assert [p for p, _ in again.named_layers()] == [p for p, _ in model.named_layers()]
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(again.parameters()[name], value)


def test_the_saved_config_keeps_a_residual_without_activation():
    config = config_from_dict({"model": {"input_shape": [3, 3, 2], "layers": [
        {"type": "residual", "activation": None, "body": [{"type": "conv2d", "filters": 2, "kernel_size": 1}]}]}})
    assert build_model(config).layers[0].spec.activation is None
    again = build_model(parse_config(config.to_yaml(), "config.yaml"))
    assert again.layers[0].spec.activation is None


def test_a_built_model_pickles_and_has_no_build_wrappers():
    import pickle

    model = build_model(load_config(ROOT / "configs" / "cifar_resnet.yaml"))
    assert all("build" not in vars(layer) for _, layer in model.named_layers())
    assert all(type(layer).build is Layer.build for _, layer in model.named_layers())
    again = pickle.loads(pickle.dumps(model))
    x = np.random.default_rng(1).standard_normal((2, *model.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))


def test_a_layer_too_large_for_memory_is_a_shape_error_naming_it():
    text = "model:\n  input_shape: [8, 8, 1]\n  layers:\n    - {type: flatten}\n    - {type: dense, units: 100000000000000}\n"
    with pytest.raises(ShapeError) as info:
        build_model(parse_config(text, "big.yaml"))
    message = str(info.value)
    assert message.startswith("big.yaml:5: model.layers[1]: layer 2 'dense_1' (dense) on input 64: ")
    assert "does not fit in memory; lower its units or filters" in message


@pytest.mark.parametrize("first", [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"type": "dense", "units": 5, "activation": "relu"},
])
def test_backward_without_input_grad_gives_same_parameter_grads(first):
    """Training skips d/dx of the first layer; every parameter gradient must stay the same."""
    layers = [first] + ([{"type": "flatten"}] if first["type"] == "conv2d" else []) + [{"type": "dense", "units": 3}]
    input_shape = [6, 6, 2] if first["type"] == "conv2d" else [7]
    model = build_model(config_from_dict({"model": {"input_shape": input_shape, "layers": layers}}).model, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *model.input_shape)).astype(np.float32)
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    model.forward(x, training=True)
    dx = model.backward(dy)
    assert dx.shape == x.shape
    full = {k: v.copy() for k, v in model.gradients().items()}
    model.zero_grads()
    model.forward(x, training=True)
    assert model.backward(dy, input_grad=False) is None
    for name, grad in model.gradients().items():
        np.testing.assert_array_equal(grad, full[name], err_msg=name)
    assert model.first_leaf().input_grad  # restored after the pass

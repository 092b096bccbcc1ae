"""Model: named parameters, gradients and buffers, forward/backward over nested layers, hooks, loading."""

import pickle

import numpy as np
import pytest

from gradcheck import numeric_grad, rel_error
from nettrain.builder import build_model
from nettrain.config import config_from_dict

LAYERS = [
    {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same", "use_bias": False, "name": "stem"},
    {"type": "batchnorm", "name": "bn"},
    {"type": "residual", "shortcut": "projection", "name": "block", "body": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
        {"type": "conv2d", "filters": 4, "kernel_size": 1},
    ]},
    {"type": "dropout", "rate": 0.3},
    {"type": "flatten"},
    {"type": "dense", "units": 3, "activation": "leaky_relu"},
]


def small_model(seed=0):
    return build_model(config_from_dict({"model": {"input_shape": [6, 6, 2], "layers": LAYERS}}).model, seed=seed)


def batch(model, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *model.input_shape)).astype(np.float32)


def test_names_shapes_and_counts():
    model = small_model()
    assert model.input_shape == (2, 6, 6) and model.output_shape == (3,)
    params, grads, buffers = model.parameters(), model.gradients(), model.buffers()
    assert set(params) == set(grads)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in grads.items()}
    assert "block.conv2d_1.kernel" in params and "block.shortcut_conv.kernel" in params
    assert set(buffers) == {"bn.running_mean", "bn.running_var",
                            "block.shortcut_bn.running_mean", "block.shortcut_bn.running_var"}
    assert model.param_count() == sum(p.size for p in params.values())
    assert model.buffer_count() == sum(b.size for b in buffers.values()) == 3 * 2 + 4 * 2
    assert model.macs() == sum(layer.macs() for layer in model.layers) > 0
    assert [path for path, _ in model.named_layers()][:4] == ["stem", "bn", "block", "block.conv2d_1"]
    assert set(model.random_generators()) == {"dropout_1"}


def test_parameters_are_the_models_own_arrays():
    model = small_model()
    x = batch(model)
    before = model.forward(x)
    model.parameters()["dense_1.bias"][...] += 1.0  # in place, as an optimizer step does
    after = model.forward(x)
    assert not np.allclose(before, after)


def test_backward_gradients_match_central_differences():
    model = small_model()
    model.cast(np.float64)
    x = batch(model).astype(np.float64)
    g = np.random.default_rng(2).standard_normal((x.shape[0], 3))

    def loss():
        model.layers[3].rng = np.random.default_rng(5)  # the same dropout mask every pass
        return float(np.sum(model.forward(x, training=True) * g))

    loss()
    model.zero_grads()
    dx = model.backward(g)
    analytic = {k: v.copy() for k, v in model.gradients().items()}
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-6
    for name, p in model.parameters().items():
        assert rel_error(analytic[name], numeric_grad(loss, p)) < 1e-6, name


def test_backward_without_input_grad_returns_none_and_restores_the_flag():
    model = small_model()
    x = batch(model)
    model.forward(x, training=True)
    assert model.backward(np.ones((3, 3), np.float32), input_grad=False) is None
    assert model.first_leaf() is model.layers[0] and model.first_leaf().input_grad


def test_forward_hook_sees_every_layer_in_order_nested_ones_included():
    model = small_model()
    seen = []
    model.set_forward_hook(lambda path, layer, y: seen.append((path, y.shape[1:])))
    model.forward(batch(model))
    paths = [path for path, _ in seen]
    assert paths == ["stem", "bn", "block.conv2d_1", "block.conv2d_2", "block.shortcut_conv", "block.shortcut_bn",
                     "block", "dropout_1", "flatten_1", "dense_1"]
    assert dict(seen)["block"] == (4, 3, 3)
    model.set_forward_hook(None)
    seen.clear()
    model.forward(batch(model))
    assert not seen


def test_load_arrays_copies_by_name_and_checks_shapes():
    a, b = small_model(seed=0), small_model(seed=1)
    a.forward(batch(a), training=True)  # moves the running statistics
    b.load_arrays(a.parameters(), a.buffers())
    for name, value in {**a.parameters(), **a.buffers()}.items():
        np.testing.assert_array_equal({**b.parameters(), **b.buffers()}[name], value)
    x = batch(a, seed=3)
    np.testing.assert_array_equal(b.forward(x), a.forward(x))
    with pytest.raises(ValueError, match="dense_1.kernel"):
        b.load_arrays({"dense_1.kernel": np.zeros((2, 2), np.float32)})


def test_cast_changes_every_array_and_the_output():
    model = small_model()
    model.cast(np.float64)
    assert all(a.dtype == np.float64 for a in [*model.parameters().values(), *model.buffers().values()])
    assert model.forward(batch(model).astype(np.float64)).dtype == np.float64


def test_a_model_pickles():
    model = small_model()
    again = pickle.loads(pickle.dumps(model))
    x = batch(model)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))

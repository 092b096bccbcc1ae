"""The seed's AlexNet-like net: N(0,1) weights explode, the default init does not."""

import numpy as np

from conftest import make_layer
from nettrain.initializers import NormalInit, initialize
from nettrain.layers import REGISTRY
from nettrain.model import Model


def alexnet_like(kernel_initializer=None):
    layers = []
    init = {} if kernel_initializer is None else {"kernel_initializer": kernel_initializer}
    for type_name, fields in [
        ("conv2d", dict(filters=12, kernel_size=4, strides=4, activation="relu", **init)),
        ("maxpool2d", dict(pool_size=3, strides=2)),
        ("conv2d", dict(filters=24, kernel_size=5, padding=2, activation="relu", **init)),
        ("maxpool2d", dict(pool_size=4, strides=2)),
        ("flatten", {}),
        ("dense", dict(units=300, activation="relu", **init)),
        ("dense", dict(units=3, **init)),
    ]:
        layers.append(make_layer(type_name, name=f"{type_name}_{len(layers)}", **fields))
    return Model(layers, (3, 100, 100)).build(0)


def activation_stds(model):
    stds = []
    model.set_forward_hook(lambda path, layer, y: stds.append((path, float(y.std()))))
    x = np.random.default_rng(0).uniform(0, 1, (16, 3, 100, 100)).astype(np.float32)
    model.forward(x)
    return stds


def test_shapes_follow_the_seed_document():
    model = alexnet_like()
    shapes = [layer.out_shape for layer in model.layers]
    assert shapes[:5] == [(12, 25, 25), (12, 12, 12), (24, 12, 12), (24, 5, 5), (600,)]
    assert model.param_count() == 189_015


def test_unit_normal_weights_explode():
    stds = activation_stds(alexnet_like(NormalInit(std=1.0)))
    assert stds[-1][1] > 1e3


def test_default_init_keeps_activations_in_range():
    stds = activation_stds(alexnet_like())
    for path, std in stds:
        assert 0.1 <= std <= 10, (path, std)


def test_orthogonal_init_is_orthogonal():
    w = initialize("orthogonal", (6, 4), 6, 4, np.random.default_rng(0), np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-10)
    w = initialize("he_normal", (4000, 50), 50, 4000, np.random.default_rng(0))
    assert abs(w.std() - np.sqrt(2 / 50)) < 0.01


def _kernel(type_name, in_shape, **fields):
    return Model([make_layer(type_name, name="layer", **fields)], in_shape).build(7).layers[0].params["kernel"]


def test_the_default_kernel_initializer_is_the_one_the_schema_describes():
    layers = {"dense": ((6,), dict(units=3)), "conv2d": ((2, 5, 5), dict(filters=3, kernel_size=3))}
    he = {"dense": {"relu", "leaky_relu", "elu"}, "conv2d": {"relu", "leaky_relu", "elu", None}}
    for type_name, (in_shape, fields) in layers.items():
        description = REGISTRY[type_name].Spec.model_fields["kernel_initializer"].description
        he_part, glorot_part = description.split(", else glorot_uniform")
        assert he_part.startswith("null: he_normal when")
        for activation in ("linear", "relu", "tanh", "sigmoid", "softmax", "leaky_relu", "elu", None):
            default = _kernel(type_name, in_shape, activation=activation, **fields)
            expected = "he_normal" if activation in he[type_name] else "glorot_uniform"
            explicit = _kernel(type_name, in_shape, activation=activation, kernel_initializer=expected, **fields)
            np.testing.assert_array_equal(default, explicit)
            named_in = he_part if activation in he[type_name] else glorot_part
            assert (activation or ("left out" if type_name == "conv2d" else "no activation")) in named_in
    assert "std 0.05" in description and NormalInit().std == 0.05
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(initialize("normal", (3, 4), 4, 3, np.random.default_rng(0)),
                                  (rng.standard_normal((3, 4)) * 0.05).astype(np.float32))

"""The seed's AlexNet-like net: N(0,1) weights explode, the default init does not."""

import numpy as np

from conftest import make_layer
from nettrain.initializers import NormalInit, initialize
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

"""Every layer: gradient checks (float64 central differences), shapes, dtypes, errors."""

import numpy as np
import pytest

from gradcheck import check_layer
from nettrain.errors import ShapeError
from nettrain.layers import REGISTRY, Sequential
from nettrain.layers.activations import ACTIVATIONS

Conv2D = REGISTRY["conv2d"]
Dense = REGISTRY["dense"]


def make(type_name, **fields):
    cls = REGISTRY[type_name]
    return cls(cls.Spec(type=type_name, **fields), name=type_name)


CONV_CASES = [
    dict(filters=3, kernel_size=3, padding="same"),
    dict(filters=2, kernel_size=3, strides=2, padding="valid"),
    dict(filters=2, kernel_size=2, strides=2, padding="same"),  # even kernel, same, stride 2
    dict(filters=2, kernel_size=[2, 3], strides=[1, 2], padding=[1, 0]),
    dict(filters=2, kernel_size=3, dilation=2, padding="same"),
    dict(filters=2, kernel_size=1, use_bias=False),
    dict(filters=2, kernel_size=3, activation="relu", padding=1),
    dict(filters=2, kernel_size=3, activation="tanh"),
]


@pytest.mark.parametrize("fields", CONV_CASES)
def test_conv2d_gradients(fields):
    check_layer(make("conv2d", **fields), (2, 6, 5))


@pytest.mark.parametrize(
    "type_name,fields",
    [
        ("maxpool2d", dict(pool_size=2)),
        ("maxpool2d", dict(pool_size=3, strides=2)),
        ("maxpool2d", dict(pool_size=2, strides=1, padding="same")),
        ("maxpool2d", dict(pool_size=[2, 3], strides=[2, 1])),
        ("avgpool2d", dict(pool_size=2)),
        ("avgpool2d", dict(pool_size=3, strides=2, padding="same")),
        ("global_avgpool2d", {}),
        ("batchnorm", {}),
        ("flatten", {}),
        ("reshape", dict(target_shape=[5, 6, 2])),
        ("relu", {}),
        ("leaky_relu", dict(alpha=0.1)),
        ("elu", dict(alpha=0.7)),
        ("tanh", {}),
        ("sigmoid", {}),
        ("softmax", {}),
        ("activation", dict(activation="elu")),
    ],
)
def test_image_layer_gradients(type_name, fields):
    check_layer(make(type_name, **fields), (2, 6, 5))


@pytest.mark.parametrize("in_shape", [(7,), (3, 4)])
@pytest.mark.parametrize("fields", [dict(units=4), dict(units=3, activation="sigmoid", use_bias=False)])
def test_dense_gradients(in_shape, fields):
    check_layer(make("dense", **fields), in_shape)


@pytest.mark.parametrize("in_shape", [(5,), (3, 4)])
def test_batchnorm_vector_and_sequence_gradients(in_shape):
    check_layer(make("batchnorm"), in_shape, batch=4)


def test_batchnorm_eval_mode_gradients_use_running_stats():
    layer = make("batchnorm")
    layer.build((3, 4, 4), np.random.default_rng(0))
    layer.state["running_mean"][:] = [0.5, -1.0, 2.0]
    layer.state["running_var"][:] = [2.0, 0.5, 1.5]
    check_layer(layer, (3, 4, 4), training=False)


def test_dropout_gradients_with_fixed_mask():
    layer = make("dropout", rate=0.4, seed=3)

    def pin_mask(lay):
        lay.rng = np.random.default_rng(3)

    check_layer(layer, (2, 4, 4), before_forward=pin_mask)


def test_dropout_is_inverted_and_seeded():
    layer = make("dropout", rate=0.25, seed=1)
    layer.build((1000,), np.random.default_rng(0))
    x = np.ones((20, 1000), np.float32)
    y = layer.forward(x, training=True)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert abs(y.mean() - 1.0) < 0.02
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    other = make("dropout", rate=0.25, seed=1)
    other.build((1000,), np.random.default_rng(0))
    np.testing.assert_array_equal(other.forward(x, training=True), y)


def residual_block(shortcut, filters, strides):
    body = [
        make("conv2d", filters=filters, kernel_size=3, strides=strides, padding="same", use_bias=False),
        make("batchnorm"),
        make("relu"),
        make("conv2d", filters=filters, kernel_size=3, padding="same", use_bias=False),
        make("batchnorm"),
    ]
    cls = REGISTRY["residual"]
    spec = cls.Spec(type="residual", body=[], shortcut=shortcut)
    return cls(spec, name="block", body=body)


@pytest.mark.parametrize(
    "shortcut,filters,strides", [("identity", 2, 1), ("projection", 4, 2), ("zero_pad", 4, 2), ("zero_pad", 3, 1)]
)
def test_residual_block_gradients(shortcut, filters, strides):
    check_layer(residual_block(shortcut, filters, strides), (2, 6, 6), batch=3)


def test_bottleneck_block_gradients():
    body = [
        make("conv2d", filters=2, kernel_size=1, strides=2),
        make("relu"),
        make("conv2d", filters=2, kernel_size=3, padding="same"),
        make("relu"),
        make("conv2d", filters=6, kernel_size=1),
    ]
    cls = REGISTRY["residual"]
    block = cls(cls.Spec(type="residual", body=[], shortcut="projection"), name="bottleneck", body=body)
    check_layer(block, (3, 5, 5), batch=2)


def test_sequential_stack_gradients():
    net = Sequential(
        [
            make("conv2d", filters=3, kernel_size=3, padding="same", activation="relu"),
            make("maxpool2d", pool_size=2),
            make("batchnorm"),
            make("flatten"),
            make("dense", units=4, activation="elu"),
            make("dense", units=3),
        ]
    )
    check_layer(net, (2, 6, 6), batch=3)


def test_residual_mismatch_names_both_shapes_and_suggests_a_shortcut():
    block = residual_block("identity", 4, 2)
    with pytest.raises(ShapeError) as err:
        block.build((2, 8, 8), np.random.default_rng(0))
    msg = str(err.value)
    assert "4x4x4" in msg and "8x8x2" in msg and "zero_pad" in msg


def test_conv_too_large_kernel_spells_out_the_arithmetic():
    layer = make("conv2d", filters=1, kernel_size=7)
    with pytest.raises(ShapeError) as err:
        layer.build((1, 5, 5), np.random.default_rng(0))
    assert "(5 + 2*0 - 7)/1 + 1 = -1" in str(err.value)
    assert "conv2d" in str(err.value)


def test_same_padding_matches_keras_output_sizes():
    # Keras/TF: output = ceil(n / s) for padding same, whatever the kernel
    for n, k, s in [(32, 3, 2), (7, 2, 2), (8, 4, 3), (5, 2, 1), (6, 1, 4)]:
        layer = make("conv2d", filters=1, kernel_size=k, strides=s, padding="same")
        assert layer.build((1, n, n), np.random.default_rng(0))[1:] == (-(-n // s),) * 2


@pytest.mark.parametrize("type_name,fields,in_shape", [
    ("conv2d", dict(filters=4, kernel_size=3, padding="same", activation="relu"), (3, 6, 6)),
    ("maxpool2d", dict(pool_size=2), (3, 6, 6)),
    ("avgpool2d", dict(pool_size=3, strides=2, padding="same"), (3, 6, 6)),
    ("batchnorm", {}, (3, 6, 6)),
    ("dense", dict(units=4, activation="softmax"), (5,)),
    ("global_avgpool2d", {}, (3, 4, 4)),
    ("dropout", dict(rate=0.5), (3, 4, 4)),
    ("leaky_relu", {}, (3, 4, 4)),
    ("elu", {}, (3, 4, 4)),
    ("sigmoid", {}, (3, 4, 4)),
])
def test_float32_in_float32_out(type_name, fields, in_shape):
    layer = make(type_name, **fields)
    layer.build(in_shape, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, *in_shape)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32
    for g in layer.grads.values():
        assert g.dtype == np.float32


def test_every_activation_is_finite_for_huge_inputs():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], np.float32)
    for name, act in ACTIVATIONS.items():
        y = act.forward(x.copy())
        assert np.all(np.isfinite(y)), name


def test_dense_applies_per_timestep():
    layer = make("dense", units=3)
    layer.build((4, 5), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    y = layer.forward(x)
    np.testing.assert_allclose(y[:, 2], x[:, 2] @ layer.params["kernel"] + layer.params["bias"], rtol=1e-6)


def test_batchnorm_running_stats_and_eval():
    layer = make("batchnorm", momentum=0.5)
    layer.build((2, 3, 3), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32) * 3 + 1
    layer.forward(x, training=True)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(layer.state["running_mean"], 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.state["running_var"], 0.5 + 0.5 * var, rtol=1e-5)
    y = layer.forward(x, training=False)
    expect = (x - layer.state["running_mean"].reshape(1, 2, 1, 1)) / np.sqrt(
        layer.state["running_var"].reshape(1, 2, 1, 1) + 1e-5
    )
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
    assert layer.param_count() == 4 and layer.state_count() == 4

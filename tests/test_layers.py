"""Every layer: gradient checks (float64 central differences) from one table keyed by layer type,
output shapes, the build contract, dtypes, errors."""

import pickle

import numpy as np
import pytest

from conftest import make_layer
from gradcheck import Case, check_layer
from nettrain.errors import ShapeError
from nettrain.layers import REGISTRY, Layer, Sequential
from nettrain.layers.activations import ACTIVATIONS, FusedActivation


def randomize(layer, rng, scale=0.5):
    """Non-trivial weights and biases, so no gate sits at its initial value."""
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape) * scale


def pin_mask(layer):
    layer.rng = np.random.default_rng(3)


def residual_fields(shortcut, filters, strides):
    """A ResNet basic block: conv-bn-relu-conv-bn."""
    return dict(shortcut=shortcut, body=[
        dict(type="conv2d", filters=filters, kernel_size=3, strides=strides, padding="same", use_bias=False),
        dict(type="batchnorm"),
        dict(type="relu"),
        dict(type="conv2d", filters=filters, kernel_size=3, padding="same", use_bias=False),
        dict(type="batchnorm"),
    ])


IMAGE = (2, 6, 5)

# Every registered layer type, with small specs and inputs that its gradient check runs on.
# A new layer type adds its entry here: test_every_registered_type_has_gradient_cases fails until it does.
GRADCHECK_CASES: dict[str, list[Case]] = {
    "conv2d": [
        Case(dict(filters=3, kernel_size=3, padding="same"), IMAGE),
        Case(dict(filters=2, kernel_size=3, strides=2, padding="valid"), IMAGE),
        Case(dict(filters=2, kernel_size=2, strides=2, padding="same"), IMAGE),  # even kernel, same, stride 2
        Case(dict(filters=2, kernel_size=[2, 3], strides=[1, 2], padding=[1, 0]), IMAGE),
        Case(dict(filters=2, kernel_size=3, dilation=2, padding="same"), IMAGE),
        Case(dict(filters=2, kernel_size=1, use_bias=False), IMAGE),
        Case(dict(filters=2, kernel_size=3, activation="relu", padding=1), IMAGE),
        Case(dict(filters=2, kernel_size=3, activation="tanh"), IMAGE),
    ],
    "conv1d": [
        Case(dict(filters=3, kernel_size=3, padding="same"), (2, 7)),
        Case(dict(filters=2, kernel_size=2, strides=2, padding="same"), (2, 7)),  # even kernel, odd pad after
        Case(dict(filters=2, kernel_size=3, dilation=2, padding=1, activation="elu"), (2, 8)),
        Case(dict(filters=2, kernel_size=3, strides=2, activation="relu", use_bias=False), (3, 9)),
    ],
    "maxpool2d": [
        Case(dict(pool_size=2), IMAGE),
        Case(dict(pool_size=3, strides=2), IMAGE),
        Case(dict(pool_size=2, strides=1, padding="same"), IMAGE),
        Case(dict(pool_size=[2, 3], strides=[2, 1]), IMAGE),
    ],
    "avgpool2d": [
        Case(dict(pool_size=2), IMAGE),
        Case(dict(pool_size=3, strides=2, padding="same"), IMAGE),
    ],
    "global_avgpool2d": [Case({}, IMAGE)],
    "batchnorm": [
        Case({}, IMAGE),
        Case({}, (5,), dict(batch=4)),
        Case({}, (3, 4), dict(batch=4)),
    ],
    "flatten": [Case({}, IMAGE)],
    "reshape": [Case(dict(target_shape=[5, 6, 2]), IMAGE)],
    "relu": [Case({}, IMAGE)],
    "leaky_relu": [Case(dict(alpha=0.1), IMAGE)],
    "elu": [Case(dict(alpha=0.7), IMAGE)],
    "tanh": [Case({}, IMAGE)],
    "sigmoid": [Case({}, IMAGE)],
    "softmax": [Case({}, IMAGE)],
    "activation": [Case(dict(activation="elu"), IMAGE)],
    "dense": [
        Case(fields, in_shape)
        for in_shape in [(7,), (3, 4)]
        for fields in [dict(units=4), dict(units=3, activation="sigmoid", use_bias=False)]
    ],
    "dropout": [Case(dict(rate=0.4, seed=3), (2, 4, 4), dict(before_forward=pin_mask))],
    "residual": [
        Case(residual_fields("identity", 2, 1), (2, 6, 6), dict(batch=3)),
        Case(residual_fields("projection", 4, 2), (2, 6, 6), dict(batch=3)),
        Case(residual_fields("zero_pad", 4, 2), (2, 6, 6), dict(batch=3)),
        Case(residual_fields("zero_pad", 3, 1), (2, 6, 6), dict(batch=3)),
        Case(dict(shortcut="projection", body=[  # a bottleneck block
            dict(type="conv2d", filters=2, kernel_size=1, strides=2),
            dict(type="relu"),
            dict(type="conv2d", filters=2, kernel_size=3, padding="same"),
            dict(type="relu"),
            dict(type="conv2d", filters=6, kernel_size=1),
        ]), (3, 5, 5)),
    ],
    **{
        kind: [Case(dict(units=3, return_sequences=sequences), (3, 2), dict(batch=2), prepare=randomize)
               for sequences in (True, False)]
        for kind in ("simple_rnn", "gru", "lstm")
    },
}

ALL_CASES = [(kind, case) for kind in sorted(GRADCHECK_CASES) for case in GRADCHECK_CASES[kind]]


def built(kind: str, case: Case, seed: int = 0) -> Layer:
    layer = make_layer(kind, **case.fields)
    rng = np.random.default_rng(seed)
    layer.build(case.in_shape, rng)
    if case.prepare is not None:
        case.prepare(layer, rng)
    return layer


# -- the table covers every layer type ---------------------------------------------------------
def test_every_registered_type_has_gradient_cases():
    missing = sorted(set(REGISTRY) - set(GRADCHECK_CASES))
    assert not missing, f"add gradient-check cases to GRADCHECK_CASES in tests/test_layers.py for: {missing}"
    unknown = sorted(set(GRADCHECK_CASES) - set(REGISTRY))
    assert not unknown, f"GRADCHECK_CASES has entries for unregistered types: {unknown}"
    assert all(GRADCHECK_CASES[kind] for kind in REGISTRY)


@pytest.mark.parametrize("kind,case", ALL_CASES, ids=[f"{k}-{c}" for k, c in ALL_CASES])
def test_gradients(kind, case):
    layer = built(kind, case)
    errors = check_layer(layer, case.in_shape, **case.options)
    assert "x" in errors and set(layer.params) <= set(errors)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_compute_output_shape_is_the_shape_forward_gives(kind):
    """For every registered type: the shape known before building = build's answer = forward's output."""
    assert GRADCHECK_CASES.get(kind), f"no cases for {kind!r} in GRADCHECK_CASES"
    for case in GRADCHECK_CASES[kind]:
        predicted = make_layer(kind, **case.fields).compute_output_shape(case.in_shape)
        layer = built(kind, case)
        x = np.random.default_rng(1).standard_normal((3, *case.in_shape)).astype(np.float32)
        y = layer.forward(x, training=True)
        assert tuple(predicted) == layer.out_shape == y.shape[1:], (kind, case)


def test_compute_output_shape_is_right_before_build():
    assert make_layer("dense", units=3).compute_output_shape((7,)) == (3,)
    assert make_layer("conv2d", filters=4, kernel_size=3, strides=2).compute_output_shape((2, 9, 7)) == (4, 4, 3)
    assert make_layer("maxpool2d", pool_size=2).compute_output_shape((5, 8, 6)) == (5, 4, 3)
    assert make_layer("lstm", units=6, return_sequences=True).compute_output_shape((10, 4)) == (10, 6)


def test_no_registered_layer_overrides_build():
    """Every layer fills in compute_output_shape and create_params; build is the base's fixed sequence."""
    overriding = [kind for kind, cls in REGISTRY.items() if cls.build is not Layer.build]
    assert not overriding
    assert Sequential.build is Layer.build


def test_build_records_shapes_creates_params_and_zeroes_grads():
    class Scale(Layer):
        def compute_output_shape(self, in_shape):
            return (*in_shape[:-1], 2 * in_shape[-1])

        def create_params(self, in_shape, rng):
            assert self.in_shape == (3, 4) and self.out_shape == (3, 8)
            self.params["w"] = rng.standard_normal(in_shape[-1])

    layer = Scale()
    assert layer.build((3, 4), np.random.default_rng(0)) == (3, 8)
    assert layer.in_shape == (3, 4) and layer.out_shape == (3, 8)
    assert set(layer.grads) == {"w"} and not layer.grads["w"].any()
    with pytest.raises(ShapeError, match="positive whole number"):
        layer.build((3, 0), np.random.default_rng(0))


def test_shape_error_keeps_the_layer_its_input_and_the_problem():
    layer = make_layer("conv2d", name="c", filters=2, kernel_size=7)
    with pytest.raises(ShapeError) as info:
        layer.compute_output_shape((1, 5, 5))  # not built: the error names the shape it was given
    error = info.value
    assert error.layer is layer and error.in_shape == (1, 5, 5)
    assert str(error) == f"layer 'c' (conv2d) on input 5x5x1: {error.detail}"
    assert error.detail.startswith("kernel 7 does not fit the height 5")


def test_gradcheck_accepts_a_backward_that_returns_none():
    errors = check_layer(make_layer("dense", units=3), (4,), input_grad=False)
    assert "x" not in errors and {"kernel", "bias"} <= set(errors)
    errors = check_layer(make_layer("conv2d", filters=2, kernel_size=3), (1, 5, 5), input_grad=False)
    assert "x" not in errors and {"kernel", "bias"} <= set(errors)


# -- fused activations ----------------------------------------------------------------------------
def test_fused_activation_keeps_the_input_only_when_its_derivative_reads_it():
    z = np.array([[-1.0, 2.0]], np.float32)
    relu, elu, none = FusedActivation.named("relu"), FusedActivation.named("elu"), FusedActivation.named(None)
    relu.forward(z)
    elu.forward(z)
    assert relu._z is None and elu._z is z
    assert none.forward(z) is z and none.backward(z) is z
    np.testing.assert_array_equal(relu.backward(np.ones_like(z)), [[0.0, 1.0]])


@pytest.mark.parametrize("kind,fields,in_shape", [
    ("dense", dict(units=3, activation="leaky_relu", kernel_initializer="he_normal"), (4,)),
    ("conv2d", dict(filters=2, kernel_size=3, activation="elu"), (1, 5, 5)),
    ("residual", dict(activation="leaky_relu", body=[dict(type="dense", units=4)]), (4,)),
])
def test_fused_activation_matches_the_activation_layer(kind, fields, in_shape):
    """A layer's activation field gives what the same layer followed by the activation layer gives."""
    name = fields["activation"]
    fused = make_layer(kind, **fields)
    plain = make_layer(kind, **{**fields, "activation": None})
    act = make_layer("activation", activation=name)
    rng = np.random.default_rng(0)
    for layer in (fused, plain, act):
        layer.build(in_shape, np.random.default_rng(0))
    x = rng.standard_normal((2, *in_shape)).astype(np.float32)
    dy = rng.standard_normal((2, *fused.out_shape)).astype(np.float32)
    np.testing.assert_array_equal(fused.forward(x, training=True), act.forward(plain.forward(x, training=True)))
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(act.backward(dy)))


def test_layers_with_parametrised_activations_pickle():
    layer = make_layer("dense", units=3, activation="leaky_relu")
    layer.build((4,), np.random.default_rng(0))
    again = pickle.loads(pickle.dumps(layer))
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), layer.forward(x))


# -- single layers --------------------------------------------------------------------------------
def test_batchnorm_eval_mode_gradients_use_running_stats():
    layer = make_layer("batchnorm")
    layer.build((3, 4, 4), np.random.default_rng(0))
    layer.buffers["running_mean"][:] = [0.5, -1.0, 2.0]
    layer.buffers["running_var"][:] = [2.0, 0.5, 1.5]
    check_layer(layer, (3, 4, 4), training=False)


def test_dropout_is_inverted_and_seeded():
    layer = make_layer("dropout", rate=0.25, seed=1)
    layer.build((1000,), np.random.default_rng(0))
    x = np.ones((20, 1000), np.float32)
    y = layer.forward(x, training=True)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert abs(y.mean() - 1.0) < 0.02
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    other = make_layer("dropout", rate=0.25, seed=1)
    other.build((1000,), np.random.default_rng(0))
    np.testing.assert_array_equal(other.forward(x, training=True), y)


def test_sequential_stack_gradients():
    net = Sequential(
        [
            make_layer("conv2d", filters=3, kernel_size=3, padding="same", activation="relu"),
            make_layer("maxpool2d", pool_size=2),
            make_layer("batchnorm"),
            make_layer("flatten"),
            make_layer("dense", units=4, activation="elu"),
            make_layer("dense", units=3),
        ]
    )
    check_layer(net, (2, 6, 6), batch=3)


def test_residual_mismatch_names_both_shapes_and_suggests_a_shortcut():
    block = make_layer("residual", **residual_fields("identity", 4, 2))
    with pytest.raises(ShapeError) as err:
        block.build((2, 8, 8), np.random.default_rng(0))
    msg = str(err.value)
    assert "4x4x4" in msg and "8x8x2" in msg and "zero_pad" in msg


def test_conv_too_large_kernel_spells_out_the_arithmetic():
    layer = make_layer("conv2d", filters=1, kernel_size=7)
    with pytest.raises(ShapeError) as err:
        layer.build((1, 5, 5), np.random.default_rng(0))
    assert "(5 + 2*0 - 7)/1 + 1 = -1" in str(err.value)
    assert "conv2d" in str(err.value)


def test_same_padding_matches_keras_output_sizes():
    # Keras/TF: output = ceil(n / s) for padding same, whatever the kernel
    for n, k, s in [(32, 3, 2), (7, 2, 2), (8, 4, 3), (5, 2, 1), (6, 1, 4)]:
        layer = make_layer("conv2d", filters=1, kernel_size=k, strides=s, padding="same")
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
    layer = make_layer(type_name, **fields)
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
    layer = make_layer("dense", units=3)
    layer.build((4, 5), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    y = layer.forward(x)
    np.testing.assert_allclose(y[:, 2], x[:, 2] @ layer.params["kernel"] + layer.params["bias"], rtol=1e-6)


def test_batchnorm_running_stats_and_eval():
    layer = make_layer("batchnorm", momentum=0.5)
    layer.build((2, 3, 3), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32) * 3 + 1
    layer.forward(x, training=True)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.5 + 0.5 * var, rtol=1e-5)
    y = layer.forward(x, training=False)
    expect = (x - layer.buffers["running_mean"].reshape(1, 2, 1, 1)) / np.sqrt(
        layer.buffers["running_var"].reshape(1, 2, 1, 1) + 1e-5
    )
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
    assert layer.param_count() == 4 and layer.buffer_count() == 4

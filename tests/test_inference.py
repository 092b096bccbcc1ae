"""The eval-mode forward pass (nettrain.layers.inference): BatchNorm folded into the convolution or dense
layer before it, ReLU fused, residual sums in place; it must equal the plain layer-by-layer pass."""

import numpy as np
import pytest

from conftest import make_layer
from nettrain import kernels
from nettrain.model import Model
from nettrain.optimizers import build_optimizer, parse_optimizer

KERNEL_SETS = ["numpy"] + (["numba"] if kernels.compiled_available() else [])

CONV_BN_RELU = [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "use_bias": False},
    {"type": "batchnorm"},
    {"type": "relu"},
]
BODY = [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "use_bias": False},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "use_bias": False},
    {"type": "batchnorm"},
]

MODELS = {
    "conv_bn_relu": ((5, 9, 9), [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"},  # with a bias, RGB-like input
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "conv2d", "filters": 12, "kernel_size": 3, "strides": 2, "use_bias": False},
        {"type": "batchnorm", "scale": False},
        {"type": "activation", "activation": "relu"},
        {"type": "conv2d", "filters": 8, "kernel_size": 1, "use_bias": False},
        {"type": "batchnorm", "center": False},
        {"type": "tanh"},
        {"type": "conv2d", "filters": 8, "kernel_size": 2, "activation": "relu"},  # BN after its own ReLU
        {"type": "batchnorm"},
        {"type": "maxpool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 4, "kernel_size": 1},
        {"type": "leaky_relu"},
        {"type": "flatten"},
    ]),
    "resnet_blocks": ((8, 8, 8), [
        {"type": "residual", "body": BODY},
        {"type": "residual", "shortcut": "zero_pad", "body": [dict(BODY[0], filters=12, strides=2), *BODY[1:3],
                                                                dict(BODY[3], filters=12), BODY[4]]},
        {"type": "residual", "shortcut": "projection", "body": [dict(BODY[0], filters=16, strides=2), *BODY[1:3],
                                                                  dict(BODY[3], filters=16), BODY[4]]},
        {"type": "residual", "activation": "tanh", "body": [dict(layer, filters=16) if "filters" in layer else layer
                                                             for layer in BODY]},
        {"type": "global_avgpool2d"},
        {"type": "dense", "units": 6},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "dense", "units": 3},
    ]),
    "dropout_body": ((4, 5, 5), [
        {"type": "residual", "activation": None, "body": [{"type": "dropout", "rate": 0.5}]},  # hands x on
        {"type": "residual", "body": [{"type": "flatten"}, {"type": "reshape", "target_shape": [5, 5, 4]}]},
    ]),
    "tiling_windows": ((3, 16, 16), [  # stride == kernel, no padding: one GEMM per sample on the NumPy set
        {"type": "conv2d", "filters": 6, "kernel_size": 4, "strides": 4, "activation": "relu"},
        {"type": "conv2d", "filters": 4, "kernel_size": 2, "strides": 2, "use_bias": False},
        {"type": "batchnorm"},
        {"type": "relu"},
    ]),
    "conv1d_bn": ((5, 7), [  # a batchnorm after a conv1d normalises its positions, not its channels
        {"type": "conv1d", "filters": 4, "kernel_size": 3},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "conv1d", "filters": 3, "kernel_size": 2, "activation": "relu"},
    ]),
    "dense_on_sequences": ((5, 7), [
        {"type": "dense", "units": 9, "use_bias": False},
        {"type": "batchnorm"},
        {"type": "relu"},
        {"type": "dense", "units": 4, "activation": "sigmoid"},
        {"type": "batchnorm"},
        {"type": "lstm", "units": 6},
        {"type": "dense", "units": 5},
        {"type": "batchnorm"},
        {"type": "elu"},
    ]),
}


@pytest.fixture(params=KERNEL_SETS)
def kernel_set(request):
    previous = kernels.use_kernels(request.param)
    yield request.param
    kernels.use_kernels(previous)


def built(name: str, seed: int = 0) -> Model:
    """The model ``name`` with random BatchNorm statistics, so that every fold changes the weights."""
    in_shape, specs = MODELS[name]
    model = Model([make_layer(spec.pop("type"), **spec) for spec in (dict(s) for s in specs)], in_shape).build(seed)
    rng = np.random.default_rng(seed + 1)
    for key, array in {**model.buffers(), **model.parameters()}.items():
        if key.endswith("running_var"):
            array[...] = rng.uniform(0.3, 2.0, array.shape)
        elif key.endswith(("running_mean", "beta", "gamma", ".bias")):
            array[...] = rng.normal(0.5 if key.endswith("gamma") else 0.0, 0.5, array.shape)
    return model


def layer_by_layer(model: Model, x: np.ndarray) -> np.ndarray:
    """The eval forward without fusion: a forward hook makes every container run its layers one by one."""
    model.set_forward_hook(lambda path, layer, y: None)
    try:
        return model.forward(x, training=False)
    finally:
        model.set_forward_hook(None)


def batch(model: Model, n: int = 6, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_eval_forward_equals_the_layer_by_layer_pass(name, kernel_set):
    model = built(name)
    x = batch(model)
    expect = layer_by_layer(model, x)
    got = model.forward(x, training=False)
    assert got.shape == expect.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(expect).max())))
    np.testing.assert_array_equal(x, batch(model))  # the input is never written over


def test_basic_blocks_keep_channels_last_between_their_convolutions(kernel_set, monkeypatch):
    """On a channels-last kernel set the identity, zero-pad and projection blocks run both convolutions
    with the rows in between (the tanh block does not: its activation is not a ReLU); same result."""
    from nettrain.layers import inference

    monkeypatch.setenv("NETTRAIN_THREADS", "1")  # one slice of the batch: one call per block
    calls = []
    through = kernels.conv2d_forward_from_rows
    monkeypatch.setattr(kernels, "conv2d_forward_from_rows", lambda *a, **k: calls.append(a) or through(*a, **k))
    model = built("resnet_blocks")
    x = batch(model)
    got = model.forward(x, training=False)
    assert len(calls) == (3 if kernels.backend(np.float32).conv_layout == "rows" else 0)
    np.testing.assert_allclose(got, layer_by_layer(model, x), rtol=1e-4, atol=1e-5)
    tanh_block = model.layers[3]
    assert inference.residual_channels_last(tanh_block, np.zeros((1, 16, 2, 2), np.float32)) is None


def test_fused_eval_forward_matches_float64_within_float32_rounding(kernel_set):
    model = built("resnet_blocks")
    x = batch(model)
    got = model.forward(x, training=False)
    model.cast(np.float64)
    exact = layer_by_layer(model, x.astype(np.float64))
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)


def test_the_fold_follows_a_training_step_and_loaded_arrays(kernel_set):
    model = built("resnet_blocks")
    x = batch(model)
    before = model.forward(x, training=False)
    # a training forward moves the running statistics, the optimizer the weights
    optimizer = build_optimizer(parse_optimizer({"type": "sgd", "lr": 0.1}), model.parameters())
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y))
    optimizer.step(model.parameters(), model.gradients())
    after_step = model.forward(x, training=False)
    assert not np.allclose(after_step, before)
    np.testing.assert_allclose(after_step, layer_by_layer(model, x), rtol=1e-4, atol=1e-4)
    # load_arrays (what checkpoints and `predict` use) writes the arrays in place
    other = built("resnet_blocks", seed=5)  # the same layers under other names (make_layer counts them)
    model.load_arrays(dict(zip(model.parameters(), other.parameters().values())),
                      dict(zip(model.buffers(), other.buffers().values())))
    loaded = model.forward(x, training=False)
    np.testing.assert_allclose(loaded, other.forward(x, training=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded, layer_by_layer(model, x), rtol=1e-4, atol=1e-4)


def test_an_eval_forward_between_training_forward_and_backward_changes_no_gradient(kernel_set):
    """The fused layers keep nothing in eval, so they cannot overwrite what the training pass kept for backward
    (unlike dropout and pooling, whose eval forward still replaces their masks)."""
    model, twin = built("resnet_blocks"), built("resnet_blocks")
    x, other = batch(model), batch(model, seed=9)
    for m, interleave in ((model, False), (twin, True)):
        y = m.forward(x, training=True)
        if interleave:
            m.forward(other, training=False)
        m.backward(np.cos(y))
    for (key, grad), twin_grad in zip(model.gradients().items(), twin.gradients().values()):
        np.testing.assert_array_equal(twin_grad, grad, err_msg=key)
    for (key, value), twin_value in zip(model.buffers().items(), twin.buffers().values()):
        np.testing.assert_array_equal(twin_value, value, err_msg=key)


def test_training_forward_does_not_fuse(kernel_set):
    """In training BatchNorm normalises with the batch statistics: the output of conv-BN has zero mean per channel."""
    model = built("conv_bn_relu")
    conv_bn = Model(model.layers[:2], model.input_shape)
    conv_bn.output_shape = model.layers[1].out_shape
    y = conv_bn.forward(batch(model, n=16), training=True)
    beta = model.layers[1].params["beta"]
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), beta, atol=1e-4)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_output_stores_apply_relu(kernel_set, relu, with_bias):
    ops = kernels.kernel_set(kernel_set)
    rng = np.random.default_rng(3)
    n, f, p = 3, 5, 7
    bias = rng.standard_normal(f).astype(np.float32) if with_bias else None
    rows = rng.standard_normal((n * p, f)).astype(np.float32)
    rows[4, 2] = np.nan
    expect = rows.reshape(n, p, f).transpose(0, 2, 1) + (0 if bias is None else bias.reshape(1, f, 1))
    if relu:
        expect = np.where(expect < 0, 0, expect)  # NaN stays NaN
    np.testing.assert_array_equal(ops.rows_to_images(rows, bias, np.empty((n, f, p), np.float32), relu), expect)
    columns = np.ascontiguousarray(rows.reshape(n, p, f).transpose(2, 0, 1).reshape(f, n * p))
    np.testing.assert_array_equal(ops.samples_major(columns, bias, np.empty((n, f, p), np.float32), relu), expect)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_forward_on_slices_over_threads_equals_the_one_thread_pass(name, kernel_set, monkeypatch):
    """With two worker threads a batch is cut into slices that each thread takes through all the layers
    (not with a recurrent layer, which is then run on the whole batch); the result is the one-thread pass's."""
    from nettrain.layers import inference

    model = built(name)
    x = batch(model, n=11)
    monkeypatch.setenv("NETTRAIN_THREADS", "1")
    expect = model.forward(x, training=False)
    slices = []
    serial = inference._forward_serial
    def spy(layers, xs):  # the model's own layer list: not a residual body's
        if layers is model.layers:
            slices.append(len(xs))
        return serial(layers, xs)

    monkeypatch.setattr(inference, "_forward_serial", spy)
    monkeypatch.setenv("NETTRAIN_THREADS", "2")
    for split_bytes in (1, 1 << 30):  # one sample per slice; one slice per thread
        monkeypatch.setattr(inference, "SAMPLE_SPLIT_BYTES", split_bytes)
        slices.clear()
        got = model.forward(x, training=False)
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(expect).max())))
        if inference.sample_splittable(model.layers):
            assert sorted(slices) == ([1] * 11 if split_bytes == 1 else [5, 6])
        else:
            assert "lstm" in str(MODELS[name]) and slices == [11]
    np.testing.assert_array_equal(x, batch(model, n=11))


@pytest.mark.parametrize("n, sample_bytes, workers", [(128, 120_000, 2), (128, 1, 2), (7, 1 << 30, 2), (1, 5, 3),
                                                       (100, 50_000, 3)])
def test_eval_slices_cover_the_batch_evenly_over_the_workers(n, sample_bytes, workers):
    from nettrain.layers import inference

    slices = inference.split_slices(n, sample_bytes, workers)
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    sizes = [b - a for a, b in slices]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(slices) % workers == 0 or len(slices) == n
    assert max(sizes) * sample_bytes <= max(inference.SAMPLE_SPLIT_BYTES, sample_bytes)

"""The compiled training kernels of round three against the reference: BatchNorm + ReLU fused in
training (kernels, and the layer pair against the two layers unfused), max pooling without padding."""

import numpy as np
import pytest

pytest.importorskip("numba")

from conftest import make_layer  # noqa: E402
from gradcheck import check_layer  # noqa: E402
from nettrain import kernels  # noqa: E402
from nettrain.kernels.compiled import pooling as compiled_pooling  # noqa: E402
from nettrain.kernels import reference  # noqa: E402
from nettrain.layers import Sequential  # noqa: E402
from nettrain.layers.norm import BatchStatistics  # noqa: E402

NUMBA = kernels.kernel_set("numba")

# (M, F, P): images (P = H*W, one above the kernels' 512-value blocks), vectors (P = 1), odd sizes
SHAPES = [(5, 3, 7), (3, 2, 1030), (9, 6, 1), (2, 5, 513)]


def bn_inputs(shape, seed, far=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5 + far).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    f = shape[1]
    mean = x.astype(np.float64).mean(axis=(0, 2)).astype(np.float32)
    inv_std = (1 / np.sqrt(x.astype(np.float64).var(axis=(0, 2)) + 1e-5)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, f).astype(np.float32)
    beta = rng.standard_normal(f).astype(np.float32)
    return x, dy, mean, inv_std, gamma, beta


def naive_bn_relu(x, dy, gamma, beta, eps=1e-5):
    """float64 loops over channels: y = relu(bn(x)) with the batch statistics, and its gradients."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    y, dx = np.empty_like(x), np.empty_like(x)
    dgamma, dbeta = np.empty(x.shape[1]), np.empty(x.shape[1])
    for k in range(x.shape[1]):
        v = x[:, k]
        mu, var = v.mean(), v.var()
        xhat = (v - mu) / np.sqrt(var + eps)
        z = gamma[k] * xhat + beta[k]
        y[:, k] = np.maximum(z, 0)
        g = dy[:, k] * (z > 0)
        dbeta[k], dgamma[k] = g.sum(), (g * xhat).sum()
        dx[:, k] = gamma[k] / np.sqrt(var + eps) * (g - g.mean() - xhat * (g * xhat).mean())
    return y, dx, dgamma, dbeta


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_kernels_match_the_reference_and_float64_loops(shape):
    x, dy, mean, inv_std, gamma, beta = bn_inputs(shape, seed=sum(shape))
    scale, shift = gamma * inv_std, beta - mean * gamma * inv_std
    y_fast = NUMBA.batchnorm_relu_affine(x, scale, shift)
    y_ref = reference.KERNELS["batchnorm_relu_affine"](x, scale, shift)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-6, atol=1e-6)
    fast = NUMBA.batchnorm_relu_backward(x, y_fast, dy, mean, inv_std, gamma)
    ref = reference.KERNELS["batchnorm_relu_backward"](x, y_ref, dy, mean, inv_std, gamma)
    for got, expect in zip(fast, ref):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expect).max()))
    y64, dx64, dgamma64, dbeta64 = naive_bn_relu(x, dy, gamma, beta)
    np.testing.assert_allclose(y_fast, y64, rtol=1e-4, atol=1e-4)
    for got, expect in zip(fast, (dx64, dgamma64, dbeta64)):
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expect).max()))


@pytest.mark.parametrize("shape", SHAPES)
def test_unfused_compiled_backward_matches_the_reference(shape):
    x, dy, mean, inv_std, gamma, _ = bn_inputs(shape, seed=7 + sum(shape))
    fast = NUMBA.batchnorm_backward(x, dy, mean, inv_std, gamma)
    ref = reference.batchnorm_backward(x, dy, mean, inv_std, gamma)
    for got, expect in zip(fast, ref):
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expect).max()))


@pytest.mark.parametrize("shape", SHAPES)
def test_statistics_in_blocks_stay_accurate_far_from_zero(shape):
    x, *_ = bn_inputs(shape, seed=3, far=1000.0)
    mean, var = NUMBA.batchnorm_stats(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-3)


def test_fused_kernels_keep_nan():
    x, dy, mean, inv_std, gamma, beta = bn_inputs((3, 2, 9), seed=1)
    x[0, 0, 0] = np.nan
    y = NUMBA.batchnorm_relu_affine(x, gamma * inv_std, beta - mean * gamma * inv_std)
    assert np.isnan(y[0, 0, 0]) and not np.isnan(y[1:]).any()
    dy[1, 1, 1] = np.nan
    y = np.abs(y)
    y[1, 1, 1] = 0  # a NaN gradient where the ReLU was closed still poisons the sums, as dy * (y > 0) does
    dx, dgamma, dbeta = NUMBA.batchnorm_relu_backward(x, y, dy, mean, inv_std, gamma)
    assert np.isnan(dbeta[1]) and np.isnan(dx[:, 1]).all()


def bn_relu_stack(in_shape):
    return Sequential([make_layer("conv2d", filters=4, kernel_size=3, padding="same", use_bias=False),
                       make_layer("batchnorm"), make_layer("relu"),
                       make_layer("conv2d", filters=3, kernel_size=3, padding="same")])


def run_stack(net, x, dy, training, fuse):
    bn, relu = net.layers[1], net.layers[2]
    bn.relu_after = relu if fuse else None
    net.forward_hook = lambda layer, out: None  # layer by layer in eval too (the fused eval pass keeps nothing)
    y = net.forward(x, training=training)
    handed_through = relu._handed_through
    dx = net.backward(dy)
    grads = {f"{layer.name}.{k}": g.copy() for layer in net.layers for k, g in layer.grads.items()}
    return y, dx, grads, handed_through


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_a_fused_pair_gives_what_the_two_layers_give(fast, training):
    in_shape = (3, 7, 5)
    net = bn_relu_stack(in_shape)
    net.build(in_shape, np.random.default_rng(0))
    assert net.layers[1].relu_after is net.layers[2] and net.layers[2].fused_before is net.layers[1]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, *in_shape)).astype(np.float32)
    dy = rng.standard_normal((6, 3, 7, 5)).astype(np.float32)
    previous = kernels.set_compiled(fast)
    try:
        buffers = {k: v.copy() for k, v in net.layers[1].buffers.items()}
        y1, dx1, g1, through = run_stack(net, x, dy, training, fuse=True)
        net.layers[1].buffers.update({k: v.copy() for k, v in buffers.items()})
        y2, dx2, g2, _ = run_stack(net, x, dy, training, fuse=False)
    finally:
        kernels.set_compiled(previous)
    assert through == training  # the ReLU hands the BatchNorm's output through in training only
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-4)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(g2[k]).max()), err_msg=k)


def test_a_fused_pair_passes_the_gradient_check():
    check_layer(Sequential([make_layer("batchnorm"), make_layer("relu")]), (3, 4, 5), batch=4)
    check_layer(Sequential([make_layer("batchnorm"), make_layer("activation", activation="relu")]), (6,), batch=5)


def test_a_relu_not_after_a_batchnorm_is_not_fused():
    net = Sequential([make_layer("dense", units=4), make_layer("relu"), make_layer("batchnorm"),
                      make_layer("tanh")])
    net.build((3,), np.random.default_rng(0))
    assert net.layers[1].fused_before is None and net.layers[2].relu_after is None


class SharedLocally(BatchStatistics):
    """Statistics marked as shared that cover only this batch: the shared backward must give the local one."""

    shared = True


@pytest.mark.parametrize("fast", [True, False])
def test_fused_pair_with_shared_statistics_matches_local(fast):
    in_shape = (3, 6, 4)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, *in_shape)).astype(np.float32)
    dy = rng.standard_normal((5, 3, 6, 4)).astype(np.float32)
    results = []
    previous = kernels.set_compiled(fast)
    try:
        for stats in (BatchStatistics(), SharedLocally()):
            net = bn_relu_stack(in_shape)
            net.build(in_shape, np.random.default_rng(0))
            net.layers[1].statistics = stats
            results.append(run_stack(net, x, dy, True, fuse=True))
    finally:
        kernels.set_compiled(previous)
    (y1, dx1, g1, _), (y2, dx2, g2, _) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-4)
    for k1, k2 in zip(g1, g2):
        np.testing.assert_allclose(g1[k1], g2[k2], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(g2[k2]).max()))


def valid_pool_geometry(rng):
    """A random pooling window without padding: every window inside the image."""
    while True:
        c = int(rng.integers(1, 5))
        h, w = (int(v) for v in rng.integers(1, 14, size=2))
        kernel = tuple(int(v) for v in rng.integers(1, 5, size=2))
        stride = tuple(int(v) for v in rng.integers(1, 5, size=2))
        oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
        if h >= kernel[0] and w >= kernel[1]:
            return kernels.ConvGeometry((c, h, w), kernel, stride, (1, 1), (0, 0, 0, 0), (oh, ow))


@pytest.mark.parametrize("seed", range(24))
def test_max_pool_without_padding_matches_the_reference_and_the_general_loops(seed):
    rng = np.random.default_rng(500 + seed)
    g = valid_pool_geometry(rng)
    # small integers: ties everywhere, and the first cell in row-major order must win them
    x = rng.integers(-2, 3, size=(3, *g.in_chw)).astype(np.float32) if seed % 2 else \
        rng.standard_normal((3, *g.in_chw)).astype(np.float32)
    y, arg = NUMBA.max_pool_forward(x, g)
    y_ref, arg_ref = reference.max_pool_forward(x, g)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(NUMBA.max_pool_backward(dy, arg, g), reference.max_pool_backward(dy, arg_ref, g),
                               rtol=1e-6, atol=1e-6)
    # the general (padded) loops give the same, NaN included
    x[0, 0, 0, 0] = np.nan
    y, arg = NUMBA.max_pool_forward(x, g)
    y_gen, arg_gen = np.empty_like(y), np.empty_like(arg)
    planes = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
    compiled_pooling._pool_forward(planes(x), *g.kernel, *g.stride, 0, 0, np.empty((0, 0), x.dtype),
                                   planes(y_gen), planes(arg_gen), True)
    np.testing.assert_array_equal(y, y_gen)
    np.testing.assert_array_equal(arg, arg_gen)


# Conv2D with a fused ReLU: applied in the copy out of the GEMM, its mask in the copy of dy into the GEMM.
CONV_RELU = [
    (dict(filters=3, kernel_size=3, padding="same"), (2, 7, 5)),  # RGB-like: im2col
    (dict(filters=5, kernel_size=3, strides=2, padding="same"), (9, 7, 6)),  # channels last, odd sizes
    (dict(filters=4, kernel_size=3, dilation=2, padding="same"), (8, 9, 7)),  # dilated
    (dict(filters=4, kernel_size=3, padding="same"), (8, 6, 6)),  # stride 1, 3x3, 8 channels: shifted (NumPy set)
    (dict(filters=6, kernel_size=4, strides=4), (3, 12, 9)),  # patchify: columns kept for backward
    (dict(filters=3, kernel_size=(2, 3), strides=(1, 2), padding=1), (8, 5, 7)),
]


@pytest.mark.parametrize("fields,in_shape", CONV_RELU, ids=[str(c[1]) for c in CONV_RELU])
def test_conv_with_fused_relu_passes_the_gradient_check(fields, in_shape):
    check_layer(make_layer("conv2d", activation="relu", **fields), in_shape, batch=2)


@pytest.mark.parametrize("fields,in_shape", CONV_RELU, ids=[str(c[1]) for c in CONV_RELU])
def test_conv_with_fused_relu_matches_conv_then_relu(fields, in_shape):
    rng = np.random.default_rng(len(in_shape) + sum(in_shape))
    fused = make_layer("conv2d", activation="relu", **fields)
    plain = make_layer("conv2d", **fields)
    relu = make_layer("relu")
    for layer, shape in ((fused, in_shape), (plain, in_shape)):
        layer.build(shape, np.random.default_rng(0))
    relu.build(plain.out_shape, np.random.default_rng(0))
    plain.params = {k: v.copy() for k, v in fused.params.items()}
    plain.grads = {k: np.zeros_like(v) for k, v in fused.params.items()}
    x = rng.standard_normal((3, *in_shape)).astype(np.float32)
    dy = rng.standard_normal((3, *fused.out_shape)).astype(np.float32)
    for fast in (True, False):
        previous = kernels.set_compiled(fast)
        try:
            y1 = fused.forward(x, training=True)
            dx1 = fused.backward(dy)
            y2 = relu.forward(plain.forward(x, training=True), training=True)
            dx2 = plain.backward(relu.backward(dy))
        finally:
            kernels.set_compiled(previous)
        np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-4)
        for k in fused.grads:
            np.testing.assert_allclose(fused.grads[k], plain.grads[k], rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("with_bias", [True, False])
def test_layout_changes_with_relu_and_mask_match_the_reference(with_bias):
    rng = np.random.default_rng(11)
    n, f, p = 3, 5, 13
    z = rng.standard_normal((f, n * p)).astype(np.float32)
    z[0, :2] = [np.nan, 0.0]
    bias = rng.standard_normal(f).astype(np.float32) if with_bias else None
    out = lambda: np.full((n, f, p), 7, np.float32)  # noqa: E731
    np.testing.assert_array_equal(NUMBA.samples_major(z, bias, out(), True),
                                  reference.samples_major(z, bias, out(), True))
    zr = np.ascontiguousarray(z.T)
    np.testing.assert_array_equal(NUMBA.rows_to_images(zr, bias, out(), True),
                                  reference.rows_to_images(zr, bias, out(), True))
    dy = rng.standard_normal((n, f, p)).astype(np.float32)
    dy[1, 1, :2] = np.nan  # a NaN gradient stays NaN where the ReLU was closed, as dy * (y > 0) does
    mask = np.maximum(rng.standard_normal((n, f, p)), 0).astype(np.float32)
    np.testing.assert_array_equal(NUMBA.channels_major(dy, np.empty((f, n * p), np.float32), mask),
                                  reference.channels_major(dy, np.empty((f, n * p), np.float32), mask))
    np.testing.assert_array_equal(NUMBA.images_to_rows(dy, np.empty((n * p, f), np.float32), mask),
                                  reference.images_to_rows(dy, np.empty((n * p, f), np.float32), mask))
    np.testing.assert_array_equal(reference.channels_major(dy, np.empty((f, n * p), np.float32), mask),
                                  reference.channels_major(dy * (mask > 0), np.empty((f, n * p), np.float32)))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("case", ["identity", "zero_pad_odd", "zero_pad_stride1", "vectors"])
def test_residual_add_matches_the_reference(case, relu):
    rng = np.random.default_rng(len(case) + relu)
    if case == "identity":
        body, short, stride, offset = rng.standard_normal((3, 4, 5, 7)), rng.standard_normal((3, 4, 5, 7)), 1, 0
    elif case == "zero_pad_odd":  # 7x9 -> 4x5, 3 channels into 6 at offset 1
        body, short, stride, offset = rng.standard_normal((2, 6, 4, 5)), rng.standard_normal((2, 3, 7, 9)), 2, 1
    elif case == "zero_pad_stride1":
        body, short, stride, offset = rng.standard_normal((2, 5, 3, 3)), rng.standard_normal((2, 2, 3, 3)), 1, 2
    else:
        body, short, stride, offset = rng.standard_normal((4, 9)), rng.standard_normal((4, 9)), 1, 0
    body, short = body.astype(np.float32), short.astype(np.float32)
    body.reshape(-1)[0] = np.nan
    got = NUMBA.residual_add(body, short, stride, offset, relu)
    expect = reference.KERNELS["residual_add"](body, short, stride, offset, relu)
    np.testing.assert_array_equal(got, expect)
    # float64 loops
    naive = body.astype(np.float64)
    if short.shape == body.shape:
        naive = naive + short
    else:
        for c in range(short.shape[1]):
            for i in range(body.shape[2]):
                for j in range(body.shape[3]):
                    naive[:, offset + c, i, j] += short[:, c, i * stride, j * stride]
    if relu:
        naive = np.where(naive < 0, 0, naive)
    np.testing.assert_allclose(got, naive, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shortcut,filters,strides", [("identity", 8, 1), ("zero_pad", 12, 2), ("projection", 10, 2)])
def test_residual_block_fast_matches_reference(shortcut, filters, strides):
    make = lambda: make_layer("residual", shortcut=shortcut, body=[  # noqa: E731
        dict(type="conv2d", filters=filters, kernel_size=3, strides=strides, padding="same", use_bias=False),
        dict(type="batchnorm"), dict(type="relu"),
        dict(type="conv2d", filters=filters, kernel_size=3, padding="same", use_bias=False),
        dict(type="batchnorm")])
    in_shape = (8, 7, 9)
    rng = np.random.default_rng(filters)
    block = make()
    block.build(in_shape, rng)
    x = rng.standard_normal((3, *in_shape)).astype(np.float32)
    dy = rng.standard_normal((3, *block.out_shape)).astype(np.float32)
    results = []
    for fast in (True, False):
        previous = kernels.set_compiled(fast)
        try:
            y = block.forward(x, training=True)
            dx = block.backward(dy)
            grads = {f"{layer.name}.{k}": g.copy() for layer in block.children() for k, g in layer.grads.items()}
            results.append((y, dx, grads))
        finally:
            kernels.set_compiled(previous)
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-4)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-4 * max(1.0, np.abs(g2[k]).max()), err_msg=k)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_backward_with_combined_sums_is_the_backward_of_the_whole_batch(name, relu):
    """``combine`` as a second process holding the same samples: dx is the first half's of the doubled batch."""
    ops = kernels.kernel_set(name)
    x, dy, mean, inv_std, gamma, beta = bn_inputs((5, 3, 7), seed=3)
    scale, shift = gamma * inv_std, beta - mean * gamma * inv_std
    y = ops.batchnorm_relu_affine(x, scale, shift) if relu else x
    twice = [np.concatenate([a, a]) for a in (x, y, dy)]
    calls = []

    def combine(sum_dy, sum_dy_xc):
        calls.append(1)
        return 2 * sum_dy, 2 * sum_dy_xc, 2 * x.shape[0] * x.shape[2]

    if relu:
        got = ops.batchnorm_relu_backward(x, y, dy, mean, inv_std, gamma, combine=combine)
        want = ops.batchnorm_relu_backward(*twice, mean, inv_std, gamma)
    else:
        got = ops.batchnorm_backward(x, dy, mean, inv_std, gamma, combine=combine)
        want = ops.batchnorm_backward(twice[0], twice[2], mean, inv_std, gamma)
    assert calls == [1]
    np.testing.assert_allclose(got[0], want[0][:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1] / 2, rtol=1e-4, atol=1e-5)  # dgamma, dbeta: this batch's share
    np.testing.assert_allclose(got[2], want[2] / 2, rtol=1e-4, atol=1e-5)

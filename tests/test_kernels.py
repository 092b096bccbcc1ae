"""The vectorised kernels against naive loop definitions, on random shapes; the worker pool; the kernel sets."""

import os
import subprocess
import sys

import numpy as np
import pytest

import naive
from conftest import conv_against_loops
from nettrain import kernels
from nettrain.kernels import dispatch, pool, shifted
from nettrain.layers import REGISTRY

CONV_SHAPES = [
    # (N, C, H, W), filters, kernel, stride, padding, dilation
    ((2, 3, 7, 7), 4, (3, 3), (1, 1), "same", (1, 1)),
    ((2, 3, 8, 8), 4, (3, 3), (2, 2), "same", (1, 1)),
    ((1, 2, 7, 6), 3, (2, 2), (2, 2), "same", (1, 1)),  # even kernel, same, stride 2, odd input
    ((2, 2, 9, 5), 3, (4, 2), (1, 1), "same", (1, 1)),  # even kernel, stride 1: asymmetric pad
    ((2, 3, 6, 9), 2, (2, 3), (1, 2), "valid", (1, 1)),  # non-square input and kernel
    ((1, 2, 9, 9), 2, (3, 3), (1, 1), "valid", (2, 2)),  # dilation
    ((1, 2, 9, 8), 2, (3, 2), (2, 1), "same", (2, 3)),
    ((2, 3, 10, 10), 5, (4, 4), (4, 4), "valid", (1, 1)),  # AlexNet-like 4x4/4
    ((2, 2, 11, 13), 3, (3, 4), (3, 4), "valid", (1, 1)),  # tiling, pixels left over below and right
    ((2, 3, 18, 16), 5, (4, 4), (4, 4), "valid", (1, 1)),  # tiling, patch rows moved as 16-byte window rows
    ((2, 2, 9, 10), 3, (2, 2), (2, 2), "valid", (1, 1)),  # tiling, window rows of 8 (float32) or 16 bytes
    ((2, 6, 8, 9), 3, (2, 2), (2, 2), "valid", (1, 1)),  # tiling, more channels: patch columns
    ((1, 3, 6, 6), 2, (3, 3), (1, 1), 2, (1, 1)),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,dilation", CONV_SHAPES)
def test_conv2d_matches_naive(shape, filters, kernel, stride, padding, dilation):
    rng = np.random.default_rng(0)
    cls = REGISTRY["conv2d"]
    layer = cls(cls.Spec(filters=filters, kernel_size=list(kernel), strides=list(stride), padding=padding,
                         dilation=list(dilation)))
    layer.build(shape[1:], rng)
    layer.params["bias"][:] = rng.standard_normal(filters)
    x = rng.standard_normal(shape).astype(np.float32)
    y = layer.forward(x)
    expect = naive.conv2d(x.astype(np.float64), layer.params["kernel"].astype(np.float64),
                          layer.params["bias"], stride, layer.pad, dilation)
    assert y.shape == expect.shape
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)
    if padding == "same":
        assert y.shape[2:] == tuple(-(-n // s) for n, s in zip(shape[2:], stride))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,filters,kernel,stride,padding,dilation", CONV_SHAPES)
def test_numpy_conv2d_without_offsets_matches_naive(monkeypatch, shape, filters, kernel, stride, padding, dilation,
                                                    dtype):
    """The NumPy set's im2col path (or per-sample patches where the windows tile the image), forward and all
    gradients, chunk by chunk."""
    from nettrain.kernels import gemm

    monkeypatch.setattr(gemm, "SHIFTED_MAX_OFFSETS", 0)  # never by offsets
    monkeypatch.setattr(gemm, "SHIFTED_BACKWARD_MAX_OFFSETS", 0)
    monkeypatch.setattr(pool, "CHUNK_BYTES", 1)  # one sample per chunk
    case = conv_against_loops(shape, filters, kernel, stride, padding, dilation, dtype)
    g, x, w, b, dy = case.g, case.x, case.w, case.b, case.dy
    expect, dx_expect, dw_expect, db_expect = case.y, case.dx, case.dw, case.db
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(kernels.conv2d_forward(x, w, b, g, kernels.NUMPY), expect, rtol=tol, atol=tol)
    dx, dw, db = kernels.conv2d_backward(x, w, dy.astype(dtype), g, True, kernels.NUMPY, True)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, dx_expect, rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, dw_expect, rtol=tol, atol=tol * np.abs(dw_expect).max())
    np.testing.assert_allclose(db, db_expect, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,dilation", CONV_SHAPES)
def test_im2row_and_row2im_are_im2col_and_col2im_with_the_channels_last(shape, filters, kernel, stride, padding,
                                                                      dilation):
    from nettrain.kernels import reference

    cls = REGISTRY["conv2d"]
    layer = cls(cls.Spec(filters=filters, kernel_size=list(kernel), strides=list(stride), padding=padding,
                         dilation=list(dilation)))
    layer.build(shape[1:], np.random.default_rng(0))
    g, n, (kh, kw) = layer.geometry, shape[0], kernel
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    cols = reference.im2col(x, g, np.empty((g.rows, n * g.pixels), np.float32))
    rows = reference.im2row(x, g, np.full((n * g.pixels, g.rows), np.nan, np.float32))
    as_rows = cols.reshape(shape[1], kh, kw, -1).transpose(3, 1, 2, 0).reshape(n * g.pixels, -1)
    np.testing.assert_array_equal(rows, as_rows)
    drows = np.random.default_rng(2).standard_normal(rows.shape).astype(np.float32)
    dcols = np.ascontiguousarray(drows.reshape(-1, kh, kw, shape[1]).transpose(3, 1, 2, 0)).reshape(g.rows, -1)
    np.testing.assert_allclose(reference.row2im(drows, g, np.full_like(x, np.nan)),
                               reference.col2im(dcols, g, np.empty_like(x)), rtol=1e-6, atol=1e-6)
    z = np.random.default_rng(3).standard_normal((n * g.pixels, filters)).astype(np.float32)
    bias = np.arange(filters, dtype=np.float32)
    np.testing.assert_array_equal(reference.rows_to_images(z, bias, np.empty((n, filters, g.pixels), np.float32)),
                                  reference.samples_major(np.ascontiguousarray(z.T), bias,
                                                          np.empty((n, filters, g.pixels), np.float32)))
    y = z.reshape(n, g.pixels, filters).transpose(0, 2, 1).copy()
    np.testing.assert_array_equal(reference.images_to_rows(y, np.empty_like(z)), z)


SHIFTED_CASES = [  # stride 1: (N, C, H, W), filters, kernel, padding, dilation
    ((3, 16, 9, 9), 16, (3, 3), "same", (1, 1)),  # ResNet-like, odd size
    ((2, 8, 8, 8), 12, (3, 3), "valid", (1, 1)),
    ((2, 9, 9, 5), 3, (4, 2), "same", (1, 1)),  # even kernel: asymmetric pad
    ((1, 8, 9, 9), 4, (3, 3), "valid", (2, 2)),  # dilation
    ((1, 11, 9, 8), 6, (3, 2), "same", (2, 3)),  # dilated same, non-square
    ((2, 12, 12, 12), 24, (5, 5), 2, (1, 1)),  # alexnet_100's second convolution
    ((2, 8, 6, 7), 5, (1, 1), "valid", (1, 1)),  # 1x1
    ((2, 3, 7, 7), 4, (3, 3), 2, (1, 1)),  # RGB, padding wider than the kernel needs
    ((1, 4, 11, 12), 3, (2, 5), "same", (2, 2)),  # wide, dilated: the forward on stacked shifted rows
]


@pytest.mark.parametrize("stack_min_kw", [None, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,filters,kernel,padding,dilation", SHIFTED_CASES)
def test_conv2d_by_kernel_offsets_matches_naive(monkeypatch, shape, filters, kernel, padding, dilation, dtype,
                                               stack_min_kw):
    """The per-offset GEMMs (forward and all gradients) against float64 loops, chunk by chunk; the
    forward also on stacked shifted rows for every kernel width (``stack_min_kw`` 1)."""
    from nettrain.kernels import gemm

    if stack_min_kw is not None:
        monkeypatch.setattr(shifted, "STACK_MIN_KW", stack_min_kw)
    monkeypatch.setattr(gemm, "MIN_CHANNELS", 1)
    monkeypatch.setattr(gemm, "SHIFTED_MAX_OFFSETS", 25)
    monkeypatch.setattr(pool, "CHUNK_BYTES", 1)  # one sample per chunk
    monkeypatch.setattr(shifted, "KERNEL_GRAD_BLOCK", 1)  # the kernel gradient over blocks of 32 positions
    cls = REGISTRY["conv2d"]
    layer = cls(cls.Spec(filters=filters, kernel_size=list(kernel), padding=padding, dilation=list(dilation)))
    rng = np.random.default_rng(sum(shape))
    layer.build(shape[1:], rng)
    g = layer.geometry
    assert gemm.by_offsets(g, kernels.NUMPY)
    w, b = layer.params["kernel"].astype(dtype), rng.standard_normal(filters).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    expect = naive.conv2d(x.astype(np.float64), w.astype(np.float64), b, (1, 1), layer.pad, dilation)
    dy = rng.standard_normal(expect.shape)
    dx_expect, dw_expect, db_expect = naive.conv2d_backward(x.astype(np.float64), w.astype(np.float64), dy, (1, 1),
                                                            layer.pad, dilation)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    y = kernels.conv2d_forward(x, w, b, g, kernels.NUMPY)
    assert y.dtype == dtype and y.shape == expect.shape
    np.testing.assert_allclose(y, expect, rtol=tol, atol=tol)
    dx, dw, db = kernels.conv2d_backward(x, w, dy.astype(dtype), g, True, kernels.NUMPY, True)
    np.testing.assert_allclose(dx, dx_expect, rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, dw_expect, rtol=tol, atol=tol * np.abs(dw_expect).max())
    np.testing.assert_allclose(db, db_expect, rtol=tol, atol=tol)
    assert dw.flags.c_contiguous and dw.dtype == dtype
    none, dw_only, no_bias = kernels.conv2d_backward(x, w, dy.astype(dtype), g, False, kernels.NUMPY, False)
    assert none is None and no_bias is None
    np.testing.assert_allclose(dw_only, dw, rtol=1e-6, atol=1e-6)


def test_only_small_stride_1_kernels_with_enough_channels_run_by_offsets():
    from nettrain.kernels import gemm

    def geometry(c, kernel, stride):
        return kernels.ConvGeometry((c, 8, 8), kernel, stride, (1, 1), (0, 0, 0, 0), (2, 2))

    assert gemm.by_offsets(geometry(16, (3, 3), (1, 1)), kernels.NUMPY)
    assert not gemm.by_offsets(geometry(16, (3, 3), (2, 2)), kernels.NUMPY)
    assert gemm.by_offsets(geometry(16, (5, 5), (1, 1)), kernels.NUMPY)
    assert not gemm.by_offsets(geometry(16, (7, 7), (1, 1)), kernels.NUMPY)
    assert gemm.by_offsets(geometry(16, (5, 5), (1, 1)), kernels.NUMPY, backward=True)
    assert not gemm.by_offsets(geometry(16, (7, 7), (1, 1)), kernels.NUMPY, backward=True)
    assert not gemm.by_offsets(geometry(3, (5, 5), (1, 1)), kernels.NUMPY, backward=True)
    assert not gemm.by_offsets(geometry(3, (3, 3), (1, 1)), kernels.NUMPY)


POOL_CASES = [
    ((2, 3, 8, 8), (2, 2), (2, 2), "valid"),  # non-overlapping
    ((2, 3, 25, 25), (3, 3), (2, 2), "valid"),  # overlapping (AlexNet-like)
    ((1, 2, 12, 12), (4, 4), (2, 2), "valid"),
    ((2, 2, 7, 9), (2, 3), (2, 1), "valid"),  # non-square
    ((2, 2, 7, 7), (3, 3), (2, 2), "same"),
    ((1, 2, 6, 5), (2, 2), (1, 1), "same"),
    ((2, 3, 7, 9), (2, 2), (2, 2), "valid"),  # tiling, with a row and a column left over
    ((1, 2, 9, 8), (3, 2), (3, 2), "valid"),  # tiling, non-square
]


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("shape,pool,stride,padding", POOL_CASES)
def test_pooling_matches_naive(op, shape, pool, stride, padding):
    cls = REGISTRY[f"{op}pool2d"]
    layer = cls(cls.Spec(pool_size=list(pool), strides=list(stride), padding=padding))
    layer.build(shape[1:], np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    y = layer.forward(x)
    expect = naive.pool2d(x.astype(np.float64), pool, stride, layer.pad, "max" if op == "max" else "mean")
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,pool,stride,padding", POOL_CASES)
def test_numpy_maxpool_backward_matches_naive(shape, pool, stride, padding, ties):
    cls = REGISTRY["maxpool2d"]
    layer = cls(cls.Spec(pool_size=list(pool), strides=list(stride), padding=padding))
    layer.build(shape[1:], np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    y, arg = kernels.NUMPY.max_pool_forward(x, layer.geometry)
    np.testing.assert_allclose(y, naive.pool2d(x.astype(np.float64), pool, stride, layer.pad, "max"))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expect = naive.max_pool2d_backward(x.astype(np.float64), dy.astype(np.float64), pool, stride, layer.pad)
    np.testing.assert_allclose(kernels.NUMPY.max_pool_backward(dy, arg, layer.geometry), expect, rtol=1e-6, atol=1e-6)


OVERLAPPING_POOLS = [
    ((3, 5, 25, 25), (3, 3), (2, 2), (0, 0, 0, 0)),  # alexnet_100's first pooling, odd size
    ((2, 3, 12, 12), (4, 4), (2, 2), (0, 0, 0, 0)),  # its second
    ((2, 3, 9, 7), (3, 2), (1, 2), (1, 0, 0, 1)),  # non-square, asymmetric padding
    ((1, 4, 5, 6), (2, 3), (3, 1), (0, 1, 2, 0)),  # rows left over, padding wider than a stride
]


@pytest.mark.parametrize("planes_per_pass", [None, 1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape,pool_hw,stride,pad", OVERLAPPING_POOLS)
def test_separable_max_pool_argmax_and_gradient_match_loops(monkeypatch, shape, pool_hw, stride, pad, ties, dtype,
                                                            planes_per_pass):
    """The flat separable max pooling: the first maximal offset in row-major order, padding never winning,
    whether the planes go in one pass or several (the last one shorter); its backward by bincount."""
    from nettrain.kernels.reference import pooling as ref_pool

    n, c, h, w = shape
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    out_hw = ((hp - pool_hw[0]) // stride[0] + 1, (wp - pool_hw[1]) // stride[1] + 1)
    g = kernels.ConvGeometry((c, h, w), pool_hw, stride, (1, 1), pad, out_hw)
    assert not ref_pool.tiles(g)
    if planes_per_pass is not None:
        per_plane = hp * wp * (2 * np.dtype(dtype).itemsize + 4)
        monkeypatch.setattr(ref_pool, "POOL_CHUNK_BYTES", planes_per_pass * per_plane)
    rng = np.random.default_rng(7)
    x = (rng.integers(0, 2, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    y, arg = ref_pool.max_pool_forward(x, g)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pad[:2], pad[2:]), constant_values=-np.inf)
    for r in range(out_hw[0]):
        for q in range(out_hw[1]):
            cells = xp[:, :, r * stride[0] : r * stride[0] + pool_hw[0], q * stride[1] : q * stride[1] + pool_hw[1]]
            cells = cells.reshape(n, c, -1)
            np.testing.assert_array_equal(y[:, :, r, q], cells.max(-1))
            np.testing.assert_array_equal(arg[:, :, r, q], cells.argmax(-1))  # argmax: the first maximum
    dy = rng.standard_normal(y.shape).astype(dtype)
    expect = naive.max_pool2d_backward(x.astype(np.float64), dy.astype(np.float64), pool_hw, stride, pad)
    # with an ``out`` full of NaN in some cases: every cell of it must be written
    dx = ref_pool.max_pool_backward(dy, arg, g, np.full(shape, np.nan, dtype) if planes_per_pass else None)
    assert dx.dtype == dtype and dx.shape == shape
    np.testing.assert_allclose(dx, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool_hw,stride,in_hw,out_hw,calls", [
    (3, 2, 11, 5, 1),  # overlapping windows: bincount holds the GIL, so one call in the calling thread
    (4, 2, 12, 5, 1),
    (2, 2, 10, 5, 2),  # windows that tile the image: one call per worker thread
])
def test_threaded_max_pool_backward_splits_only_tiling_windows(monkeypatch, pool_hw, stride, in_hw, out_hw, calls):
    """With two worker threads, only the max-pool backward of windows that tile the image is split."""
    from nettrain.kernels.reference import pooling as ref_pool

    monkeypatch.setenv("NETTRAIN_THREADS", "2")
    monkeypatch.setattr(pool, "PARALLEL_MIN_ELEMENTS", 1)
    seen = []
    real = ref_pool.max_pool_backward
    monkeypatch.setattr(ref_pool, "max_pool_backward", lambda dy, *a, **k: seen.append(len(dy)) or real(dy, *a, **k))
    g = kernels.ConvGeometry((3, in_hw, in_hw), (pool_hw,) * 2, (stride,) * 2, (1, 1), (0, 0, 0, 0), (out_hw, out_hw))
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (4, 3, in_hw, in_hw)).astype(np.float32)
    y, arg = ref_pool.threaded_max_pool_forward(x, g)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ref_pool.threaded_max_pool_backward(dy, arg, g)
    assert len(seen) == calls and sum(seen) == 4
    expect = naive.max_pool2d_backward(x.astype(np.float64), dy.astype(np.float64), (pool_hw,) * 2, (stride,) * 2,
                                       (0, 0, 0, 0))
    np.testing.assert_allclose(dx, expect, rtol=1e-6, atol=1e-6)


def test_maxpool_gradient_goes_to_the_first_maximum_on_ties():
    cls = REGISTRY["maxpool2d"]
    layer = cls(cls.Spec(pool_size=2))
    layer.build((1, 2, 2), np.random.default_rng(0))
    x = np.zeros((1, 1, 2, 2), np.float32)
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 1, 1), np.float32))
    np.testing.assert_array_equal(dx.reshape(-1), [1, 0, 0, 0])


def test_no_np_add_at_in_the_package():
    from pathlib import Path

    import nettrain

    root = Path(nettrain.__file__).parent
    offenders = [p.name for p in root.rglob("*.py") if "add.at(" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("workers", ["1", "2", "3"])
def test_threaded_matmuls_match_numpy(monkeypatch, workers):
    """As row blocks on the worker threads; the BLAS is left as it was."""
    monkeypatch.setenv("NETTRAIN_THREADS", workers)
    monkeypatch.setattr(pool, "PARALLEL_MIN_ELEMENTS", 0)
    before = pool.blas().get()
    rng = np.random.default_rng(int(workers))
    a, b, c = (rng.standard_normal(shape).astype(np.float32) for shape in ((37, 5), (5, 8), (37, 8)))
    np.testing.assert_allclose(kernels.matmul(a, b, np.empty((37, 8), np.float32)), a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernels.matmul_tn(a, c, np.empty((5, 8), np.float32)), a.T @ c, rtol=1e-5, atol=1e-5)
    assert pool.blas().get() == before


def test_nested_splits_run_serially_in_the_worker(monkeypatch):
    """A kernel that splits its work, called from inside a share, must not wait on the busy pool."""
    monkeypatch.setenv("NETTRAIN_THREADS", "2")
    hits = np.zeros((4, 6), int)

    def inner(row):
        def work(a, b):
            hits[row, a:b] += 1
        pool.over_batch(work, 6, elements=pool.PARALLEL_MIN_ELEMENTS)

    pool.over_batch(lambda a, b: [inner(r) for r in range(a, b)], 4, elements=pool.PARALLEL_MIN_ELEMENTS)
    np.testing.assert_array_equal(hits, 1)


def test_a_failing_share_raises_in_the_caller(monkeypatch):
    monkeypatch.setenv("NETTRAIN_THREADS", "2")

    def work(a, b):
        if a > 0:
            raise ValueError("share failed")

    with pytest.raises(ValueError, match="share failed"):
        pool.over_batch(work, 4, elements=pool.PARALLEL_MIN_ELEMENTS)


# -- choosing the kernel set ------------------------------------------------------------


def test_a_kernel_missing_from_a_kernel_set_comes_from_the_reference():
    def stand_in(*args):
        raise AssertionError("not called")

    found = {name: stand_in for name in dispatch.KERNEL_NAMES if name != "max_pool_forward"}
    ops = dispatch.build_kernel_set("other", found, ["float32"], fallback=kernels.NUMPY)
    assert ops.max_pool_forward is kernels.NUMPY.max_pool_forward
    assert ops.im2col is stand_in and ops.name == "other"
    assert set(vars(ops)) == set(vars(kernels.NUMPY))
    with pytest.raises(ValueError, match="max_pool_forward"):
        dispatch.build_kernel_set("other", found)


def test_another_kernel_set_slots_in_by_name(monkeypatch):
    """A set registered under a new name runs the dtypes it is written for; the rest run the reference."""
    other = dispatch.build_kernel_set("other", {}, ["float32"], fallback=kernels.NUMPY)
    monkeypatch.setitem(dispatch.LOADERS, "other", lambda: other)
    monkeypatch.delitem(dispatch.BACKENDS, "other", raising=False)
    previous = kernels.use_kernels("other")
    try:
        assert kernels.kernel_path() == "other" and not kernels.compiled_enabled()
        assert kernels.backend(np.float32) is other
        assert kernels.backend(np.float64) is kernels.NUMPY
    finally:
        kernels.use_kernels(previous)
        dispatch.BACKENDS.pop("other", None)
    assert kernels.kernel_path() == previous
    with pytest.raises(ValueError, match="unknown kernel set"):
        kernels.use_kernels("no_such_set")


def test_the_kernels_import_and_run_without_importing_numba_when_switched_off():
    code = """
import sys
import numpy as np
import nettrain.kernels as kernels
from nettrain.layers import REGISTRY
cls = REGISTRY["conv2d"]
layer = cls(cls.Spec(filters=2, kernel_size=3, padding="same", activation="relu"))
layer.build((1, 5, 5), np.random.default_rng(0))
y = layer.forward(np.ones((2, 1, 5, 5), np.float32), training=True)
layer.backward(np.ones_like(y))
assert kernels.kernel_path() == "numpy" and kernels.backend(np.float32) is kernels.NUMPY
print(sorted(name for name in sys.modules
             if name == "numba" or name.startswith(("numba.", "nettrain.kernels.compiled"))))
"""
    env = {**os.environ, "NETTRAIN_FAST": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_tiling_conv_patch_layouts_and_row_units():
    """Which tiling convolutions take patch rows, and when their copies move whole window rows."""
    from nettrain.kernels import patches

    def geometry(c, h, w, k):
        return kernels.ConvGeometry((c, h, w), (k, k), (k, k), (1, 1), (0, 0, 0, 0), (h // k, w // k))

    assert patches.by_rows(geometry(3, 100, 100, 4)) and not patches.by_rows(geometry(6, 8, 8, 2))
    g = geometry(3, 18, 16, 4)
    src, dst = patches._pair(np.zeros((2, 3, 18, 16), np.float32), np.zeros(patches._patch_shape(2, g), np.float32), g)
    assert src.dtype == dst.dtype == np.complex128 and src.shape == dst.shape == (2, 3, 4, 4, 4)
    g = geometry(3, 10, 10, 4)  # rows of 40 bytes: not whole window rows apart, so float by float
    src, dst = patches._pair(np.zeros((2, 3, 10, 10), np.float32), np.zeros(patches._patch_shape(2, g), np.float32), g)
    assert src.dtype == dst.dtype == np.float32 and src.shape == dst.shape == (2, 3, 2, 4, 2, 4)

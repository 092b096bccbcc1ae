"""The operations built on BLAS GEMMs: convolution by im2col or im2row, and the threaded matrix products.

A convolution runs over the batch in chunks of a few samples, so that the
patch matrix of a chunk stays in cache between the copy that fills it and
the GEMM that reads it, and so that no layer keeps a full-batch patch matrix
alive: backward recomputes the patches of each chunk from the layer's input.
The chunks run on the worker threads (:mod:`.pool`); the data movement around
the GEMMs (im2col/im2row, col2im/row2im, the layout changes) comes from a kernel set
(``ops``, see :mod:`.dispatch`), the GEMMs themselves always from NumPy's BLAS.
"""

from __future__ import annotations

import numpy as np

from . import patches, shifted
from .geometry import ConvGeometry
from .pool import (PARALLEL_MIN_ELEMENTS, batch_chunks, chunk_workers, even_ranges, over_batch, run_on_chunks, scratch,
                   split_workers)



# -- convolution -----------------------------------------------------------------
ROWS_CHUNK_FACTOR = 10 / 3
"""Channels-last chunks hold 0.3x the bytes of channels-first ones: with the default 4 MiB, ResNet-20's
patch rows come in chunks of about 1.2 MB (2, 4 and 8 images at 16, 32 and 64 channels), which stay
in a 2 MiB L2 between the copy and the GEMMs. Measured against 2 MiB of rows (3, 7 and 14 images):
the convolutions' parts 5–15% faster per image with 1 thread; whole ResNet-20 steps 0.7–4% faster
in training and 1.5–3% in eval, with 1 thread and 2 (benchmarks/README.md, round seven)."""


def rows_sample_bytes(g: ConvGeometry, itemsize: int) -> int:
    """The bytes per sample that size a channels-last chunk: its patch rows, times :data:`ROWS_CHUNK_FACTOR`."""
    return int(g.rows * g.pixels * itemsize * ROWS_CHUNK_FACTOR)

MIN_CHANNELS = 8
"""Fewer input channels than this (an RGB first layer) always run im2col, channels first: their
rows copy poorly and their per-offset GEMMs are too thin (measured)."""

SHIFTED_MAX_OFFSETS = 25
"""Stride-1 kernels with up to this many offsets (5x5) run :mod:`.shifted` on a channels-first set:
alexnet_100's 5x5 convolution forward measured 10.6 against 11.2 ms by im2col with one thread,
6.6 against 8.2 ms with two (the per-offset GEMMs move less memory than im2col's copies)."""

SHIFTED_BACKWARD_MAX_OFFSETS = 25
"""The same limit for the backward pass, whose col2im costs more than its im2col: alexnet_100's
5x5 convolution runs its backward by offsets (measured 14 against 24 ms)."""


def channels_last(g: ConvGeometry, ops) -> bool:
    """Whether a convolution of geometry ``g`` runs its GEMMs channels last with kernel set ``ops``."""
    return getattr(ops, "conv_layout", "columns") == "rows" and g.in_chw[0] >= MIN_CHANNELS


def by_offsets(g: ConvGeometry, ops, backward: bool = False) -> bool:
    """Whether a convolution's forward (or ``backward``) pass runs one GEMM per kernel offset
    (:mod:`.shifted`) instead of im2col."""
    limit = SHIFTED_BACKWARD_MAX_OFFSETS if backward else SHIFTED_MAX_OFFSETS
    return (getattr(ops, "conv_layout", "columns") == "columns" and shifted.applies(g)
            and g.kernel[0] * g.kernel[1] <= limit and g.in_chw[0] >= MIN_CHANNELS)


def by_patches(g: ConvGeometry, ops) -> bool:
    """Whether a convolution whose windows tile the image runs on its patch matrices (:mod:`.patches`)."""
    return getattr(ops, "conv_layout", "columns") == "columns" and patches.applies(g)


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry, ops,
                   keep_cols: dict | None = None, relu: bool = False) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW) by one GEMM per batch chunk.

    The GEMM runs channels first, (F, C*kh*kw) x (C*kh*kw, n*OH*OW) after im2col, or, where
    the kernel set prefers it (:func:`channels_last`), channels last, (n*OH*OW, kh*kw*C) x
    (kh*kw*C, F) after im2row, which suits a BLAS better when F is small. Small stride-1
    kernels on a channels-first set skip the patch matrix: one GEMM per kernel offset
    (:func:`by_offsets`, :mod:`.shifted`); windows that tile the image make it by a plain
    copy, as rows or columns (:func:`by_patches`, :mod:`.patches`). With a ``keep_cols``
    dict, each chunk's patch matrix is kept there (keyed by its sample range) for
    :func:`conv2d_backward`, which then need not build it again; arrays already in it are
    written over. With ``relu``, the
    output is rectified in the pass that moves it out of the GEMM's layout (training and the
    eval forward's fused activation alike).
    """
    if by_offsets(g, ops):
        return shifted.conv2d_forward(x, kernel, bias, g, relu)
    if by_patches(g, ops):
        y = patches.conv2d_forward(x, kernel, bias, g, keep_cols)
        return np.maximum(y, 0, out=y) if relu else y  # NaN stays NaN
    drive = _forward_rows if channels_last(g, ops) else _forward_columns
    return drive(x, kernel, bias, g, ops, keep_cols, relu)


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, ops,
    input_grad: bool = True, kept_cols: dict | None = None, relu_output: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None.

    Per chunk: the patch matrix (kept by the forward pass, else built again), the kernel
    gradient by one GEMM, then (if ``input_grad``) the patches' gradient by another and
    col2im/row2im; in the layout :func:`conv2d_forward` used. ``relu_output``: the output
    of a forward pass with ``relu``, whose mask ``dy`` passes through in the copy into
    the GEMM's layout.
    """
    offsets = by_offsets(g, ops, backward=True) and not kept_cols
    if relu_output is not None and (offsets or by_patches(g, ops)):  # these take dy as it is
        dy = np.multiply(dy, relu_output > 0, dtype=dy.dtype)
    if offsets:
        return shifted.conv2d_backward(x, kernel, dy, g, with_bias, input_grad)
    if by_patches(g, ops):
        return patches.conv2d_backward(x, kernel, dy, g, with_bias, input_grad, kept_cols)
    drive = _backward_rows if channels_last(g, ops) else _backward_columns
    return drive(x, kernel, dy, g, with_bias, ops, input_grad, kept_cols, relu_output)


def kernel_rows(kernel: np.ndarray) -> np.ndarray:
    """A kernel (F, C, kh, kw) as the (kh*kw*C, F) matrix that multiplies :func:`im2row` rows."""
    return np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)).reshape(-1, kernel.shape[0])


def _cols_buffer(keep_cols: dict | None, key: tuple[int, int], shape: tuple[int, int], dtype) -> np.ndarray:
    """Where a chunk's columns (or rows) go: scratch, or the caller's array from the last step."""
    if keep_cols is None:
        return scratch("cols", shape, dtype)
    buf = keep_cols.get(key)  # reused: fresh pages cost a fault each
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype)
    return buf


def _run_forward(work, n: int, sample_bytes: int, keep_cols: dict | None) -> None:
    """Run a forward ``work`` over the batch chunks; kept columns of other chunks are dropped."""
    workers = chunk_workers()
    chunks = batch_chunks(n, sample_bytes, workers)
    if keep_cols is not None and keep_cols.keys() != set(chunks):
        keep_cols.clear()  # another batch size or thread count: other chunks
    run_on_chunks(work, chunks, workers)


def _chunk(a: np.ndarray | None, n0: int, n1: int) -> np.ndarray | None:
    return None if a is None else a[n0:n1]


def _backward_arrays(x: np.ndarray, dy: np.ndarray, g: ConvGeometry, f: int, input_grad: bool):
    """dx (or None), dy as (N, F, pixels), the worker count and one partial dW and db sum per worker."""
    n = x.shape[0]
    dx = np.empty_like(x) if input_grad else None
    workers = chunk_workers()
    dws = np.zeros((workers, f, g.rows), dtype=x.dtype)
    dbs = np.zeros((workers, f), dtype=x.dtype)
    return dx, dy.reshape(n, f, g.pixels), workers, dws, dbs


def _forward_columns(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry, ops,
                     keep_cols: dict | None = None, relu: bool = False) -> np.ndarray:
    """Channels first: one GEMM (F, C*kh*kw) x (C*kh*kw, n*OH*OW) per batch chunk."""
    n, f = x.shape[0], kernel.shape[0]
    w2 = kernel.reshape(f, -1)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            shape = (g.rows, (n1 - n0) * g.pixels)
            buf = _cols_buffer(keep_cols, (n0, n1), shape, x.dtype)
            cols = ops.im2col(x[n0:n1], g, buf)
            if keep_cols is not None:
                keep_cols[(n0, n1)] = cols
            z = np.matmul(w2, cols, out=scratch("gemm", (f, (n1 - n0) * g.pixels), x.dtype))
            ops.samples_major(z, bias, y[n0:n1], relu)

    _run_forward(work, n, g.rows * g.pixels * x.itemsize, keep_cols)
    return y.reshape(n, f, *g.out_hw)


def _backward_columns(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, ops,
    input_grad: bool = True, kept_cols: dict | None = None, relu_output: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Channels first, per chunk: the columns, dW += dY cols^T, then dcols = W^T dY and col2im."""
    kept_cols = kept_cols or {}
    n, f = x.shape[0], kernel.shape[0]
    w2t = kernel.reshape(f, -1).T
    dx, dy3, workers, dws, dbs = _backward_arrays(x, dy, g, f, input_grad)
    mask3 = None if relu_output is None else relu_output.reshape(dy3.shape)

    def work(k, chunks):
        part = np.empty((g.rows, f), dtype=x.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * g.pixels
            cols = kept_cols.get((n0, n1))
            if cols is None:
                cols = ops.im2col(x[n0:n1], g, scratch("cols", (g.rows, m), x.dtype))
            dz = ops.channels_major(dy3[n0:n1], scratch("gemm", (f, m), x.dtype), _chunk(mask3, n0, n1))
            # (cols dz^T)^T rather than dz cols^T: the BLAS runs this orientation 1.3-2x faster (measured)
            dws[k] += np.matmul(cols, dz.T, out=part).T
            if with_bias:
                dbs[k] += dz.sum(axis=1)
            if input_grad:
                dcols = np.matmul(w2t, dz, out=cols)
                ops.col2im(dcols, g, dx[n0:n1])

    run_on_chunks(work, batch_chunks(n, g.rows * g.pixels * x.itemsize, workers), workers)
    return dx, dws.sum(axis=0).reshape(kernel.shape), dbs.sum(axis=0) if with_bias else None


def _forward_rows(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry, ops,
                  keep_cols: dict | None = None, relu: bool = False) -> np.ndarray:
    """Channels last: one GEMM (n*OH*OW, kh*kw*C) x (kh*kw*C, F) per batch chunk."""
    n, f = x.shape[0], kernel.shape[0]
    wr = kernel_rows(kernel)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            shape = ((n1 - n0) * g.pixels, g.rows)
            buf = _cols_buffer(keep_cols, (n0, n1), shape, x.dtype)
            rows = ops.im2row(x[n0:n1], g, buf)
            if keep_cols is not None:
                keep_cols[(n0, n1)] = rows
            z = np.matmul(rows, wr, out=scratch("gemm", (shape[0], f), x.dtype))
            ops.rows_to_images(z, bias, y[n0:n1], relu)

    _run_forward(work, n, rows_sample_bytes(g, x.itemsize), keep_cols)
    return y.reshape(n, f, *g.out_hw)


def _backward_rows(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, ops,
    input_grad: bool = True, kept_cols: dict | None = None, relu_output: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Channels last, per chunk: the rows of x, dW += dY^T rows, then drows = dY W^T and row2im."""
    kept_cols = kept_cols or {}
    n, f = x.shape[0], kernel.shape[0]
    c = g.in_chw[0]
    wr = kernel_rows(kernel)
    dx, dy3, workers, dws, dbs = _backward_arrays(x, dy, g, f, input_grad)
    mask3 = None if relu_output is None else relu_output.reshape(dy3.shape)

    def work(k, chunks):
        part = np.empty((f, g.rows), dtype=x.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * g.pixels
            rows = kept_cols.get((n0, n1))
            if rows is None:
                rows = ops.im2row(x[n0:n1], g, scratch("cols", (m, g.rows), x.dtype))
            dz = ops.images_to_rows(dy3[n0:n1], scratch("gemm", (m, f), x.dtype), _chunk(mask3, n0, n1))
            dws[k] += np.matmul(dz.T, rows, out=part)
            if with_bias:
                dbs[k] += dz.sum(axis=0)
            if input_grad:
                ops.row2im(np.matmul(dz, wr.T, out=rows), g, dx[n0:n1])

    run_on_chunks(work, batch_chunks(n, rows_sample_bytes(g, x.itemsize), workers), workers)
    dkernel = dws.sum(axis=0).reshape(f, *g.kernel, c).transpose(0, 3, 1, 2)
    return dx, np.ascontiguousarray(dkernel), dbs.sum(axis=0) if with_bias else None


# -- eval, channels last between two convolutions ----------------------------------------
def conv2d_forward_to_rows(x: np.ndarray, kernel: np.ndarray, g: ConvGeometry, ops) -> np.ndarray:
    """(N, C, H, W) -> the convolution's GEMM output as it is, (N*OH*OW, F) channels last and without a
    bias: the input of :func:`conv2d_forward_from_rows`, which applies the bias and ReLU in its copy.

    For a channels-last kernel set (:func:`channels_last`); the eval forward of a residual block.
    """
    n, f = x.shape[0], kernel.shape[0]
    wr = kernel_rows(kernel)
    z = np.empty((n * g.pixels, f), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            rows = ops.im2row(x[n0:n1], g, scratch("cols", ((n1 - n0) * g.pixels, g.rows), x.dtype))
            np.matmul(rows, wr, out=z[n0 * g.pixels : n1 * g.pixels])

    _run_forward(work, n, rows_sample_bytes(g, x.itemsize), None)
    return z


def conv2d_forward_from_rows(z_in: np.ndarray, in_bias: np.ndarray | None, in_relu: bool, kernel: np.ndarray,
                             bias: np.ndarray | None, g: ConvGeometry, ops, shortcut: np.ndarray | None = None,
                             stride: int = 1, offset: int = 0, relu: bool = False) -> np.ndarray:
    """Rows ``z_in`` (N*H*W, C) from :func:`conv2d_forward_to_rows` -> (N, F, OH, OW).

    The copy that pads the input adds ``in_bias`` and applies ``in_relu`` (the convolution before's
    own), and the store adds ``shortcut`` (N, C', h, w; subsampled by ``stride``, into channels
    ``offset`` on, as ``residual_add`` does) before ``relu``: no pass of its own for either.
    """
    c, (h, w) = z_in.shape[1], g.in_chw[1:]
    n, f = z_in.shape[0] // (h * w), kernel.shape[0]
    wr = kernel_rows(kernel)
    y = np.empty((n, f, g.pixels), dtype=z_in.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            m = n1 - n0
            xp = ops.pad_rows(z_in[n0 * h * w : n1 * h * w], in_bias, in_relu, g,
                              scratch("nhwc", (m, *g.padded_hw, c), z_in.dtype))
            rows = ops.padded_to_rows(xp, g, scratch("cols", (m * g.pixels, g.rows), z_in.dtype))
            z = np.matmul(rows, wr, out=scratch("gemm", (m * g.pixels, f), z_in.dtype))
            ops.rows_to_images_add(z, bias, _chunk(shortcut, n0, n1), stride, offset, relu, y[n0:n1])

    _run_forward(work, n, rows_sample_bytes(g, z_in.itemsize), None)
    return y.reshape(n, f, *g.out_hw)


# -- matrix products ---------------------------------------------------------------
# The products run as row blocks on the worker threads, each with a one-thread BLAS, never on the
# BLAS's own threads: after a threaded call OpenBLAS's idle threads spin for about 2**28 cycles
# (0.1 s) before they sleep, which on a 2-core machine takes a core from the worker threads for
# the rest of the step. Measured at 2 threads (``nettrain bench``, batch 128, 3 runs each):
# training alexnet_100 2,845-3,519 img/s with the products on the BLAS's threads against
# 4,507-6,190 in row blocks, fashion_cnn 1,307-1,537 against 1,837-2,085, fashion_lstm
# 5,151-5,369 against 6,193-7,371 (benchmarks/README.md, round four).


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b`` (2-D), blocks of ``a``'s rows on the worker threads."""
    over_batch(lambda r0, r1: np.matmul(a[r0:r1], b, out=out[r0:r1]), a.shape[0], a.shape[0] * b.shape[1])
    return out


def matmul_tn_partials_bytes(m: int, out_size: int, itemsize: int, workers: int) -> int:
    """Bytes of the per-thread partial sums :func:`matmul_tn` allocates for ``(m, K).T @ (m, L)``,
    ``out_size = K * L``, on ``workers`` threads (none when it runs on one)."""
    used = max(1, min(workers, m)) if m * out_size // 16 >= PARALLEL_MIN_ELEMENTS else 1
    return 0 if used == 1 else used * out_size * itemsize


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a.T @ b`` for tall ``a`` (M, K) and ``b`` (M, L): row blocks on the worker threads, then summed.

    The weight gradient of a layer applied at every position (recurrent, dense on sequences).
    """
    m = a.shape[0]
    # each thread adds a partial (K, L) sum: worth it for about 16 multiply-adds per element or more
    workers = split_workers(m, m * out.size // 16)
    if workers == 1:
        return np.matmul(a.T, b, out=out)
    parts = np.empty((workers, *out.shape), out.dtype)

    def work(k, share):
        for r0, r1 in share:
            np.matmul(a[r0:r1].T, b[r0:r1], out=parts[k])

    run_on_chunks(work, even_ranges(m, workers), workers)
    return np.sum(parts, axis=0, out=out)

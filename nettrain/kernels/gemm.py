"""The operations built on BLAS GEMMs: convolution by im2col/col2im, and the threaded matrix products.

A convolution runs over the batch in chunks of a few samples, so that the
column matrix of a chunk stays in cache between the copy that fills it and
the GEMM that reads it, and so that no layer keeps a full-batch column matrix
alive: backward recomputes the columns of each chunk from the layer's input.
The chunks run on the worker threads (:mod:`.pool`); the data movement around
the GEMMs (im2col, col2im and the layout changes) comes from a kernel set
(``ops``, see :mod:`.dispatch`), the GEMMs themselves always from NumPy's BLAS.
"""

from __future__ import annotations

import numpy as np

from .geometry import ConvGeometry
from .pool import (PARALLEL_MIN_ELEMENTS, batch_chunks, chunk_workers, even_ranges, over_batch, run_on_chunks, scratch,
                   split_workers)



# -- convolution -----------------------------------------------------------------
def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry, ops,
                   keep_cols: dict | None = None) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW): one GEMM (F, C*kh*kw) x (C*kh*kw, n*OH*OW) per batch chunk.

    With a ``keep_cols`` dict, each chunk's columns are kept there (keyed by its sample range)
    for :func:`conv2d_backward`, which then need not build them again; arrays already in it
    are written over.
    """
    n, f = x.shape[0], kernel.shape[0]
    w2 = kernel.reshape(f, -1)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            shape = (g.rows, (n1 - n0) * g.pixels)
            if keep_cols is None:
                buf = scratch("cols", shape, x.dtype)
            else:  # the caller's arrays from the last step are reused: fresh pages cost a fault each
                buf = keep_cols.get((n0, n1))
                if buf is None or buf.shape != shape or buf.dtype != x.dtype:
                    buf = np.empty(shape, x.dtype)
            cols = ops.im2col(x[n0:n1], g, buf)
            if keep_cols is not None:
                keep_cols[(n0, n1)] = cols
            z = np.matmul(w2, cols, out=scratch("gemm", (f, (n1 - n0) * g.pixels), x.dtype))
            ops.samples_major(z, bias, y[n0:n1])

    workers = chunk_workers()
    chunks = batch_chunks(n, g.rows * g.pixels * x.itemsize, workers)
    if keep_cols is not None and keep_cols.keys() != set(chunks):
        keep_cols.clear()  # another batch size or thread count: other chunks
    run_on_chunks(work, chunks, workers)
    return y.reshape(n, f, *g.out_hw)


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, ops,
    input_grad: bool = True, kept_cols: dict | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None.

    Per chunk: the columns (kept by the forward pass, else built again), dW += dY cols^T,
    then (if ``input_grad``) dcols = W^T dY, col2im.
    """
    kept_cols = kept_cols or {}
    n, f = x.shape[0], kernel.shape[0]
    w2t = kernel.reshape(f, -1).T
    dx = np.empty_like(x) if input_grad else None
    dy3 = dy.reshape(n, f, g.pixels)
    workers = chunk_workers()
    dws = np.zeros((workers, f, g.rows), dtype=x.dtype)  # one partial sum per worker
    dbs = np.zeros((workers, f), dtype=x.dtype)

    def work(k, chunks):
        part = np.empty((f, g.rows), dtype=x.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * g.pixels
            cols = kept_cols.get((n0, n1))
            if cols is None:
                cols = ops.im2col(x[n0:n1], g, scratch("cols", (g.rows, m), x.dtype))
            dz = ops.channels_major(dy3[n0:n1], scratch("gemm", (f, m), x.dtype))
            dws[k] += np.matmul(dz, cols.T, out=part)
            if with_bias:
                dbs[k] += dz.sum(axis=1)
            if input_grad:
                dcols = np.matmul(w2t, dz, out=cols)
                ops.col2im(dcols, g, dx[n0:n1])

    run_on_chunks(work, batch_chunks(n, g.rows * g.pixels * x.itemsize, workers), workers)
    return dx, dws.sum(axis=0).reshape(kernel.shape), dbs.sum(axis=0) if with_bias else None


# -- matrix products ---------------------------------------------------------------
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

"""Convolution whose windows tile the image (stride == kernel, no padding): one GEMM per sample (the NumPy path).

Such a convolution (a patchifying first layer, like alexnet_100's 4x4/4) sees each input
pixel once at most, so its patch matrix is a plain rearrangement of the input: per sample,
``P`` (C*kh*kw, OH*OW) is one transposing copy of the image, and ``W (F, C*kh*kw) x P``
is that sample's output, already in NCHW order. NumPy's batched matmul runs these per
sample on a chunk of samples, so no GEMM output needs the transposing copy to NCHW that
:func:`.gemm.conv2d_forward` makes, and the input gradient is the reverse copy with no
overlaps to sum. As with im2col, the patches are kept from a training forward for the
backward pass when the layer asks (:meth:`nettrain.layers.conv.Conv2D.keeps_columns`),
else built again there.
"""

from __future__ import annotations

import numpy as np

from .geometry import ConvGeometry
from .pool import batch_chunks, chunk_workers, run_on_chunks, scratch


def applies(g: ConvGeometry) -> bool:
    """Whether the windows of ``g`` tile the image: stride == kernel, no dilation, no padding."""
    return g.stride == g.kernel and g.dilation == (1, 1) and not any(g.pad)


def _as_windows(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Images (n, C, H, W) -> the view (n, C, kh, kw, OH, OW) of the pixels the windows cover."""
    n, c = x.shape[:2]
    (kh, kw), (oh, ow) = g.kernel, g.out_hw
    return x[:, :, : oh * kh, : ow * kw].reshape(n, c, oh, kh, ow, kw).transpose(0, 1, 3, 5, 2, 4)


def _patches(x: np.ndarray, g: ConvGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Images (n, C, H, W) -> per-sample patch matrices (n, C*kh*kw, OH*OW), rows ordered (c, i, j).

    Written to ``out`` when given, else to a scratch buffer.
    """
    shape = (x.shape[0], g.rows, g.pixels)
    p = scratch("patches", shape, x.dtype) if out is None else out
    p.reshape(x.shape[0], g.in_chw[0], *g.kernel, *g.out_hw)[...] = _as_windows(x, g)
    return p


def _chunks(n: int, g: ConvGeometry, itemsize: int, workers: int) -> list[tuple[int, int]]:
    return batch_chunks(n, g.rows * g.pixels * itemsize, workers)


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry,
                   keep: dict | None = None) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW) for a tiling ``g``, by one GEMM per sample.

    With a ``keep`` dict, each chunk's patches are kept there, keyed by its sample range, for
    :func:`conv2d_backward`; arrays already in it from the last step are written over.
    """
    n, f = x.shape[0], kernel.shape[0]
    w2 = kernel.reshape(f, -1)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)
    workers = chunk_workers()
    chunks = _chunks(n, g, x.itemsize, workers)
    if keep is not None and keep.keys() != set(chunks):
        keep.clear()  # another batch size or thread count: other chunks

    def work(_, share):
        for n0, n1 in share:
            buf = None
            if keep is not None:
                buf = keep.get((n0, n1))
                if buf is None or buf.shape != (n1 - n0, g.rows, g.pixels) or buf.dtype != x.dtype:
                    buf = np.empty((n1 - n0, g.rows, g.pixels), x.dtype)
                keep[(n0, n1)] = buf
            np.matmul(w2, _patches(x[n0:n1], g, buf), out=y[n0:n1])
            if bias is not None:
                y[n0:n1] += bias.reshape(1, f, 1)

    run_on_chunks(work, chunks, workers)
    return y.reshape(n, f, *g.out_hw)


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, input_grad: bool = True,
    kept: dict | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None.

    Each chunk's patches come from ``kept`` (see :func:`conv2d_forward`) or are built again.
    """
    kept = kept or {}
    n, f = x.shape[0], kernel.shape[0]
    oh, ow = g.out_hw
    (kh, kw), w2t = g.kernel, kernel.reshape(f, -1).T
    dy3 = dy.reshape(n, f, g.pixels)
    dx = np.empty_like(x) if input_grad else None
    if input_grad:  # pixels past the last whole window get no gradient
        dx[:, :, oh * kh :] = 0
        dx[:, :, :, ow * kw :] = 0
    workers = chunk_workers()
    dws = np.zeros((workers, f, g.rows), dtype=x.dtype)  # one partial sum per worker
    dbs = np.zeros((workers, f), dtype=x.dtype)

    def work(k, chunks):
        for n0, n1 in chunks:
            p = kept.get((n0, n1))
            if p is None:
                p = _patches(x[n0:n1], g)
            per_sample = np.matmul(dy3[n0:n1], p.transpose(0, 2, 1), out=scratch("patch_dw", (n1 - n0, f, g.rows),
                                                                                 x.dtype))
            dws[k] += per_sample.sum(axis=0)
            if with_bias:
                dbs[k] += dy3[n0:n1].sum(axis=(0, 2))
            if input_grad:
                dp = np.matmul(w2t, dy3[n0:n1], out=p)
                _as_windows(dx[n0:n1], g)[...] = dp.reshape(n1 - n0, g.in_chw[0], kh, kw, oh, ow)

    run_on_chunks(work, _chunks(n, g, x.itemsize, workers), workers)
    return dx, dws.sum(axis=0).reshape(kernel.shape), dbs.sum(axis=0) if with_bias else None

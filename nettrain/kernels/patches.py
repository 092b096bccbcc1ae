"""Convolution whose windows tile the image (stride == kernel, no padding): one GEMM per sample (the NumPy path).

Such a convolution (a patchifying first layer, like alexnet_100's 4x4/4) sees each input
pixel once at most, so its patch matrix is a plain rearrangement of the input: per sample,
``P`` (C*kh*kw, OH*OW) is one transposing copy of the image, and ``W (F, C*kh*kw) x P``
is that sample's output, already in NCHW order. NumPy's batched matmul runs these per
sample on a chunk of samples, so no GEMM output needs the transposing copy to NCHW that
:func:`.gemm.conv2d_forward` makes, and the input gradient is the reverse copy with no
overlaps to sum. Backward builds the patches again from the input: keeping them costs
more in memory traffic than the copy (measured on alexnet_100: forward 14 -> 8 ms).
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


def _patches(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Images (n, C, H, W) -> per-sample patch matrices (n, C*kh*kw, OH*OW), rows ordered (c, i, j)."""
    p = scratch("patches", (x.shape[0], g.rows, g.pixels), x.dtype)
    p.reshape(x.shape[0], g.in_chw[0], *g.kernel, *g.out_hw)[...] = _as_windows(x, g)
    return p


def _chunks(n: int, g: ConvGeometry, itemsize: int, workers: int) -> list[tuple[int, int]]:
    return batch_chunks(n, g.rows * g.pixels * itemsize, workers)


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW) for a tiling ``g``, by one GEMM per sample."""
    n, f = x.shape[0], kernel.shape[0]
    w2 = kernel.reshape(f, -1)
    y = np.empty((n, f, g.pixels), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            np.matmul(w2, _patches(x[n0:n1], g), out=y[n0:n1])
            if bias is not None:
                y[n0:n1] += bias.reshape(1, f, 1)

    workers = chunk_workers()
    run_on_chunks(work, _chunks(n, g, x.itemsize, workers), workers)
    return y.reshape(n, f, *g.out_hw)


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, input_grad: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None."""
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

"""Stride-1 convolution without a patch matrix: one GEMM per kernel offset, summed (the NumPy path).

A chunk of images is laid out channels first and flattened with its padding,
``X`` (C, n*Hp*Wp) plus a tail of zeros. Output pixel (a, b) of sample s sits at
flat position ``s*Hp*Wp + a*Wp + b``; with stride 1 the input it sees through
kernel offset (i, j) sits ``i*dh*Wp + j*dw`` further on. So each offset is one GEMM,
``W[:, :, i, j] (F, C) x X[:, o:o+L] (C, L)``, of a plain slice of X, and their sum,
read at the valid positions, is the convolution: kh*kw GEMMs and adds instead of an
im2col buffer kh*kw times the input. The positions past the right and bottom edges
(Wp - OW columns and Hp - OH rows per sample) are computed and dropped. The
gradients go the same way: dW[:, :, i, j] = dY X[:, o:o+L]^T, and dX adds
W[:, :, i, j]^T dY at offset o.

With NumPy's copies (but not the compiled ones, see :mod:`.gemm`) this measured faster
than im2col for every stride-1 convolution of ResNet-20 and alexnet_100.
"""

from __future__ import annotations

import numpy as np

from .geometry import ConvGeometry
from .pool import batch_chunks, chunk_workers, run_on_chunks, scratch


def applies(g: ConvGeometry) -> bool:
    """Whether :func:`conv2d_forward` and :func:`conv2d_backward` take geometry ``g`` (stride 1)."""
    return g.stride == (1, 1)


def _offsets(g: ConvGeometry) -> list[tuple[int, int, int]]:
    """(i, j, flat offset) for every kernel offset."""
    (kh, kw), (dh, dw), wp = g.kernel, g.dilation, g.padded_hw[1]
    return [(i, j, i * dh * wp + j * dw) for i in range(kh) for j in range(kw)]


def _span(g: ConvGeometry) -> int:
    return _offsets(g)[-1][2]


def _flat_images(x: np.ndarray, g: ConvGeometry, name: str) -> np.ndarray:
    """Images (n, C, H, W) -> (C, n*Hp*Wp + span): channels first, padded, zeros after."""
    n, c, h, w = x.shape
    hp, wp = g.padded_hw
    top, left = g.pad[0], g.pad[2]
    flat = scratch(name, (c, n * hp * wp + _span(g)), x.dtype)
    flat[...] = 0
    flat[:, : n * hp * wp].reshape(c, n, hp, wp)[:, :, top : top + h, left : left + w] = x.transpose(1, 0, 2, 3)
    return flat


def _chunks(n: int, g: ConvGeometry, filters: int, itemsize: int, workers: int) -> list[tuple[int, int]]:
    c = g.in_chw[0]
    hp, wp = g.padded_hw
    return batch_chunks(n, (2 * c + 2 * filters) * hp * wp * itemsize, workers)


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry,
                   relu: bool = False) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW) for a stride-1 ``g``, by kh*kw GEMMs per batch chunk; ``relu``: then
    max(0, .) on each chunk while it is in cache."""
    n, f = x.shape[0], kernel.shape[0]
    oh, ow = g.out_hw
    hp, wp = g.padded_hw
    wk = np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))  # (kh, kw, F, C): each offset's matrix contiguous
    y = np.empty((n, f, oh, ow), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            m = (n1 - n0) * hp * wp
            xf = _flat_images(x[n0:n1], g, "shift_x")
            acc, tmp = scratch("shift_acc", (f, m), x.dtype), scratch("shift_tmp", (f, m), x.dtype)
            for k, (i, j, o) in enumerate(_offsets(g)):
                np.matmul(wk[i, j], xf[:, o : o + m], out=tmp if k else acc)
                if k:
                    acc += tmp
            valid = acc.reshape(f, n1 - n0, hp, wp)[:, :, :oh, :ow].transpose(1, 0, 2, 3)
            if bias is None:
                y[n0:n1] = valid
            else:
                np.add(valid, bias.reshape(1, f, 1, 1), out=y[n0:n1])
            if relu:
                np.maximum(y[n0:n1], 0, out=y[n0:n1])

    workers = chunk_workers()
    run_on_chunks(work, _chunks(n, g, f, x.itemsize, workers), workers)
    return y


def conv2d_backward(
    x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, g: ConvGeometry, with_bias: bool, input_grad: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Input (N, C, H, W) and dy (N, F, OH, OW) -> dx (or None), dkernel (F, C, kh, kw), dbias (F,) or None."""
    n, f = x.shape[0], kernel.shape[0]
    c, h, w = g.in_chw
    oh, ow = g.out_hw
    hp, wp = g.padded_hw
    top, left = g.pad[0], g.pad[2]
    kh, kw = g.kernel
    wk = np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))
    dx = np.empty_like(x) if input_grad else None
    workers = chunk_workers()
    dws = np.zeros((workers, kh, kw, f, c), dtype=x.dtype)  # one partial sum per worker
    dbs = np.zeros((workers, f), dtype=x.dtype)

    def work(k, chunks):
        part = np.empty((f, c), dtype=x.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * hp * wp
            xf = _flat_images(x[n0:n1], g, "shift_x")
            dyf = scratch("shift_acc", (f, m), x.dtype)  # dy at the output positions, zeros elsewhere
            dyf[...] = 0
            dyf.reshape(f, n1 - n0, hp, wp)[:, :, :oh, :ow] = dy[n0:n1].transpose(1, 0, 2, 3)
            for i, j, o in _offsets(g):
                dws[k, i, j] += np.matmul(dyf, xf[:, o : o + m].T, out=part)
            if with_bias:
                dbs[k] += dyf.sum(axis=1)
            if input_grad:
                dxf = scratch("shift_dx", (c, m + _span(g)), x.dtype)
                dxf[...] = 0
                tmp = scratch("shift_tmp", (c, m), x.dtype)
                for i, j, o in _offsets(g):
                    dxf[:, o : o + m] += np.matmul(wk[i, j].T, dyf, out=tmp)
                grad = dxf[:, :m].reshape(c, n1 - n0, hp, wp)[:, :, top : top + h, left : left + w]
                dx[n0:n1] = grad.transpose(1, 0, 2, 3)

    run_on_chunks(work, _chunks(n, g, f, x.itemsize, workers), workers)
    dkernel = np.ascontiguousarray(dws.sum(axis=0).transpose(2, 3, 0, 1))
    return dx, dkernel, dbs.sum(axis=0) if with_bias else None

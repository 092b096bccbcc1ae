"""Stride-1 convolution without a patch matrix: one GEMM per kernel offset, summed (the NumPy path).

A chunk of images is laid out channels first and flattened, ``X`` (C, lead + n*Hq*Wq
plus a tail of zeros): each sample a block of Hq = H + gap rows of Wq = W + gap values,
its pixels in the top-left H x W corner, zeros in the rest. Output pixel (a, b) of
sample s sits at flat position ``s*Hq*Wq + a*Wq + b``; with stride 1 the input it sees
through kernel offset (i, j) sits ``i*dh*Wq + j*dw`` further on. So each offset is one
GEMM, ``W[:, :, i, j] (F, C) x X[:, o:o+L] (C, L)``, of a plain slice of X, and their
sum, read at the valid positions, is the convolution: kh*kw GEMMs and adds instead of
an im2col buffer kh*kw times the input. The zeros between one row (or sample) and the
next serve as the right (bottom) padding of the one and the left (top) padding of the
other, so a gap of max(left, right) columns and max(top, bottom) rows is enough: a
3x3 ``same`` convolution computes (H+1)(W+1) positions per sample, not (H+2)(W+2), and
drops the others. The gradients go the same way: dW[:, :, i, j] = dY X[:, o:o+L]^T,
and dX adds W[:, :, i, j]^T dY at offset o.

With NumPy's copies (but not the compiled ones, see :mod:`.gemm`) this measured faster
than im2col for every stride-1 convolution of ResNet-20 and alexnet_100.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .geometry import ConvGeometry
from .pool import batch_chunks, chunk_workers, run_on_chunks, scratch

KERNEL_GRAD_BLOCK = 48 * 1024
"""Floats of dY and X per GEMM of the kernel gradient: its (F, C) products over a chunk's positions
run on blocks of ``KERNEL_GRAD_BLOCK // (F + C)`` positions at a time. With a few dozen channels
such a product does only F*C/(F+C) multiply-adds per value it reads, and OpenBLAS ran the
long ones at half the speed of blocks that stay in the L2 cache (measured on ResNet-20's 16 and
32 channels; 64 gained nothing and lost nothing)."""


STACK_MIN_KW = 5
"""Kernels at least this wide run their forward on kw shifted copies of the flat images stacked
as (C*kw, flat length) rows: kh GEMMs of depth C*kw instead of kh*kw of depth C (alexnet_100's
5x5 on 12 channels: 3.4 against 4.6 ms per 64-sample chunk; a 3x3 on 16: 14.6 against 12.0, the
copies cost more than the deeper GEMMs gain)."""


def applies(g: ConvGeometry) -> bool:
    """Whether :func:`conv2d_forward` and :func:`conv2d_backward` take geometry ``g`` (stride 1)."""
    return g.stride == (1, 1)


def _grid(g: ConvGeometry) -> tuple[int, int, int]:
    """(Hq, Wq, lead): the rows and the row length of each sample's block, and the zeros before the first."""
    _, h, w = g.in_chw
    top, bottom, left, right = g.pad
    oh, ow = g.out_hw
    wq = w + max(left, right, ow - w)
    return h + max(top, bottom, oh - h), wq, top * wq + left


def _offsets(g: ConvGeometry) -> list[tuple[int, int, int]]:
    """(i, j, flat offset) for every kernel offset."""
    (kh, kw), (dh, dw), wq = g.kernel, g.dilation, _grid(g)[1]
    return [(i, j, i * dh * wq + j * dw) for i in range(kh) for j in range(kw)]


def _flat_length(n: int, g: ConvGeometry) -> int:
    """Values per channel of the flat layout of n images: the blocks, the lead and what the last offset reads."""
    hq, wq, lead = _grid(g)
    return n * hq * wq + max(lead, _offsets(g)[-1][2])


def _flat_images(x: np.ndarray, g: ConvGeometry, name: str) -> np.ndarray:
    """Images (n, C, H, W) -> (C, flat length): channels first, each sample in a zero-padded block."""
    n, c, h, w = x.shape
    hq, wq, lead = _grid(g)
    flat = scratch(name, (c, _flat_length(n, g)), x.dtype)
    flat[...] = 0
    flat[:, lead : lead + n * hq * wq].reshape(c, n, hq, wq)[:, :, :h, :w] = x.transpose(1, 0, 2, 3)
    return flat


def _offset_windows(xf: np.ndarray, g: ConvGeometry, start: int, length: int) -> np.ndarray:
    """The read-only (kh, kw, length, C) view of flat images ``xf`` (C, flat length): for each kernel
    offset (i, j), positions ``start`` to ``start + length`` shifted by its flat offset."""
    (kh, kw), (dh, dw), wq = g.kernel, g.dilation, _grid(g)[1]
    s = xf.itemsize
    return as_strided(xf[:, start:], (kh, kw, length, xf.shape[0]), (dh * wq * s, dw * s, s, xf.strides[0]),
                      writeable=False)


def _row_stack(xf: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Flat images (C, L) -> (C*kw, L): row c*kw + j is channel c shifted left by j*dw (zeros at the end).

    Kernel row i of the convolution is then one GEMM of the (F, C*kw) kernel slice with the
    columns ``i*dh*Wq`` onwards.
    """
    c, length = xf.shape
    kw, dw = g.kernel[1], g.dilation[1]
    rows = scratch("shift_rows", (c, kw, length), xf.dtype)
    for j in range(kw):
        rows[:, j, : length - j * dw] = xf[:, j * dw :]
        rows[:, j, length - j * dw :] = 0
    return rows.reshape(c * kw, length)


def _flat_output_grad(dy: np.ndarray, g: ConvGeometry, name: str) -> np.ndarray:
    """dy (n, F, OH, OW) -> (F, n*Hq*Wq): at each output pixel's flat position, zeros elsewhere."""
    n, f, oh, ow = dy.shape
    hq, wq, _ = _grid(g)
    dyf = scratch(name, (f, n * hq * wq), dy.dtype)
    dyf[...] = 0
    dyf.reshape(f, n, hq, wq)[:, :, :oh, :ow] = dy.transpose(1, 0, 2, 3)
    return dyf


def _image_grad(dxf: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """The gradient of the flat layout (C, flat length) -> ``out`` (n, C, H, W)."""
    n, c, h, w = out.shape
    hq, wq, lead = _grid(g)
    out[...] = dxf[:, lead : lead + n * hq * wq].reshape(c, n, hq, wq)[:, :, :h, :w].transpose(1, 0, 2, 3)
    return out


def _chunks(n: int, g: ConvGeometry, filters: int, itemsize: int, workers: int) -> list[tuple[int, int]]:
    c = g.in_chw[0]
    hq, wq, _ = _grid(g)
    return batch_chunks(n, (2 * c + 2 * filters) * hq * wq * itemsize, workers)


def conv2d_forward(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, g: ConvGeometry,
                   relu: bool = False) -> np.ndarray:
    """(N, C, H, W) -> (N, F, OH, OW) for a stride-1 ``g``, by kh*kw GEMMs per batch chunk; ``relu``: then
    max(0, .) on each chunk while it is in cache."""
    n, f = x.shape[0], kernel.shape[0]
    oh, ow = g.out_hw
    hq, wq, _ = _grid(g)
    (kh, kw), dh = g.kernel, g.dilation[0]
    stacked = kw >= STACK_MIN_KW
    if stacked:  # (kh, F, C*kw), columns ordered (c, j) as the rows of _row_stack
        wk = np.ascontiguousarray(kernel.transpose(2, 0, 1, 3)).reshape(kh, f, -1)
    else:  # (kh, kw, F, C): each offset's matrix contiguous
        wk = np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))
    y = np.empty((n, f, oh, ow), dtype=x.dtype)

    def work(_, chunks):
        for n0, n1 in chunks:
            m = (n1 - n0) * hq * wq
            xf = _flat_images(x[n0:n1], g, "shift_x")
            acc, tmp = scratch("shift_acc", (f, m), x.dtype), scratch("shift_tmp", (f, m), x.dtype)
            if stacked:
                rows = _row_stack(xf, g)
                products = [(wk[i], rows[:, i * dh * wq : i * dh * wq + m]) for i in range(kh)]
            else:
                products = [(wk[i, j], xf[:, o : o + m]) for i, j, o in _offsets(g)]
            for k, (a, b) in enumerate(products):
                np.matmul(a, b, out=tmp if k else acc)
                if k:
                    acc += tmp
            valid = acc.reshape(f, n1 - n0, hq, wq)[:, :, :oh, :ow].transpose(1, 0, 2, 3)
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
    c = g.in_chw[0]
    hq, wq, _ = _grid(g)
    kh, kw = g.kernel
    wk = np.ascontiguousarray(kernel.transpose(2, 3, 0, 1))
    offsets = _offsets(g)
    dx = np.empty_like(x) if input_grad else None
    workers = chunk_workers()
    dws = np.zeros((workers, kh, kw, f, c), dtype=x.dtype)  # one partial sum per worker
    dbs = np.zeros((workers, f), dtype=x.dtype)

    def work(k, chunks):
        part = np.empty((kh, kw, f, c), dtype=x.dtype)
        for n0, n1 in chunks:
            m = (n1 - n0) * hq * wq
            xf = _flat_images(x[n0:n1], g, "shift_x")
            dyf = _flat_output_grad(dy[n0:n1], g, "shift_acc")
            block = max(32, KERNEL_GRAD_BLOCK // (f + c))
            for b0 in range(0, m, block):
                b1 = min(m, b0 + block)
                # all kh*kw products of the block in one batched matmul over a (kh, kw, positions, C)
                # view of X: one NumPy call instead of kh*kw (measured 2.7 against 3.5 ms per chunk
                # of alexnet_100's 5x5), fewer calls to contend for the GIL with two threads
                dws[k] += np.matmul(dyf[:, b0:b1], _offset_windows(xf, g, b0, b1 - b0), out=part)
            if with_bias:
                dbs[k] += dyf.sum(axis=1)
            if input_grad:
                dxf = scratch("shift_dx", (c, _flat_length(n1 - n0, g)), x.dtype)
                dxf[...] = 0
                tmp = scratch("shift_tmp", (c, m), x.dtype)
                for i, j, o in offsets:
                    dxf[:, o : o + m] += np.matmul(wk[i, j].T, dyf, out=tmp)
                _image_grad(dxf, g, dx[n0:n1])

    run_on_chunks(work, _chunks(n, g, f, x.itemsize, workers), workers)
    dkernel = np.ascontiguousarray(dws.sum(axis=0).transpose(2, 3, 0, 1))
    return dx, dkernel, dbs.sum(axis=0) if with_bias else None

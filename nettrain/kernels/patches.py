"""Convolution whose windows tile the image (stride == kernel, no padding): patch matrices and GEMMs (the NumPy path).

Such a convolution (a patchifying first layer, like alexnet_100's 4x4/4) sees each input
pixel once at most, so its patch matrix is a plain rearrangement of the input, one
transposing copy of the images, and the input gradient is the reverse copy with no
overlaps to sum. Two layouts, by the input's channel count:

- Few channels (RGB first layers): patch rows ``P`` (samples*OH*OW, C*kh*kw). Each window
  row's ``kw`` pixels stay together as in the image, so the copies move them as one 8- or
  16-byte element where they fill one (float32 kernels 2 or 4 wide): a quarter of the strided
  steps of a copy float by float. The forward pass is one GEMM ``P x W^T`` per chunk of
  samples and a transposing add of the bias into NCHW order; the kernel gradient is
  ``dY x P`` per sample.
- More channels: per-sample patch columns (C*kh*kw, OH*OW) and ``W x P`` per sample, whose
  output is already NCHW; here the copy into rows scatters its writes, so columns win.

As with im2col, the patches are kept from a training forward for the backward pass when the
layer asks (:meth:`nettrain.layers.conv.Conv2D.keeps_columns`), else built again there.
"""

from __future__ import annotations

import numpy as np

from .geometry import ConvGeometry
from .pool import batch_chunks, chunk_workers, run_on_chunks, scratch


def applies(g: ConvGeometry) -> bool:
    """Whether the windows of ``g`` tile the image: stride == kernel, no dilation, no padding."""
    return g.stride == g.kernel and g.dilation == (1, 1) and not any(g.pad)


def _as_windows(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Images (n, C, H, W) -> the view (n, C, OH, kh, OW, kw) of the pixels the windows cover."""
    n, c = x.shape[:2]
    (kh, kw), (oh, ow) = g.kernel, g.out_hw
    return x[:, :, : oh * kh, : ow * kw].reshape(n, c, oh, kh, ow, kw)


# Element types as wide as a window row of 2 or 4 float32 (or 2 float64) pixels: the copies
# between images and patch rows move whole window rows, bit for bit.
_ROW_UNITS = {8: np.float64, 16: np.complex128}


# Input channels up to which the patches are rows; wider inputs take columns (a 2x2/2 conv of
# 16 channels: copy 0.8 ms as columns, 2.0 ms as rows; alexnet_100's 4x4/4 of 3: 0.7 against 0.5).
ROWS_MAX_CHANNELS = 4


def by_rows(g: ConvGeometry) -> bool:
    """Whether the patches of ``g`` are rows (few input channels) rather than columns."""
    return g.in_chw[0] <= ROWS_MAX_CHANNELS


def _patch_shape(n: int, g: ConvGeometry) -> tuple[int, int, int]:
    return (n, g.pixels, g.rows) if by_rows(g) else (n, g.rows, g.pixels)


def _pair(images: np.ndarray, patches: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``images`` (n, C, H, W) and of their ``patches`` (:func:`_patch_shape`) in the same axis order.

    As rows, the images' (n, C, OH, kh, OW) window rows against the matching cells, each a
    whole window row of ``kw`` pixels where a type that wide exists and the strides allow
    it; else pixel by pixel, with a trailing kw axis on both.
    """
    n, c = images.shape[:2]
    (kh, kw), (oh, ow) = g.kernel, g.out_hw
    src = _as_windows(images, g)
    if not by_rows(g):
        return src, patches.reshape(n, c, kh, kw, oh, ow).transpose(0, 1, 4, 2, 5, 3)
    unit = _ROW_UNITS.get(kw * images.itemsize)
    if unit is not None and images.strides[-1] == images.itemsize and patches.flags.c_contiguous \
            and all(st % (kw * images.itemsize) == 0 for st in images.strides[:-1]):
        src = images.view(unit)[:, :, : oh * kh, :ow].reshape(n, c, oh, kh, ow)
        return src, patches.reshape(n, oh, ow, c, kh * kw).view(unit).transpose(0, 3, 1, 4, 2)
    return src, patches.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 1, 4, 2, 5)


def _patches(x: np.ndarray, g: ConvGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Images (n, C, H, W) -> per-sample patches (:func:`_patch_shape`), the (c, i, j) axis ordered so.

    Written to ``out`` when given, else to a scratch buffer.
    """
    p = scratch("patches", _patch_shape(x.shape[0], g), x.dtype) if out is None else out
    src, dst = _pair(x, p, g)
    dst[...] = src
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
                if buf is None or buf.shape != _patch_shape(n1 - n0, g) or buf.dtype != x.dtype:
                    buf = np.empty(_patch_shape(n1 - n0, g), x.dtype)
                keep[(n0, n1)] = buf
            p = _patches(x[n0:n1], g, buf)
            if not by_rows(g):
                np.matmul(w2, p, out=y[n0:n1])
                if bias is not None:
                    y[n0:n1] += bias.reshape(1, f, 1)
                continue
            out = scratch("patch_out", ((n1 - n0) * g.pixels, f), x.dtype)
            np.matmul(p.reshape(-1, g.rows), w2.T, out=out)  # one GEMM: (samples*pixels, F)
            nchw = out.reshape(n1 - n0, g.pixels, f).transpose(0, 2, 1)
            if bias is None:
                y[n0:n1] = nchw
            else:
                np.add(nchw, bias.reshape(1, f, 1), out=y[n0:n1])

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
    (kh, kw), w2 = g.kernel, kernel.reshape(f, -1)
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
            rows = by_rows(g)
            per_sample = np.matmul(dy3[n0:n1], p if rows else p.transpose(0, 2, 1),
                                   out=scratch("patch_dw", (n1 - n0, f, g.rows), x.dtype))
            dws[k] += per_sample.sum(axis=0)
            if with_bias:
                dbs[k] += dy3[n0:n1].sum(axis=(0, 2))
            if input_grad:
                if rows:
                    dp = np.matmul(dy3[n0:n1].transpose(0, 2, 1), w2, out=p)  # the patches' gradients
                else:
                    dp = np.matmul(w2.T, dy3[n0:n1], out=p)
                dst, src = _pair(dx[n0:n1], dp, g)
                dst[...] = src

    run_on_chunks(work, _chunks(n, g, x.itemsize, workers), workers)
    return dx, dws.sum(axis=0).reshape(kernel.shape), dbs.sum(axis=0) if with_bias else None

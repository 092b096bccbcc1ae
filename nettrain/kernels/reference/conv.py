"""Convolution data movement in NumPy: im2col/col2im and the GEMM layouts.

Every loop here runs over kernel offsets (kh x kw), never over pixels: each
offset is one strided slice copied (im2col) or accumulated (col2im) at once.
"""

from __future__ import annotations

import numpy as np

from ..geometry import ConvGeometry, Pad4
from ..pool import scratch


def pad_images(x: np.ndarray, pad: Pad4, out: np.ndarray | None = None) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H+top+bottom, W+left+right), the border filled with zeros."""
    top, bottom, left, right = pad
    if not any(pad):
        return x
    n, c, h, w = x.shape
    if out is None:
        out = np.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    # only the border is filled, so ``out`` may be a scratch buffer
    out[:, :, :top] = 0
    out[:, :, top + h :] = 0
    out[:, :, top : top + h, :left] = 0
    out[:, :, top : top + h, left + w :] = 0
    out[:, :, top : top + h, left : left + w] = x
    return out


def unpad_images(xp: np.ndarray, pad: Pad4) -> np.ndarray:
    top, bottom, left, right = pad
    h, w = xp.shape[2] - top - bottom, xp.shape[3] - left - right
    return xp[:, :, top : top + h, left : left + w]


def window(xp: np.ndarray, i: int, j: int, stride, dilation, out_hw) -> np.ndarray:
    """The strided view of padded input ``xp`` seen by kernel offset (i, j): (N, C, OH, OW)."""
    sh, sw = stride
    dh, dw = dilation
    oh, ow = out_hw
    r, c = i * dh, j * dw
    return xp[:, :, r : r + sh * (oh - 1) + 1 : sh, c : c + sw * (ow - 1) + 1 : sw]


def im2col(x: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Images (n, C, H, W) -> columns ``out`` (C*kh*kw, n*OH*OW), rows ordered (c, i, j).

    Column ``m * OH*OW + p`` holds the receptive field of output pixel ``p`` of
    sample ``m``, so a kernel reshaped to (F, C*kh*kw) times ``out`` is the
    convolution in one GEMM.
    """
    n, c = x.shape[:2]
    kh, kw = g.kernel
    xp = pad_images(x, g.pad, out=scratch("pad", (n, c, *g.padded_hw), x.dtype)) if any(g.pad) else x
    cols = out.reshape(c, kh, kw, n, *g.out_hw)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = window(xp, i, j, g.stride, g.dilation, g.out_hw).transpose(1, 0, 2, 3)
    return out


def col2im(cols: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Columns (C*kh*kw, n*OH*OW) -> image gradient ``out`` (n, C, H, W), summing overlaps."""
    n, c = out.shape[:2]
    kh, kw = g.kernel
    dxp = scratch("pad_grad", (n, c, *g.padded_hw), out.dtype) if any(g.pad) else out
    dxp[...] = 0
    cols6 = cols.reshape(c, kh, kw, n, *g.out_hw)
    for i in range(kh):
        for j in range(kw):
            window(dxp, i, j, g.stride, g.dilation, g.out_hw)[...] += cols6[:, i, j].transpose(1, 0, 2, 3)
    if dxp is not out:
        out[...] = unpad_images(dxp, g.pad)
    return out


def channels_major(y: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, F, P) -> (F, n*P): the GEMM layout of a chunk of NCHW feature maps.

    With ``mask`` (n, F, P), ``y * (mask > 0)``: a gradient through the ReLU whose output is ``mask``.
    """
    n, f, p = y.shape
    if mask is None:
        out.reshape(f, n, p)[...] = y.transpose(1, 0, 2)
    else:
        np.multiply(y.transpose(1, 0, 2), mask.transpose(1, 0, 2) > 0, out=out.reshape(f, n, p))
    return out


def samples_major(z: np.ndarray, bias: np.ndarray | None, out: np.ndarray, relu: bool = False) -> np.ndarray:
    """(F, n*P) GEMM output plus ``bias`` (F,) -> NCHW chunk ``out`` (n, F, P), rectified with ``relu``."""
    n, f, p = out.shape
    return _store_with_bias(z.reshape(f, n, p).transpose(1, 0, 2), bias, out, relu)


# -- the channels-last layout: one row of kh*kw*C values per output pixel ----------------
def pad_channels_last(x: np.ndarray, pad: Pad4, out: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> ``out`` (N, H+top+bottom, W+left+right, C), the border filled with zeros."""
    top, bottom, left, right = pad
    h, w = x.shape[2:]
    out[:, :top] = 0
    out[:, top + h :] = 0
    out[:, top : top + h, :left] = 0
    out[:, top : top + h, left + w :] = 0
    out[:, top : top + h, left : left + w] = x.transpose(0, 2, 3, 1)
    return out


def window_last(xp: np.ndarray, i: int, j: int, stride, dilation, out_hw) -> np.ndarray:
    """The strided view of channels-last padded input ``xp`` seen by kernel offset (i, j): (N, OH, OW, C)."""
    sh, sw = stride
    oh, ow = out_hw
    r, c = i * dilation[0], j * dilation[1]
    return xp[:, r : r + sh * (oh - 1) + 1 : sh, c : c + sw * (ow - 1) + 1 : sw]


def im2row(x: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Images (n, C, H, W) -> rows ``out`` (n*OH*OW, kh*kw*C), columns ordered (i, j, c).

    Row ``m * OH*OW + p`` holds the receptive field of output pixel ``p`` of sample
    ``m``, so ``out`` times the kernel as (kh*kw*C, F) is the convolution with the
    channels last: the GEMM layout that suits a BLAS best when F is small.
    """
    n, c = x.shape[:2]
    xp = pad_channels_last(x, g.pad, scratch("nhwc", (n, *g.padded_hw, c), x.dtype))
    return padded_to_rows(xp, g, out)


def row2im(rows: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Rows (n*OH*OW, kh*kw*C) -> image gradient ``out`` (n, C, H, W), summing overlaps."""
    n, c, h, w = out.shape
    kh, kw = g.kernel
    top, left = g.pad[0], g.pad[2]
    dxp = scratch("nhwc_grad", (n, *g.padded_hw, c), out.dtype)
    dxp[...] = 0
    rows6 = rows.reshape(n, *g.out_hw, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            window_last(dxp, i, j, g.stride, g.dilation, g.out_hw)[...] += rows6[:, :, :, i, j]
    out[...] = dxp[:, top : top + h, left : left + w].transpose(0, 3, 1, 2)
    return out


def rows_to_images(z: np.ndarray, bias: np.ndarray | None, out: np.ndarray, relu: bool = False) -> np.ndarray:
    """(n*P, F) GEMM output plus ``bias`` (F,) -> NCHW chunk ``out`` (n, F, P), rectified with ``relu``."""
    n, f, p = out.shape
    return _store_with_bias(z.reshape(n, p, f).transpose(0, 2, 1), bias, out, relu)


def _store_with_bias(z3: np.ndarray, bias: np.ndarray | None, out: np.ndarray, relu: bool = False) -> np.ndarray:
    """``out`` (n, F, P) = ``z3`` (a view in that shape) plus ``bias`` (F,) when there is one, then max(., 0)
    with ``relu``."""
    if bias is None:
        out[...] = z3
    else:
        np.add(z3, bias.reshape(1, out.shape[1], 1), out=out)
    if relu:
        np.maximum(out, 0, out=out)
    return out


def images_to_rows(y: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, F, P) -> (n*P, F): a chunk of NCHW feature maps with the channels last; ``mask`` as in
    :func:`channels_major`."""
    n, f, p = y.shape
    if mask is None:
        out.reshape(n, p, f)[...] = y.transpose(0, 2, 1)
    else:
        np.multiply(y.transpose(0, 2, 1), mask.transpose(0, 2, 1) > 0, out=out.reshape(n, p, f))
    return out


# -- eval, channels last between the two convolutions of a residual block ------------------
def pad_rows(z: np.ndarray, bias: np.ndarray | None, relu: bool, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Rows ``z`` (n*H*W, C) of a GEMM output (the input of geometry ``g``, channels last) -> the padded
    input ``out`` (n, Hp, Wp, C): plus ``bias`` (C,) when there is one, rectified with ``relu``."""
    n, c = out.shape[0], out.shape[3]
    h, w = g.in_chw[1:]
    top, bottom, left, right = g.pad
    out[...] = 0
    inner = out[:, top : top + h, left : left + w]
    inner[...] = z.reshape(n, h, w, c)
    if bias is not None:
        inner += bias
    if relu:
        np.maximum(inner, 0, out=inner)
    return out


def padded_to_rows(xp: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Padded channels-last input ``xp`` (n, Hp, Wp, C) -> rows ``out`` (n*OH*OW, kh*kw*C); see :func:`im2row`."""
    n, c = xp.shape[0], xp.shape[3]
    kh, kw = g.kernel
    rows = out.reshape(n, *g.out_hw, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            rows[:, :, :, i, j] = window_last(xp, i, j, g.stride, g.dilation, g.out_hw)
    return out


def rows_to_images_add(z: np.ndarray, bias: np.ndarray | None, shortcut: np.ndarray | None, stride: int,
                       offset: int, relu: bool, out: np.ndarray) -> np.ndarray:
    """:func:`rows_to_images` with a residual sum: ``shortcut`` (n, C, h, w) subsampled by ``stride`` is added to
    channels ``offset`` to ``offset + C`` of ``out`` (n, F, P) before the ReLU (see ``residual_add``)."""
    rows_to_images(z, bias, out, relu=False)
    if shortcut is not None:
        n, cs = shortcut.shape[:2]
        out[:, offset : offset + cs] += shortcut[:, :, ::stride, ::stride].reshape(n, cs, -1)
    if relu:
        np.maximum(out, 0, out=out)
    return out

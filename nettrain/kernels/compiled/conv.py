"""Compiled convolution data movement: im2col/col2im and the GEMM layouts.

Indices are built from loop counters that start at 0, so that LLVM can see they
are non-negative, drop numba's negative-index wraparound and vectorise.
"""

from __future__ import annotations

import numpy as np

from ..geometry import ConvGeometry
from ..pool import scratch
from .jit import jit

__all__ = ["im2col", "col2im", "samples_major", "channels_major", "im2row", "row2im", "rows_to_images",
           "images_to_rows", "pad_rows", "padded_to_rows", "rows_to_images_add"]


_TILE = 64  # pixels per block of _images_to_rows: 64 rows of F values, a few KB


@jit(inline="always")
def _valid_range(out: int, k: int, stride: int, dilation: int, pad_before: int, size: int):
    """Output positions [lo, hi) of offset ``k`` whose input o*stride + k*dilation - pad is in [0, size)."""
    off = k * dilation - pad_before
    lo = 0 if off >= 0 else (-off + stride - 1) // stride
    hi = (size - 1 - off) // stride + 1 if size - 1 - off >= 0 else 0
    hi = min(hi, out)
    lo = min(lo, hi)
    return lo, hi


# The copy loops index with unsigned integers: numba then drops its negative-index
# wraparound and LLVM vectorises them. Every offset passed in is non-negative.
@jit(inline="always")
def _zero(a, start, stop):
    """a[start:stop] = 0."""
    base = np.uint64(start)
    for e in range(np.uint64(max(stop - start, 0))):
        a[base + e] = 0


@jit(inline="always")
def _copy(src, src_start, step, dst, dst_start, length):
    """dst[dst_start:dst_start + length] = src[src_start::step][:length]."""
    s0, d0 = np.uint64(src_start), np.uint64(dst_start)
    if step == 1:
        for e in range(np.uint64(length)):
            dst[d0 + e] = src[s0 + e]
    else:
        st = np.uint64(step)
        for e in range(np.uint64(length)):
            dst[d0 + e] = src[s0 + e * st]


@jit(inline="always")
def _add(src, src_start, dst, dst_start, step, length):
    """dst[dst_start::step][:length] += src[src_start:src_start + length]."""
    s0, d0 = np.uint64(src_start), np.uint64(dst_start)
    if step == 1:
        for e in range(np.uint64(length)):
            dst[d0 + e] += src[s0 + e]
    else:
        st = np.uint64(step)
        for e in range(np.uint64(length)):
            dst[d0 + e * st] += src[s0 + e]


@jit
def _im2col(x, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, cols):
    n, c_in, h, w = x.shape
    p = oh * ow
    xf = x.reshape(-1)
    # with stride 1 and as many output as input columns, consecutive rows are
    # adjacent in both arrays: one long copy, then zero the wrapped edge cells
    runs = sh == 1 and sw == 1 and ow == w
    for r in range(c_in * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        alo, ahi = _valid_range(oh, i, sh, dh, pt, h)
        blo, bhi = _valid_range(ow, j, sw, dw, pl, w)
        edges = blo > 0 or bhi < ow
        cr = cols[r]
        for s in range(n):
            ob = s * p
            _zero(cr, ob, ob + alo * ow)
            _zero(cr, ob + ahi * ow, ob + p)
            if alo >= ahi:
                continue
            qb = (s * c_in + c) * h * w + (alo * sh + i * dh - pt) * w + blo * sw + j * dw - pl
            if runs:
                _copy(xf, qb, 1, cr, ob + alo * ow + blo, (ahi - alo - 1) * ow + bhi - blo)
            for a in range(alo, ahi):
                o = ob + a * ow
                if edges:
                    _zero(cr, o, o + blo)
                    _zero(cr, o + bhi, o + ow)
                if not runs:
                    _copy(xf, qb + (a - alo) * sh * w, sw, cr, o + blo, bhi - blo)


@jit
def _col2im(cols, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, dx):
    n, c_in, h, w = dx.shape
    p = oh * ow
    runs = sh == 1 and sw == 1 and ow == w
    # one image plane per task: all kh*kw rows of channel c add into dx[s, c], nothing else does
    for t in range(n * c_in):
        s = t // c_in
        c = t % c_in
        plane = dx[s, c].reshape(-1)
        _zero(plane, 0, h * w)
        for i in range(kh):
            alo, ahi = _valid_range(oh, i, sh, dh, pt, h)
            if alo >= ahi:
                continue
            for j in range(kw):
                blo, bhi = _valid_range(ow, j, sw, dw, pl, w)
                cr = cols[(c * kh + i) * kw + j]
                ob = s * p
                qb = (alo * sh + i * dh - pt) * w + blo * sw + j * dw - pl
                if runs:
                    if blo > 0 or bhi < ow:
                        # cells that read padding must add nothing: zero them in the (scratch) columns
                        for a in range(alo, ahi):
                            _zero(cr, ob + a * ow, ob + a * ow + blo)
                            _zero(cr, ob + a * ow + bhi, ob + (a + 1) * ow)
                    _add(cr, ob + alo * ow + blo, plane, qb, 1, (ahi - alo - 1) * ow + bhi - blo)
                    continue
                for a in range(alo, ahi):
                    _add(cr, ob + a * ow + blo, plane, qb + (a - alo) * sh * w, sw, bhi - blo)


def im2col(x: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Images (n, C, H, W) -> columns ``out`` (C*kh*kw, n*OH*OW); see :func:`nettrain.kernels.reference.im2col`."""
    _im2col(np.ascontiguousarray(x), *g.kernel, *g.stride, *g.dilation, g.pad[0], g.pad[2], *g.out_hw, out)
    return out


def col2im(cols: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Columns (C*kh*kw, n*OH*OW) -> image gradient ``out`` (n, C, H, W).

    ``cols`` is scratch: cells that read padding are zeroed in place.
    """
    _col2im(cols, *g.kernel, *g.stride, *g.dilation, g.pad[0], g.pad[2], *g.out_hw, out)
    return out


# The layout changes around a GEMM also apply a ReLU fused into the layer: to the output on the
# way out (``relu``), as a mask on the gradient on the way in (``mask``: the ReLU's output).
@jit(inline="always")
def _store(src, b, relu, dst):
    """dst[:] = src + b, or max(src + b, 0) with ``relu`` (NaN passes through, as in np.maximum)."""
    if relu:
        for e in range(np.uint64(dst.size)):
            v = src[e] + b
            dst[e] = 0 if v < 0 else v
    else:
        for e in range(np.uint64(dst.size)):
            dst[e] = src[e] + b


@jit
def _samples_major(z, bias, use_bias, relu, out):
    n, f, p = out.shape
    for t in range(n * f):
        s = t // f
        k = t % f
        _store(z[k, s * p : (s + 1) * p], bias[k] if use_bias else 0, relu, out[s, k])


@jit
def _channels_major(y, mask, masked, out):
    n, f, p = y.shape
    for t in range(n * f):
        k = t // n
        s = t % n
        src = y[s, k]
        dst = out[k, s * p : (s + 1) * p]
        if masked:
            keep = mask[s, k]
            for e in range(p):
                dst[e] = src[e] * np.float32(keep[e] > 0)  # as dy * (y > 0): a NaN in dy stays NaN
        else:
            for e in range(p):
                dst[e] = src[e]


def samples_major(z: np.ndarray, bias: np.ndarray | None, out: np.ndarray, relu: bool = False) -> np.ndarray:
    """(F, n*P) GEMM output plus ``bias`` -> NCHW chunk ``out`` (n, F, P), rectified with ``relu``."""
    use_bias = bias is not None
    _samples_major(z, bias if use_bias else z[:, 0], use_bias, relu, out)
    return out


def channels_major(y: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, F, P) -> (F, n*P); with ``mask``, ``y * (mask > 0)``."""
    y = np.ascontiguousarray(y)
    _channels_major(y, y if mask is None else np.ascontiguousarray(mask), mask is not None, out)
    return out


# -- the channels-last layout: one row of kh*kw*C values per output pixel ----------------
@jit(inline="always")
def _zero_border(pf, img, hp, wp, c, pt, pl, h, w):
    """Zero the padding around an h x w image at (pt, pl) in channels-last ``pf[img:]`` (Hp, Wp, C)."""
    _zero(pf, img, img + pt * wp * c)
    _zero(pf, img + (pt + h) * wp * c, img + hp * wp * c)
    for a in range(h):
        row = img + (pt + a) * wp * c
        _zero(pf, row, row + pl * c)
        _zero(pf, row + (pl + w) * c, row + wp * c)


@jit
def _pad_channels_last(x, pt, pl, xp):
    """x (n, C, H, W) -> xp (n, Hp, Wp, C): the image at (pt, pl), zeros around it."""
    n, c, h, w = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    xf, pf = x.reshape(-1), xp.reshape(-1)
    for s in range(n):
        img = s * hp * wp * c
        _zero_border(pf, img, hp, wp, c, pt, pl, h, w)
        # image row by image row, a strided store per channel: the stores of a row stay within its
        # W*C values. Plane by plane they spread over the whole image, which took 3x as long at C=16
        for a in range(h):
            dst = img + ((pt + a) * wp + pl) * c
            for ch in range(c):
                _scatter(xf, ((s * c + ch) * h + a) * w, pf, dst + ch, c, w)


@jit(inline="always")
def _scatter(src, src_start, dst, dst_start, step, length):
    """dst[dst_start::step][:length] = src[src_start:src_start + length]."""
    s0, d0, st = np.uint64(src_start), np.uint64(dst_start), np.uint64(step)
    for e in range(np.uint64(length)):
        dst[d0 + e * st] = src[s0 + e]


@jit
def _rows_and_padded(xp, kh, kw, sh, sw, dh, dw, oh, ow, rows, to_rows):
    """to_rows: copy each receptive field of padded channels-last ``xp`` (n, Hp, Wp, C) into its row of
    ``rows`` (n*OH*OW, kh*kw*C); else the reverse, summing the rows into ``xp`` (zeroed first)."""
    n, hp, wp, c = xp.shape
    k = kh * kw * c
    pf, rf = xp.reshape(-1), rows.reshape(-1)
    if not to_rows:
        _zero(pf, 0, pf.size)
    for t in range(n * oh):
        s = t // oh
        a = t % oh
        for b in range(ow):
            r0 = (t * ow + b) * k
            for i in range(kh):
                q = ((s * hp + a * sh + i * dh) * wp + b * sw) * c
                if dw == 1:  # the kw pixels of a kernel row are adjacent: one copy
                    _field(pf, q, rf, r0 + i * kw * c, kw * c, to_rows)
                else:
                    for j in range(kw):
                        _field(pf, q + j * dw * c, rf, r0 + (i * kw + j) * c, c, to_rows)


@jit(inline="always")
def _field(pf, p0, rf, r0, length, to_rows):
    """rf[r0:r0 + length] = pf[p0:p0 + length], or pf[...] += rf[...] when not ``to_rows``."""
    if to_rows:
        _copy(pf, p0, 1, rf, r0, length)
    else:
        _add(rf, r0, pf, p0, 1, length)


@jit
def _unpad_channels_first(dxp, pt, pl, out):
    """dxp (n, Hp, Wp, C) -> out (n, C, H, W): the part at (pt, pl), channels first."""
    pf, of = dxp.reshape(-1), out.reshape(-1)
    n, c, h, w = out.shape
    hp, wp = dxp.shape[1], dxp.shape[2]
    for s in range(n):
        for ch in range(c):
            dst = (s * c + ch) * h * w
            for a in range(h):
                _copy(pf, ((s * hp + pt + a) * wp + pl) * c + ch, c, of, dst + a * w, w)


def im2row(x: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Images (n, C, H, W) -> rows ``out`` (n*OH*OW, kh*kw*C); see :func:`nettrain.kernels.reference.im2row`."""
    n, c = x.shape[:2]
    xp = scratch("nhwc", (n, *g.padded_hw, c), x.dtype)
    _pad_channels_last(np.ascontiguousarray(x), g.pad[0], g.pad[2], xp)
    _rows_and_padded(xp, *g.kernel, *g.stride, *g.dilation, *g.out_hw, out, True)
    return out


def row2im(rows: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Rows (n*OH*OW, kh*kw*C) -> image gradient ``out`` (n, C, H, W), summing overlaps."""
    n, c = out.shape[:2]
    dxp = scratch("nhwc_grad", (n, *g.padded_hw, c), out.dtype)
    _rows_and_padded(dxp, *g.kernel, *g.stride, *g.dilation, *g.out_hw, rows, False)
    _unpad_channels_first(dxp, g.pad[0], g.pad[2], out)
    return out


@jit
def _images_to_rows(y, mask, masked, out):
    n, f, p = y.shape
    of = out.reshape(-1)
    # a block of pixels at a time, a strided store per channel within it: channel by channel over
    # all p pixels the stores spread over the whole chunk, which took 3x as long at F=16
    blocks = (p + _TILE - 1) // _TILE
    for t in range(n * blocks):
        s = t // blocks
        e0 = t % blocks * _TILE
        length = min(_TILE, p - e0)
        for k in range(f):
            d0 = s * p * f + e0 * f + k
            if masked:
                src, keep = y[s, k], mask[s, k]
                b0, d, st = np.uint64(e0), np.uint64(d0), np.uint64(f)
                for e in range(np.uint64(length)):
                    of[d + e * st] = src[b0 + e] * np.float32(keep[b0 + e] > 0)
            else:
                _scatter(y[s, k], e0, of, d0, f, length)


def rows_to_images(z: np.ndarray, bias: np.ndarray | None, out: np.ndarray, relu: bool = False) -> np.ndarray:
    """(n*P, F) GEMM output plus ``bias`` -> NCHW chunk ``out`` (n, F, P), rectified with ``relu``."""
    return rows_to_images_add(z, bias, None, 1, 0, relu, out)  # the same store, with no sum


def images_to_rows(y: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, F, P) -> (n*P, F); with ``mask``, ``y * (mask > 0)``."""
    y = np.ascontiguousarray(y)
    _images_to_rows(y, y if mask is None else np.ascontiguousarray(mask), mask is not None, out)
    return out


# -- eval, channels last between the two convolutions of a residual block ------------------
@jit
def _pad_rows(z, bias, use_bias, relu, h, w, pt, pl, xp):
    """z (n*h*w, C) plus bias, rectified -> the middle of xp (n, Hp, Wp, C); zeros around it."""
    n, hp, wp, c = xp.shape
    zf, pf = z.reshape(-1), xp.reshape(-1)
    for s in range(n):
        img = s * hp * wp * c
        _zero_border(pf, img, hp, wp, c, pt, pl, h, w)
        for a in range(h):
            row = img + (pt + a) * wp * c
            src0 = np.uint64((s * h + a) * w * c)
            dst0 = np.uint64(row + pl * c)
            for b in range(np.uint64(w)):
                src, dst = src0 + b * np.uint64(c), dst0 + b * np.uint64(c)
                for k in range(np.uint64(c)):
                    v = zf[src + k] + (bias[k] if use_bias else 0)
                    pf[dst + k] = (0 if v < 0 else v) if relu else v


@jit
def _rows_to_images_add(z, bias, use_bias, shortcut, added, stride, offset, ow, relu, out):
    n, f, p = out.shape
    cs, sh, sw = shortcut.shape[1], shortcut.shape[2], shortcut.shape[3]
    zf, sf, of = z.reshape(-1), shortcut.reshape(-1), out.reshape(-1)
    uf, ust = np.uint64(f), np.uint64(stride)
    for t in range(n * f):
        s = t // f
        k = t % f
        b = bias[k] if use_bias else 0
        src = np.uint64(s * p * f + k)
        dst = np.uint64(t * p)
        kk = k - offset
        if added and kk >= 0 and kk < cs:
            for a in range(p // ow):
                srow = np.uint64(((s * cs + kk) * sh + a * stride) * sw)
                e0 = np.uint64(a * ow)
                for q in range(np.uint64(ow)):
                    v = zf[src + (e0 + q) * uf] + b + sf[srow + q * ust]
                    of[dst + e0 + q] = (0 if v < 0 else v) if relu else v
        else:
            for e in range(np.uint64(p)):
                v = zf[src + e * uf] + b
                of[dst + e] = (0 if v < 0 else v) if relu else v


def pad_rows(z: np.ndarray, bias: np.ndarray | None, relu: bool, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """See :func:`nettrain.kernels.reference.pad_rows`."""
    use_bias = bias is not None
    _pad_rows(np.ascontiguousarray(z), bias if use_bias else z[0], use_bias, relu, *g.in_chw[1:], g.pad[0],
              g.pad[2], out)
    return out


def padded_to_rows(xp: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """See :func:`nettrain.kernels.reference.padded_to_rows`."""
    _rows_and_padded(xp, *g.kernel, *g.stride, *g.dilation, *g.out_hw, out, True)
    return out


def rows_to_images_add(z: np.ndarray, bias: np.ndarray | None, shortcut: np.ndarray | None, stride: int,
                       offset: int, relu: bool, out: np.ndarray) -> np.ndarray:
    """See :func:`nettrain.kernels.reference.rows_to_images_add`."""
    use_bias, added = bias is not None, shortcut is not None
    if added:
        shortcut = np.ascontiguousarray(shortcut)
        ow = -(-shortcut.shape[3] // stride)  # the subsampled shortcut's width: out's
    else:
        shortcut, ow = out.reshape(*out.shape[:2], 1, -1), 1
    _rows_to_images_add(z, bias if use_bias else z[0], use_bias, shortcut, added, stride, offset, ow, relu, out)
    return out

"""Compiled kernels (numba), behind the same interface as :mod:`nettrain.kernels`.

numba is optional (the ``fast`` extra). Without it this module still imports,
:func:`enabled` is False and every layer runs the NumPy reference kernels.
With it, the compiled kernels run for float32 arrays unless the environment
sets ``NETTRAIN_FAST=0`` or a program calls ``set_enabled(False)``; float64
(gradient checks) always runs the reference kernels.

The kernels move data; GEMMs stay in NumPy's BLAS. Compilation is cached on
disk (``cache=True``), so only the first run on a machine pays for it.
Indices are built from loop counters that start at 0, so that LLVM can see
they are non-negative, drop numba's negative-index wraparound and vectorise.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from . import kernels
from .kernels import ConvGeometry, over_batch

try:
    import numba
    from numba import njit
except ImportError:  # the reference kernels run instead
    numba = None

AVAILABLE = numba is not None
_state = {"enabled": AVAILABLE and os.environ.get("NETTRAIN_FAST", "1").strip() not in ("0", "false", "no", "off")}


def enabled() -> bool:
    """Whether layers run the compiled kernels (for float32 arrays)."""
    return _state["enabled"]


def set_enabled(flag: bool) -> bool:
    """Switch the compiled kernels on or off; returns the previous setting.

    Raises RuntimeError when asked to switch on without numba installed.
    """
    if flag and not AVAILABLE:
        raise RuntimeError("the fast kernels need numba: pip install 'nettrain[fast]'")
    previous = _state["enabled"]
    _state["enabled"] = bool(flag)
    return previous


def kernel_path() -> str:
    """``"numba"`` or ``"numpy"``: which kernels float32 layers run now."""
    return "numba" if enabled() else "numpy"


def _jit(fn=None, **options):
    """``numba.njit(cache=True, nogil=True)`` when numba is installed; otherwise the plain function."""
    if fn is None:
        return lambda f: _jit(f, **options)
    if numba is None:
        return fn
    return njit(cache=True, nogil=True, **options)(fn)


_FAST_SUMS = {"reassoc", "contract"}  # let reductions vectorise; NaN and inf still propagate

# The kernels are serial and release the GIL: a convolution runs its batch chunks on a few
# Python threads (see nettrain.kernels.run_on_chunks). numba's own parallel loops were tried
# and dropped: next to the BLAS's threads their barriers collapse on a busy machine.


# -- convolution -----------------------------------------------------------------
@_jit(inline="always")
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
@_jit(inline="always")
def _zero(a, start, stop):
    """a[start:stop] = 0."""
    base = np.uint64(start)
    for e in range(np.uint64(max(stop - start, 0))):
        a[base + e] = 0


@_jit(inline="always")
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


@_jit(inline="always")
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


@_jit
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


@_jit
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
    """Images (n, C, H, W) -> columns ``out`` (C*kh*kw, n*OH*OW); see :func:`nettrain.kernels.im2col`."""
    _im2col(np.ascontiguousarray(x), *g.kernel, *g.stride, *g.dilation, g.pad[0], g.pad[2], *g.out_hw, out)
    return out


def col2im(cols: np.ndarray, g: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """Columns (C*kh*kw, n*OH*OW) -> image gradient ``out`` (n, C, H, W).

    ``cols`` is scratch: cells that read padding are zeroed in place.
    """
    _col2im(cols, *g.kernel, *g.stride, *g.dilation, g.pad[0], g.pad[2], *g.out_hw, out)
    return out


@_jit
def _samples_major(z, bias, use_bias, out):
    n, f, p = out.shape
    for t in range(n * f):
        s = t // f
        k = t % f
        src = z[k, s * p : (s + 1) * p]
        dst = out[s, k]
        b = bias[k] if use_bias else 0
        for e in range(p):
            dst[e] = src[e] + b


@_jit
def _channels_major(y, out):
    n, f, p = y.shape
    for t in range(n * f):
        k = t // n
        s = t % n
        src = y[s, k]
        dst = out[k, s * p : (s + 1) * p]
        for e in range(p):
            dst[e] = src[e]


def samples_major(z: np.ndarray, bias: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """(F, n*P) GEMM output plus ``bias`` -> NCHW chunk ``out`` (n, F, P)."""
    use_bias = bias is not None
    _samples_major(z, bias if use_bias else z[:, 0], use_bias, out)
    return out


def channels_major(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(n, F, P) -> (F, n*P)."""
    _channels_major(np.ascontiguousarray(y), out)
    return out


# -- pooling ---------------------------------------------------------------------
@_jit(inline="always")
def _window_span(o: int, stride: int, pad: int, k: int, size: int):
    """Input cells [lo, hi) along one axis that output position ``o``'s window covers."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@_jit
def _max_pool_forward(x, ph, pw, sh, sw, pt, pl, y, arg):
    n, c_in, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for t in range(n * c_in):
        s = t // c_in
        c = t % c_in
        img = x[s, c]
        for a in range(oh):
            r0, r1 = _window_span(a, sh, pt, ph, h)
            for b in range(ow):
                q0, q1 = _window_span(b, sw, pl, pw, w)
                if r0 >= r1 or q0 >= q1:  # a window wholly in the padding
                    y[s, c, a, b] = -np.inf
                    arg[s, c, a, b] = -1
                    continue
                best = img[r0, q0]
                best_r = r0
                best_q = q0
                for r in range(r0, r1):
                    row = img[r]
                    for q in range(q0, q1):
                        # strict >, so ties keep the first cell in row-major order
                        if row[q] > best:
                            best = row[q]
                            best_r = r
                            best_q = q
                y[s, c, a, b] = best
                arg[s, c, a, b] = (best_r - a * sh + pt) * pw + best_q - b * sw + pl


@_jit
def _max_pool_backward(dy, arg, ph, pw, sh, sw, pt, pl, dx):
    n, c_in, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for t in range(n * c_in):
        s = t // c_in
        c = t % c_in
        img = dx[s, c]
        img[...] = 0
        for a in range(oh):
            for b in range(ow):
                k = arg[s, c, a, b]
                if k < 0:  # a window with no cell inside the image
                    continue
                img[a * sh + k // pw - pt, b * sw + k % pw - pl] += dy[s, c, a, b]


@_jit
def _avg_pool_forward(x, ph, pw, sh, sw, pt, pl, inv_count, y):
    n, c_in, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for t in range(n * c_in):
        s = t // c_in
        c = t % c_in
        img = x[s, c]
        for a in range(oh):
            r0, r1 = _window_span(a, sh, pt, ph, h)
            for b in range(ow):
                q0, q1 = _window_span(b, sw, pl, pw, w)
                total = 0.0
                for r in range(r0, r1):
                    for q in range(q0, q1):
                        total += img[r, q]
                y[s, c, a, b] = total * inv_count[a, b]


@_jit
def _avg_pool_backward(dy, ph, pw, sh, sw, pt, pl, inv_count, dx):
    n, c_in, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for t in range(n * c_in):
        s = t // c_in
        c = t % c_in
        img = dx[s, c]
        img[...] = 0
        for a in range(oh):
            r0, r1 = _window_span(a, sh, pt, ph, h)
            for b in range(ow):
                q0, q1 = _window_span(b, sw, pl, pw, w)
                share = dy[s, c, a, b] * inv_count[a, b]
                for r in range(r0, r1):
                    for q in range(q0, q1):
                        img[r, q] += share


def max_pool_forward(x: np.ndarray, g: ConvGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (max, argmax offset); see :func:`nettrain.kernels.max_pool_forward`."""
    ph, pw = g.kernel
    y = np.empty((x.shape[0], x.shape[1], *g.out_hw), x.dtype)
    arg = np.empty(y.shape, kernels.argmax_dtype(g))
    x = np.ascontiguousarray(x)
    over_batch(lambda a, b: _max_pool_forward(x[a:b], ph, pw, *g.stride, g.pad[0], g.pad[2], y[a:b], arg[a:b]),
               x.shape[0], x.size)
    return y, arg


def max_pool_backward(dy: np.ndarray, arg: np.ndarray, g: ConvGeometry) -> np.ndarray:
    dx = np.empty((dy.shape[0], dy.shape[1], *g.in_chw[1:]), dy.dtype)
    dy = np.ascontiguousarray(dy)
    over_batch(lambda a, b: _max_pool_backward(dy[a:b], arg[a:b], *g.kernel, *g.stride, g.pad[0], g.pad[2], dx[a:b]),
               dx.shape[0], dx.size)
    return dx


def avg_pool_forward(x: np.ndarray, g: ConvGeometry, inv_count: np.ndarray) -> np.ndarray:
    y = np.empty((x.shape[0], x.shape[1], *g.out_hw), x.dtype)
    x = np.ascontiguousarray(x)
    over_batch(lambda a, b: _avg_pool_forward(x[a:b], *g.kernel, *g.stride, g.pad[0], g.pad[2], inv_count, y[a:b]),
               x.shape[0], x.size)
    return y


def avg_pool_backward(dy: np.ndarray, g: ConvGeometry, inv_count: np.ndarray) -> np.ndarray:
    dx = np.empty((dy.shape[0], dy.shape[1], *g.in_chw[1:]), dy.dtype)
    dy = np.ascontiguousarray(dy)
    over_batch(lambda a, b: _avg_pool_backward(dy[a:b], *g.kernel, *g.stride, g.pad[0], g.pad[2], inv_count, dx[a:b]),
               dx.shape[0], dx.size)
    return dx


# -- batch normalisation ---------------------------------------------------------
@_jit(fastmath=_FAST_SUMS)
def _batchnorm_sums(x3, k0, k1, mean_out, var_out):
    m, f, p = x3.shape
    count = m * p
    for k in range(k0, k1):
        total = 0.0
        squares = 0.0
        for s in range(m):
            row = x3[s, k]
            for e in range(p):
                v = np.float64(row[e])
                total += v
                squares += v * v
        mu = total / count
        mean_out[k] = mu
        # float64 sums of float32 data: E[x^2] - E[x]^2 loses nothing that matters here
        var_out[k] = max(squares / count - mu * mu, 0.0)


@_jit
def _batchnorm_affine(x3, scale, shift, y3):
    m, f, p = x3.shape
    for s in range(m):
        for k in range(f):
            src = x3[s, k]
            dst = y3[s, k]
            a = scale[k]
            b = shift[k]
            for e in range(p):
                dst[e] = src[e] * a + b


@_jit(fastmath=_FAST_SUMS)
def _batchnorm_backward_sums(x3, dy3, mean, inv_std, gamma, k0, k1, a, b, c, dgamma, dbeta):
    """Per channel k in [k0, k1): the coefficients of dx = a*dy + b*(x - mean) + c, and dgamma, dbeta."""
    m, f, p = x3.shape
    count = m * p
    for k in range(k0, k1):
        mu = np.float64(mean[k])
        sum_dy = 0.0
        sum_dy_xc = 0.0
        for s in range(m):
            xr = x3[s, k]
            gr = dy3[s, k]
            for e in range(p):
                g = np.float64(gr[e])
                sum_dy += g
                sum_dy_xc += g * (np.float64(xr[e]) - mu)
        istd = np.float64(inv_std[k])
        ak = np.float64(gamma[k]) * istd
        a[k] = ak
        b[k] = -ak * istd * istd * sum_dy_xc / count
        c[k] = -ak * sum_dy / count  # c = -a*mean(dy)
        dgamma[k] = sum_dy_xc * istd
        dbeta[k] = sum_dy


@_jit
def _batchnorm_backward_apply(x3, dy3, mean, a, b, c, dx3):
    m, f, p = x3.shape
    for s in range(m):
        for k in range(f):
            xr = x3[s, k]
            gr = dy3[s, k]
            dr = dx3[s, k]
            ak = a[k]
            bk = b[k]
            ck = c[k]
            mu = mean[k]
            for e in range(p):
                dr[e] = gr[e] * ak + (xr[e] - mu) * bk + ck


# Statistics split over channels, element-wise passes over samples, each across the worker threads.
def batchnorm_stats(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, F, P) -> per-feature mean and biased variance (F,)."""
    f = x3.shape[1]
    x3 = np.ascontiguousarray(x3)
    mean, var = np.empty(f, x3.dtype), np.empty(f, x3.dtype)
    over_batch(lambda k0, k1: _batchnorm_sums(x3, k0, k1, mean, var), f, x3.size)
    return mean, var


def batchnorm_affine(x3: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    x3 = np.ascontiguousarray(x3)
    y3 = np.empty(x3.shape, x3.dtype)
    over_batch(lambda s0, s1: _batchnorm_affine(x3[s0:s1], scale, shift, y3[s0:s1]), x3.shape[0], x3.size)
    return y3


def batchnorm_backward(x3, dy3, mean, inv_std, gamma):
    """-> dx (M, F, P), dgamma (F,), dbeta (F,); see :func:`nettrain.kernels.batchnorm_backward`."""
    f = x3.shape[1]
    x3, dy3 = np.ascontiguousarray(x3), np.ascontiguousarray(dy3)
    a, b, c = (np.empty(f, x3.dtype) for _ in range(3))
    dgamma, dbeta = np.empty(f, x3.dtype), np.empty(f, x3.dtype)
    over_batch(lambda k0, k1: _batchnorm_backward_sums(x3, dy3, mean, inv_std, gamma, k0, k1, a, b, c, dgamma, dbeta),
               f, x3.size)
    dx3 = np.empty(x3.shape, x3.dtype)
    over_batch(lambda s0, s1: _batchnorm_backward_apply(x3[s0:s1], dy3[s0:s1], mean, a, b, c, dx3[s0:s1]),
               x3.shape[0], x3.size)
    return dx3, dgamma, dbeta


# -- activations -----------------------------------------------------------------
@_jit
def _relu_forward(x, y):
    for e in range(x.size):
        v = x[e]
        y[e] = 0 if v < 0 else v  # NaN passes through, as in np.maximum


@_jit
def _relu_backward(dy, y, dx):
    for e in range(dy.size):
        dx[e] = dy[e] if y[e] > 0 else dy[e] * 0  # dy * (y > 0), so a NaN in dy stays NaN


def relu_forward(x: np.ndarray) -> np.ndarray:
    if not x.flags.c_contiguous:
        return kernels.relu_forward(x)
    y = np.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)
    over_batch(lambda a, b: _relu_forward(xf[a:b], yf[a:b]), xf.size, xf.size)
    return y


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    if not (dy.flags.c_contiguous and y.flags.c_contiguous):
        return kernels.relu_backward(dy, y)
    dx = np.empty_like(dy)
    dyf, yf, dxf = dy.reshape(-1), y.reshape(-1), dx.reshape(-1)
    over_batch(lambda a, b: _relu_backward(dyf[a:b], yf[a:b], dxf[a:b]), dxf.size, dxf.size)
    return dx


# -- recurrent -------------------------------------------------------------------
# One timestep's element-wise work in one pass over (N, U): every gate of a unit is
# read, activated and combined while in registers. The GEMMs stay in BLAS (see
# nettrain.kernels). Rows are cut into per-gate slices, so that every inner-loop index
# is a plain loop counter and the loop vectorises. The gates are activated in place:
# LLVM vectorises a loop only after checking at run time that the arrays it writes do
# not overlap those it reads, and a separate output that aliased the input would fail it.
#
# tanh is the rational approximation Eigen uses for float tanh: a degree 13/6 odd/even
# polynomial ratio on [-7.9, 7.9], held at its end values (1 - 2.4e-7) up to 9 and +-1
# beyond, where float32 tanh rounds to +-1. It is within a few ulp, at most 3e-7, of the
# exact value; unlike a call to libm's tanhf it vectorises, which makes these kernels
# several times faster. Sigmoid uses the tanh form, which never overflows. numba's
# "numpy" error model lets the division vectorise too.
_F32 = np.float32
_TANH_CLAMP = _F32(7.90531110763549805)
_TANH_SATURATE = _F32(9.0)
_TANH_TINY = _F32(0.0004)  # below this, tanh(x) rounds to x
_P1, _P3, _P5, _P7, _P9, _P11, _P13 = (
    _F32(v) for v in (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                      -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
_Q0, _Q2, _Q4, _Q6 = (
    _F32(v) for v in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))
_HALF, _ONE = _F32(0.5), _F32(1.0)
_CELL = dict(error_model="numpy", fastmath={"contract"})


@_jit(inline="always")
def _gates4(row, u):
    """The four gate blocks of a fused (4U,) row, as views."""
    return row[:u], row[u : 2 * u], row[2 * u : 3 * u], row[3 * u :]


@_jit(inline="always")
def _gates3(row, u):
    """The three gate blocks of a fused (3U,) row, as views."""
    return row[:u], row[u : 2 * u], row[2 * u :]


# Every branch below is a plain select, so that the loops calling it vectorise.
@_jit(inline="always")
def _tanh(v):
    x = _TANH_CLAMP if v > _TANH_CLAMP else v  # NaN passes both clamps
    x = -_TANH_CLAMP if x < -_TANH_CLAMP else x
    x2 = x * x
    p = x2 * _P13 + _P11
    p = p * x2 + _P9
    p = p * x2 + _P7
    p = p * x2 + _P5
    p = p * x2 + _P3
    p = p * x2 + _P1
    q = x2 * _Q6 + _Q4
    q = q * x2 + _Q2
    q = q * x2 + _Q0
    r = x * p / q
    r = v if abs(v) < _TANH_TINY else r
    r = _ONE if v >= _TANH_SATURATE else r
    return -_ONE if v <= -_TANH_SATURATE else r


@_jit(inline="always")
def _sigmoid(v):
    return _HALF * (_tanh(_HALF * v) + _ONE)


@_jit(**_CELL)
def tanh_approx(x, out):
    """``out = tanh(x)`` element-wise on 1-D float32 arrays, with the approximation above."""
    for e in range(x.size):
        out[e] = _tanh(x[e])


@_jit(**_CELL)
def rnn_cell_forward(gates, hr, h):
    """SimpleRNN step: ``h = tanh(gates + hr)``, all (N, U); see :func:`nettrain.kernels.rnn_cell_forward`."""
    n, u = h.shape
    for s in range(n):
        a, b, y = gates[s], hr[s], h[s]
        for j in range(u):
            y[j] = _tanh(a[j] + b[j])


@_jit(**_CELL)
def rnn_cell_backward(dy, dh, h, da):
    """``da = (dy + dh) * (1 - h^2)``, all (N, U)."""
    n, u = h.shape
    for s in range(n):
        gy, gh, y, out = dy[s], dh[s], h[s], da[s]
        for j in range(u):
            out[j] = (gy[j] + gh[j]) * (_ONE - y[j] * y[j])


@_jit(**_CELL)
def lstm_cell_forward(gates, hr, c_prev, c, tanh_c, h):
    """LSTM step: gates (N, 4U) pre-activations in, i, f, g, o out; writes c, tanh_c, h (N, U).

    See :func:`nettrain.kernels.lstm_cell_forward`.
    """
    n, u = c.shape
    for s in range(n):
        row, rec = gates[s], hr[s]
        gi, gf, gg, go = _gates4(row, u)
        ri, rf, rg, ro = _gates4(rec, u)
        cp, cs, tc, hs = c_prev[s], c[s], tanh_c[s], h[s]
        for j in range(u):
            i = _sigmoid(gi[j] + ri[j])
            f = _sigmoid(gf[j] + rf[j])
            g = _tanh(gg[j] + rg[j])
            o = _sigmoid(go[j] + ro[j])
            gi[j], gf[j], gg[j], go[j] = i, f, g, o
            cell = f * cp[j] + i * g
            t = _tanh(cell)
            cs[j], tc[j], hs[j] = cell, t, o * t


@_jit(**_CELL)
def lstm_cell_backward(dy, dh, acts, c_prev, tanh_c, dc, da):
    """LSTM step backward: dc (N, U) dL/dc_t in, dL/dc_{t-1} out; da (N, 4U) out.

    See :func:`nettrain.kernels.lstm_cell_backward`.
    """
    n, u = dc.shape
    for s in range(n):
        row, grad = acts[s], da[s]
        ai, af, ag, ao = _gates4(row, u)
        di, df, dg, do = _gates4(grad, u)
        gy, gh, cp, tc, gc = dy[s], dh[s], c_prev[s], tanh_c[s], dc[s]
        for j in range(u):
            i, f, g, o, t = ai[j], af[j], ag[j], ao[j], tc[j]
            total = gy[j] + gh[j]
            cell = gc[j] + total * o * (_ONE - t * t)
            di[j] = cell * g * i * (_ONE - i)
            df[j] = cell * cp[j] * f * (_ONE - f)
            dg[j] = cell * i * (_ONE - g * g)
            do[j] = total * t * o * (_ONE - o)
            gc[j] = cell * f


@_jit(**_CELL)
def gru_cell_forward(gates, hr, recurrent_bias, h_prev, hw_n, h):
    """GRU step: gates (N, 3U) pre-activations in, r, z, n out; writes hw_n and h (N, U).

    See :func:`nettrain.kernels.gru_cell_forward`.
    """
    n, u = h.shape
    br, bz, bn = _gates3(recurrent_bias, u)
    for s in range(n):
        row, rec = gates[s], hr[s]
        gr, gz, gn = _gates3(row, u)
        rr, rz, rn = _gates3(rec, u)
        hp, wn, hs = h_prev[s], hw_n[s], h[s]
        for j in range(u):
            r = _sigmoid(gr[j] + (rr[j] + br[j]))
            z = _sigmoid(gz[j] + (rz[j] + bz[j]))
            w = rn[j] + bn[j]
            cand = _tanh(gn[j] + r * w)
            gr[j], gz[j], gn[j] = r, z, cand
            wn[j] = w
            hs[j] = cand + z * (hp[j] - cand)


@_jit(**_CELL)
def gru_cell_backward(dy, dh, dh_carry, h_prev, acts, hw_n, dxw, dhw):
    """GRU step backward: writes dxw, dhw (N, 3U) and dh_carry (N, U).

    See :func:`nettrain.kernels.gru_cell_backward`.
    """
    n, u = h_prev.shape
    for s in range(n):
        row, gx, gw = acts[s], dxw[s], dhw[s]
        ar, az, an = _gates3(row, u)
        xr, xz, xn = _gates3(gx, u)
        wr, wz, wn = _gates3(gw, u)
        gy, gh, carry, hp, hn = dy[s], dh[s], dh_carry[s], h_prev[s], hw_n[s]
        for j in range(u):
            r, z, cand = ar[j], az[j], an[j]
            total = gy[j] + gh[j] + carry[j]
            d_n = total * (_ONE - z) * (_ONE - cand * cand)
            d_z = total * (hp[j] - cand) * z * (_ONE - z)
            d_r = d_n * hn[j] * r * (_ONE - r)
            xr[j], xz[j], xn[j] = d_r, d_z, d_n
            wr[j], wz[j], wn[j] = d_r, d_z, d_n * r
            carry[j] = total * z


NUMBA = SimpleNamespace(name="numba", **{k: globals()[k] for k in kernels.KERNEL_NAMES})
"""The compiled kernels, with the names of :data:`nettrain.kernels.NUMPY`."""

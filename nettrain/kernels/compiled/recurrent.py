"""Compiled recurrent cells: one timestep's element-wise work in one pass over (N, U)."""

from __future__ import annotations

import numpy as np

from ..reference.recurrent import lstm_steps_backward
from .jit import jit

__all__ = ["rnn_cell_forward", "rnn_cell_backward", "lstm_cell_forward", "lstm_cell_backward", "lstm_cell_infer",
           "lstm_scan_backward", "gru_cell_forward", "gru_cell_backward"]

# One timestep's element-wise work in one pass over (N, U): every gate of a unit is
# read, activated and combined while in registers. The GEMMs stay in BLAS (the recurrent
# layers call nettrain.kernels.gemm). Rows are cut into per-gate slices, so that every
# inner-loop index is a plain loop counter and the loop vectorises. The gates are activated in place:
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
CELL = dict(error_model="numpy", fastmath={"contract"})


@jit(inline="always")
def _gates4(row, u):
    """The four gate blocks of a fused (4U,) row, as views."""
    return row[:u], row[u : 2 * u], row[2 * u : 3 * u], row[3 * u :]


@jit(inline="always")
def _gates3(row, u):
    """The three gate blocks of a fused (3U,) row, as views."""
    return row[:u], row[u : 2 * u], row[2 * u :]


# Every branch below is a plain select, so that the loops calling it vectorise.
@jit(inline="always")
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


@jit(inline="always")
def _sigmoid(v):
    return _HALF * (_tanh(_HALF * v) + _ONE)


@jit(**CELL)
def tanh_approx(x, out):
    """``out = tanh(x)`` element-wise on 1-D float32 arrays, with the approximation above."""
    for e in range(x.size):
        out[e] = _tanh(x[e])


@jit(**CELL)
def rnn_cell_forward(gates, hr, h):
    """SimpleRNN step: ``h = tanh(gates + hr)``, all (N, U); see :func:`nettrain.kernels.reference.rnn_cell_forward`."""
    n, u = h.shape
    for s in range(n):
        a, b, y = gates[s], hr[s], h[s]
        for j in range(u):
            y[j] = _tanh(a[j] + b[j])


@jit(**CELL)
def rnn_cell_backward(dy, dh, h, da):
    """``da = (dy + dh) * (1 - h^2)``, all (N, U)."""
    n, u = h.shape
    for s in range(n):
        gy, gh, y, out = dy[s], dh[s], h[s], da[s]
        for j in range(u):
            out[j] = (gy[j] + gh[j]) * (_ONE - y[j] * y[j])


@jit(inline="always")
def _lstm_unit(a_i, a_f, a_g, a_o, c_prev):
    """One unit of an LSTM step from its four pre-activations: the gates i, f, g, o, c and tanh(c)."""
    i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), _tanh(a_g), _sigmoid(a_o)
    cell = f * c_prev + i * g
    return i, f, g, o, cell, _tanh(cell)


@jit(**CELL)
def lstm_cell_forward(gates, hr, c_prev, c, tanh_c, h):
    """LSTM step: gates (N, 4U) pre-activations in, i, f, g, o out; writes c, tanh_c, h (N, U).

    See :func:`nettrain.kernels.reference.lstm_cell_forward`.
    """
    n, u = c.shape
    for s in range(n):
        row, rec = gates[s], hr[s]
        gi, gf, gg, go = _gates4(row, u)
        ri, rf, rg, ro = _gates4(rec, u)
        cp, cs, tc, hs = c_prev[s], c[s], tanh_c[s], h[s]
        for j in range(u):
            i, f, g, o, cell, t = _lstm_unit(gi[j] + ri[j], gf[j] + rf[j], gg[j] + rg[j], go[j] + ro[j], cp[j])
            gi[j], gf[j], gg[j], go[j] = i, f, g, o
            cs[j], tc[j], hs[j] = cell, t, o * t


@jit(**CELL)
def lstm_cell_infer(gates, hr, c_prev, c, h):
    """An LSTM eval step: writes c and h (N, U) only. The gates, tanh(c) and every step's c stay
    unwritten: the step is bound by memory traffic, and this is 11 values per unit instead of 16
    (measured: 1.38 -> 1.23 ms for fashion_lstm's 28 steps of 128 rows).

    See :func:`nettrain.kernels.reference.recurrent.lstm_cell_infer`.
    """
    n, u = c.shape
    for s in range(n):
        row, rec = gates[s], hr[s]
        gi, gf, gg, go = _gates4(row, u)
        ri, rf, rg, ro = _gates4(rec, u)
        cp, cs, hs = c_prev[s], c[s], h[s]
        for j in range(u):
            _, _, _, o, cell, t = _lstm_unit(gi[j] + ri[j], gf[j] + rf[j], gg[j] + rg[j], go[j] + ro[j], cp[j])
            cs[j], hs[j] = cell, o * t


@jit(**CELL)
def lstm_cell_backward(dy, dh, acts, c_prev, tanh_c, dc, da):
    """LSTM step backward: dc (N, U) dL/dc_t in, dL/dc_{t-1} out; da (N, 4U) out.

    See :func:`nettrain.kernels.reference.lstm_cell_backward`.
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


def lstm_scan_backward(dh_out, acts, c_prev, tanh_c, recurrent_t, dh_next, dc, da, contended=False):
    """All steps of an LSTM's backward, one fused cell kernel call per step, contended or not.

    See :func:`nettrain.kernels.reference.recurrent.lstm_scan_backward`.
    """
    lstm_steps_backward(lstm_cell_backward, dh_out, acts, c_prev, tanh_c, recurrent_t, dh_next, dc, da)


@jit(**CELL)
def gru_cell_forward(gates, hr, recurrent_bias, h_prev, hw_n, h):
    """GRU step: gates (N, 3U) pre-activations in, r, z, n out; writes hw_n and h (N, U).

    See :func:`nettrain.kernels.reference.gru_cell_forward`.
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


@jit(**CELL)
def gru_cell_backward(dy, dh, dh_carry, h_prev, acts, hw_n, dxw, dhw):
    """GRU step backward: writes dxw, dhw (N, 3U) and dh_carry (N, U).

    See :func:`nettrain.kernels.reference.gru_cell_backward`.
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

"""Compiled batch normalisation: float64 sums per channel, element-wise passes per sample."""

from __future__ import annotations

import numpy as np

from ..pool import over_batch
from .jit import FAST_SUMS, jit

__all__ = ["batchnorm_stats", "batchnorm_affine", "batchnorm_backward"]


@jit(fastmath=FAST_SUMS)
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


@jit
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


@jit(fastmath=FAST_SUMS)
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


@jit
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
    """-> dx (M, F, P), dgamma (F,), dbeta (F,); see :func:`nettrain.kernels.reference.batchnorm_backward`."""
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

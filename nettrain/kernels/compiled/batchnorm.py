"""Compiled batch normalisation: per-channel sums, element-wise passes per sample, ReLU fused in.

The sums run in float32 over blocks of :data:`BLOCK` values (so that they vectorise at
full width) and add the blocks in float64; the statistics sum ``x - x[0, k, 0]``, which
keeps ``E[x^2] - E[x]^2`` accurate for a mean far from zero.
"""

from __future__ import annotations

import numpy as np

from ..pool import even_ranges, over_batch, run_on_chunks, split_workers
from .jit import FAST_SUMS, jit

__all__ = ["batchnorm_stats", "batchnorm_affine", "batchnorm_backward", "batchnorm_relu_affine",
           "batchnorm_relu_backward"]

BLOCK = 512  # float32 partial sums over at most this many values, then float64


# The block loops start at 0 on a slice: numba then drops its negative-index checks and LLVM vectorises.
@jit(fastmath=FAST_SUMS, inline="always")
def _shifted_sums(row, ref):
    """float32 sums of ``row - ref`` and of its squares."""
    part = np.float32(0)
    part_sq = np.float32(0)
    for e in range(row.size):
        v = row[e] - ref
        part += v
        part_sq += v * v
    return part, part_sq


@jit(inline="always")
def _masked(g, y, relu):
    """The gradient that reaches the batch norm: ``g`` where the ReLU passed its input, else 0 (NaN stays)."""
    if relu:
        return g * np.float32(y > 0)  # as dy * (y > 0) in the reference: a NaN in dy stays NaN
    return g


@jit(fastmath=FAST_SUMS, inline="always")
def _gradient_sums(xr, gr, yr, relu, mu):
    """float32 sums of the (masked) gradient and of it times ``x - mu``."""
    part = np.float32(0)
    part_xc = np.float32(0)
    for e in range(xr.size):
        g = _masked(gr[e], yr[e], relu)
        part += g
        part_xc += g * (xr[e] - mu)
    return part, part_xc


@jit(fastmath=FAST_SUMS)
def _batchnorm_sums(x3, ref, sums):
    """sums[k] += (sum of x - ref[k], sum of its squares) over the samples of x3, row by row in memory order."""
    m, f, p = x3.shape
    for s in range(m):
        for k in range(f):
            row = x3[s, k]
            for e0 in range(0, p, BLOCK):
                part, part_sq = _shifted_sums(row[e0:e0 + BLOCK], ref[k])
                sums[k, 0] += part
                sums[k, 1] += part_sq


@jit
def _batchnorm_affine(x3, scale, shift, y3, relu):
    m, f, p = x3.shape
    for s in range(m):
        for k in range(f):
            src = x3[s, k]
            dst = y3[s, k]
            a = scale[k]
            b = shift[k]
            if relu:
                for e in range(p):
                    v = src[e] * a + b
                    dst[e] = 0 if v < 0 else v  # NaN passes through, as in np.maximum
            else:
                for e in range(p):
                    dst[e] = src[e] * a + b


@jit(fastmath=FAST_SUMS)
def _batchnorm_backward_sums(x3, dy3, y3, relu, mean, sums):
    """sums[k] += (sum of dy, sum of dy * (x - mean[k])) over the samples of x3; with ``relu``, dy masked by y3 > 0."""
    m, f, p = x3.shape
    for s in range(m):
        for k in range(f):
            xr = x3[s, k]
            gr = dy3[s, k]
            yr = y3[s, k]
            mu = mean[k]
            for e0 in range(0, p, BLOCK):
                e1 = e0 + BLOCK
                part, part_xc = _gradient_sums(xr[e0:e1], gr[e0:e1], yr[e0:e1], relu, mu)
                sums[k, 0] += part
                sums[k, 1] += part_xc


@jit
def _batchnorm_backward_apply(x3, dy3, y3, relu, mean, a, b, c, dx3):
    m, f, p = x3.shape
    for s in range(m):
        for k in range(f):
            xr = x3[s, k]
            gr = dy3[s, k]
            yr = y3[s, k]
            dr = dx3[s, k]
            ak = a[k]
            bk = b[k]
            ck = c[k]
            mu = mean[k]
            for e in range(p):
                dr[e] = _masked(gr[e], yr[e], relu) * ak + (xr[e] - mu) * bk + ck


def _sums_over_samples(sums_of, m: int, f: int, elements: int) -> np.ndarray:
    """float64 (F, 2) per-channel sums: ``sums_of(s0, s1, out)`` adds those of samples [s0, s1) into ``out``.

    Sample ranges run on the worker threads, each streaming through memory in order; their
    partial sums are added at the end.
    """
    ranges = even_ranges(m, split_workers(m, elements))
    parts = np.zeros((len(ranges), f, 2))
    run_on_chunks(lambda k, share: [sums_of(s0, s1, parts[k]) for s0, s1 in share], ranges, len(ranges))
    return parts.sum(axis=0)


def batchnorm_stats(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, F, P) -> per-feature mean and biased variance (F,)."""
    x3 = np.ascontiguousarray(x3)
    m, f, p = x3.shape
    ref = x3[0, :, 0].copy()  # sums of x - ref: accurate however far the mean is from zero
    sums = _sums_over_samples(lambda s0, s1, out: _batchnorm_sums(x3[s0:s1], ref, out), m, f, x3.size)
    mu = sums[:, 0] / (m * p)
    var = np.maximum(sums[:, 1] / (m * p) - mu * mu, 0.0)
    return (mu + ref).astype(x3.dtype), var.astype(x3.dtype)


def _affine(x3, scale, shift, relu):
    x3 = np.ascontiguousarray(x3)
    y3 = np.empty(x3.shape, x3.dtype)
    over_batch(lambda s0, s1: _batchnorm_affine(x3[s0:s1], scale, shift, y3[s0:s1], relu), x3.shape[0], x3.size)
    return y3


def batchnorm_affine(x3: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return _affine(x3, scale, shift, False)


def batchnorm_relu_affine(x3: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """relu(x * scale + shift) in one pass."""
    return _affine(x3, scale, shift, True)


def _backward(x3, dy3, y3, relu, mean, inv_std, gamma, combine):
    m, f, p = x3.shape
    x3, dy3, y3 = np.ascontiguousarray(x3), np.ascontiguousarray(dy3), np.ascontiguousarray(y3)
    sums = _sums_over_samples(
        lambda s0, s1, out: _batchnorm_backward_sums(x3[s0:s1], dy3[s0:s1], y3[s0:s1], relu, mean, out),
        m, f, x3.size)
    sum_dy, sum_dy_xc = sums[:, 0], sums[:, 1]
    total_dy, total_dy_xc, count = sum_dy, sum_dy_xc, m * p
    if combine is not None:  # statistics over other processes' samples too: the means in dx are theirs
        total_dy, total_dy_xc, count = combine(sum_dy.copy(), sum_dy_xc.copy())
    istd = inv_std.astype(np.float64)
    a = gamma * istd
    b = (-a * istd * istd * total_dy_xc / count).astype(x3.dtype)
    c = (-a * total_dy / count).astype(x3.dtype)  # c = -a*mean(dy)
    dx3 = np.empty(x3.shape, x3.dtype)
    a = a.astype(x3.dtype)
    over_batch(lambda s0, s1: _batchnorm_backward_apply(x3[s0:s1], dy3[s0:s1], y3[s0:s1], relu, mean, a, b, c,
                                                        dx3[s0:s1]), m, x3.size)
    return dx3, (sum_dy_xc * istd).astype(x3.dtype), sum_dy.astype(x3.dtype)


def batchnorm_backward(x3, dy3, mean, inv_std, gamma, combine=None):
    """-> dx (M, F, P), dgamma (F,), dbeta (F,); see :func:`nettrain.kernels.reference.batchnorm_backward`."""
    return _backward(x3, dy3, dy3, False, mean, inv_std, gamma, combine)


def batchnorm_relu_backward(x3, y3, dy3, mean, inv_std, gamma, combine=None):
    """The backward of ``y3 = relu(batchnorm(x3))`` from the gradient ``dy3`` of ``y3``, in two passes."""
    return _backward(x3, dy3, y3, True, mean, inv_std, gamma, combine)

"""Compiled max and average pooling, split over the worker threads."""

from __future__ import annotations

import numpy as np

from ..geometry import ConvGeometry, argmax_dtype
from ..pool import over_batch
from .jit import jit

__all__ = ["max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"]


@jit(inline="always")
def _window_span(o: int, stride: int, pad: int, k: int, size: int):
    """Input cells [lo, hi) along one axis that output position ``o``'s window covers."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@jit
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


@jit
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


@jit
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


@jit
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
    """(N, C, H, W) -> (max, argmax offset); see :func:`nettrain.kernels.reference.max_pool_forward`."""
    ph, pw = g.kernel
    y = np.empty((x.shape[0], x.shape[1], *g.out_hw), x.dtype)
    arg = np.empty(y.shape, argmax_dtype(g))
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

"""Max and average pooling in NumPy, and their versions split over the worker threads."""

from __future__ import annotations

import numpy as np

from ..geometry import ConvGeometry, Pad4, argmax_dtype
from ..pool import split_samples
from .conv import pad_images, window

# Pooling windows are a few cells wide, so NumPy runs its inner loops over a handful
# of elements. Windows that tile the image (stride == pool size, no padding: the usual
# 2x2 pooling) are strided views of the NCHW arrays themselves, each cell in exactly
# one window, so the max and its gradient take one pass per window offset and no copy.
# Other geometries first move the images to the last axis, (N, C, H, W) -> (H, W, N*C):
# every window op then runs over N*C contiguous values, and the two transposing copies
# cost less than they save there.


def tiles(g: ConvGeometry) -> bool:
    """Whether the windows of ``g`` tile the image: each input cell lies in one window at most."""
    return g.stride == g.kernel and not any(g.pad)


def images_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> contiguous (H, W, N*C)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n * c, h, w).transpose(1, 2, 0))


def images_first(t: np.ndarray, n: int, c: int, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, N*C) -> (N, C, H, W), written to ``out`` when given."""
    h, w, _ = t.shape
    nchw = t.transpose(2, 0, 1).reshape(n, c, h, w)
    if out is None:
        return np.ascontiguousarray(nchw)
    out[...] = nchw
    return out


def pad_last(t: np.ndarray, pad: Pad4, value: float = 0.0) -> np.ndarray:
    """(H, W, M) -> (H+top+bottom, W+left+right, M), the border filled with ``value``."""
    if not any(pad):
        return t
    top, bottom, left, right = pad
    h, w, m = t.shape
    out = np.full((h + top + bottom, w + left + right, m), value, dtype=t.dtype)
    out[top : top + h, left : left + w] = t
    return out


def window_last(tp: np.ndarray, i: int, j: int, stride, out_hw) -> np.ndarray:
    """The (OH, OW, M) view of padded ``tp`` (Hp, Wp, M) seen by window offset (i, j)."""
    sh, sw = stride
    oh, ow = out_hw
    return tp[i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]


def unpad_last(tp: np.ndarray, pad: Pad4) -> np.ndarray:
    top, bottom, left, right = pad
    return tp[top : tp.shape[0] - bottom, left : tp.shape[1] - right]


def _windows_max(view, g: ConvGeometry, best: np.ndarray, arg: np.ndarray) -> None:
    """``best`` = the max over window offsets of ``view(i, j)``, ``arg`` = the first offset i*pw + j holding it."""
    ph, pw = g.kernel
    best[...] = view(0, 0)
    arg[...] = 0
    better = np.empty(best.shape, dtype=bool)
    offset = np.empty_like(arg)
    for i in range(ph):
        for j in range(pw):
            if i == j == 0:
                continue
            cand = view(i, j)
            np.greater(cand, best, out=better)
            np.maximum(best, cand, out=best)
            # offsets come in increasing order, so "k where better, else the old arg" is a max
            np.multiply(better, i * pw + j, out=offset)
            np.maximum(arg, offset, out=arg)


def max_pool_forward(x: np.ndarray, g: ConvGeometry, out: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> (max (N, C, OH, OW), argmax offset i*pw + j (N, C, OH, OW) as int8/int32).

    Padding counts as -inf, so it never wins; ties go to the first offset in
    row-major order, as in PyTorch. ``out``: the two arrays to write, if given.
    """
    n, c = x.shape[:2]
    if out is None:
        out = np.empty((n, c, *g.out_hw), x.dtype), np.empty((n, c, *g.out_hw), argmax_dtype(g))
    y, arg = out
    if tiles(g):
        _windows_max(lambda i, j: window(x, i, j, g.stride, (1, 1), g.out_hw), g, y, arg)
        return y, arg
    tp = pad_last(images_last(x), g.pad, -np.inf)
    best, arg_t = np.empty((*g.out_hw, n * c), x.dtype), np.empty((*g.out_hw, n * c), arg.dtype)
    _windows_max(lambda i, j: window_last(tp, i, j, g.stride, g.out_hw), g, best, arg_t)
    return images_first(best, n, c, y), images_first(arg_t, n, c, arg)


def max_pool_backward(dy: np.ndarray, arg: np.ndarray, g: ConvGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Route each output gradient to the input position that won the max: -> (N, C, H, W)."""
    n, c = dy.shape[:2]
    ph, pw = g.kernel
    dx = out if out is not None else np.empty((n, c, *g.in_chw[1:]), dy.dtype)
    if tiles(g):  # each cell gets the gradient of its one window, or 0 if it won no max
        oh, ow = g.out_hw
        dx[:, :, oh * ph :] = 0
        dx[:, :, :, ow * pw :] = 0
        won = np.empty(dy.shape, dtype=bool)
        for i in range(ph):
            for j in range(pw):
                np.equal(arg, i * pw + j, out=won)
                np.multiply(dy, won, out=window(dx, i, j, g.stride, (1, 1), g.out_hw))
        return dx
    dyt, argt = images_last(dy), images_last(arg)
    dxp = np.zeros((*g.padded_hw, n * c), dtype=dy.dtype)
    won = np.empty(dyt.shape, dtype=bool)
    part = np.empty_like(dyt)
    for i in range(ph):
        for j in range(pw):
            np.equal(argt, i * pw + j, out=won)
            window_last(dxp, i, j, g.stride, g.out_hw)[...] += np.multiply(dyt, won, out=part)
    return images_first(unpad_last(dxp, g.pad), n, c, dx)


def avg_pool_forward(x: np.ndarray, g: ConvGeometry, inv_count: np.ndarray,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Window means (N, C, H, W) -> (N, C, OH, OW); ``inv_count`` (OH, OW) is 1 / cells inside the image."""
    n, c = x.shape[:2]
    ph, pw = g.kernel
    tp = pad_last(images_last(x), g.pad)
    total = window_last(tp, 0, 0, g.stride, g.out_hw).copy()
    for i in range(ph):
        for j in range(pw):
            if i or j:
                total += window_last(tp, i, j, g.stride, g.out_hw)
    total *= inv_count[:, :, None]
    return images_first(total, n, c, out)


def avg_pool_backward(dy: np.ndarray, g: ConvGeometry, inv_count: np.ndarray,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Spread each output gradient evenly over the cells its window covered: -> (N, C, H, W)."""
    n, c = dy.shape[:2]
    ph, pw = g.kernel
    share = images_last(dy)
    share *= inv_count[:, :, None]
    dxp = np.zeros((*g.padded_hw, n * c), dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            window_last(dxp, i, j, g.stride, g.out_hw)[...] += share
    return images_first(unpad_last(dxp, g.pad), n, c, out)


def window_counts(g: ConvGeometry) -> np.ndarray:
    """(OH, OW): how many cells of each pooling window lie inside the (unpadded) image."""
    _, h, w = g.in_chw
    ones = pad_images(np.ones((1, 1, h, w)), g.pad)
    total = np.zeros((1, 1, *g.out_hw))
    for i in range(g.kernel[0]):
        for j in range(g.kernel[1]):
            total += window(ones, i, j, g.stride, (1, 1), g.out_hw)
    return total[0, 0]


# -- on the worker threads: disjoint ranges of samples ----------------------------
def threaded_max_pool_forward(x, g):
    y = np.empty((x.shape[0], x.shape[1], *g.out_hw), x.dtype)
    arg = np.empty(y.shape, argmax_dtype(g))
    return split_samples(max_pool_forward, (y, arg), (x,), (g,))


def threaded_max_pool_backward(dy, arg, g):
    return split_samples(max_pool_backward, (np.empty((*dy.shape[:2], *g.in_chw[1:]), dy.dtype),), (dy, arg), (g,))


def threaded_avg_pool_forward(x, g, inv_count):
    return split_samples(avg_pool_forward, (np.empty((*x.shape[:2], *g.out_hw), x.dtype),), (x,), (g, inv_count))


def threaded_avg_pool_backward(dy, g, inv_count):
    dx = np.empty((*dy.shape[:2], *g.in_chw[1:]), dy.dtype)
    return split_samples(avg_pool_backward, (dx,), (dy,), (g, inv_count))

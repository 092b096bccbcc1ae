"""Max and average pooling in NumPy, and their versions split over the worker threads."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..geometry import ConvGeometry, Pad4, argmax_dtype
from ..pool import scratch, split_samples
from .conv import pad_images, unpad_images, window

# Pooling windows are a few cells wide, so NumPy runs its inner loops over a handful
# of elements. Windows that tile the image (stride == pool size, no padding: the usual
# 2x2 pooling) are strided views of the NCHW arrays themselves, each cell in exactly
# one window, so the max and its gradient take one pass per window offset and no copy.
# Max pooling of other geometries (overlapping windows like AlexNet's 3x3/2, padding)
# works on the flat (N*C*Hp*Wp,) array of padded images: the max over a window's
# columns at every position is ``pw`` shifted contiguous slices, the max over its rows
# ``ph`` more, shifted by whole rows, and the outputs are then read at the windows'
# top-left corners, so every pass runs over one long contiguous array (kh + kw passes,
# not kh * kw). Its backward pass turns each window's argmax into the flat index of the
# winning cell and sums the gradients there with one ``np.bincount``. Average pooling
# first moves the images to the last axis, (N, C, H, W) -> (H, W, N*C), so that every
# window op runs over N*C contiguous values.


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


# -- max pooling on flat padded images (see the top of the module) ---------------
def _flat_images(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """(n, C, H, W) -> the flat (n*C*Hp*Wp,) padded images, the border -inf; ``x`` itself when it needs no copy."""
    if not any(g.pad) and x.flags.c_contiguous:
        return x.reshape(-1)
    top, bottom, left, right = g.pad
    n, c, h, w = x.shape
    xp = scratch("pool_padded", (n, c, *g.padded_hw), x.dtype)
    xp[:, :, :top] = -np.inf
    xp[:, :, top + h :] = -np.inf
    xp[:, :, top : top + h, :left] = -np.inf
    xp[:, :, top : top + h, left + w :] = -np.inf
    xp[:, :, top : top + h, left : left + w] = x
    return xp.reshape(-1)


def _corners(flat: np.ndarray, planes: int, g: ConvGeometry) -> np.ndarray:
    """The (planes, OH, OW) view of ``flat`` (laid out as padded images) at the windows' top-left cells."""
    hp, wp = g.padded_hw
    (sh, sw), s = g.stride, flat.itemsize
    return as_strided(flat, (planes, *g.out_hw), (hp * wp * s, sh * wp * s, sw * s), writeable=False)


# Bytes of work arrays per pass of :func:`_separable_max` (about 10 per float32 input cell):
# large enough that its ~25 NumPy calls per pass cost little, which matters most with two
# threads, whose calls contend for the GIL (alexnet_100's 3x3/2 pooling, half a batch per
# thread: 256 KB passes 7.2 ms, 2 MB 2.1 ms, 4 MB 1.8 ms; one thread 4.5, 2.6 and 2.1 ms).
POOL_CHUNK_BYTES = 1 << 22


def _separable_max(z: np.ndarray, g: ConvGeometry, y: np.ndarray, arg: np.ndarray) -> None:
    """Window maxima of the flat padded images ``z`` into ``y``, their first offsets i*pw + j into ``arg``.

    First the max over each window row's ``pw`` cells, with the first column holding it,
    at every position; then the max over ``ph`` such rows, the first row winning ties,
    so the offset is the first in row-major order, as in :func:`_windows_max`. Runs on
    a few planes (images of one channel) at a time.
    """
    (ph, pw), plane = g.kernel, math.prod(g.padded_hw)
    wp = g.padded_hw[1]
    planes = y.shape[0] * y.shape[1]
    y, arg = y.reshape(planes, *g.out_hw), arg.reshape(planes, *g.out_hw)
    step_planes = max(1, min(planes, POOL_CHUNK_BYTES // (plane * (2 * z.itemsize + 4))))
    cols = step_planes * plane - (pw - 1)  # positions whose row of cells lies inside the chunk
    size = cols - (ph - 1) * wp  # positions whose whole window lies inside it
    best, first = scratch("pool_row_max", (cols,), z.dtype), scratch("pool_row_arg", (cols,), arg.dtype)
    top, top_arg = scratch("pool_max", (size,), z.dtype), scratch("pool_arg", (size,), arg.dtype)
    better, step = scratch("pool_better", (cols,), np.bool_), scratch("pool_step", (cols,), arg.dtype)
    for p0 in range(0, planes, step_planes):
        k = min(step_planes, planes - p0)
        zk = z[p0 * plane : (p0 + k) * plane]
        c, s = k * plane - (pw - 1), k * plane - (pw - 1) - (ph - 1) * wp
        bk, fk, bt, st = best[:c], first[:c], better[:c], step[:c]
        bk[...] = zk[:c]
        fk[...] = 0
        for j in range(1, pw):  # offsets come in increasing order: "j where better, else the old" is a max
            cand = zk[j : j + c]
            np.greater(cand, bk, out=bt)
            np.maximum(bk, cand, out=bk)
            np.multiply(bt.view(np.int8), arg.dtype.type(j), out=st)
            np.maximum(fk, st, out=fk)
        tk, ak, bt, st = top[:s], top_arg[:s], bt[:s], st[:s]
        tk[...] = bk[:s]
        ak[...] = fk[:s]
        for i in range(1, ph):  # every offset of row i is above those of the rows before it
            cand = bk[i * wp : i * wp + s]
            np.greater(cand, tk, out=bt)
            np.maximum(tk, cand, out=tk)
            np.add(fk[i * wp : i * wp + s], arg.dtype.type(i * pw), out=st)
            np.multiply(st, bt.view(np.int8), out=st)
            np.maximum(ak, st, out=ak)
        y[p0 : p0 + k] = _corners(tk, k, g)
        arg[p0 : p0 + k] = _corners(ak, k, g)


_CORNER_INDEX: dict[tuple, np.ndarray] = {}


def _winners(arg: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """The flat index into the padded images (see :func:`_flat_images`) of each window's maximal cell."""
    n, c = arg.shape[:2]
    hp, wp = g.padded_hw
    (sh, sw), (oh, ow) = g.stride, g.out_hw
    key = (c, hp, wp, sh, sw, oh, ow)
    corner = _CORNER_INDEX.get(key)
    if corner is None or corner.shape[0] < n:  # grows with the batch; the first n samples' part is the same
        planes = np.arange(n * c, dtype=np.intp).reshape(n, c, 1, 1) * (hp * wp)
        corner = planes + np.arange(oh, dtype=np.intp)[:, None] * (sh * wp) + np.arange(ow, dtype=np.intp) * sw
        _CORNER_INDEX[key] = corner
    ph, pw = g.kernel
    shifts = np.array([i * wp + j for i in range(ph) for j in range(pw)], np.intp)
    idx = scratch("pool_winners", arg.shape, np.intp)
    np.take(shifts, arg, out=idx)
    idx += corner[:n]
    return idx


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
    _separable_max(_flat_images(x, g), g, y, arg)
    return y, arg


def max_pool_backward(dy: np.ndarray, arg: np.ndarray, g: ConvGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Route each output gradient to the input position that won the max: -> (N, C, H, W).

    Windows that tile the image by masked multiplies, one per offset; overlapping or padded
    ones by ``np.bincount`` over the flat padded images.
    """
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
    sums = np.bincount(_winners(arg, g).reshape(-1), weights=np.ravel(dy), minlength=n * c * math.prod(g.padded_hw))
    dx[...] = unpad_images(sums.reshape(n, c, *g.padded_hw), g.pad)
    return dx


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
    """Windows that tile the image split over the worker threads; overlapping or padded ones run
    in the calling thread.

    Their ``np.bincount`` holds the GIL, so two threads would take turns. A GIL-free version
    (masked adds on per-parity grids) ran faster per layer on two threads but not in a whole
    training step, where one thread's bincount measured faster still: alexnet_100 with NumPy
    kernels and 2 threads trained at 3,763 / 4,703 / 3,782 img/s this way against 3,714 / 4,231 /
    3,111 split (alternating processes; benchmarks/README.md, round four).
    """
    dx = np.empty((*dy.shape[:2], *g.in_chw[1:]), dy.dtype)
    if not tiles(g):
        return max_pool_backward(dy, arg, g, dx)
    return split_samples(max_pool_backward, (dx,), (dy, arg), (g,))


def threaded_avg_pool_forward(x, g, inv_count):
    return split_samples(avg_pool_forward, (np.empty((*x.shape[:2], *g.out_hw), x.dtype),), (x,), (g, inv_count))


def threaded_avg_pool_backward(dy, g, inv_count):
    dx = np.empty((*dy.shape[:2], *g.in_chw[1:]), dy.dtype)
    return split_samples(avg_pool_backward, (dx,), (dy,), (g, inv_count))

"""Pure-NumPy kernels: convolution by im2col/col2im and window pooling.

These are the reference implementations. Every loop here runs over kernel
offsets (kh x kw), never over the batch or over pixels: each offset is one
strided slice copied (im2col) or accumulated (col2im) at once.

Padding is given as four ints ``(top, bottom, left, right)`` so that Keras/TF
``same`` padding, which can be asymmetric, needs no special case.
"""

from __future__ import annotations

import numpy as np

Pad4 = tuple[int, int, int, int]


def pad_images(x: np.ndarray, pad: Pad4, value: float = 0.0) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H+top+bottom, W+left+right), filled with ``value``."""
    top, bottom, left, right = pad
    if not any(pad):
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + top + bottom, w + left + right), value, dtype=x.dtype)
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


def im2col(xp: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """Padded input (N, C, Hp, Wp) -> columns (C, kh, kw, N, OH, OW).

    Reshaped to (C*kh*kw, N*OH*OW), the columns multiply a kernel reshaped to
    (F, C*kh*kw) in one GEMM.
    """
    n, c = xp.shape[:2]
    kh, kw = kernel
    oh, ow = out_hw
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = window(xp, i, j, stride, dilation, out_hw).transpose(1, 0, 2, 3)
    return cols


def col2im(cols: np.ndarray, padded_shape, stride, dilation) -> np.ndarray:
    """Columns (C, kh, kw, N, OH, OW) -> padded input gradient (N, C, Hp, Wp), summing overlaps."""
    c, kh, kw, n, oh, ow = cols.shape
    dxp = np.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            window(dxp, i, j, stride, dilation, (oh, ow))[...] += cols[:, i, j].transpose(1, 0, 2, 3)
    return dxp


def max_pool_forward(xp: np.ndarray, pool, stride, out_hw) -> tuple[np.ndarray, np.ndarray]:
    """Padded input (N, C, Hp, Wp) -> (max (N, C, OH, OW), argmax offset index (N, C, OH, OW)).

    Ties go to the first offset in row-major order, as in PyTorch.
    """
    ph, pw = pool
    best = window(xp, 0, 0, stride, (1, 1), out_hw).copy()
    arg = np.zeros(best.shape, dtype=np.int8 if ph * pw < 128 else np.int32)
    for i in range(ph):
        for j in range(pw):
            if i == j == 0:
                continue
            cand = window(xp, i, j, stride, (1, 1), out_hw)
            better = cand > best
            np.copyto(best, cand, where=better)
            arg[better] = i * pw + j
    return best, arg


def max_pool_backward(dy: np.ndarray, arg: np.ndarray, padded_shape, pool, stride) -> np.ndarray:
    """Route each output gradient to the input position that won the max."""
    ph, pw = pool
    dxp = np.zeros(padded_shape, dtype=dy.dtype)
    out_hw = dy.shape[2:]
    for i in range(ph):
        for j in range(pw):
            win = window(dxp, i, j, stride, (1, 1), out_hw)
            win += np.where(arg == i * pw + j, dy, 0)
    return dxp


def sum_pool_forward(xp: np.ndarray, pool, stride, out_hw) -> np.ndarray:
    """Sum over each window: (N, C, Hp, Wp) -> (N, C, OH, OW)."""
    ph, pw = pool
    total = window(xp, 0, 0, stride, (1, 1), out_hw).copy()
    for i in range(ph):
        for j in range(pw):
            if i or j:
                total += window(xp, i, j, stride, (1, 1), out_hw)
    return total


def sum_pool_backward(dy: np.ndarray, padded_shape, pool, stride) -> np.ndarray:
    """Spread each output gradient over its window."""
    ph, pw = pool
    dxp = np.zeros(padded_shape, dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            window(dxp, i, j, stride, (1, 1), dy.shape[2:])[...] += dy
    return dxp

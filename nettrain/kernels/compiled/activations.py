"""Compiled ReLU and the residual sum; non-contiguous arrays go to the NumPy kernels."""

from __future__ import annotations

import numpy as np

from ..pool import over_batch
from ..reference import activations as reference
from .jit import jit

__all__ = ["relu_forward", "relu_backward", "residual_add"]


@jit
def _relu_forward(x, y):
    for e in range(x.size):
        v = x[e]
        y[e] = 0 if v < 0 else v  # NaN passes through, as in np.maximum


@jit
def _relu_backward(dy, y, dx):
    for e in range(dy.size):
        dx[e] = dy[e] if y[e] > 0 else dy[e] * 0  # dy * (y > 0), so a NaN in dy stays NaN


def relu_forward(x: np.ndarray) -> np.ndarray:
    if not x.flags.c_contiguous:
        return reference.relu_forward(x)
    y = np.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)
    over_batch(lambda a, b: _relu_forward(xf[a:b], yf[a:b]), xf.size, xf.size)
    return y


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    if not (dy.flags.c_contiguous and y.flags.c_contiguous):
        return reference.relu_backward(dy, y)
    dx = np.empty_like(dy)
    dyf, yf, dxf = dy.reshape(-1), y.reshape(-1), dx.reshape(-1)
    over_batch(lambda a, b: _relu_backward(dyf[a:b], yf[a:b], dxf[a:b]), dxf.size, dxf.size)
    return dx


# -- a residual block's sum of its two branches, with its ReLU --------------------------------
@jit
def _add_relu(a, b, y, relu):
    if relu:
        for e in range(a.size):
            v = a[e] + b[e]
            y[e] = 0 if v < 0 else v
    else:
        for e in range(a.size):
            y[e] = a[e] + b[e]


@jit
def _add_subsampled(body, x, stride, offset, relu, y):
    """y = act(body + x subsampled by ``stride`` in channels [offset, offset + C) of body, zeros elsewhere)."""
    n, f, h, w = body.shape
    c = x.shape[1]
    for s in range(n):
        for k in range(f):
            src, dst = body[s, k], y[s, k]
            inside = offset <= k < offset + c
            for i in range(h):
                brow, yrow = src[i], dst[i]
                if inside:
                    xrow = x[s, k - offset, i * stride]
                    for j in range(w):
                        v = brow[j] + xrow[j * stride]
                        yrow[j] = (0 if v < 0 else v) if relu else v
                elif relu:
                    for j in range(w):
                        v = brow[j]
                        yrow[j] = 0 if v < 0 else v
                else:
                    for j in range(w):
                        yrow[j] = brow[j]


def residual_add(body: np.ndarray, shortcut: np.ndarray, stride: int = 1, offset: int = 0,
                 relu: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """See :func:`nettrain.kernels.reference.activations.residual_add`."""
    if not (body.flags.c_contiguous and shortcut.flags.c_contiguous
            and (out is None or out.flags.c_contiguous)):
        return reference.residual_add(body, shortcut, stride, offset, relu, out)
    y = np.empty_like(body) if out is None else out  # each cell is read before it is written: out may be body
    if body.shape == shortcut.shape and stride == 1:
        af, bf, yf = body.reshape(-1), shortcut.reshape(-1), y.reshape(-1)
        over_batch(lambda a, b: _add_relu(af[a:b], bf[a:b], yf[a:b], relu), yf.size, yf.size)
        return y
    over_batch(lambda a, b: _add_subsampled(body[a:b], shortcut[a:b], stride, offset, relu, y[a:b]),
               body.shape[0], body.size)
    return y

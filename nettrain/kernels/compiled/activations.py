"""Compiled ReLU; non-contiguous arrays go to the NumPy kernel."""

from __future__ import annotations

import numpy as np

from ..pool import over_batch
from ..reference import activations as reference
from .jit import jit

__all__ = ["relu_forward", "relu_backward"]


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

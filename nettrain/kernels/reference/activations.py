"""ReLU in NumPy, and its versions split over the worker threads."""

from __future__ import annotations

import numpy as np

from ..pool import split_samples


def relu_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, 0, dtype=x.dtype, out=out)


def relu_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """dy * (y > 0): the gradient where the output was positive, else 0 (NaN in dy stays NaN)."""
    return np.multiply(dy, y > 0, dtype=dy.dtype, out=out)


def threaded_relu_forward(x):
    if x.ndim == 0:
        return relu_forward(x)
    return split_samples(relu_forward, (np.empty(x.shape, x.dtype),), (x,))


def threaded_relu_backward(dy, y):
    if dy.ndim == 0:
        return relu_backward(dy, y)
    return split_samples(relu_backward, (np.empty(dy.shape, dy.dtype),), (dy, y))


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


def residual_add(body: np.ndarray, shortcut: np.ndarray, stride: int = 1, offset: int = 0,
                 relu: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """A residual block's output before (or with, ``relu``) its ReLU: ``body + shortcut``.

    With images (N, F, H, W) and a ``shortcut`` (N, C, h, w) of other channels or size, the
    shortcut is subsampled by ``stride`` and added to channels ``offset`` to ``offset + C``
    (the zero-padded shortcut of ResNet's option A). ``out``: where to write the result (it
    may be ``body`` itself, for an eval pass that keeps nothing).
    """
    if body.shape == shortcut.shape and stride == 1:
        y = np.add(body, shortcut, out=out)
    else:
        y = body.copy() if out is None else out
        if y is not body:
            y[...] = body
        y[:, offset : offset + shortcut.shape[1]] += shortcut[:, :, ::stride, ::stride]
    if relu:
        np.maximum(y, 0, out=y)
    return y


def threaded_residual_add(body: np.ndarray, shortcut: np.ndarray, stride: int = 1, offset: int = 0,
                          relu: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`residual_add` on the worker threads, by ranges of samples."""
    result = np.empty(body.shape, body.dtype) if out is None else out

    def add(b, s, out):
        residual_add(b, s, stride, offset, relu, out=out)

    return split_samples(add, (result,), (body, shortcut))

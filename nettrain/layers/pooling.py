"""Pooling: MaxPool2D, AvgPool2D (windowed) and GlobalAvgPool2D."""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Optional

import numpy as np

from .. import kernels
from ..kernels.geometry import argmax_dtype
from .base import Layer, LayerSpec, Shape, register
from .conv import IntPair, Padding, as_pair, resolve_padding, window_output_size


class PoolSpec(LayerSpec):
    """Fields shared by the windowed pools."""

    pool_size: IntPair = 2
    strides: Optional[IntPair] = None
    padding: Padding = "valid"


class Pool2D(Layer):
    """Shared window arithmetic; strides default to the pool size (Keras)."""

    per_sample_eval = True

    keeps_input = False  # backward needs the window geometry (and max pooling its argmax)

    Spec: ClassVar[type[PoolSpec]] = PoolSpec

    def geometry_for(self, in_shape: Shape) -> kernels.ConvGeometry:
        s = self.spec
        pool = as_pair(s.pool_size)
        stride = as_pair(s.strides if s.strides is not None else s.pool_size)
        pad = resolve_padding(s.padding, in_shape[1:], pool, stride)
        out_hw = window_output_size(self, in_shape, in_shape[1:], pool, stride, pad, what="pool")
        return kernels.ConvGeometry(tuple(in_shape), pool, stride, (1, 1), pad, out_hw)

    def compute_output_shape(self, in_shape: Shape) -> Shape:
        self.require_rank(in_shape, (3,), "an image (height x width x channels)")
        return (in_shape[0], *self.geometry_for(in_shape).out_hw)

    def create_params(self, in_shape: Shape, rng) -> None:
        g = self.geometry = self.geometry_for(in_shape)
        self.pool, self.stride, self.pad, self.out_hw = g.kernel, g.stride, g.pad, g.out_hw


@register
class MaxPool2D(Pool2D):
    """Maximum over each window; padding counts as -inf, so it never wins."""

    class Spec(PoolSpec):
        type: Literal["maxpool2d"] = "maxpool2d"

    def forward(self, x, training=False):
        y, self._arg = kernels.backend(x.dtype).max_pool_forward(x, self.geometry)
        return y

    def cache_bytes(self, batch: int) -> int:
        """The window offset of each output's maximum."""
        return batch * math.prod(self.out_shape) * np.dtype(argmax_dtype(self.geometry)).itemsize

    def backward(self, dy):
        return kernels.backend(dy.dtype).max_pool_backward(dy, self._arg, self.geometry)


@register
class AvgPool2D(Pool2D):
    """Mean over each window; padded positions are left out of the count (Keras/TF)."""

    class Spec(PoolSpec):
        type: Literal["avgpool2d"] = "avgpool2d"

    def create_params(self, in_shape, rng):
        super().create_params(in_shape, rng)
        self._inv_count = {}
        self._count = kernels.window_counts(self.geometry)

    def inv_count(self, dtype) -> np.ndarray:
        """1 / (cells of each window inside the image), (OH, OW), in ``dtype``."""
        dtype = np.dtype(dtype)
        if dtype not in self._inv_count:
            self._inv_count[dtype] = (1.0 / self._count).astype(dtype)
        return self._inv_count[dtype]

    def forward(self, x, training=False):
        return kernels.backend(x.dtype).avg_pool_forward(x, self.geometry, self.inv_count(x.dtype))

    def backward(self, dy):
        return kernels.backend(dy.dtype).avg_pool_backward(dy, self.geometry, self.inv_count(dy.dtype))


@register
class GlobalAvgPool2D(Layer):
    """(C, H, W) -> (C,): the mean of each feature map."""

    per_sample_eval = True

    keeps_input = False

    class Spec(LayerSpec):
        type: Literal["global_avgpool2d"] = "global_avgpool2d"

    def compute_output_shape(self, in_shape):
        self.require_rank(in_shape, (3,), "an image (height x width x channels)")
        return (in_shape[0],)

    def forward(self, x, training=False):
        self._hw = x.shape[2:]
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        h, w = self._hw
        scale = dy.dtype.type(1.0 / (h * w))
        return np.broadcast_to((dy * scale)[:, :, None, None], (*dy.shape, h, w)).copy()

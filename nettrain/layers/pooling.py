"""Pooling: MaxPool2D, AvgPool2D (windowed) and GlobalAvgPool2D."""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np

from .. import kernels
from .base import Layer, LayerSpec, register
from .conv import IntPair, Padding, as_pair, resolve_padding, window_output_size


class Pool2D(Layer):
    """Shared window arithmetic; strides default to the pool size (Keras)."""

    pad_value = 0.0

    def build(self, in_shape, rng):
        self.in_shape = tuple(in_shape)
        self.require_rank(in_shape, (3,), "an image (height x width x channels)")
        s = self.spec
        self.pool = as_pair(s.pool_size)
        self.stride = as_pair(s.strides if s.strides is not None else s.pool_size)
        self.pad = resolve_padding(s.padding, in_shape[1:], self.pool, self.stride)
        self.out_hw = window_output_size(self, in_shape[1:], self.pool, self.stride, self.pad, what="pool")
        self.out_shape = (in_shape[0], *self.out_hw)
        return self.out_shape


@register
class MaxPool2D(Pool2D):
    """Maximum over each window; padding counts as -inf, so it never wins."""

    class Spec(LayerSpec):
        type: Literal["maxpool2d"] = "maxpool2d"
        pool_size: IntPair = 2
        strides: Optional[IntPair] = None
        padding: Padding = "valid"

    def forward(self, x, training=False):
        xp = kernels.pad_images(x, self.pad, -np.inf)
        y, self._arg = kernels.max_pool_forward(xp, self.pool, self.stride, self.out_hw)
        self._padded_shape = xp.shape
        return y

    def backward(self, dy):
        dxp = kernels.max_pool_backward(dy, self._arg, self._padded_shape, self.pool, self.stride)
        return kernels.unpad_images(dxp, self.pad)


@register
class AvgPool2D(Pool2D):
    """Mean over each window; padded positions are left out of the count (Keras/TF)."""

    class Spec(LayerSpec):
        type: Literal["avgpool2d"] = "avgpool2d"
        pool_size: IntPair = 2
        strides: Optional[IntPair] = None
        padding: Padding = "valid"

    def build(self, in_shape, rng):
        out = super().build(in_shape, rng)
        ones = kernels.pad_images(np.ones((1, 1, *in_shape[1:]), np.float32), self.pad)
        self._count = kernels.sum_pool_forward(ones, self.pool, self.stride, self.out_hw)
        return out

    def forward(self, x, training=False):
        xp = kernels.pad_images(x, self.pad)
        self._padded_shape = xp.shape
        return kernels.sum_pool_forward(xp, self.pool, self.stride, self.out_hw) / self._count.astype(x.dtype)

    def backward(self, dy):
        dxp = kernels.sum_pool_backward(dy / self._count.astype(dy.dtype), self._padded_shape, self.pool, self.stride)
        return kernels.unpad_images(dxp, self.pad)


@register
class GlobalAvgPool2D(Layer):
    """(C, H, W) -> (C,): the mean of each feature map."""

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

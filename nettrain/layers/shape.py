"""Layers that only move data: Flatten and Reshape."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import conlist

from ..shapes import user_to_internal_shape
from .base import Layer, LayerSpec, format_shape, register


class _View(Layer):
    """A layer that gives each sample another shape (``out_shape``) without copying."""

    per_sample_eval = True

    keeps_input = False
    output_is_view = True

    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], *self.out_shape)

    def backward(self, dy):
        return dy.reshape(self._shape)


@register
class Flatten(_View):
    """(C, H, W) or (T, F) -> one vector per sample, in NCHW order."""

    class Spec(LayerSpec):
        type: Literal["flatten"] = "flatten"

    def compute_output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)


@register
class Reshape(_View):
    """Reshape each sample; ``target_shape`` reads like ``input_shape`` (H x W x C for images), -1 infers one axis."""

    class Spec(LayerSpec):
        type: Literal["reshape"] = "reshape"
        target_shape: conlist(int, min_length=1, max_length=3)

    def compute_output_shape(self, in_shape):
        target = list(self.spec.target_shape)
        size = int(np.prod(in_shape))
        if target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
            raise self.shape_error(f"target_shape {target} may hold positive sizes and at most one -1", in_shape)
        if -1 in target:
            known = int(np.prod([d for d in target if d != -1]))
            if size % known:
                raise self.shape_error(
                    f"cannot infer -1 in {target}: {size} values are not a multiple of {known}", in_shape)
            target[target.index(-1)] = size // known
        if int(np.prod(target)) != size:
            raise self.shape_error(
                f"target_shape {'x'.join(map(str, target))} holds {int(np.prod(target))} values but the input "
                f"{format_shape(tuple(in_shape))} holds {size}",
                in_shape,
            )
        return user_to_internal_shape(target)  # H x W x C as written -> internal (C, H, W)

"""Dropout (inverted): zero a fraction ``rate`` in training and scale the rest by 1/(1-rate)."""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from .base import Layer, LayerSpec, register


@register
class Dropout(Layer):
    """Masks come from the layer's own generator, seeded from ``seed`` or the model's seed.

    ``batch_slice``: ``(first row, rows of the whole batch)`` when the input is a slice
    of a larger batch (data-parallel training sets it). The mask is then drawn for
    the whole batch and this slice of it kept, so any number of processes draw the
    masks, and advance the generator, as one process does.
    """

    per_sample_eval = True

    batch_slice: tuple[int, int] | None = None

    keeps_input = False  # backward needs only the mask

    class Spec(LayerSpec):
        type: Literal["dropout"] = "dropout"
        rate: float = Field(0.5, ge=0.0, lt=1.0)
        seed: Optional[int] = None

    def create_params(self, in_shape, rng):
        seed = self.spec.seed if self.spec.seed is not None else int(rng.integers(2**63))
        self.rng = np.random.default_rng(seed)

    def forward(self, x, training=False):
        if not training or self.spec.rate == 0:
            self._mask = None
            return x
        keep = 1.0 - self.spec.rate
        if self.batch_slice is None:
            draws = self.rng.random(x.shape, dtype=np.float32)
        else:
            first, total = self.batch_slice
            draws = self.rng.random((total, *x.shape[1:]), dtype=np.float32)[first:first + len(x)]
        self._mask = (draws < keep).astype(x.dtype) / x.dtype.type(keep)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def cache_bytes(self, batch: int) -> int:
        """The scaled keep mask, one value per input value."""
        return 0 if self.spec.rate == 0 else batch * math.prod(self.in_shape) * self.dtype.itemsize

"""Dropout (inverted): zero a fraction ``rate`` in training and scale the rest by 1/(1-rate)."""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from .base import Layer, LayerSpec, register


def _skip_float32(rng: np.random.Generator, count: int) -> None:
    """Advance ``rng`` past ``count`` float32 draws without making them, to the very state the draws
    leave (PCG64 only).

    PCG64 makes float32 values from 32-bit halves of its 64-bit outputs, the low half
    first, keeping the high half for the next draw. A kept half is used up first;
    ``advance`` then jumps over whole outputs but forgets the last high half, so the
    last skipped output is made (``random_raw``) to restore it; an odd count ends
    with one real draw.
    """
    if count <= 0:
        return
    bit_generator = rng.bit_generator
    state = bit_generator.state
    if state["has_uint32"]:
        state["has_uint32"] = 0
        bit_generator.state = state
        count -= 1
    pairs, odd = divmod(count, 2)
    if pairs:
        bit_generator.advance(pairs - 1)
        last = int(bit_generator.random_raw())
        state = bit_generator.state
        state["has_uint32"], state["uinteger"] = 0, last >> 32
        bit_generator.state = state
    if odd:
        rng.random(1, dtype=np.float32)


def rows_of_draws(rng: np.random.Generator, shape: tuple[int, ...], first: int, total: int) -> np.ndarray:
    """Rows ``first : first + shape[0]`` of ``rng.random((total, *shape[1:]), float32)``, leaving ``rng``
    where that whole draw leaves it, at the cost of the rows' own draws only (PCG64; another bit generator
    draws all rows)."""
    if not isinstance(rng.bit_generator, np.random.PCG64):
        return rng.random((total, *shape[1:]), dtype=np.float32)[first:first + shape[0]]
    per_row = math.prod(shape[1:])
    _skip_float32(rng, first * per_row)
    draws = rng.random(shape, dtype=np.float32)
    _skip_float32(rng, (total - first - shape[0]) * per_row)
    return draws


@register
class Dropout(Layer):
    """Masks come from the layer's own generator, seeded from ``seed`` or the model's seed.

    ``batch_slice``: ``(first row, rows of the whole batch)`` when the input is a slice
    of a larger batch (data-parallel training sets it). The mask is then drawn for
    the whole batch and this slice of it kept, so any number of processes draw the
    masks, and advance the generator, as one process does (skipping the other rows'
    draws, :func:`rows_of_draws`).
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
            draws = rows_of_draws(self.rng, x.shape, *self.batch_slice)
        self._mask = (draws < keep).astype(x.dtype) / x.dtype.type(keep)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def cache_bytes(self, batch: int) -> int:
        """The scaled keep mask, one value per input value."""
        return 0 if self.spec.rate == 0 else batch * math.prod(self.in_shape) * self.dtype.itemsize

"""Mini-batches in an order that depends only on ``(seed, epoch)``, with optional augmentation."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import DataError
from .load import Split
from .spec import AugmentSpec


def random_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad ``x`` ``(N, C, H, W)`` by ``padding`` and cut one HxW window per sample -> ``(N, C, H, W)``.

    The windows come from a strided view of the padded batch, gathered with one
    fancy index, so there is no Python loop.
    """
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W)
    dy = rng.integers(0, 2 * padding + 1, n)
    dx = rng.integers(0, 2 * padding + 1, n)
    return windows[np.arange(n), :, dy, dx]


def horizontal_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image of ``x`` ``(N, C, H, W)`` left-right with probability ``p``."""
    flip = rng.random(len(x)) < p
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def augment_batch(x: np.ndarray, augment: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """Random crop then horizontal flip, as ``augment`` asks; ``x`` ``(N, C, H, W)``."""
    if augment.random_crop_padding:
        x = random_crop(x, augment.random_crop_padding, rng)
    if augment.horizontal_flip:
        x = horizontal_flip(x, rng)
    return np.ascontiguousarray(x)


class Batches:
    """Mini-batches of a split for one epoch, reproducible from ``(seed, epoch)`` alone.

    The order is ``default_rng([seed, epoch]).permutation(n)`` (or ``arange(n)``
    without shuffling) and batch ``b`` is augmented with ``default_rng([seed,
    epoch, b])``, so a run resumed at ``start_batch`` yields exactly the batches
    an uninterrupted run would have.  The last, partial batch is included.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, augment: AugmentSpec | None = None, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0 or epoch < 0 or start_batch < 0:
            raise ValueError("seed, epoch and start_batch must be >= 0")
        if augment is not None and augment.active and split.x.ndim != 4:
            raise DataError(f"augmentation needs images (N, C, H, W), got shape {split.x.shape}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.augment = augment if augment is not None and augment.active else None
        self.start_batch = start_batch

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch (the last one may be partial)."""
        return math.ceil(len(self.split) / self.batch_size)

    def __len__(self) -> int:
        """Batches this iterator yields (those from ``start_batch`` on)."""
        return max(0, self.num_batches - self.start_batch)

    def order(self) -> np.ndarray:
        n = len(self.split)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.order()
        for b in range(self.start_batch, self.num_batches):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb, yb = self.split.x[idx], self.split.y[idx]
            if self.augment is not None:
                xb = augment_batch(xb, self.augment, np.random.default_rng([self.seed, self.epoch, b]))
            yield xb, yb

"""Synthetic data: random class prototypes plus noise, for tests and quick experiments."""

from __future__ import annotations

import numpy as np

from ..shapes import user_to_internal_shape
from .common import RawData, Shape
from .spec import SyntheticSpec


def make_synthetic(spec: SyntheticSpec, input_shape: Shape | None = None) -> RawData:
    """Class prototypes (uniform noise images) plus Gaussian noise, as uint8, deterministic by ``spec.seed``.

    Images come out ``(N, C, H, W)``; a ``(T, F)`` shape is stored as ``(N, 1, T, F)``.
    """
    if spec.shape is not None:
        shape = user_to_internal_shape(spec.shape)
    else:
        shape = tuple(input_shape) if input_shape else (1, 28, 28)
    natural = (1, *shape) if len(shape) == 2 else shape
    rng = np.random.default_rng(spec.seed)
    prototypes = rng.random((spec.num_classes, *natural))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, spec.num_classes, n)
        x = prototypes[y] + spec.noise * rng.standard_normal((n, *natural))
        return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = sample(spec.train_size)
    x_test, y_test = sample(spec.test_size) if spec.test_size else (None, None)
    classes = [f"class_{k}" for k in range(spec.num_classes)]
    return RawData(x_train, y_train, x_test, y_test, classes)

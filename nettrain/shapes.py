"""Image layouts: users write ``H x W x C`` (HWC), arrays are ``(C, H, W)`` (CHW), batches NCHW.

Config shapes (``input_shape: [28, 28, 1]``) and most image files are HWC;
layers, kernels and data splits work on CHW samples.  These are the only
places where one becomes the other.  Array conversions return views (a
transpose or a new axis, no copy); wrap them in ``np.ascontiguousarray`` where a
packed array is needed.  Sequence ``(T, F)`` and vector ``(F,)`` shapes have no
channel axis and pass through unchanged.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

Shape = tuple[int, ...]


def user_to_internal_shape(shape: Iterable[int]) -> Shape:
    """``[H, W, C]`` -> ``(C, H, W)``; ``[T, F]`` and ``[F]`` unchanged."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3:
        h, w, c = shape
        return (c, h, w)
    return shape


def internal_to_user_shape(shape: Iterable[int]) -> list[int]:
    """``(C, H, W)`` -> ``[H, W, C]``, as a config writes it; ``(T, F)`` and ``(F,)`` unchanged."""
    shape = [int(d) for d in shape]
    if len(shape) == 3:
        c, h, w = shape
        return [h, w, c]
    return shape


def format_shape(shape: Iterable[int] | None) -> str:
    """Shapes as the user writes them: images ``(C, H, W)`` as ``HxWxC``, others joined by x."""
    if shape is None:
        return "?"
    shape = tuple(shape)
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(str(d) for d in shape)


def image_to_chw(image: np.ndarray) -> np.ndarray:
    """One image ``(H, W, C)`` -> ``(C, H, W)``; a grey ``(H, W)`` image -> ``(1, H, W)``."""
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def images_to_nchw(images: np.ndarray) -> np.ndarray:
    """A stack ``(N, H, W, C)`` -> ``(N, C, H, W)``; grey ``(N, H, W)`` -> ``(N, 1, H, W)``."""
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)

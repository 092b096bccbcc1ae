"""The shape of a 2-D window op (convolution or pooling), apart from the batch size.

Padding is given as four ints ``(top, bottom, left, right)`` so that Keras/TF
``same`` padding, which can be asymmetric, needs no special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Pad4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a 2-D window op except the batch size: input (C, H, W) to (OH, OW)."""

    in_chw: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: Pad4
    out_hw: tuple[int, int]

    @property
    def rows(self) -> int:
        """Rows of the column matrix: C * kh * kw."""
        return self.in_chw[0] * self.kernel[0] * self.kernel[1]

    @property
    def pixels(self) -> int:
        """Output pixels per sample and channel: OH * OW."""
        return self.out_hw[0] * self.out_hw[1]

    @property
    def padded_hw(self) -> tuple[int, int]:
        _, h, w = self.in_chw
        top, bottom, left, right = self.pad
        return h + top + bottom, w + left + right


def argmax_dtype(g: ConvGeometry) -> type:
    """The smallest integer type that holds a pooling window offset i*pw + j (and -1)."""
    return np.int8 if g.kernel[0] * g.kernel[1] < 128 else np.int32

"""Conv1D: 1-D convolution on (N, C, L) input, run by the 2-D kernels with the input viewed as (N, C, 1, L)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import NonNegativeInt, PositiveInt

from .. import kernels
from .base import Shape, register
from .conv import Conv2D, resolve_padding, window_output_size


@register
class Conv1D(Conv2D):
    """y[n, f] = sum_c x[n, c] * W[f, c] + b[f], over windows of k steps; input C x L, weights (F, C, k).

    Channels come first, as in torch.nn.Conv1d: the input is ``C x L`` (channels x length)
    and the output ``filters x L_out``. Padding ``same`` gives ``L_out = ceil(L / strides)``.
    Elsewhere a rank-2 shape is a sequence ``T x F`` with features last: a batchnorm, dense or
    recurrent layer after a conv1d treats its L positions as the features.
    """

    class Spec(Conv2D.Spec):  # the conv2d fields, with single numbers for the window
        type: Literal["conv1d"] = "conv1d"
        kernel_size: PositiveInt
        strides: PositiveInt = 1
        padding: Union[Literal["valid", "same"], NonNegativeInt] = "valid"
        dilation: PositiveInt = 1

    def geometry_for(self, in_shape: Shape) -> kernels.ConvGeometry:
        """The 2-D geometry of a height-1 image: kernel (1, k), no padding along the height."""
        s = self.spec
        c, length = in_shape
        kernel, stride, dilation = (1, s.kernel_size), (1, s.strides), (1, s.dilation)
        effective = (1, s.dilation * (s.kernel_size - 1) + 1)
        padding = s.padding if isinstance(s.padding, str) else (0, s.padding)
        pad = resolve_padding(padding, (1, length), effective, stride)
        out_hw = window_output_size(self, in_shape, (1, length), effective, stride, pad, axes=("height", "length"))
        return kernels.ConvGeometry((c, 1, length), kernel, stride, dilation, pad, out_hw)

    def compute_output_shape(self, in_shape: Shape) -> Shape:
        self.require_rank(in_shape, (2,), "channels x length (C x L); add a reshape before it")
        return (self.spec.filters, self.geometry_for(in_shape).out_hw[1])

    def create_params(self, in_shape: Shape, rng) -> None:
        super().create_params(in_shape, rng)
        f, c, _, k = self.params["kernel"].shape
        self.params["kernel"] = self.params["kernel"].reshape(f, c, k)  # as torch.nn.Conv1d stores it

    def forward(self, x, training=False):
        n, c, length = x.shape
        y = super().forward(x.reshape(n, c, 1, length), training)
        return y.reshape(n, self.spec.filters, -1)

    def backward(self, dy):
        n, f, length = dy.shape
        dx = super().backward(dy.reshape(n, f, 1, length))
        return None if dx is None else dx.reshape(n, *self.in_shape)

"""Conv2D: 2-D convolution (cross-correlation, as in every framework) on NCHW input."""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

import numpy as np
from pydantic import AfterValidator, Field, PositiveInt, conlist

from .. import kernels
from ..initializers import NAMES_NOTE, InitializerSpec, initialize
from .activations import ActivationName, FusedActivation
from .base import Layer, LayerSpec, Shape, register

IntPair = Union[PositiveInt, conlist(PositiveInt, min_length=2, max_length=2)]
NonNegPair = Union[int, conlist(int, min_length=2, max_length=2)]


def as_pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _padding_nonnegative(value):
    if not isinstance(value, str) and min(as_pair(value)) < 0:
        raise ValueError("padding must be 'valid', 'same', or non-negative int(s)")
    return value


Padding = Annotated[Union[Literal["valid", "same"], NonNegPair], AfterValidator(_padding_nonnegative)]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TF 'same': output ceil(n/s); the odd pixel of padding goes after (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, in_hw, kernel, stride) -> kernels.Pad4:
    """``valid`` | ``same`` | int | (ph, pw) -> (top, bottom, left, right) for an effective kernel."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        return (*same_padding(in_hw[0], kernel[0], stride[0]), *same_padding(in_hw[1], kernel[1], stride[1]))
    ph, pw = as_pair(padding)
    return (ph, ph, pw, pw)


def window_output_size(layer: Layer, in_shape: Shape, in_hw, kernel, stride, pad: kernels.Pad4,
                       what: str = "kernel", axes: tuple[str, str] = ("height", "width")):
    """(n + p_before + p_after - f)/s + 1 for each of the two window axes ``in_hw`` (named ``axes``)
    of the input ``in_shape``; a ShapeError spelling out the arithmetic if < 1."""
    out = []
    for axis, n, f, s, p0, p1 in ((axes[0], in_hw[0], kernel[0], stride[0], pad[0], pad[1]),
                                   (axes[1], in_hw[1], kernel[1], stride[1], pad[2], pad[3])):
        size = (n + p0 + p1 - f) // s + 1
        if n + p0 + p1 - f < 0:
            pad_text = f"2*{p0}" if p0 == p1 else f"{p0}+{p1}"
            raise layer.shape_error(
                f"{what} {f} does not fit the {axis} {n}: ({n} + {pad_text} - {f})/{s} + 1 = "
                f"{(n + p0 + p1 - f) / s + 1:g}; use a smaller {what}, padding: same, or a larger input",
                in_shape,
            )
        out.append(size)
    return tuple(out)


@register
class Conv2D(Layer):
    """y[n, f] = sum_c x[n, c] * W[f, c] + b[f], over kh x kw windows; weights (F, C, kh, kw)."""

    per_sample_eval = True

    class Spec(LayerSpec):
        type: Literal["conv2d"] = "conv2d"
        filters: PositiveInt
        kernel_size: IntPair
        strides: IntPair = 1
        padding: Padding = "valid"
        dilation: IntPair = 1
        use_bias: bool = True
        activation: Optional[ActivationName] = None
        kernel_initializer: Optional[InitializerSpec] = Field(None, description=(
            "null: he_normal when the activation is relu, leaky_relu, elu or left out (batchnorm and relu "
            f"usually follow), else glorot_uniform (linear, tanh, sigmoid, softmax). {NAMES_NOTE}"))
        bias_initializer: InitializerSpec = "zeros"

    def geometry_for(self, in_shape: Shape) -> kernels.ConvGeometry:
        """Kernel, strides, dilation, padding and output size on ``in_shape`` (C, H, W)."""
        s = self.spec
        c, h, w = in_shape
        kernel, stride, dilation = as_pair(s.kernel_size), as_pair(s.strides), as_pair(s.dilation)
        effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        pad = resolve_padding(s.padding, (h, w), effective, stride)
        out_hw = window_output_size(self, in_shape, (h, w), effective, stride, pad)
        return kernels.ConvGeometry((c, h, w), kernel, stride, dilation, pad, out_hw)

    def compute_output_shape(self, in_shape: Shape) -> Shape:
        self.require_rank(in_shape, (3,), "an image (height x width x channels); add a reshape before it")
        return (self.spec.filters, *self.geometry_for(in_shape).out_hw)

    def create_params(self, in_shape: Shape, rng):
        s = self.spec
        g = self.geometry = self.geometry_for(in_shape)
        self.kernel, self.stride, self.dilation, self.pad, self.out_hw = g.kernel, g.stride, g.dilation, g.pad, g.out_hw
        c = in_shape[0]
        kh, kw = self.kernel
        fan_in, fan_out = c * kh * kw, s.filters * kh * kw
        init = s.kernel_initializer or ("he_normal" if s.activation in ("relu", "leaky_relu", "elu", None) else "glorot_uniform")
        self.params["kernel"] = initialize(init, (s.filters, c, kh, kw), fan_in, fan_out, rng)
        if s.use_bias:
            self.params["bias"] = initialize(s.bias_initializer, (s.filters,), fan_in, fan_out, rng)
        self.act = FusedActivation.named(s.activation)
        self._kept_cols: dict = {}  # the columns' arrays, reused from step to step

    def macs(self) -> int:
        c = self.in_shape[0]
        return int(np.prod(self.out_shape)) * c * self.kernel[0] * self.kernel[1]

    def keeps_columns(self) -> bool:
        """Whether training keeps the im2col columns for backward: when they cost little memory, at most
        twice the input, as for a patchifying conv (stride >= kernel); else backward builds them again."""
        g = self.geometry
        return g.rows * g.pixels <= 2 * math.prod(g.in_chw)

    @property
    def keeps_output(self) -> bool:
        return self.act.keeps_output

    def cache_bytes(self, batch: int) -> int:
        g, item = self.geometry, self.dtype.itemsize
        cols = batch * g.rows * g.pixels * item if self.keeps_columns() else 0
        return cols + self.act.cache_bytes(self.output_bytes(batch))

    def scratch_bytes(self, batch: int, workers: int) -> int:
        """Each thread's batch chunk of columns (unless kept) and GEMM output (see nettrain.kernels.gemm)."""
        g, item = self.geometry, self.dtype.itemsize
        chunks = kernels.pool.batch_chunks(batch, g.rows * g.pixels * item, workers)
        largest = max(stop - start for start, stop in chunks)
        rows = self.spec.filters + (0 if self.keeps_columns() else g.rows)
        return min(workers, len(chunks)) * rows * largest * g.pixels * item

    def forward(self, x, training=False):
        x = np.ascontiguousarray(x)
        ops = kernels.backend(x.dtype)
        # backward builds the columns again from x, chunk by chunk, unless they cost little
        # memory: at most twice the input, as for a patchifying conv (stride >= kernel)
        g = self.geometry
        keep = training and self.keeps_columns()
        self._cols = self._kept_cols if keep else None
        # a ReLU runs in the copy out of the GEMM's layout, and its mask in the copy back in backward
        relu = self.act.is_relu
        z = kernels.conv2d_forward(x, self.params["kernel"], self.params.get("bias"), g, ops, self._cols, relu)
        self._x = x
        return self.act.applied(z) if relu else self.act.forward(z)

    def backward(self, dy):
        relu_output = self.act.output if self.act.is_relu else None
        dy = np.ascontiguousarray(dy if relu_output is not None else self.act.backward(dy))
        ops = kernels.backend(dy.dtype)
        dx, dkernel, dbias = kernels.conv2d_backward(
            self._x, self.params["kernel"], dy, self.geometry, "bias" in self.params, ops, self.input_grad,
            self._cols, relu_output,
        )
        self._cols = None
        self.grads["kernel"][...] = dkernel
        if dbias is not None:
            self.grads["bias"][...] = dbias
        return dx

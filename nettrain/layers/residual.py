"""Residual block: y = act(body(x) + shortcut(x)).

Shortcuts:
- ``identity``: x itself (shapes must already match);
- ``projection``: a 1x1 convolution with stride s (no bias) followed by BatchNorm;
- ``zero_pad``: the ResNet paper's option A: subsample x by the stride and pad
  the new channels with zeros (split evenly before and after), no parameters.

A bottleneck block (1x1 reduce, 3x3, 1x1 expand) is just a body of three convs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
from pydantic import PositiveInt

from .. import kernels
from .activations import ActivationName, FusedActivation
from .base import Layer, LayerSpec, format_shape, register
from .container import Sequential
from .conv import Conv2D
from .inference import residual_channels_last
from .norm import BatchNorm

if TYPE_CHECKING:  # the real type is bound in layers/__init__.py once every layer is registered
    AnyLayerSpec = LayerSpec


@register
class Residual(Layer):
    per_sample_eval = True

    class Spec(LayerSpec):
        type: Literal["residual"] = "residual"
        body: list["AnyLayerSpec"]
        shortcut: Literal["identity", "projection", "zero_pad"] = "identity"
        strides: Optional[PositiveInt] = None
        activation: Optional[ActivationName] = "relu"

    def __init__(self, spec=None, name=None, body: list[Layer] | None = None, **fields):
        super().__init__(spec, name=name, **fields)
        self.body = Sequential(body or [], name="body")
        self.body_layers = self.body.layers
        self.shortcut = Sequential([], name="shortcut")  # the projection's conv and BatchNorm
        self.shortcut_layers = self.shortcut.layers
        self.forward_hook = None

    @classmethod
    def from_spec(cls, spec, name, make_child):
        return cls(spec, name=name, body=[make_child(child) for child in spec.body])

    def children(self) -> list[Layer]:
        return [*self.body_layers, *self.shortcut_layers]

    def _stride(self, in_shape, body_shape) -> int:
        if self.spec.strides is not None:
            return self.spec.strides
        if len(in_shape) == 3 and len(body_shape) == 3 and body_shape[1] and in_shape[1] != body_shape[1]:
            return max(1, round(in_shape[1] / body_shape[1]))
        return 1

    def compute_output_shape(self, in_shape):
        if not self.body_layers:
            raise self.shape_error("the body is empty; give it at least one layer", in_shape)
        body_shape = tuple(self.body.compute_output_shape(in_shape))
        kind = self.spec.shortcut
        if kind == "identity":
            short_shape = tuple(in_shape)
        else:  # a 1x1 convolution or a subsampling with the stride: ceil(n / s) rows and columns
            self.require_rank(in_shape, (3,), f"an image for a {kind} shortcut")
            c, h, w = in_shape
            if kind == "zero_pad" and body_shape[0] < c:
                raise self.shape_error(
                    f"zero_pad cannot shrink channels from {c} to {body_shape[0]}; use shortcut: projection", in_shape
                )
            stride = self._stride(in_shape, body_shape)
            short_shape = (body_shape[0], -(-h // stride), -(-w // stride))
        if short_shape != body_shape:
            hint = self._hint(kind, in_shape, body_shape)
            raise self.shape_error(
                f"cannot add the body output {format_shape(body_shape)} to the {kind} shortcut "
                f"{format_shape(short_shape)}{hint}",
                in_shape,
            )
        return body_shape

    def create_params(self, in_shape, rng):
        body_shape = self.body.build(in_shape, rng)
        self.stride = self._stride(in_shape, body_shape)
        if self.spec.shortcut == "projection":
            conv = Conv2D(name="shortcut_conv", filters=body_shape[0], kernel_size=1, strides=self.stride, use_bias=False)
            self.shortcut_layers[:] = [conv, BatchNorm(name="shortcut_bn")]
            self.shortcut.build(in_shape, rng)
        elif self.spec.shortcut == "zero_pad":
            extra = body_shape[0] - in_shape[0]
            self.channel_pad = (extra // 2, extra - extra // 2)
        self.act = FusedActivation.named(self.spec.activation)

    @staticmethod
    def _hint(kind, in_shape, body_shape) -> str:
        if kind == "identity" and len(in_shape) == 3 and len(body_shape) == 3:
            if body_shape[0] >= in_shape[0]:
                return "; use shortcut: zero_pad (no parameters) or projection"
            return "; use shortcut: projection"
        if kind != "projection" and len(in_shape) == 3:
            return "; use shortcut: projection"
        return "; check the body's strides and padding (use padding: same)"

    def macs(self) -> int:
        return sum(layer.macs() for layer in self.children())

    def _shortcut_operand(self, x, training) -> tuple[np.ndarray, int, int]:
        """What the sum adds to the body's output: ``(shortcut, stride, channel offset)`` for the
        ``residual_add`` kernel, which subsamples a zero-padded shortcut itself."""
        kind = self.spec.shortcut
        if kind == "zero_pad":
            return x, self.stride, self.channel_pad[0]
        if kind == "projection":
            return self.shortcut.forward(x, training), 1, 0
        return x, 1, 0

    def _shortcut_backward(self, dy):
        kind = self.spec.shortcut
        if kind == "identity":
            return dy
        if kind == "projection":
            return self.shortcut.backward(dy)
        s = self.stride
        before, after = self.channel_pad
        dx = np.zeros((dy.shape[0], *self.in_shape), dtype=dy.dtype)
        dx[:, :, ::s, ::s] = dy[:, before : dy.shape[1] - after]
        return dx

    @property
    def keeps_input(self) -> bool:
        return any(branch[0].keeps_input for branch in self.branches() if branch)

    @property
    def keeps_output(self) -> bool:
        return self.act.keeps_output

    def branches(self) -> list[list[Layer]]:
        return [branch for branch in (self.body_layers, self.shortcut_layers) if branch]

    def cache_bytes(self, batch: int) -> int:
        return self.act.cache_bytes(self.output_bytes(batch))

    def forward(self, x, training=False):
        self.body.forward_hook = self.shortcut.forward_hook = self.forward_hook
        if not training and self.forward_hook is None:
            y = residual_channels_last(self, x)
            if y is not None:
                return y
        body = self.body.forward(x, training)
        shortcut, stride, offset = self._shortcut_operand(x, training)
        relu = self.act.is_relu
        add = kernels.backend(body.dtype).residual_add  # the sum, the shortcut's subsampling and a ReLU in one pass
        if training or self.forward_hook is not None:
            z = add(body, shortcut, stride, offset, relu)
            return self.act.applied(z) if relu else self.act.forward(z)
        # eval keeps nothing: the sum goes into the body's output, unless the body handed its input on
        own = not np.may_share_memory(body, x) and not np.may_share_memory(body, shortcut)
        z = add(body, shortcut, stride, offset, relu, out=body if own else None)
        activation = self.act.activation
        return z if relu or activation is None else activation.forward(z)

    def backward(self, dy):
        dy = self.act.backward(dy)
        dx = self.body.backward(dy)
        if isinstance(dx, np.ndarray) and dx.base is None and dx.flags.writeable and not np.shares_memory(dx, dy):
            # the body's own fresh array: add the shortcut's gradient into it, touching only its cells
            if self.spec.shortcut == "zero_pad":
                s, (before, after) = self.stride, self.channel_pad

                def add(n0, n1):  # ranges of samples on the worker threads
                    dx[n0:n1, :, ::s, ::s] += dy[n0:n1, before : dy.shape[1] - after]

                kernels.over_batch(add, dx.shape[0], dy.size)
            else:  # the sum kernel, split over the worker threads
                kernels.backend(dx.dtype).residual_add(dx, self._shortcut_backward(dy), out=dx)
            return dx
        return dx + self._shortcut_backward(dy)

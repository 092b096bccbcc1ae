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

from .activations import ACTIVATIONS, ActivationName
from .base import Layer, LayerSpec, format_shape, register
from .container import Sequential
from .conv import Conv2D
from .norm import BatchNorm

if TYPE_CHECKING:  # the real type is bound in layers/__init__.py once every layer is registered
    AnyLayerSpec = LayerSpec


@register
class Residual(Layer):
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
        self.shortcut_layers: list[Layer] = []
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

    def build(self, in_shape, rng):
        self.in_shape = tuple(in_shape)
        if not self.body_layers:
            raise self.shape_error("the body is empty; give it at least one layer")
        body_shape = self.body.build(self.in_shape, rng)
        kind = self.spec.shortcut
        self.stride = self._stride(self.in_shape, body_shape)
        if kind == "projection":
            self.require_rank(in_shape, (3,), "an image for a projection shortcut")
            conv = Conv2D(name="shortcut_conv", filters=body_shape[0], kernel_size=1, strides=self.stride, use_bias=False)
            self.shortcut_layers = [conv, BatchNorm(name="shortcut_bn")]
            short_shape = Sequential(self.shortcut_layers).build(self.in_shape, rng)
        elif kind == "zero_pad":
            self.require_rank(in_shape, (3,), "an image for a zero_pad shortcut")
            c, h, w = in_shape
            if body_shape[0] < c:
                raise self.shape_error(
                    f"zero_pad cannot shrink channels from {c} to {body_shape[0]}; use shortcut: projection"
                )
            extra = body_shape[0] - c
            self.channel_pad = (extra // 2, extra - extra // 2)
            short_shape = (body_shape[0], -(-h // self.stride), -(-w // self.stride))
        else:
            short_shape = self.in_shape
        if tuple(short_shape) != tuple(body_shape):
            hint = self._hint(kind, self.in_shape, body_shape)
            raise self.shape_error(
                f"cannot add the body output {format_shape(body_shape)} to the {kind} shortcut "
                f"{format_shape(tuple(short_shape))}{hint}"
            )
        self.act = ACTIVATIONS[self.spec.activation] if self.spec.activation else None
        self.out_shape = tuple(body_shape)
        return self.out_shape

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

    def _shortcut_forward(self, x, training):
        kind = self.spec.shortcut
        if kind == "identity":
            return x
        if kind == "projection":
            for layer in self.shortcut_layers:
                x = layer.forward(x, training)
                if self.forward_hook is not None:
                    self.forward_hook(layer, x)
            return x
        s = self.stride
        sub = x[:, :, ::s, ::s]
        return np.pad(sub, ((0, 0), self.channel_pad, (0, 0), (0, 0)))

    def _shortcut_backward(self, dy):
        kind = self.spec.shortcut
        if kind == "identity":
            return dy
        if kind == "projection":
            for layer in reversed(self.shortcut_layers):
                dy = layer.backward(dy)
            return dy
        s = self.stride
        before, after = self.channel_pad
        dx = np.zeros((dy.shape[0], *self.in_shape), dtype=dy.dtype)
        dx[:, :, ::s, ::s] = dy[:, before : dy.shape[1] - after]
        return dx

    def forward(self, x, training=False):
        self.body.forward_hook = self.forward_hook
        z = self.body.forward(x, training) + self._shortcut_forward(x, training)
        if self.act is None:
            return z
        y = self.act.forward(z)
        self._z, self._y = z, y
        return y

    def backward(self, dy):
        if self.act is not None:
            dy = self.act.backward(dy, self._z, self._y)
        return self.body.backward(dy) + self._shortcut_backward(dy)

    def get_config(self):
        config = super().get_config()
        config["body"] = [layer.get_config() for layer in self.body_layers]
        return config

"""Dense: y = x W + b on the last axis, so it also applies per timestep of (N, T, F)."""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from pydantic import PositiveInt

from ..initializers import InitializerSpec, initialize
from .. import kernels
from .activations import ACTIVATIONS, ActivationName
from .base import Layer, LayerSpec, register


@register
class Dense(Layer):
    """Fully connected layer; kernel (in, units)."""

    class Spec(LayerSpec):
        type: Literal["dense"] = "dense"
        units: PositiveInt
        activation: Optional[ActivationName] = None
        use_bias: bool = True
        kernel_initializer: Optional[InitializerSpec] = None
        bias_initializer: InitializerSpec = "zeros"

    def build(self, in_shape, rng):
        self.in_shape = tuple(in_shape)
        if len(in_shape) == 3:
            raise self.shape_error("expects a vector or a sequence; add a flatten or global_avgpool2d before it")
        s = self.spec
        fan_in = in_shape[-1]
        init = s.kernel_initializer or ("he_normal" if s.activation in ("relu", "leaky_relu", "elu") else "glorot_uniform")
        self.params["kernel"] = initialize(init, (fan_in, s.units), fan_in, s.units, rng)
        if s.use_bias:
            self.params["bias"] = initialize(s.bias_initializer, (s.units,), fan_in, s.units, rng)
        self.act = ACTIVATIONS[s.activation] if s.activation else None
        self.zero_grads()
        self.out_shape = (*in_shape[:-1], s.units)
        return self.out_shape

    def macs(self) -> int:
        return int(np.prod(self.in_shape)) * self.spec.units

    def forward(self, x, training=False):
        self._x = x
        f_in, units = self.params["kernel"].shape
        x2 = np.ascontiguousarray(x).reshape(-1, f_in)
        z = kernels.matmul(x2, self.params["kernel"], np.empty((x2.shape[0], units), np.result_type(x2, self.params["kernel"])))
        z = z.reshape(*x.shape[:-1], units)
        if "bias" in self.params:
            z += self.params["bias"]
        if self.act is None:
            return z
        y = self.act.forward(z)
        self._z, self._y = z, y
        return y

    def backward(self, dy):
        if self.act is not None:
            dy = self.act.backward(dy, self._z, self._y)
        f_in, units = self.params["kernel"].shape
        x2, dy2 = self._x.reshape(-1, f_in), dy.reshape(-1, units)
        kernels.matmul_tn(x2, np.ascontiguousarray(dy2), self.grads["kernel"])
        if "bias" in self.params:
            self.grads["bias"][...] = dy2.sum(axis=0)
        if not self.input_grad:
            return None
        dx = kernels.matmul(dy2, self.params["kernel"].T, np.empty((dy2.shape[0], f_in), np.result_type(dy2, self.params["kernel"])))
        return dx.reshape(*dy.shape[:-1], f_in)

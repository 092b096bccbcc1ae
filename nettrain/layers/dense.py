"""Dense: y = x W + b on the last axis, so it also applies per timestep of (N, T, F)."""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from pydantic import Field, PositiveInt

from ..initializers import NAMES_NOTE, InitializerSpec, initialize
from .. import kernels
from .activations import ActivationName, FusedActivation
from .base import Layer, LayerSpec, register


@register
class Dense(Layer):
    """Fully connected layer; kernel (in, units)."""

    per_sample_eval = True

    class Spec(LayerSpec):
        type: Literal["dense"] = "dense"
        units: PositiveInt
        activation: Optional[ActivationName] = None
        use_bias: bool = True
        kernel_initializer: Optional[InitializerSpec] = Field(None, description=(
            "null: he_normal when the activation is relu, leaky_relu or elu, else glorot_uniform "
            f"(no activation, linear, tanh, sigmoid, softmax). {NAMES_NOTE}"))
        bias_initializer: InitializerSpec = "zeros"

    def compute_output_shape(self, in_shape):
        if len(in_shape) == 3:
            raise self.shape_error(
                "expects a vector or a sequence; add a flatten or global_avgpool2d before it", in_shape)
        return (*in_shape[:-1], self.spec.units)

    def create_params(self, in_shape, rng):
        s = self.spec
        fan_in = in_shape[-1]
        init = s.kernel_initializer or ("he_normal" if s.activation in ("relu", "leaky_relu", "elu") else "glorot_uniform")
        self.params["kernel"] = initialize(init, (fan_in, s.units), fan_in, s.units, rng)
        if s.use_bias:
            self.params["bias"] = initialize(s.bias_initializer, (s.units,), fan_in, s.units, rng)
        self.act = FusedActivation.named(s.activation)

    def macs(self) -> int:
        return int(np.prod(self.in_shape)) * self.spec.units

    @property
    def keeps_output(self) -> bool:
        return self.act.keeps_output

    def cache_bytes(self, batch: int) -> int:
        return self.act.cache_bytes(self.output_bytes(batch))

    def backward_bytes(self, batch: int, workers: int) -> int:
        """The gradients, and the per-thread partial sums of the kernel's gradient."""
        rows = batch * math.prod(self.in_shape[:-1])
        kernel = self.params["kernel"]
        return super().backward_bytes(batch, workers) + kernels.matmul_tn_partials_bytes(
            rows, kernel.size, kernel.itemsize, workers)

    def forward(self, x, training=False):
        self._x = x
        f_in, units = self.params["kernel"].shape
        x2 = np.ascontiguousarray(x).reshape(-1, f_in)
        z = kernels.matmul(x2, self.params["kernel"], np.empty((x2.shape[0], units), np.result_type(x2, self.params["kernel"])))
        z = z.reshape(*x.shape[:-1], units)
        if "bias" in self.params:
            z += self.params["bias"]
        return self.act.forward(z)

    def backward(self, dy):
        dy = self.act.backward(dy)
        f_in, units = self.params["kernel"].shape
        x2, dy2 = self._x.reshape(-1, f_in), dy.reshape(-1, units)
        kernels.matmul_tn(x2, np.ascontiguousarray(dy2), self.grads["kernel"])
        if "bias" in self.params:
            self.grads["bias"][...] = dy2.sum(axis=0)
        if not self.input_grad:
            return None
        dx = kernels.matmul(dy2, self.params["kernel"].T, np.empty((dy2.shape[0], f_in), np.result_type(dy2, self.params["kernel"])))
        return dx.reshape(*dy.shape[:-1], f_in)

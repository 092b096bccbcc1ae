"""BatchNorm: per channel for images (N, C, H, W), per feature for (N, F) and (N, T, F)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat

from .base import Layer, LayerSpec, register


@register
class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta.

    Training uses the batch statistics and updates the running ones with the
    Keras convention ``running = momentum * running + (1 - momentum) * batch``
    (running variance unbiased, as in PyTorch); evaluation uses the running ones.
    """

    class Spec(LayerSpec):
        type: Literal["batchnorm"] = "batchnorm"
        momentum: float = Field(0.9, ge=0.0, lt=1.0)
        epsilon: PositiveFloat = 1e-5
        center: bool = True
        scale: bool = True

    def build(self, in_shape, rng):
        self.in_shape = tuple(in_shape)
        # feature axis: channels (axis 1) for images, the last axis otherwise
        self.axes = (0, 2, 3) if len(in_shape) == 3 else tuple(range(len(in_shape)))
        features = in_shape[0] if len(in_shape) == 3 else in_shape[-1]
        self.bshape = (1, features, 1, 1) if len(in_shape) == 3 else (features,)
        if self.spec.scale:
            self.params["gamma"] = np.ones(features, np.float32)
        if self.spec.center:
            self.params["beta"] = np.zeros(features, np.float32)
        self.state["running_mean"] = np.zeros(features, np.float32)
        self.state["running_var"] = np.ones(features, np.float32)
        self.zero_grads()
        self.out_shape = self.in_shape
        return self.out_shape

    def _affine(self, xhat):
        if "gamma" in self.params:
            xhat = xhat * self.params["gamma"].reshape(self.bshape)
        if "beta" in self.params:
            xhat = xhat + self.params["beta"].reshape(self.bshape)
        return xhat

    def forward(self, x, training=False):
        eps = x.dtype.type(self.spec.epsilon)
        if training:
            mean = x.mean(axis=self.axes)
            xc = x - mean.reshape(self.bshape)
            var = np.mean(xc * xc, axis=self.axes)
            m = x.size // mean.size
            mom = self.spec.momentum
            self.state["running_mean"] *= mom
            self.state["running_mean"] += (1 - mom) * mean
            self.state["running_var"] *= mom
            self.state["running_var"] += (1 - mom) * var * (m / max(m - 1, 1))
        else:
            mean, var = self.state["running_mean"].astype(x.dtype), self.state["running_var"].astype(x.dtype)
            xc = x - mean.reshape(self.bshape)
        inv_std = 1 / np.sqrt(var + eps)
        xhat = xc * inv_std.reshape(self.bshape)
        self._xhat, self._inv_std, self._training = xhat, inv_std, training
        return self._affine(xhat)

    def backward(self, dy):
        xhat, inv_std = self._xhat, self._inv_std
        if "beta" in self.params:
            self.grads["beta"][...] = dy.sum(axis=self.axes)
        if "gamma" in self.params:
            self.grads["gamma"][...] = (dy * xhat).sum(axis=self.axes)
            dxhat = dy * self.params["gamma"].reshape(self.bshape)
        else:
            dxhat = dy
        if not self._training:  # running statistics are constants
            return dxhat * inv_std.reshape(self.bshape)
        # closed form: dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        mean_dxhat = dxhat.mean(axis=self.axes).reshape(self.bshape)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=self.axes).reshape(self.bshape)
        return (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * inv_std.reshape(self.bshape)

"""BatchNorm: per channel for images (N, C, H, W), per feature for (N, F) and (N, T, F).

Where the batch statistics come from is a hook, :class:`BatchStatistics`: this
process's batch by default. Data-parallel training (:mod:`nettrain.distributed`)
sets a layer's ``statistics`` to one that combines them, and the two sums the
backward pass needs, across processes; this module never knows about processes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, PositiveFloat

from .. import kernels
from .base import Layer, LayerSpec, register


class BatchStatistics:
    """The batch statistics of this process's batch, as they are (one process).

    ``shared`` is True for statistics that span more than this process's batch: the
    backward pass then sums ``dy`` and ``dy * (x - mean)`` here and has them combined
    by :meth:`combine_backward` before forming ``dx``.
    """

    shared = False

    def combine(self, mean: np.ndarray, var: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The mean, biased variance and sample count to normalize with, from this batch's."""
        return mean, var, count

    def combine_backward(self, sum_dy: np.ndarray, sum_dy_xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature sums of ``dy`` and ``dy * (x - mean)`` over every sample the statistics cover."""
        return sum_dy, sum_dy_xc


LOCAL_STATISTICS = BatchStatistics()


@register
class BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta.

    Training uses the batch statistics and updates the running ones with the
    Keras convention ``running = momentum * running + (1 - momentum) * batch``
    (running variance unbiased, as in PyTorch); evaluation uses the running ones.
    ``statistics`` says where the batch statistics come from (see the module doc).
    """

    per_sample_eval = True

    statistics: BatchStatistics = LOCAL_STATISTICS
    relu_after: Layer | None = None  # the ReLU fused into training passes (see fuse_activation)
    _fused_y: np.ndarray | None = None

    class Spec(LayerSpec):
        type: Literal["batchnorm"] = "batchnorm"
        momentum: float = Field(0.9, ge=0.0, lt=1.0)
        epsilon: PositiveFloat = 1e-5
        center: bool = True
        scale: bool = True

    def create_params(self, in_shape, rng):
        # features: channels (axis 1) for images, the last axis otherwise
        features = in_shape[0] if len(in_shape) == 3 else in_shape[-1]
        if self.spec.scale:
            self.params["gamma"] = np.ones(features, np.float32)
        if self.spec.center:
            self.params["beta"] = np.zeros(features, np.float32)
        self.buffers["running_mean"] = np.zeros(features, np.float32)
        self.buffers["running_var"] = np.ones(features, np.float32)

    def as_mfp(self, x: np.ndarray) -> np.ndarray:
        """View x as (M, F, P): statistics are shared along M and P (see nettrain.kernels)."""
        if len(self.in_shape) == 3:
            return x.reshape(x.shape[0], x.shape[1], -1)
        return x.reshape(-1, x.shape[-1], 1)

    def forward(self, x, training=False):
        x3 = np.ascontiguousarray(self.as_mfp(x))
        ops = kernels.backend(x.dtype)
        if training:
            mean, var = ops.batchnorm_stats(x3)
            mean, var, count = self.statistics.combine(mean, var, x3.shape[0] * x3.shape[2])
            self._count = count
            self.update_running_stats(mean, var, count)
        else:
            mean, var = self.buffers["running_mean"].astype(x.dtype), self.buffers["running_var"].astype(x.dtype)
        inv_std = 1 / np.sqrt(var + x.dtype.type(self.spec.epsilon))
        gamma = self.params["gamma"] if "gamma" in self.params else np.ones_like(inv_std)
        scale = gamma * inv_std
        shift = -mean * scale
        if "beta" in self.params:
            shift += self.params["beta"]
        self._x3, self._mean, self._inv_std, self._training = x3, mean, inv_std, training
        if not (training and self.relu_after is not None):
            self._fused_y = None
            return ops.batchnorm_affine(x3, scale, shift).reshape(x.shape)
        # the ReLU that follows is applied here, in the same pass; it hands this array through
        self._fused_y = ops.batchnorm_relu_affine(x3, scale, shift).reshape(x.shape)
        return self._fused_y

    def fuse_activation(self, after: Layer) -> None:
        """Apply ``after``, the layer that follows in a Sequential, here in training when it is a ReLU.

        One pass instead of two over the activations forward and backward; ``after`` then
        hands the array through (see :meth:`nettrain.layers.activations.ActivationLayer.forward`).
        """
        if getattr(after, "is_relu", False):
            self.relu_after, after.fused_before = after, self

    def update_running_stats(self, mean: np.ndarray, var: np.ndarray, count: int) -> None:
        mom = self.spec.momentum
        for key, batch in (("running_mean", mean), ("running_var", var * (count / max(count - 1, 1)))):
            running = self.buffers[key]
            running *= running.dtype.type(mom)
            running += running.dtype.type(1 - mom) * batch

    def backward(self, dy):
        x3, mean, inv_std = self._x3, self._mean, self._inv_std
        dy3 = np.ascontiguousarray(self.as_mfp(dy))
        gamma = self.params["gamma"] if "gamma" in self.params else np.ones_like(inv_std)
        ops = kernels.backend(dy.dtype)
        fused, self._fused_y = self._fused_y, None  # dy is then the gradient of relu(batchnorm(x))
        combine = self.combined_sums if self.statistics.shared else None
        if fused is not None:
            dx3, dgamma, dbeta = ops.batchnorm_relu_backward(x3, self.as_mfp(fused), dy3, mean, inv_std, gamma,
                                                             combine=combine)
        elif self._training:
            dx3, dgamma, dbeta = ops.batchnorm_backward(x3, dy3, mean, inv_std, gamma, combine=combine)
        else:  # running statistics are constants
            dbeta = np.einsum("mfp->f", dy3)
            dgamma = (np.einsum("mfp,mfp->f", dy3, x3) - mean * dbeta) * inv_std
            dx3 = dy3 * (gamma * inv_std).reshape(1, -1, 1)
        if "beta" in self.params:
            self.grads["beta"][...] = dbeta
        if "gamma" in self.params:
            self.grads["gamma"][...] = dgamma
        return dx3.reshape(dy.shape)

    def combined_sums(self, sum_dy: np.ndarray, sum_dy_xc: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """The backward pass's per-feature sums of ``dy`` and ``dy * (x - mean)`` over every sample the batch
        statistics covered (``self._count`` of them, other processes' included): the kernels' ``combine``.
        ``dgamma`` and ``dbeta`` stay this batch's share: the gradients are summed over the processes
        afterwards."""
        total_dy, total_dy_xc = self.statistics.combine_backward(sum_dy, sum_dy_xc)
        return total_dy, total_dy_xc, self._count

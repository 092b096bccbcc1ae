"""Recurrent layers: SimpleRNN, GRU and LSTM on sequences ``(N, T, F)``.

All gates share one fused weight matrix, PyTorch's gate order, so weights copy
across by a transpose:

* ``kernel``            ``(F, G*U)``  input weights (``weight_ih.T``)
* ``recurrent_kernel``  ``(U, G*U)``  hidden weights (``weight_hh.T``)
* ``bias``              ``(G*U,)``    added to the input projection
* ``recurrent_bias``    ``(G*U,)``    GRU only, added to the hidden projection

with ``G = 1`` (SimpleRNN), ``3`` (GRU: r, z, n) or ``4`` (LSTM: i, f, g, o).

The input projection of every timestep is one GEMM before the time loop; the
loop runs over time only, and its backward stores the per-step pre-activation
gradients so that each weight gradient is again one GEMM after the loop.
Internally sequences are time-major ``(T, N, .)`` so each step is a contiguous slice.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import PositiveInt

from ..initializers import InitializerSpec, initialize
from .activations import sigmoid
from .base import Layer, LayerSpec, Shape, register


class RecurrentSpec(LayerSpec):
    """Fields shared by every recurrent layer."""

    units: PositiveInt
    return_sequences: bool = False
    kernel_initializer: InitializerSpec = "glorot_uniform"
    recurrent_initializer: InitializerSpec = "orthogonal"
    bias_initializer: InitializerSpec = "zeros"


def sequence_hint(in_shape: Shape) -> str:
    """What to put before a recurrent layer whose input is not a ``(T, F)`` sequence."""
    if len(in_shape) == 3:
        c, h, w = in_shape
        return (
            f"add a reshape (e.g. target_shape: [{h}, {w * c}]) before it, "
            "or a flatten + dense head if no recurrence was meant"
        )
    if len(in_shape) == 1:
        return (
            "if the layer before it is recurrent set return_sequences: true on it, "
            f"otherwise add a reshape (target_shape: [T, F] with T*F = {in_shape[0]}) before it"
        )
    return "add a reshape to [T, F] before it"


def split_gates(a: np.ndarray, count: int) -> list[np.ndarray]:
    """Views of the ``count`` gate blocks along the last axis of a fused ``(..., G*U)`` array."""
    return np.split(a, count, axis=-1)


class Recurrent(Layer):
    """Shared machinery; subclasses set ``gates`` and implement ``scan`` / ``scan_backward``."""

    Spec: ClassVar[type[RecurrentSpec]] = RecurrentSpec
    gates: ClassVar[int] = 1

    # -- building -----------------------------------------------------------
    def compute_output_shape(self, in_shape: Shape) -> Shape:
        steps = in_shape[0]
        return (steps, self.spec.units) if self.spec.return_sequences else (self.spec.units,)

    def build(self, in_shape: Shape, rng: np.random.Generator) -> Shape:
        in_shape = tuple(in_shape)
        if len(in_shape) != 2:
            self.in_shape = in_shape
            raise self.shape_error(
                f"expects a sequence T x F (time steps x features), got a rank-{len(in_shape)} "
                f"input; {sequence_hint(in_shape)}"
            )
        features, units = in_shape[1], self.spec.units
        width = self.gates * units
        self.params = {
            "kernel": initialize(
                self.spec.kernel_initializer, (features, width), features, width, rng, self.dtype
            ),
            "recurrent_kernel": initialize(
                self.spec.recurrent_initializer, (units, width), units, width, rng, self.dtype
            ),
            "bias": self.initial_bias(units, rng),
        }
        self.params.update(self.extra_params(units, rng))
        # orthogonal init returns a transposed (Fortran-ordered) array; in-place updates
        # through reshape(-1) views need C order
        self.params = {k: np.ascontiguousarray(p) for k, p in self.params.items()}
        self.zero_grads()
        return super().build(in_shape, rng)

    def initial_bias(self, units: int, rng: np.random.Generator) -> np.ndarray:
        width = self.gates * units
        return initialize(self.spec.bias_initializer, (width,), width, width, rng, self.dtype)

    def extra_params(self, units: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def macs(self) -> int:
        """Per sample: the input GEMM and the recurrent GEMM at every timestep."""
        if self.in_shape is None:
            return 0
        steps, features = self.in_shape
        width = self.gates * self.spec.units
        return steps * (features * width + self.spec.units * width)

    # -- computation --------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """``x (N, T, F)`` -> ``(N, T, U)`` if return_sequences else ``(N, U)``."""
        x = np.asarray(x).astype(self.dtype, copy=False)
        n, steps, features = x.shape
        # time-major copy: per-step slices are contiguous, and it is reused by backward
        self._xs = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(steps * n, features)
        xw = self._xs @ self.params["kernel"] + self.params["bias"]
        self._h = self.scan(xw.reshape(steps, n, -1))
        # copies, so that a later layer working in place cannot corrupt the cached states
        if self.spec.return_sequences:
            return np.ascontiguousarray(self._h[1:].transpose(1, 0, 2))
        return self._h[-1].copy()

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy`` shaped like the output -> ``dx (N, T, F)``; fills ``grads``."""
        dy = np.asarray(dy).astype(self.dtype, copy=False)
        steps, n, units = self._h.shape[0] - 1, self._h.shape[1], self.spec.units
        if self.spec.return_sequences:
            dh_out = dy.transpose(1, 0, 2)
        else:
            dh_out = np.zeros((steps, n, units), self.dtype)
            dh_out[-1] = dy
        dxw, dhw = self.scan_backward(dh_out)
        dxw = dxw.reshape(steps * n, -1)
        h_prev = self._h[:-1].reshape(steps * n, units)
        self.store_grad("kernel", self._xs.T @ dxw)
        self.store_grad("bias", dxw.sum(axis=0))
        self.store_grad("recurrent_kernel", h_prev.T @ dhw.reshape(steps * n, -1))
        self.store_extra_grads(dhw)
        dx = dxw @ self.params["kernel"].T
        return np.ascontiguousarray(dx.reshape(steps, n, -1).transpose(1, 0, 2))

    def store_grad(self, key: str, value: np.ndarray) -> None:
        # in place, so that anyone holding the grads dict entries sees the new values
        grad = self.grads.get(key)
        if grad is not None and grad.shape == value.shape and grad.dtype == value.dtype:
            grad[...] = value
        else:
            self.grads[key] = value

    def store_extra_grads(self, dhw: np.ndarray) -> None:
        pass

    def initial_state(self, n: int, steps: int) -> np.ndarray:
        """Hidden states ``(T+1, N, U)``; ``[0]`` is the zero initial state."""
        h = np.empty((steps + 1, n, self.spec.units), self.dtype)
        h[0] = 0
        return h

    def scan(self, xw: np.ndarray) -> np.ndarray:
        """Input projections ``xw (T, N, G*U)`` -> hidden states ``(T+1, N, U)``."""
        raise NotImplementedError

    def scan_backward(self, dh_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output grads ``dh_out (T, N, U)`` -> grads of the input and hidden projections,
        both ``(T, N, G*U)`` (the same array when the two projections are simply added)."""
        raise NotImplementedError


@register
class SimpleRNN(Recurrent):
    """``h_t = tanh(x_t K + b + h_{t-1} R)``."""

    class Spec(RecurrentSpec):
        type: Literal["simple_rnn"] = "simple_rnn"

    gates = 1

    def scan(self, xw):
        recurrent = self.params["recurrent_kernel"]
        h = self.initial_state(xw.shape[1], xw.shape[0])
        for t in range(xw.shape[0]):
            h[t + 1] = np.tanh(xw[t] + h[t] @ recurrent)
        return h

    def scan_backward(self, dh_out):
        recurrent_t = self.params["recurrent_kernel"].T
        h = self._h
        da = np.empty_like(dh_out)
        dh_next = np.zeros_like(dh_out[0])
        for t in reversed(range(dh_out.shape[0])):
            da[t] = (dh_out[t] + dh_next) * (1 - h[t + 1] * h[t + 1])
            dh_next = da[t] @ recurrent_t
        return da, da


@register
class LSTM(Recurrent):
    """Gates i, f, g, o from ``a = x_t K + b + h_{t-1} R``::

        i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
        c_t = f * c_{t-1} + i * g;         h_t = o * tanh(c_t)
    """

    class Spec(RecurrentSpec):
        type: Literal["lstm"] = "lstm"
        # a forget gate that starts open lets gradients through long sequences early on
        unit_forget_bias: bool = True

    gates = 4

    def initial_bias(self, units, rng):
        bias = super().initial_bias(units, rng)
        if self.spec.unit_forget_bias:
            bias[units : 2 * units] = 1
        return bias

    def scan(self, xw):
        recurrent = self.params["recurrent_kernel"]
        steps, n, _ = xw.shape
        u = self.spec.units
        h = self.initial_state(n, steps)
        c = np.zeros_like(h)
        acts = np.empty_like(xw)  # activated gates i, f, g, o per step
        tanh_c = np.empty((steps, n, u), self.dtype)
        for t in range(steps):
            a = xw[t] + h[t] @ recurrent
            acts[t, :, : 2 * u] = sigmoid(a[:, : 2 * u])
            acts[t, :, 2 * u : 3 * u] = np.tanh(a[:, 2 * u : 3 * u])
            acts[t, :, 3 * u :] = sigmoid(a[:, 3 * u :])
            i, f, g, o = split_gates(acts[t], 4)
            c[t + 1] = f * c[t] + i * g
            tanh_c[t] = np.tanh(c[t + 1])
            h[t + 1] = o * tanh_c[t]
        self._c, self._acts, self._tanh_c = c, acts, tanh_c
        return h

    def scan_backward(self, dh_out):
        recurrent_t = self.params["recurrent_kernel"].T
        c, acts, tanh_c = self._c, self._acts, self._tanh_c
        da = np.empty_like(acts)
        dh_next = np.zeros_like(dh_out[0])
        dc_next = np.zeros_like(dh_out[0])
        for t in reversed(range(dh_out.shape[0])):
            i, f, g, o = split_gates(acts[t], 4)
            da_i, da_f, da_g, da_o = split_gates(da[t], 4)
            dh = dh_out[t] + dh_next
            dc = dc_next + dh * o * (1 - tanh_c[t] * tanh_c[t])
            da_i[...] = dc * g * i * (1 - i)
            da_f[...] = dc * c[t] * f * (1 - f)
            da_g[...] = dc * i * (1 - g * g)
            da_o[...] = dh * tanh_c[t] * o * (1 - o)
            dc_next = dc * f
            dh_next = da[t] @ recurrent_t
        return da, da


@register
class GRU(Recurrent):
    """PyTorch's GRU (Keras ``reset_after=True``), gates r, z, n::

        r = sigmoid(x W_r + b_r + h U_r + c_r)
        z = sigmoid(x W_z + b_z + h U_z + c_z)
        n = tanh(x W_n + b_n + r * (h U_n + c_n))
        h_t = (1 - z) * n + z * h_{t-1}

    ``b`` is ``bias`` and ``c`` is ``recurrent_bias``: the reset gate scales the
    hidden projection including its bias, so the two cannot be merged.
    """

    class Spec(RecurrentSpec):
        type: Literal["gru"] = "gru"

    gates = 3

    def extra_params(self, units, rng):
        return {"recurrent_bias": self.initial_bias(units, rng)}

    def scan(self, xw):
        recurrent, recurrent_bias = self.params["recurrent_kernel"], self.params["recurrent_bias"]
        steps, n, _ = xw.shape
        u = self.spec.units
        h = self.initial_state(n, steps)
        acts = np.empty_like(xw)  # r, z, n per step
        hw_n = np.empty((steps, n, u), self.dtype)  # h U_n + c_n, needed for dr
        for t in range(steps):
            hw = h[t] @ recurrent + recurrent_bias
            acts[t, :, : 2 * u] = sigmoid(xw[t, :, : 2 * u] + hw[:, : 2 * u])
            r, z, _ = split_gates(acts[t], 3)
            hw_n[t] = hw[:, 2 * u :]
            cand = acts[t, :, 2 * u :]
            cand[...] = np.tanh(xw[t, :, 2 * u :] + r * hw_n[t])
            h[t + 1] = cand + z * (h[t] - cand)
        self._acts, self._hw_n = acts, hw_n
        return h

    def scan_backward(self, dh_out):
        recurrent_t = self.params["recurrent_kernel"].T
        h, acts, hw_n = self._h, self._acts, self._hw_n
        dxw = np.empty_like(acts)
        dhw = np.empty_like(acts)
        dh_next = np.zeros_like(dh_out[0])
        for t in reversed(range(dh_out.shape[0])):
            r, z, cand = split_gates(acts[t], 3)
            dr, dz, dn = split_gates(dxw[t], 3)
            dh = dh_out[t] + dh_next
            dn[...] = dh * (1 - z) * (1 - cand * cand)
            dz[...] = dh * (h[t] - cand) * z * (1 - z)
            dr[...] = dn * hw_n[t] * r * (1 - r)
            dhw[t] = dxw[t]
            dhw[t, :, 2 * self.spec.units :] *= r
            dh_next = dh * z + dhw[t] @ recurrent_t
        return dxw, dhw

    def store_extra_grads(self, dhw):
        self.store_grad("recurrent_bias", dhw.sum(axis=(0, 1)))

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

Each step is one GEMM ``h_{t-1} R`` into a reused work array, then one cell kernel
(``kernels.backend(dtype).lstm_cell_forward`` etc.) for all the element-wise gate
math: NumPy ufuncs writing in place, or with numba one compiled pass per step.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import PositiveInt

from .. import kernels
from ..initializers import InitializerSpec, initialize
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


class Recurrent(Layer):
    """Shared machinery; subclasses set ``gates`` and implement ``scan`` / ``scan_backward``."""

    Spec: ClassVar[type[RecurrentSpec]] = RecurrentSpec
    keeps_input = False  # a time-major copy instead (in cache_bytes)
    gates: ClassVar[int] = 1

    # -- building -----------------------------------------------------------
    def compute_output_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) != 2:
            raise self.shape_error(
                f"expects a sequence T x F (time steps x features), got a rank-{len(in_shape)} "
                f"input; {sequence_hint(in_shape)}",
                in_shape,
            )
        steps = in_shape[0]
        return (steps, self.spec.units) if self.spec.return_sequences else (self.spec.units,)

    def create_params(self, in_shape: Shape, rng: np.random.Generator) -> None:
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
        self._work: dict[str, np.ndarray] = {}

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
        # time-major copy: per-step slices are contiguous, and it is reused by backward. A column of
        # ones after the features carries the bias through the GEMM (and its gradient through the
        # kernel's), which saves two passes over the (T*N, G*U) gates. Each row has room after them
        # for the hidden state the step starts from: where one gradient reaches both projections
        # (shared_projection_grad), the training scan copies h_{t-1} there, and backward takes the
        # gradients of kernel, bias and recurrent kernel by one GEMM over [x_t, 1, h_{t-1}]
        xh = self.work("xh", (steps, n, features + 1 + self.spec.units * self.shared_projection_grad))
        xs = xh[:, :, : features + 1]
        np.copyto(xs[:, :, :features], x.transpose(1, 0, 2))
        xs[:, :, features] = 1
        self._xh = xh
        self._xs = xs.reshape(steps * n, features + 1)  # a view: rows of xh
        self._h_rows = None
        if training and self.shared_projection_grad:
            self._h_rows = xh[:, :, features + 1 :]
            self._h_rows[0] = 0
        kernel_and_bias = self.kernel_and_bias()
        if not training and self.projecting_scan:
            self._h = self.scan_projecting(xs, kernel_and_bias)
        else:
            xw = kernels.matmul(self._xs, kernel_and_bias, self.work("gates", (steps * n, self.width)))
            self._h = self.scan(xw.reshape(steps, n, -1))
        # copies (never views, whatever N or T), so that a later layer working in place cannot
        # corrupt the cached states, and the next call cannot overwrite this output
        if self.spec.return_sequences:
            return self._h[1:].transpose(1, 0, 2).copy()
        return self._h[-1].copy()

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """``dy`` shaped like the output -> ``dx (N, T, F)``; fills ``grads``.

        Returns None without computing dx when ``input_grad`` is False.
        """
        dy = np.asarray(dy).astype(self.dtype, copy=False)
        steps, n, units = self._h.shape[0] - 1, self._h.shape[1], self.spec.units
        if self.spec.return_sequences:
            dh_out = self.work("dh_out", (steps, n, units))
            np.copyto(dh_out, dy.transpose(1, 0, 2))
        else:
            # only the last step reaches the output; the others share one block of zeros
            zero = self.work("zero", (n, units))
            zero[...] = 0
            dh_out = [zero] * (steps - 1) + [np.ascontiguousarray(dy)]
        dxw, dhw = self.scan_backward(dh_out)
        shared = dxw is dhw and self._h_rows is not None
        dxw = dxw.reshape(steps * n, -1)
        features = self.in_shape[1]
        if shared:  # one GEMM (see forward)
            grads = kernels.scratch("projection_grads", (self._xh.shape[-1], self.width), self.dtype)
            kernels.matmul_tn(self._xh.reshape(steps * n, -1), dxw, grads)
            self.grad_buffer("recurrent_kernel")[...] = grads[features + 1 :]
        else:
            grads = kernels.scratch("projection_grads", (features + 1, self.width), self.dtype)
            kernels.matmul_tn(self._xs, dxw, grads)
            h_prev = self._h[:-1].reshape(steps * n, units)
            kernels.matmul_tn(h_prev, dhw.reshape(steps * n, -1), self.grad_buffer("recurrent_kernel"))
        self.grad_buffer("kernel")[...] = grads[:features]
        self.grad_buffer("bias")[...] = grads[features]
        self.store_extra_grads(dhw)
        if not self.input_grad:
            return None
        dx = kernels.matmul(dxw, self.params["kernel"].T, self.work("dx", (steps * n, self.in_shape[1])))
        return dx.reshape(steps, n, -1).transpose(1, 0, 2).copy()

    def kernel_and_bias(self) -> np.ndarray:
        """The kernel with the bias as one more row, (F+1, G*U): the input projection's operand."""
        features = self.in_shape[1]
        kernel_and_bias = kernels.scratch("kernel_and_bias", (features + 1, self.width), self.dtype)
        kernel_and_bias[:features], kernel_and_bias[features] = self.params["kernel"], self.params["bias"]
        return kernel_and_bias

    def cache_bytes(self, batch: int) -> int:
        """The time-major input copy, the gates, the hidden states and the layer's other arrays kept
        from step to step (:meth:`work`): the cell's own states and the backward's work arrays."""
        steps, features = self.in_shape
        units = self.spec.units
        per_sample = (steps * (features + 1 + units * self.shared_projection_grad)  # xh: xs, ones, h_{t-1}
                      + steps * self.width  # gates (activated in place, kept for backward)
                      + (steps + 1) * units  # h
                      + (steps * units if self.spec.return_sequences else units)  # dh_out
                      + (steps * features if self.input_grad else 0)  # dx
                      + self.cell_state_values(steps))
        return batch * per_sample * self.dtype.itemsize

    def backward_bytes(self, batch: int, workers: int) -> int:
        """The gradients, and the per-thread partial sums of the larger kernel's gradient."""
        rows = batch * self.in_shape[0]
        sizes = [self.params[k].size for k in ("kernel", "recurrent_kernel")]
        if self.shared_projection_grad:
            sizes.append((self.in_shape[1] + 1 + self.spec.units) * self.width)
        partials = max(kernels.matmul_tn_partials_bytes(rows, size, self.dtype.itemsize, workers) for size in sizes)
        return super().backward_bytes(batch, workers) + partials

    def cell_state_values(self, steps: int) -> int:
        """Values per sample of the cell's own kept states and backward work arrays (see :meth:`scan`)."""
        return steps * self.width + self.spec.units  # da, dh_next

    @property
    def width(self) -> int:
        """G*U: the gates side by side."""
        return self.gates * self.spec.units

    def work(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised array of this layer's dtype that lives as long as the layer.

        The cached states of the last forward and the backward's work arrays are reused
        by the next call rather than allocated again: fresh arrays of several MB are fresh
        pages from the OS, and faulting them in can cost as much as a step's gate math.
        A buffer only grows, so another batch size reuses it too.
        """
        size = math.prod(shape)
        buf = self._work.get(name)
        if buf is None or buf.size < size or buf.dtype != self.dtype:
            buf = self._work[name] = np.empty(size, self.dtype)
        return buf[:size].reshape(shape)

    def grad_buffer(self, key: str) -> np.ndarray:
        """The array that receives the gradient of param ``key``.

        Gradients are written in place, so that anyone holding the grads dict entries
        sees the new values; a missing or stale (other shape or dtype) entry is replaced.
        """
        param, grad = self.params[key], self.grads.get(key)
        if grad is None or grad.shape != param.shape or grad.dtype != param.dtype:
            grad = self.grads[key] = np.empty_like(param)
        return grad

    def store_extra_grads(self, dhw: np.ndarray) -> None:
        pass

    def keep_h_rows(self, h: np.ndarray, a: int, b: int) -> None:
        """Copy batch rows ``a:b`` of the hidden states ``h[1:T]`` into ``xh``, each as the state its next
        step starts from (training, :attr:`shared_projection_grad`): one copy per thread and scan."""
        if self._h_rows is not None:
            np.copyto(self._h_rows[1:, a:b], h[1 : len(self._h_rows), a:b])

    def initial_state(self, name: str, n: int, steps: int) -> np.ndarray:
        """States ``(T+1, N, U)``; ``[0]`` is the zero initial state."""
        h = self.work(name, (steps + 1, n, self.spec.units))
        h[0] = 0
        return h

    shared_projection_grad: ClassVar[bool] = False
    """Whether :meth:`scan_backward` returns one array as the gradient of both projections; then the
    training :meth:`scan` copies each h_{t-1} into ``self._h_rows[t]`` when that is not None
    (:meth:`keep_h_rows`)."""

    projecting_scan: ClassVar[bool] = False
    """Whether the eval forward runs :meth:`scan_projecting` instead of one input GEMM and :meth:`scan`."""

    def scan_projecting(self, xs: np.ndarray, kernel_and_bias: np.ndarray) -> np.ndarray:
        """Eval: inputs ``xs (T, N, F+1)`` (a column of ones last) -> hidden states ``(T+1, N, U)``, as
        :meth:`scan`, each step's input projection computed inside the loop by each thread."""
        raise NotImplementedError

    def scan(self, gates: np.ndarray) -> np.ndarray:
        """Input projections ``gates (T, N, G*U)`` -> hidden states ``(T+1, N, U)``.

        ``gates`` is overwritten (LSTM and GRU keep their activated gates in it for backward).
        """
        raise NotImplementedError

    def scan_backward(self, dh_out) -> tuple[np.ndarray, np.ndarray]:
        """Output grads ``dh_out`` (T arrays (N, U)) -> grads of the input and hidden projections,
        both ``(T, N, G*U)`` (the same array when the two projections are simply added)."""
        raise NotImplementedError


@register
class SimpleRNN(Recurrent):
    """``h_t = tanh(x_t K + b + h_{t-1} R)``."""

    class Spec(RecurrentSpec):
        type: Literal["simple_rnn"] = "simple_rnn"

    gates = 1
    shared_projection_grad = True

    def scan(self, gates):
        ops = kernels.backend(self.dtype)
        recurrent = self.params["recurrent_kernel"]
        steps, n, width = gates.shape
        h = self.initial_state("h", n, steps)

        def run(a, b):
            hr = kernels.scratch("recurrent_projection", (b - a, width), self.dtype)
            for t in range(steps):
                np.matmul(h[t, a:b], recurrent, out=hr)
                ops.rnn_cell_forward(gates[t, a:b], hr, h[t + 1, a:b])
            self.keep_h_rows(h, a, b)

        kernels.over_batch(run, n, gates.size)
        return h

    def scan_backward(self, dh_out):
        ops = kernels.backend(self.dtype)
        recurrent_t = self.params["recurrent_kernel"].T
        h = self._h
        steps, n, units = h.shape[0] - 1, h.shape[1], h.shape[2]
        da = self.work("da", (steps, n, units))
        dh_next = self.work("dh_next", (n, units))
        dh_next[...] = 0

        def run(a, b):
            for t in reversed(range(steps)):
                ops.rnn_cell_backward(dh_out[t][a:b], dh_next[a:b], h[t + 1, a:b], da[t, a:b])
                if t:  # step 0's recurrent gradient would flow into the fixed zero state
                    np.matmul(da[t, a:b], recurrent_t, out=dh_next[a:b])

        kernels.over_batch(run, n, da.size)
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
    shared_projection_grad = True

    def initial_bias(self, units, rng):
        bias = super().initial_bias(units, rng)
        if self.spec.unit_forget_bias:
            bias[units : 2 * units] = 1
        return bias

    def scan(self, gates):
        ops = kernels.backend(self.dtype)
        recurrent = self.params["recurrent_kernel"]
        steps, n, width = gates.shape
        h = self.initial_state("h", n, steps)
        c = self.initial_state("c", n, steps)
        tanh_c = self.work("tanh_c", (steps, n, self.spec.units))

        def run(a, b):
            hr = kernels.scratch("recurrent_projection", (b - a, width), self.dtype)
            for t in range(steps):
                np.matmul(h[t, a:b], recurrent, out=hr)
                ops.lstm_cell_forward(gates[t, a:b], hr, c[t, a:b], c[t + 1, a:b], tanh_c[t, a:b], h[t + 1, a:b])
            self.keep_h_rows(h, a, b)

        kernels.over_batch(run, n, gates.size)
        self._c, self._acts, self._tanh_c = c, gates, tanh_c
        return h

    # Eval: each thread computes the input projection of its slice of the batch step by step, right
    # before the cell kernel reads it from cache, instead of one GEMM over all steps before the
    # loop: one pass over the (T, N, 4U) gates fewer through memory, which two threads share, and
    # one hand-over to the threads fewer (see benchmarks/README.md, round four)
    projecting_scan = True

    def scan_projecting(self, xs, kernel_and_bias):
        ops = kernels.backend(self.dtype)
        recurrent = self.params["recurrent_kernel"]
        steps, n, width = xs.shape[0], xs.shape[1], self.width
        h = self.initial_state("h", n, steps)
        c = self.initial_state("c", n, steps)

        def run(a, b):
            # nothing is kept for a backward pass: one step's gates in a buffer that stays in cache
            gates = kernels.scratch("recurrent_gates", (b - a, width), self.dtype)
            hr = kernels.scratch("recurrent_projection", (b - a, width), self.dtype)
            for t in range(steps):
                np.matmul(xs[t, a:b], kernel_and_bias, out=gates)
                np.matmul(h[t, a:b], recurrent, out=hr)
                ops.lstm_cell_infer(gates, hr, c[t, a:b], c[t + 1, a:b], h[t + 1, a:b])

        kernels.over_batch(run, n, steps * n * width)
        self._c = c
        self._acts = self._tanh_c = None  # an eval pass: no backward
        return h

    def cell_state_values(self, steps: int) -> int:
        units = self.spec.units
        return (steps + 1) * units + steps * units + steps * self.width + 2 * units  # c, tanh_c, da, dh_next, dc

    def scan_backward(self, dh_out):
        if self._acts is None:  # after an eval pass, which keeps nothing for backward: the training scan
            steps, n = self._h.shape[0] - 1, self._h.shape[1]
            xw = kernels.matmul(self._xs, self.kernel_and_bias(), self.work("gates", (steps * n, self.width)))
            self.scan(xw.reshape(steps, n, -1))
        ops = kernels.backend(self.dtype)
        recurrent_t = self.params["recurrent_kernel"].T
        c, acts, tanh_c = self._c, self._acts, self._tanh_c
        steps = acts.shape[0]
        da = self.work("da", acts.shape)
        dh_next, dc = self.work("dh_next", tanh_c[0].shape), self.work("dc", tanh_c[0].shape)
        dh_next[...] = 0
        dc[...] = 0

        def run(a, b):  # contended: other worker threads run the scan on other rows
            ops.lstm_scan_backward([d[a:b] for d in dh_out], acts[:, a:b], c[:steps, a:b], tanh_c[:, a:b],
                                   recurrent_t, dh_next[a:b], dc[a:b], da[:, a:b], kernels.inside_share())

        kernels.over_batch(run, da.shape[1], da.size)
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

    def scan(self, gates):
        ops = kernels.backend(self.dtype)
        recurrent, recurrent_bias = self.params["recurrent_kernel"], self.params["recurrent_bias"]
        steps, n, width = gates.shape
        h = self.initial_state("h", n, steps)
        hw_n = self.work("hw_n", (steps, n, self.spec.units))  # h U_n + c_n, needed for dr

        def run(a, b):
            hr = kernels.scratch("recurrent_projection", (b - a, width), self.dtype)
            for t in range(steps):
                np.matmul(h[t, a:b], recurrent, out=hr)
                ops.gru_cell_forward(gates[t, a:b], hr, recurrent_bias, h[t, a:b], hw_n[t, a:b], h[t + 1, a:b])

        kernels.over_batch(run, n, gates.size)
        self._acts, self._hw_n = gates, hw_n
        return h

    def cell_state_values(self, steps: int) -> int:
        units = self.spec.units
        return steps * units + 2 * steps * self.width + 2 * units  # hw_n, dxw, dhw, dh_next, dh_carry

    def scan_backward(self, dh_out):
        ops = kernels.backend(self.dtype)
        recurrent_t = self.params["recurrent_kernel"].T
        h, acts, hw_n = self._h, self._acts, self._hw_n
        steps = acts.shape[0]
        dxw, dhw = self.work("dxw", acts.shape), self.work("dhw", acts.shape)
        dh_next = self.work("dh_next", hw_n[0].shape)  # through R
        dh_carry = self.work("dh_carry", hw_n[0].shape)  # straight through z
        dh_next[...] = 0
        dh_carry[...] = 0

        def run(a, b):
            for t in reversed(range(steps)):
                ops.gru_cell_backward(dh_out[t][a:b], dh_next[a:b], dh_carry[a:b], h[t, a:b], acts[t, a:b],
                                      hw_n[t, a:b], dxw[t, a:b], dhw[t, a:b])
                if t:
                    np.matmul(dhw[t, a:b], recurrent_t, out=dh_next[a:b])

        kernels.over_batch(run, acts.shape[1], acts.size)
        return dxw, dhw

    def store_extra_grads(self, dhw):
        np.sum(dhw.reshape(-1, dhw.shape[-1]), axis=0, out=self.grad_buffer("recurrent_bias"))

"""Recurrent cells in NumPy: the element-wise work of one timestep of SimpleRNN, LSTM and GRU."""

from __future__ import annotations

import numpy as np

from ..pool import scratch

# One timestep of a recurrent layer, after its GEMMs: the layer computes the input
# projection of all steps at once (``gates``, one (N, G*U) slice per step) and the
# recurrent projection ``hr = h_{t-1} R`` of each step with BLAS; a cell kernel then
# does every element-wise operation of the step. Gate blocks follow PyTorch's order
# along the last axis. Work arrays come from :func:`scratch`, so that a step
# allocates nothing.


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """``a = sigmoid(a)`` in place, as 0.5 * (tanh(a / 2) + 1): that form never overflows."""
    a *= 0.5
    np.tanh(a, out=a)
    a += 1
    a *= 0.5
    return a


def gate_blocks(a: np.ndarray, count: int) -> list[np.ndarray]:
    """Views of the ``count`` gate blocks of a fused (N, count*U) array."""
    u = a.shape[-1] // count
    return [a[..., k * u : (k + 1) * u] for k in range(count)]


# Gate slices of a fused (N, G*U) array are strided, and NumPy runs element-wise ops
# on them several times slower than on contiguous arrays, slowest when both input and
# output are strided. So the LSTM kernels activate and differentiate all four gates in
# whole-array passes, with per-column constants that make one formula serve both
# sigmoid and tanh gates, and the GRU kernels compute each gate in a contiguous work
# array and copy it into place once.
LSTM_TANH_GATES = (False, False, True, False)  # i, f, g, o
_GATE_CONSTANTS: dict[tuple, tuple[np.ndarray, ...]] = {}


def gate_constants(tanh_gates: tuple[bool, ...], u: int, dtype) -> tuple[np.ndarray, ...]:
    """Per-column (G*U,) vectors ``scale``, ``shift``, ``top``, ``base`` for gates whose
    activation is tanh where ``tanh_gates`` is True and sigmoid elsewhere.

    ``scale * tanh(scale * a) + shift`` is sigmoid(a) = 0.5 * tanh(a / 2) + 0.5 on the
    sigmoid gates and tanh(a) on the others; ``base - y * (y - top)`` is the derivative
    y * (1 - y) of a sigmoid output y and 1 - y^2 of a tanh output.
    """
    key = (tanh_gates, u, np.dtype(dtype))
    if key not in _GATE_CONSTANTS:
        is_tanh = np.repeat(np.array(tanh_gates), u)
        vectors = tuple(np.where(is_tanh, on_tanh, on_sigmoid).astype(dtype)
                        for on_tanh, on_sigmoid in ((1, 0.5), (0, 0.5), (0, 1), (1, 0)))
        for v in vectors:
            v.flags.writeable = False
        _GATE_CONSTANTS[key] = vectors
    return _GATE_CONSTANTS[key]


def activation_slopes(acts: np.ndarray, tanh_gates: tuple[bool, ...], out: np.ndarray | None = None) -> np.ndarray:
    """(..., G*U) activated gates -> their activations' derivatives, in ``out`` or a work array."""
    _, _, top, base = gate_constants(tanh_gates, acts.shape[-1] // len(tanh_gates), acts.dtype)
    slope = scratch("recurrent_slope", acts.shape, acts.dtype) if out is None else out
    np.subtract(acts, top, out=slope)
    slope *= acts
    np.subtract(base, slope, out=slope)
    return slope


def rnn_cell_forward(gates: np.ndarray, hr: np.ndarray, h: np.ndarray) -> None:
    """SimpleRNN step: ``h = tanh(gates + hr)``, all (N, U); ``gates`` is x_t K + b."""
    np.add(gates, hr, out=h)
    np.tanh(h, out=h)


def rnn_cell_backward(dy: np.ndarray, dh: np.ndarray, h: np.ndarray, da: np.ndarray) -> None:
    """SimpleRNN step backward: ``da = (dy + dh) * (1 - h^2)``, all (N, U).

    ``dy`` is the gradient of h_t from the layer's output, ``dh`` the one from step t+1
    (``da_{t+1} R^T``), ``h`` is h_t and ``da`` receives the gradient of the pre-activation.
    """
    w = scratch("recurrent_w", h.shape, h.dtype)
    np.multiply(h, h, out=w)
    np.subtract(1, w, out=w)
    np.add(dy, dh, out=da)
    da *= w


def lstm_cell_forward(
    gates: np.ndarray, hr: np.ndarray, c_prev: np.ndarray, c: np.ndarray, tanh_c: np.ndarray, h: np.ndarray
) -> None:
    """LSTM step. ``gates`` (N, 4U): x_t K + b in, the activated gates i, f, g, o out.

    ``hr`` (N, 4U) is h_{t-1} R; from ``c_prev`` (N, U) it writes the cell state
    ``c = f * c_prev + i * g``, ``tanh_c = tanh(c)`` and ``h = o * tanh_c`` (all (N, U)).
    """
    scale, shift, _, _ = gate_constants(LSTM_TANH_GATES, c.shape[1], gates.dtype)
    gates += hr
    gates *= scale
    np.tanh(gates, out=gates)
    gates *= scale
    gates += shift
    i, f, g, o = gate_blocks(gates, 4)
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tanh_c)  # tanh_c is free until the end of the step
    c += tanh_c
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)


def lstm_cell_infer(gates: np.ndarray, hr: np.ndarray, c_prev: np.ndarray, c: np.ndarray, h: np.ndarray) -> None:
    """An eval step: ``c`` and ``h`` as :func:`lstm_cell_forward` writes them, nothing kept for a backward
    pass (``gates`` may be overwritten)."""
    lstm_cell_forward(gates, hr, c_prev, c, scratch("lstm_tanh_c", c.shape, c.dtype), h)

def lstm_cell_backward(
    dy: np.ndarray, dh: np.ndarray, acts: np.ndarray, c_prev: np.ndarray, tanh_c: np.ndarray,
    dc: np.ndarray, da: np.ndarray,
) -> None:
    """LSTM step backward. ``dy`` + ``dh`` (N, U) is the gradient of h_t (from the output and
    from step t+1); ``acts`` (N, 4U) the gates, ``c_prev`` c_{t-1} and ``tanh_c`` tanh(c_t).

    ``dc`` (N, U) holds dL/dc_t from step t+1 on entry and dL/dc_{t-1} on return;
    ``da`` (N, 4U) receives the gradients of the four pre-activations: the gradients
    of the activated gates (dc * g, dc * c_prev, dc * i, dh * tanh_c) times the
    derivatives of their activations.
    """
    i, f, g, o = gate_blocks(acts, 4)
    da_i, da_f, da_g, da_o = gate_blocks(da, 4)
    total = np.add(dy, dh, out=scratch("recurrent_dh", dc.shape, dc.dtype))
    w = scratch("recurrent_w", dc.shape, dc.dtype)
    np.multiply(total, tanh_c, out=da_o)
    total *= o
    np.multiply(tanh_c, tanh_c, out=w)
    np.subtract(1, w, out=w)
    total *= w
    dc += total
    np.multiply(dc, g, out=da_i)
    np.multiply(dc, c_prev, out=da_f)
    np.multiply(dc, i, out=da_g)
    da *= activation_slopes(acts, LSTM_TANH_GATES)
    dc *= f



def lstm_steps_backward(cell_backward, dh_out, acts, c_prev, tanh_c, recurrent_t, dh_next, dc, da) -> None:
    """An LSTM's backward over all steps, last to first, one ``cell_backward`` call (a
    :func:`lstm_cell_backward`) and one GEMM per step. Arguments as for :func:`lstm_scan_backward`."""
    for t in reversed(range(acts.shape[0])):
        cell_backward(dh_out[t], dh_next, acts[t], c_prev[t], tanh_c[t], dc, da[t])
        if t:  # step 0's recurrent gradient would flow into the fixed zero state
            np.matmul(da[t], recurrent_t, out=dh_next)


LSTM_BACKWARD_BLOCK = 4
"""Steps whose backward factors :func:`lstm_scan_backward` computes together when contended."""


def lstm_scan_backward(
    dh_out, acts: np.ndarray, c_prev: np.ndarray, tanh_c: np.ndarray, recurrent_t: np.ndarray,
    dh_next: np.ndarray, dc: np.ndarray, da: np.ndarray, contended: bool = False,
) -> None:
    """An LSTM's backward over all T steps of a range of the batch's rows, last step first.

    ``dh_out`` (T arrays (n, U)): the output's gradient at each step; ``acts`` (T, n, 4U)
    the activated gates, ``c_prev`` (T, n, U) each step's c_{t-1}, ``tanh_c`` (T, n, U);
    ``recurrent_t`` the recurrent kernel transposed, (4U, U). ``dh_next`` and ``dc`` (n, U)
    start as the gradients from past the last step (zeros) and are overwritten; ``da``
    (T, n, 4U) receives the pre-activations' gradients.

    ``contended``: other threads run this scan on other rows at the same time. The
    NumPy calls of one step are small, and each holds the GIL for its set-up, so two
    threads making 15 of them per step wait on each other (measured: a step's element-wise
    work took 1.9x as long). Then every factor that does not depend on the gradient from
    the step after (the activations' slopes times the other factor of each gate, and
    o * (1 - tanh(c)^2)) is computed for a block of :data:`LSTM_BACKWARD_BLOCK` steps at
    once, which leaves 6 calls per step; on one thread that costs more than it saves.
    """
    if not contended:
        lstm_steps_backward(lstm_cell_backward, dh_out, acts, c_prev, tanh_c, recurrent_t, dh_next, dc, da)
        return
    steps, (n, u) = acts.shape[0], dc.shape
    q_block = scratch("lstm_q", (LSTM_BACKWARD_BLOCK, n, u), dc.dtype)
    total = scratch("recurrent_dh", dc.shape, dc.dtype)
    for stop in range(steps, 0, -LSTM_BACKWARD_BLOCK):
        start = max(0, stop - LSTM_BACKWARD_BLOCK)
        a, d, q = acts[start:stop], da[start:stop], q_block[: stop - start]
        activation_slopes(a, LSTM_TANH_GATES, out=d)
        i, _, g, o = gate_blocks(a, 4)
        d_i, d_f, d_g, d_o = gate_blocks(d, 4)
        d_i *= g
        d_f *= c_prev[start:stop]
        d_g *= i
        d_o *= tanh_c[start:stop]
        np.multiply(tanh_c[start:stop], tanh_c[start:stop], out=q)
        np.subtract(1, q, out=q)
        q *= o
        for t in reversed(range(start, stop)):
            np.add(dh_out[t], dh_next, out=total)
            gates = da[t].reshape(n, 4, u)
            gates[:, 3] *= total
            total *= q[t - start]
            dc += total
            gates[:, :3] *= dc[:, None, :]
            dc *= acts[t, :, u : 2 * u]
            if t:
                np.matmul(da[t], recurrent_t, out=dh_next)


def gru_cell_forward(
    gates: np.ndarray, hr: np.ndarray, recurrent_bias: np.ndarray, h_prev: np.ndarray, hw_n: np.ndarray,
    h: np.ndarray,
) -> None:
    """GRU step (PyTorch's). ``gates`` (N, 3U): x_t K + b in, the activated r, z, n out.

    With ``hr`` (N, 3U) = h_{t-1} R and ``recurrent_bias`` c (3U,):
    r, z = sigmoid(gates_rz + (hr_rz + c_rz)); ``hw_n`` (N, U) = hr_n + c_n;
    n = tanh(gates_n + r * hw_n); ``h`` (N, U) = n + z * (h_prev - n).
    Each gate is computed in a contiguous work array and copied into ``gates`` once.
    """
    blocks = gate_blocks(gates, 3)
    rec, bias = gate_blocks(hr, 3), gate_blocks(recurrent_bias, 3)
    r, z, n = (scratch(f"recurrent_gate{k}", h.shape, h.dtype) for k in range(3))
    for k, a in ((0, r), (1, z)):
        np.add(rec[k], bias[k], out=a)
        np.add(blocks[k], a, out=a)
        sigmoid_(a)
        blocks[k][...] = a
    np.add(rec[2], bias[2], out=hw_n)
    np.multiply(r, hw_n, out=n)
    n += blocks[2]
    np.tanh(n, out=n)
    blocks[2][...] = n
    np.subtract(h_prev, n, out=h)
    h *= z
    h += n


def gru_cell_backward(
    dy: np.ndarray, dh: np.ndarray, dh_carry: np.ndarray, h_prev: np.ndarray, acts: np.ndarray,
    hw_n: np.ndarray, dxw: np.ndarray, dhw: np.ndarray,
) -> None:
    """GRU step backward. The gradient of h_t is ``dy + dh + dh_carry`` (N, U): from the
    output, through R from step t+1, and straight through z from step t+1.

    ``acts`` (N, 3U) holds r, z, n and ``hw_n`` (N, U) h_{t-1} R_n + c_n. Writes ``dxw``
    (N, 3U), the gradients of the input projection, ``dhw`` (N, 3U), those of the hidden
    projection (its n block scaled by r), and ``dh_carry = dh_t * z`` for step t-1.
    """
    u = h_prev.shape[1]
    r, z, n = gate_blocks(acts, 3)
    dr, dz, dn = gate_blocks(dxw, 3)
    total = np.add(dy, dh, out=scratch("recurrent_dh", h_prev.shape, h_prev.dtype))
    total += dh_carry
    d, w, v = (scratch(f"recurrent_gate{k}", h_prev.shape, h_prev.dtype) for k in range(3))
    # dn = dh * (1 - z) * (1 - n^2), kept contiguous in d for dr and dhw
    np.subtract(1, z, out=d)
    d *= total
    np.multiply(n, n, out=w)
    np.subtract(1, w, out=w)
    d *= w
    dn[...] = d
    np.multiply(d, r, out=dhw[:, 2 * u :])
    # dz = dh * (h_prev - n) * z * (1 - z)
    np.subtract(h_prev, n, out=w)
    w *= total
    w *= z
    np.subtract(1, z, out=v)
    np.multiply(w, v, out=dz)
    # dr = dn * hw_n * r * (1 - r)
    np.multiply(d, hw_n, out=w)
    w *= r
    np.subtract(1, r, out=v)
    np.multiply(w, v, out=dr)
    dhw[:, : 2 * u] = dxw[:, : 2 * u]
    np.multiply(total, z, out=dh_carry)

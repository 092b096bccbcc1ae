"""ONNX converters of SimpleRNN, GRU and LSTM.

ONNX's recurrent operators differ from nettrain's layers in three ways, each
handled here:

* layout: weights ``W [1, G*U, F]`` and ``R [1, G*U, U]`` (nettrain keeps
  ``(F, G*U)`` and ``(U, G*U)``: transposed), bias ``B [1, 2*G*U]`` = input bias
  then recurrent bias (zeros for SimpleRNN and LSTM, which have one bias);
* gate order: ONNX's LSTM is i, o, f, c (nettrain: i, f, g, o) and its GRU z, r, h
  (nettrain: r, z, n); nettrain's GRU is the ``reset_after`` form, ONNX's
  ``linear_before_reset=1``;
* time-major input ``[T, N, F]``: a Transpose before (``layout=1`` is refused by
  ONNX Runtime), and the outputs ``Y [T, 1, N, U]`` / ``Y_h [1, N, U]`` squeezed
  (and transposed back for ``return_sequences``).
"""

from __future__ import annotations

import numpy as np

from .onnx_ops import Graph, converts

# nettrain's gate blocks in the order ONNX expects them
ONNX_GATE_ORDER = {"simple_rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
ONNX_OP = {"simple_rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def onnx_gates(array: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Reorder the gate blocks along the last axis of ``(..., G*U)`` to ``order``."""
    blocks = np.split(array, len(order), axis=-1)
    return np.concatenate([blocks[k] for k in order], axis=-1)


def onnx_weights(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W [1, G*U, F]``, ``R [1, G*U, U]`` and ``B [1, 2*G*U]`` of a recurrent layer, float32."""
    order = ONNX_GATE_ORDER[layer.type_name]
    params = layer.params
    w = onnx_gates(params["kernel"], order).T[None]
    r = onnx_gates(params["recurrent_kernel"], order).T[None]
    recurrent_bias = params.get("recurrent_bias", np.zeros_like(params["bias"]))
    b = np.concatenate([onnx_gates(params["bias"], order), onnx_gates(recurrent_bias, order)])[None]
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (w, r, b))


@converts("simple_rnn", "gru", "lstm")
def recurrent(g: Graph, layer, path: str, x: str) -> str:
    kind = layer.type_name
    w, r, b = onnx_weights(layer)
    inputs = [g.op("Transpose", [x], f"{path}/time_major", perm=[1, 0, 2]),
              g.param(path, "W", w), g.param(path, "R", r), g.param(path, "B", b)]
    attrs = {"hidden_size": int(layer.spec.units)}
    if kind == "gru":
        attrs["linear_before_reset"] = 1
    if layer.spec.return_sequences:
        (y,) = g.op(ONNX_OP[kind], inputs, f"{path}/{ONNX_OP[kind]}", outputs=[f"{path}/Y"], **attrs)
        steps = g.op("Squeeze", [y, g.ints(f"{path}/direction_axis", [1])], f"{path}/Y_TNU")
        return g.op("Transpose", [steps], path, perm=[1, 0, 2])
    _, y_h = g.op(ONNX_OP[kind], inputs, f"{path}/{ONNX_OP[kind]}", outputs=["", f"{path}/Y_h"], **attrs)
    return g.op("Squeeze", [y_h, g.ints(f"{path}/direction_axis", [0])], path)

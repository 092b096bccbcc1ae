"""Optimizer updates in NumPy: the definitions the compiled ones are tested against, bit for bit."""

from __future__ import annotations

import numpy as np


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, beta1: float, beta2: float,
                eps: float, step: int, weight_decay: float = 0.0, decoupled: bool = False) -> None:
    """One Adam step (AdamW's with ``decoupled``) on ``p`` and its moments ``m`` and ``v``, in place.

    PyTorch's rule: ``step`` counts from 1, the bias corrections undo the zero initial
    moments, and the hyper-parameters are cast to ``p``'s dtype, so float32 stays float32.
    """
    f = p.dtype.type
    if weight_decay and decoupled:
        p *= f(1 - lr * weight_decay)
    elif weight_decay:
        g = g + f(weight_decay) * p
    m += f(1 - beta1) * (g - m)
    v *= f(beta2)
    v += f(1 - beta2) * g * g
    step_size = lr / (1 - beta1**step)
    denom = np.sqrt(v) / f(np.sqrt(1 - beta2**step)) + f(eps)
    p -= f(step_size) * m / denom

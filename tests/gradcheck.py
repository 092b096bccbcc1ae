"""One harness that gradient-checks any layer (Caffe's GradientChecker, for nettrain).

The layer is cast to float64, a random upstream gradient ``g`` is drawn, and the
analytic gradients of ``L = sum(forward(x) * g)`` with respect to the input and
to every parameter are compared with central differences.

:class:`Case` is one entry of the table of cases per layer type in ``test_layers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from nettrain.layers import Layer


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1e-12, np.max(np.abs(a) + np.abs(b))))


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    assert x.flags.c_contiguous, "perturbing a non-contiguous array through reshape would edit a copy"
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


@dataclass
class Case:
    """A small spec of one layer type and an input shape to check it on.

    ``options`` go to :func:`check_layer` (batch, training, before_forward, ...);
    ``prepare(layer, rng)`` runs once the layer is built (e.g. to randomise its weights).
    """

    fields: dict[str, Any]
    in_shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Layer, np.random.Generator], None] | None = None

    def __str__(self) -> str:
        fields = ",".join(f"{k}={v}" for k, v in self.fields.items() if k != "body")
        return f"{fields or 'defaults'}@{'x'.join(map(str, self.in_shape))}"


def check_layer(
    layer: Layer,
    in_shape: tuple[int, ...],
    batch: int = 2,
    seed: int = 0,
    training: bool = True,
    tol: float = 1e-6,
    x: np.ndarray | None = None,
    before_forward=None,
    input_grad: bool = True,
) -> dict[str, float]:
    """Build ``layer`` on ``in_shape``, check dx and every d(param); return the relative errors.

    ``before_forward`` is called before every forward pass, e.g. to pin a dropout mask.
    With ``input_grad=False`` a layer may return None from backward: then only the
    parameters are checked (the key ``x`` is missing from the result).
    """
    rng = np.random.default_rng(seed)
    if layer.out_shape is None:
        layer.build(in_shape, rng)
    layer.cast(np.float64)
    if x is None:
        x = rng.standard_normal((batch, *in_shape))
    x = np.asarray(x, dtype=np.float64)

    def run():
        if before_forward is not None:
            before_forward(layer)
        return layer.forward(x, training=training)

    y = run()
    g = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(run() * g))

    run()
    layer.zero_grads()
    layer.input_grad = input_grad
    try:
        dx = layer.backward(g)
    finally:
        layer.input_grad = True
    assert dx is not None or not input_grad, f"{layer.name}: backward returned None although input_grad is True"
    analytic = {} if dx is None else {"x": dx.copy()}
    for name, grad in named_grads(layer).items():
        analytic[name] = grad.copy()

    errors = {} if dx is None else {"x": rel_error(analytic["x"], numeric_grad(loss, x))}
    for name, p in named_params(layer).items():
        errors[name] = rel_error(analytic[name], numeric_grad(loss, p))
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"gradient check failed for {layer.name}: {bad}"
    return errors


def _named(layer: Layer, store: str, prefix: str = "") -> dict[str, np.ndarray]:
    out = {f"{prefix}{k}": v for k, v in getattr(layer, store).items()}
    for c in layer.children():
        for name, array in _named(c, store, f"{prefix}{c.name}.").items():
            # two layers of one name would hide one's parameters from the check
            assert name not in out, f"two arrays named {name}: give the layers unique names"
            out[name] = array
    return out


def named_params(layer: Layer) -> dict[str, np.ndarray]:
    return _named(layer, "params")


def named_grads(layer: Layer) -> dict[str, np.ndarray]:
    return _named(layer, "grads")

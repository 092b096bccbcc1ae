"""One harness that gradient-checks any layer (Caffe's GradientChecker, for nettrain).

The layer is cast to float64, a random upstream gradient ``g`` is drawn, and the
analytic gradients of ``L = sum(forward(x) * g)`` with respect to the input and
to every parameter are compared with central differences.
"""

from __future__ import annotations

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


def check_layer(
    layer: Layer,
    in_shape: tuple[int, ...],
    batch: int = 2,
    seed: int = 0,
    training: bool = True,
    tol: float = 1e-6,
    x: np.ndarray | None = None,
    before_forward=None,
) -> dict[str, float]:
    """Build ``layer`` on ``in_shape``, check dx and every d(param); return the relative errors.

    ``before_forward`` is called before every forward pass, e.g. to pin a dropout mask.
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
    dx = layer.backward(g)
    analytic = {"x": dx.copy()}
    for name, grad in named_grads(layer).items():
        analytic[name] = grad.copy()

    errors = {"x": rel_error(analytic["x"], numeric_grad(loss, x))}
    for name, p in named_params(layer).items():
        errors[name] = rel_error(analytic[name], numeric_grad(loss, p))
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"gradient check failed for {layer.name}: {bad}"
    return errors


def named_params(layer: Layer, prefix: str = "") -> dict[str, np.ndarray]:
    out = {f"{prefix}{k}": v for k, v in layer.params.items()}
    for c in layer.children():
        out.update(named_params(c, f"{prefix}{c.name}."))
    return out


def named_grads(layer: Layer, prefix: str = "") -> dict[str, np.ndarray]:
    out = {f"{prefix}{k}": v for k, v in layer.grads.items()}
    for c in layer.children():
        out.update(named_grads(c, f"{prefix}{c.name}."))
    return out

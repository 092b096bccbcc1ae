"""Weight initializers: ``initialize(spec, shape, fan_in, fan_out, rng, dtype)``.

A spec is a name (``he_normal``) or a mapping ``{name: normal, std: 0.01}``.
He initialisation keeps the variance of ReLU activations constant from layer to
layer; Glorot does the same for symmetric activations (tanh, sigmoid, linear).
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

InitializerName = Literal[
    "he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "orthogonal", "zeros", "ones", "normal"
]


class NormalInit(BaseModel):
    """Plain Gaussian N(0, std^2), the kind of init that makes deep ReLU nets explode."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["normal"] = "normal"
    std: PositiveFloat = Field(0.05, description="the standard deviation; `normal` by name uses 0.05")


InitializerSpec = Union[InitializerName, NormalInit]

# What each name draws; fan_in and fan_out are the inputs and outputs one weight connects
# (a conv: channels x kh x kw and filters x kh x kw; a dense or recurrent kernel: its rows and columns).
DESCRIPTIONS = {
    "he_normal": "normal with std sqrt(2 / fan_in), for ReLU-like activations",
    "he_uniform": "uniform in +-sqrt(6 / fan_in)",
    "glorot_normal": "normal with std sqrt(2 / (fan_in + fan_out))",
    "glorot_uniform": "uniform in +-sqrt(6 / (fan_in + fan_out)), for tanh, sigmoid and linear outputs",
    "orthogonal": "a random orthogonal matrix (the kernel seen as its first axis by the rest)",
    "zeros": "all 0",
    "ones": "all 1",
    "normal": "normal with std 0.05; `{name: normal, std: s}` sets another std",
}
NAMES_NOTE = "`normal` draws from a normal distribution with std 0.05; `{name: normal, std: s}` sets another std."


def _orthogonal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # makes the distribution uniform over orthogonal matrices
    if rows < cols:
        q = q.T
    return q[:rows, :cols].reshape(shape)


def initialize(
    spec: InitializerSpec,
    shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
    rng: np.random.Generator,
    dtype=np.float32,
) -> np.ndarray:
    """Draw an array of ``shape`` from the initializer named by ``spec``."""
    if isinstance(spec, NormalInit):
        return (rng.standard_normal(shape) * spec.std).astype(dtype)
    if spec == "zeros":
        return np.zeros(shape, dtype)
    if spec == "ones":
        return np.ones(shape, dtype)
    if spec == "normal":
        return (rng.standard_normal(shape) * NormalInit().std).astype(dtype)
    if spec == "he_normal":
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
    if spec == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        return rng.uniform(-limit, limit, shape).astype(dtype)
    if spec == "glorot_normal":
        return (rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)
    if spec == "glorot_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape).astype(dtype)
    if spec == "orthogonal":
        return np.ascontiguousarray(_orthogonal(shape, rng), dtype=dtype)
    raise ValueError(f"unknown initializer {spec!r}")

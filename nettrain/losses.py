"""Loss functions on logits, and the accuracy metrics that read the same logits.

A loss is configured by name (``loss: softmax_cross_entropy``) or by a mapping
(``loss: {type: softmax_cross_entropy, label_smoothing: 0.1}``). Each loss works
on raw logits so that it can use the numerically stable form (log-sum-exp,
softplus) and hand back the simple fused gradient ``p - q``.

Every loss averages over all predictions, so ``backward()`` is already divided
by that count: the batch size for ``(N, K)`` logits, ``N*T`` for per-step
sequence logits ``(N, T, K)``, and the element count for ``mse``/``binary_cross_entropy``
(as ``torch.nn.functional`` with ``reduction="mean"``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from .errors import DataError, validate_spec


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SoftmaxCrossEntropySpec(_Spec):
    """Cross-entropy of softmax(logits) against integer labels (or target distributions)."""

    type: Literal["softmax_cross_entropy"] = "softmax_cross_entropy"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class MSESpec(_Spec):
    """Mean squared error between outputs and real-valued targets."""

    type: Literal["mse"] = "mse"


class BinaryCrossEntropySpec(_Spec):
    """Cross-entropy of sigmoid(logits) against 0/1 (or probability) targets."""

    type: Literal["binary_cross_entropy"] = "binary_cross_entropy"


def _name_to_mapping(value):
    # A bare name (``loss: mse``) is shorthand for ``{type: mse}``.
    return {"type": value} if isinstance(value, str) else value


LossSpec = Annotated[
    Union[SoftmaxCrossEntropySpec, MSESpec, BinaryCrossEntropySpec],
    Field(discriminator="type"),
    BeforeValidator(_name_to_mapping),
]
_LOSS_ADAPTER = TypeAdapter(LossSpec)


def parse_loss(value, where: str = "loss") -> LossSpec:
    """Validate a loss given as a name, a mapping or a spec; ConfigError names ``where``."""
    return validate_spec(_LOSS_ADAPTER, value, where)


# -- helpers shared by the losses and the metrics ----------------------------
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis; shape and dtype of ``logits``.

    Subtracting the row maximum keeps exp() in [0, 1], so logits of +-1e4 stay finite.
    """
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_probs(logits: np.ndarray) -> np.ndarray:
    """softmax over the last axis: (..., K) -> (..., K) probabilities, dtype of ``logits``."""
    return np.exp(log_softmax(logits))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: exp(-softplus(-x))."""
    return np.exp(-np.logaddexp(x.dtype.type(0), -x))


def _is_binary(logits: np.ndarray) -> bool:
    return logits.ndim == 1 or logits.shape[-1] == 1


def _labels(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer labels of shape logits.shape[:-1], from labels or from one-hot/probability rows."""
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.shape == logits.shape else y.reshape(logits.shape[:-1])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct predictions: argmax over K classes, or logit > 0 for one output."""
    if _is_binary(logits):
        return float(np.mean((logits.reshape(-1) > 0) == (np.asarray(y).reshape(-1) > 0.5)))
    return float(np.mean(logits.argmax(axis=-1) == _labels(logits, y)))


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` largest logits: (..., K), (...) -> float."""
    labels = _labels(logits, y)
    if k >= logits.shape[-1]:
        return 1.0
    top = np.argpartition(logits, -k, axis=-1)[..., -k:]
    return float(np.mean((top == labels[..., None]).any(axis=-1)))


# -- losses --------------------------------------------------------------------
class Loss:
    """``forward(logits, targets) -> float`` (the mean loss), then ``backward() -> dlogits``."""

    spec: _Spec

    def __init__(self, spec: _Spec):
        self.spec = spec
        self._grad: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.spec.type

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        raise NotImplementedError

    def __call__(self, logits: np.ndarray, targets: np.ndarray) -> float:
        return self.forward(logits, targets)

    def backward(self) -> np.ndarray:
        """d(mean loss)/d(logits) of the last forward pass; dtype of the logits."""
        if self._grad is None:
            raise RuntimeError(f"{self.name}.backward() called before forward()")
        return self._grad

    @staticmethod
    def _elementwise_targets(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Targets as an array of logits' shape and dtype; (N,) targets fit (N, 1) outputs."""
        t = np.asarray(targets)
        if t.size != logits.size:
            raise DataError(f"targets of shape {t.shape} do not match model outputs of shape {logits.shape}")
        return t.reshape(logits.shape).astype(logits.dtype, copy=False)


class SoftmaxCrossEntropy(Loss):
    """-sum_k q_k log softmax(z)_k with q = (1 - eps) * onehot(y) + eps / K (PyTorch's smoothing).

    Targets are integer labels of shape logits.shape[:-1], or distributions of
    the logits' shape (e.g. one-hot rows).
    """

    def target_distribution(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """q: (..., K) in the logits' dtype."""
        k = logits.shape[-1]
        t = np.asarray(targets)
        if t.shape == logits.shape:
            q = t.astype(logits.dtype)
        else:
            labels = t.reshape(logits.shape[:-1])
            if not np.issubdtype(labels.dtype, np.integer):
                if not np.all(labels == np.round(labels)):
                    raise DataError("softmax_cross_entropy needs integer class labels, got fractional values")
                labels = labels.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= k):
                raise DataError(
                    f"class labels must lie in [0, {k}) for a model with {k} outputs, "
                    f"got labels in [{labels.min()}, {labels.max()}]"
                )
            q = (labels[..., None] == np.arange(k)).astype(logits.dtype)
        eps = self.spec.label_smoothing
        return q * logits.dtype.type(1 - eps) + logits.dtype.type(eps / k) if eps else q

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        q = self.target_distribution(logits, targets)
        logp = log_softmax(logits)
        n = logp.size // logp.shape[-1]
        self._grad = (np.exp(logp) - q) / logits.dtype.type(n)
        return float(-(q * logp).sum() / n)


class MSE(Loss):
    """mean((y - t)^2) over all elements."""

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        diff = logits - self._elementwise_targets(logits, targets)
        self._grad = diff * logits.dtype.type(2.0 / diff.size)
        return float(np.mean(diff * diff))


class BinaryCrossEntropy(Loss):
    """mean(softplus(z) - t * z) over all elements: cross-entropy of sigmoid(z) against t."""

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        t = self._elementwise_targets(logits, targets)
        self._grad = (sigmoid(logits) - t) / logits.dtype.type(logits.size)
        # softplus(z) = max(z, 0) + log1p(exp(-|z|)) never overflows.
        softplus = np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits)))
        return float(np.mean(softplus - t * logits))


_LOSSES: dict[type[_Spec], type[Loss]] = {
    SoftmaxCrossEntropySpec: SoftmaxCrossEntropy,
    MSESpec: MSE,
    BinaryCrossEntropySpec: BinaryCrossEntropy,
}


def build_loss(spec) -> Loss:
    """The loss for a spec (or a name / mapping that validates to one)."""
    spec = parse_loss(spec)
    return _LOSSES[type(spec)](spec)

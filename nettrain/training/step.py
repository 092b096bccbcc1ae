"""One training step: forward, loss, backward, gradient clipping, optimizer update.

:class:`TrainStep` is the step that ``nettrain train`` and ``nettrain bench`` both
run. In order::

    forward (training mode) -> loss and accuracy sums -> backward
    -> reduce (the sums and the gradients) -> non-finite loss? -> non-finite gradient?
    -> clip to train.clip_grad_norm -> optimizer update

``reduce`` does nothing here (it calls the two hooks ``reduce_sums`` and
``reduce_gradients``, which do nothing either); a data-parallel step overrides it
to all-reduce the batch sums and the gradients across processes in one message,
so the guard, the clipping and the update that follow see global values and every
process takes the same decision and the same update. The backward pass runs
before the loss is checked, so that a process whose loss went non-finite still
joins that one reduction; its gradients are thrown away with the step.

A step whose loss or gradient is NaN or infinite raises :class:`NonFiniteStep`
after putting the model back as it was before the step (BatchNorm running
statistics and Dropout generators; parameters and optimizer slots are not touched
before the update), so the caller can skip it as if it never ran or stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checkpoint import model_rng_states
from ..losses import accuracy, build_loss
from ..optimizers import Optimizer, build_optimizer, clip_grad_norm, global_norm


@dataclass(frozen=True)
class BatchSums:
    """What batches add to running sums: the loss and accuracy means times ``samples``.

    Sums over batches (or over the slices of one batch on several processes) add with
    ``+`` and divide by the total sample count to give the means.
    """

    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    samples: int = 0

    def __add__(self, other: "BatchSums") -> "BatchSums":
        return BatchSums(self.loss_sum + other.loss_sum, self.accuracy_sum + other.accuracy_sum,
                         self.samples + other.samples)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.samples

    @property
    def accuracy(self) -> float:
        return self.accuracy_sum / self.samples


@dataclass(frozen=True)
class StepResult:
    """A finished step: the batch's (reduced) sums and the gradient norm before clipping."""

    sums: BatchSums
    grad_norm: float


class NonFiniteStep(Exception):
    """A step whose loss or gradient went NaN or infinite; the model is as before the step.

    ``what`` names the value (``non-finite loss (nan)``), ``where`` where it was found
    (the first layer with a non-finite output, or the parameter with a non-finite gradient).
    """

    def __init__(self, what: str, where: str):
        super().__init__(f"{what}: {where}")
        self.what, self.where = what, where


def first_nonfinite(arrays: dict[str, np.ndarray]) -> str | None:
    """Name of the first array (in dict order) holding a NaN or an infinity."""
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            return name
    return None


class ModelSnapshot:
    """The model state a training forward pass changes besides its outputs: buffers and generators."""

    def __init__(self, model):
        self.model = model
        self.buffers = {k: v.copy() for k, v in model.buffers().items()}
        self.rng_states: dict[str, Any] = model_rng_states(model)

    def restore(self) -> None:
        self.model.load_arrays({}, self.buffers)
        generators = self.model.random_generators()
        for path, state in self.rng_states.items():
            generators[path].bit_generator.state = state


class TrainStep:
    """One optimizer step of ``model`` on a batch; see the module doc.

    ``clip_norm``: the largest global gradient norm (None: no clipping). The caller
    sets ``optimizer.lr`` before a step when a schedule changes it.
    """

    def __init__(self, model, loss_fn, optimizer: Optimizer, clip_norm: float | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.params = model.parameters()

    @classmethod
    def from_spec(cls, model, train_spec) -> "TrainStep":
        """The step a config's ``train`` section describes: its loss, optimizer and clipping."""
        return cls(model, build_loss(train_spec.loss), build_optimizer(train_spec.optimizer, model.parameters()),
                   getattr(train_spec, "clip_grad_norm", None))

    # -- hooks for data-parallel training -------------------------------------
    def reduce_sums(self, sums: BatchSums) -> BatchSums:
        """The batch sums over all processes; one process: ``sums`` itself."""
        return sums

    def reduce_gradients(self, grads: dict[str, np.ndarray], samples: int) -> None:
        """Replace ``grads`` in place by their mean over all processes, weighted by ``samples``
        (this process's share of the batch); one process: nothing to do."""

    def reduce(self, sums: BatchSums, grads: dict[str, np.ndarray], samples: int) -> BatchSums:
        """The batch sums over all processes, with ``grads`` reduced in place (see the two hooks above)."""
        sums = self.reduce_sums(sums)
        self.reduce_gradients(grads, samples)
        return sums

    # -- the step ---------------------------------------------------------------
    def __call__(self, x: np.ndarray, y: np.ndarray) -> StepResult:
        """Train on ``(x, y)``; raises :class:`NonFiniteStep` (model rolled back) on NaN or infinity."""
        snapshot = ModelSnapshot(self.model)
        # NaN and overflow are found and reported below, not as numpy warnings
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            logits = self.model.forward(x, training=True)
            loss = self.loss_fn.forward(logits, y)
            local = BatchSums(loss * len(y), accuracy(logits, y) * len(y), len(y))
            self.model.backward(self.loss_fn.backward(), input_grad=False)
            grads = self.model.gradients()
            sums = self.reduce(local, grads, len(y))
            if not math.isfinite(sums.loss_sum):
                where = self.locate_nonfinite_output(x, snapshot)
                snapshot.restore()
                raise NonFiniteStep(f"non-finite loss ({sums.loss})", where)
            norm = global_norm(grads)
            if not math.isfinite(norm):
                snapshot.restore()
                raise NonFiniteStep("non-finite gradient",
                                    f"first non-finite gradient of parameter '{first_nonfinite(grads)}'")
            if self.clip_norm:
                clip_grad_norm(grads, self.clip_norm, norm)
            self.optimizer.step(self.params, grads)
        return StepResult(sums, norm)

    def locate_nonfinite_output(self, x: np.ndarray, snapshot: ModelSnapshot) -> str:
        """Rerun the bad step's forward pass from ``snapshot`` and say where it first went non-finite."""
        if not np.isfinite(x).all():
            return "the input batch itself holds NaN or infinite values"
        found: list[str] = []

        def hook(path, layer, out):
            if not found and not np.isfinite(out).all():
                found.append(path)

        snapshot.restore()
        self.model.set_forward_hook(hook)
        try:
            self.model.forward(x, training=True)
        finally:
            self.model.set_forward_hook(None)
        if found:
            return f"first non-finite output in layer '{found[0]}'"
        return "every layer output is finite, the loss itself overflowed"

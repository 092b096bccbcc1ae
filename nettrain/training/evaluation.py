"""The evaluation loop: a model in eval mode over a split, as running sums.

Training's validation and ``nettrain eval`` both run :class:`EvalLoop`. It adds up,
batch by batch, the loss and accuracy (batch mean times batch size), the top-k
accuracies asked for and, when asked, the confusion matrix. Every one of them is a
sum, so the sums of slices of a split add up to the sums of the split: a
data-parallel loop overrides :meth:`EvalLoop.rows` to evaluate its own slice and
:meth:`EvalLoop.reduce` to add the sums of all processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..losses import accuracy, topk_accuracy


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of samples of class ``i`` predicted as ``j``: (K, K) int64."""
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class EvalSums:
    """Sums over the evaluated samples; :meth:`means` turns them into metrics.

    ``loss_sum``, ``accuracy_sum`` and ``topk_sums[k]`` are batch means times batch
    sizes; ``confusion`` counts every predicted position (None when not asked for).
    """

    samples: int = 0
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    topk_sums: dict[int, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None

    def means(self) -> dict[str, float]:
        """``loss``, ``accuracy`` and ``topK_accuracy`` for each k, averaged over the samples."""
        n = self.samples
        out = {"loss": self.loss_sum / n, "accuracy": self.accuracy_sum / n}
        out.update({f"top{k}_accuracy": total / n for k, total in self.topk_sums.items()})
        return out


class EvalLoop:
    """Evaluates ``model`` with ``loss_fn`` in batches of ``batch_size``.

    ``top_ks``: the k of every top-k accuracy to add up; ``confusion_classes``: the
    number of classes of a confusion matrix to count (None: none).
    """

    def __init__(self, model, loss_fn, batch_size: int, top_ks=(), confusion_classes: int | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self.batch_size = int(batch_size)
        self.top_ks = tuple(top_ks)
        self.confusion_classes = confusion_classes

    # -- hooks for data-parallel evaluation -------------------------------------
    def rows(self, n: int) -> range:
        """The rows of an ``n``-sample split this process evaluates: all of them."""
        return range(n)

    def reduce(self, sums: EvalSums) -> EvalSums:
        """The sums over all processes; one process: ``sums`` itself."""
        return sums

    # -- the loop ------------------------------------------------------------------
    def run(self, x: np.ndarray, y: np.ndarray) -> EvalSums:
        """The (reduced) sums of the model on inputs ``x`` and targets ``y``."""
        rows = self.rows(len(x))
        k = self.confusion_classes
        sums = EvalSums(topk_sums=dict.fromkeys(self.top_ks, 0.0),
                        confusion=None if k is None else np.zeros((k, k), np.int64))
        for start in range(rows.start, rows.stop, self.batch_size):
            stop = min(start + self.batch_size, rows.stop)
            self.add_batch(sums, x[start:stop], y[start:stop])
        return self.reduce(sums)

    def add_batch(self, sums: EvalSums, xb: np.ndarray, yb: np.ndarray) -> None:
        logits = self.model.forward(xb, training=False)
        n = len(yb)
        sums.samples += n
        sums.loss_sum += self.loss_fn.forward(logits, yb) * n
        sums.accuracy_sum += accuracy(logits, yb) * n
        for k in self.top_ks:
            sums.topk_sums[k] += topk_accuracy(logits, yb, k) * n
        if sums.confusion is not None:
            flat = logits.reshape(-1, logits.shape[-1])
            sums.confusion += confusion_matrix(yb.reshape(-1), flat.argmax(axis=-1), len(sums.confusion))

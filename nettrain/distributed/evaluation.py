"""Evaluation sharded across ranks: each evaluates its own rows of the split, the sums are added."""

from __future__ import annotations

import numpy as np

from ..training.evaluation import EvalLoop, EvalSums
from .step import share


class DistributedEvalLoop(EvalLoop):
    """:class:`EvalLoop` over this rank's consecutive rows of a split, with the sums of all ranks.

    Every sum of :class:`EvalSums` adds over samples, so the reduced sums are those
    of the whole split (up to the order of float sums) and every rank gets them.
    """

    def __init__(self, model, loss_fn, batch_size: int, top_ks=(), confusion_classes: int | None = None, *, comm):
        super().__init__(model, loss_fn, batch_size, top_ks, confusion_classes)
        self.comm = comm

    def rows(self, n: int) -> range:
        return range(*share(n, self.comm.rank, self.comm.size))

    def reduce(self, sums: EvalSums) -> EvalSums:
        ks = sorted(sums.topk_sums)
        buf = np.array([sums.samples, sums.loss_sum, sums.accuracy_sum, *(sums.topk_sums[k] for k in ks)], np.float64)
        self.comm.allreduce_sum(buf)
        confusion = None
        if sums.confusion is not None:
            confusion = self.comm.allreduce_sum(np.ascontiguousarray(sums.confusion, np.int64))
        return EvalSums(samples=int(round(buf[0])), loss_sum=float(buf[1]), accuracy_sum=float(buf[2]),
                        topk_sums={k: float(v) for k, v in zip(ks, buf[3:])}, confusion=confusion)

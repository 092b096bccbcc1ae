"""One data-parallel training step: every rank trains on its slice of the same global batch.

Each rank receives the whole global batch (the data order is a function of the
seed and the epoch, so every rank builds the same one) and keeps the rows
:func:`share` gives it. Then, in the order of :class:`nettrain.training.TrainStep`:

* Dropout layers draw the masks of the whole batch and keep the slice's rows;
* BatchNorm layers combine their statistics over the ranks (``sync_batchnorm``,
  :class:`SyncStatistics`), or use their slice's own;
* the loss gradient is scaled by the slice's share of the batch, so that each
  rank's gradients are its part of the gradient of the global mean loss;
* ``reduce`` sums the gradients with one all-reduce of one flat buffer, and in the
  same buffer the loss and accuracy sums of all ranks and the ranks' stop requests,
  so that every rank stops after the same step (without ``sync_batchnorm`` the
  BatchNorm running statistics travel there too, weighted by slice, so they stay
  the same on every rank).

Every rank then holds the same gradients and applies the same update, so the
weights stay identical, and N ranks reach what one process reaches on the same
global batch up to the order of float sums.

A batch with fewer rows than ranks (the last batch of an epoch, say) leaves some
ranks without rows: such a rank runs the step on a stand-in row that counts for
nothing (zero sums, zero statistics, zero gradients), so that it takes part in
every collective operation in the same order as the others.
"""

from __future__ import annotations

import signal

import numpy as np

from ..layers.norm import LOCAL_STATISTICS, BatchNorm, BatchStatistics
from ..training.signals import StopRequest
from ..training.step import BatchSums, TrainStep


def share(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of an ``n``-row batch that ``rank`` of ``size`` takes: consecutive, in rank
    order, sizes differing by one at most (empty when ``n < size`` for some ranks)."""
    return n * rank // size, n * (rank + 1) // size


class SyncStatistics(BatchStatistics):
    """BatchNorm statistics of the whole global batch: every rank's are gathered and combined.

    The forward pass gathers each rank's count, mean and variance and combines them
    exactly (the parallel-variance formula, in float64, in rank order, so every
    rank gets the same bits); the backward pass sums the two per-feature sums over
    the ranks. ``present`` is False on a rank that holds a stand-in row only: it
    adds nothing.
    """

    shared = True

    def __init__(self, comm):
        self.comm = comm
        self.present = True

    def combine(self, mean, var, count):
        f = len(mean)
        mine = np.zeros(2 * f + 1, np.float64)
        if self.present:
            mine[0], mine[1:f + 1], mine[f + 1:] = count, mean, var
        everyone = self.comm.allgather_array(mine)
        counts, means, variances = everyone[:, 0], everyone[:, 1:f + 1], everyone[:, f + 1:]
        total = counts.sum()
        global_mean = counts @ means / total
        global_var = counts @ (variances + (means - global_mean) ** 2) / total
        return global_mean.astype(mean.dtype), global_var.astype(var.dtype), int(total)

    def combine_backward(self, sum_dy, sum_dy_xc):
        f = len(sum_dy)
        buf = np.zeros(2 * f, np.float64)
        if self.present:
            buf[:f], buf[f:] = sum_dy, sum_dy_xc
        self.comm.allreduce_sum(buf)
        return buf[:f], buf[f:]


class ShareOfLoss:
    """A loss whose gradient is scaled by ``scale``: this rank's rows over the global batch's.

    The forward value stays the mean over this rank's rows (the sums are reduced
    separately); the backward turns d(local mean)/d(logits) into this rank's part
    of d(global mean)/d(logits).
    """

    def __init__(self, loss):
        self.loss = loss
        self.scale = 1.0

    @property
    def name(self) -> str:
        return self.loss.name

    def forward(self, logits, targets) -> float:
        return self.loss.forward(logits, targets)

    __call__ = forward

    def backward(self) -> np.ndarray:
        grad = self.loss.backward()
        return grad * grad.dtype.type(self.scale)


class DistributedTrainStep(TrainStep):
    """:class:`TrainStep` on this rank's slice of the global batch it is called with; see the module doc.

    ``comm``: a :class:`nettrain.distributed.comm.Communicator`; ``sync_batchnorm``:
    combine BatchNorm statistics over the ranks; ``stop``: the run's
    :class:`CollectiveStop`, whose requests travel with the sums (None: no signals).
    """

    def __init__(self, model, loss_fn, optimizer, clip_norm=None, *, comm, sync_batchnorm: bool = True,
                 stop: "CollectiveStop | None" = None):
        super().__init__(model, ShareOfLoss(loss_fn), optimizer, clip_norm)
        self.comm = comm
        self.stop = stop
        self.sync_batchnorm = sync_batchnorm
        layers = [layer for _, layer in model.named_layers()]
        self.sliced_layers = [layer for layer in layers if hasattr(layer, "batch_slice")]
        self.statistics = SyncStatistics(comm)
        self.norms = [layer for layer in layers if isinstance(layer, BatchNorm)] if sync_batchnorm else []
        for layer in self.norms:
            layer.statistics = self.statistics
        # without synced statistics each rank's running statistics drift apart: average them every step
        self.averaged = {} if sync_batchnorm else model.buffers()
        self.present = True
        self.weight = 1.0
        self._flat: np.ndarray | None = None

    @classmethod
    def from_spec(cls, model, train_spec, *, comm, stop=None) -> "DistributedTrainStep":
        from ..losses import build_loss
        from ..optimizers import build_optimizer

        distributed = getattr(train_spec, "distributed", None)
        return cls(model, build_loss(train_spec.loss), build_optimizer(train_spec.optimizer, model.parameters()),
                   getattr(train_spec, "clip_grad_norm", None), comm=comm,
                   sync_batchnorm=getattr(distributed, "sync_batchnorm", True), stop=stop)

    def __call__(self, x: np.ndarray, y: np.ndarray):
        """Train on this rank's rows of the global batch ``(x, y)``."""
        n = len(y)
        start, stop = share(n, self.comm.rank, self.comm.size)
        self.present = stop > start
        self.weight = (stop - start) / n
        if not self.present:
            start, stop = 0, 1  # a stand-in row, so that this rank joins every collective
        for layer in self.sliced_layers:
            layer.batch_slice = (start, n)
        self.statistics.present = self.present
        self.loss_fn.scale = self.weight
        return super().__call__(x[start:stop], y[start:stop])

    def locate_nonfinite_output(self, x: np.ndarray, snapshot) -> str:
        """Where the bad step first went non-finite: each rank reruns its slice alone, the lowest rank that
        finds the cause names it (every rank gets the same answer)."""
        where = None
        if self.present:
            for layer in self.norms:  # this rank's statistics only: no collective, and the slice's own culprit
                layer.statistics = LOCAL_STATISTICS
            try:
                where = super().locate_nonfinite_output(x, snapshot)
            finally:
                for layer in self.norms:
                    layer.statistics = self.statistics
        found = self.comm.allgather(where)
        for rank, cause in enumerate(found):
            if cause is not None and not cause.startswith("every layer output is finite"):
                return f"{cause} (in rank {rank}'s slice of the batch)"
        return next(cause for cause in found if cause is not None)

    # -- the reduction ----------------------------------------------------------------
    def reduce(self, sums: BatchSums, grads: dict[str, np.ndarray], samples: int) -> BatchSums:
        """Sum the gradients (already scaled by this rank's share), the batch sums and the stop requests over
        the ranks, in one all-reduce of one float32 buffer; ``grads`` are replaced in place.

        float32 holds the sums to about 1e-7 relative (the counts exactly), far below what metrics print.
        """
        arrays = list(grads.values()) + list(self.averaged.values())
        size = sum(a.size for a in arrays) + 4
        if self._flat is None or self._flat.size != size:
            self._flat = np.empty(size, np.float32)
        flat, offset = self._flat, 0
        for i, a in enumerate(arrays):
            part = flat[offset:offset + a.size]
            if not self.present:
                part[...] = 0.0
            elif i < len(grads):
                part[...] = a.ravel()
            else:  # a running statistic, weighted by this rank's share of the batch
                np.multiply(a.ravel(), np.float32(self.weight), out=part)
            offset += a.size
        local_stop = self.stop is not None and self.stop.pending is not None
        flat[-4:] = (sums.loss_sum, sums.accuracy_sum, sums.samples, 0.0) if self.present else 0.0
        flat[-1] = float(local_stop)
        self.comm.allreduce_sum(flat)
        offset = 0
        for a in arrays:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
        if flat[-1] > 0 and self.stop is not None:
            self.stop.agree(self.comm)
        return BatchSums(float(flat[-4]), float(flat[-3]), int(round(float(flat[-2]))))


class CollectiveStop(StopRequest):
    """A stop request that every rank honours after the same step.

    A signal (mpiexec forwards SIGINT and SIGTERM to every rank) only sets
    ``pending`` on the rank it reaches; the pending flags travel with the next
    step's sums, and ``requested`` becomes true on every rank at once, with the
    largest signal number any rank received.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: int | None = None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.pending is None:
            self.pending = int(signum)

    def _handle(self, signum, frame) -> None:
        if self.pending is not None:
            raise KeyboardInterrupt  # a second signal aborts at once
        self.request(signum)

    def agree(self, comm) -> None:
        """Some rank asked to stop: take the largest signal number asked for, on every rank."""
        buf = np.array([self.pending or 0], np.int64)
        comm.allreduce_max(buf)
        if self.signum is None:
            self.signum = int(buf[0]) if buf[0] > 0 else int(signal.SIGINT)

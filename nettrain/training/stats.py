"""Running sums of the epoch in progress and the metric row they become."""

from __future__ import annotations

import time
from typing import Any

from .step import BatchSums


class EpochStats:
    """The epoch's running training loss and accuracy, sample counts, time and learning rate.

    ``counted`` sums the steps that counted, ``trained`` counts every sample fed (a
    skipped step adds to ``trained`` only); ``seconds`` is training time, added up
    across a stop and resume; ``lr`` is the rate of the last step that counted. A
    mid-epoch checkpoint stores :meth:`state_dict`, so a resumed epoch ends with the
    same row as one never stopped.
    """

    def __init__(self) -> None:
        self.counted = BatchSums()
        self.trained = 0
        self.seconds = 0.0
        self.lr = 0.0
        self.start_clock()

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.counted.loss_sum, "acc_sum": self.counted.accuracy_sum, "seen": self.counted.samples,
                "trained": self.trained, "seconds": self.seconds, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counted = BatchSums(state.get("loss_sum", 0.0), state.get("acc_sum", 0.0), state.get("seen", 0))
        self.trained, self.seconds, self.lr = state.get("trained", 0), state.get("seconds", 0.0), state.get("lr", 0.0)

    def start_clock(self) -> None:
        """Start timing this session's part of the epoch (at its start, or where a resume picks it up)."""
        self._t0, self._seconds0, self._trained0 = time.perf_counter(), self.seconds, self.trained

    def add_step(self, samples: int, sums: BatchSums | None, lr: float) -> None:
        """Count a step over ``samples`` samples; ``sums`` is None for a skipped step."""
        if sums is not None:
            self.counted = self.counted + sums
            self.lr = lr
        self.trained += samples
        self.seconds = self._seconds0 + time.perf_counter() - self._t0

    @property
    def seen(self) -> int:
        return self.counted.samples

    @property
    def img_per_s(self) -> float:
        """Training speed since :meth:`start_clock`."""
        return (self.trained - self._trained0) / max(self.seconds - self._seconds0, 1e-9)

    def row(self, epoch: int, validation: dict[str, float] | None, top_ks=(), validation_seconds: float = 0.0
            ) -> dict[str, Any]:
        """The epoch's metric row; ``validation`` holds the means of :class:`EvalSums` (None: no validation)."""
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": self.counted.loss,
            "train_accuracy": self.counted.accuracy,
            "val_loss": None,
            "val_accuracy": None,
        }
        if validation is not None:
            row["val_loss"], row["val_accuracy"] = validation["loss"], validation["accuracy"]
            row.update({f"val_top{k}_accuracy": validation[f"top{k}_accuracy"] for k in top_ks})
        row["lr"] = self.lr
        row["seconds"] = self.seconds + validation_seconds
        row["img_per_s"] = self.trained / self.seconds if self.seconds > 0 else 0.0
        return row

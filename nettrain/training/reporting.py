"""What a training run tells the outside: :class:`Reporter` hooks while it runs, :class:`TrainResult` at the end.

The trainer never prints. The CLI's reporter (:class:`nettrain.console.ConsoleReporter`)
draws the progress bar and the epoch lines; other reporters (a sweep's, a metrics
writer's) override the hooks they need, the rest do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Reporter:
    """Progress hooks the trainer calls; this base class ignores them all."""

    def train_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step: run folder, epochs, sizes, where training starts."""

    def epoch_start(self, epoch: int, epochs: int, num_batches: int, start_batch: int) -> None:
        """``epoch`` counts from 1; ``start_batch`` > 0 when resuming mid-epoch."""

    def batch_end(self, epoch: int, batch: int, loss: float, accuracy: float, img_per_s: float) -> None:
        """After each step, with the epoch's running mean loss and accuracy."""

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        """After each epoch with its metric row; ``improved`` when best.npz was written."""

    def note(self, message: str) -> None:
        """Something the user should know (a skipped step, early stopping, a changed config)."""

    def train_end(self, result: "TrainResult") -> None:
        """Once, at the end (also after an interruption)."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    rows: list[dict[str, Any]]
    stopped: str  # "completed", "early_stopping" or "interrupted"
    best_value: float | None = None
    best_epoch: int | None = None
    monitor: str = ""
    signal: int | None = None
    cursor: tuple[int, int] = (0, 0)  # (finished epochs, batches into the next one)
    skipped_steps: int = 0

    @property
    def exit_code(self) -> int:
        # The shell convention for "killed by signal N".
        return 128 + self.signal if self.signal is not None else 0

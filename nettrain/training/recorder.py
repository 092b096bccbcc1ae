"""What a training run writes into its run folder, and in which order."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..checkpoint import Checkpoint, save_checkpoint
from ..errors import CheckpointError, TrainingError
from ..runs import MetricsLog, RunDir, model_summary, plot_curves, write_json, write_text_atomic


class RunRecorder:
    """A run folder (:class:`nettrain.runs.RunDir`) as training fills it.

    ``config.yaml`` and ``summary.json`` at the start, one metric row per epoch in
    ``metrics.csv``/``metrics.jsonl``, ``checkpoints/last.npz`` after every epoch (and
    on a stop), ``best.npz`` when the monitored metric improves, ``curves.png`` when
    ``plots``. ``rows`` holds the rows written so far. ``writes`` is False for a recorder
    that writes nothing (the other ranks of a data-parallel run).
    """

    writes = True

    def __init__(self, run: RunDir, columns: Iterable[str], plots: bool = True):
        self.run = run
        self.metrics = MetricsLog(run, columns)
        self.plots = plots
        self.rows: list[dict[str, Any]] = []

    @classmethod
    def create(cls, config, columns: Iterable[str]) -> "RunRecorder":
        """A new run folder for ``config``: ``output.dir``, else ``output.root/<name>-<timestamp>``."""
        run = RunDir.create(config.run_name, config.output.dir, getattr(config.output, "root", "runs"))
        return cls(run, columns, getattr(config.output, "plots", True))

    @classmethod
    def open(cls, path: str | Path, columns: Iterable[str], plots: bool = True) -> "RunRecorder":
        """The existing run folder at ``path``, to resume from its ``last.npz``."""
        return cls(RunDir.open(path), columns, plots)

    def write_config(self, text: str) -> None:
        write_text_atomic(self.run.config_yaml, text)

    def write_summary(self, model, config) -> None:
        write_json(self.run.summary_json, model_summary(model, config))

    def keep_rows(self, epochs: int) -> list[dict[str, Any]]:
        """Cut the metric files back to epochs ``1..epochs`` (rows of later epochs were written
        just before a crash, after their checkpoint); returns the rows kept."""
        self.rows = self.metrics.truncate(epochs)
        return self.rows

    def record_epoch(self, row: dict[str, Any], checkpoint: Checkpoint, best: bool) -> None:
        """The row first, the checkpoints last: a crash in between leaves an extra row that resume cuts away."""
        self.metrics.append(row)
        self.rows.append(row)
        if best:
            self.save(self.run.best, checkpoint)
        self.save(self.run.last, checkpoint)
        if self.plots:
            plot_curves(self.rows, self.run.curves_png)

    def save_last(self, checkpoint: Checkpoint) -> None:
        self.save(self.run.last, checkpoint)

    @staticmethod
    def save(path: Path, checkpoint: Checkpoint) -> None:
        try:
            save_checkpoint(path, checkpoint)
        except CheckpointError as e:
            raise TrainingError(str(e)) from None

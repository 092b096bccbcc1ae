"""TensorBoard event files of a training run, written by tensorboardX (``pip install 'nettrain[tensorboard]'``).

With ``output.tensorboard: true`` (or ``nettrain train --tensorboard``) the trainer adds a
:class:`TensorBoardReporter` beside its own reporter; it writes into ``RUN/tensorboard/``:

* after every epoch (step = the epoch number, from 1): ``loss/train``, ``loss/val``,
  ``accuracy/train``, ``accuracy/val`` (and ``accuracy/val_topK``), ``learning_rate``
  (of the epoch's last step) and ``images_per_second``;
* every ``output.histograms_every`` epochs: ``weights/<parameter>`` and
  ``gradients/<parameter>`` histograms (the gradients of the epoch's last step).

A resumed run appends a new event file to the same folder, starting with a purge
marker at its first epoch, so TensorBoard hides anything an earlier session logged
from that epoch on: no step appears twice. Each session's file name ends in its
session number, so that the files sort in the order they were written even within
one second (tensorboardX names files by the second, and would overwrite a file of
the same name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError, TrainingError

SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "learning_rate",
    "img_per_s": "images_per_second",
}


def scalar_tag(column: str) -> str | None:
    """The TensorBoard tag of a metrics column (``val_top5_accuracy`` -> ``accuracy/val_top5``), None to skip."""
    if column in SCALARS:
        return SCALARS[column]
    if column.startswith("val_top") and column.endswith("_accuracy"):
        return "accuracy/" + column[: -len("_accuracy")]
    return None


class ReporterGroup:
    """A reporter that passes every hook it is called with on to each of its reporters that has it, in order.

    Duck-typed rather than a :class:`nettrain.training.Reporter` subclass, so that this module
    does not import the trainer that imports it, and a hook added to Reporter later passes too.
    """

    def __init__(self, *reporters):
        self.reporters = list(reporters)

    def __getattr__(self, hook: str):
        if hook.startswith("_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for reporter in self.reporters:
                method = getattr(reporter, hook, None)
                if callable(method):
                    method(*args, **kwargs)

        return call


class TensorBoardReporter:
    """Epoch scalars and parameter histograms of ``model`` as TensorBoard events in ``log_dir``.

    ``first_epoch`` (from 1) is the first epoch this session trains; when ``resumed``, events an
    earlier session wrote at or after it are purged. It has only the Reporter hooks it needs.
    """

    def __init__(self, log_dir: str | Path, model=None, histograms_every: int | None = None, *,
                 first_epoch: int = 1, resumed: bool = False):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("output.tensorboard needs the 'tensorboardX' package: "
                              "pip install 'nettrain[tensorboard]'") from None
        self.log_dir = Path(log_dir)
        self.model = model
        self.histograms_every = histograms_every
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            session = len(list(self.log_dir.glob("events.out.tfevents.*"))) + 1
            self.writer = SummaryWriter(str(self.log_dir), purge_step=first_epoch if resumed else None,
                                        filename_suffix=f".session{session:04d}")
        except OSError as e:
            raise TrainingError(f"{self.log_dir}: cannot write TensorBoard logs ({e.strerror or e}); check that the "
                                "run folder is writable, or set output.tensorboard: false") from None

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        epoch = int(row["epoch"])
        for column, value in row.items():
            tag = scalar_tag(column)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, float(value), epoch)
        if self.model is not None and self.histograms_every and epoch % self.histograms_every == 0:
            for name, array in self.model.parameters().items():
                self.writer.add_histogram(f"weights/{name}", array, epoch)
            for name, array in self.model.gradients().items():
                self.writer.add_histogram(f"gradients/{name}", array, epoch)
        self.writer.flush()  # a crash or a kill loses no finished epoch

    def train_end(self, result) -> None:
        self.writer.close()


def with_tensorboard(reporter, trainer) -> ReporterGroup:
    """``reporter`` plus a :class:`TensorBoardReporter` writing into the trainer's ``RUN/tensorboard/``."""
    board = TensorBoardReporter(trainer.run.path / "tensorboard", trainer.model,
                                getattr(trainer.config.output, "histograms_every", None),
                                first_epoch=trainer.epoch + 1, resumed=trainer.global_step > 0)
    return ReporterGroup(reporter, board)

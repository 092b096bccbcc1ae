"""The training loop: epochs of mini-batch steps, validation, checkpoints and metrics.

:class:`Trainer` runs a config from start (or from a run folder's ``last.npz``) to
the end, early stopping or an interruption. It never prints: progress goes to a
:class:`~nettrain.training.reporting.Reporter`. The work is done by collaborators:
:class:`TrainStep` (one optimizer step), :class:`EvalLoop` (validation),
:class:`EpochStats` (the epoch's running sums), :class:`BestTracker` and
:class:`EarlyStopping` (the monitored metric), :class:`RunRecorder` (the run folder)
and :class:`StopRequest` (signals).

Exactness. Everything a step depends on is a function of state the checkpoint
holds: parameters, BatchNorm statistics, optimizer slots, schedule state, Dropout
generator states, the data order (a function of ``(seed, epoch)``) and the batch
cursor. The running sums of the epoch's training loss and accuracy are saved too,
so a run stopped mid-epoch and resumed ends with the same weights and the same
metric rows as one that never stopped.

Signals. SIGINT and SIGTERM only set a flag; the loop finishes the current step,
writes ``last.npz`` with the mid-epoch cursor and returns a result whose exit
code is 128 + the signal number (130, 143).

Non-finite values. A NaN or infinite loss or gradient stops training with a
TrainingError that names the epoch, the step and the first layer whose output (or
parameter whose gradient) went non-finite; ``train.on_nonfinite: skip`` drops the
step instead, as if it never ran. No checkpoint is written after a bad step.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, architecture_signature, load_checkpoint, model_rng_states, restore_model
from ..data import Batches, DataBundle, load_data
from ..errors import CheckpointError, ConfigError, TrainingError
from ..losses import build_loss
from ..optimizers import build_optimizer
from ..runs import METRIC_COLUMNS
from ..plots import PLOT_EXTRA, plotting_available
from ..schedules import build_schedule
from .evaluation import EvalLoop
from .monitors import BestTracker, EarlyStopping, monitored_metric
from .recorder import RunRecorder
from .reporting import Reporter, TrainResult
from .resume import check_changes
from .signals import StopRequest
from .stats import EpochStats
from .step import NonFiniteStep, StepResult, TrainStep


# --------------------------------------------------------------------------- config access

def _config_path(config) -> str:
    source = getattr(config, "source_path", None)
    return str(Path(source).resolve()) if source else ""


def _config_dir(config) -> Path | None:
    source = getattr(config, "source_path", None)
    return Path(source).resolve().parent if source else None


def _top_ks(config, num_classes: int) -> list[int]:
    """The k of every ``topK_accuracy`` in train.metrics that says something (k < classes)."""
    ks = []
    for m in getattr(config.train, "metrics", None) or []:
        match = re.fullmatch(r"top(\d+)_accuracy", str(m))
        if match and 1 < int(match.group(1)) < num_classes and int(match.group(1)) not in ks:
            ks.append(int(match.group(1)))
    return ks


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Trains ``config`` into a run folder (new, or ``resume``'s) and reports to ``reporter``.

    ``data`` and ``model`` may be given to skip loading/building (tests); the model
    must then be the one ``build_model(config, seed)`` would build. A resume that would
    change the architecture or the schedule length is refused unless ``allow_changes``
    (see :mod:`.resume`). A variant of the loop (data-parallel, say) sets ``step_class``
    and ``eval_class`` to its own :class:`TrainStep` and :class:`EvalLoop`.
    """

    step_class = TrainStep
    eval_class = EvalLoop

    def __init__(self, config, *, resume: str | Path | None = None, reporter: Reporter | None = None,
                 data: DataBundle | None = None, model=None, allow_changes: bool = False):
        self.config = config
        self.allow_changes = allow_changes
        self.reporter = reporter or Reporter()
        t = config.train
        self.seed = int(t.seed)
        self.epochs = int(t.epochs)
        self.batch_size = int(t.batch_size)
        self.on_nonfinite = getattr(t, "on_nonfinite", "stop")
        if model is None:
            from ..builder import build_model

            model = build_model(config, seed=self.seed)
        self.model = model
        self.model.cast(np.float32)
        if data is None and config.data is None:
            raise ConfigError(f"{_config_path(config) or 'config'}: no data section; add one, e.g. "
                              "data: {dataset: fashion_mnist}")
        self.data = data if data is not None else load_data(config.data, self.model.input_shape, self.seed,
                                                            _config_dir(config))
        self._check_outputs_fit_classes()
        loss_fn = build_loss(t.loss)
        self.params = self.model.parameters()
        self.optimizer = build_optimizer(t.optimizer, self.params)
        self.step = self.step_class(self.model, loss_fn, self.optimizer, getattr(t, "clip_grad_norm", None))
        self.steps_per_epoch = self._batches(0).num_batches
        self.schedule = build_schedule(getattr(t, "schedule", None), self.optimizer.lr, self.epochs,
                                       self.steps_per_epoch)
        self.top_ks = _top_ks(config, self.data.num_classes)
        self.validation = self.eval_class(self.model, loss_fn,
                                          int(getattr(t, "eval_batch_size", None) or self.batch_size), self.top_ks)
        self.best = BestTracker(*self._monitor(config.output.monitor, config.output.mode, "output.monitor"))
        es = getattr(t, "early_stopping", None)
        self.early_stopping = None if es is None else EarlyStopping(
            *self._monitor(es.monitor, es.mode, "train.early_stopping.monitor"), es.patience, es.min_delta)
        self.config_text = config.to_yaml()
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.stats = EpochStats()
        self.skipped_steps = 0
        self.stop = StopRequest()
        self._open_run(resume)
        if getattr(config.output, "tensorboard", False) and self.recorder.writes:  # event files in RUN/tensorboard/
            from ..tensorboard_log import with_tensorboard

            self.reporter = with_tensorboard(self.reporter, self)

    def _open_run(self, resume: str | Path | None) -> None:
        """A new run folder with the config and summary, or ``resume``'s with its state restored."""
        columns = list(METRIC_COLUMNS)
        columns[5:5] = [f"val_top{k}_accuracy" for k in self.top_ks]
        if resume is not None:
            self.recorder = RunRecorder.open(resume, columns, getattr(self.config.output, "plots", True))
            self._restore()
        else:
            self.recorder = RunRecorder.create(self.config, columns)
            self.recorder.write_config(self.config_text)
            self.recorder.write_summary(self.model, self.config)
        # A resumed run drops rows of epochs after its checkpoint (written just before a crash).
        rows = self.recorder.keep_rows(self.epoch)
        if len(rows) < self.epoch:
            self.reporter.note(f"{self.run.metrics_jsonl} holds {len(rows)} rows for {self.epoch} finished "
                               "epochs; the missing rows cannot be recovered")

    @property
    def run(self):
        """The run folder (:class:`nettrain.runs.RunDir`)."""
        return self.recorder.run

    # -- setup ----------------------------------------------------------------
    def _check_outputs_fit_classes(self) -> None:
        out = self.model.output_shape
        k = self.data.num_classes
        if out and len(out) >= 1 and out[-1] > 1 and out[-1] < k:
            raise ConfigError(f"the model outputs {out[-1]} classes but the data has {k} "
                              f"({', '.join(self.data.classes[:4])}, ...); set the last layer's units to {k}")

    def _monitor(self, name: str, mode: str, where: str) -> tuple[str, str]:
        name, note = monitored_metric(name, where, self.top_ks, self.data.val is not None)
        if note:
            self.reporter.note(note)
        return name, mode

    def _batches(self, epoch: int, start_batch: int = 0) -> Batches:
        return Batches(self.data.train, self.batch_size, shuffle=True, seed=self.seed, epoch=epoch,
                       augment=getattr(self.config.data, "augment", None), start_batch=start_batch)

    # -- checkpoints ----------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """Everything needed to continue exactly from here."""
        return Checkpoint(
            params=self.model.parameters(),
            buffers=self.model.buffers(),
            optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict(),
            config_text=self.config_text,
            config_path=_config_path(self.config),
            epoch=self.epoch,
            batch=self.batch,
            global_step=self.global_step,
            rng_states=model_rng_states(self.model),
            classes=list(self.data.classes),
            mean=self.data.mean,
            std=self.data.std,
            trainer_state={"state": self._progress_state(), "partial": self.stats.state_dict() if self.batch else {}},
            architecture=architecture_signature(self.model),
        )

    def _progress_state(self) -> dict[str, Any]:
        early = self.early_stopping.state_dict() if self.early_stopping else {"es_best": None, "es_bad": 0}
        return {**self.best.state_dict(), **early, "skipped": self.skipped_steps}

    def _load_last(self) -> Checkpoint:
        """The checkpoint to resume from: the run folder's ``last.npz``."""
        return load_checkpoint(self.run.last)

    def _restore(self) -> None:
        ckpt = self._load_last()
        restore_model(ckpt, self.model)  # a new shape is refused here, naming the parameter
        changed = check_changes(ckpt.config_text, self.config, self.run.path, self.allow_changes)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.schedule.load_state_dict(ckpt.schedule)
        except CheckpointError as e:
            raise CheckpointError(f"{self.run.last}: {e}; resume with the train.optimizer and train.schedule "
                                  "it was saved with (see the run's config.yaml)") from None
        self.epoch, self.batch, self.global_step = ckpt.epoch, ckpt.batch, ckpt.global_step
        progress = ckpt.trainer_state.get("state", {})
        self.best.load_state_dict(progress)
        if self.early_stopping:
            self.early_stopping.load_state_dict(progress)
        self.skipped_steps = int(progress.get("skipped", 0))
        if ckpt.batch:
            self.stats.load_state_dict(ckpt.trainer_state.get("partial", {}))
        if ckpt.batch > self.steps_per_epoch:
            raise CheckpointError(f"{self.run.last}: cursor at batch {ckpt.batch} of {self.steps_per_epoch}; "
                                  "the data or train.batch_size changed since it was saved")
        if changed:
            self.reporter.note(f"the config differs from the one {self.run.last} was saved with in "
                               f"{', '.join(changed)}; continuing with the config given now")
        self.recorder.write_config(self.config_text)

    # -- steps ----------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop after the current step (what the signal handler does)."""
        self.stop.request(signum)

    def train_step(self, xb: np.ndarray, yb: np.ndarray) -> StepResult | None:
        """One optimizer step at the current cursor's learning rate; None when the step was skipped."""
        self.optimizer.lr = self.schedule.lr_at(self.epoch, self.batch)
        try:
            return self.step(xb, yb)
        except NonFiniteStep as bad:
            self._bad_step(bad)
            return None

    def _bad_step(self, bad: NonFiniteStep) -> None:
        message = (f"{bad.what} at epoch {self.epoch + 1}, step {self.batch + 1} "
                   f"(global step {self.global_step + 1}): {bad.where}")
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.reporter.note(f"{message}; step skipped")
            return
        last = f"; the last good checkpoint is {self.run.last}" if self.run.last.exists() else ""
        raise TrainingError(f"{message}; lower the learning rate, set train.clip_grad_norm, "
                            f"or set train.on_nonfinite: skip{last}")

    # -- epochs ---------------------------------------------------------------
    def run_epoch(self) -> bool:
        """Train the rest of the current epoch; False when a stop was requested mid-epoch."""
        batches = self._batches(self.epoch, self.batch)
        self.reporter.epoch_start(self.epoch + 1, self.epochs, batches.num_batches, self.batch)
        self.stats.start_clock()
        for xb, yb in batches:
            result = self.train_step(xb, yb)
            self.batch += 1
            self.global_step += 1
            self.stats.add_step(len(yb), result.sums if result else None, self.optimizer.lr)
            if self.stats.seen:
                self.reporter.batch_end(self.epoch + 1, self.batch, self.stats.counted.loss,
                                        self.stats.counted.accuracy, self.stats.img_per_s)
            if self.stop.requested and self.batch < batches.num_batches:
                return False
        return True

    def finish_epoch(self) -> tuple[dict[str, Any], bool, bool]:
        """Validate, log, checkpoint; returns (row, improved, stop early)."""
        if self.stats.seen == 0:
            raise TrainingError(f"every step of epoch {self.epoch + 1} had a non-finite loss or gradient; "
                                "lower the learning rate or check the data")
        started = time.perf_counter()
        val = self.validation.run(self.data.val.x, self.data.val.y).means() if self.data.val is not None else None
        row = self.stats.row(self.epoch + 1, val, self.top_ks, time.perf_counter() - started)
        self.schedule.on_epoch_end(row)
        improved = self.best.update(row)
        stop_early = self.early_stopping is not None and self.early_stopping.update(row)
        self.epoch, self.batch = self.epoch + 1, 0
        self.stats = EpochStats()
        self.recorder.record_epoch(row, self.checkpoint(), best=improved)
        return row, improved, stop_early

    def fit(self, handle_signals: bool = True) -> TrainResult:
        """Train until ``train.epochs``, early stopping or a stop request."""
        with self.stop.handling_signals(handle_signals):
            self.reporter.train_start(self._start_info())
            stopped = self._train_epochs()
        result = TrainResult(
            run_dir=self.run.path, epochs_done=self.epoch, rows=list(self.recorder.rows), stopped=stopped,
            best_value=self.best.value, best_epoch=self.best.epoch, monitor=self.best.monitor,
            signal=self.stop.signum if stopped == "interrupted" else None,
            cursor=(self.epoch, self.batch), skipped_steps=self.skipped_steps,
        )
        self.reporter.train_end(result)
        return result

    def _train_epochs(self) -> str:
        """The epochs still to train; returns why they ended (as TrainResult.stopped)."""
        if getattr(self.config.output, "plots", True) and not plotting_available():
            self.reporter.note(f"no curves.png without matplotlib; {PLOT_EXTRA} adds it")
        if self.epoch >= self.epochs and self.global_step > 0:
            self.reporter.note(f"the run already trained {self.epoch} epochs; "
                               "raise train.epochs (--epochs N --allow-changes) to continue it")
        while self.epoch < self.epochs:
            if not self.run_epoch():
                self.recorder.save_last(self.checkpoint())
                return "interrupted"
            row, improved, stop_early = self.finish_epoch()
            self.reporter.epoch_end(row, improved)
            if stop_early:
                self.reporter.note(f"early stopping: {self.early_stopping.reason()}")
                return "early_stopping"
            if self.stop.requested and self.epoch < self.epochs:
                return "interrupted"
        return "completed"

    def _start_info(self) -> dict[str, Any]:
        return {
            "run_dir": self.run.path, "epochs": self.epochs, "start_epoch": self.epoch + 1,
            "start_batch": self.batch, "steps_per_epoch": self.steps_per_epoch,
            "train_size": len(self.data.train), "val_size": len(self.data.val) if self.data.val else 0,
            "params": self.model.param_count(), "resumed": self.global_step > 0, "monitor": self.best.monitor,
            "total_params": self.model.param_count() + self.model.buffer_count(),
            "data": getattr(self.data, "source", ""), "batch_size": self.batch_size,
        }


def train(config, *, resume: str | Path | None = None, reporter: Reporter | None = None,
          data: DataBundle | None = None, handle_signals: bool = True, allow_changes: bool = False) -> TrainResult:
    """Build, train and checkpoint ``config``; see :class:`Trainer`."""
    return Trainer(config, resume=resume, reporter=reporter, data=data,
                   allow_changes=allow_changes).fit(handle_signals=handle_signals)

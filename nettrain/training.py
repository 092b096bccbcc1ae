"""The training loop: epochs of mini-batch steps, validation, checkpoints and metrics.

:class:`Trainer` runs a config from start (or from a run folder's ``last.npz``) to
the end, early stopping or an interruption. It never prints: progress goes to a
:class:`Reporter` whose methods the loop calls (the CLI's reporter draws the bar).

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

import math
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .checkpoint import (Checkpoint, architecture_signature, load_checkpoint, model_rng_states,
                         restore_model, save_checkpoint)
from .data import Batches, DataBundle, Split, load_data
from .errors import CheckpointError, ConfigError, TrainingError
from .losses import accuracy, build_loss, topk_accuracy
from .optimizers import build_optimizer
from .plots import PLOT_EXTRA, plotting_available
from .runs import METRIC_COLUMNS, MetricsLog, RunDir, model_summary, plot_curves, write_json, write_text_atomic
from .schedules import build_schedule
from .treediff import changed_keys


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


def _better(value: float, best: float | None, mode: str, delta: float = 0.0) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - delta if mode == "min" else value > best + delta


def evaluate_split(model, loss_fn, split: Split, batch_size: int, top_ks: Sequence[int] = ()) -> dict[str, float]:
    """Mean loss, accuracy and ``topK_accuracy`` for each k of ``model`` on ``split``, in eval mode."""
    n = len(split)
    loss_sum = acc_sum = 0.0
    topk_sums = dict.fromkeys(top_ks, 0.0)
    for start in range(0, n, batch_size):
        xb, yb = split.x[start:start + batch_size], split.y[start:start + batch_size]
        logits = model.forward(xb, training=False)
        loss_sum += loss_fn.forward(logits, yb) * len(yb)
        acc_sum += accuracy(logits, yb) * len(yb)
        for k in top_ks:
            topk_sums[k] += topk_accuracy(logits, yb, k) * len(yb)
    out = {"loss": loss_sum / n, "accuracy": acc_sum / n}
    out.update({f"top{k}_accuracy": total / n for k, total in topk_sums.items()})
    return out


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt(sum of squares) over all gradient arrays (float64 accumulation)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def first_nonfinite(arrays: dict[str, np.ndarray]) -> str | None:
    """Name of the first array (in dict order) holding a NaN or an infinity."""
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            return name
    return None


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


def _training_changes(config, saved_text: str) -> list[str]:
    """The keys in which ``config`` differs from a checkpoint's config, apart from train.epochs
    (which --epochs may raise)."""
    try:
        saved = yaml.safe_load(saved_text)
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        return ["(the saved config cannot be read)"]
    return [key for key in changed_keys(saved, config.resolved) if key != "train.epochs"]


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Trains ``config`` into a run folder (new, or ``resume``'s) and reports to ``reporter``.

    ``data`` and ``model`` may be given to skip loading/building (tests); the model
    must then be the one ``build_model(config, seed)`` would build.
    """

    def __init__(self, config, *, resume: str | Path | None = None, reporter: Reporter | None = None,
                 data: DataBundle | None = None, model=None):
        self.config = config
        self.reporter = reporter or Reporter()
        t = config.train
        self.seed = int(t.seed)
        self.epochs = int(t.epochs)
        self.batch_size = int(t.batch_size)
        self.eval_batch_size = int(getattr(t, "eval_batch_size", None) or self.batch_size)
        self.on_nonfinite = getattr(t, "on_nonfinite", "stop")
        self.clip = getattr(t, "clip_grad_norm", None)
        if model is None:
            from .builder import build_model

            model = build_model(config, seed=self.seed)
        self.model = model
        self.model.cast(np.float32)
        if data is None and config.data is None:
            raise ConfigError(f"{_config_path(config) or 'config'}: no data section; add one, e.g. "
                              "data: {dataset: fashion_mnist}")
        self.data = data if data is not None else load_data(config.data, self.model.input_shape, self.seed,
                                                            _config_dir(config))
        self._check_outputs_fit_classes()
        self.loss_fn = build_loss(t.loss)
        self.params = self.model.parameters()
        self.optimizer = build_optimizer(t.optimizer, self.params)
        self.steps_per_epoch = self._batches(0).num_batches
        self.schedule = build_schedule(getattr(t, "schedule", None), self.optimizer.lr, self.epochs,
                                       self.steps_per_epoch)
        self.top_ks = _top_ks(config, self.data.num_classes)
        self.columns = list(METRIC_COLUMNS)
        self.columns[5:5] = [f"val_top{k}_accuracy" for k in self.top_ks]
        self.monitor, self.monitor_mode = self._monitor(config.output.monitor, config.output.mode, "output.monitor")
        es = getattr(t, "early_stopping", None)
        self.early = None
        if es is not None:
            monitor, mode = self._monitor(es.monitor, es.mode, "train.early_stopping.monitor")
            self.early = (monitor, mode, int(es.patience), float(es.min_delta))
        self.config_text = config.to_yaml()
        self.state = {"best": None, "best_epoch": None, "es_best": None, "es_bad": 0, "skipped": 0}
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.partial = self._fresh_partial()
        self._stop_signal: int | None = None
        if resume is not None:
            self.run = RunDir.open(resume)
            self._restore()
        else:
            self.run = RunDir.create(config.run_name, config.output.dir, getattr(config.output, "root", "runs"))
            write_text_atomic(self.run.config_yaml, self.config_text)
            write_json(self.run.summary_json, model_summary(self.model, config))
        self.metrics = MetricsLog(self.run, self.columns)
        # A resumed run drops rows of epochs after its checkpoint (written just before a crash).
        self.rows = self.metrics.truncate(self.epoch)
        if len(self.rows) < self.epoch:
            self.reporter.note(f"{self.run.metrics_jsonl} holds {len(self.rows)} rows for {self.epoch} finished "
                               "epochs; the missing rows cannot be recovered")

    # -- setup ----------------------------------------------------------------
    def _check_outputs_fit_classes(self) -> None:
        out = self.model.output_shape
        k = self.data.num_classes
        if out and len(out) >= 1 and out[-1] > 1 and out[-1] < k:
            raise ConfigError(f"the model outputs {out[-1]} classes but the data has {k} "
                              f"({', '.join(self.data.classes[:4])}, ...); set the last layer's units to {k}")

    def _monitor(self, name: str, mode: str, where: str) -> tuple[str, str]:
        known = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} | {
            f"val_top{k}_accuracy" for k in self.top_ks}
        if name not in known:
            raise ConfigError(f"{where}: unknown metric '{name}'; use one of {sorted(known)}")
        if name.startswith("val_") and self.data.val is None:
            fallback = "train_" + name[4:] if name in ("val_loss", "val_accuracy") else "train_accuracy"
            self.reporter.note(f"{where}: no validation split, so '{fallback}' is monitored instead of '{name}'")
            name = fallback
        return name, mode

    def _fresh_partial(self) -> dict[str, float]:
        # Running sums of the epoch in progress; saved with a mid-epoch checkpoint.
        return {"loss_sum": 0.0, "acc_sum": 0.0, "seen": 0, "trained": 0, "seconds": 0.0, "lr": 0.0}

    def _batches(self, epoch: int, start_batch: int = 0) -> Batches:
        return Batches(self.data.train, self.batch_size, shuffle=True, seed=self.seed, epoch=epoch,
                       augment=getattr(self.config.data, "augment", None), start_batch=start_batch)

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run.last)
        restore_model(ckpt, self.model)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.schedule.load_state_dict(ckpt.schedule)
        except CheckpointError as e:
            raise CheckpointError(f"{self.run.last}: {e}; resume with the train.optimizer and train.schedule "
                                  "it was saved with (see the run's config.yaml)") from None
        self.epoch, self.batch, self.global_step = ckpt.epoch, ckpt.batch, ckpt.global_step
        saved = ckpt.trainer_state
        self.state.update(saved.get("state", {}))
        if ckpt.batch:
            self.partial.update(saved.get("partial", {}))
        if ckpt.batch > self.steps_per_epoch:
            raise CheckpointError(f"{self.run.last}: cursor at batch {ckpt.batch} of {self.steps_per_epoch}; "
                                  "the data or train.batch_size changed since it was saved")
        changed = _training_changes(self.config, ckpt.config_text)
        if changed:
            self.reporter.note(f"the config differs from the one {self.run.last} was saved with in "
                               f"{', '.join(changed)}; continuing with the config given now")
        write_text_atomic(self.run.config_yaml, self.config_text)

    # -- signals --------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop after the current step (what the signal handler does)."""
        if self._stop_signal is None:
            self._stop_signal = int(signum)

    def _install_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt  # a second Ctrl-C aborts at once; files stay intact (atomic writes)
            self.request_stop(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    # -- checkpoints ----------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
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
            trainer_state={"state": dict(self.state), "partial": dict(self.partial) if self.batch else {}},
            architecture=architecture_signature(self.model),
        )

    def _save(self, path: Path) -> None:
        try:
            save_checkpoint(path, self.checkpoint())
        except CheckpointError as e:
            raise TrainingError(str(e)) from None

    # -- one step -------------------------------------------------------------
    def _snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({k: v.copy() for k, v in self.model.buffers().items()}, model_rng_states(self.model))

    def _rollback(self, snapshot) -> None:
        buffers, rng = snapshot
        self.model.load_arrays({}, buffers)
        generators = self.model.random_generators()
        for path, state in rng.items():
            generators[path].bit_generator.state = state

    def _first_nonfinite_layer(self, xb: np.ndarray, snapshot) -> str:
        """Rerun the forward pass of the bad step with a hook to find where it went non-finite."""
        if not np.isfinite(xb).all():
            return "the input batch itself holds NaN or infinite values"
        found: list[str] = []

        def hook(path, layer, y):
            if not found and not np.isfinite(y).all():
                found.append(path)

        self._rollback(snapshot)
        self.model.set_forward_hook(hook)
        try:
            self.model.forward(xb, training=True)
        finally:
            self.model.set_forward_hook(None)
        if found:
            return f"first non-finite output in layer '{found[0]}'"
        return "every layer output is finite, the loss itself overflowed"

    def _nonfinite(self, what: str, where: str, snapshot) -> None:
        e, b = self.epoch + 1, self.batch + 1
        message = f"{what} at epoch {e}, step {b} (global step {self.global_step + 1}): {where}"
        if self.on_nonfinite == "skip":
            self._rollback(snapshot)
            self.state["skipped"] += 1
            self.reporter.note(f"{message}; step skipped")
            return
        last = f"; the last good checkpoint is {self.run.last}" if self.run.last.exists() else ""
        raise TrainingError(f"{message}; lower the learning rate, set train.clip_grad_norm, "
                            f"or set train.on_nonfinite: skip{last}")

    def train_step(self, xb: np.ndarray, yb: np.ndarray) -> tuple[float, float] | None:
        """One optimizer step on a batch: (loss, accuracy), or None when the step was skipped."""
        self.optimizer.lr = self.schedule.lr_at(self.epoch, self.batch)
        snapshot = self._snapshot()
        logits = self.model.forward(xb, training=True)
        loss = self.loss_fn.forward(logits, yb)
        if not math.isfinite(loss):
            self._nonfinite(f"non-finite loss ({loss})", self._first_nonfinite_layer(xb, snapshot), snapshot)
            return None
        acc = accuracy(logits, yb)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        grads = self.model.gradients()
        norm = global_norm(grads)
        if not math.isfinite(norm):
            name = first_nonfinite(grads)
            if name is not None:
                self._nonfinite("non-finite gradient", f"first non-finite gradient of parameter '{name}'", snapshot)
                return None
            # finite gradients whose float32 sum of squares overflowed
            norm = math.sqrt(sum(float(np.vdot(g.astype(np.float64), g.astype(np.float64))) for g in grads.values()))
        if self.clip and norm > self.clip:
            scale = np.float32(self.clip / (norm + 1e-6))
            for g in grads.values():
                g *= scale
        self.optimizer.step(self.params, grads)
        return loss, acc

    # -- the loop -------------------------------------------------------------
    def run_epoch(self) -> bool:
        """Train the rest of the current epoch; False when a stop was requested mid-epoch."""
        batches = self._batches(self.epoch, self.batch)
        p = self.partial
        self.reporter.epoch_start(self.epoch + 1, self.epochs, batches.num_batches, self.batch)
        t0 = time.perf_counter()
        seconds0, trained0 = p["seconds"], p["trained"]
        for xb, yb in batches:
            # NaN and overflow are detected and reported by train_step itself, not as numpy warnings
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                result = self.train_step(xb, yb)
            self.batch += 1
            self.global_step += 1
            if result is not None:
                loss, acc = result
                p["loss_sum"] += loss * len(yb)
                p["acc_sum"] += acc * len(yb)
                p["seen"] += len(yb)
                p["lr"] = self.optimizer.lr
            p["trained"] += len(yb)
            p["seconds"] = seconds0 + time.perf_counter() - t0
            if p["seen"]:
                rate = (p["trained"] - trained0) / max(p["seconds"] - seconds0, 1e-9)
                self.reporter.batch_end(self.epoch + 1, self.batch, p["loss_sum"] / p["seen"],
                                        p["acc_sum"] / p["seen"], rate)
            if self._stop_signal is not None and self.batch < batches.num_batches:
                return False
        return True

    def finish_epoch(self) -> tuple[dict[str, Any], bool, bool]:
        """Validate, log, checkpoint; returns (row, improved, early_stop)."""
        p = self.partial
        if p["seen"] == 0:
            raise TrainingError(f"every step of epoch {self.epoch + 1} had a non-finite loss or gradient; "
                                "lower the learning rate or check the data")
        t_val = time.perf_counter()
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": p["loss_sum"] / p["seen"],
            "train_accuracy": p["acc_sum"] / p["seen"],
            "val_loss": None,
            "val_accuracy": None,
        }
        if self.data.val is not None:
            val = evaluate_split(self.model, self.loss_fn, self.data.val, self.eval_batch_size, self.top_ks)
            row["val_loss"], row["val_accuracy"] = val["loss"], val["accuracy"]
            row.update({f"val_top{k}_accuracy": val[f"top{k}_accuracy"] for k in self.top_ks})
        row["lr"] = p["lr"]
        row["seconds"] = p["seconds"] + time.perf_counter() - t_val
        row["img_per_s"] = p["trained"] / p["seconds"] if p["seconds"] > 0 else 0.0
        self.schedule.on_epoch_end(row)

        improved = _better(row[self.monitor], self.state["best"], self.monitor_mode)
        if improved:
            self.state["best"], self.state["best_epoch"] = row[self.monitor], row["epoch"]
        stop = False
        if self.early is not None:
            monitor, mode, patience, delta = self.early
            if _better(row[monitor], self.state["es_best"], mode, delta):
                self.state["es_best"], self.state["es_bad"] = row[monitor], 0
            else:
                self.state["es_bad"] += 1
            stop = self.state["es_bad"] >= patience

        self.epoch, self.batch = self.epoch + 1, 0
        self.partial = self._fresh_partial()
        # Rows first, checkpoint last: a crash in between leaves an extra row that resume cuts away.
        self.metrics.append(row)
        self.rows.append(row)
        if improved:
            self._save(self.run.best)
        self._save(self.run.last)
        if getattr(self.config.output, "plots", True):
            plot_curves(self.rows, self.run.curves_png)
        return row, improved, stop

    def fit(self, handle_signals: bool = True) -> TrainResult:
        """Train until ``train.epochs``, early stopping or a stop request."""
        previous = self._install_handlers() if handle_signals else {}
        stopped = "completed"
        try:
            self.reporter.train_start({
                "run_dir": self.run.path, "epochs": self.epochs, "start_epoch": self.epoch + 1,
                "start_batch": self.batch, "steps_per_epoch": self.steps_per_epoch,
                "train_size": len(self.data.train), "val_size": len(self.data.val) if self.data.val else 0,
                "params": self.model.param_count(), "resumed": self.global_step > 0, "monitor": self.monitor,
            })
            if getattr(self.config.output, "plots", True) and not plotting_available():
                self.reporter.note(f"no curves.png without matplotlib; {PLOT_EXTRA} adds it")
            if self.epoch >= self.epochs and self.global_step > 0:
                self.reporter.note(f"the run already trained {self.epoch} epochs; "
                                   "raise train.epochs (--epochs N) to continue it")
            while self.epoch < self.epochs:
                if not self.run_epoch():
                    self._save(self.run.last)
                    stopped = "interrupted"
                    break
                row, improved, early = self.finish_epoch()
                self.reporter.epoch_end(row, improved)
                if early:
                    monitor, _, patience, _ = self.early
                    self.reporter.note(f"early stopping: {monitor} did not improve for {patience} epochs")
                    stopped = "early_stopping"
                    break
                if self._stop_signal is not None and self.epoch < self.epochs:
                    stopped = "interrupted"
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        result = TrainResult(
            run_dir=self.run.path, epochs_done=self.epoch, rows=list(self.rows), stopped=stopped,
            best_value=self.state["best"], best_epoch=self.state["best_epoch"], monitor=self.monitor,
            signal=self._stop_signal if stopped == "interrupted" else None,
            cursor=(self.epoch, self.batch), skipped_steps=self.state["skipped"],
        )
        self.reporter.train_end(result)
        return result


def train(config, *, resume: str | Path | None = None, reporter: Reporter | None = None,
          data: DataBundle | None = None, handle_signals: bool = True) -> TrainResult:
    """Build, train and checkpoint ``config``; see :class:`Trainer`."""
    return Trainer(config, resume=resume, reporter=reporter, data=data).fit(handle_signals=handle_signals)

"""Terminal output of ``nettrain train``, ``eval`` and ``predict`` (the library itself never prints).

Training: :class:`ConsoleReporter` is the CLI's :class:`nettrain.training.Reporter`,
a tqdm bar per epoch (running loss, accuracy, images per second, the whole run's
ETA; left out when stderr is not a terminal or with ``--quiet``) and a rich line
after each epoch. When stdout is not a terminal (nohup, CI logs) a plain line every
``train.log_every`` batches takes the bar's place there, as Keras' ``verbose=2``.
Evaluation and prediction: rich tables of a report from :mod:`nettrain.evaluate`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .training import Reporter, TrainResult


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def duration(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def epoch_line(row: dict[str, Any], epochs: int, improved: bool, monitor: str) -> str:
    """One epoch as rich markup: losses, accuracies, learning rate, time and speed."""
    parts = [
        f"[bold]epoch {row['epoch']}/{epochs}[/bold]",
        f"train loss {_number(row.get('train_loss'))} acc {_percent(row.get('train_accuracy'))}",
    ]
    if row.get("val_loss") is not None:
        parts.append(f"val loss {_number(row['val_loss'])} acc {_percent(row['val_accuracy'])}")
    for key, value in row.items():
        if key.startswith("val_top") and value is not None:
            parts.append(f"{key[4:].replace('_accuracy', '')} {_percent(value)}")
    parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['seconds']:.1f}s")
    parts.append(f"{row['img_per_s']:,.0f} img/s")
    if improved:
        parts.append(f"[green]best {escape(monitor)}[/green]")
    return "  ".join(parts)


class ConsoleReporter(Reporter):
    """Progress bar on stderr, epoch lines and notes through a rich console."""

    def __init__(self, console: Console | None = None, quiet: bool = False, log_every: int = 50):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.show_bar = not quiet and sys.stderr.isatty()
        self.show_lines = not quiet and not self.console.is_terminal  # a log file gets lines, not a bar
        self.log_every = max(1, int(log_every))
        self.bar = None
        self.epochs = 0
        self.monitor = ""
        self.batch_size = self.steps_per_epoch = self.num_batches = 0

    def train_start(self, info: dict[str, Any]) -> None:
        self.epochs = info["epochs"]
        self.monitor = info.get("monitor", "")
        self.batch_size = info.get("batch_size", 0)
        self.steps_per_epoch = info.get("steps_per_epoch", 0)
        where = escape(str(info["run_dir"]))
        if info.get("resumed"):
            at = f"epoch {info['start_epoch']}" + (f", batch {info['start_batch'] + 1}" if info["start_batch"] else "")
            self.console.print(f"resuming [bold]{where}[/bold] at {at}")
        else:
            total = info.get("total_params", info["params"])
            self.console.print(f"run folder [bold]{where}[/bold]: {total:,} parameters ({info['params']:,} trainable), "
                               f"{info['train_size']:,} training / {info['val_size']:,} validation samples")
        if info.get("data"):
            self.console.print(f"data: {escape(info['data'])}")

    def epoch_start(self, epoch: int, epochs: int, num_batches: int, start_batch: int) -> None:
        self.num_batches = num_batches
        if not self.show_bar:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=num_batches, initial=start_batch, desc=f"epoch {epoch}/{epochs}", unit="batch",
                        leave=False, dynamic_ncols=True, file=sys.stderr)

    def etas(self, epoch: int, batch: int, img_per_s: float) -> tuple[float, float] | None:
        """Seconds left in the epoch and in the run at this epoch's speed (validation not included)."""
        if img_per_s <= 0 or not self.batch_size:
            return None
        per_batch = self.batch_size / img_per_s
        epoch_left = max(self.num_batches - batch, 0) * per_batch
        return epoch_left, epoch_left + max(self.epochs - epoch, 0) * self.steps_per_epoch * per_batch

    def batch_end(self, epoch: int, batch: int, loss: float, accuracy: float, img_per_s: float) -> None:
        due = batch % self.log_every == 0
        if self.show_lines and due and batch < self.num_batches:
            eta = self.etas(epoch, batch, img_per_s)
            left = f"  ETA epoch {duration(eta[0])}, run {duration(eta[1])}" if eta else ""
            self.console.print(f"epoch {epoch}/{self.epochs} batch {batch}/{self.num_batches}  loss {loss:.4f}  "
                               f"acc {_percent(accuracy)}  {img_per_s:,.0f} img/s{left}")
        if self.bar is None:
            return
        self.bar.update(1)
        if due or batch == self.bar.total:
            eta = self.etas(epoch, batch, img_per_s)
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", img_s=f"{img_per_s:,.0f}",
                                 run_eta=duration(eta[1]) if eta else "?", refresh=False)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        self._close_bar()
        left = self.epochs - row["epoch"]
        eta = f"  ETA {duration(left * row['seconds'])}" if left > 0 and row.get("seconds") else ""
        self.console.print(epoch_line(row, self.epochs, improved, self.monitor) + eta)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(f"note: {message}", file=sys.stderr)
        else:
            self.console.print(f"[yellow]note:[/yellow] {escape(message)}")

    def train_end(self, result: TrainResult) -> None:
        self._close_bar()


# --------------------------------------------------------------------------- eval / predict

def confusion_png_path(checkpoint: str | Path, split: str) -> Path:
    """Where eval puts its confusion plot: the run folder of a checkpoint in ``<run>/checkpoints/``,
    else beside the checkpoint."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / f"confusion_{split}_{checkpoint.stem}.png"
    return checkpoint.with_name(f"{checkpoint.stem}_confusion_{split}.png")


def checkpoint_age(epoch: int, batch: int) -> str:
    """How far training had got when a checkpoint was saved: ``epoch`` finished epochs, ``batch``
    batches into the next one (a run stopped mid-epoch)."""
    if batch:
        return f"in epoch {epoch + 1}, after {batch} batch{'' if batch == 1 else 'es'}"
    return f"epoch {epoch}" if epoch else "before the first training step"


def print_eval_table(report: dict[str, Any], png: Path | None = None, console: Console | None = None) -> None:
    """Overall scores, the per-class table and the confusion matrix."""
    console = console or Console(highlight=False, soft_wrap=True)
    head = (f"[bold]{escape(report['checkpoint'])}[/bold] ({checkpoint_age(report['epoch'], report.get('batch', 0))}) "
            f"on the {report['split']} split, {report['samples']:,} samples")
    console.print(head)
    line = f"loss {report['loss']:.4f}  accuracy {_percent(report['accuracy'])}"
    if "top5_accuracy" in report:
        line += f"  top-5 {_percent(report['top5_accuracy'])}"
    console.print(line)
    scores = Table(title="per class", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "support"):
        scores.add_column(col, justify="left" if col == "class" else "right")
    rows = [(escape(c["class"]), c) for c in report["per_class"]]
    rows += [(f"{name} avg", avg) for name, avg in report.get("averages", {}).items()]
    for i, (name, c) in enumerate(rows):
        scores.add_row(name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", f"{c['support']:,}",
                       end_section=i == len(report["per_class"]) - 1)
    console.print(scores)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    cm.add_column("")
    for i in range(len(report["classes"])):
        cm.add_column(str(i), justify="right")
    for i, (name, counts) in enumerate(zip(report["classes"], report["confusion_matrix"])):
        cm.add_row(f"{i} {escape(name)}", *[f"[bold]{n}[/bold]" if i == j else str(n) for j, n in enumerate(counts)])
    console.print(cm)
    if png is not None:
        console.print(f"confusion matrix plot: {escape(str(png))}")


def print_predictions(results: list[dict[str, Any]], console: Console | None = None) -> None:
    """One row per input: the predicted class (index and name), its probability and the runners-up."""
    console = console or Console(highlight=False, soft_wrap=True)
    table = Table()
    for col in ("file", "class", "name", "probability", "next"):
        table.add_column(col, justify="right" if col in ("class", "probability") else "left")
    for r in results:
        runners = ", ".join(f"{escape(t['name'])} {t['probability']:.3f}" for t in r["top_k"][1:])
        table.add_row(escape(r["file"]), str(r["class"]), escape(r["name"]), f"{r['probability']:.3f}", runners)
    console.print(table)


def prediction_csv_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """``file,class,name,probability,top_k`` with top_k as ``name:probability`` pairs joined by ``;``."""
    rows: list[list[Any]] = [["file", "class", "name", "probability", "top_k"]]
    for r in results:
        top = ";".join(f"{t['name']}:{t['probability']:.6f}" for t in r["top_k"])
        rows.append([r["file"], r["class"], r["name"], f"{r['probability']:.6f}", top])
    return rows

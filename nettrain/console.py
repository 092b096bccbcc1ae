"""Terminal output of ``nettrain train``, ``eval`` and ``predict`` (the library itself never prints).

Training: :class:`ConsoleReporter` is the CLI's :class:`nettrain.training.Reporter`,
a tqdm bar per epoch (running loss, accuracy, images per second; left out when
stderr is not a terminal or with ``--quiet``) and a rich line after each epoch.
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
        self.log_every = max(1, int(log_every))
        self.bar = None
        self.epochs = 0
        self.monitor = ""

    def train_start(self, info: dict[str, Any]) -> None:
        self.epochs = info["epochs"]
        self.monitor = info.get("monitor", "")
        where = escape(str(info["run_dir"]))
        if info.get("resumed"):
            at = f"epoch {info['start_epoch']}" + (f", batch {info['start_batch'] + 1}" if info["start_batch"] else "")
            self.console.print(f"resuming [bold]{where}[/bold] at {at}")
        else:
            self.console.print(f"run folder [bold]{where}[/bold]: {info['params']:,} parameters, "
                               f"{info['train_size']:,} training / {info['val_size']:,} validation samples")

    def epoch_start(self, epoch: int, epochs: int, num_batches: int, start_batch: int) -> None:
        if not self.show_bar:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=num_batches, initial=start_batch, desc=f"epoch {epoch}/{epochs}", unit="batch",
                        leave=False, dynamic_ncols=True, file=sys.stderr)

    def batch_end(self, epoch: int, batch: int, loss: float, accuracy: float, img_per_s: float) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if batch % self.log_every == 0 or batch == self.bar.total:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", img_s=f"{img_per_s:,.0f}", refresh=False)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch_end(self, row: dict[str, Any], improved: bool) -> None:
        self._close_bar()
        self.console.print(epoch_line(row, self.epochs, improved, self.monitor))

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

"""Terminal output: the epoch line, the training reporter, the eval and predict tables."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from nettrain.console import (ConsoleReporter, confusion_png_path, duration, epoch_line, print_eval_table,
                              print_predictions)

ROW = {"epoch": 3, "train_loss": 0.41234, "train_accuracy": 0.8561, "val_loss": 0.5, "val_accuracy": 0.8,
       "val_top5_accuracy": 0.99, "lr": 0.00125, "seconds": 12.34, "img_per_s": 4321.0}


def recording_console() -> Console:
    return Console(file=io.StringIO(), width=250, highlight=False, soft_wrap=True, color_system=None)


def text(console: Console) -> str:
    return console.file.getvalue()


def test_epoch_line():
    console = recording_console()
    console.print(epoch_line(ROW, 10, improved=True, monitor="val_accuracy"))
    assert text(console).strip() == ("epoch 3/10  train loss 0.4123 acc 85.61%  val loss 0.5000 acc 80.00%  "
                                     "top5 99.00%  lr 0.00125  12.3s  4,321 img/s  best val_accuracy")
    console = recording_console()
    console.print(epoch_line({**ROW, "val_loss": None, "val_accuracy": None, "val_top5_accuracy": None}, 10,
                             improved=False, monitor="train_loss"))
    assert "val" not in text(console) and "top5" not in text(console) and "best" not in text(console)


def test_reporter_prints_start_epochs_and_notes_without_a_bar():
    console = recording_console()
    reporter = ConsoleReporter(console, quiet=True)
    assert not reporter.show_bar
    reporter.train_start({"run_dir": Path("runs/x"), "epochs": 4, "params": 12345, "train_size": 900,
                          "val_size": 100, "monitor": "val_loss", "total_params": 12401,
                          "data": "the Fashion-MNIST subset shipped with nettrain (10,000 training images) in d"})
    reporter.epoch_start(1, 4, 10, 0)
    reporter.batch_end(1, 1, 0.5, 0.5, 100.0)  # no bar: nothing to update
    reporter.epoch_end(ROW, improved=True)
    reporter.note("something [odd] happened")
    out = text(console)
    assert "run folder runs/x: 12,401 parameters (12,345 trainable), 900 training / 100 validation samples" in out
    assert "data: the Fashion-MNIST subset shipped with nettrain (10,000 training images) in d" in out
    assert "epoch 3/4" in out and "best val_loss" in out
    assert "note: something [odd] happened" in out  # markup in a note is printed as written
    console = recording_console()
    ConsoleReporter(console, quiet=True).train_start({"run_dir": "r", "epochs": 4, "resumed": True,
                                                      "start_epoch": 2, "start_batch": 7})
    assert text(console).strip() == "resuming r at epoch 2, batch 8"


def test_confusion_png_path():
    assert confusion_png_path("runs/x/checkpoints/best.npz", "test") == Path("runs/x/confusion_test_best.png")
    assert confusion_png_path("elsewhere/model.npz", "val") == Path("elsewhere/model_confusion_val.png")


def test_eval_table():
    report = {"checkpoint": "runs/x/checkpoints/best.npz", "epoch": 2, "split": "test", "samples": 1200,
              "loss": 0.25, "accuracy": 0.875, "top5_accuracy": 0.99, "classes": ["cat", "dog"],
              "per_class": [{"class": "cat", "precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 600},
                            {"class": "dog", "precision": 0.8, "recall": 0.9, "f1": 0.847, "support": 600}],
              "confusion_matrix": [[480, 120], [60, 540]]}
    console = recording_console()
    print_eval_table(report, Path("c.png"), console)
    out = text(console)
    assert "runs/x/checkpoints/best.npz (epoch 2) on the test split, 1,200 samples" in out
    assert "loss 0.2500  accuracy 87.50%  top-5 99.00%" in out
    assert "cat" in out and "0.900" in out and "480" in out and "540" in out
    assert "confusion matrix plot: c.png" in out


def test_predictions_table():
    console = recording_console()
    print_predictions([{"file": "a.png", "class": 1, "name": "dog", "probability": 0.75,
                        "top_k": [{"class": 1, "name": "dog", "probability": 0.75},
                                  {"class": 0, "name": "cat", "probability": 0.2}]}],
                      console)
    out = text(console)
    assert "a.png" in out and "dog" in out and "0.750" in out and "cat 0.200" in out


def test_lines_instead_of_a_bar_when_stdout_is_not_a_terminal():
    console = recording_console()
    reporter = ConsoleReporter(console, log_every=2)
    assert reporter.show_lines and not console.is_terminal
    reporter.train_start({"run_dir": "r", "epochs": 3, "params": 10, "train_size": 40, "val_size": 0,
                          "batch_size": 8, "steps_per_epoch": 5})
    reporter.epoch_start(1, 3, 5, 0)
    for batch in range(1, 6):
        reporter.batch_end(1, batch, 0.5, 0.25, 80.0)  # 0.1 s a batch
    reporter.epoch_end({**ROW, "epoch": 1, "seconds": 30.0}, improved=False)
    lines = [line for line in text(console).splitlines() if line.startswith("epoch 1/3")]
    # one line every 2 batches (not at the epoch's last batch: the epoch line follows), then the epoch line
    assert lines[0] == "epoch 1/3 batch 2/5  loss 0.5000  acc 25.00%  80 img/s  ETA epoch 0:00, run 0:01"
    assert lines[1].startswith("epoch 1/3 batch 4/5") and len(lines) == 3
    assert lines[2].endswith("ETA 1:00")  # two more epochs of 30 s
    quiet = ConsoleReporter(recording_console(), quiet=True, log_every=1)
    assert not quiet.show_lines


def test_duration():
    assert [duration(s) for s in (0, 42.4, 725, 3723)] == ["0:00", "0:42", "12:05", "1:02:03"]

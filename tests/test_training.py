"""The training loop: determinism, exact resume, signals, non-finite values, early stopping, run folders, CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import nettrain.console
from nettrain import checkpoint as ckpt_module
from nettrain.checkpoint import load_checkpoint
from nettrain.cli import app
from nettrain.config import load_config
from nettrain.data import load_data
from nettrain.errors import CheckpointError, TrainingError
from nettrain.runs import METRIC_COLUMNS, read_metrics
from nettrain.training import Reporter, Trainer
from tinyrun import StopAfter, tiny_config, tiny_config_dict, without_time, write_config


def fit(config, **kwargs):
    trainer = Trainer(config, **kwargs)
    return trainer, trainer.fit()


def fit_interrupted(config, epoch: int, batch: int, signum: int = signal.SIGINT):
    reporter = StopAfter(epoch, batch, signum)
    trainer = Trainer(config, reporter=reporter)
    reporter.trainer = trainer
    return trainer, trainer.fit()


def assert_same_state(a: Trainer, b: Trainer) -> None:
    pa, pb = a.model.parameters(), b.model.parameters()
    assert pa.keys() == pb.keys()
    for name in pa:
        assert np.array_equal(pa[name], pb[name]), name
    for name, buf in a.model.buffers().items():
        assert np.array_equal(buf, b.model.buffers()[name]), name
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def csv_rows(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.csv")


# --------------------------------------------------------------------------- determinism and resume

def test_same_config_and_seed_give_identical_metrics(tmp_path):
    a, ra = fit(tiny_config(tmp_path, "a"))
    b, rb = fit(tiny_config(tmp_path, "b"))
    assert ra.stopped == rb.stopped == "completed"
    assert len(ra.rows) == 2
    assert without_time(csv_rows(tmp_path / "a")) == without_time(csv_rows(tmp_path / "b"))
    assert_same_state(a, b)
    # and a different seed really trains differently
    c, rc = fit(tiny_config(tmp_path, "c", overrides=["train.seed=1"]))
    assert without_time(rc.rows) != without_time(ra.rows)


def test_training_learns_and_stays_float32(tmp_path):
    trainer, result = fit(tiny_config(tmp_path, epochs=4))
    assert result.rows[-1]["val_accuracy"] > 0.6
    assert result.rows[-1]["train_loss"] < result.rows[0]["train_loss"]
    assert all(p.dtype == np.float32 for p in trainer.model.parameters().values())
    assert all(b.dtype == np.float32 for b in trainer.model.buffers().values())


def test_one_epoch_then_resume_equals_two_epochs(tmp_path):
    straight, _ = fit(tiny_config(tmp_path, "straight", epochs=2))
    _, first = fit(tiny_config(tmp_path, "split", epochs=1))
    assert first.epochs_done == 1
    resumed, result = fit(tiny_config(tmp_path, "split", epochs=2), resume=tmp_path / "split", allow_changes=True)
    assert result.epochs_done == 2
    assert_same_state(straight, resumed)
    rows = csv_rows(tmp_path / "split")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert without_time(rows) == without_time(csv_rows(tmp_path / "straight"))
    jsonl = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert without_time(jsonl) == without_time(rows)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_mid_epoch_then_resume_is_exact(tmp_path, signum):
    straight, _ = fit(tiny_config(tmp_path, "straight", epochs=2))
    config = tiny_config(tmp_path, "stopped", epochs=2)
    _, stopped = fit_interrupted(config, epoch=2, batch=3, signum=signum)
    assert stopped.stopped == "interrupted"
    assert stopped.exit_code == 128 + signum
    assert stopped.cursor == (1, 3)
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.npz")
    assert (saved.epoch, saved.batch) == (1, 3)
    assert [r["epoch"] for r in csv_rows(tmp_path / "stopped")] == [1]
    resumed, result = fit(config, resume=tmp_path / "stopped")
    assert result.stopped == "completed"
    assert_same_state(straight, resumed)
    assert without_time(csv_rows(tmp_path / "stopped")) == without_time(csv_rows(tmp_path / "straight"))


def test_resume_restores_plateau_schedule_state(tmp_path):
    # mode max on a falling train loss: every epoch after the first is a plateau, so the rate halves
    plateau = {"type": "reduce_on_plateau", "monitor": "train_loss", "mode": "max", "patience": 0, "factor": 0.5}
    straight, done = fit(tiny_config(tmp_path, "straight", epochs=3, schedule=plateau))
    assert [r["lr"] for r in done.rows] == [0.01, 0.01, 0.005]
    config = tiny_config(tmp_path, "stopped", epochs=3, schedule=plateau)
    fit_interrupted(config, epoch=3, batch=2)
    resumed, _ = fit(config, resume=tmp_path / "stopped")
    assert_same_state(straight, resumed)
    assert without_time(csv_rows(tmp_path / "stopped")) == without_time(done.rows)


def test_gradient_clipping_bounds_the_update(tmp_path):
    config = tiny_config(tmp_path, dropout=False, augment=False, optimizer={"type": "sgd", "lr": 1.0},
                         clip_grad_norm=0.01)
    trainer = Trainer(config)
    before = {k: v.copy() for k, v in trainer.params.items()}
    xb, yb = trainer.data.train.x[:32], trainer.data.train.y[:32]
    trainer.train_step(xb, yb)
    step = np.sqrt(sum(float(np.sum((trainer.params[k] - before[k]).astype(np.float64) ** 2)) for k in before))
    assert step == pytest.approx(0.01, rel=1e-3)  # lr 1 times a gradient clipped to norm 0.01


def test_real_signal_sets_the_flag_and_the_step_finishes(tmp_path):
    class Kill(Reporter):
        def batch_end(self, epoch, batch, loss, accuracy, img_per_s):
            if (epoch, batch) == (1, 2):
                os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    _, result = fit(tiny_config(tmp_path), reporter=Kill())
    assert result.exit_code == 143 and result.cursor == (0, 2)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers are put back
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.npz").batch == 2


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path):
    straight, _ = fit(tiny_config(tmp_path, "straight", epochs=2))
    fit(tiny_config(tmp_path, "run", epochs=1))
    run = tmp_path / "run"
    # a crash after the metrics row of epoch 2 but before its checkpoint
    bogus = {c: 0.5 for c in METRIC_COLUMNS} | {"epoch": 2}
    with open(run / "metrics.csv", "a") as f:
        f.write(",".join(str(bogus[c]) for c in METRIC_COLUMNS) + "\n")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(bogus) + "\n")
    resumed, _ = fit(tiny_config(tmp_path, "run", epochs=2), resume=run, allow_changes=True)
    assert without_time(csv_rows(run)) == without_time(csv_rows(tmp_path / "straight"))
    assert len(read_metrics(run / "metrics.jsonl")) == 2


def test_resume_with_another_architecture_is_refused(tmp_path):
    fit(tiny_config(tmp_path, "run", epochs=1))
    other = tiny_config(tmp_path, "run", epochs=2, overrides=["model.layers[0].filters=5"])
    with pytest.raises(CheckpointError) as e:
        Trainer(other, resume=tmp_path / "run")
    assert "'conv.kernel' has shape (4, 1, 3, 3) in the checkpoint but (5, 1, 3, 3)" in str(e.value)


def test_resume_of_a_finished_run_trains_nothing_more(tmp_path):
    first, _ = fit(tiny_config(tmp_path, epochs=1))
    reporter = StopAfter(0, 0)
    again, result = fit(tiny_config(tmp_path, epochs=1), resume=tmp_path / "run", reporter=reporter)
    assert result.epochs_done == 1 and len(csv_rows(tmp_path / "run")) == 1
    assert_same_state(first, again)
    assert any("already trained 1 epochs" in n for n in reporter.notes)


# --------------------------------------------------------------------------- best, early stopping

def test_best_checkpoint_follows_the_monitor(tmp_path):
    config = tiny_config(tmp_path, epochs=4, overrides=["output.monitor=val_loss", "output.mode=min"])
    _, result = fit(config)
    losses = [r["val_loss"] for r in result.rows]
    best_epoch = int(np.argmin(losses)) + 1
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.npz")
    assert best.epoch == best_epoch and result.best_epoch == best_epoch
    assert result.best_value == min(losses)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.npz").epoch == 4


def test_early_stopping_stops_after_patience(tmp_path):
    # min_delta 1.0 makes every epoch after the first count as "no improvement"
    config = tiny_config(tmp_path, epochs=6, early_stopping={"monitor": "val_accuracy", "mode": "max",
                                                              "patience": 2, "min_delta": 1.0})
    reporter = StopAfter(0, 0)
    _, result = fit(config, reporter=reporter)
    assert result.stopped == "early_stopping" and result.exit_code == 0
    assert [r["epoch"] for r in result.rows] == [1, 2, 3]
    assert any("early stopping" in n for n in reporter.notes)


def test_early_stopping_with_patience_0_stops_at_the_first_epoch_without_improvement(tmp_path):
    # mode max on a falling train loss: epoch 1 is the best, epoch 2 does not improve on it
    config = tiny_config(tmp_path, epochs=4, early_stopping={"monitor": "train_loss", "mode": "max", "patience": 0})
    reporter = StopAfter(0, 0)
    _, result = fit(config, reporter=reporter)
    assert result.stopped == "early_stopping" and [r["epoch"] for r in result.rows] == [1, 2]
    assert any("early stopping: train_loss has not improved for 1 epoch " in n for n in reporter.notes)


def test_early_stopping_counts_on_across_a_resume(tmp_path):
    stopping = {"monitor": "val_accuracy", "mode": "max", "patience": 2, "min_delta": 1.0}
    _, straight = fit(tiny_config(tmp_path, "straight", epochs=6, early_stopping=stopping))
    config = tiny_config(tmp_path, "stopped", epochs=6, early_stopping=stopping)
    fit_interrupted(config, epoch=3, batch=2)
    _, resumed = fit(config, resume=tmp_path / "stopped")
    assert straight.stopped == resumed.stopped == "early_stopping"
    assert [r["epoch"] for r in resumed.rows] == [r["epoch"] for r in straight.rows] == [1, 2, 3]


def test_top5_metric_adds_a_column(tmp_path):
    config = tiny_config(tmp_path, classes=7, epochs=1, metrics=["accuracy", "top5_accuracy"])
    _, result = fit(config)
    row = csv_rows(tmp_path / "run")[0]
    assert 0.0 <= row["val_accuracy"] <= row["val_top5_accuracy"] <= 1.0
    assert list(row) == METRIC_COLUMNS[:5] + ["val_top5_accuracy"] + METRIC_COLUMNS[5:]


# --------------------------------------------------------------------------- non-finite values

class Sabotage(Reporter):
    """Runs ``action(trainer)`` after step ``batch`` of ``epoch``."""

    def __init__(self, epoch, batch, action):
        self.at, self.action, self.trainer, self.notes = (epoch, batch), action, None, []

    def batch_end(self, epoch, batch, loss, accuracy, img_per_s):
        if (epoch, batch) == self.at:
            self.action(self.trainer)

    def note(self, message):
        self.notes.append(message)


def fit_sabotaged(config, epoch, batch, action):
    reporter = Sabotage(epoch, batch, action)
    trainer = Trainer(config, reporter=reporter)
    reporter.trainer = trainer
    return trainer, reporter


def test_nonfinite_loss_names_step_and_first_layer_and_keeps_last_checkpoint(tmp_path):
    def poison_conv(trainer):
        trainer.model.parameters()["conv.bias"][0] = np.nan

    trainer, _ = fit_sabotaged(tiny_config(tmp_path, epochs=3), 2, 3, poison_conv)
    last = tmp_path / "run" / "checkpoints" / "last.npz"
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    message = str(e.value)
    assert "\n" not in message
    assert "non-finite loss" in message and "epoch 2, step 4" in message and "layer 'conv'" in message
    assert str(last) in message
    assert load_checkpoint(last).epoch == 1  # the good checkpoint of epoch 1 is untouched
    assert [r["epoch"] for r in csv_rows(tmp_path / "run")] == [1]


def test_nonfinite_gradient_names_the_parameter(tmp_path):
    def poison_gradient(trainer):
        out = trainer.model.layers[-1]
        backward = out.backward

        def bad_backward(dy):
            dx = backward(dy)
            out.grads["kernel"][0, 0] = np.inf
            return dx

        out.backward = bad_backward

    trainer, _ = fit_sabotaged(tiny_config(tmp_path), 1, 2, poison_gradient)
    with pytest.raises(TrainingError) as e:
        trainer.fit()
    assert "non-finite gradient" in str(e.value) and "'out.kernel'" in str(e.value)
    assert "epoch 1, step 3" in str(e.value)


def test_nonfinite_input_is_reported_as_such(tmp_path):
    config = tiny_config(tmp_path, augment=False)
    data = load_data(config.data, (1, 8, 8), seed=0)
    data.train.x[5, 0, 0, 0] = np.nan
    with pytest.raises(TrainingError) as e:
        Trainer(config, data=data).fit()
    assert "input batch" in str(e.value)


def test_skip_mode_drops_bad_steps_and_rolls_back_batchnorm(tmp_path):
    config = tiny_config(tmp_path, augment=False, epochs=2, on_nonfinite="skip")
    data = load_data(config.data, (1, 8, 8), seed=0)
    data.train.x[5, 0, 0, 0] = np.inf  # one bad sample: one bad batch per epoch
    reporter = StopAfter(0, 0)
    trainer = Trainer(config, data=data, reporter=reporter)
    result = trainer.fit()
    assert result.stopped == "completed" and result.skipped_steps == 2
    assert sum("step skipped" in n for n in reporter.notes) == 2
    for name, a in {**trainer.model.parameters(), **trainer.model.buffers()}.items():
        assert np.isfinite(a).all(), name
    assert all(np.isfinite(r["train_loss"]) for r in result.rows)


# --------------------------------------------------------------------------- run folders and output errors

def test_run_folder_contents(tmp_path):
    config = tiny_config(tmp_path, epochs=2, overrides=["train.batch_size=50", "output.plots=true"])
    fit(config)
    run = tmp_path / "run"
    for name in ("config.yaml", "summary.json", "metrics.csv", "metrics.jsonl",
                 "checkpoints/last.npz", "checkpoints/best.npz"):
        assert (run / name).is_file(), name
    pytest.importorskip("matplotlib")
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_config_has_overrides_and_reloads(tmp_path):
    fit(tiny_config(tmp_path, epochs=3, overrides=["train.epochs=1", "train.optimizer.lr=0.005"]))
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.epochs == 1 and saved.train.optimizer.lr == 0.005
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.npz").config_text == \
        (tmp_path / "run" / "config.yaml").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary  # written, valid JSON


def test_default_run_folder_name(tmp_path, monkeypatch):
    config_dict = tiny_config_dict(epochs=1)
    config_dict["output"]["root"] = str(tmp_path / "runs")
    config = load_config(write_config(tmp_path / "my-exp.yaml", {k: v for k, v in config_dict.items() if k != "name"}))
    _, result = fit(config)
    assert result.run_dir.parent == tmp_path / "runs"
    assert result.run_dir.name.startswith("my-exp-") and len(result.run_dir.name) == len("my-exp-20250101-120000")


def test_existing_run_folder_is_not_overwritten(tmp_path):
    fit(tiny_config(tmp_path, epochs=1))
    with pytest.raises(TrainingError) as e:
        Trainer(tiny_config(tmp_path, epochs=1))
    assert "--resume" in str(e.value)


def test_unwritable_output_folder_is_a_training_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    config = tiny_config(tmp_path, overrides=[f"output.dir={blocker / 'run'}"])
    with pytest.raises(TrainingError) as e:
        Trainer(config)
    assert "\n" not in str(e.value) and "output.dir" in str(e.value)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    real_savez = np.savez
    calls = []

    def savez_failing_late(f, **arrays):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 writes best and last; epoch 2's first write fails
            raise OSError(28, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(ckpt_module.np, "savez", savez_failing_late)
    with pytest.raises(TrainingError) as e:
        Trainer(tiny_config(tmp_path, epochs=2)).fit()
    assert "No space left on device" in str(e.value)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.npz", "last.npz"]
    assert load_checkpoint(checkpoints / "last.npz").epoch == 1


# --------------------------------------------------------------------------- command line

runner = CliRunner()


def test_cli_train_and_one_line_errors(tmp_path):
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "out"))
    result = runner.invoke(app, ["train", str(path), "--quiet", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.output and "run folder" in result.output
    total = load_checkpoint(tmp_path / "out" / "checkpoints" / "last.npz")
    trainable = sum(a.size for a in total.params.values())
    assert f"{trainable + sum(a.size for a in total.buffers.values()):,} parameters ({trainable:,} trainable)" \
        in result.output
    assert "data: synthetic" in result.output
    assert len(csv_rows(tmp_path / "out")) == 1
    again = runner.invoke(app, ["train", str(path), "--quiet"])
    assert again.exit_code == 2
    assert again.output.count("error:") == 1 and "Traceback" not in again.output
    missing = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "error:" in missing.output


def test_cli_interrupt_prints_how_to_resume(tmp_path, monkeypatch):
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "out"))
    real = nettrain.console.ConsoleReporter.batch_end

    def kill_at_step_2(self, epoch, batch, *args):
        real(self, epoch, batch, *args)
        if (epoch, batch) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(nettrain.console.ConsoleReporter, "batch_end", kill_at_step_2)
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 143
    assert f"resume with: nettrain train --resume {tmp_path / 'out'}\n" in result.output
    monkeypatch.undo()
    resumed = runner.invoke(app, ["train", "--quiet", "--resume", str(tmp_path / "out")])
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in csv_rows(tmp_path / "out")] == [1, 2]


def test_resume_from_the_run_folder_alone_is_exact(tmp_path):
    """Stopped by a signal and by request_stop, resumed with the folder's own config: as if never stopped."""
    from nettrain.training.resume import load_run_config

    straight, _ = fit(tiny_config(tmp_path, "straight", epochs=3))
    for name, (epoch, batch) in {"mid": (2, 3), "between": (2, 6)}.items():  # 6 batches an epoch
        _, stopped = fit_interrupted(tiny_config(tmp_path, name, epochs=3), epoch=epoch, batch=batch)
        assert stopped.stopped == "interrupted" and stopped.cursor == ((1, 3) if name == "mid" else (2, 0))
        assert [r["epoch"] for r in csv_rows(tmp_path / name)] == ([1] if name == "mid" else [1, 2])
        resumed, result = fit(load_run_config(tmp_path / name), resume=tmp_path / name)
        assert result.stopped == "completed"
        assert_same_state(straight, resumed)
        rows = csv_rows(tmp_path / name)
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert without_time(rows) == without_time(csv_rows(tmp_path / "straight"))


def test_cli_resume_with_the_run_folder_alone_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = write_config(tmp_path / "straight.yaml", tiny_config_dict(tmp_path / "straight", epochs=3))
    assert runner.invoke(app, ["train", str(straight), "--quiet"]).exit_code == 0
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "out", epochs=3))
    real = nettrain.console.ConsoleReporter.batch_end

    def stop_in_epoch_2(self, epoch, batch, *args):
        real(self, epoch, batch, *args)
        if (epoch, batch) == (2, 4):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(nettrain.console.ConsoleReporter, "batch_end", stop_in_epoch_2)
    stopped = runner.invoke(app, ["train", str(path), "--quiet", "--set", "train.log_every=2"])
    assert stopped.exit_code == 130
    monkeypatch.undo()
    header = (tmp_path / "out" / "config.yaml").read_text().splitlines()[:2]
    assert header == [f"# resolved from {path}", "#   --set train.log_every=2"]
    resumed = runner.invoke(app, ["train", "--resume", str(tmp_path / "out"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "config differs" not in resumed.output
    assert (tmp_path / "out" / "config.yaml").read_text().splitlines()[:2] == header  # still says where from
    rows = csv_rows(tmp_path / "out")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert without_time(rows) == without_time(csv_rows(tmp_path / "straight"))


@pytest.mark.parametrize("args, key", [
    (["--epochs", "5"], "train.epochs (1 -> 5)"),
    (["--batch-size", "16"], "train.batch_size (32 -> 16)"),
    (["--set", "train.schedule.type=cosine"], "train.schedule"),
    (["--set", "model.layers[0].activation=tanh"], "model.layers[0].activation ('relu' -> 'tanh')"),
])
def test_cli_resume_refuses_a_new_architecture_or_schedule_length(tmp_path, args, key):
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "out", epochs=2))
    assert runner.invoke(app, ["train", str(path), "--quiet", "--epochs", "1"]).exit_code == 0
    run = tmp_path / "out"
    saved = (run / "config.yaml").read_bytes()
    last = (run / "checkpoints" / "last.npz").read_bytes()
    refused = runner.invoke(app, ["train", "--resume", str(run), "--quiet", *args])
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "--allow-changes" in lines[0], refused.stderr
    assert (run / "config.yaml").read_bytes() == saved  # not overwritten by the refused change
    assert (run / "checkpoints" / "last.npz").read_bytes() == last
    allowed = runner.invoke(app, ["train", "--resume", str(run), "--quiet", "--allow-changes", *args])
    assert allowed.exit_code == 0, allowed.output
    assert "config differs" in allowed.output and key.split(" ")[0] in allowed.output


def test_cli_resume_with_another_config_names_the_changed_keys(tmp_path):
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "out", epochs=1))
    assert runner.invoke(app, ["train", str(path), "--quiet"]).exit_code == 0
    other = tiny_config_dict(tmp_path / "out", epochs=1)
    other["train"]["optimizer"]["lr"] = 0.02
    other_path = write_config(tmp_path / "other.yaml", other)
    result = runner.invoke(app, ["train", str(other_path), "--resume", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "config differs" in result.output and "train.optimizer.lr" in result.output
    assert "lr: 0.02" in (tmp_path / "out" / "config.yaml").read_text()  # an allowed change is kept


def test_cli_double_ctrl_c_prints_how_to_resume(tmp_path, monkeypatch):
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "out", epochs=2))

    def abort_in_epoch_2(self, epoch, batch, *args):
        if (epoch, batch) == (2, 2):
            raise KeyboardInterrupt  # what the second SIGINT raises

    monkeypatch.setattr(nettrain.console.ConsoleReporter, "batch_end", abort_in_epoch_2)
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 130
    assert f"resume with: nettrain train --resume {tmp_path / 'out'}\n" in result.stderr
    assert "Traceback" not in result.output


def test_cli_train_needs_a_config_or_a_run_folder(tmp_path):
    result = runner.invoke(app, ["train", "--quiet"])
    assert result.exit_code == 2 and "--resume RUN_DIR" in result.stderr and "Traceback" not in result.output


def test_cli_train_flags_are_their_overrides(tmp_path):
    path = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "flags", epochs=3))
    flags = ["--epochs", "1", "--batch-size", "16", "--lr", "0.005", "--seed", "3", "--threads", "1"]
    assert runner.invoke(app, ["train", str(path), "--quiet", *flags]).exit_code == 0
    sets = ["train.epochs=1", "train.batch_size=16", "train.optimizer.lr=0.005", "train.seed=3"]
    config = load_config(path, sets + [f"output.dir={tmp_path / 'flags'}"])
    saved = load_config(tmp_path / "flags" / "config.yaml")
    assert saved.resolved == config.resolved


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_quickstart_reaches_85_percent(tmp_path):
    from nettrain.evaluate import evaluate_checkpoint

    root = Path(__file__).resolve().parent.parent
    quickstart = root / "configs" / "quickstart.yaml"
    if not quickstart.exists():
        pytest.skip("configs/quickstart.yaml is not in this checkout")
    config = load_config(quickstart, [f"output.dir={tmp_path / 'quickstart'}"])
    _, result = fit(config)
    assert result.stopped == "completed"
    report = evaluate_checkpoint(tmp_path / "quickstart", "test")
    assert report["samples"] >= 2000
    assert report["accuracy"] >= 0.85, report["accuracy"]

"""Small wording a new user reads: counts, how far a checkpoint had trained, which config keys changed."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from nettrain.cli import app
from nettrain.console import checkpoint_age
from nettrain.training import Trainer
from nettrain.treediff import changed_keys, flatten
from tinyrun import StopAfter, tiny_config, tiny_config_dict, write_config

runner = CliRunner()


def test_bench_counts_steps_in_words(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_config_dict(tmp_path / "run"))
    one = runner.invoke(app, ["bench", str(config), "--steps", "1", "--warmup", "0", "--batch-size", "4"])
    assert one.exit_code == 0, one.output
    assert "1 timed step after 0 warm-up steps" in one.output
    two = runner.invoke(app, ["bench", str(config), "--steps", "2", "--warmup", "1", "--batch-size", "4"])
    assert "2 timed steps after 1 warm-up step\n" in two.output


def test_checkpoint_age():
    assert checkpoint_age(3, 0) == "epoch 3"
    assert checkpoint_age(0, 5) == "in epoch 1, after 5 batches"
    assert checkpoint_age(2, 1) == "in epoch 3, after 1 batch"
    assert checkpoint_age(0, 0) == "before the first training step"


def test_eval_of_a_run_stopped_in_its_first_epoch(tmp_path):
    reporter = StopAfter(epoch=1, batch=2)
    trainer = Trainer(tiny_config(tmp_path, epochs=2), reporter=reporter)
    reporter.trainer = trainer
    assert trainer.fit(handle_signals=False).stopped == "interrupted"
    run = tmp_path / "run"
    assert not (run / "checkpoints" / "best.npz").exists()
    table = runner.invoke(app, ["eval", str(run), "--no-plot"])
    assert table.exit_code == 0, table.output
    assert "last.npz (in epoch 1, after 2 batches) on the test split" in table.output
    assert "(epoch 0)" not in table.output
    report = json.loads(runner.invoke(app, ["eval", str(run), "--no-plot", "--format", "json"]).stdout)
    assert (report["epoch"], report["batch"]) == (0, 2)


def test_resume_note_names_the_changed_keys(tmp_path):
    Trainer(tiny_config(tmp_path, epochs=1)).fit()
    reporter = StopAfter(epoch=0, batch=0)
    changed = tiny_config(tmp_path, epochs=2, overrides=["train.optimizer.lr=0.005", "model.layers[0].filters=4"])
    Trainer(changed, resume=tmp_path / "run", reporter=reporter, allow_changes=True)
    notes = [n for n in reporter.notes if "config differs" in n]
    assert len(notes) == 1 and "in train.optimizer.lr, train.epochs;" in notes[0]  # every changed key
    same = StopAfter(epoch=0, batch=0)
    Trainer(tiny_config(tmp_path, epochs=1), resume=tmp_path / "run", reporter=same)
    assert not [n for n in same.notes if "config differs" in n]


def test_changed_keys_and_flatten():
    old = {"model": {"layers": [{"units": 3}, {"rate": 0.5}]}, "train": {"lr": 0.1, "epochs": 2, "clip": None}}
    new = {"model": {"layers": [{"units": 4}, {"rate": 0.5}]}, "train": {"lr": 0.1, "epochs": 3.0, "seed": 1}}
    assert changed_keys(old, new) == ["model.layers[0].units", "train.epochs", "train.clip", "train.seed"]
    assert changed_keys({"a": [1, 2]}, {"a": [1]}) == ["a"]
    assert changed_keys({"a": 1}, {"a": 1.0}) == [] and changed_keys({"a": 1}, {"a": True}) == ["a"]
    assert flatten(old) == {"model.layers[0].units": 3, "model.layers[1].rate": 0.5, "train.lr": 0.1,
                            "train.epochs": 2, "train.clip": None}

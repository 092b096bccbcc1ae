"""The run recorder: what lands in the run folder, and the row-before-checkpoint order."""

from __future__ import annotations

import numpy as np
import pytest

from nettrain.builder import build_model
from nettrain.checkpoint import Checkpoint, load_checkpoint
from nettrain.errors import TrainingError
from nettrain.runs import METRIC_COLUMNS, RunDir, read_metrics
from nettrain.training import recorder as recorder_module
from nettrain.training.recorder import RunRecorder
from tinyrun import tiny_config


def row(epoch, loss=0.5):
    return {"epoch": epoch, "train_loss": loss, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
            "lr": 0.01, "seconds": 1.0, "img_per_s": 100.0}


def checkpoint(epoch):
    return Checkpoint(params={"w": np.full(3, epoch, np.float32)}, epoch=epoch)


@pytest.fixture
def recorder(tmp_path):
    return RunRecorder(RunDir.create("x", tmp_path / "run"), METRIC_COLUMNS, plots=False)


def test_rows_are_written_before_the_checkpoints(recorder, monkeypatch):
    saved = []
    real_save = recorder_module.save_checkpoint

    def save(path, ckpt):
        saved.append((path.name, [r["epoch"] for r in read_metrics(recorder.run.metrics_csv)]))
        return real_save(path, ckpt)

    monkeypatch.setattr(recorder_module, "save_checkpoint", save)
    recorder.record_epoch(row(1), checkpoint(1), best=True)
    recorder.record_epoch(row(2), checkpoint(2), best=False)
    assert saved == [("best.npz", [1]), ("last.npz", [1]), ("last.npz", [1, 2])]
    assert load_checkpoint(recorder.run.best).epoch == 1 and load_checkpoint(recorder.run.last).epoch == 2
    assert [r["epoch"] for r in recorder.rows] == [1, 2]
    assert not recorder.run.curves_png.exists()  # plots off


def test_keep_rows_cuts_back_to_the_checkpoint(recorder):
    for epoch in (1, 2, 3):
        recorder.record_epoch(row(epoch), checkpoint(epoch), best=False)
    again = RunRecorder.open(recorder.run.path, METRIC_COLUMNS, plots=False)
    assert [r["epoch"] for r in again.keep_rows(2)] == [1, 2]
    assert [r["epoch"] for r in read_metrics(again.run.metrics_jsonl)] == [1, 2]


def test_create_writes_config_and_summary(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    recorder = RunRecorder.create(config, METRIC_COLUMNS)
    assert recorder.run.path == tmp_path / "run" and recorder.plots is False
    recorder.write_config(config.to_yaml())
    recorder.write_summary(build_model(config), config)
    assert recorder.run.config_yaml.read_text() == config.to_yaml()
    assert recorder.run.summary_json.read_text().startswith("{")


def test_a_failed_checkpoint_write_is_a_training_error(recorder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot write checkpoint"):
        recorder.save(blocker / "last.npz", checkpoint(1))

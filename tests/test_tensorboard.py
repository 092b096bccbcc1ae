"""TensorBoard logs of a run, read back with TensorBoard's own EventAccumulator: every epoch once, also after resumes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed (pip install 'nettrain[tensorboard]')")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard (the reader) is not installed")

from typer.testing import CliRunner  # noqa: E402

from nettrain.checkpoint import load_checkpoint  # noqa: E402
from nettrain.cli import app  # noqa: E402
from nettrain.training import Trainer  # noqa: E402
from tinyrun import StopAfter, tiny_config, tiny_config_dict, write_config  # noqa: E402

runner = CliRunner()
TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_accuracy",
        "accuracy/val": "val_accuracy", "learning_rate": "lr", "images_per_second": "img_per_s"}


def read_events(run_dir):
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def assert_scalars_match(run_dir, rows):
    events = read_events(run_dir)
    assert set(TAGS) <= set(events.Tags()["scalars"])
    for tag, column in TAGS.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [row["epoch"] for row in rows], tag  # each epoch once, in order
        np.testing.assert_allclose([e.value for e in logged], [row[column] for row in rows], rtol=1e-6, err_msg=tag)
    return events


def test_scalars_and_histograms_every_epoch(tmp_path):
    config = tiny_config(tmp_path, epochs=4, overrides=["output.tensorboard=true", "output.histograms_every=2"],
                         metrics=["accuracy", "top2_accuracy"])
    result = Trainer(config).fit()
    events = assert_scalars_match(result.run_dir, result.rows)
    assert [e.step for e in events.Scalars("accuracy/val_top2")] == [1, 2, 3, 4]
    histograms = events.Tags()["histograms"]
    assert {"weights/conv.kernel", "gradients/conv.kernel", "weights/out.bias", "gradients/bn.gamma"} <= set(histograms)
    assert "weights/bn.running_mean" not in histograms  # buffers are not trained
    assert [e.step for e in events.Histograms("weights/conv.kernel")] == [2, 4]
    last = events.Histograms("weights/out.kernel")[-1].histogram_value
    kernel = load_checkpoint(result.run_dir / "checkpoints" / "last.npz").params["out.kernel"]  # end of epoch 4
    assert last.num == kernel.size and last.min == pytest.approx(kernel.min()) and last.max == pytest.approx(kernel.max())


def test_off_by_default(tmp_path):
    result = Trainer(tiny_config(tmp_path, epochs=1)).fit()
    assert not (result.run_dir / "tensorboard").exists()


def test_resume_appends_without_duplicate_steps(tmp_path):
    overrides = ["output.tensorboard=true"]
    reporter = StopAfter(epoch=2, batch=3)
    trainer = Trainer(tiny_config(tmp_path, epochs=3, overrides=overrides), reporter=reporter)
    reporter.trainer = trainer
    first = trainer.fit(handle_signals=False)
    assert first.stopped == "interrupted" and first.epochs_done == 1  # stopped in the middle of epoch 2
    second = Trainer(tiny_config(tmp_path, epochs=3, overrides=overrides), resume=first.run_dir).fit()
    third = Trainer(tiny_config(tmp_path, epochs=5, overrides=overrides), resume=first.run_dir,
                    allow_changes=True).fit()
    assert [r["epoch"] for r in third.rows] == [1, 2, 3, 4, 5] and second.epochs_done == 3
    assert len(list((first.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 3  # one file per session
    assert_scalars_match(first.run_dir, third.rows)


def test_resume_hides_epochs_logged_after_the_checkpoint(tmp_path):
    """Epochs logged by a session whose checkpoint was then lost are purged when they are trained again."""
    import shutil

    overrides = ["output.tensorboard=true"]
    first = Trainer(tiny_config(tmp_path, epochs=2, overrides=overrides)).fit()
    saved = tmp_path / "last_after_2.npz"
    shutil.copy(first.run_dir / "checkpoints" / "last.npz", saved)
    Trainer(tiny_config(tmp_path, epochs=4, overrides=overrides), resume=first.run_dir,
            allow_changes=True).fit()  # logs epochs 3, 4
    shutil.copy(saved, first.run_dir / "checkpoints" / "last.npz")  # back to the end of epoch 2
    final = Trainer(tiny_config(tmp_path, epochs=3, overrides=overrides + ["train.optimizer.lr=0.05"]),
                    resume=first.run_dir, allow_changes=True).fit()
    assert [r["epoch"] for r in final.rows] == [1, 2, 3]
    assert_scalars_match(first.run_dir, final.rows)  # epoch 3 once, with the last session's values; no epoch 4


def test_cli_train_tensorboard_flag(tmp_path):
    path = write_config(tmp_path / "t.yaml", tiny_config_dict(tmp_path / "run", epochs=2))
    result = runner.invoke(app, ["train", str(path), "--tensorboard", "-q"])
    assert result.exit_code == 0, result.output
    events = read_events(tmp_path / "run")
    assert [e.step for e in events.Scalars("loss/val")] == [1, 2]


def test_missing_tensorboardx_is_one_line(tmp_path, monkeypatch):
    from conftest import hide_module

    hide_module(monkeypatch, "tensorboardX")
    path = write_config(tmp_path / "t.yaml", tiny_config_dict(tmp_path / "run", epochs=1))
    result = runner.invoke(app, ["train", str(path), "--tensorboard", "-q"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: output.tensorboard needs the 'tensorboardX' package: "
                                     "pip install 'nettrain[tensorboard]'")

"""Evaluation and prediction from checkpoints: metrics, the rebuilt model, data overrides, CLI output."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from nettrain.checkpoint import load_checkpoint
from nettrain.cli import app
from nettrain.config import load_config
from nettrain.data import load_data, read_npz
from nettrain.evaluate import (average_scores, confusion_matrix, evaluate_checkpoint, load_trained, per_class_scores,
                               predict, resolve_checkpoint)
from nettrain.errors import CheckpointError, DataError
from nettrain.training import Trainer
from tinyrun import tiny_config, tiny_config_dict, write_config

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for 3 epochs on 6 synthetic classes (top-5 applies)."""
    tmp = tmp_path_factory.mktemp("eval")
    result = Trainer(tiny_config(tmp, classes=6, epochs=3)).fit()
    return result


def test_confusion_matrix_and_scores_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1])
    cm = confusion_matrix(y_true, y_pred, 4)
    expected = np.zeros((4, 4), int)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    assert np.array_equal(cm, expected)
    scores = {s["class"]: s for s in per_class_scores(cm, ["a", "b", "c", "d"])}
    # class a: 2 of 3 predicted-a are right (one c was called a); recall 2/3
    assert scores["a"]["precision"] == pytest.approx(2 / 3) and scores["a"]["recall"] == pytest.approx(2 / 3)
    # class b: predicted 4 times, 2 right; both b found
    assert scores["b"]["precision"] == pytest.approx(0.5) and scores["b"]["recall"] == 1.0
    assert scores["b"]["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert scores["c"]["precision"] == 1.0 and scores["c"]["recall"] == pytest.approx(0.5)
    # a class never seen nor predicted scores 0, not NaN
    assert scores["d"] == {"class": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_macro_and_weighted_averages_as_scikit_learn_reports_them():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1])
    averages = average_scores(confusion_matrix(y_true, y_pred, 4))
    # class 3 is neither a label nor a prediction, so it is left out of the macro average
    assert averages["macro"] == pytest.approx({"precision": (2 / 3 + 1 / 2 + 1) / 3, "recall": (2 / 3 + 1 + 1 / 2) / 3,
                                               "f1": 2 / 3, "support": 9})
    # weighted by support 3, 2, 4: the weighted recall is the accuracy
    assert averages["weighted"] == pytest.approx({"precision": (3 * 2 / 3 + 2 * 1 / 2 + 4 * 1) / 9,
                                                  "recall": 6 / 9, "f1": 2 / 3, "support": 9})
    # a class that is predicted but never a label counts in the macro average with zeros
    y_pred[-1] = 3
    macro = average_scores(confusion_matrix(y_true, y_pred, 4))["macro"]
    assert macro["precision"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    assert macro["recall"] == pytest.approx((2 / 3 + 1 + 1 / 2 + 0) / 4)


def test_eval_report_is_consistent_with_training(run):
    report = evaluate_checkpoint(run.run_dir, "val")
    best_row = next(r for r in run.rows if r["epoch"] == run.best_epoch)
    assert report["checkpoint"].endswith("best.npz") and report["epoch"] == run.best_epoch
    assert report["accuracy"] == pytest.approx(best_row["val_accuracy"])
    assert report["loss"] == pytest.approx(best_row["val_loss"], rel=1e-6)
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == report["samples"]
    assert np.trace(cm) / cm.sum() == pytest.approx(report["accuracy"])
    assert report["accuracy"] <= report["top5_accuracy"] <= 1.0
    assert [c["support"] for c in report["per_class"]] == cm.sum(axis=1).tolist()
    assert report["averages"]["weighted"]["recall"] == pytest.approx(report["accuracy"])
    assert report["averages"]["macro"]["support"] == report["samples"]


def test_eval_rebuilds_the_model_from_the_stored_config(run, tmp_path):
    trained = load_trained(run.run_dir / "checkpoints" / "last.npz")
    saved = load_checkpoint(run.run_dir / "checkpoints" / "last.npz")
    for name, a in trained.model.parameters().items():
        assert np.array_equal(a, saved.params[name])
    # works without the original config file or run folder around it
    copy = tmp_path / "elsewhere.npz"
    shutil.copy(run.run_dir / "checkpoints" / "last.npz", copy)
    assert evaluate_checkpoint(copy, "test")["samples"] == 60


def test_no_top5_with_five_classes_or_fewer(tmp_path):
    Trainer(tiny_config(tmp_path, classes=4, epochs=1)).fit()
    report = evaluate_checkpoint(tmp_path / "run", "test")
    assert "top5_accuracy" not in report and len(report["per_class"]) == 4


def test_resolve_checkpoint(run, tmp_path):
    assert resolve_checkpoint(run.run_dir).name == "best.npz"
    with pytest.raises(CheckpointError):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError):
        resolve_checkpoint(tmp_path / "missing.npz")


def make_npz_dataset(path, seed=0):
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (3, 8, 8, 1))
    y_train, y_test = rng.integers(0, 3, 150), rng.integers(0, 3, 30)

    def images(y):
        return np.clip(prototypes[y] + rng.normal(0, 30, (len(y), 8, 8, 1)), 0, 255).astype(np.uint8)

    np.savez(path, x_train=images(y_train), y_train=y_train, x_test=images(y_test), y_test=y_test)
    return path


@pytest.fixture
def npz_run(tmp_path):
    data_file = make_npz_dataset(tmp_path / "shapes.npz")
    config = tiny_config_dict(tmp_path / "run", classes=3, epochs=2, augment=False)
    config["data"] = {"dataset": "npz", "path": str(data_file)}
    path = write_config(tmp_path / "npz.yaml", config)
    Trainer(load_config(path)).fit()
    return tmp_path / "run", data_file


def test_eval_data_path_override(npz_run, tmp_path):
    run_dir, data_file = npz_run
    moved = tmp_path / "moved" / "shapes.npz"
    moved.parent.mkdir()
    data_file.rename(moved)
    with pytest.raises(DataError):
        evaluate_checkpoint(run_dir, "test")
    report = evaluate_checkpoint(run_dir, "test", [f"data.path={moved}"])
    assert report["samples"] == 30
    result = runner.invoke(app, ["eval", str(run_dir), "--format", "json", "--set", f"data.path={moved}"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert {"accuracy", "loss", "per_class", "averages", "confusion_matrix"} <= parsed.keys()
    assert set(parsed["averages"]) == {"macro", "weighted"}
    assert parsed["accuracy"] == report["accuracy"]
    missing = runner.invoke(app, ["eval", str(run_dir)])
    assert missing.exit_code == 2 and missing.output.startswith("error: ") and "Traceback" not in missing.output


def test_predict_matches_eval_on_raw_npz_and_images(npz_run, tmp_path, monkeypatch):
    run_dir, data_file = npz_run
    trained = load_trained(run_dir)
    raw = read_npz(data_file)
    batch = tmp_path / "batch.npz"
    np.savez(batch, x=raw["x_test"])
    results = predict(trained, [batch])
    # the same test images, prepared by the data loader as in training
    bundle = load_data(trained.config.data, trained.model.input_shape, trained.config.train.seed)
    expected = trained.model.forward(bundle.test.x, training=False).argmax(axis=1)
    assert [r["class"] for r in results] == expected.tolist()
    assert all(0.0 < r["probability"] <= 1.0 for r in results)
    assert all(r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in results)

    pil = pytest.importorskip("PIL.Image")
    image = tmp_path / "sample.png"
    pil.fromarray(raw["x_test"][0, :, :, 0]).save(image)
    from_image = predict(trained, [image])[0]
    assert from_image["class"] == results[0]["class"]
    assert from_image["probability"] == pytest.approx(results[0]["probability"], rel=1e-5)

    monkeypatch.chdir(tmp_path)
    table = runner.invoke(app, ["predict", str(run_dir), "sample.png", "batch.npz"])
    assert table.exit_code == 0, table.output
    assert "sample.png" in table.output and "batch.npz[29]" in table.output


def test_predict_reads_folders_npy_and_single_images_without_pillow(npz_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # arrays need no Pillow
    run_dir, data_file = npz_run
    trained = load_trained(run_dir)
    x = read_npz(data_file)["x_test"]  # (30, 8, 8, 1) uint8
    expected = [r["class"] for r in predict(trained, [write_npz(tmp_path / "batch.npz", x=x)])]
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "b_one_hw.npy", x[1, :, :, 0])  # one (8, 8) image, no batch axis
    np.savez(folder / "a_one.npz", x=x[0, :, :, 0])
    np.save(folder / "c_one_hwc.npy", x[2])  # (8, 8, 1)
    np.save(folder / "d_batch.npy", x[3:6])
    (folder / "notes.txt").write_text("not an input")
    results = predict(trained, [folder], top=2)
    assert [r["file"] for r in results] == [str(folder / "a_one.npz[0]"), str(folder / "b_one_hw.npy[0]"),
                                            str(folder / "c_one_hwc.npy[0]")] + [
        str(folder / f"d_batch.npy[{i}]") for i in range(3)]
    assert [r["class"] for r in results] == expected[:6]
    assert all(len(r["top_k"]) == 2 and r["name"] == r["top_k"][0]["name"] for r in results)

    as_json = runner.invoke(app, ["predict", str(run_dir), str(folder), "--format", "json", "--top-k", "3"])
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.stdout)
    assert [r["class"] for r in parsed] == expected[:6] and len(parsed[0]["top_k"]) == 3
    assert {"file", "class", "name", "probability", "top_k"} == parsed[0].keys()
    as_csv = runner.invoke(app, ["predict", str(run_dir), str(folder / "d_batch.npy"), "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "file,class,name,probability,top_k" and len(lines) == 4
    assert lines[1].startswith(f"{folder / 'd_batch.npy'}[0],{expected[3]},")
    monkeypatch.chdir(folder)
    table = runner.invoke(app, ["predict", str(run_dir), "b_one_hw.npy"])
    assert table.exit_code == 0 and "b_one_hw.npy[0]" in table.output


def test_predict_errors_in_order(npz_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    run_dir, _ = npz_run
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "wrong.npy", np.zeros((5, 7), np.float32))
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    for name, message in [("nope", "nope: file not found"), ("nope.npy", "nope.npy: file not found"),
                          ("empty", "empty: a folder without images, .npz or .npy files"),
                          ("broken.npy", "broken.npy: not a readable .npy array"),
                          ("wrong.npy", "wrong.npy: samples of shape")]:
        result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / name)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert message in result.output and "Pillow" not in result.output, result.output
    bad_format = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "wrong.npy"), "--format", "xml"])
    assert bad_format.exit_code == 2 and "table, json or csv" in bad_format.output


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_cli_eval_table_and_errors(run, tmp_path):
    result = runner.invoke(app, ["eval", str(run.run_dir), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "confusion matrix" in result.output and "class_5" in result.output
    assert "macro avg" in result.output and "weighted avg" in result.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    broken = runner.invoke(app, ["eval", str(bad)])
    assert broken.exit_code == 2 and broken.output.count("\n") == 1 and "error:" in broken.output
    wrong_split = runner.invoke(app, ["eval", str(run.run_dir), "--split", "dev"])
    assert wrong_split.exit_code == 2 and "--split" in wrong_split.output
    nothing = runner.invoke(app, ["predict", str(run.run_dir), str(tmp_path / "nope.png")])
    assert nothing.exit_code == 2 and "nope.png" in nothing.output


def test_predict_missing_file_says_not_found_without_pillow(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    for name in ("nope.png", "nope.npz", "nope"):
        result = runner.invoke(app, ["predict", str(run.run_dir), str(tmp_path / name)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert f"{name}: file not found" in result.output and "Pillow" not in result.output


def test_confusion_plot_written(run):
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["eval", str(run.run_dir)])
    assert result.exit_code == 0, result.output
    png = run.run_dir / "confusion_test_best.png"
    assert png.read_bytes()[:4] == b"\x89PNG"

"""`nettrain runs` and `nettrain compare`: past runs read back from their folders."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from typer.testing import CliRunner

from nettrain.cli import app
from nettrain.errors import NettrainError
from nettrain.runs_index import compare_runs, find_runs, list_runs, read_run, unique_labels
from nettrain.training import Trainer
from tinyrun import StopAfter, tiny_config

runner = CliRunner()


def train(tmp_path, name, started, **kwargs):
    """A tiny run in ``tmp_path/runs/<name>`` whose summary.json (its start) is dated ``started``."""
    overrides = [f"output.dir={tmp_path / 'runs' / name}", *kwargs.pop("overrides", [])]
    reporter = kwargs.pop("reporter", None)
    config = tiny_config(tmp_path, name.replace("/", "-"), overrides=overrides, **kwargs)
    trainer = Trainer(config, reporter=reporter)
    if reporter is not None:
        reporter.trainer = trainer
    result = trainer.fit(handle_signals=False)
    os.utime(result.run_dir / "summary.json", (started, started))
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    day = 1_700_000_000
    results = {
        "first": train(tmp, "first", day, epochs=2),
        "second": train(tmp, "second", day + 60, epochs=2, overrides=["train.optimizer.lr=0.02"]),
        # early stopping that can never see an improvement after epoch 1 (a falling loss, mode max)
        "early": train(tmp, "early", day + 120, epochs=5, overrides=[
            "train.early_stopping={monitor: train_loss, mode: max, patience: 1}"]),
        "stopped": train(tmp, "nested/stopped", day + 180, epochs=3, reporter=StopAfter(epoch=2, batch=3)),
    }
    (tmp / "runs" / "not-a-run").mkdir()
    (tmp / "runs" / "not-a-run" / "notes.txt").write_text("hello")
    return tmp / "runs", results


def test_list_runs_newest_first_with_their_state(runs):
    root, results = runs
    listed = list_runs(root)
    assert [r.name for r in listed] == ["stopped", "early", "second", "first"]
    by_name = {r.name: r for r in listed}
    first = by_name["first"]
    assert first.config.endswith("first.yaml") and (first.epochs_done, first.epochs) == (2, 2)
    assert first.status == "finished" and first.monitor == "val_accuracy"
    assert (first.best, first.best_epoch) == (results["first"].best_value, results["first"].best_epoch)
    assert by_name["early"].status == "early stopped" and by_name["early"].epochs_done == 2
    stopped = by_name["stopped"]
    assert stopped.path == root / "nested" / "stopped" and stopped.epochs_done == 1
    # interrupted a moment ago it may still be running; a while later it is stopped
    written = (stopped.path / "checkpoints" / "last.npz").stat().st_mtime
    assert read_run(stopped.path, now=written + 1).status == "running"
    assert read_run(stopped.path, now=written + 3600).status == "stopped"
    assert find_runs(root / "nested") == [root / "nested" / "stopped"]


def test_run_without_a_checkpoint(tmp_path):
    folder = tmp_path / "crashed"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("# resolved from x.yaml\nname: x\ntrain: {epochs: 3}\n")
    info = read_run(folder)
    assert (info.status, info.epochs_done, info.best, info.config) == ("no checkpoint", 0, None, "x.yaml")


def test_cli_runs_table_and_json(runs):
    root, _ = runs
    table = runner.invoke(app, ["runs", str(root)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    order = [next(i for i, line in enumerate(lines) if f" {name} " in line)
             for name in ("nested/stopped", "early", "second", "first")]
    assert order == sorted(order)
    assert "2/5" in table.output and "early stopped" in table.output and "val_accuracy" in table.output
    parsed = json.loads(runner.invoke(app, ["runs", str(root), "--format", "json"]).stdout)
    assert [r["name"] for r in parsed] == ["stopped", "early", "second", "first"]
    assert {"path", "config", "epochs_done", "epochs", "best", "best_epoch", "status", "started"} <= parsed[0].keys()
    empty = runner.invoke(app, ["runs", str(root / "not-a-run")])
    assert empty.exit_code == 0 and "no runs in" in empty.output
    missing = runner.invoke(app, ["runs", str(root / "nowhere")])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "no such folder" in missing.output


def test_compare_names_the_config_keys_that_differ(runs, tmp_path):
    root, results = runs
    comparison = compare_runs([root / "first", root / "second"])
    assert comparison.labels == ["first", "second"]
    assert comparison.differences["train.optimizer.lr"] == [0.01, 0.02]
    assert comparison.differences["output.dir"] == [str(root / "first"), str(root / "second")]
    assert set(comparison.differences) == {"train.optimizer.lr", "output.dir"}
    data = comparison.to_dict()
    assert [len(r["rows"]) for r in data["runs"]] == [2, 2] and data["plot"] is None
    with pytest.raises(NettrainError, match="not a run folder"):
        compare_runs([root / "first", root / "not-a-run"])


def test_cli_compare_with_and_without_a_plot(runs, tmp_path):
    root, _ = runs
    args = ["compare", str(root / "first"), str(root / "second"), str(root / "nested" / "stopped")]
    text = runner.invoke(app, [*args, "--no-plot"], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "train.optimizer.lr" in text.output and "training time" in text.output and "note:" not in text.output
    parsed = json.loads(runner.invoke(app, [*args, "--no-plot", "--format", "json"]).stdout)
    assert [r["label"] for r in parsed["runs"]] == ["first", "second", "stopped"]
    png = tmp_path / "both.png"
    if importlib.util.find_spec("matplotlib") is not None:
        plotted = runner.invoke(app, [*args, "--plot", str(png)])
        assert plotted.exit_code == 0, plotted.output
        assert png.read_bytes()[:4] == b"\x89PNG" and f"curves of all runs: {png}" in plotted.output


def test_cli_compare_without_matplotlib_says_how_to_get_the_plot(runs, tmp_path, monkeypatch):
    root, _ = runs
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "c.png"
    result = runner.invoke(app, ["compare", str(root / "first"), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert result.stderr == "note: no plot without matplotlib; pip install 'nettrain[plot]' adds it\n"
    assert not png.exists()


def test_unique_labels(tmp_path):
    a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"
    assert unique_labels([a, b]) == ["x/run", "y/run"]
    assert unique_labels([a, tmp_path / "other"]) == ["run", "other"]

"""Plots: integer epoch ticks, one word when matplotlib is missing, eval's confusion PNG path and --no-plot."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from nettrain.cli import app
from nettrain.runs import plot_curves
from nettrain.training import Reporter, Trainer
from tinyrun import tiny_config

runner = CliRunner()

ROWS = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + e / 10, "val_loss": 1.1 / e,
         "val_accuracy": 0.45 + e / 10} for e in (1, 2)]


class Notes(Reporter):
    def __init__(self):
        self.notes: list[str] = []

    def note(self, message):
        self.notes.append(message)


def test_curves_have_integer_epoch_ticks(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    ticks = []
    savefig = Figure.savefig

    def recording_savefig(fig, *args, **kwargs):
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks.append([t for t in ax.get_xticks() if lo <= t <= hi])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    png = plot_curves(ROWS, tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert len(ticks) == 2 and all(ticks)
    for axis_ticks in ticks:  # two epochs: ticks at 1 and 2, never at 1.2, 1.4, ...
        assert all(float(t).is_integer() for t in axis_ticks), axis_ticks


@pytest.fixture
def no_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed


def test_training_without_matplotlib_says_once_how_to_get_curves(tmp_path, no_matplotlib):
    reporter = Notes()
    Trainer(tiny_config(tmp_path, epochs=2, overrides=["output.plots=true"]), reporter=reporter).fit()
    hints = [n for n in reporter.notes if "curves.png" in n]
    assert hints == ["no curves.png without matplotlib; pip install 'nettrain[plot]' adds it"]
    assert not (tmp_path / "run" / "curves.png").exists()
    # plots turned off: nothing to say
    quiet = Notes()
    Trainer(tiny_config(tmp_path, "off", epochs=1, overrides=["output.plots=false"]), reporter=quiet).fit()
    assert not [n for n in quiet.notes if "curves.png" in n]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return Trainer(tiny_config(tmp_path_factory.mktemp("plots"), epochs=1)).fit()


def test_eval_prints_the_confusion_png_path(run):
    pytest.importorskip("matplotlib")
    png = run.run_dir / "confusion_test_best.png"
    png.unlink(missing_ok=True)
    result = runner.invoke(app, ["eval", str(run.run_dir)])
    assert result.exit_code == 0, result.output
    assert png.is_file() and f"confusion matrix plot: {png}" in result.stdout


def test_eval_no_plot_writes_no_png(run):
    png = run.run_dir / "confusion_test_best.png"
    png.unlink(missing_ok=True)
    result = runner.invoke(app, ["eval", str(run.run_dir), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert not png.exists() and "confusion matrix plot" not in result.output and "note:" not in result.output


def test_eval_without_matplotlib_says_how_to_get_the_plot(run, no_matplotlib):
    for args in ([], ["--format", "json"]):
        result = runner.invoke(app, ["eval", str(run.run_dir), *args])
        assert result.exit_code == 0, result.output
        assert result.stderr == ("note: no confusion matrix plot without matplotlib; "
                                 "pip install 'nettrain[plot]' adds it\n")
    assert not (run.run_dir / "confusion_test_best.png").exists()

"""The monitored metric: improvement, the best checkpoint's epoch, early stopping, the metric names."""

from __future__ import annotations

import math

import pytest

from nettrain.errors import ConfigError
from nettrain.training.monitors import BestTracker, improves, monitored_metric


def rows(values, monitor="val_loss"):
    return [{"epoch": i + 1, monitor: v} for i, v in enumerate(values)]


def test_improves():
    assert improves(0.5, None, "min") and improves(0.5, None, "max")
    assert improves(0.4, 0.5, "min") and not improves(0.5, 0.5, "min") and not improves(0.6, 0.5, "min")
    assert improves(0.6, 0.5, "max") and not improves(0.5, 0.5, "max")
    # min_delta: the change must be larger than it
    assert not improves(0.45, 0.5, "min", 0.05) and improves(0.44, 0.5, "min", 0.05)
    assert not improves(0.55, 0.5, "max", 0.05) and improves(0.56, 0.5, "max", 0.05)
    for bad in (math.nan, math.inf, -math.inf, None):
        assert not improves(bad, None, "min") and not improves(bad, 0.5, "max")


def test_best_tracker_follows_the_best_epoch_and_survives_a_resume():
    best = BestTracker("val_loss", "min")
    assert [best.update(r) for r in rows([0.9, 0.7, 0.8, math.nan, 0.6, 0.6])] == [
        True, True, False, False, True, False]
    assert (best.value, best.epoch) == (0.6, 5)
    again = BestTracker("val_loss", "min")
    again.load_state_dict(best.state_dict())
    assert best.state_dict() == {"best": 0.6, "best_epoch": 5}
    assert not again.update({"epoch": 7, "val_loss": 0.6}) and again.update({"epoch": 7, "val_loss": 0.5})


def test_monitored_metric_names_and_the_fallback_without_validation():
    assert monitored_metric("val_top3_accuracy", "output.monitor", [3]) == ("val_top3_accuracy", None)
    name, note = monitored_metric("val_loss", "output.monitor", has_validation=False)
    assert name == "train_loss" and "no validation split" in note and "'train_loss'" in note
    assert monitored_metric("val_top3_accuracy", "x", [3], has_validation=False)[0] == "train_accuracy"
    with pytest.raises(ConfigError, match=r"train.early_stopping.monitor: unknown metric 'val_top5_accuracy'"):
        monitored_metric("val_top5_accuracy", "train.early_stopping.monitor", [3])

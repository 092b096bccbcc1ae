"""The monitored metric: improvement, the best checkpoint's epoch, early stopping, the metric names."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nettrain.errors import ConfigError
from nettrain.training.monitors import BestTracker, EarlyStopping, improves, monitored_metric


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


# --------------------------------------------------------------------------- early stopping, as Keras does it

def keras_decisions(values, mode, patience, min_delta):
    """What keras.callbacks.EarlyStopping.on_epoch_end (Keras 3) decides after each epoch: True = stop.

    Transcribed from keras/src/callbacks/early_stopping.py: best starts at +-inf, min_delta
    is negated for ``min``, ``wait`` counts every epoch and an improvement sets it to 0
    and returns; otherwise training stops when ``wait >= patience and epoch > 0``.
    """
    less = mode == "min"
    delta = -abs(min_delta) if less else abs(min_delta)
    best, wait, decisions = (math.inf if less else -math.inf), 0, []
    for epoch, current in enumerate(values):
        wait += 1
        if (current - delta < best) if less else (current - delta > best):
            best, wait = current, 0
            decisions.append(False)
            continue
        decisions.append(wait >= patience and epoch > 0)
    return decisions


def our_decisions(values, mode, patience, min_delta):
    early = EarlyStopping("val_loss", mode, patience, min_delta)
    return [early.update(r) for r in rows(values)]


SCRIPTS = [
    # values, mode, patience, min_delta, the decision after each epoch
    ([0.5, 0.6, 0.6, 0.7], "max", 0, 0.0, [False, False, True, False]),  # patience 0: the first epoch without gain
    ([0.5, 0.4], "max", 0, 0.0, [False, True]),
    ([0.5], "max", 0, 0.0, [False]),  # the first epoch never stops
    ([1.0, 0.9, 0.95, 0.92, 0.85], "min", 2, 0.0, [False, False, False, True, False]),
    ([1.0, 0.9, 0.95, 0.85, 0.9, 0.88], "min", 2, 0.0, [False, False, False, False, False, True]),
    ([1.0, 1.0, 1.0], "min", 1, 0.0, [False, True, True]),  # equal is no improvement
    ([1.0, 0.95, 0.85, 0.9], "min", 1, 0.1, [False, True, False, True]),  # 0.95 is not 0.1 better than 1.0
    ([1.0, 0.95, 0.85, 0.9], "min", 2, 0.1, [False, False, False, False]),  # 0.85 is: the wait starts over
    ([0.5, 0.55, 0.61, 0.7], "max", 0, 0.05, [False, True, False, False]),
]


@pytest.mark.parametrize("values, mode, patience, min_delta, expected", SCRIPTS)
def test_early_stopping_epoch_by_epoch(values, mode, patience, min_delta, expected):
    assert keras_decisions(values, mode, patience, min_delta) == expected
    assert our_decisions(values, mode, patience, min_delta) == expected


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]), min_size=1, max_size=12),
       mode=st.sampled_from(["min", "max"]), patience=st.integers(0, 4), min_delta=st.sampled_from([0.0, 0.05, 0.1]))
def test_early_stopping_decides_as_keras(values, mode, patience, min_delta):
    assert our_decisions(values, mode, patience, min_delta) == keras_decisions(values, mode, patience, min_delta)


def test_nan_never_becomes_the_best():
    # Keras would take a NaN first value as the best and then never improve on it
    assert our_decisions([math.nan, 0.5, math.nan, math.nan], "min", 1, 0.0) == [False, False, True, True]
    early = EarlyStopping("val_loss", "min", 1)
    early.update({"epoch": 1, "val_loss": math.nan})
    assert early.best is None and "no finite value yet" in early.reason()


def test_early_stopping_state_survives_a_resume():
    early = EarlyStopping("val_loss", "min", 3, 0.01)
    for r in rows([1.0, 0.9, 0.95]):
        early.update(r)
    again = EarlyStopping("val_loss", "min", 3, 0.01)
    again.load_state_dict(early.state_dict())
    assert (again.best, again.wait) == (0.9, 1)
    assert not again.update({"epoch": 4, "val_loss": 0.95})
    assert again.update({"epoch": 5, "val_loss": 0.895})  # not better by more than 0.01: the third epoch without
    assert again.reason() == "val_loss has not improved by more than 0.01 for 3 epochs (best 0.9, patience 3)"

"""Epoch statistics: running sums, skipped steps, the metric row and the mid-epoch state."""

from __future__ import annotations

import pytest

from nettrain.training.stats import EpochStats
from nettrain.training.step import BatchSums

STEPS = [(32, BatchSums(0.9 * 32, 0.5 * 32, 32), 0.1), (32, None, 0.09), (16, BatchSums(0.6 * 16, 0.75 * 16, 16), 0.08)]


def without_time(row):
    return {k: v for k, v in row.items() if k not in ("seconds", "img_per_s")}


def test_running_means_skip_the_skipped_step():
    stats = EpochStats()
    for samples, sums, lr in STEPS:
        stats.add_step(samples, sums, lr)
    assert (stats.seen, stats.trained) == (48, 80)
    assert stats.counted.loss == pytest.approx((0.9 * 32 + 0.6 * 16) / 48)
    assert stats.counted.accuracy == pytest.approx((0.5 * 32 + 0.75 * 16) / 48)
    assert stats.lr == 0.08  # the rate of the last step that counted
    assert stats.seconds > 0 and stats.img_per_s > 0


def test_row_columns_in_order_with_and_without_validation():
    stats = EpochStats()
    for samples, sums, lr in STEPS:
        stats.add_step(samples, sums, lr)
    row = stats.row(3, {"loss": 1.25, "accuracy": 0.5, "top5_accuracy": 0.875}, top_ks=[5], validation_seconds=2.0)
    assert list(row) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy",
                         "lr", "seconds", "img_per_s"]
    assert without_time(row) == {"epoch": 3, "train_loss": stats.counted.loss, "train_accuracy": stats.counted.accuracy,
                                 "val_loss": 1.25, "val_accuracy": 0.5, "val_top5_accuracy": 0.875, "lr": 0.08}
    assert row["seconds"] == pytest.approx(stats.seconds + 2.0)
    assert row["img_per_s"] == pytest.approx(80 / stats.seconds)
    bare = stats.row(3, None)
    assert bare["val_loss"] is None and bare["val_accuracy"] is None and "val_top5_accuracy" not in bare


def test_state_dict_continues_an_epoch_exactly():
    straight = EpochStats()
    for samples, sums, lr in STEPS:
        straight.add_step(samples, sums, lr)
    first = EpochStats()
    first.add_step(*STEPS[0])
    resumed = EpochStats()
    resumed.load_state_dict(first.state_dict())
    resumed.start_clock()
    for step in STEPS[1:]:
        resumed.add_step(*step)
    assert without_time(resumed.row(1, None)) == without_time(straight.row(1, None))
    assert resumed.state_dict().keys() == {"loss_sum", "acc_sum", "seen", "trained", "seconds", "lr"}
    assert resumed.seconds >= first.seconds  # time before the stop still counts

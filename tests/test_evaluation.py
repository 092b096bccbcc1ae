"""The evaluation loop: sums that do not depend on the batching, shards that add up, the confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from nettrain.builder import build_model
from nettrain.data import load_data
from nettrain.losses import accuracy, build_loss, topk_accuracy
from nettrain.training.evaluation import EvalLoop, EvalSums, confusion_matrix
from tinyrun import tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("evaluation"), classes=7, augment=False)
    model = build_model(config, seed=0)
    model.cast(np.float32)
    data = load_data(config.data, (1, 8, 8), seed=0)
    return model, build_loss(config.train.loss), data.train.x[:90], data.train.y[:90]


def test_sums_are_batch_means_times_batch_sizes(setup):
    model, loss_fn, x, y = setup
    sums = EvalLoop(model, loss_fn, batch_size=40, top_ks=(3,)).run(x, y)
    assert sums.samples == 90 and sums.confusion is None
    expected_loss = expected_acc = expected_top3 = 0.0
    for start in (0, 40, 80):
        logits = model.forward(x[start:start + 40], training=False)
        yb = y[start:start + 40]
        expected_loss += loss_fn.forward(logits, yb) * len(yb)
        expected_acc += accuracy(logits, yb) * len(yb)
        expected_top3 += topk_accuracy(logits, yb, 3) * len(yb)
    assert (sums.loss_sum, sums.accuracy_sum, sums.topk_sums) == (expected_loss, expected_acc, {3: expected_top3})
    assert sums.means() == {"loss": expected_loss / 90, "accuracy": expected_acc / 90, "top3_accuracy": expected_top3 / 90}


def test_means_do_not_depend_on_the_batch_size(setup):
    model, loss_fn, x, y = setup
    whole = EvalLoop(model, loss_fn, batch_size=1000, top_ks=(2, 5), confusion_classes=7).run(x, y)
    for batch_size in (1, 7, 64):
        sums = EvalLoop(model, loss_fn, batch_size, top_ks=(2, 5), confusion_classes=7).run(x, y)
        assert sums.samples == 90
        assert np.array_equal(sums.confusion, whole.confusion)
        for name, value in sums.means().items():
            assert value == pytest.approx(whole.means()[name], rel=1e-6), name


def test_confusion_counts_every_prediction(setup):
    model, loss_fn, x, y = setup
    sums = EvalLoop(model, loss_fn, batch_size=16, confusion_classes=7).run(x, y)
    predicted = model.forward(x, training=False).argmax(axis=-1)
    assert np.array_equal(sums.confusion, confusion_matrix(y, predicted, 7))
    assert sums.confusion.sum() == 90
    assert np.trace(sums.confusion) / 90 == pytest.approx(sums.means()["accuracy"])


class Shard(EvalLoop):
    """One of two processes: evaluates its half of the rows; ``reduce`` adds the other's sums."""

    def __init__(self, *args, rank, other=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank, self.other = rank, other

    def rows(self, n):
        half = (n + 1) // 2
        return range(0, half) if self.rank == 0 else range(half, n)

    def reduce(self, sums):
        if self.other is None:
            return sums
        theirs = self.other
        return EvalSums(sums.samples + theirs.samples, sums.loss_sum + theirs.loss_sum,
                        sums.accuracy_sum + theirs.accuracy_sum,
                        {k: v + theirs.topk_sums[k] for k, v in sums.topk_sums.items()},
                        sums.confusion + theirs.confusion)


def test_shards_add_up_to_the_whole_split(setup):
    model, loss_fn, x, y = setup
    args = (model, loss_fn, 16)
    kwargs = {"top_ks": (3,), "confusion_classes": 7}
    second = Shard(*args, rank=1, **kwargs).run(x, y)
    assert second.samples == 45
    reduced = Shard(*args, rank=0, other=second, **kwargs).run(x, y)
    whole = EvalLoop(*args, **kwargs).run(x, y)
    assert reduced.samples == 90 and np.array_equal(reduced.confusion, whole.confusion)
    for name, value in reduced.means().items():
        assert value == pytest.approx(whole.means()[name], rel=1e-6), name

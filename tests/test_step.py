"""The training step: what it computes, the non-finite guard and its rollback, the data-parallel hooks."""

from __future__ import annotations

import numpy as np
import pytest

from nettrain.builder import build_model
from nettrain.checkpoint import model_rng_states
from nettrain.data import load_data
from nettrain.losses import accuracy, build_loss
from nettrain.optimizers import build_optimizer, global_norm
from nettrain.training.step import BatchSums, NonFiniteStep, TrainStep
from tinyrun import tiny_config


@pytest.fixture
def config(tmp_path):
    return tiny_config(tmp_path, augment=False, optimizer={"type": "sgd", "lr": 1.0})


@pytest.fixture
def batch(config):
    data = load_data(config.data, (1, 8, 8), seed=0)
    return data.train.x[:32].copy(), data.train.y[:32].copy()


def fresh_model(config):
    model = build_model(config, seed=0)
    model.cast(np.float32)
    return model


def fresh_step(config, cls=TrainStep, clip=None) -> TrainStep:
    model = fresh_model(config)
    return cls(model, build_loss(config.train.loss), build_optimizer(config.train.optimizer, model.parameters()), clip)


def copies(arrays):
    return {k: v.copy() for k, v in arrays.items()}


def test_a_step_is_forward_loss_backward_update(config, batch):
    x, y = batch
    step = fresh_step(config)
    result = step(x, y)
    # the same by hand on an identical model (same seed: same weights and dropout generator)
    model = fresh_model(config)
    loss_fn, params = build_loss(config.train.loss), model.parameters()
    logits = model.forward(x, training=True)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward(), input_grad=False)
    build_optimizer(config.train.optimizer, params).step(params, model.gradients())
    for name, p in step.model.parameters().items():
        assert np.array_equal(p, params[name]), name
    for name, b in step.model.buffers().items():
        assert np.array_equal(b, model.buffers()[name]), name
    assert result.sums == BatchSums(loss * 32, accuracy(logits, y) * 32, 32)
    assert result.sums.loss == loss and result.grad_norm == pytest.approx(global_norm(model.gradients()))
    assert step.optimizer.steps == 1


def test_clipping_bounds_the_update_and_reports_the_norm_before(config, batch):
    step = fresh_step(config, clip=0.01)
    before = copies(step.params)
    result = step(*batch)
    moved = np.sqrt(sum(float(np.sum((step.params[k] - before[k]).astype(np.float64) ** 2)) for k in before))
    assert result.grad_norm > 0.01  # the tiny model's gradient is far larger: clipping did act
    assert moved == pytest.approx(0.01, rel=1e-3)  # lr 1 times a gradient of norm 0.01


def assert_rolled_back(step, params, buffers, rng):
    for name, p in step.model.parameters().items():
        assert np.array_equal(p, params[name], equal_nan=True), name
    for name, b in step.model.buffers().items():
        assert np.array_equal(b, buffers[name]), name
    assert model_rng_states(step.model) == rng
    assert step.optimizer.steps == 0


def test_nonfinite_input_raises_and_rolls_back(config, batch):
    x, y = batch
    x[3, 0, 2, 2] = np.nan
    step = fresh_step(config)
    params, buffers, rng = copies(step.params), copies(step.model.buffers()), model_rng_states(step.model)
    with pytest.raises(NonFiniteStep) as e:
        step(x, y)
    assert e.value.what == "non-finite loss (nan)" and "input batch" in e.value.where
    assert_rolled_back(step, params, buffers, rng)


def test_nonfinite_output_names_the_first_layer(config, batch):
    step = fresh_step(config)
    step.params["bn.gamma"][1] = np.inf
    params, buffers, rng = copies(step.params), copies(step.model.buffers()), model_rng_states(step.model)
    with pytest.raises(NonFiniteStep) as e:
        step(*batch)
    assert e.value.where == "first non-finite output in layer 'bn'"
    assert_rolled_back(step, params, buffers, rng)


def test_nonfinite_gradient_names_the_parameter(config, batch):
    step = fresh_step(config)
    out = step.model.layers[-1]
    backward = out.backward

    def bad_backward(dy):
        dx = backward(dy)
        out.grads["bias"][2] = np.nan
        return dx

    out.backward = bad_backward
    params, buffers, rng = copies(step.params), copies(step.model.buffers()), model_rng_states(step.model)
    with pytest.raises(NonFiniteStep) as e:
        step(*batch)
    assert (e.value.what, e.value.where) == ("non-finite gradient", "first non-finite gradient of parameter 'out.bias'")
    assert_rolled_back(step, params, buffers, rng)


class TwoProcesses(TrainStep):
    """As if a second process had the same batch and ten times the gradient: the hooks' effect is visible."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = []

    def reduce_sums(self, sums):
        self.calls.append("sums")
        return BatchSums(2 * sums.loss_sum, 2 * sums.accuracy_sum, 2 * sums.samples)

    def reduce_gradients(self, grads, samples):
        # called after backward (gradients present) and before the update (parameters untouched)
        assert all(np.array_equal(p, self.initial[k]) for k, p in self.params.items())
        assert global_norm(grads) > 0
        self.calls.append(("gradients", samples))
        for g in grads.values():
            g *= np.float32(10)


def test_reduce_hooks_sit_between_backward_and_clipping(config, batch):
    plain = fresh_step(config)
    plain_result = plain(*batch)
    step = fresh_step(config, TwoProcesses, clip=1e9)
    step.initial = copies(step.params)
    result = step(*batch)
    assert step.calls == ["sums", ("gradients", 32)]
    assert result.sums.samples == 64 and result.sums.loss == pytest.approx(plain_result.sums.loss)
    assert result.grad_norm == pytest.approx(10 * plain_result.grad_norm, rel=1e-5)  # the norm of reduced gradients
    # SGD with lr 1: the update is the reduced gradient
    for k, p in step.params.items():
        np.testing.assert_allclose(step.initial[k] - p, 10 * (step.initial[k] - plain.params[k]), rtol=1e-4, atol=1e-6)

    clipped = fresh_step(config, TwoProcesses, clip=plain_result.grad_norm)
    clipped.initial = copies(clipped.params)
    clipped(*batch)
    # clipping sees the reduced (tenfold) gradient and scales it back to the plain step's
    for k, p in clipped.params.items():
        np.testing.assert_allclose(p, plain.params[k], rtol=1e-4, atol=1e-6)


def test_reduced_loss_decides_the_guard(config, batch):
    class OtherProcessDiverged(TrainStep):
        def reduce_sums(self, sums):
            return BatchSums(sums.loss_sum + np.inf, sums.accuracy_sum, 2 * sums.samples)

    step = fresh_step(config, OtherProcessDiverged)
    with pytest.raises(NonFiniteStep, match=r"non-finite loss \(inf\)"):
        step(*batch)
    assert step.optimizer.steps == 0


def test_from_spec_reads_the_train_section(tmp_path):
    config = tiny_config(tmp_path, optimizer={"type": "adam", "lr": 0.02}, clip_grad_norm=2.5, loss="mse")
    step = TrainStep.from_spec(fresh_model(config), config.train)
    assert step.clip_norm == 2.5 and step.optimizer.spec.type == "adam" and step.optimizer.lr == 0.02
    assert step.loss_fn.spec.type == "mse"
    assert set(step.params) == set(step.model.parameters())

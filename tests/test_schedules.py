import math

import numpy as np
import pytest

from nettrain.errors import CheckpointError, ConfigError
from nettrain.schedules import ConstantSpec, build_schedule, parse_schedule

BASE_LR = 0.1
EPOCHS = 12


def epoch_lrs(spec, epochs=EPOCHS, steps_per_epoch=1):
    schedule = build_schedule(spec, BASE_LR, epochs, steps_per_epoch)
    return np.array([schedule.lr_at(e, 0) for e in range(epochs)])


def torch_epoch_lrs(torch, make_scheduler, epochs=EPOCHS):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.array(lrs)


def test_constant_is_the_default():
    assert parse_schedule(None) == ConstantSpec()
    np.testing.assert_array_equal(epoch_lrs(None), BASE_LR)


def test_step_and_multistep_closed_forms():
    e = np.arange(EPOCHS)
    np.testing.assert_allclose(epoch_lrs({"type": "step", "step_size": 4, "gamma": 0.5}), BASE_LR * 0.5 ** (e // 4))
    expected = BASE_LR * 0.1 ** ((e >= 3).astype(int) + (e >= 7))
    np.testing.assert_allclose(epoch_lrs({"type": "multistep", "milestones": [3, 7]}), expected)


def test_cosine_closed_form_per_step():
    steps_per_epoch, min_lr = 5, 0.001
    schedule = build_schedule({"type": "cosine", "min_lr": min_lr}, BASE_LR, EPOCHS, steps_per_epoch)
    t = np.arange(EPOCHS * steps_per_epoch)
    expected = min_lr + (BASE_LR - min_lr) * 0.5 * (1 + np.cos(np.pi * t / t.size))
    got = [schedule.lr_at(e, s) for e in range(EPOCHS) for s in range(steps_per_epoch)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert schedule.lr_at(EPOCHS, 0) == pytest.approx(min_lr)
    assert np.all(np.diff(got) < 0)


def test_cosine_per_epoch_holds_within_an_epoch():
    schedule = build_schedule({"type": "cosine", "per_step": False}, BASE_LR, EPOCHS, 4)
    for e in range(EPOCHS):
        expected = BASE_LR * 0.5 * (1 + math.cos(math.pi * e / EPOCHS))
        assert [schedule.lr_at(e, s) for s in range(4)] == pytest.approx([expected] * 4, rel=1e-12)


@pytest.mark.parametrize(
    "spec,make",
    [
        ({"type": "step", "step_size": 3, "gamma": 0.3}, lambda s, o: s.StepLR(o, step_size=3, gamma=0.3)),
        ({"type": "multistep", "milestones": [2, 5, 9]}, lambda s, o: s.MultiStepLR(o, milestones=[2, 5, 9])),
        ({"type": "cosine", "min_lr": 0.01, "per_step": False},
         lambda s, o: s.CosineAnnealingLR(o, T_max=EPOCHS, eta_min=0.01)),
    ],
)
def test_matches_torch_lr_scheduler(spec, make):
    torch = pytest.importorskip("torch")
    expected = torch_epoch_lrs(torch, lambda opt: make(torch.optim.lr_scheduler, opt))
    np.testing.assert_allclose(epoch_lrs(spec), expected, rtol=1e-12)


def test_warmup_matches_torch_linear_lr():
    torch = pytest.importorskip("torch")
    steps_per_epoch = 4
    expected = torch_epoch_lrs(
        torch,
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=6),
        epochs=3 * steps_per_epoch,
    )
    spec = {"type": "constant", "warmup_epochs": 1.5, "warmup_start_factor": 0.25}
    schedule = build_schedule(spec, BASE_LR, 3, steps_per_epoch)
    got = [schedule.lr_at(e, s) for e in range(3) for s in range(steps_per_epoch)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("spec", [
    {"type": "constant"},
    {"type": "step", "step_size": 5},
    {"type": "cosine"},
    {"type": "reduce_on_plateau"},
])
def test_warmup_ramps_linearly_to_the_scheduled_rate(spec):
    steps_per_epoch, start = 10, 0.1
    spec = {**spec, "warmup_epochs": 2, "warmup_start_factor": start}
    schedule = build_schedule(spec, BASE_LR, EPOCHS, steps_per_epoch)
    ramp = np.array([schedule.lr_at(e, s) for e in range(2) for s in range(steps_per_epoch)])
    np.testing.assert_allclose(ramp, BASE_LR * (start + (1 - start) * np.arange(20) / 20), rtol=1e-12)
    assert schedule.lr_at(2, 0) == pytest.approx(BASE_LR)


def test_cosine_decays_over_the_steps_after_warmup():
    schedule = build_schedule({"type": "cosine", "warmup_epochs": 2}, BASE_LR, 10, 1)
    t = np.arange(2, 10)
    expected = BASE_LR * 0.5 * (1 + np.cos(np.pi * (t - 2) / 8))
    np.testing.assert_allclose([schedule.lr_at(e) for e in t], expected, rtol=1e-12)


def run_plateau(schedule, values, monitor="val_loss"):
    lrs = []
    for v in values:
        schedule.on_epoch_end({monitor: v, "loss": 0.0})
        lrs.append(schedule.lr_at(0, 5))
    return lrs


def test_plateau_reduces_after_patience():
    schedule = build_schedule({"type": "reduce_on_plateau", "patience": 2, "factor": 0.5}, BASE_LR, EPOCHS, 10)
    lrs = run_plateau(schedule, [1.0, 0.9, 0.9, 0.9, 0.9, 0.95, 0.95, 0.95])
    # Improvement at epoch 1; three epochs without (> patience) cut the rate, then three more.
    assert lrs == pytest.approx([BASE_LR] * 4 + [BASE_LR / 2] * 3 + [BASE_LR / 4])


def test_plateau_threshold_is_relative_and_mode_max_works():
    schedule = build_schedule(
        {"type": "reduce_on_plateau", "monitor": "val_accuracy", "mode": "max", "patience": 0, "threshold": 0.01,
         "factor": 0.5, "min_lr": 0.02},
        BASE_LR, EPOCHS, 1,
    )
    # 0.505 is not 1 % better than 0.5, so it counts as no improvement; min_lr floors the last cut.
    lrs = run_plateau(schedule, [0.5, 0.505, 0.6, 0.6, 0.6], monitor="val_accuracy")
    assert lrs == pytest.approx([BASE_LR, BASE_LR / 2, BASE_LR / 2, BASE_LR / 4, 0.02])


def test_plateau_matches_torch():
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).uniform(size=40) + np.linspace(1, 0, 40)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    kwargs = {"factor": 0.5, "patience": 2, "cooldown": 1, "threshold": 0.05, "min_lr": 0.005}
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **kwargs)
    expected = []
    for v in values:
        reference.step(v)
        expected.append(opt.param_groups[0]["lr"])
    schedule = build_schedule({"type": "reduce_on_plateau", **kwargs}, BASE_LR, 40, 1)
    np.testing.assert_allclose(run_plateau(schedule, values), expected, rtol=1e-12)
    assert min(expected) < BASE_LR / 4  # the comparison exercised several reductions


def test_plateau_state_round_trip(tmp_path):
    spec = {"type": "reduce_on_plateau", "patience": 1, "cooldown": 2}
    values = [1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6, 0.6, 0.7]
    a = build_schedule(spec, BASE_LR, EPOCHS, 1)
    run_plateau(a, values[:4])
    np.savez(tmp_path / "s.npz", **a.state_dict())
    b = build_schedule(spec, BASE_LR, EPOCHS, 1)
    with np.load(tmp_path / "s.npz") as saved:
        b.load_state_dict(dict(saved))
    assert run_plateau(b, values[4:]) == run_plateau(a, values[4:])
    with pytest.raises(CheckpointError):
        b.load_state_dict({})


def test_stateless_schedules_have_empty_state():
    schedule = build_schedule({"type": "cosine"}, BASE_LR, EPOCHS, 3)
    assert schedule.state_dict() == {}
    schedule.on_epoch_end({"val_loss": 1.0})
    assert schedule.lr_at(0, 0) == BASE_LR


def test_plateau_names_a_missing_metric():
    schedule = build_schedule("reduce_on_plateau", BASE_LR, EPOCHS, 1)
    with pytest.raises(ConfigError, match="val_loss.*'loss'"):
        schedule.on_epoch_end({"loss": 1.0})


def test_specs():
    assert parse_schedule("cosine").type == "cosine"
    with pytest.raises(ConfigError, match="schedule.step_size"):
        parse_schedule("step")
    with pytest.raises(ConfigError, match="schedule.milestones"):
        parse_schedule({"type": "multistep", "milestones": [5, 3]})
    with pytest.raises(ConfigError, match="schedule.warmup_epochs"):
        parse_schedule({"type": "constant", "warmup_epochs": -1})
    with pytest.raises(ConfigError, match="schedule.mode"):
        parse_schedule({"type": "reduce_on_plateau", "mode": "up"})

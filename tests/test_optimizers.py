import numpy as np
import pytest

from nettrain.errors import CheckpointError, ConfigError
from nettrain.optimizers import AdamWSpec, RMSpropSpec, build_optimizer, clip_grad_norm, parse_optimizer

SHAPES = {"conv2d_1.kernel": (4, 3, 3, 3), "conv2d_1.bias": (4,), "batchnorm_1.gamma": (4,), "dense_1.kernel": (6, 2)}
LRS = [0.1, 0.05, 0.05, 0.02, 0.01, 0.01]  # changed between steps, as a schedule does


def random_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def random_grads(steps, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)]


def run(spec, params, grads, lrs=LRS):
    opt = build_optimizer(spec, params)
    for lr, g in zip(lrs, grads):
        opt.lr = lr
        opt.step(params, g)
    return opt


TORCH_CASES = [
    ({"type": "sgd"}, "SGD", {}),
    ({"type": "sgd", "momentum": 0.9, "weight_decay": 1e-2}, "SGD", {"momentum": 0.9, "weight_decay": 1e-2}),
    ({"type": "sgd", "momentum": 0.8, "nesterov": True}, "SGD", {"momentum": 0.8, "nesterov": True}),
    ({"type": "adam"}, "Adam", {}),
    ({"type": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1}, "Adam",
     {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ({"type": "adamw"}, "AdamW", {}),
    ({"type": "adamw", "weight_decay": 0.3}, "AdamW", {"weight_decay": 0.3}),
    ({"type": "rmsprop"}, "RMSprop", {}),
    ({"type": "rmsprop", "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.05, "centered": True}, "RMSprop",
     {"alpha": 0.9, "momentum": 0.5, "weight_decay": 0.05, "centered": True}),
]


def torch_run(torch, cls_name, kwargs, params, grads, lrs=LRS, no_decay=()):
    tensors = {k: torch.tensor(v.copy()) for k, v in params.items()}
    decay = [t for k, t in tensors.items() if k not in no_decay]
    groups = [{"params": decay}, {"params": [tensors[k] for k in no_decay], "weight_decay": 0.0}]
    opt = getattr(torch.optim, cls_name)([g for g in groups if g["params"]], lr=lrs[0], **kwargs)
    for lr, g in zip(lrs, grads):
        for group in opt.param_groups:
            group["lr"] = lr
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    return {k: t.numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("spec,cls_name,kwargs", TORCH_CASES)
def test_matches_torch_in_float64(spec, cls_name, kwargs):
    torch = pytest.importorskip("torch")
    params, grads = random_params(), random_grads(len(LRS))
    expected = torch_run(torch, cls_name, kwargs, params, grads)
    run(spec, params, grads)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("spec,cls_name,kwargs", TORCH_CASES)
def test_matches_torch_in_float32(spec, cls_name, kwargs):
    torch = pytest.importorskip("torch")
    params, grads = random_params(dtype=np.float32), random_grads(len(LRS), dtype=np.float32)
    expected = torch_run(torch, cls_name, kwargs, params, grads)
    run(spec, params, grads)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("type_name,cls_name", [("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW")])
def test_excluding_bias_and_norm_from_decay_matches_torch_param_groups(type_name, cls_name):
    torch = pytest.importorskip("torch")
    params, grads = random_params(), random_grads(len(LRS))
    no_decay = ["conv2d_1.bias", "batchnorm_1.gamma"]
    expected = torch_run(torch, cls_name, {"weight_decay": 0.2}, params, grads, no_decay=no_decay)
    run({"type": type_name, "weight_decay": 0.2, "decay_bias_and_norm": False}, params, grads)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


def sgd_reference(params, grads, lrs, momentum, nesterov, weight_decay):
    """The textbook update, one parameter at a time, in float64."""
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    velocity = {k: 0.0 for k in params}
    for lr, g in zip(lrs, grads):
        for k in params:
            d = g[k] + weight_decay * params[k]
            velocity[k] = momentum * velocity[k] + d
            step = d + momentum * velocity[k] if nesterov else velocity[k]
            params[k] = params[k] - lr * step
    return params


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.01)])
def test_sgd_matches_reference(momentum, nesterov, weight_decay):
    params, grads = random_params(), random_grads(len(LRS))
    expected = sgd_reference(params, grads, LRS, momentum, nesterov, weight_decay)
    run({"type": "sgd", "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}, params, grads)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12)


def test_adam_first_step_moves_every_weight_by_lr():
    # With bias correction, m/sqrt(v) = g/|g| after one step.
    params, grads = random_params(), random_grads(1)
    before = {k: v.copy() for k, v in params.items()}
    run({"type": "adam", "eps": 1e-12}, params, grads, lrs=[0.01])
    for k in params:
        np.testing.assert_allclose(before[k] - params[k], 0.01 * np.sign(grads[0][k]), rtol=1e-8)


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
        {"type": "adam", "weight_decay": 1e-3},
        "adamw",
        {"type": "rmsprop", "momentum": 0.9, "centered": True},
    ],
)
def test_updates_in_place_and_float32_stays_float32(spec):
    params = random_params(dtype=np.float32)
    arrays = dict(params)
    opt = run(spec, params, random_grads(3, dtype=np.float32), lrs=[np.float64(0.01)] * 3)
    for k, p in params.items():
        assert p is arrays[k]
        assert p.dtype == np.float32
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if "/" in k)


@pytest.mark.parametrize(
    "spec",
    ["sgd", {"type": "sgd", "momentum": 0.9}, "adam", "adamw", {"type": "rmsprop", "momentum": 0.5, "centered": True}],
)
def test_state_dict_round_trip_continues_bit_for_bit(spec, tmp_path):
    grads = random_grads(6, dtype=np.float32)
    params = random_params(dtype=np.float32)
    opt = run(spec, params, grads[:3], lrs=LRS[:3])

    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    resumed_params = {k: v.copy() for k, v in params.items()}
    resumed = build_optimizer(spec, resumed_params)
    with np.load(tmp_path / "opt.npz") as saved:
        resumed.load_state_dict(dict(saved))
    assert resumed.lr == opt.lr

    for lr, g in zip(LRS[3:], grads[3:]):
        for o, p in ((opt, params), (resumed, resumed_params)):
            o.lr = lr
            o.step(p, g)
    for k in params:
        np.testing.assert_array_equal(resumed_params[k], params[k])


def test_state_dict_keys_are_flat_strings_of_plain_arrays():
    params = random_params()
    state = build_optimizer("adam", params).state_dict()
    assert set(state) == {"step", "lr"} | {f"{s}/{k}" for s in ("m", "v") for k in params}
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "if" for v in state.values())


def test_load_state_dict_rejects_a_different_model():
    opt = build_optimizer("adam", random_params())
    state = opt.state_dict()
    with pytest.raises(CheckpointError, match="missing"):
        build_optimizer("adam", {"other.kernel": np.zeros(3)}).load_state_dict(state)
    state["m/dense_1.kernel"] = np.zeros((2, 6))
    with pytest.raises(CheckpointError, match="shape"):
        opt.load_state_dict(state)


def test_clip_grad_norm_scales_to_max_norm():
    grads = random_grads(1, dtype=np.float32)[0]
    original = {k: v.copy() for k, v in grads.items()}
    expected_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in original.values()))
    total = clip_grad_norm(grads, 1.5)
    assert total == pytest.approx(expected_norm, rel=1e-6)
    for k in grads:
        assert grads[k].dtype == np.float32
        np.testing.assert_allclose(grads[k], original[k] * 1.5 / (expected_norm + 1e-6), rtol=1e-6)
    assert clip_grad_norm(grads, 10 * expected_norm) == pytest.approx(1.5, rel=1e-5)
    unchanged = original["dense_1.kernel"] * 1.5 / (expected_norm + 1e-6)
    np.testing.assert_allclose(grads["dense_1.kernel"], unchanged, rtol=1e-6)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    grads = random_grads(1)[0]
    tensors = [torch.tensor(g.copy(), requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g.copy())
    expected = torch.nn.utils.clip_grad_norm_(tensors, 2.0).item()
    assert clip_grad_norm(grads, 2.0) == pytest.approx(expected, rel=1e-12)
    for t, g in zip(tensors, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


def test_specs():
    assert parse_optimizer("adamw") == AdamWSpec(weight_decay=0.01)
    assert parse_optimizer({"type": "rmsprop", "alpha": 0.9}) == RMSpropSpec(rho=0.9)
    assert parse_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9}).momentum == 0.9
    with pytest.raises(ConfigError, match="optimizer.lr"):
        parse_optimizer({"type": "adam", "lr": 0})
    with pytest.raises(ConfigError, match="optimizer.betas"):
        parse_optimizer({"type": "adam", "betas": [0.9, 0.99]})
    with pytest.raises(ConfigError, match="lamb"):
        parse_optimizer("lamb")

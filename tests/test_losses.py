import numpy as np
import pytest

from nettrain.errors import ConfigError, DataError
from nettrain.losses import (
    BinaryCrossEntropySpec,
    MSESpec,
    SoftmaxCrossEntropySpec,
    accuracy,
    build_loss,
    parse_loss,
    softmax_probs,
    topk_accuracy,
)

rng = np.random.default_rng(0)


def numeric_gradient(loss, logits, targets, h=1e-6):
    """Central differences of the mean loss with respect to every logit (float64)."""
    grad = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[i] += h
        minus[i] -= h
        grad[i] = (loss.forward(plus, targets) - loss.forward(minus, targets)) / (2 * h)
    return grad


def cases():
    labels = rng.integers(0, 5, size=4)
    seq_labels = rng.integers(0, 3, size=(2, 3))
    return [
        ("softmax_cross_entropy", rng.normal(size=(4, 5)) * 3, labels),
        ({"type": "softmax_cross_entropy", "label_smoothing": 0.2}, rng.normal(size=(4, 5)), labels),
        ("softmax_cross_entropy", rng.normal(size=(2, 3, 3)), seq_labels),
        ("softmax_cross_entropy", rng.normal(size=(4, 5)), rng.dirichlet(np.ones(5), size=4)),
        ("mse", rng.normal(size=(4, 3)), rng.normal(size=(4, 3))),
        ("binary_cross_entropy", rng.normal(size=(6, 1)) * 4, rng.integers(0, 2, size=6)),
        ("binary_cross_entropy", rng.normal(size=(3, 4)), rng.uniform(size=(3, 4))),
    ]


@pytest.mark.parametrize("spec,logits,targets", cases())
def test_backward_matches_central_differences(spec, logits, targets):
    loss = build_loss(spec)
    loss.forward(logits, targets)
    analytic = loss.backward().copy()
    np.testing.assert_allclose(analytic, numeric_gradient(loss, logits, targets), rtol=1e-6, atol=1e-9)


def test_label_smoothing_matches_manual_formula():
    eps, k = 0.1, 7
    logits = rng.normal(size=(5, k))
    y = rng.integers(0, k, size=5)
    q = (1 - eps) * np.eye(k)[y] + eps / k
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -(q * logp).sum(axis=1).mean()
    loss = build_loss({"type": "softmax_cross_entropy", "label_smoothing": eps})
    assert loss(logits, y) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(loss.backward(), (np.exp(logp) - q) / 5, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_stay_finite_and_keep_dtype(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, -1e4]], dtype)
    y = np.array([1, 1, 2])
    for spec, targets in [
        ("softmax_cross_entropy", y),
        ({"type": "softmax_cross_entropy", "label_smoothing": 0.1}, y),
        ("binary_cross_entropy", (logits > 0).astype(dtype)),
        ("mse", np.zeros_like(logits)),
    ]:
        loss = build_loss(spec)
        value = loss(logits, targets)
        grad = loss.backward()
        assert np.isfinite(value)
        assert grad.dtype == dtype and grad.shape == logits.shape
        assert np.all(np.isfinite(grad))
    # -log softmax: the logit gap 2e4, then 0, then 1e4 + log 2 (two tied logits above the label).
    assert build_loss("softmax_cross_entropy")(logits, y) == pytest.approx((2e4 + 0 + 1e4 + np.log(2)) / 3, rel=1e-6)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits = rng.normal(size=(8, 6)) * 2
    y = rng.integers(0, 6, size=8)
    t = torch.tensor(logits, requires_grad=True)

    for eps in (0.0, 0.15):
        expected = F.cross_entropy(t, torch.tensor(y), label_smoothing=eps)
        (grad,) = torch.autograd.grad(expected, t)
        loss = build_loss({"type": "softmax_cross_entropy", "label_smoothing": eps})
        assert loss(logits, y) == pytest.approx(expected.item(), rel=1e-12)
        np.testing.assert_allclose(loss.backward(), grad.numpy(), rtol=1e-10, atol=1e-14)

    target = rng.uniform(size=(8, 6))
    for name, fn in [("mse", F.mse_loss), ("binary_cross_entropy", F.binary_cross_entropy_with_logits)]:
        expected = fn(t, torch.tensor(target))
        (grad,) = torch.autograd.grad(expected, t)
        loss = build_loss(name)
        assert loss(logits, target) == pytest.approx(expected.item(), rel=1e-12)
        np.testing.assert_allclose(loss.backward(), grad.numpy(), rtol=1e-10, atol=1e-14)


def test_float32_loss_close_to_float64():
    logits = rng.normal(size=(16, 10)) * 5
    y = rng.integers(0, 10, size=16)
    loss = build_loss("softmax_cross_entropy")
    exact = loss(logits, y)
    exact_grad = loss.backward()
    assert loss(logits.astype(np.float32), y) == pytest.approx(exact, rel=1e-5)
    np.testing.assert_allclose(loss.backward(), exact_grad, atol=1e-6)


def test_softmax_probs_rows_sum_to_one():
    logits = rng.normal(size=(4, 9)).astype(np.float32) * 50
    p = softmax_probs(logits)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(p.argmax(axis=1) == logits.argmax(axis=1))


def test_accuracy_and_topk_match_sorting():
    logits = rng.normal(size=(200, 10))
    y = rng.integers(0, 10, size=200)
    ranks = (logits > logits[np.arange(200), y][:, None]).sum(axis=1)  # 0 = the label scores highest
    assert accuracy(logits, y) == pytest.approx(np.mean(ranks == 0))
    assert accuracy(logits, np.eye(10)[y]) == pytest.approx(np.mean(ranks == 0))
    for k in (1, 3, 5, 10):
        assert topk_accuracy(logits, y, k) == pytest.approx(np.mean(ranks < k))


def test_binary_accuracy_thresholds_logits_at_zero():
    logits = rng.normal(size=(50, 1))
    y = rng.integers(0, 2, size=50)
    assert accuracy(logits, y) == pytest.approx(np.mean((logits[:, 0] > 0) == (y == 1)))


def test_specs_accept_names_mappings_and_reject_mistakes():
    assert parse_loss("mse") == MSESpec()
    assert parse_loss({"type": "binary_cross_entropy"}) == BinaryCrossEntropySpec()
    assert parse_loss(SoftmaxCrossEntropySpec(label_smoothing=0.3)).label_smoothing == 0.3
    with pytest.raises(ConfigError, match="loss.label_smoothing"):
        parse_loss({"type": "softmax_cross_entropy", "label_smoothing": 1.0})
    with pytest.raises(ConfigError, match="loss.smoothing"):
        parse_loss({"type": "softmax_cross_entropy", "smoothing": 0.1})
    with pytest.raises(ConfigError, match="hinge"):
        parse_loss("hinge")


def test_bad_targets_raise_data_errors():
    logits = np.zeros((3, 4))
    with pytest.raises(DataError, match=r"\[0, 4\)"):
        build_loss("softmax_cross_entropy")(logits, np.array([0, 4, 1]))
    with pytest.raises(DataError, match="do not match"):
        build_loss("mse")(logits, np.zeros((3, 5)))


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError):
        build_loss("mse").backward()

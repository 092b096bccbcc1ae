"""Recurrent cell kernels: the NumPy kernels against the gate equations, the compiled
kernels against the NumPy ones, and whole layers with the compiled kernels on and off."""

import subprocess
import sys

import numpy as np
import pytest

from nettrain import kernels
from nettrain.kernels import reference
from nettrain.layers import REGISTRY, Sequential

TYPES = ["simple_rnn", "gru", "lstm"]
SHAPES = [(1, 1), (3, 5), (7, 8), (4, 13), (16, 33)]  # (N, U): odd widths leave vector-loop tails


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def draw(rng, *shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# -- the gate equations, written out plainly ------------------------------------------


def lstm_step(xw, hr, c_prev):
    u = c_prev.shape[1]
    a = xw + hr
    i, f, g, o = sigmoid(a[:, :u]), sigmoid(a[:, u : 2 * u]), np.tanh(a[:, 2 * u : 3 * u]), sigmoid(a[:, 3 * u :])
    c = f * c_prev + i * g
    return np.concatenate([i, f, g, o], axis=1), c, np.tanh(c), o * np.tanh(c)


def lstm_step_backward(dy, dh, acts, c_prev, tanh_c, dc):
    u = c_prev.shape[1]
    i, f, g, o = (acts[:, k * u : (k + 1) * u] for k in range(4))
    total = dy + dh
    dc = dc + total * o * (1 - tanh_c**2)
    da = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g**2),
                         total * tanh_c * o * (1 - o)], axis=1)
    return da, dc * f


def gru_step(xw, hr, c, h_prev):
    u = h_prev.shape[1]
    hw = hr + c
    r = sigmoid(xw[:, :u] + hw[:, :u])
    z = sigmoid(xw[:, u : 2 * u] + hw[:, u : 2 * u])
    n = np.tanh(xw[:, 2 * u :] + r * hw[:, 2 * u :])
    return np.concatenate([r, z, n], axis=1), hw[:, 2 * u :], (1 - z) * n + z * h_prev


def gru_step_backward(dy, dh, carry, h_prev, acts, hw_n):
    u = h_prev.shape[1]
    r, z, n = (acts[:, k * u : (k + 1) * u] for k in range(3))
    total = dy + dh + carry
    dn = total * (1 - z) * (1 - n**2)
    dz = total * (h_prev - n) * z * (1 - z)
    dr = dn * hw_n * r * (1 - r)
    return np.concatenate([dr, dz, dn], axis=1), np.concatenate([dr, dz, dn * r], axis=1), total * z


# -- one step of each cell, float32 in and out ------------------------------------------


def lstm_case(rng, n, u, dtype=np.float32):
    return dict(xw=draw(rng, n, 4 * u, dtype=dtype, scale=2), hr=draw(rng, n, 4 * u, dtype=dtype),
                c_prev=draw(rng, n, u, dtype=dtype), dy=draw(rng, n, u, dtype=dtype),
                dh=draw(rng, n, u, dtype=dtype), dc=draw(rng, n, u, dtype=dtype))


def run_lstm(ops, case):
    n, u = case["c_prev"].shape
    dtype = case["xw"].dtype
    gates = case["xw"].copy()
    c, tanh_c, h = (np.full((n, u), np.nan, dtype) for _ in range(3))
    ops.lstm_cell_forward(gates, case["hr"], case["c_prev"], c, tanh_c, h)
    dc = case["dc"].copy()
    da = np.full((n, 4 * u), np.nan, dtype)
    ops.lstm_cell_backward(case["dy"], case["dh"], gates, case["c_prev"], tanh_c, dc, da)
    return dict(acts=gates, c=c, tanh_c=tanh_c, h=h, da=da, dc=dc)


def gru_case(rng, n, u, dtype=np.float32):
    return dict(xw=draw(rng, n, 3 * u, dtype=dtype, scale=2), hr=draw(rng, n, 3 * u, dtype=dtype),
                bias=draw(rng, 3 * u, dtype=dtype), h_prev=draw(rng, n, u, dtype=dtype),
                dy=draw(rng, n, u, dtype=dtype), dh=draw(rng, n, u, dtype=dtype), carry=draw(rng, n, u, dtype=dtype))


def run_gru(ops, case):
    n, u = case["h_prev"].shape
    dtype = case["xw"].dtype
    gates = case["xw"].copy()
    hw_n, h = np.full((n, u), np.nan, dtype), np.full((n, u), np.nan, dtype)
    ops.gru_cell_forward(gates, case["hr"], case["bias"], case["h_prev"], hw_n, h)
    carry = case["carry"].copy()
    dxw, dhw = np.full((n, 3 * u), np.nan, dtype), np.full((n, 3 * u), np.nan, dtype)
    ops.gru_cell_backward(case["dy"], case["dh"], carry, case["h_prev"], gates, hw_n, dxw, dhw)
    return dict(acts=gates, hw_n=hw_n, h=h, dxw=dxw, dhw=dhw, carry=carry)


def rnn_case(rng, n, u, dtype=np.float32):
    return dict(xw=draw(rng, n, u, dtype=dtype, scale=2), hr=draw(rng, n, u, dtype=dtype),
                dy=draw(rng, n, u, dtype=dtype), dh=draw(rng, n, u, dtype=dtype))


def run_rnn(ops, case):
    n, u = case["xw"].shape
    dtype = case["xw"].dtype
    xw = case["xw"].copy()
    h, da = np.full((n, u), np.nan, dtype), np.full((n, u), np.nan, dtype)
    ops.rnn_cell_forward(xw, case["hr"], h)
    ops.rnn_cell_backward(case["dy"], case["dh"], h, da)
    return dict(h=h, da=da)


CELLS = {"lstm": (lstm_case, run_lstm), "gru": (gru_case, run_gru), "simple_rnn": (rnn_case, run_rnn)}


@pytest.mark.parametrize("n,u", SHAPES)
def test_numpy_lstm_cell_follows_the_gate_equations(n, u):
    case = lstm_case(np.random.default_rng(n * 100 + u), n, u, dtype=np.float64)
    got = run_lstm(kernels.NUMPY, case)
    acts, c, tanh_c, h = lstm_step(case["xw"], case["hr"], case["c_prev"])
    da, dc = lstm_step_backward(case["dy"], case["dh"], acts, case["c_prev"], tanh_c, case["dc"])
    for key, expect in dict(acts=acts, c=c, tanh_c=tanh_c, h=h, da=da, dc=dc).items():
        np.testing.assert_allclose(got[key], expect, rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("n,u", SHAPES)
def test_numpy_gru_cell_follows_the_gate_equations(n, u):
    case = gru_case(np.random.default_rng(n * 100 + u), n, u, dtype=np.float64)
    got = run_gru(kernels.NUMPY, case)
    acts, hw_n, h = gru_step(case["xw"], case["hr"], case["bias"], case["h_prev"])
    dxw, dhw, carry = gru_step_backward(case["dy"], case["dh"], case["carry"], case["h_prev"], acts, hw_n)
    for key, expect in dict(acts=acts, hw_n=hw_n, h=h, dxw=dxw, dhw=dhw, carry=carry).items():
        np.testing.assert_allclose(got[key], expect, rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("n,u", SHAPES)
def test_numpy_rnn_cell_follows_its_equation(n, u):
    case = rnn_case(np.random.default_rng(n * 100 + u), n, u, dtype=np.float64)
    got = run_rnn(kernels.NUMPY, case)
    h = np.tanh(case["xw"] + case["hr"])
    np.testing.assert_allclose(got["h"], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["da"], (case["dy"] + case["dh"]) * (1 - h**2), rtol=1e-12, atol=1e-12)


def lstm_sequence(rng, steps, n, u, dtype):
    """A forward pass by the plain equations and a backward's inputs: the scan kernels' arguments."""
    recurrent = draw(rng, u, 4 * u, dtype=np.float64, scale=0.3)
    c, h, acts, tanh_c = [np.zeros((n, u))], [np.zeros((n, u))], [], []
    for _ in range(steps):
        a, c_t, t_t, h_t = lstm_step(draw(rng, n, 4 * u, dtype=np.float64, scale=2), h[-1] @ recurrent, c[-1])
        acts.append(a), c.append(c_t), tanh_c.append(t_t), h.append(h_t)
    dh_out = [draw(rng, n, u, dtype=np.float64) for _ in range(steps)]
    as_type = lambda arrays: np.stack(arrays).astype(dtype)  # noqa: E731
    return dict(dh_out=list(as_type(dh_out)), acts=as_type(acts), c_prev=as_type(c[:-1]), tanh_c=as_type(tanh_c),
                recurrent_t=recurrent.T.astype(dtype))


def run_lstm_scan(ops, case, contended):
    steps, n, width = case["acts"].shape
    dtype = case["acts"].dtype
    dh_next, dc = np.zeros((n, width // 4), dtype), np.zeros((n, width // 4), dtype)
    da = np.full((steps, n, width), np.nan, dtype)
    ops.lstm_scan_backward(case["dh_out"], case["acts"], case["c_prev"], case["tanh_c"], case["recurrent_t"],
                           dh_next, dc, da, contended)
    return dict(da=da, dc=dc, dh_next=dh_next)


SCAN_SHAPES = [(1, 3, 5), (4, 2, 7), (5, 6, 8), (9, 4, 13)]  # (T, N, U): whole blocks of 4 steps, and tails


@pytest.mark.parametrize("steps,n,u", SCAN_SHAPES)
@pytest.mark.parametrize("contended", [False, True])
def test_numpy_lstm_scan_backward_follows_the_equations(steps, n, u, contended):
    case = lstm_sequence(np.random.default_rng(steps * 100 + u), steps, n, u, np.float64)
    got = run_lstm_scan(kernels.NUMPY, case, contended)
    dh_next, dc = np.zeros((n, u)), np.zeros((n, u))
    for t in reversed(range(steps)):
        da, dc = lstm_step_backward(case["dh_out"][t], dh_next, case["acts"][t], case["c_prev"][t],
                                    case["tanh_c"][t], dc)
        np.testing.assert_allclose(got["da"][t], da, rtol=1e-12, atol=1e-12, err_msg=f"step {t}")
        if t:
            dh_next = da @ case["recurrent_t"]
    np.testing.assert_allclose(got["dc"], dc, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["dh_next"], dh_next, rtol=1e-12, atol=1e-12)  # step 1's: step 0 adds none


def test_numpy_cells_keep_float32():
    rng = np.random.default_rng(0)
    for name, (make_case, run) in CELLS.items():
        case = make_case(rng, 4, 6)
        for key, value in run(kernels.NUMPY, case).items():
            assert value.dtype == np.float32, (name, key)
            assert np.all(np.isfinite(value)), (name, key)


def test_numpy_sigmoid_never_overflows():
    a = np.array([-1e4, -100, -20, 0, 20, 100, 1e4], np.float32)
    with np.errstate(all="raise"):
        y = reference.sigmoid_(a.copy())
    assert y.dtype == np.float32
    exact = 0.5 * (np.tanh(0.5 * a.astype(np.float64)) + 1)
    np.testing.assert_allclose(y, exact, rtol=0, atol=1e-7)
    assert y[0] == 0 and y[-1] == 1


# -- the compiled kernels ------------------------------------------------------------


@pytest.fixture
def numba_kernels():
    pytest.importorskip("numba")
    return kernels.kernel_set("numba")


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("n,u", SHAPES)
def test_compiled_cells_match_the_numpy_cells(numba_kernels, name, n, u):
    make_case, run = CELLS[name]
    case = make_case(np.random.default_rng(n * 1000 + u), n, u)
    got, expect = run(numba_kernels, case), run(kernels.NUMPY, case)
    assert got.keys() == expect.keys()
    for key in expect:
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], expect[key], rtol=1e-5, atol=2e-6, err_msg=key)


@pytest.mark.parametrize("steps,n,u", SCAN_SHAPES)
@pytest.mark.parametrize("contended", [False, True])
def test_compiled_lstm_scan_backward_matches_the_numpy_one(numba_kernels, steps, n, u, contended):
    case = lstm_sequence(np.random.default_rng(steps * 10 + n), steps, n, u, np.float32)
    got, expect = run_lstm_scan(numba_kernels, case, contended), run_lstm_scan(kernels.NUMPY, case, contended)
    for key in expect:
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], expect[key], rtol=1e-5, atol=2e-6, err_msg=key)


def run_lstm_infer(ops, case):
    n, u = case["c_prev"].shape
    c, h = np.full((n, u), np.nan, case["xw"].dtype), np.full((n, u), np.nan, case["xw"].dtype)
    ops.lstm_cell_infer(case["xw"].copy(), case["hr"], case["c_prev"], c, h)
    return dict(c=c, h=h)


@pytest.mark.parametrize("n,u", SHAPES)
def test_numpy_lstm_eval_step_writes_the_training_steps_c_and_h(n, u):
    case = lstm_case(np.random.default_rng(n * 7 + u), n, u, dtype=np.float64)
    got, expect = run_lstm_infer(kernels.NUMPY, case), run_lstm(kernels.NUMPY, case)
    for key in ("c", "h"):
        np.testing.assert_array_equal(got[key], expect[key], err_msg=key)


@pytest.mark.parametrize("n,u", SHAPES)
def test_compiled_lstm_eval_step_matches_the_compiled_training_step_and_numpy(numba_kernels, n, u):
    case = lstm_case(np.random.default_rng(n * 7 + u), n, u)
    got, trained = run_lstm_infer(numba_kernels, case), run_lstm(numba_kernels, case)
    expect = run_lstm_infer(kernels.NUMPY, case)
    for key in ("c", "h"):
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], trained[key], err_msg=key)  # the same arithmetic
        np.testing.assert_allclose(got[key], expect[key], rtol=1e-5, atol=2e-6, err_msg=key)


def test_compiled_tanh_is_accurate_bounded_and_passes_nan(numba_kernels):
    from nettrain.kernels.compiled.recurrent import tanh_approx

    x = np.concatenate([
        np.linspace(-20, 20, 400_001),
        np.logspace(-12, 1.5, 20_001),
        -np.logspace(-12, 1.5, 20_001),
        [0.0, -0.0, 7.9, 7.91, 9.0, 88.0, 1e30, np.inf, -np.inf],
    ]).astype(np.float32)
    y = np.empty_like(x)
    tanh_approx(x, y)
    exact = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(y - exact)) < 3e-7
    assert np.all(np.abs(y) <= 1)
    # odd, and exact where float32 tanh rounds to x itself or to +-1
    y_neg = np.empty_like(x)
    tanh_approx(-x, y_neg)
    np.testing.assert_array_equal(y_neg, -y)
    tiny = np.abs(x) < 1e-4
    np.testing.assert_array_equal(y[tiny], x[tiny])
    np.testing.assert_array_equal(y[np.abs(x) >= 9], np.sign(x[np.abs(x) >= 9]))
    nan = np.array([np.nan, 1.0], np.float32)
    out = np.empty_like(nan)
    tanh_approx(nan, out)
    assert np.isnan(out[0]) and out[1] == pytest.approx(np.tanh(1.0), abs=5e-7)


def test_compiled_cells_saturate_without_nan(numba_kernels):
    # pre-activations far beyond where sigmoid and tanh saturate
    n, u = 3, 9
    rng = np.random.default_rng(7)
    case = lstm_case(rng, n, u)
    case["xw"] = np.sign(case["xw"]) * np.float32(1e6)
    got, expect = run_lstm(numba_kernels, case), run_lstm(kernels.NUMPY, case)
    for key in expect:
        assert np.all(np.isfinite(got[key])), key
        np.testing.assert_allclose(got[key], expect[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert set(np.unique(got["acts"])) <= {0.0, 1.0, -1.0}


# -- whole layers, compiled kernels on and off -------------------------------------------


def outputs_and_grads(layer, x, dy):
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


def with_fast(flag, fn):
    previous = kernels.set_compiled(flag)
    try:
        return fn()
    finally:
        kernels.set_compiled(previous)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("type_name", TYPES)
def test_layer_with_compiled_kernels_matches_numpy(numba_kernels, type_name, return_sequences):
    rng = np.random.default_rng(11)
    layer = REGISTRY[type_name](units=13, return_sequences=return_sequences)
    layer.build((9, 5), rng)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    x = draw(rng, 6, 9, 5)
    dy = draw(rng, 6, *layer.out_shape)
    got = with_fast(True, lambda: outputs_and_grads(layer, x, dy))
    expect = with_fast(False, lambda: outputs_and_grads(layer, x, dy))
    for a, b in zip(got[:2], expect[:2]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert got[2].keys() == expect[2].keys() == layer.params.keys()
    for key in expect[2]:
        scale = max(1.0, float(np.abs(expect[2][key]).max()))
        np.testing.assert_allclose(got[2][key], expect[2][key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)


@pytest.mark.parametrize("type_name", ["gru", "lstm"])
def test_stacked_layers_with_compiled_kernels_match_numpy(numba_kernels, type_name):
    rng = np.random.default_rng(12)
    stack = Sequential([REGISTRY[type_name](units=8, return_sequences=True, name="a"),
                        REGISTRY[type_name](units=6, name="b")])
    stack.build((7, 4), rng)
    x, dy = draw(rng, 5, 7, 4), draw(rng, 5, 6)
    got = with_fast(True, lambda: (stack.forward(x, True), stack.backward(dy)))
    expect = with_fast(False, lambda: (stack.forward(x, True), stack.backward(dy)))
    for a, b in zip(got, expect):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- layer bookkeeping --------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
def test_without_input_grad_backward_returns_none_and_the_same_param_grads(type_name):
    rng = np.random.default_rng(3)
    layer = REGISTRY[type_name](units=5)
    layer.build((4, 3), rng)
    x, dy = draw(rng, 2, 4, 3), draw(rng, 2, 5)
    _, dx, full = outputs_and_grads(layer, x, dy)
    assert dx.shape == x.shape
    layer.input_grad = False
    try:
        _, dx, skipped = outputs_and_grads(layer, x, dy)
    finally:
        layer.input_grad = True
    assert dx is None
    for key in full:
        np.testing.assert_array_equal(skipped[key], full[key], err_msg=key)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n,steps", [(1, 4), (3, 1), (1, 1), (4, 3)])
def test_outputs_and_input_grads_are_never_overwritten_by_later_calls(type_name, n, steps):
    # the layer reuses its work arrays between calls; what it returned must stay put
    rng = np.random.default_rng(5)
    layer = REGISTRY[type_name](units=3, return_sequences=True)
    layer.build((steps, 2), rng)
    x1, x2 = draw(rng, n, steps, 2), draw(rng, n, steps, 2)
    dy1, dy2 = draw(rng, n, steps, 3), draw(rng, n, steps, 3)
    y1 = layer.forward(x1, training=True)
    dx1 = layer.backward(dy1)
    y1_saved, dx1_saved = y1.copy(), dx1.copy()
    y2 = layer.forward(x2, training=True)
    dx2 = layer.backward(dy2)
    np.testing.assert_array_equal(y1, y1_saved)
    np.testing.assert_array_equal(dx1, dx1_saved)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(dx1, dx2)
    # and a later call computes the same as the first one did
    np.testing.assert_allclose(layer.forward(x1, training=True), y1_saved, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.backward(dy1), dx1_saved, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("type_name", TYPES)
def test_batch_size_can_change_between_calls(type_name):
    rng = np.random.default_rng(6)
    layer = REGISTRY[type_name](units=4)
    layer.build((5, 3), rng)
    x = draw(rng, 6, 5, 3)
    dy = draw(rng, 6, 4)
    y_big, dx_big = layer.forward(x, training=True), layer.backward(dy)
    grads_big = {k: g.copy() for k, g in layer.grads.items()}
    y_small, dx_small = layer.forward(x[:2], training=True), layer.backward(dy[:2])
    np.testing.assert_allclose(y_small, y_big[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_small, dx_big[:2], rtol=1e-5, atol=1e-6)
    y_again, _ = layer.forward(x, training=True), layer.backward(dy)
    np.testing.assert_allclose(y_again, y_big, rtol=1e-6, atol=1e-7)
    for key, g in layer.grads.items():
        np.testing.assert_allclose(g, grads_big[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("type_name", TYPES)
def test_grads_are_written_into_the_same_arrays(type_name):
    # an optimizer may hold the grads dict entries; they must see every new gradient
    rng = np.random.default_rng(8)
    layer = REGISTRY[type_name](units=3)
    layer.build((4, 2), rng)
    held = dict(layer.grads)
    layer.forward(draw(rng, 2, 4, 2), training=True)
    layer.backward(draw(rng, 2, 3))
    for key, g in layer.grads.items():
        assert g is held[key], key
        assert np.any(g != 0), key


def test_recurrent_layers_work_without_numba():
    code = """
import sys
sys.modules["numba"] = None  # as if it were not installed
import numpy as np
from nettrain import kernels
from nettrain.layers import REGISTRY
assert not kernels.compiled_available() and kernels.backend(np.float32) is kernels.NUMPY
for name in ("simple_rnn", "gru", "lstm"):
    layer = REGISTRY[name](units=3)
    layer.build((4, 2), np.random.default_rng(0))
    y = layer.forward(np.ones((2, 4, 2), np.float32), training=True)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32 and dx.shape == (2, 4, 2)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

"""SimpleRNN, GRU and LSTM: gradients, dtypes, shape errors and parity with torch.nn."""

import numpy as np
import pytest
from conftest import make_layer as make
from gradcheck import check_layer

from nettrain.errors import ShapeError
from nettrain.layers import REGISTRY, Sequential
from nettrain.layers.recurrent import GRU, LSTM, SimpleRNN

TYPES = ["simple_rnn", "gru", "lstm"]
GATES = {"simple_rnn": 1, "gru": 3, "lstm": 4}


def randomize(layer, rng, scale=0.5):
    """Non-trivial weights and biases, so no gate sits at its initial value."""
    for key, p in layer.params.items():
        p[...] = rng.standard_normal(p.shape) * scale


# -- gradients -----------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("type_name", TYPES)
def test_gradcheck(type_name, return_sequences):
    layer = make(type_name, units=4, return_sequences=return_sequences)
    rng = np.random.default_rng(1)
    layer.build((4, 3), rng)
    randomize(layer, rng)
    errors = check_layer(layer, (4, 3), batch=3, seed=2)
    assert set(errors) == {"x", *layer.params}


@pytest.mark.parametrize("type_name", ["gru", "lstm"])
def test_gradcheck_two_layer_stack(type_name):
    first = make(type_name, units=4, return_sequences=True, name=f"{type_name}_1")
    second = make(type_name, units=3, name=f"{type_name}_2")
    stack = Sequential([first, second], name="stack")
    rng = np.random.default_rng(3)
    assert stack.build((4, 3), rng) == (3,)
    assert first.out_shape == (4, 4)
    randomize(first, rng)
    randomize(second, rng)
    errors = check_layer(stack, (4, 3), batch=2, seed=4)
    # both layers' parameters were checked, not just the last one's
    assert {f"{type_name}_1.kernel", f"{type_name}_2.recurrent_kernel"} <= set(errors)


def test_recurrent_weights_matter_to_the_gradient_of_early_steps():
    # with return_sequences false only the last step is seen; the first input must still get
    # a gradient through the recurrence
    layer = make("lstm", units=3)
    layer.build((4, 2), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 4, 2)).astype(np.float32)
    layer.forward(x, training=True)
    dx = layer.backward(np.ones((2, 3), np.float32))
    assert np.all(np.abs(dx[:, 0]).sum(axis=-1) > 0)


# -- shapes, dtypes, bookkeeping -------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_output_shapes_and_float32(type_name, return_sequences):
    layer = make(type_name, units=5, return_sequences=return_sequences)
    out_shape = layer.build((6, 3), np.random.default_rng(0))
    assert out_shape == ((6, 5) if return_sequences else (5,))
    assert all(p.dtype == np.float32 for p in layer.params.values())
    x = np.random.default_rng(1).standard_normal((2, 6, 3)).astype(np.float32)
    y = layer.forward(x, training=True)
    assert y.shape == (2, *out_shape)
    assert y.dtype == np.float32
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert set(layer.grads) == set(layer.params)
    for key, grad in layer.grads.items():
        assert grad.dtype == np.float32 and grad.shape == layer.params[key].shape


@pytest.mark.parametrize("type_name", TYPES)
def test_dtype_follows_params(type_name):
    layer = make(type_name, units=3)
    layer.build((2, 4), np.random.default_rng(0))
    x64 = np.random.default_rng(1).standard_normal((2, 2, 4))
    assert layer.forward(x64).dtype == np.float32
    layer.cast(np.float64)
    y = layer.forward(x64.astype(np.float32))
    assert y.dtype == np.float64
    assert layer.backward(np.ones_like(y)).dtype == np.float64


@pytest.mark.parametrize("type_name", TYPES)
def test_param_names_shapes_and_macs(type_name):
    steps, features, units = 7, 5, 6
    gates = GATES[type_name]
    layer = make(type_name, units=units)
    layer.build((steps, features), np.random.default_rng(0))
    expected = {
        "kernel": (features, gates * units),
        "recurrent_kernel": (units, gates * units),
        "bias": (gates * units,),
    }
    if type_name == "gru":
        expected["recurrent_bias"] = (gates * units,)
    assert {k: p.shape for k, p in layer.params.items()} == expected
    assert layer.macs() == steps * (features * gates * units + units * gates * units)
    assert all(p.flags.c_contiguous for p in layer.params.values())


def test_lstm_unit_forget_bias():
    units = 3
    layer = make("lstm", units=units)
    layer.build((2, 2), np.random.default_rng(0))
    bias = layer.params["bias"]
    assert np.all(bias[units : 2 * units] == 1)
    assert np.all(bias[:units] == 0) and np.all(bias[2 * units :] == 0)
    plain = make("lstm", units=units, unit_forget_bias=False)
    plain.build((2, 2), np.random.default_rng(0))
    assert np.all(plain.params["bias"] == 0)


def test_recurrent_kernel_is_orthogonal_per_gate_block():
    layer = make("simple_rnn", units=4)
    layer.build((3, 2), np.random.default_rng(0))
    r = layer.params["recurrent_kernel"].astype(np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-6)


def test_registered_types_and_config_round_trip():
    assert REGISTRY["simple_rnn"] is SimpleRNN
    assert REGISTRY["gru"] is GRU
    assert REGISTRY["lstm"] is LSTM
    layer = make("gru", units=8, return_sequences=True, kernel_initializer="he_uniform")
    config = layer.spec.model_dump(mode="json")
    assert config["type"] == "gru" and config["units"] == 8
    assert GRU.Spec.model_validate(config) == layer.spec
    with pytest.raises(Exception):
        LSTM.Spec(units=0)
    with pytest.raises(Exception):
        LSTM.Spec(units=4, activation="relu")


@pytest.mark.parametrize("type_name", TYPES)
def test_image_input_is_a_shape_error(type_name):
    layer = make(type_name, units=4, name="encoder")
    with pytest.raises(ShapeError) as info:
        layer.build((8, 28, 28), np.random.default_rng(0))
    message = str(info.value)
    assert "'encoder'" in message and type_name in message
    assert "28x28x8" in message
    assert "reshape" in message and "flatten" in message
    assert "\n" not in message


def test_vector_input_is_a_shape_error_suggesting_return_sequences():
    stack = Sequential([make("lstm", units=4, name="first"), make("gru", units=2, name="second")])
    with pytest.raises(ShapeError) as info:
        stack.build((5, 3), np.random.default_rng(0))
    message = str(info.value)
    assert "'second'" in message and "return_sequences: true" in message


# -- parity with torch.nn --------------------------------------------------------


def torch_parity(type_name, torch_cls, seed=0, n=3, steps=5, features=4, units=6):
    """Copy a torch layer's weights into ours; compare outputs and all gradients (float32)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    ref = torch_cls(features, units, batch_first=True)
    layer = make(type_name, units=units, return_sequences=True)
    layer.build((steps, features), np.random.default_rng(seed))
    w_ih, w_hh = ref.weight_ih_l0.detach().numpy(), ref.weight_hh_l0.detach().numpy()
    b_ih, b_hh = ref.bias_ih_l0.detach().numpy(), ref.bias_hh_l0.detach().numpy()
    layer.params["kernel"][...] = w_ih.T
    layer.params["recurrent_kernel"][...] = w_hh.T
    if type_name == "gru":
        layer.params["bias"][...] = b_ih
        layer.params["recurrent_bias"][...] = b_hh
    else:  # the two biases are simply added
        layer.params["bias"][...] = b_ih + b_hh

    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n, steps, features)).astype(np.float32)
    g = rng.standard_normal((n, steps, units)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt, _ = ref(xt)
    (yt * torch.tensor(g)).sum().backward()

    y = layer.forward(x, training=True)
    dx = layer.backward(g)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(layer.grads["kernel"], ref.weight_ih_l0.grad.numpy().T, rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        layer.grads["recurrent_kernel"], ref.weight_hh_l0.grad.numpy().T, rtol=0, atol=1e-4
    )
    np.testing.assert_allclose(layer.grads["bias"], ref.bias_ih_l0.grad.numpy(), rtol=0, atol=1e-4)
    if type_name == "gru":
        np.testing.assert_allclose(layer.grads["recurrent_bias"], ref.bias_hh_l0.grad.numpy(), rtol=0, atol=1e-4)

    # the last step alone, as return_sequences: false gives it
    last = make(type_name, units=units)
    last.build((steps, features), np.random.default_rng(seed))
    for key, p in layer.params.items():
        last.params[key][...] = p
    np.testing.assert_allclose(last.forward(x), yt.detach().numpy()[:, -1], rtol=0, atol=1e-5)


def test_simple_rnn_matches_torch():
    torch = pytest.importorskip("torch")
    torch_parity("simple_rnn", torch.nn.RNN)


def test_gru_matches_torch():
    torch = pytest.importorskip("torch")
    torch_parity("gru", torch.nn.GRU)


def test_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    torch_parity("lstm", torch.nn.LSTM)


@pytest.mark.parametrize("kernel_set", ["numpy", "numba"])
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_lstm_eval_forward_projecting_each_step_equals_the_training_pass(kernel_set, threads, return_sequences,
                                                                         monkeypatch):
    """Eval computes each step's input projection inside the loop on each thread's slice of the batch;
    the states are those of the training pass (one input GEMM first), on any thread count, and
    within float32 rounding of the float64 pass; a backward after it works as after a training pass."""
    from nettrain import kernels

    if kernel_set == "numba" and not kernels.compiled_available():
        pytest.skip(f"{kernel_set} kernels not installed")
    previous = kernels.use_kernels(kernel_set)
    try:
        monkeypatch.setenv("NETTRAIN_THREADS", threads)
        layer = make("lstm", units=24, return_sequences=return_sequences)
        layer.build((9, 7), np.random.default_rng(3))
        randomize(layer, np.random.default_rng(3))
        x = np.random.default_rng(4).standard_normal((67, 9, 7)).astype(np.float32)  # odd: uneven slices
        trained = layer.forward(x, training=True)
        got = layer.forward(x, training=False)
        np.testing.assert_allclose(got, trained, rtol=1e-6, atol=1e-6)
        monkeypatch.setenv("NETTRAIN_THREADS", "1")
        np.testing.assert_allclose(layer.forward(x, training=False), got, rtol=1e-6, atol=1e-6)
        layer.cast(np.float64)
        np.testing.assert_allclose(got, layer.forward(x.astype(np.float64), training=False), rtol=0, atol=1e-5)
        dy = np.random.default_rng(5).standard_normal(got.shape)
        dx_eval = layer.backward(dy)  # a backward after an eval forward sees the same kept states
        layer.forward(x.astype(np.float64), training=True)
        np.testing.assert_array_equal(layer.backward(dy), dx_eval)
    finally:
        kernels.use_kernels(previous)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("type_name", TYPES)
def test_backward_after_an_eval_forward_gives_the_training_gradients(type_name, return_sequences):
    # an eval pass may keep less than a training pass (the LSTM keeps nothing); backward still holds
    layer = make(type_name, units=5, return_sequences=return_sequences)
    layer.build((6, 4), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 6, 4)).astype(np.float32)
    y_train = layer.forward(x, training=True)
    dy = np.random.default_rng(2).standard_normal(y_train.shape).astype(np.float32)
    dx_train = layer.backward(dy)
    grads_train = {k: v.copy() for k, v in layer.grads.items()}
    y_eval = layer.forward(x, training=False)
    np.testing.assert_array_equal(y_eval, y_train)
    np.testing.assert_allclose(layer.backward(dy), dx_train, rtol=1e-5, atol=1e-6)
    for key, grad in grads_train.items():
        np.testing.assert_allclose(layer.grads[key], grad, rtol=1e-5, atol=1e-6, err_msg=key)

"""nettrain and PyTorch agree on the same networks with copied weights: outputs, gradients, BN statistics.

The PyTorch twin is built by ``nettrain.export.torch_layout`` (through ``benchmarks/compare_torch.py``), so these tests
also check the translation that the speed comparison relies on.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nettrain import kernels  # noqa: E402
from nettrain.builder import build_model  # noqa: E402
from nettrain.config import load_config  # noqa: E402
from nettrain.losses import build_loss  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import compare_torch  # noqa: E402
from nettrain.export import torch_layout  # noqa: E402

RESNET_AND_STACK = """
model:
  input_shape: [12, 12, 3]
  layers:
    - {type: conv2d, filters: 8, kernel_size: 3, padding: same, use_bias: false}
    - {type: batchnorm, momentum: 0.8}
    - {type: relu}
    - type: residual              # a ResNet basic block, identity shortcut
      body:
        - {type: conv2d, filters: 8, kernel_size: 3, padding: same, use_bias: false}
        - {type: batchnorm}
        - {type: relu}
        - {type: conv2d, filters: 8, kernel_size: 3, padding: same, use_bias: false}
        - {type: batchnorm}
    - type: residual              # downsampling block, zero-padded shortcut (ResNet option A)
      shortcut: zero_pad
      body:
        - {type: conv2d, filters: 12, kernel_size: 3, strides: 2, padding: same, use_bias: false}
        - {type: batchnorm}
        - {type: relu}
        - {type: conv2d, filters: 12, kernel_size: 3, padding: same, use_bias: false}
        - {type: batchnorm}
    - type: residual              # projection shortcut
      shortcut: projection
      body:
        - {type: conv2d, filters: 16, kernel_size: 3, padding: same}
        - {type: relu}
    - {type: maxpool2d, pool_size: 3, strides: 2}
    - {type: conv2d, filters: 6, kernel_size: 2, strides: 1, padding: same, activation: relu}
    - {type: avgpool2d, pool_size: 2}
    - {type: flatten}
    - {type: dense, units: 10, activation: tanh}
    - {type: batchnorm}
    - {type: dense, units: 4}
"""

ALEXNET_LIKE = """
model:
  input_shape: [20, 20, 3]
  layers:
    - {type: conv2d, filters: 6, kernel_size: 4, strides: 4, activation: relu}
    - {type: maxpool2d, pool_size: 3, strides: 2, padding: same}
    - {type: conv2d, filters: 5, kernel_size: 5, padding: 2, activation: elu}
    - {type: global_avgpool2d}
    - {type: dense, units: 3}
"""

RECURRENT = """
model:
  input_shape: [6, 5]
  layers:
    - {type: KIND, units: 7, return_sequences: true}
    - {type: KIND, units: 4}
    - {type: dense, units: 3}
"""

PATHS = [False] + ([True] if kernels.compiled_available() else [])


def build_pair(tmp_path, text, seed=0):
    path = tmp_path / "net.yaml"
    path.write_text(text)
    model = build_model(load_config(path), seed=seed)
    net = compare_torch.torch_model(model)
    return model, net


def one_training_step(model, net, batch, seed):
    """Forward in training mode, cross-entropy, backward in both; returns the two outputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], size=batch)
    loss = build_loss("softmax_cross_entropy")
    model.zero_grads()
    out = model.forward(x, training=True)
    loss.forward(out, y)
    model.backward(loss.backward())
    net.train()
    net.zero_grad()
    tout = net(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(tout, torch.from_numpy(y)).backward()
    return out, tout.detach().numpy()


def assert_gradients_agree(model, net):
    grads = model.gradients()
    checked = 0
    for name, _, tensor, how in compare_torch.paired_arrays(model, net):
        if name not in grads or not tensor.requires_grad:
            continue
        expect = tensor.grad.numpy()
        got = grads[name].T if how == "T" else grads[name]
        scale = max(1e-3, float(np.abs(expect).max()))
        np.testing.assert_allclose(got, expect, rtol=1e-3, atol=2e-4 * scale, err_msg=name)
        checked += 1
    assert checked == len(grads)


def assert_buffers_agree(model, net):
    buffers = model.buffers()
    for name, _, tensor, _ in compare_torch.paired_arrays(model, net):
        if name in buffers:
            np.testing.assert_allclose(buffers[name], tensor.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(params=PATHS, ids=lambda f: "numba" if f else "numpy")
def kernel_path(request):
    previous = kernels.set_compiled(request.param) if kernels.compiled_available() else False
    yield request.param
    if kernels.compiled_available():
        kernels.set_compiled(previous)


@pytest.mark.parametrize("text", [RESNET_AND_STACK, ALEXNET_LIKE], ids=["resnet_stack", "alexnet_like"])
def test_outputs_gradients_and_statistics_match_torch(tmp_path, kernel_path, text):
    model, net = build_pair(tmp_path, text)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == model.param_count()
    out, tout = one_training_step(model, net, batch=6, seed=1)
    np.testing.assert_allclose(out, tout, rtol=1e-4, atol=1e-4)
    assert_gradients_agree(model, net)
    assert_buffers_agree(model, net)  # running statistics moved the same way (momentum converted)
    x = np.random.default_rng(2).standard_normal((5, *model.input_shape)).astype(np.float32)
    net.eval()
    with torch.no_grad():
        expect = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x, training=False), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_recurrent_networks_match_torch(tmp_path, kind):
    model, net = build_pair(tmp_path, RECURRENT.replace("KIND", kind))
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == model.param_count()
    out, tout = one_training_step(model, net, batch=4, seed=3)
    np.testing.assert_allclose(out, tout, rtol=1e-4, atol=1e-5)
    assert_gradients_agree(model, net)


def test_optimizer_steps_match_torch(tmp_path):
    model, net = build_pair(tmp_path, ALEXNET_LIKE + "train:\n  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, "
                                                     "weight_decay: 0.01, decay_bias_and_norm: false}\n")
    config = load_config(tmp_path / "net.yaml")
    from nettrain.optimizers import build_optimizer

    ours = build_optimizer(config.train.optimizer, model.parameters())
    theirs = compare_torch.torch_optimizer(config.train, model, net)
    for step in range(2):
        one_training_step(model, net, batch=4, seed=10 + step)
        ours.step(model.parameters(), model.gradients())
        theirs.step()
    params = model.parameters()
    for name, _, tensor, how in compare_torch.paired_arrays(model, net):
        if name in params:
            got = params[name].T if how == "T" else params[name]
            np.testing.assert_allclose(got, tensor.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("fields", [
    dict(filters=4, kernel_size=3, padding="same"),
    dict(filters=3, kernel_size=4, strides=2, padding="same", activation="relu"),  # even kernel: odd pad after
    dict(filters=5, kernel_size=3, strides=2, dilation=2, padding=2, activation="tanh"),
    dict(filters=2, kernel_size=5, strides=3, use_bias=False),
], ids=["same", "same_stride2_relu", "dilated_padded_tanh", "valid_stride3_nobias"])
def test_conv1d_matches_torch(kernel_path, fields):
    """Conv1D against torch.nn.Conv1d with the same weights: output, input gradient, weight and bias gradients."""
    from conftest import make_layer

    channels, length, batch = 3, 11, 4
    layer = make_layer("conv1d", **fields)
    layer.build((channels, length), np.random.default_rng(0))
    _, _, left, right = layer.pad
    stride, padding = fields.get("strides", 1), fields.get("padding", "valid")
    if padding == "same":  # Keras/TF: ceil(L / s) steps, the odd step of padding after
        assert layer.out_shape[1] == -(-length // stride) and right - left in (0, 1)
    else:
        assert left == right == (0 if padding == "valid" else padding)
    conv = torch.nn.Conv1d(channels, fields["filters"], fields["kernel_size"], stride=stride,
                           dilation=fields.get("dilation", 1), bias=fields.get("use_bias", True))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(layer.params["kernel"]))
        if conv.bias is not None:
            layer.params["bias"][...] = np.random.default_rng(1).standard_normal(fields["filters"])
            conv.bias.copy_(torch.from_numpy(layer.params["bias"]))
    activation = torch_layout.activation_module(fields.get("activation") or "linear")

    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, channels, length)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = activation(conv(torch.nn.functional.pad(xt, (left, right))))
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (yt * torch.from_numpy(g)).sum().backward()

    y = layer.forward(x, training=True)
    layer.zero_grads()
    dx = layer.backward(g)
    assert y.shape == (batch, *layer.out_shape) and y.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.grads["kernel"], conv.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    if conv.bias is not None:
        np.testing.assert_allclose(layer.grads["bias"], conv.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("text", [RESNET_AND_STACK, ALEXNET_LIKE, *(RECURRENT.replace("KIND", k) for k in
                                                                     ("lstm", "gru", "simple_rnn"))],
                         ids=["resnet_stack", "alexnet_like", "lstm", "gru", "simple_rnn"])
def test_exported_torch_layout_loads_strictly_into_the_twin(tmp_path, text):
    pytest.importorskip("safetensors", reason="the onnx extra is not installed (pip install 'nettrain[onnx]')")
    from safetensors.torch import load_file

    from nettrain.checkpoint import Checkpoint, architecture_signature, save_checkpoint
    from nettrain.export import export
    from nettrain.export.torch_layout import torch_twin

    model, net = build_pair(tmp_path, text)
    one_training_step(model, net, batch=4, seed=4)  # BatchNorm statistics and weights away from their defaults
    save_checkpoint(tmp_path / "net.npz", Checkpoint(model.parameters(), model.buffers(), config_text=(
        tmp_path / "net.yaml").read_text(), architecture=architecture_signature(model)))
    export(tmp_path / "net.npz", tmp_path / "net.safetensors", layout="torch")
    twin = torch_twin(model)
    twin.load_state_dict(load_file(str(tmp_path / "net.safetensors")), strict=True)
    twin.eval()
    x = np.random.default_rng(6).standard_normal((3, *model.input_shape)).astype(np.float32)
    with torch.no_grad():
        got = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, model.forward(x, training=False), rtol=1e-4, atol=1e-5)


def test_repeated_comparison_gives_medians_ranges_and_spreads(capsys):
    def run(nettrain, torch_rate, fwd):
        return {"config": "c", "kernels": "numpy", "params": 1, "max_output_difference": 1e-6,
                "nettrain_img_per_s": nettrain, "torch_img_per_s": torch_rate, "ratio": nettrain / torch_rate,
                "nettrain_forward_img_per_s": fwd, "torch_forward_img_per_s": 100.0, "forward_ratio": fwd / 100.0,
                "nettrain_peak_mib": 10.0, "torch_peak_mib": 20.0, "memory_ratio": 0.5}

    row = compare_torch.summarise([run(90.0, 100.0, 80.0), run(100.0, 80.0, 90.0), run(110.0, 100.0, 70.0)])
    assert row["runs"] == 3
    assert row["nettrain_img_per_s"] == 100.0 and row["torch_img_per_s"] == 100.0
    assert row["ratio"] == pytest.approx(1.1) and row["ratio_range"] == pytest.approx([0.9, 1.25])
    assert row["forward_ratio_range"] == pytest.approx([0.7, 0.9])
    assert row["nettrain_spread"] == pytest.approx(0.2) and row["torch_spread"] == pytest.approx(0.2)
    assert row["nettrain_forward_spread"] == pytest.approx(0.25) and row["torch_forward_spread"] == 0.0
    compare_torch.print_table([row])
    table = capsys.readouterr().out
    assert "0.90–1.25" in table and "0.20 / 0.20" in table


def test_timed_steps_run_in_blocks_that_cover_every_step():
    assert compare_torch.blocks(20, 5) == [5, 5, 5, 5]
    assert compare_torch.blocks(12, 5) == [5, 5, 2]
    assert compare_torch.blocks(3, 1) == [1, 1, 1]
    assert compare_torch.blocks(4, 0) == [1, 1, 1, 1]  # a block size below 1 means one step per block

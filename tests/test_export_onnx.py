"""ONNX export: every layer type and option, every shipped config, run in ONNX Runtime against nettrain's forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'nettrain[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'nettrain[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from nettrain import __version__  # noqa: E402
from nettrain.builder import build_model  # noqa: E402
from nettrain.cli import app  # noqa: E402
from nettrain.config import config_from_dict  # noqa: E402
from nettrain.evaluate import load_trained, predict  # noqa: E402
from nettrain.export import export  # noqa: E402
from nettrain.export.onnx_graph import onnx_bytes, onnx_model, onnx_session, random_inputs  # noqa: E402
from nettrain.export.source import ExportSource, load_source  # noqa: E402
from nettrain.training import Trainer  # noqa: E402
from tinyrun import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
runner = CliRunner()


def conv(filters, kernel, **kw):
    return {"type": "conv2d", "filters": filters, "kernel_size": kernel, **kw}


def residual(body, **kw):
    return {"type": "residual", "body": body, **kw}


# Odd input sizes throughout, so that `same` padding puts its odd pixel after.
IMAGE = [11, 13, 3]
MATRIX = {
    "conv_options": (IMAGE, [
        conv(4, [3, 5], strides=2, padding="same", activation="relu"),
        conv(5, 3, dilation=2, padding="same", use_bias=False, activation="leaky_relu"),
        conv(6, 4, padding="same", activation="elu"),  # even kernel: padding 1 before, 2 after
        conv(4, [2, 3], strides=[2, 1], activation="tanh"),
        conv(3, 3, padding=[1, 2], activation="sigmoid"),
        conv(3, 1, activation="softmax"),
        {"type": "flatten"}, {"type": "dense", "units": 5},
    ]),
    "pooling": (IMAGE, [
        conv(4, 3, padding="same"),
        {"type": "maxpool2d", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "avgpool2d", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "avgpool2d", "pool_size": [2, 3], "strides": 1, "padding": 1},
        {"type": "maxpool2d", "pool_size": 2, "padding": 1},
        {"type": "maxpool2d", "pool_size": [1, 2]},
        {"type": "global_avgpool2d"}, {"type": "dense", "units": 3, "activation": "softmax"},
    ]),
    "batchnorm_activations": (IMAGE, [
        conv(4, 3), {"type": "batchnorm", "epsilon": 1e-3},
        {"type": "leaky_relu", "alpha": 0.1}, {"type": "batchnorm", "center": False},
        {"type": "elu", "alpha": 0.7}, {"type": "batchnorm", "scale": False},
        {"type": "activation", "activation": "tanh"}, {"type": "activation", "activation": "linear"},
        {"type": "sigmoid"}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
        {"type": "flatten"}, {"type": "dense", "units": 6, "activation": "leaky_relu", "use_bias": False},
        {"type": "batchnorm"}, {"type": "dense", "units": 6, "activation": "elu"}, {"type": "tanh"},
        {"type": "dense", "units": 4, "activation": "sigmoid"}, {"type": "softmax"},
    ]),
    "shortcuts": (IMAGE, [
        conv(4, 3, padding="same"),
        residual([conv(4, 3, padding="same"), {"type": "batchnorm"}, {"type": "relu"}, conv(4, 3, padding="same")]),
        residual([conv(9, 3, strides=2, padding="same"), {"type": "batchnorm"}], shortcut="zero_pad"),
        residual([conv(12, 3, strides=2, padding="same", activation="relu"), conv(12, [1, 3], padding="same")],
                 shortcut="projection", activation="elu"),
        residual([conv(12, 1)], activation=None),
        residual([conv(15, 3, padding="same")], shortcut="zero_pad", activation="linear"),  # pad only, no stride
        residual([conv(15, 3, strides=2, padding="same")], shortcut="projection", strides=2),
        {"type": "global_avgpool2d"}, {"type": "dense", "units": 3},
    ]),
    "bottleneck": ([9, 9, 4], [
        residual([conv(2, 1, use_bias=False), {"type": "batchnorm"}, {"type": "relu"},
                  conv(2, 3, strides=2, padding="same", use_bias=False), {"type": "batchnorm"}, {"type": "relu"},
                  conv(8, 1, use_bias=False), {"type": "batchnorm"}], shortcut="projection"),
        {"type": "flatten"}, {"type": "dense", "units": 3},
    ]),
    "stacked_recurrent": ([7, 5], [
        {"type": "lstm", "units": 6, "return_sequences": True},
        {"type": "gru", "units": 5, "return_sequences": True},
        {"type": "batchnorm"},
        {"type": "simple_rnn", "units": 4, "return_sequences": True},
        {"type": "lstm", "units": 3, "unit_forget_bias": False},
        {"type": "dense", "units": 2},
    ]),
    "recurrent_last_states": ([6, 4], [
        {"type": "gru", "units": 5, "return_sequences": True},
        {"type": "gru", "units": 4},
        {"type": "reshape", "target_shape": [2, 2]},
        {"type": "simple_rnn", "units": 3},
        {"type": "dense", "units": 2},
    ]),
    "sequence_outputs": ([5, 3], [
        {"type": "simple_rnn", "units": 4, "return_sequences": True},
        {"type": "dense", "units": 6, "activation": "relu"},
        {"type": "dense", "units": 3, "use_bias": False},
        {"type": "softmax"},
    ]),
    "reshapes": ([8, 6, 1], [
        {"type": "reshape", "target_shape": [8, 6]},
        {"type": "lstm", "units": 4, "return_sequences": True},
        {"type": "reshape", "target_shape": [4, 2, -1]},
        conv(3, 2, padding="same"),
        {"type": "reshape", "target_shape": [-1]},
        {"type": "dense", "units": 3},
    ]),
    "conv1d": ([3, 11], [
        {"type": "conv1d", "filters": 4, "kernel_size": 4, "strides": 2, "padding": "same", "activation": "relu"},
        {"type": "conv1d", "filters": 3, "kernel_size": 3, "dilation": 2, "padding": 1, "use_bias": False},
        {"type": "conv1d", "filters": 2, "kernel_size": 2, "activation": "tanh"},
        {"type": "flatten"}, {"type": "dense", "units": 3},
    ]),
    "vectors": ([10], [
        {"type": "dense", "units": 8}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "dropout", "rate": 0.2}, {"type": "reshape", "target_shape": [2, 2, 2]},
        {"type": "global_avgpool2d"}, {"type": "dense", "units": 2},
    ]),
}


def scramble(model, seed=0):
    """Random weights, biases and BatchNorm statistics: zero biases and unit statistics hide layout mistakes."""
    rng = np.random.default_rng(seed)
    for name, p in model.parameters().items():
        p[...] = rng.normal(0.0, 0.5, p.shape) if p.ndim == 1 else p * rng.uniform(0.7, 1.3, p.shape)
    for name, b in model.buffers().items():
        b[...] = rng.uniform(0.5, 2.0, b.shape) if name.endswith("running_var") else rng.normal(0.0, 0.3, b.shape)


def source_of(name, input_shape, layers, seed=0):
    config = config_from_dict({"name": name, "model": {"input_shape": input_shape, "layers": layers}})
    model = build_model(config)
    scramble(model, seed)
    return ExportSource(model, config, config.to_yaml(), f"<{name}>")


def assert_runtime_agrees(src, batch=3, include_normalization=False):
    session = onnx_session(onnx_bytes(src, include_normalization))
    feed, x = random_inputs(src, include_normalization, batch, seed=1)
    got = session.run(None, {session.get_inputs()[0].name: feed})[0]
    want = src.model.forward(x, training=False)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return got


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_layer_type_and_option_agrees_with_onnx_runtime(case):
    input_shape, layers = MATRIX[case]
    src = source_of(case, input_shape, layers)
    assert_runtime_agrees(src, batch=3)
    assert_runtime_agrees(src, batch=1)  # the batch axis is dynamic


def test_matrix_covers_every_layer_type():
    from nettrain.layers import REGISTRY

    used = set()

    def collect(layers):
        for spec in layers:
            used.add(spec["type"])
            collect(spec.get("body", []))

    for _, layers in MATRIX.values():
        collect(layers)
    assert used == set(REGISTRY)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_exports_and_agrees(config):
    src = load_source(config)
    scramble(src.model)
    assert_runtime_agrees(src, batch=2)


def test_graph_names_metadata_and_padding():
    src = source_of("named", IMAGE, MATRIX["conv_options"][1])
    proto = onnx_model(src)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["nettrain_version"] == __version__ and props["config_name"] == "named"
    assert "kernel_size: [3, 5]" in props["config"]
    graph = proto.graph
    assert graph.input[0].name == "input" and graph.output[0].name == "dense_1"
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")
    initializers = {t.name for t in graph.initializer}
    assert {"conv2d_1.kernel", "conv2d_1.bias", "conv2d_2.kernel", "dense_1.kernel"} <= initializers
    assert "conv2d_2.bias" not in initializers
    pads = {n.name: [list(a.ints) for a in n.attribute if a.name == "pads"][0] for n in graph.node if n.op_type == "Conv"}
    assert pads["conv2d_3/Conv"] == [1, 1, 2, 2]  # kernel 4, same: [top, left, bottom, right], odd pixel after
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert {a.name: a.i for a in gemm.attribute}.get("transB", 0) == 0


def test_recurrent_gate_order_and_layout():
    src = source_of("gates", [4, 3], [{"type": "gru", "units": 2}])
    proto = onnx_model(src)
    node = next(n for n in proto.graph.node if n.op_type == "GRU")
    assert {a.name: a.i for a in node.attribute}["linear_before_reset"] == 1
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    kernel = src.model.layers[0].params["kernel"]  # (F, 3U) with r, z, n
    w = weights["gru_1.W"]
    assert w.shape == (1, 6, 3)
    np.testing.assert_array_equal(w[0, :2], kernel[:, 2:4].T)  # ONNX z first: nettrain's second block
    np.testing.assert_array_equal(w[0, 2:4], kernel[:, :2].T)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return Trainer(tiny_config(tmp_path_factory.mktemp("onnx"), classes=5, epochs=1)).fit()


def test_include_normalization_agrees_with_predict(tiny_run, tmp_path):
    out = tmp_path / "tiny.onnx"
    result = export(tiny_run.run_dir, out, include_normalization=True, check=True)
    assert result.max_difference < 1e-4
    trained = load_trained(tiny_run.run_dir)
    pixels = np.random.default_rng(5).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "batch.npz", x=pixels)
    expected = predict(trained, [tmp_path / "batch.npz"], top=5)
    session = onnx_session(out.read_bytes())
    assert session.get_inputs()[0].name == "pixels" and session.get_inputs()[0].type == "tensor(uint8)"
    logits = session.run(None, {"pixels": pixels})[0].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert [r["class"] for r in expected] == list(probs.argmax(axis=1))
    for row, p in zip(expected, probs):
        assert row["probability"] == pytest.approx(p.max(), abs=1e-5)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == trained.classes


def test_cli_export_check_prints_the_difference(tiny_run, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_run.run_dir), "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                                 "--check", "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    assert "last.npz" in result.output and "largest difference" in result.output
    difference = float(result.output.rsplit("largest difference", 1)[1].split()[0])
    assert difference < 1e-4
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "-o", "{tmp}/no/../x.onnx", "--layout", "torch"], "--layout torch applies to"),
    (["--format", "pdf", "-o", "{tmp}/x.pdf"], "--format must be onnx or safetensors"),
    (["-o", "{tmp}/x.bin"], "say --format"),
    (["-o", "{tmp}/x.onnx", "--checkpoint", "worst"], "--checkpoint must be best or last"),
    (["-o", "{tmp}"], "is a folder"),
    (["-o", "{tmp}/x.safetensors", "--include-normalization"], "--include-normalization applies to --format onnx"),
])
def test_bad_options_are_one_line_errors(tiny_run, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["export", str(tiny_run.run_dir), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_unwritable_output_is_one_line(tiny_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["export", str(tiny_run.run_dir), "-o", str(blocker / "model.onnx")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "-o" in lines[0]
    assert not (tmp_path / "file").is_dir()


def test_config_source_cannot_include_normalization(tmp_path):
    result = runner.invoke(app, ["export", str(ROOT / "configs" / "quickstart.yaml"), "-o", str(tmp_path / "q.onnx"),
                                 "--include-normalization"])
    assert result.exit_code == 2 and "no stored normalisation" in result.output
    assert not (tmp_path / "q.onnx").exists()


def test_unknown_layer_type_in_an_old_checkpoint_is_one_line(tiny_run, tmp_path):
    from nettrain.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_run.run_dir / "checkpoints" / "last.npz")
    ckpt.config_text = ckpt.config_text.replace("type: maxpool2d", "type: fancy_pool2d")
    assert "fancy_pool2d" in ckpt.config_text
    save_checkpoint(tmp_path / "old.npz", ckpt)
    result = runner.invoke(app, ["export", str(tmp_path / "old.npz"), "-o", str(tmp_path / "old.onnx")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "fancy_pool2d" in lines[0], result.output


def test_a_layer_type_without_converter_is_one_line(tiny_run, tmp_path, monkeypatch):
    from nettrain.export import onnx_ops
    from nettrain.export import onnx_layers  # noqa: F401  (registers the converters before one is taken away)

    monkeypatch.delitem(onnx_ops.CONVERTERS, "maxpool2d")
    result = runner.invoke(app, ["export", str(tiny_run.run_dir), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: layer 'pool' has type 'maxpool2d', which the ONNX export does not "
                                     "support; export it as safetensors instead")


def test_missing_extra_is_one_line(tiny_run, tmp_path, monkeypatch):
    from conftest import hide_module

    hide_module(monkeypatch, "onnx")
    result = runner.invoke(app, ["export", str(tiny_run.run_dir), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: ONNX export needs the 'onnx' package: pip install 'nettrain[onnx]'"


@pytest.mark.slow
def test_quickstart_accuracy_in_onnx_runtime_equals_eval(tmp_path):
    """A briefly trained quickstart, exported with its normalisation, classifies the shipped test subset
    in ONNX Runtime (from the raw uint8 pixels) exactly as `nettrain eval` does."""
    from nettrain.config import load_config
    from nettrain.data import read_idx_split

    config = load_config(ROOT / "configs" / "quickstart.yaml",
                         ["data.subset=600", "train.epochs=1", f"output.dir={tmp_path / 'run'}", "output.plots=false"])
    run = Trainer(config).fit()
    out = tmp_path / "quickstart.onnx"
    export(run.run_dir, out, include_normalization=True)
    report = runner.invoke(app, ["eval", str(run.run_dir), "--format", "json"])
    assert report.exit_code == 0, report.output
    accuracy = json.loads(report.stdout)["accuracy"]
    pixels, labels = read_idx_split(ROOT / "data" / "fashion-mnist-subset", "test")
    session = onnx_session(out.read_bytes())
    logits = np.concatenate([session.run(None, {"pixels": pixels[i:i + 500]})[0] for i in range(0, len(pixels), 500)])
    assert len(logits) == 2000
    assert float(np.mean(logits.argmax(axis=1) == labels)) == accuracy
    assert accuracy > 0.3  # it learned something, so agreement is not trivial


def test_layers_named_like_the_graph_input():
    src = source_of("names", [6], [{"type": "dense", "units": 4, "name": "input"},
                                    {"type": "dense", "units": 2, "name": "normalization"}])
    assert_runtime_agrees(src)
    src.mean, src.std = np.array([0.5], np.float32), np.array([2.0], np.float32)
    assert_runtime_agrees(src, include_normalization=True)

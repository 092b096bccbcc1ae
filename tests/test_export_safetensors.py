"""safetensors export: bit-exact weights by nettrain name, read back by eval and predict; PyTorch's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="the onnx extra is not installed (pip install 'nettrain[onnx]')")

from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from nettrain.checkpoint import load_checkpoint  # noqa: E402
from nettrain.cli import app  # noqa: E402
from nettrain.evaluate import evaluate_checkpoint, load_trained, predict  # noqa: E402
from nettrain.export import export  # noqa: E402
from nettrain.training import Trainer  # noqa: E402
from tinyrun import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return Trainer(tiny_config(tmp_path_factory.mktemp("st"), classes=5, epochs=2)).fit()


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    path = tmp_path_factory.mktemp("st_out") / "tiny.safetensors"
    export(run.run_dir, path, check=True)
    return path


def test_weights_round_trip_bit_exactly(run, exported):
    ckpt = load_checkpoint(run.run_dir / "checkpoints" / "best.npz")
    tensors = load_file(str(exported))
    assert set(tensors) == set(ckpt.params) | set(ckpt.buffers)
    for name, array in {**ckpt.params, **ckpt.buffers}.items():
        assert tensors[name].dtype == array.dtype and tensors[name].shape == array.shape
        assert tensors[name].tobytes() == array.tobytes(), name
    with safe_open(str(exported), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "nettrain-weights" and meta["format_version"] == "1" and meta["layout"] == "nettrain"
    assert meta["config"] == ckpt.config_text and meta["config_name"] == "tiny"
    assert json.loads(meta["classes"]) == ckpt.classes
    norm = json.loads(meta["normalization"])
    assert np.array_equal(np.asarray(norm["mean"], np.float32), ckpt.mean)
    assert np.array_equal(np.asarray(norm["std"], np.float32), ckpt.std)


def test_reloaded_model_is_identical(run, exported):
    a, b = load_trained(run.run_dir), load_trained(exported)
    for name, array in {**a.model.parameters(), **a.model.buffers()}.items():
        assert np.array_equal(array, {**b.model.parameters(), **b.model.buffers()}[name])
    assert np.array_equal(b.checkpoint.mean, a.checkpoint.mean) and b.classes == a.classes
    x = np.random.default_rng(0).standard_normal((4, *a.model.input_shape), dtype=np.float32)
    assert np.array_equal(a.model.forward(x), b.model.forward(x))


def test_eval_and_predict_accept_safetensors(run, exported, tmp_path):
    from_checkpoint = evaluate_checkpoint(run.run_dir, "test")
    from_weights = evaluate_checkpoint(exported, "test")
    assert from_weights["accuracy"] == from_checkpoint["accuracy"]
    assert from_weights["loss"] == from_checkpoint["loss"]
    assert from_weights["confusion_matrix"] == from_checkpoint["confusion_matrix"]
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).integers(0, 256, (3, 1, 8, 8), dtype=np.uint8))
    expected = predict(load_trained(run.run_dir), [tmp_path / "x.npz"])
    got = predict(load_trained(exported), [tmp_path / "x.npz"])
    assert [(r["class"], r["probability"]) for r in got] == [(r["class"], r["probability"]) for r in expected]
    result = runner.invoke(app, ["eval", str(exported), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["accuracy"] == from_checkpoint["accuracy"]


def test_cli_export_and_check(run, tmp_path):
    out = tmp_path / "w.safetensors"
    result = runner.invoke(app, ["export", str(run.run_dir), "--format", "safetensors", "-o", str(out), "--check"])
    assert result.exit_code == 0, result.output
    assert "read back bit for bit" in result.output and out.is_file()


def test_layout_torch_loads_strictly_into_the_twin(run, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'nettrain[bench]')")
    from safetensors.torch import load_file as torch_load_file

    from nettrain.export.torch_layout import torch_twin

    out = tmp_path / "torch.safetensors"
    export(run.run_dir, out, layout="torch")
    trained = load_trained(run.run_dir)
    net = torch_twin(trained.model)
    net.load_state_dict(torch_load_file(str(out)), strict=True)
    net.eval()
    x = np.random.default_rng(2).standard_normal((5, *trained.model.input_shape), dtype=np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, trained.model.forward(x), rtol=1e-4, atol=1e-5)
    # nettrain refuses to read PyTorch's layout, in one line
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "--layout torch" in result.output


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_layout_torch_for_every_shipped_config(config, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install 'nettrain[bench]')")
    from safetensors.torch import load as torch_load

    from nettrain.export.safetensors_io import safetensors_bytes
    from nettrain.export.source import load_source
    from nettrain.export.torch_layout import torch_twin

    src = load_source(config)
    data, _ = safetensors_bytes(src, layout="torch")
    torch_twin(src.model).load_state_dict(torch_load(data), strict=True)


def test_safetensors_errors_are_one_line(run, exported, tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    other = tmp_path / "other.safetensors"
    export(ROOT / "configs" / "quickstart.yaml", other)
    from safetensors.numpy import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    cases = [(fake, "not a readable safetensors file"), (foreign, "no nettrain metadata")]
    for path, message in cases:
        result = runner.invoke(app, ["eval", str(path)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    # the weights of one model given with the config of another
    tensors = load_file(str(exported))
    with safe_open(str(other), framework="np") as f:
        other_meta = f.metadata()
    mixed = tmp_path / "mixed.safetensors"
    save_file(tensors, str(mixed), metadata=other_meta)
    result = runner.invoke(app, ["predict", str(mixed), str(tmp_path / "x.npz")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "written for another model" in lines[0], result.output


def test_layout_torch_without_torch_is_one_line(run, tmp_path, monkeypatch):
    from conftest import hide_module

    hide_module(monkeypatch, "torch")
    result = runner.invoke(app, ["export", str(run.run_dir), "-o", str(tmp_path / "t.safetensors"), "--layout", "torch"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --layout torch needs the 'torch' package: pip install 'nettrain[bench]'"

"""``nettrain bench``: the library call and the command, for 2 steps (no timing is asserted)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nettrain import kernels
from nettrain.bench import LayerTimer, benchmark, random_batch
from nettrain.builder import build_model
from nettrain.cli import app
from nettrain.config import load_config

SMALL_CNN = """
name: tiny_cnn
model:
  input_shape: [10, 10, 2]
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, padding: same, use_bias: false}
    - {type: batchnorm}
    - {type: relu}
    - type: residual
      shortcut: projection
      strides: 2
      body:
        - {type: conv2d, filters: 6, kernel_size: 3, strides: 2, padding: same}
        - {type: relu}
    - {type: maxpool2d, pool_size: 2}
    - {type: flatten}
    - {type: dropout, rate: 0.5}
    - {type: dense, units: 3}
train:
  optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
  clip_grad_norm: 1.0
"""

SMALL_RNN = """
model:
  input_shape: [5, 4]
  layers:
    - {type: gru, units: 6, return_sequences: true}
    - {type: dense, units: 3}
train:
  loss: mse
"""


@pytest.fixture
def cnn_config(tmp_path) -> Path:
    path = tmp_path / "tiny_cnn.yaml"
    path.write_text(SMALL_CNN)
    return path


def test_benchmark_reports_throughput_memory_and_every_layer(cnn_config):
    config = load_config(cnn_config)
    result = benchmark(config, batch_size=4, steps=2, warmup=1)
    for key in ("train_img_per_s", "forward_img_per_s", "train_step_ms", "forward_ms", "peak_rss_mib",
                "peak_traced_mib", "estimated_mib"):
        assert result[key] > 0, key
    assert result["kernels"] == kernels.kernel_path()
    assert result["page_faults_per_step"] >= 0  # None only where getrusage is missing
    assert result["batch_size"] == 4 and result["steps"] == 2
    model = build_model(config)
    assert result["params"] == model.param_count()
    names = [row["name"] for row in result["layers"]]
    assert sorted(names) == sorted(path for path, _ in model.named_layers())
    assert "residual_1.conv2d_2" in names and "residual_1.shortcut_conv" in names
    totals = [row["total_ms"] for row in result["layers"]]
    assert totals == sorted(totals, reverse=True)
    assert sum(row["share"] for row in result["layers"]) == pytest.approx(1.0)
    for row in result["layers"]:
        assert row["forward_ms"] >= 0 and row["backward_ms"] >= 0
        assert row["total_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"])


def test_benchmark_trains_the_model_and_leaves_no_timers_behind(cnn_config):
    config = load_config(cnn_config)
    model = build_model(config)
    timer = LayerTimer(model)
    with timer.installed():
        assert all("forward" in vars(layer) for _, layer in model.named_layers())
    assert all("forward" not in vars(layer) and "backward" not in vars(layer) for _, layer in model.named_layers())


def test_benchmark_handles_sequences_and_other_losses(tmp_path):
    path = tmp_path / "rnn.yaml"
    path.write_text(SMALL_RNN)
    config = load_config(path)
    result = benchmark(config, batch_size=3, steps=2, warmup=0)
    assert result["train_img_per_s"] > 0
    assert {row["type"] for row in result["layers"]} == {"gru", "dense"}
    model = build_model(config)
    x, y = random_batch(model, "mse", 3, np.random.default_rng(0))
    assert x.shape == (3, 5, 4) and x.dtype == np.float32 and y.shape == (3, 5, 3)


@pytest.mark.parametrize("use_fast", [False] + ([True] if kernels.compiled_available() else []))
def test_kernel_path_is_chosen_and_restored(cnn_config, use_fast):
    before = kernels.compiled_enabled()
    result = benchmark(load_config(cnn_config), batch_size=2, steps=2, warmup=0, use_fast=use_fast)
    assert result["kernels"] == ("numba" if use_fast else "numpy")
    assert kernels.compiled_enabled() == before


def test_bench_command_json(cnn_config):
    result = CliRunner().invoke(app, ["bench", str(cnn_config), "--batch-size", "4", "--steps", "2",
                                      "--warmup", "0", "--format", "json", "--no-fast"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kernels"] == "numpy" and report["config"] == "tiny_cnn"
    assert {"train_img_per_s", "forward_img_per_s", "peak_rss_mib", "layers", "kernels", "threads"} <= set(report)
    assert report["peak_traced_mib"] is None  # no warm-up steps to trace


def test_bench_command_table(cnn_config):
    result = CliRunner().invoke(app, ["bench", str(cnn_config), "--batch-size", "2", "--steps", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "img/s" in result.output and "peak memory" in result.output
    assert "residual_1" in result.output and f"kernels: {kernels.kernel_path()}" in result.output


def test_bench_command_errors_are_one_line(cnn_config, tmp_path):
    runner = CliRunner()
    bad_format = runner.invoke(app, ["bench", str(cnn_config), "--format", "xml"])
    assert bad_format.exit_code == 2 and "--format" in bad_format.output
    missing = runner.invoke(app, ["bench", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
    assert "Traceback" not in bad_format.output + missing.output


def test_bench_threads_option_sets_the_worker_count(cnn_config, monkeypatch):
    monkeypatch.setenv("NETTRAIN_THREADS", "1")  # restored after the test, whatever the command sets
    result = CliRunner().invoke(app, ["bench", str(cnn_config), "--batch-size", "4", "--steps", "2",
                                      "--warmup", "0", "--format", "json", "--threads", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["threads"] == 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow in the worker threads' GEMMs, by design here
def test_bench_runs_the_training_step_and_its_guard(cnn_config, tmp_path):
    diverging = tmp_path / "diverging.yaml"
    diverging.write_text(cnn_config.read_text().replace("lr: 0.01", "lr: 1.0e+30").replace("clip_grad_norm: 1.0\n", ""))
    result = CliRunner().invoke(app, ["bench", str(diverging), "--batch-size", "4", "--steps", "3", "--warmup", "0"])
    assert result.exit_code == 2 and result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "went non-finite on random inputs" in result.output and "train.optimizer.lr" in result.output


def test_benchmark_reports_gflops_per_layer_and_the_share_of_the_sgemm_peak(cnn_config):
    config = load_config(cnn_config)
    result = benchmark(config, batch_size=4, steps=2, warmup=0)
    model = build_model(config)
    layers = dict(model.named_layers())
    rows = {row["name"]: row for row in result["layers"]}
    first = model.first_leaf()
    for name, layer in layers.items():
        row = rows[name]
        if layer.children() or layer.macs() == 0:
            assert row["forward_gflops"] is None and row["backward_gflops"] is None, name
            continue
        flops = 2 * layer.macs() * 4
        assert row["forward_gflops"] == pytest.approx(flops / row["forward_ms"] / 1e6)
        backward = flops if layer is first else 2 * flops  # the first layer has no input gradient
        assert row["backward_gflops"] == pytest.approx(backward / row["backward_ms"] / 1e6)
    assert rows["conv2d_1"]["forward_gflops"] is not None and rows["dense_1"]["backward_gflops"] is not None
    assert result["forward_gflops"] == pytest.approx(2 * model.macs() * 4 / result["forward_ms"] / 1e6)
    assert result["sgemm_peak_gflops"] > 0
    assert result["peak_fraction"] == pytest.approx(result["train_gflops"] / result["sgemm_peak_gflops"])
    assert 0 < result["train_gflops"]


def test_bench_table_shows_gflops_and_the_peak(cnn_config):
    result = CliRunner().invoke(app, ["bench", str(cnn_config), "--batch-size", "2", "--steps", "1", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "GFLOP/s" in result.output and "sgemm peak" in result.output


SHIPPED = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_summarize_memory_estimate_is_within_1_5x_of_the_measured_peak(path, monkeypatch):
    """The NumPy arrays' peak (tracemalloc, from building the model through two training steps) against
    summarize's total_training. Traced allocations rather than the process's RSS: they are exact, count
    only what the model allocates (not the interpreter's and libraries' baseline, nor earlier tests in
    this process, which a lifetime peak RSS would include), and do not depend on how the allocator
    returns pages. The NumPy kernels, whose allocations are all traced (numba's are not), and the
    kernels' per-thread scratch emptied first, as in a fresh process (it only grows)."""
    monkeypatch.setattr(kernels.pool, "_SCRATCH", {})
    result = benchmark(load_config(path), batch_size=16, steps=1, warmup=2, use_fast=False, layer_steps=1)
    measured, estimated = result["peak_traced_mib"], result["estimated_mib"]
    assert measured / 1.5 <= estimated <= 1.5 * measured, (measured, estimated)


def test_conv_floor_script_times_every_resnet20_convolution_shape():
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "conv_floor.py"
    done = subprocess.run([sys.executable, str(script), "--batch-size", "2", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if re.match(r"\| \d+->\d+", line)]
    assert [row[0].strip() for row in rows] == ["3->16, 32x32, /1", "16->16, 32x32, /1", "16->32, 32x32, /2",
                                                 "32->32, 16x16, /1", "32->64, 16x16, /2", "64->64, 8x8, /1"]
    assert sum(int(row[1]) for row in rows) == 19  # ResNet-20's convolutions
    for row in rows:
        whole, gemms = float(row[2]), float(row[3])
        assert whole > 0 and gemms > 0
    assert "| all 19 |" in done.stdout

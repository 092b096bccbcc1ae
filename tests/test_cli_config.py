"""`nettrain check`, `summarize` and `layers`: exit codes 0/2, messages on stderr, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nettrain.cli import app
from nettrain.layers import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

GOOD = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, activation: relu}
    - {type: flatten}
    - {type: dense, units: 10}
train: {batch_size: 32, optimizer: {type: sgd, momentum: 0.9}}
"""

BAD = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: conv2d, filters: 4, kernal_size: 3}
    - {type: flaten}
"""

SHAPE_BAD = """\
model:
  input_shape: [4, 4, 1]
  layers:
    - {type: conv2d, filters: 4, kernel_size: 5}
"""


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def files(tmp_path):
    out = {}
    for name, text in (("good", GOOD), ("bad", BAD), ("shape", SHAPE_BAD)):
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_text(text)
    return out


def assert_no_traceback(result):
    assert "Traceback" not in result.output and "Traceback" not in (result.stderr or "")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_every_shipped_config(runner):
    result = runner.invoke(app, ["check", *map(str, CONFIGS)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(CONFIGS)
    assert all(line.startswith("ok: ") for line in lines)
    resnet = next(line for line in lines if "cifar_resnet" in line)
    assert "14 layers, 271,098 params (269,722 trainable)" in resnet


def test_check_reports_every_problem_and_exits_2(runner, files):
    result = runner.invoke(app, ["check", str(files["bad"]), str(files["good"])])
    assert result.exit_code == 2
    assert_no_traceback(result)
    assert f"ok: {files['good']}: 3 layers" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"error: {files['bad']}:4: model.layers[0].kernal_size: unknown key 'kernal_size'; did you mean 'kernel_size'?",
        f"error: {files['bad']}:5: model.layers[1].type: unknown layer type 'flaten'; did you mean 'flatten'?",
    ]


def test_check_shape_error(runner, files):
    result = runner.invoke(app, ["check", str(files["shape"])])
    assert result.exit_code == 2
    assert_no_traceback(result)
    assert "model.layers[0]: layer 1 'conv2d_1' (conv2d) on input 4x4x1" in result.stderr


def test_check_missing_file_and_bad_set(runner, files, tmp_path):
    result = runner.invoke(app, ["check", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = runner.invoke(app, ["check", str(files["good"]), "--set", "train.optimzer.lr=1"])
    assert result.exit_code == 2
    assert "did you mean 'optimizer'?" in result.stderr
    assert_no_traceback(result)


def test_check_with_set(runner, files):
    result = runner.invoke(app, ["check", str(files["good"]), "--set", "model.layers[2].units=5"])
    assert result.exit_code == 0
    assert "3 layers, 765 params" in result.stdout  # conv 40 + dense 144*5 + 5


def test_summarize_json(runner, files):
    result = runner.invoke(app, ["summarize", str(files["good"]), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [layer["name"] for layer in data["layers"]] == ["conv2d_1", "flatten_1", "dense_1"]
    assert data["layers"][0]["output_shape"] == "6x6x4"
    assert data["total_params"] == 40 + 144 * 10 + 10
    assert data["trainable_params"] == data["total_params"] and data["non_trainable_params"] == 0
    assert data["total_macs"] == 6 * 6 * 4 * 9 + 144 * 10
    assert data["batch_size"] == 32 and data["optimizer_slots"] == 1


def test_summarize_csv_and_stats(runner, files):
    result = runner.invoke(app, ["summarize", str(files["good"]), "--format", "csv", "--stats", "--batch", "4"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["index", "name", "type", "output_shape", "params", "trainable_params", "macs", "mean", "std"]
    assert rows[1][:5] == ["1", "conv2d_1", "conv2d", "6x6x4", "40"]
    assert float(rows[1][8]) > 0


def test_summarize_table(runner):
    result = runner.invoke(app, ["summarize", str(ROOT / "configs" / "cifar_resnet.yaml")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("total params: 271,098", "trainable params: 269,722", "non-trainable params: 1,376",
                 "MACs per sample:", "memory (MiB, float32, batch 128)", "4.1", "32x32x16", "global_avgpool2d"):
        assert text in out
    assert "…" not in out  # numbers are never cut


def test_summarize_errors_exit_2(runner, files):
    for args in (["summarize", str(files["bad"])], ["summarize", str(files["shape"])],
                 ["summarize", str(files["good"]), "--format", "xml"],
                 ["summarize", str(files["good"]), "--set", "model.layers[0].filters=zero"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error: ")
        assert_no_traceback(result)


def test_layers_lists_every_type_with_fields(runner):
    result = runner.invoke(app, ["layers", "--format", "json"])
    assert result.exit_code == 0
    data = {item["type"]: item for item in json.loads(result.stdout)}
    assert set(data) == set(REGISTRY)
    conv = {f["name"]: f for f in data["conv2d"]["fields"]}
    assert conv["filters"]["default"] == "required"
    assert conv["padding"]["default"] == "valid"
    assert "'same'" in conv["padding"]["type"]
    assert conv["use_bias"]["default"] == "true"


def test_layers_markdown_and_table(runner):
    markdown = runner.invoke(app, ["layers", "--format", "markdown"])
    assert markdown.exit_code == 0
    for name in REGISTRY:
        assert f"### `{name}`" in markdown.stdout
    assert "| `kernel_size` | int > 0 \\| [int > 0, int > 0] | required |" in markdown.stdout
    table = runner.invoke(app, ["layers"])
    assert table.exit_code == 0 and "residual" in table.stdout and "shortcut" in table.stdout
    assert runner.invoke(app, ["layers", "--format", "yaml"]).exit_code == 2


def test_installed_command_prints_no_traceback(files):
    """The real entry point, in a subprocess: stderr holds the problems, exit code 2."""
    code = "import sys; from nettrain.cli import main; sys.argv = ['nettrain', 'check', sys.argv[1]]; main()"
    result = subprocess.run([sys.executable, "-c", code, str(files["bad"])], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "did you mean 'kernel_size'?" in result.stderr


def test_the_config_reference_lists_the_current_layers(runner):
    markdown = runner.invoke(app, ["layers", "--format", "markdown"]).stdout
    reference = (ROOT / "docs" / "config.md").read_text()
    assert markdown.strip() in reference, (
        "docs/config.md is out of date: replace its layer section with `nettrain layers --format markdown`")

"""Model summaries: rows, nested indices, totals, memory estimate, activation statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nettrain import build_model, load_config
from nettrain.config import config_from_dict
from nettrain.summary import (
    MEMORY_DEFINITION,
    activation_stats,
    optimizer_slots,
    summarize,
    summarize_config,
    summary_csv_rows,
)

ROOT = Path(__file__).resolve().parent.parent

RESIDUAL_NET = {
    "model": {
        "input_shape": [6, 6, 2],
        "layers": [
            {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False},
            {"type": "batchnorm"},
            {"type": "residual", "shortcut": "projection",
             "body": [{"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 2, "padding": "same"}, {"type": "relu"}]},
            {"type": "global_avgpool2d"},
            {"type": "dense", "units": 3},
        ],
    },
    "train": {"batch_size": 16, "optimizer": {"type": "adam"}},
}


@pytest.fixture(scope="module")
def residual_summary():
    config = config_from_dict(RESIDUAL_NET)
    return summarize_config(config, build_model(config))


def test_rows_nest_residual_children_under_their_parent(residual_summary):
    rows = residual_summary.rows
    assert [r.index for r in rows] == ["1", "2", "3", "3.1", "3.2", "3.3", "3.4", "4", "5"]
    assert [r.depth for r in rows] == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert [r.name for r in rows][3:7] == ["conv2d_2", "relu_1", "shortcut_conv", "shortcut_bn"]
    assert rows[2].output_shape == "3x3x8"
    assert rows[3].path == "residual_1.conv2d_2"


def test_parent_rows_include_their_children_and_totals_count_once(residual_summary):
    rows = {r.index: r for r in residual_summary.rows}
    assert rows["3"].params == rows["3.1"].params + rows["3.3"].params + rows["3.4"].params
    assert rows["3"].macs == sum(rows[i].macs for i in ("3.1", "3.2", "3.3", "3.4"))
    top = [r for r in residual_summary.rows if r.depth == 0]
    assert residual_summary.total_params == sum(r.params for r in top)
    assert residual_summary.total_macs == sum(r.macs for r in top)


def test_batchnorm_statistics_are_non_trainable(residual_summary):
    s = residual_summary
    bn_channels = 4 + 8  # the batchnorm layer and the projection shortcut's batchnorm
    assert s.non_trainable_params == 2 * bn_channels
    assert s.total_params == s.trainable_params + s.non_trainable_params
    bn_row = s.rows[1]
    assert (bn_row.params, bn_row.trainable_params) == (16, 8)


def test_counts_are_exact_for_a_small_conv_net(residual_summary):
    rows = {r.index: r for r in residual_summary.rows}
    assert rows["1"].params == 4 * 2 * 3 * 3
    assert rows["1"].macs == 6 * 6 * 4 * 2 * 9
    assert rows["3.1"].params == 8 * 4 * 9 + 8
    assert rows["3.1"].macs == 3 * 3 * 8 * 4 * 9
    assert rows["5"].params == 8 * 3 + 3 and rows["5"].macs == 8 * 3


def test_memory_follows_its_stated_definition(residual_summary):
    s = residual_summary
    m = s.memory_mib
    mib = 2**20
    model = build_model(config_from_dict(RESIDUAL_NET))
    outputs = sum(math.prod(layer.out_shape) for _, layer in model.named_layers())
    assert s.optimizer_slots == 2  # adam: m and v
    assert m["parameters"] == pytest.approx(s.total_params * 4 / mib, abs=1e-4)
    assert m["gradients"] == pytest.approx(s.trainable_params * 4 / mib, abs=1e-4)
    assert m["optimizer_state"] == pytest.approx(2 * s.trainable_params * 4 / mib, abs=1e-4)
    assert m["inputs"] == pytest.approx(16 * 72 * 4 / mib, abs=1e-4)
    assert m["activations_forward"] == pytest.approx(outputs * 16 * 4 / mib, abs=1e-4)
    # kept: conv and batchnorm outputs (read by the next batchnorm, conv), the ReLU's and the block's
    # (read by their own backward), the projection conv's (read by its batchnorm), the pooled vector
    # (read by dense); not: the body conv's (its ReLU reads only its output), the branch ends, the logits
    assert m["outputs_kept"] == pytest.approx(16 * 4 * (144 + 144 + 72 + 72 + 72 + 8) / mib, abs=1e-4)
    # the 1x1 stride-2 projection keeps its im2col columns (4 rows x 9 pixels), no other layer keeps more
    assert m["cached_for_backward"] == pytest.approx(16 * 4 * 36 / mib, abs=1e-4)
    assert m["backward_gradients"] == pytest.approx(16 * 4 * (144 + 144) / mib, abs=1e-4)  # the batchnorm's
    training = m["outputs_kept"] + m["cached_for_backward"] + m["backward_gradients"]
    assert m["activations_training"] == pytest.approx(training, abs=1e-3)
    total = (m["parameters"] + m["gradients"] + m["optimizer_state"] + m["inputs"] + m["activations_training"]
             + m["kernel_scratch"])
    assert m["total_training"] == pytest.approx(total, abs=1e-3)


def test_layers_count_what_they_keep_for_backward():
    def built(layers, input_shape):
        return build_model(config_from_dict({"model": {"input_shape": input_shape, "layers": layers}}))

    n = 10
    model = built([{"type": "dropout", "rate": 0.5}, {"type": "maxpool2d", "pool_size": 2},
                   {"type": "conv2d", "filters": 3, "kernel_size": 1, "activation": "leaky_relu"},
                   {"type": "flatten"}], [8, 8, 2])
    drop, pool, conv, flat = model.layers
    assert drop.cache_bytes(n) == n * 128 * 4  # the float32 mask
    assert pool.cache_bytes(n) == n * 32 * 1  # int8 window offsets of the argmax
    assert conv.cache_bytes(n) == n * 2 * 16 * 4 + n * 48 * 4  # 1x1 columns kept, and the pre-activation
    assert flat.output_bytes(n) == 0  # a view
    t, f, u = 7, 5, 6
    lstm = built([{"type": "lstm", "units": u, "return_sequences": True}], [t, f]).layers[0]
    gru = built([{"type": "gru", "units": u}], [t, f]).layers[0]
    lstm.input_grad = True
    # xh (xs, a column of ones for the bias, room for h_{t-1}), gates, h, dh_out, dx, then c, tanh_c, da,
    # dh_next, dc
    assert lstm.cache_bytes(n) == n * 4 * (t * (f + 1 + u) + t * 4 * u + (t + 1) * u + t * u + t * f
                                           + (t + 1) * u + t * u + t * 4 * u + 2 * u)
    gru.input_grad = False  # a first layer: no dx
    assert gru.cache_bytes(n) == n * 4 * (t * (f + 1) + t * 3 * u + (t + 1) * u + u + t * u + 2 * t * 3 * u + 2 * u)
    # a weight gradient split over the worker threads adds one partial sum per thread while the backward pass runs
    dense = built([{"type": "dense", "units": 256}], [512]).layers[0]
    grads = 64 * (512 + 256) * 4
    assert dense.backward_bytes(64, workers=1) == grads
    assert dense.backward_bytes(64, workers=4) == grads + 4 * 512 * 256 * 4
    # what a training forward and backward of the LSTM leave allocated, besides the output, is what it counts
    x = np.random.default_rng(0).standard_normal((n, t, f)).astype(np.float32)
    y = lstm.forward(x, training=True)
    lstm.backward(np.ones_like(y))
    kept = sum(buf.nbytes for buf in lstm._work.values())
    assert kept == lstm.cache_bytes(n)


@pytest.mark.parametrize("spec, slots", [
    ({"type": "sgd"}, 0),
    ({"type": "sgd", "momentum": 0.9}, 1),
    ({"type": "adam"}, 2),
    ({"type": "adamw"}, 2),
    ({"type": "rmsprop"}, 1),
    ({"type": "rmsprop", "momentum": 0.9}, 2),
    ({"type": "rmsprop", "momentum": 0.9, "centered": True}, 3),
    (None, 0),
])
def test_optimizer_slots(spec, slots):
    assert optimizer_slots(spec) == slots


def test_json_has_the_promised_keys(residual_summary):
    data = json.loads(json.dumps(residual_summary.to_dict()))
    for key in ("layers", "total_params", "trainable_params", "non_trainable_params", "total_macs", "memory_mib",
                "memory_definition"):
        assert key in data
    for layer in data["layers"]:
        assert {"name", "type", "output_shape", "params", "macs"} <= set(layer)
    assert "mean" not in data["layers"][0]
    assert data["memory_definition"] == MEMORY_DEFINITION


def test_json_index_is_the_position_among_siblings(residual_summary):
    layers = json.loads(json.dumps(residual_summary.to_dict()))["layers"]
    assert all(type(layer["index"]) is int for layer in layers)
    assert [(layer["depth"], layer["index"]) for layer in layers] == [
        (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (1, 4), (0, 4), (0, 5)]
    labels, at_depth = [], []
    for layer in layers:  # depth and index give back the table's 3.1-style labels
        at_depth[layer["depth"]:] = [str(layer["index"])]
        labels.append(".".join(at_depth))
    assert labels == [row.index for row in residual_summary.rows]


def test_csv_rows(residual_summary):
    rows = summary_csv_rows(residual_summary)
    assert rows[0][:5] == ["index", "name", "type", "output_shape", "params"]
    assert len(rows) == len(residual_summary.rows) + 1
    assert rows[4][0] == "3.1"


def test_stats_match_a_forward_pass_by_hand():
    config = config_from_dict(RESIDUAL_NET)
    model = build_model(config)
    summary = summarize(model, batch_size=16, stats=True, stats_batch=5, seed=3)
    x = np.random.default_rng(3).standard_normal((5, *model.input_shape)).astype(np.float32)
    y1 = model.layers[0].forward(x, training=False)
    row = summary.rows[0]
    assert row.mean == pytest.approx(float(y1.astype(np.float64).mean()), rel=1e-5, abs=1e-7)
    assert row.std == pytest.approx(float(y1.astype(np.float64).std()), rel=1e-5)
    assert all(r.mean is not None and r.std is not None for r in summary.rows)  # nested rows too
    assert summary.to_dict()["stats_batch"] == 5


def test_stats_show_an_explosion_in_words_in_json():
    model = build_model(config_from_dict({"model": {"input_shape": [4], "layers": [
        {"type": "dense", "units": 4, "kernel_initializer": {"name": "normal", "std": 1e30}},
        {"type": "dense", "units": 4, "kernel_initializer": {"name": "normal", "std": 1e30}}]}}))
    summary = summarize(model, stats=True)
    assert not math.isfinite(summary.rows[1].std)
    assert isinstance(summary.to_dict()["layers"][1]["std"], str)
    json.dumps(summary.to_dict(), allow_nan=False)


def test_stats_leave_no_hooks_behind():
    model = build_model(config_from_dict(RESIDUAL_NET))
    stats = activation_stats(model, batch=2)
    assert set(stats) == {path for path, _ in model.named_layers()}
    assert model.net.forward_hook is None
    assert all(getattr(layer, "forward_hook", None) is None for _, layer in model.named_layers())


def test_shipped_resnet_summary_totals():
    summary = summarize_config(load_config(ROOT / "configs" / "cifar_resnet.yaml"))
    assert summary.trainable_params == 269_722
    assert summary.non_trainable_params == 1_376
    assert summary.batch_size == 128
    assert summary.optimizer_slots == 1  # sgd with momentum


def test_depth_collapses_residual_bodies(residual_summary):
    top = residual_summary.up_to_depth(0)
    assert [r.index for r in top.rows] == ["1", "2", "3", "4", "5"]
    assert top.total_params == residual_summary.total_params and top.rows[2].params == residual_summary.rows[2].params
    assert residual_summary.up_to_depth(None) is residual_summary
    assert len(residual_summary.up_to_depth(1).rows) == len(residual_summary.rows)
    from typer.testing import CliRunner

    from nettrain.cli import app

    result = CliRunner().invoke(app, ["summarize", str(ROOT / "configs" / "cifar_resnet.yaml"), "--depth", "0",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    assert layers and all(layer["depth"] == 0 for layer in layers)
    full = json.loads(CliRunner().invoke(app, ["summarize", str(ROOT / "configs" / "cifar_resnet.yaml"),
                                               "--format", "json"]).stdout)["layers"]
    assert len(full) > len(layers)

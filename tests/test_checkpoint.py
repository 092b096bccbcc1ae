"""Checkpoint files: round trip, atomic writes, refusing corrupt or foreign files and other architectures."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from nettrain import checkpoint as ckpt_module
from nettrain.builder import build_model
from nettrain.checkpoint import (Checkpoint, architecture_signature, check_architecture, config_hash,
                                 load_checkpoint, model_rng_states, restore_model, save_checkpoint)
from nettrain.errors import CheckpointError
from tinyrun import tiny_config


@pytest.fixture
def config(tmp_path):
    return tiny_config(tmp_path)


def make_checkpoint(config, model=None) -> Checkpoint:
    model = model or build_model(config, seed=3)
    return Checkpoint(
        params=model.parameters(), buffers=model.buffers(),
        optimizer={"step": np.array(7), "m/out.kernel": np.full((16, 4), 0.5, np.float32)},
        schedule={"lr": np.array(0.25)},
        config_text=config.to_yaml(), config_path="/somewhere/tiny.yaml",
        epoch=2, batch=5, global_step=19, rng_states=model_rng_states(model),
        classes=["a", "b", "c", "d"], mean=np.array([0.5], np.float32), std=np.array([0.25], np.float32),
        trainer_state={"state": {"best": 0.75, "best_epoch": 2}, "partial": {"loss_sum": 1.0 / 3.0}},
        architecture=architecture_signature(model),
    )


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and message
    return message


def test_round_trip_keeps_every_entry(tmp_path, config):
    model = build_model(config, seed=3)
    model.buffers()["bn.running_mean"][...] = np.arange(4, dtype=np.float32)
    saved = make_checkpoint(config, model)
    path = save_checkpoint(tmp_path / "c.npz", saved)
    loaded = load_checkpoint(path)
    for name, a in saved.params.items():
        assert np.array_equal(loaded.params[name], a) and loaded.params[name].dtype == np.float32
    assert np.array_equal(loaded.buffers["bn.running_mean"], np.arange(4, dtype=np.float32))
    assert loaded.optimizer.keys() == saved.optimizer.keys()
    assert np.array_equal(loaded.optimizer["m/out.kernel"], saved.optimizer["m/out.kernel"])
    assert float(loaded.schedule["lr"]) == 0.25
    assert (loaded.epoch, loaded.batch, loaded.global_step) == (2, 5, 19)
    assert loaded.config_text == config.to_yaml()
    assert loaded.config_sha256 == config_hash(config.to_yaml())
    assert loaded.classes == ["a", "b", "c", "d"]
    assert loaded.trainer_state["partial"]["loss_sum"] == 1.0 / 3.0  # floats survive JSON exactly
    assert loaded.rng_states == saved.rng_states
    assert np.array_equal(loaded.mean, [0.5]) and np.array_equal(loaded.std, [0.25])
    # the archive holds only plain arrays under the documented prefixes
    with zipfile.ZipFile(path) as z:
        names = {n[:-4] for n in z.namelist()}
    assert {"meta", "config", "data/mean", "data/std", "param/conv.kernel", "buffer/bn.running_var",
            "optim/step", "sched/lr"} <= names


def test_restore_model_loads_weights_and_generator_state(tmp_path, config):
    trained = build_model(config, seed=3)
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(config, trained))
    fresh = build_model(config, seed=99)
    assert not np.array_equal(fresh.parameters()["conv.kernel"], trained.parameters()["conv.kernel"])
    restore_model(load_checkpoint(path), fresh)
    for name, a in trained.parameters().items():
        assert np.array_equal(fresh.parameters()[name], a)
    # the Dropout generator continues where the saved one would have
    expected = trained.random_generators()["drop"].random(5)
    assert np.array_equal(fresh.random_generators()["drop"].random(5), expected)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, config, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoints" / "last.npz", make_checkpoint(config))
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.np, "savez", broken_savez)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, make_checkpoint(config))
    assert "No space left on device" in one_line(e)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.npz"]


def test_unwritable_folder_is_a_checkpoint_error(tmp_path, config):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(blocker / "checkpoints" / "last.npz", make_checkpoint(config))
    assert "cannot write checkpoint" in one_line(e)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_are_refused(tmp_path, config, damage):
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(config))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(2000), "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in one_line(e)


def test_pickled_objects_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array([{"x": 1}], dtype=object), config=np.zeros(3, np.uint8))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "pickle" in one_line(e)


def test_npz_without_meta_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "no 'meta' entry" in one_line(e)


def test_missing_array_for_the_signature_is_refused(tmp_path, config):
    ckpt = make_checkpoint(config)
    del ckpt.params["out.kernel"]
    path = save_checkpoint(tmp_path / "c.npz", ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "out.kernel" in one_line(e)


def test_tampered_config_fails_its_hash(tmp_path, config):
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(config))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    text = arrays["config"].tobytes().decode().replace("epochs: 2", "epochs: 9")
    arrays["config"] = np.frombuffer(text.encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "SHA-256" in one_line(e)


def test_unknown_format_version_is_refused(tmp_path, config):
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(config))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "version 99" in one_line(e)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "nope.npz")
    assert "not found" in one_line(e)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_other_architecture_names_the_first_differing_parameter(tmp_path, config):
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(config))
    wider = tiny_config(tmp_path, "wider", overrides=["model.layers[0].filters=6"])
    with pytest.raises(CheckpointError) as e:
        restore_model(load_checkpoint(path), build_model(wider))
    message = one_line(e)
    assert "'conv.kernel' has shape (4, 1, 3, 3) in the checkpoint but (6, 1, 3, 3) in the model" in message


def test_extra_layer_is_named(tmp_path, config):
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(config, build_model(config)))
    layers = config.resolved["model"]["layers"]
    deeper = tiny_config(tmp_path, "deeper", overrides=[
        f"model.layers={json.dumps(layers[:-1] + [{'type': 'dense', 'units': 8, 'name': 'hidden'}, layers[-1]])}"])
    with pytest.raises(CheckpointError) as e:
        check_architecture(load_checkpoint(path), build_model(deeper))
    assert "hidden.kernel" in one_line(e)


def test_missing_dropout_generator_state_is_refused(tmp_path):
    plain = tiny_config(tmp_path, "plain", dropout=False)
    path = save_checkpoint(tmp_path / "c.npz", make_checkpoint(plain))
    with_dropout = tiny_config(tmp_path, "drop", dropout=True)
    with pytest.raises(CheckpointError) as e:
        restore_model(load_checkpoint(path), build_model(with_dropout))
    assert "'drop'" in one_line(e)

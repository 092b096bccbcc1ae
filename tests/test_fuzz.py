"""Fuzzing: whatever bytes or YAML a user hands over, only nettrain's own error types come out.

The config loader gets mutated copies of real configs, random YAML values at random
places of a valid config, random ``--set`` strings and random text; the data readers
and the checkpoint loader get random bytes and mutated copies of valid files.  Any
exception that is not a :class:`~nettrain.errors.NettrainError` fails the test.
"""

from __future__ import annotations

import copy
import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nettrain import data as D
from nettrain.builder import build_model
from nettrain.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nettrain.config import parse_config
from nettrain.errors import CheckpointError, DataError, NettrainError
from tinyrun import tiny_config_dict

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))

BASE_TEXTS = [p.read_text() for p in sorted((ROOT / "configs").glob("*.yaml"))] or []
BASE_TEXTS.append(yaml.safe_dump(tiny_config_dict(Path("out")), sort_keys=False))
BASE_DICT = tiny_config_dict(Path("out"))

# Characters that matter to YAML, plus some that should not be there at all.
YAML_ALPHABET = st.sampled_from(list(":-[]{}#&*!|>'\"%@`,? \n\t\\") + ["0", "9", "e", "x", "\x00", "\u2028", "é"])


def only_our_errors(fn, *args, allowed=NettrainError):
    """Call ``fn``; a NettrainError (or ``allowed``) is a fine answer, anything else fails the test."""
    try:
        return fn(*args)
    except allowed as e:
        text = str(e)
        assert text.strip(), f"{type(e).__name__} without a message"
        return None


# ============================================================================ config loader

def small_model(value, limit: int = 512) -> bool:
    """Whether every integer in the model section is small enough to build the model safely."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value <= limit
    if isinstance(value, dict):
        return all(small_model(v, limit) for v in value.values())
    if isinstance(value, list):
        return all(small_model(v, limit) for v in value)
    return True


def load_and_build(text: str, overrides=()):
    config = only_our_errors(parse_config, text, "fuzz.yaml", tuple(overrides))
    if config is not None and small_model(config.resolved["model"]):
        only_our_errors(build_model, config, 0)
    return config


@st.composite
def mutated_text(draw):
    text = list(draw(st.sampled_from(BASE_TEXTS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate_line", "cut"]))
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "insert":
            text[pos:pos] = draw(st.lists(YAML_ALPHABET, min_size=1, max_size=4))
        elif kind == "delete":
            del text[pos:pos + draw(st.integers(1, 12))]
        elif kind == "replace" and text:
            text[pos] = draw(YAML_ALPHABET)
        elif kind == "duplicate_line":
            lines = "".join(text).splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
            text = list("".join(lines))
        else:
            text = text[:pos]
    return "".join(text)


@FUZZ
@given(text=mutated_text())
def test_fuzz_mutated_configs(text):
    load_and_build(text)


yaml_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats()
                | st.text(max_size=12) | st.sampled_from(["same", "valid", "relu", "conv2d", "dense", "adam", ""]))
yaml_values = st.recursive(yaml_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=10)


def places(value, path=()):
    """Every (container path, key) in a nested dict/list: where a value can be replaced or added."""
    out = []
    if isinstance(value, dict):
        out.append((path, None))  # a new key
        for k, v in value.items():
            out.append((path, k))
            out.extend(places(v, path + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((path, i))
            out.extend(places(v, path + (i,)))
    return out


PLACES = places(BASE_DICT)
KNOWN_KEYS = ["type", "filters", "kernel_size", "strides", "padding", "units", "rate", "input_shape", "layers",
              "epochs", "batch_size", "lr", "optimizer", "name", "repeat", "block", "body", "shortcut", "target_shape"]


@FUZZ
@given(data=st.data())
def test_fuzz_random_values_in_a_valid_config(data):
    config = copy.deepcopy(BASE_DICT)
    for _ in range(data.draw(st.integers(1, 3))):
        path, key = data.draw(st.sampled_from(PLACES))
        parent = config
        try:
            for part in path:
                parent = parent[part]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the spot
        if isinstance(parent, dict):
            if key is None:
                key = data.draw(st.sampled_from(KNOWN_KEYS) | st.text(min_size=1, max_size=8))
            parent[key] = data.draw(yaml_values)
        elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
            parent[key] = data.draw(yaml_values)
    try:
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        assume(False)
    load_and_build(text)


@FUZZ
@given(override=st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}",
                                                   st.sampled_from(["train.epochs", "model.layers[0].filters",
                                                                    "model.layers[9]", "train.optimizer", "data",
                                                                    "model.input_shape[1]", "a.b[0].c", "[0]", ""]),
                                                   st.text(max_size=16)))
def test_fuzz_set_overrides(override):
    load_and_build(BASE_TEXTS[-1], [override])


@FUZZ
@given(text=st.text(YAML_ALPHABET | st.characters(), max_size=200))
def test_fuzz_random_text(text):
    load_and_build(text)


# ============================================================================ data readers

def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def checkpoint_bytes(tmp: Path) -> bytes:
    rng = np.random.default_rng(0)
    ckpt = Checkpoint(params={"conv.kernel": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
                              "conv.bias": np.zeros(2, np.float32)},
                      buffers={"bn.running_mean": np.zeros(2, np.float32)},
                      optimizer={"step": np.array(3), "m/conv.bias": np.ones(2, np.float32)},
                      config_text="model: {}\n", epoch=1, batch=2, global_step=9,
                      rng_states={"drop": {"bit_generator": "PCG64", "state": {"state": 1, "inc": 3}}},
                      classes=["a", "b"], mean=np.zeros(1), std=np.ones(1),
                      architecture=[("conv.kernel", (2, 1, 3, 3)), ("conv.bias", (2,)), ("bn.running_mean", (2,))])
    return save_checkpoint(tmp / "valid.npz", ckpt).read_bytes()


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6)).save(buf, format="PNG")
    return buf.getvalue()


def valid_files(tmp: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    cifar = {b"labels": [1, 2], b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8)}
    return {
        "idx": idx_bytes(images),
        "idx.gz": gzip.compress(idx_bytes(np.array([1, 2, 3], np.uint8))),
        "cifar.pickle2": pickle.dumps(cifar, protocol=2),
        "cifar.pickle5": pickle.dumps(cifar, protocol=5),
        "cifar.bin": (bytes([4]) + bytes(range(256)) * 12) * 2,
        "npz": npz_bytes(x_train=images, y_train=np.array([0, 1, 1]), classes=np.array(["a", "b"])),
        "checkpoint": checkpoint_bytes(tmp),
    }


READERS = {
    "idx": lambda p: D.read_idx(p, kind="images"),
    "idx.gz": lambda p: D.read_idx(p, kind="labels"),
    "cifar.pickle2": D.read_cifar_batch,
    "cifar.pickle5": D.read_cifar_batch,
    "cifar.bin": D.read_cifar_binary_batch,
    "npz": D.read_npz,
    "checkpoint": load_checkpoint,
}


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid(fuzz_dir):
    files = valid_files(fuzz_dir)
    for kind, blob in files.items():  # the unmutated files are read without complaint
        path = fuzz_dir / f"valid-{kind}"
        path.write_bytes(blob)
        READERS[kind](path)
    return files


def mutate(data, blob: bytes) -> bytes:
    out = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        pos = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if not out:
            break
        if kind == "flip":
            out[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            out[pos] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, data.draw(st.integers(0, 255))]))
        elif kind == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[pos:pos + data.draw(st.integers(1, 16))]
        else:
            del out[pos:]
    return bytes(out)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(READERS)))
def test_fuzz_mutated_data_files(fuzz_dir, valid, data, kind):
    path = fuzz_dir / f"mutated-{kind}"
    path.write_bytes(mutate(data, valid[kind]))
    error = CheckpointError if kind == "checkpoint" else DataError
    only_our_errors(READERS[kind], path, allowed=error)
    if kind.startswith("idx"):
        only_our_errors(D.read_idx, path, allowed=DataError)  # any IDX type and shape


@FUZZ
@given(blob=st.binary(max_size=600), gz=st.booleans(), zipped=st.booleans())
def test_fuzz_random_bytes(fuzz_dir, blob, gz, zipped):
    if zipped:  # the zip magic gets the bytes past the first check of the npz readers
        blob = b"PK\x03\x04" + blob
    path = fuzz_dir / "random"
    path.write_bytes(gzip.compress(blob) if gz else blob)
    for kind in ("idx", "idx.gz", "cifar.pickle2", "cifar.bin", "npz"):
        only_our_errors(READERS[kind], path, allowed=DataError)
    only_our_errors(D.read_idx, path, allowed=DataError)  # any IDX type and shape
    only_our_errors(D.read_cifar_meta, path, allowed=DataError)
    only_our_errors(load_checkpoint, path, allowed=CheckpointError)


@FEW
@given(data=st.data())
def test_fuzz_image_folder_with_mutated_images(fuzz_dir, data):
    pytest.importorskip("PIL")
    root = fuzz_dir / "images"
    good = png_bytes()
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / "0.png").write_bytes(good)
    (root / "b" / "1.png").write_bytes(mutate(data, good))
    only_our_errors(D.read_image_folder, root, allowed=DataError)


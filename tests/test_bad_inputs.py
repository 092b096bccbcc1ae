"""The bad-input matrix: every way a user can get a config, a data file, a checkpoint or a run wrong.

Each case runs the real command line and must answer with a non-zero exit code and
exactly one line on stderr, ``error: ...``, that names the file (or the place in it)
and says what would fix it -- never a traceback.  A few cases also check what must
*not* have happened: a hostile pickle ran nothing, a good checkpoint stayed as it was.

Most cases run in-process through typer's CliRunner (fast); ``test_real_process``
runs a sample of them as ``python -m nettrain.cli`` subprocesses.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from nettrain import checkpoint as ckpt_module
from nettrain import runs as runs_module
from nettrain.checkpoint import load_checkpoint
from nettrain.cli import app
from nettrain.training import Trainer
from tinyrun import tiny_config, tiny_config_dict, write_config

ROOT = Path(__file__).resolve().parent.parent

GOOD_MODEL = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, activation: relu}
    - {type: flatten}
    - {type: dense, units: 4}
"""


@dataclass
class Bad:
    """One bad input: the command line, and what its single error line must contain.

    ``place``: text (or texts) naming the file and the spot in it; ``fix``: a regex for the advice.
    ``patch`` runs before the command (monkeypatching a fault in), ``after`` checks
    the aftermath (nothing executed, nothing lost).
    """

    args: list[str]
    place: str | list[str]
    fix: str
    exit_code: int = 2
    patch: Callable | None = None
    after: Callable | None = None
    max_seconds: float | None = None


CASES: dict[str, Callable[[Path], Bad]] = {}


def case(name: str):
    def register(builder):
        assert name not in CASES, name
        CASES[name] = builder
        return builder
    return register


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def check(tmp: Path, text: str, name: str = "bad.yaml", *extra: str) -> Bad:
    path = write(tmp / name, text)
    return Bad(["check", str(path), *extra], [str(path)], "")


def with_layers(*layers: str, input_shape: str = "[8, 8, 1]") -> str:
    lines = "\n".join(f"    - {layer}" for layer in layers)
    return f"model:\n  input_shape: {input_shape}\n  layers:\n{lines}\n"


# ============================================================================ YAML

@case("yaml/syntax_error")
def _(tmp):
    b = check(tmp, "model:\n  input_shape: [8, 8, 1\n  layers: []\n")
    b.place.append(f"{tmp / 'bad.yaml'}:")
    b.fix = r"YAML syntax error: .*expected"
    return b


@case("yaml/empty_file")
def _(tmp):
    b = check(tmp, "# nothing here\n\n")
    b.fix = r"needs at least a 'model:' section"
    return b


@case("yaml/list_at_top_level")
def _(tmp):
    b = check(tmp, "- model\n- data\n")
    b.place.append(f"{tmp / 'bad.yaml'}:1")
    b.fix = r"top level must be a mapping \(model:, data:, train:, output:\)"
    return b


@case("yaml/list_where_mapping_belongs")
def _(tmp):
    b = check(tmp, GOOD_MODEL + "train:\n  - epochs: 3\n")
    b.place.append(f"{tmp / 'bad.yaml'}:7: train")
    b.fix = r"expected a mapping"
    return b


@case("yaml/tabs")
def _(tmp):
    b = check(tmp, "model:\n\tinput_shape: [8, 8, 1]\n")
    b.place.append(f"{tmp / 'bad.yaml'}:2")
    b.fix = r"indent with spaces"
    return b


@case("yaml/duplicate_keys")
def _(tmp):
    b = check(tmp, GOOD_MODEL + "train:\n  epochs: 3\n  epochs: 4\n")
    b.place.append(f"{tmp / 'bad.yaml'}:9: train.epochs")
    b.fix = r"duplicate key 'epochs' \(first given at line 8\)"
    return b


@case("yaml/50_MB_file")
def _(tmp):
    path = tmp / "huge.yaml"
    line = b"# " + b"x" * 97 + b"\n"
    with open(path, "wb") as f:
        f.write(GOOD_MODEL.encode())
        for _ in range(50):  # 50 MB, written in 1 MB pieces
            f.write(line * 10_486)
    assert path.stat().st_size > 50_000_000
    return Bad(["check", str(path)], str(path), r"too large for a config file \(the limit is \d+ MiB\)",
               max_seconds=30.0, after=lambda tmp: path.unlink())


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
model: *i
"""


@case("yaml/alias_bomb")
def _(tmp):
    b = check(tmp, BILLION_LAUGHS)
    b.fix, b.max_seconds = r"alias bomb.*without nested aliases", 30.0
    return b


@case("yaml/not_utf8")
def _(tmp):
    path = write(tmp / "binary.yaml", b"model:\n  input_shape: [8, 8, 1]\n  name: \xff\xfe\x00\n")
    return Bad(["check", str(path)], str(path), r"not UTF-8")


@case("yaml/config_missing")
def _(tmp):
    return Bad(["train", str(tmp / "nope.yaml")], str(tmp / "nope.yaml"), r"no such file")


@case("yaml/config_is_a_folder")
def _(tmp):
    (tmp / "configs").mkdir()
    return Bad(["check", str(tmp / "configs")], str(tmp / "configs"), r"is a directory, not a config file")


# ============================================================================ schema

@case("schema/unknown_layer_type")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernel_size: 3}", "{type: flaten}",
                               "{type: dense, units: 4}"))
    b.place.append(f"{tmp / 'bad.yaml'}:5: model.layers[1]")
    b.fix = r"flaten.*did you mean 'flatten'"
    return b


@case("schema/misspelt_key")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernal_size: 3}", "{type: flatten}"))
    b.place.append(f"{tmp / 'bad.yaml'}:4: model.layers[0]")
    b.fix = r"kernal_size.*did you mean 'kernel_size'"
    return b


@case("schema/misspelt_section")
def _(tmp):
    b = check(tmp, GOOD_MODEL + "trian:\n  epochs: 3\n")
    b.place.append(f"{tmp / 'bad.yaml'}:7: trian")
    b.fix = r"did you mean 'train'"
    return b


@case("schema/negative_filters")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: -4, kernel_size: 3}", "{type: flatten}"))
    b.place.append("model.layers[0].filters")
    b.fix = r"greater than 0|> 0|positive"
    return b


@case("schema/zero_kernel")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernel_size: 0}", "{type: flatten}"))
    b.place.append("model.layers[0].kernel_size")
    b.fix = r"greater than 0|> 0|positive"
    return b


@case("schema/zero_stride")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernel_size: 3, strides: 0}", "{type: flatten}"))
    b.place.append("model.layers[0].strides")
    b.fix = r"greater than 0|> 0|positive"
    return b


@case("schema/negative_units")
def _(tmp):
    b = check(tmp, with_layers("{type: flatten}", "{type: dense, units: -3}"))
    b.place.append("model.layers[1].units")
    b.fix = r"greater than 0|> 0|positive"
    return b


@case("schema/kernel_larger_than_input")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernel_size: 5}", "{type: flatten}",
                               input_shape="[4, 4, 1]"))
    b.place.append("conv2d")
    b.fix = r"kernel|padding|smaller"
    return b


@case("schema/unknown_padding")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernel_size: 3, padding: sme}", "{type: flatten}"))
    b.place.append("model.layers[0].padding")
    b.fix = r"'same'"
    return b


@case("schema/float_where_int_belongs")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4.5, kernel_size: 3}", "{type: flatten}"))
    b.place.append("model.layers[0].filters")
    b.fix = r"int|whole number"
    return b


@case("schema/missing_input_shape")
def _(tmp):
    b = check(tmp, "model:\n  layers:\n    - {type: flatten}\n")
    b.place.append("model")
    b.fix = r"input_shape"
    return b


@case("schema/empty_layer_list")
def _(tmp):
    b = check(tmp, "model:\n  input_shape: [8, 8, 1]\n  layers: []\n")
    b.place.append("model.layers")
    b.fix = r"at least 1|at least one"
    return b


@case("schema/residual_branches_cannot_be_added")
def _(tmp):
    b = check(tmp, with_layers(
        "{type: residual, shortcut: identity, body: [{type: conv2d, filters: 8, kernel_size: 3, padding: same}]}",
        "{type: flatten}"))
    b.place.append("residual")
    b.fix = r"projection"
    return b


@case("schema/recurrent_after_conv_without_reshape")
def _(tmp):
    b = check(tmp, with_layers("{type: conv2d, filters: 4, kernel_size: 3}", "{type: lstm, units: 8}"))
    b.place.append("lstm")
    b.fix = r"reshape"
    return b


@case("schema/unknown_optimizer")
def _(tmp):
    b = check(tmp, GOOD_MODEL + "train:\n  optimizer: {type: adamm, lr: 0.01}\n")
    b.place.append("train.optimizer")
    b.fix = r"adam"
    return b


@case("schema/dropout_rate_above_one")
def _(tmp):
    b = check(tmp, with_layers("{type: flatten}", "{type: dropout, rate: 1.5}", "{type: dense, units: 4}"))
    b.place.append("model.layers[1].rate")
    b.fix = r"less than 1|< 1"
    return b


@case("schema/duplicate_layer_names")
def _(tmp):
    b = check(tmp, with_layers("{type: flatten, name: a}", "{type: dense, units: 4, name: a}"))
    b.place.append("model.layers[1]")
    b.fix = r"'a'.*(unique|rename|already)"
    return b


@case("schema/bool_where_int_belongs")
def _(tmp):
    b = check(tmp, with_layers("{type: flatten}", "{type: dense, units: true}"))
    b.place.append("model.layers[1].units")
    b.fix = r"int"
    return b


@case("schema/infinite_learning_rate")
def _(tmp):
    b = check(tmp, GOOD_MODEL + "train:\n  optimizer: {type: adam, lr: .inf}\n")
    b.place.append("train.optimizer.lr")
    b.fix = r"finite"
    return b


# 10**14 units need petabytes: more than any address space, so the allocation fails at
# once (even where the kernel overcommits) instead of paging the machine to death.
ABSURD = 10**14


@case("schema/layer_too_large_for_memory")
def _(tmp):
    b = check(tmp, with_layers("{type: flatten}", f"{{type: dense, units: {ABSURD}}}"))
    b.place.append("model.layers[1]")
    b.fix = r"memory.*(smaller|fewer|lower)"
    return b


@case("schema/set_on_missing_path")
def _(tmp):
    path = write(tmp / "good.yaml", GOOD_MODEL)
    return Bad(["check", str(path), "--set", "train.optimiser.lr=0.1"], "train.optimiser",
               r"did you mean 'optimizer'")


@case("schema/set_past_the_end_of_a_list")
def _(tmp):
    path = write(tmp / "good.yaml", GOOD_MODEL)
    return Bad(["check", str(path), "--set", "model.layers[7].filters=8"], "model.layers[7]",
               r"has 3 entries; \[7\] is out of range")


@case("schema/set_without_equals")
def _(tmp):
    path = write(tmp / "good.yaml", GOOD_MODEL)
    return Bad(["check", str(path), "--set", "train.epochs"], "train.epochs", r"path=value|key=value|=")


# ============================================================================ data

def data_config(tmp: Path, data: dict, input_shape=(6, 6, 1), classes: int = 10) -> Path:
    config = {
        "name": "bad-data",
        "model": {"input_shape": list(input_shape),
                  "layers": [{"type": "flatten"}, {"type": "dense", "units": classes}]},
        "data": {"validation_split": 0.0, **data},
        "train": {"epochs": 1, "batch_size": 8},
        "output": {"dir": str(tmp / "run"), "plots": False},
    }
    return write_config(tmp / "data.yaml", config)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_dir(tmp: Path, *, n_train: int = 20, n_labels: int | None = None, label_max: int = 9) -> Path:
    folder = tmp / "mnist"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", 5)):
        labels = np.arange(n if n_labels is None or prefix == "t10k" else n_labels) % 10
        labels[-1] = label_max if prefix == "train" else labels[-1]
        write(folder / f"{prefix}-images-idx3-ubyte.gz", gzip.compress(idx_bytes(rng.integers(0, 256, (n, 6, 6)))))
        write(folder / f"{prefix}-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels)))
    return folder


def train_bad_data(tmp: Path, data: dict, place: Path | str | list[str], fix: str, **kwargs) -> Bad:
    path = data_config(tmp, data, **kwargs)
    return Bad(["train", str(path), "--quiet"], place if isinstance(place, list) else str(place), fix)


@case("data/npz_missing")
def _(tmp):
    return train_bad_data(tmp, {"dataset": "npz", "path": str(tmp / "missing.npz")}, "missing.npz",
                          r"not found.*(looked in|check)")


@case("data/dataset_folder_missing")
def _(tmp):
    return train_bad_data(tmp, {"dataset": "mnist", "path": "nowhere/mnist"}, "nowhere/mnist",
                          r"not found \(looked in: ")


@case("data/idx_file_missing")
def _(tmp):
    folder = mnist_dir(tmp)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, folder,
                          r"missing t10k-labels-idx1-ubyte.gz")


@case("data/idx_truncated")
def _(tmp):
    folder = mnist_dir(tmp)
    images = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-50]))
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, images,
                          r"truncated: expected \d+ bytes, found \d+")


@case("data/idx_gzip_stream_cut")
def _(tmp):
    folder = mnist_dir(tmp)
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, labels, r"corrupt or truncated")


@case("data/idx_wrong_magic")
def _(tmp):
    folder = mnist_dir(tmp)
    labels = folder / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.arange(20) % 10, magic=0x00000803)))
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, labels,
                          r"wrong magic 0x00000803 for labels, expected 0x00000801")


@case("data/labels_out_of_range")
def _(tmp):
    folder = mnist_dir(tmp, label_max=12)
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, "train-labels-idx1-ubyte.gz",
                          r"labels out of range: found 0\.\.12, expected 0\.\.9")


@case("data/image_count_differs_from_label_count")
def _(tmp):
    folder = mnist_dir(tmp, n_labels=18)
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, "train-images-idx3-ubyte.gz",
                          r"20 images but 18 labels")


def cifar_folder(tmp: Path) -> Path:
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": list(range(4)), b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@case("data/cifar_python_batch_truncated")
def _(tmp):
    folder = cifar_folder(tmp)
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    return train_bad_data(tmp, {"dataset": "cifar10", "path": str(tmp / "cifar")}, batch,
                          r"not a valid pickle", input_shape=(32, 32, 3))


@case("data/cifar_binary_batch_truncated")
def _(tmp):
    folder = tmp / "cifar" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    record = bytes([3]) + bytes(3072)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(record * 3)
    (folder / "data_batch_2.bin").write_bytes(record * 2 + record[:1000])
    return train_bad_data(tmp, {"dataset": "cifar10", "path": str(tmp / "cifar")}, folder / "data_batch_2.bin",
                          r"not a positive multiple of the 3073-byte record \(truncated", input_shape=(32, 32, 3))


class _MarkerWriter:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a hostile pickle would run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@case("data/cifar_pickle_that_loads_a_class")
def _(tmp):
    folder = cifar_folder(tmp)
    marker = tmp / "pwned"
    evil = pickle.dumps({b"labels": [0], b"data": _MarkerWriter(str(marker))}, protocol=2)
    (folder / "data_batch_1").write_bytes(evil)
    assert b"\nopen\n" in evil  # it names a callable (io.open), as an attack would

    def nothing_ran(tmp):
        assert not marker.exists()

    b = train_bad_data(tmp, {"dataset": "cifar10", "path": str(tmp / "cifar")}, folder / "data_batch_1",
                       r"refusing to load (io|builtins)\.open", input_shape=(32, 32, 3))
    b.after = nothing_ran
    return b


@case("data/npz_with_object_array")
def _(tmp):
    path = tmp / "objects.npz"
    np.savez(path, x_train=np.zeros((4, 6, 6), np.uint8), y_train=np.array([0, 1, "two", None], dtype=object))
    return train_bad_data(tmp, {"dataset": "npz", "path": str(path)}, path,
                          r"holds Python objects, which are refused; save numeric or string arrays")


@case("data/npz_without_training_arrays")
def _(tmp):
    path = tmp / "arrays.npz"
    np.savez(path, images=np.zeros((4, 6, 6), np.uint8), labels=np.arange(4))
    return train_bad_data(tmp, {"dataset": "npz", "path": str(path)}, path, r"needs arrays 'x_train' and 'y_train'")


@case("data/image_folder_with_a_non_image_file")
def _(tmp):
    pytest.importorskip("PIL")
    from PIL import Image

    root = tmp / "images"
    for k, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 6), 40 * k + i, np.uint8)).save(root / cls / f"{i}.png")
    write(root / "dog" / "notes.txt", "not an image\n")
    return train_bad_data(tmp, {"dataset": "image_folder", "path": str(root)}, root / "dog" / "notes.txt",
                          r"not a readable image", classes=2)


@case("data/samples_do_not_fit_input_shape")
def _(tmp):
    folder = mnist_dir(tmp)
    return train_bad_data(tmp, {"dataset": "mnist", "path": str(folder)}, [str(folder), "input_shape"],
                          r"change model.input_shape to match the data", input_shape=(5, 5, 1))


@case("data/synthetic_set_too_large_for_memory")
def _(tmp):
    return train_bad_data(tmp, {"dataset": "synthetic", "synthetic": {"train_size": ABSURD, "num_classes": 4}},
                          "synthetic", r"not enough memory.*smaller data set", classes=4, input_shape=(8, 8, 1))


# ============================================================================ checkpoints

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished two-epoch tiny run: the source of every checkpoint case."""
    tmp = tmp_path_factory.mktemp("trained")
    config = tiny_config(tmp, "run", epochs=2)
    Trainer(config).fit(handle_signals=False)
    return tmp / "run"


def copy_run(trained: Path, tmp: Path) -> Path:
    run = tmp / "copy"
    shutil.copytree(trained, run)
    return run


def tiny_yaml(tmp: Path, run: Path, name: str = "tiny.yaml", **kwargs) -> Path:
    return write_config(tmp / name, tiny_config_dict(run, **kwargs))


def eval_bad_checkpoint(path: Path, fix: str) -> Bad:
    return Bad(["eval", str(path)], str(path), fix)


@case("checkpoint/truncated")
def _(tmp, trained):
    path = tmp / "truncated.npz"
    data = (trained / "checkpoints" / "last.npz").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return eval_bad_checkpoint(path, r"corrupt or truncated checkpoint.*(another|train again|best\.npz)")


@case("checkpoint/corrupt_bytes")
def _(tmp, trained):
    path = tmp / "corrupt.npz"
    data = bytearray((trained / "checkpoints" / "last.npz").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # zeroes inside an entry: its CRC no longer matches
    path.write_bytes(bytes(data))
    return eval_bad_checkpoint(path, r"corrupt.*(another|train again|best\.npz)")


@case("checkpoint/not_an_archive")
def _(tmp, trained):
    path = write(tmp / "notes.npz", b"these are my notes, not a checkpoint\n")
    return eval_bad_checkpoint(path, r"not a checkpoint \(.npz archive expected\); give a checkpoints/last.npz")


@case("checkpoint/needs_pickle")
def _(tmp, trained):
    path = tmp / "pickled.npz"
    arrays = dict(np.load(trained / "checkpoints" / "last.npz", allow_pickle=False))
    arrays["meta"] = np.array([{"format": "nettrain-checkpoint"}], dtype=object)
    np.savez(path, **arrays)
    return eval_bad_checkpoint(path, r"pickled Python objects, which are refused")


@case("checkpoint/missing_key")
def _(tmp, trained):
    path = tmp / "missing.npz"
    arrays = dict(np.load(trained / "checkpoints" / "last.npz", allow_pickle=False))
    del arrays["param/conv.kernel"]
    np.savez(path, **arrays)
    return eval_bad_checkpoint(path, r"no array for 'conv.kernel'.*(another|train again|best\.npz)")


@case("checkpoint/not_a_nettrain_checkpoint")
def _(tmp, trained):
    path = tmp / "weights.npz"
    np.savez(path, w=np.zeros(3, np.float32))
    return eval_bad_checkpoint(path, r"not a nettrain checkpoint")


@case("checkpoint/different_architecture")
def _(tmp, trained):
    run = copy_run(trained, tmp)
    wider = tiny_config_dict(run)
    wider["model"]["layers"][0]["filters"] = 8
    config = write_config(tmp / "wider.yaml", wider)
    return Bad(["train", str(config), "--resume", str(run), "--quiet"], "last.npz",
               r"different architecture: 'conv.kernel' has shape .*; use the config the checkpoint was trained with")


@case("checkpoint/resume_run_folder_missing")
def _(tmp, trained):
    config = tiny_yaml(tmp, tmp / "somewhere")
    return Bad(["train", str(config), "--resume", str(tmp / "runs" / "nope"), "--quiet"], str(tmp / "runs" / "nope"),
               r"no such run folder to resume")


@case("checkpoint/resume_folder_without_checkpoint")
def _(tmp, trained):
    (tmp / "empty-run").mkdir()
    config = tiny_yaml(tmp, tmp / "somewhere")
    return Bad(["train", str(config), "--resume", str(tmp / "empty-run"), "--quiet"], str(tmp / "empty-run"),
               r"no checkpoints/last.npz to resume from.*without --resume")


@case("checkpoint/eval_run_folder_missing")
def _(tmp, trained):
    missing = str(tmp / "runs" / "nope")
    return Bad(["eval", missing], missing, r"no such checkpoint file or run folder")


@case("checkpoint/predict_input_missing")
def _(tmp, trained):
    return Bad(["predict", str(trained), str(tmp / "nope.npz")], str(tmp / "nope.npz"), r"not found|no such file")


@case("checkpoint/eval_unknown_split")
def _(tmp, trained):
    return Bad(["eval", str(trained), "--split", "valid"], "--split", r"test, val or train")


# ============================================================================ training

def file_state(path: Path) -> bytes:
    return path.read_bytes()


@case("training/nan_loss")
def _(tmp, trained):
    run = copy_run(trained, tmp)
    last = run / "checkpoints" / "last.npz"
    before = file_state(last)
    rows_before = (run / "metrics.csv").read_text()
    config = tiny_yaml(tmp, run, epochs=2)

    def last_good_checkpoint_kept(tmp):
        assert file_state(last) == before
        assert load_checkpoint(last).epoch == 2
        assert (run / "metrics.csv").read_text() == rows_before

    return Bad(["train", str(config), "--resume", str(run), "--epochs", "4", "--allow-changes", "--quiet",
                "--set", "train.optimizer.lr=1.0e+30"],
               "last.npz", r"at epoch 3, step \d+ \(global step \d+\): first non-finite (output in layer|"
                           r"gradient of parameter) '[\w.]+'; lower the learning rate.*last good checkpoint is",
               after=last_good_checkpoint_kept)


@case("training/model_too_large_for_memory")
def _(tmp, trained):
    config = tiny_config_dict(tmp / "run")
    config["model"]["layers"].insert(-1, {"type": "dense", "units": ABSURD, "name": "huge"})
    path = write_config(tmp / "huge.yaml", config)
    return Bad(["train", str(path), "--quiet"], str(path), r"does not fit in memory; lower")


@case("training/output_dir_under_a_file")
def _(tmp, trained):
    blocker = write(tmp / "blocker", "a file where a folder should be\n")
    config = tiny_yaml(tmp, blocker / "run")
    return Bad(["train", str(config), "--quiet"], str(blocker / "run"), r"set output.dir .*writable")


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@case("training/full_disk_on_checkpoint")
def _(tmp, trained):
    run = tmp / "run"
    config = tiny_yaml(tmp, run, epochs=3)
    real_savez = np.savez
    calls = []

    def savez_fills_the_disk(f, **arrays):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 writes best.npz and last.npz; the disk fills up in epoch 2
            enospc()
        real_savez(f, **arrays)

    def patch(monkeypatch):
        monkeypatch.setattr(ckpt_module.np, "savez", savez_fills_the_disk)

    def checkpoint_and_metrics_intact(tmp):
        assert load_checkpoint(run / "checkpoints" / "last.npz").epoch == 1
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.npz", "last.npz"]
        assert_well_formed_metrics(run / "metrics.csv")

    return Bad(["train", str(config), "--quiet"], str(run / "checkpoints"), r"No space left on device.*disk has space",
               patch=patch, after=checkpoint_and_metrics_intact)


class _HalfWriter:
    """A file whose writes store half their text and then fail as on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        enospc()

    def __getattr__(self, name):
        return getattr(self.f, name)


@case("training/full_disk_on_metrics")
def _(tmp, trained):
    run = tmp / "run"
    config = tiny_yaml(tmp, run, epochs=3)
    real_open = open
    appends = []

    def open_fills_the_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "a" in mode and Path(path).name == "metrics.csv":
            appends.append(path)
            if len(appends) == 2:  # epoch 2's row
                return _HalfWriter(f)
        return f

    def patch(monkeypatch):
        monkeypatch.setattr(runs_module, "open", open_fills_the_disk, raising=False)

    def metrics_and_checkpoint_intact(tmp):
        rows = assert_well_formed_metrics(run / "metrics.csv")
        assert [r["epoch"] for r in rows] == ["1"]
        assert load_checkpoint(run / "checkpoints" / "last.npz").epoch == 1

    return Bad(["train", str(config), "--quiet"], "metrics.csv", r"No space left on device.*disk has space",
               patch=patch, after=metrics_and_checkpoint_intact)


@case("training/full_disk_on_config_copy")
def _(tmp, trained):
    config = tiny_yaml(tmp, tmp / "run")

    def patch(monkeypatch):
        monkeypatch.setattr(runs_module.os, "fsync", enospc)

    return Bad(["train", str(config), "--quiet"], "config.yaml", r"No space left on device.*disk has space",
               patch=patch)


def assert_well_formed_metrics(path: Path) -> list[dict]:
    import csv

    text = path.read_text()
    assert text.endswith("\n"), "a partial last line"
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    assert header[:3] == ["epoch", "train_loss", "train_accuracy"]
    for row in rows[1:]:
        assert len(row) == len(header), row
        assert row[0].isdigit() and float(row[1]) >= 0
    return [dict(zip(header, row)) for row in rows[1:]]


# ============================================================================ running the matrix

NEEDS_RUN = {name for name in CASES if name.split("/")[0] in ("checkpoint", "training")}
runner = CliRunner()


def build(name: str, tmp: Path, trained: Path | None) -> Bad:
    return CASES[name](tmp, trained) if name in NEEDS_RUN else CASES[name](tmp)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_clear_line(bad: Bad, exit_code: int, stderr: str, output: str) -> str:
    assert "Traceback" not in output and "Traceback" not in stderr
    assert exit_code == bad.exit_code, output
    lines = error_lines(stderr)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: "), line
    for place in [bad.place] if isinstance(bad.place, str) else bad.place:
        assert place in line, f"{place!r} not named in: {line}"
    assert re.search(bad.fix, line), f"no advice matching {bad.fix!r} in: {line}"
    return line


def test_the_matrix_has_at_least_40_cases():
    assert len(CASES) >= 40
    for group in ("yaml", "schema", "data", "checkpoint", "training"):
        assert sum(name.startswith(group + "/") for name in CASES) >= 3, group


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clear_error_line(name, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # a run that wrongly started would land here, not in the checkout
    trained = request.getfixturevalue("trained_run") if name in NEEDS_RUN else None
    bad = build(name, tmp_path, trained)
    if bad.patch is not None:
        bad.patch(monkeypatch)
    start = time.perf_counter()
    result = runner.invoke(app, bad.args)
    seconds = time.perf_counter() - start
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_one_clear_line(bad, result.exit_code, result.stderr, result.output)
    if bad.max_seconds is not None:
        assert seconds < bad.max_seconds, f"took {seconds:.1f} s"
    if bad.after is not None:
        monkeypatch.undo()
        bad.after(tmp_path)


# A sample of the matrix as real processes: what a user's shell sees.
REAL_PROCESS = ["yaml/alias_bomb", "data/cifar_pickle_that_loads_a_class", "checkpoint/truncated",
                "training/output_dir_under_a_file"]


@pytest.mark.parametrize("name", REAL_PROCESS)
def test_real_process(name, tmp_path, request):
    trained = request.getfixturevalue("trained_run") if name in NEEDS_RUN else None
    bad = build(name, tmp_path, trained)
    env = {**os.environ, "NETTRAIN_FAST": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "nettrain.cli", *bad.args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert_one_clear_line(bad, proc.returncode, proc.stderr, proc.stdout)
    if bad.after is not None:
        bad.after(tmp_path)

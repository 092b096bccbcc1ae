"""Readers on small files in the real formats, the data section, and the batch iterator."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from nettrain import data as D
from nettrain.data import locate
from nettrain.data import (
    AugmentSpec,
    Batches,
    DataError,
    DataSpec,
    Split,
    horizontal_flip,
    load_data,
    random_crop,
    read_cifar10,
    read_cifar_batch,
    read_cifar_binary_batch,
    read_idx,
    read_idx_split,
    read_image_folder,
    read_npz,
    write_idx,
)

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- file makers

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX written by hand with struct (independent of nettrain.data.write_idx)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_file(path: Path, array: np.ndarray, gz: bool = True, magic: int | None = None) -> Path:
    payload = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_mnist_dir(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, seed: int = 0,
                   train_labels: np.ndarray | None = None) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                  np.arange(n_train, dtype=np.uint8) % 10 if train_labels is None else train_labels),
        "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test, dtype=np.uint8) % 10),
    }
    suffix = ".gz" if gz else ""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[split]
        write_idx_file(root / f"{prefix}-images-idx3-ubyte{suffix}", x, gz)
        write_idx_file(root / f"{prefix}-labels-idx1-ubyte{suffix}", y, gz)
    return root, arrays


def cifar_batch_dict(n: int, seed: int, str_keys: bool = False, labels=None) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"training batch",
        b"labels": list(rng.integers(0, 10, n).tolist()) if labels is None else labels,
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    return batch


def dump_pickle(path: Path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def make_cifar_py_dir(parent: Path, per_batch: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        dump_pickle(d / f"data_batch_{i}", cifar_batch_dict(per_batch, seed=i), protocol)
    dump_pickle(d / "test_batch", cifar_batch_dict(per_batch, seed=99), protocol)
    names = [n.encode() for n in D.CIFAR10_CLASSES]
    dump_pickle(d / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    return d


def cifar_bin_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    records = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
    return records.tobytes()


def npz_file(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_images_and_labels(tmp_path, gz):
    x = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    xi = read_idx(write_idx_file(tmp_path / "x", x, gz), kind="images")
    yi = read_idx(write_idx_file(tmp_path / "y", y, gz), kind="labels")
    assert xi.shape == (5, 7, 3) and xi.dtype == np.uint8
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)


def test_write_idx_round_trip_and_reproducible(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (4, 6, 6), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", x)
    write_idx(tmp_path / "b.gz", x)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == idx_bytes(x)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), x)


def test_read_idx_wide_types(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=">f4")
    header = bytes([0, 0, 0x0D, 2]) + struct.pack(">2I", 2, 2)
    (tmp_path / "f").write_bytes(header + values.tobytes())
    out = read_idx(tmp_path / "f")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_read_idx_truncated_reports_expected_and_found(tmp_path):
    full = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "t").write_bytes(full[:-10])
    with pytest.raises(DataError, match=rf"t: truncated: expected {len(full)} bytes, found {len(full) - 10}"):
        read_idx(tmp_path / "t")


def test_read_idx_truncated_gzip_stream(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10)))
    (tmp_path / "t.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="t.gz"):
        read_idx(tmp_path / "t.gz")


def test_read_idx_trailing_bytes(tmp_path):
    (tmp_path / "x").write_bytes(idx_bytes(np.zeros((2, 2, 2), np.uint8)) + b"extra")
    with pytest.raises(DataError, match="trailing"):
        read_idx(tmp_path / "x")


def test_read_idx_wrong_magic(tmp_path):
    write_idx_file(tmp_path / "labels", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"wrong magic 0x00000801 for images, expected 0x00000803"):
        read_idx(tmp_path / "labels", kind="images")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothing-here.*not found"):
        read_idx(tmp_path / "nothing-here")


def test_idx_split_label_range_and_counts(tmp_path):
    root, arrays = make_mnist_dir(tmp_path / "ok")
    x, y = read_idx_split(root, "train")
    assert x.shape == (30, 1, 28, 28) and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], arrays["train"][0])

    bad = np.arange(30, dtype=np.uint8) % 10
    bad[7] = 12
    root, _ = make_mnist_dir(tmp_path / "range", train_labels=bad)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: labels out of range: found 0..12"):
        read_idx_split(root, "train")

    root, _ = make_mnist_dir(tmp_path / "count", train_labels=np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="30 images but 29 labels"):
        read_idx_split(root, "train")


def test_idx_split_missing_file_named(tmp_path):
    root, _ = make_mnist_dir(tmp_path / "m")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz"):
        read_idx_split(root, "test")


# --------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_dir(tmp_path, protocol):
    make_cifar_py_dir(tmp_path, per_batch=4, protocol=protocol)
    x_train, y_train, x_test, y_test, classes = read_cifar10(tmp_path)
    assert x_train.shape == (20, 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    assert classes == D.CIFAR10_CLASSES
    first = cifar_batch_dict(4, seed=1)
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each row-major
    c, h, w = 2, 5, 17
    assert x_train[3, c, h, w] == first[b"data"][3, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(y_train[:4], first[b"labels"])
    np.testing.assert_array_equal(y_test, cifar_batch_dict(4, seed=99)[b"labels"])


def py2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the real CIFAR files: protocol 2, byte strings,
    ``numpy.core.multiarray._reconstruct``.  Python 3 cannot write this form, so it is spelled out."""

    def short_str(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    raw = data.tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short_str(b"b") + b"\x87R"
             + b"(K\x01K" + bytes([data.shape[0]]) + b"J" + struct.pack("<i", data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + short_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + short_str(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<i", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + short_str(b"data") + array + short_str(b"labels") + label_list + b"u."


def test_cifar_batch_as_python2_wrote_it(tmp_path):
    data = np.random.default_rng(8).integers(0, 256, (3, 3072), dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(py2_batch_pickle(data, [9, 0, 4]))
    x, y = read_cifar_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(x.reshape(3, -1), data)
    assert y.tolist() == [9, 0, 4]


def test_cifar_batch_with_str_keys_and_array_labels(tmp_path):
    batch = cifar_batch_dict(3, seed=5, str_keys=True)
    batch["labels"] = np.array(batch["labels"], dtype=np.int32)
    x, y = read_cifar_batch(dump_pickle(tmp_path / "b", batch))
    assert x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(y, batch["labels"])


def test_hostile_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = dump_pickle(tmp_path / "data_batch_1", {b"data": Exploit(), b"labels": [0]})
    with pytest.raises(DataError, match=r"data_batch_1: unsafe or invalid pickle: refusing to load (posix|os)\.system"):
        read_cifar_batch(path)
    assert not marker.exists()

    class EvalExploit:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    with pytest.raises(DataError, match="refusing to load builtins.eval"):
        read_cifar_batch(dump_pickle(tmp_path / "b2", EvalExploit()))
    assert not marker.exists()


def test_pickled_object_array_refused(tmp_path):
    batch = cifar_batch_dict(2, seed=0)
    batch[b"data"] = np.array([[object()]] * 2, dtype=object)
    with pytest.raises(DataError, match="object"):
        read_cifar_batch(dump_pickle(tmp_path / "b", batch))


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "4 images but 3 labels"),
    (lambda b: b.update({b"labels": [0, 1, 10, 2]}), r"labels out of range: found 0..10"),
    (lambda b: b.update({b"data": b[b"data"][:, :100]}), r"'data' must be a uint8 array"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), r"'data' must be a uint8 array"),
    (lambda b: b.pop(b"labels"), "no 'labels' entry"),
    (lambda b: b.update({b"labels": ["a", "b", "c", "d"]}), "labels must be a list of integers"),
])
def test_cifar_batch_checks(tmp_path, change, message):
    batch = cifar_batch_dict(4, seed=3)
    change(batch)
    with pytest.raises(DataError, match=message):
        read_cifar_batch(dump_pickle(tmp_path / "data_batch_1", batch))


def test_cifar_batch_not_a_dict(tmp_path):
    with pytest.raises(DataError, match="expected a dict"):
        read_cifar_batch(dump_pickle(tmp_path / "b", [1, 2, 3]))


def test_cifar_binary_batches(tmp_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    expected = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, 3)
        (d / name).write_bytes(cifar_bin_bytes(x, y))
        expected[name] = (x, y)
    (d / "batches.meta.txt").write_text("\n".join(D.CIFAR10_CLASSES[::-1]) + "\n\n")
    x, y = read_cifar_binary_batch(d / "data_batch_2.bin")
    np.testing.assert_array_equal(x, expected["data_batch_2.bin"][0])
    np.testing.assert_array_equal(y, expected["data_batch_2.bin"][1])
    x_train, y_train, x_test, y_test, classes = read_cifar10(tmp_path)
    assert x_train.shape == (15, 3, 32, 32) and len(y_test) == 3
    assert classes == D.CIFAR10_CLASSES[::-1]
    np.testing.assert_array_equal(x_test, expected["test_batch.bin"][0])


def test_cifar_binary_bad_length_and_labels(tmp_path):
    (tmp_path / "b.bin").write_bytes(bytes(3073 * 2 - 1))
    with pytest.raises(DataError, match=r"b.bin: size 6145 bytes is not a positive multiple of the 3073-byte record"):
        read_cifar_binary_batch(tmp_path / "b.bin")
    record = bytearray(3073)
    record[0] = 11
    (tmp_path / "c.bin").write_bytes(bytes(record))
    with pytest.raises(DataError, match="labels out of range"):
        read_cifar_binary_batch(tmp_path / "c.bin")


def test_cifar_dir_without_batches(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 batches found"):
        read_cifar10(tmp_path)


# --------------------------------------------------------------------------- npz

def test_npz_layouts_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)  # N, H, W, C
    path = npz_file(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 2, 0, 1, 2]),
                    x_test=x[:2], y_test=np.array([[1], [2]]), classes=np.array(["a", "b", "c"]))
    spec = DataSpec(dataset="npz", path=str(path), validation_split=0, normalize="none")
    bundle = load_data(spec)
    assert bundle.train.x.shape == (6, 3, 5, 4)
    np.testing.assert_array_equal(bundle.train.x[2, 1], x[2, :, :, 1].astype(np.float32))
    np.testing.assert_array_equal(bundle.test.y, [1, 2])
    assert bundle.classes == ["a", "b", "c"] and bundle.val is None

    gray = npz_file(tmp_path / "g.npz", x_train=x[..., 0], y_train=np.zeros(6, int))
    assert load_data(DataSpec(dataset="npz", path=str(gray), validation_split=0)).train.x.shape == (6, 1, 5, 4)


def test_npz_provided_validation_split_is_used(tmp_path):
    x = np.zeros((8, 4, 4), np.float32)
    path = npz_file(tmp_path / "d.npz", x_train=x, y_train=np.arange(8) % 2,
                    x_val=x[:3] + 1, y_val=np.array([1, 0, 1]))
    bundle = load_data(DataSpec(dataset="npz", path=str(path), normalize="none"))
    assert len(bundle.train) == 8 and len(bundle.val) == 3
    assert np.all(bundle.val.x == 1.0)  # float data is not rescaled


def test_npz_object_arrays_refused(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, x_train=np.array([{"a": 1}, None], dtype=object), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match=r"o.npz: array 'x_train' holds Python objects"):
        read_npz(path)


@pytest.mark.parametrize("arrays, message", [
    (dict(x_train=np.zeros((3, 2, 2)), y_train=np.array([0, 1])), "3 images but 2 labels"),
    (dict(x_train=np.zeros((2, 2, 2))), "needs arrays 'x_train' and 'y_train'"),
    (dict(x_train=np.zeros((2, 2, 2)), y_train=np.array([0.5, 1.0])), "integer class indices"),
    (dict(x_train=np.zeros((2, 2, 2)), y_train=np.array([0, -1])), "out of range"),
    (dict(x_train=np.zeros((2, 2, 2)), y_train=np.array([0, 3]), classes=np.array(["a", "b"])),
     r"labels out of range: found 0..3, expected 0..1"),
    (dict(x_train=np.zeros((2, 2, 2)), y_train=np.array([0, 1]), x_test=np.zeros((1, 2, 2))), "without 'y_test'"),
    (dict(x_train=np.zeros((2, 2, 2)), y_train=np.array([0, 1]), x_test=np.zeros((1, 3, 3)), y_test=np.array([0])),
     "'x_test' samples have shape"),
    (dict(x_train=np.array([["a", "b"], ["c", "d"]]), y_train=np.array([0, 1])), "must be numeric"),
])
def test_npz_checks(tmp_path, arrays, message):
    path = npz_file(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_data(DataSpec(dataset="npz", path=str(path), validation_split=0))


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"hello, not a zip")
    with pytest.raises(DataError, match="x.npz: not a valid .npz archive"):
        read_npz(tmp_path / "x.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="not an .npz archive"):
        read_npz(tmp_path / "single.npy")


# --------------------------------------------------------------------------- image folders

def save_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_reads_classes_sorted(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    pictures = {}
    for cls in ("zebra", "ant"):
        for i in range(2):
            img = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            save_image(tmp_path / cls / f"{i}.png", img)
            pictures[(cls, i)] = img
    x, y, classes = read_image_folder(tmp_path)
    assert classes == ["ant", "zebra"]
    assert x.shape == (4, 3, 6, 5) and list(y) == [0, 0, 1, 1]
    np.testing.assert_array_equal(x[2], pictures[("zebra", 0)].transpose(2, 0, 1))

    gray, _, _ = read_image_folder(tmp_path, channels=1)
    assert gray.shape == (4, 1, 6, 5)


def test_image_folder_grayscale_by_first_image_and_split_layout(tmp_path):
    pytest.importorskip("PIL")
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                save_image(tmp_path / split / cls / f"{i}.png", np.full((4, 4), 10 * i, np.uint8))
    bundle = load_data(DataSpec(dataset="image_folder", path=str(tmp_path), validation_split=0, normalize="unit"))
    assert bundle.train.x.shape == (6, 1, 4, 4) and bundle.test.x.shape == (2, 1, 4, 4)
    assert bundle.classes == ["a", "b"]
    assert bundle.train.x.max() == pytest.approx(20 / 255)


def test_image_folder_non_image_file_named(tmp_path):
    pytest.importorskip("PIL")
    save_image(tmp_path / "cat" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not a picture")
    with pytest.raises(DataError, match=r"notes.txt: not a readable image"):
        read_image_folder(tmp_path)


def test_image_folder_size_mismatch_named(tmp_path):
    pytest.importorskip("PIL")
    save_image(tmp_path / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    save_image(tmp_path / "b" / "odd.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"odd.png: image is 4x5 but .* is 4x4"):
        read_image_folder(tmp_path)


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    from conftest import hide_module

    (tmp_path / "a").mkdir()
    hide_module(monkeypatch, "PIL")
    with pytest.raises(DataError, match=r"pip install 'nettrain\[images\]'"):
        read_image_folder(tmp_path)


# --------------------------------------------------------------------------- load_data

def tagged_npz(path: Path, n_train: int = 50, n_test: int = 10) -> Path:
    """Images whose first pixel is the sample's index, so splits can be traced back."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (n_train, 4, 4, 3)).astype(np.uint8)
    x[:, 0, 0, 0] = np.arange(n_train)
    test = (rng.integers(0, 256, (n_test, 4, 4, 3)) // 2).astype(np.uint8)  # a darker test set
    return npz_file(path, x_train=x, y_train=np.arange(n_train) % 5, x_test=test, y_test=np.arange(n_test) % 5)


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    path = tagged_npz(tmp_path / "t.npz")
    spec = DataSpec(dataset="npz", path=str(path), validation_split=0.2, normalize="none")
    a, b, c = load_data(spec, seed=1), load_data(spec, seed=1), load_data(spec, seed=2)
    ids = lambda s: s.x[:, 0, 0, 0].astype(int)  # noqa: E731
    assert len(a.train) == 40 and len(a.val) == 10
    np.testing.assert_array_equal(ids(a.val), ids(b.val))
    assert set(ids(a.val)) != set(ids(c.val))
    assert sorted(set(ids(a.train)) | set(ids(a.val))) == list(range(50))
    assert not set(ids(a.train)) & set(ids(a.val))


def test_normalization_uses_training_split_only(tmp_path):
    path = tagged_npz(tmp_path / "t.npz")
    raw = np.load(path)
    spec = DataSpec(dataset="npz", path=str(path), validation_split=0.2)
    bundle = load_data(spec, seed=0)
    train_idx, _ = D.split_validation(50, 0.2, 0)
    train = raw["x_train"][train_idx].transpose(0, 3, 1, 2) / 255.0
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    np.testing.assert_allclose(bundle.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(bundle.std, std, rtol=1e-5)
    np.testing.assert_allclose(bundle.train.x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    test = raw["x_test"].transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(bundle.test.x, (test - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    assert bundle.test.x.mean() < -0.5  # the darker test set is not re-centred on its own statistics


def test_normalize_unit_and_none(tmp_path):
    path = tagged_npz(tmp_path / "t.npz")
    unit = load_data(DataSpec(dataset="npz", path=str(path), normalize="unit", validation_split=0))
    none = load_data(DataSpec(dataset="npz", path=str(path), normalize="none", validation_split=0))
    assert unit.mean is None and unit.train.x.dtype == np.float32
    np.testing.assert_allclose(unit.train.x * 255, none.train.x, atol=1e-3)
    assert none.train.x.max() > 200


def test_validation_test_and_subset(tmp_path):
    path = tagged_npz(tmp_path / "t.npz")
    bundle = load_data(DataSpec(dataset="npz", path=str(path), validation="test", subset=12, normalize="none"))
    assert len(bundle.train) == 12 and len(bundle.val) == 10
    np.testing.assert_array_equal(bundle.train.x[:, 0, 0, 0], np.arange(12))
    np.testing.assert_array_equal(bundle.val.x, bundle.test.x)


def test_reshape_to_sequence_and_vector(tmp_path):
    root, arrays = make_mnist_dir(tmp_path / "mnist")
    spec = DataSpec(dataset="mnist", path=str(root), validation_split=0, normalize="none")
    seq = load_data(spec, input_shape=(28, 28))
    assert seq.train.x.shape == (30, 28, 28) and seq.train.x.dtype == np.float32
    np.testing.assert_array_equal(seq.train.x[4, 7], arrays["train"][0][4, 7])  # timestep 7 is image row 7
    flat = load_data(spec, input_shape=(784,))
    assert flat.train.x.shape == (30, 784) and flat.test.x.shape == (10, 784)
    mismatch = r"28x28x1 \(784 values\) but the model's input_shape is 32x32x3 \(3072 values\)"
    with pytest.raises(DataError, match=mismatch):
        load_data(spec, input_shape=(3, 32, 32))
    with pytest.raises(DataError, match="change model.input_shape to 28x28x1"):
        load_data(spec, input_shape=(4, 14, 14))


def test_shipped_fashion_subset_is_balanced():
    spec = DataSpec(dataset="fashion_mnist", path="data/fashion-mnist-subset", validation_split=0)
    bundle = load_data(spec, config_dir=REPO)
    assert bundle.train.x.shape == (10000, 1, 28, 28) and bundle.test.x.shape == (2000, 1, 28, 28)
    assert np.bincount(bundle.train.y).tolist() == [1000] * 10
    assert np.bincount(bundle.test.y).tolist() == [200] * 10
    assert bundle.classes[0] == "T-shirt/top"
    size = sum(p.stat().st_size for p in (REPO / "data" / "fashion-mnist-subset").iterdir())
    assert size < 10 * 2**20


def test_path_relative_to_config_dir_first(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    make_mnist_dir(cfg / "d", n_train=11)
    make_mnist_dir(tmp_path / "cwd" / "d", n_train=22)
    monkeypatch.chdir(tmp_path / "cwd")
    spec = DataSpec(dataset="mnist", path="d", validation_split=0)
    assert len(load_data(spec, config_dir=cfg).train) == 11
    assert len(load_data(spec, config_dir=tmp_path / "elsewhere").train) == 22


def test_default_location_data_name_in_cwd(tmp_path, monkeypatch):
    make_mnist_dir(tmp_path / "data" / "mnist", n_train=13)
    monkeypatch.chdir(tmp_path)
    assert len(load_data(DataSpec(dataset="mnist", validation_split=0)).train) == 13


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locate, "REPO_DATA_DIR", tmp_path / "repo" / "data")
    monkeypatch.setattr(locate, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "none")
    with pytest.raises(DataError) as err:
        load_data(DataSpec(dataset="fashion_mnist"))
    message = str(err.value)
    assert "nettrain data download fashion-mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.path" in message
    assert "\n" not in message
    with pytest.raises(DataError, match=r"data.path 'gone' not found"):
        load_data(DataSpec(dataset="cifar10", path="gone"))


def test_dataset_names_as_data_download_spells_them():
    from nettrain.config import load_config
    from nettrain.download import dataset_info

    for name, canonical in (("fashion-mnist", "fashion_mnist"), ("Fashion-MNIST", "fashion_mnist"),
                            ("cifar-10", "cifar10"), ("mnist", "mnist")):
        assert DataSpec(dataset=name).dataset == canonical
        assert dataset_info(name).name.replace("-", "_") == canonical  # `data download` takes it too
    config = load_config(REPO / "configs" / "quickstart.yaml", ["data.dataset=fashion-mnist"])
    assert config.data.dataset == "fashion_mnist" and config.resolved["data"]["dataset"] == "fashion_mnist"
    with pytest.raises(ValidationError):
        DataSpec(dataset="fashion mnist")


def test_data_spec_validation():
    with pytest.raises(ValidationError):
        DataSpec(dataset="fashion_mnist", shuffle=True)
    with pytest.raises(ValidationError):
        DataSpec(dataset="fashion_mnist", validation_split=1.0)
    with pytest.raises(ValidationError):
        DataSpec(dataset="npz")
    with pytest.raises(ValidationError):
        DataSpec(dataset="mnist", synthetic={"num_classes": 3})
    with pytest.raises(ValidationError):
        DataSpec(dataset="mnist", augment={"random_crop_padding": -1})
    spec = DataSpec.model_validate({"dataset": "cifar10", "augment": {"horizontal_flip": True}, "validation": "test"})
    assert spec.augment.active and spec.normalize == "per_channel"


def test_data_spec_takes_every_name_data_download_takes():
    from nettrain.download import ALIASES, DATASETS, dataset_info

    for name in [*DATASETS, *ALIASES, "FASHION-MNIST"]:
        spec = DataSpec(dataset=name)
        assert dataset_info(spec.dataset).name == dataset_info(name).name  # the same data set
    with pytest.raises(ValidationError, match="fashion_mnist"):
        DataSpec(dataset="fashion")


def test_synthetic_is_deterministic_and_class_dependent():
    spec = DataSpec(dataset="synthetic", synthetic={"shape": [8, 8, 3], "num_classes": 4, "train_size": 200,
                                                    "test_size": 40, "noise": 0.1})
    a, b = load_data(spec, seed=0), load_data(spec, seed=0)
    assert a.train.x.shape == (180, 3, 8, 8) and a.test.x.shape == (40, 3, 8, 8) and a.num_classes == 4
    np.testing.assert_array_equal(a.train.x, b.train.x)
    # nearest class mean classifies the test set: the classes really differ
    means = np.stack([a.train.x[a.train.y == k].mean(0) for k in range(4)])
    dist = ((a.test.x[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (dist.argmin(1) == a.test.y).mean() > 0.9
    follows_model = load_data(DataSpec(dataset="synthetic"), input_shape=(28, 28))
    assert follows_model.train.x.shape[1:] == (28, 28)


def test_augment_needs_images():
    spec = DataSpec(dataset="synthetic", synthetic={"shape": [16]}, augment={"horizontal_flip": True})
    with pytest.raises(DataError, match="augment needs images"):
        load_data(spec)


# --------------------------------------------------------------------------- batches

def counting_split(n: int = 23, shape=(2, 6, 6)) -> Split:
    x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return Split(x, np.arange(n, dtype=np.int64))


def test_batches_cover_every_sample_once_with_partial_last():
    split = counting_split()
    batches = list(Batches(split, batch_size=5, seed=3, epoch=1))
    assert [len(yb) for _, yb in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([yb for _, yb in batches])
    assert sorted(seen) == list(range(23)) and list(seen) != list(range(23))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
    unshuffled = np.concatenate([yb for _, yb in Batches(split, 5, shuffle=False)])
    np.testing.assert_array_equal(unshuffled, np.arange(23))


def test_batch_order_depends_only_on_seed_and_epoch():
    split = counting_split()
    order = lambda **kw: np.concatenate([yb for _, yb in Batches(split, 4, **kw)])  # noqa: E731
    np.testing.assert_array_equal(order(seed=1, epoch=2), order(seed=1, epoch=2))
    assert not np.array_equal(order(seed=1, epoch=2), order(seed=1, epoch=3))
    assert not np.array_equal(order(seed=1, epoch=2), order(seed=2, epoch=2))


def test_resume_with_start_batch_reproduces_the_rest():
    split = counting_split()
    augment = AugmentSpec(random_crop_padding=2, horizontal_flip=True)
    full = list(Batches(split, 4, seed=7, epoch=5, augment=augment))
    resumed = Batches(split, 4, seed=7, epoch=5, augment=augment, start_batch=3)
    assert len(resumed) == len(full) - 3 and resumed.num_batches == len(full)
    rest = list(resumed)
    assert len(rest) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], rest):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def test_augmentation_shapes_determinism_and_variation():
    split = counting_split(40, shape=(3, 8, 8))
    augment = AugmentSpec(random_crop_padding=3, horizontal_flip=True)
    one = [xb for xb, _ in Batches(split, 16, seed=0, epoch=0, augment=augment)]
    two = [xb for xb, _ in Batches(split, 16, seed=0, epoch=0, augment=augment)]
    plain = [xb for xb, _ in Batches(split, 16, seed=0, epoch=0)]
    other = [xb for xb, _ in Batches(split, 16, seed=0, epoch=1, augment=augment)]
    assert [x.shape for x in one] == [(16, 3, 8, 8), (16, 3, 8, 8), (8, 3, 8, 8)]
    assert all(x.dtype == np.float32 for x in one)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, p) for a, p in zip(one, plain))
    assert not all(np.array_equal(a, o) for a, o in zip(one[:2], other[:2]))


def test_random_crop_matches_a_per_sample_loop():
    x = np.random.default_rng(1).standard_normal((6, 2, 5, 7)).astype(np.float32)
    p = 2
    out = random_crop(x, p, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    dy, dx = rng.integers(0, 2 * p + 1, 6), rng.integers(0, 2 * p + 1, 6)
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    expected = np.stack([padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7] for i in range(6)])
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, expected)


def test_horizontal_flip_extremes():
    x = np.arange(2 * 1 * 2 * 3, dtype=np.float32).reshape(2, 1, 2, 3)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(horizontal_flip(x, rng, p=1.0), x[..., ::-1])
    np.testing.assert_array_equal(horizontal_flip(x, rng, p=0.0), x)


def test_describe_copy_says_which_copy_of_the_data_is_used(tmp_path):
    fashion = D.DataSpec(dataset="fashion_mnist")
    shipped = D.describe_copy(fashion, locate.REPO_DATA_DIR / "fashion-mnist-subset")
    assert shipped.startswith("the Fashion-MNIST subset shipped with nettrain") and "fashion-mnist-subset" in shipped
    full = D.describe_copy(fashion, locate.SYSTEM_FASHION_MNIST_DIR)
    assert full == f"the full Fashion-MNIST set (Debian's dataset-fashion-mnist) in {locate.SYSTEM_FASHION_MNIST_DIR}"
    assert D.describe_copy(fashion, tmp_path) == f"fashion_mnist in {tmp_path.resolve()}"
    cut = D.describe_copy(D.DataSpec(dataset="fashion_mnist", subset=500), tmp_path)
    assert cut.endswith("first 500 training samples (data.subset)")
    assert D.describe_copy(D.DataSpec(dataset="synthetic"), None).startswith("synthetic")

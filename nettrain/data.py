"""Data sets: safe readers for the real file formats, the ``data:`` config section, batches.

Readers turn files into ``uint8`` (or float) arrays in NCHW order and raise
:class:`~nettrain.errors.DataError` -- never another exception type -- with one
line naming the file and the problem:

* :func:`read_idx` -- MNIST / Fashion-MNIST IDX files, gzipped or raw;
* :func:`read_cifar_batch`, :func:`read_cifar_binary_batch`, :func:`read_cifar10`
  -- CIFAR-10 python (pickle) and binary batches; pickles are loaded by an
  unpickler that can build nothing but plain numpy arrays;
* :func:`read_npz` -- ``.npz`` archives, never unpickling object arrays;
* :func:`read_image_folder` -- one sub-folder per class (needs Pillow).

:func:`load_data` turns a :class:`DataSpec` into a :class:`DataBundle` of
float32 splits, normalized with statistics of the training split only.
:class:`Batches` yields mini-batches in an order that depends only on
``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from .errors import DataError
from .layers.base import format_shape

Shape = tuple[int, ...]

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

_CHUNK = 1 << 20


def _fail(path: Path | str, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


# Advice for a file that is cut short or damaged.
DAMAGED = "the file is incomplete or damaged; download or write it again"


# --------------------------------------------------------------------------- IDX

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"


def _open_maybe_gzip(path: Path):
    """Open ``path`` for reading bytes, decompressing when it starts with the gzip magic."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except OSError as e:
        raise _fail(path, f"cannot open ({e.strerror or e})") from None
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    raw.seek(0)
    return raw, raw


def _read_upto(stream, n: int) -> bytes:
    """Read at most ``n`` bytes in chunks, so a lying header cannot make us allocate ``n`` up front."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(min(_CHUNK, n - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path: str | Path, kind: Literal["images", "labels"] | None = None) -> np.ndarray:
    """Read an IDX file (MNIST layout), gzipped or raw.

    The header is ``00 00 <type> <ndim>`` then ``ndim`` big-endian uint32 sizes;
    the body must hold exactly ``prod(sizes)`` items.  ``kind="images"`` demands
    magic ``0x00000803`` (uint8, 3-D), ``kind="labels"`` ``0x00000801`` (uint8, 1-D).

    Returns an array of shape ``sizes`` in native byte order.
    """
    path = Path(path)
    stream, raw = _open_maybe_gzip(path)
    try:
        with raw, stream:
            header = _read_upto(stream, 4)
            if len(header) < 4:
                raise _fail(path, f"truncated: expected at least 4 header bytes, found {len(header)}; {DAMAGED}")
            magic = int.from_bytes(header, "big")
            type_code, ndim = header[2], header[3]
            if header[:2] != b"\x00\x00" or type_code not in IDX_DTYPES or ndim == 0:
                raise _fail(path, f"not an IDX file (bad magic 0x{magic:08x}); give the MNIST-style "
                                  "train/t10k images and labels files")
            wanted = {"images": IDX_IMAGES_MAGIC, "labels": IDX_LABELS_MAGIC}.get(kind or "")
            if wanted is not None and magic != wanted:
                raise _fail(path, f"wrong magic 0x{magic:08x} for {kind}, expected 0x{wanted:08x}; "
                                  "are the images and labels files swapped or misnamed?")
            dims_bytes = _read_upto(stream, 4 * ndim)
            header_size = 4 + 4 * ndim
            if len(dims_bytes) < 4 * ndim:
                raise _fail(path, f"truncated: expected at least {header_size} header bytes, "
                                  f"found {4 + len(dims_bytes)}; {DAMAGED}")
            dims = tuple(int.from_bytes(dims_bytes[4 * i:4 * i + 4], "big") for i in range(ndim))
            dtype = IDX_DTYPES[type_code]
            body_size = math.prod(dims) * dtype.itemsize
            body = _read_upto(stream, body_size + 1)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise _fail(path, f"corrupt or truncated gzip data ({e}); {DAMAGED}") from None
    expected, found = header_size + body_size, header_size + len(body)
    if len(body) < body_size:
        raise _fail(path, f"truncated: expected {expected} bytes, found {found}; {DAMAGED}")
    if len(body) > body_size:
        raise _fail(path, f"has trailing data: expected {expected} bytes for shape {dims}, found more")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzipped (reproducibly, mtime 0) when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _check_labels(path: Path | str, y: np.ndarray, num_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise _fail(path, f"labels out of range: found {int(y.min())}..{int(y.max())}, "
                          f"expected 0..{num_classes - 1}; every label must be the index of one of the "
                          f"{num_classes} classes")


def _check_counts(path: Path | str, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) != len(y):
        raise _fail(path, f"count mismatch: {len(x)} images but {len(y)} labels; "
                          "give one label per image (files of the same split)")


IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(directory: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")  # some mirrors spell it train-images.idx3-ubyte
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    raise _fail(directory, f"missing {stem}.gz (or {stem})")


def read_idx_split(directory: str | Path, split: Literal["train", "test"],
                   num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST-layout split: images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64."""
    directory = Path(directory)
    image_stem, label_stem = IDX_STEMS[split]
    image_path = _find_idx_file(directory, image_stem)
    label_path = _find_idx_file(directory, label_stem)
    x = read_idx(image_path, kind="images")
    y = read_idx(label_path, kind="labels").astype(np.int64)
    if x.ndim != 3:
        raise _fail(image_path, f"expected 3-D images (N, H, W), got shape {x.shape}")
    if y.ndim != 1:
        raise _fail(label_path, f"expected 1-D labels, got shape {y.shape}")
    _check_counts(f"{image_path} / {label_path.name}", x, y)
    _check_labels(label_path, y, num_classes)
    return x[:, None], y


# --------------------------------------------------------------------------- CIFAR-10

CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_SAMPLE_BYTES = 3072
CIFAR_RECORD_BYTES = 1 + CIFAR_SAMPLE_BYTES


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may use it."""


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not _NdarrayType:
        raise DataError(f"refusing to build {subtype!r}")
    # __setstate__ sets the real shape and data next; allocating ``shape`` here
    # would let a forged header reserve any amount of memory.
    return np.ndarray.__new__(np.ndarray, (0,), _safe_dtype(dtype))


def _safe_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise DataError("refusing an object array")
    return dtype


def _safe_frombuffer(buffer, dtype, shape, order):
    return np.frombuffer(buffer, dtype=_safe_dtype(dtype)).reshape(shape, order=order)


def _latin1_encode(text, encoding="latin1"):
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DataError(f"refusing codec {encoding!r}")
    return codecs.encode(text, "latin1")


# The only callables a CIFAR batch needs: rebuilding a plain numeric ndarray.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every class and function except plain numpy array rebuilding.

    A hostile pickle names callables such as ``os.system`` in its GLOBAL opcodes;
    ``find_class`` is the only way to reach them, so refusing them here means
    loading the file cannot run code.
    """

    def find_class(self, module: str, name: str):
        allowed = _PICKLE_ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(f"refusing to load {module}.{name}")
        return allowed


def safe_unpickle(path: str | Path):
    """Load a pickle with :class:`SafeUnpickler` (bytes keys as in the Python 2 originals)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror or e})") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as e:
        raise _fail(path, f"unsafe or invalid pickle: {e} (only plain arrays are loaded, nothing else is run); "
                          "replace it with a genuine CIFAR-10 batch") from None
    except RecursionError:
        raise _fail(path, f"invalid pickle (nested too deeply); {DAMAGED}") from None
    except Exception as e:  # a corrupt pickle can fail with almost any exception type
        raise _fail(path, f"not a valid pickle ({type(e).__name__}: {e}); {DAMAGED}") from None


def _get_key(path: Path, obj: dict, key: str):
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise _fail(path, f"no {key!r} entry (found keys {sorted(map(repr, obj))[:6]})")


def _as_label_array(path: Path, labels) -> np.ndarray:
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise _fail(path, f"labels must be 1-D integers, got {labels.dtype} {labels.shape}")
        return labels.astype(np.int64)
    if isinstance(labels, (list, tuple)) and all(type(v) is int for v in labels):
        if labels and not (-2**63 <= min(labels) and max(labels) < 2**63):
            raise _fail(path, "labels out of range")
        return np.array(labels, dtype=np.int64)
    raise _fail(path, "labels must be a list of integers")


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64."""
    path = Path(path)
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise _fail(path, f"not a CIFAR batch (a pickled {type(obj).__name__}, expected a dict)")
    data = _get_key(path, obj, "data")
    y = _as_label_array(path, _get_key(path, obj, "labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != CIFAR_SAMPLE_BYTES:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _fail(path, f"'data' must be a uint8 array (N, {CIFAR_SAMPLE_BYTES}), got {what}")
    _check_counts(path, data, y)
    _check_labels(path, y, num_classes)
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE).copy(), y


def read_cifar_meta(path: str | Path) -> list[str]:
    """Class names from ``batches.meta`` (python) or ``batches.meta.txt`` (binary)."""
    path = Path(path)
    if path.suffix == ".txt":
        try:
            return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise _fail(path, f"cannot read class names ({e})") from None
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise _fail(path, "not a CIFAR meta file (expected a dict)")
    names = _get_key(path, obj, "label_names")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise _fail(path, "'label_names' must be a list of strings")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise _fail(path, "'label_names' are not UTF-8") from None


def read_cifar_binary_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(path, f"cannot read ({e.strerror or e})") from None
    if not data or len(data) % CIFAR_RECORD_BYTES:
        raise _fail(path, f"size {len(data)} bytes is not a positive multiple of the "
                          f"{CIFAR_RECORD_BYTES}-byte record (truncated or not a CIFAR-10 binary batch); {DAMAGED}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    y = records[:, 0].astype(np.int64)
    _check_labels(path, y, num_classes)
    return records[:, 1:].reshape(-1, *CIFAR_IMAGE_SHAPE).copy(), y


def _cifar_batches_dir(path: Path) -> Path:
    for sub in ("cifar-10-batches-py", "cifar-10-batches-bin"):
        if (path / sub).is_dir():
            return path / sub
    return path


def read_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A CIFAR-10 directory (``cifar-10-batches-py``/``-bin`` or their parent).

    Returns ``x_train, y_train, x_test, y_test, classes`` with images ``(N, 3, 32, 32)`` uint8.
    """
    directory = _cifar_batches_dir(Path(path))
    if (directory / "data_batch_1").is_file():
        reader, suffix, meta = read_cifar_batch, "", directory / "batches.meta"
    elif (directory / "data_batch_1.bin").is_file():
        reader, suffix, meta = read_cifar_binary_batch, ".bin", directory / "batches.meta.txt"
    else:
        raise _fail(directory, "no CIFAR-10 batches found (expected data_batch_1..5 and test_batch "
                               "from cifar-10-batches-py, or the .bin files from cifar-10-batches-bin)")
    train_files = [directory / f"data_batch_{i}{suffix}" for i in range(1, 6)]
    train_files = [p for p in train_files if p.is_file()]
    test_file = directory / f"test_batch{suffix}"
    if not test_file.is_file():
        raise _fail(directory, f"missing {test_file.name}")
    train = [reader(p) for p in train_files]
    x_test, y_test = reader(test_file)
    classes = read_cifar_meta(meta) if meta.is_file() else list(CIFAR10_CLASSES)
    if len(classes) < 10:
        raise _fail(meta, f"lists {len(classes)} class names, expected 10")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes[:10]


# --------------------------------------------------------------------------- npz

def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` archive, loaded with ``allow_pickle=False``.

    Object arrays (which would need unpickling) are refused with a DataError.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except Exception as e:  # np.load fails on foreign bytes with many exception types
        raise _fail(path, f"not a valid .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(path, "not an .npz archive (a single .npy array?)")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as e:
                if "allow_pickle" in str(e) or "bject" in str(e):
                    raise _fail(path, f"array {key!r} holds Python objects, which are refused; "
                                      "save numeric or string arrays") from None
                raise _fail(path, f"array {key!r} is corrupt ({e})") from None
            except Exception as e:
                raise _fail(path, f"array {key!r} is corrupt ({type(e).__name__}: {e})") from None
    return arrays


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` -> ``(N, C, H, W)``; ``(N, H, W)`` -> ``(N, 1, H, W)``; ``(N, F)`` kept."""
    if x.dtype.kind not in "uif":
        raise _fail(path, f"{key!r} must be numeric, got dtype {x.dtype}")
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 2:
        return x
    raise _fail(path, f"{key!r} must be (N, H, W, C), (N, H, W) or (N, F), got shape {x.shape}")


def _npz_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise _fail(path, f"{key!r} must be 1-D class indices, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise _fail(path, f"{key!r} must hold integer class indices")
    elif y.dtype.kind not in "iu":
        raise _fail(path, f"{key!r} must hold integer class indices, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= 2**31):
        raise _fail(path, f"{key!r} has labels out of range ({y.min()}..{y.max()})")
    return y.astype(np.int64)


# --------------------------------------------------------------------------- image folders

_IMAGE_SPLIT_DIRS = ("train", "val", "test")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _import_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: pip install 'nettrain[images]'") from None
    return Image


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise _fail(root, "no class sub-folders (expected one folder of images per class)")
    return dirs


def read_image_folder(path: str | Path, channels: int | None = None,
                      classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images from ``path/<class>/<file>``: ``(N, C, H, W)`` uint8, labels, sorted class names.

    ``channels`` 1 (mode L) or 3 (RGB); ``None`` follows the first image.  All
    images must have the same size.  ``classes`` maps folder names to labels (for a
    test folder read with the training classes).
    """
    root = Path(path)
    if not root.is_dir():
        raise _fail(root, "not a directory")
    Image = _import_pillow()
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise _fail(root, f"class folders {unknown} are not among the training classes {classes}")
    images, labels, first = [], [], None
    for d in dirs:
        for f in sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                with Image.open(f) as im:
                    im.load()
                    if channels is None:
                        channels = 1 if im.mode in _GRAY_MODES else 3
                    im = im.convert("L" if channels == 1 else "RGB")
                    array = np.asarray(im, dtype=np.uint8)
            except Exception as e:  # Pillow raises many types for a file that is not an image
                raise _fail(f, f"not a readable image ({type(e).__name__}: {e}); remove it or move it "
                               "out of the class folders") from None
            if first is None:
                first = (f, array.shape)
            elif array.shape != first[1]:
                h, w = array.shape[:2]
                raise _fail(f, f"image is {w}x{h} but {first[0]} is {first[1][1]}x{first[1][0]}; "
                               "all images must have the same size")
            images.append(array)
            labels.append(classes.index(d.name))
    if not images:
        raise _fail(root, "no images found in the class folders")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.array(labels, dtype=np.int64), list(classes)


# --------------------------------------------------------------------------- config section

class AugmentSpec(BaseModel):
    """Training-only augmentation of image batches."""

    model_config = ConfigDict(extra="forbid")

    random_crop_padding: NonNegativeInt = 0
    horizontal_flip: bool = False

    @property
    def active(self) -> bool:
        return self.random_crop_padding > 0 or self.horizontal_flip


class SyntheticSpec(BaseModel):
    """Random class-dependent patterns: each class is a fixed random image plus noise.

    ``shape`` is written as the user writes input shapes (``[H, W, C]``, ``[T, F]``
    or ``[F]``); left out, it follows the model's input shape.
    """

    model_config = ConfigDict(extra="forbid")

    shape: list[PositiveInt] | None = Field(None, min_length=1, max_length=3)
    num_classes: int = Field(10, ge=2)
    train_size: PositiveInt = 1000
    test_size: NonNegativeInt = 200
    noise: float = Field(0.25, ge=0.0)
    seed: NonNegativeInt = 0


# Other spellings of the named data sets, as `nettrain data download` accepts them.
DATASET_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
                   "cifar-10": "cifar10", "cifar_10": "cifar10"}


class DataSpec(BaseModel):
    """The ``data:`` section of a config.

    ``validation: split`` carves ``validation_split`` of the training set (by the
    seed); ``validation: test`` validates on the test set.  A data set that ships
    its own validation split (``x_val`` in an npz, a ``val/`` image folder) uses it.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["fashion_mnist", "mnist", "cifar10", "npz", "image_folder", "synthetic"]
    path: str | None = None
    validation: Literal["split", "test"] = "split"
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    normalize: Literal["per_channel", "none", "unit"] = "per_channel"
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    subset: PositiveInt | None = None
    channels: Literal[1, 3] | None = None
    synthetic: SyntheticSpec | None = None

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_alias(cls, value):
        return DATASET_ALIASES.get(value.strip().lower(), value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fields_fit_dataset(self) -> "DataSpec":
        if self.synthetic is not None and self.dataset != "synthetic":
            raise ValueError("'synthetic' settings are only used with dataset: synthetic")
        if self.dataset in ("npz", "image_folder") and not self.path:
            raise ValueError(f"dataset: {self.dataset} needs a path")
        return self


@dataclass
class Split:
    """One split: ``x`` float32 ``(N, *sample_shape)``, ``y`` int64 ``(N,)``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataBundle:
    """Train/validation/test splits, class names and the normalization statistics.

    ``mean`` and ``std`` are per channel ``(C,)`` float32 for ``normalize:
    per_channel`` (computed on the training split after scaling to [0, 1]), else None.
    """

    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    mean: np.ndarray | None
    std: np.ndarray | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sample_shape(self) -> Shape:
        return tuple(self.train.x.shape[1:])


@dataclass
class _Raw:
    """Arrays as read: images ``(N, C, H, W)`` or vectors ``(N, F)``, original dtype."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


# --------------------------------------------------------------------------- finding data

_DATASET_DIRS = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "mnist": ("mnist",),
    "cifar10": ("cifar10", "cifar-10", "cifar-10-batches-py", "cifar-10-batches-bin"),
}
_DOWNLOAD_NAMES = {"fashion_mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar10"}


def _unique(paths: list[Path]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def path_candidates(path: str, config_dir: Path | None) -> list[Path]:
    """Where a configured ``data.path`` may be: as given if absolute, else under the
    config's folder, the current directory, then the project folder."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    roots = ([Path(config_dir)] if config_dir is not None else []) + [Path.cwd(), REPO_DATA_DIR.parent]
    return _unique([root / p for root in roots])


def dataset_candidates(dataset: str) -> list[Path]:
    """Default places of a named data set: ``data/<name>/`` here and in the project, then system copies."""
    roots = _unique([Path.cwd() / "data", REPO_DATA_DIR])
    found = [root / name for root in roots for name in _DATASET_DIRS[dataset]]
    if dataset == "fashion_mnist":
        found.append(SYSTEM_FASHION_MNIST_DIR)
    return found


def locate_data(spec: DataSpec, config_dir: Path | None = None) -> Path:
    """The file or folder the spec points at, or a DataError that says how to get it."""
    if spec.path:
        candidates = path_candidates(spec.path, config_dir)
        for p in candidates:
            if p.exists():
                return p
        looked = ", ".join(str(p) for p in candidates)
        raise DataError(f"data.path {spec.path!r} not found (looked in: {looked}); fix data.path in the config")
    candidates = dataset_candidates(spec.dataset)
    for p in candidates:
        if p.is_dir():
            return p
    looked = ", ".join(str(p) for p in candidates)
    how = f"run `nettrain data download {_DOWNLOAD_NAMES[spec.dataset]}`"
    if spec.dataset == "fashion_mnist":
        how += " or `apt-get install dataset-fashion-mnist`"
    raise DataError(f"{spec.dataset} data not found (looked in: {looked}); {how}, or set data.path")


# --------------------------------------------------------------------------- loading

def _user_shape_to_internal(shape: list[int]) -> Shape:
    """``[H, W, C]`` -> ``(C, H, W)``; ``[T, F]`` and ``[F]`` unchanged."""
    if len(shape) == 3:
        h, w, c = shape
        return (c, h, w)
    return tuple(shape)


def make_synthetic(spec: SyntheticSpec, input_shape: Shape | None = None) -> _Raw:
    """Class prototypes (uniform noise images) plus Gaussian noise, as uint8, deterministic by ``spec.seed``.

    Images come out ``(N, C, H, W)``; a ``(T, F)`` shape is stored as ``(N, 1, T, F)``.
    """
    if spec.shape is not None:
        shape = _user_shape_to_internal(spec.shape)
    else:
        shape = tuple(input_shape) if input_shape else (1, 28, 28)
    natural = (1, *shape) if len(shape) == 2 else shape
    rng = np.random.default_rng(spec.seed)
    prototypes = rng.random((spec.num_classes, *natural))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, spec.num_classes, n)
        x = prototypes[y] + spec.noise * rng.standard_normal((n, *natural))
        return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = sample(spec.train_size)
    x_test, y_test = sample(spec.test_size) if spec.test_size else (None, None)
    classes = [f"class_{k}" for k in range(spec.num_classes)]
    return _Raw(x_train, y_train, x_test, y_test, classes)


def _load_npz_raw(path: Path) -> _Raw:
    arrays = read_npz(path)
    if "x_train" not in arrays or "y_train" not in arrays:
        raise _fail(path, f"needs arrays 'x_train' and 'y_train' (found {sorted(arrays)})")
    splits = {}
    for name in ("train", "val", "test"):
        xk, yk = f"x_{name}", f"y_{name}"
        if (xk in arrays) != (yk in arrays):
            raise _fail(path, f"has {xk if xk in arrays else yk!r} without "
                              f"{yk if xk in arrays else xk!r}")
        if xk in arrays:
            x, y = _npz_images(path, xk, arrays[xk]), _npz_labels(path, yk, arrays[yk])
            _check_counts(f"{path} ({xk}/{yk})", x, y)
            if splits and x.shape[1:] != splits["train"][0].shape[1:]:
                raise _fail(path, f"{xk!r} samples have shape {x.shape[1:]}, "
                                  f"but x_train has {splits['train'][0].shape[1:]}")
            splits[name] = (x, y)
    if "classes" in arrays:
        classes_arr = arrays["classes"]
        if classes_arr.dtype.kind not in "US" or classes_arr.ndim != 1:
            raise _fail(path, "'classes' must be a 1-D array of strings")
        classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
                   for c in classes_arr.tolist()]
    else:
        top = max(int(y.max()) for _, y in splits.values() if y.size) if any(
            y.size for _, y in splits.values()) else 0
        classes = [str(k) for k in range(top + 1)]
    for name, (_, y) in splits.items():
        _check_labels(f"{path} (y_{name})", y, len(classes))
    x_test, y_test = splits.get("test", (None, None))
    x_val, y_val = splits.get("val", (None, None))
    return _Raw(*splits["train"], x_test, y_test, classes, x_val, y_val)


def _load_image_folder_raw(path: Path, channels: int | None) -> _Raw:
    subdirs = {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()
    if "train" not in subdirs or not subdirs <= set(_IMAGE_SPLIT_DIRS):
        x, y, classes = read_image_folder(path, channels)
        return _Raw(x, y, None, None, classes)
    x, y, classes = read_image_folder(path / "train", channels)
    channels = x.shape[1]
    raw = _Raw(x, y, None, None, classes)
    for name in ("val", "test"):
        if name in subdirs:
            xs, ys, _ = read_image_folder(path / name, channels, classes)
            if xs.shape[1:] != x.shape[1:]:
                raise _fail(path / name, f"images are {format_shape(xs.shape[1:])}, "
                                         f"training images {format_shape(x.shape[1:])}")
            setattr(raw, f"x_{name}", xs)
            setattr(raw, f"y_{name}", ys)
    return raw


def _load_raw(spec: DataSpec, input_shape: Shape | None, config_dir: Path | None) -> _Raw:
    if spec.dataset == "synthetic":
        return make_synthetic(spec.synthetic or SyntheticSpec(), input_shape)
    path = locate_data(spec, config_dir)
    if spec.dataset in ("fashion_mnist", "mnist"):
        if not path.is_dir():
            raise _fail(path, "expected a folder with the four IDX files (train-images-idx3-ubyte.gz, ...)")
        classes = FASHION_MNIST_CLASSES if spec.dataset == "fashion_mnist" else MNIST_CLASSES
        x_train, y_train = read_idx_split(path, "train")
        x_test, y_test = read_idx_split(path, "test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise _fail(path, f"test images {x_test.shape[2:]} differ from training images {x_train.shape[2:]}")
        return _Raw(x_train, y_train, x_test, y_test, list(classes))
    if spec.dataset == "cifar10":
        return _Raw(*read_cifar10(path))
    if spec.dataset == "npz":
        return _load_npz_raw(path)
    channels = spec.channels
    if channels is None and input_shape is not None and len(input_shape) == 3 and input_shape[0] in (1, 3):
        channels = input_shape[0]
    return _load_image_folder_raw(path, channels)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` of a random ``fraction`` held out from ``n`` samples, each sorted."""
    n_val = int(round(n * fraction))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise DataError(f"validation_split {fraction} leaves no training samples out of {n}; "
                        "lower data.validation_split or use more data")
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _scale(x: np.ndarray, normalize: str) -> np.ndarray:
    """float32 copy; uint8 pixels go to [0, 1] unless ``normalize: none``."""
    out = x.astype(np.float32)
    if x.dtype == np.uint8 and normalize != "none":
        out *= np.float32(1.0 / 255.0)
    return out


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel of ``x`` ``(N, C, H, W)`` -> ``(C,), (C,)``; ``(N, F)`` counts as one channel."""
    axes = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)  # a constant channel would divide by zero
    return np.atleast_1d(mean).astype(np.float32), np.atleast_1d(std).astype(np.float32)


def normalize_channels(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per channel, in place on float32 ``x`` ``(N, C, H, W)`` or ``(N, F)``."""
    if x.ndim == 4:
        mean, std = mean[:, None, None], std[:, None, None]
    x -= mean
    x /= std
    return x


def _reshape_to_input(x: np.ndarray, input_shape: Shape, source: str) -> np.ndarray:
    sample = x.shape[1:]
    if sample == tuple(input_shape):
        return x
    if math.prod(sample) != math.prod(input_shape):
        raise DataError(f"{source}: samples are {format_shape(sample)} ({math.prod(sample)} values) but the "
                        f"model's input_shape is {format_shape(input_shape)} ({math.prod(input_shape)} values); "
                        "change model.input_shape to match the data")
    if len(sample) == 3 and len(input_shape) == 3:
        # same size but another image layout: a reshape would scramble pixels
        raise DataError(f"{source}: images are {format_shape(sample)} but the model's input_shape is "
                        f"{format_shape(input_shape)}; change model.input_shape to {format_shape(sample)}")
    return x.reshape(len(x), *input_shape)


def load_data(spec: DataSpec, input_shape: Shape | None = None, seed: int = 0,
              config_dir: Path | None = None) -> DataBundle:
    """Read, split, scale, normalize and shape a data set as the spec says.

    ``input_shape`` is the model's internal input shape without the batch axis
    (``(C, H, W)``, ``(T, F)`` or ``(F,)``): samples of the same size are reshaped
    to it (28x28 images become 28 timesteps of 28 features), others are an error.
    """
    try:
        return _load_bundle(spec, input_shape, seed, config_dir)
    except MemoryError:
        raise DataError(f"{spec.path or spec.dataset}: not enough memory to load the data set; use data.subset "
                        "or a smaller data set") from None


def _load_bundle(spec: DataSpec, input_shape: Shape | None, seed: int, config_dir: Path | None) -> DataBundle:
    raw = _load_raw(spec, input_shape, config_dir)
    source = spec.path or spec.dataset
    x_train, y_train = raw.x_train, raw.y_train
    if spec.subset is not None:
        x_train, y_train = x_train[:spec.subset], y_train[:spec.subset]
    if len(y_train) == 0:
        raise DataError(f"{source}: the training split is empty")

    x_val, y_val = raw.x_val, raw.y_val
    if x_val is None and spec.validation == "test":
        x_val, y_val = raw.x_test, raw.y_test
        if x_val is None:
            raise DataError(f"{source}: validation: test, but the data set has no test split; "
                            "use validation: split")
    elif x_val is None and spec.validation_split > 0:
        train_idx, val_idx = split_validation(len(y_train), spec.validation_split, seed)
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]

    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (raw.x_test, raw.y_test)}
    scaled = {k: (_scale(x, spec.normalize), y) for k, (x, y) in splits.items() if x is not None}
    mean = std = None
    if spec.normalize == "per_channel":
        mean, std = channel_stats(scaled["train"][0])
        for x, _ in scaled.values():
            normalize_channels(x, mean, std)
    if input_shape is not None:
        scaled = {k: (_reshape_to_input(x, tuple(input_shape), source), y) for k, (x, y) in scaled.items()}
    if spec.augment.active and scaled["train"][0].ndim != 4:
        raise DataError(f"{source}: data.augment needs images (C, H, W), but samples are "
                        f"{format_shape(scaled['train'][0].shape[1:])}; remove data.augment")
    made = {k: Split(x, y.astype(np.int64)) for k, (x, y) in scaled.items()}
    return DataBundle(made["train"], made.get("val"), made.get("test"), list(raw.classes), mean, std)


# --------------------------------------------------------------------------- batches

def random_crop(x: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad ``x`` ``(N, C, H, W)`` by ``padding`` and cut one HxW window per sample -> ``(N, C, H, W)``.

    The windows come from a strided view of the padded batch, gathered with one
    fancy index, so there is no Python loop.
    """
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W)
    dy = rng.integers(0, 2 * padding + 1, n)
    dx = rng.integers(0, 2 * padding + 1, n)
    return windows[np.arange(n), :, dy, dx]


def horizontal_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image of ``x`` ``(N, C, H, W)`` left-right with probability ``p``."""
    flip = rng.random(len(x)) < p
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def augment_batch(x: np.ndarray, augment: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """Random crop then horizontal flip, as ``augment`` asks; ``x`` ``(N, C, H, W)``."""
    if augment.random_crop_padding:
        x = random_crop(x, augment.random_crop_padding, rng)
    if augment.horizontal_flip:
        x = horizontal_flip(x, rng)
    return np.ascontiguousarray(x)


class Batches:
    """Mini-batches of a split for one epoch, reproducible from ``(seed, epoch)`` alone.

    The order is ``default_rng([seed, epoch]).permutation(n)`` (or ``arange(n)``
    without shuffling) and batch ``b`` is augmented with ``default_rng([seed,
    epoch, b])``, so a run resumed at ``start_batch`` yields exactly the batches
    an uninterrupted run would have.  The last, partial batch is included.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, augment: AugmentSpec | None = None, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0 or epoch < 0 or start_batch < 0:
            raise ValueError("seed, epoch and start_batch must be >= 0")
        if augment is not None and augment.active and split.x.ndim != 4:
            raise DataError(f"augmentation needs images (N, C, H, W), got shape {split.x.shape}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.augment = augment if augment is not None and augment.active else None
        self.start_batch = start_batch

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch (the last one may be partial)."""
        return math.ceil(len(self.split) / self.batch_size)

    def __len__(self) -> int:
        """Batches this iterator yields (those from ``start_batch`` on)."""
        return max(0, self.num_batches - self.start_batch)

    def order(self) -> np.ndarray:
        n = len(self.split)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.order()
        for b in range(self.start_batch, self.num_batches):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb, yb = self.split.x[idx], self.split.y[idx]
            if self.augment is not None:
                xb = augment_batch(xb, self.augment, np.random.default_rng([self.seed, self.epoch, b]))
            yield xb, yb

"""CIFAR-10: python (pickle) and binary batches.

Pickles are loaded by :class:`SafeUnpickler`, which can build nothing but plain
numeric numpy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from .common import DAMAGED, check_counts, check_labels, fail

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

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
        raise fail(path, f"cannot read ({e.strerror or e})") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as e:
        raise fail(path, f"unsafe or invalid pickle: {e} (only plain arrays are loaded, nothing else is run); "
                         "replace it with a genuine CIFAR-10 batch") from None
    except RecursionError:
        raise fail(path, f"invalid pickle (nested too deeply); {DAMAGED}") from None
    except Exception as e:  # a corrupt pickle can fail with almost any exception type
        raise fail(path, f"not a valid pickle ({type(e).__name__}: {e}); {DAMAGED}") from None


def _get_key(path: Path, obj: dict, key: str):
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    raise fail(path, f"no {key!r} entry (found keys {sorted(map(repr, obj))[:6]})")


def _as_label_array(path: Path, labels) -> np.ndarray:
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise fail(path, f"labels must be 1-D integers, got {labels.dtype} {labels.shape}")
        return labels.astype(np.int64)
    if isinstance(labels, (list, tuple)) and all(type(v) is int for v in labels):
        if labels and not (-2**63 <= min(labels) and max(labels) < 2**63):
            raise fail(path, "labels out of range")
        return np.array(labels, dtype=np.int64)
    raise fail(path, "labels must be a list of integers")


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64."""
    path = Path(path)
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise fail(path, f"not a CIFAR batch (a pickled {type(obj).__name__}, expected a dict)")
    data = _get_key(path, obj, "data")
    y = _as_label_array(path, _get_key(path, obj, "labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != CIFAR_SAMPLE_BYTES:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise fail(path, f"'data' must be a uint8 array (N, {CIFAR_SAMPLE_BYTES}), got {what}")
    check_counts(path, data, y)
    check_labels(path, y, num_classes)
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE).copy(), y


def read_cifar_meta(path: str | Path) -> list[str]:
    """Class names from ``batches.meta`` (python) or ``batches.meta.txt`` (binary)."""
    path = Path(path)
    if path.suffix == ".txt":
        try:
            return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise fail(path, f"cannot read class names ({e})") from None
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise fail(path, "not a CIFAR meta file (expected a dict)")
    names = _get_key(path, obj, "label_names")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise fail(path, "'label_names' must be a list of strings")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise fail(path, "'label_names' are not UTF-8") from None


def read_cifar_binary_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise fail(path, f"cannot read ({e.strerror or e})") from None
    if not data or len(data) % CIFAR_RECORD_BYTES:
        raise fail(path, f"size {len(data)} bytes is not a positive multiple of the "
                         f"{CIFAR_RECORD_BYTES}-byte record (truncated or not a CIFAR-10 binary batch); {DAMAGED}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    y = records[:, 0].astype(np.int64)
    check_labels(path, y, num_classes)
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
        raise fail(directory, "no CIFAR-10 batches found (expected data_batch_1..5 and test_batch "
                              "from cifar-10-batches-py, or the .bin files from cifar-10-batches-bin)")
    train_files = [directory / f"data_batch_{i}{suffix}" for i in range(1, 6)]
    train_files = [p for p in train_files if p.is_file()]
    test_file = directory / f"test_batch{suffix}"
    if not test_file.is_file():
        raise fail(directory, f"missing {test_file.name}")
    train = [reader(p) for p in train_files]
    x_test, y_test = reader(test_file)
    classes = read_cifar_meta(meta) if meta.is_file() else list(CIFAR10_CLASSES)
    if len(classes) < 10:
        raise fail(meta, f"lists {len(classes)} class names, expected 10")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes[:10]

"""IDX files: MNIST and Fashion-MNIST (``train-images-idx3-ubyte.gz`` and friends), gzipped or raw."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DataError
from ..shapes import images_to_nchw
from .common import DAMAGED, RawData, check_counts, check_labels, fail

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]

_CHUNK = 1 << 20

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
        raise fail(path, "file not found") from None
    except OSError as e:
        raise fail(path, f"cannot open ({e.strerror or e})") from None
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
                raise fail(path, f"truncated: expected at least 4 header bytes, found {len(header)}; {DAMAGED}")
            magic = int.from_bytes(header, "big")
            type_code, ndim = header[2], header[3]
            if header[:2] != b"\x00\x00" or type_code not in IDX_DTYPES or ndim == 0:
                raise fail(path, f"not an IDX file (bad magic 0x{magic:08x}); give the MNIST-style "
                                 "train/t10k images and labels files")
            wanted = {"images": IDX_IMAGES_MAGIC, "labels": IDX_LABELS_MAGIC}.get(kind or "")
            if wanted is not None and magic != wanted:
                raise fail(path, f"wrong magic 0x{magic:08x} for {kind}, expected 0x{wanted:08x}; "
                                 "are the images and labels files swapped or misnamed?")
            dims_bytes = _read_upto(stream, 4 * ndim)
            header_size = 4 + 4 * ndim
            if len(dims_bytes) < 4 * ndim:
                raise fail(path, f"truncated: expected at least {header_size} header bytes, "
                                 f"found {4 + len(dims_bytes)}; {DAMAGED}")
            dims = tuple(int.from_bytes(dims_bytes[4 * i:4 * i + 4], "big") for i in range(ndim))
            dtype = IDX_DTYPES[type_code]
            body_size = math.prod(dims) * dtype.itemsize
            body = _read_upto(stream, body_size + 1)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise fail(path, f"corrupt or truncated gzip data ({e}); {DAMAGED}") from None
    expected, found = header_size + body_size, header_size + len(body)
    if len(body) < body_size:
        raise fail(path, f"truncated: expected {expected} bytes, found {found}; {DAMAGED}")
    if len(body) > body_size:
        raise fail(path, f"has trailing data: expected {expected} bytes for shape {dims}, found more")
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


IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(directory: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")  # some mirrors spell it train-images.idx3-ubyte
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    raise fail(directory, f"missing {stem}.gz (or {stem})")


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
        raise fail(image_path, f"expected 3-D images (N, H, W), got shape {x.shape}")
    if y.ndim != 1:
        raise fail(label_path, f"expected 1-D labels, got shape {y.shape}")
    check_counts(f"{image_path} / {label_path.name}", x, y)
    check_labels(label_path, y, num_classes)
    return images_to_nchw(x), y


def read_idx_dataset(path: Path, classes: list[str]) -> RawData:
    """A folder with the four MNIST-layout files: train and test splits, images ``(N, 1, H, W)``."""
    if not path.is_dir():
        raise fail(path, "expected a folder with the four IDX files (train-images-idx3-ubyte.gz, ...)")
    x_train, y_train = read_idx_split(path, "train")
    x_test, y_test = read_idx_split(path, "test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise fail(path, f"test images {x_test.shape[2:]} differ from training images {x_train.shape[2:]}")
    return RawData(x_train, y_train, x_test, y_test, list(classes))

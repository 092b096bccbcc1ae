"""``.npz`` archives of arrays (``x_train``, ``y_train``, optional ``x_val``/``x_test`` and ``classes``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..shapes import images_to_nchw
from .common import RawData, check_counts, check_labels, fail


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` archive, loaded with ``allow_pickle=False``.

    Object arrays (which would need unpickling) are refused with a DataError.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise fail(path, "file not found") from None
    except Exception as e:  # np.load fails on foreign bytes with many exception types
        raise fail(path, f"not a valid .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail(path, "not an .npz archive (a single .npy array?)")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as e:
                if "allow_pickle" in str(e) or "bject" in str(e):
                    raise fail(path, f"array {key!r} holds Python objects, which are refused; "
                                     "save numeric or string arrays") from None
                raise fail(path, f"array {key!r} is corrupt ({e})") from None
            except Exception as e:
                raise fail(path, f"array {key!r} is corrupt ({type(e).__name__}: {e})") from None
    return arrays


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` -> ``(N, C, H, W)``; ``(N, H, W)`` -> ``(N, 1, H, W)``; ``(N, F)`` kept."""
    if x.dtype.kind not in "uif":
        raise fail(path, f"{key!r} must be numeric, got dtype {x.dtype}")
    if x.ndim == 4:
        return np.ascontiguousarray(images_to_nchw(x))
    if x.ndim == 3:
        return images_to_nchw(x)
    if x.ndim == 2:
        return x
    raise fail(path, f"{key!r} must be (N, H, W, C), (N, H, W) or (N, F), got shape {x.shape}")


def _npz_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise fail(path, f"{key!r} must be 1-D class indices, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise fail(path, f"{key!r} must hold integer class indices")
    elif y.dtype.kind not in "iu":
        raise fail(path, f"{key!r} must hold integer class indices, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= 2**31):
        raise fail(path, f"{key!r} has labels out of range ({y.min()}..{y.max()})")
    return y.astype(np.int64)


def read_npz_dataset(path: Path) -> RawData:
    """The splits of an ``.npz`` data set: ``x_train``/``y_train``, optional ``x_val``/``y_val``,
    ``x_test``/``y_test`` and ``classes`` (else the classes are ``0`` .. the largest label)."""
    arrays = read_npz(path)
    if "x_train" not in arrays or "y_train" not in arrays:
        raise fail(path, f"needs arrays 'x_train' and 'y_train' (found {sorted(arrays)})")
    splits = {}
    for name in ("train", "val", "test"):
        xk, yk = f"x_{name}", f"y_{name}"
        if (xk in arrays) != (yk in arrays):
            raise fail(path, f"has {xk if xk in arrays else yk!r} without "
                             f"{yk if xk in arrays else xk!r}")
        if xk in arrays:
            x, y = _npz_images(path, xk, arrays[xk]), _npz_labels(path, yk, arrays[yk])
            check_counts(f"{path} ({xk}/{yk})", x, y)
            if splits and x.shape[1:] != splits["train"][0].shape[1:]:
                raise fail(path, f"{xk!r} samples have shape {x.shape[1:]}, "
                                 f"but x_train has {splits['train'][0].shape[1:]}")
            splits[name] = (x, y)
    if "classes" in arrays:
        classes_arr = arrays["classes"]
        if classes_arr.dtype.kind not in "US" or classes_arr.ndim != 1:
            raise fail(path, "'classes' must be a 1-D array of strings")
        classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c)
                   for c in classes_arr.tolist()]
    else:
        top = max(int(y.max()) for _, y in splits.values() if y.size) if any(
            y.size for _, y in splits.values()) else 0
        classes = [str(k) for k in range(top + 1)]
    for name, (_, y) in splits.items():
        check_labels(f"{path} (y_{name})", y, len(classes))
    x_test, y_test = splits.get("test", (None, None))
    x_val, y_val = splits.get("val", (None, None))
    return RawData(*splits["train"], x_test, y_test, classes, x_val, y_val)

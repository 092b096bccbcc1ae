"""Image folders: one sub-folder of images per class, optionally under ``train/``, ``val/``, ``test/`` (needs Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..shapes import format_shape, images_to_nchw
from .common import RawData, fail

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
        raise fail(root, "no class sub-folders (expected one folder of images per class)")
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
        raise fail(root, "not a directory")
    Image = _import_pillow()
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise fail(root, f"class folders {unknown} are not among the training classes {classes}")
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
                raise fail(f, f"not a readable image ({type(e).__name__}: {e}); remove it or move it "
                              "out of the class folders") from None
            if first is None:
                first = (f, array.shape)
            elif array.shape != first[1]:
                h, w = array.shape[:2]
                raise fail(f, f"image is {w}x{h} but {first[0]} is {first[1][1]}x{first[1][0]}; "
                              "all images must have the same size")
            images.append(array)
            labels.append(classes.index(d.name))
    if not images:
        raise fail(root, "no images found in the class folders")
    x = images_to_nchw(np.stack(images))
    return np.ascontiguousarray(x), np.array(labels, dtype=np.int64), list(classes)


def read_image_folder_dataset(path: Path, channels: int | None) -> RawData:
    """``path/<class>/...`` as one training split, or ``path/train/<class>/...`` with ``val/`` and ``test/``."""
    subdirs = {p.name for p in path.iterdir() if p.is_dir()} if path.is_dir() else set()
    if "train" not in subdirs or not subdirs <= set(_IMAGE_SPLIT_DIRS):
        x, y, classes = read_image_folder(path, channels)
        return RawData(x, y, None, None, classes)
    x, y, classes = read_image_folder(path / "train", channels)
    channels = x.shape[1]
    raw = RawData(x, y, None, None, classes)
    for name in ("val", "test"):
        if name in subdirs:
            xs, ys, _ = read_image_folder(path / name, channels, classes)
            if xs.shape[1:] != x.shape[1:]:
                raise fail(path / name, f"images are {format_shape(xs.shape[1:])}, "
                                        f"training images {format_shape(x.shape[1:])}")
            setattr(raw, f"x_{name}", xs)
            setattr(raw, f"y_{name}", ys)
    return raw

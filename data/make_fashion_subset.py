"""Build data/fashion-mnist-subset/: a class-balanced sample of Fashion-MNIST in its own IDX format.

    python data/make_fashion_subset.py [--source /usr/share/datasets/fashion-mnist]

Takes 1000 training and 200 test images per class (10,000 / 2,000 in all),
chosen with a fixed seed and kept in their original order, and writes them as
gzipped IDX files with the original names.  The output is byte-for-byte
reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nettrain.data import read_idx_split, write_idx

SEED = 20240601
PER_CLASS = {"train": 1000, "test": 200}
FILE_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of each class, returned sorted (original order)."""
    picks = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        if len(members) < per_class:
            raise SystemExit(f"class {k} has only {len(members)} samples, need {per_class}")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="folder with the full Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fashion-mnist-subset")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for split, per_class in PER_CLASS.items():
        x, y = read_idx_split(args.source, split)
        keep = balanced_indices(y, per_class, rng)
        image_stem, label_stem = FILE_STEMS[split]
        write_idx(args.out / f"{image_stem}.gz", x[keep, 0])
        write_idx(args.out / f"{label_stem}.gz", y[keep].astype(np.uint8))
        print(f"{split}: {len(keep)} images, {np.bincount(y[keep]).tolist()} per class")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Finding a data set on disk: ``data.path`` relative to the config, or the named set's usual places."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .spec import DataSpec

REPO_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

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


SHIPPED_SUBSET_DIR = REPO_DATA_DIR / "fashion-mnist-subset"


def describe_copy(spec: DataSpec, path: Path | None) -> str:
    """Which copy of the data a run uses, for its header: generated, the subset shipped with nettrain,
    Debian's full Fashion-MNIST, or the path found; with ``data.subset`` when it cuts the training split."""
    if spec.dataset == "synthetic" or path is None:
        text = "synthetic (generated from the seed)"
    else:
        resolved = Path(path).resolve()
        if resolved == SHIPPED_SUBSET_DIR.resolve():
            text = f"the Fashion-MNIST subset shipped with nettrain (10,000 training images) in {path}"
        elif resolved == SYSTEM_FASHION_MNIST_DIR.resolve():
            text = f"the full Fashion-MNIST set (Debian's dataset-fashion-mnist) in {path}"
        else:
            text = f"{spec.dataset} in {resolved}"
    if spec.subset is not None:
        text += f", first {spec.subset:,} training samples (data.subset)"
    return text

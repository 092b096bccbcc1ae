"""Download the public data sets into ``data/<name>/``, verified by checksum.

Each file is streamed to a temporary file beside its target, its digest checked,
then moved into place with ``os.replace``, so an interrupted or corrupt download
never leaves a file under the real name.  Files already present with the right
checksum are not fetched again.  Archives are unpacked only after every member
has been checked: regular files and folders inside the destination, nothing
else (no absolute paths, ``..``, links or devices).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .errors import DataError

_CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteDataset:
    """Where a data set lives and what its files must hash to (``"md5:<hex>"`` or ``"sha256:<hex>"``)."""

    name: str
    base_url: str
    files: dict[str, str]
    folder: str
    archive_root: str | None = None  # the folder a tar archive unpacks to
    archives: tuple[str, ...] = field(default=())


DATASETS: dict[str, RemoteDataset] = {
    "fashion-mnist": RemoteDataset(
        name="fashion-mnist",
        base_url="https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        files={
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
        folder="fashion-mnist",
    ),
    "mnist": RemoteDataset(
        name="mnist",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
        folder="mnist",
    ),
    "cifar10": RemoteDataset(
        name="cifar10",
        base_url="https://www.cs.toronto.edu/~kriz/",
        files={"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
        folder="cifar10",
        archive_root="cifar-10-batches-py",
        archives=("cifar-10-python.tar.gz",),
    ),
}

ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


def dataset_info(name: str) -> RemoteDataset:
    """The :class:`RemoteDataset` for ``name`` (aliases such as ``fashion_mnist`` accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[key]


def _parse_checksum(expected: str) -> tuple[str, str]:
    """``"md5:<hex>"``, ``"sha256:<hex>"`` or bare hex (length tells the algorithm) -> (algorithm, hex)."""
    algorithm, _, digest = expected.rpartition(":")
    if not algorithm:
        algorithm = {32: "md5", 64: "sha256"}.get(len(digest), "")
    if algorithm not in ("md5", "sha256"):
        raise DataError(f"unsupported checksum {expected!r}; use md5:<hex> or sha256:<hex>")
    return algorithm, digest.lower()


def file_digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def has_checksum(path: Path, expected: str) -> bool:
    """Whether ``path`` is a file whose digest is ``expected``."""
    algorithm, digest = _parse_checksum(expected)
    try:
        return path.is_file() and file_digest(path, algorithm) == digest
    except OSError:
        return False


def fetch(url: str, target: Path, expected: str, progress: bool = True, timeout: float = 60.0) -> None:
    """Stream ``url`` to ``target`` via a temporary file, checking the digest before the rename."""
    algorithm, digest = _parse_checksum(expected)
    hasher = hashlib.new(algorithm)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=target.name, disable=not progress, leave=False) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
        if hasher.hexdigest() != digest:
            raise DataError(f"checksum mismatch for {url}: expected {algorithm} {digest}, "
                            f"got {hasher.hexdigest()} (corrupt download or wrong --base-url)")
        os.replace(tmp, target)
    except urllib.error.HTTPError as e:
        raise DataError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"could not download {url}: {e.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise DataError(f"could not download {url}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> Path:
    """Where ``member`` would land under ``root``; DataError for anything but a plain file or folder inside it."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing member {name!r} with an absolute path")
    if ".." in parts:
        raise DataError(f"{archive}: refusing member {name!r} that climbs out with '..'")
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing link member {name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing member {name!r}, which is not a regular file or folder")
    target = (root / Path(*parts)).resolve() if parts else root.resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{archive}: refusing member {name!r} outside the destination")
    return target


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive into ``dest`` after checking every member with :func:`_check_member`.

    Nothing is written unless every member passes; permissions in the archive are ignored.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            targets = [_check_member(m, dest, archive) for m in members]
            for member, target in zip(members, targets):
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot unpack ({e})") from None


def _unpack(archive: Path, folder: Path, archive_root: str | None) -> None:
    """Unpack into a scratch folder, then move the top-level entries into ``folder``.

    A run interrupted while unpacking leaves only the scratch folder, never a
    half-filled ``archive_root`` that a re-run would mistake for a finished one.
    """
    scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".unpack-"))
    try:
        safe_extract(archive, scratch)
        if archive_root is not None and not (scratch / archive_root).is_dir():
            raise DataError(f"{archive}: does not contain {archive_root}/")
        for entry in scratch.iterdir():
            if not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def download(name: str, dest: str | Path = "data", base_url: str | None = None, progress: bool = True,
             checksums: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Fetch data set ``name`` into ``dest/<folder>/`` and return that folder.

    ``base_url`` replaces the data set's home (a mirror, or a local server in
    tests); ``checksums`` replaces entries of the checksum table, keyed by file
    name.  Safe to re-run: files with the right checksum are kept, an archive
    already unpacked is not unpacked again.
    """
    info = dataset_info(name)
    expected = dict(info.files)
    for filename, checksum in (checksums or {}).items():
        if filename not in expected:
            raise DataError(f"{info.name} has no file {filename!r} (files: {', '.join(expected)})")
        _parse_checksum(checksum)
        expected[filename] = checksum
    folder = Path(dest) / info.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {folder}: {e.strerror or e}") from None
    root_url = (base_url or info.base_url).rstrip("/") + "/"
    for filename, checksum in expected.items():
        target = folder / filename
        if not has_checksum(target, checksum):
            fetch(root_url + filename, target, checksum, progress=progress, timeout=timeout)
    for filename in info.archives:
        if info.archive_root is None or not (folder / info.archive_root).is_dir():
            _unpack(folder / filename, folder, info.archive_root)
    return folder

"""Download the public data sets into ``data/<name>/``, verified by checksum.

Each file is streamed to a temporary file beside its target, its digest checked,
then moved into place with ``os.replace``, so an interrupted or corrupt download
never leaves a file under the real name.  Files already present with the right
checksum are not fetched again.  A ``.gz`` file also passes when its decompressed
content has the known checksum, so a recompressed copy of the same data (Debian's
``dataset-fashion-mnist``, a mirror) is accepted.  Archives are unpacked only after every member
has been checked: regular files and folders inside the destination, nothing
else (no absolute paths, ``..``, links or devices).
"""

from __future__ import annotations

import gzip
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
    # checksums of the decompressed content of .gz files, which survive recompression
    payloads: dict[str, str] = field(default_factory=dict)
    system_copy: str | None = None  # where a distribution package installs the data set


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
        # computed from Debian's dataset-fashion-mnist, whose decompressed files have the
        # md5 sums published with the upstream data (8181f547..., 15d48437..., ...)
        payloads={
            "train-images-idx3-ubyte.gz": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_copy="/usr/share/datasets/fashion-mnist/ (apt-get install dataset-fashion-mnist)",
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
        # the published SHA-256 sums of the decompressed IDX files
        payloads={
            "train-images-idx3-ubyte.gz": "sha256:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte.gz": "sha256:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte.gz": "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte.gz": "sha256:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
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


class FetchError(DataError):
    """A file could not be fetched at all: no network, no such file at the source, a read error."""


def payload_digest(path: Path, algorithm: str) -> str | None:
    """The digest of a gzip file's decompressed content; None when it is not a readable gzip file."""
    hasher = hashlib.new(algorithm)
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                hasher.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return hasher.hexdigest()


def _payload_matches(path: Path, payload: str | None) -> bool:
    if payload is None:
        return False
    algorithm, digest = _parse_checksum(payload)
    return payload_digest(path, algorithm) == digest


def has_checksum(path: Path, expected: str, payload: str | None = None) -> bool:
    """Whether ``path`` is a file whose digest is ``expected``, or (given ``payload``) a gzip
    file whose decompressed content has the digest ``payload``."""
    algorithm, digest = _parse_checksum(expected)
    try:
        if not path.is_file():
            return False
        if file_digest(path, algorithm) == digest:
            return True
    except OSError:
        return False
    return _payload_matches(path, payload)


def fetch(url: str, target: Path, expected: str, progress: bool = True, timeout: float = 60.0,
          payload: str | None = None) -> None:
    """Stream ``url`` to ``target`` via a temporary file, checking the digest before the rename.

    A file whose own digest differs passes when its decompressed content has the digest
    ``payload`` (the same data compressed again). FetchError when nothing could be read.
    """
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
        if hasher.hexdigest() != digest and not _payload_matches(tmp, payload):
            content = f" and its decompressed content is not {payload}" if payload else ""
            raise DataError(f"checksum mismatch for {url}: expected {algorithm} {digest}, "
                            f"got {hasher.hexdigest()}{content} (corrupt download or wrong --base-url)")
        os.replace(tmp, target)
    except urllib.error.HTTPError as e:
        raise FetchError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchError(f"could not download {url}: {e.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise FetchError(f"could not download {url}: {e}") from None
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


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) while they are empty: a failed download leaves none behind."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def _as_url(base_url: str) -> str:
    """A mirror URL; a local folder given as a plain path becomes a ``file://`` URL."""
    if "://" not in base_url and Path(base_url).expanduser().is_dir():
        return Path(base_url).expanduser().resolve().as_uri()
    return base_url


def offline_hint(info: RemoteDataset, folder: Path, files: list[str]) -> str:
    """What to do when the files cannot be fetched: copy them, use a mirror, or the system copy."""
    hint = (f"without a network, copy {', '.join(files)} into {folder}/ and run this again, "
            f"or pass --base-url a mirror (a local folder works, e.g. file:///path/to/{info.folder}/)")
    if info.system_copy:
        hint += f"; training also finds {info.system_copy} without any download"
    return hint


def download(name: str, dest: str | Path = "data", base_url: str | None = None, progress: bool = True,
             checksums: dict[str, str] | None = None, timeout: float = 60.0,
             payload_checksums: dict[str, str] | None = None) -> Path:
    """Fetch data set ``name`` into ``dest/<folder>/`` and return that folder.

    ``base_url`` replaces the data set's home (a mirror, a local folder, or a local server
    in tests); ``checksums`` replaces entries of the checksum table and ``payload_checksums``
    those of the decompressed-content table, keyed by file name.  Safe to re-run: files with
    the right checksum are kept, an archive already unpacked is not unpacked again.  When a
    file cannot be fetched the error says what to do offline, and folders this call created
    are removed again while they are empty.
    """
    info = dataset_info(name)
    expected, payloads = dict(info.files), dict(info.payloads)
    for table, overrides in ((expected, checksums), (payloads, payload_checksums)):
        for filename, checksum in (overrides or {}).items():
            if filename not in info.files:
                raise DataError(f"{info.name} has no file {filename!r} (files: {', '.join(info.files)})")
            _parse_checksum(checksum)
            table[filename] = checksum
    folder = Path(dest) / info.folder
    created = _missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise DataError(f"cannot create {folder}: {e.strerror or e}") from None
    root_url = _as_url(base_url or info.base_url).rstrip("/") + "/"
    pending = list(expected)
    try:
        for filename, checksum in expected.items():
            target = folder / filename
            if not has_checksum(target, checksum, payloads.get(filename)):
                fetch(root_url + filename, target, checksum, progress=progress, timeout=timeout,
                      payload=payloads.get(filename))
            pending.remove(filename)
        for filename in info.archives:
            if info.archive_root is None or not (folder / info.archive_root).is_dir():
                _unpack(folder / filename, folder, info.archive_root)
    except FetchError as e:
        _remove_empty(created)
        missing = [f for f in pending if not has_checksum(folder / f, expected[f], payloads.get(f))]
        raise FetchError(f"{e}; {offline_hint(info, folder, missing)}") from None
    except BaseException:
        _remove_empty(created)
        raise
    return folder

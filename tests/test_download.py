"""Downloads from a local HTTP server: checksums, re-runs, and safe archive unpacking."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nettrain.cli import app
from nettrain.data import DataSpec, load_data
from nettrain.download import DATASETS, download, safe_extract
from nettrain.errors import DataError

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"


class Server:
    """A static file server on 127.0.0.1 that remembers which paths were asked for."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with Server(root) as s:
        yield s


def md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def serve_mnist(root: Path, n_train: int = 12, n_test: int = 4) -> dict[str, str]:
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_gz(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_gz(np.arange(n_test) % 10),
    }
    for name, payload in files.items():
        (root / name).write_bytes(payload)
    return {name: "sha256:" + hashlib.sha256(payload).hexdigest() for name, payload in files.items()}


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def cifar_tar(path: Path, per_batch: int = 3, extra=None) -> Path:
    """A small archive in the layout of cifar-10-python.tar.gz."""
    rng = np.random.default_rng(1)

    def batch() -> bytes:
        return pickle.dumps({b"batch_label": b"b", b"labels": rng.integers(0, 10, per_batch).tolist(),
                             b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                             b"filenames": [b"x.png"] * per_batch}, protocol=2)

    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add_bytes(tar, f"cifar-10-batches-py/{name}", batch())
        add_bytes(tar, "cifar-10-batches-py/batches.meta",
                  pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)]}, protocol=2))
        add_bytes(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        if extra is not None:
            extra(tar)
    return path


def test_cifar_download_unpacks_and_reruns_as_noop(server, tmp_path):
    archive = cifar_tar(server.root / CIFAR_ARCHIVE)
    dest = tmp_path / "data"
    folder = download("cifar10", dest, base_url=server.url, progress=False, checksums={CIFAR_ARCHIVE: md5(archive)})
    assert folder == dest / "cifar10"
    assert server.requests == [f"/{CIFAR_ARCHIVE}"]
    bundle = load_data(DataSpec(dataset="cifar10", path=str(folder), validation_split=0))
    assert bundle.train.x.shape == (15, 3, 32, 32) and bundle.test.x.shape == (3, 3, 32, 32)
    assert bundle.classes == [f"c{k}" for k in range(10)]

    batch = folder / "cifar-10-batches-py" / "data_batch_1"
    stamp = (folder / CIFAR_ARCHIVE).stat().st_mtime_ns, batch.stat().st_mtime_ns
    download("cifar10", dest, base_url=server.url, progress=False, checksums={CIFAR_ARCHIVE: md5(archive)})
    assert server.requests == [f"/{CIFAR_ARCHIVE}"]  # nothing fetched the second time
    assert ((folder / CIFAR_ARCHIVE).stat().st_mtime_ns, batch.stat().st_mtime_ns) == stamp
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_idx_download_then_load_and_rerun(server, tmp_path):
    sums = serve_mnist(server.root)
    folder = download("mnist", tmp_path, base_url=server.url, progress=False, checksums=sums)
    assert sorted(server.requests) == sorted(f"/{n}" for n in sums)
    bundle = load_data(DataSpec(dataset="mnist", path=str(folder), validation_split=0), input_shape=(28, 28))
    assert bundle.train.x.shape == (12, 28, 28) and len(bundle.test) == 4
    download("mnist", tmp_path, base_url=server.url, progress=False, checksums=sums)
    assert len(server.requests) == 4


def test_wrong_existing_file_is_replaced(server, tmp_path):
    sums = serve_mnist(server.root)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")
    download("fashion_mnist", tmp_path, base_url=server.url, progress=False, checksums=sums)
    assert server.requests == ["/train-images-idx3-ubyte.gz", "/train-labels-idx1-ubyte.gz",
                               "/t10k-images-idx3-ubyte.gz", "/t10k-labels-idx1-ubyte.gz"]
    name = "t10k-labels-idx1-ubyte.gz"
    assert (folder / name).read_bytes() == (server.root / name).read_bytes()


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    sums = serve_mnist(server.root)
    sums["train-labels-idx1-ubyte.gz"] = "md5:" + "0" * 32
    with pytest.raises(DataError, match=r"checksum mismatch for .*train-labels-idx1-ubyte.gz: expected md5 0{32}"):
        download("mnist", tmp_path, base_url=server.url, progress=False, checksums=sums)
    folder = tmp_path / "mnist"
    assert not (folder / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_missing_remote_file_is_a_data_error(server, tmp_path):
    with pytest.raises(DataError, match=r"could not download .*cifar-10-python.tar.gz: HTTP 404"):
        download("cifar10", tmp_path, base_url=server.url, progress=False)


def test_unknown_dataset_and_checksum_entry(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        download("imagenet", tmp_path)
    with pytest.raises(DataError, match="has no file 'other.gz'"):
        download("mnist", tmp_path, checksums={"other.gz": "md5:" + "0" * 32})


def test_checksum_table_is_complete():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "cifar10"}
    assert DATASETS["cifar10"].files[CIFAR_ARCHIVE] == "md5:c58f30108f718f92721af3b95e74349a"
    for info in DATASETS.values():
        for checksum in info.files.values():
            algorithm, digest = checksum.split(":")
            assert algorithm == "md5" and len(digest) == 32 and int(digest, 16) >= 0


def evil_member(tar: tarfile.TarFile, kind: str) -> None:
    if kind == "dotdot":
        add_bytes(tar, "cifar-10-batches-py/../../evil", b"owned")
    elif kind == "absolute":
        add_bytes(tar, "/tmp/nettrain-evil-absolute", b"owned")
    elif kind in ("symlink", "hardlink"):
        link = tarfile.TarInfo("cifar-10-batches-py/link")
        link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    elif kind == "device":
        dev = tarfile.TarInfo("cifar-10-batches-py/dev")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)


@pytest.mark.parametrize("kind, message", [
    ("dotdot", r"refusing member .*\.\./\.\./evil.* climbs out"),
    ("absolute", "absolute path"),
    ("symlink", "refusing link member"),
    ("hardlink", "refusing link member"),
    ("device", "not a regular file or folder"),
])
def test_unsafe_archive_members_refused(tmp_path, kind, message):
    archive = cifar_tar(tmp_path / "evil.tar.gz", extra=lambda tar: evil_member(tar, kind))
    dest = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match=message):
        safe_extract(archive, dest)
    assert not (dest / "cifar-10-batches-py").exists()  # checked before anything is written
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/nettrain-evil-absolute").exists()


def test_download_refuses_unsafe_archive(server, tmp_path):
    archive = cifar_tar(server.root / CIFAR_ARCHIVE, extra=lambda tar: evil_member(tar, "dotdot"))
    with pytest.raises(DataError, match="climbs out"):
        download("cifar10", tmp_path / "data", base_url=server.url, progress=False,
                 checksums={CIFAR_ARCHIVE: md5(archive)})
    folder = tmp_path / "data" / "cifar10"
    assert not (folder / "cifar-10-batches-py").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "data" / "evil").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_cli_download(server, tmp_path, monkeypatch):
    serve_mnist(server.root)
    sums = {n: "sha256:" + hashlib.sha256((server.root / n).read_bytes()).hexdigest() for n in DATASETS["mnist"].files}
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], base_url=server.url, files=sums))
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "download", "mnist", "--dest", str(tmp_path / "d")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "d" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()

    bad = runner.invoke(app, ["data", "download", "mnist", "--dest", str(tmp_path / "e"),
                              "--base-url", server.url + "nowhere/"])
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "HTTP 404" in bad.stderr
    assert "Traceback" not in bad.output

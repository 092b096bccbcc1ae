"""Downloads from a local HTTP server: checksums, re-runs, and safe archive unpacking."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import pickle
import socket
import tarfile
import threading
import urllib.error
import urllib.request
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
        # every .gz IDX file also has the checksum of its decompressed content
        assert set(info.payloads) == {name for name in info.files if name.endswith("-ubyte.gz")}
        for checksum in info.payloads.values():
            algorithm, digest = checksum.split(":")
            assert algorithm == "sha256" and len(digest) == 64 and int(digest, 16) >= 0


# --------------------------------------------------------------------------- offline and recompressed copies

def recompressed(root: Path, into: Path) -> dict[str, str]:
    """The .gz files of ``root`` compressed again (another level and time stamp) into ``into``;
    returns the SHA-256 of each file's decompressed content."""
    into.mkdir(parents=True, exist_ok=True)
    payloads = {}
    for path in sorted(root.glob("*.gz")):
        payload = gzip.decompress(path.read_bytes())
        again = gzip.compress(payload, compresslevel=1, mtime=1234567890)
        assert again != path.read_bytes()
        (into / path.name).write_bytes(again)
        payloads[path.name] = "sha256:" + hashlib.sha256(payload).hexdigest()
    return payloads


def test_recompressed_copy_is_accepted_by_its_content(server, tmp_path):
    originals = tmp_path / "originals"
    originals.mkdir()
    sums = serve_mnist(originals)  # the checksums of the files as first published
    payloads = recompressed(originals, server.root)  # the mirror holds the same data compressed again
    folder = download("mnist", tmp_path / "d", base_url=server.url, progress=False, checksums=sums,
                      payload_checksums=payloads)
    for name in sums:
        assert (folder / name).read_bytes() == (server.root / name).read_bytes()
    # the published checksums alone refuse the mirror's files: the content check is what accepts them
    with pytest.raises(DataError, match=r"checksum mismatch .*decompressed content is not sha256:0{64}"):
        download("mnist", tmp_path / "e", base_url=server.url, progress=False, checksums=sums,
                 payload_checksums={name: "sha256:" + "0" * 64 for name in sums})
    # files copied in by hand are checked the same way and not fetched again
    asked = len(server.requests)
    copied = recompressed(originals, tmp_path / "f" / "mnist")
    download("mnist", tmp_path / "f", base_url=server.url, progress=False, checksums=sums, payload_checksums=copied)
    assert len(server.requests) == asked


def test_local_folder_as_base_url(tmp_path):
    originals = tmp_path / "originals"
    originals.mkdir()
    sums = serve_mnist(originals)
    payloads = recompressed(originals, tmp_path / "mirror")
    for base_url in ((tmp_path / "mirror").as_uri() + "/", str(tmp_path / "mirror")):
        dest = tmp_path / f"d{len(base_url)}"
        folder = download("mnist", dest, base_url=base_url, progress=False, checksums=sums,
                          payload_checksums=payloads)
        assert sorted(p.name for p in folder.iterdir()) == sorted(sums)


def refuse_every_url(url, timeout=None):
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


@pytest.mark.parametrize("dest_exists", [False, True])
def test_offline_download_says_what_to_do_and_leaves_no_empty_folder(tmp_path, monkeypatch, dest_exists):
    monkeypatch.setattr(urllib.request, "urlopen", refuse_every_url)
    dest = tmp_path / "d"
    if dest_exists:
        dest.mkdir()
    result = CliRunner().invoke(app, ["data", "download", "fashion-mnist", "--dest", str(dest)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    message = result.stderr
    assert message.startswith("error: could not download ") and "Name or service not known" in message
    folder = dest / "fashion-mnist"
    assert f"copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, " \
           f"t10k-labels-idx1-ubyte.gz into {folder}/" in message
    assert "--base-url" in message and "file:///" in message
    assert "/usr/share/datasets/fashion-mnist/" in message
    assert dest.exists() == dest_exists and not folder.exists()


def test_unreachable_server_keeps_files_already_verified(server, tmp_path):
    sums = serve_mnist(server.root)
    folder = download("mnist", tmp_path, base_url=server.url, progress=False, checksums=sums)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with pytest.raises(DataError, match=r"could not download .*; without a network, copy t10k-images-idx3-ubyte.gz "
                                        r"into .*mnist/ and run this again") as e:
        download("mnist", tmp_path, base_url=closed, progress=False, checksums=sums, timeout=5)
    assert "/usr/share/datasets" not in str(e.value)  # Debian packages only Fashion-MNIST
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(sums) - {"t10k-images-idx3-ubyte.gz"})


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist_is_accepted_by_file_url(tmp_path):
    info = DATASETS["fashion-mnist"]
    for name, checksum in info.payloads.items():  # the recorded content checksums are Debian's content
        payload = gzip.decompress((DEBIAN_FASHION_MNIST / name).read_bytes())
        assert checksum == "sha256:" + hashlib.sha256(payload).hexdigest(), name
    folder = download("fashion-mnist", tmp_path, base_url=DEBIAN_FASHION_MNIST.as_uri() + "/", progress=False)
    for name in info.files:
        assert (folder / name).read_bytes() == (DEBIAN_FASHION_MNIST / name).read_bytes()
    bundle = load_data(DataSpec(dataset="fashion_mnist", path=str(folder), validation_split=0))
    assert bundle.train.x.shape == (60000, 1, 28, 28) and len(bundle.test) == 10000


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

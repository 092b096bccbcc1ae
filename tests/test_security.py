"""Security checks: no unpickling of user files, no unsafe YAML, safe downloads.

Two kinds of test: source checks over ``nettrain/`` (parsed with :mod:`ast`, so
comments and docstrings do not count, and an alias such as ``import pickle as p``
does not hide a call), and behaviour checks with hostile files that would leave a
marker file behind if anything in them were executed.
"""

from __future__ import annotations

import ast
import functools
import io
import os
import pickle
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nettrain import data as D
from nettrain.checkpoint import load_checkpoint
from nettrain.config import parse_config
from nettrain.data import cifar
from nettrain.download import download, safe_extract
from nettrain.errors import CheckpointError, ConfigError, DataError
from test_download import CIFAR_ARCHIVE, Server, add_bytes, cifar_tar, md5

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "nettrain").rglob("*.py")) + sorted((ROOT / "data").glob("*.py"))

# Modules whose load functions run code from the bytes they read.
UNSAFE_DESERIALIZERS = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle", "torch"}


@functools.lru_cache(maxsize=None)
def parsed() -> tuple:
    """(path, every AST node, import aliases) of each source file, parsed once."""
    out = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = list(ast.walk(tree))
        out.append((path, nodes, module_aliases(nodes)))
    return tuple(out)


def module_aliases(nodes: list[ast.AST]) -> dict[str, str]:
    """``{local name: module}`` for ``import x``, ``import x as y`` and ``from x import f`` (as ``x.f``)."""
    names = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def qualified(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load``; None for anything that is not a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def calls(name_test):
    """(file, line, qualified name, call node) of every call whose callee passes ``name_test``."""
    found = []
    for path, nodes, aliases in parsed():
        for node in nodes:
            if isinstance(node, ast.Call):
                name = qualified(node.func, aliases)
                if name is not None and name_test(name):
                    found.append((path.relative_to(ROOT), node.lineno, name, node))
    return found


def references(name_test):
    """(file, line, name) of every dotted name (called or not) that passes ``name_test``."""
    found = []
    for path, nodes, aliases in parsed():
        for node in nodes:
            if isinstance(node, (ast.Attribute, ast.Name)):
                name = qualified(node, aliases)
                if name is not None and name_test(name):
                    found.append((path.relative_to(ROOT), node.lineno, name))
        for alias_name, module in aliases.items():
            if name_test(module):
                found.append((path.relative_to(ROOT), 0, module))
    return found


def test_sources_are_found():
    names = {p.relative_to(ROOT / "nettrain").as_posix() for p in SOURCES if p.is_relative_to(ROOT / "nettrain")}
    assert {"data/cifar.py", "data/npz.py", "checkpoint.py", "config/loader.py", "config/yamltree.py",
            "download.py"} <= names


# ============================================================================ pickle

def test_no_pickle_load_on_user_files():
    loads = calls(lambda n: n.split(".")[0] in UNSAFE_DESERIALIZERS and n.split(".")[-1] in ("load", "loads"))
    where = ", ".join(f"{f}:{line} {name}" for f, line, name, _ in loads)
    assert loads == [], f"unpickling outside the restricted unpickler: {where}"


def test_the_only_unpickler_is_the_restricted_one_in_data():
    subclasses = []
    for path, nodes, aliases in parsed():
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                bases = [qualified(b, aliases) for b in node.bases]
                if any(b and b.endswith("Unpickler") for b in bases):
                    methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                    subclasses.append((path.relative_to(ROOT).as_posix(), node.name, "find_class" in methods))
    assert subclasses == [("nettrain/data/cifar.py", "SafeUnpickler", True)]
    direct = calls(lambda n: n.endswith("Unpickler") and n.split(".")[0] in UNSAFE_DESERIALIZERS)
    assert direct == [], direct  # nobody instantiates the unrestricted pickle.Unpickler


def test_restricted_unpickler_allows_only_array_rebuilding():
    modules = {module for module, _ in cifar._PICKLE_ALLOWED}
    assert modules <= {"numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                       "numpy._core.numeric", "numpy", "_codecs"}
    assert {name for _, name in cifar._PICKLE_ALLOWED} <= {"_reconstruct", "_frombuffer", "ndarray", "dtype", "encode"}


def hostile_pickle(module: str, name: str, marker: Path) -> bytes:
    """A protocol-0 pickle that calls ``module.name`` with a command or path that creates ``marker``."""
    if (module, name) in (("builtins", "open"), ("io", "open")):
        args = f"(V{marker}\nVw\ntR."
    elif (module, name) in (("builtins", "eval"), ("builtins", "exec")):
        args = f"(Vopen({str(marker)!r}, 'w')\ntR."
    else:
        args = f"(Vtouch {marker}\ntR."
    return f"c{module}\n{name}\n{args}".encode()


@pytest.mark.parametrize("module, name", [("os", "system"), ("posix", "system"), ("subprocess", "getoutput"),
                                          ("builtins", "eval"), ("builtins", "exec"), ("builtins", "open"),
                                          ("io", "open")])
def test_hostile_cifar_pickles_run_nothing(tmp_path, module, name):
    marker = tmp_path / "pwned"
    payload = hostile_pickle(module, name, marker)
    if (module, name) == ("builtins", "open"):  # the payloads are live: plain pickle runs them
        probe = tmp_path / "probe"
        pickle.loads(hostile_pickle(module, name, probe))
        assert probe.exists()
    batch = tmp_path / "data_batch_1"
    for wrapped in (payload, b"(dp0\nS'data'\np1\n" + payload[:-1] + b"s."):
        batch.write_bytes(wrapped)
        with pytest.raises(DataError, match=f"refusing to load {module}.{name}"):
            D.read_cifar_batch(batch)
        with pytest.raises(DataError, match="refusing"):
            D.read_cifar_meta(batch)
    assert not marker.exists()


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_object_arrays_in_npz_files_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.array([_Marker(str(marker))], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, x_train=np.zeros((2, 4), np.float32), y_train=evil, meta=evil, config=evil)
    with pytest.raises(DataError, match="holds Python objects"):
        D.read_npz(path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    assert not marker.exists()


# ============================================================================ numpy

def test_every_np_load_refuses_pickles():
    loads = calls(lambda n: n in ("numpy.load", "numpy.lib.format.read_array", "numpy.lib.npyio.load"))
    assert loads, "expected np.load calls in the readers"
    for path, line, name, node in loads:
        flag = next((k.value for k in node.keywords if k.arg == "allow_pickle"), None)
        assert isinstance(flag, ast.Constant) and flag.value is False, \
            f"{path}:{line}: {name} without allow_pickle=False"


def test_np_load_is_not_passed_around_unchecked():
    # ``load = np.load`` or ``partial(np.load)`` would escape the check above
    bare = []
    for path, nodes, aliases in parsed():
        called = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
        for node in nodes:
            if isinstance(node, ast.Attribute) and qualified(node, aliases) == "numpy.load" and id(node) not in called:
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == []


# ============================================================================ YAML

UNSAFE_YAML = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all", "yaml.Loader",
               "yaml.FullLoader", "yaml.UnsafeLoader", "yaml.CLoader", "yaml.CFullLoader", "yaml.CUnsafeLoader"}


def test_no_unsafe_yaml_loaders():
    found = references(lambda n: n in UNSAFE_YAML)
    assert found == [], found


def test_yaml_load_only_with_a_safe_loader():
    for path, line, name, node in calls(lambda n: n in ("yaml.load", "yaml.load_all")):
        positional = node.args[1] if len(node.args) > 1 else None
        loader = next((k.value for k in node.keywords if k.arg == "Loader"), positional)
        text = ast.unparse(loader) if loader is not None else ""
        assert text.endswith(("SafeLoader", "CSafeLoader")), f"{path}:{line}: {name} with Loader={text or 'default'}"
    for path, line, name, node in calls(lambda n: n in ("yaml.add_constructor", "yaml.add_multi_constructor")):
        raise AssertionError(f"{path}:{line}: {name} adds a constructor to the shared loaders")


def test_yaml_python_tags_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"):
        text = f"model: {tag} ['touch {marker}']\n" if "name:" not in tag else f"model: {tag} ''\n"
        with pytest.raises(ConfigError, match="could not determine a constructor"):
            parse_config(text, "evil.yaml")
    assert not marker.exists()


# ============================================================================ downloads

def evil_tar(path: Path, member: tarfile.TarInfo, payload: bytes = b"owned") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return path


def named(name: str, kind=tarfile.REGTYPE, size: int = 5) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member, message", [
    (named("..\\..\\evil"), "climbs out"),
    (named("cifar-10-batches-py/./../../evil"), "climbs out"),
    (named("C:evil"), "absolute path"),
    (named("\\\\server\\share\\evil"), "absolute path"),
    (named("cifar-10-batches-py/fifo", tarfile.FIFOTYPE), "not a regular file or folder"),
    (named("cifar-10-batches-py/blockdev", tarfile.BLKTYPE), "not a regular file or folder"),
])
def test_more_unsafe_archive_members_refused(tmp_path, member, message):
    archive = evil_tar(tmp_path / "evil.tar.gz", member)
    dest = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match=message):
        safe_extract(archive, dest)
    assert not (dest / "cifar-10-batches-py").exists()  # every member is checked before any is written
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_link_already_in_the_destination_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "cifar-10-batches-py").symlink_to(outside, target_is_directory=True)
    archive = cifar_tar(tmp_path / "ok.tar.gz")
    with pytest.raises(DataError, match="outside the destination"):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == []


def test_archive_permissions_are_not_applied(tmp_path):
    setuid = named("cifar-10-batches-py/tool")
    setuid.mode = 0o6777
    archive = evil_tar(tmp_path / "modes.tar.gz", setuid)
    safe_extract(archive, tmp_path / "dest")
    mode = (tmp_path / "dest" / "cifar-10-batches-py" / "tool").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID)
    assert not mode & stat.S_IWOTH


def test_tampered_archive_is_refused_before_unpacking(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    genuine = cifar_tar(root / CIFAR_ARCHIVE)
    checksum = md5(genuine)
    cifar_tar(root / CIFAR_ARCHIVE, per_batch=4)  # the server now hands out another archive
    with Server(root) as server:
        with pytest.raises(DataError, match="checksum mismatch"):
            download("cifar10", tmp_path / "data", base_url=server.url, progress=False,
                     checksums={CIFAR_ARCHIVE: checksum})
    # neither the archive nor anything from it, nor the folders the download created
    assert not (tmp_path / "data" / "cifar10").exists() and not (tmp_path / "data").exists()


def test_downloads_always_verify_a_checksum():
    # every fetch goes through a digest check: fetch() takes the expected checksum as a required argument
    from nettrain import download as dl

    for path, line, name, node in calls(lambda n: n.endswith("urlopen") or n.endswith("urlretrieve")):
        assert path.name == "download.py", f"{path}:{line}: network access outside download.py"
    fetch_calls = calls(lambda n: n == "fetch")
    assert fetch_calls and all(len(node.args) + len(node.keywords) >= 3 for *_, node in fetch_calls)
    for info in dl.DATASETS.values():
        assert set(info.files) >= set(info.archives)
        assert all(dl._parse_checksum(c)[0] in ("md5", "sha256") for c in info.files.values())
